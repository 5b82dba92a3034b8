"""270s over CAQH CORE SOAP and MIME to the simulator on loopback; values as loaded come back."""

from __future__ import annotations

import requests

from gateway.translate import load_tables
from gateway.translate.response_271 import translate_271
from gateway.transport import core
from gateway.x12.reader import read_x12
from tests.conftest import FIXTURES
from tests.payer.test_answer import DELGADO
from tests.payer.test_api import create, server  # noqa: F401 - the fixture

REQUEST = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()


def envelope(payload: str = REQUEST) -> core.CoreEnvelope:
    return core.CoreEnvelope.create(core.PAYLOAD_270, payload, sender_id="GATEWAY01", receiver_id="ACME01")


def deductible(text: str) -> dict:
    response, = translate_271(read_x12(text).transactions[0], load_tables(), now="2025-03-10T09:30:00Z")
    return next(i["benefit"][0] for i in response.resource["insurance"][0]["item"]
                if i.get("benefit") and i["benefit"][0]["type"]["coding"][0]["code"] == "deductible")


def test_soap_round_trip(server):  # noqa: F811
    base, _ = server
    create(base, DELGADO)
    response = requests.post(f"{base}/core/soap", data=core.build_soap_request(envelope()),
                             headers={"Content-Type": core.SOAP_CONTENT_TYPE}, timeout=10)
    reply = core.parse_soap_response(response.content)
    assert reply.succeeded and reply.payload_type == core.PAYLOAD_271
    benefit = deductible(reply.payload)
    assert benefit["allowedMoney"]["value"] == 1500 and benefit["usedMoney"]["value"] == 750


def test_mime_round_trip(server):  # noqa: F811
    base, _ = server
    create(base, DELGADO)
    body, content_type = core.build_mime_request(envelope())
    response = requests.post(f"{base}/core/mime", data=body, headers={"Content-Type": content_type}, timeout=10)
    reply = core.parse_mime_response(response.content, response.headers["Content-Type"])
    assert reply.succeeded and deductible(reply.payload)["usedMoney"]["value"] == 750


def test_invalid_270_gets_a_999_payload(server):  # noqa: F811
    base, _ = server
    bad = (FIXTURES / "x12" / "invalid" / "eq01-invalid-code.x12").read_text()
    response = requests.post(f"{base}/core/soap", data=core.build_soap_request(envelope(bad)),
                             headers={"Content-Type": core.SOAP_CONTENT_TYPE}, timeout=10)
    reply = core.parse_soap_response(response.content)
    assert reply.payload_type == core.PAYLOAD_999 and "IK5*R" in reply.payload


def test_broken_envelopes_get_their_core_error_code(server):  # noqa: F811
    base, _ = server
    broken = core.build_soap_request(envelope()).replace(b"<PayloadID>", b"<PayloadIDx>").replace(
        b"</PayloadID>", b"</PayloadIDx>")
    response = requests.post(f"{base}/core/soap", data=broken, headers={"Content-Type": core.SOAP_CONTENT_TYPE},
                             timeout=10)
    try:
        reply = core.parse_soap_response(response.content)
        code = reply.error_code
    except core.CoreEnvelopeError as exc:
        code = exc.error_code
    assert code in (core.PAYLOAD_ID_REQUIRED, core.ENVELOPE_PARSING_ERROR)
    response = requests.post(f"{base}/core/soap", data=b"not xml", timeout=10)
    assert response.status_code == 400 and b"EnvelopeParsingError" in response.content


def test_a_payload_that_is_not_x12_gets_a_core_error_envelope_not_text(server):  # noqa: F811
    """Every other envelope or payload problem got a CORE envelope; this one was a text/plain 400."""
    base, _ = server
    sent = envelope("HELLO, NOT X12")
    response = requests.post(f"{base}/core/soap", data=core.build_soap_request(sent),
                             headers={"Content-Type": core.SOAP_CONTENT_TYPE}, timeout=10)
    assert response.headers["Content-Type"].startswith("application/soap+xml")
    reply = core.parse_soap_response(response.content)
    assert reply.error_code == core.PAYLOAD_ILLEGAL and "not readable as X12" in reply.error_message
    assert reply.payload_id == sent.payload_id and reply.receiver_id == sent.sender_id   # echoed
    body, content_type = core.build_mime_request(envelope("HELLO, NOT X12"))
    response = requests.post(f"{base}/core/mime", data=body, headers={"Content-Type": content_type}, timeout=10)
    assert response.headers["Content-Type"].startswith("multipart/form-data")
    reply = core.parse_mime_response(response.content, response.headers["Content-Type"])
    assert reply.error_code == core.PAYLOAD_ILLEGAL and not reply.payload
