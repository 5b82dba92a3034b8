"""CAQH CORE Connectivity vC2.2.0 real-time envelopes, in both forms the rule allows (SOAP 1.2 and HTTP MIME).

The gateway uses the ``build_*_request`` / ``parse_*_response`` half as a client; the payer simulator uses the
``parse_*_request`` / ``build_*_response`` half as a server. Both forms carry the same fields, so each parser
reduces its input to a name -> text map and one shared checker applies the rule's required-field and value checks;
a SOAP and a MIME envelope with the same content therefore fail with the same error code.

Decisions worth knowing before changing this file:

* **Field namespace.** The public CORERule2.2.0.xsd declares no ``elementFormDefault``, so only the wrapper element
  (``COREEnvelopeRealTimeRequest``/``...Response``) is in :data:`CORE_NS`; its children (``PayloadType`` ...) are
  unqualified. The builders write them that way (schema-valid); the parsers also accept children qualified with
  :data:`CORE_NS`, because some trading partners send them like that.
* **Builders are lenient, parsers are strict.** A server must be able to answer a broken request with an error
  envelope that echoes whatever it received, so the builders write the values they are given without judging them.
  The parsers check presence (in XSD order, the first missing field wins) and then the values.
* **The payload is written as escaped text, not CDATA**, so a carriage return in an X12 interchange (``~\\r\\n``)
  survives as ``&#13;``; an XML parser turns a raw CR inside CDATA into LF. Characters XML 1.0 cannot carry at all
  (control-character delimiters such as ``\\x1c``) cannot go over SOAP: the builder raises ``EnvelopeParsingError``
  rather than send something no receiver can parse; the MIME form carries them unchanged.
* **No DTDs.** A document with a DOCTYPE or an entity is refused before and after parsing (XXE, billion laughs);
  external resources are never fetched (``no_network``, no DTD loading, and a resolver that answers every request
  with nothing).
* **Error responses are returned, faults are raised.** ``parse_*_response`` returns an envelope whose ``error_code``
  is not ``Success`` as it is (call :meth:`CoreEnvelope.raise_for_error`); a SOAP Fault has no envelope to return, so
  it raises :class:`CoreEnvelopeError`. A ``Success`` response must carry a Payload (the XSD makes it optional only
  because error responses have none).

The error codes below follow the style of the rule's table (``...Required``, ``...Illegal``, ``...NotSupported``,
``UnAuthorized``), but the exact table was not available when this was written: **check every code against the CAQH
CORE Connectivity Rule vC2.2.0 PDF before relying on it with a real trading partner** (reference §4.4 and §7 item 2).
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import hmac
import re
import secrets
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from gateway.errors import GatewayError

CORE_NS = "http://www.caqh.org/SOAP/WSDL/CORERule2.2.0.xsd"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSSE_PASSWORD_TEXT = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText"

SOAP_ACTION = "RealTimeTransaction"
SOAP_CONTENT_TYPE = f'application/soap+xml; charset=utf-8; action="{SOAP_ACTION}"'

REAL_TIME = "RealTime"
CORE_RULE_VERSION = "2.2.0"
SUCCESS = "Success"
SUCCESS_MESSAGE = "None"

PAYLOAD_270 = "X12_270_Request_005010X279A1"
PAYLOAD_271 = "X12_271_Response_005010X279A1"
PAYLOAD_999 = "X12_999_Response_005010X231A1"
PAYLOAD_TA1 = "X12_TA1_Response_00501X231A1"  # 00501, not 005010: TA1 belongs to the interchange envelope

REQUEST_PAYLOAD_TYPES: frozenset[str] = frozenset({PAYLOAD_270})
RESPONSE_PAYLOAD_TYPES: frozenset[str] = frozenset({PAYLOAD_271, PAYLOAD_999, PAYLOAD_TA1})

# Envelope error codes (verify against the rule PDF, see the module docstring).
PAYLOAD_TYPE_REQUIRED = "PayloadTypeRequired"
PROCESSING_MODE_REQUIRED = "ProcessingModeRequired"
PAYLOAD_ID_REQUIRED = "PayloadIDRequired"
TIMESTAMP_REQUIRED = "TimeStampRequired"
SENDER_ID_REQUIRED = "SenderIDRequired"
RECEIVER_ID_REQUIRED = "ReceiverIDRequired"
CORE_RULE_VERSION_REQUIRED = "CORERuleVersionRequired"
PAYLOAD_REQUIRED = "PayloadRequired"
PROCESSING_MODE_ILLEGAL = "ProcessingModeIllegal"
PAYLOAD_ID_ILLEGAL = "PayloadIDIllegal"
TIMESTAMP_ILLEGAL = "TimeStampIllegal"
CORE_RULE_VERSION_NOT_SUPPORTED = "CORERuleVersionNotSupported"
PAYLOAD_TYPE_NOT_SUPPORTED = "PayloadTypeNotSupported"
PAYLOAD_ILLEGAL = "PayloadIllegal"   # a Payload that is not X12 at all (no ISA to answer with a TA1)
ENVELOPE_PARSING_ERROR = "EnvelopeParsingError"
UNAUTHORIZED = "UnAuthorized"

# The seven metadata fields in XSD order, with the CoreEnvelope attribute each one fills.
_METADATA = (
    ("PayloadType", "payload_type"),
    ("ProcessingMode", "processing_mode"),
    ("PayloadID", "payload_id"),
    ("TimeStamp", "timestamp"),
    ("SenderID", "sender_id"),
    ("ReceiverID", "receiver_id"),
    ("CORERuleVersion", "core_rule_version"),
)
_REQUEST_FIELDS = frozenset(name for name, _ in _METADATA) | {"Payload"}
_REQUIRED = tuple(name for name, _ in _METADATA) + ("Payload",)   # in XSD order: the first one missing is reported
_RESPONSE_FIELDS = _REQUEST_FIELDS | {"ErrorCode", "ErrorMessage"}
_MAX_DETAIL = 200  # longest parser message quoted back in an error, so errors never echo a whole document


@dataclass
class CoreEnvelope:
    """One real-time CORE envelope; the same shape serves requests and responses so a server can echo fields.

    ``payload`` is the X12 interchange as text (``None`` when a response carries none). ``error_code`` and
    ``error_message`` belong to responses only (``None`` on requests; the builders write ``Success``/``None``).
    ``username``/``password`` travel in a WS-Security UsernameToken (SOAP) or the UserName/Password form fields
    (MIME); they are ``None`` when the partner authenticates with a client certificate instead. The password is
    kept out of ``repr`` so an envelope can be logged.
    """

    payload_type: str
    processing_mode: str
    payload_id: str
    timestamp: str
    sender_id: str
    receiver_id: str
    core_rule_version: str
    payload: str | None
    error_code: str | None = None
    error_message: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def create(cls, payload_type: str, payload: str | None, *, sender_id: str, receiver_id: str,
               now: datetime | None = None, payload_id: str | None = None, username: str | None = None,
               password: str | None = None) -> CoreEnvelope:
        """A new envelope with the constant fields filled in, so callers only supply what varies per message."""
        return cls(payload_type=payload_type, processing_mode=REAL_TIME, payload_id=payload_id or new_payload_id(),
                   timestamp=core_timestamp(now if now is not None else datetime.now(UTC)), sender_id=sender_id,
                   receiver_id=receiver_id, core_rule_version=CORE_RULE_VERSION, payload=payload,
                   username=username, password=password)

    @property
    def succeeded(self) -> bool:
        """True unless this is a response whose ErrorCode reports an envelope-level failure."""
        return self.error_code is None or self.error_code == SUCCESS

    def raise_for_error(self) -> None:
        """Turn a non-``Success`` response into a :class:`CoreEnvelopeError` for callers that want exceptions."""
        if not self.succeeded:
            raise CoreEnvelopeError(self.error_code or ENVELOPE_PARSING_ERROR, self.error_message or "", envelope=self)


class CoreEnvelopeError(GatewayError):
    """An envelope the CORE rule does not accept; ``error_code`` is what a server puts in ErrorCode or a Fault.

    ``envelope`` holds whatever fields could be read (missing ones as ``""``, never the password), so a server can
    echo them in its error response.
    """

    def __init__(self, error_code: str, message: str, *, envelope: CoreEnvelope | None = None) -> None:
        self.error_code = error_code
        self.message = message
        self.envelope = envelope
        super().__init__(f"{error_code}: {message}")


# --------------------------------------------------------------------------------------------------------- helpers


def new_payload_id() -> str:
    """A fresh PayloadID: an RFC 4122 version-1 (time + node) UUID, which is the kind the rule asks for."""
    return str(uuid.uuid1())


def core_timestamp(now: datetime) -> str:
    """``now`` as an XML Schema dateTime in UTC with a ``Z`` suffix, to the second.

    A naive datetime is taken to be UTC already (the project passes naive UTC times around); an aware one is
    converted.
    """
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    return now.replace(microsecond=0).isoformat() + "Z"


def authorize(env: CoreEnvelope, accounts: Mapping[str, str]) -> None:
    """Raise ``UnAuthorized`` unless the envelope's user name/password match ``accounts`` (user -> password).

    Comparisons are constant-time, and an unknown user costs the same as a wrong password, so response timing
    does not reveal which user names exist.
    """
    if not credentials_ok(env.username, env.password, accounts):
        raise CoreEnvelopeError(UNAUTHORIZED, "user name or password not accepted", envelope=_without_password(env))


def credentials_ok(username: str | None, password: str | None, accounts: Mapping[str, str]) -> bool:
    """The check behind :func:`authorize`, shared with HTTP Basic (raw X12) so both cost the same per attempt."""
    expected = accounts.get(username or "")
    given = (password or "").encode("utf-8")
    ok = hmac.compare_digest(given, (expected if expected is not None else secrets.token_hex(16)).encode("utf-8"))
    return ok and expected is not None and bool(username)


def _without_password(env: CoreEnvelope) -> CoreEnvelope:
    return CoreEnvelope(**{**env.__dict__, "password": None})


def _short(text: object) -> str:
    text = str(text)
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


def _credentials(username: str | None, password: str | None) -> tuple[str | None, str | None]:
    """Both or neither: half a credential is refused rather than silently treated as "no credentials"."""
    username = username or None
    password = password or None
    if (username is None) != (password is None):
        missing = "password" if password is None else "user name"
        raise CoreEnvelopeError(UNAUTHORIZED, f"credentials incomplete: {missing} missing")
    return username, password


def _partial(values: Mapping[str, str | None], *, username: str | None = None) -> CoreEnvelope:
    """Whatever could be read, for error responses; absent metadata becomes ``""``."""
    meta = {attr: (values.get(name) or "").strip() for name, attr in _METADATA}
    return CoreEnvelope(**meta, payload=values.get("Payload"), error_code=values.get("ErrorCode"),
                        error_message=values.get("ErrorMessage"), username=username)


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def _check_required(values: Mapping[str, str | None], env: CoreEnvelope) -> None:
    """The seven metadata fields then Payload, in XSD order; the first one missing or blank is reported."""
    for name in _REQUIRED:
        if _blank(values.get(name)):
            raise CoreEnvelopeError(f"{name}Required", f"{name} is missing or empty", envelope=env)


def _check_values(env: CoreEnvelope, payload_types: Collection[str]) -> None:
    # The version first: under another rule version the other fields may not mean what this module thinks.
    if env.core_rule_version != CORE_RULE_VERSION:
        raise CoreEnvelopeError(CORE_RULE_VERSION_NOT_SUPPORTED,
                                f"CORERuleVersion {_short(env.core_rule_version)!r} is not supported; "
                                f"only {CORE_RULE_VERSION} is", envelope=env)
    if env.processing_mode != REAL_TIME:
        raise CoreEnvelopeError(PROCESSING_MODE_ILLEGAL,
                                f"ProcessingMode {_short(env.processing_mode)!r} is not allowed here; "
                                f"this endpoint is {REAL_TIME} only", envelope=env)
    if env.payload_type not in payload_types:
        raise CoreEnvelopeError(PAYLOAD_TYPE_NOT_SUPPORTED,
                                f"PayloadType {_short(env.payload_type)!r} is not supported here "
                                f"(expected one of {', '.join(sorted(payload_types))})", envelope=env)


def _request_from_fields(values: Mapping[str, str | None], username: str | None, password: str | None,
                         payload_types: Collection[str]) -> CoreEnvelope:
    partial = _partial(values, username=username)
    try:
        username, password = _credentials(username, password)
    except CoreEnvelopeError as exc:
        exc.envelope = partial
        raise
    _check_required(values, partial)
    _check_values(partial, payload_types)
    _check_request_formats(partial)
    return CoreEnvelope(**{**partial.__dict__, "username": username, "password": password})


# the form uuid.UUID reads and every sender writes; anything else is left to uuid.UUID (braces, urn:uuid:, no dashes)
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# xs:dateTime: date, time, optional fraction, optional zone (the rule's TimeStamp type)
_XS_DATETIME = re.compile(r"-?\d{4,}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?")


def _check_request_formats(env: CoreEnvelope) -> None:
    """A request's PayloadID is a UUID (RFC 4122) and its TimeStamp an xs:dateTime, as the rule types them. Checked
    on requests only, which is where a payer (the simulator) answers for them; the gateway reads a payer's
    response leniently."""
    payload_id = (env.payload_id or "").strip()
    try:
        if not _CANONICAL_UUID.fullmatch(payload_id):
            uuid.UUID(payload_id)
    except ValueError:
        raise CoreEnvelopeError(PAYLOAD_ID_ILLEGAL, f"PayloadID {_short(env.payload_id)!r} is not a UUID",
                                envelope=env) from None
    stamp = (env.timestamp or "").strip()
    valid = _XS_DATETIME.fullmatch(stamp) is not None
    if valid:
        try:
            datetime.fromisoformat(stamp.replace("Z", "+00:00").lstrip("-"))
        except ValueError:
            valid = False
    if not valid:
        raise CoreEnvelopeError(TIMESTAMP_ILLEGAL, f"TimeStamp {_short(stamp)!r} is not an XML Schema dateTime "
                                "(2025-03-10T09:30:00Z)", envelope=env)


def _response_from_fields(values: Mapping[str, str | None], payload_types: Collection[str]) -> CoreEnvelope:
    # ErrorCode is looked at before the metadata: a server reporting an error may echo incomplete or unsupported
    # values, and what the caller needs then is the server's error, not a complaint about the echo.
    partial = _partial(values)
    for name in ("ErrorCode", "ErrorMessage"):
        if values.get(name) is None:
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"{name} is missing from the response", envelope=partial)
    error_code = (values.get("ErrorCode") or "").strip()
    if not error_code:
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "ErrorCode is empty", envelope=partial)
    partial.error_code = error_code
    if error_code != SUCCESS:
        return partial
    _check_required(values, partial)
    _check_values(partial, payload_types)
    return partial


# ------------------------------------------------------------------------------------------------------------ SOAP


class _RefuseResolver(etree.Resolver):
    """Answers every external-resource request with an empty document: nothing outside the message is ever read."""

    def resolve(self, system_url: str, public_id: str | None, context: object) -> object:
        return self.resolve_string("", context)


def _xml_parser() -> etree.XMLParser:
    """A fresh hardened parser per call (lxml parsers must not be shared between threads)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    parser.resolvers.add(_RefuseResolver())
    return parser


def _parse_xml(data: bytes) -> etree._Element:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "the envelope must be bytes")
    data = bytes(data)
    # Cheap refusal before libxml2 sees a DTD at all (UTF-8/ASCII documents); the check after parsing covers
    # other encodings.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "DOCTYPE and entity declarations are not allowed")
    try:
        root = etree.fromstring(data, _xml_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"not well-formed XML: {_short(exc)}") from exc
    if root is None:
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "empty document")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "DOCTYPE and entity declarations are not allowed")
    return root


def _elements(parent: etree._Element) -> list[etree._Element]:
    """Child elements only (comments and processing instructions are skipped)."""
    return [child for child in parent if isinstance(child.tag, str)]


def _soap_parts(data: bytes) -> tuple[etree._Element | None, etree._Element]:
    """The SOAP 1.2 Header (or None) and the single element inside Body."""
    root = _parse_xml(data)
    if root.tag == f"{{{SOAP11_NS}}}Envelope":
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "SOAP 1.1 envelope; CORE vC2.2.0 requires SOAP 1.2")
    if root.tag != f"{{{SOAP12_NS}}}Envelope":
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"not a SOAP 1.2 Envelope (root is {_short(root.tag)})")
    children = _elements(root)
    header = None
    if children and children[0].tag == f"{{{SOAP12_NS}}}Header":
        header = children.pop(0)
    if len(children) != 1 or children[0].tag != f"{{{SOAP12_NS}}}Body":
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "a SOAP 1.2 Envelope holds an optional Header, then a Body")
    content = _elements(children[0])
    if len(content) != 1:
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR,
                                f"the SOAP Body must hold exactly one element, not {len(content)}")
    return header, content[0]


def _core_fields(element: etree._Element, allowed: frozenset[str]) -> dict[str, str | None]:
    """Field name -> text of a CORE wrapper element; unqualified or CORE-qualified children, each at most once."""
    values: dict[str, str | None] = {}
    for child in _elements(element):
        tag = child.tag   # "{namespace}name", or "name" when unqualified (what etree.QName reads, without making one)
        namespace, _, localname = tag[1:].partition("}") if tag[:1] == "{" else (None, "", tag)
        if namespace not in (None, CORE_NS) or localname not in allowed:
            continue  # not a CORE field: ignored rather than refused, like any extension element
        if localname in values:
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"{localname} appears more than once")
        if len(child) and _elements(child):   # len: any child node at all (a comment is allowed, an element not)
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"{localname} must hold text, not elements")
        values[localname] = child.text or ""
    return values


def _expect(element: etree._Element, localname: str) -> None:
    if element.tag != f"{{{CORE_NS}}}{localname}":
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR,
                                f"the SOAP Body holds {_short(element.tag)}, not a {localname} in {CORE_NS}")


def _ws_security(header: etree._Element | None) -> tuple[str | None, str | None]:
    """User name and password from a WS-Security UsernameToken (PasswordText only), or (None, None)."""
    if header is None:
        return None, None
    token = header.find(f"{{{WSSE_NS}}}Security/{{{WSSE_NS}}}UsernameToken")
    if token is None:
        return None, None
    user = token.find(f"{{{WSSE_NS}}}Username")
    password = token.find(f"{{{WSSE_NS}}}Password")
    if password is not None and password.get("Type", WSSE_PASSWORD_TEXT) != WSSE_PASSWORD_TEXT:
        raise CoreEnvelopeError(UNAUTHORIZED, "only the PasswordText UsernameToken type is supported")
    return (user.text if user is not None else None), (password.text if password is not None else None)


def _set_text(parent: etree._Element, name: str, value: str | None) -> None:
    try:
        etree.SubElement(parent, name).text = value
    except ValueError as exc:
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR,
                                f"{name} contains characters XML 1.0 cannot carry (send it in the MIME form)") from exc


def _soap_document(env: CoreEnvelope | None = None) -> tuple[etree._Element, etree._Element]:
    """An Envelope (with a UsernameToken header when ``env`` has credentials) and its Body."""
    root = etree.Element(f"{{{SOAP12_NS}}}Envelope", nsmap={"soapenv": SOAP12_NS, "cor": CORE_NS})
    if env is not None and (env.username is not None or env.password is not None):
        header = etree.SubElement(root, f"{{{SOAP12_NS}}}Header")
        security = etree.SubElement(header, f"{{{WSSE_NS}}}Security", nsmap={"wsse": WSSE_NS})
        security.set(f"{{{SOAP12_NS}}}mustUnderstand", "true")
        token = etree.SubElement(security, f"{{{WSSE_NS}}}UsernameToken")
        for tag, value in (("Username", env.username), ("Password", env.password)):
            try:
                etree.SubElement(token, f"{{{WSSE_NS}}}{tag}").text = value
            except ValueError as exc:
                raise CoreEnvelopeError(UNAUTHORIZED, f"{tag} contains characters XML cannot carry") from exc
        token[-1].set("Type", WSSE_PASSWORD_TEXT)
    body = etree.SubElement(root, f"{{{SOAP12_NS}}}Body")
    return root, body


def _serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _fill_core(parent: etree._Element, env: CoreEnvelope) -> None:
    for name, attr in _METADATA:
        _set_text(parent, name, getattr(env, attr))


def build_soap_request(env: CoreEnvelope) -> bytes:
    """A SOAP 1.2 ``COREEnvelopeRealTimeRequest`` (send with :data:`SOAP_CONTENT_TYPE`); credentials go in a
    WS-Security UsernameToken header."""
    root, body = _soap_document(env)
    request = etree.SubElement(body, f"{{{CORE_NS}}}COREEnvelopeRealTimeRequest")
    _fill_core(request, env)
    _set_text(request, "Payload", env.payload)
    return _serialize(root)


def parse_soap_request(data: bytes, *, payload_types: Collection[str] = REQUEST_PAYLOAD_TYPES) -> CoreEnvelope:
    """Read and check a SOAP real-time request; raises :class:`CoreEnvelopeError` with the rule's error code."""
    header, content = _soap_parts(data)
    _expect(content, "COREEnvelopeRealTimeRequest")
    values = _core_fields(content, _REQUEST_FIELDS)
    try:
        username, password = _ws_security(header)
    except CoreEnvelopeError as exc:
        exc.envelope = _partial(values)
        raise
    return _request_from_fields(values, username, password, payload_types)


# the response document around its fields, exactly as lxml serializes it (``_build_soap_response_tree``)
_SOAP_RESPONSE_OPEN = (f"<?xml version='1.0' encoding='UTF-8'?>\n<soapenv:Envelope xmlns:soapenv=\"{SOAP12_NS}\" "
                       f"xmlns:cor=\"{CORE_NS}\"><soapenv:Body><cor:COREEnvelopeRealTimeResponse>").encode("ascii")
_SOAP_RESPONSE_CLOSE = b"</cor:COREEnvelopeRealTimeResponse></soapenv:Body></soapenv:Envelope>"
# the bytes lxml writes as they are in element text, once &, < and > and CR are escaped (_XML_ESCAPES)
_PLAIN_XML_TEXT = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F)])
_XML_ESCAPES = ((b"&", b"&amp;"), (b"<", b"&lt;"), (b">", b"&gt;"), (b"\r", b"&#13;"))
_RESPONSE_TAGS = {name: (f"<{name}>".encode("ascii"), f"</{name}>".encode("ascii"), f"<{name}/>".encode("ascii"))
                  for name in (*(name for name, _ in _METADATA), "Payload", "ErrorCode", "ErrorMessage")}


def build_soap_response(env: CoreEnvelope) -> bytes:
    """A SOAP 1.2 ``COREEnvelopeRealTimeResponse``; ErrorCode/ErrorMessage default to ``Success``/``None``.

    Fields of plain ASCII text (a 271 and its metadata, nearly always) are written straight into the document: the
    same bytes lxml writes, at a fraction of the cost of building and serializing a tree, with one check and one
    escape over all the fields joined by NUL (which no XML text holds). Anything else (non-ASCII, characters XML
    cannot carry, which raise) goes through lxml."""
    code, message = _response_status(env)
    fields: list[tuple[str, str | None]] = [(name, getattr(env, attr)) for name, attr in _METADATA]
    if env.payload is not None:
        fields.append(("Payload", env.payload))
    fields += [("ErrorCode", code), ("ErrorMessage", message)]
    values = [value for _, value in fields if value is not None]
    try:
        joined = "\x00".join(values).encode("ascii")
    except (TypeError, UnicodeEncodeError):   # not text, or not ASCII
        return _build_soap_response_tree(env)
    if joined.translate(None, _PLAIN_XML_TEXT) != b"\x00" * (len(values) - 1):
        return _build_soap_response_tree(env)   # a control character (a NUL of a value's own among them)
    for raw, entity in _XML_ESCAPES:
        if raw in joined:
            joined = joined.replace(raw, entity)
    escaped = iter(joined.split(b"\x00"))
    parts = [_SOAP_RESPONSE_OPEN]
    for name, value in fields:
        start, end, empty = _RESPONSE_TAGS[name]
        parts += (empty,) if value is None else (start, next(escaped), end)
    parts.append(_SOAP_RESPONSE_CLOSE)
    return b"".join(parts)


def _build_soap_response_tree(env: CoreEnvelope) -> bytes:
    """``build_soap_response`` through an lxml tree: values that are not plain ASCII text."""
    root, body = _soap_document()
    response = etree.SubElement(body, f"{{{CORE_NS}}}COREEnvelopeRealTimeResponse")
    _fill_core(response, env)
    if env.payload is not None:
        _set_text(response, "Payload", env.payload)
    code, message = _response_status(env)
    _set_text(response, "ErrorCode", code)
    _set_text(response, "ErrorMessage", message)
    return _serialize(root)


def _response_status(env: CoreEnvelope) -> tuple[str, str]:
    code = env.error_code or SUCCESS
    if env.error_message is not None:
        return code, env.error_message
    return code, SUCCESS_MESSAGE if code == SUCCESS else ""


def parse_soap_response(data: bytes, *, payload_types: Collection[str] = RESPONSE_PAYLOAD_TYPES) -> CoreEnvelope:
    """Read a SOAP real-time response; a SOAP Fault raises :class:`CoreEnvelopeError` with the fault's code."""
    _header, content = _soap_parts(data)
    if content.tag == f"{{{SOAP12_NS}}}Fault":
        code, message = _fault_details(content)
        raise CoreEnvelopeError(code, message)
    _expect(content, "COREEnvelopeRealTimeResponse")
    return _response_from_fields(_core_fields(content, _RESPONSE_FIELDS), payload_types)


def soap_fault(code: str, message: str, *, receiver: bool = False) -> bytes:
    """A SOAP 1.2 Fault for a message too broken to answer with a CORE envelope.

    ``code`` becomes a Subcode in the CORE namespace (e.g. ``cor:EnvelopeParsingError``); the top-level code is
    ``Sender`` (the client's fault, HTTP 400) unless ``receiver`` says the server failed (HTTP 500).
    """
    root, body = _soap_document()
    fault = etree.SubElement(body, f"{{{SOAP12_NS}}}Fault")
    code_el = etree.SubElement(fault, f"{{{SOAP12_NS}}}Code")
    etree.SubElement(code_el, f"{{{SOAP12_NS}}}Value").text = "soapenv:Receiver" if receiver else "soapenv:Sender"
    if _is_ncname(code):
        subcode = etree.SubElement(code_el, f"{{{SOAP12_NS}}}Subcode")
        etree.SubElement(subcode, f"{{{SOAP12_NS}}}Value").text = f"cor:{code}"
    reason = etree.SubElement(fault, f"{{{SOAP12_NS}}}Reason")
    text = etree.SubElement(reason, f"{{{SOAP12_NS}}}Text")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    try:
        text.text = message
    except ValueError:
        text.text = "".join(ch if ch.isprintable() or ch in "\t\n" else "?" for ch in message)
    return _serialize(root)


def _is_ncname(value: str) -> bool:
    try:
        etree.QName(value)
    except ValueError:
        return False
    return bool(value) and ":" not in value


def _fault_details(fault: etree._Element) -> tuple[str, str]:
    """The most specific fault code (deepest Subcode, local part of its QName) and the first Reason text."""
    code = ""
    level = fault.find(f"{{{SOAP12_NS}}}Code")
    while level is not None:
        value = level.find(f"{{{SOAP12_NS}}}Value")
        if value is not None and value.text and value.text.strip():
            code = value.text.strip().rpartition(":")[2]
        level = level.find(f"{{{SOAP12_NS}}}Subcode")
    reason = fault.find(f"{{{SOAP12_NS}}}Reason/{{{SOAP12_NS}}}Text")
    message = reason.text if reason is not None and reason.text else "SOAP Fault without a reason"
    return code or "Sender", f"SOAP Fault: {_short(message)}"


# ------------------------------------------------------------------------------------------------------------ MIME


def _mime_body(fields: list[tuple[str, str | None]]) -> tuple[bytes, str]:
    """multipart/form-data with one field per (name, value); a random boundary checked against the content."""
    encoded = []
    for name, value in fields:
        try:
            encoded.append((name, (value or "").encode("utf-8")))
        except UnicodeEncodeError as exc:
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"{name} is not encodable as UTF-8") from exc
    while True:
        boundary = f"CORE-{secrets.token_hex(16)}"
        if not any(boundary.encode("ascii") in value for _, value in encoded):
            break
    delimiter = b"--" + boundary.encode("ascii")
    chunks = []
    for name, value in encoded:
        chunks += [delimiter, b"\r\n", f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode("ascii"),
                   value, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _mime_fields(body: bytes, content_type: str) -> dict[str, str | None]:
    """Form field name -> text, read with the stdlib email parser; anything malformed or truncated is refused."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "the envelope must be bytes")
    if not isinstance(content_type, str) or "\r" in content_type or "\n" in content_type or not content_type.isascii():
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "unusable Content-Type header")
    head = f"Content-Type: {content_type}\r\n\r\n".encode("ascii")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + bytes(body))
    if message.get_content_type() != "multipart/form-data":
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR,
                                f"Content-Type must be multipart/form-data, not {_short(message.get_content_type())}")
    if not message.get_boundary():
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "multipart/form-data without a boundary")
    if message.defects or not message.is_multipart():
        problems = ", ".join(type(defect).__name__ for defect in message.defects) or "no parts"
        raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"malformed multipart body ({problems})")
    values: dict[str, str | None] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_content_disposition() != "form-data" or not name:
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, "every part needs Content-Disposition: form-data; name=...")
        name = email.utils.collapse_rfc2231_value(name)
        if part.is_multipart():
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"form field {_short(name)} must not be multipart")
        raw = part.get_payload(decode=True) or b""
        if part.defects:
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"form field {_short(name)} is malformed")
        try:
            text = raw.decode(part.get_content_charset() or "utf-8")
        except (LookupError, UnicodeDecodeError) as exc:
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"form field {_short(name)} cannot be decoded") from exc
        if name in values:
            raise CoreEnvelopeError(ENVELOPE_PARSING_ERROR, f"form field {_short(name)} appears more than once")
        values[name] = text
    return values


def build_mime_request(env: CoreEnvelope) -> tuple[bytes, str]:
    """A multipart/form-data real-time request: the body and the Content-Type header (with its boundary).

    Field order carries no meaning (receivers look fields up by name); UserName/Password are added when set.
    """
    fields: list[tuple[str, str | None]] = [(name, getattr(env, attr)) for name, attr in _METADATA]
    if env.username is not None or env.password is not None:
        fields += [("UserName", env.username), ("Password", env.password)]
    if env.payload is not None:
        fields.append(("Payload", env.payload))
    return _mime_body(fields)


def parse_mime_request(body: bytes, content_type: str, *,
                       payload_types: Collection[str] = REQUEST_PAYLOAD_TYPES) -> CoreEnvelope:
    """Read and check a MIME real-time request; same checks and error codes as :func:`parse_soap_request`."""
    values = _mime_fields(body, content_type)
    return _request_from_fields(values, values.get("UserName"), values.get("Password"), payload_types)


def build_mime_response(env: CoreEnvelope) -> tuple[bytes, str]:
    """A multipart/form-data real-time response: the seven fields, Payload when present, ErrorCode, ErrorMessage."""
    fields: list[tuple[str, str | None]] = [(name, getattr(env, attr)) for name, attr in _METADATA]
    if env.payload is not None:
        fields.append(("Payload", env.payload))
    code, message = _response_status(env)
    fields += [("ErrorCode", code), ("ErrorMessage", message)]
    return _mime_body(fields)


def parse_mime_response(body: bytes, content_type: str, *,
                        payload_types: Collection[str] = RESPONSE_PAYLOAD_TYPES) -> CoreEnvelope:
    """Read a MIME real-time response; same checks as :func:`parse_soap_response` (MIME has no Fault)."""
    return _response_from_fields(_mime_fields(body, content_type), payload_types)
