"""What a payer's TA1, 999 or 997 says, finding by finding, in words a person can act on.

The codes' meanings are data (``mappings/codes/``: acknowledgment_status, interchange_note,
segment_syntax_error, element_syntax_error, transaction_syntax_error, group_syntax_error). A code a table
does not list is reported as its code alone, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from gateway.errors import quoted
from gateway.mappings import code_table
from gateway.x12.model import whole_number

TABLES = ("acknowledgment_status", "interchange_note", "segment_syntax_error", "element_syntax_error",
          "transaction_syntax_error", "group_syntax_error")


@dataclass(frozen=True)
class AckCodes:
    """Code -> meaning for each acknowledgment code set."""

    tables: Mapping[str, Mapping[str, Mapping[str, Any]]]

    def display(self, table: str, code: str) -> str | None:
        info = self.tables.get(table, {}).get(code)
        return info.get("display") if info else None

    def status(self, code: str) -> str:
        """A status in words (lower case, to sit inside a sentence), or the code itself."""
        text = self.display("acknowledgment_status", code)
        return text[0].lower() + text[1:] if text else f"status {quoted(code)}"

    @cached_property
    def rejecting(self) -> frozenset[str]:
        """IK501/AK901/AK501 values that refuse the transaction set or group."""
        return frozenset(code for code, info in self.tables.get("acknowledgment_status", {}).items()
                         if info.get("rejects"))


def load_ack_codes(base: str | None = None) -> AckCodes:
    """The acknowledgment code tables from the mappings folder (read once per process by ``code_table``)."""
    return AckCodes({name: {str(code): info or {} for code, info in code_table(name, base)["codes"].items()}
                     for name in TABLES})


def _el(parts: list[str], index: int) -> str:
    return parts[index].strip() if index < len(parts) else ""


def _coded(codes: AckCodes, table: str, segment: str, code: str) -> tuple[str | None, str]:
    """(meaning or None, "meaning (SEGMENT code C)" or "SEGMENT code C")."""
    meaning = codes.display(table, code)
    return meaning, (f"{meaning} ({segment} code {code})" if meaning else f"{segment} code {code}")


def ack_findings(segments: list[tuple[Any, list[str]]], codes: AckCodes) -> list[dict[str, Any]]:
    """One dict per finding of a TA1, 999 or 997 (given as (delimiters, parts) pairs), with a ``message``; coded
    findings carry the code's ``description`` too."""
    findings: list[dict[str, Any]] = []
    txn: dict[str, str] = {}
    segment_id = ""
    for delims, parts in segments:
        sid = parts[0]
        if sid == "TA1":
            status, code = _el(parts, 4), _el(parts, 5)
            meaning, said = _coded(codes, "interchange_note", "TA105", code)
            findings.append({"level": "interchange", "segment": "TA1", "control_number": _el(parts, 1),
                             "status": status, "code": code, "description": meaning,
                             "message": f"interchange {_el(parts, 1)} {codes.status(status)}: {said}"})
        elif sid == "AK2":
            txn = {"set_id": _el(parts, 1), "transaction": _el(parts, 2)}
        elif sid in ("IK3", "AK3"):
            segment_id = _el(parts, 1)
            loop = _el(parts, 3)
            in_loop = f" (loop {loop})" if loop else ""
            meaning, said = _coded(codes, "segment_syntax_error", f"{sid}04", _el(parts, 4))
            findings.append({"level": "segment", "segment": sid, **txn, "segment_id": segment_id,
                             "position": _el(parts, 2), "loop": loop, "code": _el(parts, 4), "description": meaning,
                             "message": f"segment {segment_id} at position {_el(parts, 2)}{in_loop}: {said}"})
        elif sid in ("IK4", "AK4"):
            position = _el(parts, 1).split(delims.component)
            number = whole_number(position[0])
            element = f"{segment_id}{number:02d}" if number is not None else segment_id
            component = whole_number(position[1]) if len(position) > 1 else None
            if component:
                element += f"-{component:02d}"
            value = _el(parts, 4)
            shown = f": {quoted(value)}" if value else ""
            meaning, said = _coded(codes, "element_syntax_error", f"{sid}03", _el(parts, 3))
            findings.append({"level": "element", "segment": sid, **txn, "segment_id": segment_id,
                             "element": element, "data_element": _el(parts, 2), "code": _el(parts, 3),
                             "description": meaning, "value": value,
                             "message": f"element {element} (data element {_el(parts, 2)}): {said}{shown}"})
        elif sid in ("IK5", "AK5"):
            status, found = _el(parts, 1), [c for c in (_el(parts, i) for i in range(2, 7)) if c]
            said = [_coded(codes, "transaction_syntax_error", sid, c)[1] for c in found]
            listed = f": {'; '.join(said)}" if said else ""
            findings.append({"level": "transaction", "segment": sid, **txn, "status": status, "codes": found,
                             "descriptions": [codes.display("transaction_syntax_error", c) for c in found],
                             "message": f"transaction set {txn.get('set_id', '')} {txn.get('transaction', '')} "
                                        f"{codes.status(status)}{listed}"})
            segment_id = ""
        elif sid == "AK9":
            status, found = _el(parts, 1), [c for c in (_el(parts, i) for i in range(5, 10)) if c]
            if found:
                said = [_coded(codes, "group_syntax_error", "AK9", c)[1] for c in found]
                findings.append({"level": "group", "segment": "AK9", "status": status, "codes": found,
                                 "descriptions": [codes.display("group_syntax_error", c) for c in found],
                                 "message": f"functional group {codes.status(status)}: {'; '.join(said)}"})
    return findings


def acknowledgments(batches: Iterable[Any], codes: AckCodes) -> list[dict[str, Any]]:
    """What the TA1s, 999s and 997s among tokenized segments (``tokenizer.tokenize``'s batches) say, finding by
    finding (:func:`ack_findings`): a payer's rejection, or a file a person reads."""
    return ack_findings([(batch.delimiters, parts) for batch in batches for parts in batch.split()], codes)


def read_acknowledgments(report: Any, data: bytes | str, codes: AckCodes) -> list[dict[str, Any]]:
    """What the TA1s, 999s and 997s in a validated file say (:func:`acknowledgments`); the validation ``report``
    loses its "unsupported set" findings for those 999/997 sets, which are answers to read, not sets to validate.
    The CLI's ``validate`` and ``POST /x12/$validate`` both show a file's acknowledgments this way."""
    from gateway.x12.tokenizer import tokenize

    said = acknowledgments(tokenize(data), codes)
    answers = {t.control_number for t in report.transactions if t.set_id in ("999", "997")}
    report.findings = [f for f in report.findings if not (f.code == "X12-SET-UNSUPPORTED" and f.transaction in answers)]
    return said
