"""Property tests (hypothesis) of reading a payer's answer: a 999, 997 or TA1 with any element changed, segments
dropped, repeated or added, alone or beside a 271, is a rejection with findings in words, a 271 to translate, or
another of our errors; never anything else, and the OperationOutcome it becomes is valid FHIR."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.fhir.models import validate_structure
from gateway.transport.acks import acknowledgments, load_ack_codes
from gateway.transport.client import PayerError, PayerRejected, _answer_271, _check_trace
from gateway.x12.tokenizer import tokenize
from tests.conftest import FIXTURES

ISA = "ISA*00*          *00*          *ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *250310*0915*^*00501*000000009*0*P*:~"
ACKS = [
    ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*005010X231A1~ST*999*0001*005010X231A1~"
    "AK1*HS*1001*005010X279A1~AK2*270*0001*005010X279A1~IK3*NM1*8*2100C*8~IK4*9:0*67*6*ACM#482~"
    "IK5*R*5~AK9*R*1*1*0~SE*8*0001~GE*1*9~IEA*1*000000009~",
    ISA + "GS*FA*ACMEHLTH*FHIRX12GW*20250310*0915*9*X*004010~ST*997*0001~AK1*HS*1001~AK2*270*0001~"
    "AK3*DMG*4**8~AK4*2*1251*8*19990231~AK5*R*5~AK9*R*1*1*0*4~SE*8*0001~GE*1*9~IEA*1*000000009~",
    ISA.replace("000000009", "000000010") + "TA1*000000009*250310*0915*R*025~IEA*0*000000010~",
    ISA.replace("000000009", "000000010") + "TA1*000000009*250310*0915*A*000~IEA*0*000000010~",
]
A_271 = (FIXTURES / "x12" / "271" / "subscriber-generic.271").read_text(encoding="utf-8")
VALUES = st.one_of(
    st.sampled_from(["", "R", "A", "E", "M", "P", "W", "X", "5", "8", "025", "ZZ", "9:0", "2:\u00b2", "1" * 40,
                     ":", "::", "^", "999", "270", "271", "0001", "\u00b2", "-1", "2147483648"]),
    st.text(alphabet=st.characters(blacklist_characters="*~", blacklist_categories=("Cs",)), max_size=12))
OPERATION = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 100), st.integers(1, 9), VALUES),
    st.tuples(st.just("delete"), st.integers(0, 100)),
    st.tuples(st.just("duplicate"), st.integers(0, 100)),
    st.tuples(st.just("insert"), st.integers(0, 100),
              st.sampled_from(["TA1", "AK2", "IK3", "IK4", "IK5", "AK3", "AK4", "AK5", "AK9", "ST", "SE", "GE", "IEA"]),
              st.lists(VALUES, max_size=8)),
)


def changed(ack: str, operations) -> str:
    segments = [s.split("*") for s in ack.split("~") if s]
    for op in operations:
        at = 1 + op[1] % max(len(segments) - 1, 1)   # the ISA stays
        if at >= len(segments) and op[0] != "insert":
            continue
        if op[0] == "set":
            parts = segments[at]
            parts += [""] * (op[2] + 1 - len(parts))
            parts[op[2]] = op[3]
        elif op[0] == "delete":
            del segments[at]
        elif op[0] == "duplicate":
            segments.insert(at, list(segments[at]))
        else:
            segments.insert(at, [op[2], *op[3]])
    return "".join("*".join(parts) + "~" for parts in segments)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(ACKS))), st.lists(OPERATION, max_size=6),
       st.sampled_from(["alone", "before", "after"]))
def test_a_changed_acknowledgment_is_read_as_findings_or_our_error(ack, operations, beside):
    text = changed(ACKS[ack], operations)
    text = {"alone": text, "before": text + A_271, "after": A_271 + text}[beside]
    codes = load_ack_codes()
    try:
        txns, _ = _answer_271(text, codes)
        _check_trace(txns, "GW-SG-0001-1")
    except PayerRejected as exc:
        assert exc.kind in ("999", "997", "TA1") and all(f["message"] for f in exc.findings)
        validate_structure(exc.to_operation_outcome())
    except PayerError as exc:
        assert exc.diagnostics
        validate_structure(exc.to_operation_outcome())
    try:
        said = acknowledgments(tokenize(text), codes)
    except GatewayError as exc:
        assert str(exc)
    else:
        assert all(isinstance(f["message"], str) and f["message"] for f in said)
