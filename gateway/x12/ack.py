"""999 (005010X231A1) and TA1 acknowledgments rendered from validation findings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from gateway.errors import GatewayError
from gateway.mappings import code_table, mappings_dir
from gateway.x12.model import Finding, Group, Interchange, Transaction
from gateway.x12.writer import Envelope, X12Writer, application_code

ACK_IMPLEMENTATION = "005010X231A1"
MAX_CONTROL = 999_999_999   # ISA13 is 9 digits, 1 and up


@dataclass(frozen=True, slots=True)
class AckCodeSets:
    """The codes each part of our 999 and TA1 may carry: those its table in ``mappings/codes/`` lists, the same
    tables that put a payer's acknowledgment into words. A finding whose code is not among them (pyx12's IK403 11,
    say) stays in the report but out of the acknowledgment, and pyx12's are warnings (``validate``)."""

    interchange: frozenset[str]   # TA105, interchange_note
    group: frozenset[str]   # AK905-AK909, group_syntax_error
    transaction: frozenset[str]   # IK502-IK506, transaction_syntax_error
    segment: frozenset[str]   # IK304, segment_syntax_error
    element: frozenset[str]   # IK403, element_syntax_error


def ack_code_sets(mappings: str | None = None) -> AckCodeSets:
    """The code sets of ``mappings`` (or of ``FHIR_X12_MAPPINGS``, or the repository's), read once per folder: a 999
    built on the payer simulator's hot path only tests membership in frozensets."""
    return _code_sets(str(mappings_dir(mappings)))


@lru_cache(maxsize=8)
def _code_sets(folder: str) -> AckCodeSets:
    def codes(name: str) -> frozenset[str]:
        return frozenset(str(code) for code in code_table(name, folder)["codes"])

    return AckCodeSets(interchange=codes("interchange_note"), group=codes("group_syntax_error"),
                       transaction=codes("transaction_syntax_error"), segment=codes("segment_syntax_error"),
                       element=codes("element_syntax_error"))


def nth_control(first: int, n: int) -> int:
    """The control number of the ``n``-th of several interchanges written together (from 0): ``first``,
    ``first + 1`` ... wrapping past 999999999 to 1, as ISA13 must stay 9 digits and positive."""
    return (first - 1 + n) % MAX_CONTROL + 1


def _is_error(f: Finding) -> bool:
    return f.severity == "error"


def names_an_interchange(f: Finding) -> bool:
    """Whether ``f`` says which interchange it is about (by ISA13, or by its place in the file)."""
    return bool(f.interchange or f.interchange_ordinal)


def names_interchange(f: Finding, isa: Interchange) -> bool:
    """Whether ``f`` is about interchange ``isa``: by its ordinal in the file when both know it (two interchanges may
    share an ISA13, the second then in error with TA105 025), else by ISA13 (a finding made elsewhere)."""
    if f.interchange_ordinal and isa.ordinal:
        return f.interchange_ordinal == isa.ordinal
    return bool(f.interchange) and f.interchange == isa.control_number


def _in_interchange(f: Finding, isa: Interchange | None) -> bool:
    """Whether ``f`` may be about something in ``isa``: it names that interchange, or none."""
    return isa is None or not names_an_interchange(f) or names_interchange(f, isa)


def _swap(isa: Interchange | None, control: int, now: datetime, group: Group | None = None) -> Envelope:
    """The acknowledgment goes back: its sender is the original receiver (GS02/GS03 as the group named them, else
    the ISA ids, each only when a GS may carry it)."""
    if isa is None:
        return Envelope(sender_id="UNKNOWN", receiver_id="UNKNOWN", interchange_control=control, now=now,
                        application_sender=application_code(group.receiver if group else ""),
                        application_receiver=application_code(group.sender if group else ""))
    return Envelope(sender_id=isa.receiver_id or "UNKNOWN", receiver_id=isa.sender_id or "UNKNOWN",
                    sender_qualifier=isa.receiver_qualifier or "ZZ", receiver_qualifier=isa.sender_qualifier or "ZZ",
                    interchange_control=control, now=now, usage=isa.usage if isa.usage in ("P", "T") else "P",
                    application_sender=application_code(group.receiver if group else "", isa.receiver_id),
                    application_receiver=application_code(group.sender if group else "", isa.sender_id))


def build_ta1(isa: Interchange | None, findings: Iterable[Finding], *, control_number: int, now: datetime,
              mappings: str | None = None) -> str:
    """A TA1 for one interchange: accepted (000), accepted with errors, or rejected with its note code."""
    notes = ack_code_sets(mappings).interchange
    own = [f for f in findings if f.level == "interchange" and f.ack_code in notes and _in_interchange(f, isa)]
    errors = [f for f in own if _is_error(f)]
    status = "R" if errors else ("E" if own else "A")
    note = (errors or own)[0].ack_code if own else "000"
    writer = _writer_for(isa)
    env = _swap(isa, control_number, now)
    ta1 = writer.segment("TA1", (isa.control_number if isa else "").rjust(9, "0")[:9],
                         isa.date if isa else now.strftime("%y%m%d"), isa.time if isa else now.strftime("%H%M"),
                         status, note)
    return writer.isa(env) + ta1 + writer.segment("IEA", "0", f"{control_number:09d}")


def build_ta1s(interchanges: Sequence[Interchange], findings: Iterable[Finding], *, control_number: int,
               now: datetime, mappings: str | None = None) -> str:
    """A TA1 for every interchange received, each in an interchange of its own back to that interchange's sender
    (numbered ``control_number``, ``control_number + 1`` ...): a TA1 answers one ISA, and several interchanges in one
    file may come from several senders. Findings that name no interchange are the first one's, as ``build_ta1``
    gives them to the one it answers."""
    if len(interchanges) <= 1:
        return build_ta1(interchanges[0] if interchanges else None, findings, control_number=control_number, now=now,
                         mappings=mappings)
    findings = list(findings)
    named = [f for f in findings if names_an_interchange(f)]
    return "".join(build_ta1(isa, findings if n == 0 else named, control_number=nth_control(control_number, n),
                             now=now, mappings=mappings) for n, isa in enumerate(interchanges))


class AcknowledgmentError(GatewayError):
    """Nothing a 999 could acknowledge: no transaction set inside a functional group (a TA1 answers that)."""


def build_999(transactions: list[Transaction], findings: Iterable[Finding], *, control_number: int,
              now: datetime, mappings: str | None = None) -> str:
    """A 999 acknowledging the functional group(s) of ``transactions``, with IK3/IK4/IK5/AK9: one 999 transaction
    set per functional group (an AK1 names one group), in one interchange per interchange received, back to that
    interchange's sender (acknowledgments go to whoever sent what they acknowledge). The interchanges follow each
    other in the order received, numbered ``control_number``, ``control_number + 1`` ...

    A set outside any GS/GE has no group for an AK1 to name and is left out (the reader reports it; a TA1 answers
    it); when no set is inside a group, :class:`AcknowledgmentError` says so rather than a 999 with an empty AK1."""
    findings = list(findings)
    grouped = [txn for txn in transactions if txn.group is not None]
    if not grouped:
        raise AcknowledgmentError(
            "a 999 acknowledges the transaction sets of functional groups, and there is none "
            + ("inside a GS/GE" if transactions else "in the interchange") + ": answer it with a TA1")
    received: dict[int, list[Transaction]] = {}
    for txn in grouped:
        received.setdefault(id(txn.interchange), []).append(txn)
    codes = ack_code_sets(mappings)
    return "".join(_ack_interchange(members, findings, codes, control_number=nth_control(control_number, n), now=now,
                                    first_interchange=n == 0)
                   for n, members in enumerate(received.values()))


def _ack_interchange(transactions: list[Transaction], findings: list[Finding], codes: AckCodeSets, *,
                     control_number: int, now: datetime, first_interchange: bool) -> str:
    """The 999 interchange for the sets of one interchange received: its ISA and first GS ids swapped."""
    first = transactions[0]
    isa = first.interchange
    writer = _writer_for(isa)
    groups: dict[int, list[Transaction]] = {}
    for txn in transactions:
        groups.setdefault(id(txn.group), []).append(txn)
    bodies = [_ack_group(members[0].group, members, findings, isa, codes, first_group=index == 0,
                         first_interchange=first_interchange)
              for index, members in enumerate(groups.values())]
    env = _swap(isa, control_number, now, first.group)
    return writer.interchange(env, "FA", "999", ACK_IMPLEMENTATION, bodies).text


def _set_owns(f: Finding, txn: Transaction, group: Group | None, isa: Interchange | None) -> bool:
    """Whether ``f`` is about ``txn``: by the set's ordinal in the file when both know it (two sets may share an
    ST02, even in one group), else by ST02 within its group and interchange (a finding made elsewhere)."""
    if f.set_ordinal and txn.ordinal:
        return f.set_ordinal == txn.ordinal
    return (f.transaction == txn.control_number
            and (not f.transaction_set or f.transaction_set == txn.set_id)
            and (not f.group or group is None or f.group == group.control_number)
            and _in_interchange(f, isa))


def _group_owns(f: Finding, group: Group | None, isa: Interchange | None, ordinals: frozenset[int], *,
                first_group: bool, first_interchange: bool) -> bool:
    """Whether the group-level finding ``f`` is this group's: found in one of its sets (``ordinals``), or in the group
    itself (by its ordinal in the file: two groups of one interchange may share a GS06, the second then in error with
    AK905 19), else by GS06 within its interchange (two interchanges may both hold a group 1); one naming no group is
    the first group's, of the interchange it names, else of the first interchange."""
    if f.set_ordinal and ordinals:
        return f.set_ordinal in ordinals
    if f.group_ordinal and group is not None and group.ordinal:
        return f.group_ordinal == group.ordinal
    same_interchange = _in_interchange(f, isa)
    if f.group and group is not None:
        return f.group == group.control_number and same_interchange
    if not first_group:
        return False
    return same_interchange if names_an_interchange(f) else first_interchange


def _ack_group(group: Group | None, transactions: list[Transaction], findings: list[Finding],
               isa: Interchange | None, ack_codes: AckCodeSets, *, first_group: bool,
               first_interchange: bool) -> list[tuple[str, list]]:
    """AK1 ... AK9 for one functional group of interchange ``isa``: each set's own findings (``_set_owns``) and the
    group's (``_group_owns``)."""
    body: list[tuple[str, list]] = []
    fid = group.functional_id if group else ""
    body.append(("AK1", [fid, group.control_number if group else "", group.version if group else ""]))
    accepted = 0
    for txn in transactions:
        own = [f for f in findings if _set_owns(f, txn, group, isa)]
        body.append(("AK2", [txn.set_id, txn.control_number, txn.implementation]))
        segment_level = [f for f in own if f.level in ("segment", "element") and f.position
                         and (f.ack_code in ack_codes.segment or f.ack_code in ack_codes.element)]
        by_position: dict[tuple[int, str], list[Finding]] = {}
        for f in segment_level:
            by_position.setdefault((f.position, f.segment), []).append(f)
        for (position, seg_id), items in sorted(by_position.items()):
            seg_codes = [f.ack_code for f in items if f.level == "segment" and f.ack_code in ack_codes.segment]
            element_items = [f for f in items if f.level == "element" and f.ack_code in ack_codes.element]
            code = seg_codes[0] if seg_codes else "8"
            loop = items[0].loop
            body.append(("IK3", [seg_id, str(position), "2120" if loop.startswith("2120") else "", code]))
            for f in element_items:
                index = _element_index(f.element)
                body.append(("IK4", [(str(index), str(f.component or ""), str(f.repetition or "")),
                                     f.data_element, f.ack_code, f.value[:99] if f.value else ""]))
        # a group-level error (GS01 for another transaction, a 4010 envelope) is the group's: AK9 says it, with
        # its code; IK5 reports the transaction set's own errors, and an IK5 R or E always names one (IK502)
        txn_errors = [f for f in own if _is_error(f) and f.level != "group"]
        txn_codes = [f.ack_code for f in own if f.level in ("transaction",) and f.ack_code in ack_codes.transaction]
        if any(f.level in ("segment", "element") for f in txn_errors):
            txn_codes.append("5")
        codes = list(dict.fromkeys(txn_codes))[:5]
        if txn_errors:
            status = "R"
        elif segment_level or codes:
            status = "E"
        else:
            status = "A"
            accepted += 1
        if status == "E":
            accepted += 1
        body.append(("IK5", [status, *codes]))
    ordinals = frozenset(txn.ordinal for txn in transactions if txn.ordinal) if findings else frozenset()
    group_findings = [f for f in findings if f.level == "group" and f.ack_code in ack_codes.group
                      and _group_owns(f, group, isa, ordinals, first_group=first_group,
                                      first_interchange=first_interchange)]
    group_errors = [f for f in group_findings if _is_error(f)]
    if group_errors:   # a rejected group accepts none of its transaction sets (AK904)
        accepted = 0
    if group_errors or (transactions and accepted == 0):
        ak901 = "R"
    elif accepted < len(transactions):
        ak901 = "P"
    elif group_findings or any(s == "IK5" and e[0] == "E" for s, e in body):
        ak901 = "E"
    else:
        ak901 = "A"
    group_codes = list(dict.fromkeys(f.ack_code for f in group_findings))[:5]
    body.append(("AK9", [ak901, str(len(transactions)), str(len(transactions)), str(accepted), *group_codes]))
    return body


def _writer_for(isa: Interchange | None) -> X12Writer:
    """An acknowledgment answers in the sender's delimiters when they are four distinct ones a writer may use (no
    letter, digit or space: the reader takes an ISA16 of 'A' or '1'), else in ours."""
    d = isa.delimiters if isa is not None else None
    chars = {d.element, d.repetition, d.component, d.segment} if d is not None else set()
    if d is not None and d.repetition and len(chars) == 4 and not any(c.isalnum() or c == " " for c in chars):
        return X12Writer(d)
    return X12Writer()


def _element_index(ref: str) -> int:
    digits = "".join(ch for ch in ref[-2:] if ch.isdigit())
    return int(digits) if digits else 0
