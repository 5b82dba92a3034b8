"""Date search (``created``) by FHIR R4 range rules, at every precision and at the ends of the calendar.

Both the stored ``created`` and the search value are ranges (a year, a month, a day, a second, ...); the store
keeps each target's first and last instant (migration 0003). With target ``[ts, te]`` and search ``[ss, se]``:
eq ``ss <= ts and te <= se``; ne not eq; gt ``te > se``; lt ``ts < ss``; ge gt or eq; le lt or eq.
Runs on SQLite and, when it is running, PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text

from gateway.store import AuditStore, Base, SearchError, upgrade
from gateway.store.migrate import alembic_config
from gateway.store.models import UTC_MAX, UTC_MIN, EligibilityRecord

ANSWERED = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)

# name -> the CER's created (the response carries the same one, except "fb": none, so it is when it was answered)
CREATED: dict[str, str | None] = {
    "early": "0001-01-01T00:00:00+01:00",   # before 0001-01-01T00:00:00Z: stored as the first instant there is
    "fb": "2024-06-01T08:00:00Z",
    "year": "2025",
    "month": "2025-03",
    "day": "2025-03-11",
    "sec": "2025-03-11T12:00:00Z",
    "ms": "2025-03-11T12:00:00.500Z",
    "tz": "2025-03-11T23:30:00-05:00",      # 2025-03-12T04:30:00Z
    "lastday": "9999-12-31",
    "late": "9999-12-31T23:59:59-05:00",    # after 9999-12-31T23:59:59.999999Z: stored as the last instant there is
    "none": None,                           # no created (and never answered)
}
ALL = set(CREATED) - {"none"}
ANSWERED_NAMES = ALL


def _request(name: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "CoverageEligibilityRequest", "status": "active",
                                "purpose": ["validation"], "patient": {"reference": "Patient/p1"},
                                "insurer": {"reference": "Organization/acme"}}
    if CREATED[name] is not None:
        resource["created"] = CREATED[name]
    return resource


def _response(name: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "CoverageEligibilityResponse", "id": f"r-{name}",
                                "status": "active", "outcome": "complete",
                                "request": {"reference": f"CoverageEligibilityRequest/q-{name}"}}
    if name != "fb":
        resource["created"] = CREATED[name]
    return resource


@pytest.fixture(scope="module")
def dated(module_database_url: str):
    with AuditStore(module_database_url) as store:
        for name in CREATED:
            store.record_request(f"q-{name}", _request(name), None, "60054", f"T-{name}", ANSWERED - timedelta(1))
            if name in ANSWERED_NAMES:
                store.record_answer(f"q-{name}", x12_response="ISA~", response=_response(name), outcome=None,
                                    aaa_codes=[], http_status=200, answered_at=ANSWERED)
        yield store


def _with(expected: set[str], *extra: str) -> set[str]:
    return expected | set(extra)


NOON = "2025-03-11T12:00:00Z"
HALF = "2025-03-11T12:00:00.500Z"
# (created values, requests found, responses found when they differ)
CASES: list[tuple[list[str], set[str], set[str] | None]] = [
    # a second inside the day: the day (and the month and year) overlap both sides of it
    ([f"eq{NOON}"], {"sec", "ms"}, None),
    ([NOON], {"sec", "ms"}, None),  # no prefix: eq
    ([f"ne{NOON}"], ALL - {"sec", "ms"}, None),
    ([f"gt{NOON}"], {"day", "month", "year", "tz", "lastday", "late"}, None),
    ([f"ge{NOON}"], {"day", "month", "year", "tz", "lastday", "late", "sec", "ms"}, None),
    ([f"lt{NOON}"], {"day", "month", "year", "early", "fb"}, None),
    ([f"le{NOON}"], {"day", "month", "year", "early", "fb", "sec", "ms"}, None),
    # a millisecond inside a second: the second-precision target overlaps both sides of it
    ([f"eq{HALF}"], {"ms"}, None),
    ([f"ne{HALF}"], ALL - {"ms"}, None),
    ([f"gt{HALF}"], {"sec", "day", "month", "year", "tz", "lastday", "late"}, None),
    ([f"ge{HALF}"], {"sec", "day", "month", "year", "tz", "lastday", "late", "ms"}, None),
    ([f"lt{HALF}"], {"sec", "day", "month", "year", "early", "fb"}, None),
    ([f"le{HALF}"], {"sec", "day", "month", "year", "early", "fb", "ms"}, None),
    # day precision
    (["eq2025-03-11"], {"day", "sec", "ms"}, None),
    (["ne2025-03-11"], ALL - {"day", "sec", "ms"}, None),
    (["gt2025-03-11"], {"month", "year", "tz", "lastday", "late"}, None),
    (["ge2025-03-11"], {"month", "year", "tz", "lastday", "late", "day", "sec", "ms"}, None),
    (["lt2025-03-11"], {"month", "year", "early", "fb"}, None),
    (["le2025-03-11"], {"month", "year", "early", "fb", "day", "sec", "ms"}, None),
    (["2025-03-12"], {"tz"}, None),  # the offset moves it into the next UTC day
    (["2025-03-12T04:30:00Z"], {"tz"}, None),
    (["2025-03-11T23:30:00-05:00"], {"tz"}, None),
    # month precision
    (["eq2025-03"], {"day", "sec", "ms", "tz", "month"}, None),
    (["ne2025-03"], {"year", "early", "fb", "lastday", "late"}, None),
    (["gt2025-03"], {"year", "lastday", "late"}, None),
    (["ge2025-03"], {"year", "lastday", "late", "day", "sec", "ms", "tz", "month"}, None),
    (["lt2025-03"], {"year", "early", "fb"}, None),
    (["le2025-03"], {"year", "early", "fb", "day", "sec", "ms", "tz", "month"}, None),
    (["gt2025-03-31T23:59:59Z"], {"year", "lastday", "late"}, None),  # the month ends with that second
    # year precision
    (["eq2025"], {"day", "month", "year", "sec", "ms", "tz"}, None),
    (["ne2025"], {"early", "fb", "lastday", "late"}, None),
    (["gt2025"], {"lastday", "late"}, None),
    (["ge2025"], {"day", "month", "year", "sec", "ms", "tz", "lastday", "late"}, None),
    (["lt2025"], {"early", "fb"}, None),
    (["le2025"], {"day", "month", "year", "sec", "ms", "tz", "early", "fb"}, None),
    (["lt2025-01-01T00:00:00Z"], {"early", "fb"}, None),  # the year starts with that second
    (["le2025-01-01T00:00:00Z"], {"early", "fb"}, None),
    # the last day there is: "le9999-12-31" is the usual open end
    (["le9999-12-31"], ALL, None),
    (["lt9999-12-31"], ALL - {"lastday", "late"}, None),
    (["eq9999-12-31"], {"lastday", "late"}, None),
    (["ge9999-12-31"], {"lastday", "late"}, None),
    (["gt9999-12-31"], set(), None),
    (["9999"], {"lastday", "late"}, None),
    (["9999-12-31T23:59"], {"late"}, None),
    (["ne9999-12-31T23:59"], ALL - {"late"}, None),
    (["gt9999-12-31T23:59"], set(), None),
    (["lt9999-12-31T23:59"], ALL - {"late"}, None),
    (["9999-12-31T23:59:59-05:00"], {"late"}, None),
    (["ge2025-03-11", "le9999-12-31"], {"day", "month", "year", "sec", "ms", "tz", "lastday", "late"}, None),
    # the first instant there is
    (["0001-01-01T00:00:00+01:00"], {"early"}, None),
    (["lt0001-01-01T00:00:00+01:00"], set(), None),
    (["le0001-01-01T00:00:00+01:00"], {"early"}, None),
    (["gt0001-01-01T00:00:00+01:00"], ALL - {"early"}, None),
    (["ge0001-01-01T00:00:00+01:00"], ALL, None),
    (["ge0001-01-01"], ALL, None),
    (["le0001-01-01"], {"early"}, None),
    (["0001"], {"early"}, None),
    # fb: the response has no created, so it is when it was answered, an instant (inside its millisecond);
    # the request's created has second precision (not inside that millisecond, and reaching past it)
    (["eq2024-06-01T08:00:00.000Z"], set(), {"fb"}),
    (["gt2024-06-01T08:00:00.000Z"], ALL - {"early"}, ALL - {"early", "fb"}),
    (["eq2024-06-01T08:00:00Z"], {"fb"}, None),
    # comma = OR, repeated = AND: a range overlapping a second is both ge and le it
    (["eq0001,eq9999"], {"early", "lastday", "late"}, None),
    ([f"ge{NOON}", f"le{NOON}"], {"day", "month", "year", "sec", "ms"}, None),
]


@pytest.mark.parametrize(("values", "requests", "responses"), CASES, ids=lambda v: repr(v) if isinstance(v, list)
                         else "")
def test_created_search_follows_fhir_ranges(dated: AuditStore, values: list[str], requests: set[str],
                                            responses: set[str] | None):
    found, total = dated.search_requests({"created": values}, 100, 0)
    assert {r["id"].removeprefix("q-") for r in found} == requests and total == len(requests)
    expected = requests if responses is None else responses
    found, total = dated.search_responses({"created": values}, 100, 0)
    assert {r["id"].removeprefix("r-") for r in found} == expected and total == len(expected)


def test_missing_created(dated: AuditStore):
    assert [r["id"] for r in dated.search_requests({"created:missing": ["true"]}, 100, 0)[0]] == ["q-none"]
    assert dated.search_responses({"created:missing": ["true"]}, 100, 0) == ([], 0)   # fb: answered_at


def test_sort_by_created_uses_the_first_instant(dated: AuditStore):
    oldest_first = ["early", "fb", "year", "month", "day", "sec", "ms", "tz", "lastday", "late"]
    requests = dated.search_requests({"_sort": ["created"]}, 100, 0)[0]
    assert [r["id"] for r in requests] == [f"q-{n}" for n in [*oldest_first, "none"]]
    requests = dated.search_requests({"_sort": ["-created"]}, 100, 0)[0]
    assert [r["id"] for r in requests] == [f"q-{n}" for n in [*reversed(oldest_first), "none"]]   # nulls last
    responses = dated.search_responses({}, 100, 0)[0]   # newest first by default
    assert [r["id"] for r in responses] == [f"r-{n}" for n in reversed(oldest_first)]


@pytest.mark.parametrize("value", ["0000", "le0000-12-31", "0000-12-31T23:00:00-01:00", "ge10000-01-01",
                                   "eq9999-12-32", "lt0001-00-01"])
@pytest.mark.parametrize("kind", ["requests", "responses"])
def test_dates_outside_the_calendar_are_search_errors(dated: AuditStore, kind: str, value: str):
    search = dated.search_requests if kind == "requests" else dated.search_responses
    with pytest.raises(SearchError) as caught:
        search({"created": [value]}, 10, 0)
    assert caught.value.param == "created"


def test_extreme_created_values_are_stored_as_sent(dated: AuditStore):
    """The ranges are cut to what a column holds; the resources keep the created they came with."""
    early, late, lastday = dated.record("q-early"), dated.record("q-late"), dated.record("q-lastday")
    assert (early.created, early.created_end) == (UTC_MIN, UTC_MIN)
    assert (late.created, late.created_end) == (UTC_MAX, UTC_MAX)
    assert (lastday.created, lastday.created_end) == (datetime(9999, 12, 31, tzinfo=UTC), UTC_MAX)
    assert (early.response_created, early.response_created_end) == (UTC_MIN, UTC_MIN)
    assert (late.response_created, late.response_created_end) == (UTC_MAX, UTC_MAX)
    assert dated.get_request("q-early")["created"] == "0001-01-01T00:00:00+01:00"
    assert dated.get_request("q-late")["created"] == "9999-12-31T23:59:59-05:00"
    assert dated.get_response("r-late")["created"] == "9999-12-31T23:59:59-05:00"
    fb = dated.record("q-fb")
    assert (fb.created, fb.created_end) == (ANSWERED, ANSWERED + timedelta(microseconds=999999))
    assert (fb.response_created, fb.response_created_end) == (ANSWERED, ANSWERED)   # answered_at: an instant
    day = dated.record("q-day")
    assert (day.created, day.created_end) == (datetime(2025, 3, 11, tzinfo=UTC),
                                             datetime(2025, 3, 11, 23, 59, 59, 999999, tzinfo=UTC))
    none = dated.record("q-none")
    assert (none.created, none.created_end, none.response_created, none.response_created_end) == (None,) * 4


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo"])
def test_extremes_read_back_whatever_the_postgres_session_zone(database_url: str, zone: str):
    """psycopg reads a timestamptz in the session's zone; the store's sessions are in UTC, so the first and
    the last instant are not pushed out of years 1-9999 (a DataError)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL session setting")
    url = f"{database_url}%20-ctimezone%3D{zone}"
    with AuditStore(url) as store:
        for name in ("early", "late"):
            store.record_request(f"q-{name}", _request(name), None, "60054", "T", ANSWERED)
            store.record_answer(f"q-{name}", x12_response="ISA~", response=_response(name), outcome=None,
                                aaa_codes=[], http_status=200, answered_at=ANSWERED)
        assert store.record("q-early").created == UTC_MIN and store.record("q-late").created_end == UTC_MAX
        assert {r["id"] for r in store.search_requests({"created": ["le9999-12-31"]}, 10, 0)[0]} == {
            "q-early", "q-late"}
        with store.engine.connect() as connection:
            assert connection.execute(text("show timezone")).scalar_one() == "UTC"


# -- migration 0003 -------------------------------------------------------------------------------------------

RECORDS = EligibilityRecord.__table__
OLD_ROWS = 1205   # more than one batch of the backfill (1000)


def _old_row(id: str, request: dict[str, Any], created: datetime | None, *, response: dict[str, Any] | None = None,
             response_created: datetime | None = None, answered: datetime | None = None) -> dict[str, Any]:
    """A row as the code of revision 0002 wrote it (created = the first instant of the CER's created)."""
    return {"id": id, "status": "answered" if response else "received", "request": request, "resolved": None,
            "x12_request": None, "x12_response": None, "response": response,
            "response_id": response.get("id") if response and response["resourceType"].endswith("Response") else None,
            "payer_id": "60054", "outcome": None, "aaa_codes": [], "http_status": None, "error": None,
            "trace": f"T-{id}", "patient_ref": "Patient/p1", "insurer_ref": "Organization/acme",
            "provider_ref": None, "request_status": "active", "request_identifiers": [], "response_identifiers": [],
            "created": created, "response_created": response_created, "received_at": datetime(2025, 3, 1, tzinfo=UTC),
            "sent_at": None, "answered_at": answered, "duration_ms": None}


def _cer(created: str | None) -> dict[str, Any]:
    return {"resourceType": "CoverageEligibilityRequest", "status": "active",
            **({"created": created} if created is not None else {})}


def test_migration_0003_backfills_rows_written_by_0002(database_url: str):
    command.upgrade(alembic_config(database_url), "0002")
    engine = create_engine(database_url)
    at = datetime(2025, 3, 11, 0, 0, 5, tzinfo=UTC)
    rows = [
        _old_row("m-sec", _cer("2025-03-10T09:15:00-05:00"), datetime(2025, 3, 10, 14, 15, tzinfo=UTC),
                 response={"resourceType": "CoverageEligibilityResponse", "id": "r-sec",
                           "created": "2025-03-10T14:15:02.25Z"},
                 response_created=datetime(2025, 3, 10, 14, 15, 2, 250000, tzinfo=UTC), answered=at),
        _old_row("m-day", _cer("2025-03-11"), datetime(2025, 3, 11, tzinfo=UTC),
                 response={"resourceType": "CoverageEligibilityResponse", "id": "r-day"},  # no created: answered_at
                 response_created=at, answered=at),
        _old_row("m-none", _cer(None), None,
                 response={"resourceType": "OperationOutcome", "id": "oo"}, answered=at),
        _old_row("m-bad", _cer("yesterday"), None),
        *(_old_row(f"m-{n:05d}", _cer("2025-04"), datetime(2025, 4, 1, tzinfo=UTC)) for n in range(OLD_ROWS)),
    ]
    try:
        with engine.begin() as connection:
            assert "created_end" not in {c["name"] for c in inspect(connection).get_columns(RECORDS.name)}
            connection.execute(RECORDS.insert(), rows)
        upgrade(database_url)
        with engine.connect() as connection:
            head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
            assert connection.execute(text("select version_num from alembic_version")).scalar_one() == head
            assert compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                    Base.metadata) == []
            found = {row.id: row for row in connection.execute(select(
                RECORDS.c.id, RECORDS.c.created, RECORDS.c.created_end, RECORDS.c.response_created,
                RECORDS.c.response_created_end))}
    finally:
        engine.dispose()
    assert (found["m-sec"].created, found["m-sec"].created_end) == (
        datetime(2025, 3, 10, 14, 15, tzinfo=UTC), datetime(2025, 3, 10, 14, 15, 0, 999999, tzinfo=UTC))
    assert (found["m-sec"].response_created, found["m-sec"].response_created_end) == (
        datetime(2025, 3, 10, 14, 15, 2, 250000, tzinfo=UTC), datetime(2025, 3, 10, 14, 15, 2, 259999, tzinfo=UTC))
    assert (found["m-day"].created_end, found["m-day"].response_created_end) == (
        datetime(2025, 3, 11, 23, 59, 59, 999999, tzinfo=UTC), at)
    assert (found["m-none"].created_end, found["m-none"].response_created_end) == (None, None)
    assert (found["m-bad"].created, found["m-bad"].created_end) == (None, None)
    assert {(row.created_end, row.response_created_end) for id, row in found.items() if id[2:].isdigit()} == {
        (datetime(2025, 4, 30, 23, 59, 59, 999999, tzinfo=UTC), None)}

    with AuditStore(database_url) as store:   # the backfilled rows are searched by the new rules
        page, total = store.search_requests({"created": ["ge2025-03-11T12:00:00Z", "lt2025-04-01"]}, 10, 0)
        assert ([r["id"] for r in page], total) == (["m-day"], 1)
        assert store.search_requests({"created": ["gt2025-04-30T12:00:00Z"]}, 0, 0)[1] == OLD_ROWS
        assert store.search_requests({"created:missing": ["true"]}, 10, 0)[1] == 2
        assert {r["id"] for r in store.search_responses({"created": ["eq2025-03-11T00:00:05Z"]}, 10, 0)[0]} == {
            "r-day"}
        assert {r["id"] for r in store.search_responses({"created": ["gt2025-03-10T14:15:02.250Z"]}, 10, 0)[0]} == {
            "r-sec", "r-day"}


def test_migration_0003_downgrades_and_upgrades_again(database_url: str):
    upgrade(database_url)
    with AuditStore(database_url) as store:
        store.record_request("d-1", _cer("2025-03-11"), None, "60054", "T", ANSWERED)
    config = alembic_config(database_url)
    command.downgrade(config, "0002")
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns(RECORDS.name)}
            assert not {"created_end", "response_created_end"} & columns and "created" in columns
        command.upgrade(config, "head")
        with engine.connect() as connection:
            assert connection.execute(select(RECORDS.c.created_end)).scalar_one() == datetime(
                2025, 3, 11, 23, 59, 59, 999999, tzinfo=UTC)
            assert compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                    Base.metadata) == []
    finally:
        engine.dispose()
