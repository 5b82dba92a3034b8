"""The project's own exception types; everything the library raises derives from GatewayError."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class X12SyntaxError(GatewayError):
    """Input that cannot be understood as X12 at all.

    Carries where reading stopped so a person can find the problem: the byte/character
    offset and, when known, the line and segment number.
    """

    def __init__(self, message: str, *, offset: int | None = None, line: int | None = None,
                 segment: int | None = None) -> None:
        self.reason = message
        self.offset = offset
        self.line = line
        self.segment = segment
        where = []
        if line is not None:
            where.append(f"line {line}")
        if segment is not None:
            where.append(f"segment {segment}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class MappingError(GatewayError):
    """A structure description or code table in mappings/ is inconsistent."""


class ConfigError(GatewayError):
    """A configuration value (environment variable or app config key) is missing or invalid; names the key."""


QUOTE_LIMIT = 80   # characters of a client's or payer's value an error or note quotes (an X12 identifier is <= 80)


def quoted(value: object, limit: int = QUOTE_LIMIT, *, bare: bool = False) -> str:
    """``value`` as a message quotes it: ``repr(value)`` (``bare``: ``str(value)``, no quotes), exactly as the
    ``{value!r}`` (``{value}``) it replaces while it is at most ``limit`` characters; beyond that its first
    ``limit`` characters, an ellipsis and how long it was: ``'AAAA…' (2,000,000 characters)``.

    For values taken from the input (a FHIR request, a 270, 271 or 999) quoted in prose: an error, a finding, the
    explanation in a note. A 2 MB name quoted in full made the 422 as large and reflected it back whole. Never for
    data a note carries so it is not lost (a note's raw segment): that is kept as it is.
    """
    if isinstance(value, str):
        text = value
    else:
        text = str(value) if bare else repr(value)
        bare = True   # a repr is already quoted as Python quotes it; only cut it
    if len(text) <= limit:
        return text if bare else repr(text)
    cut = text[:limit] + "\u2026"
    return f"{cut if bare else repr(cut)} ({len(text):,} characters)"


_VOWELS = frozenset("aeiou")


def with_article(noun: str) -> str:
    """``noun`` after the indefinite article its sound takes: "an Organization", "an Observation", "a Patient". By the
    first letter, which is right for every FHIR resource type (none starts with a "you" U or a silent H)."""
    return f"{'an' if noun[:1].lower() in _VOWELS else 'a'} {noun}"
