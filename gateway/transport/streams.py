"""Reading an HTTP body as it arrives, so a deadline holds against a server that sends a byte at a time."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import requests
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError
from urllib3.response import BaseHTTPResponse


def arriving(response: requests.Response, size: int = 64 * 1024) -> Iterator[bytes]:
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
