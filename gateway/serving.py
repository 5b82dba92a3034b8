"""Run a WSGI app under gunicorn from the CLI.

The simulator keeps in-process state, so it runs as one process with threads. The gateway keeps its
state in the audit store, so it may run several worker processes: each builds its own app after the
fork (database connections and HTTP pools are never shared across processes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, load: Callable[[], Any], options: dict[str, Any]) -> None:
        self._load = load
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:   # gunicorn 27+: the gateway and simulator would
            self.cfg.set("control_socket_disable", True)    # share one default socket path; nothing uses it

    def load(self) -> Any:
        return self._load()


def serve(app: Any, host: str, port: int, threads: int = 8, workers: int = 1, worker_class: str = "gthread") -> None:
    """Serve ``app`` until interrupted.

    ``app`` is a WSGI app, or a zero-argument factory that each worker calls after the fork (needed for
    several workers, and for gevent workers, whose app must be built after monkey-patching).
    """
    load = app if callable(app) and not hasattr(app, "wsgi_app") else (lambda: app)
    _Server(load, {"bind": f"{host}:{port}", "workers": workers, "worker_class": worker_class, "threads": threads,
                   "worker_connections": 200, "accesslog": None, "timeout": 60, "keepalive": 30,
                   "graceful_timeout": 25}).run()


def wait_ready(url: str, process: Any = None, seconds: float = 60.0) -> str | None:
    """Poll ``url`` until it answers 200; None when ready, else why not (the process exited, or time ran out).

    For the demo, the load benchmark and the tests, which all start a server process and then use it.
    """
    import time

    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return f"{url}: the server exited with status {process.returncode}"
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return None
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return f"{url}: not ready after {seconds:g} s"


def stop(process: Any, seconds: float = 30.0) -> None:
    """Ask a server process to stop (SIGTERM: gunicorn finishes what it is doing), then kill it if it lingers."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
