"""The project's own FHIR rules: what fhir.resources does not check (codes, invariants, references)."""

from __future__ import annotations

from typing import Any

FM_STATUS = {"active", "cancelled", "draft", "entered-in-error"}
PURPOSES = {"auth-requirements", "benefits", "discovery", "validation"}
OUTCOMES = {"queued", "complete", "error", "partial"}


def _references(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, reference string) inside a resource."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                found.append((path, item))
            elif key != "contained":
                found.extend(_references(item, f"{path}.{key}" if path else key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_references(item, f"{path}[{index}]"))
    return found


def check_response(resource: dict[str, Any]) -> list[str]:
    """Problems with a CoverageEligibilityResponse beyond structure (empty list when it is fine)."""
    problems = []
    if resource.get("status") not in FM_STATUS:
        problems.append(f"status {resource.get('status')!r} is not an fm-status code")
    for purpose in resource.get("purpose") or ["<missing>"]:
        if purpose not in PURPOSES:
            problems.append(f"purpose {purpose!r} is not an eligibilityresponse-purpose code")
    if resource.get("outcome") not in OUTCOMES:
        problems.append(f"outcome {resource.get('outcome')!r} is not a remittance-outcome code")
    for i, insurance in enumerate(resource.get("insurance") or []):
        for j, item in enumerate(insurance.get("item") or []):
            if ("category" in item) == ("productOrService" in item):
                problems.append(f"insurance[{i}].item[{j}]: ces-1 needs exactly one of category and productOrService")
    problems.extend(check_contained(resource))
    return problems


def check_contained(resource: dict[str, Any]) -> list[str]:
    """Local references resolve (dom-3 the other way round), and every contained resource is used."""
    problems = []
    contained_ids = {c.get("id") for c in resource.get("contained") or []}
    used = set()
    for path, ref in _references(resource):
        if ref.startswith("#"):
            used.add(ref[1:])
            if ref[1:] not in contained_ids:
                problems.append(f"{path}: reference {ref} does not resolve to a contained resource")
    for contained in resource.get("contained") or []:
        for path, ref in _references(contained):
            if ref.startswith("#"):
                used.add(ref[1:])
                if ref[1:] not in contained_ids:
                    problems.append(f"contained {contained.get('id')}.{path}: reference {ref} does not resolve")
    for cid in contained_ids - used:
        problems.append(f"contained resource {cid!r} is not referenced (dom-3)")
    return problems
