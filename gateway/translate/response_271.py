"""271 -> CoverageEligibilityResponse: one response per answered patient, every segment accounted for.

Each segment of the patient's loops (and of the payer and provider loops above them) is either
mapped into the response or recorded in a processNote with its location and raw text; anything
no handler claims is noted at the end, so nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from gateway.errors import quoted, with_article
from gateway.translate.notes import Note, process_note_extensions
from gateway.translate.tables import Tables, fhir_code
from gateway.translate.tables import trace_system as _trace_system
from gateway.x12.model import Loop, Segment, Transaction
from gateway.x12.writer import DEFAULT_DELIMITERS

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9\-.]")
TOTAL, REMAINING, MET = "total", "remaining", "met"
_MATCHED_KINDS = frozenset((TOTAL, REMAINING, MET))   # the amounts _match_amounts pairs up


@dataclass
class ResponseContext:
    """What the request said, for the gateway case; without it the response stands on its own."""

    patient: dict[str, Any] | None = None
    insurer: dict[str, Any] | None = None
    coverage: dict[str, Any] | None = None
    provider: dict[str, Any] | None = None
    purpose: list[str] | None = None
    request: dict[str, Any] | None = None
    serviced: dict[str, Any] = field(default_factory=dict)
    contained: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)   # what the 270 could not carry: they lead the response's
    # per person ("subscriber", "patient": Request270.persons) the 2100C/2100D segments the 270 sent, each the tuple
    # of its id and elements: a 271 segment equal to one echoes the request, whose resources hold its data; any
    # other person data the payer returns is noted, as the response refers to the request's Patient and Coverage
    persons_sent: dict[str, frozenset[tuple[str, ...]]] | None = None
    # the component separator (ISA16) of the 270 persons_sent comes from: the writer's, which the gateway's 270s use.
    # A composite (HI01) is compared component by component, as the payer's 271 may separate them otherwise
    sent_component: str = DEFAULT_DELIMITERS.component
    # the request's Coverage.relationship (a subscriber-relationship code), which the 270 sends as its loop, not as an
    # INS: a patient's INS saying the same echoes the request. Unset, it is read from the contained copy of the
    # request's Coverage (``coverage`` a local reference into ``contained``), when there is one
    relationship: str | None = None
    # the 270's 2100A ("payer") and 2100B ("receiver") segments as sent, shaped as persons_sent: the payer's and the
    # requestor's NM1 in the 271 echo them, or say what the request's insurer and provider (which the response refers
    # to) do not hold, which is noted. Unset (a context that does not know them), those NM1s are taken as echoes
    parties_sent: dict[str, frozenset[tuple[str, ...]]] | None = None


@dataclass
class ResponseTranslation:
    """One CoverageEligibilityResponse (as a dict) with its notes and the segments it accounts for."""

    resource: dict[str, Any]
    notes: list[Note]
    mapped: set[int]
    noted: set[int]
    traces: list[str]
    scope: set[int] = field(default_factory=set)


def x12_date(value: str) -> str | None:
    """CCYYMMDD -> YYYY-MM-DD (None when it is not a calendar date)."""
    # ASCII digits only: int() reads other scripts' digits too, and '٢٠٢٥-٠١-٠١' is no FHIR date
    if len(value) != 8 or not value.isascii() or not value.isdigit():
        return None
    try:   # a calendar date: 20250230 is not one
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def date_range(tables: Tables, fmt: str, value: str) -> tuple[str | None, str | None] | None:
    """DTP02/03 -> (start, end), read as the format's entry in ``mappings/translate/dates.yaml`` (``formats``) says:
    one day or a range; None when unreadable (a format not listed too)."""
    kind = tables.t["dates"]["formats"].get(fmt)
    if kind == "date":
        d = x12_date(value)
        return (d, d) if d else None
    if kind == "range" and "-" in value:
        start, end = value.split("-", 1)
        s, e = x12_date(start), x12_date(end)
        return (s, e) if s and e and s <= e else None   # an end before the start is no period (FHIR per-1)
    return None


# X12 R (decimal number): an optional minus sign, digits with at most one decimal point; no exponent, no
# Infinity or NaN (which Decimal would take), and at most 18 digits (X12's own limit for an amount)
_X12_NUMBER = re.compile(r"-?(?=\.?[0-9])[0-9]*\.?[0-9]*")


def _number(text: str) -> Decimal | None:
    text = text.strip()
    # the pattern leaves only digits, one point and a sign: what is not those is the digits
    if not _X12_NUMBER.fullmatch(text) or len(text) - text.count(".") - text.count("-") > 18:
        return None
    try:
        return Decimal(text)
    except (InvalidOperation, ValueError):
        return None


_MAX_UNSIGNED_INT = 2_147_483_647   # FHIR unsignedInt


def _json_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


_CENT = Decimal("0.01")


def _money_problem(value: Decimal) -> str | None:
    """Why ``value`` cannot be a Money.value as sent (None when it can): an amount of the currency has at most two
    decimal places, and JSON carries a fraction as a double, exact to about 15 digits."""
    _sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, int) and exponent >= -2 and len(digits) <= 15:   # most amounts: both hold at a glance
        return None
    if value != value.quantize(_CENT, rounding=ROUND_DOWN):
        return "has more than two decimal places"
    if Decimal(repr(_json_number(value))) != value:
        return "has more digits than a JSON number carries exactly"
    return None


class _Response:
    """Builds one response; tracks which segments are mapped and which are noted."""

    def __init__(self, tables: Tables, txn: Transaction, now: str, context: ResponseContext | None,
                 response_id: str) -> None:
        self.tables = tables
        self.txn = txn
        self.now = now
        self.context = context
        self.id = response_id
        self.notes: list[Note] = list(context.notes) if context is not None else []
        self.mapped: set[int] = set()
        self.noted: set[int] = set()
        self.items: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.request_level_errors: list[str] = []
        self.benefit_level_errors: list[str] = []
        self.contained: dict[str, dict[str, Any]] = {}
        self.extra_insurance: list[dict[str, Any]] = []
        self.inforce: bool | None = None
        self.benefit_period: dict[str, str] = {}
        self.pre_auth: str | None = None
        self.traces: list[str] = []
        self.trace_systems: list[str] = []
        self.identifiers: list[dict[str, Any]] = []
        self.has_benefits = False
        self.unanswered = False   # no patient and no AAA: the payer said nothing
        self.persons: dict[str, _Person] = {}   # "patient", "subscriber": who 2100C/2100D describe
        # 2120 entities an EB's items refer to (provider, authorizationUrl), with the EB01: checked once the items
        # are final, as an item may not make it into the response (see _entities_in_no_item)
        self.entity_uses: list[tuple[dict[str, Any], str]] = []
        # read once per response rather than once per item
        self.service_type_system: str = tables.systems["service_type"]["emit"]
        self.currency: str = tables.systems["currency"]
        self.placeholder_amounts = frozenset(tables.t["quirks"]["placeholder_amounts"])   # tested for every amount
        # the service type of an EB without EB03 (30: the plan as a whole)
        self.generic_service_type: str = tables.t["request_270"]["constants"]["generic_service_type"]

    # -- accounting ---------------------------------------------------------------------------
    def where(self, loop: Loop, seg: Segment) -> str:
        loop_id = loop.id if loop.parent is not None else "header"
        return f"271 ST {self.txn.control_number} {loop_id} {seg.id}@{seg.position}"

    def note(self, text: str, loop: Loop, seg: Segment) -> None:
        self.notes.append(Note(text, self.where(loop, seg), seg.to_x12()))   # text, source, raw
        self.noted.add(seg.position)

    def map(self, seg: Segment) -> None:
        self.mapped.add(seg.position)

    # -- codings ------------------------------------------------------------------------------
    def coding(self, table: str, element: str, code: str) -> dict[str, Any]:
        return self.tables.x12_coding(table, element, code)

    def service_type(self, code: str) -> dict[str, Any]:
        coding = self.tables.x12_coding("service_type", "1365", code)
        coding["system"] = self.service_type_system
        if "display" in coding:
            return {"coding": [coding], "text": coding["display"]}
        return {"coding": [coding]}


def translate_271(txn: Transaction, tables: Tables, *, now: str,
                  context_for: Callable[[list[str]], ResponseContext | None] | None = None
                  ) -> list[ResponseTranslation]:
    """Every answered patient in one 271 transaction set, as CoverageEligibilityResponse dicts.

    ``now`` is the response's ``created``; ``context_for`` maps a patient's trace numbers (TRN02 of
    the echoed TRN*2) to what the request said, so responses are matched by trace, never position.
    """
    root = txn.root
    header = [s for s in root.segments]
    results: list[ResponseTranslation] = []
    for source in root.loops_of("2000A") or [root]:
        payer_loop = source.loop("2100A")
        receivers = source.loops_of("2000B")
        patients: list[tuple[Loop | None, Loop | None, Loop]] = []  # (receiver, subscriber 2000C, patient HL loop)
        unanswered: list[Loop] = []   # receivers (2000B) without a patient: a rejection at their level, or nothing
        for receiver in receivers:
            if not receiver.loops_of("2000C"):
                unanswered.append(receiver)
            for subscriber in receiver.loops_of("2000C"):
                dependents = subscriber.loops_of("2000D")
                if _answers_itself(subscriber) or not dependents:
                    patients.append((receiver, None, subscriber))
                for dependent in dependents:
                    patients.append((receiver, subscriber, dependent))
        for receiver, subscriber, patient in patients:
            results.append(_translate_patient(tables, txn, now, context_for, header, source, payer_loop,
                                              receiver, subscriber, patient))
        # a rejection above the patient level: a response of its own for each receiver answered no patient (or one
        # for the source, when it names no receiver), so none of their AAA is lost
        for receiver in unanswered if (unanswered or patients) else [None]:
            results.append(_translate_patient(tables, txn, now, context_for, header, source, payer_loop,
                                              receiver, None, None))
    return results


def translate_271_loop(txn: Transaction, subscriber: Loop, tables: Tables, *, now: str,
                       context_for: Callable[[list[str]], ResponseContext | None] | None = None
                       ) -> list[ResponseTranslation]:
    """The responses for one streamed 2000C loop (``stream_loops``): large files in bounded memory."""
    receiver = subscriber.parent
    source = receiver.parent if receiver is not None else None
    if receiver is None or source is None:
        return []
    header = list(txn.build_until(0).segments) if txn.build_until(0) is not None else []
    payer_loop = source.loop("2100A")
    dependents = subscriber.loops_of("2000D")
    results = []
    if _answers_itself(subscriber) or not dependents:
        results.append(_translate_patient(tables, txn, now, context_for, header, source, payer_loop, receiver, None,
                                          subscriber))
    for dependent in dependents:
        results.append(_translate_patient(tables, txn, now, context_for, header, source, payer_loop, receiver,
                                          subscriber, dependent))
    return results


def _answers_itself(subscriber: Loop) -> bool:
    """Whether a 2000C loop has benefits of the subscriber's own, in any of its 2100C loops (a payer that repeats
    the NM1 has the reader open a second one, which then holds the 2110C loops)."""
    return any(name.loops_of("2110C") for name in subscriber.loops_of("2100C"))


def _name_loops(level: Loop) -> tuple[Loop | None, list[Loop]]:
    """A patient HL loop's name loop (2100D, else 2100C: the first one) and any further name loops in it."""
    names = [sub for sub in level.loops if sub.id in ("2100C", "2100D")]
    first = next((n for n in names if n.id == "2100D"), None) or next(iter(names), None)
    return first, [n for n in names if n is not first]


def _repeated_name_loops(r: _Response, loops: list[Loop], role: str) -> list[Loop]:
    """Further name loops of one HL level: their own segments are noted (the person is read from the first), their
    2110 loops returned, to be read as the patient's benefits."""
    benefit_loops = []
    for loop in loops:
        for item in loop.body:
            if item.__class__ is Segment:
                r.note(f"loop {loop.id} repeated in one HL level (the payer sent another NM1): the {role} is read "
                       f"from the first; {item.id} is kept here", loop, item)
            elif item.id in ("2110C", "2110D"):
                benefit_loops.append(item)
            else:
                _unclaimed(r, item)
    return benefit_loops


def _translate_patient(tables: Tables, txn: Transaction, now: str,
                       context_for: Callable[[list[str]], ResponseContext | None] | None, header: list[Segment],
                       source: Loop, payer_loop: Loop | None, receiver: Loop | None, subscriber: Loop | None,
                       patient: Loop | None) -> ResponseTranslation:
    level = patient if patient is not None else receiver   # a receiver's own response (no patient): its HL
    hl = level.segment("HL") if level is not None else None
    response_id = _ID_UNSAFE.sub("-", f"{txn.control_number}-{hl.get(1) if hl else '0'}")[:64]
    traces, trace_systems = [], []
    trace_type = tables.t["qualifiers"]["trace_type"]
    # a dependent's own traces (2000D) answer the request that asked about the dependent; the subscriber's (2000C)
    # belong to the subscriber's own request, and stand in only when the dependent loop echoes none
    for loop in (patient, subscriber):
        if loop is not None and not traces:
            for trn in loop.segments_of("TRN"):
                # a referenced trace (TRN01 2) echoes the 270's; one without its number traces nothing (it is noted)
                if trace_type.get(trn.get(1)) == "referenced" and trn.get(2):
                    traces.append(trn.get(2))
                    trace_systems.append(_trace_system(tables, trn.get(3)))
    context = context_for(traces) if context_for else None
    r = _Response(tables, txn, now, context, response_id)
    r.traces = traces
    r.trace_systems = trace_systems
    # the request reference holds one trace: every further echoed trace (a clearinghouse's, say) is an identifier
    r.identifiers.extend({"system": system, "value": value}
                         for system, value in zip(trace_systems[1:], traces[1:], strict=True))

    for seg in header:
        if seg.id in {"ST", "SE"}:
            r.map(seg)
        elif seg.id == "BHT":
            r.map(seg)
            if seg.get(3):
                r.identifiers.append({"system": f"{tables.systems['canonical_base']}/sid/bht03",
                                      "value": seg.get(3)})
        else:
            r.note(f"segment {seg.id} outside the loops of a 271", txn.root, seg)
            continue
        if len(seg.parts) > _READ_PARTS[seg.id]:   # a BHT06, say
            _note_unread(r, txn.root, seg)

    _source_loops(r, source, payer_loop)
    if receiver is not None:
        _receiver_loops(r, receiver)
    name_loop = None
    sub_name_loop = subscriber.loop("2100C") if subscriber is not None else None
    if subscriber is not None:
        _hl_level(r, subscriber, own=False)
        _name_loop(r, sub_name_loop, role="subscriber")
        # a dependent's response: the subscriber's benefits, in whichever name loop, are the subscriber's own
        _repeated_name_loops(r, subscriber.loops_of("2100C")[1:], "subscriber")
    if patient is not None:
        _hl_level(r, patient, own=True)
        name_loop, repeated = _name_loops(patient)
        _name_loop(r, name_loop, role="patient")
        if name_loop is not None:
            benefit_loops = []
            for sub in name_loop.loops:
                if sub.id in {"2110C", "2110D"}:
                    benefit_loops.append(sub)
                else:
                    _unclaimed(r, sub)
            _benefits(r, benefit_loops + _repeated_name_loops(r, repeated, "patient"))
            _entities_in_no_item(r)
    if patient is None and not r.errors:   # nobody answered and no AAA says why: not a "complete" answer
        text = "the 271 answers no patient (no 2000C loop) and gives no reason (no AAA)"
        r.errors.append({"code": {"text": text}})
        r.request_level_errors.append(text)
        r.unanswered = True
    resource = _assemble(r, payer_loop, receiver, name_loop, sub_name_loop, patient is not None)
    # anything no handler claimed (unknown or misplaced segments) is still accounted for
    scope = {seg.position for seg in header}
    for loop in (source, receiver, subscriber, patient):
        if loop is not None:
            _account_for_the_rest(r, loop, subscriber is not None, scope)
    resource = _with_notes(r, resource)
    return ResponseTranslation(resource, r.notes, r.mapped, r.noted, traces, scope)


# The elements the translation reads of each segment it maps into a response (by segment id, in any loop). The
# structure's own (ST, SE, HL, BHT01-02) and the 271's creation date and time (BHT04-05, which like the envelope's
# dates describe the transaction, not the patient's coverage) count as read, as do qualifiers whose values are read
# (NM101, NM102, NM108, PER01, PRV02). A mapped segment with a value in any other element (an EB15, a TRN04, an
# INS09, any element X279A1 does not use) gets a note naming it; a segment that is only noted has every element in
# its note's raw text. A segment id not listed has none of its elements read (a new mapping noted, not lost).
_READ_ELEMENTS: dict[str, frozenset[int]] = {seg_id: frozenset(read) for seg_id, read in {
    "ST": (1, 2, 3), "SE": (1, 2), "BHT": (1, 2, 3, 4, 5), "HL": (1, 2, 3, 4), "TRN": (1, 2, 3),
    "NM1": (1, 2, 3, 4, 5, 7, 8, 9), "PER": range(1, 9), "PRV": (2, 3), "AAA": (1, 3, 4), "DMG": (1, 2, 3),
    "N3": (1, 2), "N4": (1, 2, 3, 4, 7), "INS": (1, 2, 3, 4, 17), "REF": (1, 2, 3), "DTP": (1, 2, 3),
    "EB": range(1, 15), "HSD": range(1, 9), "III": (1, 2, 3, 4), "MSG": (1,), "LS": (1,), "LE": (1,),
    "HI": range(1, 13),   # mapped only when it echoes the 270's, all of it
}.items()}
# the parts (the id and the elements) a segment has at most with nothing unread in them: the first element not read.
# Most segments are no longer (an EB of 14 elements or fewer), which their length alone tells
_READ_PARTS: dict[str, int] = {seg_id: next(i for i in range(1, 100) if i not in read)
                               for seg_id, read in _READ_ELEMENTS.items()}
# for the longer ones: the parts up to the last element read, and the elements not read among them (NM106, which
# X279A1 does not use, between the names and the id), looked at before any list is built
_READ_SHAPE: dict[str, tuple[int, tuple[int, ...]]] = {
    seg_id: (max(read) + 1, tuple(i for i in range(1, max(read)) if i not in read))
    for seg_id, read in _READ_ELEMENTS.items()}


def _note_unread(r: _Response, loop: Loop, seg: Segment) -> None:
    """Note the elements of a mapped segment that the translation does not read (``_READ_ELEMENTS``), when any
    holds a value: named by the segment dictionary, or as beyond the elements X12 defines for the segment."""
    parts = seg.parts
    end, holes = _READ_SHAPE.get(seg.id, (1, ()))
    if len(parts) <= end and not any(parts[i].strip() for i in holes if i < len(parts)):
        return   # an NM1 with its id, an INS with INS03 and INS04: nothing beyond, nothing in between
    read = _READ_ELEMENTS.get(seg.id, frozenset())
    unread = [(i, value) for i, value in enumerate(seg.values(0)) if i and value and i not in read]
    if not unread:
        return
    names = r.tables.element_names.get(seg.id, ())
    shown = "; ".join(f"{seg.id}{i:02d} {quoted(value)}"
                      + ((f" ({names[i - 1]})" if names[i - 1] else "") if i <= len(names)
                         else f" (beyond the {len(names)} elements of {seg.id})")
                      for i, value in unread)
    r.note(f"{shown}: not carried into the response", loop, seg)


def _account_for_the_rest(r: _Response, loop: Loop, for_dependent: bool, scope: set[int]) -> None:
    """Add the segments of ``loop`` that belong to this response (not other patients' loops) to ``scope``, in order,
    noting each that no handler mapped or noted, and the elements of mapped ones that none read."""
    mapped, noted = r.mapped, r.noted
    for item in loop.body:
        if item.__class__ is Segment:
            position = item.position
            scope.add(position)
            if position in mapped:
                if len(item.parts) > _READ_PARTS.get(item.id, 1):
                    _note_unread(r, loop, item)
            elif position not in noted:
                r.note(f"segment {item.id} has no place in a CoverageEligibilityResponse", loop, item)
        elif item.id in {"2000B", "2000C", "2000D"}:
            continue  # reached through their own entries
        elif item.id == "2110C" and for_dependent:
            continue  # a dependent's response: the subscriber's benefits are the subscriber's own response's
        else:
            _account_for_the_rest(r, item, for_dependent, scope)


def _unclaimed(r: _Response, loop: Loop) -> None:
    for owner, seg in loop.walk():
        r.note(f"segment {seg.id} in loop {owner.id} has no place in a CoverageEligibilityResponse", owner, seg)


# -- loops above the patient ------------------------------------------------------------------

def _aaa(r: _Response, loop: Loop, seg: Segment) -> None:
    """AAA at any level -> error[] (reject reason and follow-up), level and AAA01 in a note."""
    tables = r.tables
    level = loop.id
    reason, follow_up, valid = seg.get(3), seg.get(4), seg.get(1)
    reason_info = tables.code("reject_reason", reason)
    if reason and reason_info is None:   # kept and noted below, unless the table refuses it
        _refuse_if_required(r, "reject_reason", reason, loop, seg, "AAA03")
    display = (reason_info["display"] if reason_info else f"reject reason {reason}" if reason
               else "no reject reason given (AAA03 is empty)")
    follow = tables.code("follow_up_action", follow_up)
    if follow_up and follow is None:
        _refuse_if_required(r, "follow_up_action", follow_up, loop, seg, "AAA04")
    text = f"{level}: {display}"
    if follow_up:
        text += f"; follow-up {follow_up}: {follow['display'] if follow else 'unknown follow-up action'}"
    # an AAA without AAA03 still rejects: its error has the text alone (a Coding needs a code)
    error: dict[str, Any] = {"code": {"coding": [r.coding("reject_reason", "901", reason)], "text": text} if reason
                             else {"text": text}}
    expression = tables.t["errors"]["expression"].get(level)
    if expression:
        error["extension"] = [{"url": tables.t["errors"]["expression_extension"], "valueString": expression}]
    r.errors.append(error)
    (r.request_level_errors if level in tables.t["errors"]["request_level"] else r.benefit_level_errors).append(text)
    r.map(seg)
    meaning = tables.t["errors"]["AAA01"].get(valid, f"AAA01 {quoted(valid)}")
    extra = f"AAA at {level}: {meaning}; " + (f"reject reason {reason} ({display})" if reason else display)
    if follow_up:
        extra += f", follow-up {follow_up} ({follow['display'] if follow else 'not a known code'})"
    if reason and reason_info is None:
        extra += "; the reject reason is not an X279A1 code and is passed through"
    elif reason_info is not None and level not in (reason_info.get("loops") or []):
        extra += f"; X279A1 does not allow reason {reason} at {level}"
    r.note(extra, loop, seg)


def _source_loops(r: _Response, source: Loop, payer_loop: Loop | None) -> None:
    for seg in source.segments:
        if seg.id == "HL":
            r.map(seg)
        elif seg.id == "AAA":
            _aaa(r, source, seg)
    if payer_loop is None:
        return
    gateway = r.context is not None and bool(r.context.insurer)
    for seg in payer_loop.segments:
        if seg.id == "NM1":
            _check_identification(r, payer_loop, seg)
            if not gateway:   # the payer Organization (_assemble), whatever NM102 says
                _check_entity_type(r, payer_loop, seg, "payer", "organization")
            # in the gateway the request's insurer (what the 270 sent of it); on its own, the payer Organization
            if not (gateway and _party_returned(r, payer_loop, seg, "payer", "insurer")):
                r.map(seg)
        elif seg.id == "AAA":
            _aaa(r, payer_loop, seg)
        elif seg.id == "PER":
            r.note(f"payer contact: {_contact_text(seg)}", payer_loop, seg)


def _receiver_loops(r: _Response, receiver: Loop) -> None:
    for seg in receiver.segments:
        if seg.id == "HL":
            r.map(seg)
    name = receiver.loop("2100B")
    if name is None:
        return
    id_qualifiers = r.tables.t["identifiers"]["codes"]   # NM108 -> its identifier system, when it has one
    ctx = r.context
    gateway = ctx is not None and bool(ctx.provider)   # the requestor is the request's provider
    for seg in name.segments:
        if seg.id == "NM1":
            _check_identification(r, name, seg)
            if gateway and ctx is not None and ctx.parties_sent is not None:   # an echo, or noted with what differs
                if not _party_returned(r, name, seg, "receiver", "provider"):
                    r.map(seg)
                continue
            if not gateway:   # _assemble reads it as a person or an organisation
                _check_entity_type(r, name, seg, "information receiver", "organization")
        if seg.id == "NM1" and (not seg.get(9) or "system" in id_qualifiers.get(seg.get(8), ())):
            r.map(seg)   # the requestor (by an id FHIR has a system for, the NPI say, or by name alone)
        elif seg.id == "NM1":   # an id FHIR has no system for (SV, XV ...): the requestor is named, the id noted
            r.note(f"information receiver identified by {seg.get(8)} {seg.get(9)} "
                   f"({r.tables.unidentified(seg.get(8))})", name, seg)
        elif seg.id == "AAA":
            _aaa(r, name, seg)
        elif seg.id == "REF":
            _check_reference(r, name, seg, "REF01")
            r.note(f"provider identifier {seg.get(1)} {seg.get(2)} returned by the payer", name, seg)
        elif seg.id in ("N3", "N4"):
            r.note("provider address returned by the payer", name, seg)
        elif seg.id == "PRV":
            r.note(_provider_information(r, name, seg), name, seg)


_PARTIES = {"payer": "information source", "receiver": "information receiver"}


def _party_returned(r: _Response, loop: Loop, nm1: Segment, role: str, holder: str) -> bool:
    """In the gateway, whether the payer's 2100A or 2100B NM1 (``role``: payer, receiver) says what the 270 did not
    send (``ResponseContext.parties_sent``), noted here with each element that differs: the response refers to the
    request's resource (``holder``), which holds what was sent and nothing of this. Equal to what was sent, or
    leaving some of it out, it is an echo; unknown what was sent, it is taken for one. The caller maps it otherwise."""
    ctx = r.context
    sent = ctx.parties_sent if ctx is not None else None
    if sent is None or _echoes_sent(r, nm1, sent.get(role)):
        return False
    known = next((k for k in sent.get(role, ()) if k[0] == nm1.id), ())
    names = r.tables.element_names.get(nm1.id, ())
    shown = []
    for index, value in enumerate(nm1.values(0)):
        if not index or not value or (index < len(known) and known[index] == value):
            continue
        name = names[index - 1] if index <= len(names) else f"beyond the {len(names)} elements of {nm1.id}"
        was = f"the 270 sent {quoted(known[index])}" if index < len(known) and known[index] else "not sent"
        shown.append(f"{nm1.id}{index:02d} {quoted(value)} ({name}; {was})")
    said = ", ".join(shown) or "its elements"   # none differs as read: the components of a composite, say
    r.note(f"the {_PARTIES[role]}'s {nm1.id} ({loop.id}) is not the 270's: {said} (not carried: the response refers to "
           f"the request's {holder})", loop, nm1)
    return True


def _check_entity_type(r: _Response, loop: Loop, nm1: Segment, who: str, read_as: str) -> str:
    """NM102 by ``mappings/translate/qualifiers.yaml`` entity_type: person or organization. One it does not list (or
    none) is noted and read as ``read_as``, the loop's usual kind (the table has no on_missing: X12 has no other
    NM102, and a payer's slip should not refuse its answer)."""
    kind = r.tables.entity_type(nm1.get(2))
    if kind is not None:
        return kind
    named = f"{who} {nm1.get(3)}" if nm1.get(3) else who
    r.note(f"{named}: {r.tables.unlisted_entity_type(nm1.get(2), read_as)}", loop, nm1)
    return read_as


def _check_identification(r: _Response, loop: Loop, nm1: Segment) -> None:
    """An NM108 that ``mappings/translate/identifiers.yaml`` does not list: refused when the table says so
    (on_missing: error); otherwise the id is noted where it would have become an identifier."""
    qualifier = nm1.get(8)
    if qualifier and qualifier not in r.tables.t["identifiers"]["codes"]:
        _refuse_if_required(r, "identifiers", qualifier, loop, nm1, "NM108")


def _check_reference(r: _Response, loop: Loop, seg: Segment, element: str) -> None:
    """A REF01 or PRV02 (element 128) that ``mappings/translate/references.yaml`` does not name: refused when the
    table says so (on_missing: error); the caller notes the segment with its code either way."""
    code = seg.get(1) if element == "REF01" else seg.get(2)
    if code and code not in r.tables.t["references"]["names"]:
        _refuse_if_required(r, "references", code, loop, seg, element)


def _provider_information(r: _Response, loop: Loop, prv: Segment) -> str:
    """A 2100B/2100C PRV's note (no FHIR element holds it): a PRV02 the references table does not name is said to be
    so (or refuses the 271, when the table says so)."""
    _check_reference(r, loop, prv, "PRV02")
    text = f"provider information {prv.get(1)} {prv.get(3)}"
    if prv.get(2) and prv.get(2) not in r.tables.t["references"]["names"]:
        text += f" (PRV02 {quoted(prv.get(2))} is not a known qualifier)"
    return text


def _hl_level(r: _Response, level: Loop, *, own: bool) -> None:
    trace_type = r.tables.t["qualifiers"]["trace_type"]   # TRN01: referenced (an echoed 270 trace) or current
    for seg in level.segments:
        if seg.id == "HL":
            r.map(seg)
        elif seg.id == "TRN" and not seg.get(2):
            r.note("trace without a trace number (TRN02 is empty)", level, seg)
        elif seg.id == "TRN" and trace_type.get(seg.get(1)) == "referenced" and seg.get(2) not in r.traces:
            # the subscriber's trace in a dependent's response: it answers the subscriber's own request
            r.note(f"trace {seg.get(2)} of the subscriber's loop ({level.id}) answers another request than this "
                   "dependent's", level, seg)
        elif seg.id == "TRN" and trace_type.get(seg.get(1)) in ("referenced", "current"):
            r.map(seg)
            if trace_type[seg.get(1)] == "current":  # the payer's or a clearinghouse's own trace
                r.identifiers.append({"system": _trace_system(r.tables, seg.get(3)), "value": seg.get(2)})
        elif seg.id == "TRN":
            r.note(f"trace {seg.get(2)} of trace type {quoted(seg.get(1))} (TRN01), neither the payer's own nor an "
                   "echo of the request's: not carried", level, seg)


# -- 2100C / 2100D ----------------------------------------------------------------------------

@dataclass
class _Person:
    family: str = ""
    given: list[str] = field(default_factory=list)
    suffix: str = ""
    member_id: str = ""
    identifiers: list[dict[str, Any]] = field(default_factory=list)   # ids under another NM108 than a member id's
    birth_date: str | None = None
    gender: str | None = None
    address: dict[str, Any] | None = None
    relationship: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    period: dict[str, str] = field(default_factory=dict)


# segments a name loop holds once, with what each says of the person
_ONCE_PER_PERSON = {"NM1": "name", "DMG": "birth date and gender", "N3": "street address", "N4": "city, state and ZIP",
                    "INS": "relationship"}


# which resource a person's segment goes to, for the patient and for a subscriber who is not the patient: the
# patient's name, member id, demographics and address to the Patient; the relationship and the classes (and all of a
# subscriber, the Coverage's subscriber) to the Coverage
_HOLDERS = {"patient": {"NM1": "Patient", "DMG": "Patient", "N3": "Patient", "N4": "Patient", "INS": "Coverage",
                        "REF": "Coverage"},
            "subscriber": dict.fromkeys(("NM1", "DMG", "N3", "N4", "INS", "REF"), "Coverage")}


def _stands_in(r: _Response, role: str) -> dict[str, str]:
    """In the gateway, the person's segments whose resource the request's replaces (segment id -> the request's
    resource type, Patient or Coverage): the response holds none of their data, the request's resource only what
    the 270 sent. Empty on its own (no context): the response's contained resources hold it all."""
    ctx = r.context
    if ctx is None or not (ctx.patient or ctx.coverage):
        return {}
    replaced = {"Patient": bool(ctx.patient), "Coverage": bool(ctx.coverage)}
    return {sid: holder for sid, holder in _HOLDERS[role].items() if replaced[holder]}


def _echoes(r: _Response, seg: Segment, role: str) -> bool:
    """Whether ``seg`` says nothing the 270 did not send for the person (``ResponseContext.persons_sent``)."""
    ctx = r.context
    sent = ctx.persons_sent if ctx is not None else None
    return bool(sent) and _echoes_sent(r, seg, sent.get(role) if sent else None)


def _echoes_sent(r: _Response, seg: Segment, sent: frozenset[tuple[str, ...]] | None) -> bool:
    """Whether ``seg`` says nothing ``sent`` (the segments of one of the 270's loops) does not: a segment the 270 sent
    with the same id holds every element ``seg`` fills, the same (values as the reader strips them, case as sent). A
    payer that leaves out a middle name or a gender the 270 gave adds nothing, and loses nothing the request does not
    hold."""
    if not sent:
        return False
    ctx = r.context
    sent_component = ctx.sent_component if ctx is not None else DEFAULT_DELIMITERS.component
    values = seg.values(0)
    filled = [(index, value) for index, value in enumerate(values) if value and index]
    composites = r.tables.composites.get(seg.id, ())   # HI01-HI12, DMG05 ...: compared by components when unequal
    return any(known[0] == values[0] and all(
        index < len(known) and (known[index] == value or (index in composites and _same_components(
            known[index], sent_component, value, seg.delimiters.component))) for index, value in filled)
        for known in sent)


def _same_components(sent: str, sent_separator: str, value: str, separator: str) -> bool:
    """Whether a composite of the 271 (``value``, its components separated by ``separator``) fills only components the
    270 sent the same (``sent``, separated by ``sent_separator``): as with elements, one left out adds nothing."""
    known = sent.split(sent_separator)
    return all(index < len(known) and known[index].strip() == component.strip()
               for index, component in enumerate(value.split(separator)) if component.strip())


def _request_relationship(r: _Response) -> str | None:
    """The request's Coverage.relationship code, in the gateway: as given, or read from the contained copy of the
    request's Coverage the way the 270 was built from it (a coding in an accepted subscriber-relationship system, or
    one without a system; the last such). None when the response has no request, or its Coverage is not at hand."""
    ctx = r.context
    if ctx is None or ctx.relationship is not None:
        return ctx.relationship if ctx is not None else None
    reference = (ctx.coverage or {}).get("reference")
    if not isinstance(reference, str) or not reference.startswith("#"):
        return None
    coverage = next((c for c in ctx.contained if isinstance(c, dict) and c.get("id") == reference[1:]
                     and c.get("resourceType") == "Coverage"), None)
    concept = coverage.get("relationship") if coverage is not None else None
    accepted = r.tables.systems["relationship_accept"]
    codes = [c.get("code") for c in (concept.get("coding") or [] if isinstance(concept, dict) else [])
             if isinstance(c, dict) and (c.get("system") in accepted or c.get("system") is None)]
    return next((code for code in reversed(codes) if isinstance(code, str) and code), None)


def _relationship_echoes(tables: Tables, ins: Segment, requested: str) -> bool:
    """Whether a patient's INS says no more than the request's Coverage.relationship (``requested``), which the 270
    sends as its loop (2100D for a dependent), never as an INS: INS01 the insured indicator of that relationship (N
    for a dependent), INS02 a code meaning it, or the one the 270 gives it (a parent is 34, other adult), and no other
    element."""
    table = tables.t["relationship"]
    values = ins.values(3)
    if len(values) > 3 and any(values[3:]):
        return False
    indicator = table["insured_indicator"]["subscriber" if requested in table["subscriber"] else "dependent"]
    code = values[2]
    return values[1] == indicator and bool(code) and (table["from_ins02"].get(code) == requested
                                                      or table["to_ins02"].get(requested) == code)


def _returned(r: _Response, loop: Loop, seg: Segment, role: str, holder: str | None, what: str, shown: str,
              why: str = "") -> bool:
    """Whether ``seg`` says something of the person the response does not carry, noted here: in the gateway
    (``holder``, the request's resource that stands for it), a segment with data (``shown``) that is no echo of
    the 270. The caller maps it otherwise."""
    if holder is None or not shown or _echoes(r, seg, role):
        return False
    r.note(f"the payer's {what} for the {role}: {shown} (not carried: the response refers to the request's "
           f"{holder}{why})", loop, seg)
    return True


def _person_name(seg: Segment) -> str:
    """NM103-NM107 as a note shows a name: ``ROE, RICHARD Q JR``."""
    given = " ".join(v for v in (seg.get(4), seg.get(5), seg.get(7)) if v)
    return ", ".join(v for v in (seg.get(3), given) if v)


def _name_loop(r: _Response, loop: Loop | None, *, role: str) -> None:
    if loop is None:
        return
    person = _Person()
    tables = r.tables
    seen: set[str] = set()
    stands_in = _stands_in(r, role)
    for seg in loop.segments:
        sid = seg.id
        if sid in _ONCE_PER_PERSON:
            if sid in seen:   # read again, it would overwrite what the first said
                r.note(f"{sid} repeated in loop {loop.id}: the {role}'s {_ONCE_PER_PERSON[sid]} is read from the "
                       "first", loop, seg)
                continue
            seen.add(sid)
        if sid == "NM1":
            if tables.entity_type(seg.get(2)) is None:   # a Patient whatever it says
                _check_entity_type(r, loop, seg, f"the {role}", "person")
            # NM108 says what NM109 is: MI the member id; another id of the person under its system, or noted
            qualifier, value = seg.get(8), seg.get(9)
            member = bool(value) and tables.member_id(qualifier)
            if value and not member:
                _check_identification(r, loop, seg)
            returned = False
            if stands_in:
                name = _person_name(seg)
                ident = value if member else " ".join(v for v in (qualifier, value) if v) if value else ""
                what = " and ".join(w for w, v in (("name", name), ("member id" if member else "id", ident)) if v)
                returned = _returned(r, loop, seg, role, stands_in.get(sid), what,
                                     "; ".join(v for v in (name, ident) if v))
            if not returned:
                r.map(seg)
                if value and not member:
                    identifier = tables.identifier(qualifier, value)
                    if identifier is not None:
                        person.identifiers.append(identifier)
                    else:
                        r.note(f"the {role} identified by {' '.join(v for v in (qualifier, value) if v)} "
                               f"({tables.unidentified(qualifier)}): not a member id", loop, seg)
            person.family, person.suffix = seg.get(3), seg.get(7)
            person.given = [v for v in (seg.get(4), seg.get(5)) if v]
            if member:
                person.member_id = value
        elif sid == "DMG":
            gender = tables.t["gender"]["from_x12"].get(seg.get(3))
            if seg.get(3) and gender is None:
                _refuse_if_required(r, "gender", seg.get(3), loop, seg, "DMG03")
            if stands_in and _returned(r, loop, seg, role, stands_in.get(sid), *_demographics(tables, seg)):
                continue
            r.map(seg)
            if tables.t["dates"]["formats"].get(seg.get(1)) == "date":   # D8
                person.birth_date = x12_date(seg.get(2))
                if seg.get(2) and person.birth_date is None:
                    r.note(f"birth date {quoted(seg.get(2))} is not a date", loop, seg)
            elif seg.get(2):   # X279A1 allows D8 only: a birth date in another format is not read, but kept
                day = "/".join(k for k, v in tables.t["dates"]["formats"].items() if v == "date")   # D8
                r.note(f"birth date {quoted(seg.get(2))} in format {quoted(seg.get(1))} (not {day}) is not read", loop,
                       seg)
            person.gender = gender
            if seg.get(3) and gender is None:
                r.note(f"gender code {quoted(seg.get(3))} is not known", loop, seg)
        elif sid in {"N3", "N4"}:
            if stands_in and _returned(r, loop, seg, role, stands_in.get(sid), _ONCE_PER_PERSON[sid],
                                       _address_text(tables, seg)):
                continue
            r.map(seg)
            address = person.address or {}
            if sid == "N3":
                lines = [v for v in (seg.get(1), seg.get(2)) if v]
                if lines:   # an N3 of empty elements gives no line (an empty list is no FHIR, ele-1)
                    address["line"] = lines
            else:
                # N407, the subdivision of a country other than the US or Canada, is where N402 would be (one or
                # the other: E0207); Address.state is the sub-unit of any country
                address.update({k: v for k, v in (("city", seg.get(1)), ("state", seg.get(2) or seg.get(7)),
                                                  ("postalCode", us_zip(seg, tables)), ("country", seg.get(4)))
                                if v})
                if seg.get(2) and seg.get(7):
                    r.note(f"country subdivision N407 {quoted(seg.get(7))} given with the state N402 "
                           f"{quoted(seg.get(2))} (X12 allows one of them: E0207); Address.state holds N402", loop,
                           seg)
            person.address = address
        elif sid == "INS":
            relationship = tables.t["relationship"]["from_ins02"].get(seg.get(2))
            if seg.get(2) and relationship is None:
                _refuse_if_required(r, "relationship", seg.get(2), loop, seg, "INS02")
            shown = (f"{seg.get(2)} ({relationship})" if relationship else quoted(seg.get(2))) if seg.get(2) else ""
            # in the gateway the patient's relationship is the request's Coverage's: an INS saying it echoes the request
            requested = _request_relationship(r) if role == "patient" and stands_in.get(sid) else None
            differs = f", whose relationship is {requested}" if requested and requested != relationship else ""
            if requested and _relationship_echoes(tables, seg, requested):
                r.map(seg)
            elif not (stands_in and _returned(r, loop, seg, role, stands_in.get(sid), "relationship", shown, differs)):
                r.map(seg)
                person.relationship = relationship
                if seg.get(2) and relationship is None:
                    r.note(f"relationship code {quoted(seg.get(2))} is not known", loop, seg)
            changed = tables.t["relationship"]["identity_changed"]   # INS03 and INS04 that say so
            ins03, ins04 = seg.get(3), seg.get(4)
            if ins03 == changed["INS03"] and ins04 == changed["INS04"]:
                r.note(f"the payer changed identifying data of the {role} (INS03 {ins03}, INS04 {ins04}): check the "
                       "returned name, birth date and member id", loop, seg)
            elif ins03 or ins04:   # no other maintenance type or reason means anything in a 271: kept, not read
                given = " and ".join(f"INS0{i} {quoted(value)}" for i, value in ((3, ins03), (4, ins04)) if value)
                r.note(f"{given} of the {role} not read: X279A1 uses INS03 {changed['INS03']} with INS04 "
                       f"{changed['INS04']} only (identifying data changed)", loop, seg)
            if seg.get(17):
                r.note(f"birth sequence number {seg.get(17)}", loop, seg)
        elif sid == "REF":
            kind = tables.t["references"]["patient_level"].get(seg.get(1))
            if kind is None:
                _check_reference(r, loop, seg, "REF01")
            name = _reference_name(tables, seg.get(1))
            if kind and seg.get(2):   # a class (group, plan) needs its value
                if stands_in and _returned(r, loop, seg, role, stands_in.get(sid), name,
                                           seg.get(2) + (f" ({seg.get(3)})" if seg.get(3) else ""),
                                           f", which holds no such {kind} class"):
                    continue
                r.map(seg)
                person.groups.append({"type": kind, "value": seg.get(2), "name": seg.get(3)})
            else:
                r.note(f"{name} {seg.get(2)}".strip() + (f" ({seg.get(3)})" if seg.get(3) else ""), loop, seg)
        elif sid == "DTP":
            _patient_date(r, loop, seg, person)
        elif sid == "AAA":
            _aaa(r, loop, seg)
        elif sid == "PRV":
            r.note(_provider_information(r, loop, seg), loop, seg)
        elif sid == "HI":
            if _echoes(r, seg, role):   # in the gateway, the 270's own: the request's items hold the diagnoses
                r.map(seg)
            else:
                r.note("diagnosis codes echoed by the payer" if not (r.context and r.context.persons_sent) else
                       "diagnosis codes returned by the payer, not as the 270 sent them", loop, seg)
        elif sid == "MPI":
            r.note("military personnel information", loop, seg)
    r.persons[role] = person


def _demographics(tables: Tables, dmg: Segment) -> tuple[str, str]:
    """What a DMG says, for a note: which of birth date and gender it gives, and their values (as read, or as sent
    when they cannot be read)."""
    born = (x12_date(dmg.get(2)) if tables.t["dates"]["formats"].get(dmg.get(1)) == "date" else None) or (
        f"{quoted(dmg.get(2))} (format {quoted(dmg.get(1))})" if dmg.get(2) else "")
    gender = (tables.t["gender"]["from_x12"].get(dmg.get(3)) or quoted(dmg.get(3))) if dmg.get(3) else ""
    return (" and ".join(w for w, v in (("birth date", born), ("gender", gender)) if v),
            ", ".join(v for v in (born, gender) if v))


def _address_text(tables: Tables, seg: Segment) -> str:
    """An N3's lines, or an N4's city, state (or country subdivision), ZIP and country, for a note."""
    if seg.id == "N3":
        return ", ".join(v for v in (seg.get(1), seg.get(2)) if v)
    region = " ".join(v for v in (seg.get(2), seg.get(7), us_zip(seg, tables)) if v)
    return ", ".join(v for v in (seg.get(1), region, seg.get(4)) if v)


def _patient_date(r: _Response, loop: Loop, seg: Segment, person: _Person) -> None:
    dates = r.tables.t["dates"]
    qualifier = seg.get(1)
    kind = dates["patient_level"].get(qualifier)
    if qualifier not in dates["names"]:
        _refuse_if_required(r, "dates", qualifier, loop, seg, "DTP01")
    name = dates["names"].get(qualifier, f"date qualifier {qualifier}")
    span = date_range(r.tables, seg.get(2), seg.get(3))
    if span is None:
        r.note(f"{name} date {quoted(seg.get(3))} could not be read", loop, seg)
        return
    start, end = span
    if kind in ("plan-begin", "plan-end", "plan"):
        wanted = {"plan-begin": {"start": start}, "plan-end": {"end": end}}.get(
            kind, {"start": start} if start == end else {"start": start, "end": end})
        # the first date given for each end of the plan period stands; a different one later is noted, not lost
        period = {**wanted, **r.benefit_period}
        if "start" in period and "end" in period and period["start"] > period["end"]:
            # with the other end given before, this date would make a period that ends before it starts (per-1)
            shown = start if start == end else f"{start} to {end}"
            given = " and ".join(f"{k}s {v}" for k, v in r.benefit_period.items())
            r.note(f"{name} {shown}: the plan period already {given}, and would end before it starts (not carried)",
                   loop, seg)
            return
        clashes = {k: v for k, v in wanted.items() if r.benefit_period.get(k, v) != v}
        r.benefit_period.update({k: v for k, v in wanted.items() if k not in r.benefit_period})
        unused = (kind == "plan-begin" and end != start) or (kind == "plan-end" and end != start)
        if clashes or unused:
            shown = start if start == end else f"{start} to {end}"
            already = " and ".join(f"{k}s {r.benefit_period[k]}" for k in clashes)   # "starts ...", "ends ..."
            if clashes:
                r.note(f"{name} {shown}: the plan period already {already}", loop, seg)
            else:   # a begin (or end) date sent as a range: the one end that is a plan date is carried
                carried = f"starts {start}" if kind == "plan-begin" else f"ends {end}"
                r.note(f"{name} given as the range {shown}: the plan period {carried}; the other end is only "
                       "here", loop, seg)
            return
    elif kind in ("eligibility-begin", "eligibility-end", "eligibility"):
        period = dict(person.period)
        if kind != "eligibility-end":
            period["start"] = start
        if kind != "eligibility-begin" and (kind == "eligibility-end" or start != end):
            period["end"] = end
        shown = start if start == end else f"{start} to {end}"
        if "start" in period and "end" in period and period["start"] > period["end"]:
            # with a date given before, this one would make a period that ends before it starts (per-1)
            r.note(f"{name}: {shown} (CoverageEligibilityResponse has no eligibility dates; not kept on the contained "
                   f"Coverage.period, which would then run from {period['start']} to {period['end']} and end before "
                   "it starts)", loop, seg)
            return
        person.period = period
        r.note(f"{name}: {shown} (CoverageEligibilityResponse has no eligibility dates; kept on the contained "
               "Coverage.period when there is one)", loop, seg)
        return
    else:
        r.note(f"{name}: {start if start == end else f'{start} to {end}'}", loop, seg)
        return
    r.map(seg)


# -- 2110: benefits ---------------------------------------------------------------------------

@dataclass(slots=True)
class _Fact:
    """One amount of one EB for one service type, before totals and remainders are matched."""

    key: tuple
    kind: str           # total | remaining | met
    family: str         # lifetime or period
    loop: Loop
    seg: Segment
    item: dict[str, Any]
    benefit: dict[str, Any]
    money: Decimal | None
    # the 2110 loop's dates (DTP qualifier and value): a prior year's total and this year's differ only so
    dates: tuple[tuple[str, str], ...]


def _benefits(r: _Response, loops: list[Loop]) -> None:
    facts: list[_Fact] = []
    for loop in loops:
        eb = loop.segment("EB")
        if eb is None:
            _unclaimed(r, loop)
            continue
        facts.extend(_benefit_loop(r, loop, eb))
    _match_amounts(r, facts)


def _benefit_loop(r: _Response, loop: Loop, eb: Segment) -> list[_Fact]:
    tables = r.tables
    v = eb.values(15)
    eb01 = v[1]
    info = tables.code("eligibility_benefit", eb01)
    maps_to = info.get("maps_to", "note") if info else "unknown"
    display = info["display"] if info else f"EB01 {eb01}"
    # a FHIR code has no white space at its ends nor runs of it inside: repetitions and components come unstripped,
    # and an empty one ("30^^33", "HC:") names nothing
    stcs = [code for code in map(fhir_code, eb.repetitions(3)) if code]
    procedure = list(map(fhir_code, eb.components(13))) if v[13] else []
    description: list[str] = []
    described: list[Segment] = []   # MSG/HSD/III: mapped when their text lands in an item
    dates: list[tuple[str, str]] = []   # DTP qualifier and value, for matching totals and remainders
    alone = len(loop.body) == 1   # the EB alone, as most rows come: no companions, no 2115 or 2120 loops
    entities = [] if alone else _entities(r, loop)

    # the EB itself and its companions: descriptions, pre-authorisation numbers, dates, AAA
    for seg in loop.body:
        if seg.__class__ is not Segment:
            continue
        sid = seg.id
        if sid in {"EB", "LS", "LE"}:
            r.map(seg)
        elif sid == "MSG":
            described.append(seg)
            description.append(seg.get(1))
        elif sid == "HSD":
            described.append(seg)
            description.append(_hsd_text(r, loop, seg))
        elif sid == "REF":
            kind = tables.t["references"]["benefit_level"].get(seg.get(1))
            if kind is None:
                _check_reference(r, loop, seg, "REF01")
            name = _reference_name(tables, seg.get(1))
            if kind == "pre-auth" and r.pre_auth is None and seg.get(2):
                r.pre_auth = seg.get(2)
                r.map(seg)
                if seg.get(3):   # preAuthRef is the number alone
                    r.note(f"description {quoted(seg.get(3))} of the {name} {seg.get(2)} for EB {eb01}", loop, seg)
            else:
                r.note(f"{name} {seg.get(2)}".strip() + f" for EB {eb01}" + (f" ({seg.get(3)})" if seg.get(3) else ""),
                       loop, seg)
        elif sid == "DTP":
            dates.append((seg.get(1), seg.get(3)))
            if seg.get(1) not in tables.t["dates"]["names"]:
                _refuse_if_required(r, "dates", seg.get(1), loop, seg, "DTP01")
            name = tables.t["dates"]["names"].get(seg.get(1), f"date qualifier {seg.get(1)}")
            span = date_range(tables, seg.get(2), seg.get(3))
            shown = (span[0] if span[0] == span[1] else f"{span[0]} to {span[1]}") if span else repr(seg.get(3))
            r.note(f"{name} {shown} for {_row_named(tables, v, stcs)} (no item-level dates in FHIR R4)", loop, seg)
        elif sid == "AAA":
            _aaa(r, loop, seg)
    for sub in (() if alone else loop.loops):
        if sub.id.startswith("2115"):
            for seg in sub.segments:
                if seg.id == "III":
                    described.append(seg)
                    description.append(_iii_text(tables, seg))
        elif not sub.id.startswith("2120"):
            _unclaimed(r, sub)

    if info is None:
        _refuse_if_required(r, "eligibility_benefit", eb01, loop, eb, "EB01")
        r.note(f"EB01 {quoted(eb01)} is not an X279A1 code; passed through without a FHIR meaning", loop, eb)
    if v[4]:
        insurance = tables.code("insurance_type", v[4])
        if insurance is None:
            _refuse_if_required(r, "insurance_type", v[4], loop, eb, "EB04")
        r.note(f"insurance type {v[4]} ({insurance['display'] if insurance else 'not an X279A1 code'}) "
               f"for EB {eb01}", loop, eb)
    if v[14]:
        r.note(f"diagnosis code pointers {v[14]} for EB {eb01}", loop, eb)
    authorization = _authorization(r, loop, eb, v[11], eb01) if v[11] else None
    if procedure and (len(procedure) < 2 or not procedure[1]):   # a qualifier without a code is no procedure
        r.note(f"EB13 {quoted(v[13])} names no procedure code: the row is read by its service types", loop, eb)
        procedure = []
    elif procedure and not procedure[0]:
        r.note(f"EB13 procedure {quoted(procedure[1])} has no code list qualifier (EB13-1): its code system is "
               "not known", loop, eb)

    # the items this EB becomes: one per service type, or one for the procedure (ces-1)
    base = _item_base(r, loop, eb, v, entities, authorization)
    if any(description):
        base["description"] = "; ".join(d for d in description if d)
    targets: list[dict[str, Any]] = []
    if procedure:
        item = dict(base)
        item["productOrService"] = _procedure(r, procedure, loop, eb)
        if len(procedure) > 6 and any(procedure[6:8]):   # EB13-7 description, EB13-8 the end of a code range
            extra = [f"description {procedure[6]!r}" if procedure[6] else "",
                     f"a range through {procedure[7]}" if len(procedure) > 7 and procedure[7] else ""]
            r.note(f"EB {eb01} procedure {procedure[1]}: {' and '.join(x for x in extra if x)} (an item names one "
                   "code)", loop, eb)
        if any(procedure[8:]):   # C003 has eight components: what follows them has no meaning to read
            r.note(f"EB {eb01} procedure {procedure[1]}: EB13 has {len(procedure)} components, of which C003 "
                   f"defines 8; the rest ({quoted(':'.join(procedure[8:]))}) is not read", loop, eb)
        modifiers = [m for m in procedure[2:6] if m]
        if modifiers:
            system = item["productOrService"]["coding"][0].get("system")
            item["modifier"] = [{"coding": [{**({"system": system} if system else {}), "code": m}]}
                                for m in modifiers]
        targets.append(item)
        if stcs:
            r.note(f"service type(s) {', '.join(stcs)} of the procedure row kept out of the item "
                   "(an item has a category or a procedure, not both: ces-1)", loop, eb)
    else:
        service_types = tables.codes["service_type"]
        for stc in stcs or [r.generic_service_type]:
            item = dict(base)
            item["category"] = r.service_type(stc)
            if stc not in service_types:
                _refuse_if_required(r, "service_type", stc, loop, eb, "EB03")
                r.note(f"service type {quoted(stc)} is not an X279A1 code; passed through", loop, eb)
            targets.append(item)
        if not stcs:
            base_note = f"no service type (EB03): applies to the plan as a whole ({r.generic_service_type})"
            if maps_to not in ("coverage",):
                r.note(f"EB {eb01} has {base_note}", loop, eb)

    facts: list[_Fact] = []
    if maps_to != "benefit" and any(v[7:11]):
        # amounts, percents and quantities have their FHIR slots in benefits only: said, not dropped
        given = [f"amount {v[7]}" if v[7] else "", f"percent {v[8]}" if v[8] else "",
                 f"quantity {v[9]} {v[10]}".strip() if v[9] or v[10] else ""]
        r.note(f"{', '.join(g for g in given if g)} of EB {eb01} ({display}) for {', '.join(stcs) or 'the plan'}: "
               "FHIR carries amounts only on benefits", loop, eb)
    if maps_to == "coverage":
        r.inforce = bool(info.get("inforce")) or bool(r.inforce)
        excluded = not info.get("inforce")   # an inactive row's services are not covered (another row may be active)
        for item in targets:
            item["excluded"] = excluded
        r.items.extend(targets)
        if not info.get("inforce_only"):   # inforce says all of Active Coverage (1); not of capitation, say
            r.note(f"coverage status {eb01}: {display}", loop, eb)
    elif maps_to == "benefit":
        r.has_benefits = True
        for item in targets:
            fact = _amount(r, loop, eb, v, info, item, tuple(dates))
            if fact is not None:
                facts.append(fact)
            else:
                r.items.append(item)
    elif maps_to == "excluded":
        r.has_benefits = True
        for item in targets:
            item["excluded"] = True
            item.setdefault("description", display)
        r.items.extend(targets)
    elif maps_to == "description":
        for item in targets:
            item["description"] = "; ".join([display, *(d for d in description if d)])
        r.items.extend(targets)
    elif maps_to == "provider":
        r.items.extend(targets)
    elif maps_to == "other-payer":
        _other_payer(r, loop, eb, entities)
    elif maps_to == "cannot-process":
        for stc in stcs or [r.generic_service_type]:
            shown = r.tables.display("service_type", stc)
            text = f"{loop.id}: the payer cannot process service type {stc} ({shown})"
            r.errors.append({"code": {"coding": [r.coding("eligibility_benefit", "1390", eb01)], "text": text}})
            r.benefit_level_errors.append(text)
    elif maps_to == "contact":
        r.items.extend(targets)  # who to contact is noted with the 2120 entity itself
        if not entities:
            r.note(f"{display} for {', '.join(stcs) or 'the plan'}, without naming the entity", loop, eb)
    else:  # note, or a code X279A1 does not define
        r.note(f"{display} for {', '.join(stcs) or 'the plan'}" + (f" ({base['description']})"
                                                                    if base.get("description") else ""), loop, eb)
    if entities:
        _entity_notes(r, loop, eb01, entities, maps_to)
    carried = (bool(described) and maps_to not in {"note", "unknown", "other-payer", "cannot-process"}
               and _carried(r, targets, facts))
    for seg in described:
        if carried:
            r.map(seg)
        elif maps_to == "cannot-process":
            r.errors[-1]["code"]["text"] += f"; {seg.get(1) if seg.id == 'MSG' else seg.id}"
            r.map(seg)
        elif seg.position not in r.noted:
            r.note(f"{seg.id} for EB {eb01}: {description[described.index(seg)]}", loop, seg)
    return facts


def _carried(r: _Response, targets: list[dict[str, Any]], facts: list[_Fact]) -> bool:
    """Whether any of an EB's items made it into the response (as an item, or as a total or remainder).

    Every fact is made from one of ``targets``; items just appended are the last ones, found there by identity
    before the whole list is searched by (deep) equality."""
    if facts:
        return True
    last = r.items[-len(targets):] if targets else []
    return any(appended is item for item in targets for appended in last) or any(item in r.items for item in targets)


# item.unit, item.network and item.term: the EB element each is read from, how a note names it, and its table
_CONCEPT_ELEMENTS = (("unit", 2, "coverage level", "coverage_level"), ("network", 12, "network indicator", "network"),
                     ("term", 6, "time period", "time_period"))


def _concept(tables: Tables, kind: str, code: str) -> tuple[dict[str, Any], bool]:
    """item.unit / network / term: the FHIR code where one exists, always the X12 coding; known?"""
    cache = tables.concepts
    key = (kind, code)
    entry = cache.get(key)
    if entry is None:
        if kind == "unit":
            info = tables.code("coverage_level", code)
            codings = [tables.x12_coding("coverage_level", "1207", code)]
            fhir = (info or {}).get("fhir_unit")
            system = tables.systems["benefit_unit"]
        elif kind == "network":
            info = tables.t["network"]["codes"].get(code)
            codings = [{"system": tables.x12_system("1073"), "code": code}]
            fhir = info["fhir"] if info and info["fhir"] != "none" else None
            system = tables.systems["benefit_network"]
        else:
            info = tables.code("time_period", code)
            codings = [tables.x12_coding("time_period", "615", code)]
            fhir = (info or {}).get("fhir_term")
            system = tables.systems["benefit_term"]
        if fhir:
            codings.insert(0, {"system": system, "code": fhir})
        entry = (codings, info is not None)
        if info is not None:   # codes a payer made up are not kept: the cache stays as small as the tables
            cache[key] = entry
    codings, known = entry
    return {"coding": list(map(dict, codings))}, known   # fresh copies of the templates


def _refuse_if_required(r: _Response, table: str, code: str, loop: Loop, seg: Segment, element: str) -> None:
    """A code ``table`` does not list, in ``element`` of ``seg``: a table whose on_missing is ``error`` refuses the
    271 (naming the table file); otherwise the caller keeps the code and notes it."""
    if r.tables.refuses_unknown(table):
        r.tables.refuse_unknown(table, code, r.where(loop, seg), element)


def _authorization(r: _Response, loop: Loop, eb: Segment, code: str, eb01: str) -> bool | None:
    """EB11 -> authorizationRequired, by ``mappings/translate/authorization.yaml``: true or false, else None (FHIR's
    boolean has no "unknown" or "not applicable", and a code the table does not list means nothing), the code then
    kept in a note."""
    info = r.tables.t["authorization"]["codes"].get(code)
    if info is None:
        _refuse_if_required(r, "authorization", code, loop, eb, "EB11")
        r.note(f"EB11 {quoted(code)} for EB {eb01} is not an X279A1 authorization or certification indicator: "
               "authorizationRequired is left out", loop, eb)
        return None
    required = info["fhir"] if info["fhir"] is True or info["fhir"] is False else None
    if required is None or info.get("x279a1") is False:
        text = f"{info['display']} (EB11 {code}) for EB {eb01}"
        if info.get("x279a1") is False:
            text += f"; X279A1 does not allow {code} in EB11"
        r.note(text, loop, eb)
    return required


def _item_base(r: _Response, loop: Loop, eb: Segment, v: list[str], entities: list[dict[str, Any]],
               authorization: bool | None) -> dict[str, Any]:
    """What every item of one EB shares; ``v`` is the EB's elements (``eb.values(15)``), ``authorization`` what
    EB11 says of authorizationRequired (None: nothing FHIR can hold)."""
    tables = r.tables
    item: dict[str, Any] = {}
    if v[5]:
        item["name"] = v[5]
    for kind, element, label, table in _CONCEPT_ELEMENTS:
        code = fhir_code(v[element])
        if code:
            item[kind], known = _concept(tables, kind, code)
            if not known:
                _refuse_if_required(r, table, code, loop, eb, f"EB{element:02d}")
                r.note(f"{label} {quoted(code)} is not an X279A1 code", loop, eb)
    if authorization is not None:
        item["authorizationRequired"] = authorization
    for entity in entities:
        if entity["role"] == "utilization-management" and entity["url"]:
            item["authorizationUrl"] = entity["url"]
            entity["mapped"] = True
            r.entity_uses.append((entity, v[1]))
        elif entity["role"] == "provider" and entity["person"]:
            item["provider"] = {"reference": f"#{entity['id']}"}
            r.contained[entity["id"]] = entity["resource"]
            entity["mapped"] = True
            r.entity_uses.append((entity, v[1]))
    if "authorizationUrl" not in item and authorization is True:
        urls = [e["url"] for e in entities if e["url"]]
        if urls:
            item["authorizationUrl"] = urls[0]
    return item


def _procedure(r: _Response, comps: list[str], loop: Loop, eb: Segment) -> dict[str, Any]:
    """EB13-1 and EB13-2 (a code, which the caller checked) as a CodeableConcept; no system without a qualifier."""
    qualifier, code = comps[0], comps[1]
    if not qualifier:
        return {"coding": [{"code": code}]}
    system = r.tables.t["procedures"]["from_x12"].get(qualifier)
    if system is None:
        # a qualifier the table does not list names its system in the X12 one, percent-encoded (a URI has no white
        # space), and is noted (mappings/translate/procedures.yaml, on_missing from_x12)
        _refuse_if_required(r, "procedures", qualifier, loop, eb, "EB13-1")
        system = r.tables.x12_system(f"235/{quote(qualifier, safe='')}")
        r.note(f"procedure code list qualifier {quoted(qualifier)} (EB13-1) is not an X279A1 code: procedure "
               f"{quoted(code)} is kept under the X12 qualifier's system", loop, eb)
    return {"coding": [{"system": system, "code": code}]}


def _reference_name(tables: Tables, qualifier: str) -> str:
    """What a REF01 qualifier names, for a note: its name, else the code; a REF without REF01 still says what it is."""
    return tables.t["references"]["names"].get(qualifier, qualifier) or "reference without a qualifier (REF01)"


def us_zip(n4: Segment, tables: Tables) -> str:
    """N403 as a US address writes it: a nine-digit ZIP+4 with its hyphen (62701-1234); anything else as sent."""
    code, country = n4.get(3), n4.get(4)
    us = not country or country.upper() in tables.t["addresses"]["us_country"]
    return f"{code[:5]}-{code[5:]}" if len(code) == 9 and code.isdigit() and us else code


def _row_named(tables: Tables, v: list[str], stcs: list[str]) -> str:
    """An EB row as a reader tells it from its neighbours: ``EB C IND 30: Deductible, Remaining, in network``.
    The deductible's total and its remainder, in and out of network, each carry a date of their own."""
    words = [tables.display("eligibility_benefit", v[1])]
    if v[6]:
        words.append(tables.display("time_period", v[6]))
    if v[12]:
        words.append((tables.t["network"]["codes"].get(v[12]) or {}).get("display") or f"EB12 {v[12]}")
    return " ".join(filter(None, ("EB", v[1], v[2], ",".join(stcs)))) + f": {', '.join(words)}"


def _amount(r: _Response, loop: Loop, eb: Segment, v: list[str], info: dict[str, Any], item: dict[str, Any],
            dates: tuple[tuple[str, str], ...]) -> _Fact | None:
    """Fill item.benefit from EB06-EB10 (``v``, the EB's elements); returns a fact when it is a total, remainder or
    met amount (``dates``: its loop's DTPs)."""
    tables = r.tables
    eb01 = v[1]
    coding = [r.coding("eligibility_benefit", "1390", eb01)]
    benefit_type = info.get("benefit_type")
    by_quantity = info.get("benefit_type_by_quantity")
    if by_quantity:
        benefit_type = by_quantity.get(v[9]) or benefit_type
    if benefit_type:
        coding.insert(0, {"system": tables.systems["benefit_type"], "code": benefit_type})
    benefit: dict[str, Any] = {"type": {"coding": coding, "text": info["display"]}}
    period = tables.code("time_period", v[6]) if v[6] else None
    amount_kind = period.get("amount", "other") if period else "other"
    money = _number(v[7]) if v[7] else None
    placeholder = v[7] in r.placeholder_amounts
    if info.get("allowed_string"):
        benefit["allowedString"] = info["allowed_string"]
    if placeholder:
        unlimited = tables.t["quirks"]["placeholder_unlimited"]
        if eb01 in unlimited["eb01"]:   # Limitations, Unlimited: no maximum
            benefit["allowedString"] = unlimited["allowed_string"]
            r.note(f"amount {v[7]} is a 'no maximum' placeholder, read as {unlimited['allowed_string']}", loop, eb)
        else:
            r.note(f"amount {v[7]} is a 'no maximum' placeholder: no amount applies (left out)", loop, eb)
        money = None
    elif v[7] and money is None:
        r.note(f"amount {quoted(v[7])} is not a number", loop, eb)
    elif money is not None and money < 0:
        # a benefit allows, or has used, no negative amount: as with more than two decimals, carried as sent or not
        # at all (and a remainder below zero would derive a used amount above the total)
        r.note(f"amount {quoted(v[7])} is negative: not an amount a benefit allows or has used (left out)", loop, eb)
        money = None
    elif money is not None and (problem := _money_problem(money)) is not None:
        # rounded or cut, it would be another amount than the payer's: the note keeps it as sent
        r.note(f"amount {quoted(v[7])} {problem}: not an amount FHIR Money holds as sent (left out)", loop, eb)
        money = None
    elif money is not None:
        slot = "usedMoney" if amount_kind == MET else "allowedMoney"
        if amount_kind != REMAINING and slot == "allowedMoney" and "allowedString" in benefit:
            # EB01 H (Unlimited) with an amount: one benefit holds one allowed value (allowed[x]); the code's came first
            item["description"] = "; ".join(filter(None, [item.get("description"), f"amount {v[7]}"]))
            r.note(f"amount {v[7]} given together with {benefit['allowedString']!r} ({info['display']}); kept in the "
                   "item description", loop, eb)
            money = None
        elif amount_kind != REMAINING:
            benefit[slot] = {"value": _json_number(money), "currency": r.currency}
    if v[8]:
        percent = _number(v[8])
        if percent is None or percent < 0:
            r.note(f"percent {quoted(v[8])} is not a number from 0 up", loop, eb)
        elif _slot(benefit, "allowed") is not None:
            # one benefit holds one allowed value (allowed[x]): the amount came first, the percent is noted
            text = f"percent {v[8]}"
            item["description"] = "; ".join(filter(None, [item.get("description"), text]))
            r.note(f"percent {v[8]} given together with an amount; kept in the item description", loop, eb)
        else:
            if percent > 1 and tables.t["quirks"]["percent_over_one_is_whole_percent"]:
                r.note(f"percent {v[8]} sent as a percentage, not a fraction (.2 = 20 %); read as {percent}%",
                       loop, eb)
                whole = percent
            else:
                whole = percent * 100
            if whole == whole.to_integral_value() and whole <= _MAX_UNSIGNED_INT:
                benefit["allowedUnsignedInt"] = int(whole)
            else:
                benefit["allowedString"] = f"{whole.normalize():f}%"
    quantity = None
    quantity_left_out = False   # a negative EB10: as a negative EB07, no value a benefit allows or has used
    if v[9] or v[10]:
        qualifier = v[9]
        q_info = tables.code("quantity_qualifier", qualifier)
        if qualifier and q_info is None:
            _refuse_if_required(r, "quantity_qualifier", qualifier, loop, eb, "EB09")
            r.note(f"quantity qualifier {quoted(qualifier)} is not an X279A1 code", loop, eb)
        q_info = q_info or {}
        slot = q_info.get("slot", "note")
        quantity = _number(v[10])
        label = q_info.get("display", f"quantity qualifier {qualifier}")
        if quantity is not None and quantity < 0:
            # carried as sent (allowedString "-5") it would read as an allowance; a remainder below zero would derive
            # a used quantity above the total
            r.note(f"{label} {quoted(v[10])} is negative: not a quantity a benefit allows or has used (left out)",
                   loop, eb)
            quantity, quantity_left_out = None, True
        elif slot == "note" or quantity is None:
            text = f"{label}: {v[10]}"
            item["description"] = "; ".join(filter(None, [item.get("description"), text]))
            if slot == "note":
                r.note(f"{label} {v[10]} has no FHIR benefit slot (kept in the item description)", loop, eb)
        elif amount_kind != REMAINING:
            field_name = "used" if (slot == "used" or amount_kind == MET) else "allowed"
            if _slot(benefit, field_name) is not None:
                # one benefit holds one allowed (and one used) value: an amount was already given
                text = f"{label}: {v[10]}"
                item["description"] = "; ".join(filter(None, [item.get("description"), text]))
                r.note(f"{label} {v[10]} given together with an amount; kept in the item description", loop, eb)
            elif quantity == quantity.to_integral_value() and 0 <= quantity <= _MAX_UNSIGNED_INT:
                benefit[f"{field_name}UnsignedInt"] = int(quantity)
            else:
                benefit[f"{field_name}String"] = f"{quantity.normalize():f}"
    item["benefit"] = [benefit]
    if amount_kind in _MATCHED_KINDS and (money is not None or (v[10] and not quantity_left_out)):
        category = item.get("category")   # a service type's; a procedure row has none
        key = (eb01, v[2], category["coding"][0].get("code") if category else None, v[4], v[12], v[13], v[9])
        # lifetime (32, 33): a lifetime remainder matches a lifetime total only
        family = period.get("family", "period") if period else "period"
        return _Fact(key, amount_kind, family, loop, eb, item, benefit, money if money is not None else quantity,
                     dates)
    return None


def _slot(benefit: dict[str, Any], prefix: str) -> str | None:
    """The benefit's ``allowed[x]`` or ``used[x]`` key (by ``prefix``), if it has one: it holds one of each."""
    for key in benefit:
        if key.startswith(prefix):
            return key
    return None


def _match_amounts(r: _Response, facts: list[_Fact]) -> None:
    """Totals become items; a remaining or met amount fills ``used`` of its matching total.

    A remainder belongs to a total of the same benefit (EB01-EB04, EB09, EB12, EB13, period or lifetime) and the
    same dates, when the loops give dates (a prior and a current year's deductible differ only by their DTP);
    of several, the first not yet matched, in the order the payer sent them. A total takes one remaining and
    one met amount; a further one, or one that matches nothing, is kept in its own item's description.
    """
    totals = [fact for fact in facts if fact.kind == TOTAL]
    of_row: dict[tuple[tuple, str], list[int]] = {}   # (key, family) -> the indices of its totals, in order
    for i, total in enumerate(totals):
        of_row.setdefault((total.key, total.family), []).append(i)
    taken: set[tuple[int, str]] = set()   # (index of the total, kind of amount it was matched with)
    for fact in facts:
        if fact.kind == TOTAL:
            r.items.append(fact.item)
            continue
        same = [i for i in of_row.get((fact.key, fact.family), ()) if (i, fact.kind) not in taken]
        dated = [i for i in same if totals[i].dates == fact.dates]
        undated = [i for i in same if not totals[i].dates or not fact.dates]
        chosen = (dated or undated or [None])[0]
        total = totals[chosen] if chosen is not None else None
        kind_word = "remaining" if fact.kind == REMAINING else "met so far"
        if total is None or fact.money is None or total.money is None:
            shown = f"{fact.money:f}" if fact.money is not None else "?"
            if fact.kind == MET:
                r.items.append(fact.item)  # usedMoney/usedUnsignedInt already set
            else:
                fact.item["description"] = "; ".join(filter(None, [fact.item.get("description"),
                                                                    f"Remaining: {shown}"]))
                r.items.append(fact.item)
                r.note(f"{kind_word} amount {shown} without a matching total: FHIR has no 'remaining' slot "
                       "(kept in the item description)", fact.loop, fact.seg)
            continue
        taken.add((chosen, fact.kind))
        extra = fact.item.get("description")
        if extra and extra not in (total.item.get("description") or ""):
            total.item["description"] = "; ".join(filter(None, [total.item.get("description"), extra]))
        used = total.money - fact.money if fact.kind == REMAINING else fact.money
        if used < 0:   # more left (or met) than the total: the payer's figures disagree; FHIR gets neither guess
            r.note(f"{kind_word} amount {fact.money:f} is more than the total {total.money:f}; no used amount "
                   "is derived", fact.loop, fact.seg)
            continue
        slot = _slot(total.benefit, "used")
        if slot is not None and _used_value(total.benefit[slot]) != used:
            # the other amount (remaining or met) gave a different one: it stays, and the disagreement is said
            r.note(f"{kind_word} amount {fact.money:f} gives a used amount of {used:f} for the total "
                   f"{total.money:f}, which has {_used_value(total.benefit[slot])} from the payer's other amount",
                   fact.loop, fact.seg)
            continue
        is_money = any(k.endswith("Money") for k in total.benefit)
        if slot is not None:
            pass   # the met and the remaining amount agree
        elif is_money and (problem := _money_problem(used)) is not None:   # a negative remainder can lengthen it
            r.note(f"{kind_word} amount {fact.money:f} gives a used amount of {used:f} for the total "
                   f"{total.money:f}, which {problem}; no used amount is derived", fact.loop, fact.seg)
            continue
        elif is_money:
            total.benefit["usedMoney"] = {"value": _json_number(used), "currency": r.currency}
        elif used == used.to_integral_value() and used <= _MAX_UNSIGNED_INT:
            total.benefit["usedUnsignedInt"] = int(used)
        else:
            total.benefit["usedString"] = f"{used:f}"
        r.map(fact.seg)
        if fact.kind == REMAINING:
            r.notes.append(Note(text=f"used {used:f} derived as total {total.money:f} minus remaining "
                                     f"{fact.money:f}", source=r.where(fact.loop, fact.seg),
                                raw=fact.seg.to_x12(), kind="display"))
            r.noted.add(fact.seg.position)


def _used_value(value: Any) -> Decimal | None:
    """A used amount already on a benefit (usedMoney, usedUnsignedInt or usedString), as a number."""
    number = value.get("value") if isinstance(value, dict) else value
    try:
        return Decimal(str(number))
    except InvalidOperation:
        return None


def _hsd_text(r: _Response, loop: Loop, seg: Segment) -> str:
    parts = []
    if seg.get(1) or seg.get(2):
        unit = (r.tables.code("quantity_qualifier", seg.get(1)) or {}).get("display", seg.get(1))
        parts.append(f"{seg.get(2)} {unit}")
    if seg.get(3) or seg.get(4):
        parts.append(f"per {seg.get(4) or 1} {seg.get(3)}")
    if seg.get(5) or seg.get(6):
        period = r.tables.display("time_period", seg.get(5)) if seg.get(5) else ""
        if seg.get(5) and r.tables.code("time_period", seg.get(5)) is None:
            _refuse_if_required(r, "time_period", seg.get(5), loop, seg, "HSD05")
            r.note(f"time period {quoted(seg.get(5))} (HSD05) is not an X279A1 code", loop, seg)
        parts.append(f"{seg.get(6)} {period}".strip())
    if seg.get(7):
        parts.append(f"delivery frequency {seg.get(7)}")
    if seg.get(8):
        parts.append(f"delivery time {seg.get(8)}")
    return "Delivery: " + ", ".join(p for p in parts if p.strip())


def _iii_text(tables: Tables, seg: Segment) -> str:
    """A 2115 III as the item's description tells it: the code III01 qualifies (``Place of service 11``, ``Nature of
    injury 52``), then the text III04 with what III03 says it is (``Nature of injury: broken leg``)."""
    qualifiers = tables.t["qualifiers"]
    category = qualifiers["information_category"].get(seg.get(3)) if seg.get(3) else None   # 44: Nature of injury
    rest = (f"{category}: {seg.get(4)}" if seg.get(4) else category) if category else \
        " ".join(v for v in (seg.get(3), seg.get(4)) if v)   # III03 code category, III04 free text
    if not seg.get(1):
        return (rest if category else f"Information {rest}").strip()
    named = qualifiers["additional_information"].get(seg.get(1))   # ZZ: Place of service
    text = f"{named or f'Additional information {seg.get(1)}'} {seg.get(2)}".strip()
    return f"{text} ({rest})" if rest else text


# -- 2120 entities ----------------------------------------------------------------------------

def _contact_text(seg: Segment) -> str:
    parts = [seg.get(2)] if seg.get(2) else []
    for q, v in ((seg.get(3), seg.get(4)), (seg.get(5), seg.get(6)), (seg.get(7), seg.get(8))):
        if q and v:
            parts.append(f"{q} {v}")
    return ", ".join(parts)


def _entities(r: _Response, loop: Loop) -> list[dict[str, Any]]:
    """Each 2120 loop of an EB, with its role from the entity table."""
    subs = [item for item in loop.body if item.__class__ is Loop and item.id.startswith("2120")]
    if not subs:
        return []
    table = r.tables.t["entities"]
    provider_level = r.tables.t["references"]["provider_level"]   # PRV02 -> what PRV03 is
    out = []
    for sub in subs:
        nm1 = sub.segment("NM1")
        if nm1 is None:
            _unclaimed(r, sub)
            continue
        info = table["codes"].get(nm1.get(1))
        if info is None:   # noted with its code, as entities with the role note are
            _refuse_if_required(r, "entities", nm1.get(1), sub, nm1, "NM101")
            info = {"role": "note", "display": f"entity {nm1.get(1)}"}
        url = None
        contacts = []
        for per in sub.segments_of("PER"):
            contacts.append(_contact_text(per))
            for q, v in ((per.get(3), per.get(4)), (per.get(5), per.get(6)), (per.get(7), per.get(8))):
                if q in table["url_qualifiers"] and v and url is None and any(c.isspace() for c in v):
                    r.note(f"URL {quoted(v)} has white space in it: not used as a URL", sub, per)
                elif q in table["url_qualifiers"] and v and url is None:
                    url = v
                    if "://" not in url:
                        # no scheme, or a scheme whose colon was a delimiter (HTTPS//...)
                        url = "https://" + re.sub(r"^https?//", "", url, flags=re.IGNORECASE)
                        r.note(f"URL {v} has no scheme; https:// added", sub, per)
        _check_identification(r, sub, nm1)
        identifier = r.tables.identifier(nm1.get(8), nm1.get(9))
        person = _check_entity_type(r, sub, nm1, info["display"], "organization") == "person"
        entity_id = _ID_UNSAFE.sub("-", f"{info['role']}-{loop.parent.id if loop.parent else ''}-{nm1.position}")
        resource: dict[str, Any] = {}
        name = " ".join(v for v in (nm1.get(4), nm1.get(3)) if v) if person else nm1.get(3)
        prv = sub.segment("PRV")
        if prv is not None and prv.get(2) not in provider_level:
            _check_reference(r, sub, prv, "PRV02")
        if info["role"] == "provider" and person:
            given = [v for v in (nm1.get(4), nm1.get(5)) if v]   # first and middle name
            human = {k: v for k, v in (("family", nm1.get(3)), ("given", given),
                                       ("suffix", [nm1.get(7)] if nm1.get(7) else None)) if v}
            resource = {"resourceType": "Practitioner", "id": entity_id, **({"name": [human]} if human else {})}
            if identifier is not None:   # XX: the NPI
                resource["identifier"] = [identifier]
            # PRV03 is a qualification when PRV02 says it is a taxonomy (PXC); any other PRV is noted
            if prv is not None and prv.get(3) and provider_level.get(prv.get(2)) == "taxonomy":
                resource["qualification"] = [{"code": {"coding": [{"system": r.tables.systems["taxonomy"],
                                                                   "code": fhir_code(prv.get(3))}]}}]
        out.append({"role": info["role"], "display": info["display"], "loop": sub, "nm1": nm1, "url": url,
                    "contacts": contacts, "person": person, "id": entity_id, "resource": resource,
                    "name": name, "ident": (nm1.get(8), nm1.get(9)), "identifier": identifier,
                    "order": info.get("order"), "mapped": False})
    return out


def _entities_in_no_item(r: _Response) -> None:
    """An entity an item referred to, when no item of the response refers to it any more: its row was only noted
    (an EB01 with no FHIR meaning), merged into its total (a remaining amount), or a later entity of the same row
    took its place. Its contained resource goes (dom-3: every contained resource is referenced) and the segments
    mapped for it are noted instead."""
    if not r.entity_uses:
        return
    providers = {item["provider"]["reference"] for item in r.items if "provider" in item}
    urls = {item["authorizationUrl"] for item in r.items if "authorizationUrl" in item}
    done: set[int] = set()
    for e, eb01 in r.entity_uses:
        if id(e) in done:
            continue
        done.add(id(e))
        if e["role"] == "provider":
            if f"#{e['id']}" in providers:
                continue
            r.contained.pop(e["id"], None)
        elif e["url"] in urls:
            continue
        sub = e["loop"]
        for seg in sub.segments:
            if seg.position not in r.mapped:
                continue
            r.mapped.discard(seg.position)
            said = _entity_text(e) if seg.id == "NM1" else f"{e['display']} {e['name']}: {seg.id} " + " ".join(
                x for x in seg.elements if x)
            r.note(f"EB {eb01}: {said} (no item of the response refers to it)", sub, seg)


def _provider_code_text(tables: Tables, prv: Segment) -> str:
    """What a PRV says that is no taxonomy, for a note: PRV03 with what its PRV02 qualifier names it."""
    references = tables.t["references"]
    qualifier, name = prv.get(2), references["names"].get(prv.get(2))
    said = (f"{with_article(name)} (PRV02 {qualifier})" if name else f"PRV02 {quoted(qualifier)}, not a known qualifier"
            if qualifier else "without a qualifier (PRV02 is empty)")
    taxonomy = ", ".join(k for k, v in references["provider_level"].items() if v == "taxonomy")   # PXC
    return (f"PRV03 {quoted(prv.get(3))} is {said}: only a provider taxonomy (PRV02 {taxonomy}) is carried, as the "
            "Practitioner's qualification")


def _entity_text(e: dict[str, Any]) -> str:
    ident = f" {e['ident'][0]} {e['ident'][1]}" if e["ident"][1] else ""
    contacts = f" ({'; '.join(e['contacts'])})" if e["contacts"] else ""
    return f"{e['display']}: {e['name']}{ident}{contacts}"


def _entity_notes(r: _Response, loop: Loop, eb01: str, entities: list[dict[str, Any]], maps_to: str) -> None:
    """Map what the entity became, note the rest (addresses, phone numbers, organisations)."""
    if not entities:
        return
    for e in entities:
        sub = e["loop"]
        for seg in sub.segments:
            if seg.id == "NM1":
                if e["role"] == "utilization-management" and e["mapped"]:
                    r.note(f"EB {eb01}: authorization through {_entity_text(e)} (its URL is the item's "
                           "authorizationUrl)", sub, seg)
                elif e["mapped"]:
                    r.map(seg)
                    if e["ident"][1] and e["identifier"] is None:
                        # an id the FHIR resource has no system for (SV, XV ...) is not lost
                        r.note(f"EB {eb01}: {e['display']} {e['name']} identified by {e['ident'][0]} "
                               f"{e['ident'][1]} ({r.tables.unidentified(e['ident'][0])})", sub, seg)
                elif maps_to == "contact":
                    r.note(f"EB {eb01}: for these benefits contact {_entity_text(e)}", sub, seg)
                else:
                    r.note(f"EB {eb01}: {_entity_text(e)}", sub, seg)
            elif seg.id == "PRV" and e["resource"].get("qualification"):
                r.map(seg)
            elif seg.id == "PRV" and e["resource"] and seg.get(3):
                # a Practitioner whose PRV03 is no taxonomy (PRV02 other than PXC): its qualification holds a
                # taxonomy only, where an NPI or a tax id would read as one
                r.note(f"{e['display']} {e['name']}: {_provider_code_text(r.tables, seg)}", sub, seg)
            elif seg.id == "PER" and e["url"] and e["mapped"] and e["role"] == "utilization-management":
                r.map(seg)  # its URL is authorizationUrl; its other contacts are in the NM1 note
            else:
                r.note(f"{e['display']} {e['name']}: {seg.id} {' '.join(x for x in seg.elements if x)}", sub, seg)


def _other_payer(r: _Response, loop: Loop, eb: Segment, entities: list[dict[str, Any]]) -> None:
    """EB*R: another coverage the patient has -> an extra insurance entry with a contained Coverage."""
    n = len(r.extra_insurance) + 1
    coverage_id, payer_id = f"other-coverage-{n}", f"other-payer-{n}"
    payer = next((e for e in entities if e["role"] == "other-payer"), None)
    if payer is not None:
        payer["mapped"] = True   # the others (a second other payer ...) are noted with the entities
    named = payer["name"] if payer and payer["name"] else "Other payer (not named by the payer)"   # org-1 wants one
    organization: dict[str, Any] = {"resourceType": "Organization", "id": payer_id, "name": named}
    if payer and payer["identifier"] is not None:   # by its NM108: a payer id (PI), a tax id ...; else noted
        organization["identifier"] = [payer["identifier"]]
    coverage: dict[str, Any] = {"resourceType": "Coverage", "id": coverage_id, "status": "active",
                                "beneficiary": {"reference": "#patient"}, "payor": [{"reference": f"#{payer_id}"}]}
    if payer and payer.get("order"):
        coverage["order"] = payer["order"]
    if eb.get(4):
        coverage["type"] = {"coding": [r.coding("insurance_type", "1336", eb.get(4))]}
    classes = r.tables.t["references"]["patient_level"]   # group, plan: Coverage.class
    identifiers = r.tables.t["references"]["other_coverage_identifiers"]   # IG: Coverage.identifier
    for ref in loop.segments_of("REF"):
        kind = classes.get(ref.get(1))
        if (kind or ref.get(1) in identifiers) and ref.get(2):   # each needs its value
            if kind:
                coverage.setdefault("class", []).append(
                    {"type": {"coding": [{"system": r.tables.systems["coverage_class"], "code": kind}]},
                     "value": ref.get(2), **({"name": ref.get(3)} if ref.get(3) else {})})
            else:
                coverage.setdefault("identifier", []).append(
                    {"type": {"text": r.tables.t["references"]["names"].get(ref.get(1), ref.get(1))},
                     "value": ref.get(2)})
            if kind or not ref.get(3):   # an identifier has no place for REF03: its note (which shows it) stays
                r.noted.discard(ref.position)
                r.notes[:] = [n_ for n_ in r.notes if not n_.source.endswith(f"REF@{ref.position}")]
            r.map(ref)
    if eb.get(5):
        plans = [c for c in coverage.get("class", []) if c["type"]["coding"][0]["code"] == "plan"]
        if plans:
            plans[0].setdefault("name", eb.get(5))
        else:
            coverage.setdefault("class", []).append(
                {"type": {"coding": [{"system": r.tables.systems["coverage_class"], "code": "plan"}]},
                 "value": eb.get(5), "name": eb.get(5)})
    r.contained[coverage_id] = coverage
    r.contained[payer_id] = organization
    r.extra_insurance.append({"coverage": {"reference": f"#{coverage_id}"}})


# -- assembling the resource -------------------------------------------------------------------

def _assemble(r: _Response, payer_loop: Loop | None, receiver: Loop | None, name_loop: Loop | None,
              sub_name_loop: Loop | None, has_patient: bool) -> dict[str, Any]:
    tables, ctx = r.tables, r.context
    systems = tables.systems
    patient_person: _Person = r.persons.get("patient") or _Person()
    subscriber_person: _Person | None = r.persons.get("subscriber")
    contained: list[dict[str, Any]] = []

    # who the response is about
    if ctx and ctx.patient:
        patient_ref = ctx.patient
    else:
        patient = {"resourceType": "Patient", "id": "patient"}
        if patient_person.family or patient_person.given:
            patient["name"] = [{k: v for k, v in (("family", patient_person.family),
                                                   ("given", patient_person.given),
                                                   ("suffix", [patient_person.suffix] if patient_person.suffix
                                                    else None)) if v}]
        if patient_person.member_id:
            patient["identifier"] = [{"type": {"coding": [dict(systems["member_id_type"])]},
                                      "system": systems["member_id_system"], "value": patient_person.member_id}]
        if patient_person.identifiers:   # under another NM108 (an NPI, a tax id): the system it names
            patient.setdefault("identifier", []).extend(patient_person.identifiers)
        if patient_person.birth_date:
            patient["birthDate"] = patient_person.birth_date
        if patient_person.gender:
            patient["gender"] = patient_person.gender
        if patient_person.address:
            patient["address"] = [patient_person.address]
        contained.append(patient)
        patient_ref = {"reference": "#patient"}

    # the payer
    payer_nm1 = payer_loop.segment("NM1") if payer_loop is not None else None
    if ctx and ctx.insurer:
        insurer_ref = ctx.insurer
    else:
        organization: dict[str, Any] = {"resourceType": "Organization", "id": "payer",
                                        "name": payer_nm1.get(3) if payer_nm1 and payer_nm1.get(3) else "Payer"}
        if payer_nm1 is not None and payer_nm1.get(9):
            # the payer id (PI) is one of the ids X279A1 names a payer by: a tax id, an NPI or a NAIC code goes under
            # its own system, and one FHIR has no system for (XV, 46) is noted
            identifier = tables.identifier(payer_nm1.get(8), payer_nm1.get(9))
            if identifier is not None:
                organization["identifier"] = [identifier]
            elif payer_loop is not None:
                r.note(f"payer identified by {payer_nm1.get(8)} {payer_nm1.get(9)} "
                       f"({tables.unidentified(payer_nm1.get(8))})", payer_loop, payer_nm1)
        contained.append(organization)
        insurer_ref = {"reference": "#payer"}

    # the coverage asked about (only when there is an insurance entry to hold it)
    coverage_ref: dict[str, Any] = {}
    if ctx and ctx.coverage:
        coverage_ref = ctx.coverage
    elif has_patient or r.items:
        holder = subscriber_person or patient_person
        coverage: dict[str, Any] = {"resourceType": "Coverage", "id": "coverage", "status": "active",
                                    "beneficiary": dict(patient_ref), "payor": [insurer_ref]}
        if holder.member_id:
            coverage["subscriberId"] = holder.member_id
        # the patient is the subscriber (self) when no other person is
        relationship = patient_person.relationship or (r.tables.t["relationship"]["subscriber"][0]
                                                       if subscriber_person is None else None)
        if relationship:
            coverage["relationship"] = {"coding": [{"system": systems["relationship"], "code": relationship}]}
        if subscriber_person is not None:
            subscriber = {"resourceType": "Patient", "id": "subscriber"}
            name = {k: v for k, v in (("family", subscriber_person.family), ("given", subscriber_person.given),
                                      ("suffix", [subscriber_person.suffix] if subscriber_person.suffix else None))
                    if v}
            if name:   # an NM1 without a name (or none at all) gives none; an empty HumanName is no FHIR (ele-1)
                subscriber["name"] = [name]
            if subscriber_person.birth_date:
                subscriber["birthDate"] = subscriber_person.birth_date
            if subscriber_person.gender:
                subscriber["gender"] = subscriber_person.gender
            if subscriber_person.address:
                subscriber["address"] = [subscriber_person.address]
            if subscriber_person.member_id:
                subscriber["identifier"] = [{"type": {"coding": [dict(systems["member_id_type"])]},
                                             "system": systems["member_id_system"],
                                             "value": subscriber_person.member_id}]
            if subscriber_person.identifiers:
                subscriber.setdefault("identifier", []).extend(subscriber_person.identifiers)
            contained.append(subscriber)
            coverage["subscriber"] = {"reference": "#subscriber"}
        classes = (subscriber_person.groups if subscriber_person else []) + patient_person.groups
        if classes:
            coverage["class"] = [{"type": {"coding": [{"system": systems["coverage_class"], "code": c["type"]}]},
                                  "value": c["value"], **({"name": c["name"]} if c["name"] else {})}
                                 for c in classes]
        period = patient_person.period or (subscriber_person.period if subscriber_person else {})
        if period:
            coverage["period"] = period
        contained.append(coverage)
        coverage_ref = {"reference": "#coverage"}

    if ctx and ctx.contained:
        contained = [*ctx.contained, *[c for c in contained if c["id"] not in {x.get("id") for x in ctx.contained}]]
    copies = {id(c) for c in ctx.contained} if ctx else set()   # the request's resources, copied for the response
    for resource in r.contained.values():
        if resource:
            if resource["resourceType"] == "Coverage":   # another coverage (EB*R) of this patient: the request's
                resource["beneficiary"] = dict(patient_ref)   # Patient in the gateway, where no #patient is contained
            contained.append(resource)

    insurance: list[dict[str, Any]] = []
    if has_patient or r.items:
        entry: dict[str, Any] = {"coverage": coverage_ref}
        if r.inforce is not None:
            entry["inforce"] = r.inforce
        if r.benefit_period:
            entry["benefitPeriod"] = r.benefit_period
        if r.items:
            entry["item"] = r.items
        insurance.append(entry)
        insurance.extend(r.extra_insurance)

    bht03 = next((i["value"] for i in r.identifiers if i["system"].endswith("bht03")), r.txn.control_number)
    request_ref = ctx.request if ctx and ctx.request else (
        {"identifier": {"system": r.trace_systems[0], "value": r.traces[0]}} if r.traces else
        {"identifier": {"system": f"{systems['canonical_base']}/sid/bht03", "value": bht03}} if bht03 else
        # request is required, and a 271 cut short may name nothing that identifies it
        {"display": "not identified: the 271 has no trace number (TRN02), BHT03 or ST02"})
    outcome = "complete"
    if r.request_level_errors:
        outcome = "error"
    elif r.benefit_level_errors:
        outcome = "partial" if r.items else "error"
    resource: dict[str, Any] = {"resourceType": "CoverageEligibilityResponse", "id": r.id}
    if contained:
        resource["contained"] = contained   # its place in the order; the copies nothing uses are left out below
    if r.identifiers:
        resource["identifier"] = r.identifiers
    resource["status"] = "active"
    resource["purpose"] = (ctx.purpose if ctx and ctx.purpose
                           else ["benefits"] if r.has_benefits else ["validation"])
    resource["patient"] = patient_ref
    if ctx and ctx.serviced:
        resource.update(ctx.serviced)
    resource["created"] = r.now
    if ctx and ctx.provider:
        resource["requestor"] = ctx.provider
    elif receiver is not None:
        nm1 = receiver.loop("2100B").segment("NM1") if receiver.loop("2100B") else None
        qualifiers = tables.t["qualifiers"]
        person = nm1 is not None and qualifiers["entity_type"].get(nm1.get(2)) == "person"
        shown = (" ".join(v for v in (nm1.get(4), nm1.get(5), nm1.get(3)) if v) if person
                 else nm1.get(3)) if nm1 is not None else ""
        identifier = tables.identifier(nm1.get(8), nm1.get(9)) if nm1 is not None else None   # XX: the NPI
        if identifier is not None:
            resource["requestor"] = {"identifier": identifier, **({"display": shown} if shown else {})}
        elif shown:
            resource["requestor"] = {"display": shown}
    resource["request"] = request_ref
    resource["outcome"] = outcome
    resource["disposition"] = _disposition(r, outcome)
    resource["insurer"] = insurer_ref
    if insurance:
        resource["insurance"] = insurance
    if r.pre_auth:
        resource["preAuthRef"] = r.pre_auth
    if r.errors:
        resource["error"] = r.errors
    if copies:
        used = _used_contained(resource)
        kept = [c for c in contained if id(c) not in copies or c.get("id") in used]
        if kept:
            resource["contained"] = kept
        else:
            resource.pop("contained", None)
    return resource


def _used_contained(resource: dict[str, Any]) -> set[str]:
    """The ids of the contained resources ``resource`` references, directly or through one another (dom-3: every
    contained resource is referenced). A copy of the request's coverage is not when the payer's answer has no
    insurance to hold it (a rejection: AAA)."""
    by_id = {c.get("id"): c for c in resource.get("contained") or [] if isinstance(c, dict)}

    def local(value: Any) -> set[str]:
        if isinstance(value, list):
            return set().union(*(local(v) for v in value)) if value else set()
        if not isinstance(value, dict):
            return set()
        found = set().union(*(local(v) for k, v in value.items() if k != "contained")) if value else set()
        reference = value.get("reference")
        if isinstance(reference, str) and reference.startswith("#") and len(reference) > 1:
            found.add(reference[1:])
        return found

    used: set[str] = set()
    todo = local(resource)
    while todo:
        name = todo.pop()
        if name not in used and name in by_id:
            used.add(name)
            todo |= local(by_id[name])
    return used


def _disposition(r: _Response, outcome: str) -> str:
    if outcome == "error":
        reasons = r.request_level_errors or r.benefit_level_errors
        return ("Not answered: " if r.unanswered else "Rejected by the payer: ") + "; ".join(reasons)
    status = {True: "Coverage active", False: "Coverage not active", None: "Coverage status not stated"}[r.inforce]
    parts = [status, f"{len(r.items)} benefit item(s)"]
    if outcome == "partial":
        parts.append("not answered: " + "; ".join(r.benefit_level_errors))
    return "; ".join(parts)


def _with_notes(r: _Response, resource: dict[str, Any]) -> dict[str, Any]:
    if not r.notes:
        return resource
    systems = r.tables.systems
    extensions = process_note_extensions(r.notes, systems["process_note_extension"], systems["note_type"])
    ordered: dict[str, Any] = {"resourceType": resource.pop("resourceType"), "id": resource.pop("id")}
    if "contained" in resource:
        ordered["contained"] = resource.pop("contained")
    ordered["extension"] = extensions
    ordered.update(resource)
    resource.clear()
    resource.update(ordered)
    text = resource.get("disposition", "")
    resource["disposition"] = f"{text}; {len(r.notes)} note(s) on what X12 could not carry" if text else text
    return resource
