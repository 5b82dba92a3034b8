"""Prometheus metrics (gateway.metrics) on a tiny Flask app."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask, abort, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, values
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import MULTIPROC_ENV, GatewayMetrics, get_metrics, init_metrics

FAMILIES = ("fhir_x12_payer_seconds", "fhir_x12_gateway_overhead_seconds", "fhir_x12_eligibility",
            "fhir_x12_aaa", "fhir_x12_process_notes", "fhir_x12_http_requests")


def make_app(known_payers: set[str] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = True
    init_metrics(app, known_payers=known_payers)

    @app.get("/CoverageEligibilityRequest/<id>")
    def read(id: str):  # type: ignore[no-untyped-def]
        if id == "missing":
            abort(404)
        return jsonify(id=id)

    @app.post("/CoverageEligibilityRequest/$submit")
    def submit():  # type: ignore[no-untyped-def]
        return jsonify(ok=True)

    return app


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(app: Flask) -> str:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return response.get_data(as_text=True)


def test_exposition_has_every_family() -> None:
    app = make_app({"ACME"})
    metrics = get_metrics(app)
    assert isinstance(metrics, GatewayMetrics)
    assert app.extensions["fhir_x12_metrics"] is metrics
    metrics.observe_payer("ACME", "soap", 0.42)
    metrics.observe_eligibility("ACME", "complete", aaa_codes=["72", "75"], notes=3, overhead=0.012)
    text = scrape(app)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert set(FAMILIES) <= names
    for family in FAMILIES:
        assert f"# TYPE {family}" in text
    assert 'fhir_x12_payer_seconds_bucket{le="20.0",payer="ACME",transport="soap"} 1.0' in text
    assert 'fhir_x12_payer_seconds_bucket{le="0.25",payer="ACME",transport="soap"} 0.0' in text
    assert 'fhir_x12_payer_seconds_bucket{le="0.5",payer="ACME",transport="soap"} 1.0' in text
    found = samples(text)
    assert found[("fhir_x12_eligibility_total", (("outcome", "complete"), ("payer", "ACME")))] == 1
    assert found[("fhir_x12_aaa_total", (("code", "72"), ("payer", "ACME")))] == 1
    assert found[("fhir_x12_aaa_total", (("code", "75"), ("payer", "ACME")))] == 1
    assert found[("fhir_x12_process_notes_bucket", (("le", "0.0"), ("payer", "ACME")))] == 0
    assert found[("fhir_x12_process_notes_bucket", (("le", "5.0"), ("payer", "ACME")))] == 1
    assert found[("fhir_x12_gateway_overhead_seconds_bucket", (("le", "0.025"),))] == 1
    assert found[("fhir_x12_gateway_overhead_seconds_bucket", (("le", "0.01"),))] == 0


def test_failure_kinds_without_extras() -> None:
    metrics = GatewayMetrics({"ACME"})
    for kind in ("timeout", "unavailable", "rejected", "trace-mismatch", "circuit-open", "busy",
                 "invalid-request", "unresolved-reference"):
        metrics.observe_eligibility("ACME", kind)
    metrics.observe_eligibility(None, "invalid-request")
    metrics.observe_eligibility("none", "unknown-payer")
    found = samples(metrics.exposition().decode())
    assert found[("fhir_x12_eligibility_total", (("outcome", "trace-mismatch"), ("payer", "ACME")))] == 1
    assert found[("fhir_x12_eligibility_total", (("outcome", "invalid-request"), ("payer", "none")))] == 1
    assert found[("fhir_x12_eligibility_total", (("outcome", "unknown-payer"), ("payer", "none")))] == 1
    assert not [key for key in found if key[0] == "fhir_x12_process_notes_count"]


def test_known_payers_guard() -> None:
    metrics = GatewayMetrics(known_payers={"ACME", "BETA"})
    for payer in ("ACME", "BETA", "W123456789", "patient-supplied", "ACME"):
        metrics.observe_eligibility(payer, "complete")
    found = samples(metrics.exposition().decode())
    payers = {dict(labels)["payer"]: value for (name, labels), value in found.items()
              if name == "fhir_x12_eligibility_total"}
    assert payers == {"ACME": 2, "BETA": 1, "other": 2}


def test_unbounded_payers_capped_at_100() -> None:
    metrics = GatewayMetrics()
    for i in range(250):
        metrics.observe_payer(f"P{i:03d}", "soap", 0.1)
    metrics.observe_payer("P000", "soap", 0.1)   # an early one keeps its own series
    found = samples(metrics.exposition().decode())
    counts = {dict(labels)["payer"]: value for (name, labels), value in found.items()
              if name == "fhir_x12_payer_seconds_count"}
    assert len(counts) == 101
    assert counts["other"] == 150
    assert counts["P000"] == 2
    assert "P100" not in counts


def test_aaa_codes_and_outcomes_are_bounded() -> None:
    metrics = GatewayMetrics({"ACME"})
    metrics.observe_eligibility("ACME", "complete", aaa_codes=["72", "not a code <script>", "", None])
    metrics.observe_eligibility("ACME", "Some Exception Text with spaces")
    found = samples(metrics.exposition().decode())
    codes = {dict(labels)["code"] for (name, labels) in found if name == "fhir_x12_aaa_total"}
    assert codes == {"72", "other", "none"}
    outcomes = {dict(labels)["outcome"] for (name, labels) in found if name == "fhir_x12_eligibility_total"}
    assert outcomes == {"complete", "other"}


def test_http_counter() -> None:
    app = make_app()
    client = app.test_client()
    assert client.get("/CoverageEligibilityRequest/abc").status_code == 200
    assert client.get("/CoverageEligibilityRequest/def").status_code == 200
    assert client.get("/CoverageEligibilityRequest/missing").status_code == 404
    assert client.post("/CoverageEligibilityRequest/$submit").status_code == 200
    assert client.get("/nowhere/W123456789").status_code == 404
    found = samples(scrape(app))

    def count(method: str, route: str, status: str) -> float:
        return found.get(("fhir_x12_http_requests_total",
                          (("method", method), ("route", route), ("status", status))), 0)

    assert count("GET", "/CoverageEligibilityRequest/<id>", "200") == 2
    assert count("GET", "/CoverageEligibilityRequest/<id>", "404") == 1
    assert count("POST", "/CoverageEligibilityRequest/$submit", "200") == 1
    assert count("GET", "unmatched", "404") == 1
    assert "W123456789" not in scrape(app) and "abc" not in scrape(app)
    assert count("GET", "/metrics", "200") == 0   # the scrape is counted after the body was rendered
    assert samples(scrape(app))[("fhir_x12_http_requests_total",
                                 (("method", "GET"), ("route", "/metrics"), ("status", "200")))] >= 1


def test_observe_http_direct() -> None:
    metrics = GatewayMetrics()
    metrics.observe_http("BREW", None, 405)
    metrics.observe_http("get", "/x", "200")
    found = samples(metrics.exposition().decode())
    assert found[("fhir_x12_http_requests_total", (("method", "other"), ("route", "unmatched"), ("status", "405")))]
    assert found[("fhir_x12_http_requests_total", (("method", "GET"), ("route", "/x"), ("status", "200")))]


def test_each_app_has_its_own_registry() -> None:
    first, second = make_app({"ACME"}), make_app({"ACME"})
    get_metrics(first).observe_eligibility("ACME", "complete")
    assert 'fhir_x12_eligibility_total{outcome="complete",payer="ACME"} 1.0' in scrape(first)
    assert 'fhir_x12_eligibility_total{outcome="complete",payer="ACME"}' not in scrape(second)
    assert get_metrics(first).registry is not get_metrics(second).registry


def test_init_metrics_twice_returns_the_same_metrics() -> None:
    app = make_app()
    assert init_metrics(app) is get_metrics(app)


@pytest.mark.parametrize("seconds", [-1.0, 0.0])
def test_negative_durations_are_clamped(seconds: float) -> None:
    metrics = GatewayMetrics()
    metrics.observe_payer("ACME", "soap", seconds)
    metrics.observe_eligibility("ACME", "complete", overhead=seconds)
    found = samples(metrics.exposition().decode())
    assert found[("fhir_x12_payer_seconds_sum", (("payer", "ACME"), ("transport", "soap")))] == 0
    assert found[("fhir_x12_gateway_overhead_seconds_sum", ())] == 0


@pytest.fixture
def worker_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """Multiprocess mode in ``tmp_path`` with a process id the test chooses: two gunicorn workers, simulated.

    prometheus_client keys its files by the process id it is given, as its own tests do.
    """
    pid = {"value": 1}
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid["value"]))
    yield lambda value: pid.update(value=value)
    values.close_all_multiprocess_files()


def test_multiprocess_scrape_sums_every_worker(worker_pid: Callable[[int], None], tmp_path: Path) -> None:
    worker_pid(101)
    first = make_app({"ACME"})
    get_metrics(first).observe_eligibility("ACME", "complete", aaa_codes=["72"], notes=1, overhead=0.002)
    get_metrics(first).observe_payer("ACME", "soap", 0.3)
    assert first.test_client().post("/CoverageEligibilityRequest/$submit").status_code == 200
    worker_pid(202)
    second = make_app({"ACME"})
    get_metrics(second).observe_eligibility("ACME", "complete", notes=3, overhead=0.02)
    get_metrics(second).observe_eligibility("ACME", "timeout")
    get_metrics(second).observe_payer("ACME", "soap", 4)
    for _ in range(2):
        assert second.test_client().post("/CoverageEligibilityRequest/$submit").status_code == 200
    assert {path.name for path in tmp_path.glob("*.db")} == {"counter_101.db", "counter_202.db",
                                                              "histogram_101.db", "histogram_202.db"}
    assert get_metrics(first).multiprocess_dir == str(tmp_path)
    for pid, app in ((101, first), (202, second)):   # whichever worker answers the scrape
        worker_pid(pid)
        text = scrape(app)
        for family in FAMILIES:   # a family shows once some process has written a value of it
            assert f"# TYPE {family}" in text
        assert 'fhir_x12_payer_seconds_bucket{le="0.5",payer="ACME",transport="soap"} 1.0' in text
        assert 'fhir_x12_payer_seconds_bucket{le="5.0",payer="ACME",transport="soap"} 2.0' in text
        assert "pid=" not in text
        found = samples(text)
        assert found[("fhir_x12_eligibility_total", (("outcome", "complete"), ("payer", "ACME")))] == 2
        assert found[("fhir_x12_eligibility_total", (("outcome", "timeout"), ("payer", "ACME")))] == 1
        assert found[("fhir_x12_payer_seconds_count", (("payer", "ACME"), ("transport", "soap")))] == 2
        assert found[("fhir_x12_payer_seconds_sum", (("payer", "ACME"), ("transport", "soap")))] == pytest.approx(4.3)
        assert found[("fhir_x12_process_notes_bucket", (("le", "1.0"), ("payer", "ACME")))] == 1
        assert found[("fhir_x12_process_notes_bucket", (("le", "5.0"), ("payer", "ACME")))] == 2
        assert found[("fhir_x12_gateway_overhead_seconds_bucket", (("le", "0.0025"),))] == 1
        assert found[("fhir_x12_gateway_overhead_seconds_count", ())] == 2
        assert found[("fhir_x12_aaa_total", (("code", "72"), ("payer", "ACME")))] == 1
        submits = (("method", "POST"), ("route", "/CoverageEligibilityRequest/$submit"), ("status", "200"))
        assert found[("fhir_x12_http_requests_total", submits)] == 3


def test_multiprocess_after_prometheus_client_was_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable set after prometheus_client chose its in-memory values (at import): metrics still go to files."""
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    try:
        metrics = GatewayMetrics({"ACME"})
        assert values.ValueClass._multiprocess
        metrics.observe_eligibility("ACME", "complete")
        assert (tmp_path / f"counter_{os.getpid()}.db").is_file()
        found = samples(metrics.exposition().decode())
        assert found[("fhir_x12_eligibility_total", (("outcome", "complete"), ("payer", "ACME")))] == 1
    finally:
        values.close_all_multiprocess_files()


def test_without_multiprocess_dir_the_app_registry_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    metrics = GatewayMetrics({"ACME"})
    assert metrics.multiprocess_dir is None
    metrics.observe_eligibility("ACME", "complete")
    assert metrics.exposition() == generate_latest(metrics.registry)


def test_a_breaker_opening_is_counted_once_per_opening():
    from gateway.transport.client import CircuitBreaker

    metrics = GatewayMetrics(known_payers={"ACME01"})
    now = [0.0]
    breaker = CircuitBreaker(2, 1.0, lambda: now[0], "ACME01", on_open=metrics.observe_circuit_opened)
    for _ in range(4):   # opens at the second failure; failures while open do not open it again
        breaker.failed()
    now[0] = 2.0
    assert breaker.admit() is None   # half-open: the trial fails and reopens it
    breaker.failed()
    text = generate_latest(metrics.registry).decode()
    assert 'fhir_x12_payer_circuit_opened_total{payer="ACME01"} 2.0' in text
