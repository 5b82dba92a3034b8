"""The simulator's member database and its durable operations (SQLAlchemy: SQLite file or PostgreSQL).

An accepted create, patch or delete is stored as an operation before it is answered (202), and a
worker applies it in one database transaction together with its status, so an operation whose
process dies before it ran is simply run after the restart.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, String, UniqueConstraint, create_engine, delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.event import listen
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from gateway.errors import quoted
from gateway.payer.records import apply_patch, consistency_problems

PENDING = ("notStarted", "running")
log = logging.getLogger(__name__)
_CHUNK = 500   # ids per lookup: some SQLite builds take no more than 999 bound values in one statement


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "payer_members"
    __table_args__ = (UniqueConstraint("memberid", "groupnumber"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    memberid: Mapped[str] = mapped_column(String(80), index=True)
    groupnumber: Mapped[str] = mapped_column(String(80))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)


class MemberId(Base):
    """One member id or dependent's own id on file, the member row holding it and where (``_ids``' path).

    Ids are unique across the member file. Kept in the transaction that changes the member row, this index makes
    the check of a create or patch a keyed lookup; reading every record for it made seeding N members O(N^2).
    """

    __tablename__ = "payer_member_ids"

    value: Mapped[str] = mapped_column(String, primary_key=True)
    member: Mapped[int] = mapped_column(ForeignKey(Member.id, ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String)


class Operation(Base):
    __tablename__ = "payer_operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    memberid: Mapped[str] = mapped_column(String(80))
    groupnumber: Mapped[str] = mapped_column(String(80))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), index=True, default="notStarted")
    errors: Mapped[list[str]] = mapped_column(JSON, default=list)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _ids(record: dict[str, Any]) -> dict[str, str]:
    """A record's member id and its dependents' own ids -> where each is (a path, or what it is)."""
    ids: dict[str, str] = {}
    if record.get("memberid"):
        ids[str(record["memberid"])] = "memberid"
    for i, dependent in enumerate(record.get("dependents") or []):
        if isinstance(dependent, dict) and dependent.get("depmemberid"):
            ids.setdefault(str(dependent["depmemberid"]), f"dependents[{i}].depmemberid")
    return ids


def _now() -> datetime:
    return datetime.now(UTC)


class MemberStore:
    """Members and operations; ``process_pending`` applies queued operations in order."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            # SQLite enforces the id index's foreign key (a member row deleted by hand takes its ids with it)
            # only when asked, on every connection
            listen(self.engine, "connect", lambda connection, _: connection.execute("PRAGMA foreign_keys=ON"))
        Base.metadata.create_all(self.engine)   # adds the id index to a database an older version made
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._fill_id_index()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._generation = 0   # bumped by every applied operation; the member cache follows it
        self._cache: tuple[int, dict[str, dict[str, Any]]] | None = None

    def _fill_id_index(self) -> None:
        """Index the ids of the members already stored when the index is empty but the member table is not: a
        database from before the index, whose table ``create_all`` has just added."""
        try:
            with self.sessions.begin() as session:
                if session.scalar(select(MemberId.value).limit(1)) is not None or \
                        session.scalar(select(Member.id).limit(1)) is None:
                    return
                rows: dict[str, dict[str, Any]] = {}
                for pk, record in session.execute(select(Member.id, Member.record).order_by(Member.id)):
                    for value, path in _ids(record).items():
                        # a database from before ids were checked may hold one twice: the first record keeps it
                        rows.setdefault(value, {"value": value, "member": pk, "path": path})
                if rows:
                    session.execute(insert(MemberId), list(rows.values()))
        except IntegrityError:
            pass   # another process sharing the database filled it first

    # -- operations -----------------------------------------------------------------------------
    def submit(self, kind: str, memberid: str, groupnumber: str, payload: dict[str, Any]) -> str:
        """Store an accepted request as an operation (before anyone is told it was accepted)."""
        op_id = str(uuid.uuid4())
        with self.sessions.begin() as session:
            session.add(Operation(id=op_id, kind=kind, memberid=memberid, groupnumber=groupnumber, payload=payload,
                                  status="notStarted", errors=[], created=_now(), updated=_now()))
        self._wake.set()
        return op_id

    def operation(self, op_id: str) -> Operation | None:
        with self.sessions() as session:
            return session.get(Operation, op_id)

    def process_pending(self) -> int:
        """Apply every queued operation (including ones a dead process left running); how many ran."""
        done = 0
        with self._lock:
            while True:
                with self.sessions() as session:
                    op = session.scalars(select(Operation).where(Operation.status.in_(PENDING))
                                         .order_by(Operation.created).limit(1)).first()
                    if op is None:
                        return done
                    op_id = op.id
                self._run(op_id)
                done += 1

    def _run(self, op_id: str) -> None:
        # the change and the status commit together; _apply changes nothing when it reports errors
        change: tuple[str, dict[str, Any] | None] | None = None
        for attempt in (1, 2):
            try:
                with self.sessions.begin() as session:
                    op = session.get(Operation, op_id)
                    if op is None or op.status not in PENDING:
                        return
                    errors, change = self._apply(session, op)
                    op.status = "failed" if errors else "succeeded"
                    op.errors = errors
                    op.updated = _now()
                break
            except IntegrityError:
                # another process stored one of these ids (or ran this very operation) after the check read the
                # index: the second run's check sees it and reports it
                if attempt == 2:   # still refused: the operation fails, the worker goes on with the next one
                    self._fail(op_id, "the change conflicts with one stored at the same moment (a member id is "
                                      "taken); submit it again")
                    return
        self._applied(change)

    def _fail(self, op_id: str, error: str) -> None:
        with self.sessions.begin() as session:
            op = session.get(Operation, op_id)
            if op is not None and op.status in PENDING:
                op.status, op.errors, op.updated = "failed", [error], _now()

    def _applied(self, change: tuple[str, dict[str, Any] | None] | None) -> None:
        """Bump the generation after the commit (a reader never caches what is about to change), and carry a
        current member cache over with the change, so the next 270 does not read and parse every record again."""
        cached = self._cache
        self._generation += 1
        if cached is None or cached[0] != self._generation - 1:
            return
        members = cached[1]
        if change is not None:
            memberid, record = change
            members = dict(members)   # a copy: a 270 being answered may be going through the old one
            if record is None:
                members.pop(memberid, None)
            else:
                members[memberid] = record
        self._cache = (self._generation, members)

    def _apply(self, session: Session, op: Operation
               ) -> tuple[list[str], tuple[str, dict[str, Any] | None] | None]:
        """The errors that refused ``op`` (nothing changed), else none and (memberid, its record or None)."""
        member = self._member(session, op.memberid, op.groupnumber)
        if op.kind == "create":
            if member is not None:
                return [f"a record with memberid {quoted(op.memberid)} and groupnumber {quoted(op.groupnumber)} "
                        "already exists"], None
            clashes = self._id_conflicts(session, op.payload, op.memberid, op.groupnumber)
            if clashes:
                return [f"{p['path']}: {p['message']}" for p in clashes], None
            member = Member(memberid=op.memberid, groupnumber=op.groupnumber, record=op.payload)
            session.add(member)
            session.flush()   # its primary key, which the id index refers to
            self._index(session, member.id, op.payload)
            return [], (op.memberid, op.payload)
        if member is None:
            return [f"no record with memberid {quoted(op.memberid)} and groupnumber {quoted(op.groupnumber)}"], None
        if op.kind == "delete":
            session.execute(delete(MemberId).where(MemberId.member == member.id))   # its ids are free again
            session.delete(member)
            return [], (op.memberid, None)
        record, errors = apply_patch(member.record, op.payload)
        if not errors:
            # each field of a patch was checked when it came in; together with the record they may contradict
            # each other (a term date before the stored effective date), which a create would have refused
            errors = [f"{p['path']}: {p['message']}" for p in consistency_problems(record) +
                      self._id_conflicts(session, record, op.memberid, op.groupnumber)]
        if errors:
            return errors, None
        member.record = record
        self._index(session, member.id, record)   # a dependent's id may have changed, or moved in the list
        return [], (op.memberid, record)

    @staticmethod
    def _index(session: Session, member_pk: int, record: dict[str, Any]) -> None:
        """Make the id index hold exactly ``record``'s ids for the member row ``member_pk``."""
        session.execute(delete(MemberId).where(MemberId.member == member_pk))
        rows = [{"value": value, "member": member_pk, "path": path} for value, path in _ids(record).items()]
        if rows:
            session.execute(insert(MemberId), rows)

    def id_conflicts(self, record: dict[str, Any], memberid: str, groupnumber: str) -> list[dict[str, str]]:
        """The member and dependent ids of ``record`` (to be stored under memberid/groupnumber) that another record
        already uses, with their paths; empty when none."""
        with self.sessions() as session:
            return self._id_conflicts(session, record, memberid, groupnumber)

    @staticmethod
    def _id_conflicts(session: Session, record: dict[str, Any], memberid: str,
                      groupnumber: str) -> list[dict[str, str]]:
        # a 270 finds a person by member id alone (2100C NM109 has no group), so an id held twice would answer
        # for whichever record was read last: ids are unique across the whole member file (fixtures README)
        wanted = _ids(record)
        values = list(wanted)
        held: list[Any] = []
        for start in range(0, len(values), _CHUNK):
            held += session.execute(
                select(MemberId.value, MemberId.path, Member.id, Member.memberid, Member.groupnumber)
                .join(Member, Member.id == MemberId.member)
                .where(MemberId.value.in_(values[start:start + _CHUNK]))
                .where((Member.memberid != memberid) | (Member.groupnumber != groupnumber))).all()
        # by record as stored, then in the record's own order: as when every record was read in turn
        order = {value: i for i, value in enumerate(values)}
        held.sort(key=lambda row: (row.id, order[row.value]))
        return [{"path": wanted[row.value], "message": f"{quoted(row.value)} is already on file as {row.path} of the "
                 f"record memberid {quoted(row.memberid)} groupnumber {quoted(row.groupnumber)}: member ids are "
                 "unique across groups (a 270 finds a person by id alone)"} for row in held]

    @staticmethod
    def _member(session: Session, memberid: str, groupnumber: str) -> Member | None:
        return session.scalars(select(Member).where(Member.memberid == memberid,
                                                    Member.groupnumber == groupnumber)).first()

    # -- reading ----------------------------------------------------------------------------------
    def get(self, memberid: str, groupnumber: str) -> dict[str, Any] | None:
        with self.sessions() as session:
            member = self._member(session, memberid, groupnumber)
            return dict(member.record) if member else None

    def by_member_id(self) -> dict[str, dict[str, Any]]:
        """Every record keyed by member id (what answering a 270 reads; treat it as read-only).

        Cached until the next applied operation: every change goes through this store's operations, so
        the simulator does not read and parse the whole member table for each 270.
        """
        generation = self._generation
        cached = self._cache
        if cached is not None and cached[0] == generation:
            return cached[1]
        with self.sessions() as session:
            members = {m.memberid: m.record for m in session.scalars(select(Member))}
        self._cache = (generation, members)
        return members

    # -- the worker ---------------------------------------------------------------------------------
    def start_worker(self) -> None:
        """Apply operations off the request thread (and, first, whatever a previous process left)."""
        if self._worker is not None:
            return
        self._worker = threading.Thread(target=self._loop, name="payer-operations", daemon=True)
        self._worker.start()

    def stop_worker(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=5)

    def close(self) -> None:
        """Stop the worker and release the database connections."""
        self.stop_worker()
        self.engine.dispose()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.process_pending()
            except SQLAlchemyError as exc:   # the database refused for now (locked, restarting): try again later,
                log.warning("member operations could not be applied (%s); retrying", type(exc).__name__)
            self._wake.wait(timeout=1.0)   # the worker must outlive it, or every later operation stays pending
            self._wake.clear()
