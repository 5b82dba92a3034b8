"""Hypothesis strategies that damage valid 270s the way senders and attackers do (shared by the fuzz tests).

A 270 is taken apart into its ISA elements and its other segments (lists of elements), changed by a list of
mutations, and written back with the delimiters it came with or others. The mutations are the ones real files and
hostile clients carry: element values with delimiters, non-ASCII or control characters, impossible or reversed
dates, unknown or repeated service types, long identifiers, HL ids that point nowhere or at themselves, segments
deleted, duplicated or moved, wrong counts and control numbers, broken ISA fixed widths, several sets, groups and
interchanges, many subscribers or EQs, truncation and binary noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from tests.conftest import CORPUS, FIXTURES

SOURCES: list[Path] = sorted([*(FIXTURES / "x12" / "270").glob("*.270"), *(FIXTURES / "golden" / "270").glob("*.270")])
# read-only, beside the checkout (FHIR_X12_CORPUS); never copied into the repository
CORPUS_270: list[Path] = sorted(p for p in CORPUS.glob("*/*") if p.suffix == ".270" or "HS270" in p.name
                                or p.name.endswith("x270.txt")) if CORPUS.is_dir() else []

# element values that have broken readers, writers and translators somewhere
NASTY_VALUES = [
    "", " ", "*", "~", ":", "^", "|", ">", "}", "O*BRIEN~", "O'BRIEN", "MÜLLER", "ÅSTRÖM", "名前", "\u00b2", "\x00",
    "\x1c", "\x1d", "\t", "\r\n", "\u2028", "\ufeff", "-", "0", "-1", "1.5", "1E5", "NaN", "Infinity",
    "20250230", "20251301", "2025", "202501", "00000000", "99999999", "19000101", "29991231", "2025-01-01",
    "20250101-20240101", "20250101-", "-20250101", "20250101-20250101-20250102", "20250101:20251231",
    "30", "1", "AL", "ZZ", "999", "30^1^33^35^47^48^50^86^88^98^AL^MH^UC", "^".join(["30"] * 120),
    "HC:99213", "HC:99213:25:59:XX:YY:ZZ:QQ", "HC", ":99213", "ZZ:1", "N4:00002-7597-01",
    "ABK:M5450", "ABK", "BK:4019", "1:2:3:4:5", "1:99", "A" * 81, "1" * 5000, "X" * 20_000 + "Y",
    "IL", "03", "MI", "XX", "PI", "22", "23", "21", "20", "2", "3", "4", "1P", "1", "00", "18", "ZZZ",
]
# X12 element separators, components, repetitions and terminators seen in the wild (element, rep, comp, seg, after)
DELIMITER_SETS = [
    ("*", "^", ":", "~", "\n"), ("*", "^", ">", "~", "\r\n"), ("|", "}", ">", "~", ""), ("*", "^", ":", "~", ""),
    ("^", "{", "|", "\n", ""), ("\x1d", "\x1f", "\x1e", "\x1c", ""), ("*", "*", ":", "~", "\n"),
    ("+", "^", ":", "'", "\n"), ("*", "U", ":", "~", ""),
]
ISA_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1)


@dataclass
class Interchange270:
    """A 270 interchange taken apart: ISA elements (16, after ``ISA``), the other segments, the delimiters."""

    isa: list[str]
    segments: list[list[str]]
    element: str
    repetition: str
    component: str
    terminator: str
    after: str = "\n"
    prefix: str = ""
    extra: list[str] = field(default_factory=list)   # raw text appended (another interchange, noise)

    def render(self) -> str:
        e, t = self.element, self.terminator + self.after
        isa = e.join(["ISA", *self.isa[:10], self.repetition if self.isa[10] == self._rep else self.isa[10],
                      *self.isa[11:15], self.component if self.isa[15] == self._comp else self.isa[15]])
        body = "".join(e.join(seg) + t for seg in self.segments)
        return self.prefix + isa + t + body + "".join(self.extra)

    _rep = "\x00REP"
    _comp = "\x00COMP"


def parse_270(text: str) -> Interchange270:
    """The first interchange of a 270 file (any delimiters, any ISA padding) as an :class:`Interchange270`."""
    from gateway.x12.tokenizer import tokenize

    segments: list[list[str]] = []
    delimiters = None
    for batch in tokenize(text):
        if batch.isa is not None and delimiters is not None:
            break   # a second interchange: the first is enough
        delimiters = delimiters or batch.delimiters
        segments += [list(parts) for parts in batch.split()]
    assert delimiters is not None and segments and segments[0][0] == "ISA", text[:120]
    isa = [value.ljust(width)[:width] if index in (1, 3, 5, 7) else value
           for index, (value, width) in enumerate(zip(segments[0][1:16], ISA_WIDTHS, strict=False))]
    isa += [""] * (15 - len(isa)) + [Interchange270._comp]
    isa[10] = Interchange270._rep
    rep, component = delimiters.repetition, delimiters.component
    after = "\n" if "~\n" in text or "\n" in text[:200] and delimiters.segment != "\n" else ""

    def placeholders(value: str) -> str:
        if rep:
            value = value.replace(rep, "\x00REPCHAR")
        return value.replace(component, "\x00COMPCHAR")

    body = [[placeholders(p) for p in seg] for seg in segments[1:]]
    return Interchange270(isa, body, delimiters.element, rep or "^", component, delimiters.segment, after)


def _with_delimiters(x: Interchange270) -> Interchange270:
    """Placeholders for the repetition and component separators inside values become the current ones."""
    x.segments = [[p.replace("\x00REPCHAR", x.repetition).replace("\x00COMPCHAR", x.component) for p in seg]
                  for seg in x.segments]
    return x


def _index_of(x: Interchange270, seg_id: str, nth: int = 0) -> int | None:
    found = [i for i, seg in enumerate(x.segments) if seg[0] == seg_id]
    return found[nth % len(found)] if found else None


def _set(seg: list[str], index: int, value: str) -> None:
    seg += [""] * (index + 1 - len(seg))
    seg[index] = value


def apply(x: Interchange270, mutation: tuple) -> None:
    """One mutation, in place; indexes wrap around so any integer picks something."""
    kind, *args = mutation
    segs = x.segments
    if kind == "value":   # an element's value (segment by id and ordinal, or by position)
        target, nth, element, value = args
        i = _index_of(x, target, nth) if isinstance(target, str) else target % len(segs) if segs else None
        if i is not None and element > 0:
            _set(segs[i], element, value)
    elif kind == "delete" and segs:
        del segs[args[0] % len(segs)]
    elif kind == "duplicate" and segs:
        i = args[0] % len(segs)
        segs.insert(i, list(segs[i]))
    elif kind == "move" and segs:
        seg = segs.pop(args[0] % len(segs))
        segs.insert(args[1] % (len(segs) + 1), seg)
    elif kind == "isa":   # an ISA element of the wrong width or content
        index, value = args
        x.isa[index % 16] = value
    elif kind == "delimiters":
        x.element, x.repetition, x.component, x.terminator, x.after = args[0]
    elif kind == "subscribers":   # the last 2000C (HL 22 to before SE) repeated, with fresh HL ids
        _repeat_subscribers(x, args[0])
        recount(x)
    elif kind == "eqs":
        i = _index_of(x, "EQ")
        if i is not None:
            for _ in range(args[0]):
                segs.insert(i, list(segs[i]))
        recount(x)
    elif kind == "transactions":   # the ST..SE set repeated inside its group (fresh ST02/SE02)
        _repeat_between(x, "ST", "SE", args[0], control_index=2)
        recount(x)
    elif kind == "groups":
        _repeat_between(x, "GS", "GE", args[0], control_index=6)
        recount(x)
    elif kind == "interchanges":   # the whole interchange again after itself (same or another ISA13)
        count, same = args
        for n in range(count):
            copy = Interchange270(list(x.isa), [list(s) for s in x.segments], x.element, x.repetition, x.component,
                                  x.terminator, x.after)
            if not same:
                copy.isa[12] = f"{(int(x.isa[12]) + n + 1) % 10**9:09d}" if x.isa[12].isdigit() else x.isa[12]
                for seg in copy.segments:
                    if seg[0] == "IEA" and len(seg) > 2:
                        seg[2] = copy.isa[12]
            x.extra.append(_with_delimiters(copy).render())
    elif kind == "prefix":
        x.prefix = args[0]


def recount(x: Interchange270) -> None:
    """SE01, GE01 and IEA01 counted again (after segments, sets or groups were added on purpose)."""
    count = sets = groups = 0
    for seg in x.segments:
        count += 1
        if seg[0] == "ST":
            count, sets = 1, sets + 1
        elif seg[0] == "SE" and len(seg) > 1:
            seg[1] = str(count)
        elif seg[0] == "GS":
            sets, groups = 0, groups + 1
        elif seg[0] == "GE" and len(seg) > 1:
            seg[1] = str(sets)
        elif seg[0] == "IEA" and len(seg) > 1:
            seg[1] = str(groups)


def _repeat_subscribers(x: Interchange270, count: int) -> None:
    segs = x.segments
    starts = [i for i, s in enumerate(segs) if s[0] == "HL" and len(s) > 3 and s[3] == "22"]
    end = _index_of(x, "SE")
    if not starts or end is None or end < starts[-1]:
        return
    block = segs[starts[-1]:end]
    ids = [int(s[1]) for s in segs if s[0] == "HL" and len(s) > 1 and s[1].isdigit()]
    next_id = max(ids, default=0) + 1
    added = []
    for _ in range(count):
        mapping: dict[str, str] = {}
        for seg in block:
            seg = list(seg)
            if seg[0] == "HL" and len(seg) > 1:
                mapping[seg[1]] = str(next_id)
                seg[1] = str(next_id)
                next_id += 1
                if len(seg) > 2 and seg[2] in mapping:
                    seg[2] = mapping[seg[2]]
            added.append(seg)
    segs[end:end] = added


def _repeat_between(x: Interchange270, opener: str, closer: str, count: int, *, control_index: int) -> None:
    """The first ``opener`` .. ``closer`` block (ST..SE, GS..GE) repeated after itself, each copy with its own control
    number (the opener's ``control_index`` and the closer's 02, one more per copy)."""
    segs = x.segments
    start, end = _index_of(x, opener), _index_of(x, closer)
    if start is None or end is None or end < start:
        return
    added = []
    for n in range(count):
        for seg in segs[start:end + 1]:
            seg = list(seg)
            index = control_index if seg[0] == opener else 2 if seg[0] == closer else 0
            if index and index < len(seg) and seg[index].isdigit():
                seg[index] = str(int(seg[index]) + n + 1).zfill(len(seg[index]))
            added.append(seg)
    segs[end + 1:end + 1] = added


SEGMENT_IDS = ["ISA", "GS", "ST", "BHT", "HL", "NM1", "TRN", "DMG", "DTP", "EQ", "III", "REF", "N3", "N4", "PRV",
               "INS", "HI", "AMT", "SE", "GE", "IEA"]
values = st.one_of(st.sampled_from(NASTY_VALUES), st.text(max_size=12),
                   st.text(alphabet="0123456789-", max_size=18))
mutation = st.one_of(
    st.tuples(st.just("value"), st.sampled_from(SEGMENT_IDS[1:]), st.integers(0, 5), st.integers(1, 17), values),
    st.tuples(st.just("value"), st.integers(0, 60), st.just(0), st.integers(1, 12), values),
    st.tuples(st.just("delete"), st.integers(0, 60)),
    st.tuples(st.just("duplicate"), st.integers(0, 60)),
    st.tuples(st.just("move"), st.integers(0, 60), st.integers(0, 60)),
    st.tuples(st.just("isa"), st.integers(0, 15), st.one_of(st.sampled_from(["", " ", "0", "00401", "00510", "ABC",
                                                                            "1234567890", "T", "X", "2"]),
                                                           st.text(max_size=16))),
    st.tuples(st.just("delimiters"), st.sampled_from(DELIMITER_SETS)),
    st.tuples(st.just("subscribers"), st.integers(1, 40)),
    st.tuples(st.just("eqs"), st.integers(1, 120)),
    st.tuples(st.just("transactions"), st.integers(1, 3)),
    st.tuples(st.just("groups"), st.integers(1, 2)),
    st.tuples(st.just("interchanges"), st.integers(1, 2), st.booleans()),
    st.tuples(st.just("prefix"), st.sampled_from(["", "\ufeff", "hello\n", "  \r\n", "ISA"])),
)


@st.composite
def damaged_270(draw: st.DrawFn, sources: list[Path] | None = None) -> tuple[str, bytes]:
    """(name of the source, damaged bytes): a valid 270 with 1-4 mutations, sometimes truncated or noised."""
    path = draw(st.sampled_from(sources or SOURCES))
    x = parse_270(path.read_text(encoding="utf-8"))
    for change in draw(st.lists(mutation, min_size=1, max_size=4)):
        apply(x, change)
    data = _with_delimiters(x).render().encode("utf-8")
    tail = draw(st.sampled_from(["", "", "", "truncate", "noise"]))
    if tail == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif tail == "noise":
        where = draw(st.integers(0, len(data)))
        data = data[:where] + draw(st.binary(min_size=1, max_size=40)) + data[where:]
    return path.name, data


# ---------------------------------------------------------------------------------------------------------------------
# plausible 270s: valid (mostly) and about the demo members, so the simulator answers them with a 271


def _members() -> list[dict]:
    import json

    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((FIXTURES / "members").glob("*.json"))]


MEMBERS = _members()
PEOPLE = [(m["memberid"], m["lastname"], m["firstname"], m["dob"], None) for m in MEMBERS] + [
    (d.get("depmemberid") or "", d["lastname"], d["firstname"], d["dob"], m) for m in MEMBERS
    for d in m.get("dependents") or []]
SERVICE_TYPES = ["30", "1", "33", "35", "47", "48", "50", "86", "88", "98", "AL", "MH", "UC", "62", "A6", "BZ",
                 "4", "5", "AE", "PT", "23", "CF", "89", "92"]
LAST_NAME_FORMS = [lambda n: n, str.lower, lambda n: n + " JR", lambda n: n.replace("-", " "), lambda n: n + ",",
                   lambda n: "X" + n, lambda n: n.replace("'", "")]


def _person_of(x: Interchange270, qualifier: str) -> int | None:
    return next((i for i, s in enumerate(x.segments) if s[0] == "NM1" and len(s) > 1 and s[1] == qualifier), None)


def apply_plausible(x: Interchange270, change: tuple) -> None:
    """One change a valid 270 may carry: another member asked about (by id, name, birth date), another name form,
    service types, a date of service around today."""
    from datetime import date, timedelta

    kind, *args = change
    segs = x.segments
    if kind == "member":
        person, form, with_id, dob_shift = args
        memberid, last, first, dob, subscriber = person
        i = _person_of(x, "IL")
        if i is None:
            return
        if subscriber is not None and with_id == "dependent" and _person_of(x, "03") is not None:
            j = _person_of(x, "03")
            segs[i] = ["NM1", "IL", "1", subscriber["lastname"], subscriber["firstname"], "", "", "", "MI",
                       subscriber["memberid"]]
            segs[j] = ["NM1", "03", "1", form(last), first]
            i = j
        else:
            segs[i] = ["NM1", "IL", "1", form(last), first, "", "", "", *(["MI", memberid] if with_id and memberid
                                                                            else [])]
            while segs[i][-1] == "":
                segs[i].pop()
        dmg = next((k for k in range(i + 1, min(i + 6, len(segs))) if segs[k][0] == "DMG"), None)
        born = date.fromisoformat(dob) + timedelta(days=dob_shift)
        if dmg is not None:
            segs[dmg] = ["DMG", "D8", born.strftime("%Y%m%d"), *segs[dmg][3:4]]
    elif kind == "service_types":
        i = _index_of(x, "EQ", args[1])
        if i is not None:
            segs[i] = ["EQ", "\x00REPCHAR".join(args[0]), *segs[i][2:]]
    elif kind == "date":
        offset, length = args
        start = date.today() + timedelta(days=offset)
        value = ("D8", start.strftime("%Y%m%d")) if length == 0 else (
            "RD8", f"{start:%Y%m%d}-{start + timedelta(days=length):%Y%m%d}")
        for seg in segs:
            if seg[0] == "DTP" and len(seg) > 1 and seg[1] == "291":
                seg[2:] = list(value)
    elif kind == "procedure":
        i = _index_of(x, "EQ", args[1])
        if i is not None:
            _set(segs[i], 2, "\x00COMPCHAR".join(args[0]))


plausible_change = st.one_of(
    st.tuples(st.just("member"), st.sampled_from(PEOPLE), st.sampled_from(LAST_NAME_FORMS),
              st.sampled_from([True, False, "dependent"]), st.sampled_from([0, 0, 0, 1, -365])),
    st.tuples(st.just("service_types"), st.lists(st.sampled_from(SERVICE_TYPES), min_size=1, max_size=12),
              st.integers(0, 3)),
    st.tuples(st.just("date"), st.integers(-4000, 120), st.sampled_from([0, 0, 1, 30, 400])),
    st.tuples(st.just("procedure"), st.sampled_from([("HC", "99213"), ("HC", "70551"), ("AD", "D0120"),
                                                      ("HC", "99213", "25"), ("N4", "00002759701")]),
              st.integers(0, 3)),
)


@st.composite
def plausible_270(draw: st.DrawFn) -> tuple[str, bytes]:
    """(name of the source, bytes): a fixture 270 asking about a demo member, in some delimiters, with 1-4
    changes a sender may validly make (and, at times, one damaging mutation on top)."""
    path = draw(st.sampled_from(SOURCES))
    x = parse_270(path.read_text(encoding="utf-8"))
    for change in draw(st.lists(plausible_change, min_size=1, max_size=4)):
        apply_plausible(x, change)
    if draw(st.booleans()):
        apply(x, ("delimiters", draw(st.sampled_from(DELIMITER_SETS[:6]))))
    for change in draw(st.lists(st.tuples(st.just("subscribers"), st.integers(1, 5)), max_size=1)):
        apply(x, change)
    return path.name, _with_delimiters(x).render().encode("utf-8")
