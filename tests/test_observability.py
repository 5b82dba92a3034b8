"""JSON logs, request ids and X12 redaction (gateway.observability) on a tiny Flask app."""

from __future__ import annotations

import io
import json
import logging

import pytest
from flask import Flask, g, jsonify

from gateway.errors import ConfigError
from gateway.observability import init_logging, log_path, redact, request_id_from

X12 = ("ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *240101*1200*^*00501*000000001*0*P*:~"
       "NM1*IL*1*DELGADO*MARIA****MI*W123456789~DMG*D8*19800101*F~")
log = logging.getLogger("gateway.test_observability")


@pytest.fixture
def stream():  # type: ignore[no-untyped-def]
    buffer = io.StringIO()
    yield buffer
    from gateway.observability import _our_handler

    handler = _our_handler(logging.getLogger("gateway"))
    if handler is not None:
        handler.use_stream(None)


def make_app(stream: io.StringIO, **config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, **config)
    init_logging(app, stream=stream)

    @app.get("/CoverageEligibilityRequest/<id>")
    def read(id: str):  # type: ignore[no-untyped-def]
        g.client, g.payer_id, g.outcome = "token#1", "ACME", "complete"
        log.info("reading one request")
        return jsonify(id=id)

    @app.post("/CoverageEligibilityRequest/$submit")
    def submit():  # type: ignore[no-untyped-def]
        log.info("payer answered %s", X12)
        return jsonify(ok=True)

    @app.get("/CoverageEligibilityResponse")
    def search():  # type: ignore[no-untyped-def]
        return jsonify(resourceType="Bundle")

    return app


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def access_lines(stream: io.StringIO) -> list[dict]:
    return [entry for entry in lines(stream) if entry.get("logger") == "gateway.access"]


def test_access_line_is_json_without_query_or_ids(stream: io.StringIO) -> None:
    client = make_app(stream).test_client()
    response = client.get("/CoverageEligibilityRequest/patient-12345?patient=W123456789&birthdate=1980-01-01")
    assert response.status_code == 200
    raw = stream.getvalue()
    assert "W123456789" not in raw and "1980-01-01" not in raw and "patient-12345" not in raw
    assert "?" not in raw
    [access] = access_lines(stream)
    assert access["method"] == "GET"
    assert access["path"] == "/CoverageEligibilityRequest/{id}"
    assert access["route"] == "/CoverageEligibilityRequest/<id>"
    assert access["status"] == 200
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    assert access["request_id"] == response.headers["X-Request-ID"]
    assert (access["client"], access["payer"], access["outcome"]) == ("token#1", "ACME", "complete")
    assert access["level"] == "INFO"
    assert "time" in access


def test_every_record_in_a_request_has_the_request_id(stream: io.StringIO) -> None:
    client = make_app(stream).test_client()
    response = client.get("/CoverageEligibilityRequest/abc", headers={"X-Request-ID": "trace-42.a_b"})
    assert response.headers["X-Request-ID"] == "trace-42.a_b"
    records = lines(stream)
    assert {r["message"] for r in records} >= {"reading one request", "GET /CoverageEligibilityRequest/{id} 200"}
    assert {r["request_id"] for r in records} == {"trace-42.a_b"}


def test_request_id_generated_when_missing(stream: io.StringIO) -> None:
    client = make_app(stream).test_client()
    first = client.get("/CoverageEligibilityResponse").headers["X-Request-ID"]
    second = client.get("/CoverageEligibilityResponse").headers["X-Request-ID"]
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != second


@pytest.mark.parametrize("incoming", ["has space", "x" * 65, "semi;colon", "tab\there", "", "ünï", "../../etc"])
def test_unsafe_request_id_replaced(stream: io.StringIO, incoming: str) -> None:
    client = make_app(stream).test_client()
    response = client.get("/CoverageEligibilityResponse", headers={"X-Request-ID": incoming} if incoming else {})
    echoed = response.headers["X-Request-ID"]
    assert echoed != incoming
    assert len(echoed) == 32
    assert access_lines(stream)[0]["request_id"] == echoed


def test_request_id_helper() -> None:
    assert request_id_from("A" * 64) == "A" * 64
    assert request_id_from("A" * 65) != "A" * 65
    assert request_id_from(None) != request_id_from(None)


def test_unmatched_path_is_logged_without_query(stream: io.StringIO) -> None:
    client = make_app(stream).test_client()
    assert client.get("/nowhere?name=DELGADO").status_code == 404
    [access] = access_lines(stream)
    assert access["path"] == "/{x}" and access["status"] == 404 and access["route"] is None   # "nowhere" may be data
    assert "DELGADO" not in stream.getvalue()


def test_x12_in_log_arguments_is_redacted(stream: io.StringIO) -> None:
    client = make_app(stream).test_client()
    assert client.post("/CoverageEligibilityRequest/$submit").status_code == 200
    raw = stream.getvalue()
    assert "ISA*" not in raw and "DELGADO" not in raw and "NM1" not in raw
    messages = [r["message"] for r in lines(stream)]
    assert f"payer answered [x12 redacted: {len(X12)} chars]" in messages
    assert access_lines(stream)[0]["path"] == "/CoverageEligibilityRequest/$submit"


def test_x12_in_exception_text_is_redacted(stream: io.StringIO) -> None:
    make_app(stream)
    try:
        raise ValueError(f"bad interchange: {X12}")
    except ValueError:
        log.exception("translation failed")
    raw = stream.getvalue()
    assert "translation failed" in raw and "ValueError" in raw
    assert "DELGADO" not in raw


@pytest.mark.parametrize("value", [X12, X12.replace("*", "|"), "~NM1*IL*1*DOE", "NM1*IL*1*DOE*JOHN",
                                   X12.encode(), ValueError(X12), ("x", X12), [X12], {"k": X12}])
def test_redact_removes_x12(value: object) -> None:
    assert "DOE" not in repr(redact(value)) and "DELGADO" not in repr(redact(value))
    assert "redacted" in repr(redact(value))


@pytest.mark.parametrize("value", ["plain text", 42, 1.5, None, True, ("a", 1), "ISA is a word", "a*b~c"])
def test_redact_keeps_other_values(value: object) -> None:
    assert redact(value) == value


def test_log_path() -> None:
    assert log_path("/CoverageEligibilityResponse/abc-1") == "/CoverageEligibilityResponse/{id}"
    assert log_path("/fhir/CoverageEligibilityRequest/abc/_history/2") == \
        "/fhir/CoverageEligibilityRequest/{id}/_history/{vid}"
    assert log_path("/CoverageEligibilityRequest/$submit") == "/CoverageEligibilityRequest/$submit"
    assert log_path("/CoverageEligibilityRequest/_search") == "/CoverageEligibilityRequest/_search"
    assert log_path("/CoverageEligibilityRequest") == "/CoverageEligibilityRequest"
    assert len(log_path("/" + "a" * 500)) == 203
    # ids of any resource type, and async status ids, stay out of the logs
    assert log_path("/Patient/ACM482193057") == "/Patient/{id}"
    assert log_path("/_async/3f2a9c") == "/_async/{id}"
    # a path no route knows keeps only what cannot be data: resource types, $operations, _keywords
    assert log_path("/Coverage/DELGADO-19780514/_history/2", matched=False) == "/Coverage/{id}/_history/{vid}"
    assert log_path("/Delgado/Maria", matched=False) == "/{x}/{x}"
    assert log_path("/CoverageEligibilityRequest/$validate", matched=False) == "/CoverageEligibilityRequest/$validate"
    # gunicorn's DEBUG line reads every path unmatched: the operations endpoints keep their names
    assert [log_path(p, matched=False) for p in ("/healthz", "/readyz", "/metrics")] == ["/healthz", "/readyz",
                                                                                        "/metrics"]


def test_init_logging_is_idempotent(stream: io.StringIO) -> None:
    app = make_app(stream)
    init_logging(app, stream=stream)
    init_logging(Flask("another"), stream=stream)
    ours = [h for h in logging.getLogger("gateway").handlers if type(h).__name__ == "JsonLogHandler"]
    assert len(ours) == 1
    app.test_client().get("/CoverageEligibilityResponse")
    assert len(access_lines(stream)) == 1


def test_log_level_from_config(stream: io.StringIO) -> None:
    make_app(stream, FHIR_X12_LOG_LEVEL="warning")
    assert logging.getLogger("gateway").level == logging.WARNING
    make_app(stream, FHIR_X12_LOG_LEVEL="DEBUG")
    assert logging.getLogger("gateway").level == logging.DEBUG
    make_app(stream)
    assert logging.getLogger("gateway").level == logging.INFO
    with pytest.raises(ConfigError, match="FHIR_X12_LOG_LEVEL"):
        make_app(stream, FHIR_X12_LOG_LEVEL="loud")
    make_app(stream)


def test_request_id_set_even_when_an_earlier_hook_answers(stream: io.StringIO) -> None:
    app = Flask(__name__)

    @app.before_request
    def refuse():  # type: ignore[no-untyped-def]
        return jsonify(error="no"), 401

    init_logging(app, stream=stream)   # registered after, still runs first

    @app.get("/x")
    def x():  # type: ignore[no-untyped-def]
        return "x"

    response = app.test_client().get("/x")
    assert response.status_code == 401
    [access] = access_lines(stream)
    assert access["request_id"] == response.headers["X-Request-ID"]
    assert access["status"] == 401 and access["duration_ms"] is not None


@pytest.mark.parametrize("path, logged", [
    ("/CoverageEligibilityRequest/_DELGADO-MARIA-19780514", "/CoverageEligibilityRequest/{id}"),   # a route's value
    ("/CoverageEligibilityRequest/$ACM482193057", "/CoverageEligibilityRequest/{id}"),             # whatever its shape
    ("/_delgado-maria", "/{x}"),                                                   # no route: not a FHIR keyword
    ("/static/maria-delgado-1978-05-14", "/static/{filename}"),   # a plain Flask app has the route: named
    ("/Coverage/_delgado/_history/2", "/Coverage/{id}/_history/{vid}"),
])
def test_access_line_never_quotes_a_value_that_looks_like_a_keyword(stream: io.StringIO, path: str,
                                                                     logged: str) -> None:
    app = make_app(stream)
    app.test_client().get(path)
    (line,) = access_lines(stream)
    assert line["path"] == logged and logged in line["message"]


def test_the_gateway_has_no_static_route(tmp_path) -> None:
    from gateway.app import create_app

    app = create_app({"TESTING": True, "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"})
    try:
        assert not [r for r in app.url_map.iter_rules() if r.endpoint == "static"]
    finally:
        app.extensions["fhir_x12"]["close"]()


def test_a_startup_warning_is_said_once_by_the_check_not_again_by_each_worker(monkeypatch, caplog) -> None:
    """``fhir-x12 serve`` builds the app to check it, then sets the variable before the workers build theirs."""
    import logging

    from gateway.observability import STARTUP_REPORTED_ENV, startup_warning

    logger = logging.getLogger("gateway.test_startup")
    monkeypatch.delenv(STARTUP_REPORTED_ENV, raising=False)
    with caplog.at_level(logging.DEBUG, logger="gateway.test_startup"):
        startup_warning(logger, "the API is %s", "open")
        monkeypatch.setenv(STARTUP_REPORTED_ENV, "1")
        startup_warning(logger, "the API is %s", "open")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "the API is open"),
                                                                       ("DEBUG", "the API is open")]
