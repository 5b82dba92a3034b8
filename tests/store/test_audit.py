"""The audit store: migrations, the received -> sent -> answered life of a transaction, crash safety, search.

Every test runs on a fresh SQLite file and, when it is running, on PostgreSQL (own schema per test).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from gateway.errors import GatewayError
from gateway.store import (
    AuditStore,
    Base,
    DuplicateRecordError,
    RecordStateError,
    SearchError,
    StoreError,
    UnknownRecordError,
    database_url,
    upgrade,
)
from gateway.store.search import parse_datetime_range

ROOT = Path(__file__).resolve().parents[2]
SYS_A = "urn:example:ehr:eligibility"
SYS_B = "urn:example:ehr:batch"
SYS_R = "urn:example:gateway:response"
TABLES = {"alembic_version", "eligibility_transactions", "eligibility_identifiers"}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _cer(*, patient: Any, insurer: Any, provider: Any | None = None, status: str = "active",
         created: str | None = None, identifiers: list[tuple[str | None, str]] = (), client_id: str = "client-id"
         ) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "CoverageEligibilityRequest", "id": client_id}
    if identifiers:
        resource["identifier"] = [{"system": s, "value": v} if s else {"value": v} for s, v in identifiers]
    resource.update({"status": status, "purpose": ["validation"], "patient": patient})
    if created is not None:
        resource["created"] = created
    resource["insurer"] = insurer
    if provider is not None:
        resource["provider"] = provider
    resource["insurance"] = [{"focal": True, "coverage": {"reference": "Coverage/cov-1"}}]
    return resource


def _response(response_id: str, request_id: str, outcome: str, *, created: str | None = None,
              identifiers: list[tuple[str, str]] = ()) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "CoverageEligibilityResponse", "id": response_id}
    if identifiers:
        resource["identifier"] = [{"system": s, "value": v} for s, v in identifiers]
    resource.update({"status": "active", "purpose": ["validation"], "patient": {"reference": "#patient"},
                     "request": {"reference": f"CoverageEligibilityRequest/{request_id}"}, "outcome": outcome,
                     "insurer": {"reference": "#payer"}})
    if created is not None:
        resource["created"] = created
    return resource


def _ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def _at(text_value: str) -> datetime:
    return datetime.fromisoformat(text_value.replace("Z", "+00:00"))


OPERATION_OUTCOME = {"resourceType": "OperationOutcome", "id": "oo-6",
                     "issue": [{"severity": "error", "code": "transient", "diagnostics": "payer rejected (TA1 022)"}]}

# seven transactions: different patients, insurers, providers, statuses, days, outcomes and end states
SEED: list[dict[str, Any]] = [
    {"id": "req-1", "request": _cer(patient=_ref("Patient/p1"), insurer=_ref("Organization/acme"),
                                    provider=_ref("Organization/clinic"), created="2025-03-10T09:15:00-05:00",
                                    identifiers=[(SYS_A, "A-1")]),
     "received": "2025-03-10T14:15:00Z",
     "answer": dict(outcome="complete", response=_response("resp-1", "req-1", "complete",
                                                             created="2025-03-10T14:15:02Z",
                                                             identifiers=[(SYS_R, "R-1")]))},
    {"id": "req-2", "request": _cer(patient=_ref("Patient/p2"), insurer=_ref("Organization/acme"),
                                    provider=_ref("Practitioner/dr-lee"), created="2025-03-10T23:30:00Z",
                                    identifiers=[(SYS_A, "A-2"), (SYS_B, "shared")]),
     "received": "2025-03-10T23:30:00Z",
     "answer": dict(outcome="error", aaa_codes=["72"],
                    response=_response("resp-2", "req-2", "error", created="2025-03-10T23:30:03Z"))},
    {"id": "req-3", "request": _cer(patient=_ref("Patient/p1"), insurer=_ref("Organization/bluecross"),
                                    provider=_ref("Organization/clinic"), status="cancelled", created="2025-03-11",
                                    identifiers=[(None, "NOSYS-3")]),
     "received": "2025-03-11T00:00:01Z",
     "answer": dict(outcome="partial", aaa_codes=["75"],
                    response=_response("resp-3", "req-3", "partial", created="2025-03-11T00:00:04Z",
                                       identifiers=[(SYS_R, "R-3")]))},
    {"id": "req-4", "request": _cer(patient={"identifier": {"system": "urn:mrn", "value": "MRN-4"}},
                                    insurer={"identifier": {"system": "http://x12.org/payer-id", "value": "60054"}},
                                    provider=_ref("https://ehr.example/fhir/Practitioner/dr-kim"), status="draft",
                                    created="2025-03-12T08:00:00Z", identifiers=[(SYS_B, "shared")]),
     "received": "2025-03-12T08:00:00Z", "sent": True},  # sent, never answered
    {"id": "req-5", "request": _cer(patient=_ref("Patient/p3"), insurer=_ref("Organization/bluecross"),
                                    provider=_ref("Practitioner/dr-lee"), created="2025-02-28T12:00:00+00:00",
                                    identifiers=[(SYS_A, "A-5")]),
     "received": "2025-02-28T12:00:00Z"},  # received only (the process died)
    {"id": "req-6", "request": _cer(patient=_ref("Patient/p2"), insurer=_ref("Organization/acme"),
                                    created="2025-03-12T20:00:00-05:00"),  # no provider; 2025-03-13T01:00Z
     "received": "2025-03-13T01:00:00Z",
     "answer": dict(outcome="error", response=OPERATION_OUTCOME, error=OPERATION_OUTCOME, http_status=502,
                    x12_response="TA1*000000001*250313*0100*R*022~")},
    {"id": "req-7", "request": _cer(patient=_ref("Patient/p3"), insurer=_ref("Organization/acme"),
                                    provider=_ref("Organization/clinic"), created="2025-03-13T10:00:00Z"),
     "received": "2025-03-13T10:00:00Z",
     "answer": dict(outcome="queued", response=_response("resp-7", "req-7", "queued"))},  # no created
]


def _seed(store: AuditStore) -> None:
    for item in SEED:
        received = _at(item["received"])
        store.record_request(item["id"], item["request"], None, "60054", f"TRN-{item['id']}", received)
        if item.get("sent") or item.get("answer"):
            store.record_sent(item["id"], f"ISA*...{item['id']}~", received + timedelta(milliseconds=100))
        if item.get("answer"):
            answer = {"x12_response": "ISA*...271~", "aaa_codes": [], "http_status": 200, **item["answer"]}
            store.record_answer(item["id"], answered_at=received + timedelta(seconds=5), **answer)


@pytest.fixture
def store(database_url: str):
    with AuditStore(database_url) as opened:
        yield opened


@pytest.fixture(scope="module")
def seeded(module_database_url: str):
    with AuditStore(module_database_url) as opened:
        _seed(opened)
        yield opened


# -- migrations ---------------------------------------------------------------------------------------

def test_migrations_create_the_schema_and_are_idempotent(database_url: str):
    assert not TABLES & _tables(database_url)
    upgrade(database_url)
    upgrade(database_url)  # a second run changes nothing
    assert TABLES <= _tables(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("select version_num from alembic_version")).scalars().all() == ["0005"]
            # the hand-written migration builds exactly what the models describe
            diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                    Base.metadata)
            assert diff == []
    finally:
        engine.dispose()
    with AuditStore(database_url) as first, AuditStore(database_url) as second:  # opening migrates again: fine
        assert first.search_requests({}, 10, 0) == ([], 0)
        assert second.search_responses({}, 10, 0) == ([], 0)


def test_concurrent_upgrades_of_a_fresh_database_do_not_collide(database_url: str):
    """Server processes that start together all migrate the same fresh database; none of them fails.

    (Without the advisory lock / BEGIN IMMEDIATE this fails most runs with "table already exists".)
    """
    script = "import sys\nfrom gateway.store import upgrade\nupgrade(sys.argv[1])\n"
    processes = [subprocess.Popen([sys.executable, "-c", script, database_url], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, [err for _, err in results]
    assert TABLES <= _tables(database_url)


def test_threads_of_one_process_can_upgrade_at_once(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'threads.db'}"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert TABLES <= _tables(url)


def test_a_sqlite_file_in_a_missing_folder_is_created(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'audit.db'}"
    with AuditStore(url) as store:
        assert store.search_requests({}, 1, 0) == ([], 0)
    assert (tmp_path / "deep" / "er" / "audit.db").exists()


def test_in_memory_sqlite_works_across_threads():
    with AuditStore("sqlite://") as store:
        worker = threading.Thread(target=store.record_request, args=(
            "mem-1", SEED[0]["request"], None, "60054", "T1", datetime.now(UTC)))
        worker.start()
        worker.join()
        assert store.get_request("mem-1")["id"] == "mem-1"


def test_database_url_comes_from_the_environment():
    assert database_url({}) == "sqlite:///fhir-x12-gateway.db"
    assert database_url({"FHIR_X12_DATABASE_URL": "postgresql://u@h/db"}) == "postgresql+psycopg://u@h/db"


# -- life of a transaction --------------------------------------------------------------------------------

def test_a_transaction_goes_received_sent_answered_and_reads_back(store: AuditStore):
    request = SEED[0]["request"]
    resolved = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": request}]}
    received = datetime(2025, 3, 10, 9, 15, 0, 250000, tzinfo=timezone(timedelta(hours=-5)))
    store.record_request("gw-1", request, resolved, "60054", "TRN0001", received)

    record = store.record("gw-1")
    assert record.status == "received"
    assert record.received_at == received and record.received_at.tzinfo == UTC
    assert (record.patient_ref, record.insurer_ref, record.provider_ref) == (
        "Patient/p1", "Organization/acme", "Organization/clinic")
    assert record.request_status == "active"
    assert record.request_identifiers == [f"{SYS_A}|A-1"]
    assert record.created == datetime(2025, 3, 10, 14, 15, tzinfo=UTC)
    assert (record.payer_id, record.trace, record.resolved) == ("60054", "TRN0001", resolved)
    assert record.sent_at is None and record.answered_at is None and record.response_id is None
    # the stored request is what came in; reading it gives the gateway's id
    assert record.request == request
    assert store.get_request("gw-1") == {**request, "id": "gw-1"}

    store.record_sent("gw-1", "ISA*00*...~", received + timedelta(milliseconds=40))
    record = store.record("gw-1")
    assert (record.status, record.x12_request) == ("sent", "ISA*00*...~")
    assert record.sent_at == received + timedelta(milliseconds=40)

    response = _response("resp-gw-1", "gw-1", "partial", created="2025-03-10T14:15:01Z", identifiers=[(SYS_R, "X")])
    store.record_answer("gw-1", x12_response="ISA*...271~", response=response, outcome="partial",
                        aaa_codes=["72", "75"], http_status=200, answered_at=received + timedelta(seconds=1.5))
    record = store.record("gw-1")
    assert record.status == "answered"
    assert (record.x12_response, record.response, record.response_id) == ("ISA*...271~", response, "resp-gw-1")
    assert (record.outcome, record.aaa_codes, record.http_status, record.error) == ("partial", ["72", "75"], 200, None)
    assert record.response_identifiers == [f"{SYS_R}|X"]
    assert record.duration_ms == pytest.approx(1500.0)
    assert record.answered_at == received + timedelta(seconds=1.5)
    assert {(i.kind, i.system, i.value) for i in record.identifiers} == {("request", SYS_A, "A-1"),
                                                                         ("response", SYS_R, "X")}
    assert store.get_response("resp-gw-1") == response
    assert store.get_response("nope") is None and store.get_request("nope") is None and store.record("nope") is None


def test_a_failure_is_stored_with_its_operation_outcome(store: AuditStore):
    store.record_request("gw-2", SEED[1]["request"], None, "60054", "TRN2", datetime(2025, 3, 10, tzinfo=UTC))
    store.record_answer("gw-2", x12_response=None, response=OPERATION_OUTCOME, outcome=None, aaa_codes=[],
                        http_status=504, answered_at=datetime(2025, 3, 10, 0, 0, 20, tzinfo=UTC),
                        error=OPERATION_OUTCOME)
    record = store.record("gw-2")
    assert (record.status, record.http_status, record.error, record.response) == (
        "failed", 504, OPERATION_OUTCOME, OPERATION_OUTCOME)
    assert record.response_id is None and record.outcome is None and record.duration_ms == 20000.0
    assert store.get_response("oo-6") is None  # an OperationOutcome is not a CoverageEligibilityResponse
    assert store.search_responses({}, 10, 0) == ([], 0)


def test_unknown_and_duplicate_ids_are_refused(store: AuditStore):
    now = datetime.now(UTC)
    store.record_request("gw-3", SEED[0]["request"], None, "60054", "T", now)
    with pytest.raises(DuplicateRecordError):
        store.record_request("gw-3", SEED[0]["request"], None, "60054", "T", now)
    with pytest.raises(UnknownRecordError) as caught:
        store.record_sent("missing", "ISA~", now)
    assert isinstance(caught.value, GatewayError) and isinstance(caught.value, LookupError)
    with pytest.raises(UnknownRecordError):
        store.record_answer("missing", x12_response=None, response=None, outcome=None, aaa_codes=[],
                            http_status=504, answered_at=now)
    assert store.record("gw-3").status == "received"


def test_one_request_per_if_none_exist_condition(store: AuditStore):
    """Two conditional creates racing under one condition: the second insert is refused, whichever process."""
    from gateway.store import ConditionTakenError

    now = datetime.now(UTC)
    condition = "identifier=urn:ehr|REQ-1"
    store.record_request("gw-c1", SEED[0]["request"], None, "60054", "T1", now, condition=condition)
    with pytest.raises(ConditionTakenError):
        store.record_request("gw-c2", SEED[0]["request"], None, "60054", "T2", now, condition=condition)
    store.record_request("gw-c3", SEED[0]["request"], None, "60054", "T3", now, condition="identifier=urn:ehr|REQ-2")
    for n in range(4, 6):   # without a condition, any number
        store.record_request(f"gw-c{n}", SEED[0]["request"], None, "60054", f"T{n}", now)
    assert store.record("gw-c2") is None and store.search_requests({}, 10, 0)[1] == 4


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_a_sqlite_file_deleted_or_replaced_under_the_store_refuses_new_requests(tmp_path, change: str):
    """Its connections would write to an inode no one reads again: the request would go out with no record."""
    path = tmp_path / "gw.db"
    with AuditStore(f"sqlite:///{path}") as opened:
        opened.record_request("gw-f1", SEED[0]["request"], None, "60054", "T1", datetime.now(UTC))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if change == "replaced":
            path.write_bytes(b"")
        with pytest.raises(StoreError, match="is gone"):
            opened.record_request("gw-f2", SEED[0]["request"], None, "60054", "T2", datetime.now(UTC))
        with pytest.raises(StoreError):
            opened.check()


def test_a_finished_transaction_is_released_once_and_kept(store: AuditStore):
    """FHIR's DELETE on a finished request's async status URL: released_at is set once; the record stays."""
    received = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    for id in ("gw-r1", "gw-r2", "gw-r3"):
        store.record_request(id, SEED[0]["request"], None, "60054", id, received, x12_request="ISA~",
                             sent_at=received)
    store.record_answer("gw-r1", x12_response="ISA~", response=None, outcome=None, aaa_codes=[], http_status=502,
                        error=OPERATION_OUTCOME, answered_at=received)
    assert store.release("gw-r1", received + timedelta(seconds=5)) is True
    assert store.release("gw-r1", received + timedelta(seconds=9)) is False   # once
    assert store.release("gw-r2", received) is False                         # still with the payer
    assert store.release("missing", received) is False
    assert store.record("gw-r1").released_at == received + timedelta(seconds=5)
    assert store.record("gw-r1").status == "failed" and store.record("gw-r2").released_at is None


def test_a_request_not_yet_sent_can_be_cancelled_and_is_then_never_sent(store: AuditStore):
    received = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    for id in ("gw-4", "gw-5"):
        store.record_request(id, SEED[0]["request"], None, "60054", id, received)
    store.record_sent("gw-5", "ISA~", received)
    assert store.cancel("gw-4", received + timedelta(seconds=2), OPERATION_OUTCOME) == "cancelled"
    with pytest.raises(RecordStateError) as caught:   # the worker that would have sent it
        store.record_sent("gw-4", "ISA~", received + timedelta(seconds=3))
    assert caught.value.status == "cancelled" and isinstance(caught.value, GatewayError)
    record = store.record("gw-4")
    assert (record.status, record.outcome, record.error, record.x12_request, record.sent_at) == (
        "cancelled", "cancelled", OPERATION_OUTCOME, None, None)
    assert record.duration_ms == 2000.0
    # the request itself now reads, and is found, as cancelled (fm-status)
    assert store.get_request("gw-4")["status"] == "cancelled" and store.get_request("gw-5")["status"] == "active"
    assert [r["id"] for r in store.search_requests({"status": ["cancelled"]}, 10, 0)[0]] == ["gw-4"]
    assert store.cancel("gw-4", received, OPERATION_OUTCOME) == "gone"   # twice: the first call did it
    assert store.cancel("gw-5", received, OPERATION_OUTCOME) == "sent"        # too late: nothing changes
    assert store.record("gw-5").status == "sent" and store.record("gw-5").error is None
    assert store.cancel("missing", received, OPERATION_OUTCOME) is None
    assert record.released_at == received + timedelta(seconds=2)   # its status URL is gone with it
    with pytest.raises(RecordStateError):   # a transaction is sent once
        store.record_sent("gw-5", "ISA~", received)


CRASH = """
import os, sys
from datetime import UTC, datetime
from gateway.store import AuditStore
store = AuditStore(sys.argv[1])
request = {"resourceType": "CoverageEligibilityRequest", "status": "active", "purpose": ["validation"],
           "patient": {"reference": "Patient/p9"}, "created": "2025-03-14T10:00:00Z",
           "insurer": {"reference": "Organization/acme"}}
store.record_request("crash-1", request, None, "60054", "TRN-CRASH", datetime.now(UTC))
os._exit(3)  # dies before the payer answers: no close, no clean-up
"""


def test_a_request_survives_a_crash_before_the_payer_answers(database_url: str):
    result = subprocess.run([sys.executable, "-c", CRASH, database_url], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 3, result.stderr
    with AuditStore(database_url) as store:
        record = store.record("crash-1")
        assert record is not None and record.status == "received" and record.trace == "TRN-CRASH"
        assert store.get_request("crash-1")["patient"] == {"reference": "Patient/p9"}
        assert store.search_requests({"patient": ["Patient/p9"]}, 10, 0)[1] == 1


# -- search -------------------------------------------------------------------------------------------------

ALL_REQUESTS = {f"req-{n}" for n in range(1, 8)}

REQUEST_CASES: list[tuple[dict[str, list[str]], set[str]]] = [
    ({}, ALL_REQUESTS),
    ({"_count": ["50"], "_format": ["json"]}, ALL_REQUESTS),  # accepted, no effect on matching
    ({"_id": ["req-3"]}, {"req-3"}),
    ({"patient": ["Patient/p1"]}, {"req-1", "req-3"}),
    ({"patient": ["p1"]}, {"req-1", "req-3"}),
    ({"patient:Patient": ["p1"]}, {"req-1", "req-3"}),
    ({"patient": ["https://gw.example/fhir/Patient/p1"]}, {"req-1", "req-3"}),
    ({"patient": ["p2"]}, {"req-2", "req-6"}),
    ({"patient": ["Patient/p1,Patient/p3"]}, {"req-1", "req-3", "req-5", "req-7"}),
    ({"patient": ["Patient/P1"]}, set()),  # ids are case-sensitive
    ({"patient": ["urn:mrn|MRN-4"]}, {"req-4"}),
    ({"patient:identifier": ["urn:mrn|MRN-4"]}, {"req-4"}),
    ({"patient:identifier": ["MRN-4"]}, {"req-4"}),
    ({"patient:identifier": ["urn:mrn|"]}, {"req-4"}),
    ({"patient:identifier": ["urn:other|MRN-4"]}, set()),
    ({"status": ["active"]}, {"req-1", "req-2", "req-5", "req-6", "req-7"}),
    ({"status": ["cancelled"]}, {"req-3"}),
    ({"status": ["cancelled,draft"]}, {"req-3", "req-4"}),
    ({"status": ["http://hl7.org/fhir/fm-status|draft"]}, {"req-4"}),
    ({"status": ["urn:other|draft"]}, set()),
    ({"insurer": ["Organization/acme"]}, {"req-1", "req-2", "req-6", "req-7"}),
    ({"insurer": ["bluecross"]}, {"req-3", "req-5"}),
    ({"insurer:identifier": ["http://x12.org/payer-id|60054"]}, {"req-4"}),
    ({"provider": ["Practitioner/dr-lee"]}, {"req-2", "req-5"}),
    ({"provider": ["clinic"]}, {"req-1", "req-3", "req-7"}),
    ({"provider": ["dr-kim"]}, {"req-4"}),  # bare id matches the absolute reference
    ({"provider": ["Practitioner/dr-kim"]}, {"req-4"}),
    ({"provider": ["https://ehr.example/fhir/Practitioner/dr-kim"]}, {"req-4"}),
    ({"provider:missing": ["true"]}, {"req-6"}),
    ({"provider:missing": ["false"]}, ALL_REQUESTS - {"req-6"}),
    ({"identifier": [f"{SYS_A}|A-1"]}, {"req-1"}),
    ({"identifier": ["A-2"]}, {"req-2"}),
    ({"identifier": ["a-2"]}, set()),
    ({"identifier": ["shared"]}, {"req-2", "req-4"}),
    ({"identifier": [f"{SYS_B}|shared"]}, {"req-2", "req-4"}),
    ({"identifier": [f"{SYS_A}|shared"]}, set()),
    ({"identifier": ["|NOSYS-3"]}, {"req-3"}),
    ({"identifier": ["NOSYS-3"]}, {"req-3"}),
    ({"identifier": [f"{SYS_A}|"]}, {"req-1", "req-2", "req-5"}),
    ({"identifier": [f"{SYS_A}|A-1,{SYS_A}|A-5"]}, {"req-1", "req-5"}),
    # created: the CER's created; a plain date is the whole day (UTC), an instant has second precision
    ({"created": ["2025-03-10"]}, {"req-1", "req-2"}),
    ({"created": ["eq2025-03-10"]}, {"req-1", "req-2"}),
    ({"created": ["2025-03-12"]}, {"req-4"}),  # req-6 is 2025-03-12 in -05:00 but 2025-03-13 in UTC
    ({"created": ["2025-03-10T09:15:00-05:00"]}, {"req-1"}),
    ({"created": ["2025-03-10T14:15:00Z"]}, {"req-1"}),
    ({"created": ["2025-03-10T14:15Z"]}, {"req-1"}),  # minute precision
    ({"created": ["2025-03-10T19:45:00 05:30"]}, {"req-1"}),  # "+" arriving as a space
    # req-3's created is the whole day 2025-03-11 (FHIR R4: eq = the search range contains the target's),
    # so one second of that day does not equal it (before 0003 it did: only its first instant was kept)
    ({"created": ["eq2025-03-11T05:30:00 05:30"]}, set()),
    ({"created": ["ne2025-03-10"]}, {"req-3", "req-4", "req-5", "req-6", "req-7"}),
    ({"created": ["ge2025-03-11"]}, {"req-3", "req-4", "req-6", "req-7"}),
    ({"created": ["gt2025-03-11"]}, {"req-4", "req-6", "req-7"}),
    ({"created": ["le2025-03-11"]}, {"req-1", "req-2", "req-3", "req-5"}),
    ({"created": ["lt2025-03-11"]}, {"req-1", "req-2", "req-5"}),
    ({"created": ["ge2025-03-10T23:30:00Z"]}, {"req-2", "req-3", "req-4", "req-6", "req-7"}),
    ({"created": ["gt2025-03-10T23:30:00Z"]}, {"req-3", "req-4", "req-6", "req-7"}),
    ({"created": ["le2025-03-10T23:30:00Z"]}, {"req-1", "req-2", "req-5"}),
    ({"created": ["lt2025-03-10T23:30:00Z"]}, {"req-1", "req-5"}),
    # a date-only target (req-3: 2025-03-11) against a dateTime inside its day: the day reaches both sides of
    # it, so gt/ge and lt/le all find it, eq does not and ne does (FHIR R4 ranges)
    ({"created": ["eq2025-03-11T12:00:00Z"]}, set()),
    ({"created": ["ne2025-03-11T12:00:00Z"]}, ALL_REQUESTS),
    ({"created": ["gt2025-03-11T12:00:00Z"]}, {"req-3", "req-4", "req-6", "req-7"}),
    ({"created": ["ge2025-03-11T12:00:00Z"]}, {"req-3", "req-4", "req-6", "req-7"}),
    ({"created": ["lt2025-03-11T12:00:00Z"]}, {"req-1", "req-2", "req-3", "req-5"}),
    ({"created": ["le2025-03-11T12:00:00Z"]}, {"req-1", "req-2", "req-3", "req-5"}),
    # ... and at the edges of its day
    ({"created": ["gt2025-03-11T23:59:59Z"]}, {"req-4", "req-6", "req-7"}),  # the day ends with that second
    ({"created": ["ge2025-03-11T23:59:59Z"]}, {"req-4", "req-6", "req-7"}),
    ({"created": ["gt2025-03-11T23:59:59.5Z"]}, {"req-3", "req-4", "req-6", "req-7"}),
    ({"created": ["lt2025-03-11T00:00:00Z"]}, {"req-1", "req-2", "req-5"}),  # the day starts with that second
    ({"created": ["le2025-03-11T00:00:00Z"]}, {"req-1", "req-2", "req-5"}),
    ({"created": ["lt2025-03-11T00:00:00.001Z"]}, {"req-1", "req-2", "req-3", "req-5"}),
    ({"created": ["ge2025-03-10T23:59:59.999Z"]}, {"req-3", "req-4", "req-6", "req-7"}),
    # second-precision targets against a finer search value: the target's second overlaps both sides
    ({"created": ["eq2025-03-10T14:15:00.000Z"]}, set()),
    ({"created": ["gt2025-03-10T14:15:00.000Z"]}, {"req-1", "req-2", "req-3", "req-4", "req-6", "req-7"}),
    ({"created": ["lt2025-03-10T14:15:00.500Z"]}, {"req-1", "req-5"}),
    ({"created": ["2025-03"]}, ALL_REQUESTS - {"req-5"}),
    ({"created": ["2025"]}, ALL_REQUESTS),
    ({"created": ["ge2025-03-10", "lt2025-03-12"]}, {"req-1", "req-2", "req-3"}),  # repeated: AND
    ({"created": ["2025-02-28,2025-03-12"]}, {"req-4", "req-5"}),  # comma: OR
    ({"patient": ["Patient/p1"], "status": ["active"]}, {"req-1"}),
    ({"patient": ["p2"], "created": ["ge2025-03-11"], "insurer": ["acme"]}, {"req-6"}),
]


@pytest.mark.parametrize(("params", "expected"), REQUEST_CASES, ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_search_requests(seeded: AuditStore, params: dict[str, list[str]], expected: set[str]):
    resources, total = seeded.search_requests(params, 100, 0)
    assert {r["id"] for r in resources} == expected
    assert total == len(expected) == len(resources)
    assert all(r["resourceType"] == "CoverageEligibilityRequest" for r in resources)


RESPONSE_CASES: list[tuple[dict[str, list[str]], set[str]]] = [
    ({}, {"resp-1", "resp-2", "resp-3", "resp-7"}),  # req-6 failed (OperationOutcome), req-4/5 unanswered
    ({"_id": ["resp-3"]}, {"resp-3"}),
    ({"request": ["CoverageEligibilityRequest/req-2"]}, {"resp-2"}),
    ({"request": ["req-2"]}, {"resp-2"}),
    ({"request": ["https://gw.example/fhir/CoverageEligibilityRequest/req-3"]}, {"resp-3"}),
    ({"request": ["Patient/req-2"]}, set()),
    ({"request": ["req-6"]}, set()),
    ({"request": ["req-4"]}, set()),
    ({"request": ["req-1,req-7"]}, {"resp-1", "resp-7"}),
    ({"patient": ["Patient/p1"]}, {"resp-1", "resp-3"}),
    ({"patient": ["p3"]}, {"resp-7"}),
    ({"outcome": ["complete"]}, {"resp-1"}),
    ({"outcome": ["error"]}, {"resp-2"}),
    ({"outcome": ["partial"]}, {"resp-3"}),
    ({"outcome": ["queued"]}, {"resp-7"}),
    ({"outcome": ["complete,partial"]}, {"resp-1", "resp-3"}),
    ({"outcome": ["http://hl7.org/fhir/remittance-outcome|error"]}, {"resp-2"}),
    ({"insurer": ["Organization/acme"]}, {"resp-1", "resp-2", "resp-7"}),
    ({"insurer": ["bluecross"]}, {"resp-3"}),
    ({"identifier": [f"{SYS_R}|R-1"]}, {"resp-1"}),
    ({"identifier": ["R-3"]}, {"resp-3"}),
    ({"identifier": [f"{SYS_A}|A-1"]}, set()),  # a request identifier, not a response one
    # request:identifier: the response to the request the client named by its own identifier
    ({"request:identifier": [f"{SYS_A}|A-1"]}, {"resp-1"}),
    ({"request:identifier": [f"{SYS_B}|shared"]}, {"resp-2"}),   # req-4 has it too, but no response
    ({"request:identifier": ["NOSYS-3"]}, {"resp-3"}),
    ({"request:identifier": [f"{SYS_R}|R-1"]}, set()),  # a response identifier, not a request one
    # created: the response's own created (else when it was answered)
    ({"created": ["2025-03-10"]}, {"resp-1", "resp-2"}),
    ({"created": ["ge2025-03-11"]}, {"resp-3", "resp-7"}),
    ({"created": ["2025-03-13"]}, {"resp-7"}),
    ({"created": ["lt2025-03-10T23:30:03Z"]}, {"resp-1"}),
    ({"created": ["le2025-03-10T23:30:03Z"]}, {"resp-1", "resp-2"}),
    ({"created": ["eq2025-03-10T23:30:03Z"]}, {"resp-2"}),
    ({"created": ["gt2025-03-10T23:30:03Z"]}, {"resp-3", "resp-7"}),
    # resp-2's created has second precision: it is not inside one of its milliseconds, and reaches past it
    ({"created": ["eq2025-03-10T23:30:03.000Z"]}, set()),
    ({"created": ["gt2025-03-10T23:30:03.000Z"]}, {"resp-2", "resp-3", "resp-7"}),
    ({"created": ["le2025-03-10T23:30:03.000Z"]}, {"resp-1"}),
    # resp-7 has no created: when it was answered (received + 5 s), an instant, inside any range around it
    ({"created": ["eq2025-03-13T10:00:05Z"]}, {"resp-7"}),
    ({"created": ["eq2025-03-13T10:00:05.000Z"]}, {"resp-7"}),
    ({"created": ["gt2025-03-13T10:00:05.000Z"]}, set()),
    ({"created": ["lt2025-03-13T10:00:05.001Z"]}, {"resp-1", "resp-2", "resp-3", "resp-7"}),
    ({"patient": ["Patient/p1"], "outcome": ["partial"], "created": ["2025-03-11"]}, {"resp-3"}),
]


@pytest.mark.parametrize(("params", "expected"), RESPONSE_CASES, ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_search_responses(seeded: AuditStore, params: dict[str, list[str]], expected: set[str]):
    resources, total = seeded.search_responses(params, 100, 0)
    assert {r["id"] for r in resources} == expected
    assert total == len(expected) == len(resources)
    assert all(r["resourceType"] == "CoverageEligibilityResponse" for r in resources)


def test_paging_with_count_and_offset(seeded: AuditStore):
    newest_first = ["req-7", "req-6", "req-4", "req-3", "req-2", "req-1", "req-5"]
    pages = [seeded.search_requests({}, 3, offset) for offset in (0, 3, 6, 9)]
    assert [[r["id"] for r in page] for page, _ in pages] == [newest_first[:3], newest_first[3:6], newest_first[6:], []]
    assert {total for _, total in pages} == {7}
    assert seeded.search_requests({}, 0, 0) == ([], 7)  # _count=0: the total only
    assert [r["id"] for r in seeded.search_requests({"_sort": ["created"]}, 2, 0)[0]] == ["req-5", "req-1"]
    assert [r["id"] for r in seeded.search_requests({"_sort": ["-created"]}, 2, 0)[0]] == ["req-7", "req-6"]
    page, total = seeded.search_requests({"status": ["active"]}, 2, 2)
    assert ([r["id"] for r in page], total) == (["req-2", "req-1"], 5)
    page, total = seeded.search_responses({}, 2, 2)
    assert ([r["id"] for r in page], total) == (["resp-2", "resp-1"], 4)


@pytest.mark.parametrize(("kind", "params", "param"), [
    ("requests", {"foo": ["1"]}, "foo"),
    ("requests", {"request": ["req-1"]}, "request"),
    ("requests", {"outcome": ["complete"]}, "outcome"),
    ("responses", {"provider": ["clinic"]}, "provider"),
    ("responses", {"status": ["active"]}, "status"),
    ("requests", {"patient.name": ["x"]}, "patient.name"),
    ("requests", {"patient:exact": ["p1"]}, "patient:exact"),
    ("requests", {"status:not": ["active"]}, "status:not"),
    ("requests", {"provider:missing": ["maybe"]}, "provider:missing"),
    ("requests", {"_sort": ["patient"]}, "_sort"),
    ("requests", {"created": ["yesterday"]}, "created"),
    ("requests", {"created": ["2025-13-01"]}, "created"),
    ("requests", {"created": ["2025-02-30"]}, "created"),
    ("requests", {"created": ["2025-03-10T25:00:00Z"]}, "created"),
    ("requests", {"created": ["2025-03-10T10:00:00+15:00"]}, "created"),
    ("requests", {"created": ["sa2025-03-10"]}, "created"),
    ("requests", {"created": ["ge"]}, "created"),
    ("responses", {"created": ["lt2025-3-1"]}, "created"),
])
def test_unsupported_searches_raise_search_error(seeded: AuditStore, kind: str, params: dict, param: str):
    search = seeded.search_requests if kind == "requests" else seeded.search_responses
    with pytest.raises(SearchError) as caught:
        search(params, 10, 0)
    assert caught.value.param == param
    assert isinstance(caught.value, GatewayError)
    for value in params.values():  # the message never repeats the value (it may be PHI)
        assert value[0] not in caught.value.message or len(value[0]) < 3


def test_negative_paging_is_a_search_error(seeded: AuditStore):
    with pytest.raises(SearchError):
        seeded.search_requests({}, -1, 0)
    with pytest.raises(SearchError):
        seeded.search_responses({}, 10, -5)


def test_empty_values_are_ignored(seeded: AuditStore):
    assert seeded.search_requests({"patient": [""]}, 100, 0)[1] == 7


@pytest.mark.parametrize(("value", "first", "last"), [
    ("2025", "2025-01-01T00:00:00+00:00", "2025-12-31T23:59:59.999999+00:00"),
    ("2025-12", "2025-12-01T00:00:00+00:00", "2025-12-31T23:59:59.999999+00:00"),
    ("2024-02", "2024-02-01T00:00:00+00:00", "2024-02-29T23:59:59.999999+00:00"),
    ("2024-02-29", "2024-02-29T00:00:00+00:00", "2024-02-29T23:59:59.999999+00:00"),
    ("2025-03-10T09:15-05:00", "2025-03-10T14:15:00+00:00", "2025-03-10T14:15:59.999999+00:00"),
    ("2025-03-10T09:15:07Z", "2025-03-10T09:15:07+00:00", "2025-03-10T09:15:07.999999+00:00"),
    ("2025-03-10T09:15:07.25Z", "2025-03-10T09:15:07.250000+00:00", "2025-03-10T09:15:07.259999+00:00"),
    ("2025-03-10T09:15:07.123456789Z", "2025-03-10T09:15:07.123456+00:00", "2025-03-10T09:15:07.123456+00:00"),
    # at the ends of what a datetime holds, cut instead of overflowing
    ("9999-12-31", "9999-12-31T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"),
    ("9999", "9999-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"),
    ("9999-12-31T23:59", "9999-12-31T23:59:00+00:00", "9999-12-31T23:59:59.999999+00:00"),
    ("9999-12-31T20:00:00-05:00", "9999-12-31T23:59:59.999999+00:00", "9999-12-31T23:59:59.999999+00:00"),
    ("9999-12-31T18:30-05:00", "9999-12-31T23:30:00+00:00", "9999-12-31T23:30:59.999999+00:00"),
    ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00+00:00"),
    ("0001-01-01T00:30+01:00", "0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00+00:00"),
    ("0001-01-01T00:30+00:30", "0001-01-01T00:00:00+00:00", "0001-01-01T00:00:59.999999+00:00"),
    ("0001-01-01", "0001-01-01T00:00:00+00:00", "0001-01-01T23:59:59.999999+00:00"),
])
def test_date_precision_gives_the_range(value: str, first: str, last: str):
    """First and last instant (both included, UTC) of the range a value's precision gives."""
    low, high = parse_datetime_range(value)
    assert (low, high) == (datetime.fromisoformat(first), datetime.fromisoformat(last))
    assert low.utcoffset() == high.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", ["0000", "0000-12-31T23:00:00-01:00", "2025-02-29", "2025-03-10T24:00:00Z",
                                   "2025-03-10T10:00:00+14:60", "10000-01-01", "2025-03-10T10:00:60Z"])
def test_values_that_are_no_date_raise_value_error(value: str):
    with pytest.raises(ValueError):
        parse_datetime_range(value)


# -- waiting for another process's write lock (SQLite file) --------------------------------------------------

def _hold_write_lock(path: Path) -> Any:
    import sqlite3

    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")   # another process committing, as far as this store can tell
    return other


def test_a_writer_waits_for_another_process_in_python_sleeps_not_in_sqlite(tmp_path: Path, monkeypatch):
    """SQLite's busy handler sleeps in C, which under a gevent worker stalls every request of the process: the
    wait is ``time.sleep`` (a greenlet switch under gevent) and the write goes through once the lock is free."""
    import gateway.store.audit as audit

    path = tmp_path / "audit.db"
    with AuditStore(f"sqlite:///{path}") as store:
        other = _hold_write_lock(path)
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 3:
                other.execute("COMMIT")   # the other process is done

        monkeypatch.setattr(audit.time, "sleep", sleep)
        store.record_request("gw-1", SEED[0]["request"], None, "60054", "TRN1", datetime(2025, 3, 10, tzinfo=UTC))
        assert slept == [0.0002, 0.0004, 0.0008]   # backing off
        assert store.record("gw-1").status == "received"
        other.close()


def test_readers_do_not_wait_for_a_writer_and_a_lock_held_too_long_is_a_store_error(tmp_path: Path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import gateway.store.audit as audit

    path = tmp_path / "audit.db"
    with AuditStore(f"sqlite:///{path}") as store:
        store.record_request("gw-1", SEED[0]["request"], None, "60054", "TRN1", datetime(2025, 3, 10, tzinfo=UTC))
        other = _hold_write_lock(path)
        try:
            assert store.get_request("gw-1")["resourceType"] == "CoverageEligibilityRequest"   # WAL: no wait
            assert store.search_requests({}, 10, 0)[1] == 1
            monkeypatch.setattr(audit, "BUSY_TIMEOUT_SECONDS", 0.05)
            with pytest.raises(OperationalError):   # an SQLAlchemyError: the service answers 503
                store.record_sent("gw-1", "ISA*...", datetime(2025, 3, 10, tzinfo=UTC))
        finally:
            other.close()
        assert store.record("gw-1").status == "received"
        store.record_sent("gw-1", "ISA*...", datetime(2025, 3, 10, tzinfo=UTC))   # and the connection is usable
        assert store.record("gw-1").status == "sent"


def test_a_writing_connection_keeps_its_busy_handler_off_and_a_reader_turns_it_on(tmp_path: Path):
    """Two writes per round trip, and no PRAGMA for either: a connection that took the write lock cooperatively
    keeps SQLite's busy handler off. A reader (whose rare waits are SQLite's) gets it back first."""
    from sqlalchemy import event

    import gateway.store.audit as audit

    statements: list[str] = []
    with AuditStore(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        store.engine.dispose()   # the connections from here on are traced
        event.listen(store.engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(statements.append))
        pool = store.engine.pool
        now = datetime(2025, 3, 10, tzinfo=UTC)

        def pragmas() -> list[str]:
            found = [s for s in statements if s.startswith("PRAGMA busy_timeout")]
            statements.clear()
            return found

        for n in range(3):   # round trips: their writes keep one spare connection out of the pool
            store.record_request(f"gw-{n}", SEED[0]["request"], None, "60054", "T", now, x12_request="ISA~",
                                 sent_at=now)
            store.record_answer(f"gw-{n}", x12_response="ISA~", response=None, outcome=None, aaa_codes=[],
                                http_status=502, error=OPERATION_OUTCOME, answered_at=now)
        assert pool.checkedout() == 1 and pool.checkedin() == 0
        assert pragmas() == ["PRAGMA busy_timeout=0"]   # once, on the first write
        # a write through Core (and a pooled connection), then readers on that same connection
        store.record_request("gw-3", SEED[0]["request"], None, "60054", "T", now)
        store.record_sent("gw-3", "ISA~", now)
        assert pool.checkedin() == 1
        assert pragmas() == ["PRAGMA busy_timeout=0"]
        assert store.record("gw-3").status == "sent"
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == audit.BUSY_TIMEOUT_SECONDS * 1000
        assert pool.checkedin() == 1   # the same connection all along
        assert pragmas() == [f"PRAGMA busy_timeout={audit.BUSY_TIMEOUT_SECONDS * 1000}", "PRAGMA busy_timeout"]
        assert store.release("gw-2", now) is True
        assert pragmas() == ["PRAGMA busy_timeout=0"]
        with pytest.raises(DuplicateRecordError):   # a failed write's connection goes back to the pool
            store.record_request("gw-1", SEED[0]["request"], None, "60054", "T", now)
        store.dbapi_writer.close()   # as the store's close() does, before the pool is disposed of
        assert pool.checkedout() == 0


CONCURRENT_WRITERS = """
from gevent import monkey
monkey.patch_all()
import sys
from datetime import UTC, datetime
import gevent
from gateway.store import AuditStore, checkpoint
checkpoint.RESTART_FRAMES = 8   # a RESTART checkpoint (which takes the write lock) every few transactions
url, process, greenlets, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
request = {"resourceType": "CoverageEligibilityRequest", "status": "active", "identifier": [{"value": "x"}],
           "patient": {"reference": "Patient/p1"}, "created": "2025-03-14T10:00:00Z", "text": "x" * 6000}
response = {"resourceType": "CoverageEligibilityResponse", "outcome": "complete", "text": "y" * 12000}
store = AuditStore(url)

def round_trips(greenlet):
    for n in range(pairs):
        id = f"{process}-{greenlet}-{n}"
        now = datetime.now(UTC)
        store.record_request(id, request, None, "60054", id, now, x12_request="ISA~", sent_at=now)
        gevent.sleep(0.001)   # the payer
        store.record_answer(id, x12_response="ISA~", response={**response, "id": id}, outcome="complete",
                            aaa_codes=[], http_status=200, answered_at=datetime.now(UTC))
        assert store.record(id).status == "answered"

gevent.joinall([gevent.spawn(round_trips, g) for g in range(greenlets)], raise_error=True)
store.close()
print(store.checkpointer.stats["restarts"] + store.checkpointer.stats["busy"])
"""


def test_writers_of_several_processes_all_get_through_while_checkpoints_restart_the_log(tmp_path: Path):
    """Gevent workers writing to one file at once, with RESTART checkpoints taking the write lock now and then:
    every write waits its turn (cooperatively: with the busy handler off, a wait SQLite needed would fail)."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    AuditStore(url).close()   # migrated before the workers start, as the gateway's master does
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITERS, url, str(n), "4", "20"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(3)]
    results = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * 3, [err for _, err in results]
    assert sum(int(out) for out, _ in results) > 0   # RESTARTs were tried meanwhile
    with AuditStore(url) as store:
        assert store.search_responses({}, 0, 0)[1] == 3 * 4 * 20


def test_a_burst_of_writers_keeps_its_sqlite_connections_open(tmp_path: Path):
    """A gevent worker has dozens of requests in flight: the connections a burst opened stay in the pool, so the
    next burst does not open (and the one after close) a SQLite connection per commit."""
    import threading

    from sqlalchemy import event

    opened: list[object] = []
    with AuditStore(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        event.listen(store.engine, "connect", lambda *_: opened.append(1))
        held = [store.engine.connect() for _ in range(12)]   # a dozen requests writing at once
        for connection in held:
            connection.close()
        assert store.engine.pool.checkedin() == 12
        before = len(opened)
        barrier = threading.Barrier(10)

        def write(n: int) -> None:
            barrier.wait()
            store.record_request(f"gw-{n}", SEED[0]["request"], None, "60054", f"T{n}",
                                 datetime(2025, 3, 10, tzinfo=UTC))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(opened) == before   # the second burst reused them
        assert store.search_requests({}, 20, 0)[1] == 10


def test_of_simultaneous_cancels_one_cancels_and_the_others_find_it_gone(store: AuditStore):
    """Two DELETEs on one status URL at once: one 202, the other 404 (and one 'cancelled' in the metrics)."""
    received = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    store.record_request("gw-race", SEED[0]["request"], None, "60054", "T", received)
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(store.cancel("gw-race", received, OPERATION_OUTCOME)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == ["cancelled", "gone", "gone", "gone"]


def test_a_failed_or_cancelled_request_frees_its_condition_and_is_no_created_match(store: AuditStore):
    """The client was told those were not created: its retry under the same If-None-Exist creates again."""
    now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    condition = "sha-of-identifier=urn:ehr|R-9"
    store.record_request("gw-f1", SEED[0]["request"], None, "60054", "T1", now, x12_request="ISA~", sent_at=now,
                         condition=condition)
    store.record_answer("gw-f1", x12_response=None, response=None, outcome=None, aaa_codes=[], http_status=502,
                        error=OPERATION_OUTCOME, answered_at=now)
    store.record_request("gw-f2", SEED[0]["request"], None, "60054", "T2", now, condition=condition)   # no clash
    assert store.cancel("gw-f2", now + timedelta(seconds=3), OPERATION_OUTCOME) == "cancelled"
    assert store.get_request("gw-f2")["meta"]["lastUpdated"] == "2025-03-10T12:00:03Z"   # moved with the change
    store.record_request("gw-f3", SEED[0]["request"], None, "60054", "T3", now, condition=condition)
    identifier = SEED[0]["request"]["identifier"][0]
    query = {"identifier": [f"{identifier['system']}|{identifier['value']}"], "_id": ["gw-f1,gw-f2,gw-f3"]}
    assert store.search_requests(query, 10, 0)[1] == 3
    assert [r["id"] for r in store.search_requests(query, 10, 0, created_only=True)[0]] == ["gw-f3"]
