"""Every log line written for a request carries its id, also from the async and batch worker threads.

The JSON lines are read off the gateway's own handler (the shape operators see); the payer client's
"payer ... answered in ..." line is written on the worker threads.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from gateway.observability import JsonLogHandler, carry_context, current_request_id
from tests.gateway.conftest import Gateway, fhir_request

CER = "CoverageEligibilityRequest"
probe = logging.getLogger("gateway.test_request_logs")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    handler = next(h for h in logging.getLogger("gateway").handlers if isinstance(h, JsonLogHandler))
    stream = io.StringIO()
    handler.use_stream(stream)
    yield stream
    handler.use_stream(None)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def answered(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in lines(stream) if line["logger"] == "gateway.transport.client"
            and line["message"].startswith("payer ACME01 answered in")]


def batch_of(n: int, url: str = f"{CER}/$submit") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": url}, "resource": fhir_request("subscriber-generic")}
        for _ in range(n)]}


def traced_exchanges(gateway: Gateway) -> None:
    """Log each exchange's stored request id from the worker thread (to tie worker lines to their request)."""
    service = gateway.app.extensions["fhir_x12"]["service"]
    exchange = service.exchange

    def logged(prepared: Any) -> Any:
        probe.info("exchange for %s", prepared.id)
        return exchange(prepared)

    service.exchange = logged


def test_async_worker_lines_carry_the_request_id(gateway: Gateway, logs: io.StringIO):
    response = gateway.post(f"/{CER}", fhir_request("subscriber-generic"),
                            headers={"Prefer": "respond-async", "X-Request-ID": "async-test-1"})
    assert response.status_code == 202, response.text
    assert response.headers["X-Request-ID"] == "async-test-1"
    deadline = time.monotonic() + 15
    while gateway.get(response.headers["Content-Location"]).status_code == 202:
        assert time.monotonic() < deadline, "the asynchronous request did not finish"
        time.sleep(0.05)
    [line] = answered(logs)
    assert line["request_id"] == "async-test-1" and line["level"] == "INFO"
    assert set(line) == {"level", "logger", "message", "request_id", "time"}   # the JSON shape is unchanged
    # the worker thread does not keep the id for whatever it runs next, nor does the server thread
    executor = gateway.app.extensions["fhir_x12"]["executor"]
    for _ in range(3):   # an idle worker is reused: the one that ran the task
        executor.submit(probe.info, "idle worker").result()
    probe.info("outside any request")
    idle = [line for line in lines(logs) if line["message"] in ("idle worker", "outside any request")]
    assert idle and all("request_id" not in line for line in idle)


def test_batch_worker_lines_carry_the_request_id(gateway: Gateway, logs: io.StringIO):
    response = gateway.post("/", batch_of(2), headers={"X-Request-ID": "batch-test-1"})
    assert response.status_code == 200, response.text
    assert [e["response"]["status"][:3] for e in response.json()["entry"]] == ["200", "200"]
    found = answered(logs)
    assert len(found) == 2 and {line["request_id"] for line in found} == {"batch-test-1"}
    access = [line for line in lines(logs) if line["logger"] == "gateway.access"]
    assert [line["request_id"] for line in access] == ["batch-test-1"]


def test_concurrent_requests_do_not_mix_ids(gateway: Gateway, simulator, logs: io.StringIO):
    requests.post(f"{simulator.url}/scenarios", json={"memberid": "*", "fault": "latency", "seconds": 0.3},
                  timeout=5)
    traced_exchanges(gateway)
    ids = ["conc-a", "conc-b", "conc-c"]
    barrier = threading.Barrier(len(ids))
    replies: dict[str, requests.Response] = {}

    def send(request_id: str) -> None:
        barrier.wait()
        if request_id == "conc-c":   # an async create alongside the two batches
            replies[request_id] = gateway.post(f"/{CER}", fhir_request("subscriber-generic"),
                                               headers={"Prefer": "respond-async", "X-Request-ID": request_id})
        else:
            replies[request_id] = gateway.post("/", batch_of(3, CER), headers={"X-Request-ID": request_id})

    threads = [threading.Thread(target=send, args=(request_id,)) for request_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    deadline = time.monotonic() + 15
    while len(answered(logs)) < 7:
        assert time.monotonic() < deadline, answered(logs)
        time.sleep(0.05)
    # which stored request each HTTP request sent: the batch entries' locations, the async status URL
    owner = {entry["response"]["location"].rsplit("/", 1)[1]: request_id
             for request_id in ("conc-a", "conc-b") for entry in replies[request_id].json()["entry"]}
    owner[replies["conc-c"].headers["Content-Location"].rsplit("/", 1)[1]] = "conc-c"
    exchanges = [line for line in lines(logs) if line["message"].startswith("exchange for ")]
    assert len(exchanges) == 7
    for line in exchanges:
        assert line["request_id"] == owner[line["message"].split()[-1]], line
    by_id = [line["request_id"] for line in answered(logs)]
    assert sorted(by_id) == ["conc-a"] * 3 + ["conc-b"] * 3 + ["conc-c"]


def test_carry_context_hands_the_id_to_another_thread():
    from flask import Flask

    from gateway.observability import init_logging

    app = Flask("carry")
    init_logging(app)
    seen: dict[str, Any] = {}

    @app.get("/x")
    def x():  # type: ignore[no-untyped-def]
        plain = threading.Thread(target=lambda: seen.setdefault("plain", current_request_id()))
        carried = threading.Thread(target=carry_context(lambda: seen.setdefault("carried", current_request_id())))
        for thread in (plain, carried):
            thread.start()
            thread.join()
        return "x"

    app.test_client().get("/x", headers={"X-Request-ID": "carry-1"})
    assert seen == {"plain": None, "carried": "carry-1"}
    assert current_request_id() is None   # the test client ran the request on this thread: nothing is left
