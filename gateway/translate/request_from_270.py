"""X12 270 -> a Bundle with each CoverageEligibilityRequest and the resources it implies.

For people translating sample files and for the payer simulator. Each patient asked about (a 2000C
without dependents, or each 2000D) becomes one request with its Patient, Coverage, payer
Organization and provider Practitioner/Organization; segments with no FHIR home become notes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from gateway.errors import quoted
from gateway.translate.notes import Note, process_note_extensions
from gateway.translate.response_271 import date_range, us_zip, x12_date
from gateway.translate.tables import Tables, fhir_code, trace_system
from gateway.x12.model import Loop, Segment, Transaction, whole_number

_NAMESPACE = uuid.UUID("6f1c1f64-3c39-4e59-8d1a-8a3f2b6a9e10")


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, '/'.join(parts))}"


def seed(txn: Transaction, occurrence: int = 0) -> str:
    """What makes this transaction's resources unique: interchange, group, set and BHT03; ``occurrence`` (1, 2 ...)
    tells apart sets of one file that share all four (a set or interchange sent twice)."""
    bht = txn.root.segment("BHT")
    isa = txn.interchange.control_number if txn.interchange else ""
    gs = txn.group.control_number if txn.group else ""
    return f"{isa}/{gs}/{txn.control_number}/{bht.get(3) if bht else ''}" + (f"#{occurrence}" if occurrence else "")


def _level_keys(txn: Transaction) -> dict[int, str]:
    """Each HL loop's key in the resources' ids: its HL01, or (for an HL01 an earlier loop already used, which the
    reader reports) HL01@position, so that a second patient under a repeated HL01 keeps its own request rather than
    being dropped as the first one's duplicate."""
    keys: dict[int, str] = {}
    used: set[str] = set()
    for loop, _ in txn.root.walk():
        hl = loop.segment("HL")
        if hl is not None and id(loop) not in keys:
            key = hl.get(1) if hl.get(1) not in used else f"{hl.get(1)}@{hl.position}"
            used.add(key)
            keys[id(loop)] = key
    return keys


def translate_270(txn: Transaction, tables: Tables, *, now: str, carried: set[int] | None = None,
                  occurrence: int = 0) -> tuple[dict[str, Any], list[Note]]:
    """One Bundle (type collection) for a 270 transaction set, and the notes of what was not carried.

    ``carried`` (when given) receives the positions of the segments that went into FHIR content; every
    other segment has a note, so nothing in the 270 is dropped without a word. ``occurrence`` (see :func:`seed`)
    keeps the ids of a repeated set apart from the first one's.
    """
    systems = tables.systems
    notes: list[Note] = []
    carried = set() if carried is None else carried
    requests: list[tuple[str, list[Note], set[int]]] = []   # (fullUrl, notes, positions of its people's segments)
    people: set[int] = set()   # positions of every segment in a 2000C loop: one request's, or its dependents'

    entries: list[dict[str, Any]] = []
    seen: dict[str, str] = {}

    def note(text: str, loop: Loop, seg: Segment) -> None:
        notes.append(Note(text, _where(txn, loop, seg), seg.to_x12()))

    def add(resource: dict[str, Any], key: str) -> str:
        if key in seen:
            return seen[key]
        url = _urn(txn_seed, key)
        ordered = {"resourceType": resource.pop("resourceType"), "id": url.rsplit(":", 1)[-1], **resource}
        entries.append({"fullUrl": url, "resource": ordered})
        seen[key] = url
        return url

    txn_seed = seed(txn, occurrence)
    keys = _level_keys(txn)
    bht = txn.root.segment("BHT")
    carried.update(s.position for s in txn.root.segments if s.id in ("ST", "BHT", "SE"))
    carried.update(s.position for _, s in txn.root.walk() if s.id == "HL")   # the Bundle's shape
    if bht is not None:   # once per transaction, shared by every request (as the payer's and provider's notes)
        if bht.get(5):
            note(f"BHT05 time {bht.get(5)}: an X12 time has no zone, which a FHIR dateTime needs; created keeps "
                 "BHT04's date", txn.root, bht)
        usual = tables.t["request_270"]["constants"]["BHT02"]
        if bht.get(2) and bht.get(2) != usual:
            note(f"BHT02 {bht.get(2)}: the 270 is not an ordinary request ({usual}); a CoverageEligibilityRequest "
                 "cannot say so", txn.root, bht)
    header = len(notes)
    for source in txn.root.loops_of("2000A"):
        payer_loop = source.loop("2100A")
        start = len(notes)
        payer_url = _payer(tables, txn, payer_loop, add, note, carried)
        for receiver in source.loops_of("2000B"):
            provider_url = _provider(tables, txn, receiver.loop("2100B"), add, note, carried)
            shared = notes[:header] + notes[start:]
            for subscriber in receiver.loops_of("2000C"):
                sub_name = subscriber.loop("2100C")
                dependents = subscriber.loops_of("2000D")
                patients = dependents or [subscriber]
                people.update(seg.position for _, seg in subscriber.walk())
                for patient in patients:
                    name = patient.loop("2100D") if patient is not subscriber else sub_name
                    request_notes: list[Note] = list(shared)
                    request = _request(tables, txn, now, bht, subscriber, sub_name, patient, name,
                                       payer_url, provider_url, add, request_notes, carried, keys)
                    notes.extend(request_notes[len(shared):])
                    # the subscriber's segments and this patient's, not another dependent's
                    others = [d for d in dependents if d is not patient]
                    mine = {seg.position for loop, seg in subscriber.walk() if not _inside(loop, others)}
                    requests.append((add(request, f"request/{keys.get(id(patient), '')}"), request_notes, mine))
    for seg in txn.root.segments:
        if seg.id not in ("ST", "BHT", "SE"):
            note(f"segment {seg.id} outside the loops of a 270", txn.root, seg)
    # whatever no step above read (a segment where the guide puts none, a loop the translation does not know)
    noted = {n.source.rsplit("@", 1)[-1] for n in notes}
    unread = [Note(f"segment {seg.id} in loop {loop.id} is not read by the translation", _where(txn, loop, seg),
                   seg.to_x12()) for loop, seg in txn.root.walk()
              if seg.position not in carried and str(seg.position) not in noted]
    notes.extend(unread)
    for entry in entries:
        for url, request_notes, mine in requests:
            # an unread segment of a person goes to that person's request only (its raw text may be their data);
            # one above the people (payer, provider, envelope) to every request
            theirs = [n for n in unread if (at := int(n.source.rsplit("@", 1)[-1])) in mine or at not in people]
            if entry["fullUrl"] == url and (request_notes or theirs):
                entry["resource"]["extension"] = process_note_extensions(
                    [*request_notes, *theirs], systems["process_note_extension"], systems["note_type"])
    bundle = {"resourceType": "Bundle", "id": _urn(txn_seed, "bundle").rsplit(":", 1)[-1],
              "type": "collection", "timestamp": now, "entry": entries}
    if notes:
        bundle["meta"] = {"tag": [{"system": systems["canonical_base"], "code": "translated-from-x12-270"}]}
    return bundle, notes


def _created(bht: Segment | None, now: str) -> str:
    """When the 270 was made (BHT04, a date: its BHT05 time has no zone), else when it was translated."""
    day = x12_date(bht.get(4)) if bht is not None and bht.get(4) else None
    return day or now


def _inside(loop: Loop | None, ancestors: list[Loop]) -> bool:
    """Whether ``loop`` is one of ``ancestors`` or below one of them."""
    while loop is not None:
        if any(loop is a for a in ancestors):
            return True
        loop = loop.parent
    return False


def _where(txn: Transaction, loop: Loop, seg: Segment) -> str:
    """A note's source: the transaction, loop and segment with its position (``270 ST 0001 2100C DMG@9``)."""
    return f"270 ST {txn.control_number} {loop.id} {seg.id}@{seg.position}"


def _person(seg: Segment) -> dict[str, Any]:
    name = {k: v for k, v in (("family", seg.get(3)), ("given", [g for g in (seg.get(4), seg.get(5)) if g]),
                              ("suffix", [seg.get(7)] if seg.get(7) else None)) if v}
    return {"name": [name]} if name else {}


def _payer(tables: Tables, txn: Transaction, loop: Loop | None, add, note, carried: set[int]) -> str:
    org: dict[str, Any] = {"resourceType": "Organization", "name": "Payer"}
    key = ""
    if loop is not None:
        for seg in loop.segments:
            if seg.id == "NM1":
                carried.add(seg.position)
                org["name"] = seg.get(3) or "Payer"
                key = seg.get(9)
                _check_entity_type(tables, loop, seg, note, "payer", "organization")   # an Organization anyway
                _check_identification(tables, txn, loop, seg)
                # NM108 says what NM109 is: a payer id (PI) is the payer id, a tax id or a NAIC code is not
                identifier = tables.identifier(seg.get(8), seg.get(9))
                if identifier is not None:
                    org["identifier"] = [identifier]
                elif seg.get(9):
                    note(f"payer identified by {seg.get(8)} {seg.get(9)} ({tables.unidentified(seg.get(8))})", loop,
                         seg)
            else:
                note(f"segment {seg.id} of the payer loop has no FHIR home", loop, seg)
    return add(org, f"payer/{key or org['name']}")


def _check_entity_type(tables: Tables, loop: Loop, nm1: Segment, note: Callable[[str, Loop, Segment], None],
                       who: str, read_as: str) -> str:
    """NM102 by ``mappings/translate/qualifiers.yaml`` entity_type: person or organization. One it does not list (or
    none) is noted and read as ``read_as``, the loop's usual kind (X12 has no other NM102: no on_missing)."""
    kind = tables.entity_type(nm1.get(2))
    if kind is not None:
        return kind
    named = f"{who} {nm1.get(3)}" if nm1.get(3) else who
    note(f"{named}: {tables.unlisted_entity_type(nm1.get(2), read_as)}", loop, nm1)
    return read_as


def _check_identification(tables: Tables, txn: Transaction, loop: Loop, nm1: Segment) -> None:
    """An NM108 that ``mappings/translate/identifiers.yaml`` does not list refuses the 270 when the table says so
    (on_missing: error); otherwise the caller notes the id, which then has no FHIR identifier system."""
    qualifier = nm1.get(8)
    if qualifier and qualifier not in tables.t["identifiers"]["codes"]:
        tables.refuse_unknown("identifiers", qualifier, _where(txn, loop, nm1), "NM108")


def _provider(tables: Tables, txn: Transaction, loop: Loop | None, add, note, carried: set[int]) -> str | None:
    if loop is None:
        return None
    systems = tables.systems
    references = tables.t["references"]
    nm1 = loop.segment("NM1")
    resource: dict[str, Any]
    if nm1 is not None and _check_entity_type(tables, loop, nm1, note, "provider", "organization") == "person":
        resource = {"resourceType": "Practitioner", **_person(nm1)}
    else:
        # NM103 may be left out when NM109 identifies the provider: a name of "" is not valid FHIR
        name = nm1.get(3) if nm1 is not None else "Provider"
        resource = {"resourceType": "Organization", **({"name": name} if name else {})}
    if nm1 is not None:
        _check_identification(tables, txn, loop, nm1)
    identifier = tables.identifier(nm1.get(8), nm1.get(9)) if nm1 is not None else None   # XX: the NPI
    if identifier is not None:
        resource["identifier"] = [identifier]
    elif nm1 is not None and nm1.get(9):   # an id FHIR has no system for (SV, XV ...)
        note(f"provider identified by {nm1.get(8)} {nm1.get(9)} ({tables.unidentified(nm1.get(8))})", loop, nm1)
    for seg in loop.segments:
        # PRV02 PXC: PRV03 is a taxonomy code
        taxonomy_prv = seg.id == "PRV" and references["provider_level"].get(seg.get(2)) == "taxonomy" and seg.get(3)
        if seg.id in ("NM1", "N3", "N4") or taxonomy_prv:
            carried.add(seg.position)
        if seg.id == "NM1":
            continue
        if seg.id in ("PRV", "REF"):   # PRV02, REF01 (element 128): a qualifier not listed is noted below, or refused
            element, qualifier = ("PRV02", seg.get(2)) if seg.id == "PRV" else ("REF01", seg.get(1))
            if qualifier and qualifier not in references["names"]:
                tables.refuse_unknown("references", qualifier, _where(txn, loop, seg), element)
        if taxonomy_prv:
            # where the 270 builder reads a taxonomy: a practitioner's qualification, an organization's type
            taxonomy = {"coding": [{"system": systems["taxonomy"], "code": fhir_code(seg.get(3))}]}
            if resource["resourceType"] == "Practitioner":
                resource["qualification"] = [{"code": taxonomy}]
            else:
                resource["type"] = [taxonomy]
        elif seg.id == "N3":
            resource.setdefault("address", [{}])[0]["line"] = [v for v in (seg.get(1), seg.get(2)) if v]
        elif seg.id == "N4":
            resource.setdefault("address", [{}])[0].update(
                {k: v for k, v in (("city", seg.get(1)), ("state", seg.get(2)), ("postalCode", us_zip(seg, tables)))
                 if v})
        else:
            note(f"provider segment {seg.id} {' '.join(seg.elements)} has no FHIR home", loop, seg)
    key = resource.get("identifier", [{}])[0].get("value") or (nm1.get(3) if nm1 is not None else "provider")
    return add(resource, f"provider/{key}")


def _request(tables: Tables, txn: Transaction, now: str, bht: Segment | None, subscriber: Loop,
             sub_name: Loop | None, patient: Loop, name: Loop | None, payer_url: str,
             provider_url: str | None, add, notes: list[Note], carried: set[int], keys: dict[int, str]
             ) -> dict[str, Any]:
    systems = tables.systems
    dependent = patient is not subscriber

    def note(text: str, loop: Loop, seg: Segment) -> None:
        notes.append(Note(text, _where(txn, loop, seg), seg.to_x12()))

    def unknown(table: str, code: str, loop: Loop, seg: Segment, element: str) -> None:
        """A code ``table`` does not list: the translation stops when the table says so (on_missing: error);
        otherwise the caller keeps it and notes it."""
        tables.refuse_unknown(table, code, _where(txn, loop, seg), element)

    person_refs = {rule["ref"]: rule for rule in tables.t["request_270"]["patient_references"]}
    references = tables.t["references"]["names"]
    formats = tables.t["dates"]["formats"]

    def person_from(loop: Loop | None, key: str) -> tuple[dict[str, Any], str]:
        resource: dict[str, Any] = {"resourceType": "Patient"}
        member = ""
        if loop is None:
            return resource, member
        for seg in loop.segments:
            if seg.id in ("NM1", "DMG", "N3", "N4") or (seg.id == "REF" and seg.get(1) in person_refs):
                carried.add(seg.position)
            if seg.id == "REF" and seg.get(1) and seg.get(1) not in references:   # noted in the loop below
                unknown("references", seg.get(1), loop, seg, "REF01")
            if seg.id == "REF" and seg.get(1) in person_refs and seg.get(2):   # SSN, record number: as sent
                rule = person_refs[seg.get(1)]
                resource.setdefault("identifier", []).append(
                    {"system": rule["system"], "value": seg.get(2)} if "system" in rule else
                    {"type": {"coding": [{"system": rule["type_system"], "code": rule["type"]}]}, "value": seg.get(2)})
            if seg.id == "NM1":
                resource.update(_person(seg))
                _check_entity_type(tables, loop, seg, note, f"the {key}", "person")   # a Patient whatever it says
                # NM108 says what NM109 is: MI the member id; another id of the person under its system, or noted
                qualifier, value = seg.get(8), seg.get(9)
                if value and tables.member_id(qualifier):
                    member = value
                    resource.setdefault("identifier", []).insert(0, {
                        "type": {"coding": [dict(systems["member_id_type"])]}, "system": systems["member_id_system"],
                        "value": member})
                elif value:
                    _check_identification(tables, txn, loop, seg)
                    identifier = tables.identifier(qualifier, value)
                    if identifier is not None:
                        resource.setdefault("identifier", []).insert(0, identifier)
                    else:
                        note(f"the {key} identified by {' '.join(v for v in (qualifier, value) if v)} "
                             f"({tables.unidentified(qualifier)}): not a member id", loop, seg)
            elif seg.id == "DMG":
                # a birth date is one day (D8)
                birth = date_range(tables, seg.get(1), seg.get(2)) if formats.get(seg.get(1)) == "date" else None
                if birth:
                    resource["birthDate"] = birth[0]
                elif seg.get(2):
                    day = "/".join(k for k, v in formats.items() if v == "date")
                    note(f"birth date {quoted(seg.get(2))} ({seg.get(1) or 'no format'}) is not a {day} calendar date",
                         loop, seg)
                gender = tables.t["gender"]["from_x12"].get(seg.get(3))
                if gender:
                    resource["gender"] = gender
                elif seg.get(3):
                    unknown("gender", seg.get(3), loop, seg, "DMG03")
                    note(f"gender {quoted(seg.get(3))} (DMG03) has no AdministrativeGender code", loop, seg)
            elif seg.id == "N3":
                resource.setdefault("address", [{}])[0]["line"] = [v for v in (seg.get(1), seg.get(2)) if v]
            elif seg.id == "N4":
                resource.setdefault("address", [{}])[0].update(
                    {k: v for k, v in (("city", seg.get(1)), ("state", seg.get(2)), ("postalCode", us_zip(seg, tables)),
                                       ("country", seg.get(4))) if v})
        return resource, member

    sub_resource, member_id = person_from(sub_name, "subscriber")
    if dependent:
        pat_resource, _ = person_from(name, "patient")
        subscriber_url = add(sub_resource, f"subscriber/{member_id or keys.get(id(subscriber), '')}")
        patient_url = add(pat_resource, f"patient/{keys.get(id(patient), '')}")
    else:
        patient_url = add(sub_resource, f"patient/{keys.get(id(patient), '')}")
        subscriber_url = patient_url

    coverage: dict[str, Any] = {"resourceType": "Coverage", "status": "active",
                                "beneficiary": {"reference": patient_url}, "payor": [{"reference": payer_url}],
                                "subscriber": {"reference": subscriber_url}}
    if member_id:
        coverage["subscriberId"] = member_id
    relationship: str | None = tables.t["relationship"]["subscriber"][0]   # self, unless an INS02 says otherwise
    request: dict[str, Any] = {"resourceType": "CoverageEligibilityRequest", "status": "active",
                               "purpose": [], "patient": {"reference": patient_url}, "created": _created(bht, now)}
    items: list[dict[str, Any]] = []
    diagnoses: list[tuple[str, str]] = []   # (code system, code) in HI order: EQ05 points at them by position
    pointed: set[int | None] = set()
    hi_seg: Segment | None = None
    hi_loop: Loop | None = None
    purposes: set[str] = set()
    for level in (subscriber, patient) if dependent else (subscriber,):
        for seg in level.segments:
            if seg.id == "TRN":
                carried.add(seg.position)
                if seg.get(2):
                    request.setdefault("identifier", []).append(
                        {"system": trace_system(tables, seg.get(3)), "value": seg.get(2)})
                if seg.get(4):
                    note(f"trace {seg.get(2)} names the originator's division {seg.get(4)} (TRN04)", level, seg)
    eq_count = sum(1 for lp in (sub_name, name if dependent else None) if lp is not None
                   for inquiry in lp.loops if inquiry.id.startswith("2110") for _ in inquiry.segments_of("EQ"))
    classes = tables.t["references"]["patient_level"]   # REF 6P/1L group, 18 plan: Coverage.class
    inquiry_dates = tables.t["dates"]["inquiry"]   # DTP 291: the date of service
    date_names = tables.t["dates"]["names"]
    for loop in [lp for lp in (sub_name, name if dependent else None) if lp is not None]:
        for seg in loop.segments:
            sid = seg.id
            if sid in ("NM1", "DMG", "N3", "N4") or (sid == "REF" and seg.get(1) in person_refs):
                continue   # the person's own (person_from)
            serviced = sid == "DTP" and inquiry_dates.get(seg.get(1)) == "serviced"
            if sid == "DTP" and seg.get(1) not in date_names:   # noted below with its code
                unknown("dates", seg.get(1), loop, seg, "DTP01")
            if sid in ("INS", "HI") or (sid == "REF" and seg.get(1) in classes and seg.get(2)) or serviced:
                carried.add(seg.position)
            if sid == "REF" and seg.get(1) in classes and not seg.get(2):   # a class needs a value
                note(f"REF {seg.get(1)} names no {classes[seg.get(1)]} (REF02 is empty)", loop, seg)
            elif sid == "REF" and seg.get(1) in classes:
                kind = classes[seg.get(1)]
                coverage.setdefault("class", []).append(
                    {"type": {"coding": [{"system": systems["coverage_class"], "code": kind}]}, "value": seg.get(2)})
            elif serviced:
                _service_date(tables, request, seg, loop, note)
            elif sid == "INS":
                relationship = tables.t["relationship"]["from_ins02"].get(seg.get(2))
                if relationship is None and seg.get(2):
                    unknown("relationship", seg.get(2), loop, seg, "INS02")
                    note(f"relationship code {quoted(seg.get(2))} (INS02) is not known: Coverage.relationship is left "
                         "out", loop, seg)
                elif relationship is None:
                    note("INS names no relationship (INS02 is empty): Coverage.relationship is left out", loop, seg)
                if seg.get(17):
                    note(f"birth sequence {seg.get(17)} (INS17: twins, triplets ...)", loop, seg)
            elif sid == "HI":
                hi_seg, hi_loop = seg, loop
                for comp in seg.elements:
                    parts = [fhir_code(part) for part in comp.split(seg.delimiters.component)]
                    if len(parts) > 1 and parts[1]:
                        kind = tables.t["diagnoses"]["from_x12"].get(parts[0])
                        if not kind:
                            unknown("diagnoses", parts[0], loop, seg, "HI")
                            note(f"diagnosis {parts[1]} with code list qualifier {quoted(parts[0])} (not ICD-10-CM or "
                                 "ICD-9-CM)", loop, seg)
                        diagnoses.append((kind["system"], _dotted(parts[1], kind)) if kind else ("", parts[1]))
            else:
                note(f"segment {sid} {' '.join(seg.elements)} has no FHIR home", loop, seg)
        for inquiry in loop.loops:
            if not inquiry.id.startswith("2110"):
                continue
            for seg in inquiry.segments:
                if seg.id == "EQ":
                    carried.add(seg.position)
                    _unlisted_in_eq(tables, seg, inquiry, unknown, note)
                    asked = _items(tables, seg, diagnoses, purposes, several=eq_count > 1)
                    items.extend(asked)
                    if not seg.get(1) and not seg.get(2):
                        note("EQ asks for neither a service type (EQ01) nor a procedure (EQ02)", inquiry, seg)
                    elif seg.get(2) and not _procedure_code(seg):
                        note(f"EQ02 {quoted(seg.get(2))} names no procedure code (EQ02-2)", inquiry, seg)
                    for index, what in ((3, "coverage level"), (4, "insurance type")):
                        if seg.get(index):   # an item has no place for either
                            note(f"EQ asks for {what} {seg.get(index)} (EQ0{index})", inquiry, seg)
                    pointers = [p for p in (seg.components(5) if seg.get(5) else []) if p]
                    stray = [p for p in pointers if not 0 < (whole_number(p) or 0) <= len(diagnoses)]
                    if stray:
                        shown = ", ".join(quoted(p, bare=True) for p in stray)
                        note(f"diagnosis pointer {shown} (EQ05) points at no HI diagnosis", inquiry, seg)
                    if asked:   # the items carry what the pointers point at ("01" is diagnosis 1 too)
                        pointed.update(whole_number(p) for p in pointers)
                elif seg.id == "DTP" and inquiry_dates.get(seg.get(1)) == "serviced" and "servicedDate" not in request \
                        and "servicedPeriod" not in request:
                    carried.add(seg.position)
                    _service_date(tables, request, seg, inquiry, note)
                else:
                    if seg.id == "DTP" and seg.get(1) not in date_names:   # noted here with its code
                        unknown("dates", seg.get(1), inquiry, seg, "DTP01")
                    note(f"inquiry segment {seg.id} {' '.join(x for x in seg.elements if x)} has no FHIR home",
                         inquiry, seg)
    unpointed = [code for index, (_, code) in enumerate(diagnoses, start=1) if index not in pointed]
    if unpointed and hi_seg is not None and hi_loop is not None:   # an item carries a diagnosis; these have none
        note(f"diagnosis {', '.join(unpointed)} is pointed at by no EQ05, so no item carries it", hi_loop, hi_seg)
    if dependent and name is not None and name.segment("INS") is None:
        notes.append(Note("the 270 names a dependent without INS02: the relationship to the subscriber is not "
                          "known (Coverage.relationship left out)", f"270 ST {txn.control_number} 2100D"))
    elif relationship:
        coverage["relationship"] = {"coding": [{"system": systems["relationship"], "code": relationship}]}
    coverage_url = add(coverage, f"coverage/{keys.get(id(patient), '')}")
    if not member_id:   # no NM108/NM109: a search by name and birth date (fhir-mapping-reference 3.3)
        purposes.add("discovery")
    request["purpose"] = sorted(purposes or {"validation"})
    request["insurer"] = {"reference": payer_url}
    if provider_url:
        request["provider"] = {"reference": provider_url}
    request["insurance"] = [{"focal": True, "coverage": {"reference": coverage_url}}]
    if items:
        request["item"] = items
    if bht is not None and bht.get(3):
        request.setdefault("identifier", []).append({"system": f"{systems['canonical_base']}/sid/bht03",
                                                     "value": bht.get(3)})
    ordered = {k: request[k] for k in ("resourceType", "identifier", "status", "purpose", "patient",
                                        "servicedDate", "servicedPeriod", "created", "insurer", "provider",
                                        "insurance", "item") if k in request}
    return ordered


def _items(tables: Tables, seg: Segment, diagnoses: list[tuple[str, str]], purposes: set[str], *,
           several: bool = False) -> list[dict[str, Any]]:
    """The items one EQ asks about: one per EQ01 service type, each with the EQ02 procedure and EQ05 diagnoses.

    An EQ with both EQ01 and EQ02 asks about that procedure within that service type, so one item holds
    both (ces-1 binds the response's items, not the request's) and the 270 built back from it asks the
    same one question. A lone generic ``EQ*30`` asks for validation and general benefits and needs no item,
    unless it points at diagnoses: then an item with category 30 keeps them (and builds the same EQ back).
    """
    systems = tables.systems
    numbers = [whole_number(p) or 0 for p in (seg.components(5) if seg.get(5) else [])]
    diagnosis = [{"diagnosisCodeableConcept": {"coding": [{"system": diagnoses[n - 1][0],
                                                            "code": diagnoses[n - 1][1]}]}}
                 for n in numbers if 0 < n <= len(diagnoses) and diagnoses[n - 1][0]]
    procedure: dict[str, Any] = {}
    if _procedure_code(seg):
        comps = [fhir_code(comp) for comp in seg.components(2)]
        qualifier, code = comps[0], comps[1]
        # a qualifier the table does not list names its system in the X12 one (percent-encoded, as the 271's EB13);
        # none at all names no system, and the code is kept alone (noted by _unlisted_in_eq)
        system = tables.t["procedures"]["from_x12"].get(qualifier) or (
            tables.x12_system(f"235/{quote(qualifier, safe='')}") if qualifier else None)
        at = {"system": system} if system else {}
        procedure["productOrService"] = {"coding": [{**at, "code": code}]}
        modifiers = [m for m in comps[2:6] if m]
        if modifiers:
            procedure["modifier"] = [{"coding": [{**at, "code": m}]} for m in modifiers]
        purposes.update(("benefits", "auth-requirements"))  # a procedure inquiry asks both
    service_types = [code for stc in seg.repetitions(1) if (code := fhir_code(stc))]
    generic = tables.t["request_270"]["constants"]["generic_service_type"]
    if service_types == [generic] and not procedure and not several:
        purposes.update(("validation", "benefits"))
        if not diagnosis:
            return []
    items: list[dict[str, Any]] = []
    for stc in service_types or [""]:
        item: dict[str, Any] = {}
        if stc:
            info = tables.code("service_type", stc)
            item["category"] = {"coding": [{"system": systems["service_type"]["emit"], "code": stc,
                                            **({"display": info["display"]} if info else {})}]}
            purposes.add("benefits")
        item.update(procedure)
        if diagnosis:
            item["diagnosis"] = diagnosis
        if stc or procedure:   # an EQ with neither (R0102 broken) asks nothing an item could hold
            items.append(item)
    return items


def _unlisted_in_eq(tables: Tables, seg: Segment, loop: Loop, unknown: Callable[[str, str, Loop, Segment, str], None],
                    note: Callable[[str, Loop, Segment], None]) -> None:
    """The codes of an EQ its tables do not list: each refused when its table says so (on_missing: error), else
    kept and noted: a service type (EQ01) and a procedure qualifier (EQ02-1), which the items carry as sent; a
    coverage level (EQ03) or insurance type (EQ04), which the EQ's own note already shows."""
    for stc in seg.repetitions(1):
        code = fhir_code(stc)
        if code and code not in tables.codes["service_type"]:
            unknown("service_type", code, loop, seg, "EQ01")
            note(f"service type {quoted(code)} (EQ01) is not an X279A1 code; passed through", loop, seg)
    if _procedure_code(seg):
        qualifier = fhir_code(seg.components(2)[0])
        if qualifier and qualifier not in tables.t["procedures"]["from_x12"]:
            unknown("procedures", qualifier, loop, seg, "EQ02-1")
            note(f"procedure code list qualifier {quoted(qualifier)} (EQ02-1) is not an X279A1 code: the procedure "
                 "is kept under the X12 qualifier's system", loop, seg)
        elif not qualifier:   # as a 271's EB13 without EB13-1: the code alone, no system
            note(f"EQ02 procedure {quoted(_procedure_code(seg))} has no code list qualifier (EQ02-1): its code system "
                 "is not known", loop, seg)
    for index, table in ((3, "coverage_level"), (4, "insurance_type")):
        code = seg.get(index)
        if code and code not in tables.codes[table]:
            unknown(table, code, loop, seg, f"EQ0{index}")


def _procedure_code(seg: Segment) -> str:
    """EQ02-2, the procedure an EQ asks about ("" when EQ02 has none: a qualifier alone is no procedure)."""
    comps = seg.components(2) if seg.get(2) else []
    return fhir_code(comps[1]) if len(comps) > 1 else ""


def _dotted(code: str, kind: dict[str, Any]) -> str:
    """An X12 diagnosis code (no point: M5450) as its FHIR code system writes it (M54.50).

    A code no longer than its category, or one that already has a point, is kept as it came.
    """
    at = int(kind.get("by_prefix", {}).get(code[:1].upper(), kind["point_after"]))
    return code if "." in code or len(code) <= at else f"{code[:at]}.{code[at:]}"


def _service_date(tables: Tables, request: dict[str, Any], seg: Segment, loop: Loop,
                  note: Callable[[str, Loop, Segment], None]) -> None:
    """A DTP*291 as servicedDate (one day) or servicedPeriod; a note when it cannot be read."""
    span = date_range(tables, seg.get(2), seg.get(3))
    if span and span[0] == span[1]:
        request["servicedDate"] = span[0]
    elif span:
        request["servicedPeriod"] = {"start": span[0], "end": span[1]}
    else:
        note(f"service date {quoted(seg.get(3))} could not be read", loop, seg)
