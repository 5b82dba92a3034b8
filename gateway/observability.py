"""Structured JSON logs for the ``gateway`` logger hierarchy, with a request id and no PHI.

:func:`init_logging` puts one JSON handler on the ``gateway`` logger (level ``FHIR_X12_LOG_LEVEL``, default
INFO), gives every request an id (a safe incoming ``X-Request-ID`` or a fresh one), echoes it in the
response and writes one access line per request. The access line carries the URL path only (never the
query string, which can hold patient identifiers) with resource ids replaced by ``{id}``.

Every record that passes the handler gets ``request_id`` and is run through :func:`redact`, which
replaces any message or argument that looks like X12 interchange text. The request id lives in a
context variable set when the request begins, so work done on the request's behalf on another thread
keeps it: submit that work with :func:`carry_context` (``pool.submit(carry_context(fn), ...)``), which
runs it in a copy of the submitting thread's context.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import IO, Any, ParamSpec, TypeVar

from flask import Flask, Response, g, has_request_context, request
from flask.logging import default_handler
from pythonjsonlogger.json import JsonFormatter

from gateway.errors import ConfigError

LOGGER_NAME = "gateway"
LEVEL_KEY = "FHIR_X12_LOG_LEVEL"
EXTENSION_KEY = "fhir_x12_logging"
REQUEST_ID_HEADER = "X-Request-ID"

access_log = logging.getLogger("gateway.access")

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# FHIR-style paths: /<ResourceType>/<id>[/_history/<vid>]; operations ($x) and _-prefixed words stay
# any resource type's id (a client using the gateway as its FHIR base reads /Patient/<member id> ...), the async
# status id, a version id: none of them is logged
_RESOURCE_ID = re.compile(r"(?<=/)([A-Z][A-Za-z]{1,63})/(?![$_])[^/]+")
_HISTORY_VID = re.compile(r"(?<=/_history/)[^/]+")
_ASYNC_ID = re.compile(r"(?<=/_async/)[^/]+")
# a path no route knows: only its words that cannot be data are kept (FHIR's operations and keywords this server or a
# client would use, a resource type); "_delgado-maria" is not one of them
_PATH_WORDS = frozenset({"$submit", "$validate", "$everything", "$meta", "_search", "_history", "_async", "metadata",
                         "x12", "healthz", "readyz", "metrics"})
# a route's variable (<id>, <path:filename>): the access line names it ({id}) instead of quoting what the client sent
_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
_MAX_PATH = 200

# X12 text: an ISA header (any element separator), a segment terminator followed by a segment id, or a
# segment that carries names, addresses, dates of birth or identifiers.
_X12 = re.compile(r"ISA([^A-Za-z0-9\s])\d\d\1"
                  r"|~\s*[A-Z][A-Z0-9]{1,2}[*|^:]"
                  r"|\b(?:ISA|GS|ST|BHT|HL|NM1|N3|N4|DMG|REF|INS|TRN|EB|AAA|PER)\*")
_PLAIN = (int, float, bool, type(None))

# the id of the request being served, or on whose behalf a pool thread works (see carry_context)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("fhir_x12_request_id", default=None)

P = ParamSpec("P")
R = TypeVar("R")


STARTUP_REPORTED_ENV = "FHIR_X12_STARTUP_REPORTED"


def startup_warning(logger: logging.Logger, message: str, *args: Any) -> None:
    """A warning about the configuration, logged once per start: ``fhir-x12 serve`` builds the app once to check
    it, then every worker builds its own; after the check (``STARTUP_REPORTED_ENV`` set) the workers log it at
    DEBUG, so three workers do not say "the API is open" four times."""
    import os

    level = logging.DEBUG if os.environ.get(STARTUP_REPORTED_ENV) else logging.WARNING
    logger.log(level, message, *args)


def current_request_id() -> str | None:
    """The id of the request this code runs for: the context variable, else ``g.request_id``, else None."""
    found = _request_id.get()
    if found is None and has_request_context():
        found = g.get("request_id")
    return found


def carry_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to a copy of the calling thread's context (the request id with it), for another thread.

    Call it where the work is handed over (inside the request), once per task: one copied context can run
    on only one thread at a time.
    """
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.run(fn, *args, **kwargs)

    return run


# -- redaction ---------------------------------------------------------------------------------------------

def looks_like_x12(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("latin-1")
    elif not isinstance(value, str):
        try:
            value = str(value)
        except Exception:   # an object that cannot be shown cannot leak either
            return False
    return bool(_X12.search(value))


def redact(value: Any) -> Any:
    """``value`` unchanged unless it (or its ``str()``) looks like X12; then a placeholder without content.

    Tuples, lists and dicts are redacted item by item, so ``%d``-style arguments keep working.
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if looks_like_x12(value):
        size = len(value) if isinstance(value, (str, bytes, bytearray)) else None
        return "[x12 redacted]" if size is None else f"[x12 redacted: {size} chars]"
    return value


class ContextFilter(logging.Filter):
    """Adds ``request_id`` (the request the record is logged for, None outside one) and redacts X12 from the
    message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        if request_id is not None or has_request_context():
            record.request_id = request_id
        record.msg = redact(record.msg)
        if record.args:
            record.args = redact(record.args)
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if looks_like_x12(text):   # e.g. an exception whose message quotes the interchange
                record.exc_info = None
                record.exc_text = "\n".join(redact(line) for line in text.splitlines())
        return True


# -- handler -----------------------------------------------------------------------------------------------

def json_formatter() -> JsonFormatter:
    """The one JSON line format: the gateway's records and gunicorn's own (``serving.PrivateLogger``)."""
    return JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"})


def log_level(value: Any) -> int:
    """A level number from a name or number (``FHIR_X12_LOG_LEVEL``); :class:`ConfigError` for anything else."""
    if value is None or value == "":
        return logging.INFO
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().upper()
    if text.isascii() and text.isdigit() and len(text) <= 9:   # int() refuses "²" and 4,300+ digits
        return int(text)
    level = logging.getLevelNamesMapping().get(text)
    if level is None:
        raise ConfigError(f"{LEVEL_KEY}: {value!r} is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return level


class JsonLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes JSON lines to ``stream`` or, when none was given, to whatever ``sys.stderr`` is at the time."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self.explicit_stream = stream is not None
        self.setFormatter(json_formatter())
        self.addFilter(ContextFilter())

    def use_stream(self, stream: IO[str] | None) -> None:
        """Write to ``stream`` from now on; None goes back to the current ``sys.stderr``."""
        self.acquire()
        try:
            self.explicit_stream = stream is not None
            self.stream = stream or sys.stderr
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.explicit_stream:
            self.stream = sys.stderr
        super().emit(record)


def _our_handler(logger: logging.Logger) -> JsonLogHandler | None:
    for handler in logger.handlers:
        if isinstance(handler, JsonLogHandler):
            return handler
    return None


def configure_logging(level: Any = None, stream: IO[str] | None = None) -> JsonLogHandler:
    """Put the JSON handler on the ``gateway`` logger once (later calls reuse it) and set the level."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = _our_handler(logger)
    if handler is None:
        handler = JsonLogHandler(stream)
        logger.addHandler(handler)
    elif stream is not None:
        handler.use_stream(stream)
    logger.setLevel(log_level(level))
    return handler


# -- request hooks -----------------------------------------------------------------------------------------

def request_id_from(header: str | None) -> str:
    """The incoming id when it is a safe token, else a fresh uuid4 hex."""
    if header and _SAFE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


@lru_cache(maxsize=256)
def _resource_type(word: str) -> bool:
    """A FHIR resource type name (not a surname that happens to be capitalised)."""
    from gateway.fhir.models import model_class

    try:
        return model_class(word) is not None
    except (KeyError, LookupError, ValueError, ImportError, AttributeError):
        return False


def log_path(path: str, *, matched: bool = True) -> str:
    """The URL path fit for logs: ids replaced by ``{id}`` (``{vid}``), cut at 200 characters. A path that matched
    no route keeps only segments that look like FHIR words; the rest become ``{x}``."""
    if not matched:
        path = "/".join(part if not part or part in _PATH_WORDS or _resource_type(part) else "{x}"
                        for part in path.split("/"))
    path = _RESOURCE_ID.sub(lambda m: f"{m.group(1)}/{{id}}", path)
    path = _HISTORY_VID.sub("{vid}", path)
    path = _ASYNC_ID.sub("{id}", path)
    return path if len(path) <= _MAX_PATH else path[:_MAX_PATH] + "..."


def _begin() -> None:
    g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    _request_id.set(g.request_id)
    g.request_started = time.perf_counter()


def _finish(response: Response) -> Response:
    if "request_id" not in g:   # a hook registered ahead of ours answered first
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        _request_id.set(g.request_id)
    response.headers[REQUEST_ID_HEADER] = g.request_id
    if not access_log.isEnabledFor(logging.INFO):   # access lines off (FHIR_X12_LOG_LEVEL): nothing to build
        return response
    started = g.get("request_started")
    duration = round((time.perf_counter() - started) * 1000, 3) if started is not None else None
    rule = request.url_rule.rule if request.url_rule is not None else None
    # a matched route is logged as its rule with the variables named, whatever their values look like ("$x", "_x")
    path = _RULE_VARIABLE.sub(r"{\1}", rule) if rule is not None else log_path(request.path, matched=False)
    access_log.info("%s %s %s", request.method, path, response.status_code,
                    extra={"method": request.method, "path": path, "route": rule, "status": response.status_code,
                           "duration_ms": duration, "client": g.get("client"), "payer": g.get("payer_id"),
                           "outcome": g.get("outcome")})
    return response


def _forget(_exc: BaseException | None) -> None:
    """The server thread may serve another request next (gthread, gevent): it must not keep this one's id."""
    _request_id.set(None)


def init_logging(app: Flask, *, stream: IO[str] | None = None) -> JsonLogHandler:
    """Configure JSON logs and the request-id/access-log hooks for ``app``; returns the JSON handler.

    Idempotent: one handler on the ``gateway`` logger however many apps or calls; hooks once per app.
    The request-id hook runs before every other ``before_request`` hook and the access line is written after
    every other ``after_request`` hook, whatever the order the hooks were registered in.
    """
    handler = configure_logging(app.config.get(LEVEL_KEY), stream)
    if app.name.split(".")[0] == LOGGER_NAME:   # Flask's own handler would print a second, plain line
        app.logger.removeHandler(default_handler)
    if app.extensions.get(EXTENSION_KEY):
        return handler
    app.extensions[EXTENSION_KEY] = True
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    app.after_request_funcs.setdefault(None, []).insert(0, _finish)   # run in reverse: first is last
    app.teardown_request_funcs.setdefault(None, []).insert(0, _forget)   # also in reverse: after the others
    return handler
