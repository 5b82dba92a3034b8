"""999s and TA1s for files holding several interchanges, groups or sets with the same control numbers: each
acknowledgment goes back to whoever sent what it acknowledges, and each set gets only its own defects."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.x12.ack import build_999, build_ta1s, nth_control
from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from tests.conftest import FIXTURES

NOW = datetime(2026, 1, 15, 9, 30)
SUBSCRIBER_270 = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()


def from_other_sender(text: str, control: str = "000002002") -> str:
    """The same interchange from another sender (ISA06, GS02) with its own ISA13; GS06 1001 and ST02 0001 stay."""
    assert text.count("FHIRX12GW      ") == 1 and text.count("GS*HS*FHIRX12GW*") == 1
    return (text.replace("FHIRX12GW      ", "OTHERSENDER    ").replace("GS*HS*FHIRX12GW*", "GS*HS*OTHERSENDER*")
            .replace("000001001", control))


def interchanges(text: str) -> list[str]:
    """Each ISA..IEA of ``text`` (segments kept whole, terminators included)."""
    return ["ISA" + part for part in text.split("ISA")[1:]]


def segments(text: str, seg_id: str) -> list[str]:
    return [s for s in text.replace("\n", "").split("~") if s.startswith(seg_id + "*")]


def duplicated_st02(first: str = "EQ*30~", second: str = "EQ*30~") -> str:
    """One group holding two 270 sets that both say ST02 0001, each with its EQ segment replaced (SE01 recounted)."""
    head, tail = SUBSCRIBER_270.split("GE*1*1001~\n")
    envelope, st = head[:head.index("ST*270")], head[head.index("ST*270"):]

    def one(eq: str) -> str:
        text = st.replace("EQ*30~", eq)
        return text.replace("SE*13*", f"SE*{text.count('~')}*")

    return envelope + one(first) + one(second) + "GE*2*1001~\n" + tail


def test_a_single_interchange_999_is_unchanged():
    """The common case, byte for byte as before several interchanges got one 999 each."""
    report = validate_x12((FIXTURES / "x12" / "invalid" / "eq01-invalid-code.x12").read_bytes())
    assert build_999(report.transactions, report.findings, control_number=7, now=NOW) == (
        "ISA*00*          *00*          *ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *260115*0930*^*00501*000000007*0*T*:~"
        "GS*FA*ACMEHLTH*FHIRX12GW*20260115*0930*7*X*005010X231A1~ST*999*0001*005010X231A1~"
        "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK3*EQ*12**8~IK4*1*1365*7*ZZ~IK5*R*5~"
        "AK9*R*1*1*0~SE*8*0001~GE*1*7~IEA*1*000000007~")


def test_each_interchange_gets_its_own_999_back_to_its_own_sender():
    """It was one 999 interchange to the first sender, and the second sender's rejected EQ01 was also reported
    against the first sender's set (same GS06 and ST02)."""
    second = from_other_sender(SUBSCRIBER_270).replace("EQ*30~", "EQ*ZZ~")
    report = validate_x12((SUBSCRIBER_270 + second).encode())
    ack = build_999(report.transactions, report.findings, control_number=7, now=NOW)
    first_ack, second_ack = interchanges(ack)
    assert "*ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *260115*0930*^*00501*000000007*" in first_ack
    assert segments(first_ack, "GS")[0].startswith("GS*FA*ACMEHLTH*FHIRX12GW*")
    assert segments(first_ack, "IK5") == ["IK5*A"] and segments(first_ack, "AK9") == ["AK9*A*1*1*1"]
    assert not segments(first_ack, "IK3")
    assert "*ZZ*ACMEHLTH       *ZZ*OTHERSENDER    *260115*0930*^*00501*000000008*" in second_ack
    assert segments(second_ack, "GS")[0].startswith("GS*FA*ACMEHLTH*OTHERSENDER*")
    assert segments(second_ack, "IK4") == ["IK4*1*1365*7*ZZ"] and segments(second_ack, "IK5") == ["IK5*R*5"]
    assert second_ack.endswith("IEA*1*000000008~")
    read = read_x12(ack)   # two well-formed interchanges, as any reader of several interchanges takes them
    assert len(read.interchanges) == 2 and not [f for f in read.all_findings if f.severity == "error"
                                                and f.code != "X12-SET-UNSUPPORTED"]


def test_a_group_finding_goes_to_its_own_group_in_its_own_interchange():
    """Both interchanges hold a group 1001: the second's wrong GE01 rejected the first's group too."""
    second = from_other_sender(SUBSCRIBER_270).replace("GE*1*1001~", "GE*2*1001~")
    report = validate_x12((SUBSCRIBER_270 + second).encode())
    first_ack, second_ack = interchanges(build_999(report.transactions, report.findings, control_number=7, now=NOW))
    assert segments(first_ack, "AK9") == ["AK9*A*1*1*1"]
    assert segments(second_ack, "AK9") == ["AK9*R*1*1*0*5"]


def test_control_numbers_of_several_acknowledgments_wrap_after_999999999():
    assert [nth_control(999_999_998, n) for n in range(3)] == [999_999_998, 999_999_999, 1]
    report = validate_x12((SUBSCRIBER_270 + from_other_sender(SUBSCRIBER_270)).encode())
    ack = build_999(report.transactions, report.findings, control_number=999_999_999, now=NOW)
    assert [s for s in segments(ack, "IEA")] == ["IEA*1*999999999", "IEA*1*000000001"]


@pytest.mark.parametrize("elements", [True, False])
def test_a_repeated_st02_in_a_group_is_ik502_23_on_the_set_that_repeats_it(elements: bool):
    """Reported by the reader, so also without pyx12 (the simulator's structure mode), and once: pyx12's copy (23,
    "not unique within file", though it means the group) is left out."""
    report = validate_x12(duplicated_st02().encode(), elements=elements)
    found = [(f.code, f.ack_code, f.set_ordinal) for f in report.findings]
    assert found == [("X12-ST-DUPLICATE", "23", 2)]
    assert "group 1001" in report.findings[0].message and report.findings[0].element == "ST02"
    assert "set_ordinal" not in report.findings[0].to_dict()
    ack = build_999(report.transactions, report.findings, control_number=7, now=NOW)
    assert segments(ack, "IK5") == ["IK5*A", "IK5*R*23"] and segments(ack, "AK9") == ["AK9*P*2*2*1"]


@pytest.mark.parametrize(("first", "second", "defective"), [
    ("EQ*30~", "EQ*ZZ~", 1),                                          # pyx12's finding, in the second set
    ("EQ*ZZ~", "EQ*30~", 0),                                          # ... in the first
    ("EQ*30~", "EQ*30~DTP*291*RD8*20250331-20250301~", 1),            # the validator's own check
    ("EQ*30~ZZZ*1~", "EQ*30~", 0),                                    # the reader's (an unknown segment)
])
def test_two_sets_with_the_same_st02_each_get_only_their_own_findings(first: str, second: str, defective: int):
    """Findings were matched to sets by ST02: each AK2 repeated the other set's IK3/IK4."""
    report = validate_x12(duplicated_st02(first, second).encode())
    assert not [f for f in report.errors if f.code in ("X12-SE-COUNT", "X12-IG-UNCHECKED")]
    ack = build_999(report.transactions, report.findings, control_number=7, now=NOW)
    body = ack[ack.index("AK2*"):ack.index("AK9*")]
    sets = ["AK2*" + part for part in body.split("AK2*")[1:]]
    assert len(sets) == 2
    assert "IK3*" in sets[defective] and "IK3*" not in sets[1 - defective], sets
    assert sets[1 - defective].endswith(("IK5*A~", "IK5*R*23~"))


def test_repetitions_are_checked_in_every_interchange_not_only_the_first():
    """An EQ01 repetition with a bad code passed in the file's second interchange (its sets were looked up under
    the first interchange's ordinals)."""
    second = SUBSCRIBER_270.replace("000001001", "000002002").replace("EQ*30~", "EQ*30^ZZ~")
    report = validate_x12((SUBSCRIBER_270 + second).encode())
    assert [(f.element, f.repetition, f.value, f.interchange or f.set_ordinal) for f in report.errors] == [
        ("EQ01", 2, "ZZ", 2)]
    first_ack, second_ack = interchanges(build_999(report.transactions, report.findings, control_number=7, now=NOW))
    assert not segments(first_ack, "IK4") and segments(second_ack, "IK4") == ["IK4*1::2*1365*7*ZZ"]


def test_each_interchange_gets_its_own_ta1_back_to_its_own_sender():
    """``build_ta1`` answers one ISA: for a file of several, each gets one, the one in error rejected."""
    second = from_other_sender(SUBSCRIBER_270).replace("IEA*1*000002002~", "IEA*1*000009999~")
    report = validate_x12((SUBSCRIBER_270 + second).encode())
    first_ta1, second_ta1 = interchanges(build_ta1s(report.interchanges, report.findings, control_number=7, now=NOW))
    assert "*ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *" in first_ta1 and "*000000007*" in first_ta1
    assert "TA1*000001001*250310*0915*A*000~" in first_ta1
    assert "*ZZ*ACMEHLTH       *ZZ*OTHERSENDER    *" in second_ta1 and second_ta1.endswith("IEA*0*000000008~")
    assert "TA1*000002002*250310*0915*R*001~" in second_ta1


def test_one_interchange_gets_one_ta1_as_before():
    report = validate_x12(SUBSCRIBER_270.encode())
    assert build_ta1s(report.interchanges, report.findings, control_number=7, now=NOW) == (
        "ISA*00*          *00*          *ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *260115*0930*^*00501*000000007*0*T*:~"
        "TA1*000001001*250310*0915*A*000~IEA*0*000000007~")


def duplicated_gs06(second_eq: str = "EQ*30~") -> str:
    """One interchange holding two groups that both say GS06 1001 (the second's EQ segment replaced)."""
    head, tail = SUBSCRIBER_270.split("GE*1*1001~\n")
    group = head[head.index("GS*"):] + "GE*1*1001~\n"
    return head + "GE*1*1001~\n" + group.replace("EQ*30~", second_eq) + tail.replace("IEA*1*", "IEA*2*")


@pytest.mark.parametrize("elements", [True, False])
def test_a_repeated_gs06_in_an_interchange_is_ak905_19_on_the_group_that_repeats_it(elements: bool):
    """pyx12 said 6 ("not unique within file"), which is dropped as the reader's code for a GS06 that is no number:
    the repeat went unreported."""
    report = validate_x12(duplicated_gs06().encode(), elements=elements)
    assert [(f.code, f.level, f.ack_code, f.group_ordinal) for f in report.findings] == [
        ("X12-GS-DUPLICATE", "group", "19", 2)]
    finding = report.findings[0]
    assert finding.element == "GS06" and finding.value == "1001" and "interchange 000001001" in finding.message
    assert not {"group_ordinal", "interchange_ordinal"} & finding.to_dict().keys()
    ack = build_999(report.transactions, report.findings, control_number=7, now=NOW)
    assert segments(ack, "AK1") == ["AK1*HS*1001*005010X279A1"] * 2
    assert segments(ack, "AK9") == ["AK9*A*1*1*1", "AK9*R*1*1*0*19"]


def test_two_groups_with_the_same_gs06_each_get_only_their_own_findings():
    """Group findings were matched by GS06: the second group's wrong GE01 rejected the first group too."""
    text = duplicated_gs06().replace("GE*1*1001~\nIEA*", "GE*2*1001~\nIEA*")
    report = validate_x12(text.encode())
    assert [(f.ack_code, f.group_ordinal) for f in report.errors] == [("19", 2), ("5", 2)]
    ack = build_999(report.transactions, report.findings, control_number=7, now=NOW)
    assert segments(ack, "AK9") == ["AK9*A*1*1*1", "AK9*R*1*1*0*19*5"]
    second = validate_x12(duplicated_gs06("EQ*ZZ~").encode())   # a set's finding: by its set, as before
    ack = build_999(second.transactions, second.findings, control_number=7, now=NOW)
    assert segments(ack, "IK5") == ["IK5*A", "IK5*R*5"] and segments(ack, "AK9") == ["AK9*A*1*1*1", "AK9*R*1*1*0*19"]


def test_gs06_may_repeat_in_another_interchange():
    """Unique within the interchange (AK905 19 says so), not within the file."""
    report = validate_x12((SUBSCRIBER_270 + from_other_sender(SUBSCRIBER_270)).encode(), elements=False)
    assert not report.findings


@pytest.mark.parametrize("elements", [True, False])
def test_a_repeated_isa13_is_ta1_025_on_the_later_interchange(elements: bool):
    """pyx12 reads one interchange at a time and never saw it; the TA1 of both said accepted."""
    second = SUBSCRIBER_270.replace("EQ*30~", "EQ*ZZ~")   # same sender, receiver and ISA13
    report = validate_x12((SUBSCRIBER_270 + second + SUBSCRIBER_270).encode(), elements=elements)
    duplicates = [f for f in report.findings if f.level == "interchange"]
    assert [(f.code, f.ack_code, f.interchange, f.interchange_ordinal) for f in duplicates] == [
        ("X12-ISA-DUPLICATE", "025", "000001001", 2), ("X12-ISA-DUPLICATE", "025", "000001001", 3)]
    assert duplicates[0].element == "ISA13"
    assert "interchange #2 is already the control number of its interchange #1" in duplicates[0].message
    assert not {"group_ordinal", "interchange_ordinal"} & duplicates[0].to_dict().keys()
    ta1s = interchanges(build_ta1s(report.interchanges, report.findings, control_number=7, now=NOW))
    assert [segments(t, "TA1") for t in ta1s] == [["TA1*000001001*250310*0915*A*000"],
                                                 ["TA1*000001001*250310*0915*R*025"],
                                                 ["TA1*000001001*250310*0915*R*025"]]
    if elements:   # the 999s: each interchange's sets still get only their own findings
        acks = interchanges(build_999(report.transactions, report.findings, control_number=7, now=NOW))
        assert [segments(a, "IK5") for a in acks] == [["IK5*A"], ["IK5*R*5"], ["IK5*A"]]


def test_two_interchanges_with_the_same_isa13_each_get_only_their_own_ta1_findings():
    """Another sender may use the same ISA13 (a sender's number is its own): no duplicate, and the second's wrong
    IEA01 was also in the first one's TA1 (interchange findings matched by ISA13)."""
    second = from_other_sender(SUBSCRIBER_270, "000001001").replace("IEA*1*", "IEA*2*")
    report = validate_x12((SUBSCRIBER_270 + second).encode())
    assert [(f.code, f.interchange_ordinal) for f in report.findings] == [("X12-IEA-COUNT", 2)]
    first_ta1, second_ta1 = interchanges(build_ta1s(report.interchanges, report.findings, control_number=7, now=NOW))
    assert "*ZZ*FHIRX12GW      *" in first_ta1 and segments(first_ta1, "TA1") == ["TA1*000001001*250310*0915*A*000"]
    assert "*ZZ*OTHERSENDER    *" in second_ta1 and segments(second_ta1, "TA1") == [
        "TA1*000001001*250310*0915*R*021"]


def test_an_interchange_finding_of_pyx12_goes_to_its_own_interchange():
    """pyx12's interchange findings name their interchange by ISA13 alone: the second sender's missing GE (pyx12: 024,
    "Unterminated Loop GS") rejected the first sender's interchange too, which has the same ISA13."""
    second = from_other_sender(SUBSCRIBER_270, "000001001").replace("GE*1*1001~\n", "")
    report = validate_x12((SUBSCRIBER_270 + second).encode())
    assert [(f.code, f.interchange_ordinal) for f in report.findings if f.level == "interchange"] == [("PYX12-ISA", 2)]
    first_ta1, second_ta1 = interchanges(build_ta1s(report.interchanges, report.findings, control_number=7, now=NOW))
    assert segments(first_ta1, "TA1") == ["TA1*000001001*250310*0915*A*000"]
    assert segments(second_ta1, "TA1") == ["TA1*000001001*250310*0915*R*024"]
