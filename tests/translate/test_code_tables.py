"""Code values live in mappings/, and every code table's on_missing means what mappings/translate/README.md says.

Reading X12 (271 -> FHIR, 270 -> FHIR), a code a table does not list is kept with a note (passthrough, note) or
refuses the input naming the table file (error), whichever table it is. The qualifiers the translation reads (TRN01,
NM102, NM108, DTP02/DMG01, PRV02, III01, the placeholder EB01s, the lifetime periods ...) are the tables' too: a
change of meaning is a data change, and a table without a key the translation reads fails when loaded.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.errors import MappingError
from gateway.mappings import load_yaml
from gateway.translate import TranslationError, load_tables
from gateway.translate.request_from_270 import translate_270
from gateway.translate.response_271 import translate_271
from gateway.translate.tables import CODE_TABLES, TRANSLATE_TABLES, Tables
from gateway.x12.reader import read_x12
from tests.conftest import mappings_with
from tests.translate.test_request_from_270 import HEAD as HEAD_270
from tests.translate.test_request_from_270 import x12
from tests.translate.test_response_rules import NOW, RAW_HEAD, RAW_ISA, RAW_NAME, items, notes, valid


def eb(*elements: str) -> str:
    """An EB segment of ``elements`` (EB01 first), as a payer writes it."""
    return "*".join(("EB", *elements)) + "~"


def text_271(*segments: str, head: str = RAW_HEAD) -> str:
    return RAW_ISA + head + RAW_NAME + "".join(segments) + "SE*1*0001~GE*1*9~IEA*1*000000009~"


def translated(text: str, tables: Tables | None = None):
    result, = translate_271(read_x12(text).transactions[0], tables or load_tables(), now=NOW)
    return result


def with_policy(table: str, policy: str) -> Tables:
    tables = load_tables()
    return replace(tables, policies={**tables.policies, table: policy}, concepts={})


def with_table(name: str, **changes) -> Tables:
    """The loaded tables with translate/<name>.yaml's keys replaced (``changes``)."""
    tables = load_tables()
    return replace(tables, t={**tables.t, name: {**tables.t[name], **changes}}, concepts={})


def with_codes(name: str, code: str, info: dict) -> Tables:
    tables = load_tables()
    return replace(tables, codes={**tables.codes, name: {**tables.codes[name], code: info}}, concepts={})


# -- on_missing, 271 -> FHIR -------------------------------------------------------------------------------------------

# (table, the 271's segments after the subscriber's NM1, the code no table lists, where it is)
UNLISTED_271 = [
    ("eligibility_benefit", eb("Q9"), "Q9", "EB01"),
    ("service_type", eb("1", "IND", "Q9"), "Q9", "EB03"),
    ("coverage_level", eb("1", "QQQ", "30"), "QQQ", "EB02"),
    ("insurance_type", eb("1", "IND", "30", "Q9"), "Q9", "EB04"),
    ("time_period", eb("C", "IND", "30", "", "", "99", "500"), "99", "EB06"),
    ("time_period", eb("F", "IND", "30") + "HSD*VS*2***99*1~", "99", "HSD05"),
    ("quantity_qualifier", eb("F", "IND", "30", "", "", "", "", "", "Q9", "5"), "Q9", "EB09"),
    ("authorization", eb("1", "IND", "30", *[""] * 7, "Q"), "Q", "EB11"),
    ("network", eb("1", "IND", "30", *[""] * 8, "Q"), "Q", "EB12"),
    ("procedures", eb("C", "IND", "", "", "", "23", "100", *[""] * 5, "QQ:99213"), "QQ", "EB13-1"),
    ("reject_reason", eb("1", "IND", "30") + "AAA*N**Q9*C~", "Q9", "AAA03"),
    ("follow_up_action", eb("1", "IND", "30") + "AAA*N**42*Q~", "Q", "AAA04"),
    ("gender", "DMG*D8*19800210*Q~" + eb("1", "IND", "30"), "Q", "DMG03"),
    ("relationship", "INS*Y*Q9~" + eb("1", "IND", "30"), "Q9", "INS02"),
    ("dates", "DTP*999*D8*20250101~" + eb("1", "IND", "30"), "999", "2100C DTP01"),
    ("dates", eb("1", "IND", "30") + "DTP*999*D8*20250101~", "999", "2110C DTP01"),
    ("entities", eb("L") + "LS*2120~NM1*Q9*2*ACME CLINIC~LE*2120~", "Q9", "NM101"),
    ("references", "REF*Q9*123~" + eb("1", "IND", "30"), "Q9", "2100C REF01"),
    ("references", eb("1", "IND", "30") + "REF*Q9*123~", "Q9", "2110C REF01"),
    ("references", "PRV*PE*Q9*123~" + eb("1", "IND", "30"), "Q9", "2100C PRV02"),
    ("references", eb("L") + "LS*2120~NM1*P3*1*SMITH*PAT~PRV*PC*Q9*123~LE*2120~", "Q9", "2120C PRV02"),
    ("identifiers", eb("L") + "LS*2120~NM1*P3*1*SMITH*PAT****Q9*123~LE*2120~", "Q9", "2120C NM108"),
]
# tables with an on_missing that no reading of X12 looks a code up in: the 270 builder's alone
BUILDING_ONLY = {"addresses"}
# read from a 270 only (HI)
READING_270_ONLY = {"diagnoses"}


@pytest.mark.parametrize("policy", ["passthrough", "note"])
@pytest.mark.parametrize("table, segments, code, where", UNLISTED_271, ids=[c[3] for c in UNLISTED_271])
def test_a_code_a_271_table_does_not_list_is_kept_and_noted(table, segments, code, where, policy):
    result = valid(translated(text_271(segments), with_policy(table, policy)))
    noted = [n for n in result.notes if code in n.text]
    assert noted, [n.text for n in result.notes]
    assert all(code in n.raw for n in noted)


@pytest.mark.parametrize("table, segments, code, where", UNLISTED_271, ids=[c[3] for c in UNLISTED_271])
def test_a_code_a_271_table_does_not_list_refuses_the_271_when_the_table_says_error(table, segments, code, where):
    # was: only EB01, EB03 and EB11 were refused; EB02, EB04, EB06, EB09, EB12, AAA, DTP, REF ... passed through
    with pytest.raises(TranslationError) as info:
        translated(text_271(segments), with_policy(table, "error"))
    file = f"mappings/{'codes' if table in CODE_TABLES else 'translate'}/{table}.yaml"
    assert f"code '{code}' is not in {file} (on_missing: error)" in str(info.value)
    assert info.value.problems[0].x12 == where.split()[-1]
    translated(text_271(segments))   # the shipped tables pass it through


def test_a_provider_identifier_qualifier_not_listed_can_refuse_the_271():
    head = RAW_HEAD.replace("XX*1234567893~", "XX*1234567893~REF*Q9*77~")
    assert "provider identifier Q9 77 returned by the payer" in notes(translated(text_271(eb("1"), head=head)))
    with pytest.raises(TranslationError, match="'Q9' is not in mappings/translate/references.yaml"):
        translated(text_271(eb("1"), head=head), with_policy("references", "error"))


@pytest.mark.parametrize("nm1", ["NM1*PR*2*EXAMPLE HEALTH PLAN*****PI*99999~",
                                 "NM1*1P*2*SAMPLE CLINIC*****XX*1234567893~"], ids=["2100A", "2100B"])
def test_an_identification_qualifier_not_listed_in_the_payer_or_receiver_loop_is_noted_or_refused(nm1):
    # was: 2100A NM109 became the payer id whatever its NM108; 2100B noted any NM108 but XX, listed or not
    head = RAW_HEAD.replace(nm1, nm1.replace("*PI*", "*Q9*").replace("*XX*", "*Q9*"))
    assert head != RAW_HEAD
    r = valid(translated(text_271(eb("1", "IND", "30"), head=head)))
    assert [n.text for n in r.notes if "Q9" in n.raw] == [
        f"{'payer' if 'PR' in nm1 else 'information receiver'} identified by Q9 {nm1.split('*')[-1][:-1]} "
        "(NM108 'Q9' is not an X279A1 identification code qualifier)"]
    with pytest.raises(TranslationError, match="code 'Q9' is not in mappings/translate/identifiers.yaml"):
        translated(text_271(eb("1", "IND", "30"), head=head), with_policy("identifiers", "error"))


def test_listed_codes_pass_a_table_that_refuses_the_rest():
    segments = ("DMG*D8*19800210*M~INS*Y*18~REF*6P*G1~DTP*346*D8*20250101~"
                + eb("C", "IND", "30", "C1", "", "23", "500", "", "", "", "Y", "Y", "HC:99213")
                + "REF*G1*PA1~DTP*292*D8*20250101~AAA*N**42*C~LS*2120~NM1*P3*1*SMITH*****XX*1992999998~"
                "PRV*PC*PXC*207Q00000X~LE*2120~")
    tables = load_tables()
    strict = replace(tables, policies=dict.fromkeys(tables.policies, "error"), concepts={})
    assert translated(text_271(segments), strict).resource["insurance"]


def test_every_table_with_an_on_missing_is_tested():
    """A table given an on_missing later gets a case here, or is said to be read by no X12 reader."""
    with_policy_key = {name for folder, names in (("codes", CODE_TABLES), ("translate", TRANSLATE_TABLES))
                       for name in names if "on_missing" in load_yaml(f"{folder}/{name}.yaml")}
    tested = {case[0] for case in UNLISTED_271} | {case[0] for case in UNLISTED_270}
    assert with_policy_key == tested | BUILDING_ONLY
    assert READING_270_ONLY <= tested and not READING_270_ONLY & {case[0] for case in UNLISTED_271}


# -- on_missing, 270 -> FHIR -------------------------------------------------------------------------------------------

def head_270(**replaced):
    """The 270's segments up to the subscriber's, with a segment replaced by id (``DMG=(...)``) or added."""
    body = [(sid, replaced.pop(sid)) if sid in replaced else (sid, elements) for sid, elements in HEAD_270]
    return body + list(replaced.items())


UNLISTED_270 = [
    ("service_type", [*HEAD_270, ("EQ", ["Q9"])], "Q9", "EQ01"),
    ("procedures", [*HEAD_270, ("EQ", ["", ("QQ", "99213")])], "QQ", "EQ02-1"),
    ("coverage_level", [*HEAD_270, ("EQ", ["30", "", "QQQ"])], "QQQ", "EQ03"),
    ("insurance_type", [*HEAD_270, ("EQ", ["30", "", "", "Q9"])], "Q9", "EQ04"),
    ("gender", [*head_270(DMG=["D8", "19800203", "Q"]), ("EQ", ["30"])], "Q", "DMG03"),
    ("relationship", [*head_270(INS=["Y", "Q9"]), ("EQ", ["30"])], "Q9", "INS02"),
    ("diagnoses", [*head_270(HI=[("QQ", "M5450")]), ("EQ", ["33", "", "", "", ("1",)])], "QQ", "HI"),
    ("references", [*head_270(REF=["Q9", "123"]), ("EQ", ["30"])], "Q9", "REF01"),
    ("dates", [*head_270(DTP=["999", "D8", "20250101"]), ("EQ", ["30"])], "999", "DTP01"),
    ("identifiers", [*HEAD_270[:2], ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "Q9", "99999"]),
                     *HEAD_270[3:], ("EQ", ["30"])], "Q9", "NM108"),
    ("identifiers", [*HEAD_270[:4], ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "Q9", "1234567893"]),
                     *HEAD_270[5:], ("EQ", ["30"])], "Q9", "NM108"),
    # a person's: was the member id whatever NM108 said
    ("identifiers", [*HEAD_270[:7], ("NM1", ["IL", "1", "ROE", "ANNA", "", "", "", "Q9", "W123"]), *HEAD_270[8:],
                     ("EQ", ["30"])], "Q9", "NM108"),
]


def notes_270(text: str, tables: Tables | None = None):
    bundle, notes_ = translate_270(read_x12(text).transactions[0], tables or load_tables(), now=NOW)
    return bundle, notes_


@pytest.mark.parametrize("policy", ["passthrough", "note"])
@pytest.mark.parametrize("table, body, code, where", UNLISTED_270, ids=[c[3] for c in UNLISTED_270])
def test_a_code_a_table_does_not_list_in_a_270_is_kept_and_noted(table, body, code, where, policy):
    _, noted = notes_270(x12(body), with_policy(table, policy))
    assert [n for n in noted if code in n.text and code in n.raw], [n.text for n in noted]


@pytest.mark.parametrize("table, body, code, where", UNLISTED_270, ids=[c[3] for c in UNLISTED_270])
def test_a_code_a_table_does_not_list_in_a_270_refuses_it_when_the_table_says_error(table, body, code, where):
    with pytest.raises(TranslationError) as info:
        notes_270(x12(body), with_policy(table, "error"))
    assert f"code '{code}' is not in " in str(info.value) and f"/{table}.yaml (on_missing: error)" in str(info.value)
    assert info.value.problems[0].x12 == where


def test_a_270_service_type_or_procedure_qualifier_not_listed_is_kept_with_a_note():
    # was: EQ*Q9 became an item of category Q9 and EQ02-1 QQ a coding under 235/QQ, neither said a word
    bundle, noted = notes_270(x12([*HEAD_270, ("EQ", ["Q9"]), ("EQ", ["", ("QQ", "99213")])]))
    request = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "CoverageEligibilityRequest")
    assert [i.get("category", i.get("productOrService"))["coding"][0]["code"] for i in request["item"]] == [
        "Q9", "99213"]
    texts = [n.text for n in noted]
    assert "service type 'Q9' (EQ01) is not an X279A1 code; passed through" in texts
    assert ("procedure code list qualifier 'QQ' (EQ02-1) is not an X279A1 code: the procedure is kept under the X12 "
            "qualifier's system") in texts


def test_a_270_relationship_not_listed_is_noted_and_left_out():
    # was: any INS02 the table does not list became relationship "other", without a note
    bundle, noted = notes_270(x12([*head_270(INS=["Y", "Q9"]), ("EQ", ["30"])]))
    coverage = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Coverage")
    assert "relationship" not in coverage
    assert "relationship code 'Q9' (INS02) is not known: Coverage.relationship is left out" in [n.text for n in noted]
    bundle, noted = notes_270(x12([*head_270(INS=["Y"]), ("EQ", ["30"])]))
    coverage = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Coverage")
    assert "relationship" not in coverage
    assert "INS names no relationship (INS02 is empty): Coverage.relationship is left out" in [n.text for n in noted]


def test_procedures_policy_is_by_direction():
    tables = load_tables()
    assert (tables.policies["procedures"], tables.to_x12_policies["procedures"]) == ("note", "error")
    assert tables.policies["network"] == tables.to_x12_policies["network"] == "passthrough"


def test_a_271_procedure_qualifier_not_listed_is_noted():
    # was: kept under https://codesystem.x12.org/005010/235/QQ without a word
    r = valid(translated(text_271(eb("C", "IND", "", "", "", "23", "100", *[""] * 5, "QQ:99213"))))
    assert items(r)[0]["productOrService"]["coding"] == [{"system": "https://codesystem.x12.org/005010/235/QQ",
                                                          "code": "99213"}]
    assert ("procedure code list qualifier 'QQ' (EB13-1) is not an X279A1 code: procedure '99213' is kept under the "
            "X12 qualifier's system") in notes(r)


# -- the qualifiers the translation reads are the tables' --------------------------------------------------------------

def test_a_trace_of_a_type_neither_current_nor_referenced_is_noted():
    # was: TRN*3 was counted as carried, and its trace number was in neither the response nor a note
    head = RAW_HEAD.replace("TRN*2*REQ1-1*9GATEWAY01~", "TRN*2*REQ1-1*9GATEWAY01~TRN*3*X77*9CLEARING1~")
    r = valid(translated(text_271(eb("1"), head=head)))
    trn, = [n for n in r.notes if n.raw.startswith("TRN*3")]
    assert trn.text == ("trace X77 of trace type '3' (TRN01), neither the payer's own nor an echo of the request's: "
                        "not carried")
    assert "X77" not in str(r.resource.get("identifier"))


def test_trace_types_are_the_tables():
    head = RAW_HEAD.replace("TRN*2*REQ1-1*9GATEWAY01~", "TRN*2*REQ1-1*9GATEWAY01~TRN*3*X77*9CLEARING1~")
    tables = with_table("qualifiers", trace_type={"1": "current", "2": "referenced", "3": "current"})
    r = translated(text_271(eb("1"), head=head), tables)
    assert {"system": "https://fhir-x12-gateway.dev/fhir/sid/trn/9CLEARING1", "value": "X77"} in r.resource[
        "identifier"]
    swapped = with_table("qualifiers", trace_type={"1": "referenced", "2": "current"})
    assert translated(text_271(eb("1")), swapped).traces == []   # TRN*2 is then no echo of the request's


def test_identifier_systems_are_the_tables():
    entity = eb("L") + "LS*2120~NM1*P3*1*JONES*MARCUS****SV*0202034~LE*2120~"
    assert any("identified by SV 0202034" in n for n in notes(translated(text_271(entity))))
    codes = load_tables().t["identifiers"]["codes"]
    tables = with_table("identifiers", codes={**codes, "SV": {"display": "Service Provider Number",
                                                              "system": "member_id_system"}})
    r = translated(text_271(entity), tables)
    practitioner = next(c for c in r.resource["contained"] if c["resourceType"] == "Practitioner")
    assert practitioner["identifier"] == [{"system": "https://fhir-x12-gateway.dev/fhir/sid/member-id",
                                           "value": "0202034"}]
    assert not any("identified by SV" in n for n in notes(r))


def test_additional_information_qualifiers_are_the_tables():
    segments = eb("B", "IND", "30", "", "", "", "20") + "III*NI*ABC~"
    assert "Nature of injury ABC" in items(translated(text_271(segments)))[0]["description"]
    tables = with_table("qualifiers", additional_information={"ZZ": "Place of service"})
    assert "Additional information NI ABC" in items(translated(text_271(segments), tables))[0]["description"]
    segments = eb("B", "IND", "30", "", "", "", "20") + "III***44*BROKEN LEG~"
    assert "Nature of injury: BROKEN LEG" in items(translated(text_271(segments)))[0]["description"]
    tables = with_table("qualifiers", information_category={})
    assert "Information 44 BROKEN LEG" in items(translated(text_271(segments), tables))[0]["description"]


def test_placeholder_eb01s_are_the_tables():
    segments = eb("H", "IND", "30", "", "", "32", "999999")
    assert items(translated(text_271(segments)))[0]["benefit"][0]["allowedString"] == "unlimited"
    tables = with_table("quirks", placeholder_unlimited={"eb01": ["F"], "allowed_string": "no limit"})
    r = translated(text_271(segments, eb("F", "IND", "30", "", "", "32", "999999")), tables)
    unlimited, limited = (i["benefit"][0] for i in items(r))
    assert unlimited["allowedString"] == "unlimited"   # EB01 H's own (eligibility_benefit.yaml allowed_string)
    assert "amount 999999 is a 'no maximum' placeholder: no amount applies (left out)" in notes(r)
    assert limited["allowedString"] == "no limit"


def test_lifetime_periods_are_the_tables():
    segments = eb("C", "IND", "30", "", "", "32", "5000") + eb("C", "IND", "30", "", "", "33", "4000")
    assert items(translated(text_271(segments)))[0]["benefit"][0]["usedMoney"]["value"] == 1000
    tables = load_tables()
    plain = with_codes("time_period", "32", {k: v for k, v in tables.codes["time_period"]["32"].items()
                                             if k != "family"})
    r = translated(text_271(segments), plain)   # 32 a period total: the lifetime remainder (33) matches it no more
    assert "usedMoney" not in items(r)[0]["benefit"][0]
    assert any("without a matching total" in n for n in notes(r))


def test_coverage_codes_inforce_says_all_of_are_the_tables():
    assert notes(translated(text_271(eb("1", "IND", "30")))) == []
    plain = with_codes("eligibility_benefit", "1", {"display": "Active Coverage", "maps_to": "coverage",
                                                   "inforce": True})
    assert notes(translated(text_271(eb("1", "IND", "30")), plain)) == ["coverage status 1: Active Coverage"]


def test_a_cannot_process_row_is_coded_with_its_own_eb01():
    tables = with_codes("eligibility_benefit", "V2", {"display": "Cannot Process Either", "maps_to": "cannot-process"})
    r = translated(text_271(eb("V2", "", "33")), tables)
    assert r.resource["error"][0]["code"]["coding"][0]["code"] == "V2"   # was: always V


def test_other_coverage_identifiers_are_the_tables():
    segments = eb("R", "", "30", "C1") + "REF*IG*POL556677~"
    other = next(c for c in translated(text_271(segments)).resource["contained"] if c["id"] == "other-coverage-1")
    assert other["identifier"][0]["value"] == "POL556677"
    r = translated(text_271(segments), with_table("references", other_coverage_identifiers=[]))
    other = next(c for c in r.resource["contained"] if c["id"] == "other-coverage-1")
    assert "identifier" not in other and any("POL556677" in n for n in notes(r))


def test_date_formats_are_the_tables():
    segments = "DTP*346*D8*20250101~" + eb("1", "IND", "30")
    assert translated(text_271(segments)).resource["insurance"][0]["benefitPeriod"] == {"start": "2025-01-01"}
    r = translated(text_271(segments), with_table("dates", formats={"DT": "date", "RD8": "range"}))
    assert "benefitPeriod" not in r.resource["insurance"][0]
    assert "Plan Begin date '20250101' could not be read" in notes(r)


# -- negative quantities (EB10), as negative amounts (EB07) ------------------------------------------------------------

def test_a_negative_quantity_is_noted_not_carried():
    # was: allowedString "-5" without a note, and a remainder of -2 visits derived 12 used of a total of 10
    r = valid(translated(text_271(eb("F", "IND", "30", "", "", "", "", "", "VS", "-5"),
                                  eb("F", "IND", "33", "", "", "23", "", "", "VS", "10"),
                                  eb("F", "IND", "33", "", "", "29", "", "", "VS", "-2"))))
    benefits = [i["benefit"][0] for i in items(r)]
    assert len(benefits) == 3   # each row still says what benefit it is
    total, = [b for b in benefits if "allowedUnsignedInt" in b]
    assert total["allowedUnsignedInt"] == 10 and "usedUnsignedInt" not in total
    assert [k for b in benefits for k in b if k.startswith(("allowed", "used"))] == ["allowedUnsignedInt"]
    assert not [i for i in items(r) if "-" in (i.get("description") or "")]
    texts = notes(r)
    for value in ("-5", "-2"):
        assert f"Visits '{value}' is negative: not a quantity a benefit allows or has used (left out)" in texts
    assert not any("without a matching total" in n for n in texts)


def test_a_negative_zero_quantity_is_zero():
    benefit = items(translated(text_271(eb("F", "IND", "30", "", "", "", "", "", "VS", "-0"))))[0]["benefit"][0]
    assert benefit["allowedUnsignedInt"] == 0


# -- PRV: only a taxonomy is a qualification ---------------------------------------------------------------------------

def provider(prv: str) -> str:
    return eb("L") + f"LS*2120~NM1*P3*1*SMITH*PAT****XX*1992999998~{prv}LE*2120~"


def practitioner(result):
    return next(c for c in result.resource["contained"] if c["resourceType"] == "Practitioner")


def test_a_2120_taxonomy_is_the_practitioners_qualification():
    r = valid(translated(text_271(provider("PRV*PC*PXC*207Q00000X~"))))
    assert practitioner(r)["qualification"] == [{"code": {"coding": [{"system": "http://nucc.org/provider-taxonomy",
                                                                      "code": "207Q00000X"}]}}]


@pytest.mark.parametrize("prv, said", [
    ("PRV*PC*HPI*1992999998~", "is a Centers for Medicare and Medicaid Services National Provider Identifier (PRV02 "
                               "HPI)"),
    ("PRV*PC*TJ*123456789~", "is a Federal Taxpayer's Identification Number (PRV02 TJ)"),
    ("PRV*PC*Q9*X1~", "is PRV02 'Q9', not a known qualifier"),
    ("PRV*PC**X1~", "is without a qualifier (PRV02 is empty)"),
])
def test_a_2120_prv03_that_is_no_taxonomy_is_noted_not_a_qualification(prv, said):
    # was: PRV03 went under the taxonomy system whatever PRV02 said (an NPI read as a taxonomy code)
    r = valid(translated(text_271(provider(prv))))
    assert "qualification" not in practitioner(r)
    note, = [n for n in r.notes if n.raw == prv]
    value = prv.split("*")[3].rstrip("~")
    assert note.text == (f"Primary Care Provider PAT SMITH: PRV03 '{value}' {said}: only a provider taxonomy (PRV02 "
                         "PXC) is carried, as the Practitioner's qualification")


def test_which_prv02_is_a_taxonomy_is_the_tables():
    tables = with_table("references", provider_level={"PXC": "taxonomy", "HPI": "taxonomy"})
    assert "qualification" in practitioner(translated(text_271(provider("PRV*PC*HPI*207Q00000X~")), tables))


def test_a_270_providers_prv_that_is_no_taxonomy_is_noted():
    body = [*HEAD_270[:5], ("PRV", ["PE", "HPI", "1992999998"]), *HEAD_270[5:], ("EQ", ["30"])]
    bundle, noted = notes_270(x12(body))
    organization = next(e["resource"] for e in bundle["entry"] if e["resource"].get("name") == "SAMPLE CLINIC")
    assert "type" not in organization
    assert [n.text for n in noted if n.raw.startswith("PRV")] == [
        "provider segment PRV PE HPI 1992999998 has no FHIR home"]
    body[5] = ("PRV", ["PE", "PXC", "207Q00000X"])
    bundle, _ = notes_270(x12(body))
    organization = next(e["resource"] for e in bundle["entry"] if e["resource"].get("name") == "SAMPLE CLINIC")
    assert organization["type"][0]["coding"][0]["code"] == "207Q00000X"


# -- checked when loaded -----------------------------------------------------------------------------------------------



@pytest.mark.parametrize("file, old, new, message", [
    ("translate/qualifiers.yaml", '"2": referenced', '"2": echoed', "trace_type: code '2' means 'echoed'"),
    ("translate/qualifiers.yaml", '  "2": referenced\n', "", "trace_type names no code for 'referenced'"),
    ("translate/qualifiers.yaml", '  "1": person\n', "", "entity_type names no code for 'person'"),
    ("translate/identifiers.yaml", "system: npi}", "system: nip}", "identifiers.yaml: code 'XX' needs a display"),
    ("translate/identifiers.yaml", "type: payer_id_type}", "type: payer_id_system}",
     "identifiers.yaml: code 'PI' needs a display"),
    ("translate/identifiers.yaml", "  XV: {display: \"CMS PlanID\"}", "  XV: {display: PlanID, type: payer_id_type}",
     "identifiers.yaml: code 'XV' needs a display"),
    # a 270's member id (MI) must read back as one, from the 270 and from the 271's echo
    ("translate/identifiers.yaml", ", member_id: true}", "}",
     "request_270.yaml's member_id_qualifier 'MI' is not a code with member_id: true (those are: none)"),
    ("translate/identifiers.yaml", ", member_id: true}", ", member_id: 'true'}", "identifiers.yaml: code 'MI' needs"),
    ("translate/identifiers.yaml", ", member_id: true}", ", member_id: true, system: member_id_system}",
     "identifiers.yaml: code 'MI' needs"),
    ("translate/relationship.yaml", 'insured_indicator: {subscriber: "Y", dependent: "N"}',
     'insured_indicator: {subscriber: "Y"}', "insured_indicator.dependent needs an INS01 code"),
    ("translate/qualifiers.yaml", "additional_information:\n  ZZ: Place of service\n  NI: Nature of injury\n"
     "  GR: Nature of injury (NCCI code)", "", "additional_information"),
    ("translate/qualifiers.yaml", 'information_category:\n  "44": Nature of injury', "", "information_category"),
    ("translate/dates.yaml", "  RD8: range\n", "", "formats names no code for 'range'"),
    ("translate/dates.yaml", '"291": serviced', '"291": service', "inquiry: code '291' means 'service'"),
    ("translate/dates.yaml", '  "291": Plan\n', "", "qualifier '291' has no entry in names"),
    ("translate/references.yaml", "PXC: taxonomy", "PXC: taxonomy-code", "provider_level: code 'PXC'"),
    ("translate/references.yaml", "other_coverage_identifiers: [IG]", "other_coverage_identifiers: [QQ]",
     "other_coverage_identifiers qualifier 'QQ' has no entry in names"),
    ("translate/references.yaml", "other_coverage_identifiers: [IG]", "", "other_coverage_identifiers needs"),
    ("translate/quirks.yaml", 'eb01: ["F", "H"]', 'eb01: ["F", "HH"]', "placeholder_unlimited EB01 'HH'"),
    ("translate/quirks.yaml", "  allowed_string: unlimited\n", "", "placeholder_unlimited.allowed_string needs"),
    ("codes/time_period.yaml", 'family: lifetime}', 'family: forever}', "time_period.yaml: code '32'"),
    ("codes/time_period.yaml", '"24": {display: "Year to Date", amount: met}', '"24": {display: "Year to Date"}',
     "time_period.yaml: code '24' needs amount"),
    ("translate/procedures.yaml", "  from_x12: note\n", "  from_x12: eror\n",
     "translate/procedures.yaml: on_missing from_x12 'eror'"),
    ("translate/procedures.yaml", "  from_x12: note\n", "  to_fhir: note\n",
     "translate/procedures.yaml: on_missing has 'to_fhir'"),
])
def test_a_table_without_what_the_translation_reads_is_refused_when_loaded(tmp_path, file, old, new, message):
    with pytest.raises(MappingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_tables(mappings_with(tmp_path, file, old, new))
