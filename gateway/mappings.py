"""The one place that reads ``mappings/`` from disk.

Everything else receives parsed tables from here, so translation stays free of I/O. Results are
cached per process and per directory: the tables are read once, not per request.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import MappingError

DEFAULT_MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "mappings"


def mappings_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The mappings folder: an explicit override, ``FHIR_X12_MAPPINGS``, or the repository's."""
    chosen = override or os.environ.get("FHIR_X12_MAPPINGS") or DEFAULT_MAPPINGS_DIR
    return Path(chosen)


@lru_cache(maxsize=64)
def _load_yaml_cached(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError as exc:
        raise MappingError(f"mapping file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping file {path} is not valid YAML: {exc}") from exc


def load_yaml(relative: str, base: str | os.PathLike[str] | None = None) -> Any:
    """Parse ``mappings/<relative>`` (cached)."""
    return _load_yaml_cached(str(mappings_dir(base) / relative))


def code_table(name: str, base: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A code table from ``mappings/codes/<name>.yaml``, with its codes as strings."""
    table = load_yaml(f"codes/{name}.yaml", base)
    if not isinstance(table, dict) or not isinstance(table.get("codes"), dict):
        raise MappingError(f"code table {name!r} has no 'codes' mapping")
    return table
