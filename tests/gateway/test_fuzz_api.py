"""Property-based fuzzing of the FHIR HTTP API (hypothesis), against the session's payer simulator.

Every valid fixture request (fixtures/fhir/requests) is mutated - elements deleted at any depth, values replaced by
values of another JSON type or by awkward strings (huge numbers, NaN-like text, control characters, emoji, lone
surrogates, X12 delimiters, magic member ids), list entries duplicated, resource types changed, references broken,
odd dates, items, serviced dates and extensions of valid and invalid shape - and sent to ``$submit`` (bare or in
Parameters), to create (with Prefer and If-None-Exist headers; an accepted async request is polled, or cancelled)
and in batch Bundles. Raw bodies (invalid UTF-8, BOMs, duplicate keys, deep nesting, top-level arrays, wrong
content types and encodings), odd headers, searches with fuzzed parameters (GET and POST _search, every paging link
followed) and reads by random ids are sent too.

Whatever comes in, the answer is a success of the right resource type that validates (fhir.resources, and the
project's own rules for a CoverageEligibilityResponse), or a 4xx - or a payer-side 429/502/503/504 - with a valid
OperationOutcome whose every issue has a severity, an issue-type code and a text in our words (not Python's or a
library's); never a 500, and no traceback in the logs.

Derandomized (the same examples every run) and on SQLite only: the file runs in about 15 s. For a deeper, random
run locally: ``FHIR_X12_FUZZ_SCALE=20`` multiplies every example count (and draws new examples each run).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.fhir.models import validate_structure
from gateway.fhir.rules import check_contained
from gateway.fhir.rules import check_response as check_rules
from tests.conftest import FIXTURES, ISSUE_TYPES
from tests.gateway.conftest import TOKEN, routing_table

CER = "CoverageEligibilityRequest"
RESPONSE = "CoverageEligibilityResponse"
REQUESTS = {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((FIXTURES / "fhir" / "requests").glob("*.json"))}
CLIENT_STATUSES = {400, 401, 403, 404, 405, 406, 409, 412, 413, 415, 422}
# the payer's trouble (an unreachable, failing or slow payer) and its concurrency limit, as the gateway says them
PAYER_STATUSES = {429, 502, 503, 504}
SEVERITIES = {"fatal", "error", "warning", "information"}
# what an exception's or a library's own text says: an issue quoting it explains nothing to the client
PYTHON_WORDS = re.compile(r"unsupported operand|can only concatenate|object has no attribute|NoneType|unhashable|"
                          r"not subscriptable|not iterable|index out of range|Traceback|argument of type|"
                          r"object is not callable|KeyError|TypeError|AttributeError|invalid literal for|"
                          r"<class |Value error|should match pattern|Input should|spec regex|but got type|"
                          r"is not a valid FHIR Model|fhir\.resources")
SCALE = float(os.environ.get("FHIR_X12_FUZZ_SCALE") or 1)


def fuzz_settings(examples: int) -> Any:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=SCALE == 1, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


# -------------------------------------------------------------------------------------------------------- harness


class Tracebacks(logging.Handler):
    """Every log record that carries a traceback (or says it had one), on any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.exc_text or "Traceback (most recent call last)" in record.getMessage():
            self.records.append(record)


class Api:
    def __init__(self, app: Any, tracebacks: Tracebacks) -> None:
        self.app = app
        self.client = app.test_client()
        self.tracebacks = tracebacks

    def call(self, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
             query: str | None = None) -> Any:
        all_headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        return self.client.open(path, method=method, data=data, headers=all_headers, query_string=query)


@pytest.fixture(scope="module")
def api(simulator, upstream, tmp_path_factory) -> Iterator[Api]:
    """One gateway (SQLite audit store) for every example: a Flask test client, routed to the simulator."""
    folder = tmp_path_factory.mktemp("fuzz")
    app = create_app({"TESTING": True, "FHIR_X12_DATABASE_URL": f"sqlite:///{folder / 'gateway.db'}",
                      "FHIR_X12_PAYER_URL": f"{simulator.url}/core/soap", "FHIR_X12_TOKENS": TOKEN,
                      "FHIR_X12_FHIR_BASE": f"{upstream.url}/fhir",
                      "FHIR_X12_ROUTING": routing_table(folder, timeout_seconds=1.0, budget_seconds=3,
                                                        backoff_seconds=0.01,
                                                        breaker={"failures": 1000, "reset_seconds": 0.5})})
    tracebacks = Tracebacks()
    root = logging.getLogger()
    root.addHandler(tracebacks)
    try:
        yield Api(app, tracebacks)
    finally:
        root.removeHandler(tracebacks)
        app.extensions["fhir_x12"]["close"]()


@pytest.fixture
def fresh(api: Api) -> Api:
    api.tracebacks.records.clear()
    return api


def no_tracebacks(api: Api) -> None:
    found = [f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in api.tracebacks.records]
    api.tracebacks.records.clear()
    assert not found, found


def test_the_traceback_check_sees_the_gateways_logs_on_any_thread(fresh: Api):
    """The handler on the root logger gets the gateway's records (they propagate), a worker thread's too."""
    import threading

    def fail() -> None:
        try:
            raise RuntimeError("for the test")
        except RuntimeError:
            logging.getLogger("gateway.service").error("a failure", exc_info=True)

    worker = threading.Thread(target=fail)
    worker.start()
    worker.join()
    with pytest.raises(AssertionError, match="a failure"):
        no_tracebacks(fresh)


# ------------------------------------------------------------------------------------------------------ invariant


def check_outcome(body: Any, where: str = "body") -> None:
    """A valid OperationOutcome whose every issue has a severity, an issue-type code and a text."""
    assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", (where, body)
    validate_structure(body)
    assert body.get("issue"), (where, body)
    for issue in body["issue"]:
        assert issue.get("severity") in SEVERITIES, (where, issue)
        assert issue.get("code") in ISSUE_TYPES, (where, issue)
        text = (issue.get("details") or {}).get("text") or issue.get("diagnostics")
        assert isinstance(text, str) and text.strip(), (where, issue)
        assert not PYTHON_WORDS.search(text), (where, issue)   # the client's problem in our words, not Python's
        for expression in issue.get("expression") or []:
            assert expression.strip() and not re.search(r"\.(root|__root__)\b", expression), (where, issue)


def check_resource(body: Any, expected: set[str], where: str = "body") -> None:
    assert isinstance(body, dict) and body.get("resourceType") in expected, (where, body)
    validate_structure(body)
    if body["resourceType"] == RESPONSE:   # and the project's own rules: codes, ces-1, contained references
        assert not check_rules(body), (where, check_rules(body))
    elif body["resourceType"] == CER:
        assert not check_contained(body), (where, check_contained(body))


def check_answer(response: Any, ok: dict[int, set[str]]) -> Any:
    """The invariant for one answer; ``ok`` maps each success status to the resource types it may carry (an empty
    set: no body). Returns the parsed body (None without one)."""
    status = response.status_code
    data = response.get_data()
    event(f"status {status}")   # --hypothesis-show-statistics: how far the examples got
    assert status != 500, data[:3000]
    body = None
    if data:
        assert response.headers.get("Content-Type") == "application/fhir+json; charset=utf-8", response.headers
        body = json.loads(data)
    if status in ok:
        if ok[status]:
            check_resource(body, ok[status])
        else:
            assert body is None or body.get("resourceType") == "OperationOutcome", body
            if body is not None:
                check_outcome(body)
        if body is not None and body.get("resourceType") == "Bundle" and body.get("type") == "batch-response":
            check_batch_response(body)
        return body
    assert status in CLIENT_STATUSES | PAYER_STATUSES, (status, data[:3000])
    check_outcome(body)
    return body


def check_batch_response(bundle: dict[str, Any]) -> None:
    for index, entry in enumerate(bundle.get("entry") or []):
        where = f"entry[{index}]"
        status = int(entry["response"]["status"].split()[0])
        assert status != 500, (where, entry)
        if "outcome" in entry["response"]:
            check_outcome(entry["response"]["outcome"], where)
        if status >= 400:
            assert status in CLIENT_STATUSES | PAYER_STATUSES, (where, entry)
            assert "outcome" in entry["response"], (where, entry)
        if "resource" in entry:
            check_resource(entry["resource"], {CER, RESPONSE, "OperationOutcome"}, where)


# ----------------------------------------------------------------------------------------------------- strategies

ODD_DATES = ["2025-02-30", "0000", "0000-01-01", "2025-13-01", "2025-00-10", "2025", "2025-03", "9999-12-31",
             "0001-01-01", "2025-03-10T09:15:00", "2025-03-10T09:15:00Z", "2025-03-10T09:15:00+14:00",
             "2025-03-10T09:15:00-12:00", "2025-03-10T24:00:00Z", "2025-03-10T09:15:00+15:00",
             "2025-03-10T09:15:60Z", "2025-03-10T09:15:00.123456789Z", "20250310", "2025-3-10", "10/03/2025",
             "2025-03-10 ", " 2025-03-10", "2025-03-10T", "2025-03-10Z", "１９７８-05-14", "2025-03-10\n",
             "1800-01-01", "2999-01-01", "2024-02-29", "2023-02-29", "0001-01-01T00:00:00+01:00"]
ODD_IDS = ["", " ", "ACM 482193057", "ACM*482", "ACM~482", "ACM:482", "ACM^482", "*~:^", "~", "ISA*00*", "A" * 81,
           "a" * 5000, "ÄÖÜ-ß", "名前", "\U0001f600", "\t", "x\ny", "\x7f", "\x1f", "\ud800", "\udfff\ud800",
           "\u200b", "\u202e", "\ufeff", "0", "-1", "1e9", "null", "None", "../..", "%00", "SIMHTTP50003",
           "SIMHTTP50304", "SIMAAA420005", "SIMBAD271006", "SIMREJ999007", "SIMTA1000008", "SIMTRACE0009",
           "SIMCOUNT0010", "ACM482193057", "$submit", "_history"]
ODD_REFERENCES = ["Patient/", "Patient", "/Patient/x", "#nope", "#", "#pat", "urn:uuid:", "urn:uuid:nope",
                  "urn:uuid:00000000-0000-0000-0000-000000000000", "urn:oid:1.2.3", "http://", "https://",
                  "https://evil.example/fhir/Patient/x", "http://127.0.0.1:1/fhir/Patient/x",
                  "Organization/org-acme", "Patient/pat-delgado-maria", "Coverage/cov-delgado-maria",
                  "Patient/pat-delgado-maria/_history/1", "Patient/a b", "Patient/" + "x" * 65,
                  "Practitioner/nope", "Observation/1", "CoverageEligibilityRequest/x", "Patient/../Coverage/x",
                  "patient/pat-delgado-maria", "Patient/pat-delgado-maria?x=1", "Patient/\u00e9", "Patient/x#y",
                  "https://ehr.riverbend.example/fhir/Patient/pat-delgado-maria", "Patient/*~:^", " Patient/x"]
RESOURCE_TYPES = ["Patient", "Coverage", "Organization", "Bundle", "Parameters", "OperationOutcome", CER, RESPONSE,
                  "Practitioner", "PractitionerRole", "RelatedPerson", "NoSuchType", "", "coverageEligibilityRequest",
                  "Resource", "DomainResource", "Element", "Binary", "Basic"]
ELEMENT_NAMES = ["extension", "modifierExtension", "_birthDate", "_subscriberId", "contained", "id", "meta",
                 "implicitRules", "language", "text", "item", "servicedDate", "servicedPeriod", "supportingInfo",
                 "identifier", "insurance", "purpose", "status", "patient", "insurer", "provider", "enterer",
                 "facility", "priority", "created", "fullUrl", "resource", "request", "search", "", "resourceType",
                 "_status", "_purpose", "fhir_comments", "__proto__", "display", "reference", "type"]
LONG = ["x" * 300, "é" * 2000, "9" * 5000, "\U0001f600" * 500]
BIG_NUMBERS = [2 ** 63, -(2 ** 63) - 1, 2 ** 64, 10 ** 30, -0.0, 1e308, 1.7976931348623157e308, 5e-324, 0.1]
NAN_LIKE = ["NaN", "nan", "Infinity", "-Infinity", "1e999", "-0", "0x10", "1_000", "١٢٣"]

odd_text = st.one_of(st.sampled_from(ODD_IDS + ODD_DATES + ODD_REFERENCES + NAN_LIKE + LONG),
                     st.text(max_size=24),
                     st.text(st.characters(categories=["Cc", "Cf", "Co", "Zs", "Zl", "Mn", "So", "Lo", "Nd"]),
                             max_size=12))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(BIG_NUMBERS),
                    st.floats(allow_nan=False, allow_infinity=False), odd_text)
any_value = st.one_of(scalars, st.sampled_from([[], {}, [None], [[]], [{}], {"": None}]).map(copy.deepcopy),
                      st.lists(scalars, min_size=1, max_size=3),
                      st.dictionaries(st.sampled_from(ELEMENT_NAMES + ["value", "url", "code", "system"]), scalars,
                                      min_size=1, max_size=3))
codings = st.lists(st.fixed_dictionaries({}, optional={
    "system": st.sampled_from(["https://x12.org/codes/service-type-codes", "http://www.ama-assn.org/go/cpt",
                               "http://ada.org/cdt", "http://hl7.org/fhir/sid/ndc", "urn:oid:2.16.840.1.113883.6.285",
                               "http://terminology.hl7.org/CodeSystem/ex-benefitcategory", "", "nope"]),
    "code": st.one_of(st.sampled_from(["30", "1", "88", "35", "99213", "D0120", "0002-8215-01", "ZZ", "", "30*1",
                                       "30~", "30:1", "30^", "A" * 50, "١", "01", "1" * 6]), odd_text),
    "display": odd_text}), min_size=0, max_size=3)
concept = st.fixed_dictionaries({}, optional={"coding": codings, "text": odd_text})
items = st.lists(st.fixed_dictionaries({}, optional={
    "category": st.one_of(concept, any_value), "productOrService": st.one_of(concept, any_value),
    "modifier": st.lists(concept, max_size=2), "diagnosis": st.lists(st.fixed_dictionaries({}, optional={
        "diagnosisCodeableConcept": concept, "diagnosisReference": st.fixed_dictionaries(
            {"reference": st.sampled_from(ODD_REFERENCES)})}), max_size=2),
    "provider": st.fixed_dictionaries({"reference": st.sampled_from(ODD_REFERENCES)}),
    "quantity": st.fixed_dictionaries({}, optional={"value": st.one_of(st.sampled_from(BIG_NUMBERS), scalars)}),
    "unitPrice": st.fixed_dictionaries({}, optional={"value": scalars, "currency": odd_text}),
    "extension": any_value, "detail": any_value}), min_size=0, max_size=4)
serviced = st.one_of(
    st.tuples(st.just("servicedDate"), st.one_of(st.sampled_from(ODD_DATES), scalars)),
    st.tuples(st.just("servicedPeriod"), st.one_of(
        st.fixed_dictionaries({}, optional={"start": st.sampled_from(ODD_DATES), "end": st.sampled_from(ODD_DATES)}),
        any_value)))
extensions = st.lists(st.fixed_dictionaries({}, optional={
    "url": st.one_of(st.sampled_from(["http://example.org/ext", "", "urn:x", "nope", "http://hl7.org/fhir/"
                                      "StructureDefinition/data-absent-reason"]), odd_text),
    "valueString": odd_text, "valueCode": odd_text, "valueBoolean": scalars, "valueInteger": scalars,
    "extension": any_value, "valueReference": st.fixed_dictionaries({"reference": st.sampled_from(ODD_REFERENCES)})}),
    min_size=0, max_size=3)


def odd_strings_for(name: str) -> list[str] | None:
    """The odd strings that fit an element's name: references, dates, identifiers and codes (None for other names)."""
    if name == "reference":
        return ODD_REFERENCES
    if any(part in name.lower() for part in ("date", "created", "start", "end", "timestamp", "updated")):
        return ODD_DATES
    if name in ("value", "subscriberId", "code", "system", "id", "family", "given", "dependent", "name"):
        return ODD_IDS
    return None


def value_for(key: Any) -> st.SearchStrategy[Any]:
    """A replacement value fitting the element's name (a reference, a date, an identifier), or any value."""
    name = str(key)
    odd = odd_strings_for(name)
    if odd is not None:
        return st.one_of(st.sampled_from(odd), any_value)
    if name == "resourceType":
        return st.one_of(st.sampled_from(RESOURCE_TYPES), any_value)
    if name in ("item",):
        return st.one_of(items, any_value)
    if name == "extension":
        return st.one_of(extensions, any_value)
    return any_value


Path = tuple[Any, ...]


def all_paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from all_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from all_paths(item, (*prefix, index))


def at(doc: Any, path: Path) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def the_request(doc: Any) -> Any:
    """The CoverageEligibilityRequest of a fixture (itself or its Bundle entry), or None when it is gone."""
    if isinstance(doc, dict) and doc.get("resourceType") == CER:
        return doc
    for entry in (doc.get("entry") if isinstance(doc, dict) and isinstance(doc.get("entry"), list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict) and \
                entry["resource"].get("resourceType") == CER:
            return entry["resource"]
    return None


@st.composite
def mutation(draw: st.DrawFn, doc: Any) -> Any:
    """One change to ``doc`` (in place; the root may be replaced: the new root is returned)."""
    kind = draw(st.sampled_from(["delete", "replace", "replace", "duplicate", "add", "resource-type", "item",
                                 "serviced", "extension", "reference", "identifier", "date"]))
    paths = list(all_paths(doc))
    request = the_request(doc)
    if kind in ("item", "serviced", "extension") and request is not None:
        if kind == "item":
            request["item"] = copy.deepcopy(draw(items))
        elif kind == "serviced":
            request.pop("servicedDate", None)
            request.pop("servicedPeriod", None)
            name, value = draw(serviced)
            request[name] = copy.deepcopy(value)
            if draw(st.booleans()):   # both at once (a choice type given twice)
                other = "servicedDate" if name == "servicedPeriod" else "servicedPeriod"
                request[other] = copy.deepcopy(draw(any_value))
        else:
            target = at(doc, draw(st.sampled_from([p for p in paths if isinstance(at(doc, p), dict)])))
            target[draw(st.sampled_from(["extension", "modifierExtension"]))] = copy.deepcopy(draw(extensions))
        return doc
    objects = [p for p in paths if isinstance(at(doc, p), dict)]
    if kind in ("reference", "identifier", "date"):
        wanted = {"reference": lambda p: p and p[-1] == "reference",
                  "identifier": lambda p: p and p[-1] in ("value", "subscriberId", "code"),
                  "date": lambda p: p and isinstance(p[-1], str) and any(
                      w in p[-1].lower() for w in ("date", "created", "start", "end"))}[kind]
        chosen = [p for p in paths if wanted(p)]
        if chosen:
            path = draw(st.sampled_from(chosen))
            pool = {"reference": ODD_REFERENCES, "identifier": ODD_IDS, "date": ODD_DATES}[kind]
            at(doc, path[:-1])[path[-1]] = draw(st.sampled_from(pool))
        return doc
    if kind == "resource-type":
        typed = [p for p in paths if isinstance(at(doc, p), dict) and "resourceType" in at(doc, p)]
        if typed:
            at(doc, draw(st.sampled_from(typed)))["resourceType"] = draw(st.sampled_from(RESOURCE_TYPES))
        return doc
    if kind == "duplicate":
        lists = [p for p in paths if isinstance(at(doc, p), list) and at(doc, p)]
        if lists:
            target = at(doc, draw(st.sampled_from(lists)))
            index = draw(st.integers(0, len(target) - 1))
            target.insert(draw(st.integers(0, len(target))), copy.deepcopy(target[index]))
        return doc
    if kind == "add" and objects:
        target = at(doc, draw(st.sampled_from(objects)))
        key = draw(st.one_of(st.sampled_from(ELEMENT_NAMES), st.text(max_size=10)))
        target[key] = copy.deepcopy(draw(value_for(key)))
        return doc
    path = draw(st.sampled_from(paths))
    if kind == "delete":
        if not path:
            return copy.deepcopy(draw(any_value))
        parent = at(doc, path[:-1])
        del parent[path[-1]]
        return doc
    value = copy.deepcopy(draw(value_for(path[-1] if path else "resourceType")))   # replace
    if not path:
        return value
    at(doc, path[:-1])[path[-1]] = value
    return doc


# valid FHIR shapes with awkward contents: these get past the structural checks to translation and the payer
fhir_text = st.one_of(st.sampled_from(ODD_IDS + ODD_DATES + ODD_REFERENCES + NAN_LIKE + LONG),
                      st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=16))
valid_codings = st.lists(st.fixed_dictionaries({"code": st.one_of(st.sampled_from(
    ["30", "1", "88", "35", "47", "AL", "99213", "D0120", "0002-8215-01", "ZZ", "30*1", "30~", "30:1", "30^",
     "A" * 50, "01", "1" * 6, " 30", "30 ", "MH"]), fhir_text)}, optional={
    "system": st.sampled_from(["https://x12.org/codes/service-type-codes", "http://www.ama-assn.org/go/cpt",
                               "http://ada.org/cdt", "http://hl7.org/fhir/sid/ndc", "urn:oid:2.16.840.1.113883.6.285",
                               "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "http://hl7.org/fhir/sid/"
                               "icd-10-cm", "http://terminology.hl7.org/CodeSystem/ex-benefitcategory", "urn:x",
                               "http://example.org/nope"]),
    "display": fhir_text}), min_size=1, max_size=3)
valid_concept = st.fixed_dictionaries({"coding": valid_codings}, optional={"text": fhir_text})
valid_items = st.lists(st.fixed_dictionaries({}, optional={
    "category": valid_concept, "productOrService": valid_concept, "modifier": st.lists(valid_concept, min_size=1,
                                                                                        max_size=2),
    "diagnosis": st.lists(st.fixed_dictionaries({"diagnosisCodeableConcept": valid_concept}), min_size=1, max_size=2),
    "quantity": st.fixed_dictionaries({"value": st.one_of(st.integers(), st.sampled_from(BIG_NUMBERS))}),
    "unitPrice": st.fixed_dictionaries({"value": st.sampled_from(BIG_NUMBERS), "currency": st.sampled_from(
        ["USD", "EUR", "usd", "XXX"])})}), min_size=1, max_size=4)
valid_serviced = st.one_of(
    st.tuples(st.just("servicedDate"), st.sampled_from(ODD_DATES)),
    st.tuples(st.just("servicedPeriod"), st.fixed_dictionaries({}, optional={
        "start": st.sampled_from(ODD_DATES), "end": st.sampled_from(ODD_DATES)})))
valid_extensions = st.lists(st.fixed_dictionaries({"url": st.sampled_from(
    ["http://example.org/ext", "urn:x", "http://hl7.org/fhir/StructureDefinition/data-absent-reason"])}, optional={
    "valueString": fhir_text, "valueCode": st.sampled_from(["unknown", "masked", "x y"]),
    "valueBoolean": st.booleans(), "valueInteger": st.integers(-(2 ** 31), 2 ** 31 - 1)}), min_size=1, max_size=2)


def string_for(key: Any) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(odd_strings_for(str(key)) or ODD_IDS), fhir_text)


@st.composite
def typed_mutation(draw: st.DrawFn, doc: Any) -> Any:
    """One change to ``doc`` that keeps every value's JSON type: a string for a string, an element left out, a list
    entry repeated, items, serviced dates and extensions of valid shape."""
    kind = draw(st.sampled_from(["string", "string", "string", "delete", "duplicate", "item", "serviced",
                                 "extension", "flip"]))
    paths = list(all_paths(doc))
    request = the_request(doc)
    if kind == "item" and request is not None:
        request["item"] = draw(valid_items)
    elif kind == "serviced" and request is not None:
        request.pop("servicedDate", None)
        request.pop("servicedPeriod", None)
        name, value = draw(valid_serviced)
        if value:
            request[name] = value
    elif kind == "extension":
        objects = [p for p in paths if isinstance(at(doc, p), dict)]
        if objects:
            at(doc, draw(st.sampled_from(objects)))["extension"] = draw(valid_extensions)
    elif kind == "delete":
        keys = [p for p in paths if p and isinstance(p[-1], str) and p[-1] != "resourceType"]
        if keys:
            path = draw(st.sampled_from(keys))
            del at(doc, path[:-1])[path[-1]]
    elif kind == "duplicate":
        lists = [p for p in paths if isinstance(at(doc, p), list) and at(doc, p)]
        if lists:
            target = at(doc, draw(st.sampled_from(lists)))
            entry = copy.deepcopy(target[draw(st.integers(0, len(target) - 1))])
            target.insert(draw(st.integers(0, len(target))), entry)
    elif kind == "flip":
        flags = [p for p in paths if p and isinstance(at(doc, p), bool)]
        if flags:
            path = draw(st.sampled_from(flags))
            at(doc, path[:-1])[path[-1]] = not at(doc, path)
    else:
        strings = [p for p in paths if p and isinstance(at(doc, p), str) and p[-1] != "resourceType"]
        if strings:
            path = draw(st.sampled_from(strings))
            at(doc, path[:-1])[path[-1]] = draw(string_for(path[-1]))
    return doc


@st.composite
def mutated_request(draw: st.DrawFn, typed: bool = False) -> Any:
    """A fixture request with one to three changes: of valid shape only (``typed``), or any."""
    doc = copy.deepcopy(REQUESTS[draw(st.sampled_from(sorted(REQUESTS)))])
    for _ in range(draw(st.integers(1, 3))):
        doc = draw(typed_mutation(doc) if typed or draw(st.booleans()) else mutation(doc))
    return doc


requests_to_send = st.one_of(mutated_request(typed=True), mutated_request(typed=True), mutated_request())


def encode(doc: Any, ascii_only: bool) -> bytes:
    """JSON as a client would send it; a lone surrogate sent raw is invalid UTF-8 (a client's encoding bug)."""
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


PREFER = [None, "return=minimal", "return=representation", "return=OperationOutcome", "respond-async",
          "respond-async, return=minimal", "handling=strict", "return=", "return=nonsense", ";;,,=", "return=minimal;"
          " respond-async", "\u00e9"]
TYPES = ["application/fhir+json", "application/json", "application/fhir+json; charset=utf-8",
         "application/fhir+json; fhirVersion=4.0", "application/json+fhir"]


# ---------------------------------------------------------------------------------------------------------- bodies


def post(api: Api, path: str, data: bytes, headers: dict[str, str]) -> Any:
    return api.call("POST", path, data=data, headers=headers)


def await_async(api: Api, response: Any) -> None:
    """Poll an accepted request's status URL until it is done: its answer (and the worker's logs) count too."""
    location = response.headers["Content-Location"]
    path = "/" + location.split("/", 3)[3]
    for _ in range(200):
        status = api.call("GET", path)
        if status.status_code != 202:
            body = check_answer(status, {200: {"Bundle"}})
            check_batch_response(body)
            return
        time.sleep(0.02)
    raise AssertionError("the asynchronous request never finished")


WRAPPINGS = [None, None, None, [], [{"name": "other", "valueString": "x"}], [{"name": "resource"}]]


@fuzz_settings(300)
@given(doc=requests_to_send, ascii_only=st.booleans(), content_type=st.sampled_from(TYPES),
       wrapping=st.sampled_from(WRAPPINGS))
def test_submit_mutated_requests(fresh: Api, doc: Any, ascii_only: bool, content_type: str, wrapping: Any):
    if wrapping is not None:   # the operation's formal form: Parameters with one resource parameter (and others)
        doc = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": doc}, *wrapping]}
    response = post(fresh, f"/{CER}/$submit", encode(doc, ascii_only), {"Content-Type": content_type})
    check_answer(response, {200: {RESPONSE}})
    no_tracebacks(fresh)


@fuzz_settings(150)
@given(doc=requests_to_send, prefer=st.sampled_from(PREFER), condition=st.none() | st.none() | st.sampled_from(
    ["identifier=urn:example:ehr:eligibility|GW-SG-0001-1", "identifier=", "_count=1", "nope=1",
     "identifier=%ZZ", "patient=Patient/pat-delgado-maria&status=active", "identifier=a,b,c", "created=2025-02-30"]),
       cancel=st.booleans())
def test_create_mutated_requests(fresh: Api, doc: Any, prefer: str | None, condition: str | None,
                                 cancel: bool):
    headers = {"Content-Type": "application/fhir+json"}
    if prefer is not None:
        headers["Prefer"] = prefer
    if condition is not None:
        headers["If-None-Exist"] = condition
    response = post(fresh, f"/{CER}", encode(doc, True), headers)
    # return=minimal: no body (a conditional create's match, 200, as the create, 201)
    created = set() if not response.data and "return=minimal" in (prefer or "") else {CER, "OperationOutcome"}
    check_answer(response, {200: created, 201: created, 202: set()})
    if response.status_code == 202:
        event(f"accepted, then {'cancelled' if cancel else 'polled'}")
        if cancel:   # DELETE on the status URL: cancelled (not sent yet), released (done), or 409 (under way)
            status_url = "/" + response.headers["Content-Location"].split("/", 3)[3]
            check_answer(fresh.call("DELETE", status_url), {202: {"OperationOutcome"}})
            assert fresh.call("GET", status_url).status_code in (200, 202, 404)
        else:
            await_async(fresh, response)
    no_tracebacks(fresh)


batch_entry = st.fixed_dictionaries({
    "request": st.one_of(st.fixed_dictionaries({
        "method": st.sampled_from(["POST", "post", "GET", "PUT", "", None, 1]),
        "url": st.sampled_from([CER, f"{CER}/$submit", f"{CER}/%24submit", f"/{CER}", f"{CER}?x=1", "", "Patient",
                                f"http://localhost/{CER}", f"{CER}/$nope", None, 7])},
        optional={"ifNoneExist": st.sampled_from(["identifier=a|b", "", "nope=1", "identifier=", 3])}), any_value)},
    optional={"resource": st.one_of(requests_to_send, requests_to_send.map(
        lambda doc: {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": doc}]}), any_value),
        "fullUrl": st.one_of(st.sampled_from(ODD_REFERENCES), any_value)})


@fuzz_settings(60)
@given(entries=st.lists(batch_entry, min_size=0, max_size=4), bundle_type=st.sampled_from(
    ["batch", "batch", "batch", "transaction", "collection", None, 3]), prefer=st.sampled_from(PREFER))
def test_batch_of_mutated_requests(fresh: Api, entries: list[Any], bundle_type: Any, prefer: str | None):
    bundle: dict[str, Any] = {"resourceType": "Bundle"}
    if bundle_type is not None:
        bundle["type"] = bundle_type
    if entries:
        bundle["entry"] = entries
    headers = {"Content-Type": "application/fhir+json"}
    if prefer is not None and "async" not in prefer:
        headers["Prefer"] = prefer
    response = post(fresh, "/", encode(bundle, True), headers)
    check_answer(response, {200: {"Bundle"}})
    no_tracebacks(fresh)


# ------------------------------------------------------------------------------------------------------- raw bodies

VALID = json.dumps(REQUESTS["subscriber-generic"]).encode()
RAW_BODIES = [b"", b" ", b"\n\t", b"\xef\xbb\xbf", b"\xef\xbb\xbf" + VALID, b"\xef\xbb\xbf\xef\xbb\xbf" + VALID,
              b"\xff\xfe" + VALID.decode().encode("utf-16-le"), VALID.decode().encode("utf-16"),
              b"\xc3\x28", b'{"resourceType": "CoverageEligibilityRequest", "status": "\xc3\x28"}',
              b'{"resourceType": "CoverageEligibilityRequest", "status": "\xed\xa0\x80"}',
              b'{"resourceType": "CoverageEligibilityRequest", "status": "\\ud800"}',
              b'{"resourceType": "CoverageEligibilityRequest", "status": "\\udc00\\ud800"}',
              b'{"resourceType": "CoverageEligibilityRequest", "resourceType": "Bundle"}',
              b'{"resourceType": "Bundle", "type": "batch", "type": "batch"}',
              b'{"a": {"b": 1, "b": 2}}', b"[]", b"[1, 2]", b'"CoverageEligibilityRequest"', b"null", b"true", b"1",
              b"1e999", b"NaN", b"{", b"}", b'{"resourceType": CoverageEligibilityRequest}', b"{'a': 1}",
              b'{"resourceType": "CoverageEligibilityRequest"} trailing', b'{"resourceType": "Coverage"}{}',
              b"[" * 10000 + b"]" * 10000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"[" * 100 + b"]" * 100,
              b'{"resourceType": "CoverageEligibilityRequest", "x": ' + b"[" * 60 + b"]" * 60 + b"}",
              b'{"resourceType": "CoverageEligibilityRequest", "status": "a\\u0000b"}', b"\x00",
              b'{"resourceType": "CoverageEligibilityRequest", "id": 1' + b"0" * 5000 + b"}",
              b'{"resourceType": "CoverageEligibilityRequest", "status": null}',
              b'{"resourceType": "CoverageEligibilityRequest", "purpose": []}', b"{}", b'{"resourceType": {}}',
              b'{"resourceType": ["CoverageEligibilityRequest"]}', b'{"resourceType": ""}',
              b'{"resourceType": "Parameters"}', b'{"resourceType": "Parameters", "parameter": [{}]}',
              b'{"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": []}]}',
              b'{"resourceType": "Bundle"}', b'{"resourceType": "Bundle", "entry": {}}',
              b'{"resourceType": "Bundle", "type": "batch", "entry": [[]]}',
              b'{"resourceType": "Bundle", "type": "batch", "entry": ' + json.dumps(
                  [{"request": {"method": "POST", "url": CER}}] * 101).encode() + b"}",
              "{\"resourceType\": \"CoverageEligibilityRequest\", \"\u0130d\": 1}".encode(),
              b"\xe2\x80\xa8" + VALID, b"\x1f" + VALID, VALID + b"\x00"]
CONTENT_TYPES = [None, "application/fhir+json", "application/json", "text/plain", "application/xml",
                 "application/fhir+xml", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/fhir+json; charset=latin-1", "application/fhir+json; charset=UTF-16",
                 "application/fhir+json; fhirVersion=3.0", "application/fhir+json; fhirVersion=4.0.1",
                 "application/fhir+json; fhirVersion=", "application/fhir+json;;;", "application/", "/", "*/*",
                 "application/fhir+json; charset=\"utf-8\"", "APPLICATION/FHIR+JSON", "\u00e9/\u00e9", ""]
ACCEPTS = [None, "application/fhir+json", "application/xml", "*/*", "text/html", "application/fhir+json; "
           "fhirVersion=3.0", "application/*;q=0", ";q=x", "application/json;q=nan", "application/json;q=1e999", ""]
PATHS = [f"/{CER}/$submit", f"/{CER}", "/", f"/{CER}/_search", f"/{RESPONSE}/_search", f"/{CER}/abc",
         f"/{CER}/$validate", "/x12/$validate"]


@fuzz_settings(200)
@given(body=st.one_of(st.sampled_from(RAW_BODIES), st.binary(max_size=64),
                      st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID)))),
       content_type=st.none() | st.sampled_from(CONTENT_TYPES), accept=st.none() | st.none() | st.sampled_from(ACCEPTS),
       path=st.sampled_from(PATHS),
       encoding=st.sampled_from([None, None, "gzip", "identity", "br, gzip", ""]))
def test_raw_bodies(fresh: Api, body: bytes, content_type: str | None, accept: str | None, path: str,
                    encoding: str | None):
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    response = post(fresh, path, body, headers)
    if path == "/x12/$validate":   # not FHIR: never a 500, nor a traceback
        assert response.status_code != 500 and response.status_code < 500, response.data[:2000]
    else:
        check_answer(response, {200: {RESPONSE, "Bundle"}, 201: {CER}})
    no_tracebacks(fresh)


# ---------------------------------------------------------------------------------------------- searches and reads

SEARCH_NAMES = ["_id", "patient", "status", "created", "insurer", "provider", "identifier", "request", "outcome",
                "_count", "_offset", "_sort", "_format", "_pretty", "_total", "_snapshot", "_summary", "_elements",
                "_include", "_revinclude", "_has", "_lastUpdated", "nope", "", " ", "patient.name", "_id:missing",
                "patient:missing", "patient:Patient", "patient:identifier", "insurer:Organization", "provider:Nope",
                "request:identifier", "request:CoverageEligibilityRequest", "identifier:exact", "identifier:text",
                "status:not", "created:missing", "identifier:missing", "_count:missing", "_sort:x", "::", ":missing",
                "_snapshot:missing", "created:above", "status:in", "\u00e9", "a" * 300]
SEARCH_VALUES = ["", " ", "true", "false", "active", "cancelled", "complete", "error", "http://hl7.org/fhir/"
                 "fm-status|active", "|active", "nope|", "|", "||", "a|b|c", "Patient/pat-delgado-maria",
                 "pat-delgado-maria", "Patient/", "/", "https://ehr.riverbend.example/fhir/Patient/pat-delgado-maria",
                 "urn:uuid:1", "http://hl7.org/fhir/sid/us-npi|1048263515", "urn:example:ehr:eligibility|GW-SG-0001-1",
                 "a,b", ",", ",,,", "a\\,b", "\\", "\\\\", "a" * 5000, "created", "-created", "_lastUpdated",
                 "-_lastUpdated", "created,-created", "-", "0", "-1", "1", "100", "101", "1000001",
                 "99999999999999999999",
                 "1e3", "1.5", " 5", "\u0661", "²", "json", "application/fhir+json", "xml", "text/html", "none",
                 "estimate", "accurate", "2025-03-10T09:15:00.000000Z", "2025-03-10T09:15:00+01:00",
                 "2025-03-10T09:15:00 01:00", "now", "\x00", "\x1f", "\U0001f600", "\ud800"] + [
                 prefix + date for prefix in ("", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz")
                 for date in ("2025", "2025-03-10", "2025-02-30", "0000", "9999-12-31T23:59:59.999999+14:00",
                              "0001-01-01T00:00:00+01:00", "2025-03-10T24:00:00Z", "2025-03-10T09:15", "20250310",
                              "2025-03-10T09:15:00+15:00")]
printable = st.characters(exclude_categories=["Cc", "Cs"])   # control characters: a few values above say enough
query_pairs = st.lists(st.tuples(st.one_of(st.sampled_from(SEARCH_NAMES), st.text(printable, max_size=8)),
                                 st.one_of(st.sampled_from(SEARCH_VALUES), st.text(printable, max_size=12))),
                       max_size=5)
RAW_QUERIES = ["%", "%zz", "%ff", "%c3%28", "a=%ff", "_count=%00", "&&&", "=", "==", "a", "patient", "_count",
               "_count=", "_count=1&_count=x", "status=active&status=", "%ed%a0%80=1", "created=%2B2025",
               "_format=application/fhir+json", "_format=application/fhir json", "_format=xml", "_pretty=true",
               "_pretty=yes", "_total=x", ";", "patient=a;b", "a" * 5000]


@fuzz_settings(200)
@given(resource=st.sampled_from([CER, RESPONSE]), pairs=query_pairs,
       raw=st.one_of(st.none(), st.sampled_from(RAW_QUERIES)), by_post=st.booleans(),
       prefer=st.sampled_from([None, "handling=strict", "handling=lenient", "handling=nonsense"]))
def test_searches(fresh: Api, resource: str, pairs: list[tuple[str, str]], raw: str | None, by_post: bool,
                  prefer: str | None):
    query = urlencode([(k, v.encode("utf-8", "surrogatepass")) for k, v in pairs])
    if raw is not None:
        query = f"{query}&{raw}" if query else raw
    headers = {"Prefer": prefer} if prefer is not None else {}
    if by_post:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        response = fresh.call("POST", f"/{resource}/_search", data=query.encode(), headers=headers)
    else:
        response = fresh.call("GET", f"/{resource}", query=query, headers=headers)
    body = check_answer(response, {200: {"Bundle"}})
    if response.status_code == 200:
        assert body["type"] == "searchset"
        for entry in body.get("entry") or []:
            if entry["search"]["mode"] == "outcome":
                check_outcome(entry["resource"])
            else:
                check_resource(entry["resource"], {resource})
        for link in body["link"]:   # a paging link the server wrote is a search it answers
            again = fresh.call("GET", "/" + link["url"].split("/", 3)[3], headers=headers)
            check_answer(again, {200: {"Bundle"}})
    no_tracebacks(fresh)


@fuzz_settings(80)
@given(resource=st.sampled_from([CER, RESPONSE, "_async", "Patient", "StructureDefinition", "SearchParameter",
                                 f"{CER}/x/_history", "metadata"]),
       id=st.one_of(st.sampled_from(ODD_IDS + ODD_REFERENCES), st.text(max_size=20)),
       method=st.sampled_from(["GET", "GET", "DELETE", "POST", "PUT", "PATCH", "HEAD", "OPTIONS"]))
def test_reads_by_random_ids(fresh: Api, resource: str, id: str, method: str):
    path = f"/{resource}/{quote(id.encode('utf-8', 'surrogatepass'), safe='')}"
    response = fresh.call(method, path, headers={"Content-Type": "application/fhir+json"},
                          data=b"{}" if method in ("POST", "PUT", "PATCH") else None)
    if method in ("HEAD", "OPTIONS"):
        assert response.status_code < 500, response.data[:2000]
    else:
        check_answer(response, {200: {CER, RESPONSE, "StructureDefinition", "SearchParameter", "CapabilityStatement",
                                      "Bundle"}, 202: set(), 201: {CER}})
    no_tracebacks(fresh)


latin1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)


@fuzz_settings(100)
@given(authorization=st.one_of(st.just(f"Bearer {TOKEN}"), st.none(), st.sampled_from(
           [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN}", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", TOKEN,
            "", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}\u00e9"]), latin1.map(lambda text: f"Bearer {text}")),
       request_id=st.one_of(st.none(), latin1), prefer=st.one_of(st.none(), latin1),
       accept=st.one_of(st.none(), st.sampled_from(ACCEPTS), latin1),
       condition=st.one_of(st.none(), latin1.map(lambda text: f"identifier={text}")),
       target=st.sampled_from([("POST", f"/{CER}/$submit"), ("POST", f"/{CER}"), ("GET", f"/{CER}"),
                               ("GET", f"/{RESPONSE}?_count=1"), ("POST", "/"), ("GET", "/metadata"),
                               ("DELETE", "/_async/nope")]))
def test_headers(fresh: Api, authorization: str | None, request_id: str | None, prefer: str | None,
                 accept: str | None, condition: str | None, target: tuple[str, str]):
    headers = {"Content-Type": "application/fhir+json"}
    for name, value in (("Authorization", authorization), ("X-Request-ID", request_id), ("Prefer", prefer),
                        ("Accept", accept), ("If-None-Exist", condition)):
        if value is not None:
            headers[name] = value
    method, path = target
    body = VALID if path != "/" else json.dumps({"resourceType": "Bundle", "type": "batch"}).encode()
    response = fresh.client.open(path, method=method, headers=headers, data=body if method == "POST" else None)
    check_answer(response, {200: {RESPONSE, CER, "Bundle", "CapabilityStatement", "OperationOutcome"},
                            201: {CER, "OperationOutcome"} if response.data else set(), 202: set()})
    if response.status_code == 202 and "Content-Location" in response.headers:
        await_async(fresh, response)
    no_tracebacks(fresh)
