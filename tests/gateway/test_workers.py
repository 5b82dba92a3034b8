"""gateway.workers: what gunicorn refuses before the app sees a request is answered with an OperationOutcome.

The served path (both worker classes, real gunicorn) is in test_serve; here every refusal's status and issue
code, the answer's bytes on a socket, and the log lines, without starting a server.
"""

from __future__ import annotations

import json
import logging
import socket

import pytest
from gunicorn.http import errors

from gateway.fhir.models import validate_structure
from gateway.serving import FHIR_WORKERS, PrivateLogger
from gateway.workers import GeventWorker, ThreadWorker, refusal

ISSUE_TYPES = {"too-long", "not-supported", "forbidden", "exception", "security", "structure"}


@pytest.mark.parametrize(("exc", "status", "code"), [
    (errors.LimitRequestLine(5000, 4094), 414, "too-long"),
    (errors.LimitRequestHeaders("limit request headers fields"), 431, "too-long"),
    (errors.InvalidRequestLine("GET /CoverageEligibilityRequest?patient=DELGADO MARIA"), 400, "structure"),
    (errors.InvalidHeader("X-Member: ACM123456789"), 400, "structure"),
    (errors.InvalidChunkSize(b"zz"), 400, "structure"),
    (errors.ForbiddenProxyRequest("10.0.0.9"), 403, "forbidden"),
    (errors.ConfigurationProblem("forwarded-allow-ips"), 500, "exception"),
])
def test_each_refusal_is_an_operation_outcome_quoting_nothing_of_the_request(exc, status, code):
    found = refusal(exc)
    assert found is not None
    got_status, reason, body = found
    assert (got_status, json.loads(body)["issue"][0]["code"]) == (status, code)
    assert reason and code in ISSUE_TYPES
    validate_structure(json.loads(body))   # a valid R4 OperationOutcome
    assert b"DELGADO" not in body and b"ACM123456789" not in body and b"10.0.0.9" not in body


def test_unknown_gunicorn_parse_errors_are_400_and_other_errors_are_left_to_the_500():
    class NewParseError(errors.ParseException):   # a later gunicorn's addition
        pass

    status, _, body = refusal(NewParseError("GET /x?name=DELGADO"))
    assert status == 400 and b"DELGADO" not in body
    assert refusal(ValueError("boom")) is None
    assert refusal(errors.InvalidResponseHeader("X-Bad")) is None   # the app's fault, not the client's


class _Log:
    """The slice of gunicorn's logger the workers call, recording through a PrivateLogger's filters."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def warning(self, msg, *args, **kwargs):
        self.lines.append(("warning", msg % args if args else msg, kwargs.get("extra", {})))

    def exception(self, msg, *args, **kwargs):
        self.lines.append(("exception", msg % args if args else msg, kwargs.get("extra", {})))

    def debug(self, msg, *args, **kwargs):
        self.lines.append(("debug", msg, {}))


def _answer(worker_class, exc, req=None) -> tuple[str, dict, _Log]:
    worker = worker_class.__new__(worker_class)   # handle_error needs only the logger
    worker.log = _Log()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        worker.handle_error(req, ours, ("127.0.0.1", 50000), exc)
        ours.close()
        answer = b""
        while chunk := theirs.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode("latin-1"), json.loads(body), worker.log


@pytest.mark.parametrize("worker_class", [ThreadWorker, GeventWorker])
def test_the_answer_on_the_wire(worker_class):
    head, body, log = _answer(worker_class, errors.LimitRequestLine(5000, 4094))
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 414 URI Too Long"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/fhir+json; charset=utf-8" and headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(json.dumps(body).encode())
    assert body["issue"][0]["code"] == "too-long"
    (kind, text, extra), = log.lines
    # the request id the client got is on the log line, which says what was wrong
    assert kind == "warning" and "Request Line is too large" in text
    assert extra == {"request_id": headers["X-Request-ID"]}


def test_an_unexpected_failure_is_a_500_outcome_logged_with_its_path_only():
    class Req:
        method, uri = "GET", "/CoverageEligibilityRequest?patient=DELGADO"

    head, body, log = _answer(ThreadWorker, RuntimeError("DELGADO"), Req())
    assert head.startswith("HTTP/1.1 500 ") and body["issue"][0]["code"] == "exception"
    assert "DELGADO" not in json.dumps(body)
    (kind, text, extra), = log.lines
    assert kind == "exception" and text.startswith("Error handling request GET")


def test_private_logger_drops_what_gunicorn_quoted(caplog):
    """The warning the worker writes goes through PrivateLogger, which keeps gunicorn's reason only."""
    from types import SimpleNamespace

    logger = PrivateLogger.__new__(PrivateLogger)
    logger.error_log = logging.getLogger("test.gunicorn.error")
    logger.cfg = SimpleNamespace()
    with caplog.at_level(logging.WARNING, logger="test.gunicorn.error"):
        logger.warning("Invalid request from ip=127.0.0.1: Invalid HTTP request line: 'GET /?patient=DELGADO'",
                       extra={"request_id": "abc"})
    assert caplog.records[0].getMessage() == "Invalid request from ip=127.0.0.1: Invalid HTTP request line"
    assert caplog.records[0].request_id == "abc"


def test_serve_names_the_fhir_workers_for_both_classes():
    import importlib

    for name, path in FHIR_WORKERS.items():
        module, _, cls = path.rpartition(".")
        worker = getattr(importlib.import_module(module), cls)
        assert name in worker.__mro__[2].__module__   # gunicorn's gthread / ggevent worker underneath


def test_the_debug_line_before_each_request_keeps_only_known_path_words():
    from types import SimpleNamespace

    from gateway.serving import pre_request

    log = _Log()
    log.debug = lambda msg, *args: log.lines.append(("debug", msg % args, {}))
    pre_request(SimpleNamespace(log=log), SimpleNamespace(method="GET", path="/Patient/DELGADO-MARIA-19780514"))
    (kind, text, _), = log.lines
    assert kind == "debug" and text.startswith("GET /Patient/") and "DELGADO" not in text and "1978" not in text
