"""CORE vC2.2.0 real-time envelopes: SOAP and MIME round trips, required fields, values, hostile XML, faults."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import GatewayError
from gateway.transport import core
from gateway.transport.core import (
    CORE_NS,
    PAYLOAD_270,
    PAYLOAD_271,
    PAYLOAD_999,
    PAYLOAD_TA1,
    SOAP12_NS,
    WSSE_NS,
    CoreEnvelope,
    CoreEnvelopeError,
    authorize,
    build_mime_request,
    build_mime_response,
    build_soap_request,
    build_soap_response,
    core_timestamp,
    new_payload_id,
    parse_mime_request,
    parse_mime_response,
    parse_soap_request,
    parse_soap_response,
    soap_fault,
)

NOW = datetime(2025, 1, 15, 9, 30)
X12_270 = ("ISA*00*          *00*          *ZZ*SUBMITTER      *ZZ*PAYER          *250115*0930*^*00501*000000001*0*T*:~"
           "GS*HS*SUBMITTER*PAYER*20250115*0930*1*X*005010X279A1~ST*270*0001*005010X279A1~"
           "BHT*0022*13*REF-1*20250115*0930~SE*3*0001~GE*1*1~IEA*1*000000001~")
PAYLOADS = {
    "x12": X12_270,
    "escapes": "NM1*IL*1*O'HARA & <SONS>*\"Q\"~]]>~<![CDATA[x]]>~&amp;~",
    "crlf": "ISA*00~\r\nGS*HS~\r\nIEA*1~\r\n",
    "lf-and-tabs": "ISA*00~\nGS*HS\t~\n",
}
METADATA = ["PayloadType", "ProcessingMode", "PayloadID", "TimeStamp", "SenderID", "ReceiverID", "CORERuleVersion"]
ATTRS = {"PayloadType": "payload_type", "ProcessingMode": "processing_mode", "PayloadID": "payload_id",
         "TimeStamp": "timestamp", "SenderID": "sender_id", "ReceiverID": "receiver_id",
         "CORERuleVersion": "core_rule_version", "Payload": "payload"}

# A schema written for these tests from the field table in reference §4.4: wrapper in the CORE namespace,
# unqualified children in sequence (the published XSD sets no elementFormDefault).
TEST_XSD = f"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="{CORE_NS}">
  <xs:element name="COREEnvelopeRealTimeRequest"><xs:complexType><xs:sequence>
    <xs:element name="PayloadType" type="xs:string"/>
    <xs:element name="ProcessingMode"><xs:simpleType><xs:restriction base="xs:string">
      <xs:pattern value="RealTime"/></xs:restriction></xs:simpleType></xs:element>
    <xs:element name="PayloadID" type="xs:string"/><xs:element name="TimeStamp" type="xs:string"/>
    <xs:element name="SenderID" type="xs:string"/><xs:element name="ReceiverID" type="xs:string"/>
    <xs:element name="CORERuleVersion" type="xs:string"/><xs:element name="Payload" type="xs:string"/>
  </xs:sequence></xs:complexType></xs:element>
  <xs:element name="COREEnvelopeRealTimeResponse"><xs:complexType><xs:sequence>
    <xs:element name="PayloadType" type="xs:string"/>
    <xs:element name="ProcessingMode"><xs:simpleType><xs:restriction base="xs:string">
      <xs:pattern value="RealTime"/></xs:restriction></xs:simpleType></xs:element>
    <xs:element name="PayloadID" type="xs:string"/><xs:element name="TimeStamp" type="xs:string"/>
    <xs:element name="SenderID" type="xs:string"/><xs:element name="ReceiverID" type="xs:string"/>
    <xs:element name="CORERuleVersion" type="xs:string"/>
    <xs:element name="Payload" type="xs:string" minOccurs="0"/>
    <xs:element name="ErrorCode" type="xs:string"/><xs:element name="ErrorMessage" type="xs:string"/>
  </xs:sequence></xs:complexType></xs:element>
</xs:schema>"""


def request(payload: str | None = X12_270, **changes: str | None) -> CoreEnvelope:
    env = CoreEnvelope.create(PAYLOAD_270, payload, sender_id="PROVIDER01", receiver_id="PAYER01", now=NOW,
                              payload_id="f81d4fae-7dec-11d0-a765-00a0c91e6bf6")
    for key, value in changes.items():
        setattr(env, key, value)
    return env


def response(payload: str | None = "ISA*00~IEA*1~", **changes: str | None) -> CoreEnvelope:
    env = CoreEnvelope.create(PAYLOAD_271, payload, sender_id="PAYER01", receiver_id="PROVIDER01", now=NOW,
                              payload_id="9b2c1e40-7dec-11d0-a765-00a0c91e6bf6")
    for key, value in changes.items():
        setattr(env, key, value)
    return env


def form(fields: list[tuple[str, str]], boundary: str = "b0und4ry") -> tuple[bytes, str]:
    """A multipart/form-data body written by hand, so tests can omit or duplicate fields."""
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                    for name, value in fields)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def soap_without(data: bytes, *names: str) -> bytes:
    root = etree.fromstring(data)
    for name in names:
        for node in root.iter(name):
            node.getparent().remove(node)
    return etree.tostring(root)


def soap_with_value(data: bytes, name: str, value: str) -> bytes:
    root = etree.fromstring(data)
    next(root.iter(name)).text = value
    return etree.tostring(root)


def code_of(excinfo: pytest.ExceptionInfo[CoreEnvelopeError]) -> str:
    return excinfo.value.error_code


# ------------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
@pytest.mark.parametrize("credentials", [None, ("clinic-user", "s3cr&t <pw>")], ids=["no-auth", "auth"])
def test_soap_request_round_trip(payload: str, credentials: tuple[str, str] | None) -> None:
    env = request(payload)
    if credentials:
        env.username, env.password = credentials
    assert parse_soap_request(build_soap_request(env)) == env


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
@pytest.mark.parametrize("credentials", [None, ("clinic-user", "s3cr&t <pw>")], ids=["no-auth", "auth"])
def test_mime_request_round_trip(payload: str, credentials: tuple[str, str] | None) -> None:
    env = request(payload)
    if credentials:
        env.username, env.password = credentials
    body, content_type = build_mime_request(env)
    assert content_type.startswith("multipart/form-data; boundary=")
    assert parse_mime_request(body, content_type) == env


@pytest.mark.parametrize("payload_type", [PAYLOAD_271, PAYLOAD_999, PAYLOAD_TA1])
@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_response_round_trips(payload_type: str, payload: str) -> None:
    env = response(payload, payload_type=payload_type)
    expected = response(payload, payload_type=payload_type, error_code="Success", error_message="None")
    assert parse_soap_response(build_soap_response(env)) == expected
    assert parse_mime_response(*build_mime_response(env)) == expected


def test_response_without_credentials_even_if_envelope_has_them() -> None:
    env = response(username="u", password="p")
    assert b"Security" not in build_soap_response(env)
    assert b"Password" not in build_mime_response(env)[0]


def test_mime_carries_what_xml_cannot() -> None:
    """Control-character delimiters and non-ASCII text survive MIME; SOAP refuses them instead of sending junk."""
    env = request("ISA\x1d00\x1dCAF\u00c9\x1c")
    assert parse_mime_request(*build_mime_request(env)) == env
    with pytest.raises(CoreEnvelopeError) as excinfo:
        build_soap_request(env)
    assert code_of(excinfo) == "EnvelopeParsingError"


def test_mime_payload_that_looks_like_a_boundary() -> None:
    env = request("--CORE-\r\n--b0und4ry--\r\nIEA*1~")
    assert parse_mime_request(*build_mime_request(env)).payload == env.payload


def test_soap_layout_matches_schema_order_and_namespaces() -> None:
    schema = etree.XMLSchema(etree.fromstring(TEST_XSD))
    for data, wrapper in ((build_soap_request(request()), "COREEnvelopeRealTimeRequest"),
                          (build_soap_response(response()), "COREEnvelopeRealTimeResponse"),
                          (build_soap_response(response(None, error_code="PayloadIDRequired",
                                                        error_message="PayloadID is missing")),
                           "COREEnvelopeRealTimeResponse")):
        root = etree.fromstring(data)
        assert root.tag == f"{{{SOAP12_NS}}}Envelope"
        body = root.find(f"{{{SOAP12_NS}}}Body")
        (element,) = body
        assert element.tag == f"{{{CORE_NS}}}{wrapper}"
        schema.assertValid(element)
        assert [child.tag for child in element][:7] == METADATA
    request_fields = [child.tag for child in etree.fromstring(build_soap_request(request())).iter("{*}Payload")]
    assert request_fields == ["Payload"]


def test_success_defaults_written_by_the_builders() -> None:
    root = etree.fromstring(build_soap_response(response()))
    assert root.findtext(".//ErrorCode") == "Success"
    assert root.findtext(".//ErrorMessage") == "None"
    body, content_type = build_mime_response(response())
    assert b'name="ErrorCode"\r\n\r\nSuccess\r\n' in body
    assert b'name="ErrorMessage"\r\n\r\nNone\r\n' in body


def test_ws_security_header_shape() -> None:
    root = etree.fromstring(build_soap_request(request(username="clinic", password="pw")))
    token = root.find(f"{{{SOAP12_NS}}}Header/{{{WSSE_NS}}}Security/{{{WSSE_NS}}}UsernameToken")
    assert token.findtext(f"{{{WSSE_NS}}}Username") == "clinic"
    password = token.find(f"{{{WSSE_NS}}}Password")
    assert password.text == "pw" and password.get("Type").endswith("#PasswordText")
    assert etree.fromstring(build_soap_request(request())).find(f"{{{SOAP12_NS}}}Header") is None


def test_core_qualified_children_are_accepted() -> None:
    root = etree.fromstring(build_soap_request(request()))
    for child in next(root.iter(f"{{{CORE_NS}}}COREEnvelopeRealTimeRequest")):
        child.tag = f"{{{CORE_NS}}}{child.tag}"
    assert parse_soap_request(etree.tostring(root)) == request()


def test_whitespace_around_metadata_is_ignored_but_payload_is_kept() -> None:
    data = soap_with_value(build_soap_request(request()), "ProcessingMode", "\n  RealTime \n")
    assert parse_soap_request(data).processing_mode == "RealTime"
    assert parse_soap_request(build_soap_request(request("  ISA~  "))).payload == "  ISA~  "


# ------------------------------------------------------------------------------------------ required fields


@pytest.mark.parametrize("name", METADATA + ["Payload"])
def test_missing_request_field_soap(name: str) -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(soap_without(build_soap_request(request()), name))
    assert code_of(excinfo) == f"{name}Required"
    assert name in excinfo.value.message


@pytest.mark.parametrize("name", METADATA + ["Payload"])
def test_empty_request_field_soap(name: str) -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(build_soap_request(request(**{ATTRS[name]: "  "})))
    assert code_of(excinfo) == f"{name}Required"


@pytest.mark.parametrize("name", METADATA + ["Payload"])
def test_missing_request_field_mime(name: str) -> None:
    env = request()
    fields = [(field, getattr(env, ATTRS[field])) for field in METADATA + ["Payload"] if field != name]
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_mime_request(*form(fields))
    assert code_of(excinfo) == f"{name}Required"


@pytest.mark.parametrize("name", METADATA + ["Payload"])
def test_empty_request_field_mime(name: str) -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_mime_request(*build_mime_request(request(**{ATTRS[name]: ""})))
    assert code_of(excinfo) == f"{name}Required"


def test_first_missing_field_in_schema_order_wins() -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(soap_without(build_soap_request(request()), "Payload", "SenderID", "PayloadID"))
    assert code_of(excinfo) == "PayloadIDRequired"


def test_error_carries_what_could_be_read_for_the_reply() -> None:
    """A server can answer a broken request with a CORE error response echoing the fields it did get."""
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(soap_without(build_soap_request(request(username="u", password="p")), "PayloadID"))
    partial = excinfo.value.envelope
    assert partial.payload_id == "" and partial.sender_id == "PROVIDER01" and partial.password is None
    partial.payload_type, partial.payload_id, partial.payload = PAYLOAD_271, new_payload_id(), None
    partial.error_code, partial.error_message = excinfo.value.error_code, excinfo.value.message
    echoed = parse_soap_response(build_soap_response(partial))
    assert echoed.error_code == "PayloadIDRequired" and not echoed.succeeded


@pytest.mark.parametrize("name", METADATA)
def test_success_response_requires_metadata(name: str) -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_response(soap_without(build_soap_response(response()), name))
    assert code_of(excinfo) == f"{name}Required"
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_mime_response(*build_mime_response(response(**{ATTRS[name]: ""})))
    assert code_of(excinfo) == f"{name}Required"


def test_success_response_requires_payload() -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_response(build_soap_response(response(None)))
    assert code_of(excinfo) == "PayloadRequired"
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_mime_response(*build_mime_response(response(None)))
    assert code_of(excinfo) == "PayloadRequired"


@pytest.mark.parametrize("name", ["ErrorCode", "ErrorMessage"])
def test_response_without_error_fields_is_unparseable(name: str) -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_response(soap_without(build_soap_response(response()), name))
    assert code_of(excinfo) == "EnvelopeParsingError"
    assert name in excinfo.value.message


def test_error_response_is_returned_not_raised() -> None:
    """An envelope-level error from the server comes back as data, even when its echo is incomplete."""
    env = response(None, error_code="CORERuleVersionNotSupported", error_message="only 2.2.0",
                   core_rule_version="2.1.0", sender_id="")
    for parsed in (parse_soap_response(build_soap_response(env)), parse_mime_response(*build_mime_response(env))):
        assert parsed.error_code == "CORERuleVersionNotSupported"
        assert parsed.error_message == "only 2.2.0"
        assert parsed.payload is None and not parsed.succeeded
        with pytest.raises(CoreEnvelopeError) as excinfo:
            parsed.raise_for_error()
        assert code_of(excinfo) == "CORERuleVersionNotSupported"
    response().raise_for_error()  # no error code: nothing raised


# ------------------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize(("change", "code"), [
    ({"processing_mode": "Batch"}, "ProcessingModeIllegal"),
    ({"core_rule_version": "2.1.0"}, "CORERuleVersionNotSupported"),
    ({"payload_type": PAYLOAD_271}, "PayloadTypeNotSupported"),
    ({"payload_type": "X12_276_Request_005010X212"}, "PayloadTypeNotSupported"),
    ({"payload_id": "not-a-uuid"}, "PayloadIDIllegal"),              # the rule's PayloadID is a UUID
    ({"timestamp": "yesterday"}, "TimeStampIllegal"),                 # and its TimeStamp an xs:dateTime
    ({"timestamp": "2025-02-30T10:00:00Z"}, "TimeStampIllegal"),
])
def test_request_values(change: dict[str, str], code: str) -> None:
    env = request(**change)
    for parse in (lambda: parse_soap_request(build_soap_request(env)),
                  lambda: parse_mime_request(*build_mime_request(env))):
        with pytest.raises(CoreEnvelopeError) as excinfo:
            parse()
        assert code_of(excinfo) == code


@pytest.mark.parametrize("stamp", ["2025-03-10T09:30:00Z", "2025-03-10T09:30:00.25+01:00", "2025-03-10T09:30:00"])
def test_request_timestamps_in_any_xs_datetime_form_are_read(stamp: str) -> None:
    assert parse_soap_request(build_soap_request(request(timestamp=stamp))).timestamp == stamp


@pytest.mark.parametrize(("change", "code"), [
    ({"processing_mode": "Batch"}, "ProcessingModeIllegal"),
    ({"core_rule_version": "2.1.0"}, "CORERuleVersionNotSupported"),
    ({"payload_type": PAYLOAD_270}, "PayloadTypeNotSupported"),
])
def test_success_response_values(change: dict[str, str], code: str) -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_response(build_soap_response(response(**change)))
    assert code_of(excinfo) == code


def test_value_errors_never_carry_the_password() -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(build_soap_request(request(processing_mode="Batch", username="u", password="s3cret")))
    assert excinfo.value.envelope.username == "u" and excinfo.value.envelope.password is None


def test_version_is_checked_before_mode() -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(build_soap_request(request(core_rule_version="2.1.0", processing_mode="Batch")))
    assert code_of(excinfo) == "CORERuleVersionNotSupported"


def test_payload_types_can_be_widened() -> None:
    env = request(payload_type="X12_276_Request_005010X212")
    assert parse_soap_request(build_soap_request(env), payload_types={env.payload_type}) == env


# ------------------------------------------------------------------------------------------------ credentials


def test_half_credentials_are_unauthorized() -> None:
    root = etree.fromstring(build_soap_request(request(username="clinic", password="pw")))
    password = root.find(f".//{{{WSSE_NS}}}Password")
    password.getparent().remove(password)
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(etree.tostring(root))
    assert code_of(excinfo) == "UnAuthorized"
    env = request()
    fields = [(field, getattr(env, ATTRS[field])) for field in METADATA + ["Payload"]] + [("UserName", "clinic")]
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_mime_request(*form(fields))
    assert code_of(excinfo) == "UnAuthorized"


def test_password_digest_is_refused() -> None:
    root = etree.fromstring(build_soap_request(request(username="clinic", password="pw")))
    root.find(f".//{{{WSSE_NS}}}Password").set("Type", "http://docs.oasis-open.org/wss/2004/01/"
                                                          "oasis-200401-wss-username-token-profile-1.0#PasswordDigest")
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(etree.tostring(root))
    assert code_of(excinfo) == "UnAuthorized"


def test_authorize() -> None:
    accounts = {"clinic": "s3cret"}
    authorize(parse_soap_request(build_soap_request(request(username="clinic", password="s3cret"))), accounts)
    for username, password in (("clinic", "wrong"), ("other", "s3cret"), (None, None), ("", "")):
        with pytest.raises(CoreEnvelopeError) as excinfo:
            authorize(request(username=username, password=password), accounts)
        assert code_of(excinfo) == "UnAuthorized"
        assert excinfo.value.envelope.password is None


def test_password_stays_out_of_repr() -> None:
    assert "s3cret" not in repr(request(username="clinic", password="s3cret"))


# ------------------------------------------------------------------------------------------- hostile / broken


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-MARKER")
    return path.as_uri()


@pytest.fixture
def resolver_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every external resource the XML parser asks for (there must be none)."""
    calls: list[str] = []

    def record(self: core._RefuseResolver, system_url: str, public_id: str | None, context: object) -> object:
        calls.append(system_url)
        return self.resolve_string("", context)

    monkeypatch.setattr(core._RefuseResolver, "resolve", record)
    return calls


def xxe(uri: str) -> str:
    return (f'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "{uri}">]>\n'
            f'<soapenv:Envelope xmlns:soapenv="{SOAP12_NS}"><soapenv:Body>'
            f'<cor:COREEnvelopeRealTimeRequest xmlns:cor="{CORE_NS}"><PayloadType>&e;</PayloadType>'
            f"</cor:COREEnvelopeRealTimeRequest></soapenv:Body></soapenv:Envelope>")


BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                            for i in range(1, 10))
                  + f']>\n<soapenv:Envelope xmlns:soapenv="{SOAP12_NS}"><soapenv:Body>'
                  f'<cor:COREEnvelopeRealTimeRequest xmlns:cor="{CORE_NS}"><Payload>&lol9;</Payload>'
                  "</cor:COREEnvelopeRealTimeRequest></soapenv:Body></soapenv:Envelope>")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"], ids=["utf8-prescan", "utf16-after-parse"])
@pytest.mark.parametrize("parse", [parse_soap_request, parse_soap_response])
def test_xxe_is_refused_without_reading_the_file(encoding: str, parse: Callable[[bytes], CoreEnvelope],
                                                 secret_file: str, resolver_calls: list[str]) -> None:
    text = xxe(secret_file)
    if encoding == "utf-16":
        text = text.replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse(text.encode(encoding))
    assert code_of(excinfo) == "EnvelopeParsingError"
    assert "TOP-SECRET-MARKER" not in str(excinfo.value)
    assert excinfo.value.envelope is None
    assert resolver_calls == []


def test_resolver_hook_sees_entity_loads(secret_file: str, resolver_calls: list[str]) -> None:
    """Positive control for ``resolver_calls``: a parser that does resolve entities goes through the hook."""
    parser = etree.XMLParser(resolve_entities=True, no_network=True, load_dtd=False)
    parser.resolvers.add(core._RefuseResolver())
    etree.fromstring(xxe(secret_file).encode(), parser)
    assert resolver_calls == [secret_file]


def test_refuse_resolver_answers_with_nothing(secret_file: str) -> None:
    """Even a parser with entity resolution switched on would not read the file through this resolver."""
    parser = etree.XMLParser(resolve_entities=True, no_network=True, load_dtd=False)
    parser.resolvers.add(core._RefuseResolver())
    root = etree.fromstring(xxe(secret_file).encode(), parser)
    assert b"TOP-SECRET-MARKER" not in etree.tostring(root)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"], ids=["utf8-prescan", "utf16-after-parse"])
def test_billion_laughs_is_refused(encoding: str) -> None:
    text = BILLION_LAUGHS
    if encoding == "utf-16":
        text = text.replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(text.encode(encoding))
    assert code_of(excinfo) == "EnvelopeParsingError"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"], ids=["utf8-prescan", "utf16-after-parse"])
def test_doctype_without_entities_is_refused(encoding: str) -> None:
    text = build_soap_request(request()).decode().replace("?>", "?><!DOCTYPE soapenv:Envelope>", 1)
    text = text.replace("encoding='UTF-8'", f"encoding='{encoding.upper()}'")
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(text.encode(encoding))
    assert code_of(excinfo) == "EnvelopeParsingError"
    assert "DOCTYPE" in excinfo.value.message


@pytest.mark.parametrize("data", [b"", b"\x00\xff\xfe garbage", b"ISA*00*~", b"<unclosed>", b"<a>&undefined;</a>",
                                  "not bytes"], ids=["empty", "binary", "x12", "unclosed", "entity", "str"])
@pytest.mark.parametrize("parse", [parse_soap_request, parse_soap_response])
def test_garbage_is_an_envelope_parsing_error(data: bytes, parse: Callable[[bytes], CoreEnvelope]) -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse(data)
    assert code_of(excinfo) == "EnvelopeParsingError"


def wrap(body: str, ns: str = SOAP12_NS, header: str = "") -> bytes:
    return f'<e:Envelope xmlns:e="{ns}">{header}<e:Body>{body}</e:Body></e:Envelope>'.encode()


@pytest.mark.parametrize("data", [
    wrap("<x/>", ns="http://schemas.xmlsoap.org/soap/envelope/"),
    b'<Envelope xmlns="urn:other"><Body/></Envelope>',
    wrap(""),
    wrap(f'<c:COREEnvelopeRealTimeRequest xmlns:c="{CORE_NS}"/><x/>'),
    wrap('<COREEnvelopeRealTimeRequest/>'),
    wrap(f'<c:COREEnvelopeRealTimeResponse xmlns:c="{CORE_NS}"/>'),
    f'<e:Envelope xmlns:e="{SOAP12_NS}"><e:Body/><e:Header/></e:Envelope>'.encode(),
], ids=["soap11", "not-soap", "empty-body", "two-children", "unqualified-wrapper", "response-as-request",
        "header-after-body"])
def test_structural_problems(data: bytes) -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(data)
    assert code_of(excinfo) == "EnvelopeParsingError"


def test_duplicate_or_nested_fields() -> None:
    root = etree.fromstring(build_soap_request(request()))
    wrapper = next(root.iter(f"{{{CORE_NS}}}COREEnvelopeRealTimeRequest"))
    etree.SubElement(wrapper, "SenderID").text = "SOMEONE-ELSE"
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(etree.tostring(root))
    assert code_of(excinfo) == "EnvelopeParsingError"
    root = etree.fromstring(build_soap_request(request()))
    etree.SubElement(next(root.iter("Payload")), "inner")
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(etree.tostring(root))
    assert code_of(excinfo) == "EnvelopeParsingError"
    env = request()
    fields = [(field, getattr(env, ATTRS[field])) for field in METADATA + ["Payload"]] + [("SenderID", "X")]
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_mime_request(*form(fields))
    assert code_of(excinfo) == "EnvelopeParsingError"


def test_mime_structural_problems() -> None:
    body, content_type = build_mime_request(request())
    cases = [
        (body, "application/x-www-form-urlencoded"),
        (body, "multipart/form-data"),  # no boundary
        (body, "multipart/form-data; boundary=other"),
        (body[: len(body) // 2], content_type),  # truncated: closing boundary missing
        (b"\x00\xff garbage", content_type),
        (body, content_type + "\r\nX-Injected: 1"),
        (b"--b\r\nContent-Disposition: attachment\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),
        (b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: form-data; name=Payload\r\n\r\n"
         b"\xff\xfe\r\n--b--\r\n", "multipart/form-data; boundary=b"),
    ]
    for data, header in cases:
        with pytest.raises(CoreEnvelopeError) as excinfo:
            parse_mime_request(data, header)
        assert code_of(excinfo) == "EnvelopeParsingError", header


def test_mime_lf_only_and_quoted_boundary_are_read() -> None:
    env = request()
    fields = [(field, getattr(env, ATTRS[field])) for field in METADATA + ["Payload"]]
    body, _ = form(fields, boundary="q-b")
    assert parse_mime_request(body.replace(b"\r\n", b"\n"), 'multipart/form-data; boundary="q-b"') == env


# ------------------------------------------------------------------------------------------------------ faults


def test_soap_fault_round_trip() -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_response(soap_fault("EnvelopeParsingError", "cannot read <that>"))
    assert code_of(excinfo) == "EnvelopeParsingError"
    assert "cannot read <that>" in excinfo.value.message
    root = etree.fromstring(soap_fault("UnAuthorized", "no", receiver=True))
    assert root.findtext(f".//{{{SOAP12_NS}}}Code/{{{SOAP12_NS}}}Value") == "soapenv:Receiver"


def test_foreign_fault_without_subcode() -> None:
    fault = wrap('<e:Fault><e:Code><e:Value>e:Receiver</e:Value></e:Code>'
                 '<e:Reason><e:Text xml:lang="en">database down</e:Text></e:Reason></e:Fault>')
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_response(fault)
    assert code_of(excinfo) == "Receiver"
    assert "database down" in excinfo.value.message


def test_fault_with_unusable_code_or_message() -> None:
    data = soap_fault("not a name", "bad\x00byte")
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_response(data)
    assert code_of(excinfo) == "Sender"


def test_fault_is_not_a_request() -> None:
    with pytest.raises(CoreEnvelopeError) as excinfo:
        parse_soap_request(soap_fault("EnvelopeParsingError", "x"))
    assert code_of(excinfo) == "EnvelopeParsingError"


# ----------------------------------------------------------------------------------------------------- helpers


def test_new_payload_id_is_a_version_1_rfc_4122_uuid() -> None:
    ids = {new_payload_id() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 1 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


def test_core_timestamp() -> None:
    assert core_timestamp(datetime(2025, 1, 15, 9, 30, 5, 123456)) == "2025-01-15T09:30:05Z"
    eastern = timezone(timedelta(hours=-5))
    assert core_timestamp(datetime(2025, 1, 15, 4, 30, tzinfo=eastern)) == "2025-01-15T09:30:00Z"
    assert core_timestamp(datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)) == "2025-12-31T23:59:59Z"


def test_create_fills_the_constants() -> None:
    env = CoreEnvelope.create(PAYLOAD_270, "ISA~", sender_id="S", receiver_id="R", now=NOW)
    assert (env.processing_mode, env.core_rule_version, env.timestamp) == ("RealTime", "2.2.0", "2025-01-15T09:30:00Z")
    assert uuid.UUID(env.payload_id).version == 1
    assert env.error_code is None and env.succeeded


def test_error_type() -> None:
    error = CoreEnvelopeError("PayloadIDRequired", "PayloadID is missing or empty")
    assert isinstance(error, GatewayError)
    assert str(error) == "PayloadIDRequired: PayloadID is missing or empty"
