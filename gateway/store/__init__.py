"""The gateway's audit store: every eligibility transaction (SQLite file or PostgreSQL) and search over it."""

from gateway.store.audit import AuditStore
from gateway.store.errors import (
    ConditionTakenError,
    DuplicateRecordError,
    RecordStateError,
    SearchError,
    StoreError,
    UnknownRecordError,
)
from gateway.store.migrate import database_url, upgrade
from gateway.store.models import Base, EligibilityRecord

__all__ = ["AuditStore", "Base", "ConditionTakenError", "DuplicateRecordError", "EligibilityRecord",
           "RecordStateError", "SearchError", "StoreError", "UnknownRecordError", "database_url", "upgrade"]
