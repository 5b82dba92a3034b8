"""Lenient X12 reader: envelopes, transactions and the 270/271 loop tree, streamed.

Reads what real payers send (see DESIGN §5), reports every defect as a Finding with its location,
and raises X12SyntaxError only for input that cannot be understood at all. Memory is bounded by
one transaction, or by one subscriber loop when the caller asks for loops to be handed over as
soon as they are complete (``stream_loops``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date

from gateway.errors import MappingError, X12SyntaxError, quoted
from gateway.x12.model import (
    Delimiters,
    Finding,
    Group,
    Interchange,
    Loop,
    LoopTable,
    Segment,
    Transaction,
    whole_number,
)
from gateway.x12.structure import Reopen, TransactionSpec, Transition, known_segment_ids, load_transaction
from gateway.x12.tokenizer import Source, segment_id_is_valid, tokenize

FUNCTIONAL_IDS = {"270": "HS", "271": "HB", "999": "FA"}
ENVELOPE_IDS = frozenset({"ISA", "IEA", "GS", "GE"})
SUPPORTED_VERSIONS = ("00501", "00401")


class LoopEvent:
    """A completed loop handed over while streaming.

    ``loop`` is built on first access and must be read before the stream is advanced: the reader
    then forgets the loop's segments so memory stays bounded.
    """

    __slots__ = ("transaction", "index", "start", "end", "_loop")

    def __init__(self, transaction: Transaction, index: int, start: int, end: int) -> None:
        self.transaction = transaction
        self.index = index
        self.start = start
        self.end = end
        self._loop: Loop | None = None

    @property
    def loop_id(self) -> str:
        return self.transaction.table.loops[self.index][0]

    @property
    def loop(self) -> Loop:
        """The completed loop, attached (through ``parent``) to the transaction's enclosing loops."""
        if self._loop is None:
            self.transaction.build_until(self.start - 1)
            self._loop = self.transaction.table.subtree(self.index, self.start, self.end)
        return self._loop


@dataclass
class ReadResult:
    """Everything read from one source: transactions plus envelope-level findings."""

    transactions: list[Transaction] = field(default_factory=list)
    interchanges: list[Interchange] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def all_findings(self) -> list[Finding]:
        result = list(self.findings)
        for txn in self.transactions:
            result.extend(txn.findings)
        return result


class _TreeBuilder:
    """Places segments of one transaction in their loops (the slow path: loop changes, HL, errors).

    The reader's hot loop handles the common case (a segment that stays in its loop) itself and
    shares ``stack`` and the flat table with this builder.
    """

    __slots__ = ("spec", "txn", "table", "state", "stack", "detach", "emitted", "hl_loops", "known",
                 "last_hl", "hl_children", "hl_segments")

    def __init__(self, spec: TransactionSpec | None, txn: Transaction, detach: frozenset[str],
                 known: frozenset[str]) -> None:
        self.spec = spec
        self.txn = txn
        self.table = txn.table
        self.state = -1
        self.stack: list[int] = [0]
        self.detach = detach
        self.emitted: list[LoopEvent] = []
        self.hl_loops: dict[str, str] = {}
        self.known = known
        self.last_hl = 0
        self.hl_children: set[str] = set()
        self.hl_segments: list[tuple[list[str], int, str]] = []

    def add(self, raw: str, position: int) -> None:
        table = self.table
        spec = self.spec
        parts = raw.split(table.delimiters.element)
        move = spec.transition(self.state, parts[0], parts) if spec is not None else None
        if move is None and spec is not None and parts[0] != parts[0].strip():
            parts[0] = parts[0].strip()
            raw = table.delimiters.element.join(parts)
            move = spec.transition(self.state, parts[0], parts)
        if move is None:
            if spec is not None:
                self._misplaced(parts, position)
            table.segments.append(raw)  # stays in the current loop
            return
        self.apply(move, position)
        table.segments.append(raw)
        self.state = move.target.index
        if parts[0] == "HL":
            self._check_hl(parts, position)

    def apply(self, move: Transition, position: int) -> None:
        """Close and open loops for ``move``; ``position`` is the segment that opens them."""
        stack, loops, detach = self.stack, self.table.loops, self.detach
        for _ in range(move.close):
            index = stack.pop()
            if detach and loops[index][0] in detach:
                self._close(index, position - 1)
        for loop_spec in move.open:
            loops.append((loop_spec.loop_id, stack[-1], position))
            stack.append(len(loops) - 1)
        if move.close and not move.open:
            self.table.returns.append((position, stack[-1]))

    def finish(self, last_position: int) -> None:
        while len(self.stack) > 1:
            self._close(self.stack.pop(), last_position)
        for parts, position, loop_id in self.hl_segments:
            hl_id = parts[1].strip() if len(parts) > 1 else ""
            child_code = parts[4].strip() if len(parts) > 4 else ""
            has_child = hl_id in self.hl_children
            if child_code in ("0", "1") and (child_code == "1") != has_child:
                # a warning: the implementation guide's own rejection examples keep HL04 1
                self.txn.findings.append(Finding(
                    code="X12-HL-CHILD", severity="warning", level="element", ack_code="7", value=child_code,
                    message=f"HL04 says {'a child level follows' if child_code == '1' else 'no child level'}"
                            f" but HL {quoted(hl_id, bare=True)} {'has none' if child_code == '1' else 'has children'}",
                    transaction=self.txn.control_number, transaction_set=self.txn.set_id, loop=loop_id,
                    segment="HL", position=position, element="HL04", data_element="736",
                    set_ordinal=self.txn.ordinal))

    def _close(self, index: int, last_position: int) -> None:
        loop_id, _, start = self.table.loops[index]
        if loop_id in self.detach:
            self.emitted.append(LoopEvent(self.txn, index, start, last_position))

    def _misplaced(self, parts: list[str], position: int) -> None:
        seg_id = parts[0]
        loop_id = self.table.loops[self.stack[-1]][0]
        if not segment_id_is_valid(seg_id):
            code, ack, msg = "X12-SEGMENT-ID", "1", f"{quoted(seg_id)} is not a valid X12 segment id"
        elif seg_id in self.known:
            code, ack, msg = "X12-SEGMENT-UNEXPECTED", "2", f"segment {seg_id} is not expected here"
        else:
            code, ack, msg = "X12-SEGMENT-UNKNOWN", "1", f"unrecognized segment id {quoted(seg_id)}"
        self.txn.findings.append(Finding(
            code=code, message=f"{msg} (in loop {loop_id})", level="segment", ack_code=ack,
            transaction=self.txn.control_number, transaction_set=self.txn.set_id,
            loop=loop_id if loop_id != "ST" else "", segment=seg_id[:3], position=position,
            set_ordinal=self.txn.ordinal,
        ))

    def _check_hl(self, parts: list[str], position: int) -> None:
        """HL01 unique and in sequence, HL02 pointing at the enclosing level (runs once per HL)."""
        hl_id = parts[1].strip() if len(parts) > 1 else ""
        parent_id = parts[2].strip() if len(parts) > 2 else ""
        loops = self.table.loops
        index = self.stack[-1]
        loop_id, parent, _ = loops[index]
        if hl_id in self.hl_loops:
            self._hl_finding("X12-HL-DUPLICATE", f"HL01 {quoted(hl_id)} is used twice", "HL01", "7", hl_id, loop_id,
                             position)
        elif (number := whole_number(hl_id)) is not None and number != self.last_hl + 1:
            self._hl_finding("X12-HL-SEQUENCE", f"HL01 {quoted(hl_id, bare=True)} does not follow {self.last_hl}",
                             "HL01", "7", hl_id, loop_id, position, "warning")
        if (number := whole_number(hl_id)) is not None:
            self.last_hl = number
        self.hl_loops[hl_id] = loop_id
        self.hl_segments.append((parts, position, loop_id))
        if parent_id:
            self.hl_children.add(parent_id)
        # the enclosing HL level (2000x) this one must point to
        while parent > 0 and not loops[parent][0].startswith("2000"):
            parent = loops[parent][1]
        expected = loops[parent][0] if parent > 0 else ""
        if expected:
            actual = self.hl_loops.get(parent_id)
            if actual != expected:
                self._hl_finding("X12-HL-PARENT",
                                 f"HL02 {quoted(parent_id)} should point to the enclosing {expected} HL"
                                 + (f", not to a {actual} HL" if actual else ", which does not exist"),
                                 "HL02", "7" if parent_id else "1", parent_id, loop_id, position)
        elif parent_id:
            self._hl_finding("X12-HL-PARENT", f"HL02 must be empty at the top level ({loop_id})", "HL02", "I10",
                             parent_id, loop_id, position)

    def _hl_finding(self, code: str, message: str, element: str, ack: str, value: str, loop_id: str,
                    position: int, severity: str = "error") -> None:
        txn = self.txn
        txn.findings.append(Finding(
            code=code, message=message, severity=severity, level="element", ack_code=ack,
            transaction=txn.control_number, transaction_set=txn.set_id, loop=loop_id, segment="HL",
            position=position, element=element, value=value, data_element="628" if element == "HL01" else "734",
            set_ordinal=txn.ordinal))


class X12Reader:
    """Reads every interchange in a source; transactions come out one at a time.

    ``detach`` names loops (for example ``{"2000C"}``) that are handed over as LoopEvents when
    complete and then forgotten, so a 100,000-subscriber file is read in bounded memory.
    """

    def __init__(self, source: Source, *, detach: Iterable[str] = (), mappings: str | None = None) -> None:
        self.source = source
        self.detach = frozenset(detach)
        self.mappings = mappings
        self._ta1_notes: frozenset[str] | None = None   # TA105 codes, read at the first TA1
        self._ta1_statuses: tuple[str, ...] = ()   # TA104 codes, read with them
        self.findings: list[Finding] = []
        self.interchanges: list[Interchange] = []
        self._specs: dict[str, TransactionSpec | None] = {}
        self._known = known_segment_ids(mappings)
        self._sets = 0   # transaction sets opened so far: the next one's ordinal
        self._groups = 0   # functional groups opened so far: the next one's ordinal
        self._group_sets: set[str] = set()   # the ST02s of the open group (IK502 23 when one comes again)
        self._interchange_groups: set[str] = set()   # the GS06s of the open interchange (AK905 19 when one comes again)
        # each interchange's (sender, receiver, ISA13) -> its ordinal (TA105 025 when one comes again)
        self._controls: dict[tuple[str, str, str, str, str], int] = {}

    # -- public API --------------------------------------------------------------------------
    def transactions(self) -> Iterator[Transaction]:
        for event in self.events():
            if isinstance(event, Transaction):
                yield event

    def events(self) -> Iterator[Transaction | LoopEvent]:
        """Detached loops as they complete, then each transaction once its SE is read."""
        isa: Interchange | None = None
        gs: Group | None = None
        txn: Transaction | None = None
        builder: _TreeBuilder | None = None
        group_count = txn_count = position = ordinal = 0
        envelope_ids = ENVELOPE_IDS
        detach = self.detach
        # hot-path locals, valid while a transaction with a known structure is open
        states: list[dict] | None = None
        table: dict | None = None
        spec: TransactionSpec | None = None
        guard_reopen = False
        stack: list[int] = [0]
        segs: list = []
        loops: list = []
        returns: list = []
        for batch in tokenize(self.source):
            d = batch.delimiters
            sep = d.element
            raws, ids = batch.segments, batch.ids
            if batch.isa is not None:
                raws, ids = [sep.join(batch.isa), *raws], ["ISA", *ids]
            # only the id is needed to place a segment; elements are split when read
            for seg_id, raw in zip(ids, raws):  # noqa: B905 - same length by construction
                if table is not None:
                    # hot path: the compiled structure says where the segment goes
                    move = table.get(seg_id)
                    if move.__class__ is dict:  # stays in the current loop
                        segs.append(raw)
                        table = move
                        continue
                    if move.__class__ is Reopen and not guard_reopen:  # EB after EB: a new 2110C
                        loops.append((move.loop_id, stack[-2], len(segs) + 1))
                        stack[-1] = len(loops) - 1
                        segs.append(raw)
                        table = move.table
                        continue
                    position = len(segs) + 1
                    if move.__class__ is Reopen:
                        move = move.transition  # a detached loop closes: take the general path
                    if move.__class__ is Transition:
                        if detach and move.close and not detach.isdisjoint(move.closes):
                            builder.apply(move, position)  # type: ignore[union-attr]
                            if builder.emitted:  # type: ignore[union-attr]
                                yield from self._drain(builder)  # type: ignore[arg-type]
                        else:
                            if move.close:
                                del stack[-move.close:]
                            for loop_spec in move.open:
                                loops.append((loop_spec.loop_id, stack[-1], position))
                                stack.append(len(loops) - 1)
                            if not move.open:
                                returns.append((position, stack[-1]))
                        segs.append(raw)
                        table = states[move.target.index + 1]  # type: ignore[index]
                        continue
                if txn is not None and seg_id not in envelope_ids:
                    position = len(segs) + 1
                    # slow path: qualifiers, HL, misplaced segments, ST/SE
                    assert builder is not None
                    if table is not None:
                        builder.state = spec.state_of(table)  # type: ignore[union-attr]
                    if seg_id == "SE":
                        builder.add(raw, position)
                        builder.finish(position)
                        yield from self._drain(builder)
                        self._close_transaction(txn, Segment(raw.split(sep), position, d), position)
                        yield txn
                        txn, builder, states, table = None, None, None, None
                        continue
                    if seg_id == "ST":
                        self._add(txn, "X12-SE-MISSING",
                                  f"transaction {txn.control_number} has no SE before the next ST",
                                  "transaction", "2", segment="ST", position=position)
                        builder.finish(position - 1)
                        yield from self._drain(builder)
                        yield txn
                        txn, states, table = None, None, None
                    else:
                        builder.add(raw, position)
                        if states is not None:
                            table = states[builder.state + 1]
                        if builder.emitted:
                            yield from self._drain(builder)
                        continue
                ordinal += 1
                # the ISA as parse_isa read it: its elements were found by the fixed layout when ISA11 is the
                # element separator itself, which splitting the joined text again would undo
                parts = list(batch.isa) if batch.isa is not None and raw is raws[0] else raw.split(sep)
                seg = Segment(parts, ordinal, d)
                if seg_id == "ISA":
                    if txn is not None:
                        self._add(txn, "X12-SE-MISSING", "transaction set has no SE trailer", "transaction", "2")
                        builder.finish(position)  # type: ignore[union-attr]
                        yield from self._drain(builder)  # type: ignore[arg-type]
                        yield txn
                        txn, states, table = None, None, None
                    if isa is not None:
                        self._envelope("X12-IEA-MISSING", f"interchange {isa.control_number} has no IEA trailer",
                                       "interchange", "023", isa)
                    isa = self._open_interchange(seg, batch.isa_notes)
                    gs, group_count = None, 0
                elif seg_id == "GS":
                    if isa is None:
                        raise X12SyntaxError("GS segment before any ISA")
                    if gs is not None:
                        self._envelope("X12-GE-MISSING", f"group {gs.control_number} has no GE trailer", "group",
                                       "3", isa, gs)
                    gs = self._open_group(seg, isa)
                    group_count += 1
                    txn_count = 0
                elif seg_id == "ST":
                    txn_count += 1
                    position = 1
                    seg.position = 1
                    txn = self._open_transaction(seg, isa, gs)
                    spec = self._spec(txn)
                    builder = _TreeBuilder(spec, txn, detach, self._known)
                    builder.add(raw, 1)
                    stack = builder.stack
                    segs, loops, returns = txn.table.segments, txn.table.loops, txn.table.returns
                    states = spec.states if spec is not None else None
                    # only loops that start with something other than HL are reopened on the hot path
                    guard_reopen = bool(spec is not None and detach & spec.non_hl_loops)
                    table = states[builder.state + 1] if states is not None else None
                elif seg_id == "GE":
                    self._close_group(seg, isa, gs, txn_count)
                    gs = None
                elif seg_id == "IEA":
                    if gs is not None:
                        self._envelope("X12-GE-MISSING", f"group {gs.control_number} has no GE trailer", "group",
                                       "3", isa, gs)
                        gs = None
                    self._close_interchange(seg, isa, group_count)
                    isa = None
                elif seg_id == "TA1":   # an interchange's answer, in an interchange of its own
                    self._check_ta1(seg, isa)
                else:
                    self._envelope("X12-OUTSIDE-TRANSACTION",
                                   f"segment {seg_id} appears outside any ST/SE transaction set", "interchange",
                                   "024", isa, gs, segment=seg_id, position=ordinal)
        if txn is not None:
            self._add(txn, "X12-SE-MISSING", "transaction set ends without an SE trailer", "transaction", "2")
            builder.finish(position)  # type: ignore[union-attr]
            yield from self._drain(builder)  # type: ignore[arg-type]
            yield txn
        if gs is not None:
            self._envelope("X12-GE-MISSING", f"group {gs.control_number} has no GE trailer", "group", "3", isa, gs)
        if isa is not None:
            self._envelope("X12-IEA-MISSING", f"interchange {isa.control_number} has no IEA trailer",
                           "interchange", "023", isa)

    def read(self) -> ReadResult:
        """Read the whole source into memory (small files; use ``events`` for large ones)."""
        result = ReadResult()
        result.transactions = list(self.transactions())
        result.interchanges = self.interchanges
        result.findings = self.findings
        return result

    # -- helpers -----------------------------------------------------------------------------
    def _spec(self, txn: Transaction) -> TransactionSpec | None:
        if txn.set_id not in self._specs:
            try:
                self._specs[txn.set_id] = load_transaction(txn.set_id, self.mappings)
            except MappingError:
                self._specs[txn.set_id] = None
        spec = self._specs[txn.set_id]
        if spec is None:
            self._add(txn, "X12-SET-UNSUPPORTED", f"transaction set {quoted(txn.set_id)} is not supported "
                      "(only 270 and 271); its segments are kept without a loop structure", "transaction", "1",
                      segment="ST", position=1, element="ST01", value=txn.set_id)
        else:
            txn.structure = spec.implementation
        return spec

    @staticmethod
    def _drain(builder: _TreeBuilder) -> Iterator[LoopEvent]:
        """Hand over completed loops, then forget their segments."""
        while builder.emitted:
            event = builder.emitted.pop(0)
            yield event
            builder.table.release(event.start, event.end, event.index)

    def _add(self, txn: Transaction, code: str, message: str, level: str, ack: str, *, severity: str = "error",
             segment: str = "", position: int = 0, element: str = "", value: str = "") -> None:
        txn.findings.append(Finding(
            code=code, message=message, severity=severity, level=level, ack_code=ack,
            interchange=txn.interchange.control_number if txn.interchange else "",
            group=txn.group.control_number if txn.group else "", transaction=txn.control_number,
            transaction_set=txn.set_id, segment=segment, position=position, element=element, value=value,
            set_ordinal=txn.ordinal, group_ordinal=txn.group.ordinal if txn.group else 0,
            interchange_ordinal=txn.interchange.ordinal if txn.interchange else 0))

    def _envelope(self, code: str, message: str, level: str, ack: str, isa: Interchange | None,
                  gs: Group | None = None, *, severity: str = "error", segment: str = "", position: int = 0,
                  element: str = "", value: str = "") -> None:
        self.findings.append(Finding(
            code=code, message=message, severity=severity, level=level, ack_code=ack,
            interchange=isa.control_number if isa else "", group=gs.control_number if gs else "",
            segment=segment, position=position, element=element, value=value,
            group_ordinal=gs.ordinal if gs else 0, interchange_ordinal=isa.ordinal if isa else 0))

    def _open_interchange(self, seg: Segment, notes: list[str] | None) -> Interchange:
        e = seg.elements + [""] * (16 - len(seg.elements))
        isa = Interchange(
            control_number=e[12].strip(), sender_qualifier=e[4].strip(), sender_id=e[5].strip(),
            receiver_qualifier=e[6].strip(), receiver_id=e[7].strip(), date=e[8].strip(), time=e[9].strip(),
            version=e[11].strip(), usage=e[14].strip(), ack_requested=e[13].strip(),
            delimiters=seg.delimiters, segment=seg, ordinal=len(self.interchanges) + 1)
        self.interchanges.append(isa)
        self._interchange_groups = set()
        for note in notes or ():
            self._envelope("X12-ISA-FORMAT", note, "interchange", "", isa, severity="warning", segment="ISA",
                           position=seg.position)
        # each message quotes the element's value ({}); written only for a check that fails
        checks = (
            (isa.version in SUPPORTED_VERSIONS, "X12-ISA-VERSION", "ISA12 version {} is not supported", "ISA12",
             isa.version, "017"),
            (isa.control_number.isdigit() and len(isa.control_number) == 9, "X12-ISA-CONTROL",
             "ISA13 control number {} must be 9 digits", "ISA13", isa.control_number, "018"),
            (isa.ack_requested in ("0", "1"), "X12-ISA-ACK", "ISA14 {} must be 0 or 1", "ISA14", isa.ack_requested,
             "019"),
            (isa.usage in ("P", "T"), "X12-ISA-USAGE", "ISA15 {} must be P or T", "ISA15", isa.usage, "020"),
            (valid_date6(isa.date), "X12-ISA-DATE", "ISA09 {} is not a YYMMDD date", "ISA09", isa.date, "014"),
            (valid_time4(isa.time), "X12-ISA-TIME", "ISA10 {} is not an HHMM time", "ISA10", isa.time, "015"),
        )
        for ok, code, message, element, value, ack in checks:
            if not ok:
                self._envelope(code, message.format(quoted(value)), "interchange", ack, isa, segment="ISA",
                               position=seg.position, element=element, value=value)
        if isa.control_number:
            self._check_repeated_interchange(isa)
        if isa.version == "00401":
            self._envelope("X12-ISA-4010", "ISA12 00401 is a 4010 envelope; 005010X279A1 needs 00501",
                           "interchange", "", isa, severity="warning", segment="ISA", element="ISA12",
                           value=isa.version)
        return isa

    def _check_repeated_interchange(self, isa: Interchange) -> None:
        """TA105 025 on an interchange whose ISA13 an earlier one of the file from the same sender to the same receiver
        already has: ISA13 and the sender id are how the receiver tells interchanges apart, and how a TA1 (TA101) names
        the one it answers. Other senders' (or receivers') numbers are their own: several senders may all be at 1."""
        key = (isa.sender_qualifier, isa.sender_id, isa.receiver_qualifier, isa.receiver_id, isa.control_number)
        earlier = self._controls.setdefault(key, isa.ordinal)
        if earlier != isa.ordinal:
            self._envelope("X12-ISA-DUPLICATE", f"ISA13 {quoted(isa.control_number)} of the file's interchange "
                           f"#{isa.ordinal} is already the control number of its interchange #{earlier}, from the same "
                           "sender to the same receiver",
                           "interchange", "025", isa, segment="ISA", position=isa.segment.position, element="ISA13",
                           value=isa.control_number)

    def _check_ta1(self, seg: Segment, isa: Interchange | None) -> None:
        """A TA1's own elements, as the ISA's are checked: control number, date, time, status (TA104 A, E or R)
        and note code (TA105, ``mappings/codes/interchange_note``)."""
        if self._ta1_notes is None:
            from gateway.mappings import code_table

            self._ta1_notes = frozenset(str(c) for c in code_table("interchange_note", self.mappings)["codes"])
            statuses = code_table("acknowledgment_status", self.mappings)
            self._ta1_statuses = tuple(str(code) for code, info in statuses["codes"].items()
                                       if "TA104" in ((info or {}).get("used_in") or statuses.get("used_in") or ()))
        control, day, clock, status, note = (seg.get(i).strip() for i in range(1, 6))
        checks = (
            ("TA101", control, len(control) == 9 and control.isdigit(), "is not a 9-digit control number"),
            ("TA102", day, valid_date6(day), "is not a YYMMDD date"),
            ("TA103", clock, valid_time4(clock), "is not an HHMM time"),
            ("TA104", status, status in self._ta1_statuses,
             f"is not a TA1 status ({', '.join(self._ta1_statuses)}: mappings/codes/acknowledgment_status.yaml)"),
            ("TA105", note, note in self._ta1_notes, "is not an interchange note code"),
        )
        for element, value, ok, why in checks:
            if not ok:
                self._envelope("X12-TA1", f"TA1 {element} {quoted(value)} {why}", "interchange", "", isa, segment="TA1",
                               position=seg.position, element=element, value=value)

    def _open_group(self, seg: Segment, isa: Interchange) -> Group:
        self._groups += 1
        gs = Group(functional_id=seg.get(1), sender=seg.get(2), receiver=seg.get(3), date=seg.get(4),
                   time=seg.get(5), control_number=seg.get(6), version=seg.get(8), segment=seg, ordinal=self._groups)
        self._group_sets = set()
        if whole_number(gs.control_number) is None:
            self._envelope("X12-GS-CONTROL", f"GS06 group control number {quoted(gs.control_number)} must be numeric",
                           "group", "6", isa, gs, segment="GS", element="GS06", value=gs.control_number)
        if gs.control_number in self._interchange_groups:
            # a 999 names a group by its GS06 alone (AK102): two alike in one interchange cannot be told apart
            self._envelope("X12-GS-DUPLICATE", f"GS06 {quoted(gs.control_number)} is already the control number of "
                           f"another functional group in interchange {quoted(isa.control_number, bare=True)}", "group",
                           "19", isa, gs, segment="GS", element="GS06", value=gs.control_number)
        elif gs.control_number:
            self._interchange_groups.add(gs.control_number)
        for element, value in (("GS02", gs.sender), ("GS03", gs.receiver)):
            if not 2 <= len(value) <= 15:   # application sender's / receiver's code: AN 2 to 15 characters
                # a syntax error: no AK9 code names it, so the interchange's TA1 does (024, invalid content)
                self._envelope("X12-GS-CODE", f"{element} {quoted(value)} is not 2 to 15 characters", "interchange",
                               "024", isa, gs, segment="GS", element=element, value=value)
        return gs

    def _open_transaction(self, seg: Segment, isa: Interchange | None, gs: Group | None) -> Transaction:
        self._sets += 1
        txn = Transaction(set_id=seg.get(1), control_number=seg.get(2), implementation=seg.get(3),
                          interchange=isa, group=gs, table=LoopTable(seg.delimiters), ordinal=self._sets)
        if gs is None:
            self._add(txn, "X12-GS-MISSING", "transaction set is not inside a GS/GE functional group",
                      "transaction", "18", segment="ST", position=1)
            return txn
        if txn.control_number in self._group_sets:
            # a 999 names a set by its ST02 alone (AK202): two alike in one group cannot be told apart
            self._add(txn, "X12-ST-DUPLICATE", f"ST02 {quoted(txn.control_number)} is already the control number of "
                      f"another transaction set in group {quoted(gs.control_number, bare=True)}", "transaction", "23",
                      segment="ST", position=1, element="ST02", value=txn.control_number)
        elif txn.control_number:
            self._group_sets.add(txn.control_number)
        version = txn.implementation or gs.version
        expected_fid = FUNCTIONAL_IDS.get(txn.set_id)
        if expected_fid and gs.functional_id != expected_fid:
            # HS and HB swapped is a common slip that does not hide what the set is; anything else
            # is not a functional identifier for eligibility at all.
            swapped = gs.functional_id in FUNCTIONAL_IDS.values()
            self._add(txn, "X12-GS-FUNCTIONAL-ID",
                      f"GS01 {quoted(gs.functional_id)} does not match a {txn.set_id} (expected {expected_fid})",
                      "group", "1", severity="warning" if swapped else "error", segment="GS", element="GS01",
                      value=gs.functional_id)
        if txn.implementation and gs.version and txn.implementation != gs.version:
            self._add(txn, "X12-VERSION-MISMATCH",
                      f"ST03 {quoted(txn.implementation)} differs from GS08 {quoted(gs.version)}", "transaction", "19",
                      segment="ST", position=1, element="ST03", value=txn.implementation)
        if isa is not None and isa.version == "00401" and version.startswith("005010"):
            self._add(txn, "X12-ENVELOPE-4010",
                      f"a {quoted(version, bare=True)} transaction inside a 4010 envelope (ISA12 00401, GS08 "
                      f"{quoted(gs.version, bare=True)})",
                      "group", "2", segment="ISA", element="ISA12", value=isa.version)
        elif txn.set_id in FUNCTIONAL_IDS and txn.set_id != "999" and version != "005010X279A1":
            # the pre-addenda 005010X279 reads the same (a warning); another X279 suffix is no implementation at all
            known_other = version == "005010X279" or (version.startswith("005010") and
                                                      not version.startswith("005010X279"))
            self._add(txn, "X12-IMPLEMENTATION",
                      f"implementation {quoted(version)} is not 005010X279A1" + (
                          " (the guide before its addenda; HIPAA requires X279A1)" if version == "005010X279" else ""),
                      "transaction", "I6" if version else "19", severity="warning" if known_other else "error",
                      segment="ST", position=1, element="ST03", value=version)
        return txn

    def _close_transaction(self, txn: Transaction, se: Segment, position: int) -> None:
        txn.segment_count = position
        count, control = se.get(1), se.get(2)
        if count != str(position):
            self._add(txn, "X12-SE-COUNT",
                      f"SE01 says {quoted(count, bare=True) or 'nothing'} segments, the set has {position}",
                      "transaction", "4", segment="SE", position=position, element="SE01", value=count)
        if control != txn.control_number:
            self._add(txn, "X12-SE-CONTROL", f"SE02 {quoted(control)} does not match ST02 {quoted(txn.control_number)}",
                      "transaction", "3", segment="SE", position=position, element="SE02", value=control)

    def _close_group(self, seg: Segment, isa: Interchange | None, gs: Group | None, txn_count: int) -> None:
        if gs is None:
            self._envelope("X12-GS-MISSING", "GE without a GS", "interchange", "024", isa, segment="GE")
            return
        if seg.get(1) != str(txn_count):
            self._envelope("X12-GE-COUNT", f"GE01 says {quoted(seg.get(1), bare=True) or 'nothing'} transaction "
                           f"sets, the group has {txn_count}", "group", "5", isa, gs, segment="GE", element="GE01",
                           value=seg.get(1))
        if seg.get(2) != gs.control_number:
            self._envelope("X12-GE-CONTROL",
                           f"GE02 {quoted(seg.get(2))} does not match GS06 {quoted(gs.control_number)}", "group", "4",
                           isa, gs, segment="GE", element="GE02", value=seg.get(2))

    def _close_interchange(self, seg: Segment, isa: Interchange | None, group_count: int) -> None:
        if isa is None:
            self._envelope("X12-ISA-MISSING", "IEA without an ISA", "interchange", "023", None, segment="IEA")
            return
        if seg.get(1) != str(group_count):
            self._envelope("X12-IEA-COUNT", f"IEA01 says {quoted(seg.get(1), bare=True) or 'nothing'} groups, the "
                           f"interchange has {group_count}", "interchange", "021", isa, segment="IEA", element="IEA01",
                           value=seg.get(1))
        if seg.get(2) != isa.control_number:
            self._envelope("X12-IEA-CONTROL",
                           f"IEA02 {quoted(seg.get(2))} does not match ISA13 {quoted(isa.control_number)}",
                           "interchange", "001", isa, segment="IEA", element="IEA02", value=seg.get(2))




def valid_date6(value: str) -> bool:
    """A YYMMDD calendar date (ISA09, TA102): 250231 is not one."""
    if len(value) != 6 or not value.isascii() or not value.isdigit():
        return False
    try:
        date(2000 + int(value[:2]), int(value[2:4]), int(value[4:]))
    except ValueError:
        return False
    return True


def valid_time4(value: str) -> bool:
    """An HHMM time (ISA10, TA103)."""
    return len(value) == 4 and value.isascii() and value.isdigit() and int(value[:2]) < 24 and int(value[2:]) < 60


def read_x12(source: Source, *, mappings: str | None = None) -> ReadResult:
    """Read a whole X12 source: every transaction with its loop tree, and every finding."""
    return X12Reader(source, mappings=mappings).read()


def stream_loops(source: Source, loop_ids: Iterable[str] = ("2000C",), *,
                 mappings: str | None = None) -> Iterator[Transaction | LoopEvent]:
    """Stream a large file: completed ``loop_ids`` loops as LoopEvents, then each Transaction."""
    return X12Reader(source, detach=loop_ids, mappings=mappings).events()


__all__ = ["Delimiters", "LoopEvent", "ReadResult", "X12Reader", "read_x12", "stream_loops"]
