"""Notes: what the translation could not carry, with where it came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Note:
    """One loss. ``source`` locates it in the input (``271 ST 0001 2110C EB@14``), ``raw`` is the segment."""

    text: str
    source: str = ""
    raw: str = ""
    kind: str = "display"     # http://hl7.org/fhir/note-type

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("text", self.text), ("source", self.source), ("raw", self.raw)) if v}


def process_note_extensions(notes: list[Note], url: str, note_type_system: str) -> list[dict]:
    """The processNote extension entries (shaped like ClaimResponse.processNote, plus source)."""
    out = []
    for number, note in enumerate(notes, start=1):
        parts = [
            {"url": "number", "valuePositiveInt": number},
            {"url": "type", "valueCoding": {"system": note_type_system, "code": note.kind}},
            {"url": "text", "valueString": note.text},
        ]
        if note.source or note.raw:
            source = f"{note.source}: {note.raw}" if note.source and note.raw else note.source or note.raw
            parts.append({"url": "source", "valueString": source})
        out.append({"url": url, "extension": parts})
    return out
