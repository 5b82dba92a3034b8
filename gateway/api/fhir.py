"""The FHIR R4 API: $submit, create, read, search, batch, async status and the CapabilityStatement.

Thin: every eligibility exchange is ``EligibilityService``'s job; this module speaks HTTP and FHIR
(content types, Prefer, paging links, OperationOutcome for every error).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from gateway.mappings import mappings_dir
from gateway.service import CER, RESPONSE, EligibilityService, Result, operation_outcome
from gateway.store import SearchError

fhir = Blueprint("fhir", __name__)

FHIR_JSON = "application/fhir+json"
ACCEPTED_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
DEFAULT_COUNT = 20
MAX_COUNT = 100
MAX_BATCH_ENTRIES = 100
_RESOURCES = {CER: "search_requests", RESPONSE: "search_responses"}


def _ext() -> dict[str, Any]:
    return current_app.extensions["fhir_x12"]


def _service() -> EligibilityService:
    return _ext()["service"]


# -- responses ------------------------------------------------------------------------------------------
def fhir_response(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = b"" if body is None else orjson.dumps(body, option=orjson.OPT_INDENT_2 if _pretty() else 0)
    return Response(data, status=status, headers=headers, content_type=FHIR_JSON if body is not None else None)


def _pretty() -> bool:
    try:
        return request.args.get("_pretty") == "true"
    except RuntimeError:
        return False


def outcome_response(status: int, code: str, text: str, **kwargs: Any) -> Response:
    return fhir_response(operation_outcome(code, text, **kwargs), status)


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


def _json_body() -> Any:
    mimetype = request.mimetype or ""
    if mimetype and mimetype not in ACCEPTED_TYPES:
        raise BadBody(outcome_response(415, "not-supported", f"content type {mimetype!r} is not accepted; send "
                                       f"{FHIR_JSON}"))
    data = request.get_data(cache=False)
    if not data.strip():
        raise BadBody(fhir_response(operation_outcome("structure", "the request body is empty; expected a FHIR "
                                                      "resource in JSON", severity="fatal"), 400))
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadBody(fhir_response(operation_outcome("structure", "the request body is not valid JSON",
                                                      severity="fatal", diagnostics=str(exc)), 400)) from None


def _prefer() -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getlist("Prefer"):
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key:
                prefs[key.strip().lower()] = value.strip().strip('"')
    return prefs


# -- eligibility ----------------------------------------------------------------------------------------
@fhir.post(f"/{CER}/$submit")
def submit():  # type: ignore[no-untyped-def]
    """The CoverageEligibilityResponse, straight away (FHIR's $submit without a Parameters wrapper)."""
    try:
        payload = _json_body()
    except BadBody as bad:
        return bad.response
    payload = _unwrap_parameters(payload)
    result = _service().submit(payload)
    headers = {"Content-Location": f"{base_url()}{RESPONSE}/{result.response_id}"} if result.response_id else {}
    return _result_response(result, headers=headers)


@fhir.post(f"/{CER}")
def create():  # type: ignore[no-untyped-def]
    """201 + Location once the payer's answer is stored; 202 + status URL with ``Prefer: respond-async``."""
    try:
        payload = _json_body()
    except BadBody as bad:
        return bad.response
    service = _service()
    prefer = _prefer()
    if "respond-async" in prefer:
        prepared = service.prepare(payload)
        if isinstance(prepared, Result):
            return _result_response(prepared)
        _ext()["executor"].submit(service.exchange, prepared)
        g.payer_id, g.outcome = prepared.built.payer_id, "accepted"
        return fhir_response(operation_outcome("informational", "accepted: the request is stored and on its way to "
                                               "the payer; poll the Content-Location", severity="information"),
                             202, {"Content-Location": f"{base_url()}_async/{prepared.id}"})
    result = service.submit(payload)
    if result.request_id is None:
        return _result_response(result)
    location = f"{base_url()}{CER}/{result.request_id}"
    if not result.ok:   # stored, but the payer gave no answer: say why, and where the audit record is
        return _result_response(result, headers={"Content-Location": location})
    return _created(result, location, prefer.get("return", "representation").lower())


def _created(result: Result, location: str, wanted: str) -> Response:
    headers = {"Location": location, "ETag": 'W/"1"'}
    if wanted == "minimal":
        return _result_response(result, status=201, body=None, headers=headers)
    if wanted == "operationoutcome":
        return _result_response(result, status=201, headers=headers, body=operation_outcome(
            "informational", f"created; the payer's answer is {RESPONSE}/{result.response_id}",
            severity="information"))
    stored = _service().store.get_request(result.request_id or "")
    return _result_response(result, status=201, body=stored, headers=headers)


@fhir.get("/_async/<id>")
def async_status(id: str):  # type: ignore[no-untyped-def]
    """202 while the payer is being asked; then a batch-response Bundle with the outcome (FHIR async pattern)."""
    record = _service().store.record(id)
    if record is None:
        return outcome_response(404, "not-found", "no asynchronous request with this id")
    if record.status in ("received", "sent"):
        return fhir_response(None, 202, {"X-Progress": f"{record.status}", "Retry-After": "1"})
    entry: dict[str, Any] = {"response": {"status": _status_line(record.http_status or 500),
                                          "location": f"{CER}/{record.id}"}}
    if record.response is not None and record.status == "answered":
        entry["resource"] = record.response
    elif record.error is not None:
        entry["response"]["outcome"] = record.error
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": [entry]}, 200)


def _unwrap_parameters(payload: Any) -> Any:
    """Accept the operation's formal form too: Parameters with one ``resource`` parameter."""
    if isinstance(payload, dict) and payload.get("resourceType") == "Parameters":
        for parameter in payload.get("parameter") or []:
            if isinstance(parameter, dict) and parameter.get("name") == "resource" and "resource" in parameter:
                return parameter["resource"]
    return payload


# -- read and search ------------------------------------------------------------------------------------
@fhir.get(f"/{CER}/<id>")
def read_request(id: str):  # type: ignore[no-untyped-def]
    resource = _service().store.get_request(id)
    if resource is None:
        return outcome_response(404, "not-found", f"{CER}/{id[:64]} is not known")
    return fhir_response(resource, 200, {"ETag": 'W/"1"'})


@fhir.get(f"/{RESPONSE}/<id>")
def read_response(id: str):  # type: ignore[no-untyped-def]
    resource = _service().store.get_response(id)
    if resource is None:
        return outcome_response(404, "not-found", f"{RESPONSE}/{id[:64]} is not known")
    return fhir_response(resource, 200, {"ETag": 'W/"1"'})


@fhir.get(f"/{CER}")
def search_requests():  # type: ignore[no-untyped-def]
    return _search(CER)


@fhir.get(f"/{RESPONSE}")
def search_responses():  # type: ignore[no-untyped-def]
    return _search(RESPONSE)


def _search(resource_type: str) -> Response:
    params = {key: request.args.getlist(key) for key in request.args}
    try:
        count = _integer(params, "_count", DEFAULT_COUNT)
        offset = _integer(params, "_offset", 0)
        count = min(count, MAX_COUNT)
        search = getattr(_service().store, _RESOURCES[resource_type])
        resources, total = search(params, count, offset)
    except SearchError as exc:
        return outcome_response(400, "invalid", f"search parameter {exc.param}: {exc.message}",
                                expression=exc.param)
    base = base_url()
    kept = [(k, v) for k, values in params.items() if k not in ("_count", "_offset") for v in values]

    def link(relation: str, at: int) -> dict[str, str]:
        query = urlencode([*kept, ("_count", str(count)), ("_offset", str(at))])
        return {"relation": relation, "url": f"{base}{resource_type}?{query}"}

    links = [link("self", offset), link("first", 0)]
    if count and offset + count < total:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(offset - count, 0)))
    if count and total:
        links.append(link("last", ((total - 1) // count) * count))
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
              "entry": [{"fullUrl": f"{base}{resource_type}/{r.get('id')}", "resource": r,
                         "search": {"mode": "match"}} for r in resources]}
    return fhir_response(bundle)


def _integer(params: dict[str, list[str]], name: str, default: int) -> int:
    values = params.get(name)
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
        return outcome_response(404, "not-found", f"{kind}/{id[:64]} is not known")
    return Response(_conformance(name, current_app.config.get("FHIR_X12_MAPPINGS")), content_type=FHIR_JSON)


# -- batch ----------------------------------------------------------------------------------------------
@fhir.post("/")
def batch():  # type: ignore[no-untyped-def]
    """A batch Bundle of eligibility requests; each entry answered on its own, payers asked concurrently."""
    try:
        bundle = _json_body()
    except BadBody as bad:
        return bad.response
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return outcome_response(400, "structure", "POST / takes a Bundle of type batch", expression="Bundle")
    if bundle.get("type") != "batch":
        return outcome_response(422, "not-supported", f"Bundle.type {bundle.get('type')!r} is not supported here; "
                                "send a batch", expression="Bundle.type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        return outcome_response(400, "structure", "Bundle.entry must be a list", expression="Bundle.entry")
    if len(entries) > MAX_BATCH_ENTRIES:
        return outcome_response(422, "too-costly", f"a batch holds at most {MAX_BATCH_ENTRIES} entries, not "
                                f"{len(entries)}", expression="Bundle.entry")
    service, base = _service(), base_url()
    pool: ThreadPoolExecutor = _ext()["batch_executor"]
    answers = list(pool.map(lambda pair: _batch_entry(service, base, *pair), enumerate(entries)))
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": answers})


def _batch_entry(service: EligibilityService, base: str, index: int, entry: Any) -> dict[str, Any]:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        return _entry_error(400, "structure", "each batch entry needs request.method and request.url",
                            f"{where}.request")
    method = str(entry["request"].get("method") or "").upper()
    url = str(entry["request"].get("url") or "").split("?")[0].strip("/")
    if url.startswith(base):
        url = url[len(base):]
    if method != "POST" or url not in (CER, f"{CER}/$submit"):
        return _entry_error(422, "not-supported", f"{method or '?'} {url or '?'} is not supported in a batch; "
                            f"use POST {CER} or POST {CER}/$submit", f"{where}.request")
    if not isinstance(entry.get("resource"), dict):
        return _entry_error(400, "required", "the entry has no resource", f"{where}.resource")
    try:
        result = service.submit(entry["resource"])
    except Exception:   # one entry's bug must not sink the others
        current_app.logger.exception("batch entry failed")
        return _entry_error(500, "exception", "the entry could not be processed", where)
    response: dict[str, Any] = {"status": _status_line(result.status if url.endswith("$submit") or not result.ok
                                                        else 201)}
    if result.request_id:
        response["location"] = f"{CER}/{result.request_id}"
    out: dict[str, Any] = {"response": response}
    if result.ok:
        out["resource"] = result.body
    else:
        response["outcome"] = result.body
    return out


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


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        text = {413: f"the request body is larger than {app.config.get('MAX_CONTENT_LENGTH')} bytes",
                404: f"no FHIR endpoint at {request.path[:100]}",
                405: f"{request.method} is not supported on {request.path[:100]}"}.get(status, exc.description or "")
        response = outcome_response(status, _HTTP_CODES.get(status, "exception"), text)
        if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        app.logger.exception("unhandled error")
        return outcome_response(500, "exception", "internal error; the request id in X-Request-ID finds it in the "
                                "logs")
