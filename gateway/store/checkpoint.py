"""SQLite WAL checkpoints on a native thread of their own, so no request waits for one.

In WAL mode the commit that crosses SQLite's auto-checkpoint threshold (1000 pages) copies the log
into the database file before it returns: about 5 ms once every hundred or so transactions, and under
a gevent worker nothing else runs meanwhile, so every request in flight in that worker waits too. The
writers' auto-checkpoint is raised to a safety net instead, and a native thread (a real one even when
gevent has patched ``threading``) checkpoints every ``interval`` seconds: sqlite3 releases the GIL while
it copies, so requests go on.

A passive checkpoint never blocks a writer, but under a steady stream of commits the log would never
be restarted and would grow for ever; once it holds ``restart_frames`` pages, all copied back, a RESTART
checkpoint makes the next writer start the log from the beginning. RESTART holds new writers back while
it waits (at most ``BUSY_MS``) for readers still on the log, so it is tried once per log and, when a long
reader (a backup, an operator's shell) keeps it busy, again only after a pause that doubles up to 16 s.
"""

from __future__ import annotations

import importlib
import sqlite3
import weakref
from collections.abc import Callable
from typing import Any

INTERVAL_SECONDS = 0.05
RESTART_FRAMES = 2048        # 8 MB of 4 kB pages
SAFETY_FRAMES = 16384        # the writers' own auto-checkpoint, should this thread fall behind or stop
BUSY_MS = 20                 # how long a RESTART may wait for readers (writers are held back meanwhile)
BACKOFF_INTERVALS = 20       # after a busy RESTART: 1 s of intervals before the next try, doubling ...
MAX_BACKOFF_INTERVALS = 320  # ... up to 16 s


def _native(module: str, name: str) -> Any:
    """The unpatched ``module.name`` when gevent has monkey-patched it (a greenlet would run on the loop)."""
    try:
        from gevent import monkey
    except ImportError:   # pragma: no cover - gevent is a dependency
        return getattr(importlib.import_module(module), name)
    return monkey.get_original(module, name)


class Checkpointer:
    """Checkpoints one SQLite database's WAL in the background until :meth:`stop` (or garbage collection)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, interval: float = INTERVAL_SECONDS,
                 restart_frames: int | None = None) -> None:
        restart_frames = restart_frames or RESTART_FRAMES
        allocate_lock = _native("_thread", "allocate_lock")
        self._stopping = allocate_lock()
        self._stopping.acquire()          # released by stop(): the thread's sleep ends at once
        self._stopped = allocate_lock()
        self._stopped.acquire()           # released by the thread on its way out: stop() waits for it
        self.stats = {"checkpoints": 0, "restarts": 0, "busy": 0, "failures": 0}
        _native("_thread", "start_new_thread")(
            _run, (connect, self._stopping, self._stopped, self.stats, interval, restart_frames))
        self._finalizer = weakref.finalize(self, _stop, self._stopping, self._stopped)

    @property
    def running(self) -> bool:
        return self._stopped.locked()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and wait for the thread, so no SQLite call is under way when the process forks or exits."""
        self._finalizer.detach()
        _stop(self._stopping, self._stopped, timeout)


def _stop(stopping: Any, stopped: Any, timeout: float = 5.0) -> None:
    if stopping.locked():
        stopping.release()
    if stopped.acquire(timeout=timeout):
        stopped.release()


def _run(connect: Callable[[], sqlite3.Connection], stopping: Any, stopped: Any, stats: dict[str, int],
         interval: float, restart_frames: int) -> None:
    connection = None
    restarted_at = -1      # the log's size at the last RESTART: it stays until a writer starts the log over
    backoff = skip = 0     # after a busy RESTART (a reader still on the log), wait 1, 2, 4 ... 16 s to retry
    try:
        connection = connect()
        connection.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        while not stopping.acquire(timeout=interval):
            try:
                _busy, frames, done = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                stats["checkpoints"] += 1
                if skip:
                    skip -= 1
                    continue
                # RESTART holds new writers back while it waits for readers: only try it once everything is
                # copied (it then only waits for readers), once per log, and not again soon after a busy one
                if frames >= restart_frames and done == frames and frames != restarted_at:
                    busy, _, _ = connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                    if busy:
                        stats["busy"] += 1
                        backoff = min(max(backoff * 2, 1), MAX_BACKOFF_INTERVALS // BACKOFF_INTERVALS)
                        skip = backoff * BACKOFF_INTERVALS
                    else:
                        stats["restarts"] += 1
                        restarted_at, backoff = frames, 0
            except sqlite3.Error:   # locked, or the file went away: the writers' safety net still holds
                stats["failures"] += 1
    except sqlite3.Error:
        stats["failures"] += 1
    finally:
        if connection is not None:
            connection.close()
        stopped.release()
