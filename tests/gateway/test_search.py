"""Search over HTTP: every parameter returns exactly the stored matches, with paging, on SQLite and PostgreSQL.

Six requests go through the whole gateway; the expected matches are worked out here from what was sent,
then every search must return exactly those ids (following ``next`` links with a small ``_count``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from tests.gateway.conftest import Gateway, fhir_request

CER = "CoverageEligibilityRequest"
RESPONSE = "CoverageEligibilityResponse"
FIXTURES = ("subscriber-generic", "auth-required", "discovery", "dependent-generic", "serviced-period",
            "practitioner-provider")


def the_request(payload: dict[str, Any]) -> dict[str, Any]:
    if payload["resourceType"] == CER:
        return payload
    return next(e["resource"] for e in payload["entry"] if e["resource"]["resourceType"] == CER)


@pytest.fixture
def stored(gateway: Gateway) -> dict[str, Any]:
    """The six transactions: what was sent, the stored request and the stored response, by fixture name."""
    out = {}
    for name in FIXTURES:
        payload = fhir_request(name)
        created = gateway.post(f"/{CER}", payload)
        assert created.status_code == 201, (name, created.text[:300])
        request = created.json()
        found = gateway.get(f"/{RESPONSE}", params={"request": f"{CER}/{request['id']}"}).json()
        assert found["total"] == 1
        out[name] = {"sent": the_request(payload), "request": request, "response": found["entry"][0]["resource"]}
    return out


STRICT = {"Prefer": "handling=strict"}
IGNORABLE = [("foo", "bar"), ("_summary", "count"), ("_elements", "id"), ("_include", f"{CER}:patient"),
             ("_revinclude", f"{RESPONSE}:request"), ("_lastUpdated", "gt2020-01-01"), ("_has:X:y:z", "1"),
             ("patient.name", "Delgado"), ("_sort:desc", "created"), ("_contained", "true")]


def search_all(gateway: Gateway, resource_type: str, params: dict[str, str] | list[tuple[str, str]]) -> list[str]:
    """Every id the search returns, two at a time, following the next links; checks total and links."""
    items = list(params.items()) if isinstance(params, dict) else list(params)
    page = gateway.get(f"/{resource_type}", params=[*items, ("_count", "2")])
    assert page.status_code == 200, page.text
    bundle = page.json()
    total, ids, pages = bundle["total"], [], 0
    while True:
        assert bundle["type"] == "searchset" and len(bundle.get("entry", [])) <= 2
        ids += [entry["resource"]["id"] for entry in bundle.get("entry", [])]
        assert all(e["search"]["mode"] == "match" for e in bundle.get("entry", []))
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        pages += 1
        if "next" not in links:
            break
        assert urlsplit(links["next"]).netloc == urlsplit(gateway.url).netloc
        bundle = gateway.get(links["next"]).json()
    assert len(ids) == total == len(set(ids))
    assert pages == max(1, -(-total // 2))
    return ids


def ids_where(stored: dict[str, Any], kind: str, predicate) -> set[str]:  # type: ignore[no-untyped-def]
    return {t[kind]["id"] for t in stored.values() if predicate(t)}


def matches(stored_reference: str | None, query: str) -> bool:
    """FHIR reference search: ``Type/id`` finds it on any server; an absolute URL finds itself or ``Type/id``."""
    if stored_reference is None:
        return False
    if "://" in query:
        return stored_reference in (query, "/".join(query.split("/")[-2:]))
    return stored_reference == query or stored_reference.endswith("/" + query)


def searched(t: dict[str, Any], field: str) -> str | None:
    """The reference a stored request is found by: its own, or, where the stored copy contains a resource the
    client sent in the Bundle under a relative fullUrl, the client's ``Type/id`` (urn: ones are not searchable)."""
    stored = t["request"].get(field, {}).get("reference")
    sent = (t["sent"].get(field) or {}).get("reference")
    if stored and stored.startswith("#") and sent and not sent.startswith("urn:"):
        return sent
    return stored


def queries(stored: dict[str, Any], kind: str, field: str) -> set[str]:
    """Every stored reference of ``field`` (absolute when the request came under an absolute fullUrl), and its
    ``Type/id`` tail: the values a client would search with."""
    found = {t[kind][field].get("reference") for t in stored.values()} - {None}
    found = {r for r in found if not r.startswith(("urn:", "#"))}
    assert len(found) >= 2
    return found | {"/".join(r.split("/")[-2:]) for r in found if "://" in r}


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_request_search_by_every_parameter(gateway: Gateway, stored: dict[str, Any]):
    def check(params, predicate) -> None:  # type: ignore[no-untyped-def]
        expected = ids_where(stored, "request", predicate)
        assert set(search_all(gateway, CER, params)) == expected, params

    check({}, lambda t: True)
    for field in ("patient", "insurer", "provider"):
        for reference in queries(stored, "request", field):
            check({field: reference}, lambda t, f=field, r=reference: matches(searched(t, f), r))
    check({"provider": "Practitioner/prac-vanterpool"},
          lambda t: t["sent"]["provider"]["reference"] == "Practitioner/prac-vanterpool")
    check({"status": "active"}, lambda t: True)
    check({"status": "cancelled"}, lambda t: False)
    for t in stored.values():
        identifier = t["sent"]["identifier"][0]
        check({"identifier": f"{identifier['system']}|{identifier['value']}"},
              lambda u, v=identifier["value"]: u["sent"]["identifier"][0]["value"] == v)
        check({"identifier": identifier["value"]},
              lambda u, v=identifier["value"]: u["sent"]["identifier"][0]["value"] == v)
    check({"identifier": "urn:example:ehr:eligibility|NO-SUCH"}, lambda t: False)
    moments = sorted(instant(t["sent"]["created"]) for t in stored.values())
    middle = moments[len(moments) // 2]
    stamp = middle.astimezone(UTC).isoformat().replace("+00:00", "Z")
    for prefix, test in (("ge", lambda m: m >= middle), ("gt", lambda m: m > middle), ("le", lambda m: m <= middle),
                         ("lt", lambda m: m < middle), ("eq", lambda m: m == middle)):
        check({"created": f"{prefix}{stamp}"}, lambda t, f=test: f(instant(t["sent"]["created"])))
    check([("created", "ge2025-03-11"), ("created", "lt2025-03-25")],
          lambda t: datetime(2025, 3, 11, tzinfo=UTC) <= instant(t["sent"]["created"]) < datetime(2025, 3, 25,
                                                                                                    tzinfo=UTC))
    check({"_id": stored["discovery"]["request"]["id"]}, lambda t: t is stored["discovery"])


def test_response_search_by_every_parameter(gateway: Gateway, stored: dict[str, Any]):
    def check(params, predicate) -> None:  # type: ignore[no-untyped-def]
        expected = ids_where(stored, "response", predicate)
        assert set(search_all(gateway, RESPONSE, params)) == expected, params

    check({}, lambda t: True)
    for t in stored.values():
        check({"request": f"{CER}/{t['request']['id']}"}, lambda u, r=t: u is r)
    outcomes = {t["response"]["outcome"] for t in stored.values()}
    assert outcomes >= {"complete", "error"}   # ASHWORTH is not on file
    for outcome in outcomes:
        check({"outcome": outcome}, lambda t, o=outcome: t["response"]["outcome"] == o)
    for field in ("patient", "insurer"):
        for reference in queries(stored, "request", field):   # a response's references are its request's
            check({field: reference}, lambda t, f=field, r=reference: matches(searched(t, f), r))
    identified = [t for t in stored.values() if t["response"].get("identifier")]
    assert identified
    for t in identified:
        identifier = t["response"]["identifier"][0]
        check({"identifier": f"{identifier['system']}|{identifier['value']}"},
              lambda u, i=identifier: i in (u["response"].get("identifier") or []))
    today = datetime.now(UTC)
    check({"created": f"ge{(today - timedelta(days=1)).date().isoformat()}"}, lambda t: True)
    check({"created": f"lt{(today - timedelta(days=1)).date().isoformat()}"}, lambda t: False)
    check([("outcome", "complete"), ("patient", "Patient/pat-delgado-maria")],
          lambda t: t["response"]["outcome"] == "complete"
          and t["sent"]["patient"]["reference"] == "Patient/pat-delgado-maria")


def test_search_errors_and_paging_links(gateway: Gateway, stored: dict[str, Any]):
    unknown = gateway.get(f"/{CER}", params={"colour": "blue"}, headers=STRICT)
    assert unknown.status_code == 400 and unknown.json()["issue"][0]["expression"] == ["colour"]
    assert gateway.get(f"/{CER}", params={"created": "gx2025"}).status_code == 400
    assert gateway.get(f"/{CER}", params={"_count": "-1"}).status_code == 400
    assert gateway.get(f"/{CER}", params={"_count": "many"}).status_code == 400
    first = gateway.get(f"/{CER}", params={"_count": "4", "status": "active"}).json()
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert set(links) == {"self", "first", "next", "last"}
    assert "status=active" in links["next"] and "_offset=4" in links["next"]
    second = gateway.get(links["next"]).json()
    assert {link["relation"] for link in second["link"]} >= {"previous", "first"}
    assert len(second["entry"]) == 2 and second["total"] == 6
    assert gateway.get(f"/{CER}", params={"_count": "0"}).json()["total"] == 6
    # an empty _count is no _count (the default page); _count=0 is the total alone, with no page to step back to
    assert len(gateway.get(f"/{CER}", params={"_count": ""}).json()["entry"]) == 6
    counted = gateway.get(f"/{CER}", params={"_count": "0", "_offset": "4"}).json()
    assert {link["relation"] for link in counted["link"]} == {"self", "first"}
    # the last link is where the next links lead: from offset 1 by 2 of 6, pages 1, 3, 5 (not 4)
    shifted = gateway.get(f"/{CER}", params={"_count": "2", "_offset": "1"}).json()
    last = next(link["url"] for link in shifted["link"] if link["relation"] == "last")
    assert "_offset=5" in last
    newest = gateway.get(f"/{CER}", params={"_count": "1"}).json()["entry"][0]["resource"]
    oldest = gateway.get(f"/{CER}", params={"_count": "1", "_sort": "created"}).json()["entry"][0]["resource"]
    assert instant(newest["created"]) >= instant(oldest["created"])


def outcome_entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]


@pytest.mark.parametrize("resource_type", [CER, RESPONSE])
def test_unsupported_parameters_are_ignored_by_default(gateway: Gateway, stored: dict[str, Any],
                                                        resource_type: str):
    for prefer in ({}, {"Prefer": "handling=lenient"}, {"Prefer": "respond-async, handling=LENIENT"},
                   {"Prefer": "handling=whatever"}):
        page = gateway.get(f"/{resource_type}", params=[("_count", "4"), *IGNORABLE], headers=prefer)
        assert page.status_code == 200, page.text
        bundle = page.json()
        assert bundle["total"] == 6   # as if only _count had been sent
        matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
        assert len(matches) == 4
        [outcome] = outcome_entries(bundle)
        assert outcome["fullUrl"].startswith("urn:uuid:") and outcome["resource"]["resourceType"] == \
            "OperationOutcome"
        issues = outcome["resource"]["issue"]
        assert [i["expression"] for i in issues] == [[name] for name, _ in IGNORABLE]
        assert all(i["severity"] == "warning" and i["code"] == "not-supported" for i in issues)
        assert all(name in i["details"]["text"] for (name, _), i in zip(IGNORABLE, issues, strict=True))
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        for url in links.values():   # only what was applied (and the instant the first page was read)
            query = [(k, v) for k, v in parse_qsl(urlsplit(url).query) if k != "_snapshot"]
            assert query in ([("_count", "4"), ("_offset", str(at))] for at in (0, 4))
        following = gateway.get(links["next"]).json()   # the links leave the ignored ones out: no warning
        assert not outcome_entries(following) and len(following["entry"]) == 2


def test_lenient_search_still_applies_the_supported_parameters(gateway: Gateway, stored: dict[str, Any]):
    maria = "Patient/pat-delgado-maria"
    expected = ids_where(stored, "request", lambda t: matches(t["sent"]["patient"].get("reference"), maria))
    assert expected and len(expected) < 6
    bundle = gateway.get(f"/{CER}", params=[("patient", maria), ("_summary", "true"), ("_sort", "created"),
                                            ("_total", "accurate"), ("_pretty", "true")]).json()
    assert {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"} == expected
    assert bundle["total"] == len(expected)
    [outcome] = outcome_entries(bundle)
    assert [i["expression"] for i in outcome["resource"]["issue"]] == [["_summary"]]
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert {k for k, _ in parse_qsl(urlsplit(self_link).query)} == {"patient", "_sort", "_total", "_pretty",
                                                                     "_count", "_offset", "_snapshot"}
    # nothing ignored: no outcome entry
    assert not outcome_entries(gateway.get(f"/{CER}", params={"patient": maria}).json())


def test_pages_stay_put_while_requests_keep_coming(gateway: Gateway, stored: dict[str, Any]):
    """Newest first, offset paging: a request stored between two pages used to push the last of page 1 onto
    page 2 (a duplicate) and change the total. The links carry the instant the first page was read."""
    for resource_type in (CER, RESPONSE):
        first = gateway.get(f"/{resource_type}", params={"_count": "2"}).json()
        gateway.post(f"/{CER}", fhir_request("subscriber-generic"))   # a busy gateway: one more, answered too
        seen = [e["resource"]["id"] for e in first["entry"]]
        page = first
        while "next" in (links := {link["relation"]: link["url"] for link in page["link"]}):
            page = gateway.get(links["next"]).json()
            assert page["total"] == first["total"]
            seen += [e["resource"]["id"] for e in page.get("entry", [])]
        assert len(seen) == len(set(seen)) == first["total"]
        # a fresh search sees the new one
        assert gateway.get(f"/{resource_type}", params={"_count": "0"}).json()["total"] == first["total"] + 1
    bad = gateway.get(f"/{CER}", params={"_snapshot": "yesterday"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["_snapshot"]


def test_strict_handling_refuses_unsupported_parameters(gateway: Gateway, stored: dict[str, Any]):
    refused = gateway.get(f"/{CER}", params=[("status", "active"), *IGNORABLE], headers=STRICT)
    assert refused.status_code == 400 and refused.headers["Content-Type"].startswith("application/fhir+json")
    issues = refused.json()["issue"]
    assert [i["expression"] for i in issues] == [[name] for name, _ in IGNORABLE]
    assert all(i["severity"] == "error" and i["code"] == "not-supported" for i in issues)
    assert gateway.get(f"/{RESPONSE}", params={"request:Foo": "x"}, headers={"Prefer": "handling=strict"}
                       ).status_code == 400
    # supported ones are fine under strict handling
    assert gateway.get(f"/{CER}", params={"status": "active", "_count": "1"}, headers=STRICT).json()["total"] == 6


@pytest.mark.parametrize("prefer", [{}, STRICT, {"Prefer": "handling=lenient"}])
def test_bad_values_of_supported_parameters_are_400_in_both_modes(gateway: Gateway, prefer: dict[str, str]):
    for params in ({"created": "garbage"}, {"created": "gx2025"}, {"_count": "-1"}, {"_count": "many"},
                   {"_offset": "-3"}, {"_sort": "status"}, {"patient:exact": "Patient/1"},
                   {"status:missing": "maybe"}, {"created": "garbage", "foo": "bar"}, {"_total": "bogus"},
                   {"_pretty": "bogus"}):
        refused = gateway.get(f"/{CER}", params=params, headers=prefer)
        assert refused.status_code == 400, (params, prefer, refused.text[:300])
        assert refused.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("query", ["=", "=x", "status=active&=x"])
def test_a_parameter_without_a_name_is_ignored_or_refused_with_a_valid_outcome(gateway: Gateway, query: str):
    """``?=x`` is a parameter without a name: its warning (and its strict 400) carried ``"expression": [""]``,
    which is not FHIR (a string is never empty), so the Bundle itself was invalid."""
    from gateway.fhir.models import validate_structure

    lenient = gateway.get(f"/{CER}?{query}")
    assert lenient.status_code == 200, lenient.text
    bundle = lenient.json()
    validate_structure(bundle)
    [outcome] = outcome_entries(bundle)
    [issue] = outcome["resource"]["issue"]
    assert "expression" not in issue and "without a name" in issue["details"]["text"]
    strict = gateway.get(f"/{CER}?{query}", headers=STRICT)
    assert strict.status_code == 400
    validate_structure(strict.json())
    [issue] = strict.json()["issue"]
    assert "expression" not in issue and "without a name" in issue["details"]["text"]
    refused = gateway.get(f"/{CER}?{query}%01")   # a control character: a 400 that names it all the same
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["details"]["text"] == "a search parameter without a name: holds control " \
        "characters"


def test_a_parameter_name_with_a_control_character_is_quoted_escaped(gateway: Gateway):
    """Said bare, "search parameter \x01x: holds control characters" showed as "search parameter x: ..." (the
    character does not print): the name the client must fix was not the one it read."""
    refused = gateway.get(f"/{CER}?%01x=1")
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["details"]["text"] == "search parameter '\\x01x': holds control characters"
    plain = gateway.get(f"/{CER}?status=%01")   # a printable name is said bare, as before
    assert plain.json()["issue"][0]["details"]["text"] == "search parameter status: holds control characters"


def test_a_query_string_that_is_not_utf8_is_refused(gateway: Gateway):
    """%FF%FE decodes to no UTF-8: searched as the escapes themselves, it would be another query than the client's."""
    refused = requests.get(f"{gateway.url}/{CER}?identifier=%FF%FE", headers=gateway.session.headers, timeout=10)
    assert refused.status_code == 400 and "not UTF-8" in refused.json()["issue"][0]["details"]["text"]
    accepted = requests.get(f"{gateway.url}/{CER}?identifier=%C3%A9", headers=gateway.session.headers, timeout=10)
    assert accepted.status_code == 200   # é, in UTF-8


def test_metadata_modes(gateway: Gateway):
    assert gateway.get("/metadata", params={"mode": "normative"}).json()["resourceType"] == "CapabilityStatement"
    terminology = gateway.get("/metadata", params={"mode": "terminology"})
    assert terminology.status_code == 400 and terminology.json()["issue"][0]["code"] == "not-supported"
    assert gateway.get("/metadata", params={"mode": "everything"}).status_code == 400


def test_post_search_takes_a_form_and_a_read_only_token(gateway: Gateway, stored: dict[str, Any]):
    import requests

    from tests.gateway.conftest import READ_TOKEN

    member = stored["subscriber-generic"]["request"]
    form = {"identifier": member["identifier"][0]["value"], "_count": "5"}
    for token in (None, READ_TOKEN):   # the gateway's own token, then a read-only one: a search is a read
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        found = (requests.post(f"{gateway.url}/{CER}/_search", data=form, timeout=30, headers=headers) if token
                 else gateway.session.post(f"{gateway.url}/{CER}/_search", data=form, timeout=30))
        assert found.status_code == 200, found.text
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [member["id"]]
    wrong = gateway.post(f"/{CER}/_search", {"identifier": "x"})   # JSON is not a search form
    assert wrong.status_code == 415
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in (b"identifier=\xe9&status=active", b"status=%E9"):   # not UTF-8: not "every request"
        refused = gateway.session.post(f"{gateway.url}/{CER}/_search", data=body, headers=form_type, timeout=30)
        assert refused.status_code == 400 and "not UTF-8" in refused.text


def test_sort_by_last_updated(gateway: Gateway, stored: dict[str, Any]):
    order = [stored[name]["request"]["id"] for name in FIXTURES]   # stored one after another
    oldest = gateway.get(f"/{CER}", params={"_sort": "_lastUpdated", "_count": "10"}).json()
    assert [e["resource"]["id"] for e in oldest["entry"]] == order
    newest = gateway.get(f"/{RESPONSE}", params={"_sort": "-_lastUpdated", "_count": "10"}).json()
    responses = [e["resource"] for e in newest["entry"]]
    assert [r["request"]["reference"].split("/")[-1] for r in responses] == order[::-1]
    assert all(r["meta"]["lastUpdated"] for r in responses)
    bad = gateway.get(f"/{CER}", params={"_sort": "name"})
    assert bad.status_code == 400 and "'_lastUpdated'" in bad.text


def test_a_search_with_too_many_values_is_too_costly_not_a_stalled_worker(gateway: Gateway):
    """Each comma-separated value is a condition to compile: 50,000 held a worker for 46 s (and SQLite refuses a few
    hundred as if the store were down, a 503). At most 100 in all, GET or POST."""
    many = ",".join(f"Patient/p{i}" for i in range(101))
    for response in (gateway.get(f"/{CER}", params={"patient": many}),
                     gateway.session.post(f"{gateway.url}/{CER}/_search", data={"patient": many}, timeout=30)):
        assert response.status_code == 400, response.text
        issue = response.json()["issue"][0]
        assert issue["code"] == "too-costly" and "at most 100 values" in issue["details"]["text"]
    assert gateway.get(f"/{CER}", params={"patient": ",".join(f"Patient/p{i}" for i in range(100))}).status_code == 200
