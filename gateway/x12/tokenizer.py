"""Turn X12 bytes or text into segments, whatever delimiters and line breaks the sender chose.

Streams: text is read in chunks and split as it comes, so memory does not grow with the file.
Handles a UTF-8 BOM, prose before the ISA, line breaks after or instead of the terminator, an ISA
with collapsed padding or line breaks inside it, and several interchanges (each with its own
delimiters) in one file.
"""

from __future__ import annotations

import codecs
import io
import operator
import os
import re
from collections.abc import Iterator
from typing import BinaryIO, TextIO, Union

from gateway.errors import X12SyntaxError
from gateway.x12.model import Delimiters

Source = Union[str, bytes, bytearray, BinaryIO, TextIO, "os.PathLike[str]"]

CHUNK = 1 << 16  # small enough that a chunk's segments die young (cheap for the GC)
_SEG_ID = re.compile(r"[A-Z][A-Z0-9]{1,2}\Z")
_WHITESPACE = "\r\n\t "


class TextStream:
    """Decoded text from any source, in chunks: UTF-8 first, cp1252 when the bytes are not UTF-8."""

    def __init__(self, source: Source, chunk_size: int = CHUNK) -> None:
        self.chunk_size = chunk_size
        self.encoding = "utf-8"
        self._text: TextIO | None = None
        self._binary: BinaryIO | None = None
        self._owned = False
        if isinstance(source, str):
            self._text = io.StringIO(source)
        elif isinstance(source, (bytes, bytearray)):
            self._binary = io.BytesIO(bytes(source))
        elif isinstance(source, os.PathLike):
            self._binary = open(source, "rb")  # noqa: SIM115 - closed in close()
            self._owned = True
        elif isinstance(source, io.TextIOBase):
            self._text = source  # type: ignore[assignment]
        else:
            self._binary = source  # type: ignore[assignment]
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._first = True

    def close(self) -> None:
        if self._owned and self._binary is not None:
            self._binary.close()

    def chunks(self) -> Iterator[str]:
        try:
            if self._text is not None:
                while True:
                    text = self._text.read(self.chunk_size)
                    if not text:
                        return
                    if self._first:
                        text = text.lstrip("\ufeff")
                        self._first = False
                    yield text
            assert self._binary is not None
            while True:
                data = self._binary.read(self.chunk_size)
                final = not data
                if self._first and data.startswith(codecs.BOM_UTF8):
                    data = data[len(codecs.BOM_UTF8):]
                self._first = False
                try:
                    text = self._decoder.decode(data, final)
                except UnicodeDecodeError:
                    pending = self._decoder.getstate()[0]
                    self.encoding = "cp1252"
                    self._decoder = codecs.getincrementaldecoder("cp1252")("replace")
                    text = self._decoder.decode(pending + data, final)
                if text:
                    yield text
                if final:
                    return
        finally:
            self.close()


# the fixed widths of ISA01 ... ISA15 (ISA16 is one character)
ISA_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1)
# where the 16 element separators of a fixed-length (106-character) ISA are, from its first character
_ISA_SEPARATORS = tuple(3 + sum(ISA_WIDTHS[:i]) + i for i in range(16))
# a fixed-length ISA up to its 16th separator, the characters at the separators' places, and the 15 elements
# between them: read in one call each rather than by walking the separators
_ISA_LAYOUT = _ISA_SEPARATORS[15] + 1
_AT_SEPARATORS = operator.itemgetter(*_ISA_SEPARATORS)
_BETWEEN_SEPARATORS = operator.itemgetter(*(slice(_ISA_SEPARATORS[i] + 1, _ISA_SEPARATORS[i + 1]) for i in range(15)))


def parse_isa(text: str, start: int = 0) -> tuple[Delimiters, list[str], int, list[str]]:
    """Read an ISA beginning at ``start``: its delimiters, 16 elements, where it ends, and notes.

    Tolerates collapsed padding and line breaks inside the ISA by counting separators rather
    than trusting the fixed offsets. Raises X12SyntaxError when no ISA can be made out.
    """
    notes: list[str] = []
    if text[start:start + 3] != "ISA" or len(text) < start + 4:
        raise X12SyntaxError("expected an ISA segment", offset=start)
    sep = text[start + 3]
    if sep.isalnum() or sep in _WHITESPACE:
        raise X12SyntaxError(f"ISA element separator {sep!r} is not a delimiter", offset=start + 3)
    layout = text[start:start + _ISA_LAYOUT]
    if len(layout) == _ISA_LAYOUT and layout.count(sep) == 16 and _AT_SEPARATORS(layout) == (sep,) * 16 and \
            "\n" not in layout and "\r" not in layout:
        # the usual ISA: its 16 separators where the fixed layout has them and nowhere else, no line break: what
        # walking the separators below finds, read without the walk
        elements = list(_BETWEEN_SEPARATORS(layout))
        last_separator = start + _ISA_SEPARATORS[15]
    else:
        raw_elements, last_separator = _walk_isa(text, start, sep)
        elements = [e.replace("\r", "").replace("\n", "") for e in raw_elements]
        if any("\n" in e or "\r" in e for e in raw_elements):
            notes.append("line breaks inside the ISA segment")
    # ISA16: first non-line-break character after the 16th separator
    k = last_separator + 1
    while k < len(text) and text[k] in "\r\n":
        k += 1
    if k >= len(text):
        raise X12SyntaxError("ISA segment is cut short: no component separator (ISA16)", offset=start)
    component = text[k]
    k += 1
    # The terminator follows ISA16 directly; a line break there is the terminator itself unless
    # the text was hard-wrapped and a punctuation terminator follows the break.
    if k >= len(text):
        raise X12SyntaxError("ISA segment is cut short: no segment terminator", offset=start)
    terminator = text[k]
    end = k + 1
    if terminator in "\r\n":
        j = k
        while j < len(text) and text[j] in "\r\n":
            j += 1
        after = text[j:j + 1]
        if after and not after.isalnum() and after not in " \t":
            terminator, end = after, j + 1
        elif text[k] == "\r" and text[k + 1:k + 2] != "\n":
            terminator, end = "\r", k + 1   # CR alone ends each segment (old Mac line endings)
        else:
            terminator = "\n"
            end = k + 2 if text[k:k + 2] == "\r\n" else k + 1
    if terminator.isalnum() or terminator == " ":
        raise X12SyntaxError(f"ISA segment terminator {terminator!r} is not a delimiter", offset=k)
    elements.append(component)
    if end - start not in (106, 107, 108) and terminator not in "\r\n":
        notes.append(f"ISA segment is {k + 1 - start} characters long, not the fixed 106")
    version = elements[11].strip()
    repetition = elements[10]
    if len(repetition) != 1 or repetition.isalnum() or repetition == " " or version < "00501":
        repetition = ""
    elif repetition == component:
        # one character for both (some payers do this): a repeating element (EB03, EQ01) is split on it, a
        # composite (EB13, EQ02) is not -- what the element is decides, as the guide defines each
        notes.append(f"repetition separator {repetition!r} is also the component separator; repeating elements "
                     "are split on it, composites are not")
    elif repetition in (sep, terminator):
        notes.append(f"repetition separator {repetition!r} is also used as another delimiter; "
                     "repetitions are not split")
        repetition = ""
    if component in (sep, terminator):
        raise X12SyntaxError(f"component separator {component!r} equals another delimiter", offset=k - 1)
    return Delimiters(sep, repetition, component, terminator), elements, end, notes


def _walk_isa(text: str, start: int, sep: str) -> tuple[list[str], int]:
    """An ISA's 15 elements before ISA16 (line breaks still in them) and where its 16th separator is, found by
    walking 16 separators: collapsed padding and line breaks inside the ISA are read as well."""
    pos = start + 3
    bounds: list[int] = []
    isa11 = start + _ISA_SEPARATORS[10] + 1
    if text[isa11:isa11 + 1] == sep and all(text[start + i:start + i + 1] == sep for i in _ISA_SEPARATORS):
        # ISA11 is the element separator itself: counted, it would shift every later element (the control number
        # a TA1 echoes among them); the fixed layout, intact around it, says where each element is
        bounds = [start + i for i in _ISA_SEPARATORS]
    for _ in range(16 - len(bounds)):
        nxt = text.find(sep, pos + 1) if bounds else pos
        if nxt < 0:
            raise X12SyntaxError("ISA segment is cut short: fewer than 16 elements", offset=start)
        bounds.append(nxt)
        pos = nxt
    return [text[bounds[i] + 1:bounds[i + 1]] for i in range(15)], bounds[15]


def find_isa(text: str, start: int = 0) -> int:
    """Offset of the next ``ISA`` that starts an interchange (not a word in prose), or -1."""
    pos = start
    while True:
        pos = text.find("ISA", pos)
        if pos < 0:
            return -1
        nxt = text[pos + 3:pos + 4]
        before = text[pos - 1:pos] if pos > 0 else ""
        if nxt and not nxt.isalnum() and nxt not in _WHITESPACE and not before.isalnum():
            return pos
        pos += 3


class Batch:
    """Consecutive raw segments of one interchange (not yet split into elements).

    An interchange's first batch carries its ISA, already split (``isa``), and the ISA's own
    defects (``isa_notes``). Consumers split ``segments`` with ``delimiters.element`` as they go,
    so a segment's parts live only as long as the consumer keeps them.
    """

    __slots__ = ("delimiters", "segments", "_ids", "isa", "isa_notes")

    def __init__(self, delimiters: Delimiters, segments: list[str], isa: list[str] | None = None,
                 isa_notes: list[str] | None = None, ids: list[str] | None = None) -> None:
        self.delimiters = delimiters
        self.segments = segments
        self.isa = isa
        self.isa_notes = isa_notes
        self._ids = ids

    @property
    def ids(self) -> list[str]:
        """Each segment's id (the text before the first element separator), in order."""
        if self._ids is None:
            sep = self.delimiters.element
            self._ids = [raw[:raw.find(sep)] if sep in raw else raw for raw in self.segments]
        return self._ids

    def split(self) -> Iterator[list[str]]:
        """Every segment as parts, the ISA first when the batch has one."""
        if self.isa is not None:
            yield self.isa
        sep = self.delimiters.element
        for raw in self.segments:
            yield raw.split(sep)


def tokenize(source: Source, chunk_size: int = CHUNK) -> Iterator[Batch]:
    """Yield every segment of every interchange in ``source``, in order, a chunk at a time.

    Text before the first ISA is skipped (and noted); a source without any ISA raises
    X12SyntaxError.
    """
    stream = TextStream(source, chunk_size)
    chunks = stream.chunks()
    buf = ""
    seen_isa = False
    lower_isa = False   # an "isa" in another case: the likely reason when no ISA is found
    skipped = 0
    for chunk in chunks:
        buf += chunk
        while True:
            isa = find_isa(buf)
            if isa < 0:
                lower_isa = lower_isa or find_isa(buf.upper()) >= 0
                if len(buf) > 256:  # keep a tail in case "ISA" straddles chunks
                    skipped += len(buf) - 3
                    buf = buf[-3:]
                break
            try:
                delims, isa_elements, end, notes = parse_isa(buf, isa)
            except X12SyntaxError as exc:
                more = next(chunks, None)
                if more is None:
                    raise X12SyntaxError(exc.reason, offset=(exc.offset or 0) + skipped) from None
                buf += more
                continue
            if buf[:isa].strip() or (skipped and not seen_isa):
                notes = [*notes, "text before the ISA segment was skipped"]
            seen_isa = True
            yield Batch(delims, [], ["ISA", *isa_elements], notes)
            skipped += end
            buf = buf[end:]
            buf, ended = yield from _segments(buf, delims, chunks)
            if not ended:
                return
    if not seen_isa:
        if lower_isa:
            raise X12SyntaxError("no ISA segment found: there is an 'isa' in lower case, and X12 segment ids are "
                                 "upper case (was the file lower-cased?)", offset=0)
        raise X12SyntaxError("no ISA segment found: this does not look like X12", offset=0)


def _segments(buf: str, d: Delimiters, chunks: Iterator[str]) -> Iterator[Batch]:
    """Yield batches until IEA; return (rest of the buffer, whether input may continue)."""
    term, sep = d.segment, d.element
    unwrap = term not in "\r\n"
    strip = _WHITESPACE if unwrap else " \t"
    isa_mark, iea_mark = "ISA" + sep, "IEA" + sep
    more = True
    while True:
        if term == "\r":   # CR alone is the terminator: a stray LF is the line break, never data
            if "\n" in buf:
                buf = buf.replace("\n", "")
        elif "\r" in buf:
            buf = buf.replace("\r", "")  # CR is never data; CRLF as terminator reads as LF
        if unwrap and "\n" in buf:
            # line breaks after terminators, or hard-wrapped text: never data when the
            # terminator is not itself a line break
            buf = buf.replace("\n", "")
        parts = buf.split(term)
        tail = parts.pop()
        if iea_mark in buf and "ISA" not in buf and not _edge_whitespace(buf, term):
            # the interchange's last segments, its IEA among them (a whole small message): what the loop below
            # does, without its per-segment checks -- no ISA to stop at, no white space to strip
            ends = _iea_index(buf, term, iea_mark)
            if ends < len(parts):
                batch = [raw for raw in parts[:ends + 1] if raw]
                yield Batch(d, batch)
                return (term.join(parts[ends + 1:]) + term + tail if ends + 1 < len(parts) else tail), True
            if "" in parts:   # the IEA is in the unterminated tail: every terminated segment goes out
                parts = [raw for raw in parts if raw]
            if parts:
                yield Batch(d, parts)
        elif isa_mark not in buf and iea_mark not in buf:
            if _edge_whitespace(buf, term):   # white space around terminators (rare), before as well as after
                parts = [raw.strip(strip) for raw in parts]
            if "" in parts:
                parts = [raw for raw in parts if raw]
            if parts:
                yield Batch(d, parts)
        else:
            batch: list[str] = []
            for i, raw in enumerate(parts):
                if raw[:1] in strip or raw[-1:] in strip:
                    raw = raw.strip(strip)
                if not raw:
                    continue
                if raw[:3] == "ISA" and raw[3:4] and not raw[3:4].isalnum():
                    # a new interchange before this one's IEA: hand back from that ISA on
                    if batch:
                        yield Batch(d, batch)
                    rest = term.join(parts[i:]) + term + tail
                    return rest[rest.find("ISA"):], True
                batch.append(raw)
                if raw[:3] == "IEA" and raw[3:4] == sep:
                    yield Batch(d, batch)
                    rest = term.join(parts[i + 1:]) + term + tail if i + 1 < len(parts) else tail
                    return rest, True
            if batch:
                yield Batch(d, batch)
        buf = tail
        if not more:
            return "", False
        chunk = next(chunks, None)
        if chunk is None:
            more = False
            if not buf.strip(_WHITESPACE):
                return "", False
            buf += term  # flush a last segment that lacks its terminator
            continue
        buf += chunk


def _edge_whitespace(buf: str, term: str) -> bool:
    """Whether a segment of ``buf`` (split on ``term``) may begin or end with white space the reader strips: a space
    or tab (line breaks that are not the terminator are already gone) at the start or next to a terminator."""
    return buf[:1] in " \t" or f"{term} " in buf or f"{term}\t" in buf or f" {term}" in buf or f"\t{term}" in buf


def _iea_index(buf: str, term: str, iea_mark: str) -> int:
    """The index, among ``buf``'s segments, of the first that begins with ``iea_mark`` (``IEA`` and the element
    separator); the number of segments when none does."""
    if buf.startswith(iea_mark):
        return 0
    found = buf.find(term + iea_mark)
    return buf.count(term) + 1 if found < 0 else buf.count(term, 0, found + 1)


def segment_id_is_valid(seg_id: str) -> bool:
    return bool(_SEG_ID.match(seg_id))
