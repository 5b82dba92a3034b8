"""Values from the input quoted in errors, findings and notes are cut to ``QUOTE_LIMIT`` characters (saying how long
they were); short ones read exactly as ``{value!r}`` did, and data a note carries (its raw segment) is never cut."""

from __future__ import annotations

import json

import pytest

from gateway.app import create_app
from gateway.errors import QUOTE_LIMIT, quoted
from gateway.transport.acks import ack_findings, load_ack_codes
from gateway.x12.model import Delimiters
from gateway.x12.reader import read_x12
from gateway.x12.validate import validate_x12
from tests.conftest import FIXTURES
from tests.translate.test_request_rules import build
from tests.translate.test_request_rules import bundle as request_bundle
from tests.translate.test_response_rules import HEAD, SUBSCRIBER, only

# -- the helper ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "W123", "O'Brien", 'say "hi"', "tab\there", "Müller", "\x00", "a" * QUOTE_LIMIT,
                                   None, 0, 12.5, True, ["a", 1], {"k": "v"}])
def test_a_value_within_the_limit_reads_as_its_repr(value):
    assert quoted(value) == repr(value)


@pytest.mark.parametrize("value", ["W123", "a" * QUOTE_LIMIT, None, 7])
def test_bare_within_the_limit_reads_as_str(value):
    assert quoted(value, bare=True) == str(value)


def test_one_character_over_the_limit_is_cut_and_says_how_long():
    assert quoted("a" * (QUOTE_LIMIT + 1)) == repr("a" * QUOTE_LIMIT + "\u2026") + f" ({QUOTE_LIMIT + 1} characters)"


def test_a_huge_value_is_cut_with_its_length_in_thousands():
    shown = quoted("A" * 2_000_000)
    assert shown == "'" + "A" * QUOTE_LIMIT + "\u2026' (2,000,000 characters)"
    assert quoted("A" * 2_000_000, bare=True) == "A" * QUOTE_LIMIT + "\u2026 (2,000,000 characters)"


def test_the_limit_can_be_given():
    assert quoted("abcdef", 6) == "'abcdef'"
    assert quoted("abcdefg", 6) == "'abcdef\u2026' (7 characters)"


def test_a_long_value_keeps_reprs_quoting_and_escapes():
    assert quoted("O'B" * 50).startswith('"O\'BO\'B')   # repr's choice of quotes, as for a short value
    shown = quoted("\n" * 100)
    assert shown == repr("\n" * QUOTE_LIMIT + "\u2026") + " (100 characters)" and "\n" not in shown


def test_a_long_non_string_is_cut_as_its_repr():
    value = list(range(1000))
    shown = quoted(value)
    assert shown == repr(value)[:QUOTE_LIMIT] + f"\u2026 ({len(repr(value)):,} characters)"


def test_multibyte_text_is_cut_between_characters():
    value = "\U0001F600" * 100 + "\u00e9" * 100   # astral (a surrogate pair in UTF-16) and two-byte UTF-8 characters
    shown = quoted(value)
    assert shown == repr("\U0001F600" * QUOTE_LIMIT + "\u2026") + " (200 characters)"
    shown.encode("utf-8")   # no lone surrogate, no half character
    assert quoted("\u00e9" * QUOTE_LIMIT) == repr("\u00e9" * QUOTE_LIMIT)


# -- FHIR requests: the 422 / 400 quotes a huge value cut --------------------------------------------------------


@pytest.fixture
def client(tmp_path):
    app = create_app({"TESTING": True, "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
                      "FHIR_X12_MAX_BODY_BYTES": 4 * 1024 * 1024})
    yield app.test_client()
    app.extensions["fhir_x12"]["close"]()


def _request() -> dict:
    return json.loads((FIXTURES / "fhir" / "requests" / "subscriber-generic.json").read_text(encoding="utf-8"))


def _submit(client, body: bytes | dict):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/CoverageEligibilityRequest/$submit", data=data,
                       headers={"Content-Type": "application/fhir+json"})


def _resource(bundle: dict, kind: str) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind)


def test_a_100_kb_member_id_is_not_echoed_by_the_422(client):
    request = _request()
    _resource(request, "Coverage")["subscriberId"] = "9" * 100_000
    response = _submit(client, request)
    assert response.status_code == 422
    assert len(response.data) < 1000
    text, = [i["details"]["text"] for i in response.json["issue"]]
    assert text.startswith("member id '" + "9" * QUOTE_LIMIT + "\u2026' (100,000 characters) cannot be sent as given")


def test_a_2_mb_reference_is_not_echoed_by_the_422(client):
    request = _request()
    _resource(request, "CoverageEligibilityRequest")["insurer"] = {"reference": "#" + "x" * 2_000_000}
    response = _submit(client, request)
    assert response.status_code == 422
    assert len(response.data) < 2000
    assert any("(2,000,001 characters) cannot be resolved" in i["details"]["text"] for i in response.json["issue"])


def test_a_2_mb_resource_type_is_not_echoed_by_the_400(client):
    response = _submit(client, {"resourceType": "N" * 2_000_000})
    assert response.status_code == 400
    assert len(response.data) < 1000
    assert "(2,000,000 characters)" in response.json["issue"][0]["details"]["text"]


def test_a_2_mb_name_given_twice_is_not_echoed_by_the_400(client):
    name = "n" * 2_000_000
    response = _submit(client, f'{{"resourceType": "Patient", "{name}": 1, "{name}": 2}}'.encode())
    assert response.status_code == 400
    assert len(response.data) < 1000
    assert "(2,000,000 characters) twice in one object" in response.json["issue"][0]["details"]["text"]


def test_a_2_mb_search_parameter_with_a_modifier_is_not_echoed_by_the_400(client):
    name = "patient:" + "m" * 2_000_000
    response = client.post("/CoverageEligibilityRequest/_search", data={name: "x"},
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert len(response.data) < 1000
    assert "(2,000,008 characters)" in response.json["issue"][0]["details"]["text"]


# -- 270 notes: a value the writer changed ------------------------------------------------------------------------


def test_a_2_mb_name_cut_by_the_writer_is_not_echoed_by_its_note():
    family = "ROE" + "X" * 2_000_000
    result = build(request_bundle(patient__name=[{"family": family, "given": ["Anna"], "prefix": ["Dr" * 100_000]}]))
    texts = {n.source: n.text for n in result.all_notes()}
    changed = texts["270 NM1 NM103"]
    assert changed == (f"cut to the maximum length 60: {quoted(family)} was sent as {family[:60]!r}")
    assert "(2,000,003 characters)" in changed and len(changed) < 300
    assert "(200,000 characters) has no place in NM1" in texts["Patient.name.prefix"]


def test_a_short_value_changed_by_the_writer_reads_as_before():
    result = build(request_bundle(patient__name=[{"family": "O*Brien", "given": ["Anna"]}]))
    assert any(n.text.endswith("'O*Brien' was sent as 'OBRIEN'") for n in result.all_notes())


# -- 271 notes: the explanation is cut, the raw segment (the data) is not ---------------------------------------


def test_a_huge_271_value_is_cut_in_the_note_text_and_kept_whole_in_its_raw_segment():
    birth = "1" * 100_000
    result = only(patient=[*SUBSCRIBER[:3], ("DMG", ["D8", birth, "M"])], head=HEAD)
    note, = [n for n in result.notes if n.text.startswith("birth date")]
    assert note.text == f"birth date {quoted(birth)} is not a date" and "(100,000 characters)" in note.text
    assert birth in note.raw


def test_a_271_value_a_note_carries_as_data_is_not_cut():
    case = "C" * 5000
    result = only(patient=[*SUBSCRIBER, ("REF", ["3H", case])], head=HEAD)
    note, = [n for n in result.notes if n.text.startswith("Case Number")]
    assert note.text == f"Case Number {case}" and case in note.raw


# -- X12 findings ------------------------------------------------------------------------------------------------

def test_a_huge_se02_is_cut_in_the_finding_message_and_kept_in_its_value():
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text(encoding="utf-8")
    se = next(s for s in text.replace("\n", "").split("~") if s.startswith("SE*"))
    control = "7" * 50_000
    bad = text.replace(se, se.rsplit("*", 1)[0] + "*" + control)
    finding, = [f for f in read_x12(bad).all_findings if f.code == "X12-SE-CONTROL"]
    assert finding.message.startswith(f"SE02 '{'7' * QUOTE_LIMIT}\u2026' (50,000 characters) does not match ST02")
    assert finding.value == control


def test_a_too_long_element_is_cut_in_the_validators_message():
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text(encoding="utf-8")
    nm1 = next(s for s in text.replace("\n", "").split("~") if s.startswith("NM1*IL"))
    parts = nm1.split("*")
    first = "Q" * 20_000
    parts[4] = first
    report = validate_x12(text.replace(nm1, "*".join(parts)))
    too_long, = [f for f in report.findings if f.element == "NM104" and "too long" in f.message]
    assert f"{first[:QUOTE_LIMIT]}\u2026 (20,000 characters)" in too_long.message
    assert len(too_long.message) < 4 * QUOTE_LIMIT + 40 and too_long.value == first


def test_a_999s_huge_bad_value_is_cut_in_its_message():
    value = "V" * 10_000
    delimiters = Delimiters(element="*", component=":", repetition="^", segment="~")
    found = ack_findings([(delimiters, ["AK2", "270", "0001"]), (delimiters, ["IK3", "NM1", "8", "2100C", "8"]),
                          (delimiters, ["IK4", "4", "1036", "5", value])], load_ack_codes())
    element, = [f for f in found if f["level"] == "element"]
    assert element["message"].endswith(f": '{'V' * QUOTE_LIMIT}\u2026' (10,000 characters)")
    assert element["value"] == value


def test_a_short_999_value_reads_as_before():
    delimiters = Delimiters(element="*", component=":", repetition="^", segment="~")
    found = ack_findings([(delimiters, ["AK2", "270", "0001"]), (delimiters, ["IK3", "EQ", "9", "2110C", "8"]),
                          (delimiters, ["IK4", "1", "1365", "7", "ZZ"])], load_ack_codes())
    assert found[-1]["message"] == "element EQ01 (data element 1365): Invalid code value (IK403 code 7): 'ZZ'"

