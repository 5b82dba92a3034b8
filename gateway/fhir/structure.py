"""Structural checks of incoming FHIR resources (fhir.resources), as translation problems with FHIRPath."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from pydantic import ValidationError

from gateway.errors import QUOTE_LIMIT, quoted
from gateway.fhir.json_types import JSON_NAMES, NOT_A_RESOURCE, json_type_problems
from gateway.fhir.models import resource_kind, validate_structure
from gateway.translate.errors import Problem
from gateway.translate.references import sent_at

MAX_DEPTH = 48   # FHIR resources nest a dozen levels; deeper input is refused before validation
# pydantic field names that differ from the FHIR element names
_RENAMED = {"resource_type": "resourceType", "class_fhir": "class", "import_fhir": "import"}
_CODES = {"missing": "required", "model_field_validation.missing": "required", "extra_forbidden": "structure"}
# FHIR R4's id type is [A-Za-z0-9\-\.]{1,64} (datatypes.html#id); the models check the characters, but allow 255
MAX_ID = 64
ID_TOO_LONG = f"an id is at most {MAX_ID} characters"
_ID_PATTERN = r"^[A-Za-z0-9\-.]+$"   # the models' (and their error's) pattern for an id
# FHIR R4 Bundle invariants (bundle.html#invs), which the models do not check: the Bundle types whose entries have a
# request (bdl-3: mandatory for these, otherwise prohibited) or a response (bdl-4), a search (bdl-2) or a total (bdl-1)
_WITH_REQUEST = ("batch", "transaction", "history")
_WITH_RESPONSE = ("batch-response", "transaction-response", "history")
_WITH_TOTAL = ("searchset", "history")


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
        found = []
        for error in exc.errors(include_url=False, include_input=False):
            where = _path(root, error.get("loc") or ())
            # a value of the wrong JSON type (or a null) was said at its own path: what the model then finds in it,
            # or says of the array around a null, is the same problem in its words
            if where in seen or _within(where, seen) or (error.get("type") == "list_type" and _around(where, seen)):
                continue
            found.append(Problem(where, _message(error, resource, error.get("loc") or ()),
                                 code=_CODES.get(error.get("type", ""), "value")))
        return typed + found
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
    if isinstance(resource.get("id"), str) and len(resource["id"]) > MAX_ID:
        problems.append(Problem(f"{root}.id", ID_TOO_LONG, code="value"))
    seen: set[str] = set()
    contained = resource.get("contained")
    for index, item in enumerate(contained if isinstance(contained, list) else []):   # else the model reports it
        if not isinstance(item, dict):
            continue   # the model reports it
        where = f"{root}.contained[{index}]"
        local = item.get("id")
        if isinstance(local, str) and len(local) > MAX_ID:
            problems.append(Problem(f"{where}.id", ID_TOO_LONG, code="value"))
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


def own_problems(resource: dict[str, Any], root: str, items: str) -> list[Problem]:
    """Every structural problem of a wrapper's own elements: a Bundle's (``items`` "entry") or a Parameters'
    (``items`` "parameter"), each of its ``items`` without the ``resource`` it holds (checked on its own, with the
    paths of where it is used), and an id of at most 64 characters, which the models let through up to 255. A Bundle
    is held to FHIR R4's invariants bdl-1, 2, 3, 4 and 7 as well (the models check none of them)."""
    listed = resource.get(items)
    bare = {**resource, items: [{k: v for k, v in item.items() if k != "resource"} if isinstance(item, dict) else item
                                for item in listed]} if isinstance(listed, list) else resource
    problems = structure_problems(bare, root)
    if isinstance(resource.get("id"), str) and len(resource["id"]) > MAX_ID:   # said as FHIR says it, not as 255
        where = f"{root}.id"
        problems = [p for p in problems if p.fhir_path != where] + [Problem(where, ID_TOO_LONG, code="value")]
    if items == "entry":
        problems.extend(_bundle_invariant_problems(resource, root, {p.fhir_path for p in problems}))
    return problems


def _bundle_invariant_problems(bundle: dict[str, Any], root: str, said: set[str]) -> list[Problem]:
    """FHIR R4's Bundle invariants bdl-1, 2, 3, 4 and 7, each at the element that breaks it (the entry's own for
    bdl-2, 3, 4 and 7). An element already said to be wrong (``said``) is not said again, and what depends on the
    Bundle's type is left unsaid while the type itself is wrong: it would only repeat that."""
    problems = []
    kind = bundle.get("type")
    typed = isinstance(kind, str) and f"{root}.type" not in said
    if typed and bundle.get("total") is not None and kind not in _WITH_TOTAL and f"{root}.total" not in said:
        problems.append(Problem(f"{root}.total", f"total is only for a search or history Bundle, not a {kind} (bdl-1)",
                                code="structure"))
    entries = bundle.get("entry")
    full_urls: dict[str, list[Any]] = {}   # fullUrl -> the versionIds of the entries under it
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue   # the structural check says so
        where = f"{root}.entry[{index}]"
        if typed:
            if entry.get("search") is not None and kind != "searchset" and f"{where}.search" not in said:
                problems.append(Problem(f"{where}.search", f"entry.search is only for a search result (a searchset "
                                        f"Bundle), not an entry of a {kind} (bdl-2)", code="structure"))
            for element, kinds, what in (("request", _WITH_REQUEST, "batch, transaction or history"),
                                         ("response", _WITH_RESPONSE, "batch-response, transaction-response or "
                                                                      "history")):
                present = entry.get(element) is not None
                if present == (kind in kinds) or f"{where}.{element}" in said:
                    continue
                invariant = "bdl-3" if element == "request" else "bdl-4"
                problems.append(Problem(f"{where}.{element}", f"an entry of a {kind} Bundle needs its {element} "
                                        f"({invariant})", code="required") if not present else
                                Problem(f"{where}.{element}", f"entry.{element} is only for a {what} Bundle, not an "
                                        f"entry of a {kind} ({invariant})", code="structure"))
        url = entry.get("fullUrl")
        if kind != "history" and isinstance(url, str) and url:   # a history Bundle holds versions of one resource
            resource = entry.get("resource")
            meta = resource.get("meta") if isinstance(resource, dict) else None
            version = meta.get("versionId") if isinstance(meta, dict) else None
            seen = full_urls.setdefault(url, [])
            if seen and (version is None or version in seen or None in seen):
                problems.append(Problem(f"{where}.fullUrl", f"another entry has the fullUrl {quoted(url)}: a reference "
                                        "to it would be ambiguous (bdl-7)", code="structure"))
            seen.append(version)
    return problems


def payload_problems(request: dict[str, Any], bundle: dict[str, Any] | None) -> list[Problem]:
    """Every structural problem of a request and, when it came in one, of its Bundle (its own elements, then each
    entry's resource), with FHIRPaths from where the client sent them: all at ``Bundle`` when it came in one (the
    request's own at its entry, ``Bundle.entry[0].resource.status``), so that one answer has one root."""
    problems = structure_problems(request) + invariant_problems(request)   # the request's paths start at it
    if problems and bundle is not None:   # said from its entry (found only for a refusal)
        kind = str(request.get("resourceType"))
        problems = _moved(problems, kind, sent_at(request, bundle).get(id(request), kind))
    said: set[str] = set()
    if bundle is not None:   # the Bundle's own elements and invariants (its entries' resources one by one, below)
        own = own_problems(bundle, "Bundle", "entry")
        problems.extend(own)
        said = {p.fhir_path for p in own}
    for index, entry in enumerate((bundle or {}).get("entry") or []):
        where = f"Bundle.entry[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("fullUrl", ""), str):
            # the Bundle's own check says so at the entry or its fullUrl: once is enough (a fullUrl of another type
            # leaves the entry's resource in use, by its type and id, so it is checked below all the same)
            if not {where, f"{where}.fullUrl"} & said:
                problems.append(Problem(where, "an entry is an object whose fullUrl is a string", code="structure"))
            if not isinstance(entry, dict):
                continue
        resource = entry.get("resource")
        if "resource" in entry and not isinstance(resource, dict):
            # the Bundle's own check leaves the entries' resources out: read as absent, its references were
            # looked for elsewhere (and fetched from the EHR when its host is allowed)
            problems.append(Problem(f"{where}.resource", "expected a JSON object here (a resource), not "
                                    f"{JSON_NAMES.get(type(resource), 'this')}", code="structure"))
            continue
        if resource is None and not entry.get("request") and not entry.get("response"):
            problems.append(Problem(f"{where}.resource", "an entry without a request or response holds a resource "
                                    "(bdl-5)", code="required"))
            continue
        if isinstance(resource, dict) and resource is not request:
            problems.extend(structure_problems(resource, f"{where}.resource"))
            problems.extend(invariant_problems(resource, f"{where}.resource"))
    return problems


def _moved(problems: list[Problem], root: str, to: str) -> list[Problem]:
    """``problems`` with each path starting at ``root`` (``CoverageEligibilityRequest.status``) said from ``to``
    (``Bundle.entry[0].resource.status``)."""
    def move(path: str) -> str:
        return to + path[len(root):] if path == root or path.startswith((f"{root}.", f"{root}[")) else path

    return [dataclasses.replace(p, fhir_path=move(p.fhir_path), also=tuple(move(a) for a in p.also))
            for p in problems]


def _path(root: str, loc: tuple[Any, ...]) -> str:
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("__root__", "root") or str(part).startswith("function-"):   # pydantic's, not FHIR's
            continue
        else:
            out += f".{_RENAMED.get(str(part), part)}"
    return out


def _within(path: str, paths: set[str]) -> bool:
    """Whether ``path`` lies inside one of ``paths`` (an element or array entry under it)."""
    return any(path.startswith((outer + ".", outer + "[")) for outer in paths)


def _around(path: str, paths: set[str]) -> bool:
    """Whether one of ``paths`` lies inside ``path``."""
    return any(inner.startswith((path + ".", path + "[")) for inner in paths)


# the fhir.resources checks of FHIR's primitive formats, and what FHIR says each is (datatypes.html)
_FORMATS = {
    "Date value string does not match spec regex.": "not a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD (years 0001 to "
                                                    "9999)",
    "DateTime value string does not match spec regex.": "not a FHIR dateTime: YYYY, YYYY-MM, YYYY-MM-DD or "
                                                        "YYYY-MM-DDThh:mm:ss(.sss) with its time zone (Z or +hh:mm; "
                                                        "years 0001 to 9999)",
    "Instant value string does not match spec regex.": "not a FHIR instant: YYYY-MM-DDThh:mm:ss(.sss) with its time "
                                                       "zone (Z or +hh:mm; years 0001 to 9999)",
    "Time value string does not match spec regex.": "not a FHIR time: hh:mm:ss(.sss)",
}
_PATTERNS = {
    _ID_PATTERN: f"not a FHIR id: 1 to {MAX_ID} letters, digits, '-' and '.'",
    r"^[^\s]+(\s[^\s]+)*$": "not a FHIR code: not empty, no white space at either end and no two white space "
                             "characters in a row",
    "[ \r\n\t\\S]+": "not a FHIR string: it holds nothing but white space other than spaces, tabs and line "
                       "breaks",
}
_PYTHON_TYPES = {"<class 'bool'>": "a boolean", "<class 'int'>": "a number", "<class 'float'>": "a number",
                 "<class 'str'>": "a string", "<class 'list'>": "an array", "<class 'dict'>": "an object",
                 "<class 'NoneType'>": "null"}
_CHOICE = re.compile(r"Any of one field value is expected from this list \[(.*)\], but got multiple")


def _message(error: dict[str, Any], resource: Any = None, loc: tuple[Any, ...] = ()) -> str:
    """The model's complaint in the words of FHIR JSON: no Python types, regular expressions or class names; a
    string value the format check refused is quoted."""
    kind = error.get("type", "")
    context = error.get("ctx") or {}
    reason = str(context.get("error") or "")
    value = _at(resource, loc)
    this = f"{quoted(value, 40)} is " if isinstance(value, str) else ""
    if kind in ("missing", "model_field_validation.missing"):
        return "this element is required"
    if kind == "json_invalid":   # a string where an object belongs: pydantic tried to read the string as JSON
        return "expected a JSON object here, not a string"
    if kind == "extra_forbidden":
        return "this element is not part of the resource"
    if reason in _FORMATS:
        return this + _FORMATS[reason]
    if kind in ("date_from_datetime_parsing", "datetime_from_date_parsing", "date_parsing", "datetime_parsing"):
        return f"{this}not a date that exists" + (f": {reason}" if reason else "")
    if kind == "date_from_datetime_inexact":
        return f"{this}not a FHIR date: a date has no time of day"
    if kind in ("string_pattern_mismatch", "string_too_short") and value == "":
        return "an empty string is not a FHIR value: leave the element out"
    if kind == "less_than_equal":   # an integer is a 32-bit signed number in FHIR
        return f"larger than this element allows (at most {context.get('le')})"
    if kind == "greater_than_equal":
        return f"smaller than this element allows (at least {context.get('ge')})"
    if kind == "string_too_long":
        return f"{this}longer than the {context.get('max_length')} characters this element takes"
    if kind == "string_pattern_mismatch":
        pattern = str(context.get("pattern") or "")
        return this + _PATTERNS.get(pattern, f"not of the form this element takes (the pattern {pattern})")
    if kind == "string_too_short" and str(context.get("min_length")) == "1":
        return "an empty string is not a FHIR value: leave the element out"
    if kind == "string_unicode":
        return "not Unicode text (a lone surrogate?)"
    if kind in ("model_validation_format", "model_type"):
        wanted = context.get("model_class") or context.get("class_name") or ""
        got = _PYTHON_TYPES.get(str(context.get("type")), "")
        return f"expected a JSON object here ({wanted})" + (f", not {got}" if got else "")
    if kind == "list_type" and str(error.get("msg", "")).startswith("None is not allowed"):
        return "null is not a FHIR JSON value in this array (only as a place-holder beside the extensions of a " \
               "primitive array)"
    if kind == "fhir-validation-wrong-resource-type":
        return NOT_A_RESOURCE
    choice = _CHOICE.search(reason or str(error.get("msg", "")))
    if choice:
        return _choice_message(re.findall(r"'([^']+)'", choice.group(1)), _at(resource, loc))
    return str(error.get("msg") or kind)


def _at(value: Any, loc: tuple[Any, ...]) -> Any:
    """The object at a pydantic location inside ``value`` (None when it cannot be followed)."""
    for part in loc:
        part = _RENAMED.get(part, part) if isinstance(part, str) else part
        if part in ("__root__", "root"):
            continue
        if isinstance(value, dict) and isinstance(part, str):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            return None
    return value


def _choice_message(names: list[str], holder: Any) -> str:
    """A choice element (``value[x]``, ``serviced[x]``) given more than once: which of its names were given."""
    stem = os.path.commonprefix(names) if names else ""
    while stem and stem[-1].isupper():   # valueDate, valueDateTime: the stem is value
        stem = stem[:-1]
    given = [name for name in names if isinstance(holder, dict) and name in holder]
    shown = f"{', '.join(given[:-1])} and {given[-1]}" if len(given) > 1 else "more than one of its names"
    return f"{stem}[x] takes one value, and {shown} were given" if stem else f"{shown} were given: give only one"


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
