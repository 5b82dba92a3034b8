"""Flask application factory: the FHIR gateway with its store, payer client, auth, logs and metrics.

Configuration: ``DEFAULTS``, then ``FHIR_X12_*`` environment variables, then ``config``. Every
setting is documented in the README (Configuration). The X12 and translation work never imports Flask.
"""

from __future__ import annotations

import atexit
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask

from gateway.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "FHIR_X12_MAX_BODY_BYTES": 2 * 1024 * 1024,
    # POST /x12/$validate: pyx12 walks every segment (2 MB of EQs took 44 s of CPU and 650 MB); a real-time 270/271
    # is a few kB, and the CLI validates files of any size
    "FHIR_X12_VALIDATE_MAX_BYTES": 256 * 1024,
    "FHIR_X12_MAPPINGS": None,
    "FHIR_X12_ASYNC_WORKERS": 8,
    "FHIR_X12_BATCH_WORKERS": 8,
    "FHIR_X12_PROCESSES": 1,     # gateway processes sharing each payer's concurrency limit (serve sets it)
}
_INTEGERS = ("FHIR_X12_MAX_BODY_BYTES", "FHIR_X12_VALIDATE_MAX_BYTES", "FHIR_X12_ASYNC_WORKERS",
             "FHIR_X12_BATCH_WORKERS", "FHIR_X12_PROCESSES")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the gateway; ``config`` overrides the environment (tests pass the database URL here)."""
    app = Flask(__name__, static_folder=None)   # no static files: /static/<anything> would be a route that logs it
    app.config.from_mapping(DEFAULTS)
    for key, value in os.environ.items():
        if key.startswith("FHIR_X12_"):
            app.config[key] = value
    if config:
        app.config.update(config)
    for key in _INTEGERS:
        app.config[key] = _positive_int(app.config[key], key)
    app.config["FHIR_X12_BASE_URL"] = _base_url(app.config.get("FHIR_X12_BASE_URL"))
    app.config["MAX_CONTENT_LENGTH"] = app.config["FHIR_X12_MAX_BODY_BYTES"]
    app.json.sort_keys = False   # type: ignore[attr-defined]
    # "//x" is not "/x": no redirect (an HTML 308 no FHIR client follows with its body), a 404 OperationOutcome
    app.url_map.merge_slashes = False

    from gateway.api.auth import CONFORMANCE_PREFIXES, init_auth
    from gateway.metrics import init_metrics
    from gateway.observability import init_logging

    init_logging(app)
    init_auth(app, open_paths=("/metadata", "/healthz", "/readyz"),   # /metrics wants a token too
              open_prefixes=CONFORMANCE_PREFIXES)                      # what /metadata points to
    routes, service = _service(app)
    metrics = init_metrics(app, known_payers=set(routes.routes))
    service.metrics = metrics
    service.client.on_breaker_open = metrics.observe_circuit_opened
    async_pool = ThreadPoolExecutor(app.config["FHIR_X12_ASYNC_WORKERS"], thread_name_prefix="fhir-x12-async")
    batch_pool = ThreadPoolExecutor(app.config["FHIR_X12_BATCH_WORKERS"], thread_name_prefix="fhir-x12-batch")

    def close() -> None:
        async_pool.shutdown(wait=True)
        batch_pool.shutdown(wait=True)
        service.store.close()

    app.extensions["fhir_x12"] = {"service": service, "executor": async_pool, "batch_executor": batch_pool,
                                  "close": close, "pending": set(),
                                  "max_pending": 50 * app.config["FHIR_X12_ASYNC_WORKERS"]}
    atexit.register(close)
    register_blueprints(app)
    if not app.config.get("TESTING"):
        from gateway.runtime import warm_up, warm_up_fhir

        warm_up_fhir()
        warm_up(app.config.get("FHIR_X12_MAPPINGS"), validation=False)
    return app


def _service(app: Flask) -> tuple[Any, Any]:
    from gateway.observability import startup_warning
    from gateway.service import EligibilityService
    from gateway.store import AuditStore, database_url
    from gateway.translate import load_tables
    from gateway.transport.acks import load_ack_codes
    from gateway.transport.client import PayerClient
    from gateway.transport.routing import routes_from_config
    from gateway.upstream import UpstreamConfig, resolve_references

    mappings = app.config.get("FHIR_X12_MAPPINGS")
    url = app.config.get("FHIR_X12_DATABASE_URL") or database_url({})
    routes = routes_from_config(app.config)
    upstream = UpstreamConfig.from_config(app.config)
    client = PayerClient(routes, ack_codes=load_ack_codes(mappings), processes=app.config["FHIR_X12_PROCESSES"])
    over = client.oversubscribed()
    if over:
        startup_warning(logging.getLogger(__name__), "%d gateway processes share payer concurrency limits smaller "
                        "than that (payers %s): each process still allows one call, so together they may exceed the "
                        "limit", client.processes, ", ".join(over))

    def resolve(payload: dict[str, Any]) -> dict[str, Any]:
        return resolve_references(payload, upstream, session=client.session)

    try:
        store = AuditStore(url)
    except Exception as exc:   # one line naming the setting, never the URL's password (see open_problem)
        from gateway.store.migrate import open_problem

        source = "FHIR_X12_DATABASE_URL" if app.config.get("FHIR_X12_DATABASE_URL") else \
            f"the default store {url}"
        raise ConfigError(f"{source}: cannot open the audit store: {open_problem(exc, url)}") from None
    service = EligibilityService(store=store, client=client, routes=routes, tables=load_tables(mappings),
                                 resolve=resolve, mappings=mappings)
    return routes, service


def _positive_int(value: Any, key: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a whole number, not {str(value)[:40]!r}") from None
    if number <= 0:
        raise ConfigError(f"{key} must be positive")
    return number


def _base_url(value: Any) -> str | None:
    """``FHIR_X12_BASE_URL``: the public base of every Location, fullUrl and paging link, so an http(s) URL with a
    host and nothing after its path; None (the request's own root) when unset or blank."""
    from urllib.parse import urlsplit

    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"FHIR_X12_BASE_URL is not a valid URL: {text[:80]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or \
            "@" in parts.netloc or any(c.isspace() for c in text):
        raise ConfigError(f"FHIR_X12_BASE_URL must be the gateway's public http(s) base URL (e.g. "
                          f"https://gateway.example/fhir), not {text[:80]!r}")
    return text


def register_blueprints(app: Flask) -> None:
    from gateway.api.fhir import fhir, register_error_handlers
    from gateway.api.health import health
    from gateway.api.x12 import x12

    app.register_blueprint(health)
    app.register_blueprint(x12)
    app.register_blueprint(fhir)
    register_error_handlers(app)
