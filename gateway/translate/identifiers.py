"""Identifier checks shared by the translation and the routing table."""

from __future__ import annotations

from stdnum import luhn


def valid_npi(value: str) -> bool:
    """Ten digits whose last is the Luhn check digit over the ISO prefix 80840 (CMS's NPI standard)."""
    return len(value) == 10 and value.isdigit() and luhn.is_valid("80840" + value)
