"""``python -m gateway.store [URL]``: migrate the audit store (default: $FHIR_X12_DATABASE_URL or the SQLite file)."""

from gateway.store.migrate import main

raise SystemExit(main())
