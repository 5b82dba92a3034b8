"""Content negotiation (406 for anything but FHIR R4 JSON) and anonymous reads of the conformance resources.

FHIR R4 http.html: the server answers 406 when it cannot produce a format the client accepts (``Accept`` or
``_format``, which overrides it); JSON is all this gateway speaks. Health checks and metrics are not FHIR
and are left alone.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from flask import Flask

from gateway.api.auth import CONFORMANCE_PREFIXES, init_auth
from tests.conftest import ISSUE_TYPES
from tests.gateway.conftest import Gateway, fhir_request

CER = "CoverageEligibilityRequest"
FHIR_JSON = "application/fhir+json"
FHIR_ROUTES = ("/metadata", f"/{CER}", f"/{CER}/no-such-id", "/CoverageEligibilityResponse",
               "/StructureDefinition/processNote", f"/SearchParameter/{CER}-insurer", "/_async/no-such-id")

NOT_ACCEPTABLE = ["application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir",
                  "application/fhir+json; fhirVersion=3.0", "application/fhir+json;fhirVersion=5.0, application/xml",
                  "text/html", "text/turtle", "application/fhir+json;q=0, application/xml",
                  "application/json;q=0"]
ACCEPTABLE = [None, "", FHIR_JSON, "application/json", "application/json+fhir", "*/*", "application/*",
              "application/fhir+json; fhirVersion=4.0", "application/fhir+json; charset=utf-8",
              "application/fhir+xml;q=1.0, application/fhir+json;q=0.9",
              "application/xml, application/json;q=0.1", "text/html,application/xhtml+xml,application/xml;q=0.9,"
              "*/*;q=0.8", "application/fhir+json; fhirVersion=3.0, */*;q=0.5"]


def not_acceptable(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 406, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]
    assert issue["code"] == "not-supported" and issue["code"] in ISSUE_TYPES and issue["severity"] == "error"
    assert FHIR_JSON in issue["details"]["text"]
    return issue


@pytest.mark.parametrize("accept", NOT_ACCEPTABLE)
def test_accept_without_json_is_406_on_every_fhir_route(gateway: Gateway, accept: str):
    for path in FHIR_ROUTES:
        not_acceptable(gateway.get(path, headers={"Accept": accept}))
    # writes too, before anything is stored or sent
    not_acceptable(gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"), headers={"Accept": accept}))
    not_acceptable(gateway.post("/", {"resourceType": "Bundle", "type": "batch"}, headers={"Accept": accept}))
    assert gateway.get(f"/{CER}").json()["total"] == 0


@pytest.mark.parametrize("accept", ACCEPTABLE)
def test_accept_allowing_json_gets_json(gateway: Gateway, accept: str | None):
    headers = {} if accept is None else {"Accept": accept}
    if accept is None:
        gateway.session.headers.pop("Accept", None)   # requests sends */* unless told otherwise
    for path in ("/metadata", f"/{CER}", "/StructureDefinition/processNote"):
        response = gateway.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["Content-Type"].startswith(FHIR_JSON)
    assert gateway.get(f"/{CER}/no-such-id", headers=headers).status_code == 404


@pytest.mark.parametrize("value", ["xml", "application/fhir+xml", "application/xml", "text/xml", "html", "ttl",
                                   "application/fhir+json;fhirVersion=3.0", "nonsense"])
def test_format_other_than_json_is_406(gateway: Gateway, value: str):
    for path in FHIR_ROUTES:
        not_acceptable(gateway.get(path, params={"_format": value}))
    # _format overrides Accept
    not_acceptable(gateway.get("/metadata", params={"_format": value}, headers={"Accept": FHIR_JSON}))
    not_acceptable(gateway.post(f"/{CER}/$submit?_format={value}", fhir_request("subscriber-generic")))


@pytest.mark.parametrize("value", ["json", "application/json", FHIR_JSON, "application/json+fhir",
                                   "application/fhir+json;fhirVersion=4.0"])
def test_format_json_is_answered(gateway: Gateway, value: str):
    for path in ("/metadata", f"/{CER}", "/StructureDefinition/processNote"):
        response = gateway.get(path, params={"_format": value}, headers={"Accept": "application/fhir+xml"})
        assert response.status_code == 200, (path, value, response.text[:300])
        assert response.headers["Content-Type"].startswith(FHIR_JSON)
    # an unescaped '+' in the query string arrives as a space
    assert gateway.get(f"{gateway.url}/metadata?_format=application/fhir+json").status_code == 200


def test_health_and_metrics_are_not_negotiated(gateway: Gateway):
    for path in ("/healthz", "/readyz", "/metrics"):
        response = gateway.get(path, headers={"Accept": "application/xml"}, params={"_format": "xml"})
        assert response.status_code == 200, (path, response.text[:300])


def test_capability_statement_offers_json_only(gateway: Gateway):
    statement = gateway.get("/metadata").json()
    assert statement["format"] and all("json" in f for f in statement["format"])
    assert "patchFormat" not in statement
    rest = statement["rest"][0]
    resources = {r["type"]: r for r in rest["resource"]}
    for kind in (CER, "CoverageEligibilityResponse"):
        assert "handling=lenient" in resources[kind]["documentation"]
        assert "handling=strict" in resources[kind]["documentation"]
    assert "StructureDefinition" in rest["security"]["description"]


# -- conformance resources without a token ------------------------------------------------------------------

def test_conformance_resources_are_readable_without_a_token(gateway: Gateway):
    statement = requests.get(f"{gateway.url}/metadata", timeout=10).json()
    insurer = next(p for r in statement["rest"][0]["resource"] if r["type"] == CER for p in r["searchParam"]
                   if p["name"] == "insurer")
    for path in ("/StructureDefinition/processNote", f"/SearchParameter/{CER}-insurer"):
        response = requests.get(f"{gateway.url}{path}", timeout=10)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["Content-Type"].startswith(FHIR_JSON)
        assert response.json()["resourceType"] in ("StructureDefinition", "SearchParameter")
    assert requests.get(f"{gateway.url}/SearchParameter/{CER}-insurer", timeout=10).json()["url"] == \
        insurer["definition"]
    assert requests.head(f"{gateway.url}/StructureDefinition/processNote", timeout=10).status_code == 200
    # an unknown one is simply not found; the open door is for reading conformance resources only
    assert requests.get(f"{gateway.url}/StructureDefinition/nothing", timeout=10).status_code == 404
    assert requests.post(f"{gateway.url}/StructureDefinition/processNote", data=b"{}", timeout=10,
                         headers={"Content-Type": FHIR_JSON}).status_code == 401
    for path in (f"/{CER}", f"/{CER}/x", "/StructureDefinition/processNote/_history/1", "/StructureDefinition",
                 "/metrics"):
        assert requests.get(f"{gateway.url}{path}", timeout=10).status_code == 401, path
    # a token still works there
    assert gateway.get("/StructureDefinition/processNote").status_code == 200


def test_open_prefixes_of_init_auth():
    app = Flask(__name__)
    app.config.update(TESTING=True, FHIR_X12_TOKENS="full-access-token-0123456789")
    init_auth(app, open_paths=("/metadata",), open_prefixes=CONFORMANCE_PREFIXES)

    @app.route("/StructureDefinition/<id>", methods=["GET", "POST", "DELETE"])
    @app.route("/SearchParameter/<id>", methods=["GET", "POST", "DELETE"])
    @app.route("/StructureDefinition/<id>/<more>")
    @app.route("/StructureDefinition/")
    @app.route("/Patient/<id>")
    def anything(**_: str):  # type: ignore[no-untyped-def]
        return "ok"

    client = app.test_client()
    assert client.get("/StructureDefinition/processNote").status_code == 200
    assert client.get("/SearchParameter/x").status_code == 200
    assert client.head("/SearchParameter/x").status_code == 200
    assert client.post("/StructureDefinition/processNote").status_code == 401
    assert client.delete("/SearchParameter/x").status_code == 401
    assert client.get("/StructureDefinition/a/b").status_code == 401
    assert client.get("/StructureDefinition/").status_code == 401
    assert client.get("/Patient/1").status_code == 401
