"""Each scenario: the client sees exactly that behaviour (real server on loopback)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from gateway.payer.scenarios import MAGIC_IDS
from gateway.x12.reader import read_x12
from tests.conftest import FIXTURES
from tests.payer.test_answer import DELGADO
from tests.payer.test_api import create, server  # noqa: F401 - the fixture

REQUEST = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes()


def post(base: str, data: bytes = REQUEST, timeout: float = 10) -> requests.Response:
    return requests.post(f"{base}/x12", data=data, headers={"Content-Type": "application/edi-x12"}, timeout=timeout)


def with_member(data: bytes, member_id: str) -> bytes:
    return data.replace(b"ACM482193057", member_id.encode())


def scenario(base: str, **rule) -> None:
    assert requests.post(f"{base}/scenarios", json=rule, timeout=5).status_code == 201


def test_http_errors(server):  # noqa: F811
    base, _ = server
    scenario(base, fault="http-503", times=1)
    assert post(base).status_code == 503
    assert post(base).status_code == 200  # times=1: used up
    assert post(base, with_member(REQUEST, "SIMHTTP50003")).status_code == 500


def test_latency_and_timeout(server):  # noqa: F811
    base, _ = server
    scenario(base, fault="latency", seconds=0.6, times=1)
    start = time.perf_counter()
    assert post(base).status_code == 200
    assert time.perf_counter() - start >= 0.6
    scenario(base, fault="timeout", seconds=3, times=1)
    with pytest.raises(requests.Timeout):
        post(base, timeout=0.5)


def test_aaa_42_malformed_999_ta1_and_wrong_trace(server):  # noqa: F811
    base, _ = server
    create(base, DELGADO)
    text = post(base, with_member(REQUEST, "SIMAAA420005")).text
    assert "AAA*Y**42*R" in text and "EB*" not in text
    assert read_x12(text).transactions[0].set_id == "271"
    assert post(base, with_member(REQUEST, "SIMBAD271006")).text.startswith("ISA*THIS IS NOT")
    rejected = post(base, with_member(REQUEST, "SIMREJ999007")).text
    assert "IK5*R*5" in rejected   # segments in error: and the 999 says which (was an IK5 with nothing behind it)
    assert "IK3*NM1*" in rejected and "*8~" in rejected and "IK4*9*67*I12*SIMREJ999007~" in rejected
    assert "TA1*" in post(base, with_member(REQUEST, "SIMTA1000008")).text
    wrong = post(base, with_member(REQUEST, "SIMTRACE0009")).text
    assert "TRN*2*XW-SG-0001-1*" in wrong   # one character replaced


def test_wrong_trace_keeps_a_50_character_trn02_within_50(server):  # noqa: F811
    """The fault prefixed an 'X': a 50-character trace became 51, more than TRN02 holds."""
    base, _ = server
    trace = "X" + "T" * 49
    sent = with_member(REQUEST, "SIMTRACE0009").replace(b"TRN*1*GW-SG-0001-1*", f"TRN*1*{trace}*".encode())
    wrong = post(base, sent).text
    echoed = next(s.get(2) for s in read_x12(wrong).transactions[0].segments() if s.id == "TRN")
    assert len(echoed) == 50 and echoed != trace and echoed == "Y" + "T" * 49


def test_one_request_at_a_time(server):  # noqa: F811
    base, _ = server
    scenario(base, fault="one-at-a-time", seconds=1)
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(base).status_code)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 503]
    assert requests.delete(f"{base}/scenarios", timeout=5).status_code == 204


def test_bad_scenarios_are_400(server):  # noqa: F811
    base, _ = server
    response = requests.post(f"{base}/scenarios", json={"fault": "gremlins", "seconds": -1}, timeout=5)
    assert response.status_code == 400
    assert {p["path"] for p in response.json()["problems"]} == {"fault", "seconds"}
    listed = requests.get(f"{base}/scenarios", timeout=5).json()
    assert set(listed["magic_member_ids"]) == set(MAGIC_IDS)


@pytest.mark.parametrize("rule, path", [
    ('{"fault": "latency", "seconds": NaN}', "seconds"),      # would have made every later 270 a 500
    ('{"fault": "latency", "jitter": Infinity}', "jitter"),
    ('{"fault": {}}', "fault"),
    ('{"fault": ["latency"]}', "fault"),
    ('{"fault": "latency", "memberid": {}}', "memberid"),     # not silently "every request"
    ('{"fault": "latency", "memberid": ""}', "memberid"),
    ('{"fault": "latency", "memberid": [1]}', "memberid"),
])
def test_bad_rule_values_are_400_and_leave_the_simulator_answering(server, rule, path):  # noqa: F811
    base, _ = server
    response = requests.post(f"{base}/scenarios", data=rule, headers={"Content-Type": "application/json"},
                             timeout=5)
    assert response.status_code == 400
    assert path in {p["path"] for p in response.json()["problems"]}
    assert requests.get(f"{base}/scenarios", timeout=5).json()["rules"] == []
    assert post(base).status_code == 200


def test_jittered_latency_is_deterministic():
    from gateway.payer.scenarios import Rule, ScenarioBook

    rule = Rule("*", "latency", seconds=1.0, jitter=0.5)
    first, second = ScenarioBook(), ScenarioBook()
    delays = [first.delay(rule) for _ in range(5)]
    assert delays == [second.delay(rule) for _ in range(5)]
    assert all(0.5 <= d <= 1.5 for d in delays) and len(set(delays)) > 1


@pytest.mark.parametrize("rule", [{"fault": "timeout"}, {"fault": "latency"}, {"fault": "timeout", "seconds": 0}])
def test_a_timeout_or_latency_rule_without_seconds_is_400(server, rule):  # noqa: F811
    """Stored with 0 seconds, a 'timeout' answered at once."""
    base, _ = server
    response = requests.post(f"{base}/scenarios", json=rule, timeout=5)
    assert response.status_code == 400
    assert [p["path"] for p in response.json()["problems"]] == ["seconds"]
    assert requests.get(f"{base}/scenarios", timeout=5).json()["rules"] == []
