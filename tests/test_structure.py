"""Structural problems of incoming resources: FHIRPath, issue code and words a caller can act on."""

from __future__ import annotations

import pytest

from gateway.fhir.structure import structure_problems

REQUEST = {"resourceType": "CoverageEligibilityRequest", "status": "active", "purpose": ["benefits"],
           "created": "2025-03-10", "patient": {"reference": "Patient/p"}, "insurer": {"reference": "Organization/o"}}


def problems(**changes):
    resource = {**REQUEST, **changes}
    for key in [k for k, v in changes.items() if v is None]:
        resource.pop(key)
    return [(p.fhir_path, p.code, p.message) for p in structure_problems(resource)]


def test_a_valid_request_has_none():
    assert problems() == []


@pytest.mark.parametrize("element", ["created", "status", "patient", "insurer"])
def test_a_missing_required_element_is_code_required(element):
    assert problems(**{element: None}) == [(f"CoverageEligibilityRequest.{element}", "required",
                                            "this element is required")]


def test_a_string_where_a_reference_belongs_says_so():
    assert problems(patient="Patient/p") == [("CoverageEligibilityRequest.patient", "value",
                                              "expected a JSON object here, not a string")]


def test_an_unknown_element_is_code_structure():
    assert problems(colour="blue") == [("CoverageEligibilityRequest.colour", "structure",
                                        "this element is not part of the resource")]
