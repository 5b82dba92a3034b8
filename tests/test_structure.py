"""Structural problems of incoming resources: FHIRPath, issue code and words a caller can act on."""

from __future__ import annotations

import pytest

from gateway.fhir.structure import own_problems, payload_problems, structure_problems

REQUEST = {"resourceType": "CoverageEligibilityRequest", "status": "active", "purpose": ["benefits"],
           "created": "2025-03-10", "patient": {"reference": "Patient/p"}, "insurer": {"reference": "Organization/o"}}


def problems(**changes):
    resource = {**REQUEST, **changes}
    for key in [k for k, v in changes.items() if v is None]:
        resource.pop(key)
    return [(p.fhir_path, p.code, p.message) for p in structure_problems(resource)]


def test_a_valid_request_has_none():
    assert problems() == []


@pytest.mark.parametrize("element", ["created", "status", "patient", "insurer"])
def test_a_missing_required_element_is_code_required(element):
    assert problems(**{element: None}) == [(f"CoverageEligibilityRequest.{element}", "required",
                                            "this element is required")]


def test_a_string_where_a_reference_belongs_says_so():
    assert problems(patient="Patient/p") == [("CoverageEligibilityRequest.patient", "value",
                                              "expected a JSON object here, not a string")]


def test_an_unknown_element_is_code_structure():
    assert problems(colour="blue") == [("CoverageEligibilityRequest.colour", "structure",
                                        "this element is not part of the resource")]


# -- JSON types and required codes, which the models coerce or let through ------------------------------------

@pytest.mark.parametrize(("changes", "expected"), [
    ({"insurance": [{"focal": "yes", "coverage": {"reference": "Coverage/c"}}]},
     ("CoverageEligibilityRequest.insurance[0].focal", "value", "expected true or false here, not a string")),
    ({"insurance": [{"focal": 1, "coverage": {"reference": "Coverage/c"}}]},
     ("CoverageEligibilityRequest.insurance[0].focal", "value", "expected true or false here, not a number")),
    ({"item": [{"category": {"text": "x"}, "quantity": {"value": "2"}}]},
     ("CoverageEligibilityRequest.item[0].quantity.value", "value", "expected a JSON number here, not a string")),
    ({"created": 20250310},
     ("CoverageEligibilityRequest.created", "value", "expected a JSON string here, not a number")),
    ({"item": [{"category": '{"text": "x"}'}]},
     ("CoverageEligibilityRequest.item[0].category", "value", "expected a JSON object here, not a string")),
    ({"status": "bogus"},
     ("CoverageEligibilityRequest.status", "code-invalid",
      "'bogus' is not one of the codes this element allows (active, cancelled, draft, entered-in-error)")),
    ({"contained": [{"resourceType": "Patient", "id": "p", "gender": "bogus"}]},
     ("CoverageEligibilityRequest.contained[0].gender", "code-invalid",
      "'bogus' is not one of the codes this element allows (female, male, other, unknown)")),
])
def test_values_of_the_wrong_json_type_or_code_are_refused(changes, expected):
    """fhir.resources reads "yes" as true, "2" as 2 and 20250310 as a time, and checks no codes: stored as sent,
    each would be served back as invalid FHIR."""
    assert problems(**changes) == [expected]


def test_well_typed_values_pass_including_primitive_extensions_and_array_placeholders():
    patient = {"resourceType": "Patient", "id": "p", "active": True, "gender": "female", "multipleBirthInteger": 2,
               "name": [{"given": ["Ann", "Marie"], "_given": [None, {"extension": [
                   {"url": "http://example.org/x", "valueBoolean": False}]}]}],
               "_birthDate": {"extension": [{"url": "http://example.org/y", "valueDecimal": 2.5}]}}
    assert structure_problems(patient) == []
    patient["multipleBirthInteger"] = 2.0   # FHIR JSON writes an integer without a fraction
    assert [(p.fhir_path, p.code) for p in structure_problems(patient)] == [("Patient.multipleBirthInteger", "value")]


@pytest.mark.parametrize(("changes", "path"), [
    ({"insurance": [{"coverage": None}]}, "CoverageEligibilityRequest.insurance[0].coverage"),
    ({"servicedDate": None, "patient": {"reference": "Patient/p"}, "priority": None}, None),  # popped: absent
    ({"identifier": [None]}, "CoverageEligibilityRequest.identifier[0]"),
    ({"contained": [{"resourceType": "Patient", "id": "p", "name": [{"given": [None, "Marie"]}]}]},
     "CoverageEligibilityRequest.contained[0].name[0].given[0]"),
])
def test_a_json_null_is_refused_with_its_path(changes, path):
    """FHIR JSON has no null (an element is left out); the models read one as absent, so "coverage": null passed."""
    found = [(p, code) for p, code, _ in problems(**changes)]
    assert (path, "structure") in found if path else found == []


def test_a_json_null_as_a_top_level_value_is_refused():
    resource = {**REQUEST, "servicedDate": None}
    assert [(p.fhir_path, p.code) for p in structure_problems(resource)] == [
        ("CoverageEligibilityRequest.servicedDate", "structure")]


def test_a_null_beside_its_extension_in_a_primitive_array_is_allowed():
    patient = {"resourceType": "Patient", "id": "p", "name": [{"given": [None, "Marie"], "_given": [
        {"extension": [{"url": "http://example.org/x", "valueBoolean": True}]}, None]}]}
    assert structure_problems(patient) == []


@pytest.mark.parametrize(("contained", "path"), [
    (5, "CoverageEligibilityRequest.contained"), (True, "CoverageEligibilityRequest.contained"),
    ([{"resourceType": "Patient", "id": {"x": 1}}], "CoverageEligibilityRequest.contained[0].id"),
    ([{"resourceType": "Patient", "id": ["p1"]}], "CoverageEligibilityRequest.contained[0].id")])
def test_contained_or_a_contained_id_of_the_wrong_json_type_is_a_problem(contained, path):
    """A number for ``contained`` is not a list to walk, an object for an id no key of the ids seen: the
    invariants skip what the model reports, instead of a TypeError."""
    request = {**REQUEST, "contained": contained}
    found = payload_problems(request, None)
    assert path in {p.fhir_path for p in found}


@pytest.mark.parametrize(("kind", "code", "message"), [
    (False, "structure", "expected a JSON string naming a resource type here, not a boolean"),
    (7, "structure", "expected a JSON string naming a resource type here, not a number"),
    (["Coverage"], "structure", "expected a JSON string naming a resource type here, not an array"),
    ("NoSuchType", "structure", "'NoSuchType' is not a FHIR resource type"),
    ("coverage", "structure", "'coverage' is not a FHIR resource type"),
    ("Coding", "structure", "'Coding' is a FHIR data type, not a resource type"),
    ("Element", "structure", "'Element' is a FHIR data type, not a resource type"),
    ("Resource", "structure", "'Resource' is the abstract base of resources; name the resource's own type (Patient, "
                              "Coverage, Organization ...)"),
    (..., "required", "a resource names its type in resourceType, and this one has none")])
def test_a_resource_type_that_names_no_resource_type_is_said_at_its_path(kind, code, message):
    """A Bundle entry's (or a contained) resource whose resourceType is false came back as "not a FHIR resource this
    server knows: unsupported operand type(s) for +: 'bool' and 'str'" at the entry (Python's words); one naming
    a data type (Coding, Element) or the abstract Resource passed as valid."""
    coverage = {"resourceType": kind, "id": "c", "status": "active"}
    if kind is ...:
        del coverage["resourceType"]
    entry = structure_problems(coverage, "Bundle.entry[2].resource")
    assert [(p.fhir_path, p.code, p.message) for p in entry] == [("Bundle.entry[2].resource.resourceType", code,
                                                                   message)]
    contained = problems(contained=[coverage])
    assert ("CoverageEligibilityRequest.contained[0].resourceType", code, message) in contained
    assert not any("operand" in text or "concatenate" in text or "Model" in text for _, _, text in contained)


DATE_FORMAT = "not a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD (years 0001 to 9999)"
DATETIME_FORMAT = ("not a FHIR dateTime: YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss) with its time zone (Z "
                   "or +hh:mm; years 0001 to 9999)")
CER = "CoverageEligibilityRequest"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"servicedDate": "2025-03-10T10:00:00Z"}, [(f"{CER}.servicedDate", "value",
                                                  f"'2025-03-10T10:00:00Z' is {DATE_FORMAT}")]),
    ({"created": "0000-01-01"}, [(f"{CER}.created", "value", f"'0000-01-01' is {DATETIME_FORMAT}")]),
    ({"servicedDate": "2025-02-30"}, [(f"{CER}.servicedDate", "value", "'2025-02-30' is not a date that exists: day "
                                                                       "value is outside expected range")]),
    ({"id": "a b"}, [(f"{CER}.id", "value", "'a b' is not a FHIR id: 1 to 64 letters, digits, '-' and '.'")]),
    ({"language": " en"}, [(f"{CER}.language", "value", "' en' is not a FHIR code: not empty, no white space at either "
                                                        "end and no two white space characters in a row")]),
    ({"identifier": [{"value": ""}]}, [(f"{CER}.identifier[0].value", "value",
                                        "an empty string is not a FHIR value: leave the element out")]),
    ({"extension": [{"url": "http://example.org/x", "valueString": "a", "valueBoolean": True}]},
     [(f"{CER}.extension[0]", "value", "value[x] takes one value, and valueBoolean and valueString were given")]),
    ({"servicedDate": "2025-03-10", "servicedPeriod": {"start": "2025-03-10"}},
     [(CER, "value", "serviced[x] takes one value, and servicedDate and servicedPeriod were given")]),
    ({"item": [{"category": 1.5}]},
     [(f"{CER}.item[0].category", "value", "expected a JSON object here, not a number")]),
    ({"item": [{"category": {"text": "x"}, "detail": [None]}]},
     [(f"{CER}.item[0].detail[0]", "structure", "null is not a FHIR JSON value here (only as a place-holder for a "
                                                "value or extension at _detail[0])")]),
    ({"item": [{"category": {"resourceType": "CodeableConcept", "text": "x"}}]},
     [(f"{CER}.item[0].category.resourceType", "structure", "this element is not a resource: only a resource has a "
                                                            "resourceType")]),
    ({"item": [{"category": {"resourceType": 5, "text": "x"}}]},
     [(f"{CER}.item[0].category.resourceType", "structure", "this element is not a resource: only a resource has a "
                                                            "resourceType")]),
    ({"fhir_comments": ["x"]}, [(f"{CER}.fhir_comments", "structure", "this element is not part of the resource")]),
    ({"extension": [{"url": "http://example.org/x", "valueInteger": 2 ** 40}]},
     [(f"{CER}.extension[0].valueInteger", "value", "larger than this element allows (at most 2147483647)")]),
])
def test_the_models_complaints_are_said_in_fhir_words_once_at_the_element(changes, expected):
    """The models' own words came back as they were: "Value error, Date value string does not match spec regex.",
    "String should match pattern '^[^\\s]+(\\s[^\\s]+)*$'", a list of fifty value[x] names "but got multiple!",
    "Value is expected from the instance of CodeableConcept, but got type <class 'float'>" at a path ending in
    ``.root`` beside our own problem at the element, "None is not allowed as an element of detail" beside ours at
    detail[0]; a data type with a resourceType naming itself, and fhir_comments, passed as valid."""
    assert problems(**changes) == expected


def _bundle(*entries):
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:6c3c7a6e-0000-4000-8000-000000000001", "resource": REQUEST}, *entries]}


PATIENT = {"resourceType": "Patient", "id": "p", "name": [{"family": "Roe"}]}


@pytest.mark.parametrize(("entry", "path", "code", "message"), [
    ({"fullUrl": "Patient/p", "resource": 5}, "Bundle.entry[1].resource", "structure",
     "expected a JSON object here (a resource), not a number"),
    ({"fullUrl": "Patient/p", "resource": "Patient/p"}, "Bundle.entry[1].resource", "structure",
     "expected a JSON object here (a resource), not a string"),
    ({"fullUrl": "Patient/p"}, "Bundle.entry[1].resource", "required",
     "an entry without a request or response holds a resource (bdl-5)"),
])
def test_an_entry_whose_resource_is_not_an_object_or_missing_is_a_problem(entry, path, code, message):
    """The Bundle's own check leaves its entries' resources out, and only an object was checked as one: an entry
    whose resource was 5 or missing passed, and the references to it were looked for elsewhere (a 422 that the
    EHR's host may not be asked, or the EHR's copy fetched in its place)."""
    bundle = _bundle(entry)
    assert [(p.fhir_path, p.code, p.message) for p in payload_problems(REQUEST, bundle)] == [(path, code, message)]


@pytest.mark.parametrize(("full_url", "code", "words"), [
    (5, "value", "expected a JSON string here, not a number"),
    (["Patient/p"], "value", "expected a JSON string here, not an array"),
    (None, "structure", "null is not a FHIR JSON value"),
])
def test_a_full_url_that_is_no_string_is_said_once_and_its_resource_is_still_checked(full_url, code, words):
    """Was said twice, at Bundle.entry[1].fullUrl and again at Bundle.entry[1]; and the entry's resource, which the
    references still find by its type and id, went unchecked."""
    bundle = _bundle({"fullUrl": full_url, "resource": {**PATIENT, "birthDate": "1980-13-01"}})
    found = [(p.fhir_path, p.code, p.message) for p in payload_problems(REQUEST, bundle)]
    assert [(path, code) for path, code, _ in found] == [("Bundle.entry[1].fullUrl", code),
                                                         ("Bundle.entry[1].resource.birthDate", "value")]
    assert words in found[0][2]


def test_the_requests_own_problems_in_a_bundle_are_said_from_its_entry():
    """They were said at CoverageEligibilityRequest.x beside Bundle.entry[i].resource.x: one answer, two roots."""
    request = {**REQUEST, "status": "bogus", "contained": [{"resourceType": "Patient", "gender": "f"}]}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "Patient/p", "resource": {**PATIENT, "birthDate": "1980-13-01"}},
        {"fullUrl": "urn:uuid:6c3c7a6e-0000-4000-8000-000000000001", "resource": request}]}
    assert sorted(p.fhir_path for p in payload_problems(request, bundle)) == [
        "Bundle.entry[0].resource.birthDate", "Bundle.entry[1].resource.contained[0].gender",
        "Bundle.entry[1].resource.contained[0].id", "Bundle.entry[1].resource.status"]
    alone = sorted(p.fhir_path for p in payload_problems(request, None))   # sent alone: from its own root
    assert alone == ["CoverageEligibilityRequest.contained[0].gender", "CoverageEligibilityRequest.contained[0].id",
                     "CoverageEligibilityRequest.status"]


def test_an_entry_that_is_no_object_is_said_once():
    found = [(p.fhir_path, p.message) for p in payload_problems(REQUEST, _bundle(7))]
    assert found == [("Bundle.entry[1]", "expected a JSON object here, not a number")]


def test_two_entries_under_one_full_url_are_ambiguous_unless_their_versions_differ():
    """bdl-7: two Patients under one fullUrl (another name in the second) were answered 200 with one of them."""
    other = {**PATIENT, "name": [{"family": "Impostor"}]}
    bundle = _bundle({"fullUrl": "Patient/p", "resource": PATIENT}, {"fullUrl": "Patient/p", "resource": other})
    assert [(p.fhir_path, p.code, p.message) for p in payload_problems(REQUEST, bundle)] == [
        ("Bundle.entry[2].fullUrl", "structure",
         "another entry has the fullUrl 'Patient/p': a reference to it would be ambiguous (bdl-7)")]
    versions = _bundle({"fullUrl": "Patient/p", "resource": {**PATIENT, "meta": {"versionId": "1"}}},
                       {"fullUrl": "Patient/p", "resource": {**other, "meta": {"versionId": "2"}}})
    assert payload_problems(REQUEST, versions) == []


@pytest.mark.parametrize(("bundle_id", "expected"), [
    ("b" * 64, []),
    # was accepted: the Bundle's model takes 255 characters, and only the request and the entries' resources had
    # their ids held to FHIR's 64
    ("b" * 65, [("Bundle.id", "value", "an id is at most 64 characters")]),
    ("b" * 255, [("Bundle.id", "value", "an id is at most 64 characters")]),
    ("b b", [("Bundle.id", "value", "'b b' is not a FHIR id: 1 to 64 letters, digits, '-' and '.'")]),
])
def test_a_bundle_id_is_a_fhir_id_of_at_most_64_characters(bundle_id, expected):
    """As the request's own id and its entries' resources' ids are (invariant_problems)."""
    bundle = {**_bundle({"fullUrl": "Patient/p", "resource": PATIENT}), "id": bundle_id}
    assert [(p.fhir_path, p.code, p.message) for p in payload_problems(REQUEST, bundle)] == expected
    long_request = {**REQUEST, "id": bundle_id}
    assert [(p.fhir_path, p.message) for p in payload_problems(long_request, None)] == [
        (f"CoverageEligibilityRequest{path[len('Bundle'):]}", message) for path, _, message in expected]


@pytest.mark.parametrize(("value", "message"), [
    ("req-1.A", None),
    ("x" * 64, None),
    ("x" * 65, "an id is at most 64 characters"),
    ("x" * 300, "an id is at most 64 characters"),   # not the models' "longer than the 255 characters"
    ("a b", "'a b' is not a FHIR id: 1 to 64 letters, digits, '-' and '.'"),
    ("a/b", "'a/b' is not a FHIR id: 1 to 64 letters, digits, '-' and '.'"),
    ("abc\n", "'abc\\n' is not a FHIR id: 1 to 64 letters, digits, '-' and '.'"),
    ("", "an empty string is not a FHIR value: leave the element out"),
    (7, "expected a JSON string here, not a number"),
])
@pytest.mark.parametrize(("wrapper", "items"), [({"resourceType": "Bundle", "type": "batch"}, "entry"),
                                                ({"resourceType": "Parameters"}, "parameter")])
def test_a_wrappers_id_is_held_to_the_fhir_id_type(value, message, wrapper, items):
    """own_problems: a batch Bundle's or a $submit Parameters' own id, in the models' words, at most 64."""
    root = wrapper["resourceType"]
    found = own_problems({**wrapper, "id": value}, root, items)
    assert [(p.fhir_path, p.code, p.message) for p in found] == ([(f"{root}.id", "value", message)] if message else [])


def test_a_batch_bundles_own_elements_are_checked_without_its_entries_resources():
    """A batch Bundle's timestamp, meta, total, link and unknown elements went through no check at all (only its id
    did); its entries' own elements are checked too, their resources are not (each is checked as it is sent)."""
    bundle = {"resourceType": "Bundle", "type": "batch", "timestamp": "yesterday", "meta": 5, "total": "3",
              "link": [{"relation": "self"}], "colour": "blue", "entry": [
                  {"request": {"method": "POST", "url": "CoverageEligibilityRequest"},
                   "resource": {"resourceType": "CoverageEligibilityRequest", "nonsense": 1}},
                  {"fullUrl": 7, "request": {"method": "post", "url": "CoverageEligibilityRequest"}}]}
    assert sorted((p.fhir_path, p.code) for p in own_problems(bundle, "Bundle", "entry")) == [
        ("Bundle.colour", "structure"), ("Bundle.entry[1].fullUrl", "value"),
        ("Bundle.entry[1].request.method", "code-invalid"), ("Bundle.link[0].url", "required"),
        ("Bundle.meta", "value"), ("Bundle.timestamp", "value"), ("Bundle.total", "value")]


def test_a_parameters_own_elements_are_checked_without_its_resource():
    parameters = {"resourceType": "Parameters", "meta": {"lastUpdated": "today"}, "colour": "blue", "parameter": [
        {"name": "resource", "resource": {"resourceType": "CoverageEligibilityRequest", "nonsense": 1}, "shade": 2}]}
    assert sorted((p.fhir_path, p.code) for p in own_problems(parameters, "Parameters", "parameter")) == [
        ("Parameters.colour", "structure"), ("Parameters.meta.lastUpdated", "value"),
        ("Parameters.parameter[0].shade", "structure")]


_ENTRY = {"request": {"method": "POST", "url": "CoverageEligibilityRequest"}}


@pytest.mark.parametrize(("bundle", "expected"), [
    # bdl-1: total only when a search or history
    ({"type": "batch", "total": 1}, [("Bundle.total", "structure", "bdl-1")]),
    ({"type": "collection", "total": 0}, [("Bundle.total", "structure", "bdl-1")]),
    ({"type": "searchset", "total": 1}, []),
    ({"type": "history", "total": 1}, []),
    # bdl-2: entry.search only when a search
    ({"type": "batch", "entry": [{**_ENTRY, "search": {"mode": "match"}}]},
     [("Bundle.entry[0].search", "structure", "bdl-2")]),
    ({"type": "searchset", "entry": [{"search": {"mode": "match"}}]}, []),
    # bdl-3: entry.request mandatory for batch/transaction/history, otherwise prohibited
    ({"type": "batch", "entry": [_ENTRY, {}]}, [("Bundle.entry[1].request", "required", "bdl-3")]),
    ({"type": "transaction", "entry": [{"fullUrl": "urn:uuid:1"}]}, [("Bundle.entry[0].request", "required", "bdl-3")]),
    ({"type": "collection", "entry": [{}, _ENTRY]}, [("Bundle.entry[1].request", "structure", "bdl-3")]),
    # bdl-4: entry.response mandatory for batch-response/transaction-response/history, otherwise prohibited
    ({"type": "batch", "entry": [{**_ENTRY, "response": {"status": "200"}}]},
     [("Bundle.entry[0].response", "structure", "bdl-4")]),
    ({"type": "batch-response", "entry": [{"response": {"status": "200"}}, {}]},
     [("Bundle.entry[1].response", "required", "bdl-4")]),
    ({"type": "history", "entry": [{**_ENTRY, "response": {"status": "200"}}]}, []),
    ({"type": "history", "entry": [_ENTRY]}, [("Bundle.entry[0].response", "required", "bdl-4")]),
    # bdl-7: fullUrl unique unless the versionIds differ (except in a history Bundle), as payload_problems said it
    ({"type": "batch", "entry": [{**_ENTRY, "fullUrl": "urn:uuid:1"}, {**_ENTRY, "fullUrl": "urn:uuid:1"}]},
     [("Bundle.entry[1].fullUrl", "structure", "bdl-7")]),
    ({"type": "history", "entry": [{**_ENTRY, "response": {"status": "200"}, "fullUrl": "Patient/p"}] * 2}, []),
    # what depends on a type that is itself wrong is not said again; nor is an element already wrong
    ({"type": "batchy", "total": 1, "entry": [{"search": {"mode": "match"}}]},
     [("Bundle.type", "code-invalid", "not one of the codes")]),
    ({"type": "batch", "total": "1"}, [("Bundle.total", "value", "expected a whole JSON number")]),
])
def test_a_bundles_invariants_are_problems_at_the_element_that_breaks_them(bundle, expected):
    """FHIR R4 bdl-1, 2, 3, 4 and 7 went unchecked on a batch Bundle and (but for bdl-7) on a $submit Bundle."""
    found = own_problems({"resourceType": "Bundle", **bundle}, "Bundle", "entry")
    assert [(p.fhir_path, p.code) for p in found] == [(path, code) for path, code, _ in expected]
    assert all(words in p.message for p, (_, _, words) in zip(found, expected, strict=True)), found


def test_a_submit_bundles_invariants_are_its_problems_once():
    """payload_problems takes the invariants from own_problems: bdl-7 is said once, beside an entry's request."""
    bundle = _bundle({"fullUrl": "Patient/p", "resource": PATIENT, **_ENTRY},
                     {"fullUrl": "Patient/p", "resource": PATIENT})
    assert [(p.fhir_path, p.code) for p in payload_problems(REQUEST, bundle)] == [
        ("Bundle.entry[1].request", "structure"), ("Bundle.entry[2].fullUrl", "structure")]
