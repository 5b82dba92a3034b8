"""FHIR JSON's own value types and required codes, which the fhir.resources models let through.

The models coerce: ``"focal": "yes"`` is read as true, ``"value": "2"`` as 2, ``"created": 20250310`` as a
timestamp, and an object given as a string of JSON is parsed. The gateway stores and serves what the client
sent, so each of those would come back out as invalid FHIR. FHIR JSON says which JSON type every element has
(booleans are ``true``/``false``, numbers are JSON numbers, everything else primitive is a string) and a code
with a required binding is one of its codes: this walk checks both against the models' own field types.
"""

from __future__ import annotations

import decimal
import types
import typing
from functools import cache
from typing import Any

from gateway.errors import quoted
from gateway.fhir.models import model_class
from gateway.translate.errors import Problem

JSON_NAMES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", dict: "an object",
               list: "an array", type(None): "null"}
NOT_A_RESOURCE = "this element is not a resource: only a resource has a resourceType"
_WANTED = {"boolean": "true or false", "integer": "a whole JSON number", "decimal": "a JSON number",
           "string": "a JSON string", "complex": "a JSON object", "resource": "a JSON object (a resource)"}


class _Field(typing.NamedTuple):
    kind: str                      # boolean | integer | decimal | string | complex | resource | other
    many: bool
    target: Any = None             # complex: the placeholder whose model is the element's type
    codes: frozenset[str] | None = None   # a required binding's codes


def json_type_problems(resource: dict[str, Any], path: str | None = None) -> list[Problem]:
    """Every value of ``resource`` whose JSON type is not its element's, and every code outside a required
    binding, each with a FHIRPath expression."""
    root = path or str(resource.get("resourceType") or "Resource")
    try:
        klass = model_class(resource["resourceType"])
    except (KeyError, LookupError, TypeError, ValueError):
        return []   # structure_problems says what is wrong with the resource type
    problems: list[Problem] = []
    _walk(resource, klass, root, problems)
    return problems


_PRIMITIVE = ("boolean", "integer", "decimal", "string")


def _walk(value: dict[str, Any], klass: Any, path: str, problems: list[Problem]) -> None:
    fields = _fields(klass)
    for name, item in value.items():
        spec = fields.get(name)
        if spec is None:
            if name == "fhir_comments":   # the models' own key for comments in JSON, not a FHIR element
                problems.append(Problem(f"{path}.{name}", "this element is not part of the resource", code="structure"))
            continue   # an unknown element: the model reports it
        where = f"{path}.{name}"
        if item is None:   # the models read a null as absent, so "coverage": null passed as if it were there
            problems.append(Problem(where, "null is not a FHIR JSON value: leave the element out", code="structure"))
            continue
        if spec.many:
            if not isinstance(item, list):
                problems.append(Problem(where, f"expected an array here, not {JSON_NAMES.get(type(item), 'this')}",
                                        code="structure"))
                continue
            # the one null FHIR JSON has: in a primitive array (given) or its extensions (_given), a place-holder
            # for a position the other array fills
            partner_name = name[1:] if name.startswith("_") else f"_{name}"
            partner = value.get(partner_name) if name.startswith("_") or spec.kind in _PRIMITIVE else None
            for index, element in enumerate(item):
                if element is not None:
                    _check(element, spec, f"{where}[{index}]", problems)
                elif not (isinstance(partner, list) and index < len(partner) and partner[index] is not None):
                    problems.append(Problem(f"{where}[{index}]", "null is not a FHIR JSON value here (only as a "
                                            f"place-holder for a value or extension at {partner_name}[{index}])",
                                            code="structure"))
        else:
            _check(item, spec, where, problems)


def _check(item: Any, spec: _Field, where: str, problems: list[Problem]) -> None:
    kind = spec.kind
    actual = type(item)
    if kind == "boolean":
        ok = actual is bool
    elif kind == "integer":
        ok = actual is int
    elif kind == "decimal":
        ok = actual in (int, float)
    elif kind == "string":
        ok = actual is str
    elif kind in ("complex", "resource"):
        ok = actual is dict
    else:
        return
    if not ok:
        problems.append(Problem(where, f"expected {_WANTED[kind]} here, not {JSON_NAMES.get(actual, 'this')}",
                                code="value"))
        return
    if kind == "string" and spec.codes is not None and item not in spec.codes:
        problems.append(Problem(where, f"{quoted(item, 40)} is not one of the codes this element allows "
                                       f"({', '.join(sorted(spec.codes))})", code="code-invalid"))
    elif kind == "complex":
        klass = spec.target.get_model_klass()
        if "resourceType" in item:   # the models take one that names the data type itself
            problems.append(Problem(f"{where}.resourceType", NOT_A_RESOURCE, code="structure"))
        _walk(item, klass, where, problems)
    elif kind == "resource":
        try:
            inner = model_class(item["resourceType"])
        except (KeyError, LookupError, TypeError, ValueError):
            return
        _walk(item, inner, where, problems)


@cache
def _fields(klass: Any) -> dict[str, _Field]:
    """JSON name -> what its value must be, for one model class (built once per class)."""
    out: dict[str, _Field] = {}
    for name, info in klass.model_fields.items():
        if name == "fhir_comments":
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        codes = extra.get("enum_values")
        out[info.alias or name] = _classify(info.annotation, frozenset(codes) if codes else None)
    return out


def _classify(annotation: Any, codes: frozenset[str] | None) -> _Field:
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return _Field("other", many)
            annotation = options[0]
        elif origin in (list, typing.List):  # noqa: UP006 - the models' own spelling
            many = True
            annotation = typing.get_args(annotation)[0]
        else:
            break
    if annotation is bool:
        return _Field("boolean", many)
    if typing.get_origin(annotation) is typing.Annotated:
        base = typing.get_args(annotation)[0]
        if base is bool:
            return _Field("boolean", many)
        if base is int:
            return _Field("integer", many)
        if base is decimal.Decimal:
            return _Field("decimal", many)
        return _Field("string", many, codes=codes)
    if hasattr(annotation, "get_model_klass"):
        if getattr(annotation, "__name__", "") == "ResourceType":
            return _Field("resource", many)
        return _Field("complex", many, target=annotation)
    return _Field("other", many)
