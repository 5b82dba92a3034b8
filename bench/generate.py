"""Synthetic 271s for benchmarks: a typical single-patient response and large batch files."""

from __future__ import annotations

from datetime import datetime

from gateway.x12.writer import Envelope, X12Writer

NOW = datetime(2026, 1, 15, 9, 30)


def _subscriber(hl: int, n: int) -> list[tuple[str, list]]:
    member = f"M{n:09d}"
    return [
        ("HL", [str(hl), "2", "22", "0"]),
        ("TRN", ["2", f"TRACE{n:08d}", "9GATEWAY01"]),
        ("NM1", ["IL", "1", f"LAST{n % 997}", f"FIRST{n % 113}", "", "", "", "MI", member]),
        ("REF", ["6P", f"GRP{n % 50:04d}", "EXAMPLE EMPLOYER GROUP"]),
        ("N3", [f"{n % 9000 + 1} MAIN ST"]),
        ("N4", ["ANYTOWN", "PA", "19000"]),
        ("DMG", ["D8", f"19{60 + n % 40:02d}0{1 + n % 9}1{n % 9}", "F" if n % 2 else "M"]),
        ("DTP", ["346", "D8", "20260101"]),
        ("EB", ["1", "FAM", "30", "PR", "GOLD PPO 2000"]),
        ("EB", ["1", "", ["1", "33", "35", "47", "48", "50", "86", "88", "98", "AL", "MH", "UC"]]),
        ("EB", ["C", "IND", "30", "", "", "23", "2000", "", "", "", "", "Y"]),
        ("EB", ["C", "IND", "30", "", "", "29", str(1450 + n % 100), "", "", "", "", "Y"]),
        ("EB", ["C", "FAM", "30", "", "", "23", "4000", "", "", "", "", "Y"]),
        ("EB", ["C", "FAM", "30", "", "", "29", "3100", "", "", "", "", "Y"]),
        ("EB", ["G", "IND", "30", "", "", "23", "6000", "", "", "", "", "Y"]),
        ("EB", ["G", "IND", "30", "", "", "29", "5120", "", "", "", "", "Y"]),
        ("EB", ["B", "IND", "98", "", "", "27", "30", "", "", "", "", "Y"]),
        ("EB", ["B", "IND", "98", "", "", "27", "60", "", "", "", "", "N"]),
        ("EB", ["A", "IND", "30", "", "", "", "", ".2", "", "", "", "Y"]),
        ("EB", ["A", "IND", "30", "", "", "", "", ".4", "", "", "", "N"]),
        ("EB", ["F", "IND", "33", "", "", "23", "", "", "VS", "20", "", "Y"]),
        ("EB", ["F", "IND", "33", "", "", "29", "", "", "VS", "14", "", "Y"]),
        ("EB", ["B", "IND", "UC", "", "", "27", "50", "", "", "", "", "W"]),
        ("MSG", ["COPAY WAIVED IF ADMITTED"]),
        ("EB", ["L"]),
        ("LS", ["2120"]),
        ("NM1", ["P3", "1", "SMITH", "PAT", "", "", "", "XX", "1992999998"]),
        ("PRV", ["PC", "PXC", "207Q00000X"]),
        ("LE", ["2120"]),
    ]


def generate_271(subscribers: int, *, line_breaks: bool = True) -> str:
    """One 271 transaction answering ``subscribers`` patients (HL 2000C loops under one receiver)."""
    writer = X12Writer(line_breaks=line_breaks)
    body: list[tuple[str, list]] = [
        ("BHT", ["0022", "11", "BATCH0001", "20260115", "0930"]),
        ("HL", ["1", "", "20", "1"]),
        ("NM1", ["PR", "2", "EXAMPLE HEALTH PLAN", "", "", "", "", "PI", "99999"]),
        ("PER", ["IC", "PROVIDER SERVICES", "TE", "8005550100"]),
        ("HL", ["2", "1", "21", "1"]),
        ("NM1", ["1P", "2", "SAMPLE CLINIC", "", "", "", "", "XX", "1234567893"]),
    ]
    for n in range(subscribers):
        body.extend(_subscriber(n + 3, n))
    env = Envelope(sender_id="PAYERX", receiver_id="GATEWAY01", interchange_control=733, now=NOW)
    return writer.interchange(env, "HB", "271", "005010X279A1", [body]).text


def typical_271() -> str:
    """A one-patient 271 of 41 segments including the envelope, like a real-time answer."""
    text = generate_271(1)
    return text


def typical_request() -> dict:
    """A CoverageEligibilityRequest Bundle as an EHR sends it: patient, coverage, payer, provider."""
    payer_type = {"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType", "code": "payerid"}
    entries = [
        {"resourceType": "CoverageEligibilityRequest", "id": "req", "identifier": [{"value": "REQ-1"}],
         "status": "active", "purpose": ["benefits"], "patient": {"reference": "Patient/pat"},
         "created": "2026-01-15T09:30:00Z", "insurer": {"reference": "Organization/payer"},
         "provider": {"reference": "Organization/clinic"}, "servicedDate": "2026-01-15",
         "insurance": [{"focal": True, "coverage": {"reference": "Coverage/cov"}}],
         "item": [{"category": {"coding": [{"system": "https://x12.org/codes/service-type-codes", "code": "98"}]}}]},
        {"resourceType": "Patient", "id": "pat", "name": [{"family": "Roe", "given": ["Richard"]}],
         "birthDate": "1980-02-10", "gender": "male"},
        {"resourceType": "Coverage", "id": "cov", "status": "active", "subscriberId": "W123456789",
         "beneficiary": {"reference": "Patient/pat"}, "payor": [{"reference": "Organization/payer"}],
         "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                      "code": "self"}]}},
        {"resourceType": "Organization", "id": "payer", "name": "Example Health Plan",
         "identifier": [{"type": {"coding": [payer_type]}, "value": "99999"}]},
        {"resourceType": "Organization", "id": "clinic", "name": "Sample Clinic",
         "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}]},
    ]
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in entries]}
