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
    """The deadline belongs to one exchange: the next request on the same kept-alive connection is not cut."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        accepted.append(1)
        with conn:
            for _ in range(2):   # two requests on one connection, each answered in full, kept alive
                if not conn.recv(65536):
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with _session() as session:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
            with deadline(time.monotonic() + 0.5):
                assert session.get(url, timeout=(1, 1)).text == "ok"
            time.sleep(0.7)   # past that deadline: a connection still bound to it would fail the next read
            assert session.get(url, timeout=(1, 1)).text == "ok"
        assert accepted == [1]   # one connection, reused
    finally:
        thread.join(5)
        listener.close()


def test_tls_through_an_https_proxy_counts_its_files_on_the_real_socket():
    """urllib3 wraps TLS-in-TLS (an https payer behind an https proxy) in SSLTransport, which has no file count of
    its own: the answer's file is counted on the socket beneath, as SSLTransport's own makefile does."""
    from urllib3.util.ssltransport import SSLTransport

    from gateway.transport.streams import _DeadlineSocket

    a, b = socket.socketpair()
    with a, b:
        transport = SSLTransport.__new__(SSLTransport)   # only its socket matters here
        transport.socket = a
        before = a._io_refs
        reader = _DeadlineSocket(transport, time.monotonic() + 5, time.monotonic).makefile("rb")
        assert a._io_refs == before + 1
        reader.close()
        assert a._io_refs == before


def test_https_under_gevent_reads_the_answer(loopback_ca):
    """gevent's TLS socket reads nothing for recv_into(buffer, 0): every https answer read as empty (the gateway
    runs gevent workers under load). A patched client process fetches from a TLS server in this one."""
    import ssl
    import subprocess
    import sys

    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(loopback_ca / "server.pem", loopback_ca / "server.key")
    server = make_server("127.0.0.1", 0, lambda environ, start: Response("ok" * 5000)(environ, start),
                         threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = f"""
from gevent import monkey
monkey.patch_all()
import time, requests
from gateway.transport.streams import DeadlineAdapter, deadline
session = requests.Session()
session.trust_env = False
session.mount("https://", DeadlineAdapter(max_retries=0))
with deadline(time.monotonic() + 10):
    answer = session.get("https://127.0.0.1:{server.port}/", timeout=(5, 5), verify={str(loopback_ca / 'ca.pem')!r})
print(answer.status_code, len(answer.text))
"""
    try:
        done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        thread.join(5)
    assert done.stdout.strip() == "200 10000", done.stderr[-2000:]
