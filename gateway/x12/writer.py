"""Strict X12 writer: safe values, correct counts and control numbers, fixed-width ISA.

Values are upper-cased and transliterated into the X12 basic character set, delimiter characters
are removed so data can never inject a segment, and values are cut to their element's maximum
length. Every change is reported as a WriteNote; nothing is changed silently.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Union

from gateway.x12.model import Delimiters

# Element value: a string, a composite (tuple of components) or repetitions (list of either).
Value = Union[str, tuple[str, ...], list[Union[str, tuple[str, ...]]], None]

BASIC_PUNCTUATION = set(" !\"&'()*+,-./:;?=")
EXTENDED_PUNCTUATION = set("%@[]_{}\\|<>~^`#$")
# Elements whose content is case-sensitive or needs the extended set (URLs, e-mail addresses).
EXTENDED_ELEMENTS = frozenset({"PER04", "PER06", "PER08"})
_SPECIAL = {"ß": "SS", "Æ": "AE", "æ": "AE", "Ø": "O", "ø": "O", "Œ": "OE", "œ": "OE", "Ł": "L", "ł": "L",
            "Đ": "D", "đ": "D", "Þ": "TH", "þ": "TH", "Ð": "D", "ð": "D", "ı": "I"}

DEFAULT_DELIMITERS = Delimiters("*", "^", ":", "~")
# a non-negative number without leading zeros or an exponent, which Decimal would leave as it is
_PLAIN_NUMBER = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?").fullmatch


@dataclass(frozen=True, slots=True)
class WriteNote:
    """One change the writer made to a value so that it could be sent."""

    segment: str
    element: str
    original: str
    written: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"segment": self.segment, "element": self.element, "original": self.original,
                "written": self.written, "reason": self.reason}


def transliterate(text: str) -> str:
    """Latin letters without accents (``Müller`` -> ``Muller``); other scripts dropped."""
    out = []
    for ch in text:
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
            continue
        decomposed = unicodedata.normalize("NFKD", ch)
        out.append("".join(c for c in decomposed if not unicodedata.combining(c)))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Envelope:
    """Interchange and group header values: who sends to whom, control numbers, and the clock."""

    sender_id: str
    receiver_id: str
    interchange_control: int
    now: datetime
    sender_qualifier: str = "ZZ"
    receiver_qualifier: str = "ZZ"
    group_control: int | None = None       # defaults to the interchange control number
    application_sender: str | None = None   # GS02, defaults to the ISA sender id
    application_receiver: str | None = None
    usage: str = "P"
    ack_requested: str = "0"
    first_transaction_control: int = 1


class ElementLimits(dict[str, tuple[int, int]]):
    """Each element's (min, max) length (``{"NM103": (1, 60)}``), with the maximums also by segment and position.

    Built once and shared (not to be changed afterwards): a writer is made for every message, and deriving
    the per-segment lookup from a plain dict each time would cost more than it saves.
    """

    def __init__(self, limits: Mapping[str, tuple[int, int]] = {}) -> None:  # noqa: B006 - never mutated
        super().__init__(limits)
        self.by_segment = _max_lengths_by_segment(self)


def _max_lengths_by_segment(limits: Mapping[str, tuple[int, int]]) -> dict[str, dict[int, int]]:
    """``{"NM1": {3: 60, ...}}``: one lookup per segment instead of building ``"NM103"`` for every value."""
    by_segment: dict[str, dict[int, int]] = {}
    for ref, (_, maximum) in limits.items():
        if len(ref) > 2 and ref[-2:].isdigit():
            by_segment.setdefault(ref[:-2], {})[int(ref[-2:])] = maximum
    return by_segment


@dataclass
class WriteResult:
    text: str
    notes: list[WriteNote] = field(default_factory=list)
    segment_counts: list[int] = field(default_factory=list)
    # each segment as written, in order (ISA, GS, then each transaction's ST, body and SE ...): what was sent of any
    # one of them, without reading the text again
    segments: list[str] = field(default_factory=list)


@lru_cache(maxsize=32)
def _already_clean(forbidden: frozenset[str]) -> Callable[[str], re.Match[str] | None]:
    """Values already in the basic character set (upper case, no delimiters, single inner spaces) need no work:
    most of what a 270 or 271 carries. One matcher per delimiter set (a writer is made for every message)."""
    basic = sorted(set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") | (BASIC_PUNCTUATION - forbidden - {" "}))
    word = "[" + re.escape("".join(basic)) + "]+"
    return re.compile(f"(?:{word}(?: {word})*)?").fullmatch


Matcher = Callable[[str], Union[re.Match[str], None]]


@lru_cache(maxsize=32)
def _segment_already_clean(forbidden: frozenset[str], element: str) -> tuple[Matcher, Matcher]:
    """``_already_clean`` for a whole segment's values joined by the element separator: one match per segment
    instead of one per value. Only meaningful when no value holds the separator itself (the caller counts them).

    Two matchers: for values without a space the character set is all there is to check, and one character class
    matches several times faster than the word-by-word pattern that values with spaces need.
    """
    basic = re.escape("".join(sorted(set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") |
                                     (BASIC_PUNCTUATION - forbidden - {" "}))))
    separator = re.escape(element)
    value = f"(?:[{basic}]+(?: [{basic}]+)*)?"
    return re.compile(f"[{basic}{separator}]*").fullmatch, re.compile(f"{value}(?:{separator}{value})*").fullmatch


def _joined_if_clean(values: Sequence[Value], separator: str, matchers: tuple[Matcher, Matcher]) -> str | None:
    """``values`` joined by ``separator`` when all are plain strings already fit to send, checked in one match
    (``matchers``: ``_segment_already_clean``'s for that separator); None when one is not a string, holds the
    separator itself (counted), or needs cleaning."""
    try:
        joined = separator.join(values)   # type: ignore[arg-type]
    except TypeError:   # a composite, repetitions, None or a number among them
        return None
    unspaced, spaced = matchers
    if joined.count(separator) != len(values) - 1 or not (spaced(joined) if " " in joined else unspaced(joined)):
        return None
    return joined


def _within(values: Sequence[str], max_lengths: Mapping[int, int]) -> bool:
    """Every value no longer than its element's maximum (``max_lengths``: element position -> maximum)."""
    count = len(values)
    return all(len(values[index - 1]) <= maximum for index, maximum in max_lengths.items() if index <= count)


class X12Writer:
    """Renders segments with one set of delimiters, sanitising every value."""

    def __init__(self, delimiters: Delimiters = DEFAULT_DELIMITERS,
                 limits: dict[str, tuple[int, int]] | None = None, *, line_breaks: bool = False,
                 echoed: frozenset[str] = frozenset()) -> None:
        """``echoed`` names elements (``TRN02``) that carry a value received from the partner, to be sent back as it
        came: their case and the extended character set are kept, as for ``EXTENDED_ELEMENTS`` (delimiters and
        control characters still go)."""
        chars = [delimiters.element, delimiters.component, delimiters.segment]
        if delimiters.repetition:
            chars.append(delimiters.repetition)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError(f"delimiters must be four distinct single characters: {delimiters!r}")
        if any(c.isalnum() or c == " " for c in chars):
            raise ValueError(f"delimiters cannot be letters, digits or spaces: {delimiters!r}")
        self.delimiters = delimiters
        self.limits = limits or {}
        self._max_lengths = (limits.by_segment if isinstance(limits, ElementLimits)
                             else _max_lengths_by_segment(self.limits))
        self.line_breaks = line_breaks
        self.echoed = EXTENDED_ELEMENTS | echoed
        self.notes: list[WriteNote] = []
        self._forbidden = set(chars)
        self._already_clean = _already_clean(frozenset(chars))
        self._elements_clean = _segment_already_clean(frozenset(chars), delimiters.element)
        self._repetitions_clean = (_segment_already_clean(frozenset(chars), delimiters.repetition)
                                   if delimiters.repetition else None)

    # -- values ------------------------------------------------------------------------------
    def clean(self, value: str, seg_id: str, ref: str) -> str:
        """The value as it may be sent: basic character set, no delimiters, within length."""
        if self._already_clean(value):
            limit = self.limits.get(ref)
            if not limit or len(value) <= limit[1]:
                return value
        original = value
        reasons = []
        extended = ref in self.echoed or ref.split("-")[0] in self.echoed
        if not value.isascii():
            value = transliterate(value)
            reasons.append("transliterated to ASCII")
        if not extended and value != value.upper():
            value = value.upper()
        kept = []
        dropped_delim = dropped_other = False
        for ch in value:
            if ch in self._forbidden:
                dropped_delim = True
            elif ch.isalnum() and ch.isascii() or ch in BASIC_PUNCTUATION or extended and ch in EXTENDED_PUNCTUATION:
                kept.append(ch)
            elif ch in "\r\n\t":
                kept.append(" ")
            else:
                dropped_other = True
        value = " ".join("".join(kept).split()) if kept else ""
        if dropped_delim:
            reasons.append("delimiter characters removed")
        if dropped_other:
            reasons.append("characters outside the X12 character set removed")
        limit = self.limits.get(ref)
        if limit and len(value) > limit[1]:
            value = value[: limit[1]].rstrip()
            reasons.append(f"cut to the maximum length {limit[1]}")
        if reasons and value != original:
            self.notes.append(WriteNote(seg_id, ref, original, value, "; ".join(reasons)))
        return value

    def _element(self, value: Value, seg_id: str, index: int) -> str:
        ref = f"{seg_id}{index:02d}"
        if value is None:
            return ""
        if isinstance(value, list):
            if not self.delimiters.repetition:
                raise ValueError(f"{ref}: repetitions need a repetition separator")
            plain = self._plain_repetitions(value, ref)
            if plain is not None:
                return plain
            parts = [self._element(v, seg_id, index) for v in value]
            return self.delimiters.repetition.join(p for p in parts if p)
        if isinstance(value, tuple):
            comps = [self.clean(str(c), seg_id, f"{ref}-{i}") if c not in (None, "") else ""
                     for i, c in enumerate(value, start=1)]
            while comps and not comps[-1]:
                comps.pop()
            return self.delimiters.component.join(comps)
        return self.clean(str(value), seg_id, ref)

    def _plain_repetitions(self, values: list[Value], ref: str) -> str | None:
        """Repetitions that are all plain strings already fit to send (a 271's list of service types), joined
        without the empty ones, after one match over them all; None when any needs ``clean`` or is not a string,
        and then each goes through ``_element`` as before (the same text: this only skips the per-value calls)."""
        repetition = self.delimiters.repetition
        if _joined_if_clean(values, repetition, self._repetitions_clean) is None:   # type: ignore[arg-type]
            return None
        limit = self.limits.get(ref)
        if limit and any(len(v) > limit[1] for v in values):   # type: ignore[arg-type]
            return None
        return repetition.join([v for v in values if v])   # type: ignore[misc]

    # -- segments ----------------------------------------------------------------------------
    def segment(self, seg_id: str, *elements: Value) -> str:
        """One segment, trailing empty elements removed."""
        return self._render(seg_id, elements)

    def _render(self, seg_id: str, elements: Sequence[Value]) -> str:
        """``segment``, its values as a sequence (a transaction body's, without unpacking them)."""
        max_lengths = self._max_lengths.get(seg_id)
        return self._plain_segment(seg_id, elements, max_lengths) or self._segment_by_value(seg_id, elements,
                                                                                           max_lengths)

    def _plain_segment(self, seg_id: str, elements: Sequence[Value], max_lengths: Mapping[int, int] | None
                       ) -> str | None:
        """The segment when its values are all plain strings already fit to send, as most of a 270's or 271's are:
        one match over the values joined instead of one per value. None otherwise (a composite, repetitions, None,
        a value to clean or cut): value by value then."""
        separator = self.delimiters.element
        joined = _joined_if_clean(elements, separator, self._elements_clean)
        if joined is None or (max_lengths is not None and not _within(elements, max_lengths)):  # type: ignore[arg-type]
            return None
        values = joined.rstrip(separator)   # trailing empty elements removed
        ending = self.delimiters.segment + "\n" if self.line_breaks else self.delimiters.segment
        return f"{seg_id}{separator}{values}{ending}" if values else seg_id + ending

    def _segment_by_value(self, seg_id: str, elements: Sequence[Value], max_lengths: Mapping[int, int] | None) -> str:
        """``segment`` when the one match over the joined values does not do: each value checked, and cleaned or
        rendered (composites, repetitions) as it needs."""
        already_clean = self._already_clean
        rendered = []
        for index, value in enumerate(elements, start=1):
            # most values are plain strings already fit to send: no reference to build, nothing to change
            if type(value) is str and already_clean(value) and (
                    max_lengths is None or len(value) <= max_lengths.get(index, len(value))):
                rendered.append(value)
            else:
                rendered.append(self._element(value, seg_id, index))
        while rendered and not rendered[-1]:
            rendered.pop()
        d = self.delimiters
        return d.element.join([seg_id, *rendered]) + d.segment + ("\n" if self.line_breaks else "")

    def isa(self, env: Envelope) -> str:
        d = self.delimiters
        fields = [
            "00", " " * 10, "00", " " * 10,
            self._fixed(env.sender_qualifier, 2, "ISA05"), self._fixed(env.sender_id, 15, "ISA06"),
            self._fixed(env.receiver_qualifier, 2, "ISA07"), self._fixed(env.receiver_id, 15, "ISA08"),
            yymmdd(env.now), hhmm(env.now),
            d.repetition or "U", "00501", f"{env.interchange_control:09d}", env.ack_requested, env.usage,
            d.component,
        ]
        if not 0 < env.interchange_control < 10**9:
            raise ValueError("interchange control number must be 1..999999999")
        return d.element.join(["ISA", *fields]) + d.segment + ("\n" if self.line_breaks else "")

    def _fixed(self, value: str, width: int, ref: str) -> str:
        cleaned = self.clean(value, "ISA", ref)
        if len(cleaned) > width:
            self.notes.append(WriteNote("ISA", ref, value, cleaned[:width], f"cut to the fixed width {width}"))
            cleaned = cleaned[:width]
        return cleaned.ljust(width)

    def interchange(self, env: Envelope, functional_id: str, set_id: str, implementation: str,
                    transactions: Iterable[Sequence[tuple[str, Sequence[Value]]]]) -> WriteResult:
        """A complete interchange with one functional group holding ``transactions``.

        Each transaction is its body (BHT ... the last segment before SE) as (segment id, elements);
        ST and SE, with the segment count and control numbers, are added here.
        """
        group_control = env.group_control if env.group_control is not None else env.interchange_control
        out = [self.isa(env)]
        out.append(self.segment(
            "GS", functional_id, env.application_sender or env.sender_id,
            env.application_receiver or env.receiver_id, x12_date(env.now), hhmm(env.now),
            str(group_control), "X", implementation))
        counts = []
        control = env.first_transaction_control
        for body in transactions:
            st_control = f"{control:04d}"
            out.append(self.segment("ST", set_id, st_control, implementation))
            out.extend(self._render(seg_id, elements) for seg_id, elements in body)
            count = len(body) + 2
            out.append(self.segment("SE", str(count), st_control))
            counts.append(count)
            control += 1
        out.append(self.segment("GE", str(len(counts)), str(group_control)))
        out.append(self.segment("IEA", "1", f"{env.interchange_control:09d}"))
        return WriteResult("".join(out), list(self.notes), counts, out)


def application_code(*candidates: str | None, default: str = "UNKNOWN") -> str:
    """What a reply's GS02 or GS03 (AN 2 to 15) carries: the first candidate of 2 to 15 letters, digits, spaces, '-'
    or '.' (the request's GS03 or GS02, then its ISA id), which no delimiter set or cleaning changes, else
    ``default``. An ISA id is fixed-width and may be a single character padded, which as a GS02 made the reply
    invalid."""
    for value in candidates:
        value = (value or "").strip()
        if 2 <= len(value) <= 15 and all(ch.isascii() and (ch.isalnum() or ch in " -.") for ch in value):
            return value
    return default


def x12_date(value: date) -> str:
    """CCYYMMDD, exactly as ``strftime("%Y%m%d")`` writes it, at a third of its cost; a year before 1000 (which it
    leaves unpadded) still goes through it."""
    if value.year < 1000:
        return value.strftime("%Y%m%d")
    return f"{value.year}{value.month:02d}{value.day:02d}"


def yymmdd(value: date) -> str:
    """YYMMDD (ISA09), as ``strftime("%y%m%d")`` writes it."""
    return f"{value.year % 100:02d}{value.month:02d}{value.day:02d}"


def hhmm(moment: datetime) -> str:
    """HHMM, as ``strftime("%H%M")`` writes it."""
    return f"{moment.hour:02d}{moment.minute:02d}"


def format_amount(value: float | int | str) -> str:
    """An X12 R-type number: no exponent, no trailing zeros (``1450.750`` -> ``1450.75``)."""
    text = str(value)
    if _PLAIN_NUMBER(text):   # most amounts: digits, perhaps a fraction; only trailing zeros to drop
        return text.rstrip("0").rstrip(".") if "." in text else text
    number = Decimal(text)
    text = format(number.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
