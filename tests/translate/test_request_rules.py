"""FHIR CoverageEligibilityRequest -> 270 rules, on small requests built here."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime

import pytest

from gateway.translate import TranslationError, load_tables
from gateway.translate.request_270 import build_270
from gateway.transport.routing import InformationReceiver
from gateway.x12.reader import read_x12
from gateway.x12.structure import element_limits
from gateway.x12.validate import validate_x12
from gateway.x12.writer import Envelope

ENV = Envelope(sender_id="GATEWAY01", receiver_id="PAYERX", interchange_control=5, now=datetime(2025, 3, 10, 9, 15))
RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
PAYERID = {"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType", "code": "payerid"}


def bundle(**changes):
    request = {"resourceType": "CoverageEligibilityRequest", "identifier": [{"value": "REQ-9"}], "status": "active",
               "purpose": ["benefits"], "patient": {"reference": "Patient/p"}, "created": "2025-03-10T09:15:00Z",
               "insurer": {"reference": "Organization/payer"}, "provider": {"reference": "Organization/clinic"},
               "insurance": [{"coverage": {"reference": "Coverage/c"}}]}
    patient = {"resourceType": "Patient", "id": "p", "name": [{"family": "Roe", "given": ["Anna"]}],
               "birthDate": "2012-03-04", "gender": "female"}
    parent = {"resourceType": "Patient", "id": "parent", "name": [{"family": "Roe", "given": ["Richard"]}],
              "birthDate": "1980-02-10", "gender": "male"}
    coverage = {"resourceType": "Coverage", "id": "c", "status": "active", "subscriberId": "W123456789",
                "beneficiary": {"reference": "Patient/p"}, "payor": [{"reference": "Organization/payer"}],
                "relationship": {"coding": [{"system": RELATIONSHIP, "code": "self"}]}}
    payer = {"resourceType": "Organization", "id": "payer", "name": "Example Health Plan",
             "identifier": [{"type": {"coding": [PAYERID]}, "value": "99999"}]}
    clinic = {"resourceType": "Organization", "id": "clinic", "name": "Sample Clinic",
              "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}]}
    resources = {"request": request, "patient": patient, "parent": parent, "coverage": coverage, "payer": payer,
                 "clinic": clinic}
    for path, value in changes.items():
        name, _, field = path.partition("__")
        if value is None:
            resources[name].pop(field, None)
        else:
            resources[name][field] = value
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"{r['resourceType']}/{r.get('id', 'r')}", "resource": r}
                      for r in resources.values()]}


def build(payload):
    return build_270(payload, load_tables(), envelope=ENV, limits=element_limits())


def segs(text):
    return [s.parts for s in read_x12(text).transactions[0].segments()]


def test_subscriber_270_validates_and_carries_the_request():
    result = build(bundle(request__servicedDate="2025-03-10"))
    assert validate_x12(result.text).valid
    parts = segs(result.text)
    assert ["NM1", "PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"] in parts
    assert ["NM1", "IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123456789"] in parts
    assert ["DMG", "D8", "20120304", "F"] in parts and ["DTP", "291", "D8", "20250310"] in parts
    assert ["EQ", "30"] in parts and ["TRN", "1", "REQ-9", "9GATEWAY01"] in parts


def test_dependent_goes_to_2000d_with_the_subscriber_in_2100c():
    result = build(bundle(coverage__relationship={"coding": [{"code": "child"}]},
                          coverage__subscriber={"reference": "Patient/parent"}))
    parts = segs(result.text)
    ids = [p[0] for p in parts]
    assert ["HL", "4", "3", "23", "0"] in parts and ["NM1", "03", "1", "ROE", "ANNA"] in parts
    assert ["NM1", "IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123456789"] in parts
    assert ids.index("EQ") > ids.index("NM1") and result.patient_loop == "2100D"
    assert validate_x12(result.text).valid


def test_dependent_with_an_own_member_id_is_sent_as_subscriber():
    own = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
            "value": "W123456789-02"}]
    result = build(bundle(coverage__relationship={"coding": [{"code": "spouse"}]},
                          coverage__subscriber={"reference": "Patient/parent"}, coverage__identifier=own))
    assert result.patient_loop == "2100C"
    assert ["NM1", "IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123456789-02"] in segs(result.text)


def test_insurer_empty_takes_the_payer_from_coverage_payor():
    result = build(bundle(request__insurer={}))
    assert ["NM1", "PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"] in segs(result.text)


def test_payer_id_typed_payerid_wins_over_other_identifiers():
    ids = [{"system": "urn:other", "value": "NOPE"}, {"type": {"coding": [PAYERID]}, "value": "12345"}]
    assert "PI*12345" in build(bundle(payer__identifier=ids)).text


def test_items_become_eq_loops_with_procedures_and_diagnoses():
    items = [{"category": {"coding": [{"system": "https://codesystem.x12.org/005010/1365", "code": "98"}]}},
             {"productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
              "modifier": [{"coding": [{"code": "25"}]}],
              "diagnosis": [{"diagnosisCodeableConcept": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                                                       "code": "E11.9"}]}}]},
             {"category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/ex-benefitcategory",
                                       "code": "F6"}]}}]
    result = build(bundle(request__item=items, request__purpose=["auth-requirements", "benefits"]))
    parts = segs(result.text)
    assert ["EQ", "98"] in parts and ["EQ", "", "HC:99213:25", "", "", "1"] in parts and ["EQ", "AL"] in parts
    assert ["HI", "ABK:E119"] in parts
    assert any("F6" in n.text for n in result.notes)
    assert validate_x12(result.text).valid


CPT = "http://www.ama-assn.org/go/cpt"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"


def _item(code="99213", modifier="25", diagnosis="E11.9"):
    return [{"productOrService": {"coding": [{"system": CPT, "code": code}]},
             "modifier": [{"coding": [{"code": modifier}]}],
             "diagnosis": [{"diagnosisCodeableConcept": {"coding": [{"system": ICD10, "code": diagnosis}]}}]}]


# where bundle() puts each resource: the request, the patient, the parent, the coverage, the payer, the clinic
REQUEST, PATIENT, COVERAGE, PAYER, CLINIC = (f"Bundle.entry[{i}].resource" for i in (0, 1, 3, 4, 5))


@pytest.mark.parametrize(("changes", "path", "x12", "words"), [
    ({"coverage__subscriberId": "W123*456~789"}, f"{COVERAGE}.subscriberId", "2100C NM109", "delimiter characters"),
    ({"coverage__subscriberId": "W" * 81}, f"{COVERAGE}.subscriberId", "2100C NM109", "cut to the maximum length 80"),
    ({"coverage__subscriberId": "W"}, f"{COVERAGE}.subscriberId", "2100C NM109", "shorter than the 2 characters"),
    ({"coverage__subscriberId": "W12😀"}, f"{COVERAGE}.subscriberId", "2100C NM109", "outside the X12 character set"),
    ({"payer__identifier": [{"type": {"coding": [PAYERID]}, "value": "99*999"}]}, f"{PAYER}.identifier[0].value",
     "2100A NM109", "delimiter characters"),
    ({"clinic__identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567890"}]},
     f"{CLINIC}.identifier[0].value", "2100B NM109", "valid check digit"),
    ({"patient__name": [{"family": "مريم", "given": ["Anna"]}]}, f"{PATIENT}.name[0].family", "2100C NM103",
     "Latin-script form"),
    ({"clinic__name": "東京クリニック"}, f"{CLINIC}.name", "2100B NM103", "Latin-script form"),
    ({"request__item": _item(modifier="x")}, f"{REQUEST}.item[0].modifier[0]", "2110C EQ02-3",
     "2 to 2 characters"),
    ({"request__item": _item(code="992*13")}, f"{REQUEST}.item[0].productOrService", "2110C EQ02-2",
     "delimiter characters"),
    ({"request__item": _item(diagnosis="")}, f"{REQUEST}.item[0].diagnosis[0].diagnosisCodeableConcept",
     "2100C HI01-2", "it is empty"),
])
def test_identifiers_codes_and_required_names_are_sent_as_given_or_refused(changes, path, x12, words):
    """Each at the very element its value was read from, where the client sent it (the items table's "Coverage.
    subscriberId | Coverage.identifier (MB)", or "Patient.name.family" without the name's index, before)."""
    with pytest.raises(TranslationError) as caught:
        build(bundle(**changes))
    assert caught.value.status == 422
    found = [p for p in caught.value.problems if x12 == p.x12]
    assert found and found[0].expressions == [path] and words in found[0].message, caught.value.problems


def test_case_and_a_cut_name_are_no_reason_to_refuse():
    result = build(bundle(coverage__subscriberId="w123456789", request__item=_item(modifier="lt", diagnosis="e11.9"),
                          patient__name=[{"family": "R" * 70, "given": ["Anna"]}]))
    parts = segs(result.text)
    assert ["NM1", "IL", "1", "R" * 60, "ANNA", "", "", "", "MI", "W123456789"] in parts
    assert ["EQ", "", "HC:99213:LT", "", "", "1"] in parts and ["HI", "ABK:E119"] in parts
    assert any("maximum length 60" in n.text for n in result.all_notes())


def test_validation_purpose_asks_the_generic_question():
    items = [{"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "98"}]}}]
    result = build(bundle(request__item=items, request__purpose=["validation"]))
    assert ["EQ", "30"] in segs(result.text)


@pytest.mark.parametrize("coverage", [{}, {"display": "Acme PPO"}, {"identifier": {"system": "urn:x"}}])
def test_a_coverage_reference_that_names_no_coverage_is_refused(coverage):
    """"coverage": {} (as EHRs send "insurer": {}) passed without a problem: the 270 went out without the member
    id, a search only a discovery request may make, and the response was built as if the member had been named."""
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__insurance=[{"focal": True, "coverage": coverage}]))
    assert caught.value.status == 422
    assert [(p.fhir_path, p.code, p.message) for p in caught.value.problems] == [
        (f"{REQUEST}.insurance[0].coverage", "required",
         "the coverage reference names no Coverage: give its reference, or the member id as an identifier typed MB")]


def test_discovery_needs_no_member_id():
    result = build(bundle(coverage__subscriberId=None, request__purpose=["discovery"]))
    assert ["NM1", "IL", "1", "ROE", "ANNA"] in segs(result.text)
    assert validate_x12(result.text).valid


def test_every_missing_item_is_listed_with_its_fhir_path_and_x12_target():
    payload = bundle(coverage__subscriberId=None, patient__name=None, payer__identifier=[], clinic__identifier=[])
    with pytest.raises(TranslationError) as info:
        build(payload)
    error = info.value
    assert error.status == 422
    targets = {p.x12 for p in error.problems}
    assert {"2100C NM109", "2100A NM109", "2100B NM109", "2100C NM103"} <= targets
    outcome = error.to_operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome" and len(outcome["issue"]) == len(error.problems)


def test_unresolvable_references_are_listed_one_by_one():
    payload = bundle(request__patient={"reference": "Patient/missing"},
                     request__provider={"reference": "Practitioner/nowhere"})
    with pytest.raises(TranslationError) as info:
        build(payload)
    not_found = [p for p in info.value.problems if p.code == "not-found"]
    assert {p.fhir_path for p in not_found} == {f"{REQUEST}.patient",
                                                f"{REQUEST}.provider"}


@pytest.mark.parametrize(("change", "path", "words"), [
    # was "points at a Organization"
    ({"request__insurance": [{"coverage": {"reference": "Organization/payer"}}]},
     f"{REQUEST}.insurance[0].coverage",
     "reference 'Organization/payer' points at an Organization, expected Coverage"),
    ({"request__insurer": {"reference": "Patient/p"}}, f"{REQUEST}.insurer",
     "reference 'Patient/p' points at a Patient, expected Organization"),
])
def test_a_reference_to_another_resource_type_says_which_with_its_article(change, path, words):
    with pytest.raises(TranslationError) as info:
        build(bundle(**change))
    assert [(p.code, p.message) for p in info.value.problems if p.fhir_path == path] == [("invalid", words)]


@pytest.mark.parametrize("change, code, status", [
    ({"patient__birthDate": "1980-05"}, "value", 422),
    ({"request__status": "bogus"}, "code-invalid", 400),
    ({"request__status": "draft"}, "business-rule", 422),
    ({"request__purpose": ["gossip"]}, "code-invalid", 400),
])
def test_bad_values(change, code, status):
    with pytest.raises(TranslationError) as info:
        build(bundle(**change))
    assert code in {p.code for p in info.value.problems} and info.value.status == status


def test_wrong_resource_type_is_a_structure_error():
    with pytest.raises(TranslationError) as info:
        build({"resourceType": "Patient"})
    assert info.value.status == 400 and info.value.problems[0].code == "structure"


def test_contained_resources_resolve():
    payload = bundle()
    entries = {e["resource"]["resourceType"] + "/" + e["resource"].get("id", ""): e["resource"]
               for e in payload["entry"]}
    request = copy.deepcopy(entries["CoverageEligibilityRequest/"])
    request["contained"] = [entries["Patient/p"], entries["Coverage/c"], entries["Organization/payer"],
                            entries["Organization/clinic"]]
    request["patient"] = {"reference": "#p"}
    request["insurer"] = {"reference": "#payer"}
    request["provider"] = {"reference": "#clinic"}
    request["insurance"] = [{"coverage": {"reference": "#c"}}]
    request["contained"][1] = dict(request["contained"][1], beneficiary={"reference": "#p"},
                                   payor=[{"reference": "#payer"}])
    assert validate_x12(build(request).text).valid


# ------------------------------------------------------------------------------- no provider in the request

RECEIVER = {"resourceType": "Organization", "name": "Riverbend Family Practice",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1245319599"}]}


def test_without_a_provider_the_configured_information_receiver_is_named_in_2100b():
    asked: list[str] = []
    result = build_270(bundle(request__provider=None), load_tables(), envelope=ENV, limits=element_limits(),
                       information_receiver=lambda payer: asked.append(payer) or RECEIVER)
    assert asked == ["99999"]   # looked up by the payer the 270 goes to
    assert validate_x12(result.text).valid
    assert ["NM1", "1P", "2", "RIVERBEND FAMILY PRACTICE", "", "", "", "", "XX", "1245319599"] in segs(result.text)
    assert [n.source for n in result.notes] == ["CoverageEligibilityRequest.provider"]
    assert "information receiver" in result.notes[0].text


def test_a_person_as_information_receiver():
    person = {"resourceType": "Practitioner", "name": [{"family": "Okafor", "given": ["Ada"]}],
              "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}]}
    result = build_270(bundle(request__provider=None), load_tables(), envelope=ENV, limits=element_limits(),
                       information_receiver=person)
    assert ["NM1", "1P", "1", "OKAFOR", "ADA", "", "", "", "XX", "1234567893"] in segs(result.text)


def test_the_information_receivers_taxonomy_is_its_prv():
    tables = load_tables()
    for entity, name in (("organization", "RIVERBEND"), ("person", "OKAFOR")):
        receiver = InformationReceiver("1245319599", name, entity, taxonomy="207Q00000X").as_resource(tables.systems)
        result = build_270(bundle(request__provider=None), tables, envelope=ENV, limits=element_limits(),
                           information_receiver=receiver)
        assert validate_x12(result.text).valid
        rows = segs(result.text)
        provider = next(i for i, row in enumerate(rows) if row[:2] == ["NM1", "1P"])
        assert rows[provider][2:4] == ["2" if entity == "organization" else "1", name]
        assert rows[provider + 1] == ["PRV", "PE", "PXC", "207Q00000X"]


def test_an_organization_providers_nucc_type_is_its_prv():
    clinic = {"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                    "code": "prov"}]},
                       {"coding": [{"system": "http://nucc.org/provider-taxonomy", "code": "261QP2300X"}]}]}
    rows = segs(build(bundle(clinic__type=clinic["type"])).text)
    assert ["PRV", "PE", "PXC", "261QP2300X"] in rows


def test_the_requests_own_provider_wins_over_the_information_receiver():
    result = build_270(bundle(), load_tables(), envelope=ENV, limits=element_limits(),
                       information_receiver=lambda payer: RECEIVER)
    assert ["NM1", "1P", "2", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"] in segs(result.text)
    assert not [n for n in result.notes if n.source == "CoverageEligibilityRequest.provider"]


@pytest.mark.parametrize("receiver", [None, lambda payer: None])
def test_without_provider_or_information_receiver_the_npi_is_required(receiver):
    with pytest.raises(TranslationError) as caught:
        build_270(bundle(request__provider=None), load_tables(), envelope=ENV, limits=element_limits(),
                  information_receiver=receiver)
    assert caught.value.status == 422
    assert any("provider NPI" in p.message and p.x12.startswith("2100B") for p in caught.value.problems)


def test_values_the_writer_changed_are_notes_on_their_270_element():
    result = build(bundle(patient__name=[{"family": "Müller*Smith", "given": ["Zoë"]}]))
    notes = {n.source: n.text for n in result.all_notes()}
    assert "'Müller*Smith' was sent as 'MULLERSMITH'" in notes["270 NM1 NM103"]
    assert "transliterated" in notes["270 NM1 NM104"]


def test_a_reversed_service_period_and_too_many_items_are_refused():
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__servicedPeriod={"start": "2025-03-31", "end": "2025-03-01"},
                     request__item=[{"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes",
                                                              "code": "30"}]}}] * 100))
    found = {p.fhir_path: p.message for p in caught.value.problems}
    assert "ends ('2025-03-01') before it starts" in found[f"{REQUEST}.servicedPeriod.end"]
    assert "at most 99" in found[f"{REQUEST}.item"]


@pytest.mark.parametrize(("start", "words"), [("2025-03", "'2025-03' is not a full date (the period starts on a day)"),
                                             (None, "the period needs a start date")])
def test_a_service_period_without_a_full_start_date_says_which(start, words):
    """A start of month precision was answered "the period needs a start date", as if there were none."""
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__servicedPeriod={"end": "2025-03-31", **({"start": start} if start else {})}))
    assert [(p.fhir_path, p.message) for p in caught.value.problems] == [
        (f"{REQUEST}.servicedPeriod.start", words)]


def test_trn03_pads_only_what_is_sent():
    result = build_270(bundle(), load_tables(), envelope=ENV, limits=element_limits(), originator="A B*C")
    assert ["TRN", "1", "REQ-9", "9ABC000000"] in segs(result.text)


def test_a_coverage_named_by_its_member_id_gives_the_member_id():
    """An identifier-only Coverage reference typed MB is the member id; untyped, it is not (the 422 says so)."""
    member = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
              "system": "https://payer.example/member", "value": "W555000111"}
    payload = bundle(request__insurance=[{"coverage": {"identifier": member}}])
    payload["entry"] = [e for e in payload["entry"] if e["resource"]["resourceType"] != "Coverage"]
    text = build_270(payload, load_tables(), envelope=ENV).text
    assert "NM1*IL*1*ROE*ANNA****MI*W555000111~" in text
    untyped = {k: v for k, v in member.items() if k != "type"}
    payload["entry"][0]["resource"]["insurance"] = [{"coverage": {"identifier": untyped}}]
    with pytest.raises(TranslationError) as info:
        build_270(payload, load_tables(), envelope=ENV)
    assert [p.x12 for p in info.value.problems] == ["2100C NM109"]


def test_an_npi_or_tax_id_is_never_taken_as_the_payer_id():
    payload = bundle(request__insurer={"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "ZZZ"}},
                     coverage__payor=None)
    payload["entry"] = [e for e in payload["entry"] if e["resource"].get("id") != "payer"]
    with pytest.raises(TranslationError) as info:
        build_270(payload, load_tables(), envelope=ENV)
    assert [p.x12 for p in info.value.problems] == ["2100A NM109"]
    # an untyped identifier of another system still is (payers' ids are often sent so)
    payload["entry"][0]["resource"]["insurer"] = {"identifier": {"system": "urn:payer", "value": "60054"}}
    assert "NM1*PR*2*" in build_270(payload, load_tables(), envelope=ENV).text


# ------------------------------------------------------------------ who the patient is on the coverage (§3.2)

PARENT = {"reference": "Patient/parent"}


@pytest.mark.parametrize("relationship", [
    None,                                                                    # absent
    {"text": "child"},                                                       # uncoded
    {"coding": [{"system": "urn:ehr:relationship", "code": "KID"}]},         # an unlisted system
])
def test_a_patient_whose_subscriber_is_another_person_is_a_dependent(relationship):
    """Without a usable relationship, Coverage.subscriber decides: another person makes the patient a dependent
    (2100D), never the subscriber under the subscriber's member id."""
    result = build(bundle(coverage__relationship=relationship, coverage__subscriber=PARENT))
    parts = segs(result.text)
    assert result.patient_loop == "2100D"
    assert ["NM1", "IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123456789"] in parts
    assert ["NM1", "03", "1", "ROE", "ANNA"] in parts and ["HL", "4", "3", "23", "0"] in parts
    assert validate_x12(result.text).valid
    assert any(n.source == "Coverage.relationship" for n in result.notes)


@pytest.mark.parametrize("subscriber", [None, {"reference": "Patient/p"}, {"reference": "Patient/p/_history/1"}])
def test_without_relationship_the_patient_is_the_subscriber_when_no_one_else_is(subscriber):
    result = build(bundle(coverage__relationship=None, coverage__subscriber=subscriber))
    assert result.patient_loop == "2100C"
    assert ["NM1", "IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123456789"] in segs(result.text)


def test_a_dependent_without_relationship_but_with_an_own_member_id_is_sent_as_subscriber():
    own = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
            "value": "W123456789-02"}]
    result = build(bundle(coverage__relationship=None, coverage__subscriber=PARENT, coverage__identifier=own))
    assert result.patient_loop == "2100C"
    assert ["NM1", "IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123456789-02"] in segs(result.text)
    assert any("member id of their own" in n.text for n in result.notes)


@pytest.mark.parametrize(("changes", "path", "words"), [
    ({"coverage__subscriber": PARENT}, f"{COVERAGE}.relationship", "'self' but Coverage.subscriber is another person"),
    ({"coverage__beneficiary": PARENT}, f"{COVERAGE}.beneficiary", "another person than"),
    ({"coverage__relationship": {"coding": [{"code": "child"}]}, "coverage__subscriber": {"reference": "Patient/p"}},
     f"{COVERAGE}.relationship", "but Coverage.subscriber is the patient"),
])
def test_contradictory_relationship_and_persons_are_refused(changes, path, words):
    with pytest.raises(TranslationError) as caught:
        build(bundle(**changes))
    assert caught.value.status == 422
    found = [p for p in caught.value.problems if p.fhir_path == path]
    assert found and words in found[0].message and found[0].code == "business-rule", caught.value.problems


def test_the_same_patient_by_another_reference_form_is_the_same_person():
    """A Bundle entry named by its fullUrl and by Type/id is one resource: self stays self."""
    payload = bundle(coverage__subscriber={"reference": "Patient/p"})
    for entry in payload["entry"]:
        if entry["resource"]["resourceType"] == "Patient" and entry["resource"]["id"] == "p":
            entry["fullUrl"] = "urn:uuid:0b5c6a8e-8f0e-4c59-9d7e-3a3c1c1d2e01"
        if entry["resource"]["resourceType"] == "CoverageEligibilityRequest":
            entry["resource"]["patient"] = {"reference": "urn:uuid:0b5c6a8e-8f0e-4c59-9d7e-3a3c1c1d2e01"}
    assert build(payload).patient_loop == "2100C"


# ---------------------------------------------------------------------------------------- what is asked

@pytest.mark.parametrize(("item", "path", "words"), [
    ({"category": {"text": "dental"}}, f"{REQUEST}.item[0].category", "has no coding"),
    ({"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes"}]}},
     f"{REQUEST}.item[0].category", "has no code"),
    ({"productOrService": {"text": "office visit"}}, f"{REQUEST}.item[0].productOrService",
     "no coded procedure"),
    # was "procedure code system None has no X12 qualifier": Python's None for a system the client left out
    ({"productOrService": {"coding": [{"code": "99213"}]}}, f"{REQUEST}.item[0].productOrService",
     "procedure code '99213' has no system: name the code system (CPT, HCPCS, CDT, NDC ...)"),
])
def test_an_item_without_a_code_is_refused_not_replaced_by_the_generic_question(item, path, words):
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__item=[item]))
    assert caught.value.status == 422
    assert [(p.fhir_path, words in p.message) for p in caught.value.problems] == [(path, True)]


SNOMED = "http://snomed.info/sct"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
CDT = "http://www.ada.org/cdt"
NDC = "http://hl7.org/fhir/sid/ndc"


@pytest.mark.parametrize(("codings", "eq02"), [
    # was a 422 "procedure code system 'http://snomed.info/sct' has no X12 qualifier": only the first coding was read
    ([{"system": SNOMED, "code": "185349003"}, {"system": CPT, "code": "99213"}], "HC:99213"),
    ([{"system": "urn:oid:1.2.3", "code": "OV"}, {"code": "99213"}, {"system": HCPCS, "code": "G0438"}], "HC:G0438"),
    ([{"system": CPT}, {"system": SNOMED, "code": "185349003"}, {"system": HCPCS, "code": "G0438"}], "HC:G0438"),
    ([{"system": CDT, "code": "D0120"}, {"system": CPT, "code": "99213"}], "AD:D0120"),   # the first that can go
])
def test_the_first_procedure_coding_eq02_can_carry_is_sent(codings, eq02):
    """The codings of one CodeableConcept are one concept in several code systems: sending the one X12 takes loses
    nothing, so the others get no note (as a category's or a diagnosis's other codings get none)."""
    result = build(bundle(request__item=[{"productOrService": {"coding": codings}}]))
    assert ["EQ", "", eq02] in segs(result.text)
    assert not [n for n in result.all_notes() if "productOrService" in n.source]
    assert validate_x12(result.text).valid


@pytest.mark.parametrize(("codings", "code", "words"), [
    ([{"system": SNOMED, "code": "185349003"}, {"system": "urn:oid:1.2.3", "code": "OV"}], "not-supported",
     ["it offers 'http://snomed.info/sct', 'urn:oid:1.2.3';", f"EQ02 takes {CPT}, {HCPCS}", CDT,
      "http://hl7.org/fhir/sid/ndc"]),
    ([{"system": SNOMED, "code": "185349003"}, {"code": "99213"}], "not-supported",
     ["it offers 'http://snomed.info/sct', a code without a system;"]),
    ([{"system": CPT}, {"system": SNOMED, "code": "185349003"}], "not-supported",
     [f"it offers 'http://snomed.info/sct' (its coding in {CPT} has no code); EQ02 takes"]),
    ([{"system": CPT}, {"system": SNOMED}], "required",
     [f"no coded procedure (text alone cannot be sent) (its coding in {CPT} has no code)"]),
    ([{"system": f"urn:local:{n}", "code": "X"} for n in range(8)], "not-supported",
     ["'urn:local:4' and 3 more;"]),
])
def test_a_procedure_no_coding_of_which_eq02_can_carry_is_refused_naming_the_systems(codings, code, words):
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__item=[{"productOrService": {"coding": codings}}]))
    assert caught.value.status == 422
    [problem] = caught.value.problems
    assert (problem.fhir_path, problem.code, problem.x12) == (
        f"{REQUEST}.item[0].productOrService", code,
        "2110C EQ02-1" if code == "not-supported" else "2110C EQ02-2")
    assert all(w in problem.message for w in words), problem.message


# ------------------------------------------------------------------------------------------------ modifiers

def _with_modifiers(*modifiers):
    return [{"productOrService": {"coding": [{"system": CPT, "code": "99213"}]}, "modifier": list(modifiers)}]


@pytest.mark.parametrize(("modifiers", "eq02"), [
    # was HC:99213:25:25: each coding of a concept went as a modifier of its own
    ([{"coding": [{"system": CPT, "code": "25"}, {"system": HCPCS, "code": "25"}]}], "HC:99213:25"),
    # a coding in a modifier system of procedures.yaml before the first with a code; codings without a code skipped
    ([{"coding": [{"system": "urn:local:mods", "code": "X1"}, {"system": HCPCS, "code": "LT"}]}], "HC:99213:LT"),
    ([{"coding": [{"system": CPT}, {"system": "urn:local:mods", "code": "59"}]}], "HC:99213:59"),
    ([{"coding": [{"code": "25"}]}, {"coding": [{"system": HCPCS, "code": "RT"}, {"system": CPT, "code": "50"}]}],
     "HC:99213:25:RT"),
])
def test_each_modifier_concept_is_one_eq02_modifier(modifiers, eq02):
    """The codings of one item.modifier are one modifier in several code systems: one goes, and no note."""
    result = build(bundle(request__item=_with_modifiers(*modifiers)))
    assert ["EQ", "", eq02] in segs(result.text)
    assert not [n for n in result.all_notes() if "modifier" in n.source]
    assert validate_x12(result.text).valid


def test_modifiers_past_the_tables_limit_are_noted_by_their_codes():
    """The note counted concepts, the cut counted codings (a concept of two codings took two of the four places) and
    the 4 was written in the code: now the cut is procedures.yaml's max_modifiers, on concepts, and the note names
    exactly the modifiers not sent."""
    five = [{"coding": [{"system": CPT, "code": code}, {"system": HCPCS, "code": code}]}
            for code in ("25", "59", "LT", "RT", "76")]
    result = build(bundle(request__item=_with_modifiers(*five)))
    assert ["EQ", "", "HC:99213:25:59:LT:RT"] in segs(result.text)
    [note] = [n for n in result.notes if n.source == "CoverageEligibilityRequest.item[0].modifier"]
    assert note.text == "more than 4 procedure modifiers (EQ02 carries 4): '76' not sent"

    tables = load_tables()
    two = dataclasses.replace(tables, t={**tables.t, "procedures": {**tables.t["procedures"], "max_modifiers": 2}})
    result = build_270(bundle(request__item=_with_modifiers(*five)), two, envelope=ENV, limits=element_limits())
    assert ["EQ", "", "HC:99213:25:59"] in segs(result.text)
    [note] = [n for n in result.notes if n.source == "CoverageEligibilityRequest.item[0].modifier"]
    assert note.text == "more than 2 procedure modifiers (EQ02 carries 2): 'LT', 'RT', '76' not sent"


@pytest.mark.parametrize(("modifiers", "index", "words"), [
    ([{"text": "bilateral"}], 0, "the modifier has no code (text alone cannot be sent): code it as a CPT or HCPCS"),
    ([{"coding": [{"code": "25"}]}, {"coding": [{"system": CPT}]}], 1, f"(its coding in {CPT} has no code)"),
])
def test_a_modifier_without_a_code_is_refused_where_it_would_go(modifiers, index, words):
    """A modifier concept without a code went as an empty EQ02 component (a text alone: as nothing at all), so the
    270 asked about the procedure unmodified."""
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__item=_with_modifiers(*modifiers)))
    assert caught.value.status == 422
    [problem] = caught.value.problems
    assert (problem.fhir_path, problem.code, problem.x12) == (
        f"{REQUEST}.item[0].modifier[{index}]", "required", f"2110C EQ02-{index + 3}")
    assert words in problem.message


def test_modifiers_of_an_item_without_a_procedure_are_noted():
    """An item with a category and modifiers but no productOrService: the modifiers were dropped without a word."""
    item = {"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "98"}]},
            "modifier": [{"coding": [{"system": CPT, "code": "25"}]}, {"text": "left side"}]}
    result = build(bundle(request__item=[item]))
    assert ["EQ", "98"] in segs(result.text)
    [note] = [n for n in result.notes if n.source == "CoverageEligibilityRequest.item[0].modifier"]
    assert "the item has none (EQ02)" in note.text and "('25', one without a code)" in note.text


@pytest.mark.parametrize(("item", "path", "x12"), [
    ({"category": {"text": "dental"}}, "item[0].category", "EQ01"),
    ({"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "ZZZ"}]}},
     "item[0].category", "EQ01"),
    ({"productOrService": {"text": "office visit"}}, "item[0].productOrService", "EQ02-2"),
    ({"productOrService": {"coding": [{"code": "99213"}]}}, "item[0].productOrService", "EQ02-1"),
    ({"productOrService": {"coding": [{"system": SNOMED, "code": "185349003"}]}}, "item[0].productOrService",
     "EQ02-1"),
    ({"productOrService": {"coding": [{"system": NDC, "code": "0002751001"}]}}, "item[0].productOrService",
     "EQ02-2"),
    ({"productOrService": {"coding": [{"system": CPT, "code": "99213"}]}, "modifier": [{"text": "x"}]},
     "item[0].modifier[0]", "EQ02-3"),
    ({"productOrService": {"coding": [{"system": CPT, "code": "99213"}]}, "modifier": [{"coding": [{"code": "x"}]}]},
     "item[0].modifier[0]", "EQ02-3"),
    ({"diagnosis": [{"diagnosisCodeableConcept": {"coding": [{"system": ICD10, "code": "E11.9"}]}}]}, "item[0]",
     "EQ01/EQ02"),
])
@pytest.mark.parametrize("dependent", [False, True])
def test_an_inquirys_problem_names_the_loop_it_goes_in(item, path, x12, dependent):
    """A dependent's EQs are in 2110D: the problems of its items said 2110C all the same."""
    changes = {"coverage__relationship": {"coding": [{"code": "child"}]}, "coverage__subscriber": PARENT} \
        if dependent else {}
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__item=[item], **changes))
    assert [(p.fhir_path, p.x12) for p in caught.value.problems] == [
        (f"{REQUEST}.{path}", f"{'2110D' if dependent else '2110C'} {x12}")]


def test_too_many_items_name_the_dependents_loop():
    items = [{"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "30"}]}}] * 100
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__item=items, coverage__relationship={"coding": [{"code": "child"}]},
                     coverage__subscriber=PARENT))
    assert [p.x12 for p in caught.value.problems] == ["2110D EQ"]


def _diagnosis(code):
    return {"diagnosisCodeableConcept": {"coding": [{"system": ICD10, "code": code}]}}


@pytest.mark.parametrize("dependent", [False, True])
def test_a_code_that_cannot_be_sent_is_refused_at_its_own_item_modifier_and_diagnosis(dependent):
    """A modifier the writer would change ('x'), a procedure code with a delimiter and an empty diagnosis code were
    refused at CoverageEligibilityRequest.item.modifier, .item.productOrService and .item.diagnosis: no item, no
    modifier, no diagnosis said which; every diagnosis was HI01 whichever composite it went to."""
    changes = {"coverage__relationship": {"coding": [{"code": "child"}]}, "coverage__subscriber": PARENT} \
        if dependent else {}
    items = [{"productOrService": {"coding": [{"system": CPT, "code": "99213"}]},
              "modifier": [{"coding": [{"code": "25"}]}], "diagnosis": [_diagnosis("E11.9")]},
             {"productOrService": {"coding": [{"system": CPT, "code": "992*14"}]},
              "modifier": [{"coding": [{"code": "LT"}]}, {"coding": [{"code": "x"}]}],
              "diagnosis": [_diagnosis("E11.9"), _diagnosis("I10*")]}]
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__item=items, **changes))
    eq, hi = ("2110D", "2100D") if dependent else ("2110C", "2100C")
    assert sorted((p.fhir_path, p.x12) for p in caught.value.problems) == [
        (f"{REQUEST}.item[1].diagnosis[1].diagnosisCodeableConcept", f"{hi} HI02-2"),
        (f"{REQUEST}.item[1].modifier[1]", f"{eq} EQ02-4"),
        (f"{REQUEST}.item[1].productOrService", f"{eq} EQ02-2")]


def test_an_unsendable_diagnosis_two_items_name_is_refused_at_each():
    """One HI composite, two items pointing at it: the client is told of both places, not of the first alone."""
    items = [{"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "30"}]},
              "diagnosis": [_diagnosis("E11*9")]},
             {"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "98"}]},
              "diagnosis": [_diagnosis("I10"), _diagnosis("E11*9")]}]
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__item=items))
    assert [(p.fhir_path, p.x12) for p in caught.value.problems] == [
        (f"{REQUEST}.item[0].diagnosis[0].diagnosisCodeableConcept", "2100C HI01-2"),
        (f"{REQUEST}.item[1].diagnosis[1].diagnosisCodeableConcept", "2100C HI01-2")]


def test_a_purpose_and_a_coverage_reference_are_refused_at_their_own_index():
    """purpose ['benefits', 'gossip'] was refused at CoverageEligibilityRequest.purpose, and a focal coverage reference
    naming no Coverage at insurance.coverage, though the request has several of each."""
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__purpose=["benefits", "gossip"]))
    assert [p.fhir_path for p in caught.value.problems] == [f"{REQUEST}.purpose[1]"]
    insurance = [{"coverage": {"reference": "Coverage/c"}}, {"focal": True, "coverage": {"display": "Acme PPO"}}]
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__insurance=insurance))
    assert [p.fhir_path for p in caught.value.problems] == [f"{REQUEST}.insurance[1].coverage"]


@pytest.mark.parametrize(("changes", "path"), [
    ({"request__servicedDate": "2025-03"}, f"{REQUEST}.servicedDate"),
    ({"request__servicedPeriod": {"start": "2025-03"}}, f"{REQUEST}.servicedPeriod.start"),
    ({"request__servicedPeriod": {"start": "2025-03-31", "end": "2025-03-01"}},
     f"{REQUEST}.servicedPeriod.end"),
])
@pytest.mark.parametrize("dependent", [False, True])
def test_a_service_date_problem_names_the_patients_dtp(changes, path, dependent):
    """The DTP*291 goes in the patient's loop (2100C, or 2100D for a dependent): its problems said "DTP03" alone."""
    if dependent:
        changes = {**changes, "coverage__relationship": {"coding": [{"code": "child"}]}, "coverage__subscriber": PARENT}
    with pytest.raises(TranslationError) as caught:
        build(bundle(**changes))
    assert [(p.fhir_path, p.x12) for p in caught.value.problems] == [
        (path, f"{'2100D' if dependent else '2100C'} DTP03")]


@pytest.mark.parametrize(("changes", "path"), [
    ({"coverage__beneficiary": PARENT}, f"{COVERAGE}.beneficiary"),
    ({"request__patient": {"reference": "Patient/missing"}}, f"{REQUEST}.patient"),
    ({"request__patient": {"reference": "Organization/payer"}}, f"{REQUEST}.patient"),
    ({"request__patient": None}, f"{REQUEST}.patient"),
])
@pytest.mark.parametrize("dependent", [False, True])
def test_a_problem_of_the_patient_names_the_name_loop_the_patient_is_written_in(changes, path, dependent):
    """A dependent's NM1 is 2100D's: "the beneficiary is another person", an unresolvable or missing patient said
    2100C NM1 all the same."""
    if dependent:
        changes = {**changes, "coverage__relationship": {"coding": [{"code": "child"}]}, "coverage__subscriber": PARENT}
    with pytest.raises(TranslationError) as caught:
        build(bundle(**changes))
    assert [p.x12 for p in caught.value.problems if p.fhir_path == path] == [
        f"{'2100D' if dependent else '2100C'} NM1"]


# ------------------------------------------------------------------------------------------------ envelope

@pytest.mark.parametrize("payer_id", ["PAYER1234567890123", "P"])
def test_a_payer_id_that_cannot_be_isa08_and_gs03_needs_a_configured_receiver(payer_id):
    """ISA08 is 15 wide and GS03 AN 2-15: a longer payer id cut to fit would send to another trading partner."""
    payload = bundle(payer__identifier=[{"type": {"coding": [PAYERID]}, "value": payer_id}])
    unset = Envelope(sender_id="GATEWAY01", receiver_id="", interchange_control=5, now=datetime(2025, 3, 10, 9, 15))
    with pytest.raises(TranslationError) as caught:
        build_270(payload, load_tables(), envelope=unset, limits=element_limits())
    assert [p.x12 for p in caught.value.problems if "receiver" in p.message] == ["ISA08/GS03"]
    if len(payer_id) > 1:   # with a receiver id configured, the payer id goes whole into 2100A only
        result = build_270(payload, load_tables(), envelope=ENV, limits=element_limits())
        assert f"*PI*{payer_id}~" in result.text and "GS*HS*GATEWAY01*PAYERX*" in result.text


# ------------------------------------------------------------------------------------------------ addresses

def _n4(address, **changes):
    result = build(bundle(patient__address=[address], **changes))
    n4 = [p for p in segs(result.text) if p[0] == "N4"]
    return n4, {n.source: n.text for n in result.notes}, result


@pytest.mark.parametrize(("address", "n4"), [
    ({"city": "Albany", "state": "New York", "postalCode": "12207"}, ["N4", "ALBANY", "NY", "12207"]),
    ({"city": "Austin", "state": "texas", "postalCode": "78701", "country": "USA"}, ["N4", "AUSTIN", "TX", "78701"]),
    ({"city": "San Juan", "state": "PR", "postalCode": "00901"}, ["N4", "SAN JUAN", "PR", "00901"]),
    ({"city": "Ottawa", "state": "Ontario", "postalCode": "K1A 0B1"}, ["N4", "OTTAWA", "ON", "K1A 0B1", "CA"]),
    ({"city": "Quebec", "state": "QC", "postalCode": "G1R 4P5", "country": "Canada"},
     ["N4", "QUEBEC", "QC", "G1R 4P5", "CA"]),
    ({"city": "Paris", "postalCode": "75001", "country": "fr"}, ["N4", "PARIS", "", "75001", "FR"]),
    ({"city": "Springfield", "state": "IL", "postalCode": "62701-1234"}, ["N4", "SPRINGFIELD", "IL", "627011234"]),
    # a US territory given as its ISO country: a US address (no N404), the territory as N402
    ({"city": "San Juan", "postalCode": "00901", "country": "PR"}, ["N4", "SAN JUAN", "PR", "00901"]),
    ({"city": "Hagatna", "state": "Guam", "postalCode": "96910", "country": "GU"}, ["N4", "HAGATNA", "GU", "96910"]),
])
def test_n4_carries_state_and_country_codes_never_a_shortened_name(address, n4):
    found, notes, result = _n4(address)
    assert found == [n4] and not notes
    assert validate_x12(result.text).valid


@pytest.mark.parametrize(("address", "n4", "source", "words"), [
    ({"city": "Albany", "state": "Nowhere", "postalCode": "12207"}, ["N4", "ALBANY", "", "12207"],
     "Patient.address.state", "not a US state or territory or a Canadian province"),
    ({"city": "Albany", "state": "ZZ", "country": "US"}, ["N4", "ALBANY"], "Patient.address.state", "'ZZ'"),
    ({"city": "Austin", "state": "Ontario", "country": "US"}, ["N4", "AUSTIN"], "Patient.address.state",
     "not a US state or territory"),
    ({"city": "Paris", "state": "Ile-de-France", "country": "FR"}, ["N4", "PARIS", "", "", "FR"],
     "Patient.address.state", "outside the US and Canada"),
    ({"city": "Paris", "country": "France"}, ["N4", "PARIS"], "Patient.address.country", "ISO 3166"),
])
def test_a_state_or_country_that_is_not_a_code_is_left_out_with_a_note(address, n4, source, words):
    found, notes, _ = _n4(address)
    assert found == [n4] and words in notes[source]


def test_a_dependents_address_goes_in_2100d_and_a_third_line_is_noted():
    address = {"line": ["22 Oak Ave", "Apt 3", "Rear"], "city": "Springfield", "state": "Illinois",
               "postalCode": "62701"}
    result = build(bundle(patient__address=[address], coverage__relationship={"coding": [{"code": "child"}]},
                          coverage__subscriber=PARENT))
    parts = segs(result.text)
    dependent = parts.index(["NM1", "03", "1", "ROE", "ANNA"])
    assert parts[dependent + 1:dependent + 3] == [["N3", "22 OAK AVE", "APT 3"], ["N4", "SPRINGFIELD", "IL", "62701"]]
    assert validate_x12(result.text).valid
    assert "1 more not sent" in {n.source: n.text for n in result.notes}["Patient.address.line"]


# --------------------------------------------------------------------------------------------------- NDC


@pytest.mark.parametrize(("given", "sent", "noted"), [
    ("0002-7510-01", "00002751001", True),    # 4-4-2: the labeler gets the leading zero
    ("50580-506-02", "50580050602", True),    # 5-3-2: the product
    ("12345-6789-1", "12345678901", True),    # 5-4-1: the package
    ("00002-7510-01", "00002751001", True),   # 5-4-2 hyphenated
    ("12345678901", "12345678901", False),    # already as EQ02 takes it
    (" 12345678901 ", "12345678901", False),  # spaces around it are no part of it
])
def test_an_ndc_is_sent_as_11_digits_5_4_2(given, sent, noted):
    result = build(bundle(request__item=[{"productOrService": {"coding": [{"system": NDC, "code": given}]}}]))
    assert ["EQ", "", f"N4:{sent}"] in segs(result.text)
    notes = [n.text for n in result.notes if n.source.endswith("productOrService")]
    assert bool(notes) == noted and (not noted or sent in notes[0])


@pytest.mark.parametrize(("given", "words"), [
    ("0002751001", "ambiguous"),
    ("2-7510-01", "not an NDC"),
    ("0002-7510-0100", "not an NDC"),
    ("ABCDE-1234-12", "not an NDC"),
])
def test_an_ambiguous_or_malformed_ndc_is_refused(given, words):
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__item=[{"productOrService": {"coding": [{"system": NDC, "code": given}]}}]))
    found = [p for p in caught.value.problems if p.x12 == "2110C EQ02-2"]
    assert found and words in found[0].message and found[0].fhir_path.endswith("item[0].productOrService")


# ---------------------------------------------------------------------------------------------- provider

def _role_bundle(practitioner_npi: str | None):
    payload = bundle(request__provider={"reference": "PractitionerRole/role"})
    practitioner = {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Okafor", "given": ["Ada"]}],
                    "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": practitioner_npi}]
                    if practitioner_npi else []}
    role = {"resourceType": "PractitionerRole", "id": "role", "practitioner": {"reference": "Practitioner/doc"},
            "organization": {"reference": "Organization/clinic"}}
    payload["entry"] += [{"fullUrl": "Practitioner/doc", "resource": practitioner},
                         {"fullUrl": "PractitionerRole/role", "resource": role}]
    return payload


def test_a_practitioner_role_without_the_practitioners_npi_is_sent_as_its_organization():
    result = build(_role_bundle(None))
    assert ["NM1", "1P", "2", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"] in segs(result.text)
    assert any("organization's NPI" in n.text for n in result.notes)
    assert validate_x12(result.text).valid


def test_a_practitioner_role_with_the_practitioners_npi_is_sent_as_the_practitioner():
    result = build(_role_bundle("1245319599"))
    assert ["NM1", "1P", "1", "OKAFOR", "ADA", "", "", "", "XX", "1245319599"] in segs(result.text)


# ----------------------------------------------------------------------- nothing dropped without a word

MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}


def test_the_patients_ssn_and_medical_record_number_go_in_ref_sy_and_ea_of_the_patients_loop():
    ids = [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
           {"type": MR, "system": "urn:mrn", "value": "MRN555"}]
    parts = segs(build(bundle(patient__identifier=ids)).text)
    assert ["REF", "SY", "123456789"] in parts and ["REF", "EA", "MRN555"] in parts
    dependent = build(bundle(patient__identifier=ids, coverage__relationship={"coding": [{"code": "child"}]},
                             coverage__subscriber=PARENT))
    rows = segs(dependent.text)
    assert rows.index(["REF", "SY", "123456789"]) > rows.index(["NM1", "03", "1", "ROE", "ANNA"])
    assert validate_x12(dependent.text).valid


def test_an_ssn_that_is_not_9_digits_is_noted_not_sent():
    result = build(bundle(patient__identifier=[{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "12345"}]))
    assert not [p for p in segs(result.text) if p[:2] == ["REF", "SY"]]
    noted = {n.source: n.text for n in result.notes}["Patient.identifier[0]"]
    assert "not 9 digits" in noted and "12345" not in noted   # an SSN is never written into a note


@pytest.mark.parametrize(("changes", "source", "words"), [
    ({"request__insurance": [{"coverage": {"reference": "Coverage/c"}, "businessArrangement": "CONTRACT-77"}]},
     "CoverageEligibilityRequest.insurance[0].businessArrangement", "businessArrangement"),
    ({"coverage__status": "cancelled"}, "Coverage.status", "'cancelled'"),
    ({"patient__name": [{"family": "Roe", "given": ["Anna"], "prefix": ["Dr."]}]}, "Patient.name.prefix", "'Dr.'"),
    ({"patient__multipleBirthInteger": 2}, "Patient.multipleBirth", "INS17"),
    ({"request__item": [{"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes",
                                                  "code": "30"}]},
                         "diagnosis": [{"diagnosisCodeableConcept": {"coding": [{"system": ICD10, "code": c}]}}
                                       for c in ("E11.9", "I10", "J45.909", "M54.5", "R51")]}]},
     "CoverageEligibilityRequest.item[0].diagnosis", "1 more"),
])
def test_what_a_270_does_not_carry_is_noted(changes, source, words):
    result = build(bundle(**changes))
    notes = {n.source: n.text for n in result.notes}
    assert source in notes and words in notes[source], notes


@pytest.mark.parametrize("value", ["GRP~REF*6P*EVIL", "GRP:1", "G" * 51])
def test_a_group_or_plan_number_that_cannot_be_sent_as_given_is_refused(value: str):
    """REF 6P/18 carry identifiers: stripping a delimiter or cutting one sends another group's number."""
    group = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                   "code": "group"}]}, "value": value}]
    with pytest.raises(TranslationError) as caught:
        build(bundle(coverage__class=group))
    assert caught.value.status == 422
    assert any(p.fhir_path == f"{COVERAGE}.class[0].value" for p in caught.value.problems)


def test_the_270_hands_over_each_persons_name_loop_as_sent():
    """What the 271 translation compares the payer's 2100C/2100D segments with: each as written (upper case,
    trailing empty elements left out), without the EQ loops."""
    group = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                   "code": "group"}]}, "value": "grp-7"}]
    own = build(bundle(coverage__class=group, patient__address=[{"line": ["12 Main St"], "city": "Springfield",
                                                                 "state": "IL", "postalCode": "62701"}]))
    sent = {("NM1", "IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123456789"), ("REF", "6P", "GRP-7"),
            ("N3", "12 MAIN ST"), ("N4", "SPRINGFIELD", "IL", "62701"), ("DMG", "D8", "20120304", "F")}
    assert own.persons == {"patient": sent, "subscriber": sent}   # the patient is the subscriber: either way
    dependent = build(bundle(coverage__relationship={"coding": [{"code": "child"}]},
                             coverage__subscriber={"reference": "Patient/parent"}))
    assert dependent.persons == {
        "subscriber": {("NM1", "IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123456789"),
                       ("DMG", "D8", "19800210", "M")},
        "patient": {("NM1", "03", "1", "ROE", "ANNA"), ("DMG", "D8", "20120304", "F")}}


# ------------------------------------------------------------- where a refusal says the problem is (FHIRPath)

NUCC = "http://nucc.org/provider-taxonomy"
MB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}
DEPENDENT = {"coverage__relationship": {"coding": [{"code": "child"}]}, "coverage__subscriber": PARENT}


def _refused(payload, envelope=ENV, **kwargs):
    with pytest.raises(TranslationError) as caught:
        build_270(payload, load_tables(), envelope=envelope, limits=element_limits(), **kwargs)
    return caught.value.problems


@pytest.mark.parametrize(("changes", "expressions", "x12"), [
    # the payer id of the Coverage.payor Reference itself (the items table said "CoverageEligibilityRequest.insurer.
    # identifier (payerid) | Coverage.payor.identifier")
    ({"request__insurer": {}, "coverage__payor": [{"identifier": {"value": "99*9"}}]},
     [f"{COVERAGE}.payor[0].identifier.value"], "2100A NM109"),
    # the member id of the Coverage.identifier typed MB, by its index
    ({"coverage__subscriberId": None, "coverage__identifier": [{"value": "X1"}, {"type": MB, "value": "W*1"}]},
     [f"{COVERAGE}.identifier[1].value"], "2100C NM109"),
    # the name read: the official one, its family taken from its text
    ({"patient__name": [{"use": "old", "family": "Roe"}, {"use": "official", "text": "Anna مريم"}]},
     [f"{PATIENT}.name[1].text"], "2100C NM103"),
    # a dependent's subscriber: the parent's Patient (entry 2)
    ({**DEPENDENT, "parent__name": [{"family": "مريم"}]}, ["Bundle.entry[2].resource.name[0].family"], "2100C NM103"),
    ({**DEPENDENT, "parent__name": [{"given": ["Richard"]}]}, ["Bundle.entry[2].resource.name[0].family"],
     "2100C NM103"),
    ({"coverage__relationship": {"coding": [{"code": "child"}]}, "coverage__subscriber": None},
     [f"{COVERAGE}.subscriber"], "2100C NM103"),
    # a name that is there, without its family: that name's (was Patient.name.family)
    ({"patient__name": [{"use": "nickname", "family": "Roe"}, {"use": "official", "given": ["Anna"]}]},
     [f"{PATIENT}.name[1].family"], "2100C NM103"),
    # a bundled Coverage's references that do not resolve: from the Coverage's entry (was Coverage.payor[0])
    ({"request__insurer": {}, "coverage__payor": [{"reference": "Organization/gone"}]}, [f"{COVERAGE}.payor[0]"],
     "2100A"),
    ({"coverage__subscriber": {"reference": "Patient/gone"}}, [f"{COVERAGE}.subscriber"], "2100C NM1"),
])
def test_a_refusal_names_the_element_read_where_the_client_sent_it(changes, expressions, x12):
    found = [p for p in _refused(bundle(**changes)) if p.x12 == x12]
    assert [p.expressions for p in found] == [expressions], found


def test_a_missing_payer_id_names_each_place_it_may_come_from_as_a_fhirpath():
    """Each alternative its own expression (was one "... (payerid) | Coverage.payor.identifier", no FHIRPath), said
    where the client sent the resource: the payer Organization (entry 4) is the insurer and the only payor."""
    found = [p for p in _refused(bundle(payer__identifier=[])) if p.x12 == "2100A NM109"]
    assert [p.expressions for p in found] == [[f"{PAYER}.identifier", f"{REQUEST}.insurer.identifier",
                                                f"{COVERAGE}.payor.identifier"]]


def test_a_role_practitioners_npi_is_refused_at_the_practitioner():
    found = [p for p in _refused(_role_bundle("1245319590")) if p.x12 == "2100B NM109"]
    assert [p.expressions for p in found] == [["Bundle.entry[6].resource.identifier[0].value"]]


def test_a_payer_id_that_cannot_name_the_receiver_is_refused_at_its_identifier():
    payload = bundle(payer__identifier=[{"type": {"coding": [PAYERID]}, "value": "PAYER1234567890123"}])
    unset = dataclasses.replace(ENV, receiver_id="")
    found = [p for p in _refused(payload, envelope=unset) if p.x12 == "ISA08/GS03"]
    assert [p.expressions for p in found] == [[f"{PAYER}.identifier[0].value"]]


def _practitioner_bundle(qualification):
    payload = bundle(request__provider={"reference": "Practitioner/doc"})
    payload["entry"].append({"fullUrl": "Practitioner/doc", "resource": {
        "resourceType": "Practitioner", "id": "doc", "name": [{"family": "Okafor", "given": ["Ada"]}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1245319599"}],
        "qualification": qualification}})
    return payload


def _specialty_bundle(specialty):
    payload = _role_bundle("1245319599")
    payload["entry"][-1]["resource"]["specialty"] = specialty
    return payload


@pytest.mark.parametrize(("payload", "path"), [
    (_practitioner_bundle([{"code": {"text": "MD"}}, {"code": {"coding": [{"system": NUCC, "code": "207Q~0000X"}]}}]),
     "Bundle.entry[6].resource.qualification[1].code"),
    (_specialty_bundle([{"text": "family"}, {"coding": [{"system": NUCC, "code": "207Q*0000X"}]}]),
     "Bundle.entry[7].resource.specialty[1]"),
    (bundle(clinic__type=[{"text": "clinic"}, {"coding": [{"system": NUCC, "code": "261Q:P2300X"}]}]),
     f"{CLINIC}.type[1]"),
])
def test_a_taxonomy_that_cannot_be_sent_is_refused_at_the_concept_it_was_read_from(payload, path):
    """Was CoverageEligibilityRequest.provider, whichever element held the code."""
    found = [p for p in _refused(payload) if p.x12 == "2100B PRV03"]
    assert [(p.expressions, p.code) for p in found] == [([path], "value")]
    assert "delimiter characters removed" in found[0].message


def test_the_configured_information_receivers_values_are_refused_at_the_provider_it_stands_in_for():
    """The client sent no provider: no element of its body holds the receiver's NPI or taxonomy."""
    receiver = {**RECEIVER, "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1245319590"}],
                "type": [{"coding": [{"system": NUCC, "code": "261Q*P2300X"}]}]}
    found = {p.x12: p for p in _refused(bundle(request__provider=None), information_receiver=receiver)}
    for x12 in ("2100B NM109", "2100B PRV03"):
        assert found[x12].expressions == [f"{REQUEST}.provider"]
        assert found[x12].message.endswith("(the information receiver configured for this payer)")


def _contained_request(**changes):
    """bundle()'s request with the Patient, Coverage and Organizations contained, in that order."""
    payload = bundle(**changes)
    entries = {e["resource"]["resourceType"] + "/" + e["resource"].get("id", ""): e["resource"]
               for e in payload["entry"]}
    request = copy.deepcopy(entries["CoverageEligibilityRequest/"])
    request["contained"] = [entries["Patient/p"], dict(entries["Coverage/c"], beneficiary={"reference": "#p"},
                                                       payor=[{"reference": "#payer"}]),
                            entries["Organization/payer"], entries["Organization/clinic"]]
    request.update(patient={"reference": "#p"}, insurer={"reference": "#payer"}, provider={"reference": "#clinic"},
                   insurance=[{"coverage": {"reference": "#c"}}])
    return request


def test_contained_resources_are_refused_where_they_are_contained():
    """Were Patient.birthDate and Coverage.subscriberId, from the resources' own roots."""
    problems = _refused(_contained_request(coverage__subscriberId="W*1", patient__birthDate="1980-05",
                                           clinic__name="東京クリニック"))
    assert sorted((p.expressions, p.x12) for p in problems) == [
        (["CoverageEligibilityRequest.contained[0].birthDate"], "2100C DMG02"),
        (["CoverageEligibilityRequest.contained[1].subscriberId"], "2100C NM109"),
        (["CoverageEligibilityRequest.contained[3].name"], "2100B NM103")]


def test_a_resource_fetched_from_the_ehr_keeps_its_own_root_and_names_the_reference_sent():
    """``sent``: the payload as the client sent it, the Coverage not in it (upstream.resolve_references fetched it)."""
    client = bundle(coverage__subscriberId="W*1", patient__birthDate="1980-05")
    coverage = next(e for e in client["entry"] if e["resource"]["resourceType"] == "Coverage")
    client["entry"].remove(coverage)
    resolved = {**client, "entry": [*client["entry"], {"fullUrl": "https://ehr.example/fhir/Coverage/c",
                                                        "resource": coverage["resource"]}]}
    problems = {p.x12: p for p in _refused(resolved, sent=client)}
    member = problems["2100C NM109"]
    assert member.expressions == ["Coverage.subscriberId", f"{REQUEST}.insurance[0].coverage"]
    assert member.message.endswith(f"(in the Coverage fetched for {REQUEST}.insurance[0].coverage: "
                                   "the request did not hold it)")
    assert problems["2100C DMG02"].expressions == [f"{PATIENT}.birthDate"]   # the Patient the client sent
    operation = TranslationError("x", list(problems.values())).to_operation_outcome()
    assert ["Coverage.subscriberId", f"{REQUEST}.insurance[0].coverage"] in [
        issue["expression"] for issue in operation["issue"]]


# ----------------------------------------------------------------------- one root, counted as listed, in words


def test_the_requests_own_problems_in_a_bundle_are_said_from_its_entry():
    """They were said at CoverageEligibilityRequest.x beside the other resources' Bundle.entry[i].resource.x: one
    answer, two roots. A request sent alone keeps its own root, and so do its contained resources."""
    problems = _refused(bundle(request__servicedDate="2025-03", coverage__subscriberId="W*1"))
    assert sorted(p.fhir_path for p in problems) == [f"{REQUEST}.servicedDate", f"{COVERAGE}.subscriberId"]
    alone = _contained_request(request__servicedDate="2025-03", coverage__subscriberId="W*1")
    assert sorted(p.fhir_path for p in _refused(alone)) == ["CoverageEligibilityRequest.contained[1].subscriberId",
                                                            "CoverageEligibilityRequest.servicedDate"]


def test_the_summary_counts_each_problem_once(monkeypatch):
    """The summary counted the problems before their duplicates were taken out: "3 problem(s)" above a list of 2."""
    import gateway.translate.request_270 as request_270

    dates = request_270._service_dates

    def twice(g, request):   # one problem found twice (as two paths read may place at one element)
        found = dates(g, request)
        g.problems.append(g.problems[-1])
        return found

    monkeypatch.setattr(request_270, "_service_dates", twice)
    with pytest.raises(TranslationError) as caught:
        build(bundle(request__servicedDate="2025-03", coverage__subscriberId="W*1"))
    assert len(caught.value.problems) == 2
    assert caught.value.summary.endswith(": 2 problem(s)")


def test_the_provider_npi_is_called_an_npi_in_a_refusal():
    """The item's name was turned into words as "provider npi"."""
    clinic = [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567890"}]
    [problem] = [p for p in _refused(bundle(clinic__identifier=clinic)) if p.x12 == "2100B NM109"]
    assert problem.message.startswith("provider NPI '1234567890' cannot be sent as given")


@pytest.mark.parametrize(("changes", "source"), [
    ({}, "CoverageEligibilityRequest.insurer"),
    ({"request__insurer": {}}, "Coverage.payor[0]"),
])
def test_untyped_payer_identifiers_are_noted_at_the_element_they_came_from(changes, source):
    """With several identifiers and none typed payerid, the note said "insurer" even when they were the
    Coverage.payor Organization's."""
    ids = [{"system": "urn:payer-a", "value": "11111"}, {"system": "urn:payer-b", "value": "22222"}]
    result = build(bundle(payer__identifier=ids, **changes))
    [note] = [n for n in result.notes if "none is typed payerid" in n.text]
    assert note.source == source
    assert "PI*11111" in result.text


def _taxonomies(first: str, second: str) -> list[dict]:
    return [{"coding": [{"system": NUCC, "code": first}]}, {"coding": [{"system": NUCC}, {"system": NUCC,
                                                                                         "code": second}]}]


@pytest.mark.parametrize("where", ["specialty", "qualification", "type"])
def test_the_first_nucc_taxonomy_is_sent_wherever_it_is_read(where):
    """PractitionerRole.specialty sent its last NUCC coding, Practitioner.qualification and Organization.type their
    first: now the first everywhere (and a coding without a code is no taxonomy)."""
    concepts = _taxonomies("207Q00000X", "208D00000X")
    if where == "specialty":
        payload = _specialty_bundle(concepts)
    elif where == "qualification":
        payload = _practitioner_bundle([{"code": concept} for concept in concepts])
    else:
        payload = bundle(clinic__type=concepts)
    rows = segs(build(payload).text)
    assert [row for row in rows if row[0] == "PRV"] == [["PRV", "PE", "PXC", "207Q00000X"]]
    # the first concept without a code of its own: the next one's
    concepts = [{"coding": [{"system": NUCC}]}, {"coding": [{"system": NUCC, "code": "208D00000X"}]}]
    payload = _specialty_bundle(concepts) if where == "specialty" else _practitioner_bundle(
        [{"code": concept} for concept in concepts]) if where == "qualification" else bundle(clinic__type=concepts)
    assert ["PRV", "PE", "PXC", "208D00000X"] in segs(build(payload).text)
