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


def serve(app: Any, host: str, port: int, threads: int = 8, workers: int = 1) -> None:
    """Serve ``app`` (or, with several workers, a zero-argument factory called in each worker) until interrupted."""
    load = app if workers > 1 and callable(app) and not hasattr(app, "wsgi_app") else (lambda: app)
    _Server(load, {"bind": f"{host}:{port}", "workers": workers, "worker_class": "gthread", "threads": threads,
                   "accesslog": None, "timeout": 60, "keepalive": 30, "graceful_timeout": 25}).run()
