"""The in-memory shape of X12: delimiters, segments, loops, transactions and findings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field


def whole_number(text: str, digits: int = 18) -> int | None:
    """``text`` as a whole number when it is 1 to ``digits`` ASCII digits (X12's N0 is at most 18), else None.

    ``str.isdigit`` also takes '²', which ``int`` refuses, and any length, where ``int`` refuses more than 4,300
    digits: an HL01 or a pointer a payer sent so failed the whole read."""
    if 0 < len(text) <= digits and text.isascii() and text.isdigit():
        return int(text)
    return None

@dataclass(frozen=True, slots=True)
class Delimiters:
    """The four separators of one interchange, read from its ISA.

    ``repetition`` is empty when the interchange has none (4010 envelopes, or an ISA11 that is a
    letter or clashes with another delimiter).
    """

    element: str = "*"
    repetition: str = "^"
    component: str = ":"
    segment: str = "~"

    def characters(self) -> frozenset[str]:
        return frozenset(c for c in (self.element, self.repetition, self.component, self.segment) if c)


class Segment:
    """One segment: its id and element values as read.

    ``parts`` is the split segment (``parts[0]`` the id, ``parts[1]`` element 01); ``position``
    counts from ST = 1 inside a transaction (the 999 convention); envelope segments carry their
    ordinal in the file instead.
    """

    __slots__ = ("id", "parts", "position", "delimiters", "_values")

    def __init__(self, parts: list[str], position: int, delimiters: Delimiters) -> None:
        self.id = parts[0]
        self.parts = parts
        self.position = position
        self.delimiters = delimiters
        self._values: list[str] | None = None

    @classmethod
    def of(cls, seg_id: str, *elements: str, position: int = 0, delimiters: Delimiters | None = None) -> Segment:
        return cls([seg_id, *elements], position, delimiters or Delimiters())

    @property
    def elements(self) -> list[str]:
        return self.parts[1:]

    def get(self, index: int, default: str = "") -> str:
        """Element ``index`` (1-based) with surrounding spaces removed, or ``default``."""
        values = self._values
        if values is None:  # translators read the same elements many times: strip once
            values = self._values = [p.strip() for p in self.parts]
        if 0 < index < len(values):
            return values[index] or default
        return default

    def values(self, width: int) -> list[str]:
        """All elements stripped, padded with "" so that ``values(n)[i]`` is element i for i < n."""
        values = self._values
        if values is None:
            values = self._values = [p.strip() for p in self.parts]
        return values + [""] * (width - len(values)) if len(values) < width else values

    def repetitions(self, index: int) -> list[str]:
        """Element ``index`` split on the interchange's repetition separator (ISA11)."""
        value = self.get(index)
        if not value:
            return []
        rep = self.delimiters.repetition
        return value.split(rep) if rep and rep in value else [value]

    def components(self, index: int, repetition: int = 0) -> list[str]:
        """Element ``index`` (one repetition of it) split on the component separator (ISA16)."""
        if self.delimiters.repetition == self.delimiters.component:   # ISA11 = ISA16: a composite does not repeat
            value = self.get(index)
            return value.split(self.delimiters.component) if value and repetition == 0 else []
        reps = self.repetitions(index)
        if repetition >= len(reps):
            return []
        return reps[repetition].split(self.delimiters.component)

    def component(self, index: int, sub: int, default: str = "") -> str:
        comps = self.components(index)
        return comps[sub - 1].strip() if 0 < sub <= len(comps) and comps[sub - 1].strip() else default

    def to_x12(self, delimiters: Delimiters | None = None) -> str:
        d = delimiters or self.delimiters
        return d.element.join(self.parts) + d.segment

    def __repr__(self) -> str:
        return f"Segment({self.to_x12()!r}, position={self.position})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segment) and self.parts == other.parts

    __hash__ = None  # type: ignore[assignment]


class Loop:
    """A loop of the implementation guide (``2000C``, ``2110C`` ...) and what it holds, in order.

    A body holds Segment and Loop objects only (neither is subclassed): the lookups below, which the translators
    call for every loop, tell them apart with ``type(item) is``, cheaper than ``isinstance``, and compare the id
    first where one is asked for.
    """

    __slots__ = ("id", "body", "parent")

    def __init__(self, loop_id: str, parent: Loop | None = None) -> None:
        self.id = loop_id
        self.body: list[Segment | Loop] = []
        self.parent = parent

    @property
    def segments(self) -> list[Segment]:
        return [item for item in self.body if type(item) is Segment]

    @property
    def loops(self) -> list[Loop]:
        return [item for item in self.body if type(item) is Loop]

    def segment(self, seg_id: str) -> Segment | None:
        """The first segment with that id directly in this loop."""
        for item in self.body:
            if item.id == seg_id and type(item) is Segment:
                return item
        return None

    def segments_of(self, seg_id: str) -> list[Segment]:
        return [item for item in self.body if item.id == seg_id and type(item) is Segment]

    def loop(self, loop_id: str) -> Loop | None:
        for item in self.body:
            if item.id == loop_id and type(item) is Loop:
                return item
        return None

    def loops_of(self, loop_id: str) -> list[Loop]:
        return [item for item in self.body if item.id == loop_id and type(item) is Loop]

    def walk(self) -> Iterator[tuple[Loop, Segment]]:
        """Every segment below this loop, in order, with the loop that directly holds it.

        One generator with a stack of the loops being read: a nested generator per loop passed every segment up
        through each level above it, and the validator and the simulator walk each transaction several times.
        """
        stack: list[tuple[Loop, Iterator[Segment | Loop]]] = [(self, iter(self.body))]
        while stack:
            loop, items = stack[-1]
            for item in items:
                if type(item) is Segment:   # the tree holds Segments and Loops, neither subclassed
                    yield loop, item
                else:
                    stack.append((item, iter(item.body)))
                    break
            else:
                stack.pop()

    def path(self) -> str:
        ids = []
        node: Loop | None = self
        while node is not None and node.parent is not None:
            ids.append(node.id)
            node = node.parent
        return "/" + "/".join(reversed(ids))

    def __repr__(self) -> str:
        return f"Loop({self.id!r}, {len(self.body)} items)"


@dataclass(slots=True)
class Finding:
    """One defect, located well enough to act on and to render as a 999 or TA1.

    ``level`` says which acknowledgment part it belongs to: ``interchange`` (TA1), ``group``
    (AK9), ``transaction`` (IK5), ``segment`` (IK3) or ``element`` (IK3 + IK4). ``ack_code`` is
    the code of that part (TA105, AK905, IK502, IK304, IK403).

    ``set_ordinal`` is the :attr:`Transaction.ordinal` of the set it was found in (0: none, or not known): two sets
    may carry the same ST02, even within one group, and a 999 must still give each only its own defects.
    ``group_ordinal`` and ``interchange_ordinal`` do the same for the :attr:`Group.ordinal` and
    :attr:`Interchange.ordinal` of the envelope it was found in: two groups of one interchange may share a GS06, and
    two interchanges of one file an ISA13 (each is then an error of its own, AK905 19 or TA105 025, and the 999 or
    TA1 of the other must not carry it). They place the finding and are no part of what the report says
    (``to_dict`` leaves them out).
    """

    code: str
    message: str
    severity: str = "error"
    level: str = "segment"
    ack_code: str = ""
    interchange: str = ""
    group: str = ""
    transaction: str = ""
    transaction_set: str = ""
    loop: str = ""
    segment: str = ""
    position: int = 0
    element: str = ""
    data_element: str = ""
    component: int = 0
    repetition: int = 0
    value: str = ""
    set_ordinal: int = 0
    group_ordinal: int = 0
    interchange_ordinal: int = 0

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items()
                if (v not in ("", 0) or k in ("code", "message")) and k not in _PLACEMENT}


_PLACEMENT = frozenset({"set_ordinal", "group_ordinal", "interchange_ordinal"})   # where, for acks: not reported


@dataclass(slots=True)
class Interchange:
    """ISA header values of one interchange. ``ordinal`` is its place among the interchanges of the source read (1
    for the first; 0 when not read from one): what tells apart two with the same ISA13
    (``Finding.interchange_ordinal``)."""

    control_number: str
    sender_qualifier: str
    sender_id: str
    receiver_qualifier: str
    receiver_id: str
    date: str
    time: str
    version: str
    usage: str
    ack_requested: str
    delimiters: Delimiters
    segment: Segment
    ordinal: int = 0


@dataclass(slots=True)
class Group:
    """GS header values of one functional group. ``ordinal`` is its place among the groups of the source read (1 for
    the first; 0 when not read from one): what tells apart two with the same GS06 (``Finding.group_ordinal``)."""

    functional_id: str
    sender: str
    receiver: str
    date: str
    time: str
    control_number: str
    version: str
    segment: Segment
    ordinal: int = 0


class LoopTable:
    """The loop tree of one transaction in flat form: cheap to build, turned into objects on demand.

    ``segments[p - 1]`` holds the raw segment at position ``p``, split into elements only when a
    Segment object is made (``None`` once handed over while streaming). ``loops[i]`` is
    ``(loop id, parent index, first position)`` with the transaction root at index 0, and
    ``returns`` lists ``(position, loop index)`` where a segment goes back to an enclosing loop
    (LE after a 2120 loop). Which loop holds each position follows from these two lists, so the
    reader records nothing per segment but the segment itself.
    """

    __slots__ = ("segments", "loops", "returns", "delimiters", "_objects", "_attached", "_owner",
                 "_next_loop", "_next_return", "_current", "_released")

    def __init__(self, delimiters: Delimiters) -> None:
        self.segments: list[str | None] = []
        self.loops: list[tuple[str, int, int]] = [("ST", -1, 1)]
        self.returns: list[tuple[int, int]] = []
        self.delimiters = delimiters
        self._objects: list[Loop] = []
        self._attached = 0  # loops[:_attached] have objects in the tree
        self._owner: list[int] = []
        self._next_loop = self._next_return = self._current = 0
        self._released: dict[int, int] = {}  # first loop index -> last, of loops handed over

    @property
    def owner(self) -> list[int]:
        """The index of the loop that directly holds each position (``owner[p - 1]``)."""
        owner, loops, returns = self._owner, self.loops, self.returns
        current, next_loop, next_return = self._current, self._next_loop, self._next_return
        for pos in range(len(owner) + 1, len(self.segments) + 1):
            while next_loop < len(loops) and loops[next_loop][2] <= pos:
                current = next_loop
                next_loop += 1
            while next_return < len(returns) and returns[next_return][0] <= pos:
                current = returns[next_return][1]
                next_return += 1
            owner.append(current)
        self._current, self._next_loop, self._next_return = current, next_loop, next_return
        return owner

    def _loop(self, index: int) -> Loop:
        """The object for loop ``index``, attaching it (and the loops opened before it) if needed."""
        while self._attached <= index:
            self._attach_next()
        return self._objects[index]  # type: ignore[return-value]

    def _attach_next(self) -> None:
        """Make the object of the next loop (or skip a handed-over loop and everything in it)."""
        objects, attached = self._objects, self._attached
        last = self._released.get(attached)
        if last is not None:
            objects.extend([None] * (last - attached + 1))  # type: ignore[list-item]
            self._attached = last + 1
            return
        loop_id, parent, _ = self.loops[attached]
        if parent < 0:
            loop = Loop(loop_id)
        else:
            owner = objects[parent]
            loop = Loop(loop_id, owner)
            owner.body.append(loop)
        objects.append(loop)
        self._attached = attached + 1

    def build(self, start: int = 1, end: int | None = None) -> Loop:
        """Objects for positions ``start``..``end`` (inclusive), attached to the tree; the root.

        Loops are attached when their first position is reached, so each loop's body keeps the
        order of the transaction (segments, then a child loop, then later segments).
        """
        d = self.delimiters
        sep = d.element
        segments, loops, objects = self.segments, self.loops, self._objects
        owner = self.owner
        last = len(segments) if end is None else end
        self._loop(0)
        count = len(loops)
        for pos in range(start, last + 1):
            while self._attached < count and loops[self._attached][2] <= pos:
                self._attach_next()
            raw = segments[pos - 1]
            if raw is not None:
                objects[owner[pos - 1]].body.append(Segment(raw.split(sep), pos, d))
        return objects[0]  # type: ignore[return-value]

    def subtree(self, index: int, start: int, end: int) -> Loop:
        """Objects for a completed loop (positions ``start``..``end``), not attached to its parent."""
        loop_id, parent, _ = self.loops[index]
        root = Loop(loop_id, self._loop(parent) if parent >= 0 else None)
        local: dict[int, Loop] = {index: root}
        d = self.delimiters
        owner = self.owner
        for pos in range(start, end + 1):
            raw = self.segments[pos - 1]
            if raw is None:
                continue
            li = owner[pos - 1]
            loop = local.get(li)
            if loop is None:
                chain = []
                while li not in local:
                    chain.append(li)
                    li = self.loops[li][1]
                for child in reversed(chain):
                    parent_loop = local[self.loops[child][1]]
                    made = Loop(self.loops[child][0], parent_loop)
                    parent_loop.body.append(made)
                    local[child] = made
                loop = local[owner[pos - 1]]
            loop.body.append(Segment(raw.split(d.element), pos, d))
        return root

    def parts(self, position: int) -> list[str] | None:
        """The segment at ``position`` split into elements (None if handed over)."""
        raw = self.segments[position - 1] if 0 < position <= len(self.segments) else None
        return raw.split(self.delimiters.element) if raw is not None else None

    def release(self, start: int, end: int, index: int | None = None) -> None:
        """Forget positions ``start``..``end`` (a loop already handed over, with its loops)."""
        self.segments[start - 1:end] = [None] * (end - start + 1)
        if index is not None:
            last = index
            while last + 1 < len(self.loops) and self.loops[last + 1][2] <= end:
                last += 1
            if index >= self._attached:
                self._released[index] = last


@dataclass(slots=True, eq=False)
class Transaction:
    """One ST..SE transaction set with its loop tree and its own findings.

    ``table`` is the loop tree as read; ``root`` turns it into Loop and Segment objects the first
    time it is asked for. ``ordinal`` is its place among the sets of the source read (1 for the first ST; 0 when
    not read from one): what tells apart two sets with the same ST02 (``Finding.set_ordinal``).
    """

    set_id: str
    control_number: str
    implementation: str
    interchange: Interchange | None
    group: Group | None
    table: LoopTable
    findings: list[Finding] = field(default_factory=list)
    segment_count: int = 0
    structure: str = ""
    ordinal: int = 0
    _root: Loop | None = None
    _built: int = 0

    @property
    def root(self) -> Loop:
        if self._root is None or self._built < len(self.table.segments):
            self._root = self.table.build(self._built + 1)
            self._built = len(self.table.segments)
        return self._root

    def build_until(self, position: int) -> Loop:
        """Objects for the segments up to ``position`` (the loops enclosing a streamed loop)."""
        if position > self._built:
            self._root = self.table.build(self._built + 1, position)
            self._built = position
        return self._root if self._root is not None else self.table.build(1, 0)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def segments(self) -> Iterator[Segment]:
        for _, seg in self.root.walk():
            yield seg
