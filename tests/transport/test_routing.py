"""Routing-table settings that are not about transport: the information receiver (2100B) per payer."""

from __future__ import annotations

import pytest

from gateway.errors import MappingError
from gateway.transport.routing import (
    MAX_OVERRIDDEN,
    InformationReceiver,
    UnknownPayer,
    load_routes,
    routes_from_config,
    valid_npi,
)

PRACTICE = {"npi": "1245319599", "name": "Riverbend Family Practice"}
NPI = "http://hl7.org/fhir/sid/us-npi"
TAXONOMY = "http://nucc.org/provider-taxonomy"
SYSTEMS = {"npi": NPI, "taxonomy": TAXONOMY}


def table(payers: dict, **defaults) -> dict:
    return {"defaults": {"sender_id": "FHIRX12GW", "transport": "soap", **defaults}, "payers": payers}


def test_a_payer_takes_the_defaults_information_receiver_or_its_own():
    routes = load_routes(table({"A": {"url": "http://127.0.0.1:1/a"},
                                "B": {"url": "http://127.0.0.1:1/b",
                                      "information_receiver": {"npi": 1234567893, "name": "Okafor",
                                                               "first_name": "Ada", "entity": "person"}}},
                               information_receiver=PRACTICE))
    assert routes.route("A").information_receiver == InformationReceiver("1245319599", "Riverbend Family Practice")
    person = routes.route("B").information_receiver
    assert person == InformationReceiver("1234567893", "Okafor", "person", "Ada")
    assert person.as_resource(SYSTEMS) == {"resourceType": "Practitioner",
                                           "name": [{"family": "Okafor", "given": ["Ada"]}],
                                           "identifier": [{"system": NPI, "value": "1234567893"}]}
    assert person.as_reference(SYSTEMS)["display"] == "Ada Okafor"
    assert person.as_reference(SYSTEMS)["identifier"] == {"system": NPI, "value": "1234567893"}


def test_a_taxonomy_goes_where_the_270_builder_reads_one():
    routes = load_routes(table({"A": {"url": "http://127.0.0.1:1/a",
                                      "information_receiver": {**PRACTICE, "taxonomy": "261QP2300X"}},
                                "B": {"url": "http://127.0.0.1:1/b",
                                      "information_receiver": {"npi": "1234567893", "name": "Okafor",
                                                               "entity": "person", "taxonomy": " 207Q00000X "}}}))
    group, person = routes.route("A").information_receiver, routes.route("B").information_receiver
    assert group.taxonomy == "261QP2300X" and person.taxonomy == "207Q00000X"
    assert group.as_resource(SYSTEMS)["type"] == [{"coding": [{"system": TAXONOMY, "code": "261QP2300X"}]}]
    assert person.as_resource(SYSTEMS)["qualification"] == [
        {"code": {"coding": [{"system": TAXONOMY, "code": "207Q00000X"}]}}]
    assert "type" not in InformationReceiver("1245319599", "X").as_resource(SYSTEMS)


def test_without_one_configured_there_is_none():
    routes = load_routes(table({"A": {"url": "http://127.0.0.1:1/a"}}))
    assert routes.route("A").information_receiver is None


def test_the_override_url_keeps_each_payers_receiver_and_gives_unlisted_ones_the_defaults():
    own = {"npi": "1234567893", "name": "Acme Enrolled Group"}
    routes = load_routes(table({"A": {"url": "http://127.0.0.1:1/a", "information_receiver": own}},
                               information_receiver=PRACTICE), "http://127.0.0.1:2/core/soap")
    assert routes.route("A").information_receiver.name == "Acme Enrolled Group"
    assert routes.route("ZZZ99").information_receiver.name == "Riverbend Family Practice"


def test_override_routes_are_made_once_per_payer_id_and_kept_bounded():
    routes = load_routes(table({"A": {"url": "http://127.0.0.1:1/a"}}), "http://127.0.0.1:2/core/soap")
    first = routes.route(" acme7 ")
    assert routes.route("ACME7") is first and first.payer_id == "ACME7" and first.url == "http://127.0.0.1:2/core/soap"
    assert routes.route("a").url == "http://127.0.0.1:2/core/soap" and routes.route("A").listed
    for number in range(MAX_OVERRIDDEN + 50):   # request data chooses the ids: the kept ones stop growing
        assert routes.route(f"P{number}").payer_id == f"P{number}"
    assert len(routes._overridden) == MAX_OVERRIDDEN
    assert routes.route(f"P{MAX_OVERRIDDEN + 10}").receiver_id == f"P{MAX_OVERRIDDEN + 10}"
    with pytest.raises(UnknownPayer):
        routes.route("  ")


@pytest.mark.parametrize(("receiver", "words"), [
    ({"npi": "1245319598", "name": "X"}, "information_receiver.npi: a National Provider Identifier"),
    ({"npi": "124531959", "name": "X"}, "information_receiver.npi"),
    ({"name": "X"}, "information_receiver.npi"),
    ({"npi": "1245319599"}, "information_receiver.name: required"),
    ({"npi": "1245319599", "name": "  "}, "information_receiver.name: required"),
    ({"npi": "1245319599", "name": "X", "entity": "group"}, "information_receiver.entity: organization or person"),
    ({"npi": "1245319599", "name": "X", "first_name": "Ada"}, "information_receiver.first_name: only for entity"),
    ({"npi": "1245319599", "name": "X", "taxonomy": "207q00000x"}, "information_receiver.taxonomy: a NUCC provider"),
    ({"npi": "1245319599", "name": "X", "taxonomy": "207Q0000X"}, "information_receiver.taxonomy"),
    ({"npi": "1245319599", "name": "X", "taxonomy": 207}, "information_receiver.taxonomy"),
    ({"npi": "1245319599", "name": "X", "specialty": "207Q00000X"}, "information_receiver.specialty: unknown key"),
    ("1245319599", "information_receiver: must be a mapping"),
])
def test_a_wrong_information_receiver_is_named_at_start_up(receiver, words):
    with pytest.raises(MappingError) as caught:
        load_routes(table({"A": {"url": "http://127.0.0.1:1/a", "information_receiver": receiver}}))
    assert f"payers.A.{words}" in str(caught.value)


def test_a_wrong_default_information_receiver_is_named_too():
    with pytest.raises(MappingError, match=r"defaults\.information_receiver\.npi"):
        load_routes(table({"A": {"url": "http://127.0.0.1:1/a"}}, information_receiver={"npi": "1", "name": "X"}))


def test_npi_check_digit():
    assert valid_npi("1234567893") and valid_npi("1245319599")
    assert not valid_npi("1234567890") and not valid_npi("123456789A") and not valid_npi("12345678931")


# -- the deployment's own routing file (FHIR_X12_ROUTING) ------------------------------------------------------

@pytest.mark.parametrize(("content", "words"), [
    (b"", "is empty"),
    (b"# TODO: payers\n", "is empty"),
    (b"\xff\xfe\x00d\x00e", "is not UTF-8 text"),
    (b"defaults: {sender_id: FHIRX12GW}\npayers: {}\n", "lists no payers"),
    (b"defaults: {sender_id: FHIRX12GW}\npayers:\n", "lists no payers"),
])
def test_a_routing_file_without_payers_never_falls_back_to_the_shipped_one(tmp_path, content, words):
    """A truncated or empty mount would otherwise send patient data to the sample payers' endpoints."""
    path = tmp_path / "routing.yaml"
    path.write_bytes(content)
    with pytest.raises(MappingError, match=words) as caught:
        routes_from_config({"FHIR_X12_ROUTING": str(path)})
    assert "FHIR_X12_ROUTING" in str(caught.value)


def test_no_payers_is_fine_when_everything_goes_to_the_override_url(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text("defaults: {sender_id: FHIRX12GW}\npayers: {}\n", encoding="utf-8")
    routes = routes_from_config({"FHIR_X12_ROUTING": str(path), "FHIR_X12_PAYER_URL": "http://127.0.0.1:9/core/soap"})
    assert routes.route("ANYONE").url == "http://127.0.0.1:9/core/soap"


def test_a_port_out_of_range_is_named_at_start_up():
    with pytest.raises(MappingError, match=r"payers\.P\.url: the port of 'http://127.0.0.1:99999/x' is not"):
        load_routes(table({"P": {"url": "http://127.0.0.1:99999/x"}}))


def test_plain_http_beyond_this_machine_is_warned_about(tmp_path, caplog):
    path = tmp_path / "routing.yaml"
    path.write_text("defaults: {sender_id: FHIRX12GW, transport: soap}\npayers:\n"
                    "  FAR: {url: 'http://payer.example.com/core/soap'}\n"
                    "  NEAR: {url: 'http://127.0.0.1:8090/core/soap'}\n"
                    "  SAFE: {url: 'https://payer.example.com/core/soap'}\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="gateway.transport.routing"):
        routes_from_config({"FHIR_X12_ROUTING": str(path)})
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "payer FAR is routed over plain http to payer.example.com" in warned[0]
