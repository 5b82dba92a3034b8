"""Payer routing: payer id -> where and how to send its 270s (``mappings/routing.yaml``).

``load_routes`` checks the whole table once, at start-up, and names every problem with its path, so a typo
in the routing table stops the gateway instead of surfacing as a failed request later. ``FHIR_X12_PAYER_URL``
(the ``override_url`` argument) sends every payer id, listed or not, to one CAQH CORE SOAP endpoint: the
payer simulator in demos and tests, or a clearinghouse that routes on its own.

Credentials: a route may carry a CORE user name with a password read from the environment variable its
``password_env`` names (secrets never live in the YAML), and a TLS client certificate, key and CA bundle. All of
them are checked here, at load time: a missing variable or an unreadable certificate is a start-up error naming
the setting, never a failed request later. The password is kept out of ``repr`` and out of every message.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.errors import ConfigError, MappingError
from gateway.mappings import load_yaml, mappings_dir
from gateway.observability import startup_warning
from gateway.translate.identifiers import valid_npi
from gateway.transport.client import UnknownPayer
from gateway.x12.writer import Envelope

log = logging.getLogger(__name__)

TRANSPORTS = ("soap", "mime", "x12")
CORE_BUDGET_SECONDS = 20.0   # CAQH CORE: a real-time 271 within 20 seconds
OVERRIDE_ENV = "FHIR_X12_PAYER_URL"
MAX_OVERRIDDEN = 1024   # override routes kept made, one per payer id
ROUTING_ENV = "FHIR_X12_ROUTING"
_X12_DELIMITERS = set("*~^:|>\r\n")
_DOC_KEYS = {"name"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_CREDENTIAL = 256
_RECEIVER_KEYS = {"npi", "name", "first_name", "entity", "taxonomy"}
# a NUCC Health Care Provider Taxonomy code: ten characters, upper-case letters and digits, ending in X
_TAXONOMY = re.compile(r"[0-9A-Z]{9}X")


@dataclass(frozen=True)
class InformationReceiver:
    """The provider a 270 names (2100B) when the request names none: the practice as enrolled with the payer."""

    npi: str
    name: str                       # organization name, or the person's last name
    entity: str = "organization"    # "organization" (NM102 2) or "person" (NM102 1)
    first_name: str = ""
    taxonomy: str = ""              # NUCC provider taxonomy code (2100B PRV), for payers that ask for one

    def as_resource(self, systems: Mapping[str, str]) -> dict[str, Any]:
        """The FHIR Organization or Practitioner it stands for (what the 270 builder reads a provider from);
        ``systems`` is ``systems.yaml`` (the NPI's and the taxonomy's code systems). The taxonomy goes where the
        builder reads one: a Practitioner's qualification, an Organization's type."""
        identifier = [{"system": systems["npi"], "value": self.npi}]
        taxonomy = [{"coding": [{"system": systems["taxonomy"], "code": self.taxonomy}]}] if self.taxonomy else []
        if self.entity == "person":
            name: dict[str, Any] = {"family": self.name}
            if self.first_name:
                name["given"] = [self.first_name]
            person = {"resourceType": "Practitioner", "identifier": identifier, "name": [name]}
            if taxonomy:
                person["qualification"] = [{"code": concept} for concept in taxonomy]
            return person
        organization = {"resourceType": "Organization", "identifier": identifier, "name": self.name}
        if taxonomy:
            organization["type"] = taxonomy
        return organization

    def as_reference(self, systems: Mapping[str, str]) -> dict[str, Any]:
        """A logical reference to it (the stored request's ``provider`` when the request had none)."""
        display = f"{self.first_name} {self.name}".strip() if self.entity == "person" else self.name
        return {"type": "Practitioner" if self.entity == "person" else "Organization",
                "identifier": {"system": systems["npi"], "value": self.npi}, "display": display}


def check_information_receiver(value: Any, where: str = "information_receiver") -> tuple[InformationReceiver | None,
                                                                                       list[str]]:
    """The receiver a routing-table style mapping describes (the CLI's ``--provider-*`` options too), or None and
    every problem, each as ``<where>.<key>: what is wrong``."""
    problems: list[str] = []
    return _information_receiver(value, where, problems), problems


@dataclass(frozen=True)
class Route:
    """Everything the client needs to send one payer's 270: endpoint, envelope ids and patience."""

    payer_id: str
    url: str
    transport: str                  # "soap" | "mime" | "x12"
    sender_id: str
    receiver_id: str
    sender_qualifier: str = "ZZ"
    receiver_qualifier: str = "ZZ"
    usage: str = "P"                # ISA15
    timeout: float = 15.0           # read timeout of one attempt, seconds
    connect_timeout: float = 3.0
    budget: float = 18.0            # the whole send(), retries and queueing included
    concurrency: int = 20
    queue_wait: float = 1.0         # how long to wait for a free concurrency slot
    retries: int = 2
    backoff: float = 0.2
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    listed: bool = True             # False: routed only because of the override URL
    username: str | None = None     # CORE UserName / UsernameToken; HTTP Basic for raw X12
    password: str | None = field(default=None, repr=False)   # read from the environment at load time
    password_env: str | None = None  # the variable it came from (for people; never the value)
    client_cert: str | None = None  # absolute paths, checked readable at load time
    client_key: str | None = None   # None: the key is in client_cert's file
    ca_bundle: str | None = None    # None: requests' default trust store
    information_receiver: InformationReceiver | None = None   # 2100B when the request names no provider

    @property
    def tls_cert(self) -> str | tuple[str, str] | None:
        """``cert=`` for requests: the client certificate (and key), or None."""
        if self.client_cert is None:
            return None
        return (self.client_cert, self.client_key) if self.client_key else self.client_cert

    @property
    def tls_verify(self) -> str | None:
        """``verify=`` for requests: the payer's CA bundle, or None for the session's trust store (requests' own, or
        the bundle ``REQUESTS_CA_BUNDLE`` names: see ``client._session``)."""
        return self.ca_bundle or None

    def envelope(self, interchange_control: int, now: datetime, **extra: Any) -> Envelope:
        """ISA/GS values for a 270 to this payer (for ``gateway.x12.writer``)."""
        return Envelope(sender_id=self.sender_id, receiver_id=self.receiver_id,
                        sender_qualifier=self.sender_qualifier, receiver_qualifier=self.receiver_qualifier,
                        usage=self.usage, interchange_control=interchange_control, now=now, **extra)


class RoutingTable:
    """The checked routes; ``route(payer_id)`` or :class:`UnknownPayer`."""

    def __init__(self, routes: Mapping[str, Route], *, override: Route | None = None) -> None:
        self.routes = dict(routes)
        self.override = override    # the template every payer id gets when FHIR_X12_PAYER_URL is set
        # routes made from the override, by payer id: asked for twice per request; bounded, as request data
        # chooses the ids
        self._overridden: dict[str, Route] = {}

    def route(self, payer_id: str) -> Route:
        key = normalise_payer_id(payer_id)
        if self.override is None or not key:
            known = self.routes.get(key) if key else None
            if known is None:
                raise UnknownPayer(payer_id)
            return known
        made = self._overridden.get(key)
        if made is None:
            made = self._overriding(key)
            if len(self._overridden) < MAX_OVERRIDDEN:
                self._overridden[key] = made
        return made

    def _overriding(self, key: str) -> Route:
        o = self.override
        assert o is not None
        known = self.routes.get(key)
        if known is not None:
            # the override is another endpoint: it gets the override's own (the defaults') credentials and
            # TLS settings, never the ones a listed payer keeps for its own host
            return replace(known, url=o.url, transport=o.transport, username=o.username, password=o.password,
                           password_env=o.password_env, client_cert=o.client_cert, client_key=o.client_key,
                           ca_bundle=o.ca_bundle)
        return replace(o, payer_id=key, receiver_id=_receiver_for(key, o), listed=False)

    def __contains__(self, payer_id: object) -> bool:
        return isinstance(payer_id, str) and normalise_payer_id(payer_id) in self.routes

    @property
    def max_concurrency(self) -> int:
        """The largest per-payer concurrency (sizes the HTTP connection pool)."""
        sizes = [r.concurrency for r in self.routes.values()]
        if self.override is not None:
            sizes.append(self.override.concurrency)
        return max(sizes, default=1)


def normalise_payer_id(payer_id: object) -> str:
    return str(payer_id).strip().upper() if payer_id is not None else ""


def _receiver_for(payer_id: str, template: Route) -> str:
    """The receiver id for a payer routed only by the override: its own id when that fits ISA08."""
    return payer_id if _valid_id(payer_id) else template.receiver_id


def _valid_id(value: str) -> bool:
    return 1 <= len(value) <= 15 and value.isascii() and value.isprintable() and not _X12_DELIMITERS & set(value)


# ---------------------------------------------------------------------------------------------------- loading

_FIELDS: dict[str, str] = {   # YAML key -> Route attribute
    "url": "url", "transport": "transport", "sender_id": "sender_id", "receiver_id": "receiver_id",
    "sender_qualifier": "sender_qualifier", "receiver_qualifier": "receiver_qualifier", "usage": "usage",
    "timeout_seconds": "timeout", "connect_timeout_seconds": "connect_timeout", "budget_seconds": "budget",
    "concurrency": "concurrency", "queue_seconds": "queue_wait", "retries": "retries",
    "backoff_seconds": "backoff", "username": "username", "password_env": "password_env",
    "client_cert": "client_cert", "client_key": "client_key", "ca_bundle": "ca_bundle",
    "information_receiver": "information_receiver",
}
_BREAKER_FIELDS = {"failures": "breaker_failures", "reset_seconds": "breaker_reset"}
# attribute, label, minimum (an int: whole numbers, inclusive; a float: seconds, exclusive), maximum
_NUMBERS = (("timeout", "timeout_seconds", 0.0, CORE_BUDGET_SECONDS),
            ("connect_timeout", "connect_timeout_seconds", 0.0, CORE_BUDGET_SECONDS),
            ("budget", "budget_seconds", 0.0, CORE_BUDGET_SECONDS),
            ("queue_wait", "queue_seconds", 0.0, 5.0),
            ("backoff", "backoff_seconds", 0.0, 10.0),
            ("breaker_reset", "breaker.reset_seconds", 0.0, 3600.0),
            ("concurrency", "concurrency", 1, 1000),
            ("retries", "retries", 0, 10),
            ("breaker_failures", "breaker.failures", 1, 1000))
_ZERO_OK = frozenset({"queue_wait", "backoff"})


def load_routes(table: Mapping[str, Any] | None = None, override_url: str | None = None, *,
                base: str | os.PathLike[str] | None = None, folder: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> RoutingTable:
    """Check ``table`` (by default ``mappings/routing.yaml``) and build the routing table.

    ``override_url`` (``FHIR_X12_PAYER_URL``) routes every payer id to that CORE SOAP endpoint. Every problem
    in the table is reported at once in one :class:`MappingError`. Relative certificate paths are resolved
    against ``folder`` (the routing file's folder; by default the mappings folder when the table is read from
    there, else the current directory); passwords are read from ``environ`` (default ``os.environ``).
    """
    if table is None:
        table = load_yaml("routing.yaml", base)
        folder = folder if folder is not None else mappings_dir(base)
    context = _Context(Path(folder) if folder is not None else Path.cwd(),
                       environ if environ is not None else os.environ)
    problems: list[str] = []
    if not isinstance(table, Mapping):
        raise MappingError("routing table: must be a mapping with 'defaults' and 'payers'")
    for key in sorted(set(table) - {"defaults", "payers"}, key=str):
        problems.append(f"routing table: unknown key {key!r} (expected 'defaults' and 'payers')")
    defaults = table.get("defaults") or {}
    payers = table.get("payers") or {}
    if not isinstance(defaults, Mapping):
        problems.append("defaults: must be a mapping")
        defaults = {}
    if not isinstance(payers, Mapping):
        problems.append("payers: must be a mapping of payer id -> settings")
        payers = {}
    base_values = _values(defaults, "defaults", problems)
    defaults_ok = _check_values(base_values, "defaults", problems)
    defaults_ok = _resolve_credentials(base_values, "defaults", context, problems) and defaults_ok
    routes: dict[str, Route] = {}
    seen: set[str] = set()
    for raw_id, entry in payers.items():
        payer_id = normalise_payer_id(raw_id)
        where = f"payers.{raw_id}"
        if not payer_id:
            problems.append(f"{where}: empty payer id")
            continue
        if payer_id in seen:
            problems.append(f"{where}: payer id listed twice (ids are compared trimmed and case-insensitively)")
            continue
        seen.add(payer_id)
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a mapping with at least 'url'")
            continue
        own = _values(entry, where, problems)
        if "receiver_id" not in own and "receiver_id" not in base_values:
            own["receiver_id"] = payer_id
        own_ok = _check_values(own, where, problems)
        own_ok = _resolve_credentials(own, where, context, problems) and own_ok
        merged = {**base_values, **own}
        own_ok = _check_merged_credentials(merged, own, where, problems) and own_ok
        route = _route(payer_id, merged, where, problems, build=own_ok and defaults_ok)
        if route is not None:
            routes[payer_id] = route
    override = None
    if override_url:
        own = {"url": override_url, "transport": "soap"}
        own_ok = _check_values(own, OVERRIDE_ENV, problems)
        own_ok = _check_merged_credentials({**base_values, **own}, own, OVERRIDE_ENV, problems) and own_ok
        override = _route("*", {"receiver_id": "PAYER", **base_values, **own}, OVERRIDE_ENV, problems,
                          build=own_ok and defaults_ok)
    if problems:
        raise MappingError("routing table is not usable:\n  - " + "\n  - ".join(problems))
    return RoutingTable(routes, override=override)


def routes_from_config(config: Mapping[str, Any] | None = None) -> RoutingTable:
    """The routing table for an app: ``FHIR_X12_PAYER_URL``, ``FHIR_X12_ROUTING`` (a routing table file of
    the deployment's own) and ``FHIR_X12_MAPPINGS`` from ``config``, else from the environment."""
    config = config or {}
    override = config.get(OVERRIDE_ENV) or os.environ.get(OVERRIDE_ENV) or None
    path = config.get(ROUTING_ENV) or os.environ.get(ROUTING_ENV) or None
    table = None
    folder = None
    if path:
        try:
            table = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise MappingError(f"{ROUTING_ENV}: the routing table {path} is not UTF-8 text") from None
        except (OSError, yaml.YAMLError) as exc:
            raise MappingError(f"{ROUTING_ENV}: cannot read the routing table {path}: {exc}") from None
        # an empty file (a truncated mount, say) is no table: never fall back to the shipped sample payers
        if table is None:
            raise MappingError(f"{ROUTING_ENV}: the routing table {path} is empty")
        folder = Path(path).resolve().parent
    routes = load_routes(table, override, base=config.get("FHIR_X12_MAPPINGS"), folder=folder)
    if not routes.routes and override is None:
        raise MappingError(f"{ROUTING_ENV if path else 'routing.yaml'}: the routing table lists no payers (and "
                           f"{OVERRIDE_ENV} is not set): every request would be refused")
    sent_to = [routes.override] if routes.override is not None else routes.routes.values()
    for route in sent_to:
        if urlsplit(route.url).scheme == "http" and not is_loopback_url(route.url):
            startup_warning(log, "payer %s is routed over plain http to %s: eligibility requests carry patient "
                            "data; use https beyond this machine", route.payer_id, urlsplit(route.url).hostname)
    return routes


def _values(entry: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """The Route attributes one YAML mapping sets (type-checked; ranges are checked on the whole route)."""
    values: dict[str, Any] = {}
    for key, value in entry.items():
        path = f"{where}.{key}"
        if key in _DOC_KEYS:
            continue
        if key == "breaker":
            if not isinstance(value, Mapping):
                problems.append(f"{path}: must be a mapping with failures and reset_seconds")
                continue
            for sub, sub_value in value.items():
                if sub not in _BREAKER_FIELDS:
                    problems.append(f"{path}.{sub}: unknown key (expected failures, reset_seconds)")
                else:
                    values[_BREAKER_FIELDS[sub]] = sub_value
            continue
        if key not in _FIELDS:
            problems.append(f"{path}: unknown key (expected one of {', '.join(sorted({*_FIELDS, 'breaker'}))})")
            continue
        values[_FIELDS[key]] = value
    return values


def _check_values(values: dict[str, Any], where: str, problems: list[str]) -> bool:
    """Check each value that is present (Route attribute names); False when any is wrong."""
    before = len(problems)
    if "url" in values:
        _check_url(values["url"], f"{where}.url", problems)
    if "transport" in values and values["transport"] not in TRANSPORTS:
        problems.append(f"{where}.transport: must be one of {', '.join(TRANSPORTS)}, not {values['transport']!r}")
    for key in ("sender_id", "receiver_id"):
        if key in values and (not isinstance(values[key], str) or not _valid_id(values[key])):
            problems.append(f"{where}.{key}: 1-15 printable ASCII characters without X12 delimiters")
    for key in ("sender_qualifier", "receiver_qualifier"):
        value = values.get(key, "ZZ")
        if not isinstance(value, str) or len(value) != 2 or not value.isalnum():
            problems.append(f"{where}.{key}: an ISA qualifier is 2 letters or digits (quote numbers: \"30\")")
    if "information_receiver" in values:
        values["information_receiver"] = _information_receiver(values["information_receiver"],
                                                               f"{where}.information_receiver", problems)
    if values.get("usage", "P") not in ("P", "T"):
        problems.append(f"{where}.usage: P (production) or T (test)")
    for attr, label, low, high in _NUMBERS:
        if attr in values and not _number_ok(values[attr], low, high, zero_ok=attr in _ZERO_OK):
            if isinstance(low, int):
                problems.append(f"{where}.{label}: must be a whole number from {low} to {high}")
            else:
                floor = "0 or more" if attr in _ZERO_OK else "above 0"
                problems.append(f"{where}.{label}: must be a number of seconds, {floor} and at most {high:g}")
    return len(problems) == before


def _information_receiver(value: Any, where: str, problems: list[str]) -> InformationReceiver | None:
    """The checked ``information_receiver`` mapping; None (with its problems named) when it is wrong."""
    if not isinstance(value, Mapping):
        problems.append(f"{where}: must be a mapping with npi and name (and entity, first_name, taxonomy)")
        return None
    before = len(problems)
    for key in sorted(set(value) - _RECEIVER_KEYS, key=str):
        problems.append(f"{where}.{key}: unknown key (expected one of {', '.join(sorted(_RECEIVER_KEYS))})")
    npi = value.get("npi")
    if isinstance(npi, int) and not isinstance(npi, bool):
        npi = str(npi)
    if not isinstance(npi, str) or not valid_npi(npi):
        problems.append(f"{where}.npi: a National Provider Identifier is 10 digits with a valid check digit "
                        "(quote it: \"1234567893\")")
    entity = value.get("entity", "organization")
    if entity not in ("organization", "person"):
        problems.append(f"{where}.entity: organization or person, not {entity!r}")
    for key in ("name", "first_name"):
        text = value.get(key, "" if key == "first_name" else None)
        if not isinstance(text, str) or (key == "name" and not text.strip()) or len(text) > 60:
            problems.append(f"{where}.{key}: " + ("required, " if key == "name" else "") + "text of at most 60 "
                            "characters")
    if value.get("first_name") and entity != "person":
        problems.append(f"{where}.first_name: only for entity: person")
    taxonomy = value.get("taxonomy", "")
    if not isinstance(taxonomy, str) or (taxonomy and not _TAXONOMY.fullmatch(taxonomy.strip())):
        problems.append(f"{where}.taxonomy: a NUCC provider taxonomy code is 10 upper-case letters and digits "
                        "ending in X (\"207Q00000X\")")
    if len(problems) > before:
        return None
    return InformationReceiver(npi=npi, name=value["name"].strip(), entity=entity,
                               first_name=str(value.get("first_name") or "").strip(), taxonomy=taxonomy.strip())


def _route(payer_id: str, values: dict[str, Any], where: str, problems: list[str], *, build: bool) -> Route | None:
    """A Route from checked values (``build``: they all passed), once the required keys are there and the
    timeouts fit in the budget."""
    missing = [key for key in ("url", "transport", "sender_id", "receiver_id") if key not in values]
    for key in missing:
        problems.append(f"{where}.{key}: required (here or in defaults)")
    if missing or not build:
        return None
    route = Route(payer_id=payer_id, **values)
    if route.timeout > route.budget or route.connect_timeout > route.budget:
        problems.append(f"{where}: timeout_seconds and connect_timeout_seconds must fit in budget_seconds "
                        f"({route.budget:g})")
        return None
    return replace(route, timeout=float(route.timeout), connect_timeout=float(route.connect_timeout),
                   budget=float(route.budget), queue_wait=float(route.queue_wait), backoff=float(route.backoff),
                   breaker_reset=float(route.breaker_reset))


@dataclass(frozen=True)
class _Context:
    folder: Path                    # relative certificate paths start here
    environ: Mapping[str, str]      # where password_env is looked up


def _resolve_credentials(values: dict[str, Any], where: str, context: _Context, problems: list[str]) -> bool:
    """Check the credential keys one mapping sets, in place: read the password its ``password_env`` names and
    make certificate paths absolute (each checked readable and loadable). False when any is wrong.

    Pairs are checked per mapping, so a payer never mixes its own user name with the defaults' password or its
    own certificate with the defaults' key.
    """
    before = len(problems)
    if ("username" in values) != ("password_env" in values):
        given, missing = ("username", "password_env") if "username" in values else ("password_env", "username")
        problems.append(f"{where}.{given}: needs {missing} beside it (set both or neither)")
    if "username" in values:
        user = values["username"]
        if not isinstance(user, str) or not 1 <= len(user) <= _MAX_CREDENTIAL or not user.isprintable():
            problems.append(f"{where}.username: 1-{_MAX_CREDENTIAL} printable characters")
    if "password_env" in values:
        name = values["password_env"]
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            # the value is not quoted: someone may have pasted the password itself here
            problems.append(f"{where}.password_env: must be the NAME of an environment variable (letters, digits "
                            f"and _), not the password itself")
        else:
            password = context.environ.get(name)
            if not password:
                problems.append(f"{where}.password_env: environment variable {name} is not set or is empty")
            elif len(password) > _MAX_CREDENTIAL or not password.isprintable():
                problems.append(f"{where}.password_env: the password in environment variable {name} must be at most "
                                f"{_MAX_CREDENTIAL} printable characters (no line breaks or control characters)")
            else:
                values["password"] = password
    if "client_key" in values and "client_cert" not in values:
        problems.append(f"{where}.client_key: needs client_cert beside it")
    elif "client_cert" in values:
        values.setdefault("client_key", None)   # not inherited: a key belongs to its own certificate
    for key in ("client_cert", "client_key", "ca_bundle"):
        if values.get(key) is not None:
            values[key] = _readable(values[key], f"{where}.{key}", context.folder, problems,
                                    directory_ok=key == "ca_bundle")
    if len(problems) > before:
        return False
    if values.get("client_cert"):
        _load_tls(f"{where}.client_cert", problems,
                  lambda ctx: ctx.load_cert_chain(values["client_cert"], values["client_key"], password=_no_password),
                  "not a PEM certificate with its unencrypted PEM private key (in client_key or the same file), "
                  "or the two do not match")
    if values.get("ca_bundle"):
        bundle = values["ca_bundle"]
        if not Path(bundle).is_dir():
            _load_tls(f"{where}.ca_bundle", problems, lambda ctx: ctx.load_verify_locations(cafile=bundle),
                      "holds no PEM CA certificate")
    return len(problems) == before


def _check_merged_credentials(merged: Mapping[str, Any], own: Mapping[str, Any], where: str,
                              problems: list[str]) -> bool:
    """What only the whole route can tell: a certificate needs https, a password https or a loopback host (the
    simulator); HTTP Basic cannot carry ':' in a user name."""
    before = len(problems)
    url = merged.get("url")
    if merged.get("client_cert") and isinstance(url, str) and urlsplit(url).scheme == "http":
        origin = "" if "client_cert" in own else " (set in defaults)"
        problems.append(f"{where}.client_cert: a client certificate needs an https url, not {url!r}{origin}")
    user = merged.get("username")
    if user and isinstance(url, str) and urlsplit(url).scheme == "http" and not is_loopback_url(url):
        origin = "" if "username" in own else " (set in defaults)"
        problems.append(f"{where}.username: a password only travels over https (or to a loopback address), "
                        f"not to {url!r}{origin}")
    if merged.get("transport") == "x12" and isinstance(user, str) and ":" in user:
        problems.append(f"{where}.username: HTTP Basic authentication (transport x12) cannot carry ':' in a user name")
    return len(problems) == before


def is_loopback_url(url: str) -> bool:
    """The URL's host is this machine (``localhost`` or a loopback address): plain http is fine there."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _readable(value: Any, where: str, folder: Path, problems: list[str], *, directory_ok: bool) -> str | None:
    """The absolute path of a readable file (or folder, where allowed), relative ones taken from ``folder``."""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: must be a file path")
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    try:
        if directory_ok and path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb") as handle:
                handle.read(1)
    except OSError as exc:
        problems.append(f"{where}: cannot read {path}: {exc.strerror or type(exc).__name__}")
        return None
    return str(path)


def _no_password() -> bytes:
    """An encrypted key fails to load instead of OpenSSL prompting on a terminal (requests cannot use one)."""
    return b""


def ca_bundle_path(path: str, setting: str) -> str:
    """A CA bundle named by an environment setting (``REQUESTS_CA_BUNDLE``, ``FHIR_X12_FHIR_CA_BUNDLE``), checked
    as a route's ``ca_bundle`` is: its absolute path, or ConfigError naming ``setting`` (found at start, not as
    every call failing)."""
    problems: list[str] = []
    found = _readable(path, setting, Path.cwd(), problems, directory_ok=True)
    if found is not None and not Path(found).is_dir():
        _load_tls(setting, problems, lambda ctx: ctx.load_verify_locations(cafile=found),
                  "holds no PEM CA certificate")
    if problems or found is None:
        raise ConfigError("; ".join(problems))
    return found


def _load_tls(where: str, problems: list[str], load: Callable[[ssl.SSLContext], Any], meaning: str) -> None:
    """Load the files the way the TLS handshake will, so a wrong file is found at start-up."""
    try:
        load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    except ssl.SSLError as exc:
        problems.append(f"{where}: {meaning} (OpenSSL: {exc.reason or 'no reason given'})")
    except OSError as exc:
        problems.append(f"{where}: {meaning} ({exc.strerror or type(exc).__name__})")


def _number_ok(value: Any, low: float, high: float, *, zero_ok: bool) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(low, int):
        return isinstance(value, int) and low <= value <= high
    return isinstance(value, int | float) and (low < value or (zero_ok and value == 0)) and value <= high


def _check_url(url: Any, where: str, problems: list[str]) -> None:
    if not isinstance(url, str):
        problems.append(f"{where}: must be an http or https URL")
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
        problems.append(f"{where}: must be an http or https URL with a host and no credentials, not {url!r}")
        return
    try:
        parts.port   # noqa: B018 - parsing it is the check (out of range, not a number)
    except ValueError:
        problems.append(f"{where}: the port of {url!r} is not a number from 0 to 65535")


__all__ = ["Route", "RoutingTable", "UnknownPayer", "load_routes", "routes_from_config", "normalise_payer_id"]
