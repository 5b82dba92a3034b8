"""Audit store: an index on received_at, for purging transactions by age (``fhir-x12 store purge``).

Building it locks writes to the table while it runs (on PostgreSQL about a second per million rows). On a
large store, create it first without locking and this migration leaves it be::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_eligibility_transactions_received_at
        ON eligibility_transactions (received_at);

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "eligibility_transactions"
INDEX = "ix_eligibility_transactions_received_at"


def upgrade() -> None:
    op.create_index(INDEX, TABLE, ["received_at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE, if_exists=True)
