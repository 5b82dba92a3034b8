"""DirectPost sends what ``session.post`` sends, and leaves a session with state of its own to requests."""

from __future__ import annotations

import gc
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from gateway.transport.client import DirectAnswer, DirectPost, _request_failure, _Retry, _session, failure_cause
from gateway.transport.routing import Route
from gateway.transport.streams import DeadlineAdapter, arriving, deadline


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        answer = b"ISA*answer~"
        self.send_response(200)
        self.send_header("Content-Type", "application/x12")
        self.send_header("Set-Cookie", "lb=node7; Path=/")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def _http_server(handler: type[BaseHTTPRequestHandler], path: str) -> Iterator[str]:
    """``handler`` on a loopback port in a thread: the URL of ``path`` there."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.seen = []
    with _http_server(_Recorder, "/core/soap?x=1") as url:
        yield url


def _post(post: DirectPost, url: str, body: bytes) -> bytes:
    with post(url, body, {"User-Agent": "gw/1", "Content-Type": "application/x12"}, timeout=(2.0, 2.0)) as response:
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/x12"
        return response.raw.read()


def test_the_direct_way_sends_what_session_post_sends(server: str, monkeypatch: pytest.MonkeyPatch):
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    session = _session(4)
    assert not session.trust_env
    direct = DirectPost(session)
    assert _post(direct, server, b"ISA*first~") == b"ISA*answer~"
    assert _post(direct, server, b"ISA*second, longer~") == b"ISA*answer~"   # the prepared URL again
    plain = requests.Session()
    plain.trust_env = False
    with plain.post(server, data=b"ISA*second, longer~", headers={"User-Agent": "gw/1", "Content-Type":
                                                                   "application/x12"}, stream=True) as response:
        response.raw.read()
    (m1, p1, h1, b1), (m2, p2, h2, b2), (m3, p3, h3, b3) = _Recorder.seen
    assert (m1, p1, b1) == ("POST", "/core/soap?x=1", b"ISA*first~")
    assert h1["content-length"] == "10" and h2["content-length"] == str(len(b2))
    assert (m2, p2, h2, b2) == (m3, p3, h3, b3)   # byte for byte what requests' own way sends
    # no cookies: a payer's Set-Cookie is not sent back
    assert "cookie" not in h2


def test_the_gateways_session_keeps_no_cookie_so_the_direct_way_stays(server: str):
    """The EHR's reference fetches share the session: a cookie one of them set (a load balancer's) would have
    sent every later payer call the long way, with that cookie."""
    session = _session(4)
    with session.post(server, data=b"ISA*ehr~", stream=True) as response:   # requests' own way, Set-Cookie back
        assert response.headers["Set-Cookie"].startswith("lb=")
    assert len(session.cookies) == 0
    direct = DirectPost(session)
    _post(direct, server, b"ISA*payer~")
    assert list(direct._targets) == [server] and "cookie" not in _Recorder.seen[-1][2]


def test_a_session_with_state_of_its_own_goes_through_requests(server: str):
    session = requests.Session()
    session.mount("http://", DeadlineAdapter())
    session.trust_env = False
    session.cookies.set("lb", "node1")
    direct = DirectPost(session)
    _post(direct, server, b"ISA*a~")
    _post(direct, server, b"ISA*b~")
    first, second = (h.get("cookie") for _, _, h, _ in _Recorder.seen)
    assert first == "lb=node1" and "lb=node7" in second   # the jar at work: what the server set is sent back
    assert not direct._targets
    session = requests.Session()   # trust_env: the environment's proxies and CA bundle are requests' to apply
    direct = DirectPost(session)
    _post(direct, server, b"ISA*c~")
    assert not direct._targets


def test_at_most_max_urls_are_kept_prepared(server: str, monkeypatch: pytest.MonkeyPatch):
    session = requests.Session()
    session.trust_env = False
    direct = DirectPost(session)
    monkeypatch.setattr(DirectPost, "MAX_URLS", 2)
    for n in range(4):
        _post(direct, f"{server}&n={n}", b"ISA*n~")
    assert len(direct._targets) == 2 and len(_Recorder.seen) == 4
    assert [path for _, path, _, _ in _Recorder.seen] == [f"/core/soap?x=1&n={n}" for n in range(4)]


# ------------------------------------------------------------------------- the direct way: connections reused


class _Counting(_Recorder):
    """Answers as _Recorder does, and counts the connections it was asked on."""

    connections: set[tuple[str, int]] = set()   # client addresses
    body = b"ISA*answer~"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        _Counting.connections.add(self.client_address)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x12")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture
def counting() -> Iterator[str]:
    _Counting.connections = set()
    _Counting.body = b"ISA*answer~"
    with _http_server(_Counting, "/x12") as url:
        yield url


def test_the_direct_way_keeps_a_connection_alive_for_the_next_post(counting: str):
    direct = DirectPost(_session(4))
    for _ in range(3):
        with direct(counting, b"ISA*n~", {"User-Agent": "gw/1"}, timeout=(2.0, 2.0)) as response:
            assert isinstance(response, DirectAnswer)
            assert b"".join(arriving(response)) == b"ISA*answer~"
    assert len(_Counting.connections) == 1


def test_an_answer_left_half_read_closes_its_connection(counting: str):
    """What is left of a body must never be read as the next answer: the connection is closed, not reused."""
    _Counting.body = b"ISA*" + b"x" * 300_000
    direct = DirectPost(_session(4))
    with direct(counting, b"ISA*n~", {}, timeout=(2.0, 2.0)) as response:
        assert next(arriving(response, 1024)).startswith(b"ISA*")
    with direct(counting, b"ISA*n~", {}, timeout=(2.0, 2.0)) as response:
        assert len(b"".join(arriving(response))) == len(_Counting.body)
    assert len(_Counting.connections) == 2


# ------------------------------------------------------------------- the direct way: failures as requests has them


_ROUTE = Route(payer_id="P", url="http://127.0.0.1/x12", transport="x12", sender_id="A", receiver_id="B")


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serving(behave: Callable[[socket.socket], None]) -> tuple[str, threading.Thread, socket.socket]:
    """A server on loopback that handles each connection with ``behave`` (in a thread of its own)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=_handle, args=(conn, behave), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/x12", thread, listener


def _stop(thread: threading.Thread, listener: socket.socket) -> None:
    thread.stop.set()  # type: ignore[attr-defined]
    thread.join(5)
    listener.close()


def _handle(conn: socket.socket, behave: Callable[[socket.socket], None]) -> None:
    with conn:
        try:
            conn.settimeout(3)
            behave(conn)
        except OSError:
            pass


def _request(conn: socket.socket) -> bytes:
    """One whole request (ours always has a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-l")))
    while len(body) < length:
        body += conn.recv(65536)
    return head


def _silent(conn: socket.socket) -> None:
    _request(conn)
    time.sleep(1.5)


def _hang_up(conn: socket.socket) -> None:
    _request(conn)


def _reset(conn: socket.socket) -> None:
    _request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _bad_status_line(conn: socket.socket) -> None:
    _request(conn)
    conn.sendall(b"HTTP/1.1 2x0 <Payload>ZQX</Payload>\r\n\r\n")


def _two_lengths(conn: socket.socket) -> None:
    _request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nISA*x")


_SEEN: list[str] = []   # what _then_hang_up was asked, in order


def _then_hang_up(conn: socket.socket) -> None:
    """Answers one request and keeps the connection, then hangs up on the next one once it has arrived."""
    _SEEN.append("connection")
    _request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nISA*")
    _request(conn)
    _SEEN.append("second 270")


def _outcome(post: Callable[[], object]) -> tuple[str, str, str, str]:
    """What a failed POST raised, as the client sees it: the exception, urllib3's reason, the operator's log line
    and what ``_request_failure`` makes of it."""
    with pytest.raises(requests.RequestException) as caught:
        with deadline(time.monotonic() + 30):
            post()
    exc = caught.value
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    failure = _request_failure(exc, _ROUTE, (1.0, 0.5))
    meaning = f"retry {type(failure.final).__name__}" if isinstance(failure, _Retry) else type(failure).__name__
    return type(exc).__name__, type(reason).__name__, failure_cause(exc), meaning


@pytest.mark.parametrize("behave, expected", [
    (_silent, ("ReadTimeout", "ReadTimeoutError", "PayerTimeout")),
    (_hang_up, ("ConnectionError", "ProtocolError", "PayerUnavailable")),
    (_reset, ("ConnectionError", "ProtocolError", "PayerUnavailable")),
    (_bad_status_line, ("ConnectionError", "ProtocolError", "PayerUnavailable")),
    # urllib3 leaves the socket of this one to the garbage collector, requests' way as well as ours: collected here
    pytest.param(_two_lengths, ("InvalidHeader", "InvalidHeader", "PayerUnavailable"),
                 marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")),
])
def test_a_failure_after_connecting_is_the_one_requests_raises(behave, expected):
    url, thread, listener = _serving(behave)
    try:
        direct = DirectPost(_session(4))
        ours = _outcome(lambda: direct(url, b"ISA*n~", {}, timeout=(1.0, 0.5)))
        theirs = _outcome(lambda: _session(4).post(url, data=b"ISA*n~", timeout=(1.0, 0.5), stream=True,
                                                   allow_redirects=False))
    finally:
        _stop(thread, listener)
        gc.collect()
    assert ours == theirs
    assert (ours[0], ours[1], ours[3]) == expected


def test_a_refused_connection_and_a_connect_timeout_are_retried_as_with_requests(closed_port: int):
    direct = DirectPost(_session(4))
    refused = f"http://127.0.0.1:{closed_port}/x12"
    ours = _outcome(lambda: direct(refused, b"ISA*n~", {}, timeout=(1.0, 0.5)))
    assert ours == _outcome(lambda: _session(4).post(refused, data=b"ISA*n~", timeout=(1.0, 0.5)))
    assert ours[0] == "ConnectionError" and ours[1] == "NewConnectionError" and ours[3] == "retry PayerUnavailable"
    assert "(Connection refused)" in ours[2]
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:   # one connection fills it; the next waits
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            waiting = f"http://127.0.0.1:{port}/x12"
            ours = _outcome(lambda: direct(waiting, b"ISA*n~", {}, timeout=(0.3, 0.5)))
            assert ours == _outcome(lambda: _session(4).post(waiting, data=b"ISA*n~", timeout=(0.3, 0.5)))
    assert ours[0] == "ConnectTimeout" and ours[3] == "retry PayerTimeout"


def test_a_kept_alive_connection_broken_after_the_270_is_not_sent_again():
    """The payer may have acted on a 270 sent over a connection that then broke: it is never sent a second time."""
    _SEEN.clear()
    url, thread, listener = _serving(_then_hang_up)
    try:
        direct = DirectPost(_session(4))
        with direct(url, b"ISA*first~", {}, timeout=(1.0, 1.0)) as response:
            assert b"".join(arriving(response)) == b"ISA*"
        ours = _outcome(lambda: direct(url, b"ISA*second~", {}, timeout=(1.0, 1.0)))
        time.sleep(0.3)   # time for a second connection, were one opened
    finally:
        _stop(thread, listener)
    assert ours[0] == "ConnectionError" and ours[3] == "PayerUnavailable"
    assert _SEEN == ["connection", "second 270"]   # the second 270 went once, on the kept connection


def test_tls_failures_are_requests_ssl_errors(loopback_ca: Path):
    """A server certificate the trust store does not know, and TLS to a server that does not speak it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(loopback_ca / "server.pem", loopback_ca / "server.key")

    def tls(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as wrapped:
            _request(wrapped)

    def plain_http(conn: socket.socket) -> None:
        conn.recv(65536)   # the client's hello
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    for behave in (tls, plain_http):
        url, thread, listener = _serving(behave)
        url = url.replace("http://", "https://")
        try:
            ours = _outcome(lambda: DirectPost(_session(4))(url, b"ISA*n~", {}, timeout=(1.0, 1.0)))  # noqa: B023
            theirs = _outcome(lambda: _session(4).post(url, data=b"ISA*n~", timeout=(1.0, 1.0)))  # noqa: B023
        finally:
            _stop(thread, listener)
        assert ours == theirs
        assert ours[0] == "SSLError" and ours[3] == "PayerUnavailable"
        assert behave is not tls or "CERTIFICATE_VERIFY_FAILED" in ours[2]


def test_a_ca_bundle_gone_since_the_start_is_an_os_error_before_any_connection(tmp_path: Path):
    """As requests has it (``_exchange`` answers it as a connection that could not be set up)."""
    with pytest.raises(OSError, match="CA certificate bundle"):
        DirectPost(_session(4))("https://127.0.0.1:9/x12", b"ISA*n~", {}, timeout=(1.0, 1.0),
                                verify=str(tmp_path / "gone.pem"))
