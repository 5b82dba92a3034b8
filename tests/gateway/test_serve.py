"""The commands people run: ``fhir-x12 payer serve`` and ``fhir-x12 serve`` under gunicorn, in real processes.

Both worker classes; several gateway workers, whose ``/metrics`` reports all of them (prometheus_client
multiprocess mode, in a private directory or the operator's ``PROMETHEUS_MULTIPROC_DIR``); the simulator's
eligibility API applying a change in its gunicorn worker (its operations thread must live there, not in the
master); a bad setting refused with a one-line message instead of a traceback.
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
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import ConfigError
from gateway.serving import MULTIPROC_ENV, _mark_dead, multiprocess_metrics, stop, wait_ready
from tests.conftest import FIXTURES, ROOT
from tests.gateway.conftest import TOKEN, fhir_request, member

CLI = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(args: list[str], ready: str, env: dict[str, str | None], log: Path) -> Iterator[subprocess.Popen]:
    """The command until the block ends; ``env`` adds to this process's environment (None: leave that one out)."""
    environment = {key: value for key, value in {**os.environ, **env}.items() if value is not None}
    with log.open("w") as stderr:
        process = subprocess.Popen([*CLI, *args], cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        try:
            problem = wait_ready(ready, process, 60)
            assert problem is None, f"{args[:2]}: {problem}: {log.read_text()[-2000:]}"
            yield process
        finally:
            stop(process)


def refused(port: int, raw: bytes) -> tuple[str, dict]:
    """Send ``raw`` and read the whole answer (the server closes the connection): lower-cased head, JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode("latin-1").lower(), json.loads(body)


def eligibility_total(text: str) -> float:
    """Every eligibility outcome of every payer, as one number."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "fhir_x12_eligibility_total")


def worker_pids(folder: Path, master: int) -> set[str]:
    """The processes other than the master that wrote metric files in ``folder`` (``histogram_<pid>.db``)."""
    return {path.stem.split("_")[1] for path in folder.glob("histogram_*.db")} - {str(master)}


# gthread: the gateway makes its own metrics directory (found through TMPDIR); gevent: the operator's
@pytest.mark.parametrize(("worker_class", "operator_dir"), [("gthread", False), ("gevent", True)])
def test_served_gateway_and_simulator(tmp_path: Path, database_url: str, worker_class: str, operator_dir: bool):
    payer_port, gateway_port = free_port(), free_port()
    payer_url, gateway_url = f"http://127.0.0.1:{payer_port}", f"http://127.0.0.1:{gateway_port}"
    payer_args = ["payer", "serve", "--port", str(payer_port), "--seed", str(FIXTURES / "members"),
                  "--database", f"sqlite:///{tmp_path / 'payer.db'}", "--worker-class", worker_class]
    temp, metrics_dir = tmp_path / "tmp", tmp_path / "metrics"
    temp.mkdir()
    if operator_dir:
        metrics_dir.mkdir()
    gateway_env = {"FHIR_X12_TOKENS": TOKEN, "FHIR_X12_PAYER_URL": f"{payer_url}/core/soap",
                   "FHIR_X12_DATABASE_URL": database_url, "FHIR_X12_LOG_LEVEL": "WARNING", "TMPDIR": str(temp),
                   MULTIPROC_ENV: str(metrics_dir) if operator_dir else None}
    gateway_args = ["serve", "--port", str(gateway_port), "--workers", "2", "--worker-class", worker_class]
    with running(payer_args, f"{payer_url}/scenarios", {}, tmp_path / "payer.log"), \
            running(gateway_args, f"{gateway_url}/readyz", gateway_env, tmp_path / "gateway.log") as gateway:
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
        # requests gunicorn itself refuses: an OperationOutcome that quotes nothing of the request, and a log line
        # that says what was wrong, never the request line it quoted
        for raw, status, code in (
                (b"GET /CoverageEligibilityRequest?patient=DELGADO MARIA 19780514 HTTP/1.1\r\n\r\n", 400, "structure"),
                (b"GET /CoverageEligibilityRequest?patient=DELGADO" + b"X" * 5000 + b" HTTP/1.1\r\n\r\n", 414,
                 "too-long")):
            head, body = refused(gateway_port, raw)
            assert head.startswith(f"http/1.1 {status} ") and "content-type: application/fhir+json" in head, head
            assert "x-request-id: " in head
            assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code, body
            assert "DELGADO" not in json.dumps(body)
        # 26 eligibility requests answered, by either worker: every scrape, whichever worker answers it, counts all
        for _ in range(8):
            scraped = requests.get(f"{gateway_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            assert scraped.status_code == 200
            assert eligibility_total(scraped.text) == 26, scraped.text
        if operator_dir:
            shared = metrics_dir
        else:
            made = list(temp.glob("fhir-x12-metrics-*"))
            assert len(made) == 1, made
            shared = made[0]
            assert shared.stat().st_mode & 0o077 == 0   # private
        deadline = time.monotonic() + 30
        while len(worker_pids(shared, gateway.pid)) < 2:   # each worker writes files of its own there
            assert time.monotonic() < deadline, sorted(path.name for path in shared.iterdir())
            time.sleep(0.2)
    logged = (tmp_path / "gateway.log").read_text()
    assert "Invalid request from" in logged and "DELGADO" not in logged and "19780514" not in logged
    # gunicorn's lines too are JSON like the gateway's: none in its plain "[time] [pid] [LEVEL] ..." form
    assert not [line for line in logged.splitlines() if line.startswith("[")], logged[:2000]
    assert any(json.loads(line).get("logger") == "gunicorn.error" for line in logged.splitlines()
               if line.startswith("{"))
    if operator_dir:   # the operator's directory and its files are left alone
        assert list(metrics_dir.glob("counter_*.db"))
    else:              # the gateway's own is removed when it stops
        assert not list(temp.glob("fhir-x12-metrics-*"))


def test_bad_setting_is_one_line(tmp_path: Path):
    done = subprocess.run([*CLI, "serve", "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FHIR_X12_TOKENS": "short",
                                           "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "FHIR_X12_TOKENS" in done.stderr or "token" in done.stderr.lower()


def test_unusable_metrics_dir_is_one_line(tmp_path: Path):
    done = subprocess.run([*CLI, "serve", "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FHIR_X12_TOKENS": TOKEN, MULTIPROC_ENV: str(tmp_path / "no"),
                                           "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and MULTIPROC_ENV in done.stderr, done.stderr


def test_multiprocess_metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with multiprocess_metrics() as made:
        assert os.environ[MULTIPROC_ENV] == made and Path(made).parent == tmp_path
        assert Path(made).stat().st_mode & 0o777 == 0o700
        (Path(made) / "counter_1.db").write_bytes(b"")
    assert not Path(made).exists() and MULTIPROC_ENV not in os.environ
    given = tmp_path / "given"
    given.mkdir()
    stale = ["counter_7.db", "histogram_7.db", "gauge_livesum_7.db", "summary_12.db"]
    kept = ["notes.txt", "counter_x.db", "counter_7.db.bak"]
    for name in stale + kept:
        (given / name).write_bytes(b"")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    with multiprocess_metrics() as used:
        assert used == str(given)
        # a previous run's metric files would be added in: they go, and nothing else in the folder does
        assert sorted(p.name for p in given.iterdir()) == sorted(kept)
    assert given.is_dir() and os.environ[MULTIPROC_ENV] == str(given)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=MULTIPROC_ENV), multiprocess_metrics():
        pass


def test_child_exit_marks_the_worker_dead(tmp_path: Path):
    for name in ("gauge_livesum_41.db", "gauge_livesum_42.db", "counter_41.db"):
        (tmp_path / name).write_bytes(b"")

    class Worker:
        pid = 41

    _mark_dead(str(tmp_path))(None, Worker())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["counter_41.db", "gauge_livesum_42.db"]
