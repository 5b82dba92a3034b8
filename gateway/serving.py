"""Run a WSGI app under gunicorn from the CLI.

The simulator keeps in-process state, so it runs as one process with threads. The gateway keeps its
state in the audit store, so it may run several worker processes: each builds its own app after the
fork (database connections and HTTP pools are never shared across processes). Its metrics then use
prometheus_client's multiprocess mode (:func:`multiprocess_metrics`), so any worker's ``/metrics`` reports
the whole server.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from gateway.errors import ConfigError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# the files prometheus_client's multiprocess mode writes: <type>_<pid>.db (gauges: gauge_<mode>_<pid>.db)
_METRIC_FILE = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_\d+\.db")


# gunicorn's line for a request it could not parse quotes the request line or header ("Invalid request from
# ip=...: Invalid HTTP request line: 'GET /CoverageEligibilityRequest?patient=...'"): what it is, up to the quote
_INVALID_REQUEST = re.compile(r"(Invalid request from ip=\S+ )?([^'\"]*?)\s*(?::\s*)?['\"].*", re.DOTALL)


class PrivateLogger(Logger):  # type: ignore[misc]
    """gunicorn's own log lines (start-up, workers, requests it refused) as JSON lines like the gateway's, and
    without the request text it would quote: a query string, a path or a header may hold a member id or a name."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        from gateway.observability import LEVEL_KEY, json_formatter, log_level

        for handler in self.error_log.handlers:
            handler.setFormatter(json_formatter())
        if os.environ.get(LEVEL_KEY):   # one level for all of the server's lines (the app checks the value)
            try:
                self.error_log.setLevel(log_level(os.environ[LEVEL_KEY]))
            except ConfigError:
                pass

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        super().warning(_without_request_text(msg), *args, **kwargs)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith("Error handling request") and args:
            args = (*args[:-1], _path_only(args[-1]))   # "%s %s", method, uri: the uri carries the query string
        # the traceback stays out: its exception text may quote the request too
        super().error(msg, *args, **{k: v for k, v in kwargs.items() if k != "exc_info"})


def _without_request_text(msg: Any) -> Any:
    if not isinstance(msg, str) or not msg.startswith("Invalid request from"):
        return msg
    found = _INVALID_REQUEST.fullmatch(msg)
    return f"{found.group(1) or ''}{found.group(2)}".rstrip(" :") if found else msg.split("'", 1)[0].rstrip(" :")


def _path_only(uri: Any) -> str:
    from urllib.parse import urlsplit

    from gateway.observability import log_path

    return log_path(urlsplit(str(uri)).path, matched=False)


def pre_request(worker: Any, req: Any) -> None:
    """gunicorn's hook before each request: its default logs the raw path at DEBUG, where a name or member id in
    the path would land in the logs; the access logger's path rules apply instead (and only at DEBUG: the rules
    cost more than the line is worth when nobody reads it)."""
    error_log = getattr(worker.log, "error_log", None)
    if error_log is not None and not error_log.isEnabledFor(logging.DEBUG):
        return
    worker.log.debug("%s %s", req.method, _path_only(req.path))


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


# gunicorn's workers, answering what gunicorn itself refuses (a request line too long ...) with an OperationOutcome
FHIR_WORKERS = {"gthread": "gateway.workers.ThreadWorker", "gevent": "gateway.workers.GeventWorker"}


def serve(app: Any, host: str, port: int, threads: int = 8, workers: int = 1, worker_class: str = "gthread",
          multiprocess_dir: str | None = None, keepalive: int = 5, fhir_errors: bool = False) -> None:
    """Serve ``app`` until interrupted.

    ``app`` is a WSGI app, or a zero-argument factory that each worker calls after the fork (needed for
    several workers, and for gevent workers, whose app must be built after monkey-patching).
    ``multiprocess_dir``: the workers share their metrics there (see :func:`multiprocess_metrics`); the
    master marks each worker that exits as dead, as prometheus_client asks.
    ``fhir_errors``: the workers of :mod:`gateway.workers`, whose own refusals are OperationOutcomes.
    """
    load = app if callable(app) and not hasattr(app, "wsgi_app") else (lambda: app)
    # keepalive: an idle kept-alive connection holds a stopping gevent worker until it times out (gunicorn
    # counts it as a request in progress), so 5 s by default, not 30: a stop or restart takes about 6 s instead
    # of the whole 25 s graceful timeout. Behind a load balancer it must outlast the balancer's idle timeout
    # (or the balancer reuses connections gunicorn closed: 502s), hence the option.
    # graceful_timeout: room for a payer call within its 20 s CORE budget.
    if fhir_errors:
        worker_class = FHIR_WORKERS.get(worker_class, worker_class)
    options: dict[str, Any] = {"bind": f"{host}:{port}", "workers": workers, "worker_class": worker_class,
                               "threads": threads, "worker_connections": 200, "accesslog": None, "timeout": 60,
                               "logger_class": PrivateLogger, "pre_request": pre_request,
                               "keepalive": keepalive, "graceful_timeout": 25}
    if multiprocess_dir is not None:
        os.environ[MULTIPROC_ENV] = multiprocess_dir   # the workers inherit it at the fork
        options["child_exit"] = _mark_dead(multiprocess_dir)
    _Server(load, options).run()


def _mark_dead(path: str) -> Callable[[Any, Any], None]:
    """gunicorn's ``child_exit`` hook (in the master): drop the exited worker's live-gauge files.

    Its counter and histogram files stay, so totals survive a worker restart.
    """
    from prometheus_client import multiprocess

    def child_exit(server: Any, worker: Any) -> None:
        multiprocess.mark_process_dead(worker.pid, path)

    return child_exit


@contextmanager
def multiprocess_metrics() -> Iterator[str]:
    """The directory where every worker writes its metrics, set as ``PROMETHEUS_MULTIPROC_DIR`` meanwhile.

    The operator's ``PROMETHEUS_MULTIPROC_DIR`` when set (it must be a writable directory; the metric files a
    previous run left there are removed first, as prometheus_client asks, and nothing else is touched), else a
    fresh private directory, removed on the way out: files left from another run would be counted again.
    Enter it before prometheus_client is imported, which picks its file-backed values then. Raises
    :class:`ConfigError` for an unusable directory.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        if not os.path.isdir(given):
            raise ConfigError(f"{MULTIPROC_ENV} {given!r} is not a directory")
        if not os.access(given, os.W_OK | os.X_OK):
            raise ConfigError(f"{MULTIPROC_ENV} {given!r} is not writable")
        for name in os.listdir(given):
            if _METRIC_FILE.fullmatch(name):
                os.remove(os.path.join(given, name))
        yield given
        return
    path = tempfile.mkdtemp(prefix="fhir-x12-metrics-")   # mode 0700
    owner = os.getpid()
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        # gunicorn workers are forks of this process and leave through this frame too (SystemExit):
        # only the master, which created the directory, removes it
        if os.getpid() == owner:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


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
