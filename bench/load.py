"""End-to-end load: locust -> gateway (gunicorn) -> CORE SOAP -> payer simulator (zero latency).

``python -m bench.load [--seconds N] [--rate R]``; ``make bench`` runs it after the unit benchmarks.
Reports achieved round trips per second, the gateway's overhead (round trip minus the payer's time
from ``Server-Timing``) at p50/p95/p99, errors, and the gateway's memory (RSS of all its processes)
sampled through the run, against the target: 300 round trips/s, p99 overhead under 20 ms, no errors,
flat memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import requests
import yaml

from gateway import serving

ROOT = Path(__file__).resolve().parent.parent
REQUEST = ROOT / "fixtures" / "fhir" / "requests" / "subscriber-generic.json"
TARGET_RPS = 300
TARGET_P99_MS = 20.0
SIMULATOR_CONCURRENCY = 200
_GUNICORN_LINE = re.compile(r"\[[^]]*\] \[\d+\] \[(?P<level>[A-Z]+)\] (?P<message>.*)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    problem = serving.wait_ready(url, process, seconds)
    if problem:
        raise SystemExit(f"bench.load: {problem}")


def rss_kb(root_pid: int) -> int:
    """Resident memory of a process and its children (gunicorn master + workers), in kB."""
    total = 0
    pids = [root_pid]
    try:
        children = Path(f"/proc/{root_pid}/task/{root_pid}/children").read_text().split()
        pids += [int(p) for p in children]
    except OSError:
        pass
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU time of a process and its children so far (clock ticks from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [root_pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{root_pid}/task/{root_pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])   # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(seconds: int, rate: int, users: int, workers: int, threads: int, worker_class: str,
        database: str | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fhir-x12-load-"))
    token = secrets.token_urlsafe(24)
    payer_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "FHIR_X12_LOG_LEVEL": "WARNING"}
    cli = [sys.executable, "-m", "gateway.cli"]
    payer = subprocess.Popen([*cli, "payer", "serve", "--port", str(payer_port), "--seed",
                              str(ROOT / "fixtures" / "members"), "--database", f"sqlite:///{work / 'payer.db'}",
                              "--validation", "structure", "--worker-class", "gevent"],
                             env=env, stdout=subprocess.DEVNULL, stderr=(work / "payer.log").open("wb"))
    # the shipped defaults, but room for the offered load: the payer's concurrency limit is a payer's constraint,
    # not the gateway overhead this run measures (the workers split it between them)
    routing = yaml.safe_load((ROOT / "mappings" / "routing.yaml").read_text())
    routing["defaults"]["concurrency"] = SIMULATOR_CONCURRENCY
    (work / "routing.yaml").write_text(yaml.safe_dump({"defaults": routing["defaults"], "payers": {}}))
    gateway_env = {**env, "FHIR_X12_TOKENS": token, "FHIR_X12_PAYER_URL": f"http://127.0.0.1:{payer_port}/core/soap",
                   "FHIR_X12_DATABASE_URL": database or f"sqlite:///{work / 'gateway.db'}",
                   "FHIR_X12_ROUTING": str(work / "routing.yaml")}
    gateway = subprocess.Popen([*cli, "serve", "--port", str(gateway_port), "--workers", str(workers),
                                "--threads", str(threads), "--worker-class", worker_class], env=gateway_env,
                               stdout=subprocess.DEVNULL, stderr=(work / "gateway.log").open("wb"))
    samples_file = work / "samples.json"
    memory: list[tuple[float, int]] = []
    cpu_track: list[tuple[float, float, float]] = []   # (wall clock, gateway CPU s, simulator CPU s) so far
    try:
        wait_ready(f"http://127.0.0.1:{payer_port}/scenarios", payer)
        wait_ready(f"http://127.0.0.1:{gateway_port}/readyz", gateway)
        warm = requests.post(f"http://127.0.0.1:{gateway_port}/CoverageEligibilityRequest/$submit",
                             data=REQUEST.read_bytes(), timeout=30,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
        if warm.status_code != 200:
            raise SystemExit(f"bench.load: warm-up request failed: {warm.status_code} {warm.text[:300]}")
        probe_before = _probe(f"http://127.0.0.1:{gateway_port}", token, gateway.pid, payer.pid)
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
             "--host", f"http://127.0.0.1:{gateway_port}", "-u", str(users), "-r", str(users),
             "--run-time", f"{seconds}s", "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5"],
            env={**env, "BENCH_REQUEST": str(REQUEST), "BENCH_TOKEN": token, "BENCH_SAMPLES": str(samples_file),
                 "BENCH_USER_RPS": str(rate / users)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.time()
        cpu_before = {name: cpu_seconds(p.pid) for name, p in (("gateway", gateway), ("payer", payer))}
        cpu = dict.fromkeys(("gateway", "payer", "locust"), 0.0)
        while locust.poll() is None:
            memory.append((time.time() - started, rss_kb(gateway.pid)))
            cpu_track.append((time.time(), cpu_seconds(gateway.pid), cpu_seconds(payer.pid)))
            cpu["locust"] = max(cpu["locust"], cpu_seconds(locust.pid))
            time.sleep(1 if seconds < 30 else 5)
        for name, process in (("gateway", gateway), ("payer", payer)):
            cpu[name] = cpu_seconds(process.pid) - cpu_before[name]
        summary = locust.stdout.read() if locust.stdout else ""
        probe_after = _probe(f"http://127.0.0.1:{gateway_port}", token, gateway.pid, payer.pid)
        recorded = json.loads(samples_file.read_text()) if samples_file.exists() else {}
        samples, reasons = recorded.get("samples", []), recorded.get("failures", {})
    finally:
        for process in (gateway, payer):
            serving.stop(process)
        logged = {name: _warnings(work / f"{name}.log") for name in ("gateway", "payer")}
        shutil.rmtree(work, ignore_errors=True)
    failures = _failures(summary)
    # steady state: leave out the first 10 % (ramp-up, first connections)
    t0 = min((s[0] for s in samples), default=0.0)
    t1 = max((s[0] for s in samples), default=0.0)
    steady = [s for s in samples if s[0] >= t0 + 0.1 * (t1 - t0)]
    span = (t1 - (t0 + 0.1 * (t1 - t0))) or 1.0
    overhead = [max(0.0, total - payer_ms) for _, total, payer_ms, _ in steady]
    inside = [own for _, _, _, own in steady]
    total = [total for _, total, _, _ in steady]
    payer_ms = [p for _, _, p, _ in steady]
    first = [kb for t, kb in memory if t <= 60] or [0]
    last = [kb for t, kb in memory if t >= memory[-1][0] - 60] if memory else [0]
    return {"seconds": seconds, "target_rps": rate, "users": users, "workers": workers, "threads": threads,
            "worker_class": worker_class, "store": "PostgreSQL" if database else "SQLite",
            "requests": len(samples), "rps": len(steady) / span, "failures": failures,
            "overhead_ms": {q: percentile(overhead, q) for q in (50, 95, 99)},
            "inside_ms": {q: percentile(inside, q) for q in (50, 95, 99)},
            "round_trip_ms": {q: percentile(total, q) for q in (50, 95, 99)},
            "payer_ms": {q: percentile(payer_ms, q) for q in (50, 99)},
            "memory_mb": {"first_minute": statistics.median(first) / 1024,
                          "last_minute": statistics.median(last) / 1024,
                          "max": max(kb for _, kb in memory) / 1024 if memory else 0.0},
            "cpu_ms_per_request": {k: 1000 * v / max(len(samples), 1) for k, v in cpu.items()},
            "minutes": _per_minute(samples, cpu_track),
            "probe": {"before": probe_before, "after": probe_after},
            "failure_reasons": reasons, "logged": logged,
            "locust": summary[-3000:]}


def _probe(base: str, token: str, gateway_pid: int, payer_pid: int, count: int = 200) -> dict[str, float]:
    """The machine's speed now: CPU per round trip of one client sending requests one after another (no load,
    no queues). Taken before and after the run, it shows how much the machine itself drifted."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    body = REQUEST.read_bytes()
    session.post(f"{base}/CoverageEligibilityRequest/$submit", data=body, timeout=30)
    gateway, payer, start = cpu_seconds(gateway_pid), cpu_seconds(payer_pid), time.perf_counter()
    for _ in range(count):
        session.post(f"{base}/CoverageEligibilityRequest/$submit", data=body, timeout=30)
    wall = time.perf_counter() - start
    session.close()
    return {"gateway": 1000 * (cpu_seconds(gateway_pid) - gateway) / count,
            "payer": 1000 * (cpu_seconds(payer_pid) - payer) / count, "wall": 1000 * wall / count}


def _per_minute(samples: list, cpu_track: list) -> list[dict]:
    """Each minute of the run: round trips/s, client-side overhead p50/p99, CPU ms per round trip."""
    if not samples:
        return []
    start = samples[0][0]
    rows = []
    for minute in range(int((samples[-1][0] - start) // 60) + 1):
        lo, hi = start + 60 * minute, start + 60 * (minute + 1)
        window = [s for s in samples if lo <= s[0] < hi]
        marks = [c for c in cpu_track if lo <= c[0] < hi]
        if len(window) < 10:
            continue
        span = (window[-1][0] - window[0][0]) or 1.0
        overhead = [max(0.0, total - payer) for _, total, payer, _ in window]
        cpu = {"gateway": 0.0, "payer": 0.0}
        if len(marks) >= 2:
            done = len([s for s in samples if marks[0][0] <= s[0] < marks[-1][0]]) or 1
            cpu = {"gateway": 1000 * (marks[-1][1] - marks[0][1]) / done,
                   "payer": 1000 * (marks[-1][2] - marks[0][2]) / done}
        rows.append({"minute": minute + 1, "rps": len(window) / span, "p50": percentile(overhead, 50),
                     "p99": percentile(overhead, 99), **cpu})
    return rows


def _warnings(path: Path) -> Counter[str]:
    """How often each warning or error was logged by a server during the run (the logs are JSON lines at
    WARNING; anything else a process wrote, a traceback say, is counted by its last line)."""
    found: Counter[str] = Counter()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            if record.get("level") not in ("INFO", "DEBUG"):   # gunicorn's own lines are JSON too, at INFO
                found[f"{record.get('level', '?')} {record.get('logger', '?')}: {record.get('message', '')}"[:200]] += 1
            continue
        server = _GUNICORN_LINE.match(line)   # gunicorn's own: "[time] [pid] [LEVEL] message"
        if server:
            if server["level"] not in ("INFO", "DEBUG"):
                found[f"{server['level']} gunicorn: {server['message']}"[:200]] += 1
        elif line.strip() and not line.startswith((" ", "\t", "Traceback", "fhir-x12: ")):   # not start-up notes
            found[line.strip()[:200]] += 1
    return found


def _failures(summary: str) -> int:
    """The failure count from locust's aggregated summary line."""
    for line in summary.splitlines():
        parts = line.split()
        if parts[:1] == ["Aggregated"] and len(parts) > 2:
            try:
                return int(parts[2].split("(")[0])
            except ValueError:
                return -1
    return -1


def report(result: dict) -> str:
    o, r, m = result["overhead_ms"], result["round_trip_ms"], result["memory_mb"]
    c = result["cpu_ms_per_request"]
    i = result["inside_ms"]
    pb, pa = result["probe"]["before"], result["probe"]["after"]
    minutes = ""
    if len(result.get("minutes", [])) > 1:
        minutes = "\nMinute by minute (client-side overhead; CPU per round trip):\n\n" + \
            "| minute | round trips/s | overhead p50 / p99 ms | CPU gateway / simulator ms |\n|---|---|---|---|\n" + \
            "".join(f"| {m['minute']} | {m['rps']:.0f} | {m['p50']:.1f} / {m['p99']:.1f} | "
                    f"{m['gateway']:.1f} / {m['payer']:.1f} |\n" for m in result["minutes"])
    growth = m["last_minute"] / m["first_minute"] if m["first_minute"] else float("nan")
    ok = (result["rps"] >= TARGET_RPS and o[99] < TARGET_P99_MS and result["failures"] == 0 and growth < 1.10)
    cpu = platform.processor() or platform.machine()
    where = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    threads = f" x {result['threads']} threads" if result["worker_class"] == "gthread" else ""
    return f"""
#### {datetime.now().date().isoformat()}: end-to-end load ({where})

locust ({result['users']} users, Poisson arrivals at {result['target_rps']} requests/s in all) -> gateway under
gunicorn ({result['workers']} {result['worker_class']} workers{threads}, {result['store']} audit store) -> CORE SOAP
-> payer simulator (gunicorn, zero latency; its route allows {SIMULATOR_CONCURRENCY} calls in flight), all on this
machine for {result['seconds']} s. Overhead = round trip
seen by the client minus the payer's time (the gateway's `Server-Timing: payer;dur=`); the first 10 % of the
run is left out.

| measure | value |
|---|---|
| round trips | {result['requests']:,} ({result['rps']:.0f}/s steady; target >= {TARGET_RPS}) |
| failures | {result['failures']} |
| gateway overhead seen by the client, p50 / p95 / p99 | {o[50]:.1f} / {o[95]:.1f} / {o[99]:.1f} ms (target p99 < \
{TARGET_P99_MS:.0f} ms) |
| gateway's own time (`Server-Timing: gateway;dur=`), p50 / p95 / p99 | {i[50]:.1f} / {i[95]:.1f} / {i[99]:.1f} ms |
| round trip p50 / p95 / p99 | {r[50]:.1f} / {r[95]:.1f} / {r[99]:.1f} ms |
| payer (simulator) p50 / p99 | {result['payer_ms'][50]:.1f} / {result['payer_ms'][99]:.1f} ms |
| CPU per round trip: gateway / simulator / locust | {c['gateway']:.1f} / {c['payer']:.1f} / {c['locust']:.1f} ms |
| one client alone, before / after the run: gateway CPU per round trip | {pb['gateway']:.1f} / {pa['gateway']:.1f} ms \
(simulator {pb['payer']:.1f} / {pa['payer']:.1f} ms) |
| gateway RSS first minute / last minute / max | {m['first_minute']:.0f} / {m['last_minute']:.0f} / \
{m['max']:.0f} MB ({growth:.2f}x) |

{minutes}{_explained(result)}
Targets {'met' if ok else 'NOT met'}.
"""


def _explained(result: dict) -> str:
    """What failed and what the servers logged at WARNING or above, so a failure count comes with its cause."""
    text = ""
    if result.get("failure_reasons"):
        text += "\nFailures seen by the client:\n\n| count | reason |\n|---|---|\n" + "".join(
            f"| {n} | {reason.replace('|', '/')} |\n" for reason, n in
            sorted(result["failure_reasons"].items(), key=lambda item: -item[1]))
    for name, counts in (result.get("logged") or {}).items():
        if counts:
            text += f"\nLogged by the {name} (WARNING and above):\n\n| count | record |\n|---|---|\n" + "".join(
                f"| {n} | {record.replace('|', '/')} |\n" for record, n in counts.most_common(10))
    return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_LOAD_SECONDS", "300")))
    parser.add_argument("--rate", type=int, default=TARGET_RPS, help="requests/s offered in all (Poisson arrivals)")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--worker-class", default="gevent", choices=["gthread", "gevent"])
    parser.add_argument("--database", help="audit store URL (default: a fresh SQLite file)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.rate, args.users, args.workers, args.threads, args.worker_class,
                 args.database)
    text = report(result)
    print(text)
    if not args.no_record:
        with (ROOT / "BENCHMARKS.md").open("a", encoding="utf-8") as handle:
            handle.write(text)
    return result


if __name__ == "__main__":
    main()
