"""Acknowledgment findings in words: code meanings come from mappings/codes, unknown codes pass through."""

from __future__ import annotations

import pytest

from gateway.transport.acks import TABLES, AckCodes, ack_findings, load_ack_codes
from gateway.x12 import ack
from gateway.x12.tokenizer import tokenize


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


@pytest.mark.parametrize(("table", "emitted"), [
    ("interchange_note", ack.TA1_CODES), ("segment_syntax_error", ack.SEGMENT_CODES),
    ("element_syntax_error", ack.ELEMENT_CODES), ("transaction_syntax_error", ack.TRANSACTION_CODES),
    ("group_syntax_error", ack.GROUP_CODES)])
def test_every_code_our_own_999_and_ta1_can_send_has_a_meaning(table: str, emitted: frozenset[str]):
    assert emitted <= set(load_ack_codes().tables[table])


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


def test_codes_a_table_does_not_list_are_kept_as_codes():
    text = (ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*005010X231A1~ST*999*0001*005010X231A1~"
            "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK3*EQ*9*2110C*Z9~IK4*1*1365*11*ZZ~"
            "IK5*Q*5*ZZ~SE*7*0001~GE*1*9~IEA*1*000000009~")
    ik3, ik4, ik5 = findings(text)
    assert ik3["description"] is None and ik3["message"] == "segment EQ at position 9 (loop 2110C): IK304 code Z9"
    assert ik4["description"] is None and ik4["message"] == "element EQ01 (data element 1365): IK403 code 11: 'ZZ'"
    assert ik5["descriptions"] == ["One or more segments in error", None]
    assert ik5["message"] == ("transaction set 270 0001 status 'Q': One or more segments in error (IK5 code 5); "
                              "IK5 code ZZ")


def test_a_deployment_can_reword_a_code_without_touching_python():
    codes = load_ack_codes()
    reworded = AckCodes({**codes.tables, "interchange_note": {"025": {"display": "Control number already used"}}})
    ta1 = ISA.replace("000000009", "000000010") + "TA1*000000009*250310*0915*R*025~IEA*0*000000010~"
    finding, = findings(ta1, reworded)
    assert finding["message"] == "interchange 000000009 rejected: Control number already used (TA105 code 025)"
