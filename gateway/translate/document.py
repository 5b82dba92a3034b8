"""Translate whatever a file holds, choosing the direction by its content (the CLI's entry point).

FHIR JSON (a CoverageEligibilityRequest or a Bundle holding one) -> 270; a 270 -> a Bundle of
requests; a 271 -> one CoverageEligibilityResponse, or a Bundle when it answers several patients.
Pure: bytes in, result out; the caller supplies the clock and control number.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.errors import X12SyntaxError, quoted
from gateway.fhir.structure import payload_problems
from gateway.translate.errors import Problem, TranslationError
from gateway.translate.notes import Note
from gateway.translate.request_270 import build_270, find_request
from gateway.translate.request_from_270 import seed, translate_270
from gateway.translate.response_271 import ResponseTranslation, translate_271
from gateway.translate.tables import Tables
from gateway.x12.reader import ReadResult, read_x12
from gateway.x12.structure import element_limits
from gateway.x12.tokenizer import tokenize
from gateway.x12.writer import Envelope, WriteNote


@dataclass
class Translated:
    """The output (X12 text or a FHIR resource dict), what it is, and the notes."""

    kind: str                      # "270", "fhir-requests", "fhir-response", "fhir-responses"
    output: str | dict[str, Any]
    notes: list[Note] = field(default_factory=list)
    write_notes: list[WriteNote] = field(default_factory=list)
    findings: list[Any] = field(default_factory=list)
    responses: list[ResponseTranslation] = field(default_factory=list)


def iso(now: datetime) -> str:
    """FHIR dateTime with a zone (naive times are taken as UTC)."""
    aware = now if now.tzinfo else now.replace(tzinfo=UTC)
    return aware.isoformat(timespec="seconds").replace("+00:00", "Z")


def _full_url(resource: dict[str, Any]) -> str:
    """A urn:uuid that is the same for the same answer and differs between interchanges and patients."""
    seed = json.dumps([resource.get("identifier"), resource.get("request"), resource["id"]], sort_keys=True)
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'fhir-x12-gateway:' + seed)}"


def looks_like_json(data: bytes) -> bool:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[")


def _holds_ta1(data: bytes) -> bool:
    try:
        return any("TA1" in batch.ids for batch in tokenize(data))
    except X12SyntaxError:
        return False


# UTF-32 first: its little-endian mark begins with UTF-16's
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
              (b"\xfe\xff", "UTF-16"))


def translate_document(data: bytes, tables: Tables, *, now: datetime, control_number: int = 1,
                       sender_id: str = "GATEWAY", receiver_id: str | None = None,
                       mappings: str | None = None, information_receiver: dict[str, Any] | None = None) -> Translated:
    """Translate ``data`` in the direction its content implies; ``information_receiver`` (an Organization or
    Practitioner) is a 270's 2100B provider when the request names none."""
    if not data.strip():
        raise TranslationError("the input is empty", [Problem("$", "there is nothing to translate", code="required")],
                               status=400)
    wide = next((name for bom, name in _WIDE_BOMS if data.startswith(bom)), None)
    if wide is not None:   # read as UTF-8 it is neither JSON nor X12: say what it is instead of "no ISA"
        raise TranslationError(f"the input is {wide} text: save it as UTF-8", [
            Problem("$", f"{wide} (byte order mark {data[:4 if '32' in wide else 2].hex()}), not UTF-8",
                    code="structure")], status=400)
    if looks_like_json(data):
        try:
            payload = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TranslationError(f"the input is not valid JSON: {exc}",
                                   [Problem("$", str(exc), code="structure")], status=400) from exc
        except (ValueError, RecursionError) as exc:   # valid JSON the parser still refuses: no traceback either
            why = ("it nests too deeply" if isinstance(exc, RecursionError)
                   else "a number in it has more than 4,300 digits")
            raise TranslationError(f"the input cannot be read as JSON: {why}", [Problem("$", why, code="too-costly")],
                                   status=400) from None
        request, bundle = find_request(payload)
        problems = payload_problems(request, bundle)
        if problems:
            raise TranslationError(f"the {request.get('resourceType')} is not valid FHIR R4: {len(problems)} "
                                   "problem(s)", problems, status=400)
        envelope = Envelope(sender_id=sender_id, receiver_id=receiver_id or "", interchange_control=control_number,
                            now=now)
        result = build_270(payload, tables, envelope=envelope, limits=element_limits(mappings),
                           originator=sender_id, information_receiver=information_receiver)
        return Translated("270", result.text, result.notes, result.write_notes)
    read: ReadResult = read_x12(data, mappings=mappings)
    sets = {t.set_id for t in read.transactions}
    if not read.transactions:
        if _holds_ta1(data):   # readable, and an answer in itself: there is just nothing to translate
            raise TranslationError("the file is a TA1 interchange acknowledgment: it holds no 270 or 271 to "
                                   "translate (`fhir-x12 validate` reads it)",
                                   [Problem("TA1", "an interchange acknowledgment, not a 270 or 271",
                                            code="not-supported")])
        raise X12SyntaxError("the interchange holds no transaction set")
    if sets - {"270", "271"}:
        others = ", ".join(quoted(s, bare=True) for s in sorted(sets - {"270", "271"}))
        raise TranslationError(f"transaction set(s) {others} cannot be translated (only 270 and 271)",
                               [Problem("ST01", "not a 270 or 271", code="not-supported")])
    if len(sets) > 1:
        raise TranslationError("the file mixes 270 and 271 transaction sets; translate them separately",
                               [Problem("ST01", "mixed 270 and 271", code="not-supported")])
    findings = [f for f in read.all_findings if f.severity == "error"]
    stamp = iso(now)
    if sets == {"270"}:
        entries: list[dict[str, Any]] = []
        notes: list[Note] = []
        seen: dict[str, int] = {}   # sets sent twice (same ISA13, GS06, ST02, BHT03) keep ids of their own
        for txn in read.transactions:
            occurrence = seen[seed(txn)] = seen.get(seed(txn), -1) + 1
            bundle, txn_notes = translate_270(txn, tables, now=stamp, occurrence=occurrence)
            entries.extend(bundle["entry"])
            notes.extend(txn_notes)
        if len(read.transactions) == 1:
            output = bundle
        else:
            output = {"resourceType": "Bundle", "type": "collection", "timestamp": stamp, "entry": entries}
        return Translated("fhir-requests", output, notes, findings=findings)
    responses: list[ResponseTranslation] = []
    for txn in read.transactions:
        responses.extend(translate_271(txn, tables, now=stamp))
    notes = [n for r in responses for n in r.notes]
    if len(responses) == 1:
        return Translated("fhir-response", responses[0].resource, notes, findings=findings, responses=responses)
    bundle_out = {"resourceType": "Bundle", "type": "collection", "timestamp": stamp,
                  "entry": [{"fullUrl": _full_url(r.resource), "resource": r.resource} for r in responses]}
    return Translated("fhir-responses", bundle_out, notes, findings=findings, responses=responses)
