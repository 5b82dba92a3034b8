"""Alembic environment of the audit store.

:func:`gateway.store.migrate.upgrade` hands in an open connection (``config.attributes["connection"]``);
otherwise the ``sqlalchemy.url`` option is used. No alembic.ini and no logging set-up are needed.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from gateway.store.models import Base

# an arbitrary constant: the PostgreSQL advisory lock that serialises concurrent upgrades
_PG_LOCK_KEY = 0x270271


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # SQLite can roll DDL back too; with BEGIN IMMEDIATE (see migrate.py) two processes that upgrade
        # the same fresh file at once run one after the other instead of colliding
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
