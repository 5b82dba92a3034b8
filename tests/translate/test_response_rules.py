"""271 -> CoverageEligibilityResponse rules, one at a time, on small hand-made 271s."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.translate import load_tables
from gateway.translate.response_271 import ResponseContext, translate_271
from gateway.x12.reader import read_x12
from gateway.x12.writer import Envelope, X12Writer

NOW = "2025-01-15T09:30:00Z"
ENV = Envelope(sender_id="PAYERX", receiver_id="GATEWAY01", interchange_control=9, now=datetime(2025, 1, 15, 9, 30))
HEAD = [("BHT", ["0022", "11", "REQ1", "20250115", "0930"]), ("HL", ["1", "", "20", "1"]),
        ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]), ("HL", ["2", "1", "21", "1"]),
        ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"])]
SUBSCRIBER = [("HL", ["3", "2", "22", "0"]), ("TRN", ["2", "REQ1-1", "9GATEWAY01"]),
              ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"]), ("DMG", ["D8", "19800210", "M"])]


def responses(*benefits, head=HEAD, patient=SUBSCRIBER, context_for=None):
    text = X12Writer().interchange(ENV, "HB", "271", "005010X279A1", [[*head, *patient, *benefits]]).text
    txn = read_x12(text).transactions[0]
    return translate_271(txn, load_tables(), now=NOW, context_for=context_for)


def only(*benefits, **kw):
    result, = responses(*benefits, **kw)
    return result


def items(result):
    return result.resource["insurance"][0].get("item", [])


def notes(result):
    return [n.text for n in result.notes]


def test_remaining_minus_total_gives_used():
    r = only(("EB", ["C", "IND", "30", "", "", "23", "2000", "", "", "", "", "Y"]),
             ("EB", ["C", "IND", "30", "", "", "29", "1450.75", "", "", "", "", "Y"]))
    item, = items(r)
    benefit, = item["benefit"]
    assert benefit["allowedMoney"] == {"value": 2000, "currency": "USD"}
    assert benefit["usedMoney"] == {"value": 549.25, "currency": "USD"}
    assert any("derived" in n for n in notes(r))
    assert item["network"]["coding"][0]["code"] == "in"
    assert item["term"]["coding"][0]["code"] == "annual"


def test_remaining_without_total_is_not_turned_into_used():
    r = only(("EB", ["C", "IND", "30", "", "", "29", "450", "", "", "", "", "Y"]))
    item, = items(r)
    assert "usedMoney" not in item["benefit"][0] and "allowedMoney" not in item["benefit"][0]
    assert "Remaining: 450" in item["description"]
    assert any("without a matching total" in n for n in notes(r))


def test_remaining_does_not_match_a_total_of_another_network():
    r = only(("EB", ["C", "IND", "30", "", "", "23", "2000", "", "", "", "", "Y"]),
             ("EB", ["C", "IND", "30", "", "", "29", "1000", "", "", "", "", "N"]))
    assert "usedMoney" not in items(r)[0]["benefit"][0]
    assert any("without a matching total" in n for n in notes(r))


def test_year_to_date_is_used():
    r = only(("EB", ["C", "FAM", "30", "", "", "23", "4000"]), ("EB", ["C", "FAM", "30", "", "", "24", "550"]))
    benefit = items(r)[0]["benefit"][0]
    assert benefit["usedMoney"]["value"] == 550 and benefit["allowedMoney"]["value"] == 4000
    assert items(r)[0]["unit"]["coding"][0]["code"] == "family"


def test_percent_is_a_fraction_and_whole_numbers_are_normalised():
    r = only(("EB", ["A", "IND", "30", "", "", "", "", ".2"]), ("EB", ["A", "IND", "30", "", "", "", "", "20"]),
             ("EB", ["A", "IND", "30", "", "", "", "", ".125"]))
    values = [i["benefit"][0].get("allowedUnsignedInt", i["benefit"][0].get("allowedString")) for i in items(r)]
    assert values == [20, 20, "12.5%"]
    assert any("as a percentage, not a fraction" in n for n in notes(r))


def test_placeholder_amounts():
    r = only(("EB", ["G", "FAM", "30", "", "", "23", "99999.99"]), ("EB", ["F", "IND", "30", "", "", "32", "999999"]))
    out_of_pocket, limit = items(r)
    assert "allowedMoney" not in out_of_pocket["benefit"][0] and "allowedString" not in out_of_pocket["benefit"][0]
    assert limit["benefit"][0]["allowedString"] == "unlimited"
    assert any("no amount applies" in n for n in notes(r)) and any("read as unlimited" in n for n in notes(r))


def test_one_item_per_service_type_of_an_eb03_repetition():
    r = only(("EB", ["1", "", ["1", "33", "35", "AL"]]))
    assert [i["category"]["coding"][0]["code"] for i in items(r)] == ["1", "33", "35", "AL"]
    assert r.resource["insurance"][0]["inforce"] is True
    assert all(i["excluded"] is False for i in items(r))


def test_procedure_rows_respect_ces1():
    r = only(("EB", ["B", "IND", "98", "", "", "27", "25", "", "", "", "", "Y", ("HC", "99213", "25")]))
    item, = items(r)
    assert "category" not in item
    assert item["productOrService"]["coding"][0]["code"] == "99213"
    assert item["modifier"][0]["coding"][0]["code"] == "25"
    assert any("ces-1" in n for n in notes(r))


def test_limitations_in_visits():
    r = only(("EB", ["F", "IND", "33", "", "", "23", "", "", "VS", "20"]),
             ("EB", ["F", "IND", "33", "", "", "29", "", "", "VS", "14"]))
    benefit = items(r)[0]["benefit"][0]
    assert benefit["type"]["coding"][0]["code"] == "visit"
    assert (benefit["allowedUnsignedInt"], benefit["usedUnsignedInt"]) == (20, 6)


def test_exclusions_and_non_covered():
    r = only(("EB", ["E", "", "35"]), ("EB", ["I", "", "AL"]))
    assert [i["excluded"] for i in items(r)] == [True, True]


def test_msg_goes_to_the_item_description():
    r = only(("EB", ["B", "IND", "UC", "", "", "27", "50", "", "", "", "", "W"]), ("MSG", ["COPAY WAIVED IF ADMITTED"]))
    item, = items(r)
    assert item["description"] == "COPAY WAIVED IF ADMITTED"
    assert item["network"]["coding"] == [{"system": "https://codesystem.x12.org/005010/1073", "code": "W"}]


def test_pcp_and_utilization_management_url():
    r = only(("EB", ["L"]), ("LS", ["2120"]), ("NM1", ["P3", "1", "SMITH", "PAT", "", "", "", "XX", "1992999998"]),
             ("PRV", ["PC", "PXC", "207Q00000X"]), ("LE", ["2120"]),
             ("EB", ["1", "IND", "62", "", "", "", "", "", "", "", "Y"]), ("LS", ["2120"]),
             ("NM1", ["X3", "2", "ACME UM"]), ("PER", ["IC", "", "UR", "https://um.example/auth"]), ("LE", ["2120"]))
    pcp, mri = items(r)
    practitioner = next(c for c in r.resource["contained"] if c["id"] == pcp["provider"]["reference"][1:])
    assert practitioner["identifier"][0]["value"] == "1992999998"
    assert mri["authorizationRequired"] is True and mri["authorizationUrl"] == "https://um.example/auth"


def test_other_payer_becomes_a_second_insurance():
    r = only(("EB", ["R", "", "30", "C1"]), ("REF", ["IG", "POL556677"]), ("DTP", ["290", "D8", "20240601"]),
             ("LS", ["2120"]), ("NM1", ["PRP", "2", "OTHER INSURANCE CO", "", "", "", "", "PI", "OIC01"]),
             ("LE", ["2120"]))
    other = r.resource["insurance"][1]
    coverage = next(c for c in r.resource["contained"] if c["id"] == other["coverage"]["reference"][1:])
    payer = next(c for c in r.resource["contained"] if c["id"] == coverage["payor"][0]["reference"][1:])
    assert payer["name"] == "OTHER INSURANCE CO" and coverage["order"] == 1
    assert coverage["identifier"][0]["value"] == "POL556677"
    assert any("Coordination of Benefits 2024-06-01" in n for n in notes(r))


def test_aaa_above_the_patient_gives_one_error_response():
    head = [*HEAD[:3], ("AAA", ["Y", "", "42", "R"])]
    result, = responses(head=head, patient=[])
    resource = result.resource
    assert resource["outcome"] == "error" and "insurance" not in resource
    assert resource["error"][0]["code"]["coding"][0]["code"] == "42"
    assert "2100A" in resource["error"][0]["code"]["text"]


def test_a_rejection_keeps_no_copy_of_the_requests_coverage_that_nothing_references():
    """The request's Bundle-local Coverage, copied into the response as #r3, was kept when the payer rejected the
    request above the patient (AAA 42): there is no insurance to hold it then, and a contained resource nothing
    references breaks dom-3. The copies the response uses stay."""
    from gateway.fhir.rules import check_response

    coverage = {"resourceType": "Coverage", "id": "r3", "status": "active", "beneficiary": {"reference": "#r1"},
                "payor": [{"reference": "#r2"}]}
    patient = {"resourceType": "Patient", "id": "r1", "name": [{"family": "Roe"}]}
    payer = {"resourceType": "Organization", "id": "r2", "name": "Example Health Plan"}

    def context_for(traces):
        return ResponseContext(patient={"reference": "#r1"}, insurer={"reference": "#r2"},
                               coverage={"reference": "#r3"}, contained=[patient, payer, coverage],
                               request={"reference": "CoverageEligibilityRequest/r"}, purpose=["benefits"])

    result, = responses(head=[*HEAD[:3], ("AAA", ["Y", "", "42", "R"])], patient=[], context_for=context_for)
    assert [c["id"] for c in result.resource["contained"]] == ["r1", "r2"]
    assert check_response(result.resource) == []
    answered = only(("EB", ["1", "", "30"]), context_for=context_for)   # with an insurance, the coverage is used
    assert [c["id"] for c in answered.resource["contained"]] == ["r1", "r2", "r3"]
    assert check_response(answered.resource) == []


def test_aaa_in_a_benefit_loop_gives_partial():
    r = only(("EB", ["1", "", "30"]), ("EB", ["V", "", "AL"]), ("AAA", ["N", "", "53", "N"]))
    assert r.resource["outcome"] == "partial"
    assert {e["code"]["coding"][0]["code"] for e in r.resource["error"]} == {"V", "53"}


def test_unknown_codes_pass_through_with_a_note():
    r = only(("EB", ["ZZ", "XYZ", "E1", "Q9", "", "77", "10"]))
    assert any("EB01 'ZZ'" in n for n in notes(r))
    assert all(n for n in notes(r))


def test_dependent_response_and_subscriber_context():
    patient = [("HL", ["3", "2", "22", "1"]), ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"]),
               ("HL", ["4", "3", "23", "0"]), ("TRN", ["2", "REQ7", "9GATEWAY01"]),
               ("NM1", ["03", "1", "ROE", "ANNA"]), ("DMG", ["D8", "20120304", "F"]), ("INS", ["N", "19"]),
               ("EB", ["1", "FAM", "30"])]
    r = only(patient=patient)
    contained = {c["id"]: c for c in r.resource["contained"]}
    assert contained["patient"]["name"][0]["given"] == ["ANNA"]
    assert contained["coverage"]["subscriberId"] == "W123"
    assert contained["coverage"]["relationship"]["coding"][0]["code"] == "child"
    assert contained["subscriber"]["name"][0]["family"] == "ROE"


def test_responses_are_matched_to_requests_by_trace():
    seen = []

    def context_for(traces):
        seen.append(traces)
        if traces != ["REQ1-1"]:
            return None
        return ResponseContext(patient={"reference": "Patient/9"}, insurer={"reference": "Organization/p"},
                               coverage={"reference": "Coverage/c"},
                               request={"reference": "CoverageEligibilityRequest/r"}, purpose=["benefits"])

    r = only(("EB", ["1", "", "30"]), context_for=context_for)
    assert seen == [["REQ1-1"]]
    assert r.resource["patient"] == {"reference": "Patient/9"}
    assert r.resource["request"] == {"reference": "CoverageEligibilityRequest/r"}
    assert "contained" not in r.resource or all(c["id"] != "patient" for c in r.resource["contained"])


def _gateway_context(coverage):
    def context_for(traces):
        return ResponseContext(patient={"reference": "Patient/9"}, insurer={"reference": "Organization/p"},
                               coverage=coverage, request={"reference": "CoverageEligibilityRequest/r"},
                               purpose=["benefits"])
    return context_for


@pytest.mark.parametrize(("coverage", "benefits", "contained_id"), [
    # another coverage the payer names (EB*R and its 2120C payer)
    ({"reference": "Coverage/c"}, [("EB", ["R", "", "30", "MB"]), ("LS", ["2120"]),
                                   ("NM1", ["PR", "2", "OTHER PLAN", "", "", "", "", "PI", "OTH1"]), ("LE", ["2120"])],
     "other-coverage-1"),
    # the coverage asked about, built from the 271 when the request's reference was empty ("coverage": {})
    (None, [], "coverage"),
])
def test_a_coverage_built_for_the_response_is_the_requests_patients(coverage, benefits, contained_id):
    """Its beneficiary was always #patient, which is contained only when the request named no patient: in the
    gateway's responses (the request's patient) the reference dangled."""
    from gateway.fhir.rules import check_response

    r = only(("EB", ["1", "", "30"]), *benefits, context_for=_gateway_context(coverage))
    built = next(c for c in r.resource["contained"] if c["id"] == contained_id)
    assert built["beneficiary"] == {"reference": "Patient/9"}
    assert check_response(r.resource) == []


def test_a_table_can_refuse_unknown_codes():
    tables = load_tables()
    from dataclasses import replace

    import pytest

    from gateway.translate import TranslationError

    strict = replace(tables, policies={**tables.policies, "eligibility_benefit": "error"}, concepts={})
    text = X12Writer().interchange(ENV, "HB", "271", "005010X279A1", [[*HEAD, *SUBSCRIBER, ("EB", ["ZZ"])]]).text
    with pytest.raises(TranslationError) as info:
        translate_271(read_x12(text).transactions[0], strict, now=NOW)
    assert "ZZ" in str(info.value) and "on_missing: error" in str(info.value)


def test_numbers_x12_cannot_mean_are_notes_not_crashes():
    r = only(("EB", ["C", "IND", "30", "", "", "23", "Infinity"]), ("EB", ["A", "IND", "30", "", "", "", "", "NaN"]),
             ("EB", ["C", "IND", "33", "", "", "23", "1E999999"]), ("EB", ["A", "IND", "47", "", "", "", "", "-.2"]),
             ("EB", ["F", "IND", "33", "", "", "23", "", "", "VS", "99999999999"]))
    benefits = [b for i in items(r) for b in i.get("benefit", [])]
    assert not [b for b in benefits if "allowedMoney" in b or "allowedUnsignedInt" in b]
    texts = notes(r)
    assert "amount 'INFINITY' is not a number" in texts and "amount '1E999999' is not a number" in texts
    assert "percent 'NAN' is not a number from 0 up" in texts and "percent '-.2' is not a number from 0 up" in texts
    assert any(b.get("allowedString") == "99999999999" for b in benefits)   # beyond unsignedInt: kept as text


def test_one_benefit_holds_one_allowed_value():
    r = only(("EB", ["B", "IND", "98", "", "", "27", "25", ".2"]))
    benefit = items(r)[0]["benefit"][0]
    assert [k for k in benefit if k.startswith("allowed")] == ["allowedMoney"]
    assert "percent .2" in items(r)[0]["description"]
    assert any("given together with an amount" in n for n in notes(r))


def test_remaining_above_the_total_derives_no_used_amount():
    r = only(("EB", ["C", "IND", "30", "", "", "23", "2000", "", "", "", "", "N"]),
             ("EB", ["C", "IND", "30", "", "", "29", "2500", "", "", "", "", "N"]))
    assert "usedMoney" not in items(r)[0]["benefit"][0]
    assert "remaining amount 2500 is more than the total 2000; no used amount is derived" in notes(r)


def test_impossible_and_reversed_dates_are_noted_not_carried():
    r = only(("DTP", ["356", "D8", "20230229"]), ("DTP", ["291", "RD8", "20251231-20250101"]),
             ("EB", ["1", "IND", "30"]),
             patient=[*SUBSCRIBER[:3], ("DMG", ["D8", "20250230", "M"])])
    resource = r.resource
    assert "benefitPeriod" not in resource["insurance"][0]
    assert all("2023-02-29" not in str(c) and "2025-02-30" not in str(c) for c in resource.get("contained", []))
    assert len([n for n in r.notes if "20230229" in (n.raw or "") or "20251231-20250101" in (n.raw or "")]) == 2


def test_each_dependent_answers_with_its_own_trace_and_further_traces_are_identifiers():
    subscriber = [("HL", ["3", "2", "22", "1"]), ("TRN", ["2", "T1", "9GATEWAY01"]),
                  ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"])]
    dependents = [("HL", ["4", "3", "23", "0"]), ("TRN", ["2", "T2", "9GATEWAY01"]),
                  ("TRN", ["2", "CH-T9", "9CLEARING1"]), ("NM1", ["03", "1", "ROE", "JANE"]),
                  ("EB", ["1", "IND", "30"]),
                  ("HL", ["5", "3", "23", "0"]), ("TRN", ["2", "T3", "9GATEWAY01"]), ("NM1", ["03", "1", "ROE", "JIM"]),
                  ("EB", ["1", "IND", "30"])]
    results = responses(patient=[*subscriber, *dependents])
    requests = [r.resource["request"]["identifier"]["value"] for r in results]
    assert requests[-2:] == ["T2", "T3"]
    jane = results[-2].resource
    assert {"system": "https://fhir-x12-gateway.dev/fhir/sid/trn/9CLEARING1", "value": "CH-T9"} in jane["identifier"]


def test_a_receiver_without_an_npi_is_named_and_its_id_noted():
    head = [*HEAD[:4], ("NM1", ["1P", "2", "BONE AND JOINT CLINIC", "", "", "", "", "SV", "2000035"])]
    r = only(("EB", ["1", "IND", "30"]), head=head)
    assert r.resource["requestor"] == {"display": "BONE AND JOINT CLINIC"}
    assert ("information receiver identified by SV 2000035 (Service Provider Number: no FHIR identifier system holds "
            "it)") in notes(r)


PAYER_ID_TYPE = {"coding": [{"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType",
                             "code": "payerid"}]}


@pytest.mark.parametrize(("qualifier", "identifier"), [
    ("PI", {"type": PAYER_ID_TYPE, "system": "https://fhir-x12-gateway.dev/fhir/sid/payer-id", "value": "356000158"}),
    ("FI", {"system": "urn:oid:2.16.840.1.113883.4.4", "value": "356000158"}),
    ("24", {"system": "urn:oid:2.16.840.1.113883.4.4", "value": "356000158"}),
    ("NI", {"system": "urn:oid:2.16.840.1.113883.6.300", "value": "356000158"}),
    ("XX", {"system": "http://hl7.org/fhir/sid/us-npi", "value": "356000158"}),
])
def test_the_payers_id_goes_under_the_system_its_qualifier_names(qualifier, identifier):
    # was: NM109 of 2100A was a payer id whatever NM108 said (a tax id, a NAIC code or an NPI typed payerid)
    head = [*HEAD[:2], ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", qualifier, "356000158"]), *HEAD[3:]]
    r = valid(only(("EB", ["1", "IND", "30"]), head=head))
    payer = next(c for c in r.resource["contained"] if c["id"] == "payer")
    assert payer["identifier"] == [identifier]
    assert not any("payer identified by" in n for n in notes(r))


@pytest.mark.parametrize(("qualifier", "why"), [
    ("XV", "CMS PlanID: no FHIR identifier system holds it"),
    ("46", "Electronic Transmitter Identification Number (ETIN): no FHIR identifier system holds it"),
    ("Q9", "NM108 'Q9' is not an X279A1 identification code qualifier"),
    ("", "NM108, the qualifier saying what the id is, is empty"),
])
def test_a_payer_id_no_fhir_system_holds_is_noted_not_made_a_payer_id(qualifier, why):
    head = [*HEAD[:2], ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", qualifier, "P77"]), *HEAD[3:]]
    r = valid(only(("EB", ["1", "IND", "30"]), head=head))
    payer = next(c for c in r.resource["contained"] if c["id"] == "payer")
    assert payer == {"resourceType": "Organization", "id": "payer", "name": "EXAMPLE HEALTH PLAN"}
    noted, = [n for n in r.notes if n.text.startswith("payer identified by")]
    assert noted.text == f"payer identified by {qualifier} P77 ({why})"
    assert noted.source.endswith("2100A NM1@4") and "P77" in noted.raw
    # in the gateway the insurer is the request's: nothing of the payer's NM1 is built, so nothing is noted of it
    gateway = only(("EB", ["1", "IND", "30"]), head=head,
                   context_for=lambda _: ResponseContext(insurer={"reference": "Organization/p"}))
    assert not any("payer identified by" in n for n in notes(gateway))


def test_a_requestor_and_another_payer_are_identified_by_their_qualifier_too():
    head = [*HEAD[:4], ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "FI", "356000158"])]
    r = valid(only(("EB", ["R", "", "30", "C1"]), ("LS", ["2120"]),
                   ("NM1", ["PRP", "2", "FIRST INS", "", "", "", "", "NI", "12345"]), ("LE", ["2120"]),
                   ("EB", ["R", "", "30", "C1"]), ("LS", ["2120"]),
                   ("NM1", ["PRP", "2", "SECOND INS", "", "", "", "", "XV", "PLAN9"]), ("LE", ["2120"]), head=head))
    assert r.resource["requestor"] == {"identifier": {"system": "urn:oid:2.16.840.1.113883.4.4", "value": "356000158"},
                                       "display": "SAMPLE CLINIC"}
    first, second = (c for c in r.resource["contained"] if c["id"].startswith("other-payer"))
    assert first["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.6.300", "value": "12345"}]
    assert "identifier" not in second   # was: PLAN9, a CMS PlanID, typed as the payer id
    assert "EB R: Primary Payer SECOND INS identified by XV PLAN9 (CMS PlanID: no FHIR identifier system holds it)" \
        in notes(r)


def test_a_2120_provider_keeps_middle_name_suffix_and_an_id_without_a_fhir_system():
    r = only(("EB", ["L"]), ("LS", ["2120"]), ("NM1", ["P3", "1", "JONES", "MARCUS", "Q", "", "MD", "SV", "0202034"]),
             ("LE", ["2120"]))
    practitioner = next(c for c in r.resource["contained"] if c["resourceType"] == "Practitioner")
    assert practitioner["name"] == [{"family": "JONES", "given": ["MARCUS", "Q"], "suffix": ["MD"]}]
    assert any("identified by SV 0202034" in n for n in notes(r))


def test_a_second_other_payer_is_noted_not_dropped():
    r = only(("EB", ["R", "", "30", "C1"]), ("LS", ["2120"]),
             ("NM1", ["PRP", "2", "FIRST INS", "", "", "", "", "PI", "P1"]),
             ("NM1", ["SEP", "2", "SECOND INS", "", "", "", "", "PI", "P2"]), ("LE", ["2120"]))
    payers = [c["name"] for c in r.resource["contained"] if c["resourceType"] == "Organization"]
    assert "FIRST INS" in payers
    assert any("SECOND INS PI P2" in n for n in notes(r))


def test_plan_dates_first_one_stands_and_the_rest_is_noted():
    r = only(("DTP", ["346", "RD8", "20250101-20251231"]), ("DTP", ["291", "D8", "20250615"]),
             ("EB", ["1", "IND", "30"]))
    assert r.resource["insurance"][0]["benefitPeriod"] == {"start": "2025-01-01"}
    texts = notes(r)
    assert any("range 2025-01-01 to 2025-12-31: the plan period starts 2025-01-01" in n for n in texts)
    assert any("2025-06-15: the plan period already starts 2025-01-01" in n for n in texts)


@pytest.mark.parametrize(("iii", "text"), [
    (["ZZ", "11"], "Place of service 11"),
    (["NI", "52"], "Nature of injury 52"),   # was: "Additional information NI 52"
    (["GR", "4100"], "Nature of injury (NCCI code) 4100"),   # was: "Additional information GR 4100"
    (["", "", "44", "BROKEN BONES AND THIRD DEGREE BURNS"],   # was: "Information 44 BROKEN BONES ..."
     "Nature of injury: BROKEN BONES AND THIRD DEGREE BURNS"),
    (["NI", "52", "44", "LEFT ARM"], "Nature of injury 52 (Nature of injury: LEFT ARM)"),
    (["Q9", "52"], "Additional information Q9 52"),
])
def test_each_x279a1_iii_qualifier_reads_as_words_in_the_item_and_in_a_note(iii, text):
    r = valid(only(("EB", ["B", "IND", "30", "", "", "", "20"]), ("III", iii)))
    item, = items(r)
    assert item["description"] == text
    assert not any(text in n for n in notes(r))
    # a row the response only notes keeps the words in its note
    noted = valid(only(("EB", ["M", "IND", "30"]), ("III", iii)))
    assert f"III for EB M: {text}" in notes(noted)


def test_procedure_ranges_iii_text_and_a_dependents_subscriber_suffix_are_kept():
    r = only(("EB", ["C", "IND", "", "", "", "23", "100", "", "", "", "", "", ("HC", "99201", "", "", "", "",
                                                                              "", "99205")]),
             ("EB", ["1", "IND", "30"]), ("III", ["GR", "ABC", "44", "LEG"]))
    assert any("a range through 99205" in n for n in notes(r))
    assert any("Nature of injury (NCCI code) ABC (Nature of injury: LEG)" in (i.get("description") or "")
               for i in items(r))
    subscriber = [("HL", ["3", "2", "22", "1"]), ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "JR", "MI", "W123"]),
                  ("HL", ["4", "3", "23", "0"]), ("TRN", ["2", "T2", "9GATEWAY01"]),
                  ("NM1", ["03", "1", "ROE", "JANE"]), ("EB", ["1", "IND", "30"])]
    dependent = responses(patient=subscriber)[-1].resource
    holder = next(c for c in dependent["contained"] if c["id"] == "subscriber")
    assert holder["name"][0]["suffix"] == ["JR"]


@pytest.mark.parametrize(("benefit", "message"), [
    ([("LS", ["2120"]), ("NM1", ["P3", "1", "SMITH"])], "LS without its LE"),
    ([("NM1", ["P3", "1", "SMITH"]), ("LE", ["2120"])], "LE without an LS before it"),
    ([("LS", ["2120"]), ("LE", ["2120"])], "LS/LE around no 2120 loop"),
    ([("LS", ["2120"]), ("NM1", ["P3", "1", "SMITH"]), ("LE", ["2121"])], "does not match LS01"),
])
def test_ls_and_le_bracket_2120_loops(benefit, message):
    from gateway.x12.validate import validate_x12

    text = X12Writer().interchange(ENV, "HB", "271", "005010X279A1",
                                   [[*HEAD, *SUBSCRIBER, ("EB", ["L"]), *benefit]]).text
    report = validate_x12(text, elements=False)
    assert any(f.code == "X12-LS-LE" and message in f.message for f in report.findings), report.findings
    assert not report.valid


# -- found by a black-box audit of the CLI on hand-made 271s ------------------------------------------------

def _receiver(hl: str, name: str, npi: str, *rest):
    return [("HL", [hl, "1", "21", "0"]), ("NM1", ["1P", "2", name, "", "", "", "", "XX", npi]), *rest]


def test_a_second_receivers_rejection_is_a_response_of_its_own():
    patient = [*SUBSCRIBER, ("EB", ["1", "", "30"]),
               *_receiver("4", "HILLSIDE CLINIC", "1992999998", ("AAA", ["Y", "", "51", "C"]))]
    answered, rejected = responses(patient=patient)
    assert answered.traces == ["REQ1-1"] and answered.resource["outcome"] == "complete"
    assert rejected.traces == [] and rejected.resource["outcome"] == "error"
    assert rejected.resource["error"][0]["code"]["coding"][0]["code"] == "51"
    assert rejected.resource["requestor"]["identifier"]["value"] == "1992999998"
    assert answered.resource["id"] != rejected.resource["id"]
    # with no patient at all, each receiver's rejection still has its response
    head = [*HEAD[:3], ("HL", ["2", "1", "21", "0"]), HEAD[4], ("AAA", ["Y", "", "50", "N"])]
    first, second = responses(head=head, patient=_receiver("3", "HILLSIDE CLINIC", "1992999998",
                                                           ("AAA", ["Y", "", "51", "C"])))
    assert [r.resource["error"][0]["code"]["coding"][0]["code"] for r in (first, second)] == ["50", "51"]


def test_remainders_pair_with_the_total_of_their_own_year_and_in_order():
    r = only(("EB", ["C", "IND", "30", "", "", "23", "500", "", "", "", "", "Y"]),
             ("DTP", ["292", "RD8", "20240101-20241231"]),
             ("EB", ["C", "IND", "30", "", "", "29", "0", "", "", "", "", "Y"]),
             ("DTP", ["292", "RD8", "20240101-20241231"]),
             ("EB", ["C", "IND", "30", "", "", "23", "600", "", "", "", "", "Y"]),
             ("DTP", ["292", "RD8", "20250101-20251231"]),
             ("EB", ["C", "IND", "30", "", "", "29", "450", "", "", "", "", "Y"]),
             ("DTP", ["292", "RD8", "20250101-20251231"]),
             # no dates: the first unmatched total of the same benefit, in the payer's order
             ("EB", ["G", "IND", "30", "", "", "23", "3000", "", "", "", "", "Y"]),
             ("EB", ["G", "IND", "30", "", "", "22", "4000", "", "", "", "", "Y"]),
             ("EB", ["G", "IND", "30", "", "", "29", "2500", "", "", "", "", "Y"]),
             ("EB", ["G", "IND", "30", "", "", "29", "3100", "", "", "", "", "Y"]))
    pairs = [(i["benefit"][0]["allowedMoney"]["value"], i["benefit"][0].get("usedMoney", {}).get("value"))
             for i in items(r) if i["benefit"][0].get("allowedMoney")]
    assert pairs == [(500, 500), (600, 150), (3000, 500), (4000, 900)]


def test_a_total_keeps_its_used_amount_and_a_disagreeing_one_is_noted():
    r = only(("EB", ["C", "FAM", "30", "", "", "23", "6000"]), ("EB", ["C", "FAM", "30", "", "", "24", "1000"]),
             ("EB", ["C", "FAM", "30", "", "", "29", "4000"]))
    benefit = next(i["benefit"][0] for i in items(r) if i["benefit"][0].get("allowedMoney"))
    assert benefit["usedMoney"]["value"] == 1000
    assert any("gives a used amount of 2000 for the total 6000, which has 1000" in n for n in notes(r))


def test_amounts_of_rows_that_are_not_benefits_are_noted_and_inactive_rows_are_excluded():
    r = only(("EB", ["1", "", "30", "MA"]), ("EB", ["6", "", "30", "MB"]),
             ("EB", ["1", "", "30", "", "NEW PLAN", "23", "500", "", "VS", "10"]),
             ("EB", ["E", "", "AL", "", "", "", "", ".5"]), ("EB", ["I", "", "35", "", "", "23", "1000"]))
    assert r.resource["insurance"][0]["inforce"] is True
    assert [i.get("excluded") for i in items(r)[:2]] == [False, True]   # Part A active, Part B not
    assert "coverage status 6: Inactive" in notes(r)
    said = " | ".join(notes(r))
    for text in ("amount 500, quantity VS 10 of EB 1", "percent .5 of EB E", "amount 1000 of EB I"):
        assert text in said


def test_a_dependents_response_leaves_the_subscribers_benefits_and_trace_to_the_subscriber():
    patient = [("HL", ["3", "2", "22", "1"]), ("TRN", ["2", "TR-SUB", "9GATEWAY01"]),
               ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"]),
               ("EB", ["1", "", "30", "", "GOLD PLAN"]), ("MSG", ["SUBSCRIBER MESSAGE"]),
               ("HL", ["4", "3", "23", "0"]), ("TRN", ["2", "TR-DEP", "9GATEWAY01"]),
               ("NM1", ["03", "1", "ROE", "ANNA"]), ("INS", ["N", "19"]), ("EB", ["1", "", "30"])]
    subscriber, dependent = responses(patient=patient)
    assert subscriber.traces == ["TR-SUB"] and dependent.traces == ["TR-DEP"]
    assert any("SUBSCRIBER MESSAGE" in (i.get("description") or "") for i in items(subscriber))
    assert not any("SUBSCRIBER MESSAGE" in n.raw or "GOLD PLAN" in n.raw for n in dependent.notes)
    assert any("trace TR-SUB of the subscriber's loop (2000C)" in n for n in notes(dependent))


def test_a_271_that_answers_nobody_and_says_nothing_is_not_complete():
    head = [*HEAD[:3], ("HL", ["2", "1", "21", "0"]), HEAD[4]]
    result, = responses(head=head, patient=[])
    assert result.resource["outcome"] == "error"
    assert result.resource["disposition"].startswith("Not answered: the 271 answers no patient")


def test_codes_a_payer_makes_up_are_not_cached():
    """The translators' caches hold what the tables list; a payer's made-up codes would grow them for ever."""
    from dataclasses import replace

    tables = replace(load_tables(), concepts={}, _codings={})
    made_up = [("EB", ["1", code, "30", "", "", code[:2], "", "", "", "", "", code[:1]]) for code in
               ("Q1", "Q2", "Q3", "Q4")]
    text = X12Writer().interchange(ENV, "HB", "271", "005010X279A1", [[*HEAD, *SUBSCRIBER, *made_up]]).text
    first = translate_271(read_x12(text).transactions[0], tables, now=NOW)[0]
    assert "Q1" in str(first.resource["insurance"][0]["item"][0]["unit"])   # still translated
    assert all(code not in key for key in [*tables.concepts, *tables._codings] for code in ("Q1", "Q2", "Q3", "Q4"))
    known = X12Writer().interchange(ENV, "HB", "271", "005010X279A1",
                                    [[*HEAD, *SUBSCRIBER, ("EB", ["1", "IND", "30", "", "", "23", "", "", "", "", "",
                                                                  "Y"])]]).text
    translate_271(read_x12(known).transactions[0], tables, now=NOW)
    assert ("unit", "IND") in tables.concepts   # known codes are still cached


# -- found by fuzzing (tests/translate/test_response_properties.py), each minimised to its cause ---------------------

RAW_ISA = "ISA*00*          *00*          *ZZ*PAYERX         *ZZ*GATEWAY01      *250115*0930*^*00501*000000009*0*P*:~"
RAW_HEAD = ("GS*HB*PAYERX*GATEWAY01*20250115*0930*9*X*005010X279A1~ST*271*0001*005010X279A1~"
            "BHT*0022*11*REQ1*20250115*0930~HL*1**20*1~NM1*PR*2*EXAMPLE HEALTH PLAN*****PI*99999~HL*2*1*21*1~"
            "NM1*1P*2*SAMPLE CLINIC*****XX*1234567893~HL*3*2*22*0~TRN*2*REQ1-1*9GATEWAY01~")
RAW_NAME = "NM1*IL*1*ROE*RICHARD****MI*W123~"


def raw_responses(*segments: str, name: str = RAW_NAME, head: str = RAW_HEAD, context_for=None):
    """Responses to a 271 written verbatim (``segments`` after the subscriber's NM1): values the writer would clean
    (white space, other scripts' digits) reach the reader as a payer sends them."""
    text = RAW_ISA + head + name + "".join(segments) + "SE*1*0001~GE*1*9~IEA*1*000000009~"
    return [result for txn in read_x12(text).transactions
            for result in translate_271(txn, load_tables(), now=NOW, context_for=context_for)]


def valid(result):
    """The response is valid FHIR: the R4B models, the project's rules, and what the models do not check."""
    from gateway.fhir.models import validate_structure
    from gateway.fhir.rules import check_response

    validate_structure(result.resource)
    assert check_response(result.resource) == []
    return result


def test_an_aaa_without_a_reject_reason_is_an_error_with_text_alone():
    # was: error.code.coding [{"code": ""}], which no FHIR validator takes
    r = valid(only(("EB", ["1", "IND", "30"]), ("AAA", ["N"])))
    error, = r.resource["error"]
    assert error["code"] == {"text": "2110C: no reject reason given (AAA03 is empty)"}
    assert r.resource["outcome"] == "partial"


def test_empty_and_padded_service_type_repetitions_name_nothing():
    # was: an item with category code "" for each empty repetition, and " 33" kept with its space
    r = valid(raw_responses("EB*1*IND*30^^ 33^~")[0])
    assert [i["category"]["coding"][0]["code"] for i in items(r)] == ["30", "33"]


def test_a_procedure_needs_its_code_and_a_system_needs_its_qualifier():
    # was: productOrService code "" (EB13 "HC"), system ".../235/" (EB13 ":99213"), components 9+ dropped silently,
    # and a qualifier with a space in the system URI
    r = valid(raw_responses("EB*1*IND*98**********HC~", "EB*1*IND***********:99213:25~",
                            "EB*1*IND***********HC:99214::::::99215:X9~", "EB*1*IND***********Q 9:1~")[0])
    first, second, third, fourth = items(r)
    assert first["category"]["coding"][0]["code"] == "98" and "productOrService" not in first
    assert second["productOrService"] == {"coding": [{"code": "99213"}]}
    assert second["modifier"] == [{"coding": [{"code": "25"}]}]
    assert third["productOrService"]["coding"][0]["code"] == "99214"
    assert fourth["productOrService"]["coding"][0]["system"] == "https://codesystem.x12.org/005010/235/Q%209"
    texts = notes(r)
    assert "EB13 'HC' names no procedure code: the row is read by its service types" in texts
    assert any("EB13 procedure '99213' has no code list qualifier" in n for n in texts)
    assert any("EB13 has 9 components, of which C003 defines 8; the rest ('X9') is not read" in n for n in texts)


def test_codes_with_white_space_inside_are_made_fhir_codes_and_a_trace_originator_is_encoded():
    # was: AAA03 "4\t2" and PRV03 as codes (FHIR: [^\s]+( [^\s]+)*), TRN03 "9 GATEWAY" in a system URI (no spaces)
    r = valid(raw_responses("EB*1*IND*30~AAA*N**4\t2~", "EB*L~LS*2120~NM1*P3*1*SMITH*PAT****XX*1992999998~",
                            "PRV*PC*PXC*207Q0\t 0000X~LE*2120~",
                            head=RAW_HEAD.replace("TRN*2*REQ1-1*9GATEWAY01~", "TRN*2*REQ1-1*9 GATEWAY~"))[0])
    assert r.resource["error"][0]["code"]["coding"][0]["code"] == "4 2"
    practitioner = next(c for c in r.resource["contained"] if c["resourceType"] == "Practitioner")
    assert practitioner["qualification"][0]["code"]["coding"][0]["code"] == "207Q0 0000X"
    assert r.resource["request"]["identifier"]["system"].endswith("/trn/9%20GATEWAY")


def test_a_provider_no_item_refers_to_is_noted_not_contained():
    # was: a contained Practitioner no item referred to (dom-3), its NM1 and PRV counted as mapped, when the row was
    # only noted (EB01 unknown), merged into its total (a remaining amount), or a later provider took the item's place
    entity = ["LS*2120~", "NM1*P3*1*SMITH*PAT****XX*1992999998~", "PRV*PC*PXC*207Q00000X~", "LE*2120~"]
    for body, kept in ((["EB*ZZ*IND*30~", *entity], None),
                       (["EB*C*IND*30***23*100~", "EB*C*IND*30***29*40~", *entity], None),
                       (["EB*L~", *entity[:3], "NM1*P3*1*JONES*AL~", "LE*2120~"], "JONES")):
        r = valid(raw_responses(*body)[0])
        practitioners = [c for c in r.resource["contained"] if c["resourceType"] == "Practitioner"]
        assert [p["name"][0]["family"] for p in practitioners] == ([kept] if kept else [])
        smith = [n for n in r.notes if "SMITH" in n.raw or "207Q00000X" in n.raw]
        assert [n.raw for n in smith] == [entity[1], entity[2]]
        assert all("no item of the response refers to it" in n.text for n in smith)
        assert not {n.source.rsplit("@", 1)[1] for n in smith} & {str(p) for p in r.mapped}


def test_an_authorization_url_no_item_carries_is_noted():
    r = valid(raw_responses("EB*C*IND*30***23*100**********Y~", "EB*C*IND*30***29*40~", "LS*2120~",
                            "NM1*X3*2*UMCO~", "PER*IC**UR*HTTP://UM.EXAMPLE~", "LE*2120~")[0])
    assert "authorizationUrl" not in items(r)[0]
    per, = [n for n in r.notes if n.raw.startswith("PER")]
    assert "no item of the response refers to it" in per.text
    assert per.raw == "PER*IC**UR*HTTP://UM.EXAMPLE~"


def test_a_url_with_white_space_is_no_url():
    # was: authorizationUrl "https://WWW.UM .EXAMPLE" (a FHIR url has no white space)
    r = valid(raw_responses("EB*1*IND*30**********Y~", "LS*2120~", "NM1*X3*2*UMCO~", "PER*IC**UR*WWW.UM .EXAMPLE~",
                            "LE*2120~")[0])
    assert "authorizationUrl" not in items(r)[0]
    assert "URL 'WWW.UM .EXAMPLE' has white space in it: not used as a URL" in notes(r)


def test_benefits_after_a_repeated_subscriber_name_are_the_subscribers():
    # was: a payer repeating NM1*IL opens a second 2100C; its 2110C loops were in no response at all
    r, = raw_responses(RAW_NAME, "EB*1*IND*30~", "EB*C*IND*30***23*500~")
    valid(r)
    assert [i["category"]["coding"][0]["code"] for i in items(r)] == ["30", "30"]
    assert any(n.startswith("loop 2100C repeated in one HL level") for n in notes(r))
    dependent = RAW_HEAD.replace("HL*3*2*22*0~TRN*2*REQ1-1*9GATEWAY01~", "HL*3*2*22*1~")
    subscriber, child = raw_responses(RAW_NAME, "EB*1*IND*30~HL*4*3*23*0~TRN*2*REQ1-2*9GATEWAY01~NM1*03*1*ROE*ANN~",
                                      "EB*1*FAM*30~", head=dependent)
    assert items(subscriber) and items(child)
    assert subscriber.traces == [] and child.traces == ["REQ1-2"]


def test_a_repeated_demographic_segment_is_noted_and_the_first_read():
    # was: the second DMG (N3, N4, INS) overwrote the first, which then was in neither the response nor a note
    r = valid(raw_responses("DMG*D8*19800210*M~DMG*D8*19810311*F~DMG*RD8*19800101-19801231~EB*1*IND*30~",
                            name="NM1*IL*1*ROE*RICHARD****MI*W123~")[0])
    patient = r.resource["contained"][0]
    assert patient["birthDate"] == "1980-02-10" and patient["gender"] == "male"
    assert [n for n in notes(r) if n.startswith("DMG repeated in loop 2100C")] != []
    dmg_in_rd8 = [n for n in r.notes if n.raw == "DMG*RD8*19800101-19801231~"]
    assert dmg_in_rd8 and "repeated" in dmg_in_rd8[0].text


def test_a_birth_date_in_another_format_is_noted():
    # was: DMG*RD8 mapped, its date in neither the response nor a note
    r = valid(raw_responses("DMG*RD8*19800101-19801231*F~EB*1*IND*30~")[0])
    assert "birthDate" not in r.resource["contained"][0]
    assert "birth date '19800101-19801231' in format 'RD8' (not D8) is not read" in notes(r)


def test_dates_written_in_other_scripts_digits_are_not_dates():
    # was: str.isdigit and int read '٢٠٢٥٠١٠١', which became birthDate/period '٢٠٢٥-٠١-٠١' (no FHIR date)
    arabic = "\u0662\u0660\u0662\u0665\u0660\u0661\u0660\u0661"
    r = valid(raw_responses(f"DMG*D8*{arabic}*F~DTP*356*D8*{arabic}~DTP*346*D8*{arabic}~EB*1*IND*30~")[0])
    assert "birthDate" not in r.resource["contained"][0]
    assert "benefitPeriod" not in r.resource["insurance"][0]
    assert "period" not in next(c for c in r.resource["contained"] if c["resourceType"] == "Coverage")
    assert len([n for n in r.notes if arabic in n.raw]) == 3


def test_a_plan_period_that_would_end_before_it_starts_is_noted():
    # was: benefitPeriod {"start": "2025-12-31", "end": "2025-01-01"} from DTP*346 and a DTP*347 before it (per-1)
    r = valid(only(("DTP", ["346", "D8", "20251231"]), ("DTP", ["347", "D8", "20250101"]), ("EB", ["1", "IND", "30"])))
    assert r.resource["insurance"][0]["benefitPeriod"] == {"start": "2025-12-31"}
    assert ("Plan End 2025-01-01: the plan period already starts 2025-12-31, and would end before it starts "
            "(not carried)") in notes(r)


def test_an_eligibility_period_that_would_end_before_it_starts_is_not_the_coverage_period():
    # was: Coverage.period {"start": "2025-12-31", "end": "2025-01-01"} (per-1), the note saying it was kept there
    r = valid(only(("DTP", ["356", "D8", "20251231"]), ("DTP", ["357", "D8", "20250101"]), ("EB", ["1", "IND", "30"])))
    coverage = next(c for c in r.resource["contained"] if c["resourceType"] == "Coverage")
    assert coverage["period"] == {"start": "2025-12-31"}
    assert any(n.startswith("Eligibility End: 2025-01-01") and "not kept on the contained Coverage.period" in n
               for n in notes(r))


def test_amounts_money_cannot_hold_as_sent_are_noted():
    # was: allowedMoney 12.345 (USD has cents) and 1e+17 for 99999999999999999.9 (a double's 15 digits)
    r = valid(only(("EB", ["C", "IND", "30", "", "", "23", "12.345"]),
                   ("EB", ["C", "IND", "33", "", "", "23", "99999999999999999.9"]),
                   ("EB", ["C", "IND", "48", "", "", "23", "100.50"]),
                   ("EB", ["C", "IND", "48", "", "", "29", "25.25"])))
    benefits = [i["benefit"][0] for i in items(r)]
    assert "allowedMoney" not in benefits[0] and "allowedMoney" not in benefits[1]
    assert benefits[2]["allowedMoney"]["value"] == 100.5 and benefits[2]["usedMoney"]["value"] == 75.25
    texts = notes(r)
    assert ("amount '12.345' has more than two decimal places: not an amount FHIR Money holds as sent (left out)"
            in texts)
    assert any("'99999999999999999.9' has more digits than a JSON number carries exactly" in n for n in texts)


def test_values_without_content_give_no_empty_fhir_elements():
    # was: "" or [] or {} where FHIR wants content (ele-1): trace and BHT03-less request identifier, Practitioner and
    # subscriber names, address line, class value, description, other payer name
    no_ids = RAW_HEAD.replace("BHT*0022*11*REQ1*", "BHT*0022*11**").replace("TRN*2*REQ1-1*9GATEWAY01~",
                                                                             "TRN*2~TRN*1~")
    r = valid(raw_responses("N3*~REF*6P~REF*18**PLAN NAME~EB*1*IND*30~MSG*~", "EB*L~LS*2120~NM1*P3*1~LE*2120~",
                            "EB*R**30~LS*2120~NM1*PRP*2~LE*2120~", "EB*B*IND*30***27*10~REF*G1~", head=no_ids)[0])
    assert r.resource["request"]["identifier"] == {"system": "https://fhir-x12-gateway.dev/fhir/sid/bht03",
                                                   "value": "0001"}
    assert "identifier" not in r.resource
    texts = notes(r)
    assert texts.count("trace without a trace number (TRN02 is empty)") == 2
    patient = r.resource["contained"][0]
    assert "address" not in patient
    coverage = next(c for c in r.resource["contained"] if c["id"] == "coverage")
    assert "class" not in coverage
    practitioner = next(c for c in r.resource["contained"] if c["resourceType"] == "Practitioner")
    assert "name" not in practitioner
    assert "preAuthRef" not in r.resource
    assert next(c for c in r.resource["contained"] if c["id"] == "other-payer-1")["name"] == \
        "Other payer (not named by the payer)"
    dependent = RAW_HEAD.replace("HL*3*2*22*0~TRN*2*REQ1-1*9GATEWAY01~", "HL*3*2*22*1~")
    child = valid(raw_responses("HL*4*3*23*0~TRN*2*REQ1-2*9GATEWAY01~NM1*03*1*ROE*ANN~EB*1*FAM*30~", name="NM1*IL*1~",
                                head=dependent)[0])
    subscriber = next(c for c in child.resource["contained"] if c["id"] == "subscriber")
    assert "name" not in subscriber


def test_a_271_cut_short_still_names_what_answers_what():
    # was: request.identifier.value "" for a set with no trace, BHT03 or ST02 (ST*271 and nothing else)
    text = RAW_ISA + "GS*HB*PAYERX*GATEWAY01*20250115*0930*9*X*005010X279A1~ST*271~"
    r, = translate_271(read_x12(text).transactions[0], load_tables(), now=NOW)
    valid(r)
    assert r.resource["request"] == {"display": "not identified: the 271 has no trace number (TRN02), BHT03 or ST02"}


def test_another_coverage_belongs_to_the_requests_patient_in_the_gateway():
    # was: the contained other Coverage's beneficiary "#patient", which the gateway's response does not contain
    def context_for(traces):
        return ResponseContext(patient={"reference": "Patient/9"}, insurer={"reference": "Organization/p"},
                               coverage={"reference": "Coverage/c"},
                               request={"reference": "CoverageEligibilityRequest/r"})

    r = valid(only(("EB", ["1", "IND", "30"]), ("EB", ["R", "", "30", "C1"]), ("LS", ["2120"]),
                   ("NM1", ["PRP", "2", "OTHER INS"]), ("LE", ["2120"]), context_for=context_for))
    other = next(c for c in r.resource["contained"] if c["id"] == "other-coverage-1")
    assert other["beneficiary"] == {"reference": "Patient/9"}


def test_a_reference_without_a_qualifier_still_says_what_it_is():
    # was: a note whose whole text was " " for a bare REF in 2100C
    r = valid(raw_responses("REF~EB*1*IND*30~REF**X1~")[0])
    assert notes(r)[:2] == ["reference without a qualifier (REF01)",
                            "reference without a qualifier (REF01) X1 for EB 1"]


def test_an_unlimited_benefit_with_an_amount_keeps_one_allowed_value():
    # was: allowedString 'unlimited' (EB01 H) and allowedMoney together, which allowed[x] does not allow
    r = valid(only(("EB", ["H", "IND", "30", "", "", "23", "5000"])))
    item, = items(r)
    assert item["benefit"][0]["allowedString"] == "unlimited" and "allowedMoney" not in item["benefit"][0]
    assert item["description"] == "amount 5000"
    assert "amount 5000 given together with 'unlimited' (Unlimited); kept in the item description" in notes(r)


# -- the gateway: the payer's person data that the request's Patient and Coverage do not hold is noted ----------------

def sent(*segments):
    """A person's name loop as the 270 sent it (Request270.persons): id and elements, trailing empty ones left out."""
    out = set()
    for seg_id, values in segments:
        values = list(values)
        while values and not values[-1]:
            values.pop()
        out.add((seg_id, *values))
    return frozenset(out)


def in_gateway(**persons):
    def context_for(traces):
        return ResponseContext(patient={"reference": "Patient/9"}, insurer={"reference": "Organization/p"},
                               coverage={"reference": "Coverage/c"},
                               request={"reference": "CoverageEligibilityRequest/r"}, purpose=["benefits"],
                               persons_sent=persons)
    return context_for


SENT_SUBSCRIBER = sent(*SUBSCRIBER[2:])   # NM1*IL*1*ROE*RICHARD****MI*W123, DMG*D8*19800210*M
BENEFIT = ("EB", ["1", "IND", "30"])
NOT_IN_PATIENT = "(not carried: the response refers to the request's Patient)"
NOT_IN_COVERAGE = "(not carried: the response refers to the request's Coverage)"


def test_in_the_gateway_an_echo_of_the_270_is_mapped_without_a_note():
    r = valid(only(("REF", ["6P", "G1"]), BENEFIT, patient=[*SUBSCRIBER[:3], ("REF", ["6P", "G1"]), SUBSCRIBER[3]],
                   context_for=in_gateway(patient=SENT_SUBSCRIBER | sent(("REF", ["6P", "G1"])))))
    assert notes(r) == []
    assert r.resource["patient"] == {"reference": "Patient/9"}
    assert r.resource["insurance"][0]["coverage"] == {"reference": "Coverage/c"}
    assert "contained" not in r.resource


def test_in_the_gateway_a_corrected_name_birth_date_and_member_id_are_noted_with_their_values():
    patient = [*SUBSCRIBER[:2], ("NM1", ["IL", "1", "ROE", "RICHARD", "Q", "", "", "MI", "W124"]),
               ("DMG", ["D8", "19800211", "M"]), ("INS", ["Y", "18", "001", "25"])]
    r = valid(only(BENEFIT, patient=patient, context_for=in_gateway(patient=SENT_SUBSCRIBER)))
    assert notes(r) == [
        f"the payer's name and member id for the patient: ROE, RICHARD Q; W124 {NOT_IN_PATIENT}",
        f"the payer's birth date and gender for the patient: 1980-02-11, male {NOT_IN_PATIENT}",
        f"the payer's relationship for the patient: 18 (self) {NOT_IN_COVERAGE}",
        "the payer changed identifying data of the patient (INS03 001, INS04 25): check the returned name, birth "
        "date and member id"]
    assert [n.source.split()[-1] for n in r.notes] == ["NM1@9", "DMG@10", "INS@11", "INS@11"]
    assert r.resource["patient"] == {"reference": "Patient/9"} and "contained" not in r.resource


def test_in_the_gateway_an_echo_is_compared_as_sent_case_and_all():
    # written verbatim: the test writer would upper-case it; trailing empty elements and padding are no difference
    r, = raw_responses("DMG*D8*19800210*M**~EB*1*IND*30~", name="NM1*IL*1*Roe*Richard****MI*W123~",
                       context_for=in_gateway(patient=SENT_SUBSCRIBER))
    assert notes(r) == [f"the payer's name and member id for the patient: Roe, Richard; W123 {NOT_IN_PATIENT}"]
    r, = raw_responses("DMG*D8*19800210*M~EB*1*IND*30~", name="NM1*IL*1*ROE*RICHARD ****MI*W123***~",
                       context_for=in_gateway(patient=SENT_SUBSCRIBER))
    assert notes(r) == []


def test_in_the_gateway_a_segment_that_leaves_out_what_the_270_sent_is_an_echo_and_one_that_differs_is_not():
    # the payer answers without the middle name and the gender the 270 gave: nothing the request lacks
    sent_more = in_gateway(patient=sent(("NM1", ["IL", "1", "ROE", "RICHARD", "Q", "", "", "MI", "W123"]),
                                        ("DMG", ["D8", "19800210", "M"])))
    assert notes(only(BENEFIT, patient=[*SUBSCRIBER[:3], ("DMG", ["D8", "19800210"])], context_for=sent_more)) == []
    # a middle name of its own, or a gender where the 270 sent another, is the payer's word: noted
    r = only(BENEFIT, patient=[*SUBSCRIBER[:2], ("NM1", ["IL", "1", "ROE", "RICHARD", "P", "", "", "MI", "W123"]),
                               ("DMG", ["D8", "19800210", "F"])], context_for=sent_more)
    assert notes(r) == [f"the payer's name and member id for the patient: ROE, RICHARD P; W123 {NOT_IN_PATIENT}",
                        f"the payer's birth date and gender for the patient: 1980-02-10, female {NOT_IN_PATIENT}"]


def test_a_group_number_is_noted_in_the_gateway_and_a_coverage_class_on_its_own():
    patient = [*SUBSCRIBER[:3], ("REF", ["6P", "GRP77", "ACME TOOLS"]), SUBSCRIBER[3]]
    r = valid(only(BENEFIT, patient=patient, context_for=in_gateway(patient=SENT_SUBSCRIBER)))
    assert notes(r) == ["the payer's Group Number for the patient: GRP77 (ACME TOOLS) (not carried: the response "
                        "refers to the request's Coverage, which holds no such group class)"]
    standalone = valid(only(BENEFIT, patient=patient))
    assert notes(standalone) == []
    coverage = next(c for c in standalone.resource["contained"] if c["id"] == "coverage")
    assert coverage["class"] == [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                                       "code": "group"}]}, "value": "GRP77", "name": "ACME TOOLS"}]


def test_in_the_gateway_an_address_the_270_did_not_send_is_noted():
    patient = [*SUBSCRIBER[:3], ("N3", ["12 MAIN ST", "APT 2"]), ("N4", ["SPRINGFIELD", "IL", "627011234"]),
               SUBSCRIBER[3]]
    r = valid(only(BENEFIT, patient=patient, context_for=in_gateway(patient=SENT_SUBSCRIBER)))
    assert notes(r) == [f"the payer's street address for the patient: 12 MAIN ST, APT 2 {NOT_IN_PATIENT}",
                        f"the payer's city, state and ZIP for the patient: SPRINGFIELD, IL 62701-1234 {NOT_IN_PATIENT}"]
    sent_too = in_gateway(patient=SENT_SUBSCRIBER | sent(("N3", ["12 MAIN ST", "APT 2"]),
                                                         ("N4", ["SPRINGFIELD", "IL", "627011234"])))
    assert notes(only(BENEFIT, patient=patient, context_for=sent_too)) == []


def test_in_the_gateway_a_dependents_subscriber_belongs_to_the_requests_coverage():
    patient = [("HL", ["3", "2", "22", "1"]), ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"]),
               ("DMG", ["D8", "19800210", "M"]), ("HL", ["4", "3", "23", "0"]), ("TRN", ["2", "REQ1-1", "9GATEWAY01"]),
               ("NM1", ["03", "1", "ROE", "ANNA"]), ("DMG", ["D8", "20120304", "F"])]
    context_for = in_gateway(subscriber=sent(("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"])),
                             patient=sent(("NM1", ["03", "1", "ROE", "ANNA"]), ("DMG", ["D8", "20120304", "F"])))
    r = valid(only(BENEFIT, patient=patient, context_for=context_for))
    assert notes(r) == [f"the payer's birth date and gender for the subscriber: 1980-02-10, male {NOT_IN_COVERAGE}"]


DEPENDENT = [("HL", ["3", "2", "22", "1"]), ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"]),
             ("HL", ["4", "3", "23", "0"]), ("TRN", ["2", "REQ1-1", "9GATEWAY01"]), ("NM1", ["03", "1", "ROE", "ANNA"])]
SENT_DEPENDENT = {"subscriber": sent(("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"])),
                  "patient": sent(("NM1", ["03", "1", "ROE", "ANNA"]))}
RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"


def with_relationship(relationship=None, coverage=None):
    """The gateway's context for a dependent's response, knowing the request's relationship (``relationship``) or
    holding a copy of the request's Coverage (``coverage``)."""
    def context_for(traces):
        return ResponseContext(patient={"reference": "Patient/9"}, coverage={"reference": "#r2"} if coverage else
                               {"reference": "Coverage/c"}, request={"reference": "CoverageEligibilityRequest/r"},
                               contained=[{"resourceType": "Coverage", "id": "r2", "status": "active",
                                           "beneficiary": {"reference": "Patient/9"},
                                           "payor": [{"reference": "Organization/p"}], **coverage}] if coverage else [],
                               persons_sent=SENT_DEPENDENT, relationship=relationship)
    return context_for


def dependent_notes(ins, context_for):
    return notes(valid(only(BENEFIT, patient=[*DEPENDENT, ("INS", ins)], context_for=context_for)))


@pytest.mark.parametrize(("ins", "relationship"), [(["N", "19"], "child"), (["N", "01"], "spouse"),
                                                   (["N", "53"], "common"), (["N", "34"], "parent")])
def test_in_the_gateway_a_dependents_ins_saying_the_requests_relationship_is_an_echo(ins, relationship):
    # was: always noted, as the 270 sends no INS for a dependent (the loop, 2100D, says it); the request's
    # Coverage.relationship says it already (a parent is sent as 34, other adult, as the 270 would)
    assert dependent_notes(ins, with_relationship(relationship)) == []


def test_in_the_gateway_a_dependents_other_relationship_is_noted_with_both():
    assert dependent_notes(["N", "01"], with_relationship("child")) == [
        "the payer's relationship for the patient: 01 (spouse) (not carried: the response refers to the request's "
        "Coverage, whose relationship is child)"]
    assert dependent_notes(["N", "QQ"], with_relationship("child")) == [
        "the payer's relationship for the patient: 'QQ' (not carried: the response refers to the request's Coverage, "
        "whose relationship is child)"]


@pytest.mark.parametrize("ins", [["Y", "19"], ["", "19"], ["N", "19", "001", "25"], [*["N", "19"], *[""] * 14, "2"]])
def test_in_the_gateway_an_ins_saying_more_than_the_relationship_is_no_echo(ins):
    # INS01 Y says the patient is the subscriber; INS03/INS04, INS17 are the payer's own word
    texts = dependent_notes(ins, with_relationship("child"))
    assert texts[0] == ("the payer's relationship for the patient: 19 (child) (not carried: the response refers to the "
                        "request's Coverage)")


def test_in_the_gateway_the_relationship_is_read_from_the_requests_coverage():
    # the gateway's context holds a copy of the request's Coverage when the request sent it (contained, a Bundle)
    coded = {"relationship": {"coding": [{"system": RELATIONSHIP, "code": "child"}]}}
    assert dependent_notes(["N", "19"], with_relationship(coverage=coded)) == []
    canvas = {"relationship": {"coding": [{"system": "http://hl7.org/fhir/ValueSet/subscriber-relationship",
                                           "code": "spouse"}]}}
    assert dependent_notes(["N", "01"], with_relationship(coverage=canvas)) == []
    assert dependent_notes(["N", "19"], with_relationship(coverage=canvas))[0].endswith("whose relationship is spouse)")
    other_system = {"relationship": {"coding": [{"system": "urn:example:rel", "code": "child"}]}}
    assert dependent_notes(["N", "19"], with_relationship(coverage=other_system)) == [
        "the payer's relationship for the patient: 19 (child) (not carried: the response refers to the request's "
        "Coverage)"]
    # a Coverage on the EHR's server, not at hand: noted, as without a request
    assert len(dependent_notes(["N", "19"], with_relationship())) == 1


def test_in_the_gateway_a_subscribers_own_ins_saying_self_is_an_echo():
    patient = [*SUBSCRIBER, ("INS", ["Y", "18"])]
    context_for = in_gateway(patient=SENT_SUBSCRIBER)

    def knowing(traces):
        context = context_for(traces)
        context.relationship = "self"
        return context
    assert notes(valid(only(BENEFIT, patient=patient, context_for=knowing))) == []
    assert notes(valid(only(BENEFIT, patient=patient, context_for=context_for))) == [
        f"the payer's relationship for the patient: 18 (self) {NOT_IN_COVERAGE}"]


def test_in_the_gateway_composites_are_compared_by_components_whatever_each_side_separates_them_with():
    # was: HI was always noted; and composites compared as text, HI*ABK>M5450 differed from the 270's HI*ABK:M5450
    sent_hi = in_gateway(patient=SENT_SUBSCRIBER | sent(("HI", ["ABK:M5450", "ABF:E119"])))
    isa = RAW_ISA.replace("*P*:~", "*P*>~")
    name = "NM1*IL*1*ROE*RICHARD****MI*W123~DMG*D8*19800210*M~"

    def answered(hi, context_for):
        text = isa + RAW_HEAD + name + hi + "EB*1*IND*30~SE*1*0001~GE*1*9~IEA*1*000000009~"
        result, = [t for txn in read_x12(text).transactions
                   for t in translate_271(txn, load_tables(), now=NOW, context_for=context_for)]
        return notes(valid(result))

    assert answered("HI*ABK>M5450*ABF>E119~", sent_hi) == []
    assert answered("HI*ABK>M5450~", sent_hi) == []   # one left out adds nothing
    assert answered("HI*ABK>M5450*ABF>E1190~", sent_hi) == [
        "diagnosis codes returned by the payer, not as the 270 sent them"]
    assert answered("HI*ABK>M5450>D8~", sent_hi) == ["diagnosis codes returned by the payer, not as the 270 sent them"]
    assert answered("HI*ABK>M5450~", None) == ["diagnosis codes echoed by the payer"]   # on its own: no request

    def sent_with(separator):
        def context_for(traces):
            context = in_gateway(patient=SENT_SUBSCRIBER | sent(("HI", [f"ABK{separator}M5450"])))(traces)
            context.sent_component = separator
            return context
        return context_for
    assert answered("HI*ABK>M5450~", sent_with("^")) == []
    assert answered("HI*ABK>M5450~", sent_with(">")) == []


def test_in_the_gateway_without_what_the_270_sent_all_person_data_is_noted():
    r = only(BENEFIT, context_for=in_gateway())
    assert notes(r) == [f"the payer's name and member id for the patient: ROE, RICHARD; W123 {NOT_IN_PATIENT}",
                        f"the payer's birth date and gender for the patient: 1980-02-10, male {NOT_IN_PATIENT}"]


def test_a_271_echoing_the_built_270_gains_no_note_in_the_gateway():
    """From the request to the 270 and back: the segments the 270 wrote are what an echo is compared with."""
    from gateway.translate.request_270 import build_270
    from gateway.x12.structure import element_limits
    from tests.translate.test_request_rules import ENV as REQUEST_ENV
    from tests.translate.test_request_rules import bundle

    built = build_270(bundle(), load_tables(), envelope=REQUEST_ENV, limits=element_limits())
    name_loop = [s for s in read_x12(built.text).transactions[0].segments() if s.id in ("NM1", "DMG")][-2:]
    patient = [*SUBSCRIBER[:2], *((s.id, s.elements) for s in name_loop)]
    r = valid(only(BENEFIT, patient=patient, context_for=in_gateway(**built.persons)))
    assert notes(r) == []


# -- a person's NM108 decides what NM109 is ----------------------------------------------------------------------------

MEMBER_ID = "https://fhir-x12-gateway.dev/fhir/sid/member-id"


def with_name(nm1, **kw):
    return only(BENEFIT, patient=[*SUBSCRIBER[:2], ("NM1", nm1), SUBSCRIBER[3]], **kw)


def test_a_persons_member_id_is_the_nm109_under_mi():
    r = valid(with_name(["IL", "1", "ROE", "RICHARD", "", "", "", "MI", "W123"]))
    patient = next(c for c in r.resource["contained"] if c["id"] == "patient")
    coverage = next(c for c in r.resource["contained"] if c["id"] == "coverage")
    assert [i["system"] for i in patient["identifier"]] == [MEMBER_ID] and coverage["subscriberId"] == "W123"
    assert notes(r) == []


@pytest.mark.parametrize(("qualifier", "why"), [
    ("II", "Standard Unique Health Identifier for each Individual in the United States: no FHIR identifier system "
           "holds it"),
    ("Q9", "NM108 'Q9' is not an X279A1 identification code qualifier"),
    ("", "NM108, the qualifier saying what the id is, is empty"),
])
def test_a_persons_id_under_another_qualifier_is_no_member_id_and_is_noted(qualifier, why):
    # was: 2100C/2100D NM109 became the member id (subscriberId, the Patient's member identifier) whatever NM108 said
    r = valid(with_name(["IL", "1", "ROE", "RICHARD", "", "", "", qualifier, "123456789"]))
    patient = next(c for c in r.resource["contained"] if c["id"] == "patient")
    coverage = next(c for c in r.resource["contained"] if c["id"] == "coverage")
    assert "identifier" not in patient and "subscriberId" not in coverage
    noted, = [n for n in r.notes if "123456789" in n.text]
    shown = f"{qualifier} 123456789" if qualifier else "123456789"
    assert noted.text == f"the patient identified by {shown} ({why}): not a member id"
    assert noted.source.endswith("2100C NM1@9") and noted.raw.startswith("NM1*IL")


def test_a_persons_id_under_a_qualifier_with_a_system_is_an_identifier_of_the_person():
    r = valid(with_name(["IL", "1", "ROE", "RICHARD", "", "", "", "FI", "356000158"]))
    patient = next(c for c in r.resource["contained"] if c["id"] == "patient")
    assert patient["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.4.4", "value": "356000158"}]
    assert "subscriberId" not in next(c for c in r.resource["contained"] if c["id"] == "coverage")
    assert notes(r) == []
    # a dependent's subscriber too: the contained subscriber holds it
    dependent = [("HL", ["3", "2", "22", "1"]), ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "XX", "1234567893"]),
                 ("HL", ["4", "3", "23", "0"]), ("TRN", ["2", "REQ7", "9GATEWAY01"]),
                 ("NM1", ["03", "1", "ROE", "ANNA"]), ("INS", ["N", "19"]), BENEFIT]
    r = valid(only(patient=dependent))
    subscriber = next(c for c in r.resource["contained"] if c["id"] == "subscriber")
    assert subscriber["identifier"] == [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}]


def test_a_persons_qualifier_not_listed_refuses_the_271_when_the_table_says_so():
    from dataclasses import replace

    from gateway.translate import TranslationError

    text = X12Writer().interchange(ENV, "HB", "271", "005010X279A1", [[
        *HEAD, *SUBSCRIBER[:2], ("NM1", ["IL", "1", "ROE", "RICHARD", "", "", "", "Q9", "W123"]), BENEFIT]]).text
    tables = load_tables()
    strict = replace(tables, policies={**tables.policies, "identifiers": "error"}, concepts={})
    with pytest.raises(TranslationError, match="code 'Q9' is not in mappings/translate/identifiers.yaml"):
        translate_271(read_x12(text).transactions[0], strict, now=NOW)
    # MI and the listed qualifiers pass it
    translate_271(read_x12(text.replace("*Q9*", "*II*")).transactions[0], strict, now=NOW)


def test_in_the_gateway_a_persons_id_under_another_qualifier_is_noted_as_an_id():
    r = with_name(["IL", "1", "ROE", "RICHARD", "", "", "", "II", "W123"], context_for=in_gateway(
        patient=SENT_SUBSCRIBER))
    assert notes(r) == [f"the payer's name and id for the patient: ROE, RICHARD; II W123 {NOT_IN_PATIENT}"]


# -- NM102 the table does not list -------------------------------------------------------------------------------------

def test_a_receivers_unlisted_entity_type_is_noted_and_read_as_an_organisation():
    # was: read as an organisation without a word
    head = [*HEAD[:4], ("NM1", ["1P", "3", "SAMPLE CLINIC", "JANE", "", "", "", "XX", "1234567893"])]
    r = valid(only(BENEFIT, head=head))
    assert r.resource["requestor"]["display"] == "SAMPLE CLINIC"
    noted, = [n for n in r.notes if "NM102" in n.text]
    assert noted.text == ("information receiver SAMPLE CLINIC: NM102 '3' is no entity type qualifier (1 person, "
                          "2 organization): read as an organization")
    assert noted.source.endswith("2100B NM1@6")
    empty = [*HEAD[:4], ("NM1", ["1P", "", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"])]
    assert ("information receiver SAMPLE CLINIC: NM102 is empty (1 person, 2 organization): read as an organization"
            in notes(only(BENEFIT, head=empty)))
    # in the gateway the requestor is the request's provider: its NM102 is not read
    gateway = only(BENEFIT, head=head, context_for=lambda _: ResponseContext(provider={"reference": "Practitioner/1"}))
    assert not any("NM102" in n for n in notes(gateway))


def test_a_payers_and_a_2120_entitys_unlisted_entity_type_is_noted():
    head = [*HEAD[:2], ("NM1", ["PR", "X", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]), *HEAD[3:]]
    r = valid(only(("EB", ["L"]), ("LS", ["2120"]), ("NM1", ["P3", "9", "JONES", "MARCUS", "", "", "", "XX", "1"]),
                   ("LE", ["2120"]), head=head))
    assert [n for n in notes(r) if "NM102" in n] == [
        "payer EXAMPLE HEALTH PLAN: NM102 'X' is no entity type qualifier (1 person, 2 organization): read as an "
        "organization",
        "Primary Care Provider JONES: NM102 '9' is no entity type qualifier (1 person, 2 organization): read as an "
        "organization"]
    assert not any(c["resourceType"] == "Practitioner" for c in r.resource["contained"])


def test_a_persons_unlisted_entity_type_is_noted_and_read_as_a_person():
    r = valid(with_name(["IL", "X", "ROE", "RICHARD", "", "", "", "MI", "W123"]))
    assert notes(r) == ["the patient ROE: NM102 'X' is no entity type qualifier (1 person, 2 organization): read as a "
                        "person"]
    patient = next(c for c in r.resource["contained"] if c["id"] == "patient")
    assert patient["name"] == [{"family": "ROE", "given": ["RICHARD"]}]


# -- the gateway: the payer's and the requestor's NM1 against what the 270 sent ----------------------------------------

PARTIES_SENT = {"payer": sent(HEAD[2]), "receiver": sent(HEAD[4])}


def with_parties(parties=PARTIES_SENT):
    def context_for(traces):
        return ResponseContext(patient={"reference": "Patient/9"}, insurer={"reference": "Organization/p"},
                               coverage={"reference": "Coverage/c"}, provider={"reference": "Organization/clinic"},
                               request={"reference": "CoverageEligibilityRequest/r"}, persons_sent={
                                   "patient": SENT_SUBSCRIBER}, parties_sent=parties)
    return context_for


def test_in_the_gateway_a_payer_and_requestor_nm1_echoing_the_270_are_mapped():
    r = valid(only(BENEFIT, context_for=with_parties()))
    assert notes(r) == []
    assert {4, 6} <= r.mapped   # the 2100A and 2100B NM1
    assert r.resource["insurer"] == {"reference": "Organization/p"}
    assert r.resource["requestor"] == {"reference": "Organization/clinic"}
    # one that leaves out what the 270 sent (the payer's name) says nothing the request lacks
    head = [*HEAD[:2], ("NM1", ["PR", "2", "", "", "", "", "", "PI", "99999"]), *HEAD[3:]]
    assert notes(only(BENEFIT, head=head, context_for=with_parties())) == []


def test_in_the_gateway_a_payer_nm1_other_than_the_270s_is_noted_with_what_differs():
    # was: mapped (counted as carried into the response) though the response holds the request's insurer only
    head = [*HEAD[:2], ("NM1", ["PR", "2", "EXAMPLE HEALTH", "", "", "", "", "PI", "88888"]), *HEAD[3:]]
    r = valid(only(BENEFIT, head=head, context_for=with_parties()))
    noted, = r.notes
    assert noted.text == ("the information source's NM1 (2100A) is not the 270's: NM103 'EXAMPLE HEALTH' (Name Last or "
                          "Organization Name; the 270 sent 'EXAMPLE HEALTH PLAN'), NM109 '88888' (Identification Code; "
                          "the 270 sent '99999') (not carried: the response refers to the request's insurer)")
    assert noted.source.endswith("2100A NM1@4") and noted.raw.startswith("NM1*PR*2*EXAMPLE HEALTH*")
    assert 4 in r.noted and 4 not in r.mapped
    assert r.resource["insurer"] == {"reference": "Organization/p"}


def test_in_the_gateway_a_requestor_nm1_other_than_the_270s_is_noted_with_what_differs():
    head = [*HEAD[:4], ("NM1", ["1P", "1", "SAMPLE CLINIC", "JANE", "", "", "", "SV", "2000035"])]
    r = valid(only(BENEFIT, head=head, context_for=with_parties()))
    assert notes(r) == [
        "the information receiver's NM1 (2100B) is not the 270's: NM102 '1' (Entity Type Qualifier; the 270 sent '2'), "
        "NM104 'JANE' (Name First; not sent), NM108 'SV' (Identification Code Qualifier; the 270 sent 'XX'), NM109 "
        "'2000035' (Identification Code; the 270 sent '1234567893') (not carried: the response refers to the "
        "request's provider)"]
    assert 6 in r.noted and 6 not in r.mapped
    # the 270's loop unknown for one of them: what the payer says of it is all noted
    r = only(BENEFIT, context_for=with_parties({"receiver": PARTIES_SENT["receiver"]}))
    assert notes(r) == [
        "the information source's NM1 (2100A) is not the 270's: NM101 'PR' (Entity Identifier Code; not sent), NM102 "
        "'2' (Entity Type Qualifier; not sent), NM103 'EXAMPLE HEALTH PLAN' (Name Last or Organization Name; not "
        "sent), NM108 'PI' (Identification Code Qualifier; not sent), NM109 '99999' (Identification Code; not sent) "
        "(not carried: the response refers to the request's insurer)"]


def test_without_what_the_270_sent_of_the_payer_and_requestor_their_nm1s_are_read_as_before():
    # a context that does not know them (parties_sent unset): mapped, as echoes, and an id without a system noted
    head = [*HEAD[:2], ("NM1", ["PR", "2", "EXAMPLE HEALTH", "", "", "", "", "PI", "88888"]), *HEAD[3:]]
    r = only(BENEFIT, head=head, context_for=with_parties(None))
    assert notes(r) == [] and {4, 6} <= r.mapped


def test_a_271_echoing_the_built_270s_payer_and_provider_gains_no_note_in_the_gateway():
    """The 2100A and 2100B NM1 as the built 270 wrote them (what request_270 would hand over as parties) echo."""
    from gateway.translate.request_270 import build_270
    from gateway.x12.structure import element_limits
    from tests.translate.test_request_rules import ENV as REQUEST_ENV
    from tests.translate.test_request_rules import bundle

    built = build_270(bundle(), load_tables(), envelope=REQUEST_ENV, limits=element_limits())
    txn = read_x12(built.text).transactions[0]
    payer, receiver = (next(s for loop, s in txn.root.walk() if loop.id == lid and s.id == "NM1")
                       for lid in ("2100A", "2100B"))
    parties = {"payer": sent((payer.id, payer.elements)), "receiver": sent((receiver.id, receiver.elements))}
    head = [*HEAD[:2], (payer.id, payer.elements), HEAD[3], (receiver.id, receiver.elements)]
    r = valid(only(BENEFIT, head=head, context_for=with_parties(parties)))
    assert notes(r) == []


def test_the_built_270s_payer_and_receiver_loops_are_what_a_271_nm1_is_compared_with():
    """From the request to the 270 and back, as the gateway does (Request270.parties -> parties_sent): the payer's
    and the receiver's NM1 as the 270 wrote them are echoes; a payer that names itself otherwise is noted."""
    from gateway.translate.request_270 import build_270
    from gateway.x12.structure import element_limits
    from tests.translate.test_request_rules import ENV as REQUEST_ENV
    from tests.translate.test_request_rules import bundle

    built = build_270(bundle(), load_tables(), envelope=REQUEST_ENV, limits=element_limits())
    segments = read_x12(built.text).transactions[0].segments()
    payer, receiver = [(s.id, s.elements) for s in segments if s.id == "NM1"][:2]
    head = [*HEAD[:2], payer, HEAD[3], receiver]
    context = with_parties(built.parties)
    assert set(built.parties) == {"payer", "receiver"} and notes(valid(only(BENEFIT, head=head,
                                                                             context_for=context))) == []
    renamed = ("NM1", [payer[1][0], payer[1][1], "ANOTHER PLAN", *payer[1][3:]])
    text, = notes(only(BENEFIT, head=[*HEAD[:2], renamed, HEAD[3], receiver], context_for=context))
    assert text.startswith("the information source's NM1 (2100A) is not the 270's: NM103 'ANOTHER PLAN'")
