"""The Flask app: health checks and X12 validation over HTTP."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from tests.conftest import FIXTURES, mappings_with


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


def test_validate_reads_a_999_instead_of_calling_it_an_unsupported_set(client):
    """A payer's 999 posted to $validate: what it says comes back, as the CLI shows it, and it is not invalid."""
    bad = (FIXTURES / "x12" / "invalid" / "eq01-invalid-code.x12").read_bytes()
    made = client.post("/x12/$validate", data=bad, headers={"Accept": "application/edi-x12"})
    answer = client.post("/x12/$validate", data=made.get_data())
    assert answer.status_code == 200
    assert answer.json["valid"] is True
    assert not [f for f in answer.json["findings"] if f["code"] == "X12-SET-UNSUPPORTED"]
    messages = [item["message"] for item in answer.json["acknowledgment"]]
    assert "element EQ01 (data element 1365): Invalid code value (IK403 code 7): 'ZZ'" in messages
    assert any(m.startswith("transaction set 270 0001 rejected") for m in messages)


def test_validate_leaves_acknowledgment_out_for_a_270(client):
    data = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes()
    assert "acknowledgment" not in client.post("/x12/$validate", data=data).json


def test_validate_refuses_an_unknown_ack_kind(client):
    data = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes()
    response = client.post("/x12/$validate?ack=997", data=data, headers={"Accept": "application/edi-x12"})
    assert response.status_code == 400 and "ack must be 999 or ta1" in response.json["error"]
    ta1 = client.post("/x12/$validate?ack=TA1", data=data, headers={"Accept": "application/edi-x12"})
    assert ta1.status_code == 200 and "~TA1*" in ta1.get_data(as_text=True)


def test_no_999_for_an_interchange_without_a_transaction_set_in_a_group(client):
    """A 999 acknowledges the sets of functional groups: for none it had an empty AK1, said "accepted" (AK9*A) and
    went to UNKNOWN. Now a 422 says why, and a TA1 answers it."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    empty = text[:text.index("ST*270")] + text[text.index("GE*"):].replace("GE*1*", "GE*0*")
    response = client.post("/x12/$validate", data=empty.encode(), headers={"Accept": "application/edi-x12"})
    assert response.status_code == 422 and "no 999" in response.json["error"] and "?ack=ta1" in response.json["error"]
    ta1 = client.post("/x12/$validate?ack=ta1", data=empty.encode(), headers={"Accept": "application/edi-x12"})
    assert ta1.status_code == 200 and "*ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *" in ta1.get_data(as_text=True)


def test_validate_rejects_non_x12(client):
    response = client.post("/x12/$validate", data=b"not x12")
    assert response.status_code == 400 and "ISA" in response.json["error"]


def test_readyz_fails_when_the_store_table_is_gone_or_the_sqlite_file_was_deleted(tmp_path):
    """``select 1`` still connects to a dropped schema or a deleted file: readiness asks the store's own table."""
    from sqlalchemy import text

    database = tmp_path / "gateway.db"
    app = create_app({"TESTING": True, "FHIR_X12_DATABASE_URL": f"sqlite:///{database}"})
    client = app.test_client()
    try:
        assert client.get("/readyz").status_code == 200
        store = app.extensions["fhir_x12"]["service"].store
        database.rename(tmp_path / "moved.db")
        assert client.get("/readyz").status_code == 503   # the file is gone: its writes would go nowhere
        (tmp_path / "moved.db").rename(database)
        assert client.get("/readyz").status_code == 200
        with store.engine.begin() as connection:
            connection.execute(text("DROP TABLE eligibility_identifiers"))
            connection.execute(text("DROP TABLE eligibility_transactions"))
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json["status"] == "not ready"
    finally:
        app.extensions["fhir_x12"]["close"]()


def test_a_store_failure_on_a_read_or_search_is_503_transient_not_a_500(tmp_path):
    from sqlalchemy import text

    app = create_app({"TESTING": True, "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}"})
    client = app.test_client()
    try:
        with app.extensions["fhir_x12"]["service"].store.engine.begin() as connection:
            connection.execute(text("DROP TABLE eligibility_identifiers"))
            connection.execute(text("DROP TABLE eligibility_transactions"))
        for response in (client.get("/CoverageEligibilityRequest?patient=Patient/p1"),
                         client.get("/CoverageEligibilityRequest/abc"),
                         client.get("/CoverageEligibilityResponse?request=CoverageEligibilityRequest/abc")):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.json["issue"][0]["code"] == "transient"
    finally:
        app.extensions["fhir_x12"]["close"]()


def test_validate_answers_each_interchange_with_its_own_ta1(client):
    """A TA1 answers one ISA: only the first of two interchanges got one."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    other = (text.replace("FHIRX12GW      ", "OTHERSENDER    ").replace("GS*HS*FHIRX12GW*", "GS*HS*OTHERSENDER*")
             .replace("000001001", "000002002").replace("IEA*1*000002002~", "IEA*1*000009999~"))
    ta1 = client.post("/x12/$validate?ack=ta1", data=(text + other).encode(),
                      headers={"Accept": "application/edi-x12"}).get_data(as_text=True)
    first, second = ("ISA" + part for part in ta1.split("ISA")[1:])
    assert "*ZZ*FHIRX12GW      *" in first and "TA1*000001001*250310*0915*A*000~" in first
    assert "*ZZ*OTHERSENDER    *" in second and "TA1*000002002*250310*0915*R*001~" in second
    ack = client.post("/x12/$validate", data=(text + other).encode(),
                      headers={"Accept": "application/edi-x12"}).get_data(as_text=True)
    assert ack.count("ISA*") == 2 and "*ZZ*OTHERSENDER    *" in ack.split("ISA*")[2]


def test_validate_reports_a_repeated_isa13_and_rejects_only_the_later_interchange(client):
    """Two interchanges with the same ISA13 from the same sender: both TA1s said accepted."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    found = client.post("/x12/$validate", data=(text + text).encode()).json
    assert found["valid"] is False
    assert [(f["code"], f["ack_code"], f["element"]) for f in found["findings"]] == [
        ("X12-ISA-DUPLICATE", "025", "ISA13")]
    ta1 = client.post("/x12/$validate?ack=ta1", data=(text + text).encode(),
                      headers={"Accept": "application/edi-x12"}).get_data(as_text=True)
    first, second = ("ISA" + part for part in ta1.split("ISA")[1:])
    assert "TA1*000001001*250310*0915*A*000~" in first and "TA1*000001001*250310*0915*R*025~" in second


def test_validate_writes_its_999_by_the_apps_own_mappings(tmp_path):
    """The 999 carries only the codes the app's code tables list (FHIR_X12_MAPPINGS), as its validation reads them:
    without IK403 code 7 in element_syntax_error.yaml, the segment is still in error but no IK4 names that code."""
    base = mappings_with(tmp_path, "codes/element_syntax_error.yaml", '  "7": {display: "Invalid code value"}\n', "")
    bad = (FIXTURES / "x12" / "invalid" / "eq01-invalid-code.x12").read_bytes()
    answers = {}
    for name, config in (("shipped", {}), ("copy", {"FHIR_X12_MAPPINGS": base})):
        app = create_app({"TESTING": True, "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / name}.db", **config})
        answers[name] = app.test_client().post("/x12/$validate", data=bad,
                                               headers={"Accept": "application/edi-x12"}).get_data(as_text=True)
        app.extensions["fhir_x12"]["close"]()
    assert "IK4*1*1365*7*ZZ~" in answers["shipped"]
    assert "IK3*EQ*12**8~" in answers["copy"] and "IK4*" not in answers["copy"]
