"""The mapping tables the translators read, loaded once from ``mappings/`` (the I/O is here only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from gateway.errors import MappingError
from gateway.mappings import code_table, load_yaml

CODE_TABLES = ("service_type", "eligibility_benefit", "insurance_type", "time_period", "quantity_qualifier",
               "coverage_level", "reject_reason", "follow_up_action")
TRANSLATE_TABLES = ("systems", "gender", "relationship", "network", "dates", "entities", "references",
                    "procedures", "diagnoses", "request_270", "quirks", "errors", "addresses", "authorization")
ON_MISSING = ("passthrough", "note", "error")


def fhir_code(value: str) -> str:
    """An X12 value as a FHIR code can hold it: white space at the ends cut, runs of it inside made one space ("" when
    it has no words). Repetitions and components come as sent: " 25" as a modifier, or "A  B" as a service type, is
    no FHIR code."""
    if not value or value.isalnum():   # most codes (30, IND, 99213) and absent ones: no white space to look for
        return value
    return " ".join(value.split())


def trace_system(tables: Tables, originator: str | None) -> str:
    """The identifier system of a trace number (TRN02): ours, with TRN03 (the originator) as its last path segment.
    TRN03 is free text (AN): percent-encoded, as a URI has no white space (a company id like 9GATEWAY01 stays as it
    is). One function for the 271's and the 270's traces, so that a request and its response name one system."""
    if not originator:
        return tables.systems["trace_system"]
    plain = originator.isascii() and originator.isalnum()   # most: nothing to encode, and quote() is slow
    return f"{tables.systems['trace_system']}/{originator if plain else quote(originator, safe='')}"


@dataclass(frozen=True)
class Tables:
    """Code tables (``codes[name][code] -> info``) and translation tables (``t[name]``)."""

    codes: dict[str, dict[str, dict[str, Any]]]
    t: dict[str, dict[str, Any]]
    _codings: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict, compare=False)
    # translators' cache, of codes the tables list only (see x12_coding)
    concepts: dict[tuple[str, str], Any] = field(default_factory=dict, compare=False)
    policies: dict[str, str] = field(default_factory=dict, compare=False)
    # segment id -> the names of its elements (mappings/x12/segments.yaml), for notes naming an element not read
    element_names: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    def refuses_unknown(self, table: str) -> bool:
        """True when the table says a code it does not list stops the translation (on_missing: error)."""
        return self.policies.get(table) == "error"

    def table_file(self, table: str) -> str:
        """Where a table lives, for messages: ``mappings/codes/<name>.yaml`` or ``mappings/translate/<name>.yaml``."""
        return f"mappings/{'codes' if table in self.codes else 'translate'}/{table}.yaml"

    def code(self, table: str, code: str) -> dict[str, Any] | None:
        return self.codes[table].get(code)

    def display(self, table: str, code: str) -> str:
        info = self.codes[table].get(code)
        return info["display"] if info else code

    def x12_system(self, element: str) -> str:
        return self.t["systems"]["x12_element"].format(element=element)

    def x12_coding(self, table: str, element: str, code: str) -> dict[str, str]:
        """A Coding in the X12 element's code system (a fresh dict). The templates of codes a table lists are
        cached: the cache stays as small as the tables, whatever codes payers send. A code a payer made up keeps
        its characters, but not white space at its ends or a run of it inside: a FHIR code has neither."""
        template = self._codings.get((table, element, code))   # a listed code, as listed: no white space
        if template is None:
            code = fhir_code(code)
            key = (table, element, code)
            template = self._codings.get(key)
            if template is None:
                template = {"system": self.x12_system(element), "code": code}
                info = self.codes[table].get(code) if table else None
                if info:
                    template["display"] = info["display"]
                    self._codings[key] = template
        return dict(template)

    @property
    def systems(self) -> dict[str, Any]:
        return self.t["systems"]


@lru_cache(maxsize=4)
def load_tables(base: str | None = None) -> Tables:
    """Every table, parsed once per process and mappings folder."""
    raw = {name: code_table(name, base) for name in CODE_TABLES}
    codes = {name: {str(k): (v or {}) for k, v in table["codes"].items()} for name, table in raw.items()}
    t = {name: load_yaml(f"translate/{name}.yaml", base) for name in TRANSLATE_TABLES}
    policies = {name: str(table.get("on_missing", "passthrough")) for name, table in raw.items()}
    policies.update({name: str(table.get("on_missing", "passthrough")) for name, table in t.items()
                     if isinstance(table, dict)})
    for name, policy in policies.items():   # a misspelt policy would act as passthrough without a word
        if policy not in ON_MISSING:
            raise MappingError(f"{'codes' if name in raw else 'translate'}/{name}.yaml: on_missing {policy!r} is none "
                               f"of {', '.join(ON_MISSING)}")
    _check_authorization(t["authorization"])
    segments = load_yaml("x12/segments.yaml", base)
    names = {sid: tuple(str(e.get("name", "")) for e in spec.get("elements") or [])
             for sid, spec in segments.items() if isinstance(spec, dict)}
    return Tables(codes=codes, t=t, policies=policies, element_names=names)


def _check_authorization(table: Any) -> None:
    """EB11 is read on every benefit row: a code whose ``fhir`` is not true, false or none (``required``, say) would
    fill authorizationRequired with whatever it is, so the table is refused when loaded, not when a payer sends it."""
    codes = table.get("codes") if isinstance(table, dict) else None
    if not isinstance(codes, dict) or not codes:
        raise MappingError("translate/authorization.yaml has no 'codes' mapping")
    for code, info in codes.items():
        fhir = info.get("fhir") if isinstance(info, dict) else None
        if not (fhir is True or fhir is False or fhir == "none") \
                or not isinstance(info.get("display"), str) or not isinstance(info.get("x279a1", True), bool):
            raise MappingError(f"translate/authorization.yaml: code {code!r} needs fhir: true, false or none, a "
                               f"display, and x279a1 (when given) true or false; it has {info!r}")
