"""The audit store's fast writes (gateway.store.dbapi) store exactly what SQLAlchemy's Connection.execute would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError, StatementError

from gateway.store import AuditStore
from gateway.store.audit import _ANSWER_UPDATE, _FORGET_RESPONSE_IDENTIFIERS, _FREE_CONDITION, _RECORDS
from gateway.store.models import RecordIdentifier

EAST = timezone(timedelta(hours=5, minutes=30))
ROW = {
    "status": "sent", "request": {"resourceType": "CoverageEligibilityRequest", "text": "Zoë \u2013 \U0001F600",
                                  "n": [1, 2.5, None, True]},
    "resolved": None, "payer_id": "ACME01", "trace": "T1", "aaa_codes": [], "patient_ref": "Patient/p1",
    "insurer_ref": None, "provider_ref": "Organization/o1", "request_status": "active",
    "request_identifiers": ["urn:x|1"], "response_identifiers": [],
    "created": datetime(2026, 3, 1, 23, 30, tzinfo=EAST), "created_end": datetime(2026, 3, 1, 18, 0, 0, 999999),
    "received_at": datetime(2026, 3, 1, 18, 0, 1, 250000, tzinfo=UTC), "x12_request": "ISA*00*~", "sent_at": None,
    "create_condition": None,
}
ANSWER = {
    "x12_response": "ISA*271~", "response": {"resourceType": "CoverageEligibilityResponse", "id": "r"},
    "outcome": "complete", "aaa_codes": ["72"], "http_status": 200, "answered_at": datetime(2026, 3, 1, 18, 0, 2,
                                                                                             tzinfo=UTC),
    "error": None, "status": "answered", "response_id": None, "response_identifiers": ["|2"],
    "response_created": datetime(2026, 3, 1, tzinfo=UTC), "response_created_end": None, "duration_ms": 750.5,
}


def _stored(store: AuditStore, id: str) -> dict:
    """The row as the database holds it (no column types applied: JSON text, datetime text on SQLite)."""
    with store.engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM eligibility_transactions WHERE id = :id"), {"id": id}).mappings()
        return {k: v for k, v in row.one().items() if k != "id"}


def test_fast_writes_store_what_core_writes(database_url: str) -> None:
    with AuditStore(database_url) as store:
        fast = store.dbapi_writer
        insert = fast.compile(_RECORDS.insert(), column_keys=["id", *ROW])
        update = fast.compile(_ANSWER_UPDATE)
        with fast.transaction() as transaction:
            assert transaction.execute(insert, {**ROW, "id": "fast", "create_condition": "c"}) == 1
        with store.engine.begin() as connection:
            connection.execute(_RECORDS.insert(), {**ROW, "id": "core", "create_condition": "d"})
        assert _stored(store, "fast")["create_condition"] == "c"
        store_fast, store_core = _stored(store, "fast"), _stored(store, "core")
        store_fast.pop("create_condition"), store_core.pop("create_condition")
        assert store_fast == store_core
        with fast.transaction() as transaction:
            assert transaction.execute(update, {**ANSWER, "rid": "fast"}) == 1
            assert transaction.execute(update, {**ANSWER, "rid": "nobody"}) == 0
        with store.engine.begin() as connection:
            connection.execute(_ANSWER_UPDATE, {**ANSWER, "rid": "core"})
        store_fast, store_core = _stored(store, "fast"), _stored(store, "core")
        assert store_fast.pop("create_condition") == "c" and store_core.pop("create_condition") == "d"
        assert store_fast == store_core
        # values written into the statement itself come along: create_condition=None, kind='response'
        with fast.transaction() as transaction:
            transaction.execute(fast.compile(_FREE_CONDITION), {"rid": "fast"})
        assert _stored(store, "fast")["create_condition"] is None
        assert _stored(store, "core")["create_condition"] == "d"
        identifiers = RecordIdentifier.__table__
        with fast.transaction() as transaction:
            insert_identifier = fast.compile(identifiers.insert(), column_keys=["transaction_id", "kind", "system",
                                                                                "value"])
            transaction.execute_many(insert_identifier, [{"transaction_id": "fast", "kind": kind, "system": "",
                                                          "value": "v"} for kind in ("request", "response")])
            transaction.execute(fast.compile(_FORGET_RESPONSE_IDENTIFIERS), {"rid": "fast"})
        with store.engine.connect() as connection:
            kinds = connection.execute(text("SELECT kind FROM eligibility_identifiers WHERE transaction_id = 'fast'"))
            assert [k for (k,) in kinds] == ["request"]
        # and the typed reads of the store see the same record
        fast_record, core_record = store.record("fast"), store.record("core")
        assert fast_record.created == core_record.created == datetime(2026, 3, 1, 18, 0, tzinfo=UTC)
        assert fast_record.received_at == datetime(2026, 3, 1, 18, 0, 1, 250000, tzinfo=UTC)
        assert fast_record.request == ROW["request"] and fast_record.resolved is None


def test_a_failed_transaction_leaves_nothing_and_raises_sqlalchemy_errors(database_url: str) -> None:
    with AuditStore(database_url) as store:
        fast = store.dbapi_writer
        insert = fast.compile(_RECORDS.insert(), column_keys=["id", *ROW])
        with pytest.raises(RuntimeError), fast.transaction() as transaction:
            transaction.execute(insert, {**ROW, "id": "half"})
            raise RuntimeError("the second statement failed")
        with fast.transaction() as transaction:
            transaction.execute(insert, {**ROW, "id": "one"})
        with pytest.raises(IntegrityError) as raised, fast.transaction() as transaction:
            transaction.execute(insert, {**ROW, "id": "two"})
            transaction.execute(insert, {**ROW, "id": "one"})   # the primary key again
        assert "Zo" not in str(raised.value)   # bound values (patient data) are never in the message
        assert store.record("half") is None and store.record("two") is None
        assert store.record("one") is not None
        # the connection went back to the pool usable: the next write works
        with fast.transaction() as transaction:
            transaction.execute(insert, {**ROW, "id": "three"})
        assert store.record("three") is not None


def test_the_lookup_reads_values_as_their_column_types(database_url: str) -> None:
    from gateway.store.audit import _ANSWER_LOOKUP

    with AuditStore(database_url) as store:
        fast = store.dbapi_writer
        with fast.transaction() as transaction:
            transaction.execute(fast.compile(_RECORDS.insert(), column_keys=["id", *ROW]),
                                {**ROW, "id": "x", "response_identifiers": ["s|v"]})
        lookup = fast.compile(_ANSWER_LOOKUP, results=(_RECORDS.c.received_at, _RECORDS.c.response_identifiers))
        with fast.transaction() as transaction:
            assert transaction.first(lookup, {"rid": "x"}) == (ROW["received_at"], ["s|v"])
            assert transaction.first(lookup, {"rid": "nobody"}) is None


def test_a_database_that_cannot_be_reached_is_a_sqlalchemy_error(database_url: str, monkeypatch):
    """The service answers 503 to SQLAlchemy's errors: the driver's own (the pool opens connections unwrapped)
    would be a 500, and would escape the exchange that must never raise."""
    with AuditStore(database_url) as store:
        dbapi = store.engine.dialect.loaded_dbapi

        def refused() -> None:
            raise dbapi.OperationalError("connection refused")

        store.engine.dispose()
        monkeypatch.setattr(store.engine.pool, "connect", refused)
        now = datetime(2026, 3, 1, tzinfo=UTC)
        with pytest.raises(OperationalError):
            store.record_request("r1", {"resourceType": "CoverageEligibilityRequest"}, None, "ACME01", "T", now)
        with pytest.raises(SQLAlchemyError):
            store.record_answer("r1", x12_response=None, response=None, outcome=None, aaa_codes=[], http_status=200,
                                answered_at=now)


def test_a_value_no_column_type_can_convert_is_a_statement_error_naming_no_value(database_url: str):
    with AuditStore(database_url) as store:
        fast = store.dbapi_writer
        insert = fast.compile(_RECORDS.insert(), column_keys=["id", *ROW])
        with pytest.raises(StatementError) as raised, fast.transaction() as transaction:
            transaction.execute(insert, {**ROW, "id": "odd", "request": {"secret-member-id": {1, 2}}})
        assert "secret" not in str(raised.value) and "TypeError" in str(raised.value)
        assert store.record("odd") is None
        with fast.transaction() as transaction:   # and the connection is usable again
            transaction.execute(insert, {**ROW, "id": "next"})
        assert store.record("next") is not None


@pytest.mark.parametrize("value", [
    None, datetime(2026, 3, 1, 18, 0, 1, 250000, tzinfo=UTC), datetime(2026, 3, 1, 23, 30, tzinfo=EAST),
    datetime(2026, 3, 1, 18, 0), datetime(1, 1, 1), datetime.max, datetime(1, 1, 1, tzinfo=EAST),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
    datetime(999, 2, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-14))),
])
def test_a_utc_datetime_is_stored_in_sqlite_as_its_datetime_type_stores_it(value: datetime | None) -> None:
    """UTCDateTime formats SQLite's text itself, in one step: the same text as the dialect's DATETIME (26 characters,
    UTC, microseconds always) after the UTC conversion."""
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    from gateway.store.models import UTCDateTime, to_utc

    dialect = sqlite.dialect()
    stored = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)(value)
    datetime_type = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert stored == (None if value is None else datetime_type(to_utc(value).replace(tzinfo=None)))
