"""270 -> FHIR: each inquiry keeps its meaning, and the Bundle translates back to the same 270."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.translate import load_tables
from gateway.translate.document import translate_document
from gateway.translate.request_from_270 import translate_270
from gateway.translate.response_271 import translate_271
from gateway.x12.reader import read_x12
from gateway.x12.writer import Envelope, Value, X12Writer
from tests.conftest import FIXTURES

NOW = datetime(2025, 1, 15, 9, 30)
GOLDEN_270 = sorted((FIXTURES / "golden" / "270").glob("*.270"))
HEAD: list[tuple[str, list[Value]]] = [
    ("BHT", ["0022", "13", "T1", "20250115", "0930"]), ("HL", ["1", "", "20", "1"]),
    ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]), ("HL", ["2", "1", "21", "1"]),
    ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"]), ("HL", ["3", "2", "22", "0"]),
    ("TRN", ["1", "T1", "9GATEWAY01"]), ("NM1", ["IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123"]),
    ("DMG", ["D8", "19800203", "F"])]


def segments(text: str) -> list[str]:
    return [s.strip() for s in text.split(text[105]) if s.strip()]


def x12(body: list[tuple[str, list[Value]]]) -> str:
    env = Envelope(sender_id="GATEWAY01", receiver_id="99999", interchange_control=1, now=NOW)
    return X12Writer().interchange(env, "HS", "270", "005010X279A1", [body]).text


def from_270(text: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The Bundle, its request, and the notes' texts."""
    bundle, notes = translate_270(read_x12(text).transactions[0], load_tables(), now="2025-01-15T09:30:00Z")
    request = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "CoverageEligibilityRequest")
    return bundle, request, [n.text for n in notes]


def back_to_270(bundle: dict[str, Any]) -> str:
    return translate_document(json.dumps(bundle).encode(), load_tables(), now=NOW, control_number=1,
                              sender_id="GATEWAY01").output


@pytest.mark.parametrize("path", GOLDEN_270, ids=lambda p: p.stem)
def test_each_generated_270_translates_back_to_itself(path: Path):
    """270 -> FHIR -> 270 asks the same questions (same segments, envelope included)."""
    text = path.read_text()
    bundle = translate_document(text.encode(), load_tables(), now=NOW).output
    assert segments(back_to_270(bundle)) == segments(text)


def test_an_eq_with_service_type_and_procedure_is_one_item():
    text = x12([*HEAD, ("EQ", ["62", ("HC", "A9579")])])
    bundle, request, _ = from_270(text)
    assert request["item"] == [{
        "category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "62",
                                 "display": "MRI/CAT Scan"}]},
        "productOrService": {"coding": [{"system": "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
                                         "code": "A9579"}]}}]
    assert [s for s in segments(back_to_270(bundle)) if s.startswith("EQ")] == ["EQ*62*HC:A9579"]


def test_each_service_type_of_an_eq_with_a_procedure_carries_the_procedure():
    text = x12([*HEAD, ("EQ", [["62", "98"], ("HC", "70551")])])
    _, request, _ = from_270(text)
    assert [(i["category"]["coding"][0]["code"], i["productOrService"]["coding"][0]["code"])
            for i in request["item"]] == [("62", "70551"), ("98", "70551")]


def test_a_generic_eq_keeps_the_diagnoses_it_points_at():
    text = x12([*HEAD, ("HI", [("ABK", "M5450"), ("ABF", "M62830"), ("ABF", "S335XXA"), ("ABF", "E119")]),
                ("EQ", ["30", "", "", "", ("1", "2", "3", "4")])])
    bundle, request, notes = from_270(text)
    assert [i["category"]["coding"][0]["code"] for i in request["item"]] == ["30"]
    assert [d["diagnosisCodeableConcept"]["coding"][0]["code"] for d in request["item"][0]["diagnosis"]] == [
        "M54.50", "M62.830", "S33.5XXA", "E11.9"]
    assert not [n for n in notes if "diagnosis" in n]
    assert sorted(request["purpose"]) == ["benefits", "validation"]
    assert segments(back_to_270(bundle))[3:-3] == segments(text)[3:-3]


def test_a_generic_eq_without_diagnoses_stays_a_request_without_items():
    _, request, _ = from_270(x12([*HEAD, ("EQ", ["30"])]))
    assert "item" not in request
    assert request["purpose"] == ["benefits", "validation"]


def test_an_eq05_pointer_to_no_diagnosis_is_noted():
    _, _, notes = from_270(x12([*HEAD, ("HI", [("ABK", "M5450")]), ("EQ", ["33", "", "", "", ("1", "3")])]))
    assert any("diagnosis pointer 3 (EQ05) points at no HI diagnosis" in n for n in notes)


@pytest.mark.parametrize("pointer", ["\u00b2", "1" * 5000])
def test_an_eq05_pointer_no_int_can_read_is_noted_too(pointer):
    text = x12([*HEAD, ("HI", [("ABK", "M5450")]), ("EQ", ["33", "", "", "", ("1", "9")])])
    assert text.count("1:9~") == 1
    _, request, notes = from_270(text.replace("1:9~", f"1:{pointer}~"))   # as sent: the writer would change '²
    assert any(f"diagnosis pointer {pointer[:10]}" in n and "points at no HI diagnosis" in n for n in notes)
    assert len(request["item"][0]["diagnosis"]) == 1


def test_a_zero_padded_eq05_pointer_points_like_its_number():
    text = x12([*HEAD, ("HI", [("ABK", "M5450")]), ("EQ", ["33", "", "", "", ("1", "9")])])
    _, request, notes = from_270(text.replace("1:9~", "01~"))
    assert [d["diagnosisCodeableConcept"]["coding"][0]["code"] for d in request["item"][0]["diagnosis"]] == ["M54.50"]
    assert not any("pointed at by no EQ05" in n or "points at no HI" in n for n in notes)


def test_a_270_without_member_id_is_a_discovery_request():
    head = [s if s[0] != "NM1" or s[1][0] != "IL" else ("NM1", ["IL", "1", "ROE", "ANNA"]) for s in HEAD]
    text = x12([*head, ("EQ", ["30"])])
    bundle, request, _ = from_270(text)
    assert request["purpose"] == ["benefits", "discovery", "validation"]
    assert segments(back_to_270(bundle))[3:-3] == segments(text)[3:-3]
    _, with_id, _ = from_270(x12([*HEAD, ("EQ", ["30"])]))
    assert "discovery" not in with_id["purpose"]


@pytest.mark.parametrize("qualifier, sent, fhir", [
    ("ABK", "M5450", "M54.50"), ("ABF", "S335XXA", "S33.5XXA"), ("ABF", "I10", "I10"), ("ABF", "E11.9", "E11.9"),
    ("BK", "8901", "890.1"), ("BF", "25000", "250.00"), ("BF", "V7231", "V72.31"), ("BF", "E8889", "E888.9"),
    ("BF", "E888", "E888"), ("BF", "401", "401")])
def test_icd_codes_get_their_decimal_point_back(qualifier: str, sent: str, fhir: str):
    _, request, _ = from_270(x12([*HEAD, ("HI", [(qualifier, sent)]), ("EQ", ["33", "", "", "", ("1",)])]))
    assert request["item"][0]["diagnosis"][0]["diagnosisCodeableConcept"]["coding"][0]["code"] == fhir


def test_a_segment_no_step_reads_is_noted_in_each_request():
    """A segment where the guide puts none (a REF at the subscriber level) is not dropped without a word."""
    head = [*HEAD[:7], ("REF", ["EJ", "ACC1"]), *HEAD[7:8], ("DMG", ["D8", "19800203", "X"])]
    _, request, notes = from_270(x12([*head, ("EQ", ["30"])]))
    assert "segment REF in loop 2000C is not read by the translation" in notes
    assert "gender 'X' (DMG03) has no AdministrativeGender code" in notes
    texts = [e["extension"][2]["valueString"] for e in request["extension"]]
    assert "segment REF in loop 2000C is not read by the translation" in texts


def test_an_unread_segment_of_one_patient_is_noted_in_that_patients_request_only():
    """Its raw text may be the patient's data: another subscriber's request in the same 270 never carries it."""
    first = [*HEAD[:7], ("REF", ["EJ", "ACC1"]), *HEAD[7:], ("EQ", ["30"])]
    second = [("HL", ["4", "2", "22", "0"]), ("TRN", ["1", "T2", "9GATEWAY01"]),
              ("NM1", ["IL", "1", "POE", "BEN", "", "", "", "MI", "W456"]), ("DMG", ["D8", "19700101", "M"]),
              ("EQ", ["30"])]
    bundle, _ = translate_270(read_x12(x12([*first, *second])).transactions[0], load_tables(),
                              now="2025-01-15T09:30:00Z")
    requests = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CoverageEligibilityRequest"]
    texts = [[part["valueString"] for note in r.get("extension", []) for part in note["extension"]
              if part["url"] == "text"] for r in requests]
    assert "segment REF in loop 2000C is not read by the translation" in texts[0]
    assert not any("REF" in t for t in texts[1])


def test_a_nine_digit_zip_comes_back_with_its_hyphen():
    head = [*HEAD[:8], ("N3", ["1 MAIN ST"]), ("N4", ["SPRINGFIELD", "IL", "627011234"]), HEAD[8]]
    bundle, _, _ = from_270(x12([*head, ("EQ", ["30"])]))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert patient["address"][0]["postalCode"] == "62701-1234"
    back = back_to_270(bundle)
    assert "N4*SPRINGFIELD*IL*627011234~" in back


def test_a_provider_named_only_by_its_id_has_no_empty_name():
    head = [*HEAD[:4], ("NM1", ["1P", "2", "", "", "", "", "", "XX", "1234567893"]), *HEAD[5:]]
    bundle, _, _ = from_270(x12([*head, ("EQ", ["30"])]))
    provider = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Organization"
                    and e["resource"].get("identifier", [{}])[0].get("value") == "1234567893")
    assert "name" not in provider


def test_the_bht05_note_is_said_once_per_transaction_and_shared_by_every_request():
    text = (FIXTURES / "x12" / "270" / "multi-subscriber.270").read_text()
    bundle, notes = translate_270(read_x12(text).transactions[0], load_tables(), now="2025-01-15T09:30:00Z")
    assert len([n for n in notes if n.text.startswith("BHT05 time")]) == 1
    requests = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CoverageEligibilityRequest"]
    assert len(requests) > 1 and all(r["created"] == "2025-03-21" for r in requests)
    assert all(any(part.get("valueString", "").startswith("BHT05 time") for note in r["extension"]
                   for part in note["extension"]) for r in requests)


@pytest.mark.parametrize(("n403", "n404", "postal"), [
    ("627011234", "", "62701-1234"), ("627011234", "US", "62701-1234"), ("62701", "", "62701"),
    ("K1A0B1", "CA", "K1A0B1"), ("123456789", "FR", "123456789")])
def test_a_us_zip_plus_4_gets_its_hyphen_in_fhir(n403: str, n404: str, postal: str):
    from types import SimpleNamespace

    from gateway.translate.response_271 import us_zip

    n4 = SimpleNamespace(get=lambda i: {3: n403, 4: n404}.get(i, ""))
    assert us_zip(n4, load_tables()) == postal


def _valid_fhir(bundle: dict[str, Any]) -> None:
    from gateway.fhir.models import validate_structure

    validate_structure(bundle)
    for entry in bundle["entry"]:
        validate_structure(entry["resource"])
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(bundle["entry"])   # bdl-7


def test_codes_sent_with_stray_white_space_are_valid_fhir_codes():
    """Components and repetitions come as sent: " 25" as a modifier, "A  B" as a service type or " M5450" as a
    diagnosis made the whole Bundle invalid FHIR (a code has no leading, trailing or doubled space)."""
    text = x12([*HEAD, ("HI", [("ABK", "M5450")]), ("EQ", [["62", "98"], ("HC", "70551", "25"), "", "", "1"])])
    text = text.replace("EQ*62^98*HC:70551:25", "EQ* 62^9  8*HC: 70551 : 25 ").replace("ABK:M5450", "ABK: M5450")
    bundle, request, _ = from_270(text)
    _valid_fhir(bundle)
    item = request["item"]
    assert [i["category"]["coding"][0]["code"] for i in item] == ["62", "9 8"]
    assert item[0]["productOrService"]["coding"][0]["code"] == "70551"
    assert item[0]["modifier"][0]["coding"][0]["code"] == "25"
    assert item[0]["diagnosis"][0]["diagnosisCodeableConcept"]["coding"][0]["code"] == "M54.50"


def test_an_eq02_without_a_procedure_code_asks_no_procedure_and_says_so():
    """EQ*62*HC (a qualifier, no code) became a productOrService coding with code "": invalid FHIR."""
    text = x12([*HEAD, ("EQ", ["62", ("HC", "A9579")])]).replace("EQ*62*HC:A9579", "EQ*62*HC")
    bundle, request, notes = from_270(text)
    _valid_fhir(bundle)
    assert [i.get("productOrService") for i in request["item"]] == [None]
    assert any("EQ02 'HC' names no procedure code (EQ02-2)" in n for n in notes)


def test_an_eq02_without_a_qualifier_keeps_the_code_without_a_system_and_says_so():
    """EQ*62*:99213 became a coding under https://codesystem.x12.org/005010/235/ (nothing after it) without a word; as
    a 271's EB13 without EB13-1, the code is kept alone: its code system is not known."""
    text = x12([*HEAD, ("EQ", ["62", ("", "99213", "25")])])
    assert "EQ*62*:99213:25" in text
    bundle, request, notes = from_270(text)
    _valid_fhir(bundle)
    item, = request["item"]
    assert item["productOrService"] == {"coding": [{"code": "99213"}]}
    assert item["modifier"] == [{"coding": [{"code": "25"}]}]
    assert "EQ02 procedure '99213' has no code list qualifier (EQ02-1): its code system is not known" in notes
    assert "235/" not in json.dumps(bundle)
    # a qualifier the table does not list still names the X12 one's system, percent-encoded as the 271's
    _, request, _ = from_270(x12([*HEAD, ("EQ", ["", ("Q Q", "99213")])]))
    assert request["item"][0]["productOrService"]["coding"] == [
        {"system": "https://codesystem.x12.org/005010/235/Q%20Q", "code": "99213"}]


def test_a_payer_and_provider_id_go_under_the_system_their_qualifier_names():
    # was: 2100A NM109 was the payer id whatever NM108 said; the provider's note said only an NPI has a system
    head = [*HEAD[:2], ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "FI", "356000158"]), HEAD[3],
            ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "SV", "PROV55"]), *HEAD[5:]]
    bundle, _, notes = from_270(x12([*head, ("EQ", ["30"])]))
    _valid_fhir(bundle)
    payer = next(e["resource"] for e in bundle["entry"] if e["resource"].get("name") == "EXAMPLE HEALTH PLAN")
    assert payer["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.4.4", "value": "356000158"}]
    assert "provider identified by SV PROV55 (Service Provider Number: no FHIR identifier system holds it)" in notes
    head[2] = ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "XV", "PLAN9"])
    bundle, _, notes = from_270(x12([*head, ("EQ", ["30"])]))
    payer = next(e["resource"] for e in bundle["entry"] if e["resource"].get("name") == "EXAMPLE HEALTH PLAN")
    assert "identifier" not in payer
    assert "payer identified by XV PLAN9 (CMS PlanID: no FHIR identifier system holds it)" in notes


def test_a_group_ref_without_a_value_is_noted_not_an_empty_class():
    text = x12([*HEAD, ("REF", ["6P", "G1"]), ("EQ", ["30"])]).replace("REF*6P*G1", "REF*6P")
    bundle, _, notes = from_270(text)
    _valid_fhir(bundle)
    coverage = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Coverage")
    assert "class" not in coverage and any("REF 6P names no group (REF02 is empty)" in n for n in notes)


def test_a_second_patient_under_a_repeated_hl01_keeps_a_request_of_its_own():
    """Two 2000C loops both HL*3 (the reader reports it): the second patient's Patient, Coverage and request had the
    first one's ids, were taken for duplicates and dropped."""
    second = [("HL", ["3", "2", "22", "0"]), ("TRN", ["1", "T2", "9GATEWAY01"]),
              ("NM1", ["IL", "1", "DOE", "JOHN", "", "", "", "MI", "W456"]), ("EQ", ["30"])]
    text = x12([*HEAD, ("EQ", ["30"]), *second])
    result = translate_document(text.encode(), load_tables(), now=NOW)
    assert any(f.code == "X12-HL-DUPLICATE" for f in result.findings)
    _valid_fhir(result.output)
    requests = [e["resource"] for e in result.output["entry"]
                if e["resource"]["resourceType"] == "CoverageEligibilityRequest"]
    assert [r["identifier"][0]["value"] for r in requests] == ["T1", "T2"]
    patients = {e["fullUrl"]: e["resource"] for e in result.output["entry"]}
    assert [patients[r["patient"]["reference"]]["identifier"][0]["value"] for r in requests] == ["W123", "W456"]


def test_an_interchange_sent_twice_keeps_both_with_ids_of_their_own():
    """The same ISA13, GS06, ST02 and BHT03 twice: both sets' resources had the same fullUrls, so the Bundle broke
    bdl-7 and a reference could resolve to either copy."""
    text = x12([*HEAD, ("EQ", ["30"])])
    other = text.replace("*ROE*ANNA*", "*DOE*JOHN*").replace("*W123~", "*W456~")
    result = translate_document((text + other).encode(), load_tables(), now=NOW)
    _valid_fhir(result.output)
    names = [e["resource"]["name"][0]["family"] for e in result.output["entry"]
             if e["resource"]["resourceType"] == "Patient"]
    assert names == ["ROE", "DOE"]
    alone = translate_document(text.encode(), load_tables(), now=NOW).output
    first = [e["fullUrl"] for e in result.output["entry"]][:len(alone["entry"])]
    assert [e["fullUrl"] for e in alone["entry"]] == first   # the first copy keeps the ids it has alone


def test_a_trace_originator_with_spaces_or_slashes_is_percent_encoded_as_the_271_encodes_it():
    """TRN03 is free text (AN): "9 GW/01" went into the identifier system as it was (a space in a uri, and a slash
    that made another path), where the 271 translation percent-encodes it; both now share one function."""
    trn = "https://fhir-x12-gateway.dev/fhir/sid/trn"
    head = [*HEAD[:6], ("TRN", ["1", "T1", "9 GW/01"]), *HEAD[7:]]
    bundle, request, _ = from_270(x12([*head, ("EQ", ["30"])]))
    _valid_fhir(bundle)
    assert {"system": f"{trn}/9%20GW%2F01", "value": "T1"} in request["identifier"]
    body = [*head[:6], ("TRN", ["2", "T1", "9 GW/01"]), *head[7:], ("EB", ["1", "IND", "30"])]
    env = Envelope(sender_id="99999", receiver_id="GATEWAY01", interchange_control=2, now=NOW)
    answer = X12Writer().interchange(env, "HB", "271", "005010X279A1", [body]).text
    [response] = translate_271(read_x12(answer).transactions[0], load_tables(), now="2025-01-15T09:30:00Z")
    assert response.resource["request"]["identifier"] == {"system": f"{trn}/9%20GW%2F01", "value": "T1"}
    plain = from_270(x12([*HEAD, ("EQ", ["30"])]))[1]["identifier"]   # a company id stays as it is
    assert {"system": f"{trn}/9GATEWAY01", "value": "T1"} in plain


def _entry(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type)


@pytest.mark.parametrize(("qualifier", "why"), [
    ("II", "Standard Unique Health Identifier for each Individual in the United States: no FHIR identifier system "
           "holds it"),
    ("Q9", "NM108 'Q9' is not an X279A1 identification code qualifier"),
    ("", "NM108, the qualifier saying what the id is, is empty"),
])
def test_a_270_persons_id_under_another_qualifier_than_mi_is_no_member_id(qualifier, why):
    # was: 2100C NM109 became the member id (subscriberId, the Patient's member identifier) whatever NM108 said
    head = [*HEAD[:7], ("NM1", ["IL", "1", "ROE", "ANNA", "", "", "", qualifier, "123456789"]), *HEAD[8:]]
    bundle, request, notes = from_270(x12([*head, ("EQ", ["30"])]))
    _valid_fhir(bundle)
    assert "identifier" not in _entry(bundle, "Patient") and "subscriberId" not in _entry(bundle, "Coverage")
    shown = f"{qualifier} 123456789" if qualifier else "123456789"
    assert f"the subscriber identified by {shown} ({why}): not a member id" in notes
    assert "discovery" in request["purpose"]   # no member id: the payer is asked to find the coverage


def test_a_270_persons_id_under_a_qualifier_with_a_system_is_an_identifier_of_the_person():
    head = [*HEAD[:7], ("NM1", ["IL", "1", "ROE", "ANNA", "", "", "", "FI", "356000158"]), *HEAD[8:]]
    bundle, _, notes = from_270(x12([*head, ("EQ", ["30"])]))
    assert _entry(bundle, "Patient")["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.4.4",
                                                        "value": "356000158"}]
    assert "subscriberId" not in _entry(bundle, "Coverage")
    assert not any("356000158" in n for n in notes)


def test_a_270_nm102_the_table_does_not_list_is_noted():
    # was: a provider's NM102 other than 1 was read as an organisation without a word
    head = [*HEAD[:2], ("NM1", ["PR", "X", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]), HEAD[3],
            ("NM1", ["1P", "3", "SAMPLE CLINIC", "JANE", "", "", "", "XX", "1234567893"]), *HEAD[5:7],
            ("NM1", ["IL", "", "ROE", "ANNA", "", "", "", "MI", "W123"]), HEAD[8]]
    bundle, _, notes = from_270(x12([*head, ("EQ", ["30"])]))
    _valid_fhir(bundle)
    assert [n for n in notes if "NM102" in n] == [
        "payer EXAMPLE HEALTH PLAN: NM102 'X' is no entity type qualifier (1 person, 2 organization): read as an "
        "organization",
        "provider SAMPLE CLINIC: NM102 '3' is no entity type qualifier (1 person, 2 organization): read as an "
        "organization",
        "the subscriber ROE: NM102 is empty (1 person, 2 organization): read as a person"]
    assert any(e["resource"].get("name") == "SAMPLE CLINIC" and e["resource"]["resourceType"] == "Organization"
               for e in bundle["entry"])
    assert _entry(bundle, "Patient")["identifier"][0]["value"] == "W123"
