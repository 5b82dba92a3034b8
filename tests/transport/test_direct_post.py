"""DirectPost sends what ``session.post`` sends, and leaves a session with state of its own to requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from gateway.transport.client import DirectPost, _session
from gateway.transport.streams import DeadlineAdapter


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


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/core/soap?x=1"
    finally:
        httpd.shutdown()
        httpd.server_close()


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
    assert list(direct._prepared) == [server] and "cookie" not in _Recorder.seen[-1][2]


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
    assert not direct._prepared
    session = requests.Session()   # trust_env: the environment's proxies and CA bundle are requests' to apply
    direct = DirectPost(session)
    _post(direct, server, b"ISA*c~")
    assert not direct._prepared


def test_at_most_max_urls_are_kept_prepared(server: str, monkeypatch: pytest.MonkeyPatch):
    session = requests.Session()
    session.trust_env = False
    direct = DirectPost(session)
    monkeypatch.setattr(DirectPost, "MAX_URLS", 2)
    for n in range(4):
        _post(direct, f"{server}&n={n}", b"ISA*n~")
    assert len(direct._prepared) == 2 and len(_Recorder.seen) == 4
    assert [path for _, path, _, _ in _Recorder.seen] == [f"/core/soap?x=1&n={n}" for n in range(4)]
