"""The simulator's accounts setting, read without importing the app: ``payer serve`` checks it before a gevent
worker monkey-patches the standard library (which must come before the app's modules are imported)."""

from __future__ import annotations


def parse_accounts(text: str) -> dict[str, str]:
    """``user:password[,user:password...]`` -> {user: password}; a ValueError names the bad entry by position,
    never by content (it holds a password). Passwords may contain ':' but not ','."""
    accounts: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), 1):
        user, colon, password = entry.strip().partition(":")
        if not colon or not user or not password:
            raise ValueError(f"entry {number} is not user:password (both non-empty)")
        if user in accounts:
            raise ValueError(f"entry {number} repeats a user name")
        accounts[user] = password
    return accounts
