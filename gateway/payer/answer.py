"""Member data -> 271: answer a 270 the way a payer does (pure, table-driven).

Finds the member (and dependent) by member id, last name (CAQH CORE 258 normalisation), first name
and birth date; returns one AAA per element that failed (CORE 259); answers only the patient asked
about: plan and eligibility dates, EB*1/EB*6 per coverage, deductible and out-of-pocket
accumulators as totals for their period plus the remaining amount, visit limits, copays and
coinsurance, and prior-authorisation rules with a 2120 utilization-management entity and its URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from gateway.mappings import load_yaml
from gateway.x12.model import Delimiters, Loop, Segment, Transaction
from gateway.x12.writer import Envelope, Value, X12Writer, application_code, format_amount, x12_date

# URLs carry ':' so the simulator's component separator is '>' (a common set: * ^ > ~)
PAYER_DELIMITERS = Delimiters("*", "^", ">", "~")


@dataclass
class Inquiry:
    """What one patient request (a 2000C, or a 2000D under it) asks."""

    subscriber: dict[str, str]
    dependent: dict[str, str] | None
    traces: list[list[str]]
    service_date: date
    service_types: list[str]
    procedures: list[tuple[str, str]]
    provider: list[str]
    payer: list[str]
    eq_count: int = 0
    today: date | None = None   # when the inquiry was answered: the inquiry period runs from it
    # (date of service, service types, procedures) per distinct date: an EQ's own 2110 DTP*291 overrides the
    # patient's 2100 one for that EQ; empty means one group, service_date with all the service types
    by_date: list[tuple[date, list[str], list[tuple[str, str]]]] = field(default_factory=list)

    def groups(self) -> list[tuple[date, list[str], list[tuple[str, str]]]]:
        """What is asked, per date of service (one group unless the EQs carry different dates)."""
        return self.by_date or [(self.service_date, self.service_types, self.procedures)]


@dataclass
class Answer:
    """The 271 body segments for one inquiry, and the reject codes (empty when the member was found)."""

    segments: list[tuple[str, list[Value]]] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)


def normalise_last_name(name: str, config: dict[str, Any]) -> str:
    """CAQH CORE 258: drop suffixes/prefixes separated from the name, then punctuation and spaces."""
    words = name.upper().replace(",", " ").replace(".", " ").split()
    while len(words) > 1 and words[-1] in config["name_suffixes"]:
        words.pop()
    joined = " ".join(words)
    for ch in config["name_strip_characters"]:
        joined = joined.replace(ch, "")
    return joined


def _name_of(seg: Segment | None) -> dict[str, str]:
    if seg is None:
        return {}
    return {"last": seg.get(3), "first": seg.get(4), "id": seg.get(9), "qualifier": seg.get(8)}


def inquiries(txn: Transaction, today: date) -> list[Inquiry]:
    """One Inquiry per patient the 270 asks about."""
    found = []
    for source in txn.root.loops_of("2000A"):
        payer = source.loop("2100A").segment("NM1") if source.loop("2100A") else None
        for receiver in source.loops_of("2000B"):
            provider = receiver.loop("2100B").segment("NM1") if receiver.loop("2100B") else None
            for subscriber in receiver.loops_of("2000C"):
                dependents = subscriber.loops_of("2000D") or [None]
                for dependent in dependents:
                    found.append(_inquiry(subscriber, dependent, payer, provider, today))
    return found


def _inquiry(subscriber: Loop, dependent: Loop | None, payer: Segment | None, provider: Segment | None,
             today: date) -> Inquiry:
    sub_name = subscriber.loop("2100C")
    patient_name = dependent.loop("2100D") if dependent is not None else sub_name
    sub = _name_of(sub_name.segment("NM1") if sub_name else None)
    if sub_name is not None and sub_name.segment("DMG") is not None:
        sub["dob"] = sub_name.segment("DMG").get(2)
    dep = None
    if dependent is not None and patient_name is not None:
        dep = _name_of(patient_name.segment("NM1"))
        if patient_name.segment("DMG") is not None:
            dep["dob"] = patient_name.segment("DMG").get(2)
    traces = [s.parts[1:] for lp in (subscriber, dependent) if lp is not None for s in lp.segments_of("TRN")]
    service_date = today
    service_types: list[str] = []
    procedures: list[tuple[str, str]] = []
    by_date: dict[date, tuple[list[str], list[tuple[str, str]]]] = {}
    eq_count = 0
    for loop in [lp for lp in (patient_name,) if lp is not None]:
        service_date = _plan_date(loop) or today
        for inquiry in loop.loops:
            eq_date = _plan_date(inquiry) or service_date   # 2110 DTP*291: this EQ's own date of service
            types, procs = by_date.setdefault(eq_date, ([], []))
            for eq in inquiry.segments_of("EQ"):
                eq_count += 1
                service_types.extend(eq.repetitions(1))
                types.extend(eq.repetitions(1))
                if eq.get(2):
                    comps = eq.components(2)
                    procedures.append((comps[0], comps[1] if len(comps) > 1 else ""))
                    procs.append(procedures[-1])
    groups = [(d, t, p) for d, (t, p) in by_date.items()]
    if len(groups) == 1:
        service_date = groups[0][0]
    return Inquiry(sub, dep, traces, service_date, service_types, procedures,
                   provider.parts if provider is not None else [], payer.parts if payer is not None else [],
                   eq_count, today, groups if len(groups) > 1 else [])


def _plan_date(loop: Loop) -> date | None:
    """The (first) date of a loop's DTP*291 (D8, or the start of an RD8); None without one.

    An impossible date (20250230) is the 999's to report; unchecked (structure-only validation), it is ignored."""
    for dtp in loop.segments_of("DTP"):
        if dtp.get(1) == "291" and len(dtp.get(3)) >= 8 and dtp.get(3)[:8].isdigit():
            return _parse_date(dtp.get(3)[:8])
    return None


def _parse_date(value: str | None) -> date | None:
    if not value:
        return None
    return _date_of_text(value) if type(value) is str else _date_of(value)


@lru_cache(maxsize=1024)
def _date_of_text(value: str) -> date | None:
    """``_date_of`` remembered: an answer reads the same few coverage and accumulator dates on every request."""
    return _date_of(value)


def _date_of(value: str) -> date | None:
    digits = value.replace("-", "")
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def find_member(inquiry: Inquiry, members: dict[str, dict[str, Any]], config: dict[str, Any]
                ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
    """(subscriber record, dependent record or None, reject keys): one reject per failed element."""
    sub = inquiry.subscriber
    record = members.get(sub.get("id", "")) if sub.get("id") else None
    dependent_by_id = None
    if record is None and sub.get("id"):
        # a dependent with a member id of their own is sent as the subscriber
        for candidate in members.values():
            for dep in candidate.get("dependents") or []:
                if dep.get("depmemberid") and dep["depmemberid"] == sub["id"]:
                    record, dependent_by_id = candidate, dep
    rejects: list[str] = []
    if record is None:
        if sub.get("id"):
            return None, None, ["subscriber_id"]
        matches = [m for m in members.values()
                   if normalise_last_name(m.get("lastname", ""), config) == normalise_last_name(sub.get("last", ""),
                                                                                                config)
                   and (m.get("firstname", "").upper() == sub.get("first", "").upper())
                   and (m.get("dob", "").replace("-", "") == sub.get("dob", ""))]
        if len(matches) != 1:
            return None, None, ["subscriber_not_found"]
        record = matches[0]
    person = dependent_by_id or record
    if sub.get("last") and normalise_last_name(person.get("lastname", ""), config) != normalise_last_name(
            sub["last"], config):
        rejects.append("subscriber_name")
    if sub.get("first") and person.get("firstname", "").upper() != sub["first"].upper():
        rejects.append("subscriber_name")
    if sub.get("dob") and _parse_date(sub["dob"]) is None:
        rejects.append("invalid_birth_date")
    elif sub.get("dob") and person.get("dob", "").replace("-", "") != sub["dob"]:
        rejects.append("birth_date")
    if rejects:
        return record, None, list(dict.fromkeys(rejects))
    period = _outside_inquiry_period(inquiry, config)
    if period:
        # the date belongs to the patient: a dependent asked about in 2100D gets it there (2000D, with its TRN)
        patient_in_2100d = inquiry.dependent is not None and dependent_by_id is None
        return record, None, [f"dependent_{period}" if patient_in_2100d else period]
    if dependent_by_id is not None:
        return record, dependent_by_id, []
    if inquiry.dependent is None:
        return record, None, []
    want = inquiry.dependent
    candidates = [d for d in record.get("dependents") or []
                  if d.get("firstname", "").upper() == want.get("first", "").upper()]
    if not candidates:
        return record, None, ["dependent_not_found"]
    def same_last(dep: dict[str, Any]) -> bool:   # CORE 258, as for the subscriber; no last name sent: not checked
        return not want.get("last") or normalise_last_name(dep.get("lastname", ""), config) == normalise_last_name(
            want["last"], config)

    exact = [d for d in candidates if not want.get("dob") or d.get("dob", "").replace("-", "") == want["dob"]]
    named = [d for d in exact if same_last(d)]
    if named:
        return record, named[0], []
    # one AAA per element that failed (CORE 259): the birth date, the last name (2100D AAA 65), or both
    rejects = [] if exact else ["dependent_birth_date"]
    if not any(same_last(d) for d in (exact or candidates)):
        rejects.append("dependent_name")
    return record, None, rejects


def _outside_inquiry_period(inquiry: Inquiry, config: dict[str, Any]) -> str | None:
    """``date_in_future`` (AAA 63) for a service date after the end of the month ``months_ahead`` from today,
    ``date_not_in_period`` (AAA 62) for one more than ``months_back`` before today; None inside the period."""
    period, today = config.get("inquiry_period"), inquiry.today
    if not period or today is None:
        return None
    first_day, last_day = _inquiry_days(today, int(period.get("months_ahead", 0)), int(period.get("months_back", 24)))
    # every date asked about (an EQ's own included) must be inside; the patient-level AAA answers them all
    dates = [d for d, _, _ in inquiry.groups()]
    if any(d > last_day for d in dates):
        return "date_in_future"
    if any(d < first_day for d in dates):
        return "date_not_in_period"
    return None


@lru_cache(maxsize=64)
def _inquiry_days(today: date, months_ahead: int, months_back: int) -> tuple[date, date]:
    """The first and last day a service date may be on, answered ``today`` (remembered: one day's requests all ask
    the same)."""
    ahead = today.month + months_ahead   # the month after the last one, 0 = January this year
    last_day = date(today.year + ahead // 12, ahead % 12 + 1, 1) - timedelta(days=1)
    back = today.year * 12 + today.month - 1 - months_back
    return date(back // 12, back % 12 + 1, 1), last_day


def _category(coverage: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The coverage's category from ``answers.yaml``: its primary service type and those it answers for (an
    unknown category answers for 30 alone)."""
    return config["categories"].get(str(coverage.get("covtypename", "")).upper()) or \
        {"primary": "30", "service_types": ["30"]}


def _coverage_dates(coverage: dict[str, Any]) -> tuple[date | None, date | None]:
    """A coverage's effective and term dates (None where absent or unreadable), read once per answer."""
    return _parse_date(coverage.get("coveffdate")), _parse_date(coverage.get("covtermdate"))


def _coverage_rows(coverage: dict[str, Any], dates: tuple[date | None, date | None], asked: list[str],
                   config: dict[str, Any], served: date, generic: bool) -> list[tuple[str, list[Value]]]:
    category = _category(coverage, config)
    primary, types = category["primary"], category["service_types"]
    effective, terminated = dates
    if terminated is not None and terminated.year >= 9999:  # an open-ended coverage
        terminated = None
    active = (effective is None or effective <= served) and (terminated is None or served <= terminated)
    status = "1" if active else "6"
    included = set(types)   # each of a dozen generic (or the asked) types is looked up in it
    if generic:
        answered = [t for t in config["generic_service_types"] if t in included]
    else:
        answered = [t for t in asked if t in included]
    rows: list[tuple[str, list[Value]]] = [("EB", [status, "", primary, "", coverage.get("covtypedesc", "")])]
    if not active and terminated is not None:
        rows.append(("DTP", ["357", "D8", x12_date(terminated)]))
    others = [t for t in answered if t != primary]
    if others and active:
        rows.extend(("EB", [status, "", chunk]) for chunk in _repetitions(others))
    return rows


@lru_cache(maxsize=1)
def _eb03_repetitions() -> int:
    """How many service types one EB03 may repeat (``mappings/x12/segments.yaml``: 99)."""
    eb03 = load_yaml("x12/segments.yaml")["EB"]["elements"][2]
    return int(eb03.get("repeat", 1))


def _repetitions(types: list[str]) -> list[list[str]]:
    """Service types in EB03s of at most the repetitions the element allows (17 EQs of 10 types each, answered in
    one EB, made an EB03 of 102 repetitions and an invalid 271)."""
    limit = _eb03_repetitions()
    return [types[i:i + limit] for i in range(0, len(types), limit)]


def _date_range(daterange: Any) -> tuple[date, date] | None:
    """An accumulator's ``daterange`` (``YYYY-MM-DD/YYYY-MM-DD``, or ``CCYYMMDD-CCYYMMDD`` as the API takes it) as
    (start, end), or None when it has none or cannot be read."""
    return _date_range_of(str(daterange or ""))


@lru_cache(maxsize=1024)
def _date_range_of(text: str) -> tuple[date, date] | None:
    """``_date_range`` of the text, remembered (the same few accumulator periods on every request)."""
    start, sep, end = text.partition("/") if "/" in text else text.partition("-") if len(text) == 17 else \
        (text, "", "")
    start_d, end_d = _parse_date(start.strip()), _parse_date(end.strip())
    return (start_d, end_d) if sep and start_d and end_d else None


def _period_code(span: tuple[date, date] | None, coverage: dict[str, Any] | None) -> str:
    """EB06 for an accumulator over ``span`` (its ``_date_range``): calendar year, the coverage's contract, or
    a service year."""
    start_d, end_d = span or (None, None)
    if start_d and end_d and start_d.month == 1 and start_d.day == 1 and end_d.month == 12 and end_d.day == 31 \
            and start_d.year == end_d.year:
        return "23"  # calendar year
    if coverage and start_d == _parse_date(coverage.get("coveffdate")) and end_d == _parse_date(
            coverage.get("covtermdate")):
        return "25"  # contract
    return "22"      # service (plan) year


@lru_cache(maxsize=1024)
def _rd8(span: tuple[date, date]) -> str:
    """A period as a DTP03 RD8 (``CCYYMMDD-CCYYMMDD``), remembered like the periods it is made from."""
    return f"{x12_date(span[0])}-{x12_date(span[1])}"


def _amount(value: Any) -> str:
    """``format_amount``; a number's text remembered (a member's few amounts on every request). Zero is not: 0.0
    and -0.0 are one key, and their texts differ."""
    return _number_text(value) if value and type(value) in (int, float) else format_amount(value)


@lru_cache(maxsize=1024, typed=True)   # typed: 1 and 1.0 are different keys, as they are different arguments
def _number_text(value: float) -> str:
    return format_amount(value)


def _accumulator_rows(accumulators: list[dict[str, Any]], coverages: list[dict[str, Any]],
                      config: dict[str, Any], served: date) -> list[tuple[str, list[Value]]]:
    """EB rows (total for the period, then remaining) for the accumulators whose period holds the date of service,
    each followed by its period as a 2110C DTP: a member's 2024 and 2025 deductibles are two periods, and answering
    both, undated, gives the provider two conflicting remaining amounts."""
    rows: list[tuple[str, list[Value]]] = []
    by_category = {str(c.get("covtypename", "")).upper(): c for c in coverages}
    qualifiers = config["accumulator_dates"]
    for acc in accumulators:
        kind = str(acc.get("specifictype", "")).lower()
        eb01 = config["accumulators"].get(kind)
        if eb01 is None:
            continue
        span = _date_range(acc.get("daterange"))
        if span is not None and not span[0] <= served <= span[1]:
            continue   # another period's accumulator: not what the date of service runs against
        category = str(acc.get("coveragetype", "")).upper()
        stc = config["categories"].get(category, {}).get("primary", "30")
        level = "IND" if str(acc.get("individualaccum", "Y")).upper() == "Y" else "FAM"
        network = "Y" if str(acc.get("innetwork", "Y")).upper() == "Y" else "N"
        period = _period_code(span, by_category.get(category))
        maximum = float(acc.get("maximumamount") or 0)
        remaining = max(maximum - float(acc.get("currentamount") or 0), 0)
        dated: list[tuple[str, list[Value]]] = []
        if span is not None:
            qualifier = qualifiers.get(period, qualifiers["default"])
            dated.append(("DTP", [qualifier, "RD8", _rd8(span)]))
        if kind == "visit-limit":
            rows.append(("EB", [eb01, level, stc, "", "", period, "", "", "VS", _amount(maximum), "", network]))
            rows.extend(dated)
            rows.append(("EB", [eb01, level, stc, "", "", "29", "", "", "VS", _amount(remaining), "", network]))
            rows.extend(dated)
        else:
            rows.append(("EB", [eb01, level, stc, "", "", period, _amount(maximum), "", "", "", "", network]))
            rows.extend(dated)
            rows.append(("EB", [eb01, level, stc, "", "", "29", _amount(remaining), "", "", "", "", network]))
            rows.extend(dated)
    return rows


def _benefit_rows(benefits: list[dict[str, Any]], asked: list[str], generic: bool,
                  config: dict[str, Any]) -> list[tuple[str, list[Value]]]:
    rows: list[tuple[str, list[Value]]] = []
    for benefit in benefits:
        eb01 = config["benefit_types"].get(str(benefit.get("benefittype", "")).lower())
        stc = str(benefit.get("servicetype", "30"))
        stc = config["categories"].get(stc.upper(), {}).get("primary", stc)
        if eb01 is None or (not generic and stc not in asked and "30" not in asked):
            continue
        network = str(benefit.get("innetwork", "Y")).upper()
        period = config["time_periods"].get(str(benefit.get("timeperiod", "")).lower(), "")
        if eb01 == "A":
            percent = float(benefit.get("percent") or 0) / 100
            rows.append(("EB", [eb01, "IND", stc, "", "", period, "", _amount(percent), "", "", "", network]))
        else:
            rows.append(("EB", [eb01, "IND", stc, "", "", period, _amount(benefit.get("amount") or 0), "", "", "", "",
                                network]))
    return rows


def _prior_auth_rows(rules: list[dict[str, Any]], procedures: list[tuple[str, str]], payer_name: str,
                     config: dict[str, Any]) -> list[tuple[str, list[Value]]]:
    asked = {code for _, code in procedures}
    rows: list[tuple[str, list[Value]]] = []
    for rule in rules:
        if asked and rule.get("procedure") not in asked:
            continue
        qualifier = config["procedure_qualifiers"].get(str(rule.get("codesystem", "CPT")).upper(), "HC")
        rows.append(("EB", ["1", "IND", "", "", "", "", "", "", "", "", "Y", "Y",
                            (qualifier, str(rule.get("procedure", "")))]))
        if rule.get("url"):
            rows.append(("LS", ["2120"]))
            rows.append(("NM1", ["X3", "2", f"{payer_name} UTILIZATION MANAGEMENT"]))
            rows.append(("PER", ["IC", "", "UR", str(rule["url"])]))
            rows.append(("LE", ["2120"]))
    return rows


def answer(inquiry: Inquiry, members: dict[str, dict[str, Any]], config: dict[str, Any], *, payer_id: str | None,
           first_hl: int, unable_to_respond: bool = False, providers: frozenset[str] | None = None) -> Answer:
    """The 271 segments (from the 2000A HL on) for one inquiry."""
    payer_parts = inquiry.payer or ["NM1", "PR", "2", "PAYER", "", "", "", "", "PI", payer_id or ""]
    payer_name = payer_parts[3] if len(payer_parts) > 3 else "PAYER"
    out = Answer()
    hl = first_hl
    seg = out.segments.append
    seg(("HL", [str(hl), "", "20", "0" if unable_to_respond else "1"]))
    seg(("NM1", payer_parts[1:]))
    reject = config["reject"]
    if unable_to_respond:
        r = reject["unable_to_respond"]
        seg(("AAA", ["Y", "", r["code"], r["follow_up"]]))
        out.rejects.append("unable_to_respond")
        return out
    if payer_id and len(payer_parts) > 9 and payer_parts[9] != payer_id:
        r = reject["payer"]
        seg(("AAA", ["N", "", r["code"], r["follow_up"]]))
        out.segments[0] = ("HL", [str(hl), "", "20", "0"])
        out.rejects.append("payer")
        return out
    seg(("HL", [str(hl + 1), str(hl), "21", "1"]))
    seg(("NM1", inquiry.provider[1:] or ["1P", "2", "PROVIDER"]))
    npi = inquiry.provider[9].strip() if len(inquiry.provider) > 9 else ""
    problem = "provider_id" if not npi else "provider_not_on_file" if providers is not None and npi not in providers \
        else None
    if problem:
        r = reject[problem]
        seg(("AAA", ["N", "", r["code"], r["follow_up"]]))
        out.segments[2] = ("HL", [str(hl + 1), str(hl), "21", "0"])
        out.rejects.append(problem)
        return out
    record, dependent, rejects = find_member(inquiry, members, config)
    out.rejects = rejects
    patient_is_dependent = inquiry.dependent is not None and dependent is not None and not rejects and \
        (inquiry.subscriber.get("id") != dependent.get("depmemberid"))
    sub_hl = hl + 2
    seg(("HL", [str(sub_hl), str(hl + 1), "22", "1" if inquiry.dependent is not None else "0"]))
    traces = [["2", *t[1:]] for t in inquiry.traces if t and t[0] == "1"]
    sub = inquiry.subscriber
    subscriber_rejects = [k for k in rejects if reject[k]["loop"] == "2100C"]
    # the traces go where the patient is answered: 2000D when a dependent was asked about and is answered (found,
    # or not found with its AAA there), else 2000C; never in both
    if not (inquiry.dependent is not None and not subscriber_rejects and (patient_is_dependent or dependent is None)):
        for t in traces:
            seg(("TRN", t))
    person = dependent if (dependent is not None and not patient_is_dependent) else record
    if person is not None and not rejects:
        seg(("NM1", ["IL", "1", person.get("lastname", "").upper(), person.get("firstname", "").upper(), "", "", "",
                     "MI", person.get("depmemberid") or person.get("memberid", "")]))
    else:
        seg(("NM1", ["IL", "1", sub.get("last", ""), sub.get("first", ""), "", "", "",
                     "MI" if sub.get("id") else "", sub.get("id", "")]))
    for key in subscriber_rejects:
        seg(("AAA", ["N", "", reject[key]["code"], reject[key]["follow_up"]]))
    if person is not None and person.get("dob") and not subscriber_rejects:
        seg(("DMG", ["D8", person["dob"].replace("-", ""), person.get("gender", "")]))
    if subscriber_rejects:
        if inquiry.dependent is not None:  # the dependent level is not answered: HL04 says so
            idx = next(i for i, s in enumerate(out.segments) if s[0] == "HL" and s[1][2] == "22")
            out.segments[idx] = ("HL", [str(sub_hl), str(hl + 1), "22", "0"])
        return out
    if inquiry.dependent is not None and not patient_is_dependent and dependent is None:
        # the dependent was not found: 2000D with its AAA
        seg(("HL", [str(sub_hl + 1), str(sub_hl), "23", "0"]))
        for t in traces:
            seg(("TRN", t))
        dep = inquiry.dependent
        seg(("NM1", ["03", "1", dep.get("last", ""), dep.get("first", "")]))
        for key in rejects:
            seg(("AAA", ["N", "", reject[key]["code"], reject[key]["follow_up"]]))
        return out
    if patient_is_dependent:
        seg(("HL", [str(sub_hl + 1), str(sub_hl), "23", "0"]))
        for t in traces:
            seg(("TRN", t))
        seg(("NM1", ["03", "1", dependent.get("lastname", "").upper(), dependent.get("firstname", "").upper()]))
        if dependent.get("dob"):
            seg(("DMG", ["D8", dependent["dob"].replace("-", ""), dependent.get("gender", "")]))
        seg(("INS", ["N", config["relationships"].get(str(dependent.get("relationship", "other")).lower(), "34")]))
        patient = dependent
    elif dependent is not None:  # a dependent found by a member id of their own: answered as the subscriber
        patient = dependent
    else:
        patient = record
    assert record is not None
    coverages = patient.get("coverages") or record.get("coverages") or []
    benefits = patient.get("benefits") or record.get("benefits") or []
    accumulators = list(patient.get("accumulators") or [])
    if patient is not record:
        accumulators += [a for a in record.get("accumulators") or []
                         if str(a.get("individualaccum", "Y")).upper() == "N"]
    else:
        accumulators = list(record.get("accumulators") or [])
    rules = (patient.get("priorauth") or []) + ([] if patient is record else record.get("priorauth") or [])
    coverage_dates = [_coverage_dates(c) for c in coverages]
    starts = [start for start, _ in coverage_dates if start]
    ends = [end for _, end in coverage_dates if end and end.year < 9999]
    if starts:
        seg(("DTP", ["346", "D8", x12_date(min(starts))]))
    if ends and len(ends) == len(coverages):
        seg(("DTP", ["347", "D8", x12_date(max(ends))]))
    groups = inquiry.groups()
    for served, asked_types, procedures in groups:
        asked = list(dict.fromkeys(asked_types)) or ["30"]   # a type asked by several EQs is answered once
        generic = asked == ["30"] and not procedures
        rows: list[tuple[str, list[Value]]] = []
        for coverage, dates in zip(coverages, coverage_dates, strict=True):
            status = _coverage_rows(coverage, dates, asked, config, served, generic)
            if len(groups) > 1:   # EQs for different dates: each status row (its 2110C) says which date it answers
                status = [part for row in status for part in (
                    [row, ("DTP", ["291", "D8", x12_date(served)])] if row[0] == "EB" else [row])]
            rows.extend(status)
        active = any(r[1][0] == "1" for r in rows if r[0] == "EB")
        if active and not generic:
            # a service type asked for by name that no coverage of the member's includes is answered, as not
            # covered (EB01 I), never left out: the provider cannot tell a missing answer from an unknown one
            # (CORE 154)
            covered = {t for coverage in coverages for t in _category(coverage, config)["service_types"]}
            uncovered = [t for t in dict.fromkeys(asked) if t not in covered]
            if uncovered:
                rows.extend(("EB", ["I", "", chunk]) for chunk in _repetitions(uncovered))
        if active:
            rows.extend(_accumulator_rows(accumulators, coverages, config, served))
            rows.extend(_benefit_rows(benefits, asked, generic, config))
            rows.extend(_prior_auth_rows(rules, procedures, payer_name, config))
        out.segments.extend(rows)
    return out


def asked_member_ids(txn: Transaction) -> list[str]:
    """The member ids a 270 asks about (2100C NM109), for scenario rules."""
    return [s.get(9) for loop, s in txn.root.walk() if loop.id == "2100C" and s.id == "NM1" and s.get(9)]


def answer_270(txn: Transaction, members: dict[str, dict[str, Any]], config: dict[str, Any], *, now: datetime,
               control_number: int, payer_id: str | None = None, unable_to_respond: bool = False,
               providers: frozenset[str] | None = None) -> str:
    """A 271 interchange answering every patient of one 270 transaction set."""
    return answer_interchange([txn], members, config, now=now, control_number=control_number, payer_id=payer_id,
                              unable_to_respond=unable_to_respond, providers=providers)


def answer_interchange(transactions: list[Transaction], members: dict[str, dict[str, Any]], config: dict[str, Any],
                       *, now: datetime, control_number: int, payer_id: str | None = None,
                       unable_to_respond: bool = False, providers: frozenset[str] | None = None) -> str:
    """One 271 interchange answering 270 transaction sets: one 271 set per 270 set, in one functional group, so
    the reply has one ISA13 and one GS06 (several interchanges with the same control number are duplicates a
    receiver rejects, TA1 025)."""
    bodies = [_answer_body(txn, members, config, now=now, payer_id=payer_id, unable_to_respond=unable_to_respond,
                           providers=providers) for txn in transactions]
    isa = transactions[0].interchange if transactions else None
    gs = transactions[0].group if transactions else None
    env = Envelope(sender_id=isa.receiver_id if isa else "PAYER", receiver_id=isa.sender_id if isa else "GATEWAY",
                   sender_qualifier=isa.receiver_qualifier if isa else "ZZ",
                   receiver_qualifier=isa.sender_qualifier if isa else "ZZ", interchange_control=control_number,
                   now=now, usage=isa.usage if isa and isa.usage in ("P", "T") else "P",
                   # the 271's GS02/GS03 answer the 270's GS03/GS02 (its ISA ids may be one character, padded)
                   application_sender=application_code(gs.receiver if gs else "", isa.receiver_id if isa else "",
                                                       default="PAYER"),
                   application_receiver=application_code(gs.sender if gs else "", isa.sender_id if isa else "",
                                                         default="GATEWAY"))
    # the 270's trace numbers and BHT03 go back as they came (the provider matches the answer by them)
    echoed = frozenset(config.get("echoed_elements") or ())
    return X12Writer(PAYER_DELIMITERS, echoed=echoed).interchange(env, "HB", "271", "005010X279A1", bodies).text


def _answer_body(txn: Transaction, members: dict[str, dict[str, Any]], config: dict[str, Any], *, now: datetime,
                 payer_id: str | None, unable_to_respond: bool,
                 providers: frozenset[str] | None) -> list[tuple[str, list[Value]]]:
    """BHT ... the last segment before SE of the 271 answering one 270 transaction set."""
    bht = txn.root.segment("BHT")
    body: list[tuple[str, list[Value]]] = [
        ("BHT", ["0022", "11", bht.get(3) if bht else "", x12_date(now),
                f"{now.hour:02d}{now.minute:02d}{now.second:02d}"])]
    hl = 1
    for inquiry in inquiries(txn, now.date()):
        result = answer(inquiry, members, config, payer_id=payer_id, first_hl=hl, unable_to_respond=unable_to_respond,
                        providers=providers)
        body.extend(result.segments)
        hl = max(int(s[1][0]) for s in result.segments if s[0] == "HL") + 1
    return body
