"""``make bench``: X12 reading and validation speed and memory, against a floor measured in the same run.

The floor is a plain streaming ``str.split`` tokenizer (decode a chunk, split on the terminator,
split each segment on the element separator, keep nothing). Results are printed and appended to
BENCHMARKS.md with the date and the machine.
"""

from __future__ import annotations

import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson

from bench import generate
from bench.generate import generate_271
from gateway.runtime import warm_up
from gateway.translate import load_tables
from gateway.translate.request_270 import build_270
from gateway.translate.response_271 import translate_271
from gateway.x12.reader import LoopEvent, X12Reader, read_x12
from gateway.x12.structure import element_limits
from gateway.x12.validate import validate_x12
from gateway.x12.writer import Envelope

ROOT = Path(__file__).resolve().parent.parent
LARGE_SUBSCRIBERS = 10_000
ROUNDS = 9


def floor_tokenizer(data: bytes, chunk: int = 1 << 20) -> int:
    """The floor: what any Python X12 reader must at least do."""
    count = 0
    buf = ""
    stream = io.BytesIO(data)
    while True:
        block = stream.read(chunk)
        if not block:
            break
        buf += block.decode()
        parts = buf.split("~")
        buf = parts.pop()
        for raw in parts:
            raw.split("*")
            count += 1
    return count


def reader_with_loop_tree(data: bytes) -> int:
    """Our reader building the loop tree, handing over each 2000C loop as it completes."""
    count = 0
    for event in X12Reader(data, detach=("2000C",)).events():
        if isinstance(event, LoopEvent):
            count += 1
    return count


def reader_with_objects(data: bytes) -> int:
    """As above, plus Loop/Segment objects for every subscriber loop (what a translator reads)."""
    count = 0
    for event in X12Reader(data, detach=("2000C",)).events():
        if isinstance(event, LoopEvent):
            count += len(event.loop.body)
    return count


def typical_read(data: bytes) -> int:
    result = read_x12(data)
    return len(result.transactions[0].root.body)


def median_seconds(fn: Callable[[bytes], object], data: bytes, runs: int) -> float:
    fn(data)  # warm caches (structure tables, maps)
    gc.collect()  # once: collecting before every run of a 50 us operation only measures cold caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


PEAK_SCRIPT = """
import json, pathlib, sys
import orjson

from gateway.runtime import warm_up
from gateway.translate import load_tables
from gateway.translate.request_270 import build_270
from gateway.translate.response_271 import translate_271
from gateway.x12.structure import element_limits
from gateway.x12.writer import Envelope
from gateway.x12.reader import X12Reader, LoopEvent
warm_up(validation=False)

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

before = peak = rss_kb()
loops = 0
with pathlib.Path(sys.argv[1]).open("rb") as handle:
    for event in X12Reader(handle, detach=("2000C",)).events():
        if isinstance(event, LoopEvent):
            loops += len(event.loop.body) > 0
            if loops % 250 == 0:
                peak = max(peak, rss_kb())
peak = max(peak, rss_kb())
print(json.dumps({"before_kb": before, "after_kb": peak, "loops": loops}))
"""


def peak_memory(text: str) -> dict[str, float]:
    """Peak RSS of a fresh process streaming the large file from disk (so the file is not in memory).

    RSS is sampled every 250 subscriber loops: ru_maxrss would report the parent's high-water mark.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".271", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, path], check=True, capture_output=True,
                             text=True, cwd=ROOT).stdout
    finally:
        os.unlink(path)
    data = json.loads(out)
    return {"peak_mb": data["after_kb"] / 1024, "interpreter_mb": data["before_kb"] / 1024,
            "growth_mb": (data["after_kb"] - data["before_kb"]) / 1024}


def translate_typical_271(data: bytes) -> int:
    tables = load_tables()
    size = 0
    for txn in read_x12(data).transactions:
        for result in translate_271(txn, tables, now="2026-01-15T09:30:00Z"):
            size += len(orjson.dumps(result.resource))
    return size


def request_to_270(payload: dict) -> int:
    envelope = Envelope(sender_id="GATEWAY01", receiver_id="PAYERX", interchange_control=1,
                        now=datetime(2026, 1, 15, 9, 30))
    return len(build_270(payload, load_tables(), envelope=envelope, limits=element_limits()).text)


def floor_json(payload: dict) -> int:
    return len(json.dumps(payload))


def median_of(fn: Callable[[], object], runs: int) -> float:
    fn()
    gc.collect()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


TRANSLATE_PEAK_SCRIPT = """
import json, pathlib, sys, time
import orjson
import orjson

from gateway.runtime import warm_up
from gateway.translate import load_tables
from gateway.translate.request_270 import build_270
from gateway.translate.response_271 import translate_271
from gateway.x12.structure import element_limits
from gateway.x12.writer import Envelope
from gateway.translate import load_tables
from gateway.translate.response_271 import translate_271_loop
from gateway.x12.reader import X12Reader, LoopEvent
warm_up(validation=False)
tables = load_tables()

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

before = peak = rss_kb()
responses = 0
start = time.perf_counter()
with pathlib.Path(sys.argv[1]).open("rb") as source, open("/dev/null", "wb") as sink:
    for event in X12Reader(source, detach=("2000C",)).events():
        if isinstance(event, LoopEvent):
            for result in translate_271_loop(event.transaction, event.loop, tables, now="2026-01-15T09:30:00Z"):
                sink.write(orjson.dumps(result.resource))
                responses += 1
            if responses % 250 == 0:
                peak = max(peak, rss_kb())
seconds = time.perf_counter() - start
print(json.dumps({"before_kb": before, "after_kb": max(peak, rss_kb()), "responses": responses,
                  "seconds": seconds}))
"""


def translation_section(large: bytes, large_text: str, typical: bytes, machine_name: str) -> list[str]:
    payload = generate.typical_request()
    floor_typical = median_seconds(floor_tokenizer, typical, 2000)
    translate_271_s = median_seconds(translate_typical_271, typical, 1000)
    json_floor = median_of(lambda: floor_json(payload), 2000)
    to_270 = median_of(lambda: request_to_270(payload), 1000)
    with tempfile.NamedTemporaryFile("w", suffix=".271", delete=False) as handle:
        handle.write(large_text)
        path = handle.name
    try:
        runs = [json.loads(subprocess.run([sys.executable, "-c", TRANSLATE_PEAK_SCRIPT, path], check=True,
                                          capture_output=True, text=True, cwd=ROOT).stdout) for _ in range(3)]
    finally:
        os.unlink(path)
    seconds = statistics.median(r["seconds"] for r in runs)
    peak = max(r["after_kb"] for r in runs) / 1024
    floor_large = median_seconds(floor_tokenizer, large, 5)
    return [
        "",
        f"#### Translation ({machine_name})",
        "",
        "| measure | median | floor in the same run | x floor |",
        "|---|---|---|---|",
        f"| typical request (Bundle, 5 resources) -> 270 | {to_270 * 1e6:.0f} us | json.dumps of the request "
        f"{json_floor * 1e6:.1f} us | {to_270 / json_floor:.1f} |",
        f"| typical 271 ({typical.count(b'~')} segments) -> CoverageEligibilityResponse JSON | "
        f"{translate_271_s * 1e6:.0f} us | str.split {floor_typical * 1e6:.1f} us | "
        f"{translate_271_s / floor_typical:.1f} |",
        f"| 271 with {LARGE_SUBSCRIBERS:,} subscribers -> {runs[0]['responses']:,} responses, streamed from disk "
        f"(median of 3 processes) | {seconds:.2f} s ({runs[0]['responses'] / seconds:,.0f} responses/s) | "
        f"str.split {floor_large:.3f} s | {seconds / floor_large:.0f} |",
        "",
        f"Peak memory translating the large file: {peak:.1f} MB RSS. Targets: typical 271 -> JSON under 400 us; "
        "the 10,000-subscriber file under 5 s and 150 MB. FHIR model validation is in the tests, not on this path.",
        "",
    ]


def store_writes(background: bool, transactions: int, folder: Path) -> list[float]:
    """Commit latencies (request stored, answer stored) of ``transactions`` eligibility transactions, in ms."""
    from datetime import UTC
    from datetime import datetime as moment

    from gateway.store import AuditStore

    request = json.loads((ROOT / "fixtures" / "fhir" / "requests" / "subscriber-generic.json").read_text())
    response = json.loads((ROOT / "fixtures" / "golden" / "responses" / "subscriber-generic.json").read_text())
    x12_request = (ROOT / "fixtures" / "golden" / "270" / "subscriber-generic.270").read_text()
    x12_response = generate_271(1)
    store = AuditStore(f"sqlite:///{folder / ('background.db' if background else 'writer.db')}",
                       background_checkpoints=background)
    latencies: list[float] = []
    try:
        for n in range(transactions):
            id, now = f"bench-{n}", moment.now(UTC)
            start = time.perf_counter()
            store.record_request(id, {**request, "id": id}, None, "ACME01", f"T{n}", now, x12_request=x12_request,
                                 sent_at=now)
            middle = time.perf_counter()
            time.sleep(0.0005)   # the payer's turn: the checkpointer gets the gaps a real exchange leaves
            answered = time.perf_counter()
            store.record_answer(id, x12_response=x12_response, response={**response, "id": f"r{n}"}, outcome=None,
                                aaa_codes=[], http_status=200, answered_at=now)
            latencies += [(middle - start) * 1000, (time.perf_counter() - answered) * 1000]
    finally:
        store.close()
    return latencies


def store_section(machine_name: str, transactions: int = 4000) -> list[str]:
    """Audit store commits with WAL checkpoints in the background (the default) against SQLite's own
    (the commit crossing 1,000 pages copies the log back before it returns), interleaved in one run."""
    results: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(2):
            for background in (False, True):
                results[background] += store_writes(background, transactions // 2, Path(folder) / str(round_))

    def q(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    rows = [f"| {'background thread (default)' if b else 'the committing writer (baseline)'} | "
            f"{q(v, 50):.2f} | {q(v, 99):.2f} | {q(v, 99.9):.2f} | {max(v):.2f} |" for b, v in
            ((False, results[False]), (True, results[True]))]
    return [
        "",
        f"#### Audit store commits, SQLite file ({machine_name})",
        "",
        f"{transactions:,} transactions (request stored, then answer stored: {2 * transactions:,} commits) per "
        "mode, in two interleaved rounds. Who checkpoints the WAL:",
        "",
        "| checkpoints by | p50 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"p99 ratio, writer / background: {q(results[False], 99) / q(results[True], 99):.1f}x. Under a gevent "
        "worker a commit that checkpoints holds up every request in flight in that worker.",
        "",
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    warm_up()  # as a server or the CLI does: static tables loaded once and frozen
    large_text = generate_271(LARGE_SUBSCRIBERS)
    large = large_text.encode()
    typical = generate_271(1).encode()
    large_segments = large_text.count("~")
    typical_segments = typical.count(b"~")
    mb = len(large) / 1e6

    # Interleaved: each round times the floor and then each reader, so drift in the machine's
    # speed hits both sides of a ratio alike; ratios are medians of the per-round ratios.
    contenders = (("str.split floor", floor_tokenizer), ("reader + loop tree", reader_with_loop_tree),
                  ("reader + loop tree + objects", reader_with_objects))
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for fn in (fn for _, fn in contenders):
        fn(large)
    gc.collect()
    for _ in range(ROUNDS):
        for name, fn in contenders:
            start = time.perf_counter()
            fn(large)
            times[name].append(time.perf_counter() - start)
    floor_times = times["str.split floor"]
    rows = []
    for name, _ in contenders:
        seconds = statistics.median(times[name])
        ratio = statistics.median(t / f for t, f in zip(times[name], floor_times, strict=True))
        rows.append((name, seconds, large_segments / seconds / 1e6, mb / seconds, ratio))

    typical_floor = median_seconds(floor_tokenizer, typical, 2000)
    typical_tree = median_seconds(typical_read, typical, 2000)
    typical_validation = median_seconds(validate_x12, typical, 300)
    memory = peak_memory(large_text)

    today = datetime.now().strftime("%Y-%m-%d")
    lines = [
        f"### {today}: X12 reader and validation ({machine()})",
        "",
        f"Large file: one 271 answering {LARGE_SUBSCRIBERS:,} subscribers, {large_segments:,} segments, "
        f"{mb:.1f} MB. Medians of {ROUNDS} interleaved rounds; x floor = median of the per-round ratios.",
        "",
        "| measure | median s | M segments/s | MB/s | x floor |",
        "|---|---|---|---|---|",
        *(f"| {n} | {s:.3f} | {segs:.2f} | {rate:.1f} | {ratio:.2f} |" for n, s, segs, rate, ratio in rows),
        "",
        f"Typical 271 ({typical_segments} segments, one patient), medians of 2,000 runs (validation: 300):",
        "",
        "| measure | median |",
        "|---|---|",
        f"| str.split floor | {typical_floor * 1e6:.1f} us |",
        f"| read + loop tree + objects | {typical_tree * 1e6:.1f} us |",
        f"| implementation-guide validation (pyx12, maps cached) | {typical_validation * 1e3:.2f} ms |",
        "",
        f"Peak memory streaming the large file from disk in a fresh process: {memory['peak_mb']:.1f} MB RSS "
        f"({memory['interpreter_mb']:.1f} MB interpreter and imports, +{memory['growth_mb']:.1f} MB while reading).",
        "",
    ]
    lines.extend(translation_section(large, large_text, typical, machine_name=machine()))
    lines.extend(store_section(machine_name=machine()))
    report = "\n".join(lines)
    print(report)
    bench_file = ROOT / "BENCHMARKS.md"
    existing = bench_file.read_text() if bench_file.exists() else "# Benchmarks\n\nRun with `make bench`.\n\n"
    bench_file.write_text(existing.rstrip("\n") + "\n\n" + report)
    # end to end: locust -> gateway -> simulator (BENCH_LOAD_SECONDS, default 300; 0 skips it)
    if int(os.environ.get("BENCH_LOAD_SECONDS", "300")) > 0:
        from bench import load

        load.main([])


if __name__ == "__main__":
    main()
