"""The demo members (fixtures/members): every record loads, and every 271 the simulator answers
to the project's 270 fixtures validates clean under the X279A1 maps."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from gateway.mappings import load_yaml
from gateway.payer.answer import answer_270
from gateway.payer.records import validate_record
from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from tests.conftest import FIXTURES

MEMBERS = sorted((FIXTURES / "members").glob("*.json"))
REQUESTS = sorted((FIXTURES / "x12" / "270").glob("*.270"))


def load_members() -> dict:
    members = {}
    for path in MEMBERS:
        record, problems = validate_record(json.loads(path.read_text()))
        assert problems == [], (path.name, problems)
        members[record["memberid"]] = record
    return members


def test_demo_set_is_large_enough_and_unique():
    assert len(MEMBERS) >= 12
    assert len(load_members()) == len(MEMBERS)


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_every_simulated_271_validates_clean(path: Path):
    members = load_members()
    for txn in read_x12(path.read_bytes()).transactions:
        text = answer_270(txn, members, load_yaml("payer/answers.yaml"), now=datetime(2025, 3, 10, 9, 30),
                          control_number=7)
        report = validate_x12(text)
        assert report.valid, [f.to_dict() for f in report.errors]
