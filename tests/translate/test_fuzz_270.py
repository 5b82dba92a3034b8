"""Fuzzing the 270 -> FHIR direction, the validator and its acknowledgments, and the CLI on damaged 270s.

Whatever the 270: translation raises only our own errors (with a message) and otherwise gives a Bundle whose every
resource is valid FHIR R4 and in which every segment of the 270 is carried or noted; validation raises only our
errors and the 999 and TA1 built from its findings have a valid envelope of their own; the CLI ends with exit 0, 1
or 2 and a one-line message, never a traceback. Example counts are modest and derandomized (reproducible);
``FHIR_X12_FUZZ_EXAMPLES`` raises them for a longer hunt.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.errors import GatewayError
from gateway.fhir.models import validate_structure
from gateway.translate import load_tables
from gateway.translate.document import translate_document
from gateway.translate.request_from_270 import translate_270
from gateway.x12.ack import AcknowledgmentError, build_999, build_ta1
from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from tests.x12.mutations import CORPUS_270, DELIMITER_SETS, SOURCES, apply, damaged_270, parse_270, plausible_270

EXAMPLES = int(os.environ.get("FHIR_X12_FUZZ_EXAMPLES", "0"))
NOW = datetime(2025, 3, 10, 9, 30)
TABLES = load_tables()


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=EXAMPLES or examples, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


any_270 = st.one_of(damaged_270(), plausible_270(), *([damaged_270(CORPUS_270)] if CORPUS_270 else []))


def check_bundle(output: dict) -> None:
    """The Bundle and every resource in it pass the FHIR R4 models; fullUrls are unique urn:uuids."""
    validate_structure(output)
    urls = [entry["fullUrl"] for entry in output["entry"]]
    assert len(urls) == len(set(urls)) and all(u.startswith("urn:uuid:") for u in urls)
    for entry in output["entry"]:
        validate_structure(entry["resource"])


@fuzz_settings(200)
@given(any_270)
def test_translating_a_damaged_270_gives_valid_fhir_or_our_error(case):
    _, data = case
    try:
        result = translate_document(data, TABLES, now=NOW)
    except GatewayError as exc:
        assert str(exc).strip()
        return
    if result.kind == "fhir-requests":
        check_bundle(result.output)


@fuzz_settings(100)
@given(any_270)
def test_every_segment_of_a_270_is_carried_or_noted(case):
    """Nothing in a 270 is dropped without a word: each segment went into FHIR content or has a note."""
    _, data = case
    try:
        read = read_x12(data)
    except GatewayError:
        return
    for txn in read.transactions:
        if txn.set_id != "270" or not txn.structure:
            continue
        carried: set[int] = set()
        bundle, notes = translate_270(txn, TABLES, now="2025-03-10T09:30:00Z", carried=carried)
        check_bundle(bundle)
        patients = sum(len(c.loops_of("2000D")) or 1 for a in txn.root.loops_of("2000A") for b in a.loops_of("2000B")
                       for c in b.loops_of("2000C"))
        requests = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "CoverageEligibilityRequest"]
        assert len(requests) == patients   # one request per patient asked about, none lost
        noted = {int(m.group(1)) for n in notes if (m := re.search(r"@(\d+)$", n.source))}
        positions = {seg.position for seg in txn.segments()}
        assert positions <= carried | noted, sorted(positions - carried - noted)


@fuzz_settings(200)
@given(any_270)
def test_validating_a_damaged_270_and_acknowledging_it(case):
    _, data = case
    try:
        report = validate_x12(data)
    except GatewayError as exc:
        assert str(exc).strip()
        return
    isa = report.interchanges[0] if report.interchanges else None
    acks = [build_ta1(isa, report.findings, control_number=7, now=NOW)]
    try:
        acks.append(build_999(report.transactions, report.findings, control_number=7, now=NOW))
    except AcknowledgmentError:   # no set inside a functional group: only a TA1 answers that
        assert not any(t.group for t in report.transactions)
    for ack in acks:
        read = read_x12(ack)
        envelope = [f for f in read.all_findings if f.severity == "error" and f.segment in ("ISA", "GS", "GE", "IEA")
                    or f.code in ("X12-GS-CODE", "X12-SE-COUNT", "X12-SE-CONTROL", "X12-GE-COUNT", "X12-IEA-COUNT")]
        assert not envelope, [f.to_dict() for f in envelope]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


def check_cli(result) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    if result.exit_code == 2:
        assert result.stderr.startswith("fhir-x12: ") and result.stderr.strip(), result.stderr


@fuzz_settings(100)
@given(any_270, st.sampled_from([["translate"], ["translate", "--no-notes"], ["validate"], ["validate", "--json"],
                                 ["validate", "--ack", "999"], ["validate", "--ack", "ta1"]]))
def test_the_cli_ends_every_damaged_270_with_an_exit_code_and_a_message(workdir, case, command):
    _, data = case
    path = workdir / "input.x12"
    path.write_bytes(data)
    check_cli(CliRunner().invoke(main, [*command, str(path), "--date", "2025-03-10T09:30"]))


@fuzz_settings(40)
@given(st.sampled_from(SOURCES), st.sampled_from(DELIMITER_SETS), st.sampled_from(["ZZZ", "9Z", "#"]))
def test_an_invalid_service_type_is_found_whatever_the_delimiters(source, delimiters, code):
    """The implementation-guide checks read every delimiter set: with a newline as the segment terminator they read
    nothing after the ISA, and an unknown EQ01 (anything at all) passed as valid."""
    x = parse_270(source.read_text(encoding="utf-8"))
    if delimiters[0] == "*" and delimiters[1] == "*":   # ISA11 as the element separator: no repetitions
        return
    apply(x, ("delimiters", delimiters))
    apply(x, ("value", "EQ", 0, 1, code))
    from tests.x12.mutations import _with_delimiters

    report = validate_x12(_with_delimiters(x).render().encode())
    assert any(f.element == "EQ01" and f.severity == "error" for f in report.findings), \
        [f.to_dict() for f in report.findings]
