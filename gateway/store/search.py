"""FHIR search over the audit store: query values -> SQLAlchemy conditions.

What is supported (anything else raises :class:`SearchError`, so the API can answer 400):

- CoverageEligibilityRequest: ``_id patient status created insurer provider identifier``;
  CoverageEligibilityResponse: ``_id request patient outcome created insurer identifier``
  (``patient`` and ``insurer`` of a response are those of the request it answers).
- A value list separated by commas is an OR; a repeated parameter is an AND (FHIR search rules).
- Dates (``created``): prefixes ``eq ne gt ge lt le``. As FHIR R4 says, both the search value and the
  stored value are ranges given by their precision (``2024`` the year, ``2024-03`` the month, a plain date
  the whole day, ``...T10:00:00Z`` the second, an instant its microsecond; no offset means UTC). Each range is
  kept as its first and last instant (``created``/``created_end``). With the target ``[ts, te]`` and the
  search value ``[ss, se]``: ``eq`` = ``ss <= ts and te <= se`` (the search range contains the target's),
  ``ne`` = not ``eq``, ``gt`` = ``te > se``, ``lt`` = ``ts < ss``, ``ge`` = ``gt or eq``, ``le`` = ``lt or
  eq``. Ranges reaching past what can be stored (before 0001-01-01T00:00:00Z, after
  9999-12-31T23:59:59.999999Z) are cut to it: ``le9999-12-31`` is the usual "no upper bound".
- References: ``Type/id``, a bare ``id`` (of any target type), absolute URLs, ``urn:uuid:`` and
  ``system|value`` for identifier-only references; modifiers ``:identifier`` (token rules) and the
  target type (``patient:Patient=123``).
- Tokens: ``code`` or ``system|code``; ``identifier`` takes ``value``, ``system|value``, ``|value``
  (no system) and ``system|`` (any value).
- ``:missing=true|false`` on every parameter; ``_sort=created`` or ``-created`` (newest first by default), or
  ``_lastUpdated`` / ``-_lastUpdated`` (when the gateway stored it).
- ``_count _offset _format _pretty _total`` are accepted and ignored here (paging is the caller's).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute

from gateway.errors import quoted
from gateway.store.errors import SearchError
from gateway.store.models import EligibilityRecord, RecordIdentifier, to_utc

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
    """The first and the last instant (both included, microsecond resolution) of the range a FHIR date,
    dateTime or instant covers at its precision, in UTC (a value without an offset is UTC).

    A range reaching past what a ``datetime`` holds is cut to ``models.UTC_MIN`` / ``UTC_MAX`` (so
    ``9999-12-31`` ends at ``UTC_MAX`` and ``0001-01-01T00:00:00+01:00`` is ``UTC_MIN`` at both ends).
    Raises ValueError when ``text`` is not a FHIR date or dateTime (or names a day that does not exist,
    such as year 0000).
    """
    match = _DATETIME.fullmatch(text.strip())
    if not match:
        raise ValueError("not a FHIR date or dateTime")
    year_text, month_text, day_text, hour_text, minute_text, second_text, fraction, offset = match.groups()
    zone = _zone(offset)
    year = int(year_text)
    # built in their zone with positional arguments: datetime.replace with keywords cost a microsecond a call
    if month_text is None:
        first, last = datetime(year, 1, 1, 0, 0, 0, 0, zone), datetime(year, 12, 31, 23, 59, 59, 999999, zone)
    elif day_text is None:
        month = int(month_text)
        first = datetime(year, month, 1, 0, 0, 0, 0, zone)
        last = datetime(year, month, calendar.monthrange(year, month)[1], 23, 59, 59, 999999, zone)
    else:
        month, day = int(month_text), int(day_text)
        if hour_text is None:
            first = datetime(year, month, day, 0, 0, 0, 0, zone)
            last = datetime(year, month, day, 23, 59, 59, 999999, zone)
        elif second_text is None:
            hour, minute = int(hour_text), int(minute_text)
            first = datetime(year, month, day, hour, minute, 0, 0, zone)
            last = datetime(year, month, day, hour, minute, 59, 999999, zone)
        else:
            hour, minute, second = int(hour_text), int(minute_text), int(second_text)
            digits = (fraction or "")[1:7]  # finer than a microsecond: the microsecond it falls in
            micro = int(digits.ljust(6, "0")) if digits else 0
            first = datetime(year, month, day, hour, minute, second, micro, zone)
            last = datetime(year, month, day, hour, minute, second, micro + 10 ** (6 - len(digits)) - 1, zone)
    # every step above stays inside one calendar unit: only the move to UTC can leave the years 1-9999
    return to_utc(first), to_utc(last)


def fhir_datetime_bounds(value: Any) -> tuple[datetime, datetime] | None:
    """First and last instant (UTC) of a stored FHIR dateTime's range; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return parse_datetime_range(value)
    except (ValueError, OverflowError):
        return None


@cache   # at most 2 x 15 x 60 offsets are valid (the invalid raise, and are not kept)
def _zone(text: str | None) -> timezone:
    """The zone of an offset (``Z``, ``+05:30``): kept once made, a timedelta with keywords and a timezone cost
    more than the rest of a created's parsing."""
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


def date_condition(first: Any, last: Any, raw: str, param: str) -> ColumnElement[bool]:
    """A stored range ``[first, last]`` (columns, both included) against one date search value (FHIR R4 rules)."""
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
    except (ValueError, OverflowError):
        raise SearchError(param, "not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or "
                                 "YYYY-MM-DDThh:mm[:ss[.sss]][Z|+hh:mm], optionally after a prefix; "
                                 "years 0001 to 9999)") from None
    if prefix == "eq":   # the search range contains the target's
        return and_(first >= start, last <= end)
    if prefix == "ne":
        return or_(first < start, last > end)
    if prefix == "gt":   # the target reaches past the search range
        return last > end
    if prefix == "lt":   # the target begins before the search range
        return first < start
    if prefix == "ge":   # gt or eq
        return or_(last > end, first >= start)
    return or_(first < start, last <= end)  # le: lt or eq


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


def _date_param(first: InstrumentedAttribute[Any], last: InstrumentedAttribute[Any]) -> Param:
    return Param(lambda value, _m, param: date_condition(first, last, value, param), lambda: first.is_not(None))


def _identifier_param(kind: str) -> Param:
    return Param(lambda value, _m, _p: identifier_condition(kind, value),
                 lambda: exists(select(RecordIdentifier.id).where(
                     RecordIdentifier.transaction_id == EligibilityRecord.id, RecordIdentifier.kind == kind)))


def _id_param(column: InstrumentedAttribute[Any]) -> Param:
    return Param(lambda value, _m, _p: column == unescape(value), lambda: column.is_not(None))


def _request_of_response(value: str, modifier: str | None, _param: str) -> ColumnElement[bool]:
    if modifier == "identifier":   # the request named by its business identifier (what the client gave it)
        return identifier_condition("request", value)
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
    "created": _date_param(R.created, R.created_end),
    "insurer": _reference_param(R.insurer_ref, ("Organization",)),
    "provider": _reference_param(R.provider_ref, PROVIDER_TYPES),
    "identifier": _identifier_param("request"),
}

RESPONSE_PARAMS: dict[str, Param] = {
    "_id": _id_param(R.response_id),
    "request": Param(_request_of_response, lambda: true(), ("CoverageEligibilityRequest", "identifier")),
    "patient": _reference_param(R.patient_ref, ("Patient",)),
    "outcome": _code_param(R.outcome, REMITTANCE_OUTCOME),
    "created": _date_param(R.response_created, R.response_created_end),
    "insurer": _reference_param(R.insurer_ref, ("Organization",)),
    "identifier": _identifier_param("response"),
}


MAX_VALUES = 100   # search values in one search, all parameters together


def build(params: Mapping[str, Iterable[str]], spec: Mapping[str, Param], created: InstrumentedAttribute[Any],
          key: InstrumentedAttribute[Any], updated: InstrumentedAttribute[Any] | None = None,
          ) -> tuple[list[ColumnElement[bool]], list]:
    """WHERE conditions and ORDER BY for one search; raises SearchError for anything unsupported. ``updated`` is
    the column ``_sort=_lastUpdated`` orders by (when the resource has one)."""
    conditions: list[ColumnElement[bool]] = []
    order: list = [created.desc().nulls_last(), key.desc()]
    asked = 0
    for name, values in params.items():
        values = [values] if isinstance(values, str) else list(values)
        # every value (a comma is an OR) is a condition to compile: 50,000 of them held a worker for 46 s, and
        # SQLite refuses a few hundred ORs ("expression tree is too large") as if the store were down
        asked += sum(len(split_escaped(v, ",")) for v in values if isinstance(v, str) and v)
        if asked > MAX_VALUES:
            raise SearchError(name, f"a search takes at most {MAX_VALUES} values in all (a comma-separated list "
                              "counts each); split it into several searches", code="too-costly")
        base, _, modifier = name.partition(":")
        if base in IGNORED_PARAMS and not modifier:
            continue
        if base == "_sort" and not modifier:
            order = _sort(values, created, key, updated)
            continue
        param = spec.get(base)
        if param is None:
            supported = ", ".join(sorted(spec))
            raise SearchError(name, f"unknown search parameter (supported: {supported}, _sort, _count)")
        if modifier and modifier != "missing" and modifier not in param.modifiers:
            raise SearchError(name, f"modifier {quoted(modifier)} is not supported")
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


def _sort(values: list[str], created: InstrumentedAttribute[Any], key: InstrumentedAttribute[Any],
          updated: InstrumentedAttribute[Any] | None = None) -> list:
    keys = [k for value in values for k in value.split(",") if k]
    if not keys:
        return [created.desc().nulls_last(), key.desc()]
    columns = {"created": created, **({"_lastUpdated": updated} if updated is not None else {})}
    if len(keys) > 1 or keys[0].lstrip("-") not in columns:
        shown = " and ".join(f"'{name}' or '-{name}'" for name in columns)
        raise SearchError("_sort", f"one sort key: {shown}")
    column = columns[keys[0].lstrip("-")]
    if keys[0].startswith("-"):
        return [column.desc().nulls_last(), key.desc()]
    return [column.asc().nulls_last(), key.asc()]
