"""FHIR helpers: the one import point for the R4 models, validation and our own rules.

This module itself imports nothing: gunicorn's workers (``gateway.workers``) use it before gevent patches.
"""

from __future__ import annotations

from typing import Any

FHIR_JSON = "application/fhir+json"
# what a FHIR body is sent as: R4 (http.html) says a response SHALL name its charset, UTF-8
FHIR_JSON_UTF8 = f"{FHIR_JSON}; charset=utf-8"


def operation_outcome(code: str, text: str, *, severity: str = "error", diagnostics: str | None = None,
                      expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "details": {"text": text}}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
