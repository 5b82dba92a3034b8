"""References fetched from an upstream FHIR server (a real one on loopback), and everything that can go wrong."""

from __future__ import annotations

import base64
import copy
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, abort, redirect, request
from werkzeug.serving import make_server

from gateway.errors import ConfigError
from gateway.translate import TranslationError, load_tables
from gateway.translate.request_270 import build_270
from gateway.upstream import UpstreamConfig, resolve_references
from gateway.x12.writer import Envelope
from tests.conftest import FIXTURES

CER = "CoverageEligibilityRequest"
ENTRY0 = "Bundle.entry[0].resource"   # the request, sent in a Bundle: its refusals are said from its entry
ENV = Envelope(sender_id="GATEWAY01", receiver_id="PAYERX", interchange_control=5, now=datetime(2025, 3, 10, 9, 15))
NPI = "http://hl7.org/fhir/sid/us-npi"
PAYERID = {"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType", "code": "payerid"}
SELF = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}]}

RESOURCES: dict[tuple[str, str], dict[str, Any]] = {
    ("Patient", "123"): {"resourceType": "Patient", "id": "123", "name": [{"family": "Doe", "given": ["Jane"]}],
                         "birthDate": "1980-01-02", "gender": "female"},
    ("Coverage", "456"): {"resourceType": "Coverage", "id": "456", "status": "active", "subscriberId": "W987654321",
                          "subscriber": {"reference": "Patient/123"}, "beneficiary": {"reference": "Patient/123"},
                          "relationship": SELF, "payor": [{"reference": "Organization/acme"}]},
    ("Coverage", "bad-payor"): {"resourceType": "Coverage", "id": "bad-payor", "status": "active",
                                "subscriberId": "W1", "beneficiary": {"reference": "Patient/123"},
                                "subscriber": {"reference": "https://evil.example/fhir/Patient/123"},
                                "payor": [{"reference": "Organization/missing"}]},
    ("Organization", "acme"): {"resourceType": "Organization", "id": "acme", "name": "Acme Health Plan",
                               "identifier": [{"type": {"coding": [PAYERID]}, "value": "ACME01"}]},
    ("Organization", "clinic"): {"resourceType": "Organization", "id": "clinic", "name": "Sample Clinic",
                                 "identifier": [{"system": NPI, "value": "1234567893"}]},
    ("Practitioner", "9"): {"resourceType": "Practitioner", "id": "9",
                            "name": [{"family": "Welby", "given": ["Marcus"]}],
                            "identifier": [{"system": NPI, "value": "1679576722"}]},
    ("PractitionerRole", "r1"): {"resourceType": "PractitionerRole", "id": "r1",
                                 "practitioner": {"reference": "Practitioner/9"},
                                 "organization": {"reference": "Organization/clinic"}},
}


def ehr_example(**changes: Any) -> dict[str, Any]:
    """The widely used EHR shape: bare references, an empty insurer (the payer is Coverage.payor)."""
    payload = {"resourceType": CER, "status": "active", "purpose": ["benefits"],
               "patient": {"reference": "Patient/123"}, "insurance": [{"coverage": {"reference": "Coverage/456"}}],
               "insurer": {}, "created": "2025-03-10T09:15:00-05:00", "provider": {"reference": "Practitioner/9"}}
    payload.update(changes)
    return payload


class Upstream:
    """The EHR's FHIR server on a loopback port, with a log of what was asked (path, Authorization)."""

    def __init__(self, ssl_context: Any = None) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str | None]] = []
        self.on_call = lambda: None
        app = Flask("ehr")

        @app.get("/fhir/<kind>/<id>")
        @app.get("/fhir/<kind>/<id>/_history/<version>")
        def read(kind: str, id: str, version: str | None = None) -> Any:
            with self.lock:
                self.calls.append((request.path.removeprefix("/fhir/"), request.headers.get("Authorization")))
            self.on_call()
            return special(kind, id) or found(kind, id, version)

        @app.get("/<path:rest>")
        def elsewhere(rest: str) -> Any:   # outside the FHIR base: logged, and nothing there
            with self.lock:
                self.calls.append(("/" + rest, request.headers.get("Authorization")))
            abort(404)

        self.httpd = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl_context)
        self.port = self.httpd.server_port
        self.url = f"{'https' if ssl_context is not None else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _ in self.calls]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fhir_json(resource: Any, status: int = 200) -> Response:
    return Response(json.dumps(resource), status=status, mimetype="application/fhir+json")


def found(kind: str, id: str, version: str | None) -> Response:
    resource = RESOURCES.get((kind, id))
    if resource is None:
        abort(404)
    if version:
        resource = {**resource, "meta": {"versionId": version}}
    return fhir_json(resource)


def special(kind: str, id: str) -> Response | None:
    """Ids that misbehave whatever the resource type."""
    if id == "gone":
        return fhir_json({"resourceType": "OperationOutcome"}, 410)
    if id in ("locked", "forbidden", "broken", "busy"):
        return fhir_json({"resourceType": "OperationOutcome"}, {"locked": 401, "forbidden": 403, "broken": 500,
                                                                 "busy": 429}[id])
    if id == "slow":
        time.sleep(1.0)
        return fhir_json({"resourceType": kind, "id": id})
    if id == "trickle":
        def body() -> Iterator[bytes]:
            yield b'{"resourceType": '
            time.sleep(1.0)
            yield json.dumps(kind).encode() + b', "id": "trickle"}'
        return Response(body(), mimetype="application/fhir+json")
    if id in ("badbirth", "badname", "extra", "deep", "nulls"):   # JSON, but not FHIR the gateway could use
        patient = {**RESOURCES[("Patient", "123")], "id": id}
        patient.update({"badbirth": {"birthDate": 19780514}, "badname": {"name": [{"family": ["Doe"]}]},
                        "extra": {"favouriteColour": "blue"}, "nulls": {"gender": None}}.get(id, {}))
        if id == "deep":
            nested: dict[str, Any] = {"url": "http://example.org/x", "valueString": "x"}
            for _ in range(60):
                nested = {"url": "http://example.org/x", "extension": [nested]}
            patient["extension"] = [nested]
        return fhir_json(patient)
    if id == "drip":   # a byte at a time, each within the read timeout: only a deadline ends it
        whole = json.dumps({"resourceType": kind, "id": "drip", "gender": "female"}).encode()

        def dripping() -> Iterator[bytes]:
            for byte in whole:
                time.sleep(0.1)
                yield bytes([byte])
        # a declared length, not chunks: a reader waiting for a 64 kB block waits for the whole body
        return Response(dripping(), mimetype="application/fhir+json", headers={"Content-Length": str(len(whole))})
    if id == "moved":
        return redirect("http://evil.example/fhir/Patient/123", 302)
    if id == "huge":
        return Response(b"[" + b"0," * (1024 * 1024 + 10) + b"0]", mimetype="application/fhir+json")
    if id == "huge-declared":   # a length no int() reads (over 4,300 digits): larger than any limit, not a 500
        return Response(iter([b"{}"]), mimetype="application/fhir+json", headers={"Content-Length": "9" * 5000})
    if id == "padded-declared":   # 5,000 zeros, then the length: int() counts the zeros too
        body = json.dumps({"resourceType": kind, "id": "padded-declared", "gender": "female"}).encode()
        return Response(iter([body]), mimetype="application/fhir+json",
                        headers={"Content-Length": "0" * 5000 + str(len(body))})
    if id == "huge-stream":
        return Response((b" " * 65536 for _ in range(40)), mimetype="application/fhir+json")
    if id == "html":
        return Response("<html><body>Login</body></html>", mimetype="text/html")
    if id == "wrongtype":
        return fhir_json(RESOURCES[("Organization", "acme")])
    if id == "wrongid":
        return fhir_json({**RESOURCES[("Patient", "123")], "id": "124"})
    if id == "notype":   # no resource type's name: not quoted back
        return fhir_json({"resourceType": "no such type", "id": id})
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[Upstream]:
    upstream = Upstream()
    yield upstream
    upstream.close()


@pytest.fixture
def ehr(server: Upstream) -> Iterator[Upstream]:
    with server.lock:
        server.calls.clear()
    server.on_call = lambda: None
    yield server
    server.on_call = lambda: None


def config(ehr: Upstream, **kwargs: Any) -> UpstreamConfig:
    return UpstreamConfig(base=f"{ehr.url}/fhir", **kwargs)


def problems_of(payload: Any, cfg: UpstreamConfig, **kwargs: Any) -> dict[str, tuple[str, str]]:
    """fhir_path -> (code, message) of the 422 the payload gets."""
    with pytest.raises(TranslationError) as info:
        resolve_references(payload, cfg, **kwargs)
    assert info.value.status == 422
    outcome = info.value.to_operation_outcome()
    assert len(outcome["issue"]) == len(info.value.problems)
    return {p.fhir_path: (p.code, p.message) for p in info.value.problems}


def translate(payload: Any) -> str:
    return build_270(payload, load_tables(), envelope=ENV).text


# ------------------------------------------------------------------------------------------------ resolving


def test_ehr_example_resolves_payer_via_coverage_payor(ehr: Upstream):
    payload = ehr_example()
    before = copy.deepcopy(payload)
    result = resolve_references(payload, config(ehr))
    assert payload == before                     # the input is left alone
    assert result["resourceType"] == "Bundle" and result["type"] == "collection"
    first = result["entry"][0]
    assert first["resource"] is payload and first["fullUrl"].startswith("urn:uuid:")
    # each fetched resource under the URL it was read from
    assert {e["fullUrl"] for e in result["entry"][1:]} == {f"{ehr.url}/fhir/{path}" for path in (
        "Patient/123", "Coverage/456", "Organization/acme", "Practitioner/9")}
    # Patient/123 is the patient, the subscriber and the beneficiary: fetched once
    assert sorted(ehr.paths()) == ["Coverage/456", "Organization/acme", "Patient/123", "Practitioner/9"]
    text = translate(result)
    assert "*PI*ACME01~" in text and "*MI*W987654321~" in text
    assert "NM1*1P*1*WELBY*MARCUS****XX*1679576722~" in text.upper()
    assert "NM1*IL*1*DOE*JANE" in text.upper()


def test_request_with_id_is_the_first_entry_under_its_own_url(ehr: Upstream):
    result = resolve_references(ehr_example(id="req-1"), config(ehr))
    assert result["entry"][0]["fullUrl"] == f"{CER}/req-1"
    assert result["entry"][0]["resource"]["id"] == "req-1"


def test_urn_full_url_is_stable(ehr: Upstream):
    first = resolve_references(ehr_example(), config(ehr))["entry"][0]["fullUrl"]
    second = resolve_references(ehr_example(), config(ehr))["entry"][0]["fullUrl"]
    assert first == second


@pytest.mark.parametrize("name", ["contained", "subscriber-generic", "urn-uuid-bundle", "subscriber-eq-repetitions",
                                  "canvas-insurer-empty", "dependent-generic"])
def test_complete_payloads_are_returned_unchanged_without_fetching(ehr: Upstream, name: str):
    payload = json.loads((FIXTURES / "fhir" / "requests" / f"{name}.json").read_text(encoding="utf-8"))
    assert resolve_references(payload, config(ehr)) is payload
    assert ehr.paths() == []


def test_identifier_only_and_empty_references_are_not_fetched(ehr: Upstream):
    payload = ehr_example(insurer={"identifier": {"type": {"coding": [PAYERID]}, "value": "ACME01"}},
                          provider={"identifier": {"system": NPI, "value": "1679576722"}, "display": "Dr Welby"})
    payload["insurance"].append({"coverage": {}})
    resolve_references(payload, config(ehr))
    assert sorted(ehr.paths()) == ["Coverage/456", "Organization/acme", "Patient/123"]


def test_bundle_entries_are_kept_and_their_references_followed(ehr: Upstream):
    coverage = {**RESOURCES[("Coverage", "456")], "id": "cov-local"}
    patient = {**RESOURCES[("Patient", "123")], "id": "local-patient"}
    coverage["subscriber"] = coverage["beneficiary"] = {"reference": "Patient/local-patient"}
    request = ehr_example(id="r-b", patient={"reference": "Patient/local-patient"},
                          insurance=[{"coverage": {"reference": "urn:uuid:6a3d8a0e-0000-4000-8000-000000000001"}}])
    base = f"{ehr.url}/fhir/"   # the EHR's own server, which is the configured upstream
    payload = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6a3d8a0e-0000-4000-8000-000000000001", "resource": coverage,
         "request": {"method": "POST", "url": "Coverage"}},
        {"fullUrl": f"{base}Patient/local-patient", "resource": patient},
        {"fullUrl": f"{base}CoverageEligibilityRequest/r-b", "resource": request}]}
    result = resolve_references(payload, config(ehr))
    assert sorted(ehr.paths()) == ["Organization/acme", "Practitioner/9"]   # Coverage.payor, transitively
    urls = [e["fullUrl"] for e in result["entry"]]
    assert urls[0] == f"{base}CoverageEligibilityRequest/r-b"
    assert urls[1:3] == ["urn:uuid:6a3d8a0e-0000-4000-8000-000000000001", f"{base}Patient/local-patient"]
    assert f"{base}Practitioner/9" in urls   # fetched for a relative reference: under the entry's own server
    assert all("request" not in e for e in result["entry"])   # a collection's entries carry no request
    assert "*PI*ACME01~" in translate(result)


def test_contained_resources_references_are_followed(ehr: Upstream):
    contained_coverage = {**RESOURCES[("Coverage", "456")], "id": "cov"}
    payload = ehr_example(contained=[contained_coverage], insurance=[{"coverage": {"reference": "#cov"}}])
    result = resolve_references(payload, config(ehr))
    assert sorted(ehr.paths()) == ["Organization/acme", "Patient/123", "Practitioner/9"]
    assert "*PI*ACME01~" in translate(result)


def test_practitioner_role_is_followed_to_practitioner_and_organization(ehr: Upstream):
    result = resolve_references(ehr_example(provider={"reference": "PractitionerRole/r1"}), config(ehr))
    assert sorted(ehr.paths()) == ["Coverage/456", "Organization/acme", "Organization/clinic", "Patient/123",
                                   "Practitioner/9", "PractitionerRole/r1"]
    assert "XX*1679576722~" in translate(result)


def test_versioned_reference_fetches_that_version(ehr: Upstream):
    result = resolve_references(ehr_example(patient={"reference": "Patient/123/_history/2"}), config(ehr))
    assert "Patient/123/_history/2" in ehr.paths()
    patient = next(e for e in result["entry"] if e["fullUrl"] == f"{ehr.url}/fhir/Patient/123/_history/2")["resource"]
    assert patient["meta"]["versionId"] == "2"
    assert "NM1*IL*1*DOE*JANE" in translate(result).upper()


def test_absolute_reference_on_an_allowed_host(ehr: Upstream):
    absolute = f"{ehr.url}/fhir/Patient/123"
    result = resolve_references(ehr_example(patient={"reference": absolute}), config(ehr))
    assert absolute in [e["fullUrl"] for e in result["entry"]]
    assert ehr.paths().count("Patient/123") == 1      # Coverage.subscriber's Patient/123 is the same one
    assert "NM1*IL*1*DOE*JANE" in translate(result).upper()


def test_absolute_reference_on_another_host_is_refused(ehr: Upstream):
    problems = problems_of(ehr_example(patient={"reference": "https://evil.example/fhir/Patient/123"}), config(ehr))
    code, message = problems[f"{CER}.patient"]
    assert code == "forbidden" and "'https://evil.example/fhir/Patient/123'" in message and "not allowed" in message
    assert "Patient/123" in ehr.paths()               # only via Coverage.subscriber, on the base server
    assert not any("evil" in p for p in ehr.paths())


def test_allowed_hosts_replace_the_default(ehr: Upstream):
    cfg = config(ehr, allowed_hosts=frozenset({"fhir.partner.example"}))
    problems = problems_of(ehr_example(patient={"reference": f"{ehr.url}/fhir/Patient/123"}), cfg)
    assert problems[f"{CER}.patient"][0] == "forbidden"
    # a port in the allow-list is matched exactly
    cfg = config(ehr, allowed_hosts=frozenset({f"127.0.0.1:{ehr.port + 1 if ehr.port < 65535 else 1}"}))
    assert problems_of(ehr_example(patient={"reference": f"{ehr.url}/fhir/Patient/123"}),
                       cfg)[f"{CER}.patient"][0] == "forbidden"


def test_no_upstream_configured(ehr: Upstream):
    problems = problems_of(ehr_example(), UpstreamConfig())
    assert set(problems) == {f"{CER}.patient", f"{CER}.provider", f"{CER}.insurance[0].coverage"}
    code, message = problems[f"{CER}.patient"]
    assert code == "not-found"
    assert message == ("reference 'Patient/123' cannot be resolved: it is neither contained nor in the Bundle, and "
                       "no upstream FHIR server is configured (FHIR_X12_FHIR_BASE)")
    assert ehr.paths() == []


# ------------------------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize(("kwargs", "header"), [
    ({"token": "ehr-token-1"}, "Bearer ehr-token-1"),
    ({"basic": ("svc", "pa:ss")}, "Basic " + base64.b64encode(b"svc:pa:ss").decode()),
    ({}, None),
])
def test_credentials_are_sent(ehr: Upstream, kwargs: dict[str, Any], header: str | None):
    with requests.Session() as session:
        session.headers["Authorization"] = "Bearer payer-secret"      # a shared session's own header never leaks
        resolve_references(ehr_example(), config(ehr, **kwargs), session=session)
    assert ehr.calls and {auth for _, auth in ehr.calls} == {header}


def test_credentials_go_only_to_the_base_origin(ehr: Upstream):
    cfg = config(ehr, token="ehr-token-1", allowed_hosts=frozenset({"127.0.0.1", "localhost"}))
    resolve_references(ehr_example(patient={"reference": f"http://localhost:{ehr.port}/fhir/Patient/123"}), cfg)
    auth = dict(ehr.calls)
    assert auth["Patient/123"] is None and auth["Coverage/456"] == "Bearer ehr-token-1"


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(("id", "code", "words"), [
    ("missing", "not-found", "was not found on the FHIR server (status 404)"),
    ("gone", "not-found", "was not found on the FHIR server (status 410)"),
    ("locked", "forbidden", "the FHIR server refused access (status 401)"),
    ("forbidden", "forbidden", "the FHIR server refused access (status 403)"),
    ("broken", "transient", "could not be reached: it answered with status 500"),
    ("busy", "throttled", "status 429"),
    ("slow", "timeout", "could not be reached in time (no answer within 0.3 s)"),
    ("trickle", "timeout", "could not be reached in time (the answer stalled"),
    ("moved", "processing", "redirect (status 302); redirects are not followed"),
    ("huge", "processing", "answer is larger than 2097152 bytes"),
    ("huge-stream", "processing", "answer is larger than 2097152 bytes"),
    ("huge-declared", "processing", "answer is larger than 2097152 bytes"),
    ("html", "processing", "answer is not JSON"),
    ("wrongtype", "processing", "answered with an Organization, expected Patient"),
    ("wrongid", "processing", "answered with a Patient of another id"),
    ("notype", "processing", "answered with another resource, expected Patient"),
    ("badbirth", "processing", "the FHIR server's Patient is not valid FHIR: Patient.birthDate"),
    ("badname", "processing", "the FHIR server's Patient is not valid FHIR: Patient.name[0].family"),
    ("extra", "processing", "the FHIR server's Patient is not valid FHIR: Patient.favouriteColour"),
    ("nulls", "processing", "is not valid FHIR JSON (an element is null"),
    ("deep", "processing", "the FHIR server's Patient nests deeper than 48 levels"),
])
def test_each_failure_is_a_422_naming_the_reference(ehr: Upstream, id: str, code: str, words: str):
    cfg = config(ehr, timeout=(1.0, 0.3))
    problems = problems_of(ehr_example(patient={"reference": f"Patient/{id}"}), cfg)
    assert list(problems) == [f"{CER}.patient"]
    got_code, message = problems[f"{CER}.patient"]
    assert got_code == code and message.startswith(f"reference 'Patient/{id}' ") and words in message
    assert ehr.paths().count(f"Patient/{id}") == 1
    assert "evil.example" not in ehr.paths()


def test_a_length_padded_past_what_int_reads_is_no_failure_of_the_gateway(ehr: Upstream):
    """5,000 zeros before the length: the gateway's own size check reads it (int() alone refused it, a 500); what
    the HTTP client makes of it is then either the resource or a 422 naming the reference, never an exception."""
    payload = ehr_example(patient={"reference": "Patient/padded-declared"})
    try:
        result = resolve_references(payload, config(ehr, timeout=(1.0, 1.0)))
    except TranslationError as exc:
        assert exc.status == 422 and [p.fhir_path for p in exc.problems] == [f"{CER}.patient"]
    else:
        assert any(e["resource"].get("id") == "padded-declared" for e in result["entry"][1:])


def test_unreachable_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    problems = problems_of(ehr_example(), UpstreamConfig(base=f"http://127.0.0.1:{port}/fhir", timeout=(0.5, 0.5)))
    code, message = problems[f"{CER}.patient"]
    assert code == "transient" and message == ("reference 'Patient/123' could not be fetched: the FHIR server could "
                                               "not be reached (the connection failed)")


def test_every_unresolvable_reference_is_named_at_once(ehr: Upstream):
    payload = ehr_example(patient={"reference": "Patient/missing"}, insurer={"reference": "Organization/locked"},
                          provider={"reference": "Practitioner/broken"},
                          contained=[{"resourceType": "Organization", "id": "o1", "name": "x"}],
                          insurance=[{"coverage": {"reference": "Coverage/bad-payor"}},
                                     {"coverage": {"reference": "urn:uuid:0d6f4c1e-8b2a-4f37-9e50-a1c2b3d4e5f6"}},
                                     {"coverage": {"reference": "#nope"}},
                                     {"coverage": {"reference": "Organization/o9"}},
                                     {"coverage": {"reference": "Coverage?identifier=1"}}])
    with pytest.raises(TranslationError) as info:
        resolve_references(payload, config(ehr))
    error = info.value
    assert error.status == 422
    got = {p.fhir_path: p for p in error.problems}
    assert {path: p.code for path, p in got.items()} == {
        f"{CER}.patient": "not-found",
        f"{CER}.insurer": "forbidden",
        f"{CER}.provider": "transient",
        f"{CER}.insurance[1].coverage": "not-found",
        f"{CER}.insurance[2].coverage": "not-found",
        f"{CER}.insurance[3].coverage": "invalid",
        f"{CER}.insurance[4].coverage": "invalid",
        "Coverage.payor[0]": "not-found",
        "Coverage.subscriber": "forbidden",
        # Coverage/bad-payor's beneficiary is Patient/123: it resolves
    }
    assert "'Patient/missing'" in got[f"{CER}.patient"].message
    assert "'Organization/missing'" in got["Coverage.payor[0]"].message
    assert "'#nope'" in got[f"{CER}.insurance[2].coverage"].message
    assert "points at an Organization, expected Coverage" in got[f"{CER}.insurance[3].coverage"].message
    assert got[f"{CER}.patient"].x12 == "2100C NM1" and got["Coverage.payor[0]"].x12 == "2100A"
    # Coverage/bad-payor was fetched, not sent: its own root, and the reference the client sent for it
    for path in ("Coverage.payor[0]", "Coverage.subscriber"):
        assert got[path].also == (f"{CER}.insurance[0].coverage",)
        assert got[path].message.endswith(f"(in the Coverage fetched for {CER}.insurance[0].coverage: the request "
                                          "did not hold it)")
    issues = error.to_operation_outcome()["issue"]
    assert [i["expression"] for i in issues] == [p.expressions for p in error.problems]
    assert "Doe" not in str(error) and "W1" not in str(error)          # reference strings only, no content
    assert "Organization/o9" not in ehr.paths()                         # the wrong type is not fetched


def test_a_failing_reference_used_twice_is_fetched_once_and_named_twice(ehr: Upstream):
    payload = ehr_example(patient={"reference": "Patient/missing"},
                          contained=[{**RESOURCES[("Coverage", "456")], "id": "c",
                                      "subscriber": {"reference": "Patient/missing"}}],
                          insurance=[{"coverage": {"reference": "#c"}}])
    problems = problems_of(payload, config(ehr))
    # the contained Coverage's reference where the client sent it (was Coverage.subscriber)
    assert {f"{CER}.patient", f"{CER}.contained[0].subscriber"} <= set(problems)
    assert ehr.paths().count("Patient/missing") == 1


@pytest.mark.parametrize("sent_in", ["contained", "bundle"])
def test_a_reference_of_a_coverage_the_client_sent_is_named_where_the_client_sent_it(ehr: Upstream, sent_in):
    """Coverage.payor[0] and Coverage.subscriber were said from the Coverage's own root, though the client sent it
    contained in the request or as a Bundle entry: the expression named nothing in the body it sent."""
    coverage = {**RESOURCES[("Coverage", "bad-payor")], "id": "c"}
    if sent_in == "contained":
        payload = ehr_example(contained=[{"resourceType": "Organization", "id": "o1", "name": "x"}, coverage],
                              insurance=[{"coverage": {"reference": "#c"}}])
        where = f"{CER}.contained[1]"
    else:
        payload = {"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:6c3c7a6e-0000-4000-8000-000000000001",
             "resource": ehr_example(insurance=[{"coverage": {"reference": "Coverage/c"}}])},
            {"fullUrl": "urn:uuid:6c3c7a6e-0000-4000-8000-000000000002", "resource": RESOURCES[("Patient", "123")]},
            {"fullUrl": "urn:uuid:6c3c7a6e-0000-4000-8000-000000000003", "resource": coverage}]}
        where = "Bundle.entry[2].resource"
    with pytest.raises(TranslationError) as info:
        resolve_references(payload, config(ehr))
    got = {p.fhir_path: p for p in info.value.problems}
    assert {path: (p.code, p.also) for path, p in got.items()} == {
        f"{where}.payor[0]": ("not-found", ()), f"{where}.subscriber": ("forbidden", ())}
    assert "fetched" not in got[f"{where}.payor[0]"].message


def test_max_fetches(ehr: Upstream):
    problems = problems_of(ehr_example(), config(ehr, max_fetches=2))
    assert len(ehr.calls) == 2
    too_costly = [m for c, m in problems.values() if c == "too-costly"]
    assert too_costly and all("more than 2 fetches" in m for m in too_costly)


@pytest.mark.parametrize(("budget", "calls", "words"), [
    (8.0, 3, "ran out while reading the answer"),     # the third answer ends at 9 s
    (6.0, 2, "was not fetched: the time allowed for fetching references (6 s) ran out"),
])
def test_budget_with_a_clock(ehr: Upstream, budget: float, calls: int, words: str):
    now = [0.0]

    def slow_server() -> None:
        # every answer takes 3 s; the clock moves once the client waits for the answer (a read begun at 3 s has 3 s
        # left), not before it asks: an answer ending exactly at the budget is read in time, as the code has it, and
        # the test does not race the client's reads against the server's clock
        time.sleep(0.05)
        now[0] += 3.0

    ehr.on_call = slow_server
    problems = problems_of(ehr_example(), config(ehr, budget=budget), clock=lambda: now[0])
    assert len(ehr.calls) == calls
    assert list(problems) == [f"{CER}.insurance[0].coverage"]
    code, message = problems[f"{CER}.insurance[0].coverage"]
    assert code == "timeout" and message.startswith("reference 'Coverage/456' ") and words in message


def test_budget_in_real_time(ehr: Upstream):
    payload = ehr_example(patient={"reference": "Patient/slow"}, provider={"reference": "Practitioner/slow"},
                          insurance=[{"coverage": {"reference": "Coverage/slow"}}])
    started = time.monotonic()
    problems = problems_of(payload, config(ehr, timeout=(1.0, 5.0), budget=0.6))
    assert time.monotonic() - started < 1.5
    assert {c for c, _ in problems.values()} == {"timeout"} and len(problems) == 3
    assert any("ran out" in m for _, m in problems.values())


def test_a_server_sending_a_byte_at_a_time_is_cut_at_the_budget(ehr: Upstream):
    start = time.monotonic()
    problems = problems_of(ehr_example(patient={"reference": "Patient/drip"}), config(ehr, budget=0.8))
    assert time.monotonic() - start < 2.5   # the whole answer takes about 5 s
    code, message = problems[f"{CER}.patient"]
    assert code == "timeout" and "ran out while reading the answer" in message


@pytest.mark.parametrize("shared", [False, True], ids=["own-session", "the-payer-clients-session"])
def test_headers_arriving_a_line_at_a_time_are_cut_at_the_budget(header_drip: str, shared: bool):
    """A server sending a header line every 0.2 s (each within the read timeout, never done) meets the budget,
    with the session resolve_references makes and with the gateway's shared one (the payer client's)."""
    from gateway.transport.client import _session

    cfg = UpstreamConfig(base=header_drip.rstrip("/"), timeout=(1.0, 1.0), budget=0.8)
    session = _session(4) if shared else None
    started = time.monotonic()
    try:
        problems = problems_of(ehr_example(patient={"reference": "Patient/slow-headers"}), cfg, session=session)
    finally:
        if session is not None:
            session.close()
    assert time.monotonic() - started < 2.5   # without the deadline: 100 lines x 0.2 s each
    code, message = problems[f"{CER}.patient"]
    assert code == "timeout" and "ran out while reading the answer" in message


@pytest.fixture(scope="module")
def tls_ehr(loopback_ca: Path) -> Iterator[Upstream]:
    """The EHR's server over https, with a certificate from a private CA (as a hospital's often is)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(loopback_ca / "server.pem", loopback_ca / "server.key")
    upstream = Upstream(ssl_context=context)
    yield upstream
    upstream.close()


def test_an_ehr_with_a_private_ca_is_trusted_by_the_configured_bundle(tls_ehr: Upstream, loopback_ca: Path,
                                                                       monkeypatch, caplog):
    """FHIR_X12_FHIR_CA_BUNDLE; without it, a 422 that says TLS failed and a log line that says why; with the
    gateway's own session (no proxy variables: trust_env off), REQUESTS_CA_BUNDLE is still the trust store."""
    from gateway.transport.client import _session

    for key in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(key)
    base = {"FHIR_X12_FHIR_BASE": f"{tls_ehr.url}/fhir", "FHIR_X12_FHIR_TOKEN": "tok-1"}
    trusted = UpstreamConfig.from_config({**base, "FHIR_X12_FHIR_CA_BUNDLE": str(loopback_ca / "ca.pem")})
    assert trusted.ca_bundle == str(loopback_ca / "ca.pem")
    with requests.Session() as plain:
        plain.trust_env = False   # the environment's bundle out of the way: only the setting trusts the CA
        assert resolve_references(ehr_example(), trusted, session=plain)["resourceType"] == "Bundle"
        with caplog.at_level("WARNING", logger="gateway.upstream"):
            problems = problems_of(ehr_example(), UpstreamConfig.from_config(base), session=plain)
    code, message = problems[f"{CER}.patient"]
    assert code == "transient" and "TLS with the FHIR server failed" in message
    assert any("SSLError" in r.getMessage() and "CERTIFICATE_VERIFY_FAILED" in r.getMessage()
               for r in caplog.records)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(loopback_ca / "ca.pem"))
    session = _session(4)
    try:
        assert not session.trust_env
        assert resolve_references(ehr_example(), UpstreamConfig.from_config(base), session=session)["entry"]
    finally:
        session.close()


@pytest.mark.parametrize("bundle", ["/nonexistent/ca.pem", "{not_pem}"])
def test_a_ca_bundle_that_cannot_be_read_is_named_at_start(bundle: str, tmp_path: Path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="FHIR_X12_FHIR_CA_BUNDLE"):
        UpstreamConfig.from_config({"FHIR_X12_FHIR_CA_BUNDLE": bundle.format(not_pem=not_pem)})


def test_a_shared_session_across_threads(ehr: Upstream):
    with requests.Session() as session, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: resolve_references(ehr_example(id=f"r{i}"), config(ehr), session=session),
                                range(16)))
    assert [r["entry"][0]["fullUrl"] for r in results] == [f"{CER}/r{i}" for i in range(16)]
    assert all(len(r["entry"]) == 5 for r in results)


# ------------------------------------------------------------------------------------------------ configuration


def test_config_defaults_and_parsing():
    assert UpstreamConfig.from_config({}) == UpstreamConfig()
    assert UpstreamConfig().allowed_hosts == frozenset() and UpstreamConfig().timeout == (2.0, 5.0)
    cfg = UpstreamConfig.from_config({"FHIR_X12_FHIR_BASE": " https://EHR.example:8443/fhir/ ",
                                      "FHIR_X12_FHIR_TOKEN": "tok-1", "FHIR_X12_FHIR_TIMEOUT": "3"})
    assert cfg.base == "https://EHR.example:8443/fhir" and cfg.allowed_hosts == frozenset({"ehr.example:8443"})
    assert cfg.token == "tok-1" and cfg.timeout == (2.0, 3.0) and cfg.max_fetches == 20 and cfg.budget == 8.0
    assert "tok-1" not in repr(cfg)
    cfg = UpstreamConfig.from_config({"FHIR_X12_FHIR_BASE": "https://ehr.example/fhir",
                                      "FHIR_X12_FHIR_ALLOWED_HOSTS": "ehr.example, Files.EHR.example:8443,",
                                      "FHIR_X12_FHIR_BASIC": "svc:se:cret", "FHIR_X12_FHIR_TIMEOUT": "1.5,4"})
    assert cfg.allowed_hosts == frozenset({"ehr.example", "files.ehr.example:8443"})
    assert cfg.basic == ("svc", "se:cret") and cfg.timeout == (1.5, 4.0) and "se:cret" not in repr(cfg)
    assert UpstreamConfig.from_config({"FHIR_X12_FHIR_TIMEOUT": 0.5}).timeout == (0.5, 0.5)
    assert UpstreamConfig.from_config({"FHIR_X12_FHIR_BASE": "", "FHIR_X12_FHIR_TOKEN": " "}) == UpstreamConfig()


@pytest.mark.parametrize("credentials", [{"FHIR_X12_FHIR_TOKEN": "tok-1"}, {"FHIR_X12_FHIR_BASIC": "svc:secret"}])
def test_credentials_never_go_over_plain_http_beyond_this_machine(credentials):
    with pytest.raises(ConfigError, match="travel only over https"):
        UpstreamConfig.from_config({"FHIR_X12_FHIR_BASE": "http://ehr.example/fhir", **credentials})
    for local in ("http://127.0.0.1:8081/fhir", "http://localhost/fhir", "http://[::1]:8081/fhir"):
        assert UpstreamConfig.from_config({"FHIR_X12_FHIR_BASE": local, **credentials}).base == local
    assert UpstreamConfig.from_config({"FHIR_X12_FHIR_BASE": "http://ehr.example/fhir"}).token is None   # no secret


@pytest.mark.parametrize(("key", "value"), [
    ("FHIR_X12_FHIR_BASE", "ftp://ehr.example/fhir"),
    ("FHIR_X12_FHIR_BASE", "ehr.example/fhir"),
    ("FHIR_X12_FHIR_BASE", "https://user:pw@ehr.example/fhir"),
    ("FHIR_X12_FHIR_BASE", "https://ehr.example:99999/fhir"),
    ("FHIR_X12_FHIR_ALLOWED_HOSTS", "ehr.example, bad host"),
    ("FHIR_X12_FHIR_ALLOWED_HOSTS", "ehr.example/fhir"),
    ("FHIR_X12_FHIR_TOKEN", "two words"),
    ("FHIR_X12_FHIR_BASIC", "no-colon"),
    ("FHIR_X12_FHIR_BASIC", ":password"),
    ("FHIR_X12_FHIR_TIMEOUT", "soon"),
    ("FHIR_X12_FHIR_TIMEOUT", "-1"),
    ("FHIR_X12_FHIR_TIMEOUT", "0"),
    ("FHIR_X12_FHIR_TIMEOUT", "nan"),
    ("FHIR_X12_FHIR_TIMEOUT", "1,2,3"),
])
def test_config_errors_name_the_key(key: str, value: str):
    with pytest.raises(ConfigError) as info:
        UpstreamConfig.from_config({key: value})
    assert key in str(info.value)


def test_token_and_basic_together_are_refused():
    with pytest.raises(ConfigError) as info:
        UpstreamConfig.from_config({"FHIR_X12_FHIR_TOKEN": "t", "FHIR_X12_FHIR_BASIC": "u:p"})
    assert "FHIR_X12_FHIR_TOKEN" in str(info.value) and "FHIR_X12_FHIR_BASIC" in str(info.value)


# -- FHIR's Bundle rules, from a black-box audit -------------------------------------------------------------

def test_versions_are_never_confused_with_one_another(ehr: Upstream):
    """Entries at .../Patient/a/_history/3 and .../Patient/b/_history/3: each reference finds its own (the last two
    path segments, "_history/3", used to find the first of them for both)."""
    base = f"{ehr.url}/fhir/"
    child = {**RESOURCES[("Patient", "123")], "id": "child1", "name": [{"family": "DOE", "given": ["SOFIA"]}],
             "birthDate": "2012-02-02"}
    mother = {**RESOURCES[("Patient", "123")], "id": "mother"}
    coverage = {**RESOURCES[("Coverage", "456")], "subscriber": {"reference": "Patient/mother/_history/3"},
                "beneficiary": {"reference": "Patient/child1/_history/3"},
                "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                             "code": "child"}]}}
    request = ehr_example(id="r-v", patient={"reference": "Patient/child1/_history/3"},
                          insurance=[{"coverage": {"reference": "Coverage/456"}}])
    payload = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": f"{base}CoverageEligibilityRequest/r-v", "resource": request},
        {"fullUrl": f"{base}Patient/mother/_history/3", "resource": mother},
        {"fullUrl": f"{base}Patient/child1/_history/3", "resource": child},
        {"fullUrl": f"{base}Coverage/456", "resource": coverage}]}
    x12 = translate(resolve_references(payload, config(ehr))).upper()
    assert "NM1*03*1*DOE*SOFIA" in x12 and "DMG*D8*20120202" in x12
    # another version than the entry's is not that entry: it is fetched (and here the server has no such one)
    payload["entry"][0]["resource"] = {**request, "patient": {"reference": "Patient/child1/_history/4"}}
    assert problems_of(payload, config(ehr))[f"{ENTRY0}.patient"][0] == "not-found"   # the request's entry


def test_an_absolute_reference_never_matches_another_servers_entry(ehr: Upstream):
    payload = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:6a3d8a0e-0000-4000-8000-000000000009",
         "resource": ehr_example(patient={"reference": "https://evil.example/fhir/Patient/123"})},
        {"fullUrl": f"{ehr.url}/fhir/Patient/123", "resource": RESOURCES[("Patient", "123")]}]}
    assert problems_of(payload, config(ehr))[f"{ENTRY0}.patient"][0] == "forbidden"


def test_relative_references_of_another_servers_entry_are_that_servers(ehr: Upstream):
    """Type/id inside an entry from https://other-ehr.example is that server's resource: not fetched from the
    configured upstream (whose credentials and data would stand in for it), and that host is not allowed."""
    payload = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "https://other-ehr.example/fhir/CoverageEligibilityRequest/x", "resource": ehr_example()}]}
    problems = problems_of(payload, config(ehr))
    assert {code for code, _ in problems.values()} == {"forbidden"}
    assert "https://other-ehr.example/fhir/Patient/123" in problems[f"{ENTRY0}.patient"][1]
    assert ehr.paths() == []


@pytest.mark.parametrize("reference", ["Patient/123/_history/..", "Patient/..", "{url}/fhir/../x/Patient/123",
                                       "{url}/fhir/./Patient/123", "{url}/fhir/%2e%2E/x/Patient/123"])
def test_dot_segments_are_refused_not_fetched(ehr: Upstream, reference: str):
    problems = problems_of(ehr_example(patient={"reference": reference.format(url=ehr.url)}), config(ehr))
    assert problems[f"{CER}.patient"][0] == "invalid" and "'.' and '..'" in problems[f"{CER}.patient"][1]
    assert not any(path.startswith(("Patient/123/", "/x/")) for path in ehr.paths())


def test_credentials_stay_under_the_fhir_base(ehr: Upstream):
    absolute = f"{ehr.url}/other/Patient/123"
    with pytest.raises(TranslationError):   # the test server has nothing there: what matters is what was sent
        resolve_references(ehr_example(patient={"reference": absolute}), config(ehr, token="tok-1"))
    outside = [(path, auth) for path, auth in ehr.calls if path.startswith("/other/")]
    assert outside == [("/other/Patient/123", None)]
    assert any(auth == "Bearer tok-1" for path, auth in ehr.calls if path == "Coverage/456")   # the base's do
    # the base written another way (scheme in capitals, the default port spelled out) is still the base
    ehr.calls.clear()
    shouted = f"HTTP://127.0.0.1:{ehr.port}/fhir/Patient/123"
    resolve_references(ehr_example(patient={"reference": shouted}), config(ehr, token="tok-1"))
    assert all(auth == "Bearer tok-1" for _, auth in ehr.calls)


def test_an_allow_list_without_the_base_host_still_reads_the_base_servers_references(ehr: Upstream):
    """The allow-list governs absolute references: a fetched Coverage's Organization/acme is the base server's,
    however the list is set."""
    result = resolve_references(ehr_example(), config(ehr, allowed_hosts=frozenset({"fhir.partner.example"})))
    assert "Organization/acme" in ehr.paths() and "*PI*ACME01~" in translate(result)
