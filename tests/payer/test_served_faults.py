"""The simulator as ``fhir-x12 payer serve`` runs it (a real gunicorn process): an injected fault holds only its
own requests. Eight concurrent timeouts held all eight gthread threads, and /scenarios and healthy members froze."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from gateway.serving import stop, wait_ready
from tests.conftest import FIXTURES, ROOT

REQUEST = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes()   # DELGADO, on file in the seed


def port_in_range(first: int = 44000, last: int = 44099) -> int:
    """A free port from a fixed range (kept apart from other services on a shared machine)."""
    for port in range(first, last + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {first}-{last}")
    raise AssertionError("unreachable")


@pytest.mark.parametrize("extra", [[], ["--worker-class", "gthread", "--threads", "32"]],
                         ids=["default-gevent", "gthread-32-threads"])
def test_concurrent_timeouts_leave_scenarios_and_healthy_members_answering(tmp_path: Path, extra: list[str]):
    port = port_in_range()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "gateway.cli", "payer", "serve", "--port", str(port), "--seed",
            str(FIXTURES / "members"), "--database", f"sqlite:///{tmp_path / 'payer.db'}", *extra]
    log = tmp_path / "payer.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            assert wait_ready(f"{base}/scenarios", process, 60) is None, log.read_text()[-2000:]
            held = REQUEST.replace(b"ACM482193057", b"HELD00000001")
            assert requests.post(f"{base}/scenarios", json={"memberid": "HELD00000001", "fault": "timeout",
                                                            "seconds": 4}, timeout=5).status_code == 201

            def slow(_: int) -> int:
                try:
                    return requests.post(f"{base}/x12", data=held, timeout=10).status_code
                except requests.RequestException:
                    return 0

            with ThreadPoolExecutor(12) as pool:
                futures = [pool.submit(slow, i) for i in range(12)]   # more than the old 8 threads
                time.sleep(1.0)   # all twelve are being held now
                start = time.monotonic()
                assert requests.get(f"{base}/scenarios", timeout=5).status_code == 200
                answered = requests.post(f"{base}/x12", data=REQUEST, timeout=5)
                elapsed = time.monotonic() - start
                assert answered.status_code == 200 and "EB*1**30" in answered.text
                assert elapsed < 2.0, f"the healthy requests took {elapsed:.1f} s behind the held ones"
                assert all(f.result() == 200 for f in futures)   # the held ones answered after their 4 s
        finally:
            stop(process)


def test_a_usage_error_is_reported_before_the_default_gevent_worker_patches_anything(monkeypatch):
    """gevent is the default now: a bad --accounts-env value must fail before monkey.patch_all (in a test run, a
    patched pytest process would misbehave for every later test)."""
    from click.testing import CliRunner
    from gevent import monkey

    from gateway.cli import main

    monkeypatch.setenv("SIM_ACCOUNTS", "user:secret,broken")
    result = CliRunner().invoke(main, ["payer", "serve", "--accounts-env", "SIM_ACCOUNTS"])
    assert result.exit_code == 2 and "entry 2" in result.output
    assert not monkey.is_module_patched("socket")
