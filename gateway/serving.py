"""Run a WSGI app under gunicorn from the CLI (one process, threads: the apps keep in-process state)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def serve(app: Any, host: str, port: int, threads: int = 8) -> None:
    """Serve ``app`` on host:port until interrupted."""
    _Server(app, {"bind": f"{host}:{port}", "workers": 1, "worker_class": "gthread", "threads": threads,
                  "accesslog": None, "timeout": 60}).run()
