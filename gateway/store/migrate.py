"""Schema migrations of the audit store: ``alembic upgrade head`` without an alembic.ini.

``upgrade(url)`` works for SQLite files and ``postgresql+psycopg://`` URLs and is safe to run from
several processes at once (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``). From a shell::

    python -m gateway.store [URL]     # default: $FHIR_X12_DATABASE_URL, else the SQLite file
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///fhir-x12-gateway.db"
ENV_VAR = "FHIR_X12_DATABASE_URL"
_ALEMBIC = threading.Lock()  # alembic's ``context`` and ``op`` are module globals: one run per process at a time


def database_url(environ: Mapping[str, str] | None = None) -> str:
    """The configured database: ``FHIR_X12_DATABASE_URL``, else a SQLite file in the working directory."""
    environ = os.environ if environ is None else environ
    return normalize_url(environ.get(ENV_VAR) or DEFAULT_URL)


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean the psycopg 3 driver (the one the project installs); a SQLite
    file under ``~`` is the home folder's, as for every other path the gateway takes (sqlite3 would read a folder
    named ``~``)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith("sqlite:///~"):
        return "sqlite:///" + os.path.expanduser(url[len("sqlite:///"):])
    return url


def is_memory_sqlite(url: str | URL) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite URL; None for another backend, an in-memory database or a ``file:`` URI."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or is_memory_sqlite(parsed):
        return None
    database = parsed.database or ""
    return None if database.startswith("file:") else Path(database).expanduser()


def ensure_sqlite_folder(url: str | URL) -> None:
    """SQLite creates the file but not its folder."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the audit store's migrations (no file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return config


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (a no-op when it is there already)."""
    url = normalize_url(url)
    ensure_sqlite_folder(url)
    kwargs: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _begin_immediate(engine)
    try:
        upgrade_engine(engine, url)
    finally:
        engine.dispose()


def upgrade_engine(engine: Engine, url: str | None = None) -> None:
    """Run the migrations over a connection of ``engine`` (used for in-memory SQLite, whose data is per engine)."""
    config = alembic_config(url or engine.url.render_as_string(hide_password=False))
    with _ALEMBIC, engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()


def _begin_immediate(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN to the first DML; take the write lock up front
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def revisions() -> list[str]:
    """This version's migrations, newest first: a store at the first is migrated; one at none of them was made
    by a newer version of the gateway."""
    from alembic.script import ScriptDirectory

    return [r.revision for r in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()]


def open_problem(exc: BaseException, url: str) -> str:
    """Why a store could not be opened, in one line an operator can act on, never holding the URL's password (a
    driver's message can quote the URL)."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        password = make_url(url).password
    except Exception:   # not a URL at all: nothing in it is known to be the password, so the message says less
        password = None
    try:   # the password as written in the URL too (p%2fss: any case of percent-encoding)
        written = urlsplit(url).password
    except ValueError:
        written = None
    if isinstance(exc, NoSuchModuleError):   # an ArgumentError too: asked first
        return "not a database this gateway keeps its store in (sqlite or postgresql)"
    if isinstance(exc, ArgumentError | ValueError):   # unparseable, or a port that is no number
        return "not a database URL like sqlite:///path/to/gateway.db or postgresql://user@host/database"
    if isinstance(exc, SQLAlchemyError):
        origin = getattr(exc, "orig", None)
        text = str(origin if origin is not None else exc)
    elif isinstance(exc, OSError):
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename}" if exc.filename else str(exc)
    else:
        text = str(exc)
    if password:   # as the driver may quote it: decoded, and as written in the URL (p%40ss)
        for form in sorted({password, quote(password, safe=""), quote(password), written or password}, key=len,
                           reverse=True):
            text = text.replace(form, "***")
    return next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)[:300]


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.store [URL]``: migrate; a store that cannot be opened is one line and exit 2."""
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else database_url()
    try:
        upgrade(normalize_url(url))
    except Exception as exc:   # a one-line reason, not a traceback (this is an operator's command)
        print(f"python -m gateway.store: cannot migrate the audit store: {open_problem(exc, url)}", file=sys.stderr)
        return 2
    return 0
