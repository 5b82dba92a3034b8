"""Alembic migrations of the audit store (run by :func:`gateway.store.migrate.upgrade`)."""
