"""The payer simulator as a Flask app: the eligibility API and 270 endpoints (its own process).

Thin: requests are validated by ``records``, stored by ``store``, and 270s are answered by the pure
``answer`` module from the stored members.

With ``PAYER_ACCOUNTS`` (user -> password) the 270 endpoints require credentials, as a real payer does: the CORE
endpoints check the envelope's UsernameToken / UserName+Password (``core.authorize``) and answer ``UnAuthorized``
in a CORE error envelope; ``/x12`` checks HTTP Basic and answers 401. Without it they are open (tests, the demo).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from gateway.errors import X12SyntaxError, quoted
from gateway.mappings import load_yaml
from gateway.payer.accounts import parse_accounts  # noqa: F401 - re-exported: where callers found it
from gateway.payer.answer import answer_interchange, asked_member_ids
from gateway.payer.records import apply_patch, consistency_problems, validate_patch, validate_record
from gateway.payer.scenarios import MAGIC_IDS, ScenarioBook, parse_rule
from gateway.payer.store import MemberStore
from gateway.transport import core
from gateway.x12.ack import build_999, build_ta1s, names_interchange, nth_control
from gateway.x12.model import Finding, Transaction
from gateway.x12.validate import validate_x12

payer_api = Blueprint("payer", __name__)
_control = itertools.count(1)


class X12Answer(NamedTuple):
    """What the simulator says to one X12 payload: the text, its HTTP status, and what the text is (``271``,
    ``999`` or ``TA1``; ``""`` for a line of text or a scripted malformed answer).

    The kind is known where the answer is built, so the CORE endpoints name the payload type without reading the
    answer back (which tokenized the whole 271 again on every request).
    """

    text: str
    status: int
    kind: str = ""


def create_payer_app(config: dict[str, Any] | None = None) -> Flask:
    """The simulator: ``PAYER_DATABASE_URL`` (default a SQLite file), ``PAYER_ID`` (None answers any payer),
    ``PAYER_ACCOUNTS`` (user -> password the 270 endpoints require; None leaves them open)."""
    app = Flask(__name__)
    app.config.from_mapping(PAYER_DATABASE_URL=os.environ.get("FHIR_X12_PAYER_DATABASE_URL",
                                                              "sqlite:///payer-simulator.db"),
                            PAYER_ID=None, PAYER_WORKER=True, MAX_CONTENT_LENGTH=5 * 1024 * 1024,
                            PAYER_PROVIDERS=None,  # NPIs on file; None accepts any provider
                            PAYER_ACCOUNTS=None)
    if config:
        app.config.update(config)
    accounts = app.config["PAYER_ACCOUNTS"]
    if accounts is not None and (not isinstance(accounts, Mapping) or not accounts):
        raise ValueError("PAYER_ACCOUNTS must be a non-empty mapping of user name -> password, or None")
    store = MemberStore(app.config["PAYER_DATABASE_URL"])
    app.extensions["payer_store"] = store
    app.extensions["payer_config"] = load_yaml("payer/answers.yaml")
    app.extensions["payer_scenarios"] = ScenarioBook()
    app.extensions["payer_gate"] = threading.Semaphore(1)
    app.register_blueprint(payer_api)
    app.register_error_handler(HTTPException, _http_error)
    if app.config["PAYER_WORKER"]:
        store.start_worker()
    return app


def _http_error(exc: HTTPException) -> Response:
    """Flask's own refusals (404, 405, 413 ...) in the shape of the endpoint asked: plain text for the X12 and
    CORE endpoints, whose clients read no HTML, and the JSON error shape for the JSON APIs."""
    status = exc.code or 500
    message = f"{status} {exc.name}: {exc.description}" if exc.description else f"{status} {exc.name}"
    if request.path.startswith(("/x12", "/core/")):
        response = Response(message, status=status, mimetype="text/plain")
    else:
        response = jsonify(error=message)
        response.status_code = status
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _app() -> Flask:
    """The app answering the current request: the object behind ``current_app``, for functions that read its config
    and extensions several times (each read through the proxy costs a context lookup)."""
    return current_app._get_current_object()  # type: ignore[attr-defined]


def _store() -> MemberStore:
    return current_app.extensions["payer_store"]


def _accounts() -> Mapping[str, str] | None:
    return current_app.config.get("PAYER_ACCOUNTS")


def _basic_refusal() -> Response | None:
    """None when ``/x12`` may answer: no accounts configured, or HTTP Basic credentials that match one."""
    accounts = _accounts()
    if accounts is None:
        return None
    auth = request.authorization
    if auth is not None and auth.type == "basic" and core.credentials_ok(auth.username, auth.password, accounts):
        return None
    response = Response("user name or password not accepted", status=401, mimetype="text/plain")
    response.headers["WWW-Authenticate"] = 'Basic realm="payer-simulator", charset="UTF-8"'
    return response


def _keys() -> tuple[str, str, list[dict[str, str]]]:
    memberid, groupnumber = request.args.get("memberid", ""), request.args.get("groupnumber", "")
    problems = [{"path": f"?{k}", "message": f"query parameter {k} is required"}
                for k, v in (("memberid", memberid), ("groupnumber", groupnumber)) if not v]
    return memberid, groupnumber, problems


def _json_body() -> tuple[Any, list[dict[str, str]]]:
    try:
        data = request.get_json(silent=True)
    except RecursionError:   # silent covers decoding errors, not this one: it was an HTML 500
        return None, [{"path": "$", "message": "the JSON is nested too deeply"}]
    if data is None:
        return None, [{"path": "$", "message": "the body must be JSON (Content-Type: application/json)"}]
    return data, []


def _accepted(op_id: str) -> Response:
    response = jsonify(id=op_id, status="notStarted")
    response.status_code = 202
    response.headers["Operation-Location"] = f"{request.host_url.rstrip('/')}/operation/{op_id}"
    return response


def _bad(problems: list[dict[str, str]]) -> tuple[Response, int]:
    return jsonify(error="invalid request", problems=problems), 400


def _conflict(problems: list[dict[str, str]]) -> tuple[Response, int]:
    """409: the record is valid but an id in it belongs to another record on file."""
    return jsonify(error="member id already on file", problems=problems), 409


@payer_api.post("/eligibility")
def create_member():  # type: ignore[no-untyped-def]
    data, problems = _json_body()
    if problems:
        return _bad(problems)
    record, problems = validate_record(data)
    if problems:
        return _bad(problems)
    clashes = _store().id_conflicts(record, record["memberid"], record["groupnumber"])
    if clashes:
        return _conflict(clashes)
    return _accepted(_store().submit("create", record["memberid"], record["groupnumber"], record))


@payer_api.patch("/eligibility")
def patch_member():  # type: ignore[no-untyped-def]
    memberid, groupnumber, problems = _keys()
    data, body_problems = _json_body()
    problems += body_problems
    if problems:
        return _bad(problems)
    patch, problems = validate_patch(data)
    if problems:
        return _bad(problems)
    current = _store().get(memberid, groupnumber)
    if current is not None:
        # what the record would become, checked as a create is: refused now rather than as a failed operation
        # (the operation checks again when it runs, against the record as it is then)
        patched, errors = apply_patch(current, patch)
        if not errors:
            problems = consistency_problems(patched)
            if problems:
                return _bad(problems)
            clashes = _store().id_conflicts(patched, memberid, groupnumber)
            if clashes:
                return _conflict(clashes)
    return _accepted(_store().submit("patch", memberid, groupnumber, patch))


@payer_api.delete("/eligibility")
def delete_member():  # type: ignore[no-untyped-def]
    memberid, groupnumber, problems = _keys()
    if problems:
        return _bad(problems)
    return _accepted(_store().submit("delete", memberid, groupnumber, {}))


@payer_api.get("/eligibility")
def read_member():  # type: ignore[no-untyped-def]
    memberid, groupnumber, problems = _keys()
    if problems:
        return _bad(problems)
    record = _store().get(memberid, groupnumber)
    if record is None:
        return jsonify(error=f"no record with memberid {quoted(memberid)} and groupnumber {quoted(groupnumber)}"), 404
    return jsonify(record)


@payer_api.get("/operation/<op_id>")
def read_operation(op_id: str):  # type: ignore[no-untyped-def]
    op = _store().operation(op_id)
    if op is None:
        return jsonify(error=f"no operation {quoted(op_id)}"), 404
    body: dict[str, Any] = {"id": op.id, "kind": op.kind, "status": op.status, "errors": op.errors,
                            "created": op.created.isoformat(), "lastUpdated": op.updated.isoformat()}
    if op.status == "succeeded" and op.kind != "delete":
        body["resourceLocation"] = (f"{request.host_url.rstrip('/')}/eligibility?memberid={op.memberid}"
                                    f"&groupnumber={op.groupnumber}")
    return jsonify(body)


@payer_api.post("/x12")
def raw_x12():  # type: ignore[no-untyped-def]
    """A 270 in, its 271 out (application/edi-x12); a 999 when the 270 is not valid."""
    refusal = _basic_refusal()
    if refusal is not None:
        return refusal
    text, status, _ = answer_x12(request.get_data())
    # a 271, 999 or TA1 is X12; an error (not readable as X12, a scripted HTTP fault) is a line of text
    return Response(text, status=status, mimetype="application/edi-x12" if status == 200 else "text/plain")


@payer_api.get("/scenarios")
def list_scenarios():  # type: ignore[no-untyped-def]
    book = current_app.extensions["payer_scenarios"]
    return jsonify(rules=[r.to_dict() for r in book.rules], magic_member_ids=MAGIC_IDS)


@payer_api.post("/scenarios")
def add_scenario():  # type: ignore[no-untyped-def]
    data, problems = _json_body()
    if problems:
        return _bad(problems)
    rule, problems = parse_rule(data)
    if rule is None:
        return _bad(problems)
    current_app.extensions["payer_scenarios"].add(rule)
    return jsonify(rule.to_dict()), 201


@payer_api.delete("/scenarios")
def clear_scenarios():  # type: ignore[no-untyped-def]
    current_app.extensions["payer_scenarios"].clear()
    return Response(status=204)


def answer_x12(data: bytes) -> X12Answer:
    """The 271 (or a 999 / TA1, or a scripted fault) for one X12 payload."""
    app = _app()
    if not app.extensions["payer_scenarios"].serial():
        return _answer_x12(data, app)
    gate: threading.Semaphore = app.extensions["payer_gate"]
    if not gate.acquire(blocking=False):  # as CMS HETS: one request at a time
        return X12Answer("the payer handles one request at a time; retry later", 503)
    try:
        return _answer_x12(data, app)
    finally:
        gate.release()


def _answer_x12(data: bytes, app: Flask) -> X12Answer:
    """``answer_x12`` inside the one-at-a-time gate; ``app`` is the app answering (its config and extensions)."""
    now = datetime.now().replace(microsecond=0)
    try:
        report = validate_x12(data, elements=app.config.get("PAYER_VALIDATION", "full") != "structure")
    except X12SyntaxError as exc:
        return X12Answer(f"not readable as X12: {exc}", 400)
    control = next(_control) % 999_999_999 or 1
    if len(report.interchanges) > 1:   # each interchange's answer has its own number: control, control + 1 ...
        for _ in range(len(report.interchanges) - 1):
            next(_control)
    book = app.extensions["payer_scenarios"]
    ids = [i for txn in report.transactions if txn.structure for i in asked_member_ids(txn)]
    rule = book.pick(ids)
    fault = rule.fault if rule else ""
    if fault in ("latency", "timeout"):
        time.sleep(book.delay(rule))
    if fault == "one-at-a-time":
        time.sleep(book.delay(rule))  # a slow answer makes concurrent requests visible
    if fault in ("http-500", "http-503"):
        return X12Answer(f"scripted fault {fault}", int(fault[-3:]))
    if fault == "malformed":
        return X12Answer("ISA*THIS IS NOT*AN X12 INTERCHANGE~", 200)
    isa = report.interchanges[0] if report.interchanges else None
    config = app.extensions["payer_config"]
    versions = config.get("interchange_versions") or ["00501"]
    envelope = [Finding("SIM-ISA-VERSION", f"ISA12 {i.version} is not an interchange version this payer accepts "
                        f"({', '.join(versions)})", level="interchange", ack_code="003", interchange=i.control_number,
                        interchange_ordinal=i.ordinal)
                for i in report.interchanges if i.version not in versions and i.version.isdigit()]
    envelope += _unacknowledgeable(report, config["interchange_rejections"])
    if fault == "ta1" or envelope or any(f.level == "interchange" and f.severity == "error" for f in report.findings):
        findings = list(report.findings) + envelope
        if fault == "ta1":
            findings.append(Finding("SIM-TA1", "scripted interchange rejection", level="interchange", ack_code="024",
                                    interchange=isa.control_number if isa else "",
                                    interchange_ordinal=isa.ordinal if isa else 0))
        # a TA1 answers each interchange in error (a second one, say), back to its own sender, not the first one with
        # "accepted"; an error that names no interchange is the first one's. Named by place in the request, as two
        # interchanges may share an ISA13 (the second one, in error for it, is the one answered)
        rejected = [f for f in findings if f.level == "interchange" and f.severity == "error"]
        answered = [i for i in report.interchanges if any(names_interchange(f, i) for f in rejected)] or (
            [isa] if isa else [])
        return X12Answer(build_ta1s(answered, findings, control_number=control, now=now), 200, "TA1")
    if fault == "reject-999" or not report.valid or not report.transactions or any(
            t.set_id != "270" for t in report.transactions):
        findings = list(report.findings)
        if fault == "reject-999":
            findings += [f for t in report.transactions for f in _scripted_rejection(t)]
        return X12Answer(build_999(report.transactions, findings, control_number=control, now=now), 200, "999")
    members = app.extensions["payer_store"].by_member_id()
    providers = frozenset(app.config["PAYER_PROVIDERS"]) if app.config.get("PAYER_PROVIDERS") is not None else None
    # one 271 interchange per 270 interchange, back to its own sender (in one response, in the order received)
    text = "".join(answer_interchange(sets, members, config, now=now, control_number=nth_control(control, n),
                                      payer_id=app.config.get("PAYER_ID"), unable_to_respond=fault == "aaa-42",
                                      providers=providers)
                   for n, sets in enumerate(_by_interchange(report)))
    if fault == "wrong-trace":
        # one character replaced, not added: a 50-character TRN02 (the most the element holds) stays valid
        text = re.sub(r"TRN\*2\*([^*~])", lambda m: "TRN*2*" + ("Y" if m.group(1) == "X" else "X"), text)
    if fault == "bad-count":   # readable, but the trailer miscounts: a defect the gateway must pass on, not hide
        text = re.sub(r"SE\*(\d+)\*", lambda m: f"SE*{int(m.group(1)) + 1}*", text, count=1)
    return X12Answer(text, 200, "271")


def _by_interchange(report: Any) -> list[list[Transaction]]:
    """The request's transaction sets by the interchange that brought them, in the order received."""
    if len(report.interchanges) <= 1:
        return [report.transactions]
    received: dict[int, list[Transaction]] = {}
    for txn in report.transactions:
        received.setdefault(id(txn.interchange), []).append(txn)
    return list(received.values())


def _unacknowledgeable(report: Any, codes: Mapping[str, str]) -> list[Finding]:
    """What a 999 cannot answer, as interchange errors (a TA1): a 999 acknowledges the transaction sets of functional
    groups, so an interchange holding none, or a set outside any GS/GE, has no AK1 a 999 could name (it was a 999
    with an empty AK1 that said "accepted", to UNKNOWN)."""
    found = [Finding("SIM-NO-SET", "the interchange holds no transaction set in a functional group: there is no "
                     "270 to answer", level="interchange", ack_code=codes["no_transaction"],
                     interchange=i.control_number, interchange_ordinal=i.ordinal)
             for i in report.interchanges if not any(t.interchange is i and t.group is not None
                                                     for t in report.transactions)]
    found += [Finding("SIM-SET-OUTSIDE-GROUP", f"transaction set {quoted(t.control_number)} is outside any GS/GE "
                      "functional group", level="interchange", ack_code=codes["outside_group"],
                      interchange=t.interchange.control_number if t.interchange else "",
                      interchange_ordinal=t.interchange.ordinal if t.interchange else 0)
              for t in report.transactions if t.group is None]
    return found


def _scripted_rejection(txn: Any) -> list[Any]:
    """The ``reject-999`` fault as a payer's 999 reads: the subscriber's member id (2100C NM109) fails the payer's
    id pattern (IK3 code 8 with IK4 I12), so IK5's code 5 (segments in error) has the segment it speaks of."""
    where = {"transaction": txn.control_number, "transaction_set": txn.set_id, "loop": "2100C", "segment": "NM1",
             "set_ordinal": txn.ordinal}
    for loop, seg in txn.root.walk():
        if loop.id == "2100C" and seg.id == "NM1":
            return [Finding("SIM-999", "scripted rejection: the subscriber's segment has an element in error",
                            level="segment", ack_code="8", position=seg.position, **where),
                    Finding("SIM-999", "scripted rejection: the member id does not match the payer's pattern",
                            level="element", ack_code="I12", position=seg.position, element="NM109",
                            data_element="67", value=seg.get(9), **where)]
    return [Finding("SIM-999", "scripted rejection", level="transaction", ack_code="5",
                    transaction=txn.control_number, transaction_set=txn.set_id, set_ordinal=txn.ordinal)]


def _core_reply(env: Any, answer: X12Answer) -> tuple[Any, int]:
    """The response envelope for an answered payload (271, 999 or TA1), or the HTTP status of a fault."""
    text, status, kind = answer
    if status == 400:
        # the payload is not X12 at all (no ISA a TA1 could answer): an envelope problem like every other one the
        # CORE endpoints report, so a CORE error envelope rather than a bare text/plain 400
        return _core_error(env, core.PAYLOAD_ILLEGAL, text), 200
    if status != 200:   # a scripted HTTP fault (http-500/503, one-at-a-time): the status is the fault
        return None, status
    payload_type = {"999": core.PAYLOAD_999, "TA1": core.PAYLOAD_TA1}.get(kind, core.PAYLOAD_271)
    reply = core.CoreEnvelope.create(payload_type, text, sender_id=env.receiver_id, receiver_id=env.sender_id,
                                     payload_id=env.payload_id)
    reply.error_code, reply.error_message = core.SUCCESS, core.SUCCESS_MESSAGE
    return reply, 200


def _core_error(env: Any, code: str, message: str) -> Any:
    reply = core.CoreEnvelope.create(getattr(env, "payload_type", "") or core.PAYLOAD_271, None,
                                     sender_id=getattr(env, "receiver_id", "") or "PAYER",
                                     receiver_id=getattr(env, "sender_id", "") or "UNKNOWN",
                                     payload_id=getattr(env, "payload_id", "") or None)
    reply.error_code, reply.error_message = code, message
    return reply


def _authorize(env: Any) -> None:
    """``core.authorize`` when accounts are configured: raises the ``UnAuthorized`` CoreEnvelopeError, which the
    CORE endpoints answer like any other envelope error (a response envelope echoing the request's fields)."""
    accounts = _accounts()
    if accounts is not None:
        core.authorize(env, accounts)


@payer_api.post("/core/soap")
def core_soap():  # type: ignore[no-untyped-def]
    """CAQH CORE vC2.2.0 SOAP 1.2 real-time: COREEnvelopeRealTimeRequest in, ...Response out."""
    try:
        env = core.parse_soap_request(request.get_data())
        _authorize(env)
    except core.CoreEnvelopeError as exc:
        if exc.error_code == core.ENVELOPE_PARSING_ERROR or exc.envelope is None:
            return Response(core.soap_fault(exc.error_code, exc.message), status=400,
                            content_type=core.SOAP_CONTENT_TYPE)
        return Response(core.build_soap_response(_core_error(exc.envelope, exc.error_code, exc.message)),
                        status=200, content_type=core.SOAP_CONTENT_TYPE)
    answer = answer_x12((env.payload or "").encode())
    reply, status = _core_reply(env, answer)
    if reply is None:
        return Response(answer.text, status=status, mimetype="text/plain")
    return Response(core.build_soap_response(reply), status=200, content_type=core.SOAP_CONTENT_TYPE)


@payer_api.post("/core/mime")
def core_mime():  # type: ignore[no-untyped-def]
    """CAQH CORE vC2.2.0 HTTP MIME multipart (multipart/form-data) real-time."""
    try:
        env = core.parse_mime_request(request.get_data(), request.headers.get("Content-Type", ""))
        _authorize(env)
    except core.CoreEnvelopeError as exc:
        body, content_type = core.build_mime_response(_core_error(exc.envelope, exc.error_code, exc.message))
        return Response(body, status=400 if exc.envelope is None else 200, content_type=content_type)
    answer = answer_x12((env.payload or "").encode())
    reply, status = _core_reply(env, answer)
    if reply is None:
        return Response(answer.text, status=status, mimetype="text/plain")
    body, content_type = core.build_mime_response(reply)
    return Response(body, status=200, content_type=content_type)
