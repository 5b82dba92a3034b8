"""Audit store: when the client released a request's asynchronous status URL.

FHIR's asynchronous pattern lets the client DELETE the status URL: to cancel a request not yet under way, or to
say it is done with a finished one. Either way the URL answers 404 afterwards, while the transaction stays in
the audit store (it is the record of what was asked and answered). Rows stored before have none (NULL).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "eligibility_transactions"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:   # SQLite: the table is rebuilt without it
        batch.drop_column("released_at")
