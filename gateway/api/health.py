"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify(status="ok")


@health.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    """Ready once the X279A1 structures load, the pyx12 maps are generated and the audit store answers."""
    from gateway.x12.pyx12_maps import map_set_dir
    from gateway.x12.structure import load_transaction

    for set_id in ("270", "271"):
        load_transaction(set_id)
    map_set_dir()
    gateway = current_app.extensions.get("fhir_x12")
    if gateway is not None:
        try:
            gateway["service"].store.check()
        except Exception as exc:   # not ready: say which dependency, not the connection string
            return jsonify(status="not ready", store=type(exc).__name__), 503
    return jsonify(status="ready")
