"""Real servers on loopback: the payer simulator with the demo members, an upstream FHIR server (the EHR)
and the gateway, with its audit store in SQLite or PostgreSQL (skipped cleanly when PostgreSQL is absent)."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, abort
from werkzeug.serving import make_server

from gateway.app import create_app
from gateway.payer.app import create_payer_app
from gateway.payer.records import validate_record
from tests.conftest import FIXTURES

TOKEN = "test-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MEMBERS = sorted((FIXTURES / "members").glob("*.json"))


def member(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "members" / f"{name}.json").read_text(encoding="utf-8"))


def fhir_request(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "fhir" / "requests" / f"{name}.json").read_text(encoding="utf-8"))


class Server:
    """A WSGI app on a real loopback port (werkzeug threads)."""

    calls: Counter[str]

    def __init__(self, app: Any) -> None:
        self.app = app
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def simulator(tmp_path_factory) -> Iterator[Server]:
    """The payer simulator with every demo member, answering CORE SOAP."""
    db = tmp_path_factory.mktemp("payer") / "payer.db"
    app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{db}", "PAYER_WORKER": False})
    store = app.extensions["payer_store"]
    for path in MEMBERS:
        record, problems = validate_record(json.loads(path.read_text(encoding="utf-8")))
        assert not problems, path
        store.submit("create", record["memberid"], record["groupnumber"], record)
    store.process_pending()
    calls: Counter[str] = Counter()

    def counting(environ, start_response):  # type: ignore[no-untyped-def]
        calls[environ.get("PATH_INFO", "")] += 1
        return app(environ, start_response)

    server = Server(counting)
    server.app, server.calls = app, calls
    yield server
    server.close()
    store.close()


@pytest.fixture(autouse=True)
def _no_leftover_scenarios(simulator):
    yield
    simulator.app.extensions["payer_scenarios"].clear()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Server]:
    """An EHR's FHIR server holding the resources of the fixture Bundles (by type and id), and a call log."""
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((FIXTURES / "fhir" / "requests").glob("*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        for entry in payload.get("entry") or []:
            resource = entry.get("resource") or {}
            if resource.get("id") and resource.get("resourceType") != "CoverageEligibilityRequest":
                resources[(resource["resourceType"], resource["id"])] = resource
    app = Flask("upstream")
    app.config["calls"] = []
    app.config["resources"] = resources   # a test may add its own (by type and id)

    @app.get("/fhir/<kind>/<id>")
    def read(kind: str, id: str):  # type: ignore[no-untyped-def]
        app.config["calls"].append(f"{kind}/{id}")
        if (kind, id) not in resources:
            abort(404)
        return app.response_class(json.dumps(resources[(kind, id)]), mimetype="application/fhir+json")

    server = Server(app)
    yield server
    server.close()


def _postgres_available() -> bool:
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty audit database: a SQLite file, or a PostgreSQL database of its own (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    if not _postgres_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    from sqlalchemy import create_engine, text

    name = f"gw_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Gateway(Server):
    """The gateway on loopback plus a requests session that sends the bearer token."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def post(self, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
             data: bytes | None = None) -> requests.Response:
        payload = data if data is not None else json.dumps(body).encode()
        return self.session.post(self.url + path, data=payload, timeout=30,
                                 headers={"Content-Type": "application/fhir+json", **(headers or {})})

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path if path.startswith("/") else path, timeout=30, **kwargs)

    def close(self) -> None:
        super().close()
        self.session.close()
        self.app.extensions["fhir_x12"]["close"]()


def routing_table(tmp_path: Path, **defaults: Any) -> str:
    """A routing table file of the test's own (short timeouts, small breaker) for FHIR_X12_ROUTING."""
    import yaml

    table = yaml.safe_load((Path(__file__).resolve().parents[2] / "mappings" / "routing.yaml").read_text())
    table["defaults"].update(defaults)
    for payer in table["payers"].values():   # the test's settings win over each payer's own
        for key in defaults:
            payer.pop(key, None)
    path = tmp_path / f"routing-{uuid.uuid4().hex[:8]}.yaml"   # each call its own file
    path.write_text(yaml.safe_dump(table))
    return str(path)


@pytest.fixture
def make_gateway(simulator, upstream, database_url, tmp_path):
    """Start a gateway (config overrides allowed) routed to the simulator over CORE SOAP."""
    started: list[Gateway] = []

    def start(**config: Any) -> Gateway:
        settings = {"TESTING": True, "FHIR_X12_DATABASE_URL": database_url,
                    "FHIR_X12_PAYER_URL": f"{simulator.url}/core/soap",
                    "FHIR_X12_TOKENS": f"{TOKEN},{READ_TOKEN}:read",
                    "FHIR_X12_FHIR_BASE": f"{upstream.url}/fhir",
                    "FHIR_X12_ROUTING": routing_table(tmp_path, timeout_seconds=1.0, budget_seconds=6,
                                                      backoff_seconds=0.05,
                                                      breaker={"failures": 3, "reset_seconds": 0.5})}
        settings.update(config)
        gateway = Gateway(create_app(settings))
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.close()


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    return make_gateway()


def with_member_id(name: str, member_id: str) -> dict[str, Any]:
    """A fixture request whose Coverage asks for another member id (the simulator's magic ids)."""
    payload = copy.deepcopy(fhir_request(name))
    for entry in payload["entry"]:
        if entry["resource"]["resourceType"] == "Coverage":
            entry["resource"]["subscriberId"] = member_id
    return payload
