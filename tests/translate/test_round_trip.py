"""FHIR -> 270 -> FHIR keeps what identifies the inquiry; every generated 270 validates clean."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from gateway.mappings import load_yaml, mappings_dir
from gateway.translate import load_tables
from gateway.translate.document import translate_document
from gateway.translate.references import Resolver
from gateway.translate.request_270 import find_request
from gateway.x12.validate import validate_x12
from gateway.x12.writer import transliterate
from tests.conftest import FIXTURES
from tests.translate.test_request_rules import bundle

NOW = datetime(2025, 1, 15, 9, 30)
REQUESTS = sorted((FIXTURES / "fhir" / "requests").glob("*.json"))


def essentials(payload: dict) -> dict:
    """Patient name and birth date, member id, payer id, NPI, service types, dates, procedure codes."""
    request, bundle_ = find_request(payload)
    resolve = Resolver(request, bundle_).resolve
    patient = resolve(request["patient"], "p", ()) or {}
    coverage = resolve(request["insurance"][0]["coverage"], "c", ()) or {}
    # the 270 carries the subscriber id, or the patient's own member id (the IG's rule)
    member = {coverage.get("subscriberId")} | {i["value"] for i in coverage.get("identifier", []) + patient.get(
        "identifier", []) if "MB" in json.dumps(i.get("type", {}))}
    member.discard(None)
    payer = resolve(request.get("insurer") or {}, "i", ()) or resolve((coverage.get("payor") or [{}])[0], "p", ()) or {}
    payer_ids = {i["value"] for i in payer.get("identifier", [])}
    provider = resolve(request.get("provider") or {}, "pr", ()) or {}
    if provider.get("resourceType") == "PractitionerRole":
        provider = resolve(provider.get("practitioner") or provider.get("organization"), "x", ()) or {}
    npi = next((i["value"] for i in provider.get("identifier", []) if i.get("system", "").endswith("us-npi")), None)
    name = (patient.get("name") or [{}])[0]
    categories = sorted(c["code"] for item in request.get("item", [])
                        for c in item.get("category", {}).get("coding", []))
    procedures = sorted(c["code"] for item in request.get("item", [])
                        for c in item.get("productOrService", {}).get("coding", []))
    return {"family": transliterate(name.get("family") or "").upper(),
            "given": transliterate((name.get("given") or [""])[0]).upper(),
            "birthDate": patient.get("birthDate"), "member": member, "payer": payer_ids, "npi": npi,
            "categories": categories, "procedures": procedures,
            "served": request.get("servicedDate") or request.get("servicedPeriod")}


def round_trip(payload: dict) -> tuple[dict, dict]:
    tables = load_tables()
    x12 = translate_document(json.dumps(payload).encode(), tables, now=NOW, sender_id="GATEWAY01")
    assert validate_x12(x12.output).valid
    back = translate_document(x12.output.encode(), tables, now=NOW)
    return x12.output, back.output


def check(payload: dict) -> None:
    before = essentials(payload)
    _, back = round_trip(payload)
    requests = [e["resource"] for e in back["entry"] if e["resource"]["resourceType"] == "CoverageEligibilityRequest"]
    assert len(requests) == 1
    after = essentials({"resourceType": "Bundle", "entry": back["entry"]})
    for key in ("family", "birthDate", "npi", "served", "procedures"):
        assert after[key] == before[key], key
    assert after["member"] <= before["member"] and (after["member"] or not before["member"])
    assert before["given"].startswith(after["given"]) or after["given"] == before["given"]
    assert before["payer"] & after["payer"]
    remap = load_yaml("translate/systems.yaml")["service_type"]["remap"]
    assert after["categories"] == sorted(str(remap.get(c, c)) for c in before["categories"])


def test_round_trip_of_a_built_request():
    items = [{"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "33"}]}},
             {"productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97140"}]}}]
    check(bundle(request__item=items, request__servicedPeriod={"start": "2025-01-01", "end": "2025-01-31"}))


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_round_trip_of_each_request_fixture(path: Path):
    check(json.loads(path.read_text()))


def test_process_note_extension_matches_its_structure_definition():
    definition = json.loads((mappings_dir() / "fhir" / "StructureDefinition-processNote.json").read_text())
    assert definition["url"] == load_yaml("translate/systems.yaml")["process_note_extension"]
    slices = {e["sliceName"] for e in definition["differential"]["element"] if "sliceName" in e}
    response = translate_document((FIXTURES / "x12" / "271" / "subscriber-benefits.271").read_bytes(), load_tables(),
                                  now=NOW).output
    for extension in response["extension"]:
        assert {e["url"] for e in extension["extension"]} <= slices


def test_a_270s_icd9_diagnoses_stay_icd9_and_unpointed_ones_are_noted():
    from gateway.translate.request_from_270 import translate_270
    from gateway.x12.reader import read_x12
    from gateway.x12.writer import Envelope, X12Writer

    body = [("BHT", ["0022", "13", "R1", "20250115", "0930"]), ("HL", ["1", "", "20", "1"]),
            ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]), ("HL", ["2", "1", "21", "1"]),
            ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"]), ("HL", ["3", "2", "22", "0"]),
            ("TRN", ["1", "T1", "9GATEWAY01"]), ("NM1", ["IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123"]),
            ("HI", [("BK", "8901"), ("BF", "87200"), ("ABF", "E119")]), ("EQ", ["33", "", "", "", ("1",)])]
    env = Envelope(sender_id="GATEWAY", receiver_id="PAYER", interchange_control=5, now=datetime(2025, 1, 15, 9, 30))
    text = X12Writer().interchange(env, "HS", "270", "005010X279A1", [body]).text
    bundle, notes = translate_270(read_x12(text).transactions[0], load_tables(), now="2025-01-15T09:30:00Z")
    request = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "CoverageEligibilityRequest")
    coding = request["item"][0]["diagnosis"][0]["diagnosisCodeableConcept"]["coding"][0]
    assert coding == {"system": "http://hl7.org/fhir/sid/icd-9-cm", "code": "890.1"}   # FHIR writes the point
    assert any("872.00, E11.9 is pointed at by no EQ05" in n.text for n in notes)


def test_what_a_270_holds_beyond_fhir_is_noted():
    from gateway.translate.request_from_270 import translate_270
    from gateway.x12.reader import read_x12
    from gateway.x12.writer import Envelope, X12Writer

    body = [("BHT", ["0022", "13", "R1", "20250115", "0930"]), ("HL", ["1", "", "20", "1"]),
            ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]), ("HL", ["2", "1", "21", "1"]),
            ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "SV", "PROV55"]), ("HL", ["3", "2", "22", "0"]),
            ("TRN", ["1", "T1", "9GATEWAY01", "DIV1"]), ("NM1", ["IL", "1", "ROE", "ANNA", "", "", "", "MI", "W123"]),
            ("DMG", ["D8", "19800230", "F"]), ("INS", ["Y", "18", "", "", "", "", "", "", "", "", "", "", "", "", "",
                                                      "", "2"]),
            ("EQ", ["30", "", "FAM"])]
    env = Envelope(sender_id="GATEWAY", receiver_id="PAYER", interchange_control=5, now=datetime(2025, 1, 15, 9, 30))
    text = X12Writer().interchange(env, "HS", "270", "005010X279A1", [body]).text
    _, notes = translate_270(read_x12(text).transactions[0], load_tables(), now="2025-01-15T09:30:00Z")
    texts = " | ".join(n.text for n in notes)
    for words in ("identified by SV PROV55", "'19800230' (D8) is not a D8 calendar date", "division DIV1",
                  "birth sequence 2", "coverage level FAM"):
        assert words in texts, words
