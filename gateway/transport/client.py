"""The payer client: one 270 out to a payer, its 271 back, or an error that says exactly what went wrong.

``PayerClient.send`` picks the payer's route (``routing.py``), wraps the 270 for its transport (CAQH CORE
SOAP, CORE MIME, or bare X12), and classifies what comes back. Every failure is a :class:`PayerError` with the
HTTP status and FHIR issue-type code the API answers with, and ``to_operation_outcome()``.

Rules worth knowing before changing this file:

* **Retries only where the payer cannot have acted on the 270**: the TCP connection could not be opened
  (refused, unreachable, DNS, connect timeout), or the 271 says ``AAA*...*42*R`` (unable to respond now,
  resubmission allowed). A read timeout, an HTTP 5xx, a broken connection after sending, a 999, a TA1, a
  mismatched trace and any other AAA (72 invalid member id ...) are never retried. Retry ``n`` waits
  ``backoff * 2**(n-1)`` seconds first.
* **The CORE 20-second budget.** The whole call (queueing, attempts, pauses) gets ``route.budget`` seconds
  (at most 20). Each attempt's connect/read timeouts are cut to what is left, the body is read against the
  deadline (``requests`` read timeouts are per socket read, so a payer trickling bytes could otherwise hold
  us forever), and no retry starts unless a pause plus a useful attempt still fit.
* **Trace check.** A 271 that carries patient loops (2000C) must echo our trace number in a ``TRN*2`` of each
  of them; otherwise it is refused (:class:`TraceMismatch`, 502): one patient's 271 must never answer
  another patient's request. A 271 without patient loops (the payer refused at 2000A/2100A/2100B, e.g. AAA 42)
  carries no patient data and is accepted without a TRN.
* **Circuit breaker, per payer.** ``breaker_failures`` consecutive failed calls (timeout or
  :class:`PayerUnavailable`) open it: calls are refused at once with :class:`CircuitOpen` (503, with
  ``retry_after``). After ``breaker_reset`` seconds one trial call is let through: success closes the breaker,
  failure opens it again. Any answer from the payer (271, 999, TA1, even a wrong trace or a refusal of our
  credentials) shows the payer is up and counts as success; :class:`PayerBusy` and :class:`CircuitOpen` never
  reach the payer and count as nothing.
* **Concurrency, per payer.** At most ``route.concurrency`` calls in flight across the ``processes`` that share
  the limit (each gets ``limit(route)``, its share); a further call waits up to
  ``route.queue_wait`` seconds (never beyond the budget) for a slot, then gets :class:`PayerBusy` (503,
  throttled). Queueing longer would only spend the caller's CORE budget on a payer that is already slow.
  Payers routed only by ``FHIR_X12_PAYER_URL`` (not listed in the table) share one breaker and one set of
  slots: they all go to the same endpoint.
* **PayloadID.** A given ``payload_id`` is used for the first attempt; every retry is a new CORE message with
  a fresh PayloadID (payers may refuse a repeated one as a duplicate).
* **No PHI in logs.** Log lines carry the payer id, attempt, outcome and timing, never the payload, an IK404
  value or a foreign trace number.
* **Credentials.** The route's user name and password go in the CORE envelope (WS-Security UsernameToken for
  SOAP, UserName/Password fields for MIME) or, for raw X12, in HTTP Basic (UTF-8); its client certificate and
  CA bundle go to each ``requests`` call (``cert=``, ``verify=``). A refusal (CORE ``UnAuthorized``, a
  WS-Security fault, HTTP 401/403, a TLS alert rejecting our certificate) is :class:`PayerUnauthorized`
  (502, ``security``): never retried, and never counted against the breaker (see ``send``). No credential
  appears in a log line or an error message.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, ClassVar

import requests
import urllib3
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.response import BaseHTTPResponse

from gateway.errors import GatewayError, X12SyntaxError, quoted
from gateway.transport import core
from gateway.transport.acks import AckCodeError, AckCodes, ack_findings, acknowledgments, load_ack_codes
from gateway.transport.streams import DeadlineAdapter, Streamed, arriving, deadline
from gateway.x12.model import Finding, Loop, Segment, Transaction
from gateway.x12.reader import read_x12
from gateway.x12.tokenizer import tokenize

if TYPE_CHECKING:
    from gateway.transport.routing import Route, RoutingTable

log = logging.getLogger(__name__)

X12_CONTENT_TYPE = "application/edi-x12"
MAX_ANSWER_BYTES = 5 * 1024 * 1024        # a real-time 271 is a few kB; anything near this is not one
MIN_ATTEMPT_SECONDS = 0.5                 # no retry is started with less budget left than this
USER_AGENT = "fhir-x12-gateway"


# ------------------------------------------------------------------------------------------------------ errors


class PayerError(GatewayError):
    """A payer call that produced no usable 271. ``http_status`` and ``issue_code`` (FHIR issue-type) are what
    the API answers with; ``diagnostics`` says why in words; ``attempts`` and ``elapsed`` how hard we tried."""

    http_status = 502
    issue_code = "exception"
    summary = "the payer could not be asked"

    def __init__(self, diagnostics: str, *, payer_id: str | None = None, retry_after: float | None = None,
                 attempts: int = 0) -> None:
        self.diagnostics = diagnostics
        self.payer_id = payer_id
        self.retry_after = retry_after     # seconds; the API may send it as Retry-After
        self.attempts = attempts
        self.elapsed: float | None = None
        self.url: str | None = None
        self.payload: str | None = None    # the payer's answer, when there was one (for the audit store)
        super().__init__(diagnostics)

    def issues(self) -> list[dict[str, Any]]:
        return [{"severity": "error", "code": self.issue_code, "details": {"text": self.summary},
                 "diagnostics": self.diagnostics}]

    def to_operation_outcome(self) -> dict[str, Any]:
        return {"resourceType": "OperationOutcome", "issue": self.issues()}


class UnknownPayer(PayerError):
    """No route for this payer id (and no ``FHIR_X12_PAYER_URL``)."""

    http_status = 422
    issue_code = "not-supported"
    summary = "the gateway has no route to this payer"

    def __init__(self, payer_id: str) -> None:
        super().__init__(f"no route for payer id {quoted(str(payer_id))} in the routing table", payer_id=payer_id)


class PayerTimeout(PayerError):
    """The payer did not answer within the route's timeout or the CORE budget (never retried)."""

    http_status = 504
    issue_code = "timeout"
    summary = "the payer did not answer in time"


class PayerUnavailable(PayerError):
    """Connection failed (after retries), HTTP error status, broken CORE envelope, or an answer that is not X12.

    ``core_error_code`` holds the CORE ErrorCode or SOAP Fault code when the payer sent one, ``status`` the
    HTTP status when that was the problem.
    """

    http_status = 502
    issue_code = "transient"
    summary = "the payer could not be reached or did not answer properly"

    def __init__(self, diagnostics: str, *, core_error_code: str | None = None, status: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(diagnostics, **kwargs)
        self.core_error_code = core_error_code
        self.status = status


class PayerUnauthorized(PayerError):
    """The payer refused the gateway's credentials (user name/password or client certificate): a configuration
    fault on our side, so never retried. ``core_error_code`` and ``status`` say how the payer refused."""

    http_status = 502
    issue_code = "security"
    summary = "the payer refused the gateway's credentials"

    def __init__(self, how: str, *, core_error_code: str | None = None, status: int | None = None,
                 **kwargs: Any) -> None:
        # the payer's own message is not quoted: it may echo the user name it refused
        super().__init__(f"the payer refused the gateway's credentials ({how}); check the user name, password and "
                         f"client certificate configured for this payer", **kwargs)
        self.core_error_code = core_error_code
        self.status = status


class PayerRejected(PayerError):
    """The payer answered with a 999 or TA1 instead of a 271: it refused our 270 (never retried).

    ``kind`` is ``"999"``/``"997"``/``"TA1"``, ``ack`` the acknowledgment as received, ``findings`` one dict per
    IK3/IK4/IK5 (AK3/AK4/AK5 in a 997), AK9 with codes, and TA1: ``level``, ``segment``, codes, ``message``.
    """

    http_status = 502
    issue_code = "processing"
    summary = "the payer rejected the eligibility request"

    def __init__(self, kind: str, ack: str, findings: list[dict[str, Any]], **kwargs: Any) -> None:
        what = "; ".join(f["message"] for f in findings[:3]) or "no details"
        super().__init__(f"the payer answered with a {kind} instead of a 271: {what}", **kwargs)
        self.kind = kind
        self.ack = ack
        self.findings = findings

    def issues(self) -> list[dict[str, Any]]:
        first = {"severity": "error", "code": self.issue_code,
                 "details": {"text": f"{self.summary} ({self.kind} acknowledgment)"}}
        return [first] + [{"severity": _severity(f), "code": self.issue_code, "details": {"text": f["message"]},
                           "diagnostics": f"{self.kind} {f['segment']}"} for f in self.findings]


class TraceMismatch(PayerError):
    """The 271 does not echo our TRN: it may answer another request, so it is refused (never retried)."""

    http_status = 502
    issue_code = "processing"
    summary = "the payer's answer does not belong to this request"


class CircuitOpen(PayerError):
    """The payer's circuit breaker is open: recent calls failed, so this one is refused without trying."""

    http_status = 503
    issue_code = "transient"
    summary = "the payer is not being called for now after repeated failures"


class PayerBusy(PayerError):
    """All of this payer's concurrency slots stayed taken for ``queue_wait`` seconds (issue code ``throttled``:
    the gateway's own load management refused it)."""

    http_status = 503
    issue_code = "throttled"
    summary = "too many requests to this payer are in progress"


def _severity(finding: dict[str, Any]) -> str:
    status = finding.get("status")
    if status == "A":
        return "information"
    if status == "E":
        return "warning"
    return "error"


# ------------------------------------------------------------------------------------------------------ answer


@dataclass
class PayerAnswer:
    """A 271 that echoes our trace (it may still carry AAA segments: the translation reports them)."""

    x12: str
    kind: str
    elapsed: float
    attempts: int
    payer_id: str
    url: str
    payload_id: str | None = None    # the CORE PayloadID of the answered attempt (None for raw X12)
    transactions: list[Transaction] = field(default_factory=list, repr=False)   # the 271s, already read
    queued: float = 0.0              # of ``elapsed``, the wait for a free concurrency slot (the gateway's own)
    defects: list[Finding] = field(default_factory=list, repr=False)   # errors found reading the 271 (a wrong count)

    @property
    def payer_time(self) -> float:
        """The payer's share of ``elapsed``: from the first attempt on (retry pauses included)."""
        return max(self.elapsed - self.queued, 0.0)


# ----------------------------------------------------------------------------------------------------- breaker


@dataclass
class CircuitBreaker:
    """closed -> open after ``failures`` consecutive failures; open -> half-open after ``reset_seconds``;
    half-open lets one trial through: success closes, failure reopens. Thread-safe."""

    failures: int
    reset_seconds: float
    clock: Callable[[], float] = time.monotonic
    name: str = ""   # whose breaker, for the log: the payer id, or "*" for the payers the override URL serves
    on_open: Callable[[str], None] | None = None   # told the name each time it opens (a metric, say)
    state: str = "closed"
    consecutive: int = 0
    opened_at: float = 0.0
    _trial: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self) -> float | None:
        """None when a call may go ahead; otherwise seconds until one may (for Retry-After)."""
        with self._lock:
            if self.state == "open":
                wait = self.opened_at + self.reset_seconds - self.clock()
                if wait > 0:
                    return wait
                self.state, self._trial = "half-open", False
            if self.state == "half-open":
                if self._trial:
                    return 1.0   # a trial call is under way; its outcome decides
                self._trial = True
            return None

    def succeeded(self) -> None:
        with self._lock:
            self.state, self.consecutive, self._trial = "closed", 0, False

    def failed(self) -> None:
        opening = False
        with self._lock:
            self.consecutive += 1
            if self.state == "half-open" or self.consecutive >= self.failures:
                opening = self.state != "open"
                if opening:
                    log.warning("circuit breaker of payer %s opened after %d consecutive failures",
                                self.name or "?", self.consecutive)
                self.state, self.opened_at, self._trial = "open", self.clock(), False
        if opening and self.on_open is not None:   # outside the lock: the hook is the caller's code
            self.on_open(self.name)

    def released(self) -> None:
        """The call ended without saying anything about the payer (it never reached it)."""
        with self._lock:
            self._trial = False


# ------------------------------------------------------------------------------------------------------ client


class _Retry(Exception):
    """Internal: this attempt failed in a way that is safe to retry; ``final`` is what to raise if not."""

    def __init__(self, final: PayerError) -> None:
        super().__init__(final.diagnostics)
        self.final = final


@dataclass
class _Call:
    route: Route
    start: float
    deadline: float
    attempts: int = 0
    payload_id: str | None = None
    queued: float = 0.0      # seconds spent waiting for a concurrency slot


class PayerClient:
    """Sends 270s to payers by route; thread-safe (one instance per process, shared by requests)."""

    def __init__(self, routes: RoutingTable, *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 ack_codes: AckCodes | None = None, processes: int = 1) -> None:
        """``ack_codes``: the meanings of 999/TA1 codes (default: ``mappings/codes/``). ``processes``: how many
        gateway processes (gunicorn workers) share each payer's concurrency limit."""
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.routes = routes
        self.processes = processes
        self.ack_codes = ack_codes if ack_codes is not None else load_ack_codes()
        self.session = session if session is not None else _session(routes.max_concurrency)
        self._post = DirectPost(self.session)
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        # told the breaker's name ("*": the payers the override URL serves) each time one opens (the app's metric)
        self.on_breaker_open: Callable[[str], None] | None = None

    # -- public ---------------------------------------------------------------------------------------------
    def send(self, payer_id: str, x12: str, *, trace: str, payload_id: str | None = None) -> PayerAnswer:
        """Send the 270 ``x12`` to ``payer_id``'s endpoint and return its 271.

        ``trace`` is the TRN02 of our 2000C ``TRN*1`` (the 271 must echo it in ``TRN*2``). Raises a
        :class:`PayerError` subclass for every failure.
        """
        if not trace or trace not in x12:
            raise ValueError("trace must be the TRN02 value carried by this 270")
        route = self.routes.route(payer_id)
        start = self.clock()
        call = _Call(route, start, start + route.budget)
        breaker = self.breaker(route)
        wait = breaker.admit()
        if wait is not None:
            raise self._finish(CircuitOpen(f"circuit breaker open for payer {route.payer_id}; next trial in "
                                           f"{wait:.1f} s", retry_after=wait), call)
        outcome = None
        try:
            with self._slot(route, call):
                answer = self._attempts(call, x12, trace, payload_id)
            outcome = True
            log.info("payer %s answered in %.3f s after %d attempt(s)", route.payer_id, answer.elapsed,
                     answer.attempts)
            return answer
        except (PayerTimeout, PayerUnavailable) as exc:
            outcome = False
            self._finish(exc, call)
            raise
        except (PayerRejected, TraceMismatch) as exc:
            outcome = True   # the payer is up and answering
            self._finish(exc, call)
            raise
        except PayerUnauthorized as exc:
            # Refused credentials are our configuration fault and the payer answered, so it counts as up: opening
            # the breaker would turn every request into "payer down" (503) and hide the real cause. The cost is
            # that each request still reaches the payer with the bad credentials (payers may lock an account
            # after repeated failures), hence the error log naming the payer.
            outcome = True
            log.error("payer %s refused the gateway's credentials; check its routing entry", route.payer_id)
            self._finish(exc, call)
            raise
        except PayerError as exc:   # PayerBusy: the payer was never called
            self._finish(exc, call)
            raise
        finally:
            if outcome is True:
                breaker.succeeded()
            elif outcome is False:
                breaker.failed()
            else:
                breaker.released()

    def limit(self, route: Route) -> int:
        """This process's share of the payer's concurrency limit (at least 1, so a limit smaller than the number
        of processes can be exceeded: :meth:`oversubscribed` names those payers)."""
        return max(1, route.concurrency // self.processes)

    def oversubscribed(self) -> list[str]:
        """Payers whose limit is below the number of processes: together the processes may exceed it."""
        routes = [*self.routes.routes.values(), *([self.routes.override] if self.routes.override else [])]
        return sorted({r.payer_id if r.listed else "*" for r in routes if r.concurrency < self.processes})

    def breaker(self, route: Route) -> CircuitBreaker:
        """The payer's breaker (created on first use; ``.state`` is closed, open or half-open)."""
        with self._lock:
            breaker = self._breakers.get(_key(route))
            if breaker is None:
                breaker = CircuitBreaker(route.breaker_failures, route.breaker_reset, self.clock, _key(route),
                                         on_open=self.on_breaker_open)
                self._breakers[_key(route)] = breaker
            return breaker

    # -- one call ---------------------------------------------------------------------------------------------
    def _finish(self, exc: PayerError, call: _Call) -> PayerError:
        exc.payer_id = call.route.payer_id
        exc.url = call.route.url
        exc.attempts = call.attempts
        exc.elapsed = self.clock() - call.start
        log.warning("payer %s: %s after %d attempt(s) in %.3f s (%s)", call.route.payer_id, type(exc).__name__,
                    call.attempts, exc.elapsed, exc.http_status)
        return exc

    @contextmanager
    def _slot(self, route: Route, call: _Call) -> Iterator[None]:
        with self._lock:
            slots = self._slots.get(_key(route))
            if slots is None:
                slots = self._slots[_key(route)] = threading.BoundedSemaphore(self.limit(route))
        wait = max(0.0, min(route.queue_wait, call.deadline - self.clock()))
        if not slots.acquire(timeout=wait):
            share = f" (this process's share of {route.concurrency})" if self.processes > 1 else ""
            raise PayerBusy(f"{self.limit(route)} request(s){share} to payer {route.payer_id} already in progress; "
                            f"none finished within {wait:.1f} s", retry_after=1.0)
        call.queued = self.clock() - call.start
        try:
            yield
        finally:
            slots.release()

    def _attempts(self, call: _Call, x12: str, trace: str, payload_id: str | None) -> PayerAnswer:
        route = call.route
        while True:
            if call.deadline - self.clock() <= 0:
                raise PayerTimeout(f"the {route.budget:g} s budget ran out before attempt {call.attempts + 1}")
            call.attempts += 1
            call.payload_id = payload_id if call.attempts == 1 and payload_id else None
            try:
                text = self._exchange(call, x12)
            except _Retry as retry:
                if not self._pause(call):
                    raise retry.final from None
                log.info("payer %s: attempt %d could not connect; retrying", route.payer_id, call.attempts)
                continue
            try:
                txns, defects = _answer_271(text, self.ack_codes)
                _check_trace(txns, trace)
            except PayerError as exc:
                exc.payload = text   # what the payer sent is kept for the audit record
                raise
            if _unable_to_respond(txns) and self._pause(call):
                log.info("payer %s: attempt %d answered AAA 42 (resubmission allowed); retrying", route.payer_id,
                         call.attempts)
                continue
            return PayerAnswer(x12=text, kind="271", elapsed=self.clock() - call.start, attempts=call.attempts,
                               payer_id=route.payer_id, url=route.url, payload_id=call.payload_id,
                               transactions=txns, queued=call.queued, defects=defects)

    def _pause(self, call: _Call) -> bool:
        """Wait before the next attempt, if retries are left and a pause plus an attempt fit in the budget."""
        if call.attempts > call.route.retries:
            return False
        delay = call.route.backoff * 2 ** (call.attempts - 1)
        if self.clock() + delay + MIN_ATTEMPT_SECONDS > call.deadline:
            return False
        if delay > 0:
            self.sleep(delay)
        return True

    def _exchange(self, call: _Call, x12: str) -> str:
        """One POST; the X12 text of the payer's answer, or a PayerError / _Retry."""
        route = call.route
        headers = {"User-Agent": USER_AGENT}
        if route.transport == "x12":
            call.payload_id = None   # bare X12 has no envelope to carry one
            body = x12.encode("utf-8")
            headers["Content-Type"] = X12_CONTENT_TYPE
            if route.username is not None:
                headers["Authorization"] = _basic(route.username, route.password or "")
        else:
            env = core.CoreEnvelope.create(core.PAYLOAD_270, x12, sender_id=route.sender_id,
                                           receiver_id=route.receiver_id, payload_id=call.payload_id,
                                           username=route.username, password=route.password)
            call.payload_id = env.payload_id
            if route.transport == "mime":
                body, headers["Content-Type"] = core.build_mime_request(env)
            else:
                body, headers["Content-Type"] = core.build_soap_request(env), core.SOAP_CONTENT_TYPE
        remaining = call.deadline - self.clock()
        timeout = (min(route.connect_timeout, remaining), min(route.timeout, remaining))
        try:
            with deadline(call.deadline, self.clock), self._post(route.url, body, headers, timeout=timeout,
                                                                 cert=route.tls_cert,
                                                                 verify=route.tls_verify) as response:
                status = response.status_code
                content_type = response.headers.get("Content-Type", "")
                content = self._read(response, call)
        except requests.RequestException as exc:
            if self.clock() >= call.deadline and isinstance(exc, requests.ReadTimeout | requests.ConnectionError) \
                    and not isinstance(exc, requests.ConnectTimeout):   # cut at the deadline while it arrived
                raise PayerTimeout(f"the answer was still arriving when the {route.budget:g} s budget ran out") \
                    from None
            raise _request_failure(exc, route, timeout) from None
        except OSError as exc:   # before any connection (a CA bundle that vanished since the start, say)
            log.warning("payer %s: %s", route.payer_id, failure_cause(exc))
            raise PayerUnavailable(f"the connection to payer {route.payer_id}'s endpoint could not be set up (the "
                                   "gateway's log has the reason)") from None
        return _payload(route, status, content_type, content)

    def _read(self, response: Streamed, call: _Call) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in arriving(response):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise PayerUnavailable(f"the answer is larger than {MAX_ANSWER_BYTES} bytes; not a real-time 271")
            chunks.append(chunk)
            if self.clock() > call.deadline:
                raise PayerTimeout(f"the answer was still arriving when the {call.route.budget:g} s budget ran out")
        return b"".join(chunks)


def _basic(username: str, password: str) -> str:
    """An HTTP Basic Authorization value, UTF-8 encoded (RFC 7617); requests' own ``auth=`` would use latin-1."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _key(route: Route) -> str:
    """Whose breaker and slots: the payer's; payers routed only by the override URL share one set (the same
    endpoint, and request data cannot make the client keep state for ever more payer ids)."""
    return route.payer_id if route.listed else "*"


class DirectAnswer:
    """A payer's answer as :class:`DirectPost` receives it from urllib3: what ``_exchange`` reads of a
    ``requests.Response`` (``status_code``, ``headers``, ``raw``, closing it), without building one: its cookie
    jar, a copy of the headers and the cookies extracted from them (which the gateway refuses anyway)."""

    __slots__ = ("headers", "raw", "status_code")

    def __init__(self, raw: BaseHTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers   # urllib3's HTTPHeaderDict: case-insensitive, as requests' are

    def close(self) -> None:
        """As ``requests.Response.close`` does for a body read through ``raw``: an answer read to its end has
        already given its connection back to the pool; one read only in part closes its connection (what is left
        of it must never be read as the next answer), and the pool gets the slot back."""
        self.raw.close()
        self.raw.release_conn()

    def __enter__(self) -> DirectAnswer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Target:
    """What is the same for every POST to one URL: the request prepared without a body (its URL, as requests
    normalises it), the path sent, the session's headers with their spelling, and the pool keys requests makes of
    the URL and each pair of TLS settings (``verify``, ``cert``) used with it."""

    prepared: requests.PreparedRequest
    path: str
    headers: dict[str, str]
    spelling: dict[str, str]   # lower case -> the session's spelling of each of its headers
    pool_keys: dict[tuple[Any, Any], tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)

    MAX_TLS_SETTINGS: ClassVar[int] = 16   # routes share a URL with few settings; more are looked up per call

    def pool(self, adapter: HTTPAdapter, verify: Any, cert: Any) -> HTTPConnectionPool:
        """The adapter's pool for this URL and TLS settings, as ``get_connection_with_tls_context`` picks it
        without a proxy; the key is kept (making it again parses the URL twice: about 7 % of the call)."""
        keys = self.pool_keys.get((verify, cert))
        if keys is None:
            try:
                keys = adapter.build_connection_pool_key_attributes(self.prepared, verify, cert)
            except ValueError as exc:
                raise requests.exceptions.InvalidURL(exc) from exc
            if len(self.pool_keys) < self.MAX_TLS_SETTINGS:
                self.pool_keys[verify, cert] = keys
        host, tls_kwargs = keys
        return adapter.poolmanager.connection_from_host(**host, pool_kwargs=tls_kwargs)


class DirectPost:
    """POSTs a body as ``session.post(..., stream=True, allow_redirects=False)`` would: the same method, URL,
    headers and body, over the adapter's connection pools with the same TLS settings and retries (none), failing
    with the same requests exceptions. It goes straight to the adapter's urllib3 pool instead: ``Session.request``
    merges and prepares the same URL, headers and cookies again for each call, and ``HTTPAdapter.send`` parses the
    URL twice more, builds a ``requests.Response`` and extracts cookies from it; skipping that takes about a
    quarter off the CPU of a POST and its answer. A session with state of its own to apply (proxies or a CA bundle
    from the environment, cookies, auth, hooks), or an adapter other than requests' own or
    :class:`DeadlineAdapter` (another could do anything in ``send``), goes the whole way through ``session.post``.
    At most ``MAX_URLS`` URLs are kept prepared; others are prepared for each call."""

    MAX_URLS = 256
    ADAPTERS: tuple[type[HTTPAdapter], ...] = (HTTPAdapter, DeadlineAdapter)   # whose ``send`` this does itself

    def __init__(self, session: requests.Session) -> None:
        self.session = session
        self._targets: dict[str, _Target] = {}

    def __call__(self, url: str, body: bytes, headers: dict[str, str], *, timeout: tuple[float, float],
                 cert: Any = None, verify: Any = None) -> requests.Response | DirectAnswer:
        session = self.session
        adapter = session.get_adapter(url)
        if session.trust_env or session.proxies or session.auth or session.cookies or any(session.hooks.values()) \
                or type(adapter) not in self.ADAPTERS:
            return session.post(url, data=body, headers=headers, timeout=timeout, stream=True, allow_redirects=False,
                                cert=cert, verify=verify)
        target = self._targets.get(url) or self._target(url)
        sent = target.headers.copy()
        for name, value in headers.items():
            sent[target.spelling.get(name.lower(), name)] = value
        sent[target.spelling.get("content-length", "Content-Length")] = str(len(body))
        return _posted(adapter, target, body, sent, timeout, session.cert if cert is None else cert,
                       session.verify if verify is None else verify)

    def _target(self, url: str) -> _Target:
        # requests gives a POST without a body "Content-Length: 0": the body's length goes in its place
        prepared = self.session.prepare_request(requests.Request("POST", url))
        headers = dict(prepared.headers.items())
        target = _Target(prepared, prepared.path_url, headers, {name.lower(): name for name in headers})
        if len(self._targets) < self.MAX_URLS:
            self._targets[url] = target
        return target


def _posted(adapter: HTTPAdapter, target: _Target, body: bytes, headers: dict[str, str],
            timeout: tuple[float, float], cert: Any, verify: Any) -> DirectAnswer:
    """``HTTPAdapter.send`` for a POST without proxies, streamed: the same pool, TLS settings, retries (none) and
    exceptions (urllib3's turned into requests' as the adapter turns those that can occur here)."""
    try:
        pool = target.pool(adapter, verify, cert)
    except urllib3.exceptions.LocationValueError as exc:
        raise requests.exceptions.InvalidURL(exc) from exc
    adapter.cert_verify(pool, target.prepared.url, verify, cert)   # OSError for a CA or key file gone since
    try:
        raw = pool.urlopen("POST", target.path, body=body, headers=headers, redirect=False, assert_same_host=False,
                           preload_content=False, decode_content=False, retries=adapter.max_retries,
                           timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]), chunked=False)
    except (urllib3.exceptions.ProtocolError, OSError) as exc:   # the connection broke, after connecting
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.MaxRetryError as exc:   # no connection: refused, DNS, connect timeout, TLS handshake
        reason = exc.reason
        if isinstance(reason, urllib3.exceptions.ConnectTimeoutError) \
                and not isinstance(reason, urllib3.exceptions.NewConnectionError):
            raise requests.ConnectTimeout(exc) from exc
        if isinstance(reason, urllib3.exceptions.SSLError):
            raise requests.exceptions.SSLError(exc) from exc
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.ClosedPoolError as exc:   # the pool manager let this pool go meanwhile
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:   # with retries that re-raise at once (not the gateway's)
        raise requests.exceptions.SSLError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ReadTimeout(exc) from exc
    except urllib3.exceptions.InvalidHeader as exc:   # Content-Length with two different values, say
        raise requests.exceptions.InvalidHeader(exc) from exc
    return DirectAnswer(raw)


def _session(pool_size: int) -> requests.Session:
    session = requests.Session()
    # no cookies, from payers or the EHR (the reference fetcher shares this session): the gateway serves every
    # client through it, so a cookie set by one answer must not go along with another client's request
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    # DeadlineAdapter: a payer sending its answer's headers a line at a time still meets the budget (see _exchange)
    adapter = DeadlineAdapter(pool_connections=16, pool_maxsize=max(pool_size, 10), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # Without proxy variables in the environment there is nothing for requests to look up per call (it
    # otherwise scans the environment and netrc on every request: a millisecond each at load).
    if not any(key.lower().endswith("_proxy") for key in os.environ):
        session.trust_env = False
        # ... but the CA bundle the environment names is still the trust store, as requests would take it: an EHR
        # or payer with a private CA is reached with REQUESTS_CA_BUNDLE, proxies or not
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            if os.environ.get(name):   # checked here: a missing file made every https call an OSError (a 500)
                # routing imports this module: read at call time
                from gateway.transport.routing import ca_bundle_path

                session.verify = ca_bundle_path(os.environ[name], name)
                break
    return session


# ------------------------------------------------------------------------------------------ classifying answers


def _request_failure(exc: requests.RequestException, route: Route, timeout: tuple[float, float]) -> Exception:
    """What a requests exception means: _Retry when the 270 cannot have reached the payer, else a PayerError.

    The message goes back to the API client, so it names the payer, not its endpoint (an internal host and port
    are the operator's business): what went wrong is logged for the operator instead (:func:`failure_cause`).
    """
    reason: Any = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    endpoint = f"payer {route.payer_id}'s endpoint"
    if not isinstance(exc, requests.Timeout):
        log.warning("payer %s: %s", route.payer_id, failure_cause(exc))
    if isinstance(exc, requests.ConnectTimeout):
        return _Retry(PayerTimeout(f"could not connect to {endpoint} within {timeout[0]:g} s"))
    if isinstance(exc, requests.Timeout) or isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return PayerTimeout(f"no answer from {endpoint} within {timeout[1]:g} s")
    if _refused_certificate(exc):
        return PayerUnauthorized("its TLS server refused the client certificate")
    if isinstance(exc, requests.exceptions.SSLError):
        return PayerUnavailable(f"TLS with {endpoint} failed (the gateway's log has the reason)")
    if isinstance(exc, requests.ConnectionError) and isinstance(reason, urllib3.exceptions.NewConnectionError):
        return _Retry(PayerUnavailable(f"could not connect to {endpoint}"))
    return PayerUnavailable(f"the connection to {endpoint} failed (the gateway's log has the reason)")


# TLS alerts a server sends when it does not accept the client's certificate (OpenSSL's wording, lower case)
_CERTIFICATE_ALERTS = ("alert bad certificate", "alert certificate required", "alert unknown ca",
                       "alert certificate unknown", "alert certificate revoked", "alert certificate expired",
                       "alert unsupported certificate", "alert access denied")


def _refused_certificate(exc: BaseException) -> bool:
    """True when the TLS failure is the server's alert refusing our client certificate (with TLS 1.3 it may
    surface while the answer is read, as a connection error wrapping the SSL error)."""
    text = str(exc).lower()
    return "alert" in text and any(alert in text for alert in _CERTIFICATE_ALERTS)


def _short(value: object, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def failure_cause(exc: BaseException) -> str:
    """What went wrong, for the operator's log: the chain of exception classes and the system's own words for a
    socket or TLS error (``Connection refused``, ``certificate verify failed``). Never the exceptions' text
    otherwise: a broken status line or chunk quotes what the payer sent, which may be a patient's data."""
    names: list[str] = []
    system: str | None = None
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(names) < 12:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        names.append(type(current).__name__)
        if system is None and isinstance(current, OSError) and isinstance(current.strerror, str):
            system = current.strerror[:200]
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        pending.extend(e for e in linked if isinstance(e, BaseException))
    chain = " <- ".join(dict.fromkeys(names))
    return f"{chain} ({system})" if system else chain


def _payload(route: Route, status: int, content_type: str, content: bytes) -> str:
    """The X12 text inside a response, or PayerUnavailable for HTTP errors and broken envelopes."""
    if 300 <= status < 400:
        raise PayerUnavailable(f"the payer answered HTTP {status} (a redirect; not followed)", status=status)
    if status in (401, 403):
        code = _core_error_code(route, content, content_type)
        raise PayerUnauthorized(f"HTTP {status}" + (f", CORE {code}" if code else ""), core_error_code=code,
                                status=status)
    if route.transport == "x12":
        if status != 200:
            raise PayerUnavailable(f"the payer answered HTTP {status}", status=status)
        return _decode(content)
    try:
        if route.transport == "mime":
            env = core.parse_mime_response(content, content_type)
        else:
            env = core.parse_soap_response(content)
    except core.CoreEnvelopeError as exc:
        if exc.error_code in _REFUSED_CREDENTIALS:   # a SOAP Fault for the credentials
            raise PayerUnauthorized(f"SOAP Fault {exc.error_code}", core_error_code=exc.error_code,
                                    status=status) from None
        if status != 200 and exc.error_code == core.ENVELOPE_PARSING_ERROR and not exc.message.startswith("SOAP"):
            raise PayerUnavailable(f"the payer answered HTTP {status}", status=status) from None  # no envelope
        what = f"HTTP {status} with" if status != 200 else "with a CORE envelope that cannot be used:"
        raise PayerUnavailable(f"the payer answered {what} {exc.error_code}: {_short(exc.message)}",
                               core_error_code=exc.error_code, status=status) from None
    if env.error_code in _REFUSED_CREDENTIALS:
        raise PayerUnauthorized(f"CORE ErrorCode {env.error_code}", core_error_code=env.error_code, status=status)
    if not env.succeeded:
        raise PayerUnavailable(f"the payer's CORE envelope reports {env.error_code}: "
                               f"{_short(env.error_message or '')}", core_error_code=env.error_code, status=status)
    if status != 200:
        raise PayerUnavailable(f"the payer answered HTTP {status}", status=status)
    return env.payload or ""


# CORE's code, and the WS-Security fault codes (OASIS WSS 1.1 SOAP Message Security, section 12) about tokens
_REFUSED_CREDENTIALS = frozenset({core.UNAUTHORIZED, "FailedAuthentication", "InvalidSecurityToken",
                                  "InvalidSecurity", "SecurityTokenUnavailable"})


def _core_error_code(route: Route, content: bytes, content_type: str) -> str | None:
    """The CORE ErrorCode or SOAP Fault code in a refusal's body, when it holds an envelope at all."""
    if route.transport == "x12" or not content:
        return None
    try:
        env = (core.parse_mime_response(content, content_type) if route.transport == "mime"
               else core.parse_soap_response(content))
    except core.CoreEnvelopeError as exc:
        return exc.error_code if exc.error_code != core.ENVELOPE_PARSING_ERROR else None
    return env.error_code if not env.succeeded else None


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return content.decode("cp1252", errors="replace")


_KIND_SEGMENTS = frozenset({"ST", "TA1", "IK5", "AK5", "AK9"})


def _answer_271(text: str, codes: AckCodes) -> tuple[list[Transaction], list[Finding]]:
    """The 271 transactions of an answer and the errors found reading them; PayerRejected for a 999/997/TA1,
    PayerUnavailable for anything else."""
    try:
        batches = list(tokenize(text))
    except X12SyntaxError as exc:
        raise PayerUnavailable(f"the answer is not X12: {_short(exc)}") from None
    # what the answer is needs only these segments split; all of them are split for a rejection's findings
    segments = [(batch.delimiters, raw.split(batch.delimiters.element)) for batch in batches
                for seg_id, raw in zip(batch.ids, batch.segments, strict=True) if seg_id in _KIND_SEGMENTS]
    set_ids = {_el(parts, 1) for _, parts in segments if parts[0] == "ST"}
    kind = "TA1" if any(p[0] == "TA1" for _, p in segments) else next((k for k in ("999", "997") if k in set_ids), "")
    # an acknowledgment that accepts (A, E; P for a group) may come with the 271; one that rejects (the statuses
    # mappings/codes/acknowledgment_status.yaml marks rejects) may not. A status that table does not list, when its
    # on_missing is error, leaves no way to tell: the answer is unreadable, 271 or not
    statuses = [(f"{parts[0]}{4 if parts[0] == 'TA1' else 1:02d}", _el(parts, 4 if parts[0] == "TA1" else 1))
                for _, parts in segments if parts[0] != "ST"]
    try:
        for element, status in statuses:
            codes.describe("acknowledgment_status", element, status)
    except AckCodeError as exc:
        raise PayerUnavailable(f"the {kind or 'acknowledgment'} cannot be read: {exc}") from None
    rejects = [status for _, status in statuses if status in codes.rejecting]
    if "271" in set_ids and not rejects:
        try:
            result = read_x12(text)
        except X12SyntaxError as exc:
            raise PayerUnavailable(f"the 271 cannot be read: {_short(exc)}") from None
        txns = [t for t in result.transactions if t.set_id == "271"]
        if txns:
            return txns, [f for f in result.all_findings if f.severity == "error"]
    if kind:
        try:
            said = acknowledgments(batches, codes)
        except AckCodeError as exc:   # a code its table does not list, under on_missing: error
            raise PayerUnavailable(f"the {kind} cannot be read: {exc}") from None
        raise PayerRejected(kind, text, said)
    found = ", ".join(sorted(set_ids)) or "no transaction set"
    raise PayerUnavailable(f"the answer holds {found}, not a 271, 999 or TA1")


def _el(parts: list[str], index: int) -> str:
    return parts[index].strip() if index < len(parts) else ""


# --------------------------------------------------------------------------------------------- checking a 271


def _loops(loop: Loop, loop_id: str) -> Iterator[Loop]:
    for item in loop.loops:
        if item.id == loop_id:
            yield item
        else:
            yield from _loops(item, loop_id)


def _traces(loop: Loop) -> list[Segment]:
    return [s for _, s in loop.walk() if s.id == "TRN" and s.get(1) == "2"]


def _check_trace(txns: list[Transaction], trace: str) -> None:
    """Every patient loop (2000C, with its 2000D) must echo our trace in a TRN*2; else TraceMismatch."""
    for txn in txns:
        root = txn.root
        patients = list(_loops(root, "2000C"))
        if patients:
            # each subscriber loop must echo us somewhere (2000C, or 2000D when the dependent is the patient),
            # and a dependent loop that carries traces must carry ours
            groups = [_traces(p) for p in patients]
            groups += [t for p in patients for d in _loops(p, "2000D") if (t := _traces(d))]
        elif any(s.id == "NM1" and s.get(1) in ("IL", "03") for _, s in root.walk()):
            # no loop tree (an unreadable structure) but patient data: the whole transaction must echo us
            groups = [_traces(root)]
        else:
            continue   # refused before any patient (2000A/2100A/2100B): nothing to mix up
        for trns in groups:
            if not any(s.get(2) == trace for s in trns):
                raise TraceMismatch(f"the 271 (transaction {txn.control_number}) does not echo this request's trace "
                                    f"number in TRN*2 ({len(trns)} other TRN*2 found); it was refused so that no "
                                    f"other request's answer is returned")


def _unable_to_respond(txns: list[Transaction]) -> bool:
    """True when the 271 says AAA 42 (unable to respond at this time) with follow-up R (resubmission allowed)."""
    return any(s.id == "AAA" and s.get(3) == "42" and s.get(4) == "R" for txn in txns for _, s in txn.root.walk())


__all__ = ["CircuitBreaker", "CircuitOpen", "PayerAnswer", "PayerBusy", "PayerClient", "PayerError",
           "PayerRejected", "PayerTimeout", "PayerUnauthorized", "PayerUnavailable", "TraceMismatch", "UnknownPayer",
           "ack_findings"]
