"""What a payer's TA1, 999 or 997 says, finding by finding, in words a person can act on.

The codes' meanings are data (``mappings/codes/``: acknowledgment_status, interchange_note,
segment_syntax_error, element_syntax_error, transaction_syntax_error, group_syntax_error). A code a table
does not list is handled as its table's ``on_missing`` says: ``passthrough`` and ``note`` keep the code as sent,
with words saying it is none of that table's codes; ``error`` makes the acknowledgment unreadable
(:class:`AckCodeError`), as a strict deployment may want rather than act on codes it cannot tell apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from gateway.errors import GatewayError, MappingError, quoted
from gateway.mappings import code_table
from gateway.x12.model import Finding, whole_number

TABLES = ("acknowledgment_status", "interchange_note", "segment_syntax_error", "element_syntax_error",
          "transaction_syntax_error", "group_syntax_error")
ON_MISSING = ("passthrough", "note", "error")   # as the translation tables' (gateway/translate/tables.py)


class AckCodeError(GatewayError):
    """A code an acknowledgment uses that its table does not list, when the table says such a code makes the
    acknowledgment unreadable (``on_missing: error``). Says which element, which code and which table."""

    def __init__(self, element: str, code: str, table: str) -> None:
        self.element, self.code, self.table = element, code, table
        super().__init__(f"{element} {quoted(code)} is not in mappings/codes/{table}.yaml (on_missing: error)")


@dataclass(frozen=True)
class AckCodes:
    """Code -> meaning for each acknowledgment code set, and what each set does with a code it does not list."""

    tables: Mapping[str, Mapping[str, Mapping[str, Any]]]
    # table -> on_missing; a table not named here passes an unlisted code through
    policies: Mapping[str, str] = field(default_factory=dict)

    def display(self, table: str, code: str) -> str | None:
        info = self.tables.get(table, {}).get(code)
        return info.get("display") if info else None

    def describe(self, table: str, element: str, code: str) -> tuple[str | None, str]:
        """(meaning or None, words for ``code`` of ``element``): "meaning (IK304 code 8)", or for a code the table
        does not list "IK304 code 'Z9', not a segment syntax error code", or AckCodeError when its on_missing is
        error. An empty element is no code at all: it is said to be empty, whatever the policy."""
        meaning = self.display(table, code)
        if meaning:
            return meaning, f"{meaning} ({element} code {code})"
        if not code:
            return None, f"{element} empty"
        if self.policies.get(table) == "error":
            raise AckCodeError(element, code, table)
        return None, f"{element} code {quoted(code)}, not {_a(table.replace('_', ' '))} code"

    def status(self, code: str, element: str) -> str:
        """A status in words (lower case, to sit inside a sentence), or the code with words saying it is none of
        the statuses (AckCodeError under on_missing: error)."""
        meaning, said = self.describe("acknowledgment_status", element, code)
        return meaning[0].lower() + meaning[1:] if meaning else f"with {said}"

    @cached_property
    def rejecting(self) -> frozenset[str]:
        """TA104/IK501/AK901/AK501 values that refuse the interchange, transaction set or group."""
        return frozenset(code for code, info in self.tables.get("acknowledgment_status", {}).items()
                         if info.get("rejects"))


def _a(words: str) -> str:
    return ("an " if words[:1] in "aeiou" else "a ") + words


def load_ack_codes(base: str | None = None) -> AckCodes:
    """The acknowledgment code tables from the mappings folder (read once per process by ``code_table``). A
    misspelt ``on_missing`` would act as passthrough without a word, so it is refused (MappingError)."""
    tables: dict[str, dict[str, Mapping[str, Any]]] = {}
    policies: dict[str, str] = {}
    for name in TABLES:
        table = code_table(name, base)
        policy = table.get("on_missing", "passthrough")
        if policy not in ON_MISSING:
            raise MappingError(f"codes/{name}.yaml: on_missing {policy!r} is none of {', '.join(ON_MISSING)}")
        tables[name] = {str(code): info or {} for code, info in table["codes"].items()}
        policies[name] = policy
    return AckCodes(tables, policies)


def _el(parts: list[str], index: int) -> str:
    return parts[index].strip() if index < len(parts) else ""


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
            meaning, said = codes.describe("interchange_note", "TA105", code)
            findings.append({"level": "interchange", "segment": "TA1", "control_number": _el(parts, 1),
                             "status": status, "code": code, "description": meaning,
                             "message": f"interchange {_el(parts, 1)} {codes.status(status, 'TA104')}: {said}"})
        elif sid == "AK2":
            txn = {"set_id": _el(parts, 1), "transaction": _el(parts, 2)}
        elif sid in ("IK3", "AK3"):
            segment_id = _el(parts, 1)
            loop = _el(parts, 3)
            in_loop = f" (loop {loop})" if loop else ""
            meaning, said = codes.describe("segment_syntax_error", f"{sid}04", _el(parts, 4))
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
            meaning, said = codes.describe("element_syntax_error", f"{sid}03", _el(parts, 3))
            findings.append({"level": "element", "segment": sid, **txn, "segment_id": segment_id,
                             "element": element, "data_element": _el(parts, 2), "code": _el(parts, 3),
                             "description": meaning, "value": value,
                             "message": f"element {element} (data element {_el(parts, 2)}): {said}{shown}"})
        elif sid in ("IK5", "AK5"):
            status, found = _el(parts, 1), [c for c in (_el(parts, i) for i in range(2, 7)) if c]
            said = [codes.describe("transaction_syntax_error", sid, c)[1] for c in found]
            listed = f": {'; '.join(said)}" if said else ""
            findings.append({"level": "transaction", "segment": sid, **txn, "status": status, "codes": found,
                             "descriptions": [codes.display("transaction_syntax_error", c) for c in found],
                             "message": f"transaction set {txn.get('set_id', '')} {txn.get('transaction', '')} "
                                        f"{codes.status(status, f'{sid}01')}{listed}"})
            segment_id = ""
        elif sid == "AK9":
            status, found = _el(parts, 1), [c for c in (_el(parts, i) for i in range(5, 10)) if c]
            # an accepted group without codes says nothing worth a line; a status not in the table does
            if found or codes.display("acknowledgment_status", status) is None:
                said = [codes.describe("group_syntax_error", "AK9", c)[1] for c in found]
                listed = f": {'; '.join(said)}" if said else ""
                findings.append({"level": "group", "segment": "AK9", "status": status, "codes": found,
                                 "descriptions": [codes.display("group_syntax_error", c) for c in found],
                                 "message": f"functional group {codes.status(status, 'AK901')}{listed}"})
    return findings


def acknowledgments(batches: Iterable[Any], codes: AckCodes) -> list[dict[str, Any]]:
    """What the TA1s, 999s and 997s among tokenized segments (``tokenizer.tokenize``'s batches) say, finding by
    finding (:func:`ack_findings`): a payer's rejection, or a file a person reads."""
    return ack_findings([(batch.delimiters, parts) for batch in batches for parts in batch.split()], codes)


def read_acknowledgments(report: Any, data: bytes | str, codes: AckCodes) -> list[dict[str, Any]]:
    """What the TA1s, 999s and 997s in a validated file say (:func:`acknowledgments`); the validation ``report``
    loses its "unsupported set" findings for those 999/997 sets, which are answers to read, not sets to validate.
    The CLI's ``validate`` and ``POST /x12/$validate`` both show a file's acknowledgments this way.

    An acknowledgment a table makes unreadable (a code it does not list, ``on_missing: error``) lists nothing: the
    report gets an ``X12-ACK-CODE`` error saying which element, code and table instead, so the file is invalid."""
    from gateway.x12.tokenizer import tokenize

    answers = {t.control_number for t in report.transactions if t.set_id in ("999", "997")}
    report.findings = [f for f in report.findings if not (f.code == "X12-SET-UNSUPPORTED" and f.transaction in answers)]
    try:
        return acknowledgments(tokenize(data), codes)
    except AckCodeError as exc:
        report.findings.append(Finding("X12-ACK-CODE", f"the acknowledgment cannot be read: {exc}", level="interchange",
                                       segment=exc.element[:3], element=exc.element if len(exc.element) > 3 else "",
                                       value=exc.code))
        return []
