"""Audit store: an index on received_at, for purging transactions by age (``fhir-x12 store purge``).

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
    op.create_index(INDEX, TABLE, ["received_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
