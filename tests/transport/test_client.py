"""The payer client against the payer simulator on loopback: transports, every fault, retries, breaker, routing."""

from __future__ import annotations

import io
import socket
import threading
import time
from datetime import datetime

import pytest
import requests
from werkzeug.serving import make_server

from gateway.errors import GatewayError, MappingError
from gateway.payer.app import create_payer_app
from gateway.transport import core
from gateway.transport.client import (
    CircuitBreaker,
    CircuitOpen,
    PayerAnswer,
    PayerBusy,
    PayerClient,
    PayerError,
    PayerRejected,
    PayerTimeout,
    PayerUnavailable,
    TraceMismatch,
    UnknownPayer,
    _check_trace,
    _request_failure,
    _Retry,
)
from gateway.transport.routing import Route, load_routes, routes_from_config
from gateway.x12.reader import read_x12
from tests.conftest import FIXTURES, ISSUE_TYPES
from tests.payer.test_answer import DELGADO, answer_for

REQUEST = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
TRACE = "GW-SG-0001-1"
GOOD_EB = "EB*C*IND*30***23*1500"


def member(member_id: str) -> str:
    return REQUEST.replace(DELGADO["memberid"], member_id)


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def payer(tmp_path_factory):
    """The simulator with DELGADO loaded, on a real loopback server (shared by the module; rules cleared)."""
    db = tmp_path_factory.mktemp("payer") / "payer.db"
    app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{db}", "PAYER_WORKER": False})
    store = app.extensions["payer_store"]
    store.submit("create", DELGADO["memberid"], DELGADO["groupnumber"], DELGADO)
    store.process_pending()
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", app
    httpd.shutdown()
    store.close()


@pytest.fixture(autouse=True)
def no_leftover_rules(request):
    yield
    if "payer" in request.fixturenames:
        request.getfixturevalue("payer")[1].extensions["payer_scenarios"].clear()


def scenario(base: str, **rule) -> None:
    assert requests.post(f"{base}/scenarios", json=rule, timeout=5).status_code == 201


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CountingSession(requests.Session):
    """A real session that counts the requests it sends (to prove what was, and was not, sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.sent = threading.Event()

    def request(self, *args, **kwargs):  # type: ignore[override]
        self.calls += 1
        self.sent.set()
        return super().request(*args, **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def table(payers: dict, **defaults) -> dict:
    return {"defaults": {"sender_id": "FHIRX12GW", **defaults}, "payers": payers}


def client_for(url: str, transport: str = "x12", *, session=None, clock=None, sleeps=None, processes: int = 1,
               **settings):
    """A client with one payer P; sleeps are recorded instead of slept unless a fake clock is given."""
    routes = load_routes(table({"P": {"url": url, "transport": transport, **settings}}))
    if clock is not None:
        return PayerClient(routes, session=session, clock=clock, sleep=clock.sleep, processes=processes)
    recorded = sleeps if sleeps is not None else []
    return PayerClient(routes, session=session, sleep=recorded.append, processes=processes)


ENDPOINTS = {"soap": "/core/soap", "mime": "/core/mime", "x12": "/x12"}


# ------------------------------------------------------------------------------------------------- success


@pytest.mark.parametrize("transport", ["soap", "mime", "x12"])
def test_a_271_comes_back_over_each_transport(payer, transport):
    base, _ = payer
    answer = client_for(base + ENDPOINTS[transport], transport).send("P", REQUEST, trace=TRACE,
                                                                      payload_id="f81d4fae-7dec-11d0-a765-00a0c91e6bf6")
    assert isinstance(answer, PayerAnswer)
    assert answer.kind == "271" and answer.attempts == 1 and answer.payer_id == "P"
    assert GOOD_EB in answer.x12 and f"TRN*2*{TRACE}" in answer.x12
    assert 0 <= answer.elapsed < 5
    assert answer.payload_id == (None if transport == "x12" else "f81d4fae-7dec-11d0-a765-00a0c91e6bf6")
    assert read_x12(answer.x12).transactions[0].set_id == "271"


def test_the_trace_must_be_in_the_270():
    client = client_for("http://127.0.0.1:9/x12")
    with pytest.raises(ValueError):
        client.send("P", REQUEST, trace="NOT-OURS")


# -------------------------------------------------------------------------------------------------- faults


def test_timeout_is_504_and_not_retried(payer):
    base, _ = payer
    scenario(base, fault="timeout", seconds=1.5, times=1)
    session = CountingSession()
    client = client_for(base + "/core/soap", "soap", session=session, timeout_seconds=0.5)
    start = time.perf_counter()
    with pytest.raises(PayerTimeout) as caught:
        client.send("P", REQUEST, trace=TRACE)
    assert time.perf_counter() - start < 1.4
    assert caught.value.http_status == 504 and caught.value.issue_code == "timeout"
    assert caught.value.attempts == 1 and session.calls == 1


@pytest.mark.parametrize("transport", ["soap", "mime", "x12"])
@pytest.mark.parametrize("fault, status", [("http-500", 500), ("http-503", 503)])
def test_payer_5xx_is_502_transient_and_not_retried(payer, transport, fault, status):
    base, _ = payer
    scenario(base, fault=fault, times=1)
    session = CountingSession()
    with pytest.raises(PayerUnavailable) as caught:
        client_for(base + ENDPOINTS[transport], transport, session=session).send("P", REQUEST, trace=TRACE)
    error = caught.value
    assert error.http_status == 502 and error.issue_code == "transient" and error.status == status
    assert f"HTTP {status}" in error.diagnostics
    assert error.attempts == 1 and session.calls == 1


@pytest.mark.parametrize("transport", ["soap", "x12"])
def test_an_answer_that_is_not_x12_is_unavailable(payer, transport):
    base, _ = payer
    scenario(base, fault="malformed", times=1)
    with pytest.raises(PayerUnavailable) as caught:
        client_for(base + ENDPOINTS[transport], transport).send("P", REQUEST, trace=TRACE)
    assert "not X12" in caught.value.diagnostics and caught.value.http_status == 502


@pytest.mark.parametrize("transport", ["soap", "mime", "x12"])
def test_a_999_is_rejected_with_its_findings_and_never_retried(payer, transport):
    base, _ = payer
    scenario(base, fault="reject-999", times=1)
    session = CountingSession()
    client = client_for(base + ENDPOINTS[transport], transport, session=session)
    with pytest.raises(PayerRejected) as caught:
        client.send("P", REQUEST, trace=TRACE)
    error = caught.value
    assert error.kind == "999" and "ST*999" in error.ack
    assert error.http_status == 502 and error.issue_code == "processing"
    assert {"level": "transaction", "segment": "IK5", "set_id": "270", "transaction": "0001", "status": "R",
            "codes": ["5"], "descriptions": ["One or more segments in error"],
            "message": "transaction set 270 0001 rejected: One or more segments in error (IK5 code 5)",
            } in error.findings
    assert error.attempts == 1 and session.calls == 1
    outcome = error.to_operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert {i["code"] for i in outcome["issue"]} == {"processing"}
    assert any("One or more segments in error (IK5 code 5)" in i["details"]["text"] for i in outcome["issue"])
    assert client.breaker(client.routes.route("P")).state == "closed"   # the payer answered: it is up


def test_a_ta1_is_rejected_with_its_note_code(payer):
    base, _ = payer
    session = CountingSession()
    with pytest.raises(PayerRejected) as caught:
        client_for(base + "/core/soap", "soap", session=session).send("P", member("SIMTA1000008"), trace=TRACE)
    error = caught.value
    assert error.kind == "TA1" and session.calls == 1 and error.attempts == 1
    finding, = error.findings
    assert finding["segment"] == "TA1" and finding["status"] == "R" and finding["code"] == "024"
    assert finding["description"] == "Invalid interchange content (a bad GS segment, say)"
    assert error.to_operation_outcome()["issue"][1]["details"]["text"] == (
        "interchange 000001001 rejected: Invalid interchange content (a bad GS segment, say) (TA105 code 024)")


def test_a_271_with_someone_elses_trace_is_refused(payer):
    base, _ = payer
    scenario(base, fault="wrong-trace", times=1)
    session = CountingSession()
    with pytest.raises(TraceMismatch) as caught:
        client_for(base + "/core/mime", "mime", session=session).send("P", REQUEST, trace=TRACE)
    assert caught.value.http_status == 502 and caught.value.issue_code == "processing"
    assert session.calls == 1
    # another request's trace number (the fault replaces its first character) is not handed out
    assert "XW-SG" not in caught.value.diagnostics


def test_aaa_42_once_is_retried_and_the_good_271_returned(payer):
    base, _ = payer
    scenario(base, fault="aaa-42", times=1)
    sleeps: list[float] = []
    answer = client_for(base + "/core/soap", "soap", sleeps=sleeps).send("P", REQUEST, trace=TRACE)
    assert answer.attempts == 2 and sleeps == [0.2]
    assert GOOD_EB in answer.x12 and "AAA*" not in answer.x12


def test_aaa_42_for_good_is_returned_after_the_retries(payer):
    base, _ = payer
    sleeps: list[float] = []
    answer = client_for(base + "/x12", sleeps=sleeps, retries=2, backoff_seconds=0.1).send(
        "P", member("SIMAAA420005"), trace=TRACE)
    assert answer.attempts == 3 and sleeps == [0.1, 0.2]
    assert "AAA*Y**42*R" in answer.x12   # the translation reports it


def test_aaa_72_is_a_data_error_and_never_retried(payer):
    base, _ = payer
    session = CountingSession()
    answer = client_for(base + "/core/soap", "soap", session=session).send("P", member("NOTLOADED001"),
                                                                           trace=TRACE)
    assert answer.attempts == 1 and session.calls == 1
    assert "AAA*N**72*C" in answer.x12


def test_connection_refused_is_retried_then_unavailable(closed_port):
    session = CountingSession()
    sleeps: list[float] = []
    client = client_for(f"http://127.0.0.1:{closed_port}/core/soap", "soap", session=session, sleeps=sleeps,
                        retries=2, backoff_seconds=0.2)
    with pytest.raises(PayerUnavailable) as caught:
        client.send("P", REQUEST, trace=TRACE)
    assert session.calls == 3 and caught.value.attempts == 3 and sleeps == [0.2, 0.4]
    assert "could not connect" in caught.value.diagnostics and caught.value.http_status == 502
    # the API client learns which payer failed, not the gateway's internal endpoint
    assert "payer P's endpoint" in caught.value.diagnostics and str(closed_port) not in caught.value.diagnostics


def test_retries_stop_at_the_core_budget(closed_port):
    clock = FakeClock()
    client = client_for(f"http://127.0.0.1:{closed_port}/x12", clock=clock, retries=10, backoff_seconds=0.3,
                        budget_seconds=1.0, timeout_seconds=0.5, connect_timeout_seconds=0.5)
    with pytest.raises(PayerUnavailable) as caught:
        client.send("P", REQUEST, trace=TRACE)
    # 0.3 s pause + a 0.5 s attempt fit in 1 s; a 0.6 s pause + another attempt do not
    assert clock.sleeps == [0.3] and caught.value.attempts == 2


def test_connect_and_read_timeouts_are_told_apart():
    route = Route(payer_id="P", url="http://payer.example/x12", transport="x12", sender_id="A", receiver_id="B")
    connect = _request_failure(requests.ConnectTimeout("connect timed out"), route, (3, 15))
    assert isinstance(connect, _Retry) and isinstance(connect.final, PayerTimeout)  # never sent: safe to retry
    read = _request_failure(requests.ReadTimeout("read timed out"), route, (3, 15))
    assert isinstance(read, PayerTimeout)   # the payer may be working on it: not retried
    broken = _request_failure(requests.ConnectionError("Connection aborted"), route, (3, 15))
    assert isinstance(broken, PayerUnavailable)


# ---------------------------------------------------------------------------------------- canned responses


class CannedSession(requests.Session):
    """Answers every POST with one prepared response (status, body, content type)."""

    def __init__(self, status: int, body: bytes, content_type: str, raw=None) -> None:
        super().__init__()
        self.answer = (status, body, content_type, raw)
        self.calls = 0

    def request(self, method, url, **kwargs):  # type: ignore[override]
        self.calls += 1
        status, body, content_type, raw = self.answer
        response = requests.Response()
        response.status_code, response.url = status, url
        response.headers["Content-Type"] = content_type
        response.raw = raw if raw is not None else io.BytesIO(body)
        return response


def core_error_envelope(code: str = core.CORE_RULE_VERSION_NOT_SUPPORTED,
                        message: str = "CORERuleVersion '9.9' is not supported") -> bytes:
    env = core.CoreEnvelope.create(core.PAYLOAD_271, None, sender_id="ACMEHLTH", receiver_id="FHIRX12GW")
    env.error_code, env.error_message = code, message
    return core.build_soap_response(env)


def test_a_core_error_code_is_unavailable_with_the_code():
    # (UnAuthorized is not "unavailable": see tests/transport/test_credentials.py)
    session = CannedSession(200, core_error_envelope(), core.SOAP_CONTENT_TYPE)
    with pytest.raises(PayerUnavailable) as caught:
        client_for("http://payer.example/core", "soap", session=session).send("P", REQUEST, trace=TRACE)
    assert caught.value.core_error_code == "CORERuleVersionNotSupported"
    assert "CORERuleVersionNotSupported" in caught.value.diagnostics
    assert session.calls == 1


def test_a_redirect_is_not_followed():
    session = CannedSession(302, b"", "text/plain")
    with pytest.raises(PayerUnavailable, match="redirect"):
        client_for("http://payer.example/x12", session=session).send("P", REQUEST, trace=TRACE)


def test_a_trickling_answer_is_cut_off_at_the_budget():
    clock = FakeClock()

    class Trickle(io.RawIOBase):
        def read(self, size=-1):
            clock.now += 0.4   # every chunk arrives within the read timeout, the whole answer does not
            return b"ISA*"

    session = CannedSession(200, b"", "application/edi-x12", raw=Trickle())
    client = client_for("http://payer.example/x12", session=session, clock=clock, budget_seconds=2,
                        timeout_seconds=1, connect_timeout_seconds=1)
    with pytest.raises(PayerTimeout, match="still arriving"):
        client.send("P", REQUEST, trace=TRACE)


def test_headers_arriving_a_line_at_a_time_are_cut_off_at_the_budget(header_drip):
    """Each header line comes within the read timeout; the answer never ends: the budget ends it (not 100 lines
    times the read timeout), as a timeout, and the breaker counts it as one."""
    client = client_for(header_drip, budget_seconds=1.2, timeout_seconds=1, connect_timeout_seconds=1)
    started = time.monotonic()
    with pytest.raises(PayerTimeout, match="still arriving when the 1.2 s budget ran out") as caught:
        client.send("P", REQUEST, trace=TRACE)
    assert time.monotonic() - started < 2.0 and caught.value.attempts == 1


def test_what_a_broken_answer_quotes_never_reaches_the_log(caplog):
    """A status line the client cannot parse is quoted in the exception: the log keeps the exception classes only
    (the quoted text may be a patient's data), and the system's words for a socket error."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 2x0 <Payload>ZQX DELGADO MARIA 19780514 ACM482193057</Payload>\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    client = client_for(f"http://127.0.0.1:{listener.getsockname()[1]}/x12")
    with caplog.at_level("WARNING", logger="gateway.transport.client"), pytest.raises(PayerUnavailable):
        client.send("P", REQUEST, trace=TRACE)
    thread.join(5)
    listener.close()
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "BadStatusLine" in logged and "DELGADO" not in logged and "ACM482193057" not in logged


def test_a_refused_connection_is_logged_in_the_systems_words(closed_port, caplog):
    client = client_for(f"http://127.0.0.1:{closed_port}/x12", retries=0)
    with caplog.at_level("WARNING", logger="gateway.transport.client"), pytest.raises(PayerUnavailable):
        client.send("P", REQUEST, trace=TRACE)
    assert any("NewConnectionError" in r.getMessage() and "(Connection refused)" in r.getMessage()
               for r in caplog.records)


def test_999_findings_from_ik3_ik4_ik5():
    ack = ("ISA*00*          *00*          *ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *250310*0915*^*00501*000000009*0*P*:~"
           "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*005010X231A1~ST*999*0001*005010X231A1~"
           "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK3*NM1*8*2100C*8~IK4*9:0*67*6*ACM#482~"
           "IK5*R*5~AK9*R*1*1*0~SE*8*0001~GE*1*9~IEA*1*000000009~")
    with pytest.raises(PayerRejected) as caught:
        client_for("http://payer.example/x12", session=CannedSession(200, ack.encode(), "application/edi-x12")
                   ).send("P", REQUEST, trace=TRACE)
    ik3, ik4, ik5 = caught.value.findings
    assert ik3 == {"level": "segment", "segment": "IK3", "set_id": "270", "transaction": "0001", "segment_id": "NM1",
                   "position": "8", "loop": "2100C", "code": "8", "description": "Segment has data element errors",
                   "message": "segment NM1 at position 8 (loop 2100C): Segment has data element errors (IK304 code 8)"}
    assert ik4["element"] == "NM109" and ik4["code"] == "6" and ik4["data_element"] == "67"
    assert ik4["value"] == "ACM#482"
    assert ik4["message"] == ("element NM109 (data element 67): Invalid character in data element (IK403 code 6): "
                              "'ACM#482'")
    assert ik5["status"] == "R" and ik5["codes"] == ["5"]
    severities = [i["severity"] for i in caught.value.to_operation_outcome()["issue"]]
    assert severities == ["error"] * 4


# ---------------------------------------------------------------------------------------------- trace check


def test_trace_check_on_271_shapes():
    good = answer_for("subscriber-generic.270")
    _check_trace(read_x12(good).transactions, TRACE)
    with pytest.raises(TraceMismatch):
        _check_trace(read_x12(good).transactions, "GW-OTHER-0002-1")
    without_trn = good.replace(f"TRN*2*{TRACE}*9FHIRX12GW~", "").replace("SE*26*", "SE*25*")
    with pytest.raises(TraceMismatch):   # patient data without any trace is not ours to hand out
        _check_trace(read_x12(without_trn).transactions, TRACE)
    refused_at_payer = ("ISA*00*          *00*          *ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *250310*0915*^*00501*"
                        "000000001*0*T*>~GS*HB*ACMEHLTH*FHIRX12GW*20250310*0915*1*X*005010X279A1~"
                        "ST*271*0001*005010X279A1~BHT*0022*11*GW-SG-0001*20250310*0915~HL*1**20*0~"
                        "NM1*PR*2*ACME HEALTH PLAN*****PI*ACME01~AAA*Y**42*R~SE*6*0001~GE*1*1~IEA*1*000000001~")
    _check_trace(read_x12(refused_at_payer).transactions, TRACE)   # no patient loop: nothing to mix up


# --------------------------------------------------------------------------------------------- the breaker


def test_the_breaker_opens_rejects_without_calling_half_opens_and_closes(payer):
    base, _ = payer
    clock = FakeClock()
    session = CountingSession()
    client = client_for(base + "/x12", session=session, clock=clock, retries=0,
                        breaker={"failures": 3, "reset_seconds": 30})
    breaker = client.breaker(client.routes.route("P"))
    scenario(base, fault="http-503", times=4)
    for _ in range(3):
        with pytest.raises(PayerUnavailable):
            client.send("P", REQUEST, trace=TRACE)
    assert breaker.state == "open" and session.calls == 3
    with pytest.raises(CircuitOpen) as caught:
        client.send("P", REQUEST, trace=TRACE)
    assert session.calls == 3   # refused without a network call
    assert caught.value.http_status == 503 and caught.value.issue_code == "transient"
    assert caught.value.retry_after == pytest.approx(30)
    clock.now += 30   # half-open: one trial, which fails (the 4th 503) and opens the breaker again
    with pytest.raises(PayerUnavailable):
        client.send("P", REQUEST, trace=TRACE)
    assert breaker.state == "open" and session.calls == 4
    with pytest.raises(CircuitOpen):
        client.send("P", REQUEST, trace=TRACE)
    assert session.calls == 4
    clock.now += 30   # the next trial succeeds and closes it
    assert GOOD_EB in client.send("P", REQUEST, trace=TRACE).x12
    assert breaker.state == "closed" and breaker.consecutive == 0
    assert GOOD_EB in client.send("P", REQUEST, trace=TRACE).x12
    assert session.calls == 6


def test_half_open_lets_one_trial_through_at_a_time():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_seconds=10, clock=clock)
    breaker.failed()
    assert breaker.state == "closed" and breaker.admit() is None
    breaker.failed()
    assert breaker.state == "open" and breaker.admit() == pytest.approx(10)
    clock.now += 10
    assert breaker.admit() is None and breaker.state == "half-open"
    assert breaker.admit() is not None   # a second caller waits for the trial's outcome
    breaker.released()                   # the trial never reached the payer: the next caller may try
    assert breaker.admit() is None
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.admit() is None


def test_rejections_do_not_open_the_breaker(payer):
    base, _ = payer
    client = client_for(base + "/x12", breaker={"failures": 1, "reset_seconds": 30})
    for member_id in ("SIMREJ999007", "SIMTA1000008", "SIMTRACE0009"):
        with pytest.raises((PayerRejected, TraceMismatch)):
            client.send("P", member(member_id), trace=TRACE)
    assert client.breaker(client.routes.route("P")).state == "closed"


# ----------------------------------------------------------------------------------------------- concurrency


def test_a_full_payer_answers_busy(payer):
    base, _ = payer
    scenario(base, fault="latency", seconds=0.8, times=1)
    session = CountingSession()
    client = client_for(base + "/x12", session=session, concurrency=1, queue_seconds=0.1)
    results: list = []
    first = threading.Thread(target=lambda: results.append(client.send("P", REQUEST, trace=TRACE)))
    first.start()
    assert session.sent.wait(5)
    start = time.perf_counter()
    with pytest.raises(PayerBusy) as caught:
        client.send("P", REQUEST, trace=TRACE)
    assert time.perf_counter() - start < 0.5
    assert caught.value.http_status == 503 and caught.value.issue_code == "throttled"
    assert caught.value.attempts == 0
    first.join(5)
    assert results and results[0].attempts == 1 and session.calls == 1
    assert client.breaker(client.routes.route("P")).state == "closed"


def test_processes_share_a_payers_limit(payer):
    """Two gateway processes and a limit of 2: each may have one call in flight, so the payer never sees three."""
    base, _ = payer
    scenario(base, fault="latency", seconds=0.8, times=1)
    session = CountingSession()
    client = client_for(base + "/x12", session=session, concurrency=2, queue_seconds=0.1, processes=2)
    route = client.routes.route("P")
    assert client.limit(route) == 1 and client.oversubscribed() == []
    first = threading.Thread(target=lambda: client.send("P", REQUEST, trace=TRACE))
    first.start()
    assert session.sent.wait(5)
    with pytest.raises(PayerBusy, match=r"1 request\(s\) \(this process's share of 2\) to payer P"):
        client.send("P", REQUEST, trace=TRACE)
    first.join(5)
    assert session.calls == 1


def test_a_wait_for_a_slot_is_queued_time_not_payer_time(payer):
    base, _ = payer
    scenario(base, fault="latency", seconds=0.6, times=1)
    session = CountingSession()
    client = client_for(base + "/x12", session=session, concurrency=1, queue_seconds=3)
    first = threading.Thread(target=lambda: client.send("P", REQUEST, trace=TRACE))
    first.start()
    assert session.sent.wait(5)
    answer = client.send("P", REQUEST, trace=TRACE)   # waits for the first call's slot, then is answered at once
    first.join(5)
    assert answer.queued > 0.3
    assert answer.payer_time < answer.elapsed - 0.3 and answer.payer_time == answer.elapsed - answer.queued


@pytest.mark.parametrize(("concurrency", "processes", "share", "over"), [
    (20, 1, 20, []), (20, 2, 10, []), (20, 3, 6, []), (2, 2, 1, []), (1, 2, 1, ["P"]), (3, 4, 1, ["P"])])
def test_each_process_gets_its_share_of_the_limit(concurrency, processes, share, over):
    client = client_for("http://127.0.0.1:9/x12", concurrency=concurrency, processes=processes)
    assert client.limit(client.routes.route("P")) == share
    assert client.oversubscribed() == over


def test_processes_must_be_positive():
    with pytest.raises(ValueError, match="processes"):
        client_for("http://127.0.0.1:9/x12", processes=0)


# --------------------------------------------------------------------------------------------------- routing


def test_unknown_payer_is_422_not_supported_without_a_call():
    session = CountingSession()
    client = client_for("http://127.0.0.1:9/x12", session=session)
    with pytest.raises(UnknownPayer) as caught:
        client.send("NOBODY", REQUEST, trace=TRACE)
    assert caught.value.http_status == 422 and caught.value.issue_code == "not-supported"
    assert caught.value.to_operation_outcome()["issue"][0]["code"] == "not-supported"
    assert session.calls == 0


def test_the_shipped_routing_table():
    routes = load_routes()
    acme = routes.route(" acme01 ")
    assert (acme.payer_id, acme.transport, acme.receiver_id, acme.usage) == ("ACME01", "soap", "ACMEHLTH", "T")
    assert acme.url == "http://127.0.0.1:8090/core/soap"
    assert (acme.timeout, acme.connect_timeout, acme.retries, acme.backoff) == (15, 3, 2, 0.2)
    assert (acme.breaker_failures, acme.breaker_reset, acme.budget) == (5, 30, 18)
    medicaid = routes.route("NWMCD01")
    assert (medicaid.transport, medicaid.receiver_qualifier, medicaid.concurrency) == ("mime", "30", 5)
    assert (medicaid.breaker_failures, medicaid.breaker_reset, medicaid.timeout) == (3, 60, 12)
    assert routes.route("LHA77").transport == "x12" and "LHA77" in routes
    with pytest.raises(UnknownPayer):
        routes.route("ZZZ99")
    envelope = acme.envelope(7, datetime(2025, 3, 10))
    assert (envelope.sender_id, envelope.receiver_id, envelope.usage) == ("FHIRX12GW", "ACMEHLTH", "T")


def test_the_override_url_routes_every_payer_to_one_soap_endpoint(payer):
    base, _ = payer
    routes = load_routes(table({"LHA77": {"url": "https://edi.lakeside.example/x12", "transport": "x12",
                                          "timeout_seconds": 7}}), base + "/core/soap")
    listed = routes.route("LHA77")
    assert (listed.url, listed.transport, listed.timeout, listed.listed) == (base + "/core/soap", "soap", 7, True)
    other = routes.route("ANYPAYER")
    assert (other.url, other.transport, other.receiver_id, other.listed) == (base + "/core/soap", "soap",
                                                                             "ANYPAYER", False)
    client = PayerClient(routes)
    answer = client.send("ANYPAYER", REQUEST, trace=TRACE)
    assert GOOD_EB in answer.x12 and answer.url == base + "/core/soap"
    # unlisted payers share the override endpoint's breaker; listed ones keep their own
    assert client.breaker(routes.route("X1")) is client.breaker(routes.route("X2"))
    assert client.breaker(routes.route("LHA77")) is not client.breaker(routes.route("X1"))
    assert routes_from_config({"FHIR_X12_PAYER_URL": base + "/core/soap"}).route("WHOEVER").transport == "soap"


def test_every_problem_in_the_routing_table_is_named():
    bad = {"defaults": {"sender_id": "FHIRX12GW", "budget_seconds": 25, "colour": "red"},
           "payers": {"A": {"transport": "soap"},
                      "B": {"url": "ftp://b.example/", "transport": "carrier-pigeon", "receiver_qualifier": 30},
                      "C": {"url": "https://c.example/", "retries": True, "breaker": {"failures": 0, "when": 1}},
                      "c": {"url": "https://c2.example/"}}}
    with pytest.raises(MappingError) as caught:
        load_routes(bad)
    text = str(caught.value)
    for expected in ("defaults.colour: unknown key", "payers.A.url: required", "payers.B.url: must be an http",
                     "payers.B.transport", "payers.B.receiver_qualifier", "payers.C.retries",
                     "payers.C.breaker.when: unknown key", "payers.C.breaker.failures", "budget_seconds",
                     "payers.c: payer id listed twice"):
        assert expected in text, expected
    with pytest.raises(MappingError, match="FHIR_X12_PAYER_URL"):
        load_routes(table({}), "not a url")


def test_every_error_carries_a_fhir_issue_type_and_status():
    for cls in (UnknownPayer, PayerTimeout, PayerUnavailable, TraceMismatch, CircuitOpen, PayerBusy):
        error = cls("P") if cls is UnknownPayer else cls("why")
        assert isinstance(error, PayerError) and isinstance(error, GatewayError)
        assert error.issue_code in ISSUE_TYPES and error.http_status in (422, 502, 503, 504)
        assert error.to_operation_outcome()["issue"][0]["code"] == error.issue_code
    rejected = PayerRejected("999", "", [])
    assert rejected.issue_code in ISSUE_TYPES and rejected.http_status == 502
