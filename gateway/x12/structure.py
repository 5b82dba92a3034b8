"""Implementation-guide structure (loops, segments, elements) compiled from ``mappings/x12``.

The same description drives three things, so they cannot disagree: the reader's loop tree (a
transition table compiled here), the writer's element limits, and the pyx12 validation maps
(``gateway.x12.pyx12_maps``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from gateway.errors import MappingError
from gateway.mappings import code_table, load_yaml, mappings_dir
from gateway.x12.dictionary import DataElement, data_elements
from gateway.x12.writer import ElementLimits

USAGES = ("R", "S", "N")
TRANSACTION_FILES = {"270": "x12/270.005010X279A1.yaml", "271": "x12/271.005010X279A1.yaml"}


@dataclass(frozen=True, slots=True)
class ElementSpec:
    """One element (or composite component) as the implementation guide uses it."""

    ref: str                      # EB03, EQ02-1
    position: int                 # 1-based within the segment (or composite)
    ele: str                      # data element number, or composite id (C003)
    name: str
    usage: str
    codes: frozenset[str] | None
    repeat: int = 1
    data_type: str = ""
    min_len: int = 0
    max_len: int = 0
    components: tuple[ElementSpec, ...] = ()

    @property
    def is_composite(self) -> bool:
        return bool(self.components)


@dataclass(slots=True, eq=False)
class SegmentSpec:
    seg_id: str
    name: str
    usage: str
    max_use: int | None           # None = unbounded
    elements: tuple[ElementSpec, ...]
    syntax: tuple[str, ...]
    loop: LoopSpec | None = None
    index: int = -1               # node number within the transaction


@dataclass(slots=True, eq=False)
class LoopSpec:
    loop_id: str
    name: str
    usage: str
    repeat: int | None            # None = ">1"
    body: list[SegmentSpec | LoopSpec] = field(default_factory=list)
    parent: LoopSpec | None = None
    kind: str = "loop"            # loop | header | detail | footer | root

    @property
    def first(self) -> SegmentSpec:
        item = self.body[0]
        return item if isinstance(item, SegmentSpec) else item.first

    def ancestors(self) -> list[LoopSpec]:
        """This loop and its parents up to the root, innermost first."""
        chain: list[LoopSpec] = []
        node: LoopSpec | None = self
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain


@dataclass(frozen=True, slots=True)
class Transition:
    """Where a segment goes from a given state: loops to close, loops to open, the segment node."""

    target: SegmentSpec
    close: int
    open: tuple[LoopSpec, ...]
    closes: frozenset[str] = frozenset()   # ids of the loops it closes (known from the state)

    @property
    def reopens(self) -> str:
        """The loop id when this only starts a new iteration of the current loop (EB after EB)."""
        if self.close == 1 and len(self.open) == 1 and self.closes == {self.open[0].loop_id}:
            return self.open[0].loop_id
        return ""


class Reopen:
    """Hot-path entry: close the current loop and open another iteration of it."""

    __slots__ = ("loop_id", "target", "table", "transition")

    def __init__(self, transition: Transition, table: dict[str, Any]) -> None:
        self.loop_id = transition.reopens
        self.target = transition.target.index
        self.table = table
        self.transition = transition


class SlowPath:
    """Table entry the reader's hot path must not take (HL checks, SE closing the set)."""

    __slots__ = ("entry",)

    def __init__(self, entry: Any) -> None:
        self.entry = entry


@dataclass(slots=True, eq=False)
class TransactionSpec:
    set_id: str
    name: str
    functional_group: str
    implementation: str
    root: LoopSpec
    nodes: list[SegmentSpec]
    segment_ids: frozenset[str]
    states: list[dict[str, Any]] = field(default_factory=list)
    _state_of: dict[int, int] = field(default_factory=dict)
    non_hl_loops: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # one table per state (-1 = before ST is index 0), filled lazily by ``transition``
        self.states = [{} for _ in range(len(self.nodes) + 1)]
        self._state_of = {id(table): index - 1 for index, table in enumerate(self.states)}
        # loops whose first segment is not HL: the reader's hot path may reopen them
        self.non_hl_loops = frozenset(
            n.loop.loop_id for n in self.nodes
            if n.loop is not None and n.loop.kind == "loop" and n.loop.body[0] is n and n.seg_id != "HL")


    def state_of(self, table: dict[str, Any]) -> int:
        """The state a table belongs to (the hot path carries tables, not state numbers)."""
        return self._state_of[id(table)]

    def transition(self, state: int, seg_id: str, parts: list[str]) -> Transition | None:
        """Where ``seg_id`` goes after node ``state`` (-1 = before ST); None if nowhere.

        ``parts`` is the split segment (``parts[0]`` the id); it is read only where several
        loops start with the same segment (HL03 decides between 2000A/B/C/D).
        """
        table = self.states[state + 1]
        entry = table.get(seg_id, MISSING)
        if entry is MISSING:
            entry = self._compile(state, seg_id)
            # Hot-path forms: a segment that stays in its loop is the bare target index, a new
            # iteration of the current loop a Reopen; HL and SE always take the slow path.
            if seg_id in ("HL", "SE") or entry.__class__ is not Transition:
                table[seg_id] = SlowPath(entry)
            elif not entry.close and not entry.open:
                table[seg_id] = self.states[entry.target.index + 1]  # the next state's table
            elif entry.reopens:
                table[seg_id] = Reopen(entry, self.states[entry.target.index + 1])
            else:
                table[seg_id] = entry
        cls = entry.__class__
        if cls is SlowPath:
            entry = entry.entry
            cls = entry.__class__
        if cls is dict:
            return Transition(self.nodes[self.state_of(entry)], 0, ())
        if cls is Reopen:
            return entry.transition
        if entry is None or cls is Transition:
            return entry
        return self.qualified(entry, parts)

    @staticmethod
    def qualified(entry: Any, parts: list[str]) -> Transition:
        qual_pos, by_code, fallback = entry
        value = parts[qual_pos].strip() if len(parts) > qual_pos else ""
        return by_code.get(value, fallback)

    # -- compilation -------------------------------------------------------------------------
    def _compile(self, state: int, seg_id: str) -> Any:
        candidates = self._candidates(state, seg_id)
        if state >= 0:
            node_loop = self.nodes[state].loop
            assert node_loop is not None
            chain = [lp.loop_id for lp in node_loop.ancestors() if lp.kind == "loop"]
            candidates = [Transition(c.target, c.close, c.open, frozenset(chain[:c.close])) for c in candidates]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        qual_pos = _qualifier_position([c.target for c in candidates])
        if qual_pos is None:
            return candidates[0]
        by_code: dict[str, Transition] = {}
        for cand in candidates:
            codes = cand.target.elements[qual_pos - 1].codes or frozenset()
            for code in codes:
                by_code.setdefault(code, cand)
        return (qual_pos, by_code, candidates[0])

    def _candidates(self, state: int, seg_id: str) -> list[Transition]:
        """Every place the segment could go, nearest first (the walk pyx12 also does)."""
        found: list[Transition] = []
        if state < 0:
            first = self.root.first
            if first.seg_id == seg_id:
                found.append(Transition(first, 0, ()))
            return found
        node = self.nodes[state]
        loop = node.loop
        assert loop is not None
        # 1. later in the same loop (and the same node again when it may repeat)
        start = loop.body.index(node)
        if node.max_use != 1 and node.seg_id == seg_id and start != 0:
            found.append(Transition(node, 0, ()))
        close = 0
        current: LoopSpec = loop
        after = start + 1
        while True:
            for item in current.body[after:]:
                if isinstance(item, SegmentSpec):
                    if item.seg_id == seg_id:
                        found.append(Transition(item, close, ()))
                else:
                    found.extend(_enter(item, seg_id, close))
            # 2. a new iteration of the current loop
            if current.kind == "loop" and current.first.seg_id == seg_id and current.repeat != 1:
                found.append(Transition(current.first, close + 1, (current,)))
            elif current.kind == "loop" and current.first.seg_id == seg_id:
                # a loop that may not repeat: still the best place to put it (validation reports it)
                found.append(Transition(current.first, close + 1, (current,)))
            parent = current.parent
            if parent is None:
                break
            after = parent.body.index(current) + 1
            if current.kind == "loop":
                close += 1
            current = parent
        return _dedupe(found)


MISSING = object()


def _enter(loop: LoopSpec, seg_id: str, close: int) -> list[Transition]:
    """Transitions that open ``loop`` (and nested first loops) with ``seg_id`` as first segment."""
    if loop.kind != "loop":
        result: list[Transition] = []
        for item in loop.body:
            if isinstance(item, SegmentSpec):
                if item.seg_id == seg_id:
                    result.append(Transition(item, close, ()))
            else:
                result.extend(_enter(item, seg_id, close))
        return result
    opened: list[LoopSpec] = [loop]
    first: SegmentSpec | LoopSpec = loop.body[0]
    while isinstance(first, LoopSpec):
        opened.append(first)
        first = first.body[0]
    return [Transition(first, close, tuple(opened))] if first.seg_id == seg_id else []


def _dedupe(found: list[Transition]) -> list[Transition]:
    seen: set[int] = set()
    result = []
    for t in found:
        if id(t.target) not in seen:
            seen.add(id(t.target))
            result.append(t)
    return result


def _qualifier_position(targets: list[SegmentSpec]) -> int | None:
    """The first element whose code lists tell the candidate nodes apart (HL03 for HL)."""
    width = min(len(t.elements) for t in targets)
    for pos in range(1, width + 1):
        sets = [t.elements[pos - 1].codes for t in targets]
        if all(sets) and len(set().union(*sets)) == sum(len(s) for s in sets):  # type: ignore[arg-type]
            return pos
    return None


# -- loading ---------------------------------------------------------------------------------

def _codes(spec: Any, loop_id: str, base: str | None) -> frozenset[str] | None:
    if spec is None:
        return None
    if isinstance(spec, list):
        return frozenset(str(c) for c in spec)
    if isinstance(spec, dict) and "table" in spec:
        table = code_table(spec["table"], base)["codes"]
        where = spec.get("loop")
        if where is None:
            return frozenset(str(c) for c in table)
        return frozenset(str(c) for c, info in table.items() if where in (info or {}).get("loops", ()))
    raise MappingError(f"loop {loop_id}: codes must be a list or {{table: name}}, got {spec!r}")


def _element(defn: dict[str, Any], position: int, override: Any, ref: str, loop_id: str,
             base: str | None, dictionary: dict[str, DataElement]) -> ElementSpec:
    if override is None:
        override = {"usage": "N"}
    elif isinstance(override, str):
        override = {"usage": override}
    usage = override.get("usage", "S")
    if usage not in USAGES:
        raise MappingError(f"{loop_id} {ref}: usage must be one of {USAGES}, got {usage!r}")
    name = override.get("name") or defn.get("name", "")
    if "composite" in defn:
        comp_over = override.get("components") or {}
        components = tuple(
            _element(c, i, comp_over.get(i, "S" if usage != "N" else "N"), f"{ref}-{i}", loop_id,
                     base, dictionary)
            for i, c in enumerate(defn["components"], start=1)
        )
        return ElementSpec(ref, position, defn["composite"], name, usage, None,
                           int(defn.get("repeat", 1)), "", 0, 0, components)
    number = str(defn["ele"])
    info = dictionary.get(number)
    if info is None:
        raise MappingError(f"{loop_id} {ref}: data element {number} is not in the dictionary")
    return ElementSpec(ref, position, number, name or info.name, usage,
                       _codes(override.get("codes"), loop_id, base), int(defn.get("repeat", 1)),
                       info.data_type, info.min_len, info.max_len)


def _segment(entry: dict[str, Any], loop_id: str, segments: dict[str, Any], base: str | None,
             dictionary: dict[str, DataElement]) -> SegmentSpec:
    seg_id = entry["seg"]
    defn = segments.get(seg_id)
    if defn is None:
        raise MappingError(f"loop {loop_id}: segment {seg_id} is not in segments.yaml")
    overrides = {int(k): v for k, v in (entry.get("elements") or {}).items()}
    unknown = [k for k in overrides if not 1 <= k <= len(defn["elements"])]
    if unknown:
        raise MappingError(f"loop {loop_id}: {seg_id} has no element(s) {unknown}")
    elements = tuple(
        _element(e, i, overrides.get(i), f"{seg_id}{i:02d}", loop_id, base, dictionary)
        for i, e in enumerate(defn["elements"], start=1)
    )
    max_use = entry.get("max", 1)
    return SegmentSpec(
        seg_id=seg_id,
        name=entry.get("name") or defn.get("name", seg_id),
        usage=entry.get("usage", "S"),
        max_use=None if str(max_use) == ">1" else int(max_use),
        elements=elements,
        syntax=tuple(entry.get("syntax", defn.get("syntax") or ())),
    )


def _body(items: list[Any], parent: LoopSpec, segments: dict[str, Any], base: str | None,
          dictionary: dict[str, DataElement], nodes: list[SegmentSpec]) -> None:
    for entry in items or ():
        if "seg" in entry:
            seg = _segment(entry, parent.loop_id, segments, base, dictionary)
            seg.loop = parent
            seg.index = len(nodes)
            nodes.append(seg)
            parent.body.append(seg)
        elif "loop" in entry:
            repeat = entry.get("repeat", 1)
            loop = LoopSpec(
                loop_id=str(entry["loop"]),
                name=entry.get("name", ""),
                usage=entry.get("usage", "S"),
                repeat=None if str(repeat) == ">1" else int(repeat),
                parent=parent,
            )
            parent.body.append(loop)
            _body(entry.get("body") or [], loop, segments, base, dictionary, nodes)
            if not loop.body or not isinstance(loop.body[0], SegmentSpec):
                raise MappingError(f"loop {loop.loop_id} must start with a segment")
        else:
            raise MappingError(f"loop {parent.loop_id}: entry without 'seg' or 'loop': {entry!r}")


@lru_cache(maxsize=8)
def _load(set_id: str, base: str) -> TransactionSpec:
    rel = TRANSACTION_FILES.get(set_id)
    if rel is None:
        raise MappingError(f"no structure description for transaction set {set_id!r}")
    doc = load_yaml(rel, base)
    segments = load_yaml("x12/segments.yaml", base)
    dictionary = data_elements()
    root = LoopSpec("ST", doc.get("name", ""), "R", 1, kind="root")
    nodes: list[SegmentSpec] = []
    for part in ("header", "detail", "footer"):
        wrapper = LoopSpec(part.upper(), part, "R", 1, parent=root, kind=part)
        root.body.append(wrapper)
        _body(doc.get(part) or [], wrapper, segments, base, dictionary, nodes)
    return TransactionSpec(
        set_id=str(doc["id"]),
        name=doc.get("name", ""),
        functional_group=doc["functional_group"],
        implementation=doc["implementation"],
        root=root,
        nodes=nodes,
        segment_ids=frozenset(n.seg_id for n in nodes),
    )


@lru_cache(maxsize=16)
def load_transaction(set_id: str, base: str | None = None) -> TransactionSpec:
    """The compiled structure of a 270 or 271 (cached per process)."""
    return _load(str(set_id), str(mappings_dir(base)))


@lru_cache(maxsize=16)
def known_segment_ids(base: str | None = None) -> frozenset[str]:
    return frozenset(load_yaml("x12/segments.yaml", base)) | {"ISA", "GS", "ST", "SE", "GE", "IEA", "TA1"}


def element_limits(base: str | os.PathLike[str] | None = None) -> ElementLimits:
    """Max length of each element of each segment (``{"NM103": (1, 60)}``) for the writer."""
    return _element_limits(str(mappings_dir(base)))


@lru_cache(maxsize=4)
def _element_limits(base: str) -> ElementLimits:
    segments = load_yaml("x12/segments.yaml", base)
    dictionary = data_elements()
    limits: dict[str, tuple[int, int]] = {}
    for seg_id, defn in segments.items():
        for i, e in enumerate(defn["elements"], start=1):
            if "ele" in e and str(e["ele"]) in dictionary:
                d = dictionary[str(e["ele"])]
                limits[f"{seg_id}{i:02d}"] = (d.min_len, d.max_len)
    return ElementLimits(limits)
