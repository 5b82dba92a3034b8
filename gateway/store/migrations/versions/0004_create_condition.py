"""Audit store: the If-None-Exist condition a request was created under, unique.

Two conditional creates with the same condition that arrive together both search, find nothing and create: two
payer calls for one request. With the condition stored under a unique index, the second insert fails and the
gateway answers it with the first. Rows stored before, and plain creates, have none (NULL), which the partial
index leaves out.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "eligibility_transactions"
INDEX = "ix_eligibility_transactions_create_condition"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("create_condition", sa.String(64), nullable=True))   # a SHA-256, in hex
    # partial: only conditional creates have a condition, and the others' inserts need not touch the index
    where = sa.text("create_condition IS NOT NULL")
    op.create_index(INDEX, TABLE, ["create_condition"], unique=True, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:   # SQLite: the table is rebuilt without it
        batch.drop_column("create_condition")
