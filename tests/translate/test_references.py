"""A request taken out of its Bundle keeps what it references by urn: as contained resources."""

from __future__ import annotations

from gateway.translate.references import contain_local_references

CER = "CoverageEligibilityRequest"


def bundle(*entries):
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries]}


def test_urn_references_become_contained_and_follow_on():
    patient = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"}, "name": [{"family": "Roe"}]}
    coverage = {"resourceType": "Coverage", "id": "c1", "beneficiary": {"reference": "urn:uuid:p"},
                "payor": [{"reference": "Organization/acme"}]}
    request = {"resourceType": CER, "id": "r", "patient": {"reference": "urn:uuid:p"},
               "insurance": [{"coverage": {"reference": "urn:uuid:c"}}], "provider": {"reference": "Practitioner/9"}}
    out = contain_local_references(request, bundle(("urn:uuid:r", request), ("urn:uuid:p", patient),
                                                   ("urn:uuid:c", coverage)))
    assert list(out)[:3] == ["resourceType", "id", "contained"]
    assert out["patient"] == {"reference": "#p1"} and out["insurance"][0]["coverage"] == {"reference": "#c1"}
    assert out["provider"] == {"reference": "Practitioner/9"}   # a server reference stays
    contained = {c["id"]: c for c in out["contained"]}
    assert set(contained) == {"p1", "c1"} and "meta" not in contained["p1"]
    assert contained["c1"]["beneficiary"] == {"reference": "#p1"}   # one copy, referenced twice
    assert contained["c1"]["payor"] == [{"reference": "Organization/acme"}]
    assert request["patient"] == {"reference": "urn:uuid:p"}   # the input is not changed


def test_ids_already_contained_are_not_reused_and_cycles_end():
    a = {"resourceType": "Patient", "id": "x", "link": [{"other": {"reference": "urn:uuid:b"}}]}
    b = {"resourceType": "RelatedPerson", "id": "x", "patient": {"reference": "urn:uuid:a"}}
    request = {"resourceType": CER, "contained": [{"resourceType": "Organization", "id": "x"}],
               "patient": {"reference": "urn:uuid:a"}}
    out = contain_local_references(request, bundle(("urn:uuid:a", a), ("urn:uuid:b", b)))
    ids = [c["id"] for c in out["contained"]]
    assert ids[0] == "x" and len(set(ids)) == 3
    by_type = {c["resourceType"]: c for c in out["contained"]}
    assert out["patient"]["reference"] == f"#{by_type['Patient']['id']}"
    assert by_type["Patient"]["link"][0]["other"]["reference"] == f"#{by_type['RelatedPerson']['id']}"
    assert by_type["RelatedPerson"]["patient"]["reference"] == f"#{by_type['Patient']['id']}"


def test_without_a_bundle_or_urn_references_nothing_changes():
    request = {"resourceType": CER, "patient": {"reference": "Patient/1"}}
    assert contain_local_references(request, None) is request
    assert contain_local_references(request, bundle(("urn:uuid:z", {"resourceType": "Patient"}))) == request


def test_relative_references_are_written_out_against_an_absolute_bundle_base():
    from gateway.translate.references import absolute_references, bundle_base

    bundle = {"entry": [{"fullUrl": "https://ehr.example/fhir/CoverageEligibilityRequest/r1",
                         "resource": {"resourceType": "CoverageEligibilityRequest"}}]}
    base = bundle_base("CoverageEligibilityRequest", bundle)
    assert base == "https://ehr.example/fhir/"
    value = {"patient": {"reference": "Patient/p1"}, "a": [{"reference": "Coverage/c1/_history/2"}],
             "b": {"reference": "#inner"}, "c": {"reference": "urn:uuid:1"},
             "d": {"reference": "https://other.example/fhir/Patient/p2"}, "e": {"identifier": {"value": "x"}}}
    out = absolute_references(value, base)
    assert out["patient"] == {"reference": "https://ehr.example/fhir/Patient/p1"}
    assert out["a"] == [{"reference": "https://ehr.example/fhir/Coverage/c1/_history/2"}]
    assert [out[k] for k in "bcde"] == [value[k] for k in "bcde"]
    assert bundle_base("CoverageEligibilityRequest", {"entry": [{"fullUrl": "urn:uuid:9", "resource": {
        "resourceType": "CoverageEligibilityRequest"}}]}) is None
    assert absolute_references(value, None) is value
