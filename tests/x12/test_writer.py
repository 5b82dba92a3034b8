"""The strict writer: safe values, counts, control numbers, fixed-width ISA, and what it changed."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from gateway.x12.model import Delimiters
from gateway.x12.reader import read_x12
from gateway.x12.structure import element_limits
from gateway.x12.validate import validate_x12
from gateway.x12.writer import Envelope, X12Writer, format_amount, transliterate

NOW = datetime(2026, 3, 4, 5, 6)
ENV = Envelope(sender_id="GATEWAY01", receiver_id="PAYERX", interchange_control=42, now=NOW)


def body(last: str = "ROE", first: str = "RICHARD") -> list[tuple[str, list]]:
    return [
        ("BHT", ["0022", "13", "REQ1", "20260304", "0506"]),
        ("HL", ["1", "", "20", "1"]),
        ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]),
        ("HL", ["2", "1", "21", "1"]),
        ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"]),
        ("HL", ["3", "2", "22", "0"]),
        ("TRN", ["1", "REQ1-1", "9GATEWAY01"]),
        ("NM1", ["IL", "1", last, first, "", "", "", "MI", "W123456789"]),
        ("DMG", ["D8", "19800210", "M"]),
        ("DTP", ["291", "D8", "20260304"]),
        ("EQ", [["30", "1", "33"]]),
        ("EQ", ["", ("HC", "99213", "25")]),
    ]


STANDARD = Delimiters("*", "^", ":", "~")


def write(segments=None, delimiters=STANDARD):
    writer = X12Writer(delimiters, element_limits())
    return writer.interchange(ENV, "HS", "270", "005010X279A1", [segments or body()])


def test_written_270_reads_back_and_validates():
    result = write()
    assert result.segment_counts == [14]
    report = validate_x12(result.text)
    assert report.valid, [f.to_dict() for f in report.errors]
    isa = result.text.split("~")[0]
    assert len(isa) + 1 == 106
    txn, = report.transactions
    assert txn.control_number == "0001" and txn.segment_count == 14
    eq = [s for s in txn.segments() if s.id == "EQ"]
    assert eq[0].repetitions(1) == ["30", "1", "33"]
    assert eq[1].components(2) == ["HC", "99213", "25"]


def test_names_cannot_inject_segments():
    result = write(body(last="O*Brien~", first="Ann^Marie:J"))
    txn = read_x12(result.text).transactions[0]
    nm1 = [s for s in txn.segments() if s.id == "NM1"][2]
    assert nm1.get(3) == "OBRIEN" and nm1.get(4) == "ANNMARIEJ"
    assert txn.segment_count == 14
    assert {n.element for n in result.notes} == {"NM103", "NM104"}
    assert all("delimiter" in n.reason for n in result.notes)


def test_transliterates_to_the_basic_character_set():
    assert transliterate("Müller-Lüdenscheidt") == "Muller-Ludenscheidt"
    result = write(body(last="Müller", first="Zoë Ægir"))
    nm1 = [s for s in read_x12(result.text).transactions[0].segments() if s.id == "NM1"][2]
    assert (nm1.get(3), nm1.get(4)) == ("MULLER", "ZOE AEGIR")
    assert any(n.original == "Müller" and n.written == "MULLER" for n in result.notes)


def test_cuts_values_to_the_element_maximum():
    result = write(body(first="A" * 50))
    nm1 = [s for s in read_x12(result.text).transactions[0].segments() if s.id == "NM1"][2]
    assert nm1.get(4) == "A" * 35
    assert any("maximum length 35" in n.reason for n in result.notes)


def test_trailing_empty_elements_are_trimmed():
    writer = X12Writer()
    assert writer.segment("NM1", "03", "1", "ROE", "ANNA", "", "", None) == "NM1*03*1*ROE*ANNA~"
    assert writer.segment("EQ", "", ("HC", "99213", "", "")) == "EQ**HC:99213~"


def test_counts_and_control_numbers_for_several_transactions():
    writer = X12Writer(line_breaks=True)
    result = writer.interchange(ENV, "HS", "270", "005010X279A1", [body(), body(), body()])
    read = read_x12(result.text)
    assert [t.control_number for t in read.transactions] == ["0001", "0002", "0003"]
    assert not [f for f in read.all_findings if f.severity == "error"]


@pytest.mark.parametrize("bad", [Delimiters("*", "*", ":", "~"), Delimiters("A", "^", ":", "~"),
                                 Delimiters("*", "^", "::", "~")])
def test_refuses_unsafe_delimiters(bad):
    with pytest.raises(ValueError):
        X12Writer(bad)


def test_format_amount():
    assert [format_amount(v) for v in ("1450.750", 2000, ".2", "0.20", 0)] == ["1450.75", "2000", "0.2", "0.2", "0"]
    # the plain-number shortcut and Decimal agree, exponents, signs and leading zeros included
    values = ["0.00", "10", "10.0", "100", "007.50", "-5.00", "-0.0", "1E+2", "2.5e-3", 12.5, 1e-07, 0.1 + 0.2,
              Decimal("3.10"), "99999999.99"]
    assert [format_amount(v) for v in values] == [
        "0", "10", "10", "100", "7.5", "-5", "-0", "100", "0.0025", "12.5", "0.0000001", "0.30000000000000004",
        "3.1", "99999999.99"]


def test_element_limits_by_segment_and_position_match_the_refs():
    limits = element_limits()
    writer, plain = X12Writer(limits=limits), X12Writer(limits=dict(limits))   # shared index vs built here
    long = "B" * 70
    for w in (writer, plain):
        assert w.segment("NM1", "IL", "1", long, long) == f"NM1*IL*1*{'B' * 60}*{'B' * 35}~"
        assert w.segment("REF", "SY", "X" * 60) == f"REF*SY*{'X' * 50}~"
    assert [n.element for n in writer.notes] == [n.element for n in plain.notes] == ["NM103", "NM104", "REF02"]


def test_extended_elements_keep_case_but_never_delimiters():
    writer = X12Writer(Delimiters("*", "^", ">", "~"))
    seg = writer.segment("PER", "IC", "", "UR", "https://Example.org/Auth?x=1~")
    assert seg == "PER*IC**UR*https://Example.org/Auth?x=1~"


def test_a_270_whose_patient_asks_nothing_is_invalid():
    asks_nothing = [seg for seg in body() if seg[0] != "EQ"]
    report = validate_x12(write(asks_nothing).text, elements=False)
    found = [f for f in report.findings if f.code == "X12-INQUIRY-MISSING"]
    assert found and found[0].loop == "2100C" and found[0].ack_code == "3" and not report.valid
    assert not [f for f in validate_x12(write().text, elements=False).findings if f.code == "X12-INQUIRY-MISSING"]
