"""Invalid requests (fixtures/fhir/requests-invalid): one error listing every problem, as expected."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from gateway.translate import TranslationError, load_tables
from gateway.translate.document import translate_document
from tests.conftest import FIXTURES

CASES = sorted(p for p in (FIXTURES / "fhir" / "requests-invalid").glob("*.json") if not p.name.endswith(
    ".expected.json"))


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_invalid_request_lists_every_problem(path: Path):
    expected = json.loads(path.with_name(f"{path.stem}.expected.json").read_text())
    with pytest.raises(TranslationError) as info:
        translate_document(path.read_bytes(), load_tables(), now=datetime(2025, 1, 15, 9, 30))
    error = info.value
    assert error.status == expected["http_status"]
    # every expression of each problem: where the element is (or, missing, each place it may come from)
    got = {(tuple(p.expressions), p.x12, p.code) for p in error.problems}
    want = {((p["fhir_path"], *p.get("also", ())), p.get("x12"), p["code"]) for p in expected["problems"]}
    assert got == want
    outcome = error.to_operation_outcome()
    assert [i["expression"] for i in outcome["issue"]] == [p.expressions for p in error.problems]
