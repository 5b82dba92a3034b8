"""gunicorn workers whose own refusals are FHIR OperationOutcomes.

gunicorn answers a request it cannot parse (a request line or headers over its limits, a malformed line or
chunk) itself, before the app sees it, with an HTML page that quotes what it could not read. A FHIR client
gets an ``OperationOutcome`` from every other error; these workers answer those the same way, with a request
id, and quote nothing of the request back (the text may hold a member id; gunicorn's log line about it is
cleaned by ``serving.PrivateLogger``). ``fhir-x12 serve`` uses them; under a gunicorn of your own, name them
with ``--worker-class gateway.workers.ThreadWorker`` (or ``GeventWorker``).

Nothing heavy is imported here: gunicorn loads this module in the master, before a gevent worker
monkey-patches the standard library.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker
from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker

from gateway.fhir import FHIR_JSON_UTF8, operation_outcome
from gateway.observability import log_path

# what gunicorn refuses, by exception class: HTTP status, reason phrase, FHIR issue type, what the client is told
# (class names, not imports: each gunicorn version has its own set). Any other parse error is 400 / structure.
REFUSALS: dict[str, tuple[int, str, str, str]] = {
    "LimitRequestLine": (414, "URI Too Long", "too-long",
                         "the request line (method, path and query string) is longer than this server accepts; "
                         "send the search as POST [type]/_search with the parameters in the body"),
    "LimitRequestHeaders": (431, "Request Header Fields Too Large", "too-long",
                            "the request has more header fields, or longer ones, than this server accepts"),
    "UnsupportedTransferCoding": (501, "Not Implemented", "not-supported",
                                  "the request's Transfer-Encoding is not one this server supports (chunked)"),
    "ExpectationFailed": (417, "Expectation Failed", "not-supported",
                          "the request's Expect header asks for something other than 100-continue"),
    "ForbiddenProxyRequest": (403, "Forbidden", "forbidden", "PROXY protocol lines are not accepted from this "
                              "address"),
    "ConfigurationProblem": (500, "Internal Server Error", "exception",
                             "the server's configuration does not allow this request"),
    "SSLError": (403, "Forbidden", "security", "the TLS handshake failed"),
}
_WHAT = {   # a 400's text: what gunicorn could not read
    "InvalidRequestLine": "the request line", "InvalidRequestMethod": "the request method",
    "InvalidHTTPVersion": "the HTTP version", "InvalidHeader": "a header field",
    "InvalidHeaderName": "a header field's name", "ObsoleteFolding": "a header field folded over lines",
    "InvalidProxyLine": "the PROXY protocol line", "InvalidProxyHeader": "the PROXY protocol header",
    "InvalidSchemeHeaders": "the forwarded scheme headers, which contradict each other",
    "InvalidChunkSize": "a chunk size of the chunked body", "ChunkMissingTerminator": "the end of a chunk",
    "InvalidChunkExtension": "a chunk extension", "InvalidH2CPreface": "the HTTP/2 preface",
}


def refusal(exc: BaseException) -> tuple[int, str, bytes] | None:
    """Status, reason phrase and OperationOutcome body for an error gunicorn raised while reading a request;
    None for any other (the app's own failure: a 500)."""
    from gunicorn.http.errors import InvalidResponseHeader, InvalidResponseHeaderName, ParseException

    name = type(exc).__name__
    if isinstance(exc, (InvalidResponseHeader, InvalidResponseHeaderName)):
        return None   # a header the app tried to send: the server's fault, not the client's
    if name in REFUSALS:
        status, reason, code, text = REFUSALS[name]
    elif isinstance(exc, ParseException):
        status, reason, code = 400, "Bad Request", "structure"
        text = f"the HTTP request could not be read: {_WHAT.get(name, 'its request line or headers')} is malformed"
    else:
        return None
    return status, reason, _outcome(code, text)


def _outcome(code: str, text: str) -> bytes:
    return json.dumps(operation_outcome(code, text)).encode()


class _FhirErrors:
    """``handle_error`` of gunicorn's workers, answering with an OperationOutcome instead of an HTML page."""

    log: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        request_id = uuid.uuid4().hex
        found = refusal(exc)
        if found is not None:
            status, reason, body = found
            ip = (addr or ("", -1))[0]
            # PrivateLogger keeps what was wrong and drops the request text gunicorn's message quotes
            self.log.warning(f"Invalid request from ip={ip}: {exc}", extra={"request_id": request_id})
        else:
            status, reason = 500, "Internal Server Error"
            body = _outcome("exception", "internal error; the request id in X-Request-ID finds it in the server's "
                            "log")
            if getattr(req, "uri", None) is not None:   # the path fit for logs: no query, no ids (observability)
                self.log.exception("Error handling request %s %s", getattr(req, "method", ""),
                                   log_path(urlsplit(str(req.uri)).path, matched=False),
                                   extra={"request_id": request_id})
            else:
                self.log.exception("Error handling request (no URI read)", extra={"request_id": request_id})
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {FHIR_JSON_UTF8}\r\n"
                f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n")
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except Exception:   # the client went away: nothing to tell it
            self.log.debug("Failed to send error message.")


class ThreadWorker(_FhirErrors, _ThreadWorker):
    """gunicorn's gthread worker, refusing in FHIR."""


class GeventWorker(_FhirErrors, _GeventWorker):
    """gunicorn's gevent worker, refusing in FHIR."""
