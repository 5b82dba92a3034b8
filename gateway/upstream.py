"""Fetch the resources a CoverageEligibilityRequest references from the EHR's FHIR server.

A request may arrive alone, or in a Bundle, with references to resources that are neither
contained nor Bundle entries (``Patient/123``). ``resolve_references`` follows the references
the translation reads (and those of the resources they lead to), fetches what the payload does not
hold from the configured upstream server (or, for an absolute reference or one inside a Bundle entry from
another server, from that server when the allow-list lets it), and hands back a payload that resolves on its own: the
same payload when nothing was missing, otherwise a ``collection`` Bundle with the fetched resources.
Whatever cannot be resolved is reported in one TranslationError (422) naming each reference.

Pure except for the HTTP calls: configuration comes in, no module state is kept, and the only clock
is the injected monotonic one that bounds the time spent fetching. A ``requests.Session`` may be
shared between threads (nothing is stored on it).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import requests
from requests.auth import AuthBase
from urllib3.exceptions import ReadTimeoutError

from gateway.errors import ConfigError, quoted, with_article
from gateway.fhir.structure import MAX_DEPTH, invariant_problems, json_shape, structure_problems
from gateway.translate.errors import Problem, TranslationError
from gateway.translate.references import RELATIVE_REFERENCE, RESOURCE_TYPE, Resolver, fetched_for, sent_at
from gateway.translate.request_270 import CER, find_request
from gateway.transport.client import failure_cause
from gateway.transport.routing import ca_bundle_path, is_loopback_url
from gateway.transport.streams import DeadlineAdapter, arriving, deadline

log = logging.getLogger(__name__)

ACCEPT = "application/fhir+json, application/json;q=0.9"
MAX_BYTES = 2 * 1024 * 1024
_CHUNK = 64 * 1024

_PATH_TAIL = re.compile(rf"/{RELATIVE_REFERENCE.pattern}$")   # an absolute URL's Type/id[/_history/v] (search)
_HOSTNAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)*$|"
                       r"^[0-9a-f:.]+$")

# The references followed, per resource type: (element, allowed target types, X12 loop it feeds).
_FOLLOW: dict[str, tuple[tuple[str, tuple[str, ...], str | None], ...]] = {
    CER: (("patient", ("Patient",), "2100C NM1"),
          ("insurer", ("Organization",), "2100A"),
          ("provider", ("Practitioner", "PractitionerRole", "Organization"), "2100B"),
          ("insurance[].coverage", ("Coverage",), "2100C")),
    "Coverage": (("payor[]", ("Organization", "Patient", "RelatedPerson"), "2100A"),
                 ("subscriber", ("Patient", "RelatedPerson"), "2100C NM1"),
                 ("beneficiary", ("Patient",), None)),
    "PractitionerRole": (("practitioner", ("Practitioner",), "2100B"),
                         ("organization", ("Organization",), "2100B")),
}


# ------------------------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class UpstreamConfig:
    """Where and how references are fetched.

    ``allowed_hosts`` governs absolute references (entries ``host`` or ``host:port``), and the relative ones
    of a Bundle entry from another server, which mean that server's resources; other relative references
    are read from ``base``. When not given it is the base URL's host. Credentials (``token`` or ``basic``)
    are only ever sent to URLs under ``base`` (scheme, host, port and path compared as URLs).
    """

    base: str | None = None
    allowed_hosts: frozenset[str] | None = None
    token: str | None = field(default=None, repr=False)
    basic: tuple[str, str] | None = field(default=None, repr=False)
    timeout: tuple[float, float] = (2.0, 5.0)
    ca_bundle: str | None = None   # PEM CAs the EHR's server is verified with (None: the session's trust store)
    max_fetches: int = 20
    budget: float = 8.0
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        base = self.base.strip().rstrip("/") if isinstance(self.base, str) and self.base.strip() else None
        if base is not None:
            _check_base(base, "base")
        object.__setattr__(self, "base", base)
        hosts = self.allowed_hosts
        if hosts is None:
            hosts = frozenset({_default_host(base)}) if base else frozenset()
        normalized = frozenset(_normalize_host(h, "allowed_hosts") for h in hosts)
        object.__setattr__(self, "allowed_hosts", normalized)
        if self.token is not None and self.basic is not None:
            raise ConfigError("give a bearer token or basic credentials for the FHIR server, not both")
        if (self.token is not None or self.basic is not None) and base is not None and \
                urlsplit(base).scheme == "http" and not is_loopback_url(base):
            raise ConfigError("the FHIR server's credentials (FHIR_X12_FHIR_TOKEN or FHIR_X12_FHIR_BASIC) travel "
                              "only over https, or to this machine: FHIR_X12_FHIR_BASE is plain http")
        connect, read = self.timeout
        if not (_positive(connect) and _positive(read)):
            raise ConfigError("timeout must be two positive numbers of seconds (connect, read)")
        if not _positive(self.budget):
            raise ConfigError("budget must be a positive number of seconds")
        if not isinstance(self.max_fetches, int) or self.max_fetches < 0:
            raise ConfigError("max_fetches must be a whole number, 0 or more")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UpstreamConfig:
        """Read ``FHIR_X12_FHIR_*`` keys (environment or app config); ConfigError names a bad key."""
        base = _text(config.get("FHIR_X12_FHIR_BASE"))
        if base is not None:
            base = base.rstrip("/")
            _check_base(base, "FHIR_X12_FHIR_BASE")

        hosts_value = config.get("FHIR_X12_FHIR_ALLOWED_HOSTS")
        if isinstance(hosts_value, str):
            entries = [h.strip() for h in hosts_value.split(",") if h.strip()]
        elif hosts_value is None:
            entries = []
        elif isinstance(hosts_value, list | tuple | set | frozenset):
            entries = [str(h).strip() for h in hosts_value if str(h).strip()]
        else:
            raise ConfigError("FHIR_X12_FHIR_ALLOWED_HOSTS must be a comma-separated list of host names")
        hosts = frozenset(_normalize_host(h, "FHIR_X12_FHIR_ALLOWED_HOSTS") for h in entries) if entries else None

        token = _text(config.get("FHIR_X12_FHIR_TOKEN"))
        if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
            raise ConfigError("FHIR_X12_FHIR_TOKEN must be printable ASCII without spaces")

        basic = _parse_basic(config.get("FHIR_X12_FHIR_BASIC"))
        if token is not None and basic is not None:
            raise ConfigError("FHIR_X12_FHIR_TOKEN and FHIR_X12_FHIR_BASIC are both set: give one of them")

        timeout = cls.timeout
        timeout_value = config.get("FHIR_X12_FHIR_TIMEOUT")
        if timeout_value is not None and _text(timeout_value) is not None:
            timeout = _parse_timeout(timeout_value, timeout)
        ca_bundle = _text(config.get("FHIR_X12_FHIR_CA_BUNDLE"))
        if ca_bundle is not None:
            ca_bundle = ca_bundle_path(ca_bundle, "FHIR_X12_FHIR_CA_BUNDLE")
        return cls(base=base, allowed_hosts=hosts, token=token, basic=basic, timeout=timeout, ca_bundle=ca_bundle)

    def _authorization(self) -> str | None:
        if self.token:
            return f"Bearer {self.token}"
        if self.basic:
            raw = f"{self.basic[0]}:{self.basic[1]}".encode()
            return f"Basic {base64.b64encode(raw).decode('ascii')}"
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _parse_basic(value: Any) -> tuple[str, str] | None:
    """``user:password`` (or a pair, from app config); the password may itself hold colons."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        user, password = str(value[0]), str(value[1])
    elif isinstance(value, str) and ":" in value:
        user, _, password = value.strip().partition(":")
    else:
        user, password = "", ""
    if not user or re.search(r"[\x00-\x1f\x7f]", user + password):
        raise ConfigError("FHIR_X12_FHIR_BASIC must be 'user:password' (a user name, a colon, the password)")
    return (user, password)


def _parse_timeout(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    """``5`` (read timeout; connect = min(default connect, 5)) or ``2,5`` (connect, read)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers = [float(value)]
        else:
            numbers = [float(part) for part in str(value).split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or not all(_positive(n) for n in numbers):
        raise ConfigError(f"FHIR_X12_FHIR_TIMEOUT must be a positive number of seconds (or 'connect,read'), "
                          f"not {str(value)[:40]!r}")
    if len(numbers) == 1:
        return (min(default[0], numbers[0]), numbers[0])
    return (numbers[0], numbers[1])


def _check_base(base: str, key: str) -> None:
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{key} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key} must be an http(s) URL of a FHIR server, e.g. https://ehr.example/fhir")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(f"{key} must be a plain base URL (no credentials, query or fragment)")


def _default_host(base: str) -> str:
    parts = urlsplit(base)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{parts.port}" if parts.port else shown


def _split_host(entry: str) -> tuple[str, int | None]:
    parts = urlsplit(f"//{entry}")
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc or not parts.hostname:
        raise ValueError(entry)
    port = parts.port
    if not _HOSTNAME.match(parts.hostname):
        raise ValueError(entry)
    return parts.hostname, port


def _normalize_host(entry: str, key: str) -> str:
    try:
        host, port = _split_host(str(entry).strip().lower())
    except ValueError:
        raise ConfigError(f"{key}: {str(entry)[:60]!r} is not a host name (host or host:port)") from None
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


# ------------------------------------------------------------------------------------------------ resolution


@dataclass(frozen=True)
class _Failure:
    code: str
    reason: str                     # completes "reference 'X' ..."


@dataclass(frozen=True)
class _Target:
    url: str
    kind: str
    id: str
    absolute: bool


def resolve_references(payload: Any, config: UpstreamConfig, *, session: requests.Session | None = None,
                       clock: Callable[[], float] = time.monotonic) -> Any:
    """A payload whose references all resolve inside it; TranslationError (422) naming each one that cannot.

    Returns ``payload`` itself when nothing had to be fetched.
    """
    request, bundle = find_request(payload)
    own = session is None
    http = requests.Session() if own else session
    if own:   # as the payer client's: a server sending its headers a line at a time still meets the budget
        adapter = DeadlineAdapter()
        http.mount("http://", adapter)
        http.mount("https://", adapter)
    try:
        walk = _Walk(request, bundle, config, http, clock)
        walk.run()
    finally:
        if own:
            http.close()
    if walk.problems:
        problems = _unique(walk.problems)
        raise TranslationError(f"{len(problems)} reference(s) of the {CER} cannot be resolved", problems,
                               status=422)
    if not walk.fetched:
        return payload
    return walk.bundle()


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.fhir_path, p.message) not in seen:
            seen.add((p.fhir_path, p.message))
            out.append(p)
    return out


class _Walk:
    """One request's references, breadth first; every URL is fetched at most once."""

    def __init__(self, request: dict[str, Any], bundle: dict[str, Any] | None, config: UpstreamConfig,
                 session: requests.Session, clock: Callable[[], float]) -> None:
        self.request = request
        self.bundle_in = bundle
        self.config = config
        self.session = session
        self.clock = clock
        self.start = clock()
        self.entries = [e for e in (bundle or {}).get("entry") or []
                        if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        self.fetched: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any] | _Failure] = {}
        self.fetches = 0
        self.problems: list[Problem] = []
        self.owner: dict[str, Any] | None = None   # the resource whose reference is being followed
        # a fetched resource -> the reference it was fetched for (its path, and the resource holding it)
        self.via: dict[int, tuple[str, dict[str, Any] | None]] = {}
        self._places: dict[int, str] | None = None
        self._resolver: Resolver | None = None
        self._resolver_size = -1
        self.authorization = config._authorization()
        self.hosts = [_split_host(h) for h in config.allowed_hosts or ()]

    # -- walking -------------------------------------------------------------------------------------------
    def run(self) -> None:
        queue: deque[dict[str, Any]] = deque([self.request])
        seen = {id(self.request)}
        while queue:
            resource = queue.popleft()
            for path, reference, expected, x12 in _references(resource):
                owner = resource
                target = self.follow(reference, path, expected, x12, owner)
                if target is not None and id(target) not in seen:
                    seen.add(id(target))
                    queue.append(target)

    def lookup(self, ref: str, owner: dict[str, Any] | None) -> dict[str, Any] | None:
        """What the translation's Resolver finds for ``ref`` (contained or Bundle entry), or None."""
        size = len(self.fetched)
        if self._resolver is None or self._resolver_size != size:
            self._resolver = Resolver(self.request, {"entry": self.entries + self.fetched})
            self._resolver_size = size
        found = self._resolver.resolve({"reference": ref}, "", (), owner=owner)
        self._resolver.problems.clear()
        return found

    def follow(self, reference: Any, path: str, expected: tuple[str, ...], x12: str | None,
               owner: dict[str, Any] | None) -> dict[str, Any] | None:
        self.owner = owner
        if not isinstance(reference, dict):
            return None
        ref = reference.get("reference")
        if ref is None or ref == "":
            return None                 # identifier-only, display-only or empty: the translation decides
        if not isinstance(ref, str):
            self.problem(path, "the reference is not a string", "invalid", x12)
            return None
        found = self.lookup(ref, owner)
        if found is not None:
            return found
        shown = quoted(ref)
        base = self._resolver.base_of(owner) if self._resolver is not None else None
        if base is not None and RELATIVE_REFERENCE.fullmatch(ref) and \
                base.rstrip("/") != (self.config.base or "").rstrip("/"):
            # inside an entry from another server, Type/id is that server's resource (FHIR's Bundle rules): fetched
            # from there (when it is allowed), never from ours
            ref = base + ref
            shown = f"{shown} (that is, {quoted(ref, bare=True)})"
        if ref.startswith("#"):
            self.problem(path, f"reference {quoted(ref)} cannot be resolved: there is no contained resource with "
                         "that id", "not-found", x12)
            return None
        if ref.startswith("urn:"):
            self.problem(path, f"reference {quoted(ref)} cannot be resolved: no Bundle entry has that fullUrl, and a "
                         "urn cannot be fetched", "not-found", x12)
            return None
        target = self.target(ref, path, x12, shown)
        if target is None:
            return None
        if target.kind not in expected:
            self.problem(path, f"reference {shown} points at {with_article(target.kind)}, expected "
                         f"{' or '.join(expected)}", "invalid", x12)
            return None
        result = self.results.get(target.url)
        if result is None:
            result = self.results[target.url] = self.fetch(target)
        if isinstance(result, _Failure):
            self.problem(path, f"reference {shown} {result.reason}", result.code, x12)
            return None
        self.fetched.append({"fullUrl": target.url, "resource": result})   # where it lives: absolute
        self.via.setdefault(id(result), (path, owner))
        return result

    def target(self, ref: str, path: str, x12: str | None, shown: str | None = None) -> _Target | None:
        shown = shown or quoted(ref)
        match = RELATIVE_REFERENCE.fullmatch(ref)
        if any(unquote(segment) in (".", "..") for segment in ref.split("?")[0].split("/")):
            # a dot segment is dropped or climbs on the way (urllib3 normalises the path): another resource, or one
            # outside the FHIR base, would be fetched in its name
            self.problem(path, f"reference {shown} cannot be fetched: '.' and '..' are not ids or versions", "invalid",
                         x12)
            return None
        if match:
            if not self.config.base:
                self.problem(path, f"reference {shown} cannot be resolved: it is neither contained nor in the "
                             "Bundle, and no upstream FHIR server is configured (FHIR_X12_FHIR_BASE)",
                             "not-found", x12)
                return None
            return _Target(f"{self.config.base}/{ref}", match.group(1), match.group(2), absolute=False)
        try:
            parts = urlsplit(ref)
            port = parts.port
        except ValueError:
            parts, port = None, None
        tail = _PATH_TAIL.search(parts.path) if parts is not None else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or tail is None \
                or parts.query or parts.fragment or "@" in parts.netloc:
            self.problem(path, f"reference {shown} cannot be resolved: it is not contained, not in the Bundle, and "
                         "not a reference that can be fetched (Type/id or an absolute http(s) URL ending in "
                         "Type/id)", "invalid", x12)
            return None
        host = parts.hostname.lower()
        effective = port or (443 if parts.scheme == "https" else 80)
        if not any(host == h and (p is None or p == effective) for h, p in self.hosts):
            self.problem(path, f"reference {shown} cannot be fetched: host {quoted(parts.netloc.lower())} is not "
                         "allowed (FHIR_X12_FHIR_ALLOWED_HOSTS)", "forbidden", x12)
            return None
        return _Target(ref, tail.group(1), tail.group(2), absolute=True)

    def problem(self, path: str, message: str, code: str, x12: str | None) -> None:
        path, also, said = self.placed(path, self.owner)
        self.problems.append(Problem(path, message + said, code=code, x12=x12, also=also))

    def placed(self, path: str, owner: dict[str, Any] | None) -> tuple[str, tuple[str, ...], str]:
        """``path`` (``Coverage.payor[0]``, at the resource holding the reference) from where the client sent that
        resource (``Bundle.entry[2].resource.payor[0]``, ``CoverageEligibilityRequest.contained[1].payor[0]``; the
        request's own ``Bundle.entry[0].resource.insurer`` when it came in a Bundle); one fetched from the FHIR server
        keeps its own root, with the reference it was fetched for, and words saying so."""
        kind = str((owner or {}).get("resourceType"))
        if owner is None or (owner is self.request and self.bundle_in is None) or not path.startswith(kind):
            return path, (), ""
        if self._places is None:
            self._places = sent_at(self.request, self.bundle_in)
        where = self._places.get(id(owner))
        if where is not None:
            return where + path[len(kind):], (), ""
        via = self.via.get(id(owner))
        if via is None:
            return path, (), ""
        reference, further, _ = self.placed(*via)
        said = fetched_for(kind, reference)
        return path, (reference, *further), said

    # -- fetching ------------------------------------------------------------------------------------------
    def fetch(self, target: _Target) -> dict[str, Any] | _Failure:
        config = self.config
        if self.fetches >= config.max_fetches:
            return _Failure("too-costly", f"was not fetched: resolving this request needs more than "
                                          f"{config.max_fetches} fetches from the FHIR server")
        remaining = config.budget - (self.clock() - self.start)
        if remaining <= 0:
            return _Failure("timeout", f"was not fetched: the time allowed for fetching references "
                                       f"({config.budget:g} s) ran out")
        self.fetches += 1
        connect, read = config.timeout
        timeout = (min(connect, remaining), min(read, remaining))
        # the EHR's credentials go to its FHIR base only: not to another server, nor another path of the same host
        credentials = self.authorization if _under(target.url, config.base) else None
        try:
            with deadline(self.start + config.budget, self.clock), self.session.get(
                    target.url, headers={"Accept": ACCEPT}, auth=_Authorization(credentials), timeout=timeout,
                    allow_redirects=False, stream=True, verify=config.ca_bundle) as response:
                failure = _status_failure(response.status_code)
                if failure is not None:
                    return failure
                body = self.read(response)
        except requests.Timeout as exc:
            if self.clock() - self.start >= config.budget and not isinstance(exc, requests.ConnectTimeout):
                return self.cut_off()
            return _Failure("timeout", f"could not be fetched: the FHIR server could not be reached in time "
                                       f"(no answer within {timeout[1]:g} s)")
        except requests.ConnectionError as exc:
            if any(isinstance(a, ReadTimeoutError) for a in exc.args):
                if self.clock() - self.start >= config.budget:
                    return self.cut_off()
                return _Failure("timeout", f"could not be fetched: the FHIR server could not be reached in time "
                                           f"(the answer stalled for {timeout[1]:g} s)")
            log.warning("FHIR server fetch failed: %s", failure_cause(exc))   # the operator's why; never a URL or id
            if isinstance(exc, requests.exceptions.SSLError):
                return _Failure("transient", "could not be fetched: TLS with the FHIR server failed (is its "
                                             "certificate's CA trusted? see FHIR_X12_FHIR_CA_BUNDLE)")
            return _Failure("transient", "could not be fetched: the FHIR server could not be reached "
                                         "(the connection failed)")
        except (requests.RequestException, OSError) as exc:   # OSError: before any connection (a CA bundle gone)
            log.warning("FHIR server fetch failed: %s", failure_cause(exc))
            return _Failure("transient", "could not be fetched: the FHIR server could not be reached "
                                         "(the request failed)")
        if isinstance(body, _Failure):
            return body
        try:
            resource = orjson.loads(body)
        except orjson.JSONDecodeError:   # also NaN, lone surrogates and nesting beyond orjson's limit
            return _Failure("processing", "could not be fetched: the FHIR server's answer is not JSON")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return _Failure("processing", "could not be fetched: the FHIR server's answer is not a FHIR resource")
        if resource["resourceType"] != target.kind:
            named = resource["resourceType"]
            kind = with_article(named) if re.fullmatch(RESOURCE_TYPE, named) else "another resource"
            return _Failure("processing", f"could not be fetched: the FHIR server answered with {kind}, "
                                          f"expected {target.kind}")
        if resource.get("id") != target.id:
            return _Failure("processing", "could not be fetched: the FHIR server answered with "
                                          f"{with_article(target.kind)} of another id")
        return _checked(resource, target.kind)

    def cut_off(self) -> _Failure:
        """The deadline (see ``streams.deadline``) ended a read while the answer was arriving, headers or body."""
        return _Failure("timeout", f"could not be fetched: the time allowed for fetching references "
                                   f"({self.config.budget:g} s) ran out while reading the answer")

    def read(self, response: requests.Response) -> bytes | _Failure:
        limit = self.config.max_bytes
        too_big = _Failure("processing", f"could not be fetched: the FHIR server's answer is larger than "
                                         f"{limit} bytes")
        declared = response.headers.get("Content-Length")
        # ASCII digits only, and compared by length first: int() refuses '²' and more than 4,300 digits (leading
        # zeros count too)
        digits = declared.strip().lstrip("0") if declared and declared.strip().isascii() else ""
        if digits.isdigit() and (len(digits) > len(str(limit)) or int(digits) > limit):
            return too_big
        body = bytearray()
        for chunk in arriving(response, _CHUNK):
            body += chunk
            if len(body) > limit:
                return too_big
            if self.clock() - self.start > self.config.budget:
                return _Failure("timeout", f"could not be fetched: the time allowed for fetching references "
                                           f"({self.config.budget:g} s) ran out while reading the answer")
        return bytes(body)

    # -- the result ----------------------------------------------------------------------------------------
    def bundle(self) -> dict[str, Any]:
        first = next((e for e in self.entries if e["resource"] is self.request), None)
        if first is not None and first.get("fullUrl"):
            full_url = first["fullUrl"]
        elif isinstance(self.request.get("id"), str) and self.request["id"]:
            full_url = f"{CER}/{self.request['id']}"
        else:
            canonical = json.dumps(self.request, sort_keys=True, separators=(",", ":"), default=str)
            full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, canonical)}"
        entries = [{"fullUrl": full_url, "resource": self.request}]
        for entry in self.entries:
            if entry is not first:
                entries.append({k: entry[k] for k in ("fullUrl", "resource") if k in entry})
        entries.extend(self.fetched)
        return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _checked(resource: dict[str, Any], kind: str) -> dict[str, Any] | _Failure:
    """The fetched resource, when it is FHIR as the gateway takes a request body: its 270 is built from it."""
    too_deep, empty = json_shape(resource, MAX_DEPTH)
    if too_deep:
        return _Failure("processing", f"could not be used: the FHIR server's {kind} nests deeper than {MAX_DEPTH} "
                                      "levels")
    if empty:
        return _Failure("processing", f"could not be used: the FHIR server's {kind} is not valid FHIR JSON (an "
                                      "element is null or an empty array)")
    problems = structure_problems(resource) + invariant_problems(resource)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return _Failure("processing", f"could not be used: the FHIR server's {kind} is not valid FHIR: "
                                      f"{first.fhir_path}: {first.message}{more}")
    return resource


def _under(url: str, base: str | None) -> bool:
    """Whether ``url`` is a resource under ``base``: the same origin (scheme and host in any case, the default port
    written or not) and a path below the base's."""
    if not base:
        return False
    try:
        origin = _origin(url) == _origin(base)
    except ValueError:
        return False
    path, base_path = urlsplit(url).path, urlsplit(base).path.rstrip("/")
    return origin and path.startswith(base_path + "/")


def _status_failure(status: int) -> _Failure | None:
    if status == 200:
        return None
    if status in (404, 410):
        return _Failure("not-found", f"was not found on the FHIR server (status {status})")
    if status in (401, 403):
        return _Failure("forbidden", f"could not be fetched: the FHIR server refused access (status {status})")
    if 300 <= status < 400:
        return _Failure("processing", f"could not be fetched: the FHIR server answered with a redirect (status "
                                      f"{status}); redirects are not followed")
    if status == 429:
        return _Failure("throttled", "could not be fetched: the FHIR server could not be reached: it is "
                                     "throttling requests (status 429)")
    return _Failure("transient", f"could not be fetched: the FHIR server could not be reached: it answered with "
                                 f"status {status}")


class _Authorization(AuthBase):
    """Exactly our credentials (or none): overrides any Authorization the shared session carries, and netrc."""

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        if self.value:
            request.headers["Authorization"] = self.value
        return request


def _references(resource: dict[str, Any]) -> Iterator[tuple[str, Any, tuple[str, ...], str | None]]:
    kind = resource.get("resourceType")
    for element, expected, x12 in _FOLLOW.get(kind, ()):
        if element.endswith("[]"):
            name = element[:-2]
            values = resource.get(name)
            for index, value in enumerate(values if isinstance(values, list) else []):
                yield f"{kind}.{name}[{index}]", value, expected, x12
        elif "[]." in element:
            outer, inner = element.split("[].")
            values = resource.get(outer)
            for index, value in enumerate(values if isinstance(values, list) else []):
                if isinstance(value, dict):
                    yield f"{kind}.{outer}[{index}].{inner}", value.get(inner), expected, x12
        else:
            yield f"{kind}.{element}", resource.get(element), expected, x12
