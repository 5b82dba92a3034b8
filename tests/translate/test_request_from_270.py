"""270 -> FHIR: each inquiry keeps its meaning, and the Bundle translates back to the same 270."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from gateway.translate import load_tables
from gateway.translate.document import translate_document
from gateway.translate.request_from_270 import translate_270
from gateway.x12.reader import read_x12
from gateway.x12.writer import Envelope, Value, X12Writer
from tests.conftest import FIXTURES

NOW = datetime(2025, 1, 15, 9, 30)
GOLDEN_270 = sorted((FIXTURES / "golden" / "270").glob("*.270"))
HEAD: list[tuple[str, list[Value]]] = [
    ("BHT", ["0022", "13", "T1", "20250115", "0930"]), ("HL", ["1", "", "20", "1"]),
    ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]), ("HL", ["2", "1", "21", "1"]),
    ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"]), ("HL", ["3", "2", "22", "0"]),
    ("TRN", ["1", "T1", "9GATEWAY01"]), ("NM1", ["IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123"]),
    ("DMG", ["D8", "19800203", "F"])]


def segments(text: str) -> list[str]:
    return [s.strip() for s in text.split(text[105]) if s.strip()]


def x12(body: list[tuple[str, list[Value]]]) -> str:
    env = Envelope(sender_id="GATEWAY01", receiver_id="99999", interchange_control=1, now=NOW)
    return X12Writer().interchange(env, "HS", "270", "005010X279A1", [body]).text


def from_270(text: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The Bundle, its request, and the notes' texts."""
    bundle, notes = translate_270(read_x12(text).transactions[0], load_tables(), now="2025-01-15T09:30:00Z")
    request = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "CoverageEligibilityRequest")
    return bundle, request, [n.text for n in notes]


def back_to_270(bundle: dict[str, Any]) -> str:
    return translate_document(json.dumps(bundle).encode(), load_tables(), now=NOW, control_number=1,
                              sender_id="GATEWAY01").output


@pytest.mark.parametrize("qualifier, sent, fhir", [
    ("ABK", "M5450", "M54.50"), ("ABF", "S335XXA", "S33.5XXA"), ("ABF", "I10", "I10"), ("ABF", "E11.9", "E11.9"),
    ("BK", "8901", "890.1"), ("BF", "25000", "250.00"), ("BF", "V7231", "V72.31"), ("BF", "E8889", "E888.9"),
    ("BF", "E888", "E888"), ("BF", "401", "401")])
def test_icd_codes_get_their_decimal_point_back(qualifier: str, sent: str, fhir: str):
    _, request, _ = from_270(x12([*HEAD, ("HI", [(qualifier, sent)]), ("EQ", ["33", "", "", "", ("1",)])]))
    assert request["item"][0]["diagnosis"][0]["diagnosisCodeableConcept"]["coding"][0]["code"] == fhir
