"""The simulator's member database and its durable operations (SQLAlchemy: SQLite file or PostgreSQL).

An accepted create, patch or delete is stored as an operation before it is answered (202), and a
worker applies it in one database transaction together with its status, so an operation whose
process dies before it ran is simply run after the restart.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, UniqueConstraint, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from gateway.errors import quoted
from gateway.payer.records import apply_patch, consistency_problems

PENDING = ("notStarted", "running")


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "payer_members"
    __table_args__ = (UniqueConstraint("memberid", "groupnumber"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    memberid: Mapped[str] = mapped_column(String(80), index=True)
    groupnumber: Mapped[str] = mapped_column(String(80))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)


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
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._generation = 0   # bumped by every applied operation; the member cache follows it
        self._cache: tuple[int, dict[str, dict[str, Any]]] | None = None

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
        with self.sessions.begin() as session:
            op = session.get(Operation, op_id)
            if op is None or op.status not in PENDING:
                return
            errors = self._apply(session, op)
            op.status = "failed" if errors else "succeeded"
            op.errors = errors
            op.updated = _now()
        self._generation += 1   # after the commit: a reader never caches what is about to change

    def _apply(self, session: Session, op: Operation) -> list[str]:
        member = self._member(session, op.memberid, op.groupnumber)
        if op.kind == "create":
            if member is not None:
                return [f"a record with memberid {quoted(op.memberid)} and groupnumber {quoted(op.groupnumber)} "
                        "already exists"]
            clashes = self._id_conflicts(session, op.payload, op.memberid, op.groupnumber)
            if clashes:
                return [f"{p['path']}: {p['message']}" for p in clashes]
            session.add(Member(memberid=op.memberid, groupnumber=op.groupnumber, record=op.payload))
            return []
        if member is None:
            return [f"no record with memberid {quoted(op.memberid)} and groupnumber {quoted(op.groupnumber)}"]
        if op.kind == "delete":
            session.delete(member)
            return []
        record, errors = apply_patch(member.record, op.payload)
        if not errors:
            # each field of a patch was checked when it came in; together with the record they may contradict
            # each other (a term date before the stored effective date), which a create would have refused
            errors = [f"{p['path']}: {p['message']}" for p in consistency_problems(record) +
                      self._id_conflicts(session, record, op.memberid, op.groupnumber)]
        if not errors:
            member.record = record
        return errors

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
        problems: list[dict[str, str]] = []
        for other in session.scalars(select(Member)):
            if (other.memberid, other.groupnumber) == (memberid, groupnumber):
                continue
            held = _ids(other.record)
            for value, path in wanted.items():
                if value in held:
                    problems.append({"path": path, "message": f"{quoted(value)} is already on file as {held[value]} of "
                                     f"the record memberid {quoted(other.memberid)} groupnumber "
                                     f"{quoted(other.groupnumber)}: "
                                     "member ids are unique across groups (a 270 finds a person by id alone)"})
        return problems

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
            self.process_pending()
            self._wake.wait(timeout=1.0)
            self._wake.clear()
