"""Property tests (hypothesis) of 271 -> CoverageEligibilityResponse: damaged and made-up 271s either raise our own
error or translate to responses that are valid FHIR and account for every segment.

Three sources of input: the 271 fixtures and a generated batch 271 with segments changed, deleted, duplicated,
moved, inserted or cut off (and the public sample files the same way, when ../shared/corpus is there); and 271s
built from the pieces of the guide with values drawn from the code tables, payers' habits and noise. Each is read
and translated three ways: translate_271 alone, with a gateway context (the request's references), and as the CLI
and the payer client read a file (translate_document, the client's check of an answer). Examples are few and
derandomized: the same inputs on every run, in a few seconds; the bugs they found have tests of their own in
test_response_rules.py.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.generate import generate_271
from gateway.errors import GatewayError
from gateway.fhir.models import validate_structure
from gateway.fhir.rules import check_response
from gateway.translate import load_tables
from gateway.translate.document import translate_document
from gateway.translate.response_271 import ResponseContext, translate_271
from gateway.transport.acks import load_ack_codes
from gateway.transport.client import _answer_271, _check_trace, _unable_to_respond
from gateway.x12.reader import read_x12
from gateway.x12.tokenizer import tokenize
from tests.conftest import CORPUS, FIXTURES, corpus_index

NOW = "2025-01-15T09:30:00Z"
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# FHIR R4 datatypes (https://hl7.org/fhir/R4/datatypes.html): what the R4B models do not check themselves
FHIR_DATE = re.compile(r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
                       r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?")
FHIR_CODE = re.compile(r"[^\s]+( [^\s]+)*")
URI_KEYS = {"url", "system", "authorizationUrl"}
MAX_UNSIGNED_INT = 2_147_483_647


def context_for(traces: list[str]) -> ResponseContext:
    """The gateway's case: the request's own resources, referenced."""
    return ResponseContext(patient={"reference": "Patient/9"}, insurer={"reference": "Organization/p"},
                           coverage={"reference": "Coverage/c"}, provider={"reference": "Practitioner/x"},
                           request={"reference": "CoverageEligibilityRequest/r"}, purpose=["benefits"],
                           serviced={"servicedDate": "2025-01-15"})


def fhir_problems(value, path: str = "") -> list[str]:
    """Values FHIR does not allow, though the models take them: empty strings, objects and lists (ele-1), codes and
    URIs with white space, dates that are not calendar dates, unsignedInt out of range, Money beyond cents, and
    periods that end before they start (per-1)."""
    problems = []
    if isinstance(value, dict):
        if not value:
            problems.append(f"{path}: empty object")
        start, end = value.get("start"), value.get("end")
        if isinstance(start, str) and isinstance(end, str) and start > end:
            problems.append(f"{path}: period {start} to {end} ends before it starts")
        for key, item in value.items():
            problems.extend(fhir_problems(item, f"{path}.{key}"))
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                continue
            where = f"{path}.{key}"
            if key in ("birthDate", "start", "end"):
                parts = str(item).split("-")
                if not FHIR_DATE.fullmatch(str(item)) or len(parts) == 3 and not _calendar(parts):
                    problems.append(f"{where}: {item!r} is no FHIR date")
            elif key == "code" and not FHIR_CODE.fullmatch(str(item)):
                problems.append(f"{where}: {item!r} is no FHIR code")
            elif key in URI_KEYS and re.search(r"\s", str(item)):
                problems.append(f"{where}: {item!r} is no FHIR uri")
            elif key.endswith("UnsignedInt") and not (isinstance(item, int) and 0 <= item <= MAX_UNSIGNED_INT):
                problems.append(f"{where}: {item!r} is no unsignedInt")
            elif key == "value" and path.endswith("Money"):
                if not isinstance(item, int | float) or not math.isfinite(item):
                    problems.append(f"{where}: {item!r} is not a finite number")
                elif Decimal(repr(item)).as_tuple().exponent < -2:
                    problems.append(f"{where}: {item!r} has more than two decimal places")
    elif isinstance(value, list):
        if not value:
            problems.append(f"{path}: empty list")
        for index, item in enumerate(value):
            problems.extend(fhir_problems(item, f"{path}[{index}]"))
    elif isinstance(value, str) and not value.strip():
        problems.append(f"{path}: empty string")
    return problems


def _calendar(parts: list[str]) -> bool:
    try:
        date(*map(int, parts))
    except ValueError:
        return False
    return True


def check_translation(data: str | bytes, *, gateway: bool = False) -> None:
    """Reading and translating ``data`` raises a GatewayError with a message, or gives valid FHIR responses whose
    notes account for every segment they do not map; the CLI's and the payer client's reading of it likewise."""
    tables = load_tables()
    try:
        read = read_x12(data)
    except GatewayError as exc:
        assert str(exc)
        return
    for txn in read.transactions:
        if txn.set_id != "271":
            continue
        try:
            results = translate_271(txn, tables, now=NOW, context_for=context_for if gateway else None)
        except GatewayError as exc:
            assert str(exc)
            continue
        segments = {seg.position: seg for seg in txn.segments()}
        covered: set[int] = set()
        for result in results:
            resource = result.resource
            validate_structure(resource)
            problems = check_response(resource) + fhir_problems(resource)
            assert problems == [], problems
            raw_in_notes = {note.raw for note in result.notes}
            for position in result.scope:
                seg = segments[position]
                assert position in result.mapped or (position in result.noted and seg.to_x12() in raw_in_notes), \
                    f"{seg.to_x12()} at {position} is neither mapped nor noted"
            notes = [e for e in resource.get("extension", []) if e["url"].endswith("/StructureDefinition/processNote")]
            assert len(notes) == len(result.notes)
            covered |= result.scope
        missing = [seg.to_x12() for seg in txn.segments() if seg.position not in covered and seg.id not in ("ST", "SE")]
        assert not missing, f"in no response: {missing}"
    if gateway:
        return
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    try:
        translate_document(raw, tables, now=datetime(2025, 1, 15, 9, 30))
    except GatewayError as exc:
        assert str(exc)
    try:
        txns, _ = _answer_271(raw.decode("utf-8", "replace"), load_ack_codes())
        _check_trace(txns, "REQ1-1")
        _unable_to_respond(txns)
    except GatewayError as exc:
        assert str(exc)


# -- mutations of whole 271s ------------------------------------------------------------------------------------

AMOUNTS = ["0", "-100", "1e5", "1E5", ".5", "-.5", "-", ".", "..", "1.2.3", "123456789012345678", "1234567890123456789",
           "0.001", "12.345", "12.34", "-0", "+5", "Infinity", "NaN", " 5 ", "1,000", "\u0663", "\u00b2", "99999.99",
           "0.000000000000000001", "1.", "00012", "100.10", "2147483648", "-2147483649", "99999999999999999.9", "20",
           "150"]
DATES = ["20250230", "00000101", "20251301", "2025-01-01", "20250101-20241231", "20250101-", "-20250101",
         "20250101-20250101-20250102", "2025", "202501011200", "99991231", "20240229", "20230229", "20250101",
         "20251231", "20250101-20251231", "2025O101", "\u0662\u0660\u0662\u0665\u0660\u0661\u0660\u0661"]
CODES = ["1", "6", "A", "B", "C", "F", "G", "L", "R", "U", "V", "W", "CB", "MC", "ZZ", "30", "IND", "FAM", "23", "29",
         "24", "33", "32", "27", "VS", "99", "Y", "N", "D8", "RD8", "DT", "HC", "AD", "IG", "6P", "18", "G1", "346",
         "347", "291", "356", "357", "307", "472", "42", "72", "P3", "1P", "PR", "IL", "03", "X3", "PRP", "UR", "001"]
COMPOSITES = ["HC:99213:25:::::99215", "AD:D0120", ":", "::::::::", "HC", "HC:", "HC:99213:25:26:59:XU:D:99215:X",
              "1^33^ZZ", "^", "^^30", "30^ 33", "HC:1^HC:2", "A:B:C:D:E:F:G:H:I:J"]
TEXTS = ["", " ", "X" * 300, "CAF\u00c9 \u00e9t\u00e9", "\u4e2d\u6587", "a\u0000b", "A\tB", "A\u00a0 B", "%s",
         "HTTPS//WWW.EXAMPLE.COM", "WWW.E X.COM", "9 GATEWAY", "O*BRIEN"]
VALUE = st.one_of(st.sampled_from(AMOUNTS), st.sampled_from(DATES), st.sampled_from(CODES),
                  st.sampled_from(COMPOSITES), st.sampled_from(TEXTS), st.text(max_size=10),
                  st.text(alphabet="0123456789.-E", max_size=20))
SEGMENT_IDS = ["EB", "AAA", "DTP", "AMT", "HSD", "MSG", "LS", "LE", "III", "REF", "NM1", "N3", "N4", "PER", "TRN",
               "INS", "HI", "PRV", "DMG", "HL", "MPI", "ZZZ", "SE", "ST", "GE", "IEA", "BHT"]
POSITION = st.integers(0, 10**6)
OPERATION = st.one_of(
    st.tuples(st.just("set"), POSITION, st.integers(1, 16), VALUE),
    st.tuples(st.just("set-in"), st.sampled_from(SEGMENT_IDS[:20]), POSITION, st.integers(1, 14), VALUE),
    st.tuples(st.just("delete"), POSITION),
    st.tuples(st.just("duplicate"), POSITION),
    st.tuples(st.just("swap"), POSITION),
    st.tuples(st.just("move"), POSITION, POSITION),
    st.tuples(st.just("insert"), POSITION, st.sampled_from(SEGMENT_IDS), st.lists(VALUE, max_size=14)),
    st.tuples(st.just("dtp"), POSITION, st.sampled_from(["346", "347", "291", "356", "357", "307", "290", "ZZ"]),
              st.sampled_from(["D8", "RD8", "DT", "RD", ""]), st.sampled_from(DATES)),
    st.tuples(st.just("truncate"), POSITION),
    st.tuples(st.just("another-set"),),
)


def split(text: str):
    batches = list(tokenize(text))
    return batches[0].delimiters, [parts for batch in batches for parts in batch.split()]


def mutate(base, operations) -> str:
    """``base`` (delimiters and split segments) changed by each operation in turn, written out again."""
    d, segments = base
    segments = [list(parts) for parts in segments]
    cut = None

    def value(text: str) -> str:
        return text.replace(":", d.component).replace("^", d.repetition or "^")

    for op in operations:
        body = [i for i, parts in enumerate(segments) if parts[0] not in ("ISA", "GS", "GE", "IEA")]
        if not body:
            break
        at = body[op[1] % len(body)] if op[0] not in ("set-in", "another-set") else 0
        kind = op[0]
        if kind == "set":
            parts = segments[at]
            parts += [""] * (op[2] + 1 - len(parts))
            parts[op[2]] = value(op[3])
        elif kind == "set-in":
            found = [parts for parts in segments if parts[0] == op[1]]
            if found:
                parts = found[op[2] % len(found)]
                parts += [""] * (op[3] + 1 - len(parts))
                parts[op[3]] = value(op[4])
        elif kind == "delete":
            del segments[at]
        elif kind == "duplicate":
            segments.insert(at, list(segments[at]))
        elif kind == "swap" and at + 1 < len(segments):
            segments[at], segments[at + 1] = segments[at + 1], segments[at]
        elif kind == "move":
            moved = segments.pop(at)
            segments.insert(body[op[2] % len(body)] % max(len(segments), 1), moved)
        elif kind == "insert":
            segments.insert(at, [op[2], *map(value, op[3])])
        elif kind == "dtp":
            segments.insert(at, ["DTP", op[2], op[3], op[4]])
        elif kind == "truncate":
            cut = op[1]
        elif kind == "another-set":   # several ST..SE sets in one group
            start = next((i for i, parts in enumerate(segments) if parts[0] == "ST"), None)
            end = next((i for i, parts in enumerate(segments) if parts[0] == "SE"), None)
            if start is not None and end is not None and start < end:
                segments[end + 1:end + 1] = [list(parts) for parts in segments[start:end + 1]]
    after = "\n" if d.segment != "\n" else ""
    text = "".join(d.element.join(parts) + d.segment + after for parts in segments)
    return text[:cut % (len(text) + 1)] if cut is not None else text


FIXTURE_271S = sorted((FIXTURES / "x12" / "271").glob("*.271")) + sorted(
    (FIXTURES / "x12" / "271-nonconforming").glob("*.271"))
BASES = [split(path.read_text(encoding="utf-8")) for path in FIXTURE_271S] + [split(generate_271(2))]


@settings(max_examples=250, **SETTINGS)
@given(st.sampled_from(range(len(BASES))), st.lists(OPERATION, min_size=1, max_size=6), st.booleans())
def test_changed_271s_translate_to_valid_accounted_responses_or_our_error(base, operations, gateway):
    check_translation(mutate(BASES[base], operations), gateway=gateway)


CORPUS_271S = [CORPUS / row["file"] for row in corpus_index() if row["transaction"] == "271"]


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS_271S, reason="../shared/corpus is not present")
@settings(max_examples=100, **SETTINGS)
@given(st.data(), st.lists(OPERATION, min_size=1, max_size=5), st.booleans())
def test_changed_public_271s_translate_to_valid_accounted_responses_or_our_error(data, operations, gateway):
    path = data.draw(st.sampled_from(CORPUS_271S), label="file")
    text = path.read_bytes().decode("utf-8", "replace")
    check_translation(mutate(split(text), operations), gateway=gateway)


# -- 271s built from the guide's pieces ------------------------------------------------------------------------

NOISE = st.text(alphabet=st.characters(blacklist_characters="*|^}:>~\r\n", blacklist_categories=("Cs",)), max_size=12)


def mostly(*values: str):
    """One of ``values``, three times in four; noise otherwise."""
    return st.one_of(st.sampled_from(values), st.sampled_from(values), st.sampled_from(values), NOISE)


def segment(seg_id: str, *elements):
    return st.tuples(st.just(seg_id), *elements).map(list)


AMOUNT = st.one_of(st.sampled_from([*AMOUNTS, *[""] * 12]), st.text(alphabet="0123456789.-", max_size=21))
DATE = st.sampled_from([*DATES, "20250101", "20251231", "20251231-20250101"])
DTP = segment("DTP", mostly("346", "347", "291", "356", "357", "307", "290", "292", "472", ""),
              mostly("D8", "RD8", "DT", ""), DATE)
AAA = segment("AAA", mostly("Y", "N", ""), st.just(""), mostly("", "42", "72", "53", "04", "41", "75"),
              mostly("", "C", "R"))
EB = segment("EB", mostly("1", "6", "A", "B", "C", "CB", "D", "E", "F", "G", "I", "J", "L", "P", "R", "U", "V", "W",
                          "Y", "ZZ", ""),
             mostly("IND", "FAM", "EMP", "", "ZZZ"), mostly("30", "1^33^98", "30^^33", "^", "98", "ZZ", "", " 33"),
             mostly("", "", "MC", "HM", "C1"), mostly("", "", "GOLD PLAN"),
             mostly("", "22", "23", "24", "25", "27", "29", "32", "33", "7", "ZZ"), AMOUNT, AMOUNT,
             mostly("", "", "VS", "DY", "99", "CA", "8H"), AMOUNT, mostly("", "Y", "N", "U", "W"),
             mostly("", "Y", "N", "W", "ZZ"),
             mostly("", "", "", "HC:99213", "HC:99213:25:26", "AD:D0120", "HC", "HC:", ":99213",
                    "ZZ:X:::::DESC:99215", "HC:1:2:3:4:5:6:7:8:9"),
             mostly("", "", "1:2"))
COMPANION = st.one_of(
    segment("HSD", mostly("VS", "DY", ""), AMOUNT, mostly("", "DA"), AMOUNT, mostly("", "7", "34", "ZZ"), AMOUNT,
            mostly("", "1"), mostly("", "A")),
    segment("REF", mostly("G1", "9F", "6P", "IG", "18", ""), mostly("", "AUTH1"), mostly("", "DESC")),
    DTP, AAA,
    segment("MSG", mostly("", "COPAY WAIVED", "X" * 300, "CAF\u00c9", " ")),
    segment("III", mostly("ZZ", "", "BF"), mostly("11", ""), mostly("", "44"), mostly("", "FREE TEXT")),
    segment("AMT", mostly("R", ""), AMOUNT),
    segment("ZZZ", NOISE),
)
ENTITY = st.tuples(
    segment("NM1", mostly("P3", "1P", "X3", "PRP", "SEP", "PR", "VN", "FA", ""), mostly("1", "2", ""),
            mostly("SMITH", ""), mostly("PAT", ""), mostly(""), mostly(""), mostly(""), mostly("XX", "PI", "SV", ""),
            mostly("1992999998", "")),
    st.lists(st.one_of(
        segment("PER", mostly("IC", ""), mostly(""), mostly("UR", "TE", ""),
                mostly("WWW.EX.COM", "HTTPS//X.COM", "WWW.E X.COM", "8005550100", ""), mostly("UR", ""),
                mostly("http://x.example/a", "")),
        segment("PRV", mostly("PC", "RF", ""), mostly("PXC", ""), mostly("207Q00000X", "")),
        segment("N3", mostly("1 MAIN", "")),
        segment("N4", mostly("TOWN", ""), mostly("PA", ""), mostly("191031234", ""))), max_size=3),
).map(lambda entity: [entity[0], *entity[1]])
BENEFIT = st.tuples(EB, st.lists(COMPANION, max_size=3), st.lists(ENTITY, max_size=2)).map(
    lambda b: [b[0], *b[1], *([["LS", "2120"], *[s for e in b[2] for s in e], ["LE", "2120"]] if b[2] else [])])


def name_loop(code: str):
    return st.tuples(
        segment("NM1", st.just(code), st.just("1"), mostly("ROE", ""), mostly("RICHARD", ""), mostly(""), mostly(""),
                mostly(""), mostly("MI", ""), mostly("W123", "")),
        st.lists(st.one_of(
            segment("REF", mostly("6P", "18", "1L", "IG", ""), mostly("GRP1", ""), mostly("", "EMPLOYER")),
            segment("N3", mostly("1 MAIN ST", ""), mostly("", "APT 2")),
            segment("N4", mostly("TOWN", ""), mostly("PA", ""), mostly("191031234", "19103", ""), mostly("", "US")),
            segment("DMG", mostly("D8", "RD8", ""), DATE, mostly("M", "F", "U", "", "Z")),
            segment("INS", mostly("Y", "N"), mostly("18", "19", "01", "ZZ", ""), mostly("", "001"), mostly("", "25")),
            DTP, AAA, segment("HI", mostly("ABK:Z00", "")), segment("MPI", mostly("C", "")),
            segment("PRV", mostly("PC", ""), mostly("PXC"), mostly("207Q00000X"))), max_size=5),
        st.lists(BENEFIT, max_size=4),
        st.booleans(),   # the payer repeats the NM1
    ).map(lambda n: [n[0], *n[1], *([n[0]] if n[3] else []), *[s for b in n[2] for s in b]])


def hl_level(hl: int, parent: int, level: str, child: str, name: str):
    trn = segment("TRN", mostly("2", "1", ""), mostly("REQ1-1", "", "REQ1-2"), mostly("9GATEWAY01", ""))
    return st.tuples(st.lists(trn, max_size=2), name_loop(name)).map(
        lambda t: [["HL", str(hl), str(parent), level, child], *t[0], *t[1]])


DELIMITERS = [("*", "^", ":", "~"), ("|", "}", ">", "~"), ("*", "^", "^", "~"), ("*", "U", ":", "~")]


@st.composite
def built_271(draw) -> str:
    body = [["BHT", "0022", "11", draw(mostly("REQ1", "")), "20250115", "0930"], ["HL", "1", "", "20", "1"],
            ["NM1", "PR", "2", draw(mostly("PLAN", "")), "", "", "", "", draw(mostly("PI", "")),
             draw(mostly("99999", ""))]]
    body += draw(st.lists(st.one_of(segment("PER", st.just("IC"), mostly(""), mostly("TE", "UR"), mostly("8005550100")),
                                    AAA), max_size=2))
    body += [["HL", "2", "1", "21", "1"],
             ["NM1", "1P", draw(mostly("1", "2")), draw(mostly("CLINIC", "")), draw(mostly("", "ANN")), "", "", "",
              draw(mostly("XX", "SV", "")), draw(mostly("1234567893", ""))]]
    body += draw(st.lists(st.one_of(AAA, segment("REF", mostly("EO", ""), mostly("X")),
                                    segment("PRV", mostly("PE", ""), mostly("PXC"), mostly("207Q00000X"))), max_size=2))
    dependent = draw(st.booleans())
    body += draw(hl_level(3, 2, "22", "1" if dependent else "0", "IL"))
    if dependent:
        body += draw(hl_level(4, 3, "23", "0", "03"))
    if draw(st.booleans()):
        body += draw(hl_level(5 if dependent else 4, 2, "22", "0", "IL"))
    sep, rep, comp, term = draw(st.sampled_from(DELIMITERS))
    version = "00401" if rep == "U" else "00501"   # a 4010 envelope: no repetition separator
    isa = (f"ISA{sep}00{sep}{' ' * 10}{sep}00{sep}{' ' * 10}{sep}ZZ{sep}{'PAYERX':<15}{sep}ZZ{sep}"
           f"{'GATEWAY01':<15}{sep}250115{sep}0930{sep}{rep}{sep}{version}{sep}000000009{sep}0{sep}P{sep}{comp}{term}\n")
    segments = [["GS", "HB", "PAYERX", "GATEWAY01", "20250115", "0930", "9", "X", "005010X279A1"],
                ["ST", "271", "0001", "005010X279A1"], *body, ["SE", str(len(body) + 2), "0001"], ["GE", "1", "9"],
                ["IEA", "1", "000000009"]]

    def value(text: str) -> str:
        return text.replace("^", rep if rep != "U" else "^").replace(":", comp)

    return isa + "".join(sep.join([parts[0], *map(value, parts[1:])]).rstrip(sep) + term + "\n" for parts in segments)


@settings(max_examples=100, **SETTINGS)
@given(built_271(), st.booleans())
def test_built_271s_translate_to_valid_accounted_responses_or_our_error(text, gateway):
    check_translation(text, gateway=gateway)
