"""Property tests: the reader never fails with anything but our error; written values read back."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.x12.model import Delimiters
from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from gateway.x12.writer import BASIC_PUNCTUATION, X12Writer
from tests.x12.test_reader import sample

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_our_error(data):
    try:
        read_x12(data)
    except GatewayError:
        pass


@SETTINGS
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=900))
def test_damaged_x12_raises_only_our_error(noise, where):
    text = sample().encode()
    try:
        read_x12(text[:where] + noise + text[where:])
    except GatewayError:
        pass


@SETTINGS
@given(st.lists(st.text(max_size=80), min_size=1, max_size=6),
       st.sampled_from([Delimiters("*", "^", ":", "~"), Delimiters("|", "}", ">", "~"),
                        Delimiters("^", "{", "|", "\n")]))
def test_written_values_read_back_sanitized(values, delimiters):
    writer = X12Writer(delimiters)
    from datetime import datetime

    from gateway.x12.writer import Envelope

    env = Envelope(sender_id="A", receiver_id="B", interchange_control=1, now=datetime(2026, 1, 1))
    body = [("BHT", ["0022", "13", "X", "20260101", "1200"]), ("MSG", list(values))]
    result = writer.interchange(env, "HB", "271", "005010X279A1", [body])
    txn, = read_x12(result.text).transactions
    segs = list(txn.segments())
    assert len(segs) == 4 == txn.segment_count
    msg = segs[2]
    expected = [writer.clean(v, "MSG", f"MSG{i:02d}") for i, v in enumerate(values, start=1)]
    while expected and not expected[-1]:
        expected.pop()
    assert msg.elements == expected
    forbidden = delimiters.characters()
    for value in msg.elements:
        assert not set(value) & forbidden
        assert all(c.isdigit() or ("A" <= c <= "Z") or c in BASIC_PUNCTUATION for c in value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=16), st.integers(min_value=1, max_value=9),
                          st.sampled_from(["", "\u00b2", "1" * 5000, "-", "20250101-20250102-20250103", "A", "99999999",
                                           "HC" + ":1" * 20, "\x00"])), min_size=1, max_size=3),
       st.sampled_from(["", "SE", "GE", "IEA"]))
def test_validating_damaged_x12_and_acknowledging_it_raise_only_our_error(changes, extra):
    """Element values pyx12 and the writer fail on, and a trailer that closes nothing: findings, not a failure."""
    segments = sample().split("~\n")
    for index, element, value in changes:
        parts = segments[index % len(segments)].split("*")
        if parts[0] in ("ISA", ""):
            continue
        parts += [""] * (element + 1 - len(parts))
        parts[element] = value
        segments[index % len(segments)] = "*".join(parts)
    trailer = next((s for s in segments if extra and s.startswith(extra + "*")), None)
    if trailer is not None:
        segments.insert(segments.index(trailer), trailer)
    try:
        report = validate_x12("~\n".join(segments).encode())
    except GatewayError:
        return
    from datetime import datetime

    from gateway.x12.ack import build_999, build_ta1

    build_999(report.transactions, report.findings, control_number=1, now=datetime(2026, 1, 1))
    build_ta1(report.interchanges[0] if report.interchanges else None, report.findings, control_number=1,
              now=datetime(2026, 1, 1))


def _segments_read(text: str, chunk_size: int) -> list[list[str]]:
    from gateway.x12.tokenizer import tokenize

    out: list[list[str]] = []
    for batch in tokenize(text, chunk_size):
        out.extend(batch.split())
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=40), st.sampled_from([" ", "\t", "  ", " \t"]),
                          st.booleans()), max_size=6),
       st.sampled_from([("~", "\n"), ("~", ""), ("\n", "")]),
       st.integers(min_value=1, max_value=300))
def test_white_space_around_terminators_reads_the_same_whatever_the_chunking(spaces, delimiters, chunk_size):
    """A large file is read in chunks, and which chunk a segment falls in must not change what is read: white space
    before or after a terminator (a pretty-printed file's) is stripped in every chunk alike."""
    terminator, after = delimiters
    isa, *body = sample(terminator=terminator, after=after).split(terminator + after)
    body = [segment for segment in body if segment]
    for index, space, before in spaces:   # " NM1*..." or "NM1*... " (never inside the ISA's fixed layout)
        where = index % len(body)
        body[where] = space + body[where] if before else body[where] + space
    text = isa + terminator + after + "".join(segment + terminator + after for segment in body)
    whole = _segments_read(text, 1 << 20)
    assert _segments_read(text, chunk_size) == whole
    assert all(element == element.strip(" \t") for segment in whole for element in segment[-1:] + segment[:1])
