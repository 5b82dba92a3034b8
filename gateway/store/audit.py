"""The audit store: every eligibility transaction, written step by step, and FHIR search over it.

The gateway calls ``record_request`` before it contacts the payer (so a crash or a timeout loses
nothing), ``record_sent`` once the 270 has gone out and ``record_answer`` with whatever came back.
Nothing here logs: the rows hold protected health information.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import bindparam, create_engine, delete, event, func, inspect, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection, StaticPool

from gateway.store.checkpoint import SAFETY_FRAMES, Checkpointer
from gateway.store.dbapi import DBAPIWriter
from gateway.store.errors import (
    ConditionTakenError,
    DuplicateRecordError,
    RecordStateError,
    SearchError,
    StoreError,
    UnknownRecordError,
)
from gateway.store.migrate import (
    ensure_sqlite_folder,
    is_memory_sqlite,
    normalize_url,
    revisions,
    sqlite_file,
    upgrade,
    upgrade_engine,
)
from gateway.store.models import EligibilityRecord, RecordIdentifier
from gateway.store.search import REQUEST_PARAMS, RESPONSE_PARAMS, build, fhir_datetime_bounds

RESPONSE_TYPE = "CoverageEligibilityResponse"
PURGE_BATCH = 500
SQLITE_POOL_SIZE = 32       # connections kept open to a SQLite file (as many again may be opened under a burst)
BUSY_TIMEOUT_SECONDS = 30   # how long a SQLite connection waits for a lock before it gives up
SQLITE_SPARE_WRITERS = 4    # SQLite connections the two writes of a round trip keep out of the pool (see DBAPIWriter)
_WRITES = "fhir_x12_writes"   # execution option of the connections that write (see _sqlite_begin)
_BUSY_HANDLER_OFF = "fhir_x12_busy_handler_off"   # in a SQLite connection's info: a writer left it so
_RECORDS = EligibilityRecord.__table__
_IDENTIFIERS = RecordIdentifier.__table__
# built once: statement construction, not SQLite, was most of an answer's write
_ANSWER_COLUMNS = ("x12_response", "response", "outcome", "aaa_codes", "http_status", "answered_at", "error", "status",
                   "response_id", "response_identifiers", "response_created", "response_created_end",
                   "duration_ms")
_REQUEST_COLUMNS = ("id", "status", "request", "resolved", "payer_id", "trace", "aaa_codes", "patient_ref",
                    "insurer_ref", "provider_ref", "request_status", "request_identifiers", "response_identifiers",
                    "created", "created_end", "received_at", "x12_request", "sent_at", "create_condition")
_IDENTIFIER_COLUMNS = ("transaction_id", "kind", "system", "value")
_ANSWER_LOOKUP = select(_RECORDS.c.received_at, _RECORDS.c.response_identifiers).where(
    _RECORDS.c.id == bindparam("rid"))
_FORGET_RESPONSE_IDENTIFIERS = delete(_IDENTIFIERS).where(_IDENTIFIERS.c.transaction_id == bindparam("rid"),
                                                          _IDENTIFIERS.c.kind == "response")
# a failed transaction frees its If-None-Exist condition: the client's retry under it is a new create, not a match
_FREE_CONDITION = _RECORDS.update().where(_RECORDS.c.id == bindparam("rid")).values(create_condition=None)
_NOT_SENT = _RECORDS.update().where(_RECORDS.c.id == bindparam("rid")).values(sent_at=None)
_ANSWER_UPDATE = _RECORDS.update().where(_RECORDS.c.id == bindparam("rid")).values(
    {name: bindparam(name, type_=_RECORDS.c[name].type) for name in _ANSWER_COLUMNS})


class AuditStore:
    """Eligibility transactions in a SQLite file or PostgreSQL (``postgresql+psycopg://``), migrated on open."""

    def __init__(self, url: str, *, background_checkpoints: bool = True, migrate: bool = True) -> None:
        """``background_checkpoints``: a SQLite file's WAL is checkpointed by a thread of its own (see
        :mod:`gateway.store.checkpoint`); ``False`` leaves it to the committing writer, as SQLite does.
        ``migrate=False``: only a store that exists and is migrated opens (StoreError otherwise): maintenance
        (a purge) pointed at a mistyped path must fail, not create an empty store and report it clean."""
        url = normalize_url(url)
        backend = make_url(url).get_backend_name()
        kwargs: dict[str, Any] = {}
        memory = is_memory_sqlite(url)
        self._sqlite_file = sqlite_file(url)
        if not migrate and not memory:   # before anything opens it: a file that is no store is left untouched
            _check_migrated(url, self._sqlite_file)
        if backend == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_SECONDS}
            if memory:
                kwargs["poolclass"] = StaticPool  # one shared connection, or every thread sees its own database
            else:
                if migrate:
                    ensure_sqlite_folder(url)
                # a gevent worker has dozens of requests in flight: with the default 5 pooled connections every
                # one beyond them was opened (file, WAL index, pragmas) and closed again for a single commit
                kwargs["pool_size"], kwargs["max_overflow"] = SQLITE_POOL_SIZE, SQLITE_POOL_SIZE
        else:
            kwargs["pool_pre_ping"] = True
        if not memory and migrate:
            upgrade(url)
        # orjson: the rows carry whole FHIR resources, and the stdlib encoder was a third of a write
        # hide_parameters: bound values (member ids, names) never appear in exception text or logs
        self.engine: Engine = create_engine(url, json_serializer=_json_dumps, json_deserializer=orjson.loads,
                                            hide_parameters=True, **kwargs)
        self.checkpointer: Checkpointer | None = None
        if backend == "postgresql":
            event.listen(self.engine, "connect", _postgres_utc)
        if backend == "sqlite":
            background = background_checkpoints and not memory
            event.listen(self.engine, "connect", _sqlite_pragmas(memory, SAFETY_FRAMES if background else None))
            if not memory:
                event.listen(self.engine, "begin", _sqlite_begin)
            if background:
                args, options = self.engine.dialect.create_connect_args(self.engine.url)
                options = {**options, "check_same_thread": False, "isolation_level": None}
                self.checkpointer = Checkpointer(lambda: sqlite3.connect(*args, **options))
        if memory:
            upgrade_engine(self.engine)
        elif backend == "sqlite":
            with self.engine.connect():   # WAL from the start: set later, it could meet another process's lock
                pass
        self._sqlite_inode = os.stat(self._sqlite_file).st_ino if self._sqlite_file is not None else None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # the connections that write: on a SQLite file they take the write lock up front, waiting without
        # blocking the worker (see _sqlite_begin); elsewhere the option means nothing
        self._writer = self.engine.execution_options(**{_WRITES: True})
        # the two writes of every round trip skip Connection.execute's per-call machinery (see store.dbapi)
        sqlite_file_store = backend == "sqlite" and not memory
        fast = DBAPIWriter(self.engine, _begin_immediate if sqlite_file_store else None,
                           spare=SQLITE_SPARE_WRITERS if sqlite_file_store else 0)
        self.dbapi_writer = fast
        self._insert_record = fast.compile(_RECORDS.insert(), column_keys=_REQUEST_COLUMNS)
        self._insert_identifiers = fast.compile(_IDENTIFIERS.insert(), column_keys=_IDENTIFIER_COLUMNS, many=True)
        self._answer_lookup = fast.compile(_ANSWER_LOOKUP, results=(_RECORDS.c.received_at,
                                                                    _RECORDS.c.response_identifiers))
        self._answer_update = fast.compile(_ANSWER_UPDATE)
        self._forget_response_identifiers = fast.compile(_FORGET_RESPONSE_IDENTIFIERS)
        self._not_sent = fast.compile(_NOT_SENT)
        self._free_condition = fast.compile(_FREE_CONDITION)

    def _check_file(self) -> None:
        """A SQLite file must still be the one opened: deleted or replaced, the connections' writes go to an inode
        no one will read again, and the request would be sent with no record of it (StoreError: a 503)."""
        if self._sqlite_file is None:
            return
        try:
            same = os.stat(self._sqlite_file).st_ino == self._sqlite_inode
        except OSError:
            same = False
        if not same:
            raise StoreError("the SQLite database file is gone (deleted or replaced since the store was opened)")

    def check(self) -> None:
        """Raise when the store cannot serve requests: its table must answer (a dropped schema still connects), and
        a SQLite file must still be the one opened."""
        self._check_file()
        with self.engine.connect() as connection:
            connection.execute(select(_RECORDS.c.id).limit(1))

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.dbapi_writer.close()
        self.engine.dispose()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------
    def record_request(self, id: str, request: dict[str, Any], resolved: dict[str, Any] | None, payer_id: str,
                       trace: str, received_at: datetime, *, x12_request: str | None = None,
                       sent_at: datetime | None = None, condition: str | None = None,
                       references: Mapping[str, Any] | None = None) -> None:
        """Store an accepted CoverageEligibilityRequest before the payer is called.

        Status ``received``; or ``sent`` when the 270 about to go out is given too (one commit instead of two).
        ``condition``: the If-None-Exist it is created under; one already stored raises :class:`ConditionTakenError`
        (another process's create under the same condition won the race). ``references``: the patient, insurer and
        provider references search finds it by, where they differ from the stored request's (a resource the
        client sent in the Bundle is contained in the stored copy, but searched by the client's ``Type/id``).
        """
        self._check_file()
        refs = {**request, **(references or {})}
        identifiers = _identifiers(request.get("identifier"))
        created, created_end = fhir_datetime_bounds(request.get("created")) or (None, None)
        row = dict(
            id=id, status="sent" if x12_request is not None else "received", request=request, resolved=resolved,
            payer_id=payer_id, trace=trace, aaa_codes=[], patient_ref=_reference(refs.get("patient")),
            insurer_ref=_reference(refs.get("insurer")), provider_ref=_reference(refs.get("provider")),
            request_status=_string(request.get("status")), request_identifiers=[_joined(i) for i in identifiers],
            response_identifiers=[], created=created, created_end=created_end, received_at=received_at,
            x12_request=x12_request, sent_at=sent_at if x12_request is not None else None,
            create_condition=condition,
        )
        try:
            with self.dbapi_writer.transaction() as transaction:
                transaction.execute(self._insert_record, row)
                if identifiers:
                    transaction.execute_many(self._insert_identifiers, [
                        {"transaction_id": id, "kind": "request", "system": s, "value": v} for s, v in identifiers])
        except IntegrityError:
            with self.sessions() as session:
                if session.get(EligibilityRecord, id) is not None:
                    raise DuplicateRecordError(id) from None
                if condition is not None and session.scalar(
                        select(EligibilityRecord.id).where(EligibilityRecord.create_condition == condition)):
                    raise ConditionTakenError(condition) from None
            raise  # neither: a required value is missing

    def record_sent(self, id: str, x12_request: str, sent_at: datetime) -> None:
        """The 270 is going to the payer: only a transaction still ``received`` (one the client cancelled meanwhile,
        in any process, raises :class:`RecordStateError` and must not be sent)."""
        with self._writer.begin() as connection:
            done = connection.execute(_RECORDS.update().where(_RECORDS.c.id == id, _RECORDS.c.status == "received")
                                      .values(x12_request=x12_request, sent_at=sent_at, status="sent"))
            if done.rowcount == 0:
                status = connection.execute(select(_RECORDS.c.status).where(_RECORDS.c.id == id)).scalar()
                if status is None:
                    raise UnknownRecordError(id)
                raise RecordStateError(id, status)

    def cancel(self, id: str, at: datetime, outcome: dict[str, Any]) -> str | None:
        """Cancel a transaction that has not been sent: it becomes ``cancelled`` with ``outcome`` (an
        OperationOutcome) as its error, and its status URL is released (``released_at``). Returns ``"cancelled"`` when
        this call cancelled it, ``"gone"`` when it was cancelled before (two DELETEs at once: one of them did it),
        the status that stopped it (``sent``, ``answered`` ...: nothing changes), or None for an unknown id. Atomic
        against ``record_sent`` and against another cancel."""
        if not _storable(id):
            return None
        with self._writer.begin() as connection:
            found = connection.execute(select(_RECORDS.c.status, _RECORDS.c.received_at, _RECORDS.c.request)
                                       .where(_RECORDS.c.id == id)).first()
            if found is None:
                return None
            # the stored CoverageEligibilityRequest says so too (fm-status cancelled), to reads and status search,
            # and its meta.lastUpdated moves with the change (Last-Modified, _sort=_lastUpdated)
            meta = found.request.get("meta") if isinstance(found.request.get("meta"), dict) else {}
            request = {**found.request, "status": "cancelled",
                       "meta": {**meta, "lastUpdated": _aware(at).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}
            done = connection.execute(_RECORDS.update().where(_RECORDS.c.id == id, _RECORDS.c.status == "received")
                                      .values(status="cancelled", outcome="cancelled", error=outcome, answered_at=at,
                                              duration_ms=_milliseconds(found.received_at, at), request=request,
                                              request_status="cancelled", released_at=at, create_condition=None))
            if done.rowcount == 0:
                status = connection.execute(select(_RECORDS.c.status).where(_RECORDS.c.id == id)).scalar()
                return "gone" if status == "cancelled" else status
            return "cancelled"

    def release(self, id: str, at: datetime) -> bool:
        """The client is done with a finished transaction's asynchronous status URL (FHIR's DELETE on it): True when
        released now; False when it was already, or is not finished (``answered`` or ``failed``), or is unknown.
        The record stays; only ``released_at`` is set."""
        if not _storable(id):
            return False
        with self._writer.begin() as connection:
            done = connection.execute(_RECORDS.update().where(
                _RECORDS.c.id == id, _RECORDS.c.status.in_(("answered", "failed")), _RECORDS.c.released_at.is_(None))
                .values(released_at=at))
            return done.rowcount == 1

    def record_answer(self, id: str, *, x12_response: str | None, response: dict[str, Any] | None,
                      outcome: str | None, aaa_codes: list[str], http_status: int, answered_at: datetime,
                      error: dict[str, Any] | None = None, sent: bool = True) -> None:
        """What came back (271, 999 or TA1) and what the gateway answered; ``failed`` when ``error`` is given.

        ``sent=False``: the 270 never left (circuit open, no free slot): its ``sent_at`` is cleared.
        """
        is_response = isinstance(response, dict) and response.get("resourceType") == RESPONSE_TYPE
        identifiers = _identifiers(response.get("identifier")) if is_response else []
        created: tuple[datetime | None, datetime | None] = (None, None)
        if is_response:   # without a created of its own: when it came, an instant
            created = fhir_datetime_bounds(response.get("created")) or (answered_at, answered_at)
        try:
            with self.dbapi_writer.transaction() as transaction:
                found = transaction.first(self._answer_lookup, {"rid": id})
                if found is None:
                    raise UnknownRecordError(id)
                received_at, answered_identifiers = found
                if answered_identifiers:   # answered before: its identifiers are replaced
                    transaction.execute(self._forget_response_identifiers, {"rid": id})
                transaction.execute(self._answer_update, {
                    "rid": id, "x12_response": x12_response, "response": response,
                    "outcome": outcome if outcome is not None else (
                        _string(response.get("outcome")) if is_response else None),
                    "aaa_codes": list(aaa_codes), "http_status": http_status, "answered_at": answered_at,
                    "error": error, "status": "failed" if error is not None else "answered",
                    "response_id": _string(response.get("id")) if is_response else None,
                    "response_identifiers": [_joined(i) for i in identifiers],
                    "response_created": created[0], "response_created_end": created[1],
                    "duration_ms": _milliseconds(received_at, answered_at)})
                if not sent:
                    transaction.execute(self._not_sent, {"rid": id})
                if error is not None:
                    transaction.execute(self._free_condition, {"rid": id})
                if identifiers:
                    transaction.execute_many(self._insert_identifiers, [
                        {"transaction_id": id, "kind": "response", "system": s, "value": v} for s, v in identifiers])
        except IntegrityError:
            raise StoreError(f"transaction {id!r}: the response id is already stored for another transaction") \
                from None

    # -- retention ------------------------------------------------------------------------------------
    def purge(self, before: datetime, *, batch: int = PURGE_BATCH, dry_run: bool = False) -> int:
        """Delete the transactions received before ``before`` (with their identifiers); how many there were.

        In batches of ``batch``, one commit each, oldest first: a live gateway writing to the same store waits
        for one short batch at a time, never for the whole purge. ``dry_run`` only counts them.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        before = _aware(before)
        old = _RECORDS.c.received_at < before
        if dry_run:
            with self.engine.connect() as connection:
                return connection.execute(select(func.count()).select_from(_RECORDS).where(old)).scalar_one()
        purged = 0
        while True:
            with self._writer.begin() as connection:
                ids = list(connection.execute(select(_RECORDS.c.id).where(old).order_by(_RECORDS.c.received_at)
                                              .limit(batch)).scalars())
                if not ids:
                    return purged
                connection.execute(delete(_IDENTIFIERS).where(_IDENTIFIERS.c.transaction_id.in_(ids)))
                connection.execute(delete(_RECORDS).where(_RECORDS.c.id.in_(ids)))
            purged += len(ids)
            if len(ids) < batch:
                return purged

    # -- reading --------------------------------------------------------------------------------------
    def record(self, id: str) -> EligibilityRecord | None:
        """The whole row (detached), identifiers included."""
        if not _storable(id):
            return None
        with self.sessions() as session:
            return session.scalars(select(EligibilityRecord).where(EligibilityRecord.id == id)
                                   .options(selectinload(EligibilityRecord.identifiers))).first()

    def get_request(self, id: str) -> dict[str, Any] | None:
        """The CoverageEligibilityRequest as received, with the id the gateway gave it."""
        if not _storable(id):
            return None
        with self.sessions() as session:
            row = session.execute(select(EligibilityRecord.request).where(EligibilityRecord.id == id)).first()
        return None if row is None else {**row.request, "id": id}

    def get_response(self, response_id: str) -> dict[str, Any] | None:
        if not _storable(response_id):
            return None
        with self.sessions() as session:
            row = session.execute(select(EligibilityRecord.response)
                                  .where(EligibilityRecord.response_id == response_id)).first()
        return None if row is None else row.response

    def search_requests(self, params: Mapping[str, Iterable[str]], count: int, offset: int, *,
                        until: datetime | None = None, created_only: bool = False) -> tuple[list[dict], int]:
        """CoverageEligibilityRequests matching ``params`` (FHIR query values): one page and the total.

        ``until``: only those received by then, so the pages of one search stay put while requests keep coming.
        ``created_only``: leave out the failed and the cancelled (a conditional create's search: the client was told
        those were not created, so its retry must create again rather than be answered with them).
        """
        conditions, order = build(params, REQUEST_PARAMS, EligibilityRecord.created, EligibilityRecord.id,
                                  EligibilityRecord.received_at)
        if until is not None:
            conditions.append(EligibilityRecord.received_at <= _aware(until))
        if created_only:
            conditions.append(EligibilityRecord.status.not_in(("failed", "cancelled")))
        rows, total = self._page(select(EligibilityRecord.id, EligibilityRecord.request), conditions, order,
                                 count, offset)
        return [{**row.request, "id": row.id} for row in rows], total

    def search_responses(self, params: Mapping[str, Iterable[str]], count: int, offset: int, *,
                         until: datetime | None = None) -> tuple[list[dict], int]:
        """CoverageEligibilityResponses matching ``params``: one page and the total (``until``: answered by then)."""
        conditions, order = build(params, RESPONSE_PARAMS, EligibilityRecord.response_created,
                                  EligibilityRecord.response_id, EligibilityRecord.answered_at)
        conditions.insert(0, EligibilityRecord.response_id.is_not(None))
        if until is not None:
            conditions.append(EligibilityRecord.answered_at <= _aware(until))
        rows, total = self._page(select(EligibilityRecord.response), conditions, order, count, offset)
        return [row.response for row in rows], total

    # -- helpers --------------------------------------------------------------------------------------
    def _page(self, query: Any, conditions: list, order: list, count: int, offset: int) -> tuple[list, int]:
        if count < 0:
            raise SearchError("_count", "must not be negative")
        if offset < 0:
            raise SearchError("_offset", "must not be negative")
        with self.sessions() as session:
            total = session.scalar(select(func.count()).select_from(EligibilityRecord).where(*conditions)) or 0
            rows = [] if count == 0 else session.execute(
                query.where(*conditions).order_by(*order).offset(offset).limit(count)).all()
        return rows, total

    @staticmethod
    def _get(session: Session, id: str) -> EligibilityRecord:
        record = session.get(EligibilityRecord, id)
        if record is None:
            raise UnknownRecordError(id)
        return record


def _check_migrated(url: str, sqlite_path: Path | None) -> None:
    """StoreError unless ``url`` holds an audit store at this version's schema. A SQLite file is read in read-only
    mode, so one that is not a store (another application's, say) is refused as it was found: no WAL, no pragmas."""
    known = revisions()
    if sqlite_path is not None:
        if not sqlite_path.is_file():
            raise StoreError(f"there is no audit store at {sqlite_path}")
        try:
            with closing(sqlite3.connect(f"{sqlite_path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
                has_table = connection.execute("select 1 from sqlite_master where type = 'table' and name = "
                                               "'alembic_version'").fetchone() is not None
                found = [row[0] for row in connection.execute("select version_num from alembic_version")] \
                    if has_table else []
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{sqlite_path} is not a SQLite database the gateway can read ({exc})") from None
    else:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:   # a server that cannot be reached fails here, as itself
                found = connection.execute(text("select version_num from alembic_version")).scalars().all() \
                    if inspect(connection).has_table("alembic_version") else []
        finally:
            engine.dispose()
    if found == known[:1]:
        return
    if not found:
        raise StoreError("the database holds no audit store (no migrations have run there); check the URL, or run "
                         "`fhir-x12 store migrate` to create one")
    if found[0] in known:
        raise StoreError(f"the audit store is at schema {found[0]}, this version's is {known[0]}: run "
                         "`fhir-x12 store migrate` first")
    raise StoreError(f"the audit store is at schema {found[0]}, newer than this version of the gateway knows "
                     f"({known[0]})")


def _sqlite_begin(connection: Connection) -> None:
    """Begin a transaction on a SQLite file: ``BEGIN IMMEDIATE`` for a writer, waited for cooperatively.

    SQLite's own wait for the write lock (its busy handler) sleeps in C, 1, 2, 5, 10 ... ms at a time: under a
    gevent worker nothing else runs meanwhile, so every request in flight in that process stalled while another
    process committed (under load each worker spent about a fifth of its time so; the tail of the gateway's
    latency). The lock is taken at BEGIN instead, with the busy handler off, and while another process holds
    it this thread sleeps in Python (``time.sleep``: a greenlet switch under gevent, the GIL released under
    threads), 0.2 ms doubling to 4 ms, up to the connection's usual timeout. Readers begin a plain (deferred)
    transaction: in WAL mode they never wait for a writer, save in rare moments (another process recovering the
    WAL, say) when their busy handler, on again for them, waits as SQLite's does."""
    pooled = connection.connection
    if connection.get_execution_options().get(_WRITES):
        _begin_immediate(pooled)
        return
    raw = pooled.dbapi_connection
    if pooled.info.get(_BUSY_HANDLER_OFF):   # last used by a writer (see _begin_immediate)
        raw.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        pooled.info[_BUSY_HANDLER_OFF] = False
    raw.execute("BEGIN")


def _begin_immediate(pooled: PoolProxiedConnection) -> None:
    """``BEGIN IMMEDIATE`` on a pooled sqlite3 connection, waiting for the write lock cooperatively (see
    _sqlite_begin).

    The busy handler is turned off for the wait and left off afterwards: a connection that holds the write lock
    never calls it in WAL mode (SQLite consults it only to begin a transaction: nothing inside one, its COMMIT,
    nor the PASSIVE checkpoint a commit may run waits for a lock), so a connection that writes again and again
    (most of them: two writes per round trip) pays for no PRAGMA at all. A reader turns it on again
    (_sqlite_begin); the connection's ``info`` says which it is, and is cleared with a connection replaced."""
    raw = pooled.dbapi_connection
    if not pooled.info.get(_BUSY_HANDLER_OFF):
        raw.execute("PRAGMA busy_timeout=0")
        pooled.info[_BUSY_HANDLER_OFF] = True
    delay, deadline = 0.0002, time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() + delay > deadline:
                raise OperationalError("BEGIN IMMEDIATE", None, exc) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.004)


def _sqlite_pragmas(memory: bool, autocheckpoint: int | None) -> Any:
    def connect(dbapi_connection: Any, _record: Any) -> None:
        if not memory:   # no implicit BEGIN from the driver: _sqlite_begin begins every transaction
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            if not memory:
                # readers do not block the writer. Switching needs an exclusive lock (and fails at once while
                # another process writes), so only when the file is not in WAL mode yet: the store's first
                # connection, made when it opens (below)
                if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    cursor.execute("PRAGMA journal_mode=WAL")
                # in WAL mode NORMAL still survives a crash of the process (the gateway's concern: a
                # request stored before the payer call stays stored); only a power cut may lose the
                # last commits, and it saves an fsync per commit (three per transaction)
                cursor.execute("PRAGMA synchronous=NORMAL")
                if autocheckpoint is not None:   # the background checkpointer does it; this is the safety net
                    cursor.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
        finally:
            cursor.close()

    return connect


def _postgres_utc(dbapi_connection: Any, _record: Any) -> None:
    """Sessions in UTC: psycopg reads a timestamptz in the session's zone, where the stored extremes
    (0001-01-01T00:00:00Z, 9999-12-31T23:59:59.999999Z: see ``models.to_utc``) fall outside years 1-9999."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET TIME ZONE 'UTC'")
    finally:
        cursor.close()
    dbapi_connection.commit()   # a SET inside a transaction that is rolled back would be undone


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _reference(value: Any) -> str | None:
    """``reference``, else ``system|value`` of an identifier-only reference (``|value`` without a system)."""
    if not isinstance(value, dict):
        return None
    reference = _string(value.get("reference"))
    if reference:
        return reference
    identifier = value.get("identifier")
    if isinstance(identifier, dict) and _string(identifier.get("value")):
        return f"{_string(identifier.get('system')) or ''}|{identifier['value']}"
    return None


def _identifiers(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return []
    return [(_string(i.get("system")) or "", i["value"]) for i in value
            if isinstance(i, dict) and _string(i.get("value"))]


def _joined(identifier: tuple[str, str]) -> str:
    return f"{identifier[0]}|{identifier[1]}"


def _milliseconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (_aware(end) - _aware(start)).total_seconds() * 1000.0


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value  # naive means UTC, as in the columns


def _storable(id: str) -> bool:
    """Whether ``id`` could be stored at all: PostgreSQL's text holds no NUL (it refuses the query itself, which the
    API would answer as the store being down, 503), and no id the gateway gives has one. Looked up, such an id is
    simply not known, in every store alike."""
    return "\x00" not in id
