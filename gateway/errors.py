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
