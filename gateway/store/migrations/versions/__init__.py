"""Revisions, written by hand; the tests check that they build the schema the models describe."""
