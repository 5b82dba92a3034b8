"""The simulator's validation modes: full (pyx12, as a payer does) and structure (load tests)."""

from __future__ import annotations

import pytest

from gateway.payer.app import create_payer_app
from gateway.x12.validate import validate_x12
from tests.conftest import FIXTURES

INVALID = FIXTURES / "x12" / "invalid"


def test_structure_mode_keeps_the_readers_checks_and_skips_element_checks():
    element_error = (INVALID / "eq01-invalid-code.x12").read_bytes()      # found only by pyx12
    count_error = (INVALID / "se01-wrong-count.x12").read_bytes()         # found by the reader
    assert not validate_x12(element_error).valid
    assert validate_x12(element_error, elements=False).valid
    structure = validate_x12(count_error, elements=False)
    assert not structure.valid and any(f.code == "X12-SE-COUNT" for f in structure.findings)


@pytest.mark.parametrize(("mode", "answer"), [("full", "999"), ("structure", "271")])
def test_simulator_answers_by_mode(tmp_path, mode: str, answer: str):
    app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{tmp_path / 'payer.db'}", "PAYER_WORKER": False,
                            "PAYER_VALIDATION": mode})
    try:
        reply = app.test_client().post("/x12", data=(INVALID / "eq01-invalid-code.x12").read_bytes(),
                                       headers={"Content-Type": "application/edi-x12"})
        assert reply.status_code == 200
        assert f"ST*{answer}*" in reply.get_data(as_text=True)
    finally:
        app.extensions["payer_store"].close()
