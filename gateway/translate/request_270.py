"""FHIR CoverageEligibilityRequest (alone, with contained resources, or in a Bundle) -> X12 270.

Everything the 270 needs is gathered first; whatever is missing is reported in one error that
names each item's FHIR path and the X12 element it would fill. FHIR content a 270 cannot carry is
returned as notes. Pure: the envelope (control numbers, clock, sender/receiver) is passed in.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import QUOTE_LIMIT, quoted
from gateway.translate.errors import Problem, TranslationError
from gateway.translate.identifiers import valid_npi
from gateway.translate.notes import Note
from gateway.translate.references import Resolver, fetched_for, sent_at
from gateway.translate.tables import Tables
from gateway.x12.dictionary import data_elements
from gateway.x12.model import Delimiters
from gateway.x12.writer import DEFAULT_DELIMITERS, Envelope, Value, WriteNote, X12Writer

CER = "CoverageEligibilityRequest"
FM_STATUS = {"active", "cancelled", "draft", "entered-in-error"}
PURPOSES = {"auth-requirements", "benefits", "discovery", "validation"}
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SHOWN_SYSTEMS = 5   # a refusal names this many of the code systems an item offers


@dataclass
class Request270:
    """The 270 text, its trace number, and what was not carried or had to be changed."""

    text: str
    trace: str
    notes: list[Note] = field(default_factory=list)
    write_notes: list[WriteNote] = field(default_factory=list)
    patient_loop: str = "2100C"
    payer_id: str = ""
    # per person as the 271 translation names them ("subscriber", "patient"), the segments of their name loop
    # (2100C / 2100D, without the EQ loops) as sent: each the tuple of its id and elements, so that a 271 segment
    # that merely echoes one is told from data the payer returned (see response_271._name_loop)
    persons: dict[str, frozenset[tuple[str, ...]]] = field(default_factory=dict)
    # the Coverage.relationship code the 270 was built by (its loop says it, no INS does): a 271's INS that says no
    # more is an echo (response_271's ResponseContext.relationship), wherever the Coverage came from
    relationship: str | None = None
    # the 2100A payer and 2100B information receiver loops as sent (as ``persons``): a 271 NM1 equal to them echoes
    # the request, whose insurer and provider stand for them in the response; another is noted
    parties: dict[str, frozenset[tuple[str, ...]]] = field(default_factory=dict)

    def all_notes(self) -> list[Note]:
        """The notes, then each value the writer had to change, as notes on the 270 element it went to."""
        changed = [Note(text=f"{w.reason}: {quoted(w.original)} was sent as {w.written!r}",
                        source=f"270 {w.segment} {w.element}") for w in self.write_notes]
        return [*self.notes, *changed]


@dataclass
class _Person:
    family: str = ""
    given: list[str] = field(default_factory=list)
    suffix: str = ""
    birth_date: str = ""
    gender: str = ""
    address: dict[str, Any] | None = None
    used: dict[str, Any] | None = None   # the HumanName read (a refusal names it by its index)
    from_text: bool = False              # the family name was taken from its text


def find_request(payload: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The CoverageEligibilityRequest and the Bundle around it (if any); TranslationError otherwise."""
    if not isinstance(payload, dict):
        raise TranslationError("the input is not a FHIR resource (a JSON object)",
                               [Problem("$", "expected a JSON object", code="structure")], status=400)
    kind = payload.get("resourceType")
    if kind == CER:
        return payload, None
    if kind == "Bundle":
        if not isinstance(payload.get("entry") or [], list):
            raise TranslationError("Bundle.entry must be a list of entries",
                                   [Problem("Bundle.entry", "expected a JSON array", code="structure")], status=400)
        requests = [e.get("resource") for e in payload.get("entry") or []
                    if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                    and e["resource"].get("resourceType") == CER]
        if len(requests) == 1:
            return requests[0], payload
        message = "the Bundle holds no CoverageEligibilityRequest" if not requests else \
            f"the Bundle holds {len(requests)} CoverageEligibilityRequests; translate them one at a time"
        raise TranslationError(message, [Problem("Bundle.entry", message, code="structure")], status=400)
    shown = "missing" if kind is None else quoted(kind) if isinstance(kind, str) else "not a string"
    raise TranslationError(f"resourceType ({shown}) is not a CoverageEligibilityRequest or a Bundle",
                           [Problem("resourceType", f"expected {CER} or Bundle; resourceType is {shown}",
                                    code="structure")], status=400)


def _name(resource: dict[str, Any] | None) -> _Person:
    person = _Person()
    if not resource:
        return person
    names = resource.get("name") or []
    if isinstance(names, str):  # Organization.name
        person.family = names
        return person
    chosen = next((n for n in names if n.get("use") == "official"), None) or \
        next((n for n in names if n.get("use") in (None, "usual")), None) or (names[0] if names else None)
    if chosen:
        person.used = chosen
        person.family = chosen.get("family") or ""
        person.given = list(chosen.get("given") or [])
        person.suffix = (chosen.get("suffix") or [""])[0]
        if not person.family and chosen.get("text"):
            parts = chosen["text"].split()
            person.family, person.given = parts[-1], parts[:-1]
            person.from_text = True
    person.birth_date = resource.get("birthDate") or ""
    person.gender = resource.get("gender") or ""
    addresses = resource.get("address") or []
    if addresses:
        person.address = addresses[0]
    return person


# the words of an item's name that are abbreviations, said as they are written (``provider_npi``: "provider NPI")
_ABBREVIATIONS = {"npi": "NPI"}


def _words(item: str) -> str:
    """An item of the items table (``provider_npi``) in the words a refusal says it in ("provider NPI")."""
    return " ".join(_ABBREVIATIONS.get(word, word) for word in item.split("_"))


def _codings(concept: Any) -> list[dict[str, Any]]:
    return [c for c in (concept or {}).get("coding") or [] if isinstance(c, dict)]


def _identifier_only(reference: Any) -> bool:
    """A Reference by business identifier alone (no literal reference to resolve)."""
    return isinstance(reference, dict) and not reference.get("reference") and isinstance(
        reference.get("identifier"), dict) and bool(reference["identifier"].get("value"))


def _same_person(g: _Gather, a: Any, a_owner: dict[str, Any], b: Any, b_owner: dict[str, Any]) -> bool | None:
    """Whether two References name the same person: True, False, or None when the payload cannot tell.

    Resolved, they are the same resource (one object, or one ``Type/id``); unresolved, the same reference text
    or the same identifier (system and value).
    """
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    a_ref, b_ref = a.get("reference"), b.get("reference")
    found_a = g.resolver.find(a_ref, a_owner) if isinstance(a_ref, str) and a_ref else None
    found_b = g.resolver.find(b_ref, b_owner) if isinstance(b_ref, str) and b_ref else None
    if found_a is not None and found_b is not None:
        if found_a is found_b:
            return True
        local = a_ref.startswith("#") or b_ref.startswith("#")
        keys = [(r.get("resourceType"), r.get("id")) for r in (found_a, found_b)]
        return not local and keys[0][1] is not None and keys[0] == keys[1]
    if isinstance(a_ref, str) and a_ref and a_ref == b_ref:
        return True
    ids = [r.get("identifier") for r in (a, b)]
    if all(isinstance(i, dict) and i.get("value") for i in ids) and ids[0].get("system") == ids[1].get("system"):
        return ids[0]["value"] == ids[1]["value"]
    return None


def _has_type(identifier: dict[str, Any], system: str, code: str) -> bool:
    return any(c.get("system") == system and c.get("code") == code for c in _codings(identifier.get("type")))


def _index_path(root: str, resource: dict[str, Any] | None, element: str, value: Any, tail: str = "") -> str:
    """``root.element[k]tail``, k the index of ``value`` (found by identity) in the resource's ``element`` array: the
    exact element a value was read from. Called only when a refusal is written."""
    values = (resource or {}).get(element)
    index = next((i for i, v in enumerate(values) if v is value), None) if isinstance(values, list) else None
    return f"{root}.{element}" + ("" if index is None else f"[{index}]") + tail


class _Gather:
    """Reads the request, collecting values, notes and problems."""

    def __init__(self, tables: Tables, request: dict[str, Any], bundle: dict[str, Any] | None, sent: Any) -> None:
        self.tables = tables
        self.systems = tables.systems
        self.spec = tables.t["request_270"]
        self.request = request
        self.resolver = Resolver(request, bundle)
        self.sent = sent   # the payload as the client sent it: where each resource it holds sits (see place)
        # each resolved resource a problem's path may start at: the path's start (``Coverage``, ``Patient``, or a
        # reference and ``.resolve()``) -> the resource and the path of the reference naming it; the request's own
        # paths too (``Bundle.entry[0].resource.status`` when it came in a Bundle)
        self.roles: dict[str, tuple[dict[str, Any], str]] = {CER: (request, CER)}
        # the element each item's value was read from, as a path (see source); called only to write a refusal
        self.sources: dict[str, Callable[[], str]] = {}
        self.configured_provider = False   # the 2100B provider is the configured information receiver
        self._places: dict[int, str] | None = None
        self.problems: list[Problem] = []
        self.notes: list[Note] = []
        self.patient_loop = "2100C"
        self.patient_refs: list[tuple[str, list[Value]]] = []   # REF SY / EA of the patient's loop
        # (FHIR path, 270 location, X12 data element, value) of each code an inquiry sends (EQ02, HI), recorded where
        # it is read so that a refusal names the very item, modifier or diagnosis (see _check_sendable)
        self.sent_codes: list[tuple[str, str, str, Any]] = []

    def missing(self, item: str, message: str | None = None, code: str = "required", path: str | None = None,
                also: tuple[str, ...] = ()) -> None:
        """A problem for a missing item at every place it may come from (the items table's alternatives); ``path``:
        where it is missing, when more exact than those; ``also``: further places it may come from."""
        info = self.spec["items"][item]
        where = [path] if path else list(info["fhir"])
        self.problems.append(Problem(where[0], message or f"{_words(item)} is missing", code=code,
                                     x12=self.target(info["x12"]), also=(*where[1:], *also)))

    def resolve(self, reference: Any, path: str, expected: tuple[str, ...], x12: str | None = None,
                owner: dict[str, Any] | None = None, role: str | None = None) -> dict[str, Any] | None:
        """The resolver's resource; ``role``: the path start its problems' paths use for it (see place)."""
        found = self.resolver.resolve(reference, path, expected, x12, owner)
        if found is not None and role is not None:
            self.roles[role] = (found, path)
        return found

    def source(self, item: str) -> str:
        """The element the item's value was read from; the items table's first place when it is not known."""
        found = self.sources.get(item)
        return found() if found is not None else self.spec["items"][item]["fhir"][0]

    def place(self, path: str) -> tuple[str, tuple[str, ...], str]:
        """``path`` (starting at a resource: ``Coverage.subscriberId``, ``Coverage.payor[0].resolve().name``) from
        where the client sent that resource: a Bundle entry (``Bundle.entry[2].resource.subscriberId``, the request's
        own ``Bundle.entry[0].resource.status`` too) or a contained resource
        (``CoverageEligibilityRequest.contained[1].subscriberId``). A resource the client did not send, read
        from the EHR's FHIR server, keeps its own root (``Coverage.subscriberId``): then also the reference it was read
        through, as the client sent it, and words saying so."""
        key = max((k for k in self.roles if path.startswith(k) and path[len(k):len(k) + 1] in ("", ".", "[")),
                  key=len, default=None)
        if key is None:
            return path, (), ""
        resource, via = self.roles[key]
        rest = path[len(key):]
        if self._places is None:
            self._places = sent_at(*find_request(self.sent))
        where = self._places.get(id(resource))
        if where is not None:
            return where + rest, (), ""
        reference, further, _ = self.place(via)
        kind = str(resource.get("resourceType"))
        said = fetched_for(kind, reference)
        return kind + rest, (reference, *further), said

    def placed(self, problem: Problem) -> Problem:
        """The problem with each of its paths said from where the client sent the resource it is in (see place)."""
        path, via, said = self.place(problem.fhir_path)
        also: list[str] = []
        for other in problem.also:
            where, further, _ = self.place(other)
            also += [where, *further]
        also = [p for p in dict.fromkeys([*also, *via]) if p != path]
        if path == problem.fhir_path and not said and tuple(also) == problem.also:
            return problem
        return dataclasses.replace(problem, fhir_path=path, message=problem.message + said, also=tuple(also))

    @property
    def inquiry_loop(self) -> str:
        """The loop the EQs are written in, under the patient's name loop: 2110C under 2100C, 2110D under 2100D."""
        return self.patient_loop.replace("2100", "2110")

    def target(self, x12: str) -> str:
        """Of alternatives like ``2100C NM103 | 2100D NM103``, the one for the patient's loop."""
        choices = [c.strip() for c in x12.split("|")]
        return next((c for c in choices if c.startswith(self.patient_loop)), x12)

    def lost(self, text: str, path: str) -> None:
        """A note; ``path`` is the request's element (``insurance[1]``) or another resource's (``Coverage.class``)."""
        self.notes.append(Note(text=text, source=path if path[:1].isupper() else f"{CER}.{path}"))


def build_270(payload: Any, tables: Tables, *, envelope: Envelope | Callable[[str], Envelope],
              delimiters: Delimiters = DEFAULT_DELIMITERS,
              limits: dict[str, tuple[int, int]] | None = None, trace: str | None = None,
              originator: str | None = None,
              information_receiver: dict[str, Any] | Callable[[str], dict[str, Any] | None] | None = None,
              sent: Any = None) -> Request270:
    """Translate one request into a 270 interchange; raises TranslationError listing every problem.

    ``envelope`` may be a function of the payer id (the gateway's routing table decides sender and
    receiver ids only once the payer is known); it is called after the request has been checked.
    ``information_receiver`` (an Organization or Practitioner, or a function of the payer id giving one)
    is the 2100B provider when the request has no ``provider`` at all (some EHRs never send one): the
    practice as enrolled with that payer. A note records the substitution.
    ``sent``: the payload as the client sent it, when ``payload`` is that payload with the resources fetched from the
    EHR's FHIR server added (``upstream.resolve_references``): a refusal names each element where the client sent it.
    """
    request, bundle = find_request(payload)
    g = _Gather(tables, request, bundle, payload if sent is None else sent)
    constants = g.spec["constants"]

    status = request.get("status")
    if status not in FM_STATUS:
        g.problems.append(Problem(f"{CER}.status", f"status {quoted(status)} is not an fm-status code",
                                  code="code-invalid"))
    elif status != "active":
        g.problems.append(Problem(f"{CER}.status", f"only an active request is sent to a payer, not {quoted(status)}",
                                  code="business-rule"))
    purposes = request.get("purpose") or []
    if not purposes:
        g.problems.append(Problem(f"{CER}.purpose", "purpose is required", code="required"))
    for index, p in enumerate(purposes):
        if p not in PURPOSES:
            g.problems.append(Problem(f"{CER}.purpose[{index}]", f"purpose {quoted(p)} is not an "
                                      "eligibilityrequest-purpose code", code="code-invalid"))
    discovery = "discovery" in purposes

    # coverage, patient, subscriber
    insurances = request.get("insurance") or []
    focal = next((i for i in insurances if i.get("focal")), insurances[0] if insurances else None)
    focal_path = f"{CER}.insurance[{insurances.index(focal) if focal else 0}].coverage"
    coverage = g.resolve(focal.get("coverage") if focal else None, focal_path, ("Coverage",), "2100C", role="Coverage")
    named = focal.get("coverage") if focal else None
    if focal is None:
        g.missing("coverage")
    elif not isinstance(named, dict) or not (named.get("reference") or _identifier_only(named)):
        # an empty reference ({}, as EHRs send for the insurer) names no coverage: the 270 would search without the
        # member id, which only a discovery request may do, and then without saying so
        g.missing("coverage", "the coverage reference names no Coverage: give its reference, or the member id as "
                              "an identifier typed MB", path=focal_path)
    for index, other in enumerate(insurances):
        if other is not focal:
            g.lost("a second coverage cannot be asked about in the same 270 (send another request)",
                   f"insurance[{index}]")
    # the patient's name loop (2100C or 2100D) follows from the Patient and the Coverage: the problems of its
    # reference get their X12 location once it is known
    unresolved = len(g.resolver.problems)
    patient = g.resolve(request.get("patient"), f"{CER}.patient", ("Patient",), role="Patient")
    patient_problems = range(unresolved, len(g.resolver.problems))
    coverage = coverage or {}
    subscriber = g.resolve(coverage.get("subscriber"), "Coverage.subscriber", ("Patient", "RelatedPerson"),
                           "2100C NM1", owner=coverage, role="Coverage.subscriber.resolve()") \
        if coverage.get("subscriber") else None

    member_id = coverage.get("subscriberId") or ""
    own: tuple[str, dict[str, Any] | None, Any] = ("Coverage", None, None)   # where the patient's own id was read
    coverage_ref = focal.get("coverage") if focal else None
    by_identifier = _identifier_only(coverage_ref) and not coverage
    if by_identifier and _has_type(coverage_ref["identifier"], g.systems["member_id_type"]["system"],
                                   g.systems["member_id_type"]["code"]):
        member_id = coverage_ref["identifier"].get("value") or ""   # the Coverage named by its member id (MB)
        g.sources["member_id"] = lambda: f"{focal_path}.identifier.value"
    patient_own_id = ""
    for ident in coverage.get("identifier") or []:
        if _has_type(ident, g.systems["member_id_type"]["system"], g.systems["member_id_type"]["code"]):
            if not member_id:
                member_id = ident.get("value") or ""
                g.sources["member_id"] = lambda ident=ident: _index_path("Coverage", coverage, "identifier", ident,
                                                                         ".value")
            elif ident.get("value") and ident.get("value") != member_id:
                patient_own_id = ident["value"]
                own = ("Coverage", coverage, ident)
    for ident in (patient or {}).get("identifier") or []:
        if _has_type(ident, g.systems["member_id_type"]["system"], g.systems["member_id_type"]["code"]):
            if ident.get("value") and ident.get("value") != member_id and not patient_own_id:
                patient_own_id = ident["value"]
                own = ("Patient", patient, ident)

    relationship = None
    for coding in _codings(coverage.get("relationship")):
        if coding.get("system") in g.systems["relationship_accept"] or coding.get("system") is None:
            relationship = coding.get("code")
    if coverage.get("relationship") and not relationship:
        g.lost("Coverage.relationship has no coding in subscriber-relationship: whether the patient is the "
               "subscriber is decided by Coverage.subscriber", "Coverage.relationship")
    subscriber_codes = g.tables.t["relationship"]["subscriber"]
    # who the patient is on the coverage: the relationship when it is coded, else whether Coverage.subscriber is
    # another person; the two must agree, and the coverage must be the patient's (beneficiary)
    subscriber_is_patient = _same_person(g, coverage.get("subscriber"), coverage, request.get("patient"), request)
    a_dependent = relationship not in subscriber_codes if relationship else subscriber_is_patient is False
    dependent = bool(a_dependent and not patient_own_id)
    g.patient_loop = "2100D" if dependent else "2100C"
    patient_nm1 = f"{g.patient_loop} NM1"   # the patient's name, in the loop the 270 writes it in
    for index in patient_problems:
        g.resolver.problems[index] = dataclasses.replace(g.resolver.problems[index], x12=patient_nm1)
    if request.get("patient") is None:
        g.problems.append(Problem(f"{CER}.patient", "patient is required", x12=patient_nm1))
    if coverage and _same_person(g, coverage.get("beneficiary"), coverage, request.get("patient"), request) is False:
        g.problems.append(Problem("Coverage.beneficiary", "Coverage.beneficiary is another person than "
                                  "CoverageEligibilityRequest.patient: the coverage named is not the patient's",
                                  code="business-rule", x12=patient_nm1))
    if relationship in subscriber_codes and subscriber_is_patient is False:
        g.problems.append(Problem("Coverage.relationship", f"Coverage.relationship is {quoted(relationship)} but "
                                  "Coverage.subscriber is another person than the patient: say which is right "
                                  "(the patient as subscriber, or as a dependent of Coverage.subscriber)",
                                  code="business-rule", x12=patient_nm1))
    elif relationship and relationship not in subscriber_codes and subscriber_is_patient and not patient_own_id:
        g.problems.append(Problem("Coverage.relationship", f"Coverage.relationship is {quoted(relationship)} (a "
                                  "dependent) but Coverage.subscriber is the patient: a dependent is asked about "
                                  "through another person, the subscriber", code="business-rule", x12=patient_nm1))
    if a_dependent and patient_own_id:
        who = f"({quoted(relationship, bare=True)})" if relationship else \
            "(a dependent: Coverage.subscriber is another person)"
        g.lost(f"the patient {who} has a member id of their own, so is sent as the subscriber "
               "(2100C), as the implementation guide says", "insurance.coverage")
        member_id = patient_own_id
        g.sources["member_id"] = lambda: _index_path(own[0], own[1], "identifier", own[2], ".value")
    elif dependent and not relationship:
        g.lost("Coverage.relationship is not given: the patient is sent as a dependent (2100D) because "
               "Coverage.subscriber is another person", "Coverage.relationship")
    if dependent and subscriber is None and coverage.get("subscriber") is None:
        g.missing("subscriber_last_name", "the patient is a dependent but Coverage.subscriber is missing",
                  path="Coverage.subscriber")

    person = _name(patient)
    sub_person = _name(subscriber) if dependent else person
    g.sources["patient_last_name"] = lambda: _index_path("Patient", patient, "name", person.used,
                                                         ".text" if person.from_text else ".family")
    g.sources["subscriber_last_name"] = lambda: _index_path("Coverage.subscriber.resolve()", subscriber, "name",
                                                            sub_person.used,
                                                            ".text" if sub_person.from_text else ".family")
    if patient is None and _identifier_only(request.get("patient")):
        # a Patient named by an identifier alone gives the 270 no one to ask about: its name (and for a search,
        # birth date) must come from the resource itself
        g.missing("patient_last_name", "the patient is given by an identifier only; the 270 needs the Patient "
                                       "resource (its name) to ask about them", also=(f"{CER}.patient",))
    if patient is not None:
        if not person.family:
            g.missing("patient_last_name", path=_index_path("Patient", patient, "name", person.used, ".family")
                      if person.used else None)
        if discovery and not person.given:
            g.missing("patient_first_name", "a search without member id needs the first name",
                      path=_index_path("Patient", patient, "name", person.used, ".given") if person.used else None)
        if person.birth_date and not _FULL_DATE.match(person.birth_date):
            g.problems.append(Problem("Patient.birthDate", f"birth date {quoted(person.birth_date)} is not a full date "
                                      "(YYYY-MM-DD)", code="value", x12=f"{g.patient_loop} DMG02"))
        elif discovery and not person.birth_date:
            g.missing("patient_birth_date", "a search without member id needs the birth date")
    if dependent and subscriber is not None and not sub_person.family:
        g.missing("subscriber_last_name", path=_index_path("Coverage.subscriber.resolve()", subscriber, "name",
                                                           sub_person.used, ".family") if sub_person.used else None)
    if not member_id and not discovery and (coverage or by_identifier):
        g.missing("member_id", "the member id is missing: Coverage.subscriberId or a Coverage.identifier typed MB "
                               "(only a discovery request may leave it out)" + (
                                   "; the coverage is given by an identifier that is not typed MB" if by_identifier
                                   else ""), also=(f"{focal_path}.identifier.type",) if by_identifier else ())

    # payer
    insurer_ref = request.get("insurer") or {}
    insurer = g.resolve(insurer_ref, f"{CER}.insurer", ("Organization",), "2100A", role=f"{CER}.insurer.resolve()") \
        if insurer_ref else None
    payer_id, payer_name = _payer(g, insurer, insurer_ref, f"{CER}.insurer")
    if not payer_id:
        for index, payor_ref in enumerate(coverage.get("payor") or []):
            role = f"Coverage.payor[{index}].resolve()"
            payor = g.resolve(payor_ref, f"Coverage.payor[{index}]", ("Organization",), "2100A", owner=coverage,
                              role=role)
            payer_id, name = _payer(g, payor, payor_ref, f"Coverage.payor[{index}]", named=bool(payer_name))
            payer_name = payer_name or name
            if payer_id:
                break
    if not payer_id:
        sole = g.roles.get("Coverage.payor[0].resolve()") if len(coverage.get("payor") or []) == 1 else None
        if sole is not None:   # Coverage.payor.resolve() is that one Organization
            g.roles["Coverage.payor.resolve()"] = sole
        g.missing("payer_id", "no payer id: the insurer Organization (or Coverage.payor) needs an identifier "
                              "(typed payerid when it has several)")
    if not payer_name:
        payer_name = payer_id
        if "payer_id" in g.sources:   # the payer's name is its id
            g.sources["payer_name"] = g.sources["payer_id"]

    # provider
    provider = g.resolve(request.get("provider"), f"{CER}.provider", ("Practitioner", "PractitionerRole",
                                                                      "Organization"), "2100B",
                         role=f"{CER}.provider.resolve()") if request.get("provider") else None
    if not request.get("provider") and information_receiver is not None:
        if callable(information_receiver):
            provider = information_receiver(payer_id) if payer_id else None
        else:
            provider = information_receiver
        if provider:
            g.configured_provider = True
            g.notes.append(Note(text="the request names no provider: the 270 names the information receiver "
                                     "configured for this payer (2100B)", source=f"{CER}.provider"))
    npi, provider_person, provider_is_person, taxonomy, facility = _provider(g, provider, request.get("provider"))
    if not npi:
        g.missing("provider_npi", "no provider NPI: CoverageEligibilityRequest.provider needs an identifier with "
                                  "system http://hl7.org/fhir/sid/us-npi")
    if not provider_person.family:
        g.missing("provider_name")

    # what is asked
    inquiries, diagnoses = _inquiries(g, request, purposes)
    served = _service_dates(g, request)

    for name in ("priority", "enterer", "facility", "supportingInfo"):
        if request.get(name):
            g.lost(f"{name} has no place in a 270", name)
    for index, insurance in enumerate(insurances):
        if isinstance(insurance, dict) and insurance.get("businessArrangement"):
            g.lost("insurance.businessArrangement (a contract number) is not sent: no 270 element is agreed for it",
                   f"insurance[{index}].businessArrangement")
    if coverage.get("status") and coverage.get("status") != "active":
        g.lost(f"Coverage.status is {quoted(coverage['status'])}: a 270 cannot say so; the payer is asked about the "
               "member all the same", "Coverage.status")
    for who, resource in (("Patient", patient), ("Coverage.subscriber", subscriber if dependent else None)):
        for name in (resource or {}).get("name") or []:
            if isinstance(name, dict) and name.get("prefix"):
                g.lost(f"name prefix {quoted(' '.join(name['prefix']))} has no place in NM1", f"{who}.name.prefix")
                break
    if (patient or {}).get("multipleBirthInteger") is not None or (patient or {}).get("multipleBirthBoolean"):
        g.lost("Patient.multipleBirth is not sent: INS17 (birth sequence) is only for an alternate search, and "
               "member id, name and birth date already identify the patient", "Patient.multipleBirth")
    g.patient_refs = _patient_references(g, patient, delimiters, limits)
    if coverage.get("dependent"):
        g.lost("Coverage.dependent (a dependent sequence) has no place in a 270", "Coverage.dependent")

    _check_sendable(g, delimiters, limits, {
        "payer_id": payer_id, "provider_npi": npi, "member_id": member_id,
        "payer_name": payer_name, "provider_name": provider_person.family,
        "patient_last_name": person.family if patient is not None else "",
        "subscriber_last_name": sub_person.family if dependent else ""},
        g.sent_codes   # EQ02 procedures and modifiers, HI diagnoses: each at its item's own path
        + ([(g.sources.get("taxonomy") or (lambda: f"{CER}.provider"), "2100B PRV03", "127", taxonomy)]
           if taxonomy else [])
        # group and plan numbers (REF 6P/18) are identifiers too: sent as given or refused, never stripped
        + [(f"Coverage.class[{i}].value", "2100C REF02", "127", cls.get("value") or "")
           for i, cls in enumerate(coverage.get("class") or []) if isinstance(cls, dict)
           and {co.get("code") for co in _codings(cls.get("type"))} & {"group", "plan"}])

    if not callable(envelope) and not envelope.receiver_id and payer_id and not 2 <= len(payer_id) <= 15:
        # the payer id would name the interchange receiver: cut (ISA08) it names another trading partner
        g.problems.append(Problem(g.source("payer_id"), f"payer id {quoted(payer_id)}"
                                  + ("" if len(payer_id) > QUOTE_LIMIT else f" ({len(payer_id)} characters)")
                                  + " cannot name the interchange receiver, which takes 2 to 15: give the "
                                  "payer's receiver id (--receiver-id, or receiver_id in routing.yaml)",
                                  code="value", x12="ISA08/GS03"))

    g.problems.extend(g.resolver.problems)
    if g.problems:
        status_code = 400 if any(p.code in ("structure", "code-invalid") for p in g.problems) else 422
        problems = _unique([g.placed(p) for p in g.problems])   # counted as listed: each once
        raise TranslationError(f"the request cannot be sent as a 270: {len(problems)} problem(s)", problems,
                               status=status_code)

    if callable(envelope):
        envelope = envelope(payer_id)
    trace = trace or next((i.get("value") for i in request.get("identifier") or [] if i.get("value")), None) \
        or f"{envelope.interchange_control:09d}"
    return _write(g, envelope, delimiters, limits, constants, trace=trace, originator=originator,
                  payer=(payer_name, payer_id), provider=(provider_person, provider_is_person, npi, taxonomy,
                                                          facility),
                  subscriber=sub_person, patient=person, dependent=dependent, member_id=member_id,
                  relationship=relationship, coverage=coverage, inquiries=inquiries, diagnoses=diagnoses,
                  served=served)


def _unique(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.fhir_path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _payer(g: _Gather, org: dict[str, Any] | None, ref: dict[str, Any], ref_path: str, named: bool = False
           ) -> tuple[str, str]:
    """The payer id and name of the insurer (or a Coverage.payor) Organization named by ``ref`` at ``ref_path``;
    records where each was read (``named``: the payer's name was read before, from another)."""
    identifiers = list((org or {}).get("identifier") or [])
    if ref.get("identifier"):
        identifiers.append(ref["identifier"])
    typed = g.systems["payer_id_type"]
    chosen = next((i for i in identifiers if isinstance(i, dict) and _has_type(i, typed["system"], typed["code"])),
                  None)
    # an NPI or a tax id names the organisation, never as its payer id: only typed would it count
    identifiers = [i for i in identifiers if isinstance(i, dict)
                   and i.get("system") not in g.systems.get("not_payer_id_systems", ())]
    if chosen is None and len(identifiers) == 1:
        chosen = identifiers[0]
    elif chosen is None and len(identifiers) > 1:
        g.lost("the payer Organization has several identifiers and none is typed payerid; the first is used",
               ref_path)   # the insurer, or the Coverage.payor they came from
        chosen = identifiers[0]
    name = (org or {}).get("name") or ref.get("display") or ""
    payer_id = (chosen or {}).get("value") or ""
    if payer_id:
        g.sources["payer_id"] = lambda: f"{ref_path}.identifier.value" if chosen is ref.get("identifier") else \
            _index_path(f"{ref_path}.resolve()", org, "identifier", chosen, ".value")
    if name and not named:
        g.sources["payer_name"] = lambda: f"{ref_path}.resolve().name" if (org or {}).get("name") else \
            f"{ref_path}.display"
    return payer_id, name


def _provider(g: _Gather, provider: dict[str, Any] | None, ref: Any) -> tuple[str, _Person, bool, str, bool]:
    """NPI, name, whether a person, NUCC taxonomy and whether a facility of the 2100B provider; records where each was
    read (the request's provider, a PractitionerRole's practitioner or organization, or the configured receiver)."""
    npi_system = g.systems["npi"]
    taxonomy_system = g.systems["taxonomy"]
    person, is_person, taxonomy, facility = _Person(), False, "", False
    resource = provider
    at = inner_at = f"{CER}.provider.resolve()"   # where a refusal names the provider's elements from
    if provider and provider.get("resourceType") == "PractitionerRole":
        if not g.configured_provider:   # its own references' problems start there
            g.roles["PractitionerRole"] = (provider, f"{CER}.provider")
        index, taxonomy = _taxonomy(provider.get("specialty"), taxonomy_system)
        if index is not None:
            g.sources["taxonomy"] = lambda index=index: f"{at}.specialty[{index}]"
        practitioner = g.resolve(provider.get("practitioner"), "PractitionerRole.practitioner", ("Practitioner",),
                                 "2100B", owner=provider, role="PractitionerRole.practitioner.resolve()")
        organization = g.resolve(provider.get("organization"), "PractitionerRole.organization", ("Organization",),
                                 "2100B", owner=provider, role="PractitionerRole.organization.resolve()")
        identifiers = list(provider.get("identifier") or [])

        def has_npi(found: dict[str, Any] | None) -> bool:
            return any(i.get("system") == npi_system and i.get("value") for i in (found or {}).get("identifier") or []
                       if isinstance(i, dict))

        inner = practitioner or organization
        if practitioner and organization and not has_npi(practitioner) and not any(
                i.get("system") == npi_system and i.get("value") for i in identifiers) and has_npi(organization):
            # the Practitioner's or the Organization's NPI (mapping reference 3.1): the NPI and the name sent
            # with it must be one entity's, so the 270 names the organization
            inner = organization
            g.lost("the PractitionerRole's practitioner has no NPI: the 270 names its organization (2100B) by the "
                   "organization's NPI", "provider")
        inner_at = "PractitionerRole.practitioner.resolve()" if inner is practitioner and inner else \
            "PractitionerRole.organization.resolve()"
        resource = inner or {}
        identifiers += resource.get("identifier") or []
    else:
        identifiers = list((provider or {}).get("identifier") or [])
    if isinstance(ref, dict) and ref.get("identifier"):
        identifiers.append(ref["identifier"])
    chosen = next((i for i in identifiers if i.get("system") == npi_system and i.get("value")), None)
    npi = chosen.get("value") if chosen is not None else ""
    if chosen is not None:
        def npi_source() -> str:
            if chosen is (ref.get("identifier") if isinstance(ref, dict) else None):
                return f"{CER}.provider.identifier.value"
            if resource is not provider and any(i is chosen for i in (resource or {}).get("identifier") or []):
                return _index_path(inner_at, resource, "identifier", chosen, ".value")
            return _index_path(at, provider, "identifier", chosen, ".value")
        g.sources["provider_npi"] = npi_source
    if resource:
        is_person = resource.get("resourceType") == "Practitioner"
        if is_person:
            person = _name(resource)
            g.sources["provider_name"] = lambda: _index_path(inner_at, resource, "name", person.used, ".text"
                                                             if person.from_text else ".family")
            qualifications = resource.get("qualification") or []
            index, code = _taxonomy([q.get("code") if isinstance(q, dict) else None for q in qualifications],
                                    taxonomy_system) if not taxonomy else (None, "")
            if index is not None:
                taxonomy = code
                g.sources["taxonomy"] = lambda index=index: f"{inner_at}.qualification[{index}].code"
        else:
            person.family = resource.get("name") or ""
            g.sources["provider_name"] = lambda: f"{inner_at}.name"
            types = resource.get("type") or []
            codings = [c for t in types for c in _codings(t)]
            facility = any(c.get("code") in g.spec["constants"]["facility_types"] for c in codings)
            # a group or facility's NUCC taxonomy (Organization.type) is its PRV, as a practitioner's qualification
            index, code = _taxonomy(types, taxonomy_system) if not taxonomy else (None, "")
            if index is not None:
                taxonomy = code
                g.sources["taxonomy"] = lambda index=index: f"{inner_at}.type[{index}]"
    elif isinstance(ref, dict) and ref.get("display"):
        person.family = ref["display"]
        g.sources["provider_name"] = lambda: f"{CER}.provider.display"
    if g.configured_provider:   # not the client's: said at the provider the request left out, which it stands in for
        for item in ("provider_npi", "provider_name", "taxonomy"):
            g.sources[item] = lambda: f"{CER}.provider"
    return npi, person, is_person, taxonomy, facility


def _taxonomy(concepts: Any, system: str) -> tuple[int | None, str]:
    """The index of the first concept with a coding in ``system`` (NUCC) that has a code, and that code; (None, "")
    when none has. The first, wherever the provider's taxonomy is read (PractitionerRole.specialty,
    Practitioner.qualification, Organization.type): PRV03 takes one, and a client lists the one it means first."""
    for index, concept in enumerate(concepts if isinstance(concepts, list) else []):
        code = next((c["code"] for c in _codings(concept) if c.get("system") == system and c.get("code")), None)
        if code is not None:
            return index, str(code)
    return None, ""


def _service_type(g: _Gather, concept: dict[str, Any], path: str) -> str | None:
    service = g.systems["service_type"]
    eq01 = f"{g.inquiry_loop} EQ01"
    if not _codings(concept):   # a text alone: sending the generic EQ*30 instead would ask another question
        g.problems.append(Problem(path, "the category has no coding (text alone cannot be sent): code it as an X12 "
                                  f"service type ({service['accept'][0]})", code="required", x12=eq01))
        return None
    for coding in _codings(concept):
        code = coding.get("code")
        if coding.get("system") in service["accept"] and not code:
            g.problems.append(Problem(path, f"the category's coding in {coding['system']} has no code",
                                      code="required", x12=eq01))
            return None
        if coding.get("system") in service["accept"] and code:
            if code in service["remap"]:
                g.lost(f"benefit category {code} is not an X12 service type; sent as {service['remap'][code]}", path)
                return str(service["remap"][code])
            if g.tables.code("service_type", code) is None:
                g.problems.append(Problem(path, f"service type {quoted(code)} is not in 005010X279A1",
                                          code="not-supported", x12=eq01))
                return None
            return code
    if _codings(concept):
        g.problems.append(Problem(path, "the category has no coding in an X12 service type system "
                                  f"({', '.join(service['accept'])})", code="not-supported", x12=eq01))
    return None


def _procedure_coding(g: _Gather, concept: dict[str, Any], path: str) -> tuple[str, str] | None:
    """The EQ02 qualifier and code of the first coding of ``item.productOrService`` whose system has an X12 procedure
    qualifier (``procedures.yaml``); None, with the problem recorded, when no coding can be sent.

    The codings of one CodeableConcept are the same concept in other code systems, so the ones not sent lose nothing
    and get no note, as for a category (EQ01) or a diagnosis (HI), which also send the one coding X12 takes.
    """
    qualifiers = g.tables.t["procedures"]["to_x12"]
    eq02 = f"{g.inquiry_loop} EQ02"
    codings = _codings(concept)
    coded = [c for c in codings if c.get("code")]
    for coding in coded:
        system = coding.get("system")
        if isinstance(system, str) and system in qualifiers:
            return str(qualifiers[system]), str(coding["code"])
    # a coding in a system EQ02 takes, but without its code: said, or the refusal would seem to refuse that system
    empty = next((c["system"] for c in codings if not c.get("code") and isinstance(c.get("system"), str)
                  and c["system"] in qualifiers), None)
    uncoded = f" (its coding in {empty} has no code)" if empty else ""
    if not coded:
        g.problems.append(Problem(path, "the productOrService has no coded procedure (text alone cannot be sent)"
                                  + uncoded, code="required", x12=f"{eq02}-2"))
    elif not any(c.get("system") for c in coded):
        g.problems.append(Problem(path, f"procedure code {quoted(coded[0]['code'])} has no system: name the code "
                                  "system (CPT, HCPCS, CDT, NDC ...)" + uncoded, code="required", x12=f"{eq02}-1"))
    else:
        systems = list(dict.fromkeys(quoted(c["system"]) if c.get("system") else "a code without a system"
                                     for c in coded))
        shown = ", ".join(systems[:_SHOWN_SYSTEMS]) + (
            f" and {len(systems) - _SHOWN_SYSTEMS} more" if len(systems) > _SHOWN_SYSTEMS else "")
        g.problems.append(Problem(path, f"no coding of the productOrService is in a code system with an X12 procedure "
                                  f"qualifier: it offers {shown}{uncoded}; EQ02 takes {', '.join(qualifiers)}",
                                  code="not-supported", x12=f"{eq02}-1"))
    return None


def _modifier_coding(g: _Gather, concept: Any) -> dict[str, Any] | None:
    """The coding one ``item.modifier`` concept is sent as: its first coding with a code in a modifier system of
    ``procedures.yaml`` (CPT, HCPCS), else its first coding with a code; None when it has no code at all."""
    systems = g.tables.t["procedures"]["modifier_systems"]
    coded = [c for c in _codings(concept) if c.get("code")]
    return next((c for c in coded if isinstance(c.get("system"), str) and c["system"] in systems),
                coded[0] if coded else None)


def _codes_shown(g: _Gather, concepts: list[Any]) -> str:
    """The modifier concepts as a note names them: the code each would be sent as (or that it has none)."""
    shown = []
    for concept in concepts:
        coding = _modifier_coding(g, concept)
        shown.append(quoted(str(coding["code"])) if coding else "one without a code")
    return ", ".join(shown)


def _modifiers(g: _Gather, concepts: list[Any], path: str) -> list[Value]:
    """EQ02-3 to EQ02-6: one procedure modifier per ``item.modifier`` CodeableConcept (its codings are the same
    modifier in other code systems, so the others are not sent and lose nothing), at most ``max_modifiers``
    (``procedures.yaml``); those past it are noted by their codes. A concept without a code is refused, as a category
    or a productOrService without one is: left out, the 270 would ask about another service than the one requested.
    """
    most = int(g.tables.t["procedures"]["max_modifiers"])
    systems = g.tables.t["procedures"]["modifier_systems"]
    codes: list[Value] = []
    for index, concept in enumerate(concepts):
        coding = _modifier_coding(g, concept)
        if coding is None:
            empty = next((c["system"] for c in _codings(concept) if isinstance(c.get("system"), str)
                          and c["system"] in systems), None)
            g.problems.append(Problem(f"{path}[{index}]", "the modifier has no code (text alone cannot be sent)" + (
                f" (its coding in {empty} has no code)" if empty else "") + ": code it as a CPT or HCPCS modifier",
                code="required", x12=f"{g.inquiry_loop} EQ02-{index + 3}" if index < most
                else f"{g.inquiry_loop} EQ02"))
            continue
        if len(codes) < most:   # sent: checked at its own concept, as the EQ02 component it fills
            g.sent_codes.append((f"{path}[{index}]", f"{g.inquiry_loop} EQ02-{len(codes) + 3}", "1339",
                                 str(coding["code"])))
        codes.append(str(coding["code"]))
    if len(concepts) > most:
        g.lost(f"more than {most} procedure modifiers (EQ02 carries {most}): {_codes_shown(g, concepts[most:])} not "
               "sent", path)
    return codes[:most]


def _inquiries(g: _Gather, request: dict[str, Any], purposes: list[str]) -> tuple[list[list[Value]], list[tuple]]:
    """EQ elements per inquiry, and the HI diagnosis composites."""
    generic = g.spec["constants"]["generic_service_type"]
    asks_items = any(p in ("benefits", "auth-requirements") for p in purposes)
    items = request.get("item") or []
    inquiries: list[list[Value]] = []
    diagnoses: list[tuple] = []
    for index, item in enumerate(items):
        path = f"{CER}.item[{index}]"
        if not asks_items:
            g.lost("items are not asked about for a validation or discovery request (EQ*30 is sent)", path)
            break
        category = _service_type(g, item.get("category"), f"{path}.category") if item.get("category") else None
        procedure: Value = None
        if item.get("productOrService"):
            chosen = _procedure_coding(g, item["productOrService"], f"{path}.productOrService")
            if chosen is not None:
                qualifier, code = chosen
                if qualifier == g.tables.t["procedures"]["ndc"]["qualifier"]:
                    code = _ndc(g, code, f"{path}.productOrService")
                g.sent_codes.append((f"{path}.productOrService", f"{g.inquiry_loop} EQ02-2", "234", code))
                procedure = (qualifier, code, *_modifiers(g, item["modifier"], f"{path}.modifier")) \
                    if item.get("modifier") else (qualifier, code)
        elif item.get("modifier"):   # EQ02-3..6 modify EQ02's procedure: with none, they have nowhere to go
            g.lost("item.modifier modifies a productOrService, and the item has none (EQ02): the modifiers are not "
                   f"sent ({_codes_shown(g, item['modifier'])})", f"{path}.modifier")
        pointers = []
        for d_index, diagnosis in enumerate(item.get("diagnosis") or []):
            concept = diagnosis.get("diagnosisCodeableConcept")
            if not concept:
                g.lost("a diagnosis given as a Reference(Condition) is not resolved into HI", f"{path}.diagnosis")
                continue
            coding = next((c for c in _codings(concept) if c.get("system") in (g.systems["icd10"],
                                                                                g.systems["icd9"])), None)
            if coding is None:
                g.lost("a diagnosis without an ICD-10-CM or ICD-9-CM coding cannot be sent",
                       f"{path}.diagnosis[{d_index}]")
                continue
            code = (coding.get("code") or "").replace(".", "")
            icd10 = coding.get("system") == g.systems["icd10"]
            existing = [d[1] for d in diagnoses]
            if code not in existing:
                if len(diagnoses) >= 8:
                    g.lost("more than 8 diagnoses: the rest are not sent", f"{path}.diagnosis")
                    continue
                qualifier = ("ABK" if icd10 else "BK") if not diagnoses else ("ABF" if icd10 else "BF")
                diagnoses.append((qualifier, code))
                existing.append(code)
            position = existing.index(code) + 1   # HI01 to HI08
            pointers.append(str(position))
            # every item that names it: the same code in another item goes in the same composite
            g.sent_codes.append((f"{path}.diagnosis[{d_index}].diagnosisCodeableConcept",
                                 f"{g.patient_loop} HI{position:02d}-2", "1271", code))
        for name in ("quantity", "unitPrice", "facility", "detail", "supportingInfoSequence", "provider"):
            if item.get(name):
                g.lost(f"item.{name} has no place in a 270", f"{path}.{name}")
        if category is None and procedure is None:
            if not item.get("category") and not item.get("productOrService"):
                g.problems.append(Problem(path, "an item needs a category or a productOrService", code="required",
                                          x12=f"{g.inquiry_loop} EQ01/EQ02"))
            continue
        if len(pointers) > 4:   # EQ05 points at 4 diagnoses at most; the rest are in HI but not this item's
            g.lost(f"EQ05 points at 4 diagnoses: {len(pointers) - 4} more of this item's are not pointed at",
                   f"{path}.diagnosis")
        inquiries.append([category or "", procedure, "", "", tuple(pointers[:4]) if pointers else None])
    if not inquiries:
        inquiries.append([generic])
    most = int(g.spec["constants"]["max_inquiries"])
    if len(inquiries) > most:   # X279A1 repeats the 2110C/D loop at most 99 times: no item is left out unasked
        g.problems.append(Problem(f"{CER}.item", f"{len(inquiries)} items make {len(inquiries)} EQ loops; a 270 "
                                  f"carries at most {most}: send the rest in another request", code="too-costly",
                                  x12=f"{g.inquiry_loop} EQ"))
    return inquiries, diagnoses


def _patient_references(g: _Gather, patient: dict[str, Any] | None, delimiters: Delimiters,
                        limits: Mapping[str, tuple[int, int]] | None) -> list[tuple[str, list[Value]]]:
    """REF SY (SSN) and REF EA (medical record number) from Patient.identifier, each sent as given or left out
    with a note (an SSN only as its 9 digits; hyphens are no change to it)."""
    probe = X12Writer(delimiters, limits)
    out: list[tuple[str, list[Value]]] = []
    for index, ident in enumerate((patient or {}).get("identifier") or []):
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        rule = next((r for r in g.spec["patient_references"]
                     if ("system" in r and ident.get("system") == r["system"])
                     or ("type" in r and _has_type(ident, r["type_system"], r["type"]))), None)
        if rule is None:
            continue
        value, path = ident["value"], f"Patient.identifier[{index}]"
        sent = value.replace("-", "") if rule.get("digits") else value
        if rule.get("digits") and not (sent.isdigit() and len(sent) == int(rule["digits"])):
            # never the value itself: a note reaches the response and the audit store, and this is an SSN
            g.lost(f"REF*{rule['ref']}: the identifier is not {rule['digits']} digits; not sent", path)
        elif probe.clean(sent, "REF", "REF02") != sent.upper():
            g.lost(f"REF*{rule['ref']}: the identifier cannot be sent as given (X12 characters, at most 50); not "
                   "sent", path)
        elif rule["ref"] in (r[1][0] for r in out):
            g.lost(f"a second REF*{rule['ref']} identifier is not sent", path)
        else:
            out.append(("REF", [rule["ref"], sent]))
    return out


def _ndc(g: _Gather, code: str, path: str) -> str:
    """The 11-digit 5-4-2 NDC the qualifier requires, from an 11-digit or a hyphenated 10-digit one (noted);
    a problem for anything else, an unhyphenated 10-digit NDC included (which part to pad cannot be known)."""
    layout = [int(n) for n in g.tables.t["procedures"]["ndc"]["layout"]]
    code = code.strip()
    parts = code.split("-")
    if all(p.isdigit() for p in parts) and len(parts) == len(layout):
        short = [want - len(p) for p, want in zip(parts, layout, strict=True)]
        if all(n >= 0 for n in short) and sum(short) <= 1:   # 5-4-2, or one part a digit short (4-4-2, 5-3-2, 5-4-1)
            sent = "".join(p.zfill(want) for p, want in zip(parts, layout, strict=True))
            g.lost(f"NDC {quoted(code)} sent as {sent} (11 digits, 5-4-2, as EQ02 takes it)", path)
            return sent
    elif len(parts) == 1 and code.isdigit() and len(code) == sum(layout):
        return code
    why = ("a 10-digit NDC without hyphens is ambiguous (4-4-2, 5-3-2 or 5-4-1?): send it hyphenated or as 11 "
           "digits" if len(parts) == 1 and code.isdigit() and len(code) == sum(layout) - 1 else
           "not an NDC: 11 digits (5-4-2), or 10 digits hyphenated 4-4-2, 5-3-2 or 5-4-1")
    g.problems.append(Problem(path, f"NDC {quoted(code)}: {why}", code="value", x12=f"{g.inquiry_loop} EQ02-2"))
    return code


def _service_dates(g: _Gather, request: dict[str, Any]) -> list[Value] | None:
    """DTP*291 of the patient's loop (2100C or 2100D: where the 270 writes it), from servicedDate or servicedPeriod."""
    dtp03 = f"{g.patient_loop} DTP03"
    if request.get("servicedDate"):
        value = request["servicedDate"]
        if not _FULL_DATE.match(value):
            g.problems.append(Problem(f"{CER}.servicedDate", f"{quoted(value)} is not a full date", code="value",
                                      x12=dtp03))
            return None
        return ["291", "D8", value.replace("-", "")]
    period = request.get("servicedPeriod")
    if period:
        start, end = (period.get("start") or "")[:10], (period.get("end") or "")[:10]
        if not _FULL_DATE.match(start):
            given = period.get("start")
            g.problems.append(Problem(f"{CER}.servicedPeriod.start", f"{quoted(given)} is not a full date (the period "
                                      "starts on a day)" if given else "the period needs a start date",
                                      code="value", x12=dtp03))
            return None
        if not end or end == start:
            if not end:
                g.lost("the service period has no end: sent as a single date", "servicedPeriod")
            return ["291", "D8", start.replace("-", "")]
        if not _FULL_DATE.match(end) or end < start:
            g.problems.append(Problem(f"{CER}.servicedPeriod.end", f"the period ends ({end!r}) before it starts "
                                      f"({start!r})" if _FULL_DATE.match(end) else f"{quoted(end)} is not a full date",
                                      code="value", x12=dtp03))
            return None
        return ["291", "RD8", f"{start.replace('-', '')}-{end.replace('-', '')}"]
    return None


def _write(g: _Gather, envelope: Envelope, delimiters: Delimiters, limits: dict[str, tuple[int, int]] | None,
           c: dict[str, Any], *, trace: str, originator: str | None, payer: tuple[str, str],
           provider: tuple, subscriber: _Person, patient: _Person, dependent: bool, member_id: str,
           relationship: str | None, coverage: dict[str, Any], inquiries: list[list[Value]],
           diagnoses: list[tuple], served: list[Value] | None) -> Request270:
    tables = g.tables
    if not envelope.receiver_id:  # no trading-partner id configured: the payer id names the receiver
        envelope = dataclasses.replace(envelope, receiver_id=payer[1])
    provider_person, provider_is_person, npi, taxonomy, facility = provider
    gender_map = tables.t["gender"]
    # TRN03 is an identifier of 10: only its letters and digits, so padding never counts characters the writer drops
    origin = "".join(ch for ch in (originator or envelope.sender_id or "GATEWAY").upper() if ch.isascii()
                     and ch.isalnum()) or "GATEWAY"
    trn = ["1", trace, (c["trn_originator_prefix"] + origin)[:10].ljust(10, "0")]
    now = envelope.now
    body: list[tuple[str, list[Value]]] = [
        ("BHT", [c["BHT01"], c["BHT02"], trace, now.strftime("%Y%m%d"), now.strftime("%H%M")]),
        ("HL", ["1", "", "20", "1"]),
        ("NM1", [c["payer_entity"], "2", payer[0], "", "", "", "", c["payer_id_qualifier"], payer[1]]),
        ("HL", ["2", "1", "21", "1"]),
    ]
    if provider_is_person:
        body.append(("NM1", [c["person_provider_entity"], "1", provider_person.family,
                             provider_person.given[0] if provider_person.given else "",
                             " ".join(provider_person.given[1:2]), "", provider_person.suffix,
                             c["provider_id_qualifier"], npi]))
    else:
        body.append(("NM1", ["FA" if facility else c["organization_provider_entity"], "2", provider_person.family,
                             "", "", "", "", c["provider_id_qualifier"], npi]))
    if taxonomy:
        body.append(("PRV", [c["provider_role"], c["provider_taxonomy_qualifier"], taxonomy]))
    body.append(("HL", ["3", "2", "22", "1" if dependent else "0"]))
    if not dependent:
        body.append(("TRN", trn))

    def demographics(person: _Person, loop: str) -> list[tuple[str, list[Value]]]:
        segs: list[tuple[str, list[Value]]] = []
        if person.birth_date or person.gender:
            gender = gender_map["to_x12"].get(person.gender, "") if person.gender else ""
            if gender and gender not in gender_map["request_allowed"]:
                g.lost(f"gender {quoted(person.gender)} has no 270 code (DMG03 allows F and M): left out",
                       f"{loop}.gender")
                gender = ""
            if person.birth_date:
                segs.append(("DMG", ["D8", person.birth_date.replace("-", ""), gender]))
            elif gender:
                g.lost("gender without a birth date cannot be sent (DMG needs both)", f"{loop}.gender")
        return segs

    classes = []
    for cls in coverage.get("class") or []:
        kinds = [co.get("code") for co in _codings(cls.get("type"))]
        if "group" in kinds:
            classes.append(("REF", ["6P", cls.get("value", "")]))
        elif "plan" in kinds:
            classes.append(("REF", ["18", cls.get("value", "")]))
        else:
            kind = quoted("/".join(k for k in kinds if k), bare=True)
            g.lost(f"coverage class {kind} has no place in a 270", "Coverage.class")

    sub_given = subscriber.given
    subscriber_start = len(body)
    body.append(("NM1", [c["subscriber_entity"], "1", subscriber.family, sub_given[0] if sub_given else "",
                         " ".join(sub_given[1:2]), "", subscriber.suffix,
                         c["member_id_qualifier"] if member_id else "", member_id]))
    body.extend(classes)
    def the_patient() -> None:
        """DMG, HI, DTP*291 and the EQ loops: they belong to the patient's loop, 2100C or 2100D."""
        body.extend(demographics(patient, "Patient"))
        if diagnoses:
            body.append(("HI", [tuple(d) for d in diagnoses]))
        if served:
            body.append(("DTP", served))
        body.extend(("EQ", list(eq)) for eq in inquiries)

    if not dependent:
        body.extend(g.patient_refs)
        _address(g, body, patient.address, "Patient.address")
        the_patient()
        loop_name = "2100C"
        patient_start = subscriber_start
    else:
        _address(g, body, subscriber.address, "Coverage.subscriber.address")
        body.extend(demographics(subscriber, "Coverage.subscriber"))
        body.append(("HL", ["4", "3", "23", "0"]))
        body.append(("TRN", trn))
        patient_start = len(body)
        body.append(("NM1", [c["dependent_entity"], "1", patient.family, patient.given[0] if patient.given else "",
                             " ".join(patient.given[1:2]), "", patient.suffix]))
        body.extend(g.patient_refs)
        _address(g, body, patient.address, "Patient.address")   # 2100D N3/N4, as 2100C's
        the_patient()
        loop_name = "2100D"
        if relationship:
            g.lost(f"relationship {quoted(relationship, bare=True)} is implied by the dependent loop (2100D INS is "
                   "sent only for alternate searches)", "Coverage.relationship")
    if len(patient.given) > 2 or len(subscriber.given) > 2:
        g.lost("more than two given names: the rest are not sent", "Patient.name.given")
    writer = X12Writer(delimiters, limits)
    result = writer.interchange(envelope, "HS", "270", "005010X279A1", [body])
    subscriber_sent = _name_loop_sent(result.segments, body, subscriber_start, delimiters)
    persons = {"subscriber": subscriber_sent,   # the patient, when not a dependent: a 271 may answer either way
               "patient": subscriber_sent if patient_start == subscriber_start
               else _name_loop_sent(result.segments, body, patient_start, delimiters)}
    parties = {"payer": _name_loop_sent(result.segments, body, 2, delimiters),       # body[2]: the payer's NM1
               "receiver": _name_loop_sent(result.segments, body, 4, delimiters)}    # body[4]: the provider's
    return Request270(result.text, trace, g.notes, result.notes, loop_name, payer_id=payer[1], persons=persons,
                      relationship=relationship, parties=parties)


def _name_loop_sent(written: list[str], body: list[tuple[str, list[Value]]], start: int,
                    delimiters: Delimiters) -> frozenset[tuple[str, ...]]:
    """The segments of the name loop whose NM1 is ``body[start]``, as written (``written``: the interchange's
    segments, ISA, GS and ST before the body), up to its EQ loops or the next HL: each the tuple of its id and
    elements, trailing empty ones left out (the writer leaves them out)."""
    sent = set()
    for index in range(start, len(body)):
        if body[index][0] in ("EQ", "HL"):
            break
        text = written[3 + index].rstrip("\n")
        if text.endswith(delimiters.segment):
            text = text[:-1]
        sent.add(tuple(text.split(delimiters.element)))
    return frozenset(sent)


# identifiers and codes go out exactly as given, or not at all: a member id, payer id or NPI the writer had to
# change (a delimiter removed, cut to length) would ask about someone, or send to some payer, the client never named
_IDENTIFIERS = ("payer_id", "provider_npi", "member_id")
# names a loop cannot go without: when none of their characters can be sent, the 270 would name nobody
_REQUIRED_NAMES = ("payer_name", "provider_name", "patient_last_name", "subscriber_last_name")
# (each item's 270 element comes from the items table of mappings/translate/request_270.yaml)


def _check_sendable(g: _Gather, delimiters: Delimiters, limits: Mapping[str, tuple[int, int]] | None,
                    values: dict[str, str], codes: list[tuple[str | Callable[[], str], str, str, Any]]) -> None:
    """Problems (422) for values the 270 cannot carry faithfully, found before anything is written, each at the
    element its value was read from.

    ``codes``: (FHIR path, or a function giving it, 270 location, X12 data element, value). Upper-casing is no change
    (the basic character set has no lower case, and payers compare identifiers and codes without case).
    """
    # the configured information receiver stands in for the request's provider: its values are no client's
    receiver = " (the information receiver configured for this payer)" if g.configured_provider else ""
    probe = X12Writer(delimiters, limits)
    limits = limits or {}

    def changed(value: str, location: str) -> str | None:
        """Why the writer would change ``value`` beyond its case (None: sent as it is)."""
        ref = location.split()[-1]
        before = len(probe.notes)
        if probe.clean(value, ref.split("-")[0][:-2], ref) == value.upper():
            return None
        return probe.notes[-1].reason if len(probe.notes) > before else "changed"

    for item in _IDENTIFIERS:
        value = values.get(item) or ""
        if not value:
            continue   # missing ones are reported where they are looked up
        info = g.spec["items"][item]
        ref = g.target(info["x12"]).split()[-1]   # "2100C NM109" -> NM109
        why = changed(value, ref)
        minimum = limits.get(ref, (1, 0))[0]
        if why is None and len(value) < minimum:
            why = f"shorter than the {minimum} characters X12 takes here"
        if why is None and item == "provider_npi" and not valid_npi(value):
            why = "not a National Provider Identifier: 10 digits with a valid check digit"
        if why is not None:
            g.problems.append(Problem(g.source(item), f"{_words(item)} {quoted(value)} cannot be sent as "
                                      f"given ({why}); an identifier is never altered"
                                      + (receiver if item == "provider_npi" else ""), code="value",
                                      x12=g.target(info["x12"])))
    for item in _REQUIRED_NAMES:
        value = values.get(item) or ""
        info = g.spec["items"][item]
        if value.strip() and not probe.clean(value, "NM1", g.target(info["x12"]).split()[-1]):
            g.problems.append(Problem(g.source(item), f"{_words(item)} has no character X12 can carry "
                                      "(Latin letters, digits, basic punctuation): send a Latin-script form of it"
                                      + (receiver if item == "provider_name" else ""),
                                      code="value", x12=g.target(info["x12"])))
    dictionary = data_elements()
    for path, location, element, value in codes:
        if value is None:
            continue
        size = dictionary[element]
        why = changed(value, location) if value else "it is empty"
        if why is None and not size.min_len <= len(value) <= size.max_len:
            why = f"X12 takes {size.min_len} to {size.max_len} characters here"
        if why is not None:
            g.problems.append(Problem(path if isinstance(path, str) else path(), f"code {quoted(value)} cannot be sent "
                                      f"as given ({why}); a code is never altered"
                                      + (receiver if location == "2100B PRV03" else ""), code="value", x12=location))


def _address(g: _Gather, body: list[tuple[str, list[Value]]], address: dict[str, Any] | None, path: str) -> None:
    """N3/N4 of one address. N402 is a state or province code and N404 a country code: a name is looked up in
    ``mappings/translate/addresses.yaml``, never shortened; what is not found there is left out with a note."""
    if not address or not (address.get("line") or address.get("city")):
        return
    lines = [line for line in address.get("line") or [] if isinstance(line, str) and line.strip()]
    if lines:
        body.append(("N3", lines[:2]))
        if len(lines) > 2:
            g.lost(f"N3 carries two address lines: {len(lines) - 2} more not sent", f"{path}.line")
    if not address.get("city"):
        return
    table = g.tables.t["addresses"]
    given_country = (address.get("country") or "").strip()
    country = given_country.upper()
    territory = table.get("us_territory_countries", {}).get(country)
    region = "US" if country in table["us_country"] or territory else "CA" if country in table["ca_country"] else None
    n404 = "CA" if region == "CA" else ""
    if country and region is None:
        if len(country) == 2 and country in table["iso_countries"]:
            n404, region = country, "other"
        else:
            g.lost(f"country {quoted(given_country)} is not an ISO 3166 2-letter code: N404 left out",
                   f"{path}.country")
            region = "unknown"
    given_state = (address.get("state") or "").strip() or (territory or "")
    state = ""
    if given_state and region in (None, "US", "CA"):
        key = given_state.upper()
        names = {"US": table["us_states"], "CA": table["ca_provinces"]}
        for place in ("US", "CA") if region is None else (region,):
            codes = names[place]
            by_name = {name.upper(): code for code, name in codes.items()}
            found = key if key in codes else by_name.get(key) or (
                table["aliases"].get(key) if table["aliases"].get(key) in codes else None)
            if found:
                state = found
                n404 = n404 or ("CA" if place == "CA" else "")
                break
        else:
            where = {"US": "a US state or territory", "CA": "a Canadian province or territory"}.get(
                region or "", "a US state or territory or a Canadian province")
            g.lost(f"state {quoted(given_state)} is not {where} (code or name): left out of N402, which takes a code",
                   f"{path}.state")
    elif given_state:
        g.lost(f"state {quoted(given_state)} of an address outside the US and Canada has no place in N4 (N402 is for "
               "US and Canadian codes): left out", f"{path}.state")
    postal = str(address.get("postalCode") or "").strip()
    if region in (None, "US") and re.fullmatch(r"\d{5}-\d{4}", postal):
        postal = postal.replace("-", "")   # ZIP+4 is nine digits in N403, as a date loses its hyphens in DTP03
    body.append(("N4", [address.get("city", ""), state, postal, n404]))
