"""Member records of the eligibility API: validation (every problem with its JSON path) and sparse patches.

Pure: dicts in, dicts and problems out. Field names are the payer API's own and must be lowercase.
"""

from __future__ import annotations

import math
import re
from copy import deepcopy
from datetime import date
from typing import Any

from gateway.errors import quoted
from gateway.payer.answer import PAYER_DELIMITERS

CHILD_KEYS: dict[str, tuple[str, ...]] = {
    "coverages": ("covtypename",),
    "accumulators": ("accum_name", "coveragetype", "innetwork", "individualaccum"),
    "benefits": ("servicetype", "benefittype", "innetwork"),
    "priorauth": ("procedure",),
    "dependents": ("depmemberid",),
}
ACTIONS = {"n", "m", "d"}
SPECIFIC_TYPES = {"deductible", "out-of-pocket", "visit-limit", "benefit-maximum"}
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_RANGE_NORMAL = re.compile(r"^\d{4}-\d{2}-\d{2}/\d{4}-\d{2}-\d{2}$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})/(\d{4}-\d{2}-\d{2})$|^(\d{8})-(\d{8})$")
# the simulator's 271 delimiters and control characters: a value holding one would reach the 271 altered (the
# writer drops them), a URL or an id turned into another one
_UNSENDABLE = re.compile("[" + re.escape("".join(sorted(PAYER_DELIMITERS.characters()))) + "\x00-\x1f\x7f]")
# the largest amount an X12 R element (18 digits) carries with cents to spare; amounts are money, counts or percents
_MAX_AMOUNT = 1e15

# field -> kind, per level
MEMBER_FIELDS = {"memberid": "id", "groupnumber": "id", "groupname": "text", "seqnumber": "text",
                 "salary": "amount", "firstname": "text", "lastname": "text", "dob": "date", "gender": "gender",
                 "coverages": "list", "accumulators": "list", "benefits": "list", "priorauth": "list",
                 "dependents": "list", "record_action": "action"}
DEPENDENT_FIELDS = {**{k: v for k, v in MEMBER_FIELDS.items() if k not in ("memberid", "dependents")},
                    "depmemberid": "id", "relationship": "relationship"}
CHILD_FIELDS = {
    "coverages": {"covtypename": "text", "covtypedesc": "text", "coveffdate": "date", "covtermdate": "date",
                  "covvolume": "amount", "record_action": "action"},
    "accumulators": {"accum_name": "text", "accum_desc": "text", "coveragetype": "text", "specifictype": "specific",
                     "currentamount": "amount", "maximumamount": "amount", "innetwork": "yn",
                     "individualaccum": "yn", "daterange": "range", "record_action": "action"},
    "benefits": {"servicetype": "text", "benefittype": "benefittype", "amount": "amount", "percent": "percent",
                 "innetwork": "ynw", "timeperiod": "text", "record_action": "action"},
    "priorauth": {"procedure": "text", "codesystem": "text", "url": "url", "record_action": "action"},
}


def _normal_date(value: Any) -> str | None:
    match = _DATE.match(str(value)) if isinstance(value, str) else None
    if not match:
        return None
    try:
        return date(*(int(g) for g in match.groups())).isoformat()
    except ValueError:   # 2025-02-30, month 13, year 0
        return None


def _value(kind: str, value: Any, path: str, problems: list[dict[str, str]]) -> Any:
    def bad(message: str) -> None:
        problems.append({"path": path, "message": message})

    if kind in ("id", "text"):
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            bad("must be a string")
            return value
        return _sendable(str(value), bad)
    if kind in ("amount", "percent"):
        if isinstance(value, bool):
            bad("must be a number or a numeric string")
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            bad(f"{quoted(str(value), 40)} is not a number")
            return value
        highest = 100.0 if kind == "percent" else _MAX_AMOUNT
        if not math.isfinite(number) or not 0 <= number <= highest:
            bad(f"must be a number from 0 to {highest:g}" + (" (a percent)" if kind == "percent" else ""))
            return value
        return number
    if kind == "date":
        normal = _normal_date(value)
        if normal is None:
            bad(f"{quoted(value)} is not a date (YYYY-MM-DD or CCYYMMDD)")
        return normal or value
    if kind == "range":
        match = _RANGE.match(str(value)) if isinstance(value, str) else None
        if not match:
            bad(f"{quoted(value)} is not a date range (YYYY-MM-DD/YYYY-MM-DD or CCYYMMDD-CCYYMMDD)")
            return value
        start, end = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        s, e = _normal_date(start), _normal_date(end)
        if not s or not e:
            bad(f"{quoted(value)} holds an impossible date")
            return value
        return f"{s}/{e}"
    if kind in ("yn", "ynw"):
        allowed = {"Y", "N", "W"} if kind == "ynw" else {"Y", "N"}
        if not isinstance(value, str) or value.upper() not in allowed:
            bad(f"must be one of {sorted(allowed)}")
            return value
        return value.upper()
    if kind == "gender":
        if not isinstance(value, str) or value.upper() not in ("M", "F", "U"):
            bad("must be M, F or U")
            return value
        return value.upper()
    if kind == "relationship":
        if not isinstance(value, str) or value.lower() not in ("spouse", "child", "other"):
            bad("must be spouse, child or other")
            return value
        return value.lower()
    if kind == "specific":
        if not isinstance(value, str) or value.lower() not in SPECIFIC_TYPES:
            bad(f"must be one of {sorted(SPECIFIC_TYPES)}")
            return value
        return value.lower()
    if kind == "benefittype":
        if not isinstance(value, str) or value.lower() not in ("copay", "coinsurance"):
            bad("must be copay or coinsurance")
            return value
        return value.lower()
    if kind == "url":
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            bad("must be an http(s) URL")
            return value
        return _sendable(value, bad)
    if kind == "action":
        if not isinstance(value, str) or value not in ACTIONS:
            bad(f"record_action {quoted(str(value), 20)} is not n (new), m (modify) or d (delete)")
        return value
    return value


def _sendable(text: str, bad: Any) -> str:
    found = _UNSENDABLE.search(text)
    if found:
        bad(f"holds {found.group()!r}, a delimiter of the simulator's 271s or a control character: the 271 could not "
            "carry it unchanged")
    return text


def _check_object(obj: Any, fields: dict[str, str], path: str, problems: list[dict[str, str]], *,
                  patch: bool) -> dict[str, Any]:
    if not isinstance(obj, dict):
        problems.append({"path": path or "$", "message": "must be a JSON object"})
        return {}
    clean: dict[str, Any] = {}
    for key, value in obj.items():
        where = f"{path}.{key}" if path else key
        if key != key.lower():
            problems.append({"path": where, "message": f"field names must be lowercase ({quoted(key)})"})
            continue
        kind = fields.get(key)
        if kind is None:
            problems.append({"path": where, "message": f"unknown field {quoted(key)}"})
            continue
        if kind == "action" and not patch:
            problems.append({"path": where, "message": "record_action is only used in a PATCH"})
            continue
        if kind == "list":
            if not isinstance(value, list):
                problems.append({"path": where, "message": "must be a list"})
                continue
            child_fields = DEPENDENT_FIELDS if key == "dependents" else CHILD_FIELDS[key]
            items = []
            for i, item in enumerate(value):
                item_path = f"{where}[{i}]"
                checked = _check_object(item, child_fields, item_path, problems, patch=patch)
                if patch and "record_action" not in checked and isinstance(item, dict):
                    problems.append({"path": f"{item_path}.record_action", "message": "each child record of a "
                                     "PATCH needs record_action n, m or d"})
                for name in CHILD_KEYS[key]:
                    if isinstance(item, dict) and name not in item:
                        problems.append({"path": f"{item_path}.{name}", "message": f"{name} is required (a key of "
                                         f"{key})"})
                items.append(checked)
            clean[key] = items
            continue
        clean[key] = _value(kind, value, where, problems)
    return clean


def validate_record(data: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """A new member record: the normalised record and every problem (empty when it can be saved)."""
    problems: list[dict[str, str]] = []
    record = _check_object(data, MEMBER_FIELDS, "", problems, patch=False)
    for key in ("memberid", "groupnumber"):
        if isinstance(data, dict) and not data.get(key):
            problems.append({"path": key, "message": f"{key} is required"})
    problems.extend(consistency_problems(record))
    return record, problems


def consistency_problems(record: dict[str, Any]) -> list[dict[str, str]]:
    """What makes a record, each field valid on its own, answer a self-contradictory or invalid 271: dates out of
    order, more used than the limit, an accumulator of a coverage the person does not have, codes the 271 could not
    carry. Checked on a whole record (a create, a seed file, a patched record); values already reported as invalid
    are skipped."""
    problems: list[dict[str, str]] = []
    _person_problems(record, "", record.get("coverages") or [], problems)
    seen_ids: dict[str, str] = {}
    if isinstance(record.get("memberid"), str) and record["memberid"]:
        seen_ids[record["memberid"]] = "memberid"
    for i, dependent in enumerate(record.get("dependents") or []):
        if not isinstance(dependent, dict):
            continue
        where = f"dependents[{i}]"
        # a dependent without coverages of their own is answered with the subscriber's
        _person_problems(dependent, f"{where}.", dependent.get("coverages") or record.get("coverages") or [],
                         problems)
        depid = dependent.get("depmemberid")
        if isinstance(depid, str) and depid:
            if depid in seen_ids:
                problems.append({"path": f"{where}.depmemberid", "message": f"{quoted(depid)} is already the id of "
                                 f"{seen_ids[depid]}: member ids are unique (a 270 finds one person by id)"})
            else:
                seen_ids[depid] = f"{where}.depmemberid"
    return problems


def _codes() -> tuple[set[str], set[str]]:
    """X12 service type codes (1365, X279A1) and the simulator's time periods, from mappings/."""
    from gateway.mappings import code_table, load_yaml

    return set(code_table("service_type")["codes"]), set(load_yaml("payer/answers.yaml")["time_periods"])


def _person_problems(person: dict[str, Any], prefix: str, coverages: list[Any],
                     problems: list[dict[str, str]]) -> None:
    def bad(path: str, message: str) -> None:
        problems.append({"path": prefix + path, "message": message})

    for i, cov in enumerate(person.get("coverages") or []):
        if not isinstance(cov, dict):
            continue
        start, end = _normal_date(cov.get("coveffdate")), _normal_date(cov.get("covtermdate"))
        if start and end and end < start:
            bad(f"coverages[{i}].covtermdate", f"{end} is before coveffdate {start}")
    covered = {str(c.get("covtypename", "")).upper() for c in coverages if isinstance(c, dict)}
    names: dict[str, int] = {}
    for i, acc in enumerate(person.get("accumulators") or []):
        if not isinstance(acc, dict):
            continue
        where = f"accumulators[{i}]"
        current, maximum = acc.get("currentamount"), acc.get("maximumamount")
        if _number(current) and _number(maximum) and current > maximum:
            # currentamount is what was used so far (remaining = max - current): more than the limit is a
            # negative remaining amount
            bad(f"{where}.currentamount", f"{current:g} used is more than maximumamount {maximum:g}")
        span = acc.get("daterange")
        if isinstance(span, str) and _RANGE_NORMAL.match(span):
            first, last = span.split("/")
            if last < first:
                bad(f"{where}.daterange", f"{quoted(span)} ends before it starts")
        kind = acc.get("coveragetype")
        if isinstance(kind, str) and kind.upper() not in covered:
            bad(f"{where}.coveragetype", f"{quoted(kind)} is not one of this person's coverages "
                f"({', '.join(sorted(covered)) or 'none'})")
        name = acc.get("accum_name")
        if isinstance(name, str):
            if name.upper() in names:
                bad(f"{where}.accum_name", f"{quoted(name)} repeats accumulators[{names[name.upper()]}].accum_name: "
                    "accumulator names are unique within a person")
            else:
                names[name.upper()] = i
    service_types, periods = _codes()
    for i, benefit in enumerate(person.get("benefits") or []):
        if not isinstance(benefit, dict):
            continue
        where = f"benefits[{i}]"
        stc = benefit.get("servicetype")
        if isinstance(stc, str) and stc.upper() not in service_types:
            bad(f"{where}.servicetype", f"{quoted(stc)} is not an X12 service type code valid in 005010X279A1")
        period = benefit.get("timeperiod")
        if isinstance(period, str) and period.lower() not in periods:
            bad(f"{where}.timeperiod", f"{quoted(period)} is not one of {sorted(periods)}")
        kind = benefit.get("benefittype")
        if kind == "coinsurance" and "percent" not in benefit:
            bad(f"{where}.percent", "a coinsurance benefit needs percent (EB08)")
        if kind == "copay" and "amount" not in benefit:
            bad(f"{where}.amount", "a copay benefit needs amount (EB07)")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_patch(data: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """A sparse update: top-level fields replace, child records carry record_action and their keys."""
    problems: list[dict[str, str]] = []
    patch = _check_object(data, MEMBER_FIELDS, "", problems, patch=True)
    if "record_action" in patch:
        problems.append({"path": "record_action", "message": "record_action belongs to child records (coverages, "
                         "dependents ...); the member itself is created with POST and deleted with DELETE"})
    for key in ("memberid", "groupnumber"):
        if key in patch:
            problems.append({"path": key, "message": f"{key} is a key: it comes from the query, not the body"})
    return patch, problems


def _key(item: dict[str, Any], names: tuple[str, ...]) -> tuple:
    return tuple(str(item.get(n, "")).upper() for n in names)


def apply_patch(record: dict[str, Any], patch: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The record after a validated patch, or the reasons it cannot apply (nothing partial)."""
    result = deepcopy(record)
    errors: list[str] = []
    for key, value in patch.items():
        if key not in CHILD_KEYS:
            result[key] = value
            continue
        _patch_children(result, key, value, errors, key)
    return result, errors


def _patch_children(target: dict[str, Any], key: str, changes: list[dict[str, Any]], errors: list[str],
                    path: str) -> None:
    names = CHILD_KEYS[key]
    children = target.setdefault(key, [])
    for i, change in enumerate(changes):
        action = change.get("record_action")
        body = {k: v for k, v in change.items() if k != "record_action"}
        wanted = _key(body, names)
        index = next((j for j, c in enumerate(children) if _key(c, names) == wanted), None)
        where = f"{path}[{i}]"
        if action == "n":
            if index is not None:
                errors.append(f"{where}: a {key} record with {dict(zip(names, wanted, strict=True))} already exists")
                continue
            children.append({k: v for k, v in body.items() if k not in CHILD_KEYS} | {
                k: [{kk: vv for kk, vv in c.items() if kk != "record_action"} for c in v]
                for k, v in body.items() if k in CHILD_KEYS})
        elif index is None:
            errors.append(f"{where}: no {key} record with {dict(zip(names, wanted, strict=True))} to "
                          f"{'modify' if action == 'm' else 'delete'}")
        elif action == "d":
            children.pop(index)
        else:
            existing = children[index]
            for field, value in body.items():
                if field in CHILD_KEYS:
                    _patch_children(existing, field, value, errors, f"{where}.{field}")
                else:
                    existing[field] = value
