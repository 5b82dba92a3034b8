"""The FHIR R4 API: $submit, create, read, search, batch, async status and the CapabilityStatement.

Thin: every eligibility exchange is ``EligibilityService``'s job; this module speaks HTTP and FHIR
(content types and negotiation, Prefer, paging links, OperationOutcome for every error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_to_bytes, urlencode

import orjson
from flask import Blueprint, Flask, Response, copy_current_request_context, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from gateway.errors import QUOTE_LIMIT, quoted
from gateway.fhir import FHIR_JSON, FHIR_JSON_UTF8, operation_outcome
from gateway.fhir.structure import MAX_DEPTH, json_shape, own_problems
from gateway.mappings import mappings_dir
from gateway.observability import carry_context
from gateway.service import CER, RESPONSE, EligibilityService, Result, frames_only
from gateway.store import SearchError
from gateway.store.search import IGNORED_PARAMS, REQUEST_PARAMS, RESPONSE_PARAMS
from gateway.translate.errors import Problem
from gateway.translate.references import FETCHED_FOR

fhir = Blueprint("fhir", __name__)

ACCEPTED_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
DEFAULT_COUNT = 20
MAX_COUNT = 100
MAX_BATCH_ENTRIES = 100
MAX_OFFSET = 1_000_000
ASYNC_ABANDONED_SECONDS = 120   # well past the 20 s CORE budget
_RESOURCES = {CER: "search_requests", RESPONSE: "search_responses"}
_SEARCH_PARAMS = {CER: REQUEST_PARAMS, RESPONSE: RESPONSE_PARAMS}
# the instant a search's first page was read, carried by its paging links: later pages leave out what was stored
# since, so a busy gateway's new requests neither repeat nor push aside results between pages
SNAPSHOT = "_snapshot"
# result parameters the store takes (without a modifier) besides each resource's search parameters
_RESULT_PARAMS = IGNORED_PARAMS | {"_sort", SNAPSHOT}
# the values FHIR R4 (search.html) gives the result parameters that have a fixed set
_RESULT_VALUES = {"_total": ("none", "estimate", "accurate"), "_pretty": ("true", "false")}
FHIR_VERSION = "4.0"        # the fhirVersion MIME-type parameter for R4
# what this server can answer in: FHIR JSON under each of its names (anything XML, Turtle or HTML is not)
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_JSON_FORMATS = {"json", *_JSON_TYPES}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")   # a problem's path inside a batch entry: which entry
PARAMETERS_RESOURCE = "Parameters.parameter[0].resource"   # where $submit's Parameters hold the request
log = logging.getLogger(__name__)


def _ext() -> dict[str, Any]:
    return current_app.extensions["fhir_x12"]


def _service() -> EligibilityService:
    return _ext()["service"]


# -- responses ------------------------------------------------------------------------------------------
def fhir_response(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    if body is None:   # 201 return=minimal, 202: no body, so no content type either
        response = Response(b"", status=status, headers=headers)
        del response.headers["Content-Type"]
        return response
    data = orjson.dumps(body, option=orjson.OPT_INDENT_2 if _pretty() else 0)
    return Response(data, status=status, headers=headers, content_type=FHIR_JSON_UTF8)


def _pretty() -> bool:
    try:
        return request.args.get("_pretty") == "true"
    except RuntimeError:
        return False


def outcome_response(status: int, code: str, text: str, **kwargs: Any) -> Response:
    return fhir_response(operation_outcome(code, text, **kwargs), status)


def problems_outcome(problems: list[Problem], root: str | None = None) -> dict[str, Any]:
    """An OperationOutcome with an issue per problem at its FHIRPath; ``root`` replaces the path's first name (a
    wrapper's ``Parameters`` becomes ``Bundle.entry[0].resource`` when it came in a batch entry)."""
    def where(path: str) -> str:
        return path if root is None else root + path[len(path.split(".", 1)[0]):]

    return {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": p.code, "details": {"text": p.message},
         "expression": [where(path) for path in p.expressions]}
        for p in problems]}


def sent_from(result: Result, kind: Any, root: str) -> Result:
    """``result`` with the expressions of its OperationOutcome told from where the client sent the resource (``root``:
    ``Parameters.parameter[0].resource``, ``Bundle.entry[2].resource``), not from that resource's own root (``kind``,
    its resourceType). Paths at other resources (a Coverage's, a Patient's) are theirs, as for a request sent bare.
    Only a refusal is rewritten: an answer has no expressions."""
    body = result.body
    if result.ok or not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return result
    issues = [_issue_from(issue, kind, root) if isinstance(issue, dict) and isinstance(issue.get("expression"), list)
              else issue for issue in body.get("issue") or []]
    return dataclasses.replace(result, body={**body, "issue": issues})


def _issue_from(issue: dict[str, Any], kind: Any, root: str) -> dict[str, Any]:
    """One issue of :func:`sent_from`: its expressions from ``root``, and the reference its text names for a resource
    fetched from the EHR ("in the Coverage fetched for CoverageEligibilityRequest.insurance[0].coverage: ..."), which
    is one of its expressions, rewritten the same way, so that text and expressions name one place."""
    expressions = issue["expression"]
    placed = [_placed(root, kind, e) for e in expressions]
    details = issue.get("details")
    text = details.get("text") if isinstance(details, dict) else None
    if isinstance(text, str) and FETCHED_FOR in text:
        for before, after in zip(expressions, placed, strict=True):
            if isinstance(before, str) and before != after:
                text = text.replace(f"{FETCHED_FOR}{before}:", f"{FETCHED_FOR}{after}:")
        issue = {**issue, "details": {**details, "text": text}}
    return {**issue, "expression": placed}


def _placed(root: str, kind: Any, path: Any) -> Any:
    """One expression from ``root``: a path starting at ``kind``, or one relative to it (``resourceType``)."""
    if not isinstance(path, str):
        return path
    if isinstance(kind, str) and kind and (path == kind or path.startswith((f"{kind}.", f"{kind}["))):
        return root + path[len(kind):]
    return f"{root}.{path}" if path[:1].islower() else path


def base_url() -> str:
    configured = current_app.config.get("FHIR_X12_BASE_URL")
    return (configured or request.url_root).rstrip("/") + "/"


def _result_response(result: Result, *, status: int | None = None, body: Any = ..., headers: dict[str, str] | None
                     = None) -> Response:
    g.payer_id, g.outcome = result.payer_id, result.outcome
    return fhir_response(result.body if body is ... else body, status or result.status,
                         {**result.headers, **(headers or {})})


# -- request bodies -------------------------------------------------------------------------------------
class BadBody(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


@fhir.errorhandler(BadBody)
def _bad_body(bad: BadBody) -> Response:
    """Every endpoint that reads a body answers a bad one the same way: the OperationOutcome it was refused with."""
    return bad.response


def _json_body() -> Any:
    mimetype = request.mimetype or ""
    if mimetype and mimetype not in ACCEPTED_TYPES:
        raise BadBody(outcome_response(415, "not-supported", f"content type {quoted(mimetype)} is not accepted; send "
                                       f"{FHIR_JSON}"))
    params = {k.lower(): v.strip().lower() for k, v in request.mimetype_params.items()}
    charset, version = params.get("charset", "utf-8"), params.get("fhirversion", FHIR_VERSION)
    if charset not in ("utf-8", "utf8"):   # FHIR JSON is UTF-8; another charset's bytes would be misread
        raise BadBody(outcome_response(415, "not-supported", f"charset {quoted(charset)} is not accepted; FHIR JSON is "
                                       "UTF-8"))
    if version != FHIR_VERSION and not version.startswith(FHIR_VERSION + "."):
        raise BadBody(outcome_response(415, "not-supported", f"fhirVersion {quoted(version)} is not accepted; this "
                                       f"server reads FHIR R4 ({FHIR_VERSION})"))
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise BadBody(outcome_response(415, "not-supported", f"Content-Encoding {quoted(encoding)} is not accepted; "
                                       "send the body uncompressed"))
    data = request.get_data(cache=False)   # a chunked body was read (and its size checked) by _read_chunked_body
    if data.startswith(b"\xef\xbb\xbf"):   # a UTF-8 byte order mark: allowed before JSON text (RFC 8259), not data
        data = data[3:]
    if not data.strip():
        raise BadBody(fhir_response(operation_outcome("structure", "the request body is empty; expected a FHIR "
                                                      "resource in JSON", severity="fatal"), 400))
    if b"\\u0000" in data or b"\x00" in data:
        raise BadBody(fhir_response(operation_outcome("value", "the request body holds a NUL character, which no "
                                                      "FHIR string may contain"), 400))
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadBody(fhir_response(operation_outcome("structure", "the request body is not valid JSON",
                                                      severity="fatal", diagnostics=str(exc)), 400)) from None
    duplicate = _duplicate_key(data)
    if duplicate is not None:   # orjson keeps the last silently: which member id did the client mean?
        raise BadBody(fhir_response(operation_outcome(
            "structure", f"the request body names {quoted(duplicate, 64)} twice in one object; a JSON object's names "
            "are unique in FHIR", severity="fatal"), 400))
    too_deep, empty = json_shape(payload, MAX_DEPTH)
    if too_deep:
        raise BadBody(fhir_response(operation_outcome("too-costly", f"the request body nests deeper than {MAX_DEPTH} "
                                                      "levels"), 400))
    if empty:
        issues = [{"severity": "error", "code": "structure", "details": {"text": why}, "expression": [where]}
                  for where, why in _empty_elements(payload, _root_name(payload))[:20]]
        raise BadBody(fhir_response({"resourceType": "OperationOutcome", "issue": issues}, 400))
    return payload


class _Duplicate(Exception):
    pass


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return found


def _duplicate_key(data: bytes) -> str | None:
    """The first name an object of ``data`` repeats, or None. orjson cannot say; the stdlib's parser, asked for
    each object's pairs, can (about 40 us for a typical request; the body is already known to be valid JSON)."""
    try:
        json.loads(data, object_pairs_hook=_unique_names)
    except _Duplicate as exc:
        return str(exc.args[0])
    except (ValueError, RecursionError):   # orjson read it: nothing the stdlib refuses differently matters here
        return None
    return None


def _root_name(payload: Any) -> str:
    kind = payload.get("resourceType") if isinstance(payload, dict) else None
    return kind if isinstance(kind, str) and kind.isidentifier() else "$this"


def _empty_elements(value: Any, path: str) -> list[tuple[str, str]]:
    """(FHIRPath, why) of each null member and empty array (depth already checked: recursion is safe)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if item is None:
                found.append((where, "null is not a FHIR value: leave the element out"))
            else:
                found.extend(_empty_elements(item, where))
    elif isinstance(value, list):
        if not value:
            found.append((path, "an empty array is not FHIR JSON: leave the element out"))
        for index, item in enumerate(value):
            found.extend(_empty_elements(item, f"{path}[{index}]"))
    return found


# -- content negotiation --------------------------------------------------------------------------------
@fhir.before_request
def _query_is_utf8() -> Response | None:
    """A query string is UTF-8, percent-encoded (RFC 3986, FHIR search): one that is not would be searched as
    the percent escapes werkzeug keeps in its place, a different query than the client sent."""
    try:
        unquote_to_bytes(request.query_string).decode("utf-8")
    except UnicodeDecodeError:
        return outcome_response(400, "invalid", "the query string is not UTF-8 (percent-encode UTF-8 bytes)")
    return None


@fhir.before_request
def _negotiate() -> Response | None:
    """406 unless the client can take FHIR R4 JSON: ``_format`` when given (it overrides Accept), else Accept."""
    if request.method == "OPTIONS":
        return None
    formats = [v for v in request.args.getlist("_format") if v.strip()]
    if formats:
        # a '+' left unescaped in a query string arrives as a space: "application/fhir json"
        wanted = formats[-1].strip().replace(" ", "+")
        ranges = _media_ranges(wanted)
        if wanted.lower() in _JSON_FORMATS or (len(ranges) == 1 and _json_quality(ranges) > 0
                                                and "*" not in ranges[0][0]):
            return None
        return _not_acceptable("_format asks for a format this server does not produce")
    header = ", ".join(request.headers.getlist("Accept"))
    ranges = _media_ranges(header)
    if not ranges or _json_quality(ranges) > 0:   # no (usable) Accept: anything goes
        return None
    return _not_acceptable("the Accept header does not allow it")


def _not_acceptable(why: str) -> Response:
    return outcome_response(406, "not-supported", f"this server answers in FHIR R4 JSON only ({FHIR_JSON}; "
                            f"fhirVersion={FHIR_VERSION}), and {why}")


def _media_ranges(header: str) -> list[tuple[str, dict[str, str], float]]:
    """``(type/subtype, parameters, q)`` for each media range of an Accept value; unparseable ranges left out."""
    ranges = []
    for part in header.split(","):
        mime, *rest = part.split(";")
        mime = mime.strip().lower()
        kind, slash, sub = mime.partition("/")
        if not slash or not kind or not sub:
            continue
        params: dict[str, str] = {}
        for item in rest:
            key, _, value = item.partition("=")
            if key.strip():
                params[key.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        ranges.append((mime, params, max(0.0, min(quality, 1.0))))
    return ranges


def _json_quality(ranges: list[tuple[str, dict[str, str], float]]) -> float:
    """The best quality the ranges give any of our JSON types (RFC 9110: the most specific matching range
    decides a type's quality). A range naming a fhirVersion other than R4's does not match."""
    best = 0.0
    for produced in _JSON_TYPES:
        found: tuple[int, float] | None = None   # (specificity, quality)
        for mime, params, quality in ranges:
            version = params.get("fhirversion")
            if version is not None and version != FHIR_VERSION and not version.startswith(FHIR_VERSION + "."):
                continue
            if mime == produced:
                specificity = 3 if version is not None else 2
            elif mime == "application/*":
                specificity = 1
            elif mime == "*/*":
                specificity = 0
            else:
                continue
            if found is None or specificity > found[0]:
                found = (specificity, quality)
        if found is not None:
            best = max(best, found[1])
    return best


def _prefer() -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getlist("Prefer"):
        for part in header.replace(";", ",").split(","):
            key, _, value = part.strip().partition("=")
            if key:
                prefs[key.strip().lower()] = value.strip().strip('"')
    return prefs


# -- eligibility ----------------------------------------------------------------------------------------
@fhir.post(f"/{CER}/$submit")
def submit():  # type: ignore[no-untyped-def]
    """The CoverageEligibilityResponse, straight away (FHIR's $submit without a Parameters wrapper)."""
    body = _json_body()
    try:
        payload = _unwrap_parameters(body)
    except ParametersError as exc:
        return fhir_response(problems_outcome(exc.problems), 400)
    result = _service().submit(payload)
    if payload is not body:   # sent inside Parameters: its problems are where the client put them
        result = sent_from(result, payload.get("resourceType"), PARAMETERS_RESOURCE)
    headers = {"Content-Location": f"{base_url()}{RESPONSE}/{result.response_id}"} if result.response_id else {}
    return _result_response(result, headers=headers)


@fhir.post(f"/{CER}")
def create():  # type: ignore[no-untyped-def]
    """201 + Location once the payer's answer is stored; 202 + status URL with ``Prefer: respond-async``."""
    payload = _json_body()
    service = _service()
    prefer = _prefer()
    if _if_none_exist() is not None:   # a match is answered only for a valid request (as a create would be)
        refused = service.check(payload)
        if refused is not None:
            return _result_response(refused)
    existing = _conditional_match(service, prefer)
    if existing is not None:
        return existing
    condition = _condition_key(_if_none_exist())
    if "respond-async" in prefer:
        return _accept_async(service, payload, condition)
    result = service.submit(payload, condition=condition)
    if result.outcome == "condition-taken":
        # the same conditional create, a moment earlier: its request; or, when the search no longer finds that
        # one (cancelled since, or a condition its own body does not meet), a create as FHIR says
        return _conditional_match(service, prefer) or _created_or_failed(service.submit(payload), prefer)
    return _created_or_failed(result, prefer)


def _created_or_failed(result: Result, prefer: dict[str, str]) -> Response:
    if result.request_id is None:
        return _result_response(result)
    location = f"{base_url()}{CER}/{result.request_id}"
    if not result.ok:   # stored, but the payer gave no answer: say why, and where the audit record is
        return _result_response(result, headers={"Content-Location": location})
    return _created(result, location, prefer.get("return", "representation").lower())


def _conditional_match(service: EligibilityService, prefer: dict[str, str]) -> Response | None:
    """Conditional create (``If-None-Exist: identifier=...``): None when nothing matches (create as usual); 200 with
    the one request that matches (no second payer call: a client's retry after a lost answer is safe); 412 when
    several do."""
    header = _if_none_exist()
    if header is None:
        return None
    found = _condition_match(service, header, "If-None-Exist")
    if found is None:
        return None
    if not isinstance(found, dict) or found.get("resourceType") != CER:
        status, code, text = found
        return outcome_response(status, code, text, **({"expression": "If-None-Exist"} if status == 400 else {}))
    headers = {"Location": f"{base_url()}{CER}/{found['id']}"}
    wanted = prefer.get("return", "representation").lower()
    g.outcome = "exists"
    if wanted == "minimal":
        return fhir_response(None, 200, headers)
    if wanted == "operationoutcome":
        return fhir_response(_exists_outcome("If-None-Exist"), 200, headers)
    return fhir_response(found, 200, headers)


def _exists_outcome(name: str) -> dict[str, Any]:
    """``Prefer: return=OperationOutcome`` for a conditional create that found its request."""
    return operation_outcome("informational", f"a request matching {name} is already stored; nothing was created "
                             "or sent", severity="information")


def _created_outcome(response_id: str | None) -> dict[str, Any]:
    """``Prefer: return=OperationOutcome`` for a create: where the payer's answer is."""
    return operation_outcome("informational", f"created; the payer's answer is {RESPONSE}/{response_id}",
                             severity="information")


def _if_none_exist() -> str | None:
    """The If-None-Exist header as the client wrote it: HTTP hands header bytes over as latin-1, so raw UTF-8
    (``identifier=...|ÉLIG-1``) is read back as UTF-8; bytes that are not UTF-8 are a 400, never a condition that
    silently matches nothing (and sends every retry to the payer again)."""
    header = request.headers.get("If-None-Exist")
    if header is None:
        return None
    try:
        return header.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise BadBody(outcome_response(400, "invalid", "If-None-Exist is not UTF-8 (percent-encode it)",
                                       expression="If-None-Exist")) from None


def _condition_key(condition: str | None) -> str | None:
    """A conditional create's condition as stored (unique: see ``AuditStore.record_request``): the SHA-256 of its
    parameters in one order, so a client's retry is the same key, of a size any index takes (and no identifier
    value in another column); None without one."""
    if condition is None:
        return None
    pairs = sorted(parse_qsl(condition.strip().lstrip("?"), keep_blank_values=True))
    return hashlib.sha256(urlencode(pairs).encode()).hexdigest() if pairs else None


def _condition_match(service: EligibilityService, condition: str, name: str) -> Any:
    """A conditional create's condition (the ``If-None-Exist`` header, or a batch entry's ``request.ifNoneExist``):
    None when no stored request matches, the one stored request that does, or (status, issue code, text) to refuse
    with (400 not a search of this server, 412 several matches). The search is strict: an ignored parameter would
    match more than the client meant."""
    params: dict[str, list[str]] = {}
    for key, value in parse_qsl(condition.strip().lstrip("?"), keep_blank_values=True):
        params.setdefault(key, []).append(value)
    if not params or any(key.partition(":")[0] in _RESULT_PARAMS for key in params):
        return 400, "invalid", f"{name} takes search parameters of {CER} (identifier=system|value, say)"
    if any(not value.strip() for values in params.values() for value in values):
        # a search ignores an empty value: the condition would match every stored request (one: another patient's)
        return 400, "invalid", f"{name}: every parameter needs a value (an empty one would match every request)"
    unknown = [key for key in params if not _supported(CER, key)]
    try:
        if unknown:
            raise SearchError(unknown[0], "is not a search parameter of this server")
        _refuse_control_characters(params)
        # the failed and the cancelled were not created, as the client was told: its retry creates again
        found, total = service.store.search_requests(params, 2, 0, created_only=True)
    except SearchError as exc:
        return 400, "invalid", f"{name}: {_parameter_label(exc.param, QUOTE_LIMIT, bare=True)}: {exc.message}"
    if total == 0:
        return None
    if total > 1:
        return 412, "multiple-matches", f"{name} matches {total} stored requests; make it specific (one identifier)"
    return found[0]


def _accept_async(service: EligibilityService, payload: Any, condition: str | None = None) -> Response:
    """Checked and stored now (refusals are immediate); the payer is asked on a worker thread."""
    pending: set[str] = _ext()["pending"]
    if len(pending) >= _ext()["max_pending"]:
        return outcome_response(429, "throttled", "too many asynchronous requests are waiting; retry later")
    prepared = service.prepare(payload, sending=False, condition=condition)
    if isinstance(prepared, Result) and prepared.outcome == "condition-taken":   # as in create()
        found = _conditional_match(service, _prefer())
        if found is not None:
            return found
        prepared = service.prepare(payload, sending=False)
    if isinstance(prepared, Result):
        return _result_response(prepared)
    pending.add(prepared.id)

    def run() -> None:
        try:
            service.exchange(prepared)   # never raises; records any failure itself
        finally:
            pending.discard(prepared.id)

    # the worker logs under this request's id (carry_context) and sees this request's context
    _ext()["executor"].submit(carry_context(copy_current_request_context(run)))
    g.payer_id, g.outcome = prepared.built.payer_id, "accepted"
    return fhir_response(operation_outcome("informational", "accepted: the request is stored and on its way to "
                                           "the payer; poll the Content-Location", severity="information"),
                         202, {"Content-Location": f"{base_url()}_async/{prepared.id}"})


def _created(result: Result, location: str, wanted: str) -> Response:
    headers = {"Location": location}
    if wanted == "minimal":
        return _result_response(result, status=201, body=None, headers=headers)
    if wanted == "operationoutcome":
        return _result_response(result, status=201, headers=headers, body=_created_outcome(result.response_id))
    stored = _service().store.get_request(result.request_id or "")
    # http.html create: Last-Modified SHOULD come back (the stored request's meta.lastUpdated, as a read gives)
    return _result_response(result, status=201, body=stored, headers={**headers, **_last_modified(stored or {})})


@fhir.get("/_async/<id>")
def async_status(id: str):  # type: ignore[no-untyped-def]
    """202 while the payer is being asked; then a batch-response Bundle with what the create would have answered
    (201 + the created request, the response found by ``request=``; or the failure's OperationOutcome)."""
    record = _service().store.record(id)
    if record is None:
        return outcome_response(404, "not-found", "no asynchronous request with this id")
    if record.status == "cancelled":
        return outcome_response(404, "not-found", "this asynchronous request was cancelled by the client")
    if record.released_at is not None:
        return outcome_response(404, "not-found", f"this status URL was released by the client (DELETE); the "
                                f"request stays at {CER}/{record.id}")
    if record.status in ("received", "sent"):
        received = record.received_at
        waited = (datetime.now(UTC) - received).total_seconds() if received is not None else 0.0
        if waited <= ASYNC_ABANDONED_SECONDS:
            return fhir_response(None, 202, {"X-Progress": record.status, "Retry-After": "1"})
        # far past any payer budget: the process that held it stopped (a restart); it will not finish
        entry: dict[str, Any] = {"response": {"status": _status_line(500), "location": f"{CER}/{record.id}",
                                              "outcome": operation_outcome(
                                                  "incomplete", "the request was accepted but never completed (the "
                                                  "gateway stopped while it was under way); submit it again")}}
        return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": [entry]}, 200)
    entry = {"response": {"status": _status_line(201 if record.status == "answered" else record.http_status or 500),
                          "location": f"{CER}/{record.id}"}}
    if record.status == "answered":
        entry["resource"] = {**record.request, "id": record.id}
    elif record.error is not None:
        entry["response"]["outcome"] = record.error
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": [entry]}, 200)


@fhir.delete("/_async/<id>")
def async_cancel(id: str):  # type: ignore[no-untyped-def]
    """The asynchronous pattern's DELETE: a request not yet sent to the payer is cancelled; a finished one's status
    URL is released (the client is done with it). Either way 202, and the status URL then answers 404; the audit
    record stays. One already sent cannot be called back (409: its answer will be stored)."""
    status = _service().release(id)
    if status in (None, "gone"):
        return outcome_response(404, "not-found", "no asynchronous request with this id" if status is None else
                                "this status URL was already cancelled or released")
    if status not in ("cancelled", "released"):
        return outcome_response(409, "conflict", "the request has already gone to the payer and cannot be called "
                                "back; its answer will be stored (poll the status URL, or ignore it)")
    text = ("cancelled: the request will not be sent to the payer" if status == "cancelled" else
            f"released: this status URL now answers 404; the request stays at {CER}/{id} and its answer is found "
            f"with {RESPONSE}?request={CER}/{id}")
    return fhir_response(operation_outcome("informational", text, severity="information"), 202)


class ParametersError(ValueError):
    """A Parameters body that is not ``$submit``'s one ``resource``, or whose own elements are not valid FHIR: its
    problems, each at its FHIRPath from ``Parameters``."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems[0].message)
        self.problems = problems


def _not_submits(text: str, where: str) -> ParametersError:
    return ParametersError([Problem(where, text, code="structure")])


def _unwrap_parameters(payload: Any) -> Any:
    """Accept the operation's formal form too: Parameters with exactly one ``resource`` parameter holding the
    request, and nothing beside it (ParametersError otherwise: a second one, another parameter, or a value beside
    the resource would be silently ignored); the Parameters' own elements are held to FHIR as a Bundle's are."""
    if not isinstance(payload, dict) or payload.get("resourceType") != "Parameters":
        return payload
    parameters = payload.get("parameter")
    if not isinstance(parameters, list) or not parameters:
        raise _not_submits("$submit takes Parameters with one parameter named 'resource' holding the "
                           "CoverageEligibilityRequest (or a Bundle with it)", "Parameters.parameter")
    found = []
    for index, parameter in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(parameter, dict) or parameter.get("name") != "resource":
            name = parameter.get("name") if isinstance(parameter, dict) else None
            shown = f"a parameter named {quoted(name)}" if isinstance(name, str) and name else \
                "a parameter without a name"
            raise _not_submits(f"$submit has no such parameter: {shown}; it takes one named 'resource'", where)
        if not isinstance(parameter.get("resource"), dict):
            raise _not_submits("the 'resource' parameter holds no resource", f"{where}.resource")
        beside = next((key for key in parameter if key == "part" or key.startswith("value")), None)
        if beside is not None:   # inv-1: a parameter has one of value[x], resource and part
            raise _not_submits(f"the 'resource' parameter holds its resource and nothing else, not {beside} too "
                               "(inv-1)", f"{where}.{beside}")
        found.append(parameter["resource"])
    if len(found) > 1:
        raise _not_submits("$submit takes one 'resource' parameter (one request per call; send several in a "
                           "batch Bundle)", "Parameters.parameter[1]")
    problems = own_problems(payload, "Parameters", "parameter")
    if problems:
        raise ParametersError(problems)
    return found[0]


# -- read and search ------------------------------------------------------------------------------------
@fhir.get(f"/{CER}/<id>")
def read_request(id: str):  # type: ignore[no-untyped-def]
    return _operation_misuse(CER, id) or _read(CER, _service().store.get_request(id), id)


@fhir.post(f"/{CER}/<id>")
def post_on_id(id: str):  # type: ignore[no-untyped-def]
    """An operation this server does not have (404), or a POST on an id (405: update is not supported)."""
    misuse = _operation_misuse(CER, id)
    if misuse is not None:
        return misuse
    response = outcome_response(405, "not-supported", f"POST is not supported on {CER}/{{id}}; it is read-only")
    response.headers["Allow"] = "GET"
    return response


@fhir.get(f"/{RESPONSE}/<id>")
def read_response(id: str):  # type: ignore[no-untyped-def]
    return _operation_misuse(RESPONSE, id) or _read(RESPONSE, _service().store.get_response(id), id)


_OPERATIONS = {(CER, "$submit")}   # the operations this server has, invoked with POST


def _operation_misuse(resource_type: str, id: str) -> Response | None:
    """``$name`` in an id's place is an operation (ids cannot start with $): one of ours reached with the wrong
    method (405, Allow: POST), or one this server does not have (404). None for a real id."""
    if not id.startswith("$"):
        return None
    if (resource_type, id) in _OPERATIONS:
        response = outcome_response(405, "not-supported", f"{resource_type}/{id} is invoked with POST")
        response.headers["Allow"] = "POST"
        return response
    return outcome_response(404, "not-supported", f"{resource_type} has no operation {quoted(id, 64, bare=True)}; "
                            f"this server has {', '.join(sorted(f'{t}/{o}' for t, o in _OPERATIONS))}")


def _read(resource_type: str, resource: dict[str, Any] | None, id: str) -> Response:
    if resource is None:
        return outcome_response(404, "not-found", f"{resource_type}/{quoted(id, 64, bare=True)} is not known")
    return fhir_response(resource, 200, _last_modified(resource))


def _last_modified(resource: dict[str, Any]) -> dict[str, str]:
    """``Last-Modified`` from ``meta.lastUpdated`` (R4 http.html: a read SHOULD carry it), as an HTTP date."""
    updated = (resource.get("meta") or {}).get("lastUpdated") if isinstance(resource.get("meta"), dict) else None
    try:
        at = datetime.fromisoformat(str(updated).replace("Z", "+00:00")) if updated else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        return {}
    from email.utils import format_datetime

    return {"Last-Modified": format_datetime(at.astimezone(UTC), usegmt=True)}


@fhir.get(f"/{CER}")
def search_requests():  # type: ignore[no-untyped-def]
    return _search(CER)


@fhir.get(f"/{RESPONSE}")
def search_responses():  # type: ignore[no-untyped-def]
    return _search(RESPONSE)


@fhir.post(f"/{CER}/_search")
def search_requests_by_post():  # type: ignore[no-untyped-def]
    return _search_by_post(CER)


@fhir.post(f"/{RESPONSE}/_search")
def search_responses_by_post():  # type: ignore[no-untyped-def]
    return _search_by_post(RESPONSE)


def _search_by_post(resource_type: str) -> Response:
    """FHIR's ``POST [type]/_search``: the parameters in an ``application/x-www-form-urlencoded`` body (and the
    query string), for queries too long for a URL; answered as the GET search is."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return outcome_response(415, "not-supported", "POST _search takes its parameters as "
                                "application/x-www-form-urlencoded")
    try:   # as for a query string: werkzeug would drop a body it cannot decode, and search everything instead
        unquote_to_bytes(request.get_data(cache=True).replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return outcome_response(400, "invalid", "the form body is not UTF-8 (percent-encode UTF-8 bytes)")
    params: dict[str, list[str]] = {}
    for source in (request.args, request.form):
        for key in source:
            params.setdefault(key, []).extend(source.getlist(key))
    return _search(resource_type, params)


def _search(resource_type: str, given: dict[str, list[str]] | None = None) -> Response:
    """FHIR search. Parameters this server does not know or support are ignored (``Prefer: handling=lenient``,
    the default; the Bundle says which in an OperationOutcome entry and its links leave them out) or refused
    with 400 (``handling=strict``). A bad value of a supported parameter is always a 400."""
    params = given if given is not None else {key: request.args.getlist(key) for key in request.args}
    strict = _prefer().get("handling", "lenient").lower() == "strict"
    try:
        _refuse_control_characters(params)
        for name, allowed in _RESULT_VALUES.items():   # listed parameters: a bad value is a 400, never ignored
            if any(value not in allowed for value in params.get(name, [])):
                raise SearchError(name, f"is one of {', '.join(allowed)}")
        ignored = [key for key in params if not _supported(resource_type, key)]
        if ignored and strict:
            return _unsupported_parameters(resource_type, ignored)
        params = {key: values for key, values in params.items() if key not in ignored}
        count = _integer(params, "_count", DEFAULT_COUNT)
        offset = _integer(params, "_offset", 0)
        if offset > MAX_OFFSET:
            raise SearchError("_offset", f"must be at most {MAX_OFFSET:,}; narrow the search instead")
        count = min(count, MAX_COUNT)
        until = _snapshot(params.pop(SNAPSHOT, None))
        search = getattr(_service().store, _RESOURCES[resource_type])
        resources, total = search(params, count, offset, until=until)
    except SearchError as exc:
        text = f"{_parameter_label(exc.param, QUOTE_LIMIT, bare=True)}: {exc.message}"
        return outcome_response(400, exc.code, text, expression=_parameter_expression(exc.param))
    base = base_url()
    kept = [(k, v) for k, values in params.items() if k not in ("_count", "_offset") for v in values]
    kept.append((SNAPSHOT, until.isoformat().replace("+00:00", "Z")))

    def link(relation: str, at: int) -> dict[str, str]:
        query = urlencode([*kept, ("_count", str(count)), ("_offset", str(at))])
        return {"relation": relation, "url": f"{base}{resource_type}?{query}"}

    links = [link("self", offset), link("first", 0)]
    if count and offset + count < total:
        links.append(link("next", offset + count))
    if offset > 0 and count:   # _count=0 asks for the total only: there are no pages to step through
        links.append(link("previous", max(offset - count, 0)))
    if count and total:   # the last page the next links reach from here (from 5 by 3 of 14: 8, 11)
        start = offset if offset < total else 0
        links.append(link("last", start + ((total - 1 - start) // count) * count))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    entries = [{"fullUrl": f"{base}{resource_type}/{r.get('id')}", "resource": r, "search": {"mode": "match"}}
               for r in resources]
    if ignored:
        entries.insert(0, {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {
            "resourceType": "OperationOutcome",
            "issue": [_ignored_issue(resource_type, key, "warning", "ignored") for key in ignored]},
            "search": {"mode": "outcome"}})
    if entries:   # FHIR JSON has no empty arrays
        bundle["entry"] = entries
    return fhir_response(bundle)


def _snapshot(values: list[str] | None) -> datetime:
    """The instant of a paging link's ``_snapshot`` (its last value), or now for a search's first page."""
    if not values:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(values[-1].strip().replace(" ", "+").replace("Z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise SearchError(SNAPSHOT, "is the instant a search's paging links carry (YYYY-MM-DDThh:mm:ss.ffffffZ)")
    return at.astimezone(UTC)


def _supported(resource_type: str, name: str) -> bool:
    """Whether the store takes ``name``: one of the resource's search parameters (with any modifier: the store
    answers 400 for a modifier it does not support, which changes what the parameter means) or a result
    parameter it handles (``_count _offset _sort _format _pretty _total``)."""
    base, _, modifier = name.partition(":")
    return base in _SEARCH_PARAMS[resource_type] or (not modifier and base in _RESULT_PARAMS)


def _parameter_expression(name: str) -> str | None:
    """A search parameter's name as an issue's expression: a client's name of 2 MB (a POST _search body) is not
    repeated whole; the issue's text says how long it was. None for a parameter without a name (``?=x``): an
    expression is never empty (FHIR strings are not)."""
    if not name.strip():
        return None
    return name if len(name) <= 64 else name[:64] + "..."


def _parameter_label(name: str, limit: int = 64, *, bare: bool = False) -> str:
    """``search parameter <name>`` as an error says it; ``?=x`` is a search parameter without a name. A name with
    characters that do not print (a control character) is always quoted, escaped: bare, they vanish from the text."""
    if not name.strip():
        return f"a search parameter without a name ({quoted(name)})" if name else "a search parameter without a name"
    return f"search parameter {quoted(name, limit, bare=bare and name.isprintable())}"


def _ignored_issue(resource_type: str, name: str, severity: str, what: str) -> dict[str, Any]:
    text = (f"{_parameter_label(name)} is not supported on {resource_type} and was {what} (supported: "
            f"{', '.join(sorted(_SEARCH_PARAMS[resource_type]))}, {', '.join(sorted(_RESULT_PARAMS))})")
    expression = _parameter_expression(name)
    return {"severity": severity, "code": "not-supported", "details": {"text": text},
            **({"expression": [expression]} if expression is not None else {})}


def _refuse_control_characters(params: dict[str, list[str]]) -> None:
    """SearchError naming the first parameter whose name or value holds a control character."""
    for key, values in params.items():
        if any(_CONTROL.search(v) for v in [key, *values]):
            raise SearchError(key, "holds control characters")


def _unsupported_parameters(resource_type: str, names: list[str]) -> Response:
    return fhir_response({"resourceType": "OperationOutcome", "issue": [
        _ignored_issue(resource_type, name, "error", "refused (Prefer: handling=strict)") for name in names]}, 400)


def _integer(params: dict[str, list[str]], name: str, default: int) -> int:
    values = [v for v in params.get(name) or [] if v.strip()]   # FHIR: a parameter without a value is ignored
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise SearchError(name, "must be a whole number") from None
    if value < 0:
        raise SearchError(name, "must not be negative")
    return value


# -- conformance ----------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _conformance(name: str, base: str | None) -> bytes:
    return (mappings_dir(base) / "fhir" / f"{name}.json").read_bytes()


@fhir.get("/metadata")
def metadata():  # type: ignore[no-untyped-def]
    from gateway import __version__

    mode = request.args.get("mode", "full")
    if mode == "terminology":
        return outcome_response(400, "not-supported", "mode=terminology asks for a TerminologyCapabilities, which "
                                "this server does not publish (it has no terminology service)", expression="mode")
    if mode not in ("full", "normative"):
        return outcome_response(400, "invalid", "mode is full, normative or terminology", expression="mode")
    statement = json.loads(_conformance("CapabilityStatement", current_app.config.get("FHIR_X12_MAPPINGS")))
    statement["software"]["version"] = __version__
    statement["implementation"] = {"description": "fhir-x12-gateway", "url": base_url().rstrip("/")}
    return fhir_response(statement)


_CONFORMANCE = {("StructureDefinition", "processNote"): "StructureDefinition-processNote",
                ("SearchParameter", "CoverageEligibilityRequest-insurer"):
                    "SearchParameter-CoverageEligibilityRequest-insurer"}


@fhir.get("/StructureDefinition/<id>")
@fhir.get("/SearchParameter/<id>")
def conformance_resource(id: str):  # type: ignore[no-untyped-def]
    kind = request.path.strip("/").split("/")[0]
    name = _CONFORMANCE.get((kind, id))
    if name is None:
        return outcome_response(404, "not-found", f"{kind}/{quoted(id, 64, bare=True)} is not known")
    return Response(_conformance(name, current_app.config.get("FHIR_X12_MAPPINGS")), content_type=FHIR_JSON_UTF8)


# -- batch ----------------------------------------------------------------------------------------------
@fhir.post("/")
def batch():  # type: ignore[no-untyped-def]
    """A batch Bundle of eligibility requests; each entry answered on its own, payers asked concurrently."""
    bundle = _json_body()
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return outcome_response(400, "structure", "POST / takes a Bundle of type batch", expression="Bundle")
    if isinstance(bundle.get("entry"), list) and len(bundle["entry"]) > MAX_BATCH_ENTRIES:   # before checking each
        return outcome_response(422, "too-costly", f"a batch holds at most {MAX_BATCH_ENTRIES} entries, not "
                                f"{len(bundle['entry'])}", expression="Bundle.entry")
    # the batch Bundle's own elements, as a $submit Bundle's are (its entries' resources are checked one by one, as
    # each is sent): a problem of the Bundle's refuses the batch; one inside an entry answers that entry alone
    own: list[Problem] = []
    of_entries: dict[int, list[Problem]] = {}
    for problem in own_problems(bundle, "Bundle", "entry"):
        entry = _ENTRY.match(problem.fhir_path)
        if entry is None:
            own.append(problem)
        else:
            of_entries.setdefault(int(entry.group(1)), []).append(problem)
    if own:
        return fhir_response(problems_outcome(own), 400)
    if bundle.get("type") != "batch":
        kind = bundle.get("type")
        shown = quoted(kind) if isinstance(kind, str) else "missing" if kind is None else "not a code"
        return outcome_response(422, "not-supported", f"Bundle.type ({shown}) is not supported here; "
                                "send a batch", expression="Bundle.type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):   # the check above says so first
        return outcome_response(400, "structure", "Bundle.entry must be a list", expression="Bundle.entry")
    service, base = _service(), base_url()
    wanted = _prefer().get("return", "representation").lower()   # for the creates, as for a create alone
    pool: ThreadPoolExecutor = _ext()["batch_executor"]
    asked = [_batch_request(base, index, entry) if index not in of_entries else
             {"response": {"status": _status_line(400), "outcome": problems_outcome(of_entries[index])}}
             for index, entry in enumerate(entries)]
    # first every entry is checked and stored (concurrently), then the payers are asked: each payer's entries
    # wait for one another within its concurrency limit instead of failing on a limit the batch itself filled
    steps = [pool.submit(carry_context(copy_current_request_context(_batch_prepare)), service, item, wanted)
             for item in asked]
    prepared = [step.result() for step in steps]
    lanes: dict[str, threading.BoundedSemaphore] = {}
    for item in prepared:
        if isinstance(item, tuple):
            payer = item[1].built.payer_id
            if payer not in lanes:
                lanes[payer] = threading.BoundedSemaphore(service.client.limit(service.routes.route(payer)))
    order = _interleaved(prepared)
    calls = [pool.submit(carry_context(copy_current_request_context(_batch_exchange)), service, item, lanes, wanted)
             for item in order]
    done = {id(item): call.result() for item, call in zip(order, calls, strict=True)}
    answers = [done[id(item)] for item in prepared]
    reply: dict[str, Any] = {"resourceType": "Bundle", "type": "batch-response"}
    if answers:
        reply["entry"] = answers
    return fhir_response(reply)


def _batch_request(base: str, index: int, entry: Any
                   ) -> tuple[str, dict[str, Any], str, str | None, str] | dict[str, Any]:
    """(interaction, resource, where, ifNoneExist, where the resource is) for a supported entry; otherwise its error
    entry. The resource is the entry's, or the one its Parameters hold (``Bundle.entry[i].resource.parameter[0]
    .resource``): its problems are told from there."""
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        return _entry_error(400, "structure", "each batch entry needs request.method and request.url",
                            f"{where}.request")
    method, url = (value if isinstance(value, str) else "" for value in (entry["request"].get("method"),
                                                                           entry["request"].get("url")))
    method = method.upper()
    url = unquote(url.split("?")[0]).strip("/")   # %24submit is $submit
    if url.startswith(base):
        url = url[len(base):]
    if method != "POST" or url not in (CER, f"{CER}/$submit"):
        return _entry_error(422, "not-supported", f"{method or 'no method'} {url or 'without a url'} is not "
                            "supported in a batch; "
                            f"use POST {CER} or POST {CER}/$submit", f"{where}.request")
    if not isinstance(entry.get("resource"), dict):
        return _entry_error(400, "required", "the entry has no resource", f"{where}.resource")
    try:
        resource = _unwrap_parameters(entry["resource"])
    except ParametersError as exc:
        return {"response": {"status": _status_line(400), "outcome": problems_outcome(exc.problems,
                                                                                        f"{where}.resource")}}
    # where the request is: the entry's resource, or the one its Parameters hold
    sent = f"{where}.resource" if resource is entry["resource"] else f"{where}.resource.parameter[0].resource"
    condition = entry["request"].get("ifNoneExist")
    if condition is not None and (not isinstance(condition, str) or url.endswith("$submit")):
        return _entry_error(400, "invalid", "request.ifNoneExist is a search string, and only for a create",
                            f"{where}.request.ifNoneExist")
    return ("submit" if url.endswith("$submit") else "create", resource, where, condition, sent)


def _batch_prepare(service: EligibilityService, item: Any, wanted: str) -> Any:
    if not isinstance(item, tuple):
        return item
    kind, resource, where, condition, sent = item
    try:
        if condition is not None:   # a conditional create, as the If-None-Exist header makes one
            refused = service.check(resource)   # a match answers a valid request only
            if refused is not None:
                return _entry_result(kind, sent_from(refused, resource.get("resourceType"), sent), wanted)
            found = _batch_condition(service, condition, where, wanted)
            if found is not None:
                return found
        prepared = service.prepare(resource, condition=_condition_key(condition))
        if isinstance(prepared, Result) and prepared.outcome == "condition-taken":   # as in create()
            found = _batch_condition(service, condition or "", where, wanted)
            prepared = found if found is not None else service.prepare(resource)
    except Exception as exc:   # one entry's bug (or its store search) must not sink the others
        log.error("batch entry could not be prepared: %s", type(exc).__name__)
        return _entry_error(500, "exception", "the entry could not be processed", where)
    if isinstance(prepared, dict):   # the request the condition found
        return prepared
    if isinstance(prepared, Result):   # refused: its problems are told from where the entry holds the request
        return _entry_result(kind, sent_from(prepared, resource.get("resourceType"), sent), wanted)
    return kind, prepared, where


def _batch_condition(service: EligibilityService, condition: str, where: str, wanted: str) -> dict[str, Any] | None:
    """A batch entry's ``request.ifNoneExist``: its answer when a request matches (200) or the condition is
    refused (400, 412); None to create."""
    found = _condition_match(service, condition, "request.ifNoneExist")
    if isinstance(found, tuple):
        return _entry_error(*found, f"{where}.request.ifNoneExist")
    if found is None:
        return None
    response = {"status": _status_line(200), "location": f"{CER}/{found['id']}"}
    if wanted == "minimal":
        return {"response": response}
    if wanted == "operationoutcome":
        return {"response": {**response, "outcome": _exists_outcome("request.ifNoneExist")}}
    return {"fullUrl": f"{base_url()}{CER}/{found['id']}", "resource": found, "response": response}


def _batch_exchange(service: EligibilityService, item: Any, lanes: dict[str, threading.BoundedSemaphore],
                    wanted: str) -> Any:
    if not isinstance(item, tuple):
        return item
    kind, prepared, _where = item
    with lanes[prepared.built.payer_id]:
        return _entry_result(kind, service.exchange(prepared), wanted)   # exchange never raises


def _interleaved(items: list[Any]) -> list[Any]:
    """Round-robin over payers, so one payer's queue does not hold every worker thread."""
    by_payer: dict[str, list[Any]] = {}
    for item in items:
        key = item[1].built.payer_id if isinstance(item, tuple) else ""
        by_payer.setdefault(key, []).append(item)
    out: list[Any] = []
    queues = list(by_payer.values())
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def _entry_result(kind: str, result: Result, wanted: str) -> dict[str, Any]:
    """What the interaction would have answered alone: $submit the response (an operation's output: ``Prefer:
    return`` does not apply), create the created request, an OperationOutcome or nothing, as ``wanted``."""
    if not result.ok:
        response: dict[str, Any] = {"status": _status_line(result.status), "outcome": result.body}
        if result.request_id:
            response["location"] = f"{CER}/{result.request_id}"
        return {"response": response}
    if kind == "submit":
        return {"fullUrl": f"{base_url()}{RESPONSE}/{result.response_id}", "resource": result.body,
                "response": {"status": _status_line(200), "location": f"{RESPONSE}/{result.response_id}"}}
    response = {"status": _status_line(201), "location": f"{CER}/{result.request_id}"}
    if wanted == "minimal":
        return {"response": response}
    if wanted == "operationoutcome":
        return {"response": {**response, "outcome": _created_outcome(result.response_id)}}
    created = _service().store.get_request(result.request_id or "")
    # bundle.html: an entry with a resource has its fullUrl (the created request's absolute URL)
    return {**({"fullUrl": f"{base_url()}{CER}/{result.request_id}", "resource": created} if created else {}),
            "response": response}


def _entry_error(status: int, code: str, text: str, expression: str) -> dict[str, Any]:
    return {"response": {"status": _status_line(status),
                         "outcome": operation_outcome(code, text, expression=expression)}}


def _status_line(status: int) -> str:
    from http import HTTPStatus

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


# -- errors as OperationOutcome -------------------------------------------------------------------------
_HTTP_CODES = {400: "structure", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               406: "not-supported", 413: "too-costly", 415: "not-supported", 429: "throttled"}


def _read_chunked_body() -> Response | None:
    """A chunked body (no Content-Length) is read here, once, for every endpoint: the server cuts one at the size
    limit instead of refusing it (413 here), and a malformed chunk is the client's error (400), not a 500. The
    endpoints then read the cached bytes (``request.get_data``, ``request.form``). ``POST /x12/$validate`` has a
    limit of its own (``FHIR_X12_VALIDATE_MAX_BYTES``), set here for werkzeug's Content-Length check too."""
    if request.endpoint == "x12.validate":
        request.max_content_length = min(current_app.config["FHIR_X12_VALIDATE_MAX_BYTES"],
                                         current_app.config["MAX_CONTENT_LENGTH"])
    if request.content_length is not None or request.method in ("GET", "HEAD", "OPTIONS", "DELETE") or \
            "chunked" not in (request.headers.get("Transfer-Encoding") or "").lower():
        return None
    try:
        data = request.get_data(cache=True)
    except Exception as exc:   # gunicorn's InvalidChunkSize, a connection cut mid-body ...
        log.info("a chunked request body could not be read: %s", type(exc).__name__)
        return outcome_response(400, "structure", "the request body could not be read: its chunked transfer encoding "
                                "is malformed or cut short")
    limit = request.max_content_length
    if limit and len(data) >= limit:
        return outcome_response(413, "too-costly", f"the request body is larger than {limit} bytes")
    return None


def register_error_handlers(app: Flask) -> None:
    # after the authentication hook (registered first): an unauthenticated body is never read
    app.before_request(_read_chunked_body)

    @app.errorhandler(SQLAlchemyError)
    def store_error(exc: SQLAlchemyError):  # type: ignore[no-untyped-def]
        # a read or search while the audit store is down (a dropped schema, a lost connection): the client may
        # retry, as $submit's 503 says too; the type only in the log, the text may quote bound values
        log.error("the audit store failed: %s", type(exc).__name__)
        return outcome_response(503, "transient", "the audit store is unavailable; retry later")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        path = quoted(request.path, 100, bare=True)
        text = {413: f"the request body is larger than {request.max_content_length} bytes",
                404: f"no FHIR endpoint at {path}",
                405: f"{request.method} is not supported on {path}"}.get(status, exc.description or "")
        response = outcome_response(status, _HTTP_CODES.get(status, "exception"), text)
        if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        # the type and the stack, not the message: exception text may quote request data
        log.error("unhandled error: %s", type(exc).__name__, exc_info=frames_only(exc))
        return outcome_response(500, "exception", "internal error; the request id in X-Request-ID finds it in the "
                                "logs")
