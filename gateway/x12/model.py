"""The in-memory shape of X12: delimiters, segments, loops, transactions and findings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator


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
    """One segment: its id and element values as read (element 01 is ``elements[0]``).

    ``position`` counts from ST = 1 inside a transaction (the 999 convention); envelope segments
    carry their ordinal in the file instead.
    """

    __slots__ = ("id", "elements", "position", "delimiters")

    def __init__(self, seg_id: str, elements: list[str], position: int, delimiters: Delimiters) -> None:
        self.id = seg_id
        self.elements = elements
        self.position = position
        self.delimiters = delimiters

    def get(self, index: int, default: str = "") -> str:
        """Element ``index`` (1-based) with surrounding spaces removed, or ``default``."""
        if 0 < index <= len(self.elements):
            value = self.elements[index - 1].strip()
            return value if value else default
        return default

    def repetitions(self, index: int) -> list[str]:
        """Element ``index`` split on the interchange's repetition separator (ISA11)."""
        value = self.get(index)
        if not value:
            return []
        rep = self.delimiters.repetition
        return [v for v in value.split(rep)] if rep and rep in value else [value]

    def components(self, index: int, repetition: int = 0) -> list[str]:
        """Element ``index`` (one repetition of it) split on the component separator (ISA16)."""
        reps = self.repetitions(index)
        if repetition >= len(reps):
            return []
        return reps[repetition].split(self.delimiters.component)

    def component(self, index: int, sub: int, default: str = "") -> str:
        comps = self.components(index)
        return comps[sub - 1].strip() if 0 < sub <= len(comps) and comps[sub - 1].strip() else default

    def to_x12(self, delimiters: Delimiters | None = None) -> str:
        d = delimiters or self.delimiters
        return d.element.join([self.id, *self.elements]) + d.segment

    def __repr__(self) -> str:
        return f"Segment({self.to_x12()!r}, position={self.position})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segment) and (self.id, self.elements) == (other.id, other.elements)

    __hash__ = None  # type: ignore[assignment]


class Loop:
    """A loop of the implementation guide (``2000C``, ``2110C`` ...) and what it holds, in order."""

    __slots__ = ("id", "body", "parent")

    def __init__(self, loop_id: str, parent: Loop | None = None) -> None:
        self.id = loop_id
        self.body: list[Segment | Loop] = []
        self.parent = parent

    @property
    def segments(self) -> list[Segment]:
        return [item for item in self.body if isinstance(item, Segment)]

    @property
    def loops(self) -> list[Loop]:
        return [item for item in self.body if isinstance(item, Loop)]

    def segment(self, seg_id: str) -> Segment | None:
        """The first segment with that id directly in this loop."""
        for item in self.body:
            if isinstance(item, Segment) and item.id == seg_id:
                return item
        return None

    def segments_of(self, seg_id: str) -> list[Segment]:
        return [item for item in self.body if isinstance(item, Segment) and item.id == seg_id]

    def loop(self, loop_id: str) -> Loop | None:
        for item in self.body:
            if isinstance(item, Loop) and item.id == loop_id:
                return item
        return None

    def loops_of(self, loop_id: str) -> list[Loop]:
        return [item for item in self.body if isinstance(item, Loop) and item.id == loop_id]

    def walk(self) -> Iterator[tuple[Loop, Segment]]:
        """Every segment below this loop, in order, with the loop that directly holds it."""
        for item in self.body:
            if isinstance(item, Segment):
                yield self, item
            else:
                yield from item.walk()

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

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0) or k in ("code", "message")}


@dataclass(slots=True)
class Interchange:
    """ISA header values of one interchange."""

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


@dataclass(slots=True)
class Group:
    """GS header values of one functional group."""

    functional_id: str
    sender: str
    receiver: str
    date: str
    time: str
    control_number: str
    version: str
    segment: Segment


@dataclass(slots=True)
class Transaction:
    """One ST..SE transaction set with its loop tree and its own findings."""

    set_id: str
    control_number: str
    implementation: str
    interchange: Interchange | None
    group: Group | None
    root: Loop
    findings: list[Finding] = field(default_factory=list)
    segment_count: int = 0
    structure: str = ""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def segments(self) -> Iterator[Segment]:
        for _, seg in self.root.walk():
            yield seg
