"""271 -> CoverageEligibilityResponse: what the translation does not carry is never dropped without a note.

EB11 read through mappings/translate/authorization.yaml, negative amounts, the country subdivision (N407), INS
elements beyond those read, and any element of a mapped segment that the translation does not read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import MappingError
from gateway.translate import TranslationError, load_tables
from gateway.translate.response_271 import translate_271
from gateway.x12.reader import read_x12
from tests.conftest import mappings_with
from tests.translate.test_response_rules import (
    BENEFIT,
    NOT_IN_PATIENT,
    NOW,
    RAW_HEAD,
    RAW_ISA,
    RAW_NAME,
    SENT_SUBSCRIBER,
    SUBSCRIBER,
    in_gateway,
    items,
    notes,
    only,
    raw_responses,
    valid,
)


def eb11(code: str, *more):
    return only(("EB", ["1", "IND", "30", "", "", "", "", "", "", "", code]), *more)


def raw_text(*segments: str) -> str:
    """A 271 written verbatim, as ``raw_responses`` writes it (``segments`` after the subscriber's NM1)."""
    return RAW_ISA + RAW_HEAD + RAW_NAME + "".join(segments) + "SE*1*0001~GE*1*9~IEA*1*000000009~"


def with_authorization(**codes):
    """The loaded tables with EB11 codes replaced or added (``codes``: code -> entry)."""
    tables = load_tables()
    table = tables.t["authorization"]
    return replace(tables, t={**tables.t, "authorization": {**table, "codes": {**table["codes"], **codes}}})


# -- EB11: authorization or certification indicator -------------------------------------------------------------------

@pytest.mark.parametrize("code, required", [("Y", True), ("N", False)])
def test_eb11_yes_and_no_fill_authorization_required_without_a_note(code, required):
    r = valid(eb11(code))
    assert items(r)[0]["authorizationRequired"] is required
    assert not [n for n in notes(r) if "EB11" in n]


@pytest.mark.parametrize("code, text", [
    ("U", "authorization requirement unknown (EB11 U) for EB 1"),
    # was: W (element 1073's "not applicable", which X279A1 does not allow in EB11) vanished without a word
    ("W", "authorization requirement not applicable (EB11 W) for EB 1; X279A1 does not allow W in EB11"),
    ("X", "EB11 'X' for EB 1 is not an X279A1 authorization or certification indicator: authorizationRequired is "
          "left out"),
])
def test_eb11_codes_fhir_cannot_hold_are_noted_with_the_code(code, text):
    r = valid(eb11(code))
    assert "authorizationRequired" not in items(r)[0]
    eb, = [n for n in r.notes if "EB11" in n.text]
    assert eb.text == text and eb.raw == f"EB*1*IND*30********{code}~"


def test_eb11_yes_takes_the_url_of_any_entity_when_no_utilization_management_names_one():
    entity = (("LS", ["2120"]), ("NM1", ["P3", "2", "ACME CLINIC"]), ("PER", ["IC", "", "UR", "https://acme.example"]),
              ("LE", ["2120"]))
    assert items(valid(eb11("Y", *entity)))[0]["authorizationUrl"] == "https://acme.example"
    assert "authorizationUrl" not in items(valid(eb11("N", *entity)))[0]
    assert "authorizationUrl" not in items(valid(eb11("U", *entity)))[0]


def test_eb11_meanings_are_the_tables():
    txn = read_x12(raw_text("EB*1*IND*30********U~")).transactions[0]
    assert "authorizationRequired" not in items(translate_271(txn, load_tables(), now=NOW)[0])[0]
    table = with_authorization(U={"fhir": False, "display": "treated as not required"})
    result, = translate_271(txn, table, now=NOW)
    assert items(result)[0]["authorizationRequired"] is False
    assert not [n for n in notes(result) if "EB11" in n]


def test_an_eb11_code_the_table_does_not_list_can_refuse_the_271():
    tables = load_tables()
    strict = replace(tables, policies={**tables.policies, "authorization": "error"})
    txn = read_x12(raw_text("EB*1*IND*30********X~")).transactions[0]
    with pytest.raises(TranslationError) as info:
        translate_271(txn, strict, now=NOW)
    assert "'X' is not in mappings/translate/authorization.yaml (on_missing: error)" in str(info.value)
    translate_271(read_x12(raw_text("EB*1*IND*30********Y~")).transactions[0], strict, now=NOW)   # listed: read


@pytest.mark.parametrize("entry", ['"Y": {fhir: required, display: required}', '"Y": {fhir: true}',
                                   '"Y": {fhir: 1, display: required}', '"Y": {fhir: true, display: x, x279a1: no1}'])
def test_an_authorization_table_that_cannot_mean_true_or_false_is_refused_when_loaded(tmp_path, entry):
    base = Path(mappings_with(tmp_path))
    (base / "translate" / "authorization.yaml").write_text(f"on_missing: note\ncodes:\n  {entry}\n", encoding="utf-8")
    with pytest.raises(MappingError, match="authorization.yaml"):
        load_tables(str(base))


def test_a_misspelt_on_missing_policy_is_refused_when_loaded(tmp_path):
    base = mappings_with(tmp_path, "translate/network.yaml", "on_missing: passthrough", "on_missing: eror")
    with pytest.raises(MappingError, match="translate/network.yaml: on_missing 'eror'"):
        load_tables(base)


# -- negative amounts ------------------------------------------------------------------------------------------------

def test_a_negative_amount_is_noted_not_carried_as_money():
    # was: allowedMoney -500 and usedMoney 2100 (a total of 2000 minus a remainder of -100), without a note
    r = valid(only(("EB", ["C", "IND", "30", "", "", "23", "-500"]),
                   ("EB", ["C", "IND", "33", "", "", "23", "2000"]), ("EB", ["C", "IND", "33", "", "", "29", "-100"]),
                   ("EB", ["G", "IND", "30", "", "", "24", "-25.50"])))
    benefits = [i["benefit"][0] for i in items(r)]
    assert not [b for b in benefits if any(k.endswith("Money") and b[k]["value"] < 0 for k in b)]
    total, = [b for b in benefits if "allowedMoney" in b]
    assert total["allowedMoney"]["value"] == 2000 and "usedMoney" not in total
    assert len(benefits) == 4   # each row still says what benefit it is, without its amount
    texts = notes(r)
    for amount in ("-500", "-100", "-25.50"):
        assert f"amount '{amount}' is negative: not an amount a benefit allows or has used (left out)" in texts


def test_a_negative_zero_is_zero():
    benefit = items(valid(only(("EB", ["C", "IND", "30", "", "", "23", "-0"]))))[0]["benefit"][0]
    assert benefit["allowedMoney"]["value"] == 0


# -- N4: the country subdivision (N407) ------------------------------------------------------------------------------

def patient_with(*segments):
    return [*SUBSCRIBER[:3], *segments, SUBSCRIBER[3]]


def contained_patient(r):
    return next(c for c in r.resource["contained"] if c["id"] == "patient")


def test_a_country_subdivision_is_the_address_state():
    # was: N407 'BY' was in neither the Patient's address nor a note
    r, = raw_responses("N3*MARIENPLATZ 1~N4*MUNICH**80331*DE***BY~EB*1*IND*30~")
    address, = contained_patient(valid(r))["address"]
    assert address == {"line": ["MARIENPLATZ 1"], "city": "MUNICH", "state": "BY", "postalCode": "80331",
                       "country": "DE"}
    assert notes(r) == []


def test_a_country_subdivision_beside_a_state_is_noted():
    r, = raw_responses("N4*SPRINGFIELD*IL*62701*US***XX~EB*1*IND*30~")
    assert contained_patient(valid(r))["address"][0]["state"] == "IL"
    assert notes(r) == ["country subdivision N407 'XX' given with the state N402 'IL' (X12 allows one of them: "
                        "E0207); Address.state holds N402"]


def test_in_the_gateway_the_country_subdivision_is_in_the_address_note():
    r, = raw_responses("N4*MUNICH**80331*DE***BY~EB*1*IND*30~", context_for=in_gateway(patient=SENT_SUBSCRIBER))
    assert notes(r) == [f"the payer's city, state and ZIP for the patient: MUNICH, BY 80331, DE {NOT_IN_PATIENT}"]


def test_a_2120_address_is_noted_with_its_country_subdivision():
    r, = raw_responses("EB*L~LS*2120~NM1*P3*2*KLINIK NORD~N4*MUNICH**80331*DE***BY~LE*2120~")
    n4, = [n for n in valid(r).notes if n.raw.startswith("N4")]
    assert "MUNICH 80331 DE BY" in n4.text


def test_n4_elements_x279a1_does_not_use_in_2100c_are_noted():
    r, = raw_responses("N4*SPRINGFIELD*IL*62701**RJ*NE~EB*1*IND*30~")
    assert notes(valid(r)) == ["N405 'RJ' (Location Qualifier); N406 'NE' (Location Identifier): not carried into "
                               "the response"]


# -- INS ---------------------------------------------------------------------------------------------------------------

def test_ins_elements_beyond_those_read_are_noted():
    # was: INS09 (student status) and INS10 (handicap indicator) went nowhere; INS17 was noted
    r, = raw_responses("INS*Y*18*******F*N*******2~EB*1*IND*30~")
    assert notes(valid(r)) == ["birth sequence number 2",
                               "INS09 'F' (Student Status Code); INS10 'N' (Yes/No Condition or Response Code): not "
                               "carried into the response"]
    assert {n.raw for n in r.notes} == {"INS*Y*18*******F*N*******2~"}


def test_a_maintenance_type_or_reason_other_than_identifying_data_changed_is_noted():
    # was: only INS03 001 with INS04 25 was noted; any other value of either went nowhere
    r, = raw_responses("INS*Y*18*030*XN~EB*1*IND*30~")
    assert notes(valid(r)) == ["INS03 '030' and INS04 'XN' of the patient not read: X279A1 uses INS03 001 with INS04 "
                               "25 only (identifying data changed)"]
    r, = raw_responses("INS*Y*18*001~EB*1*IND*30~")
    assert notes(r) == ["INS03 '001' of the patient not read: X279A1 uses INS03 001 with INS04 25 only (identifying "
                        "data changed)"]


def test_the_identifying_data_changed_pair_is_the_tables():
    tables = load_tables()
    relationship = {**tables.t["relationship"], "identity_changed": {"INS03": "030", "INS04": "XN"}}
    changed = replace(tables, t={**tables.t, "relationship": relationship})
    result, = translate_271(read_x12(raw_text("INS*Y*18*030*XN~EB*1*IND*30~")).transactions[0], changed, now=NOW)
    assert notes(result) == ["the payer changed identifying data of the patient (INS03 030, INS04 XN): check the "
                             "returned name, birth date and member id"]


# -- any element a mapped segment holds that the translation does not read -----------------------------------------

@pytest.mark.parametrize("segments, raw, text", [
    ("EB*1*IND*30************X*Y~", "EB*1*IND*30************X*Y~",
     "EB15 'X' (beyond the 14 elements of EB); EB16 'Y' (beyond the 14 elements of EB)"),
    ("EB*C*IND*30***23*500~MSG*CALL FIRST*A*3~", "MSG*CALL FIRST*A*3~",
     "MSG02 'A' (Printer Carriage Control Code); MSG03 '3' (Number)"),
    ("EB*1*IND*30~AAA*N*XX*42*R~", "AAA*N*XX*42*R~", "AAA02 'XX' (Agency Qualifier Code)"),
    ("DMG*D8*19800210*M*M~EB*1*IND*30~", "DMG*D8*19800210*M*M~", "DMG04 'M' (Marital Status Code)"),
    ("REF*6P*G1*GROUP ONE*X~EB*1*IND*30~", "REF*6P*G1*GROUP ONE*X~", "REF04 'X' (Reference Identifier)"),
    ("EB*1*IND*30~LS*2120~NM1*P3*1*SMITH*PAT****XX*1992999998~PRV*PC*PXC*207Q00000X~LE*2120~",
     "PRV*PC*PXC*207Q00000X~", "PRV01 'PC' (Provider Code)"),
])
def test_unread_elements_of_a_mapped_segment_are_noted(segments, raw, text):
    r = valid(raw_responses(segments)[0])
    unread, = [n for n in r.notes if n.text.endswith(": not carried into the response")]
    assert unread.text == f"{text}: not carried into the response" and unread.raw == raw


def test_unread_elements_of_the_name_trace_and_header_are_noted():
    head = RAW_HEAD.replace("BHT*0022*11*REQ1*20250115*0930~", "BHT*0022*11*REQ1*20250115*0930*RT~").replace(
        "TRN*2*REQ1-1*9GATEWAY01~", "TRN*2*REQ1-1*9GATEWAY01*DIV7~")
    r, = raw_responses("EB*1*IND*30~", head=head, name="NM1*IL*1*ROE*RICHARD*Q*DR**MI*W123*41~")
    texts = {n.raw.split("*")[0]: n.text for n in valid(r).notes}
    assert texts == {"BHT": "BHT06 'RT' (Transaction Type Code): not carried into the response",
                     "TRN": "TRN04 'DIV7' (Reference Identification): not carried into the response",
                     "NM1": "NM106 'DR' (Name Prefix); NM110 '41' (Entity Relationship Code): not carried into the "
                            "response"}
    assert r.traces == ["REQ1-1"]


def test_a_pre_authorization_number_keeps_its_description_in_a_note():
    # was: preAuthRef PA123, and REF03 in neither the response nor a note
    r = valid(raw_responses("EB*1*IND*30~REF*G1*PA123*APPROVED FOR 3 VISITS~")[0])
    assert r.resource["preAuthRef"] == "PA123"
    ref, = [n for n in r.notes if n.raw.startswith("REF")]
    assert ref.text == "description 'APPROVED FOR 3 VISITS' of the Prior Authorization Number PA123 for EB 1"


def test_an_other_coverages_identifier_keeps_its_description_in_a_note():
    r = valid(raw_responses("EB*R**30*C1~REF*IG*POL556677*SECOND POLICY~")[0])
    other = next(c for c in r.resource["contained"] if c["id"] == "other-coverage-1")
    assert other["identifier"][0]["value"] == "POL556677"
    ref, = [n for n in r.notes if n.raw.startswith("REF")]
    assert "SECOND POLICY" in ref.text


def test_a_noted_segment_keeps_its_unread_elements_in_the_raw_text_alone():
    # the 2100B provider address is not carried at all: its note's raw segment holds every element, N407 too
    head = RAW_HEAD.replace("XX*1234567893~", "XX*1234567893~N4*MUNICH**80331*DE***BY~")
    r, = raw_responses("EB*1*IND*30~", head=head)
    n4, = [n for n in valid(r).notes if n.raw.startswith("N4")]
    assert n4.text == "provider address returned by the payer" and n4.raw == "N4*MUNICH**80331*DE***BY~"


def test_segments_with_nothing_unread_gain_no_note():
    r = valid(only(BENEFIT, ("EB", ["C", "IND", "30", "", "", "23", "500", "", "", "", "N", "Y", "", ""])))
    assert notes(r) == []
