"""FHIR search over the audit store: query values -> SQLAlchemy conditions.

What is supported (anything else raises :class:`SearchError`, so the API can answer 400):

- CoverageEligibilityRequest: ``_id patient status created insurer provider identifier``;
  CoverageEligibilityResponse: ``_id request patient outcome created insurer identifier``
  (``patient`` and ``insurer`` of a response are those of the request it answers).
- A value list separated by commas is an OR; a repeated parameter is an AND (FHIR search rules).
- Dates (``created``): prefixes ``eq ne gt ge lt le``; a value is the range its precision implies (a
  plain date is the whole day, ``2024-03`` the month; no offset means UTC); the stored ``created`` is
  an instant: ``eq`` = inside the range, ``ge`` = at or after its start, ``gt`` = at or after its
  end, ``le`` = before its end, ``lt`` = before its start.
- References: ``Type/id``, a bare ``id`` (of any target type), absolute URLs, ``urn:uuid:`` and
  ``system|value`` for identifier-only references; modifiers ``:identifier`` (token rules) and the
  target type (``patient:Patient=123``).
- Tokens: ``code`` or ``system|code``; ``identifier`` takes ``value``, ``system|value``, ``|value``
  (no system) and ``system|`` (any value).
- ``:missing=true|false`` on every parameter; ``_sort=created`` or ``-created`` (newest first by default).
- ``_count _offset _format _pretty _total`` are accepted and ignored here (paging is the caller's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute

from gateway.store.errors import SearchError
from gateway.store.models import EligibilityRecord, RecordIdentifier

IGNORED_PARAMS = frozenset({"_count", "_offset", "_format", "_pretty", "_total"})
FM_STATUS = "http://hl7.org/fhir/fm-status"
REMITTANCE_OUTCOME = "http://hl7.org/fhir/remittance-outcome"
DATE_PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le")

_DATETIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_PREFIX = re.compile(r"([a-z]{2})(?=\d)")
_ABSOLUTE_TAIL = re.compile(r"/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


# -- values ---------------------------------------------------------------------------------------

def parse_datetime_range(text: str) -> tuple[datetime, datetime]:
    """The range ``[start, end)`` a FHIR date/dateTime/instant covers at its precision (UTC when no offset).

    Raises ValueError when ``text`` is not one.
    """
    match = _DATETIME.fullmatch(text.strip())
    if not match:
        raise ValueError("not a FHIR date or dateTime")
    g = match.groupdict()
    tz = _zone(g["tz"])
    year = int(g["year"])
    if g["month"] is None:
        return datetime(year, 1, 1, tzinfo=tz), datetime(year + 1, 1, 1, tzinfo=tz)
    month = int(g["month"])
    if g["day"] is None:
        start = datetime(year, month, 1, tzinfo=tz)
        return start, (datetime(year + 1, 1, 1, tzinfo=tz) if month == 12 else datetime(year, month + 1, 1, tzinfo=tz))
    day = date(year, month, int(g["day"]))
    if g["hour"] is None:
        start = datetime(day.year, day.month, day.day, tzinfo=tz)
        return start, start + timedelta(days=1)
    hour, minute = int(g["hour"]), int(g["minute"])
    if g["second"] is None:
        start = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
        return start, start + timedelta(minutes=1)
    fraction = g["fraction"] or ""
    digits = fraction[1:7]
    micro = int(digits.ljust(6, "0")) if digits else 0
    start = datetime(day.year, day.month, day.day, hour, minute, int(g["second"]), micro, tzinfo=tz)
    step = timedelta(microseconds=10 ** (6 - len(digits))) if digits else timedelta(seconds=1)
    return start, start + step


def parse_fhir_datetime(value: Any) -> datetime | None:
    """The instant a stored FHIR dateTime stands for (the start of its range), in UTC; None when unusable."""
    if not isinstance(value, str):
        return None
    try:
        return parse_datetime_range(value)[0].astimezone(UTC)
    except ValueError:
        return None


def _zone(text: str | None) -> timezone:
    if not text or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("bad timezone offset")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is not escaped with a backslash (escapes are kept)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\([\\,$|])", r"\1", text)


def token(text: str) -> tuple[str | None, str]:
    """``(system, code)`` of a token value: ``code`` -> (None, code); ``|code`` -> ("", code)."""
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        return None, unescape(parts[0])
    return unescape(parts[0]), unescape("|".join(parts[1:]))


# -- conditions -------------------------------------------------------------------------------------

def _ends_with(column: Any, suffix: str) -> ColumnElement[bool]:
    # portable and case-sensitive (SQLite's LIKE is not)
    n = len(suffix)
    return and_(func.length(column) >= n, func.substr(column, func.length(column) - (n - 1)) == suffix)


def _starts_with(column: Any, prefix: str) -> ColumnElement[bool]:
    return func.substr(column, 1, len(prefix)) == prefix


def reference_condition(column: Any, value: str, types: tuple[str, ...]) -> ColumnElement[bool]:
    """A stored reference string matches a reference search value."""
    value = unescape(value)
    if "|" in value or value.startswith(("#", "urn:")):
        return column == value
    if "/" not in value:  # a bare id: any of the target types
        options: list[ColumnElement[bool]] = [column == value]
        for kind in types:
            options += [column == f"{kind}/{value}", _ends_with(column, f"/{kind}/{value}")]
        return or_(*options)
    if "://" in value:
        tail = _ABSOLUTE_TAIL.search(value)
        if tail:
            return or_(column == value, column == f"{tail.group(1)}/{tail.group(2)}")
        return column == value
    return or_(column == value, _ends_with(column, "/" + value))


def reference_identifier_condition(column: Any, value: str) -> ColumnElement[bool]:
    """``:identifier`` on a reference stored as ``system|value`` (identifier-only references)."""
    system, code = token(value)
    if system is None:
        return or_(column == f"|{code}", _ends_with(column, f"|{code}"))
    if code == "":
        return _starts_with(column, f"{system}|")
    return column == f"{system}|{code}"


def code_condition(column: Any, value: str, code_system: str) -> ColumnElement[bool]:
    system, code = token(value)
    if system not in (None, "", code_system):
        return false()
    if code == "":
        return column.is_not(None)
    return column == code


def identifier_condition(kind: str, value: str) -> ColumnElement[bool]:
    system, code = token(value)
    clauses: list[ColumnElement[bool]] = [RecordIdentifier.transaction_id == EligibilityRecord.id,
                                          RecordIdentifier.kind == kind]
    if system is not None:
        clauses.append(RecordIdentifier.system == system)
    if code != "":
        clauses.append(RecordIdentifier.value == code)
    return exists(select(RecordIdentifier.id).where(*clauses))


def date_condition(column: Any, raw: str, param: str) -> ColumnElement[bool]:
    raw = raw.replace(" ", "+")  # an unencoded "+" in a query string arrives as a space
    prefix = "eq"
    match = _PREFIX.match(raw)
    if match:
        prefix = match.group(1)
        raw = raw[2:]
        if prefix not in DATE_PREFIXES:
            raise SearchError(param, f"date prefix {prefix!r} is not supported (use one of {', '.join(DATE_PREFIXES)})")
    try:
        start, end = parse_datetime_range(raw)
    except ValueError:
        raise SearchError(param, "not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or "
                                 "YYYY-MM-DDThh:mm[:ss[.sss]][Z|+hh:mm], optionally after a prefix)") from None
    if prefix == "eq":
        return and_(column >= start, column < end)
    if prefix == "ne":
        return or_(column < start, column >= end)
    if prefix == "gt":
        return column >= end
    if prefix == "ge":
        return column >= start
    if prefix == "lt":
        return column < start
    return column < end  # le


# -- parameters -------------------------------------------------------------------------------------

Handler = Callable[[str, str | None, str], ColumnElement[bool]]  # (one value, modifier, param) -> condition


@dataclass(frozen=True)
class Param:
    handler: Handler
    missing: Callable[[], ColumnElement[bool]]  # the condition "this parameter has a value"
    modifiers: tuple[str, ...] = ()


def _reference_param(column: InstrumentedAttribute[Any], types: tuple[str, ...]) -> Param:
    def handle(value: str, modifier: str | None, param: str) -> ColumnElement[bool]:
        if modifier == "identifier":
            return reference_identifier_condition(column, value)
        if modifier is not None:  # a target type
            if "/" in value:
                raise SearchError(param, "with a type modifier the value is a plain id")
            return reference_condition(column, value, (modifier,))
        return reference_condition(column, value, types)

    return Param(handle, lambda: column.is_not(None), ("identifier", *types))


def _code_param(column: InstrumentedAttribute[Any], system: str) -> Param:
    return Param(lambda value, _m, _p: code_condition(column, value, system), lambda: column.is_not(None))


def _date_param(column: InstrumentedAttribute[Any]) -> Param:
    return Param(lambda value, _m, param: date_condition(column, value, param), lambda: column.is_not(None))


def _identifier_param(kind: str) -> Param:
    return Param(lambda value, _m, _p: identifier_condition(kind, value),
                 lambda: exists(select(RecordIdentifier.id).where(
                     RecordIdentifier.transaction_id == EligibilityRecord.id, RecordIdentifier.kind == kind)))


def _id_param(column: InstrumentedAttribute[Any]) -> Param:
    return Param(lambda value, _m, _p: column == unescape(value), lambda: column.is_not(None))


def _request_of_response(value: str, _modifier: str | None, _param: str) -> ColumnElement[bool]:
    value = unescape(value)
    if "/" not in value:
        return EligibilityRecord.id == value
    parts = value.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "CoverageEligibilityRequest":
        return EligibilityRecord.id == parts[-1]
    return false()


R = EligibilityRecord
PROVIDER_TYPES = ("Practitioner", "PractitionerRole", "Organization")

REQUEST_PARAMS: dict[str, Param] = {
    "_id": _id_param(R.id),
    "patient": _reference_param(R.patient_ref, ("Patient",)),
    "status": _code_param(R.request_status, FM_STATUS),
    "created": _date_param(R.created),
    "insurer": _reference_param(R.insurer_ref, ("Organization",)),
    "provider": _reference_param(R.provider_ref, PROVIDER_TYPES),
    "identifier": _identifier_param("request"),
}

RESPONSE_PARAMS: dict[str, Param] = {
    "_id": _id_param(R.response_id),
    "request": Param(_request_of_response, lambda: true(), ("CoverageEligibilityRequest",)),
    "patient": _reference_param(R.patient_ref, ("Patient",)),
    "outcome": _code_param(R.outcome, REMITTANCE_OUTCOME),
    "created": _date_param(R.response_created),
    "insurer": _reference_param(R.insurer_ref, ("Organization",)),
    "identifier": _identifier_param("response"),
}


def build(params: Mapping[str, Iterable[str]], spec: Mapping[str, Param], created: InstrumentedAttribute[Any],
          key: InstrumentedAttribute[Any]) -> tuple[list[ColumnElement[bool]], list]:
    """WHERE conditions and ORDER BY for one search; raises SearchError for anything unsupported."""
    conditions: list[ColumnElement[bool]] = []
    order: list = [created.desc().nulls_last(), key.desc()]
    for name, values in params.items():
        values = [values] if isinstance(values, str) else list(values)
        base, _, modifier = name.partition(":")
        if base in IGNORED_PARAMS and not modifier:
            continue
        if base == "_sort" and not modifier:
            order = _sort(values, created, key)
            continue
        param = spec.get(base)
        if param is None:
            supported = ", ".join(sorted(spec))
            raise SearchError(name, f"unknown search parameter (supported: {supported}, _sort, _count)")
        if modifier and modifier != "missing" and modifier not in param.modifiers:
            raise SearchError(name, f"modifier {modifier!r} is not supported")
        for value in values:
            if value is None or value == "":
                continue  # FHIR: a parameter without a value is ignored
            if modifier == "missing":
                if value not in ("true", "false"):
                    raise SearchError(name, "':missing' takes true or false")
                present = param.missing()
                conditions.append(not_(present) if value == "true" else present)
                continue
            options = [param.handler(part, modifier or None, name) for part in split_escaped(value, ",") if part != ""]
            if options:
                conditions.append(or_(*options) if len(options) > 1 else options[0])
    return conditions, order


def _sort(values: list[str], created: InstrumentedAttribute[Any], key: InstrumentedAttribute[Any]) -> list:
    keys = [k for value in values for k in value.split(",") if k]
    if not keys:
        return [created.desc().nulls_last(), key.desc()]
    if len(keys) > 1 or keys[0] not in ("created", "-created"):
        raise SearchError("_sort", "only 'created' and '-created' are supported")
    if keys[0] == "created":
        return [created.asc().nulls_last(), key.asc()]
    return [created.desc().nulls_last(), key.desc()]
