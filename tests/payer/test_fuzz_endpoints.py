"""Fuzzing the simulator's 270 endpoints: damaged 270s on /x12, /core/soap and /core/mime, and damaged envelopes.

Whatever comes in, the answer is a documented status with a body, never a 500: a 271 that our own validator passes
and whose TRN echoes the 270's, a 999 or TA1 that names the control numbers it answers, a CORE error envelope or
SOAP Fault, or a text/plain 400 on /x12. Example counts are modest and derandomized (reproducible);
``FHIR_X12_FUZZ_EXAMPLES`` raises them for a longer hunt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.payer.app import create_payer_app
from gateway.transport import core
from gateway.x12.model import Delimiters
from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from gateway.x12.writer import X12Writer
from tests.conftest import FIXTURES
from tests.x12.mutations import damaged_270, plausible_270

EXAMPLES = int(os.environ.get("FHIR_X12_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=EXAMPLES or examples, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from gateway.cli import seed_members

    db = tmp_path_factory.mktemp("fuzz") / "payer.db"
    app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{db}", "PAYER_WORKER": False})
    seed_members(app, FIXTURES / "members")
    yield app.test_client()
    app.extensions["payer_store"].close()


def _traces(data: bytes) -> set[str]:
    """TRN02 of every TRN*1 a 270 carries that a 271 can echo unchanged as TRN*2: printable ASCII, none of the
    simulator's delimiters (``* ^ > ~``), no runs of spaces (an X12 value has none that mean anything)."""
    read = read_x12(data)
    return {trace for t in read.transactions for s in t.segments() if s.id == "TRN" and s.get(1) == "1"
            and (trace := s.get(2)).isascii() and trace.isprintable() and not set(trace) & set("*^>~")
            and trace == " ".join(trace.split())}


def _as_written(value: str, answer: str = "") -> str:
    """A value of the 270 as an answer in ``answer``'s delimiters can echo it (basic character set, no delimiters)."""
    delimiters = Delimiters(answer[3], answer[82], answer[104], answer[105]) if answer else None
    return X12Writer(delimiters).clean(value, "AK2", "AK202")


# 005010X231A1: the elements each 999 segment must carry, and the 270 value each echoes (when it echoes one, an
# empty value in the 270 can only be echoed empty)
_999_REQUIRED = {"AK1": (1, 2, 3), "AK2": (1, 2), "IK3": (1, 2, 4), "IK4": (1, 3), "IK5": (1,), "AK9": (1, 2, 3, 4)}
# the TA1's echo of the ISA it answers: TA101 ISA13, TA102 ISA09, TA103 ISA10
_TA1_ECHOES = {"TA101": "ISA13", "TA102": "ISA09", "TA103": "ISA10"}


def _patient_traces(txn, trn01: str) -> list[set[str]]:  # type: ignore[no-untyped-def]
    """Per patient asked about or answered (a 2000C without dependents, or each 2000D), its TRN02 values."""
    found = []
    for source in txn.root.loops_of("2000A"):
        for receiver in source.loops_of("2000B"):
            for subscriber in receiver.loops_of("2000C"):
                own = {s.get(2) for s in subscriber.segments_of("TRN") if s.get(1) == trn01}
                dependents = subscriber.loops_of("2000D")
                if trn01 == "2" or not dependents:   # a 271 answers each dependent in a 2000C of its own
                    found.append(own | {s.get(2) for d in dependents for s in d.segments_of("TRN")
                                        if s.get(1) == trn01})
                else:
                    found += [own | {s.get(2) for s in d.segments_of("TRN") if s.get(1) == trn01}
                              for d in dependents]
    return found


def check_x12_answer(request: bytes, text: str) -> str:
    """The kind of X12 answer (271, 999, TA1), after checking it is what the simulator documents: its own envelope
    valid, a 271 valid with the 270's traces echoed, a 999 or TA1 naming the control numbers it answers."""
    read = read_x12(text)
    asked = read_x12(request)
    bad_isa = {f.element for f in asked.findings if f.segment == "ISA" and f.severity == "error"}
    defects = [f for f in read.all_findings if f.severity == "error" and not (
        f.code == "X12-SET-UNSUPPORTED" and f.value == "999") and not (
        f.code == "X12-TA1" and _TA1_ECHOES.get(f.element) in bad_isa)]
    assert not defects, [f.to_dict() for f in defects]
    if not all(t.group for t in asked.transactions) or not asked.transactions:
        assert not read.transactions, "a 999 cannot name a set outside any functional group: a TA1 answers it"
    if not read.transactions:   # a TA1 answering one of the interchanges sent
        assert "TA1" + text[3] in text, text
        number = text.split("TA1" + text[3], 1)[1].split(text[3])[0]
        sent = {_as_written(i.control_number.rjust(9, "0")[:9], text) for i in asked.interchanges}
        assert number in sent, (number, text)
        return "TA1"
    kinds = {t.set_id for t in read.transactions}
    assert len(kinds) == 1, kinds
    kind = kinds.pop()
    if kind == "271":
        report = validate_x12(text)
        assert report.valid, [f.to_dict() for f in report.errors]
        assert len(read.transactions) == len(asked.transactions)
        for question, answer in zip(asked.transactions, read.transactions, strict=True):
            asked_traces, answered = _patient_traces(question, "1"), _patient_traces(answer, "2")
            if answered:   # no 2000C at all: the payer or provider was refused (2100A/B AAA)
                assert len(answered) == len(asked_traces), (asked_traces, answered)
                for sent, echoed in zip(asked_traces, answered, strict=True):
                    assert sent & _traces(request) <= echoed, (sent, echoed)
        return kind
    assert kind == "999", kind
    ak2 = [(s.get(1), s.get(2)) for t in read.transactions for s in t.segments() if s.id == "AK2"]
    sent = [(_as_written(t.set_id, text), _as_written(t.control_number, text)) for t in asked.transactions]
    assert ak2 == sent, (ak2, sent)
    ak1 = [s for t in read.transactions for s in t.segments() if s.id == "AK1"]
    groups = {id(t.group): t.group for t in asked.transactions if t.group}
    if groups:
        assert [s.get(2) for s in ak1] == [_as_written(g.control_number, text) for g in groups.values()]
    echoes = {"AK1": [(g.functional_id, g.control_number, g.version) for g in groups.values()],
              "AK2": [(t.set_id, t.control_number) for t in asked.transactions]}
    seen = {"AK1": 0, "AK2": 0}
    for txn in read.transactions:
        for seg in txn.segments():
            received = None
            if seg.id in seen:
                received = echoes[seg.id][seen[seg.id]] if seen[seg.id] < len(echoes[seg.id]) else None
                seen[seg.id] += 1
            if seg.id == "IK3" and seg.get(4) == "1":   # an unrecognized segment id is echoed as it came
                received = (seg.get(1),)
            missing = [i for i in _999_REQUIRED.get(seg.id, ()) if not seg.get(i)
                       and not (received is not None and i <= len(received) and not _as_written(received[i - 1], text))]
            assert not missing, f"{seg.to_x12()}: {seg.id}{missing[0]:02d} is empty"
    return kind


@fuzz_settings(200)
@given(damaged_270())
def test_raw_x12_answers_every_damaged_270_with_a_documented_answer(client, case):
    _, data = case
    response = client.post("/x12", data=data, content_type="application/edi-x12")
    assert response.status_code in (200, 400), (response.status_code, response.data[:500])
    assert response.data
    if response.status_code == 400:
        assert response.mimetype == "text/plain" and response.text.startswith("not readable as X12:")
        return
    assert response.mimetype == "application/edi-x12"
    check_x12_answer(data, response.text)


# ------------------------------------------------------------------------------------------------------ CORE envelopes

CORE_CODES = {getattr(core, name) for name in dir(core) if name.isupper() and isinstance(getattr(core, name), str)
              and (name.endswith(("_REQUIRED", "_ILLEGAL", "_NOT_SUPPORTED", "_ERROR")) or name == "UNAUTHORIZED")}
_KINDS = {core.PAYLOAD_271: "271", core.PAYLOAD_999: "999", core.PAYLOAD_TA1: "TA1"}


def check_core_answer(response, payload: bytes | None, form: str) -> str:  # type: ignore[no-untyped-def]
    """What a CORE endpoint answered (a payload kind or an error code), after checking it is documented: a CORE
    response envelope (200; 400 when nothing of the request could be read), a SOAP Fault with a CORE subcode (400),
    or a Flask refusal in plain text (413); never a 500."""
    status = response.status_code
    assert status in (200, 400, 413), (status, response.data[:300])
    assert response.data
    if status == 413:
        assert response.mimetype == "text/plain"
        return "413"
    try:
        if form == "soap":
            assert response.mimetype == "application/soap+xml"
            reply = core.parse_soap_response(response.data)
        else:
            assert response.mimetype == "multipart/form-data"
            reply = core.parse_mime_response(response.data, response.headers["Content-Type"])
    except core.CoreEnvelopeError as exc:   # a SOAP Fault: only for what could not be read as an envelope at all
        assert form == "soap" and status == 400 and exc.error_code in CORE_CODES, (exc.error_code, exc.message)
        return exc.error_code
    if not reply.succeeded:
        assert reply.error_code in CORE_CODES and reply.error_message, (reply.error_code, reply.error_message)
        # a CORE error envelope comes with 200, but for a MIME request nothing of which could be read (400)
        assert status == 200 or (form == "mime" and reply.error_code in (core.ENVELOPE_PARSING_ERROR,
                                                                        core.UNAUTHORIZED)), (status, reply)
        return reply.error_code
    assert status == 200 and reply.payload
    kind = _KINDS[reply.payload_type]
    if payload is not None:
        assert check_x12_answer(payload, reply.payload) == kind
    return kind


def _soap_request(payload: str) -> bytes | None:
    try:
        return core.build_soap_request(core.CoreEnvelope.create(core.PAYLOAD_270, payload, sender_id="GATEWAY01",
                                                                receiver_id="ACME01"))
    except core.CoreEnvelopeError:   # characters XML 1.0 cannot carry: the MIME form only
        return None


@fuzz_settings(100)
@given(st.one_of(damaged_270(), plausible_270()))
def test_core_soap_and_mime_answer_every_damaged_270_with_an_envelope(client, case):
    _, data = case
    text = data.decode("utf-8", errors="replace")
    sent = text.encode("utf-8")   # what the simulator reads from the envelope
    body = _soap_request(text)
    if body is not None:
        check_core_answer(client.post("/core/soap", data=body, content_type=core.SOAP_CONTENT_TYPE), sent, "soap")
    body, content_type = core.build_mime_request(core.CoreEnvelope.create(
        core.PAYLOAD_270, text, sender_id="GATEWAY01", receiver_id="ACME01"))
    check_core_answer(client.post("/core/mime", data=body, content_type=content_type), sent, "mime")


GOOD_270 = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
FIELDS = ["PayloadType", "ProcessingMode", "PayloadID", "TimeStamp", "SenderID", "ReceiverID", "CORERuleVersion",
          "Payload"]
FIELD_VALUES = st.one_of(st.sampled_from([
    "", " ", "RealTime", "Batch", "realtime", core.PAYLOAD_270, core.PAYLOAD_271, "X12_270_Request_005010X279",
    "2.2.0", "2.1.0", " 2.2.0 ", "2.2", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
    "{f81d4fae-7dec-11d0-a765-00a0c91e6bf6}",
    "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "not-a-uuid", "2025-03-10T09:30:00Z", "2025-02-30T09:30:00Z",
    "2025-03-10T25:00:00Z", "-2025-03-10T09:30:00", "20250310", "&amp;", "<![CDATA[x]]>", "&#0;", "&#x1F600;",
    "x" * 10_000, GOOD_270, GOOD_270.replace("~\n", "~"), "SVNBKjAw", "ISA*00*", "\u00e9\u00e8",
]), st.text(max_size=20).map(lambda t: t.replace("<", "").replace("&", "")))
XML_TRICKS = [
    b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',
    b'<?xml version="1.0"?><!DOCTYPE e SYSTEM "http://127.0.0.1:9/evil.dtd">',
    b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>',
    b'<?xml version="1.0" encoding="UTF-8"?>', b'<?xml version="1.0" encoding="ISO-8859-1"?>',
    b'<?xml version="1.0" encoding="no-such-encoding"?>', b'<?xml version="1.1"?>', b"", b"\xef\xbb\xbf",
    b"<!-- a comment -->", b'<?xml-stylesheet href="x"?>',
]


def _soap_text(values: dict[str, str | None], *, qualified: bool = False, soap_ns: str = core.SOAP12_NS,
               header: str = "", wrapper: str = "COREEnvelopeRealTimeRequest") -> str:
    from xml.sax.saxutils import escape

    prefix = "cor:" if qualified else ""
    fields = "".join(f"<{prefix}{name}>{escape(value)}</{prefix}{name}>" for name, value in values.items()
                     if value is not None)
    return (f'<soapenv:Envelope xmlns:soapenv="{soap_ns}" xmlns:cor="{core.CORE_NS}">{header}<soapenv:Body>'
            f"<cor:{wrapper}>{fields}</cor:{wrapper}></soapenv:Body></soapenv:Envelope>")


def _valid_fields() -> dict[str, str | None]:
    env = core.CoreEnvelope.create(core.PAYLOAD_270, GOOD_270, sender_id="GATEWAY01", receiver_id="ACME01")
    return {"PayloadType": env.payload_type, "ProcessingMode": env.processing_mode, "PayloadID": env.payload_id,
            "TimeStamp": env.timestamp, "SenderID": env.sender_id, "ReceiverID": env.receiver_id,
            "CORERuleVersion": env.core_rule_version, "Payload": env.payload}


_HEADERS = ["", "<soapenv:Header/>",
            f'<soapenv:Header><wsse:Security xmlns:wsse="{core.WSSE_NS}"><wsse:UsernameToken><wsse:Username>u'
            f"</wsse:Username><wsse:Password>p</wsse:Password></wsse:UsernameToken></wsse:Security></soapenv:Header>",
            f'<soapenv:Header><wsse:Security xmlns:wsse="{core.WSSE_NS}"><wsse:UsernameToken><wsse:Username>u'
            f'</wsse:Username><wsse:Password Type="#PasswordDigest">p</wsse:Password></wsse:UsernameToken>'
            "</wsse:Security></soapenv:Header>",
            f'<soapenv:Header><wsse:Security xmlns:wsse="{core.WSSE_NS}"><wsse:UsernameToken><wsse:Username>u'
            "</wsse:Username></wsse:UsernameToken></wsse:Security></soapenv:Header>"]


@st.composite
def soap_requests(draw: st.DrawFn) -> bytes:
    """A CORE SOAP request with fields left out, emptied, changed or doubled, in odd XML, sometimes hostile."""
    values = _valid_fields()
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        values[name] = draw(st.one_of(st.none(), FIELD_VALUES))
    text = _soap_text(values, qualified=draw(st.booleans()), header=draw(st.sampled_from(_HEADERS)),
                      soap_ns=draw(st.sampled_from([core.SOAP12_NS] * 4 + [core.SOAP11_NS, "urn:other"])),
                      wrapper=draw(st.sampled_from(["COREEnvelopeRealTimeRequest"] * 4 + [
                          "COREEnvelopeRealTimeResponse", "COREEnvelopeBatchSubmission"])))
    edit = draw(st.sampled_from(["none", "none", "duplicate", "entity", "truncate", "noise", "two-bodies",
                                 "cdata", "utf16"]))
    if edit == "duplicate":
        name = draw(st.sampled_from(FIELDS))
        text = text.replace(f"<{name}>", f"<{name}>x</{name}><{name}>", 1)
    elif edit == "two-bodies":
        text = text.replace("</soapenv:Body>", "</soapenv:Body><soapenv:Body/>", 1)
    elif edit == "cdata":
        text = text.replace("<Payload>", "<Payload><![CDATA[", 1).replace("</Payload>", "]]></Payload>", 1)
    data = draw(st.sampled_from(XML_TRICKS)) + text.encode("utf-8")
    if edit == "entity":
        data = data.replace(b"<SenderID>", b"<SenderID>&x;&d;", 1)
    elif edit == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif edit == "noise":
        where = draw(st.integers(0, len(data)))
        data = data[:where] + draw(st.binary(min_size=1, max_size=20)) + data[where:]
    elif edit == "utf16":
        data = data.decode("utf-8", errors="replace").encode("utf-16")
    return data


@fuzz_settings(200)
@given(soap_requests())
def test_core_soap_answers_every_broken_envelope_with_a_core_error_or_a_fault(client, data):
    response = client.post("/core/soap", data=data, content_type=core.SOAP_CONTENT_TYPE)
    check_core_answer(response, None, "soap")
    assert b"root:" not in response.data and b"aaaaaaaaaaaaaaaaaaaa" not in response.data   # no entity expanded


def _part(name: str, value: bytes, headers: str = "") -> bytes:
    return (f'Content-Disposition: form-data; name="{name}"\r\n{headers}\r\n').encode() + value


@st.composite
def mime_requests(draw: st.DrawFn) -> tuple[bytes, str]:
    """A CORE MIME request with parts left out, doubled, re-encoded, in a broken or mismatched multipart body."""
    import base64

    values = _valid_fields()
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        values[name] = draw(st.one_of(st.none(), FIELD_VALUES))
    boundary = draw(st.sampled_from(["CORE-b0undary", "x", "a b", "=_weird_=", '"quoted"', "CORE-" + "b" * 80]))
    parts = []
    for name, value in values.items():
        if value is None:
            continue
        raw = value.encode("utf-8")
        encoding = draw(st.sampled_from(["", "", "", "base64", "bad-base64", "quoted-printable", "charset",
                                         "filename"]))
        if encoding == "base64":
            parts.append(_part(name, base64.b64encode(raw), "Content-Transfer-Encoding: base64\r\n"))
        elif encoding == "bad-base64":
            parts.append(_part(name, raw + b"!!!", "Content-Transfer-Encoding: base64\r\n"))
        elif encoding == "quoted-printable":
            parts.append(_part(name, raw.replace(b"=", b"=3D"), "Content-Transfer-Encoding: quoted-printable\r\n"))
        elif encoding == "charset":
            charset = draw(st.sampled_from(["utf-16", "latin-1", "no-such-charset", "ascii"]))
            parts.append(_part(name, raw, f"Content-Type: text/plain; charset={charset}\r\n"))
        elif encoding == "filename":
            parts.append(f'Content-Disposition: form-data; name="{name}"; filename="x.edi"\r\n\r\n'.encode() + raw)
        else:
            parts.append(_part(name, raw))
    if parts and draw(st.booleans()):
        parts.append(parts[draw(st.integers(0, len(parts) - 1))])   # a field twice
    delimiter = b"--" + boundary.strip('"').encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    body += draw(st.sampled_from([delimiter + b"--\r\n", delimiter + b"--", b"", delimiter + b"\r\n"]))
    edit = draw(st.sampled_from(["none", "none", "truncate", "noise"]))
    if edit == "truncate":
        body = body[:draw(st.integers(0, len(body)))]
    elif edit == "noise":
        where = draw(st.integers(0, len(body)))
        body = body[:where] + draw(st.binary(min_size=1, max_size=20)) + body[where:]
    content_type = draw(st.sampled_from([
        f"multipart/form-data; boundary={boundary}", f"multipart/form-data; boundary={boundary}",
        "multipart/form-data", "multipart/form-data; boundary=other", f"multipart/mixed; boundary={boundary}",
        "text/plain", "application/x-www-form-urlencoded", "", f"multipart/form-data; boundary={boundary}; "
        "charset=utf-16"]))
    return body, content_type


@fuzz_settings(200)
@given(mime_requests())
def test_core_mime_answers_every_broken_envelope_with_a_core_error(client, request_parts):
    body, content_type = request_parts
    response = client.post("/core/mime", data=body, headers={"Content-Type": content_type} if content_type else {})
    check_core_answer(response, None, "mime")


@pytest.mark.parametrize("path", ["/core/soap", "/core/mime", "/x12"])
def test_an_oversized_body_is_a_413_in_plain_text(client, path):
    response = client.post(path, data=b"ISA" + b"x" * (5 * 1024 * 1024 + 10), content_type="application/edi-x12")
    assert response.status_code == 413 and response.mimetype == "text/plain" and b"413" in response.data
