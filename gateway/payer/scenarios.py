"""Fault injection for tests and demos: deterministic misbehaviour per member id or for every request.

Magic member ids (documented in the simulator README) always trigger their fault; ``POST /scenarios``
adds rules at run time. A rule: ``{"memberid": "*" or an id, "fault": ..., "seconds": n, "jitter": n,
"times": n}``; ``latency`` and ``timeout`` require ``seconds`` (> 0). Faults: ``latency`` (answer after
seconds +- jitter), ``timeout`` (hold the request
until the client gives up), ``http-500``, ``http-503``, ``aaa-42`` (AAA*Y**42*R: unable to respond),
``malformed`` (a 271 that is not X12), ``reject-999`` (a 999 rejecting the 270), ``ta1`` (a TA1
rejecting the interchange), ``wrong-trace`` (a 271 whose TRN does not echo the request's),
``bad-count`` (a readable 271 whose SE01 segment count is wrong),
``one-at-a-time`` (a second concurrent request on the simulator is refused with 503, as CMS HETS does).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import quoted

FAULTS = {"latency", "timeout", "http-500", "http-503", "aaa-42", "malformed", "reject-999", "ta1", "wrong-trace",
          "bad-count", "one-at-a-time"}
# member ids that always misbehave (the simulator README lists them)
MAGIC_IDS = {
    "SIMTIMEOUT01": {"fault": "timeout", "seconds": 30},
    "SIMSLOW00002": {"fault": "latency", "seconds": 2, "jitter": 0},
    "SIMHTTP50003": {"fault": "http-500"},
    "SIMHTTP50304": {"fault": "http-503"},
    "SIMAAA420005": {"fault": "aaa-42"},
    "SIMBAD271006": {"fault": "malformed"},
    "SIMREJ999007": {"fault": "reject-999"},
    "SIMTA1000008": {"fault": "ta1"},
    "SIMTRACE0009": {"fault": "wrong-trace"},
    "SIMCOUNT0010": {"fault": "bad-count"},
}


@dataclass
class Rule:
    memberid: str
    fault: str
    seconds: float = 0.0
    jitter: float = 0.0
    times: int | None = None    # None: for good

    def to_dict(self) -> dict[str, Any]:
        return {"memberid": self.memberid, "fault": self.fault, "seconds": self.seconds, "jitter": self.jitter,
                "times": self.times}


def parse_rule(data: Any) -> tuple[Rule | None, list[dict[str, str]]]:
    """A rule from JSON, or the problems with it (path and message)."""
    problems: list[dict[str, str]] = []
    if not isinstance(data, dict):
        return None, [{"path": "$", "message": "must be a JSON object"}]
    fault = data.get("fault")
    if not isinstance(fault, str) or fault not in FAULTS:
        problems.append({"path": "fault", "message": f"must be one of {sorted(FAULTS)}"})
    memberid = data.get("memberid", "*")
    if not isinstance(memberid, str) or not memberid.strip():
        problems.append({"path": "memberid", "message": "must be a member id, or \"*\" (every request)"})
    numbers = {}
    for name in ("seconds", "jitter"):
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 120:   # NaN too
            problems.append({"path": name, "message": "must be a number of seconds from 0 to 120"})
        else:
            numbers[name] = float(value)
    if fault in ("latency", "timeout") and ("seconds" not in data or numbers.get("seconds") == 0):
        # without it the rule was stored with 0 and answered at once: a "timeout" that never timed out
        problems.append({"path": "seconds", "message": f"a {fault} rule needs seconds (more than 0): how long the "
                         "request is held" + (" (longer than the client's timeout; CORE's budget is 20 s)"
                                              if fault == "timeout" else "")})
    times = data.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        problems.append({"path": "times", "message": "must be a positive whole number (or left out)"})
    unknown = set(data) - {"memberid", "fault", "seconds", "jitter", "times"}
    problems.extend({"path": k, "message": f"unknown field {quoted(k)}"} for k in sorted(unknown))
    if problems:
        return None, problems
    return Rule(memberid.strip(), fault, numbers.get("seconds", 0.0), numbers.get("jitter", 0.0), times), []


@dataclass
class ScenarioBook:
    """The active rules; ``pick`` finds the fault for a member id (magic ids first, then rules in order)."""

    rules: list[Rule] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    seed: int = 270

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def add(self, rule: Rule) -> None:
        with self.lock:
            self.rules.append(rule)

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def serial(self) -> bool:
        """True while a one-at-a-time rule is active."""
        with self.lock:
            return any(r.fault == "one-at-a-time" for r in self.rules)

    def pick(self, memberids: list[str]) -> Rule | None:
        for memberid in memberids:
            if memberid in MAGIC_IDS:
                return Rule(memberid, **MAGIC_IDS[memberid])
        with self.lock:
            for rule in self.rules:
                if rule.memberid == "*" or rule.memberid in memberids:
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times == 0:
                            self.rules.remove(rule)
                    return rule
        return None

    def delay(self, rule: Rule) -> float:
        """Seconds to wait: fixed, or jittered deterministically (a seeded generator)."""
        with self.lock:
            spread = self._random.uniform(-rule.jitter, rule.jitter) if rule.jitter else 0.0
        return max(rule.seconds + spread, 0.0)
