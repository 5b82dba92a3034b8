"""End to end on loopback: FHIR in, CORE SOAP to the simulator, FHIR out; every fault and every refusal.

Each test runs twice, with the audit store in SQLite and in PostgreSQL (skipped when it is absent).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import socket
import time
from decimal import Decimal
from typing import Any

import pytest
import requests

from gateway.fhir.rules import check_response
from tests.conftest import FIXTURES, ISSUE_TYPES
from tests.gateway.conftest import READ_TOKEN, Gateway, fhir_request, member, routing_table, with_member_id

CER = "CoverageEligibilityRequest"
RESPONSE = "CoverageEligibilityResponse"
FHIR_JSON = "application/fhir+json"


def codes(item_part: dict[str, Any] | None) -> set[str]:
    return {c.get("code") for c in (item_part or {}).get("coding", [])}


def items(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for insurance in response.get("insurance", []) for item in insurance.get("item", [])]


def benefit(response: dict[str, Any], service_type: str, network: str, kind: str, term: str | None = None
            ) -> dict[str, Any]:
    """The one benefit of ``kind`` (benefit-type code) for a service type and network (X12 1073 Y/N/W)."""
    found = [b for item in items(response)
             if service_type in codes(item.get("category")) and network in codes(item.get("network"))
             and (term is None or term in codes(item.get("term")))
             for b in item.get("benefit", []) if kind in codes(b.get("type"))]
    assert len(found) == 1, (service_type, network, kind, found)
    return found[0]


def outcome_issue(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:2000]
    assert response.headers["Content-Type"] == f"{FHIR_JSON}; charset=utf-8"   # R4 http.html: SHALL name it
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert all(issue["code"] in ISSUE_TYPES for issue in body["issue"])
    matching = [issue for issue in body["issue"] if issue["code"] == code]
    assert matching, body
    return matching[0]


# ------------------------------------------------------------------------------------------ answers from member data


def test_submit_answers_with_the_members_plan(gateway: Gateway):
    response = gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == f"{FHIR_JSON}; charset=utf-8"
    body = response.json()
    assert body["resourceType"] == RESPONSE and body["outcome"] == "complete"
    assert body["insurance"][0]["inforce"] is True
    # the EHR's Patient: the request's relative reference, under its entry's absolute fullUrl, written out in full
    assert body["patient"] == {"reference": "https://ehr.riverbend.example/fhir/Patient/pat-delgado-maria"}
    assert body["request"]["reference"].startswith(f"{CER}/")
    # every accumulator and benefit of the member record, as the 271 carried it
    record = member("delgado-maria")
    for accumulator in record["accumulators"]:
        if accumulator["specifictype"] != "deductible" or accumulator["individualaccum"] != "Y":
            continue
        deductible = benefit(body, "30", accumulator["innetwork"], "deductible", "23")
        assert Decimal(str(deductible["allowedMoney"]["value"])) == Decimal(str(accumulator["maximumamount"]))
        assert Decimal(str(deductible["usedMoney"]["value"])) == Decimal(str(accumulator["currentamount"]))
        assert deductible["allowedMoney"]["currency"] == "USD"
    for rule in record["benefits"]:
        if rule["benefittype"] == "copay":
            copay = benefit(body, rule["servicetype"], rule["innetwork"], "copay")
            assert Decimal(str(copay["allowedMoney"]["value"])) == Decimal(str(rule["amount"]))
        elif rule["benefittype"] == "coinsurance":
            share = benefit(body, rule["servicetype"], rule["innetwork"], "copay-percent")
            assert Decimal(str(share["allowedUnsignedInt"] if "allowedUnsignedInt" in share
                               else share["allowedString"])) == Decimal(str(rule["percent"]))


def test_prior_authorization_comes_back(gateway: Gateway):
    """Each procedure the member's plan authorises in advance: authorizationRequired and its URL."""
    for rule in member("washington-darnell")["priorauth"]:
        payload = copy.deepcopy(fhir_request("auth-required"))
        request = next(e["resource"] for e in payload["entry"] if e["resource"]["resourceType"] == CER)
        system = {"CPT": "http://www.ama-assn.org/go/cpt",
                  "HCPCS": "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"}[rule["codesystem"]]
        request["item"] = [{"productOrService": {"coding": [{"system": system, "code": rule["procedure"]}]}}]
        body = gateway.post(f"/{CER}/$submit", payload).json()
        assert body["resourceType"] == RESPONSE, body
        asked = [item for item in items(body) if rule["procedure"] in codes(item.get("productOrService"))]
        assert asked and all(item["authorizationRequired"] is True for item in asked), (rule, asked)
        assert {item.get("authorizationUrl") for item in asked} == {rule["url"]}


def test_terminated_coverage_is_not_in_force(gateway: Gateway):
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    record = member("nakamura-yuki")
    for entry in payload["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Coverage":
            resource["subscriberId"] = record["memberid"]
        if resource["resourceType"] == "Patient":
            resource["name"] = [{"family": record["lastname"].title(), "given": [record["firstname"].title()]}]
            resource["birthDate"] = record["dob"]
    body = gateway.post(f"/{CER}/$submit", payload).json()
    assert body["resourceType"] == RESPONSE
    assert body["insurance"][0]["inforce"] is False


def test_member_not_on_file_is_an_aaa_error(gateway: Gateway):
    body = gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", "ACM999999999")).json()
    assert body["resourceType"] == RESPONSE
    assert body["outcome"] == "error"
    reasons = {c["code"] for error in body["error"] for c in error["code"]["coding"]}
    assert "75" in reasons or "72" in reasons


def _references(value: Any) -> list[str]:
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    if not isinstance(value, dict):
        return []
    own = [value["reference"]] if isinstance(value.get("reference"), str) else []
    return own + [r for k, v in value.items() if k != "reference" for r in _references(v)]


def test_dependent_and_bundle_local_references(gateway: Gateway):
    for name in ("dependent-generic", "urn-uuid-bundle", "discovery", "contained"):
        response = gateway.post(f"/{CER}/$submit", fhir_request(name))
        assert response.status_code == 200, (name, response.text[:500])
        body = response.json()
        assert body["outcome"] == "complete" or name == "contained", name   # no such member in the simulator
        # references that only meant something inside the request are carried as contained resources, and so
        # are the ones those resources make in turn: nothing in the response points at the request's Bundle
        contained = {c["id"] for c in body.get("contained", [])}
        references = _references(body)
        assert not [r for r in references if r.startswith("urn:")], name
        assert all(r[1:] in contained for r in references if r.startswith("#")), (name, references, contained)
        assert not [c for c in body.get("contained", []) if "contained" in c], name   # dom-2
        assert check_response(body) == [], name


def test_relative_references_under_an_absolute_full_url_are_the_ehrs(gateway: Gateway):
    created = gateway.post(f"/{CER}", fhir_request("subscriber-generic"))   # entries under https://ehr.riverbend...
    assert created.status_code == 201, created.text
    stored = created.json()
    base = "https://ehr.riverbend.example/fhir/"
    assert stored["patient"]["reference"] == f"{base}Patient/pat-delgado-maria"
    assert stored["insurance"][0]["coverage"]["reference"] == f"{base}Coverage/cov-delgado-maria"
    # a client searching with its own Type/id, or the full URL, finds it; another server's same id does not
    for query, found in ((f"{base}Patient/pat-delgado-maria", True), ("Patient/pat-delgado-maria", True),
                         ("https://elsewhere.example/fhir/Patient/pat-delgado-maria", False)):
        bundle = gateway.get(f"/{CER}", params={"patient": query}).json()
        assert (stored["id"] in [e["resource"]["id"] for e in bundle.get("entry", [])]) is found, query


@pytest.mark.parametrize("name", ["urn-uuid-bundle", "canvas-insurer-empty"])
def test_a_request_created_from_a_bundle_is_stored_standing_on_its_own(gateway: Gateway, name: str):
    """urn: fullUrls, and relative ones (Canvas sends Patient/<id>): the entries are copied into contained, in the
    stored request and in its response alike, so no reference points at a Bundle that is gone."""
    created = gateway.post(f"/{CER}", fhir_request(name))
    assert created.status_code == 201, created.text
    stored = gateway.get(f"/{CER}/{created.json()['id']}").json()
    text = json.dumps(stored)
    assert "urn:uuid:" not in text   # nothing points into the Bundle that is gone
    contained = {c["id"]: c for c in stored["contained"]}
    assert contained[stored["patient"]["reference"][1:]]["resourceType"] == "Patient"
    coverage = contained[stored["insurance"][0]["coverage"]["reference"][1:]]
    assert contained[coverage["beneficiary"]["reference"][1:]]["resourceType"] == "Patient"
    assert contained[stored["insurer"]["reference"][1:]]["resourceType"] == "Organization"
    assert all(ref.startswith("#") for ref in re.findall(r'"reference": "([^"]+)"', text)), text
    answer = gateway.get(f"/{RESPONSE}", params={"request": f"{CER}/{stored['id']}"}).json()["entry"][0]["resource"]
    local = {c["id"] for c in answer.get("contained", [])}
    assert answer["patient"]["reference"][1:] in local and answer["insurer"]["reference"][1:] in local
    sent = next(e["resource"] for e in fhir_request(name)["entry"]
                if e["resource"]["resourceType"] == CER)["patient"]["reference"]
    if not sent.startswith("urn:"):   # the client's own Type/id still finds it, contained or not
        for kind in (CER, RESPONSE):
            found = gateway.get(f"/{kind}", params={"patient": sent}).json()
            assert stored["id"] in json.dumps(found.get("entry", [])), (kind, sent)


# ------------------------------------------------------------------------------------------------- create and read


def test_create_stores_and_links_the_response(gateway: Gateway):
    response = gateway.post(f"/{CER}", fhir_request("subscriber-generic"))
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location.startswith(f"{gateway.url}/{CER}/")
    created = response.json()
    assert created["resourceType"] == CER and location.endswith(created["id"])
    read = gateway.get(location)
    assert read.status_code == 200 and read.json() == created
    from datetime import datetime
    from email.utils import parsedate_to_datetime  # R4: a read SHOULD say when the resource last changed

    assert parsedate_to_datetime(read.headers["Last-Modified"]).replace(microsecond=0) == datetime.fromisoformat(
        created["meta"]["lastUpdated"].replace("Z", "+00:00")).replace(microsecond=0)
    request_id = created["id"]
    found = gateway.get(f"/{RESPONSE}", params={"request": f"{CER}/{request_id}"}).json()
    assert found["resourceType"] == "Bundle" and found["type"] == "searchset" and found["total"] == 1
    answer = found["entry"][0]["resource"]
    assert answer["request"] == {"reference": f"{CER}/{request_id}"}
    assert found["entry"][0]["fullUrl"] == f"{gateway.url}/{RESPONSE}/{answer['id']}"
    assert gateway.get(f"/{RESPONSE}/{answer['id']}").json() == answer


def test_prefer_return(gateway: Gateway):
    minimal = gateway.post(f"/{CER}", fhir_request("subscriber-generic"), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["Location"]
    outcome = gateway.post(f"/{CER}", fhir_request("subscriber-generic"),
                           headers={"Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 201
    issue = outcome.json()["issue"][0]
    assert issue["severity"] == "information" and RESPONSE in issue["details"]["text"]


def test_conditional_create_answers_a_retry_without_asking_the_payer_again(gateway: Gateway, simulator):
    payload = fhir_request("subscriber-generic")
    identifier = payload["entry"][0]["resource"]["identifier"][0]
    condition = {"If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}"}
    first = gateway.post(f"/{CER}", payload, headers=condition)
    assert first.status_code == 201, first.text
    assert first.headers["Last-Modified"].endswith(" GMT")   # http.html create: SHOULD, as a read carries it
    calls = sum(simulator.calls.values())
    again = gateway.post(f"/{CER}", payload, headers=condition)   # the client never saw the 201, and retries
    assert again.status_code == 200 and again.headers["Location"] == first.headers["Location"]
    assert again.json()["id"] == first.json()["id"] and sum(simulator.calls.values()) == calls
    minimal = gateway.post(f"/{CER}", payload, headers={**condition, "Prefer": "return=minimal"})
    assert minimal.status_code == 200 and minimal.content == b""
    gateway.post(f"/{CER}", payload)   # a second stored request with the same identifier
    outcome_issue(gateway.post(f"/{CER}", payload, headers=condition), 412, "multiple-matches")
    for bad in ("", "_count=1", "name=x", "identifier=a%00b"):
        outcome_issue(gateway.post(f"/{CER}", payload, headers={"If-None-Exist": bad}), 400, "invalid")


def test_a_conditional_create_whose_condition_matches_still_refuses_a_body_that_is_no_request(gateway: Gateway,
                                                                                             simulator):
    """The condition was looked up before the body was read as a request: with a request stored under it, a body
    {"resourceType": "Patient"} (or a request with a status that is no code) was answered 200 with the stored one,
    as if the client had sent a valid request. The batch form (ifNoneExist) did the same."""
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    identifier = payload["entry"][0]["resource"]["identifier"][0]
    identifier["value"] += "-CHECKED"
    condition = f"identifier={identifier['system']}|{identifier['value']}"
    assert gateway.post(f"/{CER}", payload, headers={"If-None-Exist": condition}).status_code == 201
    broken = copy.deepcopy(payload)
    broken["entry"][0]["resource"]["status"] = "nonsense"
    # in a batch, a path at the entry's resource is told from the entry, one inside a Bundle from the Bundle's entry
    patient = {"resourceType": "Patient", "id": "x"}
    for body, code, where, in_batch in ((patient, "structure", "resourceType", "Bundle.entry[0].resource.resourceType"),
                                        (broken, "code-invalid", "Bundle.entry[0].resource.status",
                                         "Bundle.entry[0].resource.entry[0].resource.status")):
        issue = outcome_issue(gateway.post(f"/{CER}", body, headers={"If-None-Exist": condition}), 400, code)
        assert issue["expression"] == [where]
        entry = {"request": {"method": "POST", "url": CER, "ifNoneExist": condition}, "resource": body}
        [answer] = gateway.post("/", {"resourceType": "Bundle", "type": "batch", "entry": [entry]}).json()["entry"]
        assert answer["response"]["status"].startswith("400") and "resource" not in answer
        assert answer["response"]["outcome"]["issue"][0]["expression"] == [in_batch]
    # the valid retry is still answered with the stored request
    assert gateway.post(f"/{CER}", payload, headers={"If-None-Exist": condition}).status_code == 200


def test_a_conditional_retry_after_the_payer_failed_asks_the_payer_again(gateway: Gateway, simulator):
    """The first create was a 502 (nothing created, as the client was told): its retry under the same
    If-None-Exist must create and ask again, not answer 200 with the failed request."""
    payload = fhir_request("subscriber-generic")
    identifier = payload["entry"][0]["resource"]["identifier"][0]
    identifier["value"] += "-FAILED-ONCE"
    condition = {"If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}"}
    requests.post(f"{simulator.url}/scenarios", json={"memberid": "*", "fault": "http-500", "times": 1}, timeout=5)
    failed = gateway.post(f"/{CER}", payload, headers=condition)
    assert failed.status_code == 502, failed.text
    calls = sum(simulator.calls.values())
    again = gateway.post(f"/{CER}", payload, headers=condition)
    assert again.status_code == 201, again.text
    assert again.headers["Location"] != failed.headers["Content-Location"]
    assert sum(simulator.calls.values()) == calls + 1
    third = gateway.post(f"/{CER}", payload, headers=condition)   # now there is a created one to answer with
    assert third.status_code == 200 and third.headers["Location"] == again.headers["Location"]


def test_if_none_exist_in_raw_utf8_and_with_an_empty_value(gateway: Gateway, simulator):
    payload = fhir_request("subscriber-generic")
    payload["entry"][0]["resource"]["identifier"] = [{"system": "urn:x:u", "value": "ÉLIG-1"}]
    raw = {"If-None-Exist": "identifier=urn:x:u|ÉLIG-1".encode().decode("latin-1")}   # the bytes as sent
    first = gateway.post(f"/{CER}", payload, headers=raw)
    assert first.status_code == 201, first.text
    again = gateway.post(f"/{CER}", payload, headers=raw)
    assert again.status_code == 200 and again.headers["Location"] == first.headers["Location"]
    for empty in ("identifier=", "identifier=&status=active"):
        outcome_issue(gateway.post(f"/{CER}", payload, headers={"If-None-Exist": empty}), 400, "invalid")
    not_utf8 = {"If-None-Exist": "identifier=\xff"}   # requests sends it as latin-1: the one byte 0xFF
    outcome_issue(gateway.post(f"/{CER}", payload, headers=not_utf8), 400, "invalid")


def test_conditional_creates_racing_under_one_condition_create_one_request(gateway: Gateway, simulator):
    """Six clients (or one client's retries) at once: each search finds nothing, but only one create may win; the
    others are answered with its request, and the payer is asked once."""
    from concurrent.futures import ThreadPoolExecutor

    payload = fhir_request("subscriber-generic")
    identifier = payload["entry"][0]["resource"]["identifier"][0]
    identifier["value"] += "-RACE"
    condition = {"If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}",
                 "Prefer": "return=minimal"}
    calls = sum(simulator.calls.values())
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: gateway.post(f"/{CER}", payload, headers=condition), range(6)))
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201], [a.text for a in answers]
    assert len({a.headers["Location"] for a in answers}) == 1
    assert sum(simulator.calls.values()) == calls + 1
    found = gateway.get(f"/{CER}", params={"identifier": f"{identifier['system']}|{identifier['value']}"}).json()
    assert found["total"] == 1


def test_a_condition_its_own_request_does_not_meet_creates_each_time(gateway: Gateway, simulator):
    """If-None-Exist names an identifier the body does not carry: the search never finds the stored request, so
    each create is a create (FHIR), not a 412 from the stored condition."""
    payload = fhir_request("subscriber-generic")
    condition = {"If-None-Exist": "identifier=urn:other-system|NOT-IN-THE-BODY"}
    statuses = [gateway.post(f"/{CER}", payload, headers=condition).status_code for _ in range(2)]
    assert statuses == [201, 201]


def test_a_batch_entry_with_if_none_exist_is_a_conditional_create(gateway: Gateway, simulator):
    """Bundle.entry.request.ifNoneExist is the batch form of If-None-Exist: a retried batch asks no payer twice."""
    payload = fhir_request("subscriber-generic")
    identifier = payload["entry"][0]["resource"]["identifier"][0]
    identifier["value"] += "-BATCH"
    condition = f"identifier={identifier['system']}|{identifier['value']}"
    entry = {"request": {"method": "POST", "url": CER, "ifNoneExist": condition}, "resource": payload}
    first = gateway.post("/", {"resourceType": "Bundle", "type": "batch", "entry": [entry]}).json()["entry"][0]
    assert first["response"]["status"].startswith("201"), first
    calls = sum(simulator.calls.values())
    again = gateway.post("/", {"resourceType": "Bundle", "type": "batch", "entry": [entry]}).json()["entry"][0]
    assert again["response"]["status"].startswith("200") and again["response"]["location"] == \
        first["response"]["location"] and again["resource"]["id"] == first["resource"]["id"]
    assert sum(simulator.calls.values()) == calls
    gateway.post(f"/{CER}", payload)   # a second stored request with that identifier
    refused = [{**entry, "request": {**entry["request"], "ifNoneExist": value}}
               for value in (condition, "name=x", 7)] + [
        {"request": {"method": "POST", "url": f"{CER}/$submit", "ifNoneExist": condition}, "resource": payload}]
    statuses = [e["response"]["status"][:3] for e in gateway.post("/", {"resourceType": "Bundle", "type": "batch",
                                                                         "entry": refused}).json()["entry"]]
    assert statuses == ["412", "400", "400", "400"]
    assert sum(simulator.calls.values()) == calls + 1   # only the plain create above asked the payer


def _poll(gateway: Gateway, status_url: str) -> requests.Response:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done = gateway.get(status_url)
        if done.status_code != 202:
            return done
        assert done.headers["X-Progress"] in ("received", "sent")
        time.sleep(0.05)
    raise AssertionError("the asynchronous request did not finish")


def test_respond_async(gateway: Gateway, simulator):
    requests.post(f"{simulator.url}/scenarios", json={"memberid": "*", "fault": "latency", "seconds": 0.5},
                  timeout=5)
    response = gateway.post(f"/{CER}", fhir_request("subscriber-generic"), headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    status_url = response.headers["Content-Location"]
    assert gateway.get(status_url).status_code == 202   # the payer takes 0.5 s
    done = _poll(gateway, status_url)
    assert done.status_code == 200
    bundle = done.json()
    assert bundle["type"] == "batch-response"
    entry = bundle["entry"][0]   # what the create would have answered: 201, the created request
    request_id = status_url.rsplit("/", 1)[1]
    assert entry["response"]["status"].startswith("201") and entry["response"]["location"] == f"{CER}/{request_id}"
    assert entry["resource"]["resourceType"] == CER and entry["resource"]["id"] == request_id
    found = gateway.get(f"/{RESPONSE}", params={"request": f"{CER}/{request_id}"}).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["outcome"] == "complete"
    # a failure is reported the same way, with its OperationOutcome
    failing = gateway.post(f"/{CER}", with_member_id("subscriber-generic", "SIMTIMEOUT01"),
                           headers={"Prefer": "respond-async"})
    entry = _poll(gateway, failing.headers["Content-Location"]).json()["entry"][0]
    assert entry["response"]["status"].startswith("504") and entry["response"]["outcome"]["issue"]
    assert gateway.get(f"{gateway.url}/_async/unknown-id").status_code == 404


def test_an_async_request_not_yet_sent_can_be_cancelled(make_gateway, simulator):
    gateway = make_gateway(FHIR_X12_ASYNC_WORKERS=1)   # one worker: the second request waits its turn
    requests.post(f"{simulator.url}/scenarios", json={"memberid": "*", "fault": "latency", "seconds": 0.8},
                  timeout=5)
    before = _payer_calls(simulator)
    first = gateway.post(f"/{CER}", fhir_request("subscriber-generic"), headers={"Prefer": "respond-async"})
    second = gateway.post(f"/{CER}", fhir_request("subscriber-generic"), headers={"Prefer": "respond-async"})
    first_url, second_url = first.headers["Content-Location"], second.headers["Content-Location"]
    deadline = time.monotonic() + 5
    while gateway.get(first_url).headers.get("X-Progress") != "sent" and time.monotonic() < deadline:
        time.sleep(0.02)
    in_flight = gateway.session.delete(first_url, timeout=10)   # the payer has it: it cannot be called back
    assert in_flight.status_code == 409 and in_flight.json()["issue"][0]["code"] == "conflict"
    cancelled = gateway.session.delete(second_url, timeout=10)
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["issue"][0]["severity"] == "information"
    assert gateway.get(second_url).status_code == 404
    assert _poll(gateway, first_url).status_code == 200
    pending = gateway.app.extensions["fhir_x12"]["pending"]
    deadline = time.monotonic() + 5
    while pending and time.monotonic() < deadline:   # the worker comes to the cancelled one, and lets it be
        time.sleep(0.02)
    assert not pending and _payer_calls(simulator) - before == 1
    store = gateway.app.extensions["fhir_x12"]["service"].store
    record = store.record(second_url.rsplit("/", 1)[1])
    assert record.status == "cancelled" and record.sent_at is None and record.x12_request is None
    assert record.error["issue"][0]["details"]["text"].startswith("cancelled by the client")
    assert gateway.session.delete(second_url, timeout=10).status_code == 404   # cancelled: the URL is gone
    # a read-only token may not; a finished one's URL is released (then 404), its records stay; unknown: 404
    read_only = requests.delete(first_url, headers={"Authorization": f"Bearer {READ_TOKEN}"}, timeout=10)
    assert read_only.status_code == 403
    first_id = first_url.rsplit("/", 1)[1]
    finished = gateway.session.delete(first_url, timeout=10)
    assert finished.status_code == 202 and finished.json()["issue"][0]["details"]["text"].startswith("released")
    gone = gateway.get(first_url)
    assert gone.status_code == 404 and f"{CER}/{first_id}" in gone.text
    assert gateway.session.delete(first_url, timeout=10).status_code == 404
    assert gateway.get(f"/{CER}/{first_id}").status_code == 200
    assert gateway.get(f"/{RESPONSE}", params={"request": f"{CER}/{first_id}"}).json()["total"] == 1
    assert store.record(first_id).released_at is not None
    assert gateway.session.delete(f"{gateway.url}/_async/unknown", timeout=10).status_code == 404


def test_async_refusals_are_immediate(gateway: Gateway):
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    payload["entry"][0]["resource"]["status"] = "draft"
    response = gateway.post(f"/{CER}", payload, headers={"Prefer": "respond-async"})
    outcome_issue(response, 422, "business-rule")


def test_canvas_style_request_resolved_upstream(gateway: Gateway, upstream):
    """Bare references, insurer {} (the payer comes from Coverage.payor): resolved on the EHR's server."""
    calls = upstream.app.config["calls"]
    calls.clear()
    request = {"resourceType": CER, "status": "active", "purpose": ["benefits"],
               "patient": {"reference": "Patient/pat-delgado-maria"}, "created": "2025-03-10T09:15:00-05:00",
               "insurer": {}, "provider": {"reference": "Organization/org-riverbend"},
               "insurance": [{"coverage": {"reference": "Coverage/cov-delgado-maria"}}]}
    response = gateway.post(f"/{CER}", request)
    assert response.status_code == 201, response.text
    assert {"Patient/pat-delgado-maria", "Coverage/cov-delgado-maria", "Organization/org-acme",
            "Organization/org-riverbend"} <= set(calls)
    answer = gateway.get(f"/{RESPONSE}", params={"request": f"{CER}/{response.json()['id']}"}).json()
    assert answer["total"] == 1 and answer["entry"][0]["resource"]["outcome"] == "complete"


# Canvas's documented create, as its docs print it: no provider at all (insurer {} as its docs tell clients to send)
CANVAS_EXAMPLE = {"resourceType": CER, "status": "active", "purpose": ["benefits"],
                  "patient": {"reference": "Patient/pat-delgado-maria"}, "created": "2021-08-27", "insurer": {},
                  "insurance": [{"focal": True, "coverage": {"reference": "Coverage/cov-delgado-maria"}}]}
NPI = "http://hl7.org/fhir/sid/us-npi"


def test_canvas_example_without_provider_names_the_configured_information_receiver(make_gateway, tmp_path):
    receiver = {"npi": "1245319599", "name": "Riverbend Family Practice", "taxonomy": "261QP2300X"}
    gateway = make_gateway(FHIR_X12_ROUTING=routing_table(tmp_path, timeout_seconds=1.0, budget_seconds=6,
                                                          information_receiver=receiver))
    response = gateway.post(f"/{CER}", CANVAS_EXAMPLE)
    assert response.status_code == 201, response.text
    stored = gateway.get(f"/{CER}/{response.json()['id']}").json()
    assert stored["provider"]["identifier"] == {"system": NPI, "value": "1245319599"}   # whom the 270 asked for
    found = gateway.get(f"/{RESPONSE}", params={"request": f"{CER}/{stored['id']}"}).json()
    answer = found["entry"][0]["resource"]
    assert answer["outcome"] == "complete" and answer["requestor"]["identifier"]["value"] == "1245319599"
    sources = [part["valueString"] for note in answer["extension"] for part in note["extension"]
               if part["url"] == "source"]
    assert f"{CER}.provider" in sources   # the substitution is on record in the response
    record = gateway.app.extensions["fhir_x12"]["service"].store.record(stored["id"])
    assert "NM1*1P*2*RIVERBEND FAMILY PRACTICE*****XX*1245319599~PRV*PE*PXC*261QP2300X~" in record.x12_request
    searched = gateway.get(f"/{CER}", params={"provider:identifier": f"{NPI}|1245319599"}).json()
    assert [e["resource"]["id"] for e in searched["entry"]] == [stored["id"]]


def test_canvas_example_without_provider_or_configured_receiver_is_422_naming_the_provider(gateway: Gateway):
    response = gateway.post(f"/{CER}", CANVAS_EXAMPLE)
    issues = response.json()["issue"]
    assert response.status_code == 422
    assert any(f"{CER}.provider" in (issue.get("expression") or [""])[0] for issue in issues), issues


def test_what_the_270_could_not_carry_is_a_process_note_of_the_response(gateway: Gateway):
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    payload["entry"][0]["resource"]["priority"] = {"coding": [{"code": "stat"}]}
    response = gateway.post(f"/{CER}/$submit", payload)
    assert response.status_code == 200, response.text
    notes = {part["valueString"]: note for note in response.json().get("extension", [])
             for part in note["extension"] if part["url"] == "source"}
    assert f"{CER}.priority" in notes
    texts = [p["valueString"] for p in notes[f"{CER}.priority"]["extension"] if p["url"] == "text"]
    assert texts == ["priority has no place in a 270"]


def test_what_the_payer_returns_of_a_person_beyond_the_270_is_a_process_note(gateway: Gateway):
    """The response refers to the request's Patient and Coverage: the simulator's echo of the 270's 2100C is no note;
    what it returns beyond it (the subscriber's birth date, the 270 sent none; the member id a discovery found) is; a
    name without the middle one the 270 sent says nothing new, and is none, nor is the dependent's INS saying the
    relationship the request's Coverage gives (child: the 270 sent it as the 2100D loop)."""
    def person_notes(name: str) -> list[str]:
        response = gateway.post(f"/{CER}/$submit", fhir_request(name))
        assert response.status_code == 200, response.text
        return [p["valueString"] for note in response.json().get("extension", []) for p in note["extension"]
                if p["url"] == "text" and p["valueString"].startswith("the payer's ")
                and "271 has a defect" not in p["valueString"]]

    assert person_notes("subscriber-generic") == []
    coverage, patient = ("(not carried: the response refers to the request's Coverage)",
                         "(not carried: the response refers to the request's Patient)")
    assert person_notes("dependent-generic") == [
        f"the payer's birth date and gender for the subscriber: 1981-09-30, male {coverage}"]
    assert person_notes("discovery") == [
        f"the payer's name and member id for the patient: PRZYBYLSKI, TOMASZ; ACM389420716 {patient}"]
    assert person_notes("subscriber-eq-repetitions") == []   # the 270 sent PETERSEN*ERIK*L, the 271 PETERSEN*ERIK


def test_a_dependents_ins_echoing_a_coverage_fetched_upstream_is_no_note(gateway: Gateway, upstream):
    """The request's Coverage lives on the EHR's server, so the response holds no copy of it: the relationship the
    270 was built by (child, sent as the 2100D loop) still tells the simulator's dependent INS from new data."""
    coverage = copy.deepcopy(next(e["resource"] for e in fhir_request("dependent-generic")["entry"]
                                  if e["resource"]["resourceType"] == "Coverage"))
    coverage["id"] = "cov-dependent-upstream"
    for name in ("beneficiary", "subscriber"):   # the EHR's own references, relative to its base
        coverage[name] = {"reference": "Patient/" + coverage[name]["reference"].rsplit(":", 1)[1]}
    coverage["payor"] = [{"reference": "Organization/" + p["reference"].rsplit(":", 1)[1]} for p in coverage["payor"]]
    upstream.app.config["resources"][("Coverage", coverage["id"])] = coverage
    request = {"resourceType": CER, "status": "active", "purpose": ["benefits"], "created": "2025-03-10",
               "patient": coverage["beneficiary"], "insurer": coverage["payor"][0],
               "provider": {"reference": "Organization/7a9c1e3f-5b7d-4f9a-b1c3-d5e7f9a1b307"},
               "insurance": [{"coverage": {"reference": f"Coverage/{coverage['id']}"}}]}
    response = gateway.post(f"/{CER}/$submit", request)
    assert response.status_code == 200, response.text
    texts = [p["valueString"] for note in response.json().get("extension", []) for p in note["extension"]
             if p["url"] == "text" and p["valueString"].startswith("the payer's ")]
    assert texts and not [t for t in texts if t.startswith("the payer's relationship")], texts


def test_parameters_wrapper_is_accepted(gateway: Gateway):
    wrapped = {"resourceType": "Parameters",
               "parameter": [{"name": "resource", "resource": fhir_request("subscriber-generic")}]}
    assert gateway.post(f"/{CER}/$submit", wrapped).json()["resourceType"] == RESPONSE


@pytest.mark.parametrize(("parameter", "where", "words"), [
    (5, "Parameters.parameter", "one parameter named 'resource'"),
    ([{"name": "patient", "valueString": "x"}], "Parameters.parameter[0]", "named 'patient'"),
    ([{"name": "resource"}], "Parameters.parameter[0].resource", "holds no resource"),
    ([{"name": "resource", "resource": {"resourceType": "Patient"}}] * 2, "Parameters.parameter[1]", "one 'resource'"),
])
def test_a_parameters_body_that_is_not_one_resource_is_400_naming_where(gateway: Gateway, parameter, where, words):
    body = {"resourceType": "Parameters", "parameter": parameter}
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", body), 400, "structure")
    assert issue["expression"] == [where] and words in issue["details"]["text"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": body},
        {"request": {"method": "POST", "url": f"{CER}/%24submit"}, "resource": fhir_request("subscriber-generic")}]}
    entries = gateway.post("/", batch).json()["entry"]   # one entry's bad wrapper does not sink the batch
    assert entries[0]["response"]["status"].startswith("400")
    assert entries[0]["response"]["outcome"]["issue"][0]["expression"] == [f"Bundle.entry[0].resource.{where[11:]}"]
    assert entries[1]["response"]["status"].startswith("200")


def test_a_name_twice_in_one_object_is_400(gateway: Gateway):
    body = json.dumps(fhir_request("subscriber-generic")).replace(
        '"subscriberId": "ACM482193057"', '"subscriberId": "ACM482193057", "subscriberId": "WRONG0000001"')
    assert "WRONG0000001" in body
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", data=body.encode()), 400, "structure")
    assert "'subscriberId' twice" in issue["details"]["text"]


def test_null_members_and_empty_arrays_are_400_naming_each(gateway: Gateway):
    payload = fhir_request("subscriber-generic")
    payload["entry"][0]["resource"].update(servicedDate=None, extension=[], insurer={})
    response = gateway.post(f"/{CER}/$submit", payload)
    assert response.status_code == 400, response.text
    issues = {i["expression"][0]: i["details"]["text"] for i in response.json()["issue"]}
    assert set(issues) == {"Bundle.entry[0].resource.servicedDate", "Bundle.entry[0].resource.extension"}
    assert "null is not a FHIR value" in issues["Bundle.entry[0].resource.servicedDate"]
    assert "empty array" in issues["Bundle.entry[0].resource.extension"]


# ------------------------------------------------------------------------------------------------ payer faults


@pytest.mark.parametrize(("member_id", "status", "code", "words"), [
    ("SIMTIMEOUT01", 504, "timeout", "in time"),
    ("SIMHTTP50003", 502, "transient", "500"),
    ("SIMHTTP50304", 502, "transient", "503"),
    ("SIMBAD271006", 502, "transient", "not X12"),
    ("SIMREJ999007", 502, "processing", "999"),
    ("SIMTA1000008", 502, "processing", "TA1"),
    ("SIMTRACE0009", 502, "processing", "does not belong"),
])
def test_payer_faults(gateway: Gateway, simulator, member_id: str, status: int, code: str, words: str):
    before = _payer_calls(simulator)
    response = gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", member_id))
    assert _payer_calls(simulator) - before == 1   # none of these is retried: the payer may have acted on it
    issue = outcome_issue(response, status, code)
    assert words in json.dumps(response.json())
    assert issue["severity"] in ("error", "fatal")
    # the failure is on record with what was sent (and the acknowledgment, when there was one)
    store = gateway.app.extensions["fhir_x12"]["service"].store
    records, total = store.search_requests({}, 5, 0)
    record = store.record(records[0]["id"])
    assert record.status == "failed" and record.http_status == status and record.x12_request.startswith("ISA")
    if member_id in ("SIMREJ999007", "SIMTA1000008"):
        assert record.x12_response and ("IK5" in record.x12_response or "TA1" in record.x12_response)


def test_a_defective_but_readable_271_is_answered_with_its_defect_on_record(gateway: Gateway):
    response = gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", "SIMCOUNT0010"))
    assert response.status_code == 200, response.text
    notes = [{part["url"]: part.get("valueString") for part in note["extension"]}
             for note in response.json().get("extension", [])]
    defects = [n for n in notes if (n.get("text") or "").startswith("the payer's 271 has a defect")]
    assert defects and "SE" in defects[0]["text"] and defects[0]["source"].startswith("271 ST ")


def test_slow_payer_within_timeout(make_gateway):
    gateway = make_gateway(FHIR_X12_ROUTING=None)   # the shipped routing table: 15 s read timeout
    response = gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", "SIMSLOW00002"))
    assert response.status_code == 200, response.text


def test_aaa_42_is_retried_then_reported(gateway: Gateway, simulator):
    response = gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", "SIMAAA420005"))
    assert response.status_code == 200
    body = response.json()
    assert body["outcome"] == "error"
    assert "42" in {c["code"] for error in body["error"] for c in error["code"]["coding"]}
    # the rejection (at 2100A: no patient loop, no trace) still answers this request about this patient
    assert body["request"]["reference"].startswith(f"{CER}/")
    sent = fhir_request("subscriber-generic")["entry"][0]["resource"]["patient"]["reference"]
    assert body["patient"] == {"reference": f"https://ehr.riverbend.example/fhir/{sent}"}
    # a Bundle of urn:uuid entries: the response holds copies of what it references, and no copy of the coverage
    # it has no insurance for (dom-3; it was kept, referenced by nothing)
    local = gateway.post(f"/{CER}/$submit", with_member_id("urn-uuid-bundle", "SIMAAA420005")).json()
    assert local["outcome"] == "error" and "insurance" not in local
    assert check_response(local) == []


def test_data_errors_are_not_retried(gateway: Gateway, simulator):
    before = _payer_calls(simulator)
    body = gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", "ACM000000072")).json()
    assert body["outcome"] == "error"
    assert _payer_calls(simulator) - before == 1


def _payer_calls(simulator) -> int:
    return simulator.calls["/core/soap"]


def test_breaker_opens_and_closes(gateway: Gateway, simulator):
    requests.post(f"{simulator.url}/scenarios", json={"memberid": "*", "fault": "http-500", "times": 3}, timeout=5)
    for _ in range(3):
        assert gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic")).status_code == 502
    refused = gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"))
    outcome_issue(refused, 503, "transient")
    assert int(refused.headers["Retry-After"]) >= 1
    time.sleep(0.6)   # reset_seconds 0.5: one trial goes through and, answered, closes the breaker
    assert gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic")).status_code == 200
    assert gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic")).status_code == 200
    # the operator sees it: ACME01's breaker opened once
    assert 'fhir_x12_payer_circuit_opened_total{payer="ACME01"} 1.0' in gateway.get("/metrics").text


# -------------------------------------------------------------------------------------------------- refusals (4xx)


def test_unresolvable_references_are_named(gateway: Gateway):
    request = {"resourceType": CER, "status": "active", "purpose": ["benefits"],
               "patient": {"reference": "Patient/nobody"}, "created": "2025-03-10", "insurer": {},
               "provider": {"reference": "Organization/org-riverbend"},
               "insurance": [{"coverage": {"reference": "Coverage/none-such"}}]}
    response = gateway.post(f"/{CER}/$submit", request)
    assert response.status_code == 422, response.text
    text = json.dumps(response.json())
    assert "Patient/nobody" in text and "Coverage/none-such" in text
    assert {i["code"] for i in response.json()["issue"]} <= ISSUE_TYPES


def test_missing_member_id(gateway: Gateway):
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    for entry in payload["entry"]:
        if entry["resource"]["resourceType"] == "Coverage":
            del entry["resource"]["subscriberId"]
    response = gateway.post(f"/{CER}/$submit", payload)
    assert response.status_code == 422
    assert "member id" in json.dumps(response.json())


def test_a_refusal_names_the_element_where_the_client_sent_the_resource(gateway: Gateway, simulator):
    """A problem of a Coverage the client sent as a Bundle entry or contained in the request was said from the
    Coverage's own root (Coverage.subscriberId): an expression naming nothing in the body sent. One read from the
    EHR's FHIR server, which the client did not send, keeps its own root, with the reference the client sent for it."""
    before = sum(simulator.calls.values())
    bundle = copy.deepcopy(fhir_request("subscriber-generic"))
    bundle["entry"][2]["resource"]["subscriberId"] = "ACM*482193057"
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", bundle), 422, "value")
    assert issue["expression"] == ["Bundle.entry[2].resource.subscriberId"]
    assert issue["diagnostics"] == "X12 2100C NM109"
    contained = copy.deepcopy(fhir_request("contained"))
    contained["contained"][1]["subscriberId"] = "LHA*318820546"
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", contained), 422, "value")
    assert issue["expression"] == [f"{CER}.contained[1].subscriberId"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [_submit_entry(contained), _submit_entry(bundle)]}
    entries = gateway.post("/", batch).json()["entry"]
    assert [e["response"]["outcome"]["issue"][0]["expression"] for e in entries] == [
        ["Bundle.entry[0].resource.contained[1].subscriberId"],
        ["Bundle.entry[1].resource.entry[2].resource.subscriberId"]]
    # the Coverage and the Patient from the EHR's server: another patient's coverage
    fetched = {"resourceType": CER, "status": "active", "purpose": ["benefits"],
               "patient": {"reference": "Patient/pat-petersen-erik"}, "created": "2025-03-10T09:15:00-05:00",
               "insurer": {}, "provider": {"reference": "Organization/org-riverbend"},
               "insurance": [{"coverage": {"reference": "Coverage/cov-delgado-maria"}}]}
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", fetched), 422, "business-rule")
    assert issue["expression"] == ["Coverage.beneficiary", f"{CER}.insurance[0].coverage"]
    assert f"(in the Coverage fetched for {CER}.insurance[0].coverage: the request did not hold it)" in \
        issue["details"]["text"]
    assert sum(simulator.calls.values()) == before   # none went to the payer


def test_wrong_resource_type(gateway: Gateway):
    outcome_issue(gateway.post(f"/{CER}/$submit", {"resourceType": "Patient", "id": "x"}), 400, "structure")


@pytest.mark.parametrize(("kind", "words"), [(False, "not a boolean"), ("Coding", "a FHIR data type"),
                                             ("Resource", "abstract base")])
def test_an_entry_whose_resource_type_names_no_resource_is_400_at_its_resource_type(gateway: Gateway, kind, words):
    """resourceType false on the Coverage entry was answered with Python's words ("unsupported operand type(s) for
    +: 'bool' and 'str'") at the entry; "Coding" or "Resource" there passed the structural check."""
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    payload["entry"][2]["resource"]["resourceType"] = kind
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", payload), 400, "structure")
    assert issue["expression"] == ["Bundle.entry[2].resource.resourceType"]
    assert words in issue["details"]["text"]


@pytest.mark.parametrize(("change", "path", "code", "words"), [
    (lambda entries: entries[2].update(resource=5), "Bundle.entry[2].resource", "structure", "not a number"),
    (lambda entries: entries[2].pop("resource"), "Bundle.entry[2].resource", "required", "bdl-5"),
    (lambda entries: entries.append(copy.deepcopy(entries[1])), "Bundle.entry[5].fullUrl", "structure", "bdl-7"),
])
def test_an_entry_without_a_resource_or_under_a_taken_full_url_is_400_naming_it(gateway: Gateway, change, path, code,
                                                                               words):
    """The Coverage entry's resource 5 (or none) was a 422 that the EHR's host may not be asked for the Coverage
    (with the host allowed, the EHR's copy stood in for the client's); a second Patient entry under the same
    fullUrl was answered 200 with one of the two."""
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    change(payload["entry"])
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", payload), 400, code)
    assert issue["expression"] == [path] and words in issue["details"]["text"]


def test_an_unknown_element_on_the_bundle_itself_is_refused(gateway: Gateway):
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    payload["colour"] = "blue"
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", payload), 400, "structure")
    assert issue["expression"] == ["Bundle.colour"]


def test_structurally_invalid_request(gateway: Gateway):
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    payload["entry"][0]["resource"]["created"] = "yesterday"
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", payload), 400, "value")
    assert issue["expression"] == ["Bundle.entry[0].resource.created"]   # the request's entry: the root is Bundle


def test_ambiguous_contained_resources_are_400(gateway: Gateway):
    payload = fhir_request("contained")
    payload["contained"].append({**payload["contained"][0], "name": [{"family": "Other", "given": ["Eve"]}]})
    payload["contained"][1]["contained"] = [{"resourceType": "Patient", "id": "inner"}]
    payload["id"] = "x" * 65
    response = gateway.post(f"/{CER}/$submit", payload)
    assert response.status_code == 400, response.text
    found = {issue["expression"][0]: issue["details"]["text"] for issue in response.json()["issue"]}
    assert "ambiguous" in found[f"{CER}.contained[4].id"]
    assert "dom-2" in found[f"{CER}.contained[1].contained"]
    assert "64 characters" in found[f"{CER}.id"]


def test_a_bundle_id_longer_than_64_characters_is_400_at_bundle_id(gateway: Gateway, simulator):
    """FHIR's id is 1 to 64 characters; a Bundle's was accepted up to the model's 255 (and the payer asked), where the
    request's own id was refused at 65 (above)."""
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    payload["id"] = "b" * 65
    before = sum(simulator.calls.values())
    response = gateway.post(f"/{CER}/$submit", payload)
    issue = outcome_issue(response, 400, "value")
    assert issue["expression"] == ["Bundle.id"] and "64 characters" in issue["details"]["text"]
    assert len(response.json()["issue"]) == 1 and sum(simulator.calls.values()) == before
    payload["id"] = "b" * 64
    assert gateway.post(f"/{CER}/$submit", payload).status_code == 200


@pytest.mark.parametrize(("bundle_id", "words"), [
    ("b" * 65, "an id is at most 64 characters"),
    ("b b", "'b b' is not a FHIR id"),
    (7, "expected a JSON string here, not a number"),
])
def test_a_batch_bundle_whose_id_is_no_fhir_id_is_400_at_bundle_id(gateway: Gateway, bundle_id, words):
    """The batch Bundle's own elements go through no model: its id was not checked at all."""
    entry = {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": fhir_request("subscriber-generic")}
    issue = outcome_issue(gateway.post("/", {"resourceType": "Bundle", "id": bundle_id, "type": "batch",
                                             "entry": [entry]}), 400, "value")
    assert issue["expression"] == ["Bundle.id"] and words in issue["details"]["text"]


def expressions(response: requests.Response) -> dict[str, str]:
    """Each issue's expression and its words."""
    return {issue["expression"][0]: issue["details"]["text"] for issue in response.json()["issue"]}


def test_a_batch_bundles_own_elements_are_checked_and_refused_at_their_paths(gateway: Gateway, simulator):
    """Apart from its id, the batch Bundle's own elements went through no check: a timestamp that is no instant, a
    meta that is no object, an element FHIR does not have, total as a string and a link without its url were all
    answered 200 (and every payer asked)."""
    entry = {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": fhir_request("subscriber-generic")}
    before = sum(simulator.calls.values())
    response = gateway.post("/", {"resourceType": "Bundle", "type": "batch", "timestamp": "yesterday", "meta": 5,
                                  "colour": "blue", "total": "1", "link": [{"relation": "self"}], "entry": [entry]})
    outcome_issue(response, 400, "structure")
    found = expressions(response)
    assert set(found) == {"Bundle.timestamp", "Bundle.meta", "Bundle.colour", "Bundle.total", "Bundle.link[0].url"}
    assert "not a FHIR instant" in found["Bundle.timestamp"] and "not part of the resource" in found["Bundle.colour"]
    assert sum(simulator.calls.values()) == before
    # a Bundle without its type is no Bundle at all (400, as any missing required element), not an unsupported one
    issue = outcome_issue(gateway.post("/", {"resourceType": "Bundle", "entry": [entry]}), 400, "required")
    assert issue["expression"] == ["Bundle.type"]
    fine = {"resourceType": "Bundle", "id": "batch-1", "type": "batch", "timestamp": "2025-03-10T09:15:00Z",
            "meta": {"tag": [{"system": "urn:example:tags", "code": "nightly"}]}, "entry": [entry]}
    assert gateway.post("/", fine).json()["entry"][0]["response"]["status"].startswith("200")


def test_a_batch_entrys_own_elements_that_are_no_fhir_answer_that_entry_alone(gateway: Gateway):
    """An entry's own elements are held to FHIR as the Bundle's are; a bad one is that entry's 400, not the batch's
    (as an entry without a request, or with a bad Parameters wrapper, is)."""
    good = {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": fhir_request("subscriber-generic")}
    bad = {"fullUrl": 7, "shade": "dark", "request": {"method": "POST", "url": f"{CER}/$submit"},
           "resource": fhir_request("subscriber-generic")}
    response = gateway.post("/", {"resourceType": "Bundle", "type": "batch", "entry": [bad, good]})
    assert response.status_code == 200, response.text
    first, second = response.json()["entry"]
    assert first["response"]["status"].startswith("400") and second["response"]["status"].startswith("200")
    issues = {i["expression"][0]: i["code"] for i in first["response"]["outcome"]["issue"]}
    assert issues == {"Bundle.entry[0].fullUrl": "value", "Bundle.entry[0].shade": "structure"}


def test_a_parameters_wrappers_own_elements_are_checked_and_refused_at_their_paths(gateway: Gateway, simulator):
    """$submit's Parameters were read for their one 'resource' parameter only: their id, meta, unknown elements and
    a value beside the resource (ignored without a word) passed unchecked."""
    request = fhir_request("subscriber-generic")
    before = sum(simulator.calls.values())
    body = {"resourceType": "Parameters", "id": "p p", "meta": {"lastUpdated": "today"}, "colour": "blue",
            "parameter": [{"name": "resource", "resource": request, "shade": 2}]}
    response = gateway.post(f"/{CER}/$submit", body)
    outcome_issue(response, 400, "structure")
    assert set(expressions(response)) == {"Parameters.id", "Parameters.meta.lastUpdated", "Parameters.colour",
                                          "Parameters.parameter[0].shade"}
    beside = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": request,
                                                           "valueString": "also this"}]}
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", beside), 400, "structure")
    assert issue["expression"] == ["Parameters.parameter[0].valueString"] and "inv-1" in issue["details"]["text"]
    assert sum(simulator.calls.values()) == before
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": body},
        {"request": {"method": "POST", "url": f"{CER}/$submit"},
         "resource": {"resourceType": "Parameters", "id": "p-1", "meta": {"lastUpdated": "2025-03-10T09:15:00Z"},
                      "parameter": [{"name": "resource", "resource": request}]}}]}
    first, second = gateway.post("/", batch).json()["entry"]
    assert {i["expression"][0] for i in first["response"]["outcome"]["issue"]} == {
        "Bundle.entry[0].resource.id", "Bundle.entry[0].resource.meta.lastUpdated", "Bundle.entry[0].resource.colour",
        "Bundle.entry[0].resource.parameter[0].shade"}
    assert first["response"]["status"].startswith("400") and second["response"]["status"].startswith("200")


def _submit_entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": resource}


def _wrapped(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": resource}]}


def test_a_problem_inside_a_parameters_wrapped_request_is_told_from_where_the_client_sent_it(gateway: Gateway,
                                                                                              simulator):
    """Inside $submit's Parameters, the request's problems were said from its own root (CoverageEligibilityRequest.x),
    an expression that names nothing in the body the client sent; a request inside a batch entry the same."""
    before = sum(simulator.calls.values())
    bogus = {**fhir_request("contained"), "status": "bogus"}
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", _wrapped(bogus)), 400, "code-invalid")
    assert issue["expression"] == ["Parameters.parameter[0].resource.status"]
    # a translation problem (422), with its X12 location: the second modifier of the first item
    modifiers = {**fhir_request("contained"), "item": [
        {"productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
         "modifier": [{"coding": [{"code": "25"}]}, {"coding": [{"code": "x"}]}]}]}
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", _wrapped(modifiers)), 422, "value")
    assert issue["expression"] == ["Parameters.parameter[0].resource.item[0].modifier[1]"]
    assert issue["diagnostics"] == "X12 2110C EQ02-4"
    # a Bundle in the Parameters: its entries' paths go under it
    bundle = fhir_request("subscriber-generic")
    bundle["entry"][1]["resource"]["birthDate"] = 19780514
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", _wrapped(bundle)), 400, "value")
    assert issue["expression"] == ["Parameters.parameter[0].resource.entry[1].resource.birthDate"]

    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        _submit_entry(_wrapped(bogus)), _submit_entry(bogus), _submit_entry(_wrapped(bundle)),
        _submit_entry(fhir_request("subscriber-generic"))]}
    entries = gateway.post("/", batch).json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["400", "400", "400", "200"]
    assert [e["response"]["outcome"]["issue"][0]["expression"] for e in entries[:3]] == [
        ["Bundle.entry[0].resource.parameter[0].resource.status"], ["Bundle.entry[1].resource.status"],
        ["Bundle.entry[2].resource.parameter[0].resource.entry[1].resource.birthDate"]]
    assert sum(simulator.calls.values()) == before + 1   # only the valid entry went to the payer


def test_every_path_of_a_bundles_refusal_starts_at_bundle(gateway: Gateway, simulator):
    """The request's own problems were said at CoverageEligibilityRequest.x while the other resources' were at
    Bundle.entry[i].resource.x: one answer, two roots. Both the structural check (400) and the 270's rules (422)."""
    before = sum(simulator.calls.values())
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    payload["entry"][0]["resource"]["created"] = "yesterday"
    payload["entry"][1]["resource"]["birthDate"] = 19780514
    response = gateway.post(f"/{CER}/$submit", payload)
    assert response.status_code == 400, response.text
    assert sorted(expressions(response)) == ["Bundle.entry[0].resource.created", "Bundle.entry[1].resource.birthDate"]
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    payload["entry"][0]["resource"]["servicedDate"] = "2025-03"
    payload["entry"][2]["resource"]["subscriberId"] = "ACM*482193057"
    response = gateway.post(f"/{CER}", payload)   # create: the same
    assert response.status_code == 422, response.text
    assert sorted(expressions(response)) == ["Bundle.entry[0].resource.servicedDate",
                                             "Bundle.entry[2].resource.subscriberId"]
    assert all(e.startswith("Bundle.") for issue in response.json()["issue"] for e in issue["expression"])
    # inside $submit's Parameters, under the Bundle the Parameters hold
    response = gateway.post(f"/{CER}/$submit", _wrapped(payload))
    assert response.status_code == 422, response.text
    assert sorted(expressions(response)) == ["Parameters.parameter[0].resource.entry[0].resource.servicedDate",
                                             "Parameters.parameter[0].resource.entry[2].resource.subscriberId"]
    assert sum(simulator.calls.values()) == before


def test_the_reference_a_fetched_resource_was_read_for_is_named_where_the_entry_sits(gateway: Gateway, simulator):
    """In a batch or Parameters answer, "(in the Coverage fetched for CoverageEligibilityRequest.insurance[0]
    .coverage: ...)" kept the request's own terms while the expressions were rewritten to where the entry sits."""
    before = sum(simulator.calls.values())
    fetched = {"resourceType": CER, "status": "active", "purpose": ["benefits"],
               "patient": {"reference": "Patient/pat-petersen-erik"}, "created": "2025-03-10T09:15:00-05:00",
               "insurer": {}, "provider": {"reference": "Organization/org-riverbend"},
               "insurance": [{"coverage": {"reference": "Coverage/cov-delgado-maria"}}]}
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", _wrapped(fetched)), 422, "business-rule")
    where = "Parameters.parameter[0].resource.insurance[0].coverage"
    assert issue["expression"] == ["Coverage.beneficiary", where]
    assert f"(in the Coverage fetched for {where}: the request did not hold it)" in issue["details"]["text"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [_submit_entry(fetched),
                                                                  _submit_entry(_wrapped(fetched))]}
    entries = gateway.post("/", batch).json()["entry"]
    for entry, where in zip(entries, ("Bundle.entry[0].resource.insurance[0].coverage",
                                      "Bundle.entry[1].resource.parameter[0].resource.insurance[0].coverage"),
                            strict=True):
        issues = entry["response"]["outcome"]["issue"]
        assert ["Coverage.beneficiary", where] in [issue["expression"] for issue in issues]
        for issue in issues:   # the Coverage's beneficiary and relationship: each names the reference as placed
            assert issue["expression"][1:] == [where]
            assert issue["details"]["text"].endswith(f"(in the Coverage fetched for {where}: the request did not "
                                                     "hold it)")
    assert sum(simulator.calls.values()) == before


def test_a_batch_is_held_to_the_bundle_invariants(gateway: Gateway, simulator):
    """bdl-1, 2, 3, 4 and 7 were not checked on a batch: a total, an entry's search or response, an entry without a
    request and two entries under one fullUrl were all answered (each entry sent to its payer)."""
    good = _submit_entry(fhir_request("subscriber-generic"))
    before = sum(simulator.calls.values())
    response = gateway.post("/", {"resourceType": "Bundle", "type": "batch", "total": 1, "entry": [good]})
    outcome_issue(response, 400, "structure")   # a problem of the Bundle itself refuses the batch
    assert list(expressions(response)) == ["Bundle.total"] and "bdl-1" in expressions(response)["Bundle.total"]
    url = "urn:uuid:3f2b8c1e-5d7a-4e69-9c0b-7a1d2e3f4a5b"
    entries = [{**good, "response": {"status": "200 OK"}}, {"resource": good["resource"]},
               {**good, "search": {"mode": "match"}}, {**good, "fullUrl": url}, {**good, "fullUrl": url}]
    answered = gateway.post("/", {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert answered.status_code == 200, answered.text
    found = answered.json()["entry"]
    assert [e["response"]["status"][:3] for e in found] == ["400", "400", "400", "200", "400"]
    issues = [(i["expression"][0], i["code"], i["details"]["text"]) for e in found if "outcome" in e["response"]
              for i in e["response"]["outcome"]["issue"]]
    assert [(where, code) for where, code, _ in issues] == [
        ("Bundle.entry[0].response", "structure"), ("Bundle.entry[1].request", "required"),
        ("Bundle.entry[2].search", "structure"), ("Bundle.entry[4].fullUrl", "structure")]
    assert [text.rsplit("(", 1)[-1] for _, _, text in issues] == ["bdl-4)", "bdl-3)", "bdl-2)", "bdl-7)"]
    assert sum(simulator.calls.values()) == before + 1


def test_a_submit_bundle_is_held_to_the_bundle_invariants(gateway: Gateway, simulator):
    """A collection Bundle with a total, and entries with a request, a response or a search, was sent to the payer."""
    payload = fhir_request("subscriber-generic")
    payload["total"] = 5
    payload["entry"][1]["request"] = {"method": "POST", "url": "Patient"}
    payload["entry"][2]["response"] = {"status": "201 Created"}
    payload["entry"][3]["search"] = {"mode": "include"}
    before = sum(simulator.calls.values())
    response = gateway.post(f"/{CER}/$submit", payload)
    outcome_issue(response, 400, "structure")
    found = expressions(response)
    assert set(found) == {"Bundle.total", "Bundle.entry[1].request", "Bundle.entry[2].response",
                          "Bundle.entry[3].search"}
    assert "bdl-1" in found["Bundle.total"] and "bdl-3" in found["Bundle.entry[1].request"]
    assert "bdl-4" in found["Bundle.entry[2].response"] and "bdl-2" in found["Bundle.entry[3].search"]
    assert sum(simulator.calls.values()) == before


def test_malformed_json(gateway: Gateway):
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", data=b'{"resourceType": '), 400, "structure")
    assert issue["severity"] == "fatal"


def test_oversized_body(make_gateway):
    gateway = make_gateway(FHIR_X12_MAX_BODY_BYTES=2048)
    payload = fhir_request("subscriber-generic")
    payload["entry"][0]["resource"]["text"] = {"status": "generated", "div": "<div>" + "x" * 4000 + "</div>"}
    outcome_issue(gateway.post(f"/{CER}/$submit", payload), 413, "too-costly")
    body = json.dumps(payload).encode()
    chunked = requests.post(f"{gateway.url}/{CER}/$submit", data=(body[i:i + 500] for i in range(0, len(body), 500)),
                            headers={"Content-Type": FHIR_JSON, **gateway.session.headers}, timeout=30)
    outcome_issue(chunked, 413, "too-costly")   # no Content-Length: refused all the same, not cut short
    # every endpoint that reads a body, not only the FHIR JSON ones: these were cut at the limit and answered
    x12 = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes() + b" " * 4096
    validated = requests.post(f"{gateway.url}/x12/$validate", data=(x12[i:i + 500] for i in range(0, len(x12), 500)),
                              headers=dict(gateway.session.headers), timeout=30)
    outcome_issue(validated, 413, "too-costly")
    form = b"patient=x&" + b"y" * 4096 + b"=1&_count=1"
    searched = requests.post(f"{gateway.url}/{CER}/_search", data=(form[i:i + 500] for i in range(0, len(form), 500)),
                             headers={"Content-Type": "application/x-www-form-urlencoded", **gateway.session.headers},
                             timeout=30)
    outcome_issue(searched, 413, "too-costly")


def test_x12_validate_has_a_smaller_body_limit_of_its_own(make_gateway):
    """pyx12 walks every segment: 2 MB of EQ segments took 44 s of CPU and 650 MB. 256 kB by default."""
    gateway = make_gateway(FHIR_X12_VALIDATE_MAX_BYTES=8192)
    x12 = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes()
    assert requests.post(f"{gateway.url}/x12/$validate", data=x12, headers=dict(gateway.session.headers),
                         timeout=30).status_code == 200
    big = x12.replace(b"EQ*30~", b"EQ*30~" * 2000)
    for data in (big, (big[i:i + 500] for i in range(0, len(big), 500))):   # with a Content-Length, and chunked
        refused = requests.post(f"{gateway.url}/x12/$validate", data=data, headers=dict(gateway.session.headers),
                                timeout=30)
        assert "larger than 8192 bytes" in outcome_issue(refused, 413, "too-costly")["details"]["text"]
    # the FHIR endpoints keep the general limit
    assert gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic")).status_code == 200


def test_a_malformed_chunked_body_is_400_not_500(gateway: Gateway):
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /{CER}/$submit HTTP/1.1\r\nHost: {host}\r\nContent-Type: {FHIR_JSON}\r\n"
                     f"Authorization: {gateway.session.headers['Authorization']}\r\nTransfer-Encoding: chunked\r\n"
                     "Connection: close\r\n\r\nZZ-not-a-size\r\n{}\r\n0\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 400 " in status_line, answer[:500]
    assert b'"structure"' in rest


def test_tokens(gateway: Gateway):
    url = f"{gateway.url}/{CER}/$submit"
    body = json.dumps(fhir_request("subscriber-generic"))
    missing = requests.post(url, data=body, headers={"Content-Type": FHIR_JSON}, timeout=10)
    outcome_issue(missing, 401, "login")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.post(url, data=body, headers={"Content-Type": FHIR_JSON, "Authorization": "Bearer nope"},
                          timeout=10)
    outcome_issue(wrong, 401, "login")
    read_only = requests.post(url, data=body, timeout=10,
                              headers={"Content-Type": FHIR_JSON, "Authorization": f"Bearer {READ_TOKEN}"})
    outcome_issue(read_only, 403, "forbidden")
    searched = requests.get(f"{gateway.url}/{CER}", headers={"Authorization": f"Bearer {READ_TOKEN}"}, timeout=10)
    assert searched.status_code == 200
    assert requests.get(f"{gateway.url}/metadata", timeout=10).status_code == 200
    assert requests.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{gateway.url}/readyz", timeout=10).status_code == 200


def test_wrong_content_type_and_method(gateway: Gateway):
    outcome_issue(gateway.post(f"/{CER}/$submit", data=b"<xml/>", headers={"Content-Type": "application/xml"}),
                  415, "not-supported")
    outcome_issue(gateway.session.delete(f"{gateway.url}/{CER}/x", timeout=10), 405, "not-supported")
    outcome_issue(gateway.get("/Patient/1"), 404, "not-found")
    outcome_issue(gateway.get(f"/{CER}/does-not-exist"), 404, "not-found")
    # operations are POSTed; one this server lacks is named as such; "//" is no alias that redirects
    get_submit = gateway.get(f"/{CER}/$submit")
    assert outcome_issue(get_submit, 405, "not-supported") and get_submit.headers["Allow"] == "POST"
    assert "no operation $validate" in outcome_issue(gateway.post(f"/{CER}/$validate", {}), 404,
                                                      "not-supported")["details"]["text"]
    assert gateway.post(f"/{CER}/abc", {}).headers["Allow"] == "GET"
    outcome_issue(gateway.session.get(f"{gateway.url}/{CER}//x", timeout=10, allow_redirects=False), 404,
                  "not-found")


@pytest.mark.parametrize(("method", "path"), [("GET", f"/{CER}/%00"), ("HEAD", f"/{CER}/a%00b"),
                                            ("GET", f"/{RESPONSE}/%00"), ("GET", "/_async/%00"),
                                            ("DELETE", "/_async/%00")])
def test_an_id_with_a_nul_character_is_not_known_in_every_store(gateway: Gateway, method: str, path: str):
    """PostgreSQL refuses a query holding a NUL: such a read was answered 503, "the audit store is unavailable;
    retry later" (and logged as a store failure), where SQLite said 404."""
    response = gateway.session.request(method, gateway.url + path, timeout=10)
    assert response.status_code == 404
    if method != "HEAD":
        outcome_issue(response, 404, "not-found")


@pytest.mark.parametrize(("headers", "words"), [
    ({"Content-Type": "application/fhir+json; charset=ISO-8859-1"}, "charset 'iso-8859-1'"),
    ({"Content-Type": "application/fhir+json; fhirVersion=3.0"}, "fhirVersion '3.0'"),
    ({"Content-Encoding": "gzip"}, "Content-Encoding 'gzip'"),
])
def test_a_body_this_server_would_misread_is_415(gateway: Gateway, headers, words):
    issue = outcome_issue(gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"), headers=headers),
                          415, "not-supported")
    assert words in issue["details"]["text"]


def test_a_utf8_byte_order_mark_and_r4_parameters_are_fine(gateway: Gateway):
    body = b"\xef\xbb\xbf" + json.dumps(fhir_request("subscriber-generic")).encode()
    headers = {"Content-Type": "application/fhir+json; charset=UTF-8; fhirVersion=4.0"}
    assert gateway.post(f"/{CER}/$submit", data=body, headers=headers).status_code == 200


def test_unknown_payer_is_422(make_gateway):
    gateway = make_gateway(FHIR_X12_PAYER_URL=None)   # only the routing table's payers
    payload = copy.deepcopy(fhir_request("subscriber-generic"))
    for entry in payload["entry"]:
        if entry["resource"]["resourceType"] == "Organization" and entry["resource"]["id"] == "org-acme":
            for identifier in entry["resource"]["identifier"]:
                if identifier.get("type"):
                    identifier["value"] = "NOSUCHPAYER"
    outcome_issue(gateway.post(f"/{CER}/$submit", payload), 422, "not-supported")


# ------------------------------------------------------------------------------------------------ batch, metadata


def test_batch(gateway: Gateway):
    bad = {"resourceType": CER, "status": "active"}
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": fhir_request("subscriber-generic")},
        {"request": {"method": "POST", "url": CER}, "resource": fhir_request("auth-required")},
        {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": bad},
        {"request": {"method": "DELETE", "url": f"{CER}/1"}},
    ]}
    response = gateway.post("/", bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert response.json()["type"] == "batch-response" and len(entries) == 4
    assert entries[0]["response"]["status"].startswith("200") and entries[0]["resource"]["resourceType"] == RESPONSE
    assert entries[0]["response"]["location"] == f"{RESPONSE}/{entries[0]['resource']['id']}"
    assert entries[1]["response"]["status"].startswith("201") and entries[1]["resource"]["resourceType"] == CER
    assert entries[1]["response"]["location"] == f"{CER}/{entries[1]['resource']['id']}"
    # bundle.html: an entry with a resource has its fullUrl
    assert entries[0]["fullUrl"] == f"{gateway.url}/{RESPONSE}/{entries[0]['resource']['id']}"
    assert entries[1]["fullUrl"] == f"{gateway.url}/{CER}/{entries[1]['resource']['id']}"
    assert entries[2]["response"]["status"].startswith("400")
    assert entries[2]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[3]["response"]["status"].startswith("422")
    outcome_issue(gateway.post("/", {"resourceType": "Bundle", "type": "transaction"}), 422, "not-supported")


def test_batch_creates_follow_prefer_return(gateway: Gateway, simulator):
    """Prefer: return= shapes each create's entry as it does a create alone; a $submit entry keeps its response."""
    payload = fhir_request("subscriber-generic")
    identifier = payload["entry"][0]["resource"]["identifier"][0]
    identifier["value"] += "-PREFER"
    condition = f"identifier={identifier['system']}|{identifier['value']}"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": CER, "ifNoneExist": condition}, "resource": payload},
        {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": fhir_request("auth-required")}]}
    minimal = gateway.post("/", bundle, headers={"Prefer": "return=minimal"}).json()["entry"]
    assert minimal[0]["response"]["status"].startswith("201") and "resource" not in minimal[0]
    assert minimal[1]["resource"]["resourceType"] == RESPONSE
    calls = sum(simulator.calls.values())
    said = gateway.post("/", bundle, headers={"Prefer": "return=OperationOutcome"}).json()["entry"]
    assert said[0]["response"]["status"].startswith("200") and "resource" not in said[0]   # the condition matched
    assert said[0]["response"]["location"] == minimal[0]["response"]["location"]
    assert "already stored" in said[0]["response"]["outcome"]["issue"][0]["details"]["text"]
    assert said[1]["resource"]["resourceType"] == RESPONSE
    assert sum(simulator.calls.values()) == calls + 1   # only the $submit asked the payer again
    fresh = {**bundle, "entry": [{"request": {"method": "POST", "url": CER},
                                  "resource": fhir_request("auth-required")}]}
    created = gateway.post("/", fresh, headers={"Prefer": "return=OperationOutcome"}).json()["entry"][0]
    assert created["response"]["status"].startswith("201") and "resource" not in created
    answer = created["response"]["outcome"]["issue"][0]["details"]["text"].rsplit(" ", 1)[1]
    assert gateway.get(f"/{answer}").json()["request"]["reference"] == created["response"]["location"]


def test_capability_statement(gateway: Gateway):
    statement = requests.get(f"{gateway.url}/metadata", timeout=10).json()
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    request_params = {p["name"]: p for p in resources[CER]["searchParam"]}
    assert set(request_params) >= {"patient", "status", "created", "insurer", "provider", "identifier"}
    assert {p["name"] for p in resources[RESPONSE]["searchParam"]} >= {"request", "patient", "outcome", "created",
                                                                         "insurer", "identifier"}
    insurer = gateway.get(f"/SearchParameter/{CER}-insurer").json()
    assert insurer["url"] == request_params["insurer"]["definition"] and insurer["base"] == [CER]
    note = gateway.get("/StructureDefinition/processNote").json()
    assert note["url"] in json.dumps(statement)
    assert any(op["name"] == "submit" for op in resources[CER]["operation"])


def test_logs_carry_no_protected_health_information(make_gateway):
    import io

    from gateway.observability import JsonLogHandler

    gateway = make_gateway()
    handler = next(h for h in logging.getLogger("gateway").handlers if isinstance(h, JsonLogHandler))
    stream = io.StringIO()
    handler.use_stream(stream)
    try:
        gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"), headers={"X-Request-ID": "trace-me-1"})
        gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", "SIMREJ999007"))
        gateway.get(f"/{CER}", params={"patient": "Patient/pat-delgado-maria", "identifier": "GW-SG-0001-1"})
    finally:
        handler.use_stream(None)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    access = [line for line in lines if line.get("logger") == "gateway.access"]
    assert len(access) == 3 and all(line["request_id"] for line in access)
    assert access[0]["request_id"] == "trace-me-1" and access[0]["payer"] == "ACME01"
    for secret in ("DELGADO", "Delgado", "MARIA", "ACM482193057", "1978-05-14", "19780514", "SIMREJ999007",
                   "ISA*", "NM1*", "pat-delgado-maria", "GW-SG-0001-1"):
        assert secret not in text, secret


def test_metrics_after_traffic(gateway: Gateway):
    gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"))
    gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", "ACM999999999"))
    gateway.post(f"/{CER}/$submit", with_member_id("subscriber-generic", "SIMHTTP50003"))
    assert requests.get(f"{gateway.url}/metrics", timeout=10).status_code == 401   # a token, as for the API
    text = gateway.get("/metrics").text

    def value(line_start: str) -> float:
        found = [line for line in text.splitlines() if line.startswith(line_start)]
        assert len(found) == 1, (line_start, found)
        return float(found[0].rsplit(" ", 1)[1])

    # the HTTP 500 is in the payer's latency too: a failing payer shows there, not only in the outcome counts
    assert value('fhir_x12_payer_seconds_bucket{le="20.0",payer="ACME01",transport="soap"}') == 3
    assert value('fhir_x12_eligibility_total{outcome="complete",payer="ACME01"}') == 1
    assert value('fhir_x12_eligibility_total{outcome="error",payer="ACME01"}') == 1
    assert value('fhir_x12_eligibility_total{outcome="unavailable",payer="ACME01"}') == 1
    assert any(line.startswith("fhir_x12_aaa_total{code=") for line in text.splitlines())
    assert value("fhir_x12_process_notes_count{") == 2
    assert value("fhir_x12_gateway_overhead_seconds_count ") == 2


# ----------------------------------------------------------------------------------------- odd input, edge paths


def test_odd_bodies_get_specific_400s(gateway: Gateway):
    outcome_issue(gateway.post(f"/{CER}/$submit", {"resourceType": "Bundle", "type": "collection", "entry": 5}),
                  400, "structure")
    outcome_issue(gateway.post(f"/{CER}/$submit", {"resourceType": "Bundle", "entry": [{"fullUrl": 7}]}), 400,
                  "structure")
    deep: dict[str, Any] = {"url": "http://example.org/x", "valueString": "x"}
    for _ in range(300):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    payload = fhir_request("subscriber-generic")
    payload["entry"][0]["resource"]["extension"] = [deep]
    outcome_issue(gateway.post(f"/{CER}/$submit", payload), 400, "too-costly")
    nul = json.dumps(with_member_id("subscriber-generic", "ACM482193057\u0000")).encode()
    outcome_issue(gateway.post(f"/{CER}/$submit", data=nul), 400, "value")
    outcome_issue(gateway.get(f"/{CER}", params={"identifier": "ACM482193057\x00"}), 400, "invalid")
    outcome_issue(gateway.get(f"/{CER}", params={"_offset": "99999999999999999999"}), 400, "invalid")
    empty = gateway.get(f"/{CER}", params={"identifier": "nothing-like-this"}).json()
    assert empty["total"] == 0 and "entry" not in empty


def test_batch_entries_that_break_do_not_sink_the_batch(gateway: Gateway):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": f"{CER}/$submit"},
         "resource": {"resourceType": "Bundle", "type": "collection", "entry": 5}},
        {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": fhir_request("subscriber-generic")},
    ]}
    entries = gateway.post("/", bundle).json()["entry"]
    assert entries[0]["response"]["status"].startswith("400")
    assert entries[1]["response"]["status"].startswith("200")
    # the entry's Bundle's own entry, not the batch's: "Bundle.entry" alone named the batch's
    assert [i["expression"] for i in entries[0]["response"]["outcome"]["issue"]] == [["Bundle.entry[0].resource.entry"]]


def test_batch_waits_within_a_payers_concurrency_limit(make_gateway, simulator, tmp_path):
    from tests.gateway.conftest import routing_table

    gateway = make_gateway(FHIR_X12_ROUTING=routing_table(tmp_path, concurrency=1, queue_seconds=0.2,
                                                          timeout_seconds=2.0, budget_seconds=8))
    requests.post(f"{simulator.url}/scenarios", json={"memberid": "*", "fault": "latency", "seconds": 0.4},
                  timeout=5)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": fhir_request("subscriber-generic")}
        for _ in range(3)]}
    entries = gateway.post("/", bundle).json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["200"] * 3


def test_local_ids_in_the_response_never_collide(gateway: Gateway):
    payload = copy.deepcopy(fhir_request("urn-uuid-bundle"))
    for entry in payload["entry"]:
        if entry["resource"]["resourceType"] != CER:
            entry["resource"]["id"] = "1"   # ids are unique per type only
    body = gateway.post(f"/{CER}/$submit", payload).json()
    assert body["resourceType"] == RESPONSE, body
    contained = {c["id"]: c for c in body.get("contained", [])}
    assert len(contained) == len(body.get("contained", []))
    assert contained[body["patient"]["reference"][1:]]["resourceType"] == "Patient"
    if body.get("insurer", {}).get("reference", "").startswith("#"):
        assert contained[body["insurer"]["reference"][1:]]["resourceType"] == "Organization"


def test_audit_trail_of_failures(gateway: Gateway, simulator):
    store = gateway.app.extensions["fhir_x12"]["service"].store

    def record_of(response: requests.Response):  # type: ignore[no-untyped-def]
        return store.record(response.headers["Content-Location"].rsplit("/", 1)[1])

    mismatch = gateway.post(f"/{CER}", with_member_id("subscriber-generic", "SIMTRACE0009"))
    record = record_of(mismatch)
    assert mismatch.status_code == 502 and record.status == "failed"
    assert record.x12_response and "TRN*2*X" in record.x12_response and record.sent_at is not None
    requests.post(f"{simulator.url}/scenarios", json={"memberid": "*", "fault": "http-500", "times": 3}, timeout=5)
    for _ in range(3):
        gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"))
    refused = gateway.post(f"/{CER}", fhir_request("subscriber-generic"))
    record = record_of(refused)
    assert refused.status_code == 503 and record.status == "failed" and record.http_status == 503
    assert record.sent_at is None and record.x12_request.startswith("ISA")   # built, stored, never sent


def test_empty_insurer_is_stored_as_the_payer_asked(gateway: Gateway):
    request = {"resourceType": CER, "status": "active", "purpose": ["benefits"],
               "patient": {"reference": "Patient/pat-delgado-maria"}, "created": "2025-03-10T09:15:00-05:00",
               "insurer": {}, "provider": {"reference": "Organization/org-riverbend"},
               "insurance": [{"coverage": {"reference": "Coverage/cov-delgado-maria"}}]}
    created = gateway.post(f"/{CER}", request).json()
    assert created["insurer"] == {"reference": "Organization/org-acme"}
    found = gateway.get(f"/{CER}", params={"insurer": "Organization/org-acme"}).json()
    assert created["id"] in {e["resource"]["id"] for e in found["entry"]}


def test_empty_insurer_with_a_bundle_local_or_contained_payor_is_stored_valid(gateway: Gateway):
    """With "insurer": {} and the Coverage's payor a urn:uuid entry, the request was stored without an insurer (which
    a CoverageEligibilityRequest must have): the 201 and every later read were invalid FHIR. The payor is now
    contained like the other Bundle-local resources; a payor only the Coverage entry itself contains (it is not
    stored) leaves the payer id the 270 went to."""
    from gateway.fhir.models import validate_structure

    payload = copy.deepcopy(fhir_request("dependent-generic"))
    request = next(e["resource"] for e in payload["entry"] if e["resource"]["resourceType"] == CER)
    request["insurer"] = {}
    created = gateway.post(f"/{CER}", payload)
    assert created.status_code == 201, created.text
    body = created.json()
    validate_structure(body)
    payer = next(c for c in body["contained"] if f"#{c['id']}" == body["insurer"]["reference"])
    assert payer["resourceType"] == "Organization" and payer["name"] == "Acme Health Plan"

    payload = copy.deepcopy(fhir_request("dependent-generic"))
    entries = {e["resource"]["resourceType"]: e["resource"] for e in payload["entry"]}
    entries[CER]["insurer"] = {}
    organization = next(e for e in payload["entry"] if e["resource"]["resourceType"] == "Organization"
                        and "payerid" in json.dumps(e["resource"]))
    payload["entry"].remove(organization)
    entries["Coverage"]["contained"] = [{**organization["resource"], "id": "payer"}]
    entries["Coverage"]["payor"] = [{"reference": "#payer"}]
    created = gateway.post(f"/{CER}", payload)
    assert created.status_code == 201, created.text
    validate_structure(created.json())
    assert created.json()["insurer"] == {"identifier": {"system": "https://fhir-x12-gateway.dev/fhir/sid/payer-id",
                                                        "value": "ACME01"}}


def test_abandoned_async_request_is_reported(gateway: Gateway):
    from datetime import UTC, datetime, timedelta

    service = gateway.app.extensions["fhir_x12"]["service"]
    prepared = service.prepare(fhir_request("subscriber-generic"), sending=False)   # queued, never run
    from sqlalchemy import update

    from gateway.store.models import EligibilityRecord

    with service.store.engine.begin() as connection:
        connection.execute(update(EligibilityRecord).where(EligibilityRecord.id == prepared.id)
                           .values(received_at=datetime.now(UTC) - timedelta(minutes=10)))
    entry = gateway.get(f"/_async/{prepared.id}").json()["entry"][0]
    assert entry["response"]["status"].startswith("500")
    assert entry["response"]["outcome"]["issue"][0]["code"] == "incomplete"


def test_headers(gateway: Gateway):
    response = gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"),
                            headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.headers["Content-Location"] == f"{gateway.url}/{RESPONSE}/{response.json()['id']}"
    assert "payer;dur=" in response.headers["Server-Timing"] and "gateway;dur=" in response.headers["Server-Timing"]
    assert len(gateway.get("/metadata").headers["X-Request-ID"]) >= 16
    minimal = gateway.post(f"/{CER}", fhir_request("subscriber-generic"), headers={"Prefer": "return=minimal"})
    assert "Content-Type" not in minimal.headers
    representation = gateway.post(f"/{CER}", fhir_request("subscriber-generic"),
                                  headers={"Prefer": "return=representation"})
    assert representation.status_code == 201 and representation.json()["resourceType"] == CER


def test_batch_size_is_capped(gateway: Gateway):
    entry = {"request": {"method": "POST", "url": f"{CER}/$submit"}, "resource": {"resourceType": CER}}
    too_many = {"resourceType": "Bundle", "type": "batch", "entry": [entry] * 101}
    outcome_issue(gateway.post("/", too_many), 422, "too-costly")
    empty = gateway.post("/", {"resourceType": "Bundle", "type": "batch"}).json()
    assert empty == {"resourceType": "Bundle", "type": "batch-response"}
