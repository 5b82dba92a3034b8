"""The audit store's tables: one row per eligibility transaction, plus its identifiers for search.

The schema is created and changed only by the Alembic migrations in ``migrations/`` (written by hand);
``tests/store`` checks that the migrated schema and these models agree.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

TRANSACTION_STATUSES = ("received", "sent", "answered", "failed", "cancelled")
UTC_MIN = datetime.min.replace(tzinfo=UTC)  # the earliest and the latest instant a column (and Python) holds
UTC_MAX = datetime.max.replace(tzinfo=UTC)


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC (naive means UTC already), cut to ``[UTC_MIN, UTC_MAX]`` where it would overflow.

    ``0001-01-01T00:00:00+01:00`` is before the first representable UTC instant, and
    ``9999-12-31T23:59:59-05:00`` after the last: they become UTC_MIN and UTC_MAX.
    """
    if value.tzinfo is UTC:   # most are: astimezone would parse its arguments to return it as it is
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:   # only the offset can carry it out of range: east of UTC early, west late
        return UTC_MIN if (value.utcoffset() or timedelta(0)) > timedelta(0) else UTC_MAX


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC and always read back aware (SQLite keeps no offset).

    A naive value is taken to be UTC already; an aware one too early or too late for UTC is cut to
    UTC_MIN / UTC_MAX (see :func:`to_utc`) rather than failing the write.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = to_utc(value)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name == "sqlite":
            return sqlite_utc_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:   # the same fields in UTC: replace(tzinfo=UTC) parses keywords, at twice the cost
            return datetime.combine(value.date(), value.time(), UTC)
        return value.astimezone(UTC)


_TWO_DIGITS = tuple(f"{n:02d}" for n in range(100))


def sqlite_utc_text(value: datetime | None) -> str | None:
    """The text SQLite's DATETIME stores for ``value`` in UTC: ``2025-03-10 14:15:00.000000``, always 26 characters.

    What ``process_bind_param`` followed by the SQLite dialect's own processor gives, in one step: that way took
    two ``datetime.replace`` calls (slow with keyword arguments) and a ``%`` format of a dict of seven fields, and
    even ``isoformat`` (through ``PyUnicode_FromFormat``) costs twice these two-digit pieces put together; seven
    datetime columns are written per round trip.
    """
    if value is None:
        return None
    if value.tzinfo is not UTC and value.tzinfo is not None:
        value = to_utc(value)
    two = _TWO_DIGITS
    year, micro = value.year, value.microsecond
    return (f"{two[year // 100]}{two[year % 100]}-{two[value.month]}-{two[value.day]} "
            f"{two[value.hour]}:{two[value.minute]}:{two[value.second]}."
            f"{two[micro // 10000]}{two[micro // 100 % 100]}{two[micro % 100]}")


class Base(DeclarativeBase):
    pass


class EligibilityRecord(Base):
    """One eligibility transaction: what came in, what went to the payer, what came back, and when."""

    __tablename__ = "eligibility_transactions"
    __table_args__ = (
        Index("ix_eligibility_transactions_created", "created"),
        Index("ix_eligibility_transactions_patient_ref", "patient_ref"),
        Index("ix_eligibility_transactions_insurer_ref", "insurer_ref"),
        Index("ix_eligibility_transactions_response_id", "response_id", unique=True),
        Index("ix_eligibility_transactions_response_created", "response_created"),
        Index("ix_eligibility_transactions_created_end", "created_end"),   # date search by range (0003)
        Index("ix_eligibility_transactions_response_created_end", "response_created_end"),
        Index("ix_eligibility_transactions_trace", "trace"),
        Index("ix_eligibility_transactions_received_at", "received_at"),   # retention: purge by age (0002)
        # one create per If-None-Exist condition, across processes; partial: the plain creates (most) skip it (0004)
        Index("ix_eligibility_transactions_create_condition", "create_condition", unique=True,
              sqlite_where=text("create_condition IS NOT NULL"), postgresql_where=text("create_condition IS NOT NULL")),
    )

    # the CoverageEligibilityRequest id the gateway assigns
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # received | sent | answered | failed | cancelled
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # the CER as received
    resolved: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # e.g. a Bundle
    x12_request: Mapped[str | None] = mapped_column(Text, nullable=True)  # the 270
    x12_response: Mapped[str | None] = mapped_column(Text, nullable=True)  # the 271, 999 or TA1
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # CERsp or OperationOutcome
    response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payer_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)  # complete|partial|error|queued
    aaa_codes: Mapped[list[str]] = mapped_column(JSON)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # OperationOutcome
    trace: Mapped[str | None] = mapped_column(String(80), nullable=True)  # TRN02
    # the SHA-256 of the If-None-Exist condition it was created under, unique: two creates racing under one
    # condition store one request, not two (0004)
    create_condition: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # search columns, extracted when the request (and the answer) is saved
    patient_ref: Mapped[str | None] = mapped_column(String, nullable=True)
    insurer_ref: Mapped[str | None] = mapped_column(String, nullable=True)
    provider_ref: Mapped[str | None] = mapped_column(String, nullable=True)
    request_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    request_identifiers: Mapped[list[str]] = mapped_column(JSON)  # "system|value"
    response_identifiers: Mapped[list[str]] = mapped_column(JSON)
    # a created is the range its precision gives (2025-03-10 is the whole day): its first instant, by
    # which results are sorted, and its last (included); UTC, cut to what a column holds (0003)
    created: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # CER.created
    created_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # CERsp.created; without one, when the answer came (an instant: end == start)
    response_created: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    response_created_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # timings
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # when the client DELETEd the asynchronous status URL (a cancel, or done with a finished one): that URL then
    # answers 404; the record itself stays (0005)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    identifiers: Mapped[list[RecordIdentifier]] = relationship(
        back_populates="record", cascade="all, delete-orphan", passive_deletes=True)


class RecordIdentifier(Base):
    """One identifier of a transaction's request or response, kept apart so ``identifier`` searches are exact."""

    __tablename__ = "eligibility_identifiers"
    __table_args__ = (
        Index("ix_eligibility_identifiers_kind_value", "kind", "value"),
        Index("ix_eligibility_identifiers_transaction_id", "transaction_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("eligibility_transactions.id", ondelete="CASCADE",
                               name="fk_eligibility_identifiers_transaction_id"))
    kind: Mapped[str] = mapped_column(String(8))  # request | response
    system: Mapped[str] = mapped_column(String)  # "" when the identifier has no system
    value: Mapped[str] = mapped_column(String)

    record: Mapped[EligibilityRecord] = relationship(back_populates="identifiers")
