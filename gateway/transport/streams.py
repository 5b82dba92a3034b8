"""Deadlines on reading an HTTP answer, headers and body alike, against a server that sends a byte at a time.

A read timeout bounds each wait for the socket, not the whole answer: a server sending one header line (or one
body byte) every few seconds, each within the read timeout, held a request for as long as it liked. Inside
:func:`deadline`, a connection of a :class:`DeadlineAdapter` gives every socket read only the time left before
the deadline; past it, the read times out as a read timeout does (requests' ``ReadTimeout`` or
``ConnectionError``). :func:`arriving` reads a body as it arrives, so a caller also checks its clock between
chunks.
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError
from urllib3.response import BaseHTTPResponse

# (deadline, clock) of the HTTP exchange under way in this thread or greenlet (greenlets have contexts of their own)
_DEADLINE: ContextVar[tuple[float, Callable[[], float]] | None] = ContextVar("fhir_x12_http_deadline", default=None)


@contextmanager
def deadline(at: float, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Reads by a :class:`DeadlineAdapter`'s connections inside this block end by ``at`` (on ``clock``)."""
    token = _DEADLINE.set((at, clock))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class _DeadlineSocket:
    """The socket an answer is read from, each read given no more than the time left before the deadline."""

    def __init__(self, sock: Any, at: float, clock: Callable[[], float]) -> None:
        self._sock, self._at, self._clock = sock, at, clock
        self._timeout = sock.gettimeout()   # the read timeout urllib3 has just set

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        left = self._at - self._clock()
        if left < 0:   # past it (at it exactly is still in time, as the callers' own clock checks have it)
            raise TimeoutError("the deadline for this answer has passed")
        left = max(left, 0.001)   # a timeout of 0 would make the socket non-blocking
        self._sock.settimeout(left if self._timeout is None else min(self._timeout, left))
        if nbytes is None:   # the socket's own default: gevent's TLS socket reads nothing at all for nbytes=0
            return self._sock.recv_into(buffer)
        return self._sock.recv_into(buffer, nbytes, flags)

    def makefile(self, mode: str = "rb", buffering: int | None = None, **_: Any) -> Any:
        """A buffered reader over this object, as ``socket.makefile`` builds one over the socket (http.client reads
        the status line, headers and body through it). The socket counts it as one of its files, as its own
        ``makefile`` does: a connection closed while the answer is read (``Connection: close``) then keeps the
        descriptor open until the answer's file is closed too."""
        raw = socket.SocketIO(self, mode)  # type: ignore[arg-type]
        self._real()._io_refs += 1
        return io.BufferedReader(raw, buffering or io.DEFAULT_BUFFER_SIZE)

    def _decref_socketios(self) -> None:
        self._real()._decref_socketios()

    def _real(self) -> Any:
        """The operating system's socket: TLS to a payer through an HTTPS proxy is urllib3's SSLTransport over it,
        which counts its files on that socket too."""
        return self._sock if hasattr(self._sock, "_io_refs") else self._sock.socket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        limit = _DEADLINE.get()
        super().__init__(_DeadlineSocket(sock, *limit) if limit is not None else sock, *args, **kwargs)


class _HTTPConnection(HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(HTTPSConnection):
    response_class = _DeadlineResponse


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter, with connections that honour :func:`deadline` (directly and through an http(s) proxy;
    through a SOCKS proxy only the read timeout applies)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):   # SOCKS pools have connections of their own: left as they are
            manager.pool_classes_by_scheme = _POOLS
        return manager


class Streamed(Protocol):
    """An answer whose body is still to be read from ``raw``: a ``stream=True`` ``requests.Response``, or the
    payer client's ``DirectAnswer`` (whose ``raw`` is urllib3's response, as a requests one's is)."""

    @property
    def raw(self) -> Any: ...


def arriving(response: Streamed, size: int = 64 * 1024) -> Iterator[bytes]:
    """The body of a ``stream=True`` response, each chunk what one read of the socket gave (at most ``size``
    bytes): a caller checks its deadline between chunks. ``iter_content`` waits for ``size`` bytes or the end,
    so a server dripping one byte a second held it for as long as the server liked. Errors are requests' own,
    as ``iter_content`` raises them."""
    raw = response.raw
    # urllib3's response reads what has arrived; any other file-like body (another adapter's) is read as it reads
    read = partial(raw.read1, size, decode_content=True) if isinstance(raw, BaseHTTPResponse) else partial(
        raw.read, size)
    while True:
        try:
            chunk = read()
        except ReadTimeoutError as exc:
            raise requests.ConnectionError(exc) from None
        except ProtocolError as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from None
        except DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from None
        except SSLError as exc:
            raise requests.exceptions.SSLError(exc) from None
        if not chunk:
            return
        yield chunk
