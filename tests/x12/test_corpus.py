"""Every public sample file in ../shared/corpus: read without exceptions, defects reported precisely.

The expectations come from INDEX.tsv's own notes, so a file nobody here wrote decides what is
right: files it describes as valid give no error-level finding from the reader; each defect it
names gives its specific finding.
"""

from __future__ import annotations

import re

import pytest

from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from tests.conftest import CORPUS, corpus_params

# INDEX.tsv note (regular expression) -> finding code(s) the reader or validator must report
DEFECTS = [
    (r"SE01=\d+ but counted", {"X12-SE-COUNT"}),
    (r"ST/SE control no\. mismatch", {"X12-SE-CONTROL"}),
    (r"ISA/IEA control no\. mismatch", {"X12-IEA-CONTROL"}),
    (r"GS08 004010X092A1 != ST03 005010X279A1", {"X12-ENVELOPE-4010", "X12-VERSION-MISMATCH"}),
    (r"GS01=XX", {"X12-GS-FUNCTIONAL-ID"}),
    (r"HL child code wrong|HL04", {"X12-HL-CHILD"}),
]
VALIDATION_DEFECTS = [
    (r"NM108=SV", lambda f: f.element == "NM108" and f.value == "SV" and f.severity == "warning"),
]


def is_described_valid(row: dict[str, str]) -> bool:
    notes = row["notes"]
    return not any(word in notes for word in ("INVALID", "SE01", "control no.", "4010")) \
        and not row["version"].startswith("004010")


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params())
def test_corpus_file_is_read(row):
    data = (CORPUS / row["file"]).read_bytes()
    result = read_x12(data)
    assert len(result.transactions) == 1
    txn = result.transactions[0]
    assert txn.set_id == row["transaction"]
    assert txn.segment_count >= 8
    # the loop tree holds every segment of the set
    assert len(list(txn.segments())) == txn.segment_count or any(
        f.code == "X12-SE-MISSING" for f in result.all_findings)
    found = {f.code for f in result.all_findings}
    if is_described_valid(row):
        errors = [f for f in result.all_findings if f.severity == "error"]
        assert not errors, [f.to_dict() for f in errors]
    for pattern, expected in DEFECTS:
        if re.search(pattern, row["notes"]):
            assert expected <= found, (pattern, sorted(found))
    if row["version"].startswith("004010") and row["transaction"] == "270":
        assert "X12-IMPLEMENTATION" in found


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params())
def test_corpus_file_validates_without_crashing(row):
    report = validate_x12((CORPUS / row["file"]).read_bytes())
    for pattern, check in VALIDATION_DEFECTS:
        if re.search(pattern, row["notes"]):
            assert any(check(f) for f in report.findings), pattern
    if is_described_valid(row) and "older variant" not in row["notes"]:
        assert report.valid, [f.to_dict() for f in report.errors]
