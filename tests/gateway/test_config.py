"""Configuration from the environment, and the service's own refusals: 429, 503, readiness."""

from __future__ import annotations

import threading

import pytest
import requests
from sqlalchemy.exc import OperationalError

from gateway.app import create_app
from gateway.errors import ConfigError
from tests.conftest import FIXTURES
from tests.gateway.conftest import TOKEN, Gateway, fhir_request, routing_table

CER = "CoverageEligibilityRequest"


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FHIR_X12_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("FHIR_X12_TOKENS", TOKEN)
    monkeypatch.setenv("FHIR_X12_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("FHIR_X12_PAYER_URL", "http://127.0.0.1:9/core/soap")
    app = create_app({"TESTING": True})
    try:
        assert app.config["MAX_CONTENT_LENGTH"] == 4096
        assert (tmp_path / "env.db").exists()
        client = app.test_client()
        assert client.get(f"/{CER}").status_code == 401
        assert client.get(f"/{CER}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert app.extensions["fhir_x12"]["service"].routes.route("ANYPAYER").url == "http://127.0.0.1:9/core/soap"
    finally:
        app.extensions["fhir_x12"]["close"]()


def test_processes_share_payer_limits_and_small_limits_are_named(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("FHIR_X12_DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
    monkeypatch.setenv("FHIR_X12_PROCESSES", "2")
    with caplog.at_level("WARNING", logger="gateway.app"):
        app = create_app({"TESTING": True})
    try:
        client = app.extensions["fhir_x12"]["service"].client
        assert client.processes == 2
        assert client.limit(client.routes.route("ACME01")) == client.routes.route("ACME01").concurrency // 2
        # the shipped table's LHA77 allows one call at a time: two processes cannot split that
        assert client.oversubscribed() == ["LHA77"]
        assert any("LHA77" in r.getMessage() and "exceed" in r.getMessage() for r in caplog.records)
    finally:
        app.extensions["fhir_x12"]["close"]()


def test_serve_tells_the_workers_how_many_share_the_limits(monkeypatch, tmp_path):
    import os
    from types import SimpleNamespace

    from click.testing import CliRunner

    from gateway import app as app_module
    from gateway import cli, serving

    seen: dict[str, str | None] = {}
    # set, then removed: monkeypatch then restores the variable's absence after the CLI has set it
    monkeypatch.setenv("FHIR_X12_PROCESSES", "unset")
    monkeypatch.delenv("FHIR_X12_PROCESSES")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unset")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setenv("FHIR_X12_STARTUP_REPORTED", "unset")   # serve sets it after its check: not for later tests
    monkeypatch.delenv("FHIR_X12_STARTUP_REPORTED")
    # no real app: building one here would switch prometheus_client to multiprocess mode for the whole test run
    monkeypatch.setattr(app_module, "create_app", lambda: SimpleNamespace(extensions={"fhir_x12": {
        "close": lambda: None}}))
    monkeypatch.setattr(serving, "serve", lambda *a, **k: seen.update(processes=os.environ.get("FHIR_X12_PROCESSES"),
                                                                       keepalive=k["keepalive"]))
    result = CliRunner().invoke(cli.main, ["serve", "--port", "0", "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert seen == {"processes": "3", "keepalive": 5}
    assert os.environ.get("FHIR_X12_STARTUP_REPORTED") == "1"   # the workers log the check's warnings at DEBUG
    result = CliRunner().invoke(cli.main, ["serve", "--port", "0", "--keepalive", "75"])   # behind a balancer (60 s)
    assert result.exit_code == 0, result.output
    assert seen["keepalive"] == 75


@pytest.mark.parametrize(("key", "value", "words"), [
    ("FHIR_X12_MAX_BODY_BYTES", "lots", "whole number"),
    ("FHIR_X12_PROCESSES", "0", "positive"),
    ("FHIR_X12_ASYNC_WORKERS", "0", "positive"),
    ("FHIR_X12_TOKENS", "tiny-tok", "16"),
    ("FHIR_X12_FHIR_BASE", "ftp://ehr.example/fhir", "FHIR_X12_FHIR_BASE"),
    ("FHIR_X12_BASE_URL", "not a url", "FHIR_X12_BASE_URL"),
    ("FHIR_X12_BASE_URL", "ftp://gateway.example/fhir", "FHIR_X12_BASE_URL"),
    ("FHIR_X12_BASE_URL", "https://gateway.example/fhir?x=1", "FHIR_X12_BASE_URL"),
    ("FHIR_X12_BASE_URL", "https://gateway.example:99999/fhir", "FHIR_X12_BASE_URL"),
])
def test_bad_settings_name_the_key(monkeypatch, tmp_path, key: str, value: str, words: str):
    monkeypatch.setenv("FHIR_X12_DATABASE_URL", f"sqlite:///{tmp_path / 'bad.db'}")
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        create_app({"TESTING": True})
    assert words in str(caught.value)
    if key == "FHIR_X12_TOKENS":
        assert value not in str(caught.value)   # a token is never echoed


def test_payer_concurrency_full_is_429(make_gateway, simulator, tmp_path):
    gateway = make_gateway(FHIR_X12_ROUTING=routing_table(tmp_path, concurrency=1, queue_seconds=0,
                                                          timeout_seconds=3.0, budget_seconds=8))
    requests.post(f"{simulator.url}/scenarios", json={"memberid": "*", "fault": "latency", "seconds": 1.0},
                  timeout=5)
    first: list[int] = []
    holder = threading.Thread(target=lambda: first.append(
        gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic")).status_code))
    holder.start()
    deadline = threading.Event()
    deadline.wait(0.4)   # the first request now holds the payer's only slot
    busy = gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"))
    holder.join()
    assert busy.status_code == 429, busy.text
    assert busy.json()["issue"][0]["code"] == "throttled"
    assert first == [200]


def test_store_down_is_503_and_nothing_is_sent(gateway: Gateway, simulator, monkeypatch):
    service = gateway.app.extensions["fhir_x12"]["service"]
    calls = simulator.calls["/core/soap"]

    def down(*_args, **_kwargs):
        raise OperationalError("INSERT ...", {}, Exception("database is locked"))

    monkeypatch.setattr(service.store, "record_request", down)
    response = gateway.post(f"/{CER}/$submit", fhir_request("subscriber-generic"))
    assert response.status_code == 503 and response.json()["issue"][0]["code"] == "transient"
    assert simulator.calls["/core/soap"] == calls


def test_readiness_follows_the_store(gateway: Gateway, monkeypatch):
    assert requests.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    engine = gateway.app.extensions["fhir_x12"]["service"].store.engine

    def refuse(*_args, **_kwargs):
        raise OperationalError("select 1", {}, Exception("connection refused"))

    monkeypatch.setattr(engine, "connect", refuse)
    not_ready = requests.get(f"{gateway.url}/readyz", timeout=10)
    assert not_ready.status_code == 503 and not_ready.json()["store"] == "OperationalError"


def test_store_failing_before_an_async_send_is_503(gateway: Gateway, simulator, monkeypatch):
    service = gateway.app.extensions["fhir_x12"]["service"]
    prepared = service.prepare(fhir_request("subscriber-generic"), sending=False)
    calls = simulator.calls["/core/soap"]

    def down(*_args, **_kwargs):
        raise OperationalError("UPDATE ...", {}, Exception("disk I/O error"))

    monkeypatch.setattr(service.store, "record_sent", down)
    result = service.exchange(prepared)
    assert result.status == 503 and result.outcome == "store-unavailable"
    assert simulator.calls["/core/soap"] == calls


@pytest.mark.parametrize(("url", "words"), [
    ("postgresql://gateway:s3cret@127.0.0.1:1/audit", "connection"),
    ("notaurl", "not a database URL"),
    ("http://example.org/db", "not a database this gateway keeps its store in"),
])
def test_a_store_that_cannot_be_opened_names_the_setting_in_one_line(url: str, words: str):
    with pytest.raises(ConfigError) as caught:
        create_app({"TESTING": True, "FHIR_X12_DATABASE_URL": url})
    message = str(caught.value)
    assert message.startswith("FHIR_X12_DATABASE_URL: cannot open the audit store: ") and words in message
    assert "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize("args", [["serve", "--port", "{port}"], ["demo", "--port", "{port}", "--payer-port", "0"],
                                  ["demo", "--port", "0", "--payer-port", "{port}"]])
def test_a_port_in_use_is_named_before_anything_starts(monkeypatch, tmp_path, args: list[str]):
    """Not gunicorn retrying for 5 s after the store was migrated, nor the demo using a stale simulator."""
    import socket

    from click.testing import CliRunner

    from gateway import cli

    monkeypatch.chdir(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        members = ["--members", str(FIXTURES / "members")] if args[0] == "demo" else []
        result = CliRunner().invoke(cli.main, [a.format(port=port) for a in args] + members)
    option = "--payer-port" if args[-2:] == ["--payer-port", "{port}"] else "--port"
    assert result.exit_code == 2 and f"{option} {port}: cannot listen on 127.0.0.1:{port}" in result.output
    assert not list(tmp_path.iterdir())   # no store, no demo folder


def test_an_ipv6_host_in_brackets_is_checked_as_gunicorn_takes_it(monkeypatch):
    """``--host [::1]`` (gunicorn's form) must not be refused by the port check as an unknown host name."""
    import socket

    from click.testing import CliRunner

    from gateway import cli

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        taken = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli.main, ["serve", "--host", "[::1]", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on [::1]:{port}: Address already in use" in result.output
