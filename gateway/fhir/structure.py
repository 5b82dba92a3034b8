"""Structural checks of incoming FHIR resources (fhir.resources), as translation problems with FHIRPath."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.errors import QUOTE_LIMIT, quoted
from gateway.fhir.json_types import JSON_NAMES, json_type_problems
from gateway.fhir.models import resource_kind, validate_structure
from gateway.translate.errors import Problem

MAX_DEPTH = 48   # FHIR resources nest a dozen levels; deeper input is refused before validation
# pydantic field names that differ from the FHIR element names
_RENAMED = {"resource_type": "resourceType", "class_fhir": "class", "import_fhir": "import"}
_CODES = {"missing": "required", "model_field_validation.missing": "required", "extra_forbidden": "structure"}


def structure_problems(resource: dict[str, Any], path: str | None = None) -> list[Problem]:
    """Every structural problem fhir.resources finds, and every value of the wrong JSON type or outside a required
    binding (which its models let through: see :mod:`gateway.fhir.json_types`), each with a FHIRPath expression."""
    root = path or str(resource.get("resourceType") or "Resource")
    kinds = resource_type_problems(resource, root)
    if kinds:   # the models would fail on it with their own words (or Python's), at the resource's root
        return kinds + json_type_problems(resource, root)
    try:
        typed = json_type_problems(resource, root)
        validate_structure(resource)
    except ValidationError as exc:
        seen = {p.fhir_path for p in typed}
        return typed + [problem for problem in (
            Problem(_path(root, error.get("loc") or ()), _message(error), code=_CODES.get(error.get("type", ""),
                                                                                          "value"))
            for error in exc.errors(include_url=False, include_input=False)) if problem.fhir_path not in seen]
    except RecursionError:
        return [Problem(root, "the resource nests too deeply to check", code="too-costly")]
    except (KeyError, LookupError, TypeError, ValueError) as exc:
        return [Problem(root, f"not a FHIR resource this server knows: {quoted(exc, bare=True)}", code="structure")]
    return typed


def resource_type_problems(resource: dict[str, Any], root: str) -> list[Problem]:
    """A resourceType that names no resource type, of the resource or of one it contains, said where it is."""
    problems = []
    contained = resource.get("contained")
    for where, item in [(root, resource), *((f"{root}.contained[{index}]", item) for index, item in
                                            enumerate(contained if isinstance(contained, list) else []))]:
        if not isinstance(item, dict):
            continue   # json_type_problems says a contained resource is an object
        problem = _resource_type_problem(item.get("resourceType", _MISSING), f"{where}.resourceType")
        if problem is not None:
            problems.append(problem)
    return problems


_MISSING = object()


def _resource_type_problem(kind: Any, where: str) -> Problem | None:
    if kind is _MISSING:
        return Problem(where, "a resource names its type in resourceType, and this one has none", code="required")
    if not isinstance(kind, str):
        return Problem(where, "expected a JSON string naming a resource type here, not "
                              f"{JSON_NAMES.get(type(kind), 'this')}", code="structure")
    found = resource_kind(kind)
    if found == "resource":
        return None
    shown = quoted(kind, 64)
    why = {"abstract": f"{shown} is the abstract base of resources; name the resource's own type (Patient, "
                       "Coverage, Organization ...)",
           "datatype": f"{shown} is a FHIR data type, not a resource type"}.get(found,
                                                                                 f"{shown} is not a FHIR resource type")
    return Problem(where, why, code="structure")


def invariant_problems(resource: dict[str, Any], path: str | None = None) -> list[Problem]:
    """What the models do not check: an id of at most 64 characters, contained resources with ids of their own
    that no other contained resource shares (a ``#id`` must name one), and none of their own (dom-2)."""
    root = path or str(resource.get("resourceType") or "Resource")
    problems = []
    if isinstance(resource.get("id"), str) and len(resource["id"]) > 64:
        problems.append(Problem(f"{root}.id", "an id is at most 64 characters", code="value"))
    seen: set[str] = set()
    contained = resource.get("contained")
    for index, item in enumerate(contained if isinstance(contained, list) else []):   # else the model reports it
        if not isinstance(item, dict):
            continue   # the model reports it
        where = f"{root}.contained[{index}]"
        local = item.get("id")
        if isinstance(local, str) and len(local) > 64:
            problems.append(Problem(f"{where}.id", "an id is at most 64 characters", code="value"))
        if not local:
            problems.append(Problem(f"{where}.id", "a contained resource needs an id to be referenced by",
                                    code="required"))
        elif isinstance(local, str) and local in seen:   # an id of another JSON type: the model reports it
            ref = f"'#{local}'" if len(str(local)) <= QUOTE_LIMIT else quoted(f"#{local}", QUOTE_LIMIT + 1)
            problems.append(Problem(f"{where}.id", f"another contained resource has the id {quoted(local)}: a {ref} "
                                    "reference would be ambiguous", code="structure"))
        if isinstance(local, str):
            seen.add(local)
        if item.get("contained"):
            problems.append(Problem(f"{where}.contained", "a contained resource cannot contain others (dom-2)",
                                    code="structure"))
    return problems


def payload_problems(request: dict[str, Any], bundle: dict[str, Any] | None) -> list[Problem]:
    """Every structural problem of a request and, when it came in one, of its Bundle (its own elements, then each
    entry's resource), with FHIRPaths from where the client sent them."""
    problems = structure_problems(request) + invariant_problems(request)   # the request's paths start at it
    if bundle is not None:   # the Bundle's own elements (its entries' resources are checked one by one)
        entries = bundle.get("entry")
        bare = {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                                    for e in entries]} if isinstance(entries, list) else bundle
        problems.extend(structure_problems(bare, "Bundle"))
    for index, entry in enumerate((bundle or {}).get("entry") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("fullUrl", ""), str):
            problems.append(Problem(f"Bundle.entry[{index}]", "an entry is an object whose fullUrl is a string",
                                    code="structure"))
            continue
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource is not request:
            problems.extend(structure_problems(resource, f"Bundle.entry[{index}].resource"))
            problems.extend(invariant_problems(resource, f"Bundle.entry[{index}].resource"))
    return problems


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


def json_shape(value: Any, limit: int) -> tuple[bool, bool]:
    """(nests deeper than ``limit``, holds an element that is null or ``[]``). Level by level: a recursive walk
    would fail on exactly the input it guards against. FHIR JSON leaves an element out instead; a null inside
    an array is allowed (a primitive array's place-holder beside its ``_name`` extensions), and so is ``{}``
    (EHRs send ``"insurer": {}``, which the service reads as absent)."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 1
    empty = False
    while level:
        if depth > limit:
            return True, empty
        deeper = []
        for item in level:
            if isinstance(item, dict):
                values = item.values()
                empty = empty or None in values
            else:
                values = item
                empty = empty or not item
            deeper.extend(v for v in values if isinstance(v, (dict, list)))
        level = deeper
        depth += 1
    return False, empty
