"""The mapping tables the translators read, loaded once from ``mappings/`` (the I/O is here only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from gateway.errors import MappingError, quoted, with_article
from gateway.mappings import code_table, load_yaml
from gateway.translate.errors import Problem, TranslationError

CODE_TABLES = ("service_type", "eligibility_benefit", "insurance_type", "time_period", "quantity_qualifier",
               "coverage_level", "reject_reason", "follow_up_action")
TRANSLATE_TABLES = ("systems", "gender", "relationship", "network", "dates", "entities", "references",
                    "procedures", "diagnoses", "request_270", "quirks", "errors", "addresses", "authorization",
                    "qualifiers", "identifiers")
ON_MISSING = ("passthrough", "note", "error")
# a table read both ways may name a policy for each: from_x12 (reading a 271 or a 270), to_x12 (building a 270)
DIRECTIONS = ("from_x12", "to_x12")


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
    # each table's on_missing when X12 is read (271 -> FHIR, 270 -> FHIR), and when a 270 is built
    policies: dict[str, str] = field(default_factory=dict, compare=False)
    to_x12_policies: dict[str, str] = field(default_factory=dict, compare=False)
    # segment id -> the names of its elements (mappings/x12/segments.yaml), for notes naming an element not read
    element_names: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    # segment id -> the positions (1-based) of its composite elements: compared component by component, as the
    # interchanges of a 270 and of its 271 may separate components differently (ISA16)
    composites: dict[str, frozenset[int]] = field(default_factory=dict, compare=False)

    def refuses_unknown(self, table: str) -> bool:
        """True when the table says a code it does not list stops the translation (on_missing: error)."""
        return self.policies.get(table) == "error"

    def refuse_unknown(self, table: str, code: str, where: str, element: str) -> None:
        """Called with a code ``table`` does not list, read from X12 at ``where`` (``element``: EB06, say): raises
        when the table's on_missing is ``error``; otherwise returns, and the caller keeps the code and notes it."""
        if self.policies.get(table) == "error":
            raise TranslationError(f"{where}: code {quoted(code)} is not in {self.table_file(table)} "
                                   "(on_missing: error)",
                                   [Problem(where, f"unknown code {quoted(code)} in {element}", code="code-invalid",
                                            x12=element)])

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

    def identifier(self, qualifier: str, value: str) -> dict[str, Any] | None:
        """An NM1's id (NM109) as a FHIR Identifier, by its qualifier (NM108) in ``translate/identifiers.yaml``: its
        system, and its type when the table gives one. None when there is no id, or the qualifier has no identifier
        system (listed without one, or not listed): the caller notes the id with :meth:`unidentified`."""
        info = self.t["identifiers"]["codes"].get(qualifier) if value else None
        if info is None or "system" not in info:
            return None
        if "type" in info:
            return {"type": {"coding": [dict(self.systems[info["type"]])]}, "system": self.systems[info["system"]],
                    "value": value}
        return {"system": self.systems[info["system"]], "value": value}

    def member_id(self, qualifier: str) -> bool:
        """Whether a person's NM109 under ``qualifier`` (NM108) is the member id (``member_id`` in
        ``translate/identifiers.yaml``: MI), rather than another id of the person."""
        info = self.t["identifiers"]["codes"].get(qualifier)
        return info is not None and info.get("member_id") is True

    def entity_type(self, qualifier: str) -> str | None:
        """NM102 by ``translate/qualifiers.yaml`` entity_type: person or organization; None when it is not listed (the
        caller reads the NM1 as its loop's usual kind and notes it with :meth:`unlisted_entity_type`)."""
        return self.t["qualifiers"]["entity_type"].get(qualifier)

    def unlisted_entity_type(self, qualifier: str, read_as: str) -> str:
        """A note's words for an NM102 that entity_type does not list, read as ``read_as`` (person, organization)."""
        known = ", ".join(f"{code} {meaning}" for code, meaning in self.t["qualifiers"]["entity_type"].items())
        said = f"NM102 {quoted(qualifier)} is no entity type qualifier" if qualifier else "NM102 is empty"
        return f"{said} ({known}): read as {with_article(read_as)}"

    def unidentified(self, qualifier: str) -> str:
        """Why an NM109 under ``qualifier`` is no FHIR Identifier, as a note says it."""
        info = self.t["identifiers"]["codes"].get(qualifier)
        if info is not None:
            return f"{info['display']}: no FHIR identifier system holds it"
        if qualifier:
            return f"NM108 {quoted(qualifier)} is not an X279A1 identification code qualifier"
        return "NM108, the qualifier saying what the id is, is empty"

    @property
    def systems(self) -> dict[str, Any]:
        return self.t["systems"]


@lru_cache(maxsize=4)
def load_tables(base: str | None = None) -> Tables:
    """Every table, parsed once per process and mappings folder."""
    raw = {name: code_table(name, base) for name in CODE_TABLES}
    codes = {name: {str(k): (v or {}) for k, v in table["codes"].items()} for name, table in raw.items()}
    t = {name: load_yaml(f"translate/{name}.yaml", base) for name in TRANSLATE_TABLES}
    for name, table in t.items():
        if not isinstance(table, dict):
            raise MappingError(f"translate/{name}.yaml is not a mapping")
    policies: dict[str, str] = {}
    to_x12: dict[str, str] = {}
    for folder, tables in (("codes", raw), ("translate", t)):
        for name, table in tables.items():
            policies[name], to_x12[name] = _policies(f"{folder}/{name}.yaml", table.get("on_missing", "passthrough"))
    _check_authorization(t["authorization"])
    _check_translation(t, codes)
    segments = load_yaml("x12/segments.yaml", base)
    names = {sid: tuple(str(e.get("name", "")) for e in spec.get("elements") or [])
             for sid, spec in segments.items() if isinstance(spec, dict)}
    composites = {sid: frozenset(i for i, e in enumerate(spec.get("elements") or [], start=1) if "composite" in e)
                  for sid, spec in segments.items() if isinstance(spec, dict)}
    return Tables(codes=codes, t=t, policies=policies, to_x12_policies=to_x12, element_names=names,
                  composites={sid: at for sid, at in composites.items() if at})


def _policies(where: str, value: Any) -> tuple[str, str]:
    """A table's on_missing as (reading X12, building X12): one policy for both, or a mapping by direction. A
    misspelt policy or direction would act as passthrough without a word, so it is refused."""
    given = value if isinstance(value, dict) else dict.fromkeys(DIRECTIONS, value)
    for direction, policy in given.items():
        if direction not in DIRECTIONS:
            raise MappingError(f"{where}: on_missing has {direction!r}, none of {', '.join(DIRECTIONS)}")
        if policy not in ON_MISSING:
            shown = f"on_missing {policy!r}" if not isinstance(value, dict) else f"on_missing {direction} {policy!r}"
            raise MappingError(f"{where}: {shown} is none of {', '.join(ON_MISSING)}")
    return given.get("from_x12", "passthrough"), given.get("to_x12", "passthrough")


def _need(where: str, value: Any, kind: type, what: str) -> Any:
    """``value`` when it is a ``kind``; a MappingError naming the file and the key otherwise (a key left out is
    None): when the tables are loaded, not when a payer first sends the code."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MappingError(f"{where} needs {what}; it has {value!r}")
    return value


def _meanings(where: str, section: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    """A section mapping X12 codes to what the translation does with them: each a known meaning, the required there."""
    _need(where, section, dict, f"a mapping of codes to {' or '.join(allowed)}")
    for code, meaning in section.items():
        if meaning not in allowed:
            raise MappingError(f"{where}: code {code!r} means {meaning!r}, none of {', '.join(allowed)}")
    for meaning in required:
        if meaning not in section.values():
            raise MappingError(f"{where} names no code for {meaning!r}")


def _check_translation(t: dict[str, Any], codes: dict[str, dict[str, dict[str, Any]]]) -> None:
    """The keys the translators read without a default, checked once: a table without one fails here, naming it."""
    q = t["qualifiers"]
    _meanings("translate/qualifiers.yaml: trace_type", q.get("trace_type"), ("current", "referenced"),
              ("current", "referenced"))
    _meanings("translate/qualifiers.yaml: entity_type", q.get("entity_type"), ("person", "organization"), ("person",))
    _need("translate/qualifiers.yaml: additional_information", q.get("additional_information"), dict,
          "a mapping of III01 codes to the words naming III02")
    _need("translate/qualifiers.yaml: information_category", q.get("information_category"), dict,
          "a mapping of III03 codes to the words naming III04")
    _check_identifiers(t["identifiers"], t["systems"])
    member_ids = [code for code, info in t["identifiers"]["codes"].items() if info.get("member_id") is True]
    sent = t["request_270"].get("constants", {}).get("member_id_qualifier")
    if sent not in member_ids:   # a 270's member id would not read back as one, nor its 271's echo
        raise MappingError(f"translate/identifiers.yaml: request_270.yaml's member_id_qualifier {sent!r} is not a "
                           f"code with member_id: true (those are: {', '.join(member_ids) or 'none'})")
    indicator = _need("translate/relationship.yaml: insured_indicator", t["relationship"].get("insured_indicator"),
                      dict, "the INS01 of a subscriber and of a dependent")
    for who in ("subscriber", "dependent"):
        _need(f"translate/relationship.yaml: insured_indicator.{who}", indicator.get(who), str, "an INS01 code")
    dates = t["dates"]
    _meanings("translate/dates.yaml: formats", dates.get("formats"), ("date", "range"), ("date", "range"))
    _meanings("translate/dates.yaml: inquiry", dates.get("inquiry"), ("serviced",), ())
    _meanings("translate/dates.yaml: patient_level", dates.get("patient_level"),
              ("plan-begin", "plan-end", "plan", "eligibility-begin", "eligibility-end", "eligibility"), ())
    _need("translate/dates.yaml: names", dates.get("names"), dict, "a mapping of DTP01 qualifiers to names")
    for section in ("patient_level", "inquiry"):
        for code in dates[section]:
            if code not in dates["names"]:
                raise MappingError(f"translate/dates.yaml: {section} qualifier {code!r} has no entry in names")
    refs = t["references"]
    names = _need("translate/references.yaml: names", refs.get("names"), dict,
                  "a mapping of REF01/PRV02 qualifiers to names")
    _meanings("translate/references.yaml: patient_level", refs.get("patient_level"), ("group", "plan"), ())
    _meanings("translate/references.yaml: benefit_level", refs.get("benefit_level"), ("pre-auth",), ())
    _meanings("translate/references.yaml: provider_level", refs.get("provider_level"), ("taxonomy",), ("taxonomy",))
    other = _need("translate/references.yaml: other_coverage_identifiers", refs.get("other_coverage_identifiers"),
                  list, "a list of REF01 qualifiers")
    for section, listed in (("patient_level", refs["patient_level"]), ("benefit_level", refs["benefit_level"]),
                            ("provider_level", refs["provider_level"]), ("other_coverage_identifiers", other)):
        for code in listed:
            if code not in names:
                raise MappingError(f"translate/references.yaml: {section} qualifier {code!r} has no entry in names")
    quirks = t["quirks"]
    _need("translate/quirks.yaml: placeholder_amounts", quirks.get("placeholder_amounts"), list, "a list of amounts")
    _need("translate/quirks.yaml: percent_over_one_is_whole_percent", quirks.get("percent_over_one_is_whole_percent"),
          bool, "true or false")
    unlimited = _need("translate/quirks.yaml: placeholder_unlimited", quirks.get("placeholder_unlimited"), dict,
                      "eb01 (a list of EB01 codes) and allowed_string")
    _need("translate/quirks.yaml: placeholder_unlimited.allowed_string", unlimited.get("allowed_string"), str, "a text")
    for code in _need("translate/quirks.yaml: placeholder_unlimited.eb01", unlimited.get("eb01"), list,
                      "a list of EB01 codes"):
        if code not in codes["eligibility_benefit"]:
            raise MappingError(f"translate/quirks.yaml: placeholder_unlimited EB01 {code!r} is not in "
                               "codes/eligibility_benefit.yaml")
    constants = _need("translate/request_270.yaml: constants", t["request_270"].get("constants"), dict, "a mapping")
    if constants.get("generic_service_type") not in codes["service_type"]:
        raise MappingError("translate/request_270.yaml: constants.generic_service_type "
                           f"{constants.get('generic_service_type')!r} is not in codes/service_type.yaml")
    for code, info in codes["time_period"].items():
        if info.get("amount") not in ("total", "remaining", "met", "other") \
                or info.get("family", "period") not in ("period", "lifetime"):
            raise MappingError(f"codes/time_period.yaml: code {code!r} needs amount (total, remaining, met or other) "
                               f"and, when given, family (period or lifetime); it has {info!r}")


def _check_identifiers(table: Any, systems: dict[str, Any]) -> None:
    """NM108 -> identifier: every code's system a URI of systems.yaml and its type a Coding there, so that a misspelt
    key fails when the tables are loaded, not when a payer first sends the qualifier."""
    codes = table.get("codes") if isinstance(table, dict) else None
    if not isinstance(codes, dict) or not codes:
        raise MappingError("translate/identifiers.yaml has no 'codes' mapping")
    for code, info in codes.items():
        system = info.get("system") if isinstance(info, dict) else None
        kind = info.get("type") if isinstance(info, dict) else None
        member = info.get("member_id", False) if isinstance(info, dict) else False
        coding = systems.get(kind) if isinstance(kind, str) else None
        typed = isinstance(coding, dict) and all(isinstance(coding.get(k), str) for k in ("system", "code"))
        if not (isinstance(info, dict) and isinstance(info.get("display"), str)
                and (system is None or (isinstance(system, str) and isinstance(systems.get(system), str)))
                and (kind is None or (system is not None and typed))
                and isinstance(member, bool) and not (member and system is not None)):
            raise MappingError(f"translate/identifiers.yaml: code {code!r} needs a display and, when given, a system "
                               "naming a URI in systems.yaml and a type naming a coding there (with its system), or "
                               f"member_id true or false (true only without a system); it has {info!r}")


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
