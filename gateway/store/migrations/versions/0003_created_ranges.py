"""Audit store: the last instant of each ``created`` range, so that date search follows FHIR R4.

A FHIR date is a range (``2025-03-10`` is the whole day); ``created`` and ``response_created`` keep its first
instant, the new ``created_end`` and ``response_created_end`` its last (included, UTC). Existing rows are
filled from the ``created`` of the stored resources, in Python (the precision of a FHIR date is not
something SQL can read portably), a batch of rows at a time; a row without ``created`` keeps NULL, and a
response without one of its own ends where it starts (``response_created`` is when it was answered).

The parser is a copy of the one in ``gateway/store/search.py`` as it was at this revision, so that what this
migration writes does not change when the search code does.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "eligibility_transactions"
CREATED_END = "ix_eligibility_transactions_created_end"
RESPONSE_CREATED_END = "ix_eligibility_transactions_response_created_end"
BATCH = 1000

_DATETIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


def upgrade() -> None:
    aware = sa.DateTime(timezone=True)
    op.add_column(TABLE, sa.Column("created_end", aware, nullable=True))
    op.add_column(TABLE, sa.Column("response_created_end", aware, nullable=True))
    _backfill(op.get_bind())
    # after the backfill: one index build instead of an index update per row
    op.create_index(CREATED_END, TABLE, ["created_end"])
    op.create_index(RESPONSE_CREATED_END, TABLE, ["response_created_end"])


def downgrade() -> None:
    op.drop_index(RESPONSE_CREATED_END, table_name=TABLE)
    op.drop_index(CREATED_END, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:   # SQLite: the table is rebuilt without them
        batch.drop_column("response_created_end")
        batch.drop_column("created_end")


def _backfill(connection: sa.Connection) -> None:
    aware = sa.DateTime(timezone=True)
    table = sa.table(TABLE, sa.column("id", sa.String()), sa.column("request", sa.JSON()),
                     sa.column("response", sa.JSON()), sa.column("created", aware),
                     sa.column("response_created", aware), sa.column("created_end", aware),
                     sa.column("response_created_end", aware))
    postgres = connection.dialect.name == "postgresql"
    # only the JSON texts are read: no timestamp goes through Python (nor through the session's time zone)
    query = (sa.select(table.c.id, table.c.created.is_not(None).label("has_created"),
                       table.c.request["created"].as_string().label("created_text"),
                       table.c.response_created.is_not(None).label("has_response_created"),
                       table.c.response["created"].as_string().label("response_created_text"))
             .where(sa.or_(table.c.created.is_not(None), table.c.response_created.is_not(None)))
             .order_by(table.c.id).limit(BATCH))
    set_end = table.update().where(table.c.id == sa.bindparam("rid")).values(created_end=sa.bindparam("end"))
    set_response_end = (table.update().where(table.c.id == sa.bindparam("rid"))
                        .values(response_created_end=sa.bindparam("end")))
    last_id: str | None = None
    while True:
        rows = connection.execute(query if last_id is None else query.where(table.c.id > last_id)).all()
        ends, response_ends, instants, response_instants = [], [], [], []
        for row in rows:
            if row.has_created:
                bounds = _bounds(row.created_text)
                if bounds:
                    ends.append({"rid": row.id, "end": _column(bounds[1], postgres)})
                else:   # not expected (created was read from it): an instant
                    instants.append(row.id)
            if row.has_response_created:
                bounds = _bounds(row.response_created_text)
                if bounds:
                    response_ends.append({"rid": row.id, "end": _column(bounds[1], postgres)})
                else:   # no created of its own: response_created is when it was answered, an instant
                    response_instants.append(row.id)
        if ends:
            connection.execute(set_end, ends)
        if response_ends:
            connection.execute(set_response_end, response_ends)
        if instants:
            connection.execute(table.update().where(table.c.id.in_(instants)).values(created_end=table.c.created))
        if response_instants:
            connection.execute(table.update().where(table.c.id.in_(response_instants))
                               .values(response_created_end=table.c.response_created))
        if len(rows) < BATCH:
            return
        last_id = rows[-1].id


def _column(value: datetime, postgres: bool) -> datetime:
    """A UTC value as the models' UTCDateTime stores it: naive on SQLite (which keeps no offset)."""
    return value if postgres else value.replace(tzinfo=None)


def _bounds(text: Any) -> tuple[datetime, datetime] | None:
    """First and last instant (UTC, included) of a FHIR date/dateTime's range; None when it is not one."""
    if not isinstance(text, str):
        return None
    match = _DATETIME.fullmatch(text.strip())
    if not match:
        return None
    g = match.groupdict()
    try:
        zone = _zone(g["tz"])
        year = int(g["year"])
        if g["month"] is None:
            first, last = datetime(year, 1, 1), datetime(year, 12, 31, 23, 59, 59, 999999)
        elif g["day"] is None:
            month = int(g["month"])
            first = datetime(year, month, 1)
            last = datetime(year, month, calendar.monthrange(year, month)[1], 23, 59, 59, 999999)
        else:
            day = date(year, int(g["month"]), int(g["day"]))
            if g["hour"] is None:
                first = datetime(day.year, day.month, day.day)
                last = first.replace(hour=23, minute=59, second=59, microsecond=999999)
            elif g["second"] is None:
                first = datetime(day.year, day.month, day.day, int(g["hour"]), int(g["minute"]))
                last = first.replace(second=59, microsecond=999999)
            else:
                digits = (g["fraction"] or "")[1:7]
                micro = int(digits.ljust(6, "0")) if digits else 0
                first = datetime(day.year, day.month, day.day, int(g["hour"]), int(g["minute"]), int(g["second"]),
                                 micro)
                last = first.replace(microsecond=micro + 10 ** (6 - len(digits)) - 1)
    except ValueError:
        return None
    return _utc(first.replace(tzinfo=zone)), _utc(last.replace(tzinfo=zone))


def _zone(text: str | None) -> timezone:
    if not text or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("bad timezone offset")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return _MIN if (value.utcoffset() or timedelta(0)) > timedelta(0) else _MAX
