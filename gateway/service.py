"""One eligibility transaction end to end: check, resolve, 270, store, payer, 271, store.

The translation stays pure; this layer owns the clock, the ids, the audit store and the payer call,
and turns every failure into an HTTP status with an OperationOutcome. The request is stored before
the payer is called, and whatever comes back (271, 999, TA1) is stored before the caller hears of it.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DataError, SQLAlchemyError

from gateway.errors import GatewayError
from gateway.fhir import operation_outcome
from gateway.fhir.structure import payload_problems
from gateway.store import AuditStore, ConditionTakenError, RecordStateError
from gateway.translate.document import iso
from gateway.translate.errors import TranslationError
from gateway.translate.notes import Note
from gateway.translate.references import (
    Resolver,
    absolute_references,
    bundle_base,
    bundle_local,
    contain_local_references,
)
from gateway.translate.request_270 import CER, Request270, build_270, find_request
from gateway.translate.response_271 import ResponseContext, ResponseTranslation, translate_271
from gateway.translate.tables import Tables
from gateway.transport.client import CircuitOpen, PayerAnswer, PayerBusy, PayerClient, PayerError, PayerRejected
from gateway.transport.routing import RoutingTable
from gateway.x12.model import Finding
from gateway.x12.structure import element_limits

log = logging.getLogger(__name__)

RESPONSE = "CoverageEligibilityResponse"

# failure kinds for metrics and the audit record's outcome
_KINDS = {"PayerTimeout": "timeout", "PayerUnavailable": "unavailable", "PayerRejected": "rejected",
          "TraceMismatch": "trace-mismatch", "CircuitOpen": "circuit-open", "PayerBusy": "busy",
          "UnknownPayer": "unknown-payer", "PayerUnauthorized": "unauthorized"}


SEARCHED_REFERENCES = ("patient", "insurer", "provider")   # the request's references search takes


@dataclass
class Result:
    """What the web layer answers: HTTP status, body (CoverageEligibilityResponse or OperationOutcome)."""

    status: int
    body: dict[str, Any]
    request_id: str | None = None          # the stored CoverageEligibilityRequest's id
    response_id: str | None = None
    payer_id: str | None = None
    outcome: str | None = None             # FHIR outcome, or the failure kind
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status < 400


@dataclass
class Prepared:
    """A checked request, stored and translated, ready to go to its payer."""

    id: str
    request: dict[str, Any]                # as stored (server id, meta)
    original: dict[str, Any]               # as received (for references)
    bundle: dict[str, Any] | None          # the Bundle the references resolve in (received or fetched)
    built: Request270
    received: float                        # monotonic, for the gateway's own overhead
    sent: bool = True                      # stored as sent (False: queued, exchange records the sending)


class EligibilityService:
    """Thread-safe; one per process, shared by every request."""

    def __init__(self, *, store: AuditStore, client: PayerClient, routes: RoutingTable, tables: Tables,
                 resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 mappings: str | None = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] | None = None, metrics: Any = None) -> None:
        import time

        self.store = store
        self.client = client
        self.routes = routes
        self.tables = tables
        self.resolve = resolve
        self.limits = element_limits(mappings)
        self.clock = clock
        self.monotonic = monotonic or time.perf_counter
        self.metrics = metrics
        # ISA13: counting up from a random start, so a process never repeats one (payers reject a repeated
        # control number with TA1 025) and two processes rarely meet
        self._controls = itertools.count(secrets.randbelow(999_999_999))

    # -- the whole exchange ---------------------------------------------------------------------------
    def submit(self, payload: Any, *, condition: str | None = None) -> Result:
        """``$submit`` and create: the request is checked, stored, sent and answered."""
        prepared = self.prepare(payload, condition=condition)
        if isinstance(prepared, Result):
            return prepared
        return self.exchange(prepared)

    def prepare(self, payload: Any, *, sending: bool = True, condition: str | None = None) -> Prepared | Result:
        """Check, resolve, translate and store the request; a Result is a refusal (nothing was sent).

        ``sending``: the 270 goes out right away, so the row is stored as ``sent`` in the same commit;
        otherwise (queued for ``respond-async``) it stays ``received`` until ``exchange`` sends it.
        ``condition``: a conditional create's normalised If-None-Exist; when another request was just created under
        it, the Result is 412 with outcome ``condition-taken`` (the caller answers with that request instead).
        """
        start = self.monotonic()
        try:
            request, bundle = self._checked(payload)
            resolved = self.resolve(payload) if self.resolve is not None else payload
            id = str(uuid.uuid4())
            now = self.clock()
            control = next(self._controls) % 999_999_999 + 1
            naive = now.astimezone(UTC).replace(tzinfo=None)
            built = build_270(resolved, self.tables, limits=self.limits, trace=id.replace("-", "").upper(),
                              envelope=lambda payer: self.routes.route(payer).envelope(control, naive),
                              information_receiver=self._information_receiver, sent=payload)
        except TranslationError as exc:
            return self._refused(exc.status, exc.to_operation_outcome(), "invalid-request")
        except PayerError as exc:   # unknown payer: the routing table has no entry
            return self._refused(exc.http_status, exc.to_operation_outcome(), _KINDS.get(type(exc).__name__, "error"),
                                 payer_id=exc.payer_id)
        _, resolved_bundle = find_request(resolved)
        stored = {**request, "id": id, "meta": {**(request.get("meta") or {}), "lastUpdated": iso(now)}}
        if not _has_reference(stored.get("insurer")):
            # "insurer": {} (as some EHRs send) is not valid FHIR to store: name the payer the 270 went to, by the
            # Coverage's payor or else by its payer id (insurer is required: a stored request without one is invalid)
            stored["insurer"] = _payer_reference(request, resolved_bundle) or {
                "identifier": {"system": self.tables.systems["payer_id_system"], "value": built.payer_id}}
        if not stored.get("provider"):
            # the 270 named the practice configured for this payer: the stored request says whom it asked for
            receiver = self._receiver(built.payer_id)
            if receiver is not None:
                stored["provider"] = receiver.as_reference(self.tables.systems)
        base = bundle_base(CER, resolved_bundle)
        # what search finds it by: the client's own Type/id, even where the stored copy contains the resource
        searchable = {name: ref for name, ref in absolute_references(
            {name: stored.get(name) for name in SEARCHED_REFERENCES}, base).items()
            if isinstance(ref, dict) and not str(ref.get("reference") or "").startswith("urn:")}
        # a request sent in a Bundle is kept standing on its own: Bundle-local references become contained resources
        stored = contain_local_references(stored, resolved_bundle)
        # relative references sent under an absolute fullUrl mean the EHR's resources: kept that way, in full
        stored = absolute_references(stored, base)
        try:
            self.store.record_request(id, stored, resolved if resolved is not payload else None, built.payer_id,
                                      built.trace, now, x12_request=built.text if sending else None,
                                      sent_at=now if sending else None, condition=condition, references=searchable)
        except ConditionTakenError:
            return self._refused(412, operation_outcome("duplicate", "a request was created under the same "
                                                        "If-None-Exist at the same moment; it is the one stored"),
                                 "condition-taken", payer_id=built.payer_id)
        except DataError:
            return self._refused(400, operation_outcome("value", "the request holds characters or values the audit "
                                                        "store cannot keep (a NUL character, say)"), "invalid-request",
                                 payer_id=built.payer_id)
        except (SQLAlchemyError, GatewayError) as exc:
            log.error("the audit store refused a new request (%s); it was not sent", type(exc).__name__)
            return self._refused(503, operation_outcome("transient", "the audit store is unavailable; the request "
                                                        "was not sent to the payer"), "store-unavailable",
                                 payer_id=built.payer_id)
        return Prepared(id, stored, request, resolved_bundle, built, start, sent=sending)

    def check(self, payload: Any) -> Result | None:
        """The structural check ``prepare`` starts with, alone: a 400 Result for a payload that is not a valid
        request, else None. A conditional create checks its body so before its condition is looked up: the stored
        request a match answers with is the answer to a valid request only."""
        try:
            self._checked(payload)
        except TranslationError as exc:
            return self._refused(exc.status, exc.to_operation_outcome(), "invalid-request")
        return None

    @staticmethod
    def _checked(payload: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The request and its Bundle; TranslationError (400) when the payload is not valid FHIR R4."""
        request, bundle = find_request(payload)
        problems = payload_problems(request, bundle)
        if problems:
            raise TranslationError(f"the {CER} is not valid FHIR R4: {len(problems)} problem(s)", problems,
                                   status=400)
        return request, bundle

    def cancel(self, id: str) -> str | None:
        """Cancel an accepted ``respond-async`` request that has not gone to the payer yet: ``"cancelled"``, ``"gone"``
        (cancelled before), the status that is too far along to cancel (``sent``, ``answered``, ``failed``), or None
        (unknown id)."""
        outcome = operation_outcome("informational", "cancelled by the client before it was sent to the payer",
                                    severity="information")
        status = self.store.cancel(id, self.clock(), outcome)
        if status == "cancelled" and self.metrics is not None:
            self.metrics.observe_eligibility("none", "cancelled")
        return status

    def release(self, id: str) -> str | None:
        """FHIR's DELETE on an asynchronous status URL: ``"cancelled"`` (not sent yet: it never will be),
        ``"released"`` (finished: the client is done with the URL), ``"sent"`` (under way: nothing changes),
        ``"gone"`` (cancelled or released before), or None (unknown id). The audit record always stays. The store
        tells each case itself (``cancel``: cancelled before is ``gone``; ``release``: released before is False)."""
        status = self.cancel(id)
        if status in ("answered", "failed"):
            return "released" if self.store.release(id, self.clock()) else "gone"
        return status

    def _receiver(self, payer_id: str) -> Any:
        """The payer's configured information receiver (``routing.yaml``), or None (unknown payer included)."""
        try:
            return self.routes.route(payer_id).information_receiver
        except PayerError:
            return None

    def _information_receiver(self, payer_id: str) -> dict[str, Any] | None:
        receiver = self._receiver(payer_id)
        return receiver.as_resource(self.tables.systems) if receiver is not None else None

    def exchange(self, prepared: Prepared) -> Result:
        """Send a prepared request, translate the answer, store everything; never raises."""
        try:
            return self._exchange(prepared)
        except Exception as exc:   # a bug must not leave the row "sent" for ever, nor escape a worker thread
            log.error("eligibility exchange failed: %s", type(exc).__name__, exc_info=frames_only(exc))
            body = operation_outcome("exception", "the request could not be completed",
                                     diagnostics=type(exc).__name__)
            self._answer(prepared.id, None, None, "exception", [], 500, body)
            return Result(500, body, prepared.id, payer_id=prepared.built.payer_id, outcome="exception")

    def _exchange(self, prepared: Prepared) -> Result:
        built, id = prepared.built, prepared.id
        if not prepared.sent:
            try:
                self.store.record_sent(id, built.text, self.clock())
            except RecordStateError as exc:   # cancelled by the client meanwhile: it is on record, and never sent
                body = operation_outcome("informational", f"not sent to the payer: the request is {exc.status}",
                                         severity="information")
                return Result(409, body, id, payer_id=built.payer_id, outcome=exc.status)
            except (SQLAlchemyError, GatewayError) as exc:
                log.error("the audit store failed before the payer call (%s); nothing was sent", type(exc).__name__)
                body = operation_outcome("transient", "the audit store is unavailable; the request was not sent to "
                                         "the payer")
                self._answer(id, None, None, "store-unavailable", [], 503, body, sent=False)
                return Result(503, body, id, payer_id=built.payer_id, outcome="store-unavailable")
        try:
            answer = self.client.send(built.payer_id, built.text, trace=built.trace)
        except PayerError as exc:
            return self._failed(prepared, exc)
        try:
            resource, notes = self._response(prepared, answer)
        except Exception as exc:   # a translation bug must not lose the 271: it is stored with the error
            log.error("the payer's 271 could not be translated: %s", type(exc).__name__, exc_info=frames_only(exc))
            body = operation_outcome("exception", "the payer's answer could not be translated",
                                     diagnostics=type(exc).__name__)
            self._answer(id, answer.x12, None, "exception", [], 500, body)
            return Result(500, body, id, payer_id=built.payer_id, outcome="exception")
        codes = [c.get("code") for e in resource.get("error") or [] for c in e.get("code", {}).get("coding", [])
                 if c.get("code")]
        stored = self._answer(id, answer.x12, resource, None, codes, 200, None)
        outcome = resource.get("outcome") or "complete"
        total = self.monotonic() - prepared.received
        if self.metrics is not None:
            route = self.routes.route(built.payer_id)
            self.metrics.observe_payer(route.payer_id, route.transport, answer.payer_time)
            self.metrics.observe_eligibility(route.payer_id, outcome, aaa_codes=codes, notes=notes,
                                             overhead=max(total - answer.payer_time, 0.0))
        # W3C Server-Timing: how long the payer took and how long the gateway itself worked (a wait for a free
        # slot of the payer's concurrency limit is the gateway's, and is shown on its own as well)
        headers = {"Server-Timing": f"payer;dur={answer.payer_time * 1000:.2f}, "
                                    f"queue;dur={answer.queued * 1000:.2f}, "
                                    f"gateway;dur={max(total - answer.payer_time, 0.0) * 1000:.2f}"}
        if not stored:   # the caller still gets the answer the payer gave; the audit gap is in the logs
            headers["Warning"] = '199 fhir-x12-gateway "the audit store could not keep this answer"'
        return Result(200, resource, id, resource["id"], payer_id=built.payer_id, outcome=outcome, headers=headers)

    # -- pieces ---------------------------------------------------------------------------------------
    def _response(self, prepared: Prepared, answer: PayerAnswer) -> tuple[dict[str, Any], int]:
        """The CoverageEligibilityResponse for our trace, linked to the stored request."""
        context = self._context(prepared)
        # what is wrong with the payer's 271 (a wrong segment count, a segment out of place) is said, not hidden:
        # the response is what could be read
        context.notes.extend(Note(text=f"the payer's 271 has a defect: {f.message}", source=_where_in_271(f))
                             for f in answer.defects)
        trace = prepared.built.trace
        stamp = iso(self.clock())
        found: list[ResponseTranslation] = []
        for txn in answer.transactions:
            found.extend(translate_271(txn, self.tables, now=stamp,
                                       context_for=lambda traces: context if trace in traces or not traces else None))
        ours = [r for r in found if trace in r.traces] or [r for r in found if not r.traces]
        if not ours:
            raise GatewayError("no response in the 271 for this trace")
        translated = ours[0].resource
        # a stored resource of this server: its own id, and when the gateway stored it
        response = {"resourceType": translated["resourceType"], "id": str(uuid.uuid4()),
                    "meta": {**(translated.get("meta") or {}), "lastUpdated": stamp},
                    **{k: v for k, v in translated.items() if k not in ("resourceType", "id", "meta")}}
        if not any(trace in r.traces for r in ours):
            # a rejection above the patient level carries no trace (it answers the one 270 sent; the client checked
            # that every patient loop carries our trace): link it to the request all the same
            response["request"] = {"reference": f"{CER}/{prepared.id}"}
        return response, len(ours[0].notes)

    def _context(self, prepared: Prepared) -> ResponseContext:
        request = prepared.original
        resolver = Resolver(request, prepared.bundle)
        local_urls = set(bundle_local(prepared.bundle))   # urn: and relative fullUrls: copied, never left dangling
        contained: list[dict[str, Any]] = []

        local_ids: dict[int, str] = {}

        def portable(ref: Any, path: str) -> dict[str, Any] | None:
            """A reference that still resolves inside the response (contained or Bundle-local ones are copied,
            under ids of our own: resource ids are unique per type only; and so are theirs, in turn)."""
            if not isinstance(ref, dict) or not (ref.get("reference") or ref.get("identifier")):
                return None
            target = ref.get("reference") or ""
            if target.startswith(("#", "urn:")) or target in local_urls:
                resource = resolver.resolve(ref, path, ())
                if resource is None:
                    return {k: v for k, v in ref.items() if k != "reference"} or None
                local = local_ids.get(id(resource))
                if local is None:
                    local = local_ids[id(resource)] = f"r{len(local_ids) + 1}"   # before its references: cycles
                    slot = len(contained)
                    contained.append({})
                    contained[slot] = {**inner(resource, path), "id": local}
                return {**ref, "reference": f"#{local}"}
            return ref

        def inner(value: Any, path: str) -> Any:
            """A copied resource's own local references, made portable too (none may dangle in the response)."""
            if isinstance(value, list):
                return [inner(v, path) for v in value]
            if not isinstance(value, dict):
                return value
            out = {k: inner(v, path) for k, v in value.items() if k != "contained"}
            if isinstance(value.get("reference"), str) and (value["reference"].startswith(("#", "urn:"))
                                                            or value["reference"] in local_urls):
                out = portable(value, path) or {k: v for k, v in value.items() if k != "reference"}
            return out

        insurances = request.get("insurance") or []
        focal = next((i for i in insurances if i.get("focal")), insurances[0] if insurances else {})
        serviced = {k: request[k] for k in ("servicedDate", "servicedPeriod") if k in request}
        context = ResponseContext(
            patient=portable(request.get("patient"), f"{CER}.patient"),
            insurer=portable(request.get("insurer"), f"{CER}.insurer"),
            coverage=portable(focal.get("coverage"), f"{CER}.insurance.coverage"),
            # no provider sent: the configured one the 270 named (a logical reference in the stored request)
            provider=portable(request.get("provider") or prepared.request.get("provider"), f"{CER}.provider"),
            purpose=request.get("purpose"), request={"reference": f"{CER}/{prepared.id}"}, serviced=serviced,
            notes=prepared.built.all_notes(), persons_sent=prepared.built.persons,
            relationship=prepared.built.relationship, parties_sent=prepared.built.parties)
        context.contained = contained
        base = bundle_base(CER, prepared.bundle)
        if base is not None:   # the response's references to the EHR's resources, written out in full
            for name in ("patient", "insurer", "coverage", "provider"):
                setattr(context, name, absolute_references(getattr(context, name), base))
        return context

    def _failed(self, prepared: Prepared, exc: PayerError) -> Result:
        kind = _KINDS.get(type(exc).__name__, "error")
        status = 429 if isinstance(exc, PayerBusy) else exc.http_status
        body = exc.to_operation_outcome()
        # what the payer sent back (an acknowledgment, a 271 for someone else, bytes that are not X12) is kept
        payload = exc.ack if isinstance(exc, PayerRejected) else getattr(exc, "payload", None)
        never_sent = isinstance(exc, (PayerBusy, CircuitOpen))
        self._answer(prepared.id, payload, None, kind, [], status, body, sent=not never_sent)
        if self.metrics is not None:
            self.metrics.observe_eligibility(prepared.built.payer_id, kind)
            if not never_sent and exc.elapsed is not None:   # a payer timing out must show in its latency too
                route = self.routes.route(prepared.built.payer_id)
                self.metrics.observe_payer(route.payer_id, route.transport, exc.elapsed)
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else {}
        return Result(status, body, prepared.id, payer_id=prepared.built.payer_id, outcome=kind, headers=headers)

    def _answer(self, id: str, x12: str | None, response: dict[str, Any] | None, outcome: str | None,
                codes: list[str], status: int, error: dict[str, Any] | None, *, sent: bool = True) -> bool:
        try:
            self.store.record_answer(id, x12_response=x12, response=response, outcome=outcome, aaa_codes=codes,
                                     http_status=status, answered_at=self.clock(), error=error, sent=sent)
            return True
        except (SQLAlchemyError, GatewayError) as exc:
            log.error("the audit store could not keep an answer (%s)", type(exc).__name__)
            return False

    def _refused(self, status: int, body: dict[str, Any], kind: str, payer_id: str | None = None) -> Result:
        if self.metrics is not None:
            self.metrics.observe_eligibility(payer_id or "none", kind)
        return Result(status, body, payer_id=payer_id, outcome=kind)


def _where_in_271(finding: Finding) -> str:
    """``271 ST 0001 2110C EB@14``, as far as the finding locates itself."""
    parts = ["271", f"ST {finding.transaction}" if finding.transaction else "", finding.loop,
             f"{finding.segment}@{finding.position}" if finding.segment else ""]
    return " ".join(p for p in parts if p)


def _has_reference(value: Any) -> bool:
    return isinstance(value, dict) and bool(value.get("reference") or value.get("identifier"))


def _payer_reference(request: dict[str, Any], bundle: dict[str, Any] | None) -> dict[str, Any] | None:
    """The focal Coverage's first payor, when the request left ``insurer`` empty (the 270 went to it)."""
    insurances = request.get("insurance") or []
    focal = next((i for i in insurances if isinstance(i, dict) and i.get("focal")),
                 insurances[0] if insurances else None)
    if not isinstance(focal, dict):
        return None
    coverage = Resolver(request, bundle).resolve(focal.get("coverage"), "coverage", ("Coverage",))
    payors = (coverage or {}).get("payor") or []
    payor = payors[0] if payors and isinstance(payors[0], dict) else None
    if payor is None or not _has_reference(payor):
        return None
    reference = str(payor.get("reference") or "")
    contained = request.get("contained") if isinstance(request.get("contained"), list) else []
    if (reference.startswith("#") and not any(c is coverage for c in contained)) or (
            reference.startswith("urn:") and reference not in bundle_local(bundle)):
        # local to a resource the stored request does not hold: keep what identifies the payer, not a reference that
        # resolves nowhere (a Bundle entry's urn, or a contained one of the request, is contained when it is stored)
        return {k: v for k, v in payor.items() if k in ("identifier", "display")} or None
    return dict(payor)


def frames_only(exc: BaseException) -> tuple[type[BaseException], BaseException, Any]:
    """exc_info whose message is dropped: exception text may quote request data (names, member ids)."""
    try:
        bare = type(exc).__new__(type(exc))
        bare.args = ()
        str(bare)   # a __str__ that reads attributes the bare one lacks would print "<exception str() failed>"
    except Exception:   # an exception type that cannot be built or shown bare: a plain stand-in with its name
        bare = RuntimeError(type(exc).__name__)
    return type(bare), bare, exc.__traceback__
