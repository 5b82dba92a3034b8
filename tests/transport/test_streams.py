"""Deadlines on reading an answer: a server sending its headers a line at a time is cut off at the deadline."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from gateway.transport.streams import DeadlineAdapter, deadline


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", DeadlineAdapter(max_retries=0))
    return session


def test_headers_arriving_a_line_at_a_time_are_cut_at_the_deadline(header_drip: str):
    with _session() as session:
        started = time.monotonic()
        with pytest.raises((requests.ReadTimeout, requests.ConnectionError)), \
                deadline(time.monotonic() + 0.7):
            session.get(header_drip, timeout=(1, 1))
        assert time.monotonic() - started < 1.2   # without the deadline: 100 lines x 0.2 s, then http.client gives up


def test_without_a_deadline_the_adapter_reads_as_requests_does():
    """Outside ``deadline`` nothing changes: the read timeout applies as it always does."""
    with _session() as session, socket.create_server(("127.0.0.1", 0)) as quiet:
        port = quiet.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(requests.ReadTimeout):   # accepted by the backlog, never answered
            session.get(f"http://127.0.0.1:{port}/", timeout=(1, 0.3))
        assert 0.25 < time.monotonic() - started < 1.0


def test_a_deadline_already_past_ends_the_read_at_once(header_drip: str):
    with _session() as session, deadline(time.monotonic() - 1):
        started = time.monotonic()
        with pytest.raises((requests.ReadTimeout, requests.ConnectionError)):
            session.get(header_drip, timeout=(1, 5))
        assert time.monotonic() - started < 0.5


def test_a_reused_connection_after_a_deadline_block_reads_normally():
    """The deadline belongs to one exchange: the next request on the same pooled connection is not cut."""
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    server = make_server("127.0.0.1", 0, lambda environ, start: Response("ok")(environ, start), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with _session() as session:
            url = f"http://127.0.0.1:{server.port}/"
            with deadline(time.monotonic() + 5):
                assert session.get(url, timeout=(1, 1)).text == "ok"
            time.sleep(0.1)
            assert session.get(url, timeout=(1, 1)).text == "ok"
    finally:
        server.shutdown()
        thread.join(5)
