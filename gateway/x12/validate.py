"""Implementation-guide validation of 270/271 with pyx12 and our generated X279A1 maps.

Our reader checks the envelope (control numbers, counts, trailers, versions) and the loop
structure; pyx12 checks segments and elements against the maps (usage, codes, lengths, dates,
syntax rules). pyx12 does not split repetitions, so each extra EQ01/EB03 repetition is checked
here against the same map node. Maps and control data are loaded once per process.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pyx12.error_handler
import pyx12.error_visitor
import pyx12.errors
import pyx12.map_if
import pyx12.map_index
import pyx12.params
import pyx12.x12file
from pyx12.map_if._segment import apply_segment_errors
from pyx12.map_walker import apply_walk_errors, walk_tree

from gateway.errors import QUOTE_LIMIT, X12SyntaxError, quoted
from gateway.mappings import load_yaml
from gateway.x12.ack import AckCodeSets, ack_code_sets
from gateway.x12.model import Delimiters, Finding, Interchange, Loop, Segment, Transaction, whole_number
from gateway.x12.pyx12_maps import map_set_dir
from gateway.x12.reader import FUNCTIONAL_IDS, ReadResult, X12Reader
from gateway.x12.structure import load_transaction
from gateway.x12.tokenizer import ISA_WIDTHS, Batch, Source, tokenize

logging.getLogger("pyx12").setLevel(logging.CRITICAL)

IMPLEMENTATION = "005010X279A1"
# Envelope-level codes our reader reports; pyx12's copies of them are dropped. pyx12 says "6" also for a GS06 that
# another group of the interchange has (the reader: 19, X12-GS-DUPLICATE) and "23" for a repeated ST02; its "025" (a
# repeated ISA13) cannot come, as it reads one interchange at a time (the reader: X12-ISA-DUPLICATE).
_OURS = {"isa": {"001", "021", "023", "014", "015", "017", "018", "019", "020", "025"},
         "gs": {"3", "4", "5", "6"}, "st": {"2", "3", "4", "I6", "19", "23"}}
_SEVERITY_WARNING_SEG = {"I6"}  # situational segment missing: reported, but not fatal for the reader tests
_ADDED_GROUP = "999999999"   # GS06/GE02 of the group given to a set that came outside any (pyx12 needs one)


@dataclass
class ValidationReport:
    """What validation found, plus the transactions read (with their loop trees)."""

    findings: list[Finding] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    interchanges: list[Interchange] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "transactions": [
                {"set": t.set_id, "control_number": t.control_number, "implementation": t.implementation,
                 "segments": t.segment_count} for t in self.transactions],
            "findings": [f.to_dict() for f in self.findings],
        }


class _Pyx12:
    """pyx12 machinery loaded once: params, map index, control and transaction maps."""

    def __init__(self, map_dir: str) -> None:
        self.map_dir = map_dir
        self.param = pyx12.params.params()
        self.index = pyx12.map_index.map_index(map_dir)
        self._maps: dict[str, Any] = {}

    def load(self, filename: str) -> Any:
        if filename not in self._maps:
            self._maps[filename] = pyx12.map_if.load_map_file(filename, self.param, self.map_dir)
        return self._maps[filename]


@lru_cache(maxsize=4)
def _engine(mappings: str | None) -> _Pyx12:
    return _Pyx12(map_set_dir(mappings))


@lru_cache(maxsize=4)
def _repeating_elements(mappings: str | None) -> frozenset[tuple[str, int]]:
    segments = load_yaml("x12/segments.yaml", mappings)
    return frozenset((seg_id, i) for seg_id, d in segments.items()
                     for i, e in enumerate(d["elements"], start=1) if int(e.get("repeat", 1)) > 1)


def _canonical_interchanges(batches: Iterable[Batch], repeating: frozenset[tuple[str, int]]
                            ) -> Iterator[tuple[str, dict[tuple[int, int, int], list[str]], int]]:
    """Each interchange re-rendered for pyx12: padded ISA, 5010 version, first repetitions only; a transaction set
    outside any GS/GE (which the reader reports) gets a functional group of its own, so that pyx12 checks it as a set
    rather than reporting each of its segments, as "not found", against the set before it.

    Also returns, per (ST ordinal, segment position, element), the extra repetitions removed, and how many sets came
    before the interchange: ST ordinals count through the whole file, as the reader's ``Transaction.ordinal`` does.
    One item per ISA, in order: the n-th is the reader's interchange n (``Interchange.ordinal``).
    """
    current: list[str] = []
    extras: dict[tuple[int, int, int], list[str]] = {}
    d: Delimiters | None = None
    st_ordinal = position = before = 0
    rep_char = "^"
    pending_gs: list[str] | None = None
    in_group = False   # a GS (ours or the sender's) is open
    added: list[int] | None = None   # the sets in the group opened here, when one is open

    def close_added() -> None:
        nonlocal added
        if added is not None and d is not None:
            current.append(d.element.join(["GE", str(added[0]), _ADDED_GROUP]) + _end(d))
        added = None

    for seg_id, elements, delims in ((p[0], p[1:], b.delimiters) for b in batches for p in b.split()):
        if seg_id in ("ISA", "GS", "IEA"):
            close_added()
            in_group = seg_id == "GS"
        elif seg_id == "GE":   # closes the sender's group, or the one opened here (the GS was left out)
            in_group, added = False, None
        if seg_id == "ISA":
            if current:
                yield "".join(current), extras, before
                current, extras = [], {}
            before = st_ordinal
            d = delims
            used = "".join(elements)
            rep_char = next(c for c in "^}!\x1d\x1f" if c not in (d.element, d.component, d.segment)
                            and (c == d.repetition or c not in used))
            values = [v.strip().ljust(w)[:w] if i not in (1, 3) else v.ljust(w)[:w]
                      for i, (v, w) in enumerate(zip(elements, ISA_WIDTHS, strict=False))]
            values[10] = rep_char
            values[11] = "00501"
            current.append(d.element.join(["ISA", *values, elements[15][:1]]) + _end(d))
            continue
        assert d is not None
        if seg_id == "GS":
            pending_gs = elements
            continue
        if seg_id == "ST":
            st_ordinal += 1
            position = 1
            set_id = elements[0].strip() if elements else ""
            if pending_gs is None and not in_group:   # a set outside any group: in one of its own
                pending_gs = ["", "UNKNOWN", "UNKNOWN", "20000101", "0000", _ADDED_GROUP, "X", ""]
                added, in_group = [0], True
            if added is not None:
                added[0] += 1
            if pending_gs is not None:
                # the reader reports GS01/GS08 defects; pyx12 needs them right to pick the map
                gs = list(pending_gs) + [""] * (8 - len(pending_gs))
                gs[0] = FUNCTIONAL_IDS.get(set_id, gs[0])
                gs[7] = IMPLEMENTATION if set_id in ("270", "271") else gs[7]
                current.append(d.element.join(["GS", *gs]) + _end(d))
                pending_gs = None
            if set_id in ("270", "271"):
                elements = list(elements) + [""] * (3 - len(elements))
                elements[2] = IMPLEMENTATION
        elif position:
            position += 1
        if d.repetition:
            for idx in range(len(elements)):
                if (seg_id, idx + 1) in repeating and d.repetition in elements[idx]:
                    first, *rest = elements[idx].split(d.repetition)
                    extras[(st_ordinal, position, idx + 1)] = rest
                    elements = [*elements[:idx], first, *elements[idx + 1:]]
        current.append(d.element.join([seg_id, *elements]) + _end(d))
        if seg_id == "SE":
            position = 0
    close_added()
    if current:
        yield "".join(current), extras, before


def _end(d: Delimiters) -> str:
    """A segment's end in the text pyx12 reads: the terminator and a line break, unless the terminator is the line
    break itself. pyx12 stops at the first empty segment, as if the interchange had ended: a newline terminator
    followed by another newline stopped it after the ISA, and every segment after it passed unchecked."""
    return d.segment if d.segment == "\n" else d.segment + "\n"


class _Collector(pyx12.error_visitor.error_visitor):
    """Turns pyx12's error tree into Findings."""

    def __init__(self, loops: dict[tuple[int, int], str], ordinals: list[int], codes: AckCodeSets) -> None:
        self.findings: list[Finding] = []
        self.codes = codes   # pyx12's IK304/IK403 codes our tables list are errors, the others warnings
        self.loops = loops
        self.ordinals = iter(ordinals)   # each ST node's set ordinal, in the order the nodes were made (and visited)
        self.ordinal = 0
        self.isa = self.gs = self.st = self.st_set = ""

    def visit_root_pre(self, errh: Any) -> None: ...
    def visit_root_post(self, errh: Any) -> None: ...

    def visit_isa_pre(self, node: Any) -> None:
        self.isa = node.isa_trn_set_id or ""
        for code, text in node.errors:
            if code not in _OURS["isa"]:
                self.findings.append(Finding("PYX12-ISA", _pyx12_text(text), level="interchange", ack_code=code,
                                             interchange=self.isa, segment="ISA"))

    def visit_isa_post(self, node: Any) -> None: ...

    def visit_gs_pre(self, node: Any) -> None:
        self.gs = node.gs_control_num or ""
        for code, text in node.errors:
            if code not in _OURS["gs"]:
                self.findings.append(Finding("PYX12-GS", _pyx12_text(text), level="group", ack_code=code,
                                             interchange=self.isa, group=self.gs, segment="GS"))

    def visit_gs_post(self, node: Any) -> None: ...

    def visit_st_pre(self, node: Any) -> None:
        self.st = node.trn_set_control_num or ""
        self.st_set = node.trn_set_id or ""
        self.ordinal = next(self.ordinals, 0)
        for code, text in node.errors:
            if code not in _OURS["st"]:
                self.findings.append(Finding("PYX12-ST", _pyx12_text(text), level="transaction", ack_code=code,
                                             interchange=self.isa, group=self.gs, transaction=self.st,
                                             transaction_set=self.st_set, set_ordinal=self.ordinal))

    def visit_st_post(self, node: Any) -> None: ...

    def visit_seg(self, node: Any) -> None:
        loop = self.loops.get((self.ordinal, node.seg_count), "")
        self._seg = node
        for code, text, value in node.errors:
            standard = code in self.codes.segment and code not in _SEVERITY_WARNING_SEG
            self.findings.append(Finding(
                "X12-IG-SEGMENT", _pyx12_text(text, value), severity="error" if standard else "warning",
                level="segment", ack_code=code, interchange=self.isa, group=self.gs, transaction=self.st,
                transaction_set=self.st_set, loop=loop, segment=node.seg_id, position=node.seg_count or 0,
                value=value or "", set_ordinal=self.ordinal))

    def visit_ele(self, node: Any) -> None:
        seg = self._seg
        loop = self.loops.get((self.ordinal, seg.seg_count), "")
        for code, text, value in node.errors:
            if _NOT_USED in text:
                # pyx12 says "10" (exclusion condition violated) for an element, "5" (too long) for a composite;
                # X231A1's code for an implementation "not used" element that is present is I10
                code = "I10"
            element = f"{seg.seg_id}{int(node.ele_pos):02d}" if node.ele_pos else ""
            self.findings.append(Finding(
                "X12-IG-ELEMENT", _pyx12_text(text, value),
                severity="error" if code in self.codes.element else "warning",
                level="element", ack_code=code, interchange=self.isa, group=self.gs,
                transaction=self.st, transaction_set=self.st_set, loop=loop, segment=seg.seg_id,
                position=seg.seg_count or 0, element=element, data_element=node.ele_ref_num or "",
                component=int(node.subele_pos or 0), value=value or "", set_ordinal=self.ordinal))


_NOT_USED = "is marked as Not Used"   # pyx12's words for a data element or composite the guide marks N


def _pyx12_text(text: str, value: str | None = None) -> str:
    """pyx12's message with the element value it quotes in full (``len("...")``, ``(...)``) cut as ``quoted`` cuts
    one; a message still longer than four such values (one quoting a whole segment) is cut as a whole."""
    if value and len(value) > QUOTE_LIMIT and value in text:
        text = text.replace(value, quoted(value, bare=True))
    return quoted(text, 4 * QUOTE_LIMIT, bare=True)


class _WholeSegmentReads(io.StringIO):
    """pyx12 reads 8 kB at a time and, when one more read still holds no segment terminator, stops as if the
    interchange had ended: a segment over 16 kB (a 16,000-character name) ended the validation there, silently,
    and everything after it passed. Here a read goes on to the next terminator."""

    def __init__(self, text: str, terminator: str) -> None:
        super().__init__(text)
        self.terminator = terminator

    def read(self, size: int | None = -1) -> str:
        chunk = super().read(size)
        if size is None or size < 0 or not chunk or not self.terminator or self.terminator in chunk:
            return chunk
        pieces = [chunk]
        while piece := super().read(size):
            pieces.append(piece)
            if self.terminator in piece:
                break
        return "".join(pieces)


def _run_pyx12(engine: _Pyx12, text: str, extras: dict[tuple[int, int, int], list[str]], before: int = 0,
               codes: AckCodeSets | None = None) -> list[Finding]:
    """The x12n_document walk, with cached maps and repetition checks, collecting Findings; ``before`` is how many
    sets the file holds before this interchange (each finding names its set by its ordinal in the file)."""
    errh = pyx12.error_handler.err_handler()
    src = pyx12.x12file.X12Reader(_WholeSegmentReads(text, text[105:106]))
    control_map = engine.load("x12.control.00501.xml")
    node = control_map.getnodebypath("/ISA_LOOP/ISA")
    walker = walk_tree()
    icvn = fic = vriic = None
    map_file = "x12.control.00501.xml"
    loops: dict[tuple[int, int], str] = {}
    extra_findings: list[Finding] = []
    st_control = ""
    st_ordinal = before
    ordinals: list[int] = []   # the ordinal of each ST node added to pyx12's error tree, in order
    seg_id = ""
    try:
        for seg in src:
            orig_node = node
            seg_id = seg.get_seg_id()
            if seg_id == "ST":   # every ST counts, placed or not, as the reader counts them
                st_control = seg.get_value("ST02") or ""
                st_ordinal += 1
            if seg_id == "ISA":
                node = control_map.getnodebypath("/ISA_LOOP/ISA")
                walker.forceWalkCounterToLoopStart("/ISA_LOOP", "/ISA_LOOP/ISA")
            elif seg_id == "GS":
                node = control_map.getnodebypath("/ISA_LOOP/GS_LOOP/GS")
                walker.forceWalkCounterToLoopStart("/ISA_LOOP/GS_LOOP", "/ISA_LOOP/GS_LOOP/GS")
            else:
                try:
                    node, _pop, _push, walk_errors = walker.walk_errors(
                        node, seg, src.get_seg_count(), src.get_cur_line(), src.get_ls_id())
                except pyx12.errors.EngineError as exc:
                    raise X12SyntaxError(f"validation could not place segment {seg_id}: {exc}") from exc
                apply_walk_errors(errh, walk_errors)
            if node is None:
                node = orig_node
                continue
            if seg_id == "ISA":
                errh.add_isa_loop(seg, src)
                icvn = seg.get_value("ISA12")
                errh.handle_errors(src.pop_errors())
            elif seg_id == "IEA":
                errh.handle_errors(src.pop_errors())
                errh.close_isa_loop(node, seg, src)
            elif seg_id == "GS":
                fic, vriic = seg.get_value("GS01"), seg.get_value("GS08")
                new_file = engine.index.get_filename(icvn, vriic, fic)
                if new_file is None:
                    raise X12SyntaxError(f"no validation map for GS01 {quoted(fic)} / GS08 {quoted(vriic)}")
                map_file = new_file
                node = engine.load(map_file).getnodebypath("/ISA_LOOP/GS_LOOP/GS")
                errh.add_gs_loop(seg, src)
                errh.handle_errors(src.pop_errors())
            elif seg_id == "GE":
                errh.handle_errors(src.pop_errors())
                errh.close_gs_loop(node, seg, src)
            elif seg_id == "ST":
                errh.add_st_loop(seg, src)
                ordinals.append(st_ordinal)
                errh.handle_errors(src.pop_errors())
            elif seg_id == "SE":
                errh.handle_errors(src.pop_errors())
                errh.close_st_loop(node, seg, src)
            else:
                errh.add_seg(node, seg, src.get_seg_count(), src.get_cur_line(), src.get_ls_id())
                errh.handle_errors(src.pop_errors())
            position = src.get_seg_count()
            parent = node.get_parent() if hasattr(node, "get_parent") else None
            loop_id = getattr(parent, "id", "") or ""
            loops[(st_ordinal, position)] = "" if loop_id in ("HEADER", "ST_LOOP", "GS_LOOP", "ISA_LOOP") else loop_id
            apply_segment_errors(node, seg, errh)
            if extras:
                _check_repetitions(node, seg_id, st_control, st_ordinal, position, loops, extras, extra_findings)
        src.cleanup()
        errh.handle_errors(src.pop_errors())
        collector = _Collector(loops, ordinals, codes or ack_code_sets())
        errh.accept(collector)
    except Exception as exc:
        if not _raised_in_pyx12(exc):
            raise
        return [_pyx12_stopped(exc, seg_id, st_control, st_ordinal, src)]
    return collector.findings + extra_findings


def _raised_in_pyx12(exc: BaseException) -> bool:
    """True when ``exc`` comes from pyx12's own code (its innermost frame), not from ours."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("pyx12")


def _pyx12_stopped(exc: Exception, seg_id: str, st_control: str, st_ordinal: int, src: Any) -> Finding:
    """pyx12 fails with IndexError, ValueError, AttributeError ... on some damaged input (a GE01 that is no
    number, a GE or SE that closes nothing, a composite with more components than the guide's, an RD8 with two
    '-'): the report says where its element checks stopped instead of the validation failing. The reader's own
    findings are kept; an error, since what follows was not checked."""
    position = src.get_seg_count() or 0
    where = f"segment {src.get_cur_line()} of the interchange" + (f" ({seg_id})" if seg_id else "")
    message = (f"the implementation guide's element checks stopped at {where}: pyx12 cannot check it as "
               f"written ({type(exc).__name__}); the segments after it are not checked")
    if st_control and position and seg_id not in ("ISA", "GS", "GE", "IEA", "ST", "SE"):
        return Finding("X12-IG-UNCHECKED", message, level="segment", ack_code="8", transaction=st_control,
                       segment=seg_id, position=position, set_ordinal=st_ordinal)
    # in an envelope segment: the interchange is not checked past it, and a TA1 that answers it says so (024, invalid
    # interchange content) rather than "accepted" beside an error
    return Finding("X12-IG-UNCHECKED", message, level="interchange", ack_code="024", transaction=st_control)


def _check_repetitions(node: Any, seg_id: str, st_control: str, st_ordinal: int, position: int,
                       loops: dict[tuple[int, int], str], extras: dict[tuple[int, int, int], list[str]],
                       out: list[Finding]) -> None:
    for (ordinal, pos, element), values in extras.items():
        if ordinal != st_ordinal or pos != position:
            continue
        if not hasattr(node, "get_child_node_by_idx") or node.id != seg_id:
            continue
        child = node.get_child_node_by_idx(element - 1)
        if child is None:
            continue
        codes = getattr(child, "_valid_codes_set", None) or set(getattr(child, "valid_codes", []) or [])
        ref = f"{seg_id}{element:02d}"
        for i, value in enumerate(values, start=2):
            problem = ""
            if not value:
                problem, code = "empty repetition", "1"
            elif codes and value not in codes:
                problem, code = f"invalid code value {quoted(value)}", "7"
            elif child.max_len and len(value) > int(child.max_len):
                problem, code = f"value {quoted(value)} is too long", "5"
            if problem:
                out.append(Finding(
                    "X12-IG-ELEMENT", f"{ref} repetition {i}: {problem}", level="element", ack_code=code,
                    transaction=st_control, loop=loops.get((st_ordinal, position), ""), segment=seg_id,
                    position=position, element=ref, data_element=child.data_ele or "", repetition=i,
                    value=value, set_ordinal=st_ordinal))
        if len(values) + 1 > 99:
            out.append(Finding("X12-IG-ELEMENT", f"{ref} has {len(values) + 1} repetitions; at most 99",
                               level="element", ack_code="12", transaction=st_control, segment=seg_id,
                               position=position, element=ref, data_element=child.data_ele or "",
                               set_ordinal=st_ordinal))


def _rule_findings(txn: Transaction, mappings: str | None) -> list[Finding]:
    """Findings from ``mappings/x12/rules.yaml`` (situational notes that are not code lists)."""
    rules_by_segment = _rules_by_segment(txn.set_id, mappings, os.environ.get("FHIR_X12_MAPPINGS"))
    found = []
    for loop, seg in txn.root.walk():
        for rule in rules_by_segment.get(seg.id, ()):
            if loop.id not in rule["loop"]:
                continue
            value = seg.get(int(rule["element"]))
            if value not in [str(v) for v in rule["values"]]:
                continue
            if rule.get("when_segments") and not any(loop.segment(s) for s in rule["when_segments"]):
                continue
            found.append(Finding(
                f"X12-RULE-{rule['id'].upper()}", " ".join(rule["message"].split()), severity=rule["severity"],
                level="element", ack_code="", transaction=txn.control_number, transaction_set=txn.set_id,
                loop=loop.id, segment=seg.id, position=seg.position, element=f"{seg.id}{int(rule['element']):02d}",
                value=value, set_ordinal=txn.ordinal))
    return found


@lru_cache(maxsize=16)
def _rules_by_segment(set_id: str, mappings: str | None, environment: str | None) -> dict[str, list[dict[str, Any]]]:
    """The rules of ``rules.yaml`` for one transaction set, by segment id, in the file's order.

    ``environment`` is ``FHIR_X12_MAPPINGS``, which ``mappings_dir`` reads when ``mappings`` is None: with it in the
    key this is exactly as current as reading the (cached) file on every call, without resolving its path each time.
    """
    by_segment: dict[str, list[dict[str, Any]]] = {}
    for rule in load_yaml("x12/rules.yaml", mappings) or ():
        if set_id in rule.get("transaction", [set_id]):
            by_segment.setdefault(rule["segment"], []).append(rule)
    return by_segment


def _ls_le_findings(txn: Transaction) -> list[Finding]:
    """LS and LE bracket a benefit's 2120 loops: one of each, with the same LS01/LE01, around at least one 2120."""
    found = []

    def add(seg: Segment, loop: Loop, message: str, code: str) -> None:
        found.append(Finding("X12-LS-LE", message, level="segment", ack_code=code, transaction=txn.control_number,
                             transaction_set=txn.set_id, loop=loop.id, segment=seg.id, position=seg.position,
                             set_ordinal=txn.ordinal))

    stack = [txn.root]
    while stack:
        loop = stack.pop()
        # one pass over the loop's body for its child loops, LSs and LEs
        children: list[Loop] = []
        opens: list[Segment] = []
        closes: list[Segment] = []
        for item in loop.body:   # Segments and Loops, neither subclassed (model.Loop): a type test tells them apart
            if type(item) is Loop:
                children.append(item)
            elif item.id == "LS":
                opens.append(item)   # type: ignore[arg-type]
            elif item.id == "LE":
                closes.append(item)   # type: ignore[arg-type]
        stack.extend(children)
        if not opens and not closes:
            continue
        for extra in opens[len(closes):]:
            add(extra, loop, "LS without its LE", "3")              # required segment missing
        for extra in closes[len(opens):]:
            add(extra, loop, "LE without an LS before it", "2")     # unexpected segment
        for ls, le in zip(opens, closes, strict=False):
            if ls.get(1) != le.get(1):
                add(le, loop, f"LE01 {quoted(le.get(1))} does not match LS01 {quoted(ls.get(1))}", "8")
        if opens and not any(child.id.startswith("2120") for child in children):
            add(opens[0], loop, "LS/LE around no 2120 loop", "7")   # not in proper sequence: an empty bracket
    return found


def _inquiry_findings(txn: Transaction) -> list[Finding]:
    """A 270 asks about its patient: a subscriber with no dependent loop is the patient, so 2100C needs its 2110C
    (EQ); a dependent (2000D) is the patient, so 2100D needs its 2110D."""
    found = []

    def loops(loop: Loop, loop_id: str) -> list[Loop]:
        out = []
        for child in loop.loops:
            out.extend([child] if child.id == loop_id else loops(child, loop_id))
        return out

    for subscriber in loops(txn.root, "2000C"):
        dependents = subscriber.loops_of("2000D")
        patients = [(subscriber.loop("2100C"), "2110C")] if not dependents else \
            [(dependent.loop("2100D"), "2110D") for dependent in dependents]
        for name, inquiry in patients:
            if name is not None and not name.loops_of(inquiry):
                nm1 = name.segment("NM1")
                found.append(Finding("X12-INQUIRY-MISSING", f"loop {name.id} (the patient) has no {inquiry} EQ: "
                                     "a 270 must say what it asks about", level="segment", ack_code="3",
                                     transaction=txn.control_number, transaction_set=txn.set_id, loop=name.id,
                                     segment="NM1", position=nm1.position if nm1 is not None else 0,
                                     set_ordinal=txn.ordinal))
    return found


_DIAGNOSIS_POINTERS = {"EQ": 5, "EB": 14}   # segment -> its diagnosis code pointer element (270 EQ05, 271 EB14)


def _meaning_findings(txn: Transaction) -> list[Finding]:
    """What each element's syntax allows but the transaction cannot mean: an RD8 range that ends before it starts
    (DTP03), and a diagnosis pointer (270 EQ05, 271 EB14) to an HI code its patient's loop does not hold."""
    found = []

    def add(code: str, message: str, loop: Loop, seg: Segment, element: str, data_element: str, ack: str,
            value: str, component: int = 0) -> None:
        found.append(Finding(code, message, level="element", ack_code=ack, transaction=txn.control_number,
                             transaction_set=txn.set_id, loop=loop.id, segment=seg.id, position=seg.position,
                             element=element, data_element=data_element, component=component, value=value,
                             set_ordinal=txn.ordinal))

    for loop, seg in txn.root.walk():
        if seg.id == "DTP" and seg.get(2) == "RD8":
            start, _, end = seg.get(3).partition("-")
            # CCYYMMDD compares as text; a date that is no date at all is pyx12's finding (IK403 8)
            if len(start) == len(end) == 8 and start.isdigit() and end.isdigit() and end < start:
                add("X12-DATE-RANGE", f"DTP03 range {quoted(seg.get(3))} ends before it starts", loop, seg, "DTP03",
                    "1251", "8", seg.get(3))
        pointer_at = _DIAGNOSIS_POINTERS.get(seg.id)
        if pointer_at is None or not seg.get(pointer_at):
            continue
        owner = loop.parent
        while owner is not None and not owner.id.startswith("2100"):
            owner = owner.parent
        hi = owner.segment("HI") if owner is not None else None
        held = sum(1 for value in (hi.elements if hi is not None else []) if value.strip())
        element = f"{seg.id}{pointer_at:02d}"
        for index, pointer in enumerate(seg.components(pointer_at), start=1):
            if pointer and not 1 <= (whole_number(pointer) or 0) <= held:
                add("X12-DIAGNOSIS-POINTER", f"{element}-{index} points at diagnosis {quoted(pointer)}, but "
                    f"{owner.id if owner is not None else 'the patient loop'} HI holds {held}", loop, seg, element,
                    "1328", "7", pointer, index)
    return found


def validate_x12(source: Source, *, mappings: str | None = None, elements: bool = True) -> ValidationReport:
    """Validate every interchange in ``source``; raises X12SyntaxError only for unreadable input.

    ``elements=False`` keeps the reader's structure checks (envelope, loops, HL, counts) and the
    rules table but skips pyx12's element-level pass, the expensive part (for load tests).
    """
    data = _materialise(source)
    result: ReadResult = X12Reader(data, mappings=mappings).read()
    report = ValidationReport(transactions=result.transactions, interchanges=result.interchanges)
    report.findings.extend(result.all_findings)
    for txn in result.transactions:
        if txn.structure:
            report.findings.extend(_rule_findings(txn, mappings))
            report.findings.extend(_ls_le_findings(txn))
            report.findings.extend(_meaning_findings(txn))
            if txn.set_id == "270":
                report.findings.extend(_inquiry_findings(txn))
    if elements and any(t.structure for t in result.transactions):
        engine = _engine(mappings)
        repeating = _repeating_elements(mappings)
        for interchange, (text, extras, before) in enumerate(_canonical_interchanges(tokenize(data), repeating), 1):
            if "\nST" not in text and not text.startswith("ST"):
                continue
            report.findings.extend(_pyx12_findings(engine, text, extras, before, interchange, result, mappings))
    return report


def _pyx12_findings(engine: _Pyx12, text: str, extras: dict[tuple[int, int, int], list[str]], before: int,
                    interchange: int, result: ReadResult, mappings: str | None) -> list[Finding]:
    """pyx12's findings for interchange number ``interchange`` of the file, each placed in its set by ordinal (ST02s
    may repeat) and in its interchange (so may ISA13s: pyx12 reads one interchange at a time)."""
    found = _run_pyx12(engine, text, extras, before, ack_code_sets(mappings))
    for f in found:
        f.interchange_ordinal = interchange
    unsupported = {t.ordinal for t in result.transactions if not t.structure}
    ours = {(f.set_ordinal, f.position, f.segment) for f in result.all_findings if f.level == "segment"}
    by_ordinal = {t.ordinal: t for t in result.transactions}
    kept = []
    for f in found:
        if f.set_ordinal in unsupported:
            continue
        txn = by_ordinal.get(f.set_ordinal)
        _locate(f, txn)
        if f.level == "segment" and (f.set_ordinal, f.position, f.segment) in ours and f.ack_code in ("1", "2"):
            continue  # the reader already reported this misplaced segment
        if f.level == "segment" and f.ack_code == "1" and txn is not None:
            better = _qualifier_code_error(f, txn, mappings)
            if better:
                kept.extend(better)
                continue
        kept.append(f)
    return kept


_MISSING_LOOP = re.compile(r"loop .*\((\w+)\) missing|\((\w+)\) missing")


def _locate(f: Finding, txn: Transaction | None) -> None:
    """Name the loop from our own loop tree; a missing loop is named by pyx12's message."""
    missing = _MISSING_LOOP.search(f.message) if f.ack_code in ("3", "I7", "I6") else None
    if missing and "loop" in f.message.lower():
        f.loop = missing.group(1) or missing.group(2)
        return
    if txn is None or not 0 < f.position <= len(txn.table.owner):
        return
    loop_id = txn.table.loops[txn.table.owner[f.position - 1]][0]
    f.loop = "" if loop_id == "ST" else loop_id


def _qualifier_code_error(f: Finding, txn: Transaction, mappings: str | None) -> list[Finding]:
    """pyx12 matches segments on their first element's code, so ``EB*ZZ`` reads as an unknown
    segment. Where our reader placed the segment in its loop, report the bad code instead."""
    table = txn.table
    parts = table.parts(f.position)
    if parts is None:
        return []
    loop_id = table.loops[table.owner[f.position - 1]][0]
    spec = load_transaction(txn.set_id, mappings)
    nodes = [n for n in spec.nodes if n.seg_id == parts[0] and n.loop is not None and n.loop.loop_id == loop_id]
    value = parts[1].strip() if len(parts) > 1 else ""
    if not nodes or not nodes[0].elements or value in (nodes[0].elements[0].codes or {value}):
        return []
    first = nodes[0].elements[0]
    common = {"interchange": f.interchange, "group": f.group, "transaction": f.transaction,
              "transaction_set": f.transaction_set, "loop": loop_id, "segment": parts[0], "position": f.position,
              "set_ordinal": f.set_ordinal, "interchange_ordinal": f.interchange_ordinal}
    return [
        Finding("X12-IG-SEGMENT", f"{parts[0]} has data element errors", level="segment", ack_code="8", **common),
        Finding("X12-IG-ELEMENT", f"{quoted(value)} is not a valid code for {first.name} ({first.ref})",
                level="element", ack_code="7" if value else "1", element=first.ref, data_element=first.ele, value=value,
                **common),
    ]


def _materialise(source: Source) -> bytes | str:
    if isinstance(source, (str, bytes)):
        return source
    if isinstance(source, bytearray):
        return bytes(source)
    if hasattr(source, "read"):
        return source.read()  # type: ignore[union-attr]
    with open(source, "rb") as handle:  # type: ignore[arg-type]
        return handle.read()
