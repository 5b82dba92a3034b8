"""The commands people run: ``fhir-x12 payer serve`` and ``fhir-x12 serve`` under gunicorn, in real processes.

Both worker classes; several gateway workers; the simulator's eligibility API applying a change in its
gunicorn worker (its operations thread must live there, not in the master); a bad setting refused
with a one-line message instead of a traceback.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from gateway.serving import stop, wait_ready
from tests.conftest import FIXTURES, ROOT
from tests.gateway.conftest import TOKEN, fhir_request, member

CLI = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(args: list[str], ready: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as stderr:
        process = subprocess.Popen([*CLI, *args], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        try:
            problem = wait_ready(ready, process, 60)
            assert problem is None, f"{args[:2]}: {problem}: {log.read_text()[-2000:]}"
            yield process
        finally:
            stop(process)


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_served_gateway_and_simulator(tmp_path: Path, database_url: str, worker_class: str):
    payer_port, gateway_port = free_port(), free_port()
    payer_url, gateway_url = f"http://127.0.0.1:{payer_port}", f"http://127.0.0.1:{gateway_port}"
    payer_args = ["payer", "serve", "--port", str(payer_port), "--seed", str(FIXTURES / "members"),
                  "--database", f"sqlite:///{tmp_path / 'payer.db'}", "--worker-class", worker_class]
    gateway_env = {"FHIR_X12_TOKENS": TOKEN, "FHIR_X12_PAYER_URL": f"{payer_url}/core/soap",
                   "FHIR_X12_DATABASE_URL": database_url, "FHIR_X12_LOG_LEVEL": "WARNING"}
    gateway_args = ["serve", "--port", str(gateway_port), "--workers", "2", "--worker-class", worker_class]
    with running(payer_args, f"{payer_url}/scenarios", {}, tmp_path / "payer.log"), \
            running(gateway_args, f"{gateway_url}/readyz", gateway_env, tmp_path / "gateway.log"):
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
        answer = requests.post(f"{gateway_url}/CoverageEligibilityRequest/$submit", headers=headers, timeout=30,
                               data=json.dumps(fhir_request("subscriber-generic")))
        assert answer.status_code == 200, answer.text[:500]
        assert answer.json()["outcome"] == "complete" and "payer;dur=" in answer.headers["Server-Timing"]
        # a member added through the simulator's eligibility API is answered for at once
        record = copy.deepcopy(member("delgado-maria"))
        record.update(memberid="ACM000111222", firstname="MARTA")
        created = requests.post(f"{payer_url}/eligibility", json=record, timeout=10)
        assert created.status_code == 202
        deadline = time.monotonic() + 15
        while requests.get(created.headers["Operation-Location"], timeout=5).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the simulator never applied the new member"
            time.sleep(0.1)
        payload = copy.deepcopy(fhir_request("subscriber-generic"))
        for entry in payload["entry"]:
            if entry["resource"]["resourceType"] == "Coverage":
                entry["resource"]["subscriberId"] = "ACM000111222"
            if entry["resource"]["resourceType"] == "Patient":
                entry["resource"]["name"][0]["given"] = ["Marta"]
        found = requests.post(f"{gateway_url}/CoverageEligibilityRequest/$submit", headers=headers, timeout=30,
                              data=json.dumps(payload)).json()
        assert found["outcome"] == "complete", found
        # several requests at once, spread over both workers, all answered
        session = requests.Session()
        session.headers.update(headers)
        body = json.dumps(fhir_request("auth-required"))
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: session.post(f"{gateway_url}/CoverageEligibilityRequest/$submit",
                                                            data=body, timeout=30).status_code, range(24)))
        assert statuses == [200] * 24


def test_bad_setting_is_one_line(tmp_path: Path):
    done = subprocess.run([*CLI, "serve", "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FHIR_X12_TOKENS": "short",
                                           "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "FHIR_X12_TOKENS" in done.stderr or "token" in done.stderr.lower()
