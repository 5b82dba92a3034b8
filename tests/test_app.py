"""The Flask app: health checks and X12 validation over HTTP."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from tests.conftest import FIXTURES


@pytest.fixture
def client(tmp_path):
    app = create_app({"TESTING": True, "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}"})
    yield app.test_client()
    app.extensions["fhir_x12"]["close"]()


def test_health(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


def test_validate_returns_findings(client):
    data = (FIXTURES / "x12" / "invalid" / "se01-wrong-count.x12").read_bytes()
    response = client.post("/x12/$validate", data=data)
    assert response.status_code == 200
    assert response.json["valid"] is False
    assert any(f["code"] == "X12-SE-COUNT" for f in response.json["findings"])


def test_validate_returns_999_when_asked(client):
    data = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes()
    response = client.post("/x12/$validate", data=data, headers={"Accept": "application/edi-x12"})
    assert response.mimetype == "application/edi-x12"
    assert "IK5" in response.get_data(as_text=True)


def test_validate_rejects_non_x12(client):
    response = client.post("/x12/$validate", data=b"not x12")
    assert response.status_code == 400 and "ISA" in response.json["error"]
