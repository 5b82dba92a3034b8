"""Project fixtures: every 270/271 validates clean; each broken copy gives its expected 999/TA1."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

import pytest

from gateway.x12.ack import build_999, build_ta1
from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from tests.conftest import FIXTURES

VALID = sorted((FIXTURES / "x12").glob("27[01]/*.27[01]"))
INVALID = sorted((FIXTURES / "x12" / "invalid").glob("*.x12"))
NOW = datetime(2026, 1, 15, 9, 30)


def ack_segments(text: str) -> list[list[str]]:
    """The acknowledgment's segments, split (component separator kept inside elements)."""
    return [parts for txn in read_x12(text).transactions for parts in (s.parts for s in txn.segments())] or [
        s.split("*") for s in text.split("~") if s.startswith("TA1")]


def test_fixture_set_is_complete():
    stems = {p.stem for p in VALID}
    assert {p.stem for p in VALID if p.suffix == ".270"} == {p.stem for p in VALID if p.suffix == ".271"}
    assert len(stems) >= 15 and len(INVALID) >= 12
    delimiter_sets = {read_x12(p.read_bytes()).interchanges[0].delimiters for p in VALID}
    assert len(delimiter_sets) >= 3


@pytest.mark.parametrize("path", VALID, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_valid_fixture_validates_clean(path: Path):
    report = validate_x12(path.read_bytes())
    assert report.valid, [f.to_dict() for f in report.errors]
    assert report.transactions and all(t.structure == "005010X279A1" for t in report.transactions)
    ack = build_999(report.transactions, report.findings, control_number=1, now=NOW)
    ik5 = [p for p in ack_segments(ack) if p[0] == "IK5"]
    assert ik5 and all(p[1] == "A" for p in ik5)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_broken_copy_gives_expected_acknowledgment(path: Path):
    expected = json.loads((path.parent / f"{path.stem}.expected.json").read_text())
    report = validate_x12(path.read_bytes())
    assert not report.valid
    if expected["ack"] == "ta1":
        ta1 = build_ta1(report.interchanges[0], report.findings, control_number=7, now=NOW)
        seg = next(s for s in ta1.replace("\n", "").split(report.interchanges[0].delimiters.segment)
                   if s.startswith("TA1"))
        parts = seg.split(report.interchanges[0].delimiters.element)
        assert parts[4:6] == [expected["ta1"], expected["ta105"]]
        return
    ack = build_999(report.transactions, report.findings, control_number=7, now=NOW)
    segments = ack_segments(ack)
    component = report.interchanges[0].delimiters.component
    ik3 = [p for p in segments if p[0] == "IK3"]
    assert [(p[1], int(p[2]), p[4]) for p in ik3] == [
        (e["segment"], e["position"], e["code"]) for e in expected["ik3"]]
    for e in expected["ik3"]:
        located = [f for f in report.findings if f.position == e["position"] and f.segment == e["segment"]]
        assert located and located[0].loop == e["loop"], [f.to_dict() for f in located]
    ik4 = [p for p in segments if p[0] == "IK4"]
    assert len(ik4) == len(expected["ik4"])
    for got, e in zip(ik4, expected["ik4"], strict=True):
        position = got[1].split(component)
        assert int(position[0]) == e["element"]
        if "repetition" in e:
            assert int(position[2]) == e["repetition"]
        assert got[2:4] == [e["data_element"], e["code"]]
        if "value" in e:
            assert got[4] == e["value"]
    ik5 = next(p for p in segments if p[0] == "IK5")
    assert ik5[1:] == expected["ik5"]
    ak9 = next(p for p in segments if p[0] == "AK9")
    assert ak9[1] == expected["ak9"]
    assert ak9[5:] == expected.get("ak9_codes", [])


def test_acknowledgments_pass_pyx12s_own_999_map():
    """Our 999s are themselves valid 005010X231A1 (checked with pyx12's stock 999 map)."""
    import pyx12.params
    import pyx12.x12n_document

    for path in INVALID + VALID[:3]:
        report = validate_x12(path.read_bytes())
        if not report.transactions:
            continue
        ack = build_999(report.transactions, report.findings, control_number=7, now=NOW)
        ok = pyx12.x12n_document.x12n_document(pyx12.params.params(), io.StringIO(ack), io.StringIO(), None)
        assert ok, (path.name, ack)


@pytest.mark.parametrize("length", [61, 16_074, 20_000, 70_000])
def test_an_overlong_element_is_found_however_long_the_segment(length: int) -> None:
    """pyx12 read 8 kB at a time and took a segment over ~16 kB for the end of the file: the rest went unchecked
    and a 16,075-character NM103 was "valid"."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    report = validate_x12(text.replace("NM1*IL*1*DELGADO*", "NM1*IL*1*" + "A" * length + "*").encode())
    assert not report.valid
    assert [(f.element, f.ack_code) for f in report.findings] == [("NM103", "5")]


def test_a_999_for_a_group_level_error_keeps_ik5_for_the_sets_own_errors() -> None:
    """GS01 HC on a 270: the group is rejected (AK9 R with code 1 and no accepted set); the set itself has no
    error, and an IK5 R would need an IK502 code it does not have."""
    data = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes().replace(b"GS*HS*", b"GS*HC*")
    report = validate_x12(data)
    ack = build_999(report.transactions, report.findings, control_number=5, now=datetime(2025, 1, 1))
    assert "IK5*A~" in ack and "AK9*R*1*1*0*1~" in ack


def test_a_not_used_element_that_is_present_is_ik403_i10() -> None:
    """2100D NM108/NM109 are "Not Used" in X279A1: pyx12 calls that IK403 10 (exclusion condition violated), X231A1's
    code for it is I10."""
    text = (FIXTURES / "x12" / "270" / "dependent-generic.270").read_text()
    segment = next(s for s in text.replace("\n", "").split("~") if s.startswith("NM1|03|"))
    report = validate_x12(text.replace(segment, segment + "||||MI|W123456789").encode())
    assert [(f.element, f.ack_code) for f in report.findings if f.level == "element"] == [
        ("NM108", "I10"), ("NM109", "I10")]
    ack = build_999(report.transactions, report.findings, control_number=5, now=datetime(2025, 1, 1))
    assert "IK4|8|66|I10~IK4|9|67|I10~" in ack   # this file's delimiters


def test_a_reversed_rd8_range_is_an_invalid_date() -> None:
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    dtp = next(s for s in text.replace("\n", "").split("~") if s.startswith("DTP*291*"))
    report = validate_x12(text.replace(dtp, "DTP*291*RD8*20250331-20250301").encode())
    assert not report.valid
    assert [(f.code, f.element, f.ack_code) for f in report.errors] == [("X12-DATE-RANGE", "DTP03", "8")]
    ack = build_999(report.transactions, report.findings, control_number=5, now=datetime(2025, 1, 1))
    assert "IK4*3*1251*8*20250331-20250301~" in ack
    assert validate_x12(text.replace(dtp, "DTP*291*RD8*20250301-20250331").encode()).valid


def test_a_diagnosis_pointer_needs_its_hi_code() -> None:
    """EQ05 points into the patient loop's HI (three codes here): a fourth does not exist."""
    text = (FIXTURES / "golden" / "270" / "diagnosis.270").read_text()
    assert "HI*ABK:M5450*ABF:M62830*ABF:S335XXA~" in text and "EQ**HC:97110***1:3~" in text
    assert validate_x12(text.encode()).valid
    report = validate_x12(text.replace("EQ**HC:97110***1:3~", "EQ**HC:97110***1:4~").encode())
    assert [(f.code, f.element, f.component, f.value, f.ack_code) for f in report.errors] == [
        ("X12-DIAGNOSIS-POINTER", "EQ05", 2, "4", "7")]
    for pointer in ("\u00b2", "1" * 5000):   # no int() can read them: findings too, not a failure
        report = validate_x12(text.replace("EQ**HC:97110***1:3~", f"EQ**HC:97110***1:{pointer}~").encode())
        assert "X12-DIAGNOSIS-POINTER" in {f.code for f in report.errors}


@pytest.mark.parametrize(("old", "new", "where"), [
    ("GE*1*1001~", "GE*\u00b2*1001~", "(GE)"),                       # GE01 no int() reads
    ("GE*1*1001~", "GE*" + "1" * 5000 + "*1001~", "(GE)"),
    ("GE*1*1001~", "GE**1001~", "(GE)"),
    ("SE*13*0001~", "SE*13*0001~SE*13*0001~", ""),                  # an SE and a GE that close nothing
    ("GE*1*1001~", "GE*1*1001~GE*1*1001~", ""),
    ("EQ*30~", "EQ**HC" + ":1" * 20 + "~", "(EQ)"),                  # a composite with 21 components
    ("DTP*291*D8*20250310~", "DTP*291*RD8*20250101-20250102-20250103~", "(DTP)")])
def test_input_pyx12_fails_on_is_a_finding_not_a_failure(old: str, new: str, where: str) -> None:
    """pyx12 raises IndexError, ValueError, AttributeError ... on some damaged input; the report says where its
    element checks stopped (an error), and a 999 and TA1 can still be written."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    assert old in text
    report = validate_x12(text.replace(old, new).encode())
    stopped = [f for f in report.errors if f.code == "X12-IG-UNCHECKED"]
    assert len(stopped) == 1 and where in stopped[0].message and "pyx12 cannot check it" in stopped[0].message
    assert not report.valid
    build_999(report.transactions, report.findings, control_number=5, now=datetime(2025, 1, 1))
    ta1 = build_ta1(report.interchanges[0], report.findings, control_number=5, now=datetime(2025, 1, 1))
    # stopped in an envelope segment, the interchange is in error: its TA1 rejects it, never "accepted" (A*000)
    expected = "*R*024~" if stopped[0].level == "interchange" else "*A*000~"
    assert expected in ta1


@pytest.mark.parametrize("component", ["A", "1", " "])
def test_an_acknowledgment_to_a_letter_or_digit_isa16_is_written_in_our_delimiters(component: str) -> None:
    """The reader takes any ISA16; the writer takes no letter, digit or space: the 999 and TA1 use ours."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    report = validate_x12(text.replace("*T*:~", f"*T*{component}~", 1).encode(), elements=False)
    ack = build_999(report.transactions, report.findings, control_number=5, now=datetime(2025, 1, 1))
    assert ack.startswith("ISA*") and ack[104:106] == ":~"
    ta1 = build_ta1(report.interchanges[0], report.findings, control_number=5, now=datetime(2025, 1, 1))
    assert ta1[104:106] == ":~"


SUBSCRIBER_270 = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()


@pytest.mark.parametrize("element, terminator", [("*", "\n"), ("|", "\n"), ("^", "\n"), ("*", "\r"), ("*", "~")])
def test_the_guide_checks_read_a_270_whatever_its_segment_terminator(element: str, terminator: str) -> None:
    """With a line break as the segment terminator (DESIGN §5) pyx12 read an empty segment after the ISA, stopped as
    if the interchange had ended, and every later segment passed unchecked: EQ*ZZZ was valid."""
    text = SUBSCRIBER_270.replace("EQ*30", "EQ*ZZZ").replace("~\n", "\x01").replace("^", "}")
    text = text.replace("*", element).replace("\x01", terminator)
    report = validate_x12(text.encode())
    assert [(f.element, f.value) for f in report.errors if f.code == "X12-IG-ELEMENT"][-1:] == [("EQ01", "ZZZ")]
    assert validate_x12(text.replace(f"EQ{element}ZZZ", f"EQ{element}30").encode()).valid


def test_a_set_outside_any_group_is_checked_as_itself_not_blamed_on_the_set_before() -> None:
    """A second ST after the GE: pyx12 reported each of its segments ("Segment ST*270 not found") and its EQ against
    the first set, which was valid, and the 999 rejected that set."""
    head, trailer = SUBSCRIBER_270.split("GE*1*1001~\n")
    second = head[head.index("ST*270"):].replace("0001", "0002").replace("EQ*30", "EQ*ZZZ")
    report = validate_x12((head + "GE*1*1001~\n" + second + trailer).encode())
    by_set = {(f.transaction, f.code, f.element) for f in report.errors}
    assert not {f for f in by_set if f[0] == "0001"}, by_set
    assert {("0002", "X12-GS-MISSING", ""), ("0002", "X12-IG-ELEMENT", "EQ01")} <= by_set
