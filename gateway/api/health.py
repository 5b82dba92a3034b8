"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, jsonify

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify(status="ok")


@health.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    """Ready once the X279A1 structure and validation maps load."""
    from gateway.x12.pyx12_maps import map_set_dir
    from gateway.x12.structure import load_transaction

    for set_id in ("270", "271"):
        load_transaction(set_id)
    map_set_dir()
    return jsonify(status="ready")
