"""Locust user for the end-to-end load run (``bench/load.py`` starts it; see BENCHMARKS.md).

Each simulated provider system POSTs one CoverageEligibilityRequest to ``$submit`` at a fixed pace
and records the round trip and the payer's share of it (the gateway's ``Server-Timing`` header), so
the gateway's own overhead is the difference, measured from outside.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

from locust import FastHttpUser, events, task

BODY = Path(os.environ["BENCH_REQUEST"]).read_bytes()
HEADERS = {"Authorization": f"Bearer {os.environ['BENCH_TOKEN']}", "Content-Type": "application/fhir+json"}
PAYER = re.compile(r"payer;dur=([0-9.]+)")
GATEWAY = re.compile(r"gateway;dur=([0-9.]+)")
SAMPLES: list[tuple[float, float, float, float]] = []   # (wall clock, round trip ms, payer ms, gateway-measured ms)
FAILURES: Counter[str] = Counter()   # why requests failed: the status and the OperationOutcome's issue code


RATE = float(os.environ.get("BENCH_USER_RPS", "5"))


class ProviderSystem(FastHttpUser):
    """Requests arrive as a Poisson process (random, independent gaps at the user's mean rate, kept on
    schedule whatever the response time). Users paced at a fixed interval and started together would
    stay in step and arrive in bursts of all users at once, which measures the load generator."""

    def on_start(self) -> None:
        self._next = time.monotonic() + random.expovariate(RATE)

    def wait_time(self) -> float:
        self._next += random.expovariate(RATE)
        return max(0.0, self._next - time.monotonic())

    @task
    def submit(self) -> None:
        start = time.perf_counter()
        with self.client.post("/CoverageEligibilityRequest/$submit", data=BODY, headers=HEADERS,
                              catch_response=True) as response:
            elapsed = (time.perf_counter() - start) * 1000
            header = response.headers.get("Server-Timing") or ""
            timing, own = PAYER.search(header), GATEWAY.search(header)
            if response.status_code != 200 or b'"CoverageEligibilityResponse"' not in (response.content or b""):
                reason = _reason(response)
                FAILURES[reason] += 1
                response.failure(reason)
            elif timing is None or own is None:
                FAILURES["no Server-Timing header"] += 1
                response.failure("no Server-Timing header")
            else:
                SAMPLES.append((time.time(), elapsed, float(timing.group(1)), float(own.group(1))))


def _reason(response) -> str:  # type: ignore[no-untyped-def]
    """A failure in words a reader can act on: the connection error, or the status with the OperationOutcome's
    issue code and text (the demo members are synthetic, so the text holds no one's health information)."""
    if not response.status_code:
        return f"no answer: {type(response.error).__name__}: {response.error}"[:200]
    try:
        issue = (json.loads(response.content or b"{}").get("issue") or [{}])[0]
    except (ValueError, AttributeError):
        return f"status {response.status_code}, not an OperationOutcome"
    text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or ""
    return f"status {response.status_code} {issue.get('code', '?')}: {text}"[:200]


@events.quitting.add_listener
def _dump(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    Path(os.environ["BENCH_SAMPLES"]).write_text(json.dumps({"samples": SAMPLES, "failures": dict(FAILURES)}))
