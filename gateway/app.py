"""Flask application factory.

Until the FHIR endpoints land this serves health checks and X12 validation over HTTP; the X12
work itself lives in ``gateway.x12`` and never imports Flask.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

DEFAULTS: dict[str, Any] = {
    "MAX_CONTENT_LENGTH": 5 * 1024 * 1024,
    "FHIR_X12_MAPPINGS": None,
}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then ``FHIR_X12_*`` environment variables, then ``config``."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    for key, value in os.environ.items():
        if key.startswith("FHIR_X12_"):
            app.config[key] = value
    if config:
        app.config.update(config)
    register_blueprints(app)
    if not app.config.get("TESTING"):
        from gateway.runtime import warm_up

        warm_up(app.config.get("FHIR_X12_MAPPINGS"))
    return app


def register_blueprints(app: Flask) -> None:
    from gateway.api.health import health
    from gateway.api.x12 import x12

    app.register_blueprint(health)
    app.register_blueprint(x12)
