"""The lenient reader: delimiters, messy layouts, loop tree, streaming and located findings."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError, X12SyntaxError
from gateway.x12.model import Loop
from gateway.x12.reader import LoopEvent, X12Reader, read_x12, stream_loops
from gateway.x12.tokenizer import parse_isa

ISA = "ISA*00*          *00*          *ZZ*PAYERX         *ZZ*GATEWAY01      *250115*0930*^*00501*000000733*0*P*:~"
BODY = [
    "GS*HB*PAYERX*GATEWAY01*20250115*0930*733*X*005010X279A1",
    "ST*271*0001*005010X279A1",
    "BHT*0022*11*REQ-7F3A*20250115*0930",
    "HL*1**20*1",
    "NM1*PR*2*EXAMPLE HEALTH PLAN*****PI*99999",
    "HL*2*1*21*1",
    "NM1*1P*2*SAMPLE CLINIC*****XX*1234567893",
    "HL*3*2*22*0",
    "TRN*2*REQ-7F3A-1*9GATEWAY01",
    "NM1*IL*1*ROE*RICHARD****MI*W123456789",
    "DMG*D8*19800210*M",
    "EB*1*FAM*30*PR*GOLD PPO",
    "EB*1**1^33^35^47^98",
    "EB*C*IND*30***23*2000*****Y",
    "MSG*DEDUCTIBLE INCLUDED IN OOP",
    "EB*L",
    "LS*2120",
    "NM1*P3*1*SMITH*PAT****XX*1992999998",
    "PRV*PC*PXC*207Q00000X",
    "LE*2120",
    "SE*20*0001",
    "GE*1*733",
    "IEA*1*000000733",
]


def sample(terminator: str = "~", after: str = "\n", element: str = "*", repetition: str = "^",
           component: str = ":") -> str:
    isa = ISA.replace("*^*", "*\x01*").replace("*", element).replace("\x01", repetition)
    isa = isa[:-2] + component + terminator
    body = [s.replace("^", "\x01").replace("*", element).replace("\x01", repetition) for s in BODY]
    return isa + after + "".join(s + terminator + after for s in body)


def loop_ids(loop: Loop, depth: int = 0) -> list[str]:
    out = []
    for item in loop.body:
        if isinstance(item, Loop):
            out.append("  " * depth + item.id)
            out.extend(loop_ids(item, depth + 1))
    return out


def codes(result) -> set[str]:
    return {f.code for f in result.all_findings}


def test_reads_loop_tree_with_ls_le_at_2110_level():
    result = read_x12(sample())
    txn, = result.transactions
    assert not [f for f in result.all_findings if f.severity == "error"]
    assert loop_ids(txn.root) == [
        "2000A", "  2100A", "  2000B", "    2100B", "    2000C", "      2100C",
        "        2110C", "        2110C", "        2110C", "        2110C", "          2120C",
    ]
    benefits = txn.root.loop("2000A").loop("2000B").loop("2000C").loop("2100C").loops_of("2110C")
    assert [s.id for s in benefits[-1].body] == ["EB", "LS", "2120C", "LE"]
    msg_loop = benefits[2]
    assert [s.id for s in msg_loop.segments] == ["EB", "MSG"]


def test_positions_count_from_st():
    txn = read_x12(sample()).transactions[0]
    positions = [(s.id, s.position) for s in txn.segments()]
    assert positions[0] == ("ST", 1)
    assert positions[-1] == ("SE", 20)
    assert txn.segment_count == 20


def test_repetitions_split_on_isa11():
    txn = read_x12(sample()).transactions[0]
    eb = [s for s in txn.segments() if s.id == "EB"][1]
    assert eb.repetitions(3) == ["1", "33", "35", "47", "98"]


@pytest.mark.parametrize("variant", [
    {"terminator": "~", "after": ""},
    {"terminator": "~", "after": "\r\n"},
    {"terminator": "\n", "after": ""},
    {"terminator": "\r\n", "after": ""},
    {"terminator": "\r", "after": ""},   # CR alone (old Mac line endings)
    {"element": "|", "repetition": "}", "component": ">", "after": ""},
    {"element": "^", "repetition": "{", "component": "|", "after": "\n"},
])
def test_delimiter_sets_and_line_breaks(variant):
    result = read_x12(sample(**variant))
    txn, = result.transactions
    assert not [f for f in result.all_findings if f.severity == "error"], result.all_findings
    eb = [s for s in txn.segments() if s.id == "EB"][1]
    assert eb.repetitions(3) == ["1", "33", "35", "47", "98"]
    assert txn.interchange.delimiters.element == variant.get("element", "*")


def test_bom_prose_and_cp1252_bytes():
    text = "Sample file from a payer portal\nISA" + sample()[3:]
    data = b"\xef\xbb\xbf" + text.encode().replace(b"ROE*RICHARD", b"ROE*RICH\xe9RD")
    result = read_x12(data)
    assert len(result.transactions) == 1
    assert "X12-ISA-FORMAT" in codes(result)  # the skipped prose is noted, not an error
    nm1 = [s for s in result.transactions[0].segments() if s.id == "NM1"][2]
    assert nm1.get(4) == "RICHéRD"


def test_collapsed_isa_padding_and_line_breaks_inside_isa():
    text = sample().replace("*          *", "**").replace("PAYERX         ", "PAYERX")
    text = text.replace("*ZZ*GATEWAY01", "*ZZ*\nGATEWAY01", 1)
    delims, elements, _, notes = parse_isa(text)
    assert (delims.element, delims.repetition, delims.component, delims.segment) == ("*", "^", ":", "~")
    assert elements[5] == "PAYERX" and elements[7].startswith("GATEWAY01")
    assert notes
    assert len(read_x12(text).transactions) == 1


def test_hard_wrapped_file():
    flat = sample(after="")
    wrapped = "\n".join(flat[i:i + 64] for i in range(0, len(flat), 64))
    result = read_x12(wrapped)
    expected = [s.id for s in read_x12(flat).transactions[0].segments()]
    assert [s.id for s in result.transactions[0].segments()] == expected


def test_same_character_for_repetition_and_component():
    text = sample(after="").replace("*^*00501", "*:*00501").replace("1^33^35^47^98", "1:33:35:47:98")
    result = read_x12(text)
    txn = result.transactions[0]
    assert txn.interchange.delimiters.repetition == txn.interchange.delimiters.component == ":"
    assert any("also the component separator" in f.message for f in result.findings)
    eb = [s for s in txn.segments() if s.id == "EB"][1]
    assert eb.repetitions(3) == ["1", "33", "35", "47", "98"]   # a repeating element is split on it
    composite = type(eb).of("EB", "C", "IND", "", "", "", "23", "100", "", "", "", "", "", "HC:99213",
                            delimiters=txn.interchange.delimiters)
    assert composite.components(13) == ["HC", "99213"] and composite.components(13, 1) == []


def test_several_interchanges_with_their_own_delimiters():
    text = sample() + sample(element="|", repetition="}", component=">", after="")
    result = read_x12(text)
    assert len(result.transactions) == 2
    assert [t.interchange.delimiters.element for t in result.transactions] == ["*", "|"]


def test_defects_are_findings_with_locations():
    text = sample().replace("SE*20*0001", "SE*19*0002").replace("IEA*1*000000733", "IEA*2*000000734")
    result = read_x12(text)
    found = {f.code: f for f in result.all_findings}
    assert found["X12-SE-COUNT"].position == 20 and found["X12-SE-COUNT"].ack_code == "4"
    assert found["X12-SE-CONTROL"].value == "0002" and found["X12-SE-CONTROL"].ack_code == "3"
    assert found["X12-IEA-COUNT"].ack_code == "021"
    assert found["X12-IEA-CONTROL"].ack_code == "001"


def test_unknown_and_misplaced_segments():
    text = sample().replace("DMG*D8*19800210*M~", "DMG*D8*19800210*M~\nZZZ*1~\nBHT*0022~")
    found = [f for f in read_x12(text).all_findings if f.level == "segment"]
    assert [(f.code, f.segment, f.position, f.ack_code, f.loop) for f in found] == [
        ("X12-SEGMENT-UNKNOWN", "ZZZ", 11, "1", "2100C"),
        ("X12-SEGMENT-UNEXPECTED", "BHT", 12, "2", "2100C"),
    ]


def test_bad_hl_parent():
    text = sample().replace("HL*3*2*22*0", "HL*3*1*22*0")
    found = [f for f in read_x12(text).all_findings if f.code == "X12-HL-PARENT"]
    assert found and found[0].element == "HL02" and found[0].loop == "2000C"


@pytest.mark.parametrize("hl_id", ["\u00b2", "1" * 5000, "\u0663"])
def test_an_hl01_no_int_can_read_is_a_finding_not_a_failure(hl_id):
    # '²' passes str.isdigit() but not int(); int() refuses over 4,300 digits; '٣' (Arabic-Indic 3) is not X12's
    result = read_x12(sample().replace("HL*2*1*21*1", f"HL*{hl_id}*1*21*1").replace("HL*3*2*22*0",
                                                                                    f"HL*3*{hl_id}*22*0"))
    assert len(result.transactions) == 1 and "X12-HL-PARENT" not in codes(result)   # the 2000C still finds it
    assert "X12-HL-SEQUENCE" in codes(result)   # HL*3 does not follow HL*1


def test_whole_numbers_are_ascii_digits_of_bounded_length():
    from gateway.x12.model import whole_number

    assert whole_number("0007") == 7 and whole_number("9" * 18) == 10**18 - 1
    assert [whole_number(t) for t in ("", "9" * 19, "\u00b2", "\u0663", "1.5", " 1", "-1")] == [None] * 7
    assert whole_number("123", 2) is None


def test_version_mismatch_and_4010_envelope():
    text = sample().replace("*00501*", "*00401*").replace("X*005010X279A1~\nST", "X*004010X092A1~\nST")
    found = codes(read_x12(text))
    assert {"X12-ENVELOPE-4010", "X12-VERSION-MISMATCH"} <= found


def test_missing_trailers():
    text = sample().split("SE*20")[0]
    result = read_x12(text)
    assert {"X12-SE-MISSING", "X12-GE-MISSING", "X12-IEA-MISSING"} <= codes(result)
    assert len(result.transactions) == 1


def test_gs_functional_id_that_does_not_match():
    found = [f for f in read_x12(sample().replace("GS*HB", "GS*HS")).all_findings if f.code == "X12-GS-FUNCTIONAL-ID"]
    assert found and found[0].severity == "warning"
    found = [f for f in read_x12(sample().replace("GS*HB", "GS*XX")).all_findings if f.code == "X12-GS-FUNCTIONAL-ID"]
    assert found and found[0].severity == "error"


@pytest.mark.parametrize("data", [b"", b"hello world", b"ISA", b"ISA*00*", b"ISA*00*\x00", b"\xff\xfe\x00"])
def test_unreadable_input_raises_our_error(data):
    with pytest.raises(X12SyntaxError) as info:
        read_x12(data)
    assert isinstance(info.value, GatewayError)
    assert str(info.value)


def test_streaming_hands_over_subscriber_loops_and_forgets_them():
    text = sample().replace("SE*20*0001", "SE*20*0001")
    body = text.split("HL*3*2*22*0~\n")
    subscriber = "HL*3*2*22*0~\n" + body[1].split("SE*20")[0]
    subscribers = "".join(subscriber.replace("HL*3*", f"HL*{i}*") for i in range(3, 8))
    many = body[0] + subscribers + "SE*" + body[1].split("SE*")[1]
    events = []
    for event in stream_loops(many):
        if isinstance(event, LoopEvent):
            events.append((event.loop_id, [s.id for s in event.loop.segments][:2]))
        else:
            txn = event
    assert events == [("2000C", ["HL", "TRN"])] * 5
    assert all(s is None for s in txn.table.segments[7:-1])  # handed-over loops are gone
    assert txn.table.segments[0].startswith("ST*")


def test_reader_reports_unsupported_transaction_sets():
    text = sample().replace("ST*271*0001*005010X279A1", "ST*835*0001*005010X221A1")
    result = X12Reader(text).read()
    assert "X12-SET-UNSUPPORTED" in codes(result)
    assert len(list(result.transactions[0].segments())) == 20


@pytest.mark.parametrize(("version", "severity"), [("005010X279A1", None), ("005010X279", "warning"),
                                                   ("005010X222A1", "warning"), ("005010X279ZZ", "error")])
def test_only_x279a1_is_the_implementation_and_a_made_up_suffix_is_an_error(version, severity):
    text = sample().replace("005010X279A1", version)
    found = [f for f in read_x12(text).all_findings if f.code == "X12-IMPLEMENTATION"]
    assert [f.severity for f in found][:1] == ([severity] if severity else [])


def test_gs_application_codes_of_the_wrong_length_are_syntax_errors():
    """GS02/GS03 are AN 2-15: outside that a syntax error, which the TA1 names (024, invalid content)."""
    text = sample().replace("GS*HB*", "GS*HB*P*", 1)
    found = [f for f in read_x12(text).all_findings if f.code == "X12-GS-CODE"]
    assert found and found[0].element == "GS02" and found[0].severity == "error" and found[0].ack_code == "024"


@pytest.mark.parametrize(("text", "words"), [
    ("HELLO, this is not an interchange", "this does not look like X12"),
    # the whole file lower-cased (an editor, a pipeline): said, rather than "not X12"
    ("isa*00*          *00*          *zz*payer01        *zz*gateway01      *250115*0930*^*00501*000000001*0*p*:~"
     "gs*hb*payer01*gateway01*20250115*0930*1*x*005010x279a1~", "'isa' in lower case"),
])
def test_a_file_without_an_isa_says_what_it_found(text: str, words: str):
    with pytest.raises(X12SyntaxError) as caught:
        read_x12(text)
    assert "no ISA segment found" in str(caught.value) and words in str(caught.value)
