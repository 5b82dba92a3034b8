"""Acknowledgment findings in words: code meanings come from mappings/codes; a code a table does not list is
kept and said to be none of its codes, or makes the acknowledgment unreadable, as the table's on_missing says."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from gateway.errors import MappingError
from gateway.fhir.models import validate_structure
from gateway.transport.acks import TABLES, AckCodeError, AckCodes, ack_findings, load_ack_codes, read_acknowledgments
from gateway.transport.client import PayerRejected, PayerUnavailable, _answer_271
from gateway.x12 import ack
from gateway.x12.ack import build_999
from gateway.x12.model import Finding
from gateway.x12.tokenizer import tokenize
from gateway.x12.validate import validate_x12
from tests.conftest import FIXTURES, mappings_with


def findings(text: str, codes: AckCodes | None = None) -> list[dict]:
    segments = [(batch.delimiters, parts) for batch in tokenize(text) for parts in batch.split()]
    return ack_findings(segments, codes or load_ack_codes())


ISA = "ISA*00*          *00*          *ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *250310*0915*^*00501*000000009*0*P*:~"


def test_every_table_is_loaded_with_string_codes_and_a_display_for_each():
    codes = load_ack_codes()
    assert set(codes.tables) == set(TABLES)
    for name, table in codes.tables.items():
        assert table, name
        for code, info in table.items():
            assert isinstance(code, str) and isinstance(info.get("display"), str) and info["display"], (name, code)


def test_our_own_999_and_ta1_carry_the_codes_the_tables_list():
    codes, sets = load_ack_codes(), ack.ack_code_sets()
    assert sets.interchange == set(codes.tables["interchange_note"])
    assert sets.segment == set(codes.tables["segment_syntax_error"])
    assert sets.element == set(codes.tables["element_syntax_error"])
    assert sets.transaction == set(codes.tables["transaction_syntax_error"])
    assert sets.group == set(codes.tables["group_syntax_error"])
    assert ack.ack_code_sets() is sets   # read once per folder: build_999 only tests membership


def test_the_rejecting_statuses_are_data():
    assert load_ack_codes().rejecting == {"R", "M", "W", "X"}


def test_a_997_is_described_like_a_999():
    text = (ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*004010~ST*997*0001~AK1*HS*1001~AK2*270*0001~"
            "AK3*DMG*4**8~AK4*2*1251*8*19990231~AK5*R*5~AK9*R*1*1*0*4~SE*8*0001~GE*1*9~IEA*1*000000009~")
    ak3, ak4, ak5, ak9 = findings(text)
    assert ak3["message"] == "segment DMG at position 4: Segment has data element errors (AK304 code 8)"
    assert ak4["message"] == "element DMG02 (data element 1251): Invalid date (AK403 code 8): '19990231'"
    assert ak5["message"] == "transaction set 270 0001 rejected: One or more segments in error (AK5 code 5)"
    assert ak9["descriptions"] == ["The group control numbers in GS06 and GE02 differ"]
    assert ak9["message"] == ("functional group rejected: The group control numbers in GS06 and GE02 differ "
                              "(AK9 code 4)")


@pytest.mark.parametrize("position", ["\u00b2", "1" * 5000, "2:\u00b2", "2:" + "1" * 5000])
def test_an_ik401_position_no_int_can_read_is_kept_as_given(position):
    text = (ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*005010X231A1~ST*999*0001*005010X231A1~"
            "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK3*DMG*4**8~"
            f"IK4*{position}*1251*8*X~IK5*R*5~SE*7*0001~GE*1*9~IEA*1*000000009~")
    ik4 = findings(text)[1]
    assert ik4["message"].startswith("element DMG" + ("02" if position.startswith("2:") else "")
                                     + " (data element 1251)")


UNLISTED_999 = (ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*005010X231A1~ST*999*0001*005010X231A1~"
                "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK3*EQ*9*2110C*Z9~IK4*1*1365*11*ZZ~"
                "IK5*Q*5*ZZ~AK9*V*1*1*0*99~SE*8*0001~GE*1*9~IEA*1*000000009~")
UNLISTED_TA1 = ISA.replace("000000009", "000000010") + "TA1*000000009*250310*0915*Q*099~IEA*0*000000010~"


def test_codes_a_table_does_not_list_are_kept_as_sent_and_said_to_be_none_of_its_codes():
    ik3, ik4, ik5, ak9 = findings(UNLISTED_999)
    assert ik3["description"] is None and ik3["code"] == "Z9"
    assert ik3["message"] == ("segment EQ at position 9 (loop 2110C): IK304 code 'Z9', not a segment syntax error "
                              "code")
    assert ik4["description"] is None and ik4["code"] == "11"
    assert ik4["message"] == ("element EQ01 (data element 1365): IK403 code '11', not an element syntax error "
                              "code: 'ZZ'")
    assert ik5["codes"] == ["5", "ZZ"] and ik5["descriptions"] == ["One or more segments in error", None]
    assert ik5["status"] == "Q"
    assert ik5["message"] == ("transaction set 270 0001 with IK501 code 'Q', not an acknowledgment status code: "
                              "One or more segments in error (IK5 code 5); IK5 code 'ZZ', not a transaction syntax "
                              "error code")
    assert ak9["status"] == "V" and ak9["codes"] == ["99"] and ak9["descriptions"] == [None]
    assert ak9["message"] == ("functional group with AK901 code 'V', not an acknowledgment status code: AK9 code "
                              "'99', not a group syntax error code")
    ta1, = findings(UNLISTED_TA1)
    assert ta1["code"] == "099" and ta1["description"] is None and ta1["status"] == "Q"
    assert ta1["message"] == ("interchange 000000009 with TA104 code 'Q', not an acknowledgment status code: TA105 "
                              "code '099', not an interchange note code")


def test_an_accepted_group_is_silent_but_a_group_status_no_table_lists_is_said():
    text = (ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*005010X231A1~ST*999*0001*005010X231A1~"
            "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK5*A~AK9*{}*1*1*1~SE*6*0001~GE*1*9~"
            "IEA*1*000000009~")
    assert [f["level"] for f in findings(text.format("A"))] == ["transaction"]
    ak9 = findings(text.format("V"))[1]
    assert ak9["message"] == "functional group with AK901 code 'V', not an acknowledgment status code"


@pytest.mark.parametrize("policy", ["passthrough", "note"])
def test_passthrough_and_note_keep_an_unlisted_code(policy):
    codes = load_ack_codes()
    kept = AckCodes(codes.tables, dict.fromkeys(TABLES, policy))
    assert findings(UNLISTED_999, kept) == findings(UNLISTED_999, codes)
    assert findings(UNLISTED_TA1, kept) == findings(UNLISTED_TA1, codes)


@pytest.mark.parametrize(("table", "text", "element", "code"), [
    ("segment_syntax_error", UNLISTED_999, "IK304", "Z9"),
    ("element_syntax_error", UNLISTED_999, "IK403", "11"),
    ("transaction_syntax_error", UNLISTED_999, "IK5", "ZZ"),
    ("group_syntax_error", UNLISTED_999, "AK9", "99"),
    ("acknowledgment_status", UNLISTED_999, "IK501", "Q"),
    ("acknowledgment_status", UNLISTED_TA1, "TA104", "Q"),
    ("interchange_note", UNLISTED_TA1, "TA105", "099"),
])
def test_on_missing_error_makes_the_acknowledgment_unreadable(table, text, element, code):
    codes = load_ack_codes()
    strict = AckCodes(codes.tables, {table: "error"})
    with pytest.raises(AckCodeError) as caught:
        findings(text, strict)
    assert (caught.value.element, caught.value.code, caught.value.table) == (element, code, table)
    assert str(caught.value) == f"{element} '{code}' is not in mappings/codes/{table}.yaml (on_missing: error)"
    # the listed codes of the same acknowledgment are read as before
    listed = (ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*005010X231A1~ST*999*0001*005010X231A1~"
              "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK3*EQ*9*2110C*8~IK4*1*1365*7*ZZ~"
              "IK5*R*5~AK9*R*1*1*0*4~SE*8*0001~GE*1*9~IEA*1*000000009~")
    assert findings(listed, strict) == findings(listed, codes)


def test_on_missing_error_leaves_an_empty_element_said_empty():
    strict = AckCodes(load_ack_codes().tables, dict.fromkeys(TABLES, "error"))
    ta1, = findings(ISA.replace("000000009", "000000010") + "TA1*000000009*250310*0915*R*~IEA*0*000000010~", strict)
    assert ta1["message"] == "interchange 000000009 rejected: TA105 empty"


def _mappings_with(tmp_path: Path, table: str, policy: str) -> str:
    return mappings_with(tmp_path, f"codes/{table}.yaml", "on_missing: passthrough", f"on_missing: {policy}")


@pytest.mark.parametrize("table", TABLES)
def test_each_table_s_on_missing_is_read_from_its_file(tmp_path, table):
    codes = load_ack_codes(_mappings_with(tmp_path, table, "error"))
    assert codes.policies == {name: "error" if name == table else "passthrough" for name in TABLES}


def test_a_misspelt_on_missing_is_refused_when_the_tables_load(tmp_path):
    with pytest.raises(MappingError, match=r"codes/group_syntax_error.yaml: on_missing 'eror' is none of"):
        load_ack_codes(_mappings_with(tmp_path, "group_syntax_error", "eror"))


def test_a_validated_acknowledgment_a_table_makes_unreadable_is_an_error_finding_not_ack_lines():
    report = validate_x12(UNLISTED_999)
    strict = AckCodes(load_ack_codes().tables, {"segment_syntax_error": "error"})
    assert read_acknowledgments(report, UNLISTED_999, strict) == []
    error, = [f for f in report.findings if f.code == "X12-ACK-CODE"]
    assert error.severity == "error" and not report.valid
    assert error.message == ("the acknowledgment cannot be read: IK304 'Z9' is not in "
                             "mappings/codes/segment_syntax_error.yaml (on_missing: error)")
    assert (error.segment, error.element, error.value) == ("IK3", "IK304", "Z9")


def test_a_mappings_copy_without_a_code_keeps_it_out_of_our_999(tmp_path):
    base = mappings_with(tmp_path, "codes/element_syntax_error.yaml", '  "7": {display: "Invalid code value"}\n', "")
    sets = ack.ack_code_sets(base)
    assert "7" not in sets.element and "7" in ack.ack_code_sets().element
    report = validate_x12(FIXTURES.joinpath("x12", "270", "subscriber-generic.270").read_bytes())
    txn = report.transactions[0]
    bad = Finding("T", "bad code", level="element", ack_code="7", transaction=txn.control_number, segment="EQ",
                  position=9, element="EQ01", data_element="1365", value="ZZ", set_ordinal=txn.ordinal)
    now = datetime(2025, 3, 10, 9, 15)
    assert "IK4*1*1365*7*ZZ~" in build_999(report.transactions, [bad], control_number=1, now=now)
    assert "IK4" not in build_999(report.transactions, [bad], control_number=1, now=now, mappings=base)


def test_a_deployment_can_reword_a_code_without_touching_python():
    codes = load_ack_codes()
    reworded = AckCodes({**codes.tables, "interchange_note": {"025": {"display": "Control number already used"}}})
    ta1 = ISA.replace("000000009", "000000010") + "TA1*000000009*250310*0915*R*025~IEA*0*000000010~"
    finding, = findings(ta1, reworded)
    assert finding["message"] == "interchange 000000009 rejected: Control number already used (TA105 code 025)"


A_271 = (FIXTURES / "x12" / "271" / "subscriber-generic.271").read_text(encoding="utf-8")
ACCEPTING_999 = (ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*005010X231A1~ST*999*0001*005010X231A1~"
                 "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK5*{}~AK9*A*1*1*1~SE*6*0001~GE*1*9~"
                 "IEA*1*000000009~")


def test_a_payer_rejection_a_table_makes_unreadable_is_an_unreadable_answer():
    codes = load_ack_codes()
    with pytest.raises(PayerRejected) as rejected:
        _answer_271(UNLISTED_999, codes)
    assert "IK304 code 'Z9', not a segment syntax error code" in rejected.value.diagnostics
    strict = AckCodes(codes.tables, {"segment_syntax_error": "error"})
    with pytest.raises(PayerUnavailable) as caught:
        _answer_271(UNLISTED_999, strict)
    assert caught.value.diagnostics == ("the 999 cannot be read: IK304 'Z9' is not in "
                                        "mappings/codes/segment_syntax_error.yaml (on_missing: error)")
    validate_structure(caught.value.to_operation_outcome())


def test_a_status_no_table_lists_beside_a_271_is_unreadable_only_under_on_missing_error():
    codes = load_ack_codes()
    answer = ACCEPTING_999.format("Q") + A_271
    txns, _ = _answer_271(answer, codes)   # Q rejects nothing the table knows of: the 271 is read
    assert [t.set_id for t in txns] == ["271"]
    assert _answer_271(ACCEPTING_999.format("A") + A_271, AckCodes(codes.tables, {"acknowledgment_status": "error"}))
    with pytest.raises(PayerUnavailable) as caught:
        _answer_271(answer, AckCodes(codes.tables, {"acknowledgment_status": "error"}))
    assert caught.value.diagnostics == ("the 999 cannot be read: IK501 'Q' is not in "
                                        "mappings/codes/acknowledgment_status.yaml (on_missing: error)")


@pytest.mark.parametrize("status", ["R", "M", "W", "X"])
def test_a_ta1_whose_status_the_table_marks_rejecting_refuses_the_271_beside_it(status):
    ta1 = ISA.replace("000000009", "000000010") + f"TA1*000000009*250310*0915*{status}*025~IEA*0*000000010~"
    with pytest.raises(PayerRejected) as caught:
        _answer_271(ta1 + A_271, load_ack_codes())
    assert caught.value.kind == "TA1"
    accepted = ISA.replace("000000009", "000000010") + "TA1*000000009*250310*0915*E*025~IEA*0*000000010~"
    assert _answer_271(accepted + A_271, load_ack_codes())[0]


def test_a_ta1_status_is_checked_against_the_statuses_the_table_gives_ta104(tmp_path):
    text = ISA.replace("000000009", "000000010") + "TA1*000000009*250310*0915*{}*000~IEA*0*000000010~"
    assert not [f for f in validate_x12(text.format("E")).findings if f.code == "X12-TA1"]
    bad, = [f for f in validate_x12(text.format("P")).findings if f.code == "X12-TA1"]
    assert bad.message == ("TA1 TA104 'P' is not a TA1 status (A, E, R: mappings/codes/acknowledgment_status.yaml)")
    base = mappings_with(tmp_path, "codes/acknowledgment_status.yaml", "used_in: [AK901]}", "used_in: [AK901, TA104]}")
    assert not [f for f in validate_x12(text.format("P"), mappings=base).findings if f.code == "X12-TA1"]
