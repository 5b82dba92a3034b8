"""Prometheus metrics: payer latency, gateway overhead, outcomes, AAA rejects, notes and HTTP requests.

Each :class:`GatewayMetrics` owns its own ``CollectorRegistry`` (one per app, so tests can build many apps).
Under several gunicorn workers (``PROMETHEUS_MULTIPROC_DIR`` set when the app is built: ``fhir-x12 serve``
does it) prometheus_client's multiprocess mode is used instead: every process writes its values to files
in that directory and ``/metrics`` sums them all, whichever worker answers the scrape.
Label values that come from request data are bounded: payer ids outside ``known_payers`` (or beyond the
first 100 when no list is given) count as ``other``, so a client cannot create unbounded series. The
bounds are kept per process, so with N workers a label may have up to N times as many distinct values.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

EXTENSION_KEY = "fhir_x12_metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
NONE = "none"
MAX_PAYERS = 100

PAYER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20)
OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
NOTES_BUCKETS = (0, 1, 2, 5, 10, 20, 50)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_WORD = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_AAA_CODE = re.compile(r"[A-Za-z0-9]{1,3}")


class BoundedLabel:
    """Maps raw values to label values: allowed ones pass, the first ``limit`` others too, then ``other``.

    ``allowed=None`` accepts any value (that matches ``pattern``, when given) up to ``limit`` distinct ones.
    """

    def __init__(self, allowed: Iterable[str] | None = None, *, limit: int = 0,
                 pattern: re.Pattern[str] | None = None) -> None:
        self.allowed = frozenset(allowed) if allowed is not None else None
        self.limit = limit
        self.pattern = pattern
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: Any) -> str:
        if value is None or value == "" or value == NONE:
            return NONE
        text = str(value)
        if self.allowed is not None and text in self.allowed:
            return text
        if self.pattern is not None and not self.pattern.fullmatch(text):
            return OTHER
        if text in self._seen:
            return text
        with self._lock:
            if text in self._seen:
                return text
            if len(self._seen) < self.limit:
                self._seen.add(text)
                return text
        return OTHER


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when set: the metrics of every worker process are shared there."""
    return os.environ.get(MULTIPROC_ENV) or None


def _use_multiprocess_values() -> None:
    """Make new metrics write to the multiprocess files.

    prometheus_client picks its value class when it is first imported; when the variable was set later in
    this process, switch now (only from the in-memory class: two file-backed ones would share files).
    """
    if getattr(values.ValueClass, "_multiprocess", None) is False:
        values.ValueClass = values.MultiProcessValue()


class GatewayMetrics:
    """The gateway's metric families in a registry of their own.

    ``known_payers``: the configured payer ids; any other payer id is counted as ``other``. ``None`` accepts
    the first ``max_payers`` distinct ids and counts the rest as ``other``. A missing payer id is ``none``.
    With ``PROMETHEUS_MULTIPROC_DIR`` set at creation, values go to files there and :meth:`exposition`
    reports the sum over every process writing to it (the registry is then only where the families live).
    """

    def __init__(self, known_payers: Iterable[str] | None = None, *, max_payers: int = MAX_PAYERS,
                 registry: CollectorRegistry | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir is not None:
            _use_multiprocess_values()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        if known_payers is not None:
            self._payer = BoundedLabel(known_payers, limit=0)
        else:
            self._payer = BoundedLabel(None, limit=max_payers)
        self._transport = BoundedLabel(None, limit=10, pattern=_WORD)
        self._outcome = BoundedLabel(None, limit=32, pattern=_WORD)
        self._aaa = BoundedLabel(None, limit=100, pattern=_AAA_CODE)
        self._route = BoundedLabel(None, limit=200)
        r = self.registry
        self.payer_seconds = Histogram("fhir_x12_payer_seconds",
                                       "Payer round-trip latency: 270 sent to the answer read, or to the failure "
                                       "(a timeout at its limit, an error status, an acknowledgment)",
                                       ["payer", "transport"], buckets=PAYER_BUCKETS, registry=r)
        self.overhead_seconds = Histogram("fhir_x12_gateway_overhead_seconds",
                                          "Gateway time per eligibility request: total minus payer time",
                                          buckets=OVERHEAD_BUCKETS, registry=r)
        self.eligibility = Counter("fhir_x12_eligibility_total",
                                   "Eligibility requests by payer and outcome (FHIR outcome or failure kind)",
                                   ["payer", "outcome"], registry=r)
        self.aaa = Counter("fhir_x12_aaa_total", "AAA reject reason codes (AAA03) in payer answers",
                           ["payer", "code"], registry=r)
        self.process_notes = Histogram("fhir_x12_process_notes", "Process notes per CoverageEligibilityResponse",
                                       ["payer"], buckets=NOTES_BUCKETS, registry=r)
        self.circuit_opened = Counter("fhir_x12_payer_circuit_opened_total",
                                      "Times a payer's circuit breaker opened (calls are then refused with 503 "
                                      "until its reset time; payer '*': the payers FHIR_X12_PAYER_URL serves)",
                                      ["payer"], registry=r)
        self.http_requests = Counter("fhir_x12_http_requests_total", "HTTP requests by method, route and status",
                                     ["method", "route", "status"], registry=r)

    def payer_label(self, payer: Any) -> str:
        return self._payer(payer)

    def observe_payer(self, payer: Any, transport: Any, seconds: float) -> None:
        self.payer_seconds.labels(self._payer(payer), self._transport(transport)).observe(max(float(seconds), 0.0))

    def observe_eligibility(self, payer: Any, outcome: Any, *, aaa_codes: Iterable[Any] = (),
                            notes: int | None = None, overhead: float | None = None) -> None:
        label = self._payer(payer)
        self.eligibility.labels(label, self._outcome(outcome)).inc()
        for code in aaa_codes or ():
            self.aaa.labels(label, self._aaa(code)).inc()
        if notes is not None:
            self.process_notes.labels(label).observe(max(notes, 0))
        if overhead is not None:
            self.overhead_seconds.observe(max(float(overhead), 0.0))

    def observe_circuit_opened(self, payer: Any) -> None:
        self.circuit_opened.labels("*" if payer == "*" else self._payer(payer)).inc()

    def observe_http(self, method: str, route: str | None, status: int | str) -> None:
        method = method.upper() if method and method.upper() in HTTP_METHODS else OTHER
        route_label = self._route(route) if route else "unmatched"
        status_text = str(status)
        if not (status_text.isdigit() and len(status_text) == 3):
            status_text = OTHER
        self.http_requests.labels(method, route_label, status_text).inc()

    def exposition(self) -> bytes:
        """The text format; in multiprocess mode from a fresh registry reading every process's files."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)


def get_metrics(app: Flask | None = None) -> GatewayMetrics | None:
    """The app's :class:`GatewayMetrics` (``current_app`` when not given), or None before ``init_metrics``."""
    return (app or current_app).extensions.get(EXTENSION_KEY)


def init_metrics(app: Flask, known_payers: Iterable[str] | None = None) -> GatewayMetrics:
    """Create the app's metrics, serve them at ``GET /metrics`` and count every HTTP response.

    Calling it again on the same app returns the metrics it already has.
    """
    existing = app.extensions.get(EXTENSION_KEY)
    if existing is not None:
        return existing
    metrics = GatewayMetrics(known_payers)
    app.extensions[EXTENSION_KEY] = metrics

    def metrics_view() -> Response:
        return Response(metrics.exposition(), status=200, content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", endpoint="fhir_x12_metrics", view_func=metrics_view, methods=["GET"])

    @app.after_request
    def _count(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else None
        metrics.observe_http(request.method, rule, response.status_code)
        return response

    return metrics
