"""Member data -> 271: matching with CORE name normalisation, one AAA per failed element, benefits."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from gateway.mappings import load_yaml
from gateway.payer.answer import answer_270, normalise_last_name
from gateway.translate import load_tables
from gateway.translate.response_271 import translate_271
from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from tests.conftest import FIXTURES

NOW = datetime(2025, 3, 10, 9, 30)
CONFIG = load_yaml("payer/answers.yaml")
DELGADO = {
    "memberid": "ACM482193057", "groupnumber": "G100", "groupname": "NORTHGATE", "firstname": "MARIA",
    "lastname": "DELGADO", "dob": "1978-05-14", "gender": "F",
    "coverages": [{"covtypename": "MEDICAL", "covtypedesc": "ACME PPO GOLD", "coveffdate": "2025-01-01",
                   "covtermdate": "2025-12-31", "covvolume": 1},
                  {"covtypename": "CHIROPRACTIC", "covtypedesc": "ACME PPO GOLD", "coveffdate": "2025-01-01",
                   "covtermdate": "2025-12-31", "covvolume": 1}],
    "accumulators": [
        {"accum_name": "DED", "coveragetype": "MEDICAL", "specifictype": "deductible", "currentamount": 750,
         "maximumamount": 1500, "innetwork": "Y", "individualaccum": "Y", "daterange": "2025-01-01/2025-12-31"},
        {"accum_name": "CHIRO", "coveragetype": "CHIROPRACTIC", "specifictype": "visit-limit", "currentamount": 6,
         "maximumamount": 20, "innetwork": "Y", "individualaccum": "Y", "daterange": "2025-01-01/2025-12-31"}],
    "benefits": [{"servicetype": "98", "benefittype": "copay", "amount": 30, "innetwork": "Y", "timeperiod": "visit"},
                 {"servicetype": "30", "benefittype": "coinsurance", "percent": 20, "innetwork": "Y"}],
    "priorauth": [{"procedure": "70551", "codesystem": "CPT", "url": "https://auth.acme.example/mri"}],
    "dependents": [],
}


def answer_for(path: str, members=None) -> str:
    txn = read_x12((FIXTURES / "x12" / "270" / path).read_bytes()).transactions[0]
    return answer_270(txn, members or {DELGADO["memberid"]: DELGADO}, CONFIG, now=NOW, control_number=5)


def test_core_last_name_normalisation():
    assert normalise_last_name("O'Hara-Lee", CONFIG) == "OHARALEE"
    assert normalise_last_name("Smith Jr.", CONFIG) == normalise_last_name("SMITH", CONFIG)
    assert normalise_last_name("De La Cruz", CONFIG) == "DELACRUZ"


def test_found_member_gets_a_valid_271_whose_translation_reports_used_750():
    text = answer_for("subscriber-generic.270")
    report = validate_x12(text)
    assert report.valid, [f.to_dict() for f in report.errors]
    segments = [s.parts for s in read_x12(text).transactions[0].segments()]
    assert ["EB", "C", "IND", "30", "", "", "23", "1500", "", "", "", "", "Y"] in segments
    assert ["EB", "C", "IND", "30", "", "", "29", "750", "", "", "", "", "Y"] in segments
    assert any(p[:2] == ["TRN", "2"] for p in segments)
    response, = translate_271(read_x12(text).transactions[0], load_tables(), now="2025-03-10T09:30:00Z")
    deductible = next(i for i in response.resource["insurance"][0]["item"]
                      if i.get("benefit") and i["benefit"][0]["type"]["coding"][0]["code"] == "deductible")
    assert deductible["benefit"][0]["allowedMoney"]["value"] == 1500
    assert deductible["benefit"][0]["usedMoney"]["value"] == 750


@pytest.mark.parametrize("change, code", [
    ({"memberid": "OTHER"}, "72"),
    ({"lastname": "SOMEONE"}, "73"),
    ({"dob": "1978-05-15"}, "71"),
])
def test_one_aaa_per_failed_element(change, code):
    member = {**DELGADO, **change}
    text = answer_for("subscriber-generic.270", {member["memberid"]: member})
    assert validate_x12(text).valid
    aaa = [s.parts for s in read_x12(text).transactions[0].segments() if s.id == "AAA"]
    assert aaa == [["AAA", "N", "", code, "C"]]
    assert not [s for s in read_x12(text).transactions[0].segments() if s.id == "EB"]


def test_terminated_coverage_is_inactive():
    member = {**DELGADO, "coverages": [{**DELGADO["coverages"][0], "covtermdate": "2024-12-31",
                                        "coveffdate": "2024-01-01"}]}
    text = answer_for("subscriber-generic.270", {member["memberid"]: member})
    ebs = [s.parts for s in read_x12(text).transactions[0].segments() if s.id == "EB"]
    assert ebs[0][:4] == ["EB", "6", "", "30"]
    assert validate_x12(text).valid


OKAFOR = {
    "memberid": "ACM305118842", "groupnumber": "G204417", "firstname": "CHINEDU", "lastname": "OKAFOR",
    "dob": "1981-09-30", "gender": "M",
    "coverages": [{"covtypename": "MEDICAL", "covtypedesc": "ACME PPO SELECT", "coveffdate": "2025-01-01"}],
    "accumulators": [{"accum_name": "FAMDED", "coveragetype": "MEDICAL", "specifictype": "deductible",
                      "currentamount": 675, "maximumamount": 2000, "innetwork": "Y", "individualaccum": "N",
                      "daterange": "2025-01-01/2025-12-31"}],
    "benefits": [], "priorauth": [],
    "dependents": [{"depmemberid": "", "firstname": "ADAEZE", "lastname": "OKAFOR", "dob": "2014-08-22",
                    "gender": "F", "relationship": "child", "coverages": [], "accumulators": [], "benefits": []}],
}


def test_dependent_is_answered_in_2000d_with_family_accumulators():
    text = answer_for("dependent-generic.270", {OKAFOR["memberid"]: OKAFOR})
    assert validate_x12(text).valid
    segments = [s.parts for s in read_x12(text).transactions[0].segments()]
    assert ["NM1", "03", "1", "OKAFOR", "ADAEZE"] in segments and ["INS", "N", "19"] in segments
    assert ["EB", "C", "FAM", "30", "", "", "23", "2000", "", "", "", "", "Y"] in segments


def test_subscriber_found_patient_not_found_is_77_in_2100d():
    member = {**OKAFOR, "dependents": []}
    text = answer_for("dependent-generic.270", {member["memberid"]: member})
    assert validate_x12(text).valid
    txn = read_x12(text).transactions[0]
    aaa = [(loop.id, s.parts) for loop, s in txn.root.walk() if s.id == "AAA"]
    assert aaa == [("2100D", ["AAA", "N", "", "77", "C"])]
    # the traces are echoed where the patient is answered, 2000D, as when the dependent is found: not in both
    assert {loop.id for loop, s in txn.root.walk() if s.id == "TRN"} == {"2000D"}
    found = read_x12(answer_for("dependent-generic.270", {OKAFOR["memberid"]: OKAFOR})).transactions[0]
    assert {loop.id for loop, s in found.root.walk() if s.id == "TRN"} == {"2000D"}


def test_provider_not_on_file_and_invalid_birth_date():
    txn = read_x12((FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes()).transactions[0]
    text = answer_270(txn, {DELGADO["memberid"]: DELGADO}, CONFIG, now=NOW, control_number=5,
                      providers=frozenset({"1999999999"}))
    assert [s.parts for s in read_x12(text).transactions[0].segments() if s.id == "AAA"] == [
        ["AAA", "N", "", "51", "C"]]
    bad_dob = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text().replace("19780514", "19781399")
    text = answer_270(read_x12(bad_dob).transactions[0], {DELGADO["memberid"]: DELGADO}, CONFIG, now=NOW,
                      control_number=5)
    assert [s.parts for s in read_x12(text).transactions[0].segments() if s.id == "AAA"] == [
        ["AAA", "N", "", "58", "C"]]


def test_a_service_type_asked_for_that_no_coverage_includes_is_answered_not_covered():
    """CORE 154: every service type asked for by name is answered; one outside the member's coverages is EB01 I,
    never left out (DELGADO has medical coverage only: dental 35 and pharmacy 88 are not covered)."""
    txn = read_x12((FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes().replace(
        b"EQ*30~", b"EQ*35^88^98~")).transactions[0]
    text = answer_270(txn, {DELGADO["memberid"]: DELGADO}, CONFIG, now=NOW, control_number=5)
    assert "EB*I**35^88~" in text
    assert "EB*B*IND*98" in text            # the covered one keeps its benefits
    assert validate_x12(text).valid
    generic = answer_for("subscriber-generic.270")   # EQ*30: the generic answer, no not-covered rows
    assert "EB*I*" not in generic


def test_several_270_sets_are_answered_in_one_interchange_with_one_271_set_each():
    """Two 271 interchanges with the same ISA13 would be duplicates a receiver rejects (TA1 025)."""
    from gateway.payer.answer import answer_interchange

    report = read_x12((FIXTURES / "x12" / "270" / "multi-transaction.270").read_bytes())
    assert len(report.transactions) == 2
    text = answer_interchange(report.transactions, {DELGADO["memberid"]: DELGADO}, CONFIG, now=NOW,
                              control_number=7)
    answered = read_x12(text)
    assert text.count("ISA*") == 1 and text.count("GS*") == 1 and text.count("IEA*1*000000007~") == 1
    assert [t.control_number for t in answered.transactions] == ["0001", "0002"]
    assert "GE*2*7~" in text
    assert ["GW-MT-0014A", "GW-MT-0014B"] == [t.root.segment("BHT").get(3) for t in answered.transactions]
    assert validate_x12(text).valid


@pytest.mark.parametrize("service_date, code", [("20990101", "63"), ("19900101", "62"), ("20250310", None),
                                                ("20250331", None)])
def test_a_service_date_outside_the_inquiry_period_gets_aaa_62_or_63(service_date: str, code: str | None):
    """X279A1 2100C AAA 62 (not within the inquiry period) / 63 (in the future), not benefits for any date."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    assert "DTP*291*D8*20250310~" in text
    txn = read_x12(text.replace("DTP*291*D8*20250310~", f"DTP*291*D8*{service_date}~")).transactions[0]
    answered = answer_270(txn, {DELGADO["memberid"]: DELGADO}, CONFIG, now=NOW, control_number=5)
    if code is None:
        assert "AAA*" not in answered and "EB*1**30" in answered
    else:
        assert f"AAA*N**{code}*C~" in answered and "EB*" not in answered
        assert validate_x12(answered).valid


def test_only_the_accumulators_of_the_date_of_service_are_answered_each_with_its_period():
    """Two deductibles for the same benefit, 2024 and 2025: the 271 answered both, undated, two conflicting
    remaining amounts. Only the period holding the date of service is answered, and its DTP says which."""
    old = {**DELGADO["accumulators"][0], "accum_name": "DED-2024", "currentamount": 1500,
           "daterange": "2024-01-01/2024-12-31"}
    member = {**DELGADO, "accumulators": [old, *DELGADO["accumulators"]]}
    text = answer_for("subscriber-generic.270", {member["memberid"]: member})   # DTP*291*D8*20250310
    assert validate_x12(text).valid, [f.to_dict() for f in validate_x12(text).errors]
    txn = read_x12(text).transactions[0]
    deductibles = [s.parts for s in txn.segments() if s.id == "EB" and s.get(1) == "C"]
    assert deductibles == [["EB", "C", "IND", "30", "", "", "23", "1500", "", "", "", "", "Y"],
                           ["EB", "C", "IND", "30", "", "", "29", "750", "", "", "", "", "Y"]]
    dated = [(loop.id, s.parts) for loop, s in txn.root.walk() if s.id == "DTP" and loop.id == "2110C"]
    assert ("2110C", ["DTP", "292", "RD8", "20250101-20251231"]) in dated
    assert len(dated) == 4   # after each of the two deductible rows and the two visit-limit rows
    asked_2024 = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text().replace(
        "DTP*291*D8*20250310~", "DTP*291*D8*20240601~")
    member_2024 = {**member, "coverages": [{**DELGADO["coverages"][0], "coveffdate": "2024-01-01"}]}
    text = answer_270(read_x12(asked_2024).transactions[0], {member["memberid"]: member_2024}, CONFIG, now=NOW,
                      control_number=5)
    assert "EB*C*IND*30***29*0*****Y~DTP*292*RD8*20240101-20241231~" in text
    assert "750" not in text and "20250101-20251231" not in text


def test_a_contract_period_accumulator_is_dated_as_the_plan_291():
    coverage = {**DELGADO["coverages"][0], "coveffdate": "2024-10-01", "covtermdate": "2025-09-30"}
    acc = {**DELGADO["accumulators"][0], "daterange": "2024-10-01/2025-09-30"}
    member = {**DELGADO, "coverages": [coverage], "accumulators": [acc]}
    text = answer_for("subscriber-generic.270", {member["memberid"]: member})
    assert "EB*C*IND*30***25*1500*****Y~DTP*291*RD8*20241001-20250930~" in text
    assert validate_x12(text).valid


def test_an_eq_date_overrides_the_patient_date_for_that_eq():
    """The 2110C DTP*291 was ignored: only the 2100C/D date was read. It is that EQ's date of service."""
    member = {**DELGADO, "coverages": [{**DELGADO["coverages"][0], "coveffdate": "2024-01-01",
                                        "covtermdate": "2024-12-31"}],
              "accumulators": [{**DELGADO["accumulators"][0], "daterange": "2024-01-01/2024-12-31"}]}
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    assert "DTP*291*D8*20250310~" in text and text.count("EQ*30~") == 1
    one = text.replace("EQ*30~", "EQ*30~DTP*291*D8*20240601~").replace("SE*13*", "SE*14*")
    txn = read_x12(one).transactions[0]
    answered = answer_270(txn, {member["memberid"]: member}, CONFIG, now=NOW, control_number=5)
    assert "EB*1**30**ACME PPO GOLD~" in answered   # in force on 2024-06-01 (terminated by 2025-03-10)
    assert "EB*C*IND*30***23*1500*****Y~DTP*292*RD8*20240101-20241231~" in answered
    assert validate_x12(answered).valid, [f.to_dict() for f in validate_x12(answered).errors]
    # two EQs, two dates: each answered for its own date, and each status row says which
    two = text.replace("EQ*30~", "EQ*30~DTP*291*D8*20240601~EQ*98~").replace("SE*13*", "SE*15*")
    answered = answer_270(read_x12(two).transactions[0], {member["memberid"]: member}, CONFIG, now=NOW,
                          control_number=5)
    assert "EB*1**30**ACME PPO GOLD~DTP*291*D8*20240601~" in answered
    assert "EB*1**1^33^47^48^50^86^98^UC~DTP*291*D8*20240601~" in answered   # the second status row too
    assert "EB*6**30**ACME PPO GOLD~DTP*291*D8*20250310~DTP*357*D8*20241231~" in answered
    assert validate_x12(answered).valid, [f.to_dict() for f in validate_x12(answered).errors]
    # an EQ date outside the inquiry period is refused as the patient's would be
    future = text.replace("EQ*30~", "EQ*30~DTP*291*D8*20990101~").replace("SE*13*", "SE*14*")
    answered = answer_270(read_x12(future).transactions[0], {member["memberid"]: member}, CONFIG, now=NOW,
                          control_number=5)
    assert "AAA*N**63*C~" in answered and "EB*" not in answered


@pytest.mark.parametrize("last, dob, codes", [("OKAFORR", "20140822", ["65"]), ("OKAFOR", "20140823", ["71"]),
                                              ("NWOSU", "20140823", ["71", "65"]), ("O'KAFOR", "20140822", [])])
def test_a_dependents_last_name_is_checked_as_the_subscribers_is(last: str, dob: str, codes: list[str]):
    """2100D NM1*03 with a wrong last name but the right first name and birth date was answered in full."""
    text = (FIXTURES / "x12" / "270" / "dependent-generic.270").read_text()
    assert "NM1|03|1|OKAFOR|ADAEZE~" in text and "DMG|D8|20140822" in text
    text = text.replace("NM1|03|1|OKAFOR|ADAEZE~", f"NM1|03|1|{last}|ADAEZE~").replace("DMG|D8|20140822",
                                                                                      f"DMG|D8|{dob}")
    answered = answer_270(read_x12(text).transactions[0], {OKAFOR["memberid"]: OKAFOR}, CONFIG, now=NOW,
                          control_number=5)
    assert validate_x12(answered).valid, [f.to_dict() for f in validate_x12(answered).errors]
    txn = read_x12(answered).transactions[0]
    assert [s.get(3) for loop, s in txn.root.walk() if s.id == "AAA" and loop.id == "2100D"] == codes
    assert ("EB*" in answered) == (not codes)


@pytest.mark.parametrize("service_date, code", [("20990101", "63"), ("19900101", "62")])
def test_a_dependents_date_outside_the_inquiry_period_is_refused_in_2100d(service_date: str, code: str):
    """It was AAA 63 at 2100C with the dependent's TRN moved up to 2000C."""
    text = (FIXTURES / "x12" / "270" / "dependent-generic.270").read_text()
    assert "DTP|291|D8|20250311~" in text
    txn = read_x12(text.replace("DTP|291|D8|20250311~", f"DTP|291|D8|{service_date}~")).transactions[0]
    answered = answer_270(txn, {OKAFOR["memberid"]: OKAFOR}, CONFIG, now=NOW, control_number=5)
    assert validate_x12(answered).valid, [f.to_dict() for f in validate_x12(answered).errors]
    walked = [(loop.id, s.parts) for loop, s in read_x12(answered).transactions[0].root.walk()]
    assert [(loop, p) for loop, p in walked if p[0] == "AAA"] == [("2100D", ["AAA", "N", "", code, "C"])]
    assert {loop for loop, p in walked if p[0] == "TRN"} == {"2000D"}
    assert "EB*" not in answered


PETERSEN = json.loads((FIXTURES / "members" / "petersen-erik.json").read_text())


def _answer_to(data: bytes) -> str:
    txn = read_x12(data).transactions[0]
    return answer_270(txn, {m["memberid"]: m for m in (DELGADO, PETERSEN)}, CONFIG, now=NOW, control_number=5)


def test_a_one_character_isa_id_is_not_the_271s_gs02():
    """ISA08 is fixed-width: "X" padded to 15 is a valid id, but as the 271's GS02 (2 to 15 characters) it made the
    simulator's 271 invalid. The 271's GS02/GS03 answer the 270's GS03/GS02."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    assert text[54:69] == "ACMEHLTH       "
    data = (text[:54] + "X" + " " * 14 + text[69:]).encode()
    assert validate_x12(data).valid
    answer = _answer_to(data)
    assert "*ZZ*X              *ZZ*FHIRX12GW      *" in answer and "GS*HB*ACMEHLTH*FHIRX12GW*" in answer
    assert validate_x12(answer).valid


@pytest.mark.parametrize("trace, bht03", [("gw-sg-0001-1", "gw-sg-0001"), ("GW#1[A]_b", "REF%2f@X")])
def test_the_trace_and_bht03_are_echoed_as_they_came(trace: str, bht03: str):
    """The provider matches a 271 to its 270 by TRN02 (the gateway refuses a 271 without its trace): the simulator
    upper-cased a lower-case trace and dropped '#', '[' and ']', so a valid 270 got an answer no one could match."""
    data = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes().replace(
        b"TRN*1*GW-SG-0001-1*", f"TRN*1*{trace}*".encode()).replace(b"*GW-SG-0001*", f"*{bht03}*".encode())
    assert validate_x12(data).valid
    txn = read_x12(_answer_to(data)).transactions[0]
    assert [s.get(2) for s in txn.segments() if s.id == "TRN"] == [trace]
    assert txn.root.segment("BHT").get(3) == bht03
    assert validate_x12(_answer_to(data)).valid


def test_service_types_asked_by_many_eqs_are_answered_once_each_within_eb03s_limit():
    """17 EQs of the same 10 service types (a valid 270): all 170 went into one EB03 of 102 repetitions after the
    primary, more than the 99 the element allows, and the simulator's 271 was invalid."""
    text = (FIXTURES / "x12" / "270" / "subscriber-eq-repetitions.270").read_text()
    eq = next(line for line in text.splitlines() if line.startswith("EQ*"))
    many = text.replace(eq, "\n".join([eq] * 17)).replace("SE*14*", "SE*30*")
    assert validate_x12(many.encode()).valid
    answer = read_x12(_answer_to(many.encode())).transactions[0]
    rows = [s.repetitions(3) for s in answer.segments() if s.id == "EB" and s.get(1) in ("1", "I")]
    answered = [t for row in rows for t in row]
    assert set(answered) >= set(eq[3:-1].split("^"))   # each asked for is answered, once per coverage
    assert all(len(row) == len(set(row)) <= 99 for row in rows)
    assert validate_x12(_answer_to(many.encode())).valid
    every = text.replace(eq, "\n".join(f"EQ*{'^'.join(CODES[i:i + 10])}~" for i in range(0, 120, 10))).replace(
        "SE*14*", "SE*25*")   # 120 different service types: two EB03s
    assert validate_x12(every.encode()).valid
    answer = read_x12(_answer_to(every.encode())).transactions[0]
    rows = [s.repetitions(3) for s in answer.segments() if s.id == "EB" and s.get(1) == "I"]
    assert len(rows) > 1 and all(len(row) <= 99 for row in rows)
    assert validate_x12(_answer_to(every.encode())).valid


CODES = [c for c in sorted(load_yaml("codes/service_type.yaml")["codes"]) if c not in (
    "30", "1", "33", "47", "48", "50", "86", "98", "UC", "62", "4", "5", "73", "AE", "PT")]
