"""The SQLite audit file's WAL is checkpointed by a native thread, not by the request that commits."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.store import AuditStore, checkpoint
from gateway.store.checkpoint import SAFETY_FRAMES, Checkpointer

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def write(store: AuditStore, count: int, size: int = 6000, first: int = 0) -> None:
    """``count`` whole transactions, each a few pages of WAL."""
    for n in range(first, first + count):
        id = f"t{n}"
        request = {"resourceType": "CoverageEligibilityRequest", "id": id, "status": "active",
                   "text": {"status": "generated", "div": "x" * size}}
        store.record_request(id, request, None, "ACME01", f"TRACE{n}", NOW, x12_request="ISA~" * 100, sent_at=NOW)
        store.record_answer(id, x12_response="ISA~" * 300, response={"resourceType": "CoverageEligibilityResponse",
                                                                       "id": f"r{n}", "outcome": "complete"},
                            outcome=None, aaa_codes=[], http_status=200, answered_at=NOW)


def wait_for(condition, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_sqlite_file_store_checkpoints_in_the_background_and_restarts_the_wal(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(checkpoint, "RESTART_FRAMES", 200)
    path = tmp_path / "audit.db"
    store = AuditStore(f"sqlite:///{path}")
    try:
        assert store.checkpointer is not None and store.checkpointer.running
        with store.engine.connect() as connection:   # writers only checkpoint as a safety net
            assert connection.execute(text("PRAGMA wal_autocheckpoint")).scalar() == SAFETY_FRAMES
        for batch in range(40):   # thousands of pages of log in all, with pauses for the thread to catch up
            write(store, 10, first=batch * 10)
            time.sleep(0.06)
        assert store.checkpointer.stats["restarts"] >= 1
        assert store.checkpointer.stats["failures"] == 0
        # the log was copied back and started over rather than grown by every commit: with no checkpoints it holds
        # every commit's pages (about 500 times the database file here), checkpointed about a third of it; the bound
        # is loose on purpose (a third was the old one: how far the log grows between checkpoints is timing)
        assert path.with_name("audit.db-wal").stat().st_size < path.stat().st_size
        assert store.get_request("t399")["id"] == "t399"
    finally:
        store.close()
    assert not store.checkpointer.running


def test_without_background_checkpoints_sqlite_keeps_its_own_threshold(tmp_path: Path):
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", background_checkpoints=False)
    try:
        assert store.checkpointer is None
        with store.engine.connect() as connection:
            assert connection.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 1000
    finally:
        store.close()


def test_in_memory_stores_have_no_checkpointer():
    store = AuditStore("sqlite://")
    try:
        assert store.checkpointer is None
    finally:
        store.close()


def test_postgresql_stores_have_no_checkpointer(database_url: str):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite is covered above")
    store = AuditStore(database_url)
    try:
        assert store.checkpointer is None
    finally:
        store.close()


def test_a_checkpointer_whose_database_cannot_open_stops_and_counts_the_failure(tmp_path: Path):
    missing = tmp_path / "no-such-folder" / "audit.db"
    checkpointer = Checkpointer(lambda: sqlite3.connect(f"file:{missing}?mode=rw", uri=True))
    assert wait_for(lambda: not checkpointer.running)
    assert checkpointer.stats["failures"] == 1
    checkpointer.stop()   # stopping a stopped one is harmless


def test_a_store_dropped_without_close_stops_its_thread(tmp_path: Path):
    import gc

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    stopped = store.checkpointer._stopped   # held while the thread runs
    assert stopped.locked()
    store.engine.dispose()
    del store
    gc.collect()
    assert wait_for(lambda: not stopped.locked())


def test_under_gevent_the_checkpointer_is_a_native_thread(tmp_path: Path):
    """The event loop never yields here, yet checkpoints happen: they run on a thread of their own."""
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import time
        from datetime import UTC, datetime
        from gateway.store import AuditStore
        store = AuditStore("sqlite:///{tmp_path / 'audit.db'}")
        now = datetime.now(UTC)
        for n in range(50):
            store.record_request(f"t{{n}}", {{"resourceType": "CoverageEligibilityRequest", "status": "active"}},
                                 None, "ACME01", f"T{{n}}", now)
        before = store.checkpointer.stats["checkpoints"]
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:   # busy: a greenlet would never get to run
            pass
        after = store.checkpointer.stats["checkpoints"]
        store.close()
        print(before, after, store.checkpointer.running)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, after, running = done.stdout.split()
    assert int(after) > int(before)
    assert running == "False"


def test_a_long_reader_never_gets_writers_held_back(tmp_path: Path, monkeypatch):
    """A reader on an old snapshot keeps frames from being copied back: RESTART (which would hold writers
    back while it waits for that reader) is not even tried until everything is copied."""
    monkeypatch.setattr(checkpoint, "RESTART_FRAMES", 50)
    path = tmp_path / "audit.db"
    store = AuditStore(f"sqlite:///{path}")
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        # the reader's snapshot is taken while the log is far below the restart threshold: with more written
        # first, a checkpoint could copy and restart it before the reader began (the full suite's load did so)
        write(store, 1)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM eligibility_transactions").fetchone()   # an old snapshot, held
        for n in range(1, 90):
            write(store, 1, first=n)
            time.sleep(0.005)
        # RESTART (whose waits would hold writers back) was never tried: not a busy one, not a done one
        assert store.checkpointer.stats["busy"] == 0 and store.checkpointer.stats["restarts"] == 0
        assert store.checkpointer.stats["checkpoints"] > 0
        reader.execute("COMMIT")   # the reader goes: the log is copied back and restarted
        assert wait_for(lambda: store.checkpointer.stats["restarts"] == 1, seconds=10)
        # idle: the log keeps its size until a writer starts it over, and is not restarted again meanwhile;
        # one more transaction (fewer than 50 pages) starts the log from the beginning, short of a RESTART
        time.sleep(0.5)
        write(store, 1, first=90)
        time.sleep(0.5)
        assert store.checkpointer.stats["restarts"] == 1
    finally:
        reader.close()
        store.close()


class ScriptedConnection:
    """Stands in for sqlite3: every PASSIVE finds 100 frames all copied, every RESTART finds a reader."""

    def __init__(self) -> None:
        self.restarts = 0

    def execute(self, sql: str):  # type: ignore[no-untyped-def]
        if "RESTART" in sql:
            self.restarts += 1
        return self

    def fetchone(self) -> tuple[int, int, int]:
        return (1, 100, 100) if self.restarts else (0, 100, 100)

    def close(self) -> None:
        pass


def test_a_busy_restart_is_retried_after_a_growing_pause():
    connection = ScriptedConnection()
    scripted = Checkpointer(lambda: connection, interval=0.005, restart_frames=50)
    try:
        time.sleep(1.0)   # 200 intervals: without the pause it would try every one of them
    finally:
        scripted.stop()
    assert scripted.stats["busy"] == connection.restarts
    assert 2 <= connection.restarts <= 4   # at 0, then after 20 and 40 more intervals (and maybe 80)
    assert scripted.stats["checkpoints"] > 100
