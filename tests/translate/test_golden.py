"""Golden pairs, found by scanning fixtures/: every translation path against its reviewed output.

Regenerate with ``make golden`` (pytest --update-golden) and review the diff like code.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from gateway.translate import load_tables
from gateway.translate.document import translate_document
from tests.conftest import FIXTURES

NOW = datetime(2025, 1, 15, 9, 30)
GOLDEN = FIXTURES / "golden"
REQUESTS = sorted((FIXTURES / "fhir" / "requests").glob("*.json"))
RESPONSES_271 = sorted((FIXTURES / "x12" / "271").glob("*.271")) + sorted(
    (FIXTURES / "x12" / "271-nonconforming").glob("*.271"))
REQUESTS_270 = sorted((FIXTURES / "x12" / "270").glob("*.270"))


def translate(path: Path):
    return translate_document(path.read_bytes(), load_tables(), now=NOW, control_number=1, sender_id="GATEWAY01")


def segments(text: str) -> list[str]:
    terminator = text[105]
    return [s.strip() for s in text.split(terminator) if s.strip()]


def notes_of(result) -> list[dict[str, str]]:
    return [n.to_dict() for n in result.notes] + [
        {"changed": c.element, "from": c.original, "to": c.written, "reason": c.reason} for c in result.write_notes]


def check(expected_path: Path, actual, update: bool, compare) -> None:
    if update or not expected_path.exists():
        expected_path.parent.mkdir(parents=True, exist_ok=True)
        expected_path.write_text(actual if isinstance(actual, str) else json.dumps(actual, indent=2) + "\n",
                                 encoding="utf-8")
        if not update:
            pytest.fail(f"{expected_path} did not exist; written now - review it and commit it")
        return
    compare(expected_path.read_text(encoding="utf-8"), actual)


def same_json(expected: str, actual) -> None:
    assert json.loads(expected) == actual


def same_segments(expected: str, actual: str) -> None:
    assert segments(expected) == segments(actual)


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_request_to_270(path: Path, update_golden: bool):
    result = translate(path)
    assert result.kind == "270"
    check(GOLDEN / "270" / f"{path.stem}.270", result.output.replace("~", "~\n"), update_golden, same_segments)
    check(GOLDEN / "270" / f"{path.stem}.notes.json", notes_of(result), update_golden, same_json)


@pytest.mark.parametrize("path", RESPONSES_271, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_271_to_response(path: Path, update_golden: bool):
    result = translate(path)
    assert result.kind in ("fhir-response", "fhir-responses")
    check(GOLDEN / "responses" / f"{path.stem}.json", result.output, update_golden, same_json)


@pytest.mark.parametrize("path", REQUESTS_270, ids=lambda p: p.stem)
def test_270_to_requests(path: Path, update_golden: bool):
    result = translate(path)
    assert result.kind == "fhir-requests"
    check(GOLDEN / "requests-from-270" / f"{path.stem}.json", result.output, update_golden, same_json)


def test_golden_counts():
    """The issue asks for at least 12 request pairs and 25 response pairs."""
    assert len(REQUESTS) >= 12
    assert len(RESPONSES_271) >= 25
