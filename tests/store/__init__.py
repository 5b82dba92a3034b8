"""Tests of the audit store (gateway.store)."""
