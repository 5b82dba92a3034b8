"""Structural checks of incoming FHIR resources (fhir.resources), as translation problems with FHIRPath."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.fhir.models import validate_structure
from gateway.translate.errors import Problem

# pydantic field names that differ from the FHIR element names
_RENAMED = {"resource_type": "resourceType", "class_fhir": "class", "import_fhir": "import"}
_CODES = {"missing": "required", "model_field_validation.missing": "required", "extra_forbidden": "structure"}


def structure_problems(resource: dict[str, Any], path: str | None = None) -> list[Problem]:
    """Every structural problem fhir.resources finds, each with a FHIRPath expression."""
    root = path or str(resource.get("resourceType") or "Resource")
    try:
        validate_structure(resource)
    except ValidationError as exc:
        return [Problem(_path(root, error.get("loc") or ()), _message(error),
                        code=_CODES.get(error.get("type", ""), "value"))
                for error in exc.errors(include_url=False, include_input=False)]
    except RecursionError:
        return [Problem(root, "the resource nests too deeply to check", code="too-costly")]
    except (KeyError, LookupError, TypeError, ValueError) as exc:
        return [Problem(root, f"not a FHIR resource this server knows: {exc}", code="structure")]
    return []


def _path(root: str, loc: tuple[Any, ...]) -> str:
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("__root__",) or str(part).startswith("function-"):
            continue
        else:
            out += f".{_RENAMED.get(str(part), part)}"
    return out


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind in ("missing", "model_field_validation.missing"):
        return "this element is required"
    if kind == "json_invalid":   # a string where an object belongs: pydantic tried to read the string as JSON
        return "expected a JSON object here, not a string"
    if kind == "extra_forbidden":
        return "this element is not part of the resource"
    return str(error.get("msg") or kind)
