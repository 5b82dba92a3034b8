"""Bearer-token authentication for the FHIR API.

``FHIR_X12_TOKENS`` (app config) is a comma-separated list. Each entry is ``<token>`` (full access) or
``<token>:read`` (read-only: GET and HEAD only). Entries are numbered from 1 in the order written (empty
entries keep their number, so the number always points at the place in the setting); the number is the
client's label in logs (``token#2``) and in configuration errors. The plaintext tokens are never kept:
only their SHA-256 digests, compared in constant time against every stored digest.

Unset or empty ``FHIR_X12_TOKENS`` turns authentication off; :func:`init_auth` then logs one warning.
Some paths are open to anyone: exact ``open_paths`` (any method) and, for reading (GET/HEAD), one path
segment under an ``open_prefixes`` folder (the conformance resources, which hold no PHI).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, request

from gateway.errors import ConfigError
from gateway.fhir import FHIR_JSON_UTF8, operation_outcome
from gateway.observability import startup_warning

log = logging.getLogger(__name__)

CONFIG_KEY = "FHIR_X12_TOKENS"
EXTENSION_KEY = "fhir_x12_auth"
REALM = "fhir-x12-gateway"
MIN_TOKEN_LENGTH = 16
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_OPEN_PATHS = ("/metadata", "/healthz", "/readyz", "/metrics")
# the conformance resources a CapabilityStatement points to: public definitions, like /metadata itself
CONFORMANCE_PREFIXES = ("/StructureDefinition/", "/SearchParameter/")

_READ_SUFFIX = "read"


@dataclass(frozen=True, slots=True)
class Client:
    """Who presented a known token: a label safe to log and whether the token may only read."""

    label: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    client: Client


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _valid_token_chars(token: str) -> bool:
    # a bearer token travels in a header: visible ASCII, no whitespace
    return all("!" <= ch <= "~" for ch in token)


class TokenSet:
    """The accepted bearer tokens, kept only as SHA-256 digests.

    ``spec`` is the ``FHIR_X12_TOKENS`` value: a comma-separated string (or an iterable of entries).
    Raises :class:`~gateway.errors.ConfigError` naming the entry number, never the token, when an entry
    is too short, carries an unknown access suffix, contains whitespace/non-ASCII, or repeats a token.
    """

    def __init__(self, spec: str | Iterable[str] | None = None) -> None:
        if spec is None:
            raw: list[str] = []
        elif isinstance(spec, str):
            raw = spec.split(",")
        else:
            raw = list(spec)
        entries: list[_Entry] = []
        seen: dict[bytes, int] = {}
        for number, item in enumerate(raw, start=1):
            if not isinstance(item, str):
                raise ConfigError(f"{CONFIG_KEY}: entry {number} is not a string")
            text = item.strip()
            if not text:
                continue
            token, read_only = self._parse(text, number)
            digest = _digest(token)
            if digest in seen:
                raise ConfigError(f"{CONFIG_KEY}: entry {number} repeats the token of entry {seen[digest]}")
            seen[digest] = number
            entries.append(_Entry(digest, Client(f"token#{number}", read_only)))
        if raw and not entries:
            # set, but to commas or blanks ("$UNSET,"): a slip, not a wish for an open API; empty is the way to that
            raise ConfigError(f"{CONFIG_KEY} is set but holds no token (only commas or blanks); leave it empty or "
                              "unset to run without authentication")
        self._entries: tuple[_Entry, ...] = tuple(entries)

    @staticmethod
    def _parse(text: str, number: int) -> tuple[str, bool]:
        token, sep, access = text.rpartition(":")
        if not sep:
            token, read_only = text, False
        elif access.strip().lower() == _READ_SUFFIX:
            token, read_only = token.strip(), True
        else:
            raise ConfigError(f"{CONFIG_KEY}: entry {number} has an unknown access suffix "
                              f"(write '<token>' or '<token>:read'; tokens may not contain ':')")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"{CONFIG_KEY}: entry {number} is shorter than {MIN_TOKEN_LENGTH} characters")
        if not _valid_token_chars(token):
            raise ConfigError(f"{CONFIG_KEY}: entry {number} contains whitespace or non-ASCII characters")
        return token, read_only

    @classmethod
    def from_config(cls, config: Any) -> TokenSet:
        return cls(config.get(CONFIG_KEY) or None)

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __repr__(self) -> str:
        return f"TokenSet({len(self._entries)} tokens)"

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(entry.client.label for entry in self._entries)

    def lookup(self, token: str) -> Client | None:
        """The client whose token this is, or None. Compares against every digest (no early exit)."""
        candidate = _digest(token)
        found: Client | None = None
        for entry in self._entries:
            if hmac.compare_digest(candidate, entry.digest) and found is None:
                found = entry.client
        return found


def _fhir_response(status: int, code: str, text: str, challenge: str) -> Response:
    return Response(json.dumps(operation_outcome(code, text, diagnostics=text)), status=status,
                    content_type=FHIR_JSON_UTF8, headers={"WWW-Authenticate": challenge})


def _challenge(error: str | None = None) -> str:
    value = f'Bearer realm="{REALM}"'
    return f'{value}, error="{error}"' if error else value


def bearer_token(header: str | None) -> tuple[str | None, str | None]:
    """``(token, problem)`` from an Authorization header value; exactly one of the two is None."""
    if not header or not header.strip():
        return None, "the request has no Authorization header; send 'Authorization: Bearer <token>'"
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None, "the Authorization header does not use the Bearer scheme"
    token = rest.strip()
    if not token:
        return None, "the Authorization header has no token after 'Bearer'"
    if any(ch.isspace() for ch in token):
        return None, "the Authorization header is malformed: expected 'Bearer <token>'"
    return token, None


def init_auth(app: Flask, open_paths: Iterable[str] = DEFAULT_OPEN_PATHS,
              open_prefixes: Iterable[str] = ()) -> TokenSet:
    """Require a bearer token on every path but ``open_paths``; returns the (possibly empty) TokenSet.

    ``open_prefixes`` (e.g. :data:`CONFORMANCE_PREFIXES`) open GET and HEAD of ``<prefix><id>`` (exactly one
    more path segment) too.

    Also stored in ``app.extensions["fhir_x12_auth"]``. CORS pre-flight ``OPTIONS`` requests are let through
    (browsers never send credentials on them). Calling it twice on one app does not add a second hook.
    """
    tokens = TokenSet.from_config(app.config)
    already = EXTENSION_KEY in app.extensions
    app.extensions[EXTENSION_KEY] = tokens
    if already:
        return tokens
    opened = frozenset(p.rstrip("/") or "/" for p in open_paths)
    prefixes = tuple(p.rstrip("/") + "/" for p in open_prefixes)

    def is_open(path: str) -> bool:
        if path in opened or request.method == "OPTIONS":
            return True
        if request.method not in READ_ONLY_METHODS:
            return False
        return any(path.startswith(prefix) and "/" not in path[len(prefix):] and len(path) > len(prefix)
                   for prefix in prefixes)

    if not tokens:
        startup_warning(log, "no FHIR_X12_TOKENS: the API is open")

    @app.before_request
    def _authenticate() -> Response | None:
        current: TokenSet = app.extensions[EXTENSION_KEY]
        if not current:
            return None
        if is_open(request.path.rstrip("/") or "/"):
            return None
        token, problem = bearer_token(request.headers.get("Authorization"))
        if token is None:
            log.info("authentication failed: %s", "missing or malformed Authorization header")
            return _fhir_response(401, "login", problem or "authentication required", _challenge())
        client = current.lookup(token)
        if client is None:
            log.info("authentication failed: %s", "unknown bearer token")
            return _fhir_response(401, "login", "the bearer token is not valid for this gateway",
                                  _challenge("invalid_token"))
        g.client = client.label
        if client.read_only and request.method not in READ_ONLY_METHODS and not _is_post_search():
            log.info("authorization failed: read-only %s tried %s", client.label, request.method)
            return _fhir_response(403, "forbidden",
                                  f"{client.label} is read-only: it may only use GET and HEAD (and POST _search), not "
                                  f"{request.method}",
                                  _challenge("insufficient_scope"))
        return None

    return tokens


def _is_post_search() -> bool:
    """``POST [type]/_search``: a search sent as a form (long queries), which reading clients may use too."""
    return request.method == "POST" and request.path.rstrip("/").endswith("/_search")
