"""Audit store: eligibility transactions and their identifiers.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLE = "eligibility_transactions"
IDENTIFIERS = "eligibility_identifiers"


def upgrade() -> None:
    aware = sa.DateTime(timezone=True)
    op.create_table(
        TABLE,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("resolved", sa.JSON(), nullable=True),
        sa.Column("x12_request", sa.Text(), nullable=True),
        sa.Column("x12_response", sa.Text(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("response_id", sa.String(64), nullable=True),
        sa.Column("payer_id", sa.String(80), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("aaa_codes", sa.JSON(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("trace", sa.String(80), nullable=True),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("insurer_ref", sa.String(), nullable=True),
        sa.Column("provider_ref", sa.String(), nullable=True),
        sa.Column("request_status", sa.String(32), nullable=True),
        sa.Column("request_identifiers", sa.JSON(), nullable=False),
        sa.Column("response_identifiers", sa.JSON(), nullable=False),
        sa.Column("created", aware, nullable=True),
        sa.Column("response_created", aware, nullable=True),
        sa.Column("received_at", aware, nullable=False),
        sa.Column("sent_at", aware, nullable=True),
        sa.Column("answered_at", aware, nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
    )
    op.create_index("ix_eligibility_transactions_created", TABLE, ["created"])
    op.create_index("ix_eligibility_transactions_patient_ref", TABLE, ["patient_ref"])
    op.create_index("ix_eligibility_transactions_insurer_ref", TABLE, ["insurer_ref"])
    op.create_index("ix_eligibility_transactions_response_id", TABLE, ["response_id"], unique=True)
    op.create_index("ix_eligibility_transactions_response_created", TABLE, ["response_created"])
    op.create_index("ix_eligibility_transactions_trace", TABLE, ["trace"])

    op.create_table(
        IDENTIFIERS,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("transaction_id", sa.String(64),
                  sa.ForeignKey(f"{TABLE}.id", ondelete="CASCADE", name="fk_eligibility_identifiers_transaction_id"),
                  nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
    )
    op.create_index("ix_eligibility_identifiers_kind_value", IDENTIFIERS, ["kind", "value"])
    op.create_index("ix_eligibility_identifiers_transaction_id", IDENTIFIERS, ["transaction_id"])


def downgrade() -> None:
    op.drop_table(IDENTIFIERS)
    op.drop_table(TABLE)
