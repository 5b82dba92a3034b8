"""Nothing dropped silently: every EB and MSG of every 271 (fixtures and public samples) is mapped
into its response or recorded in a processNote with its raw segment; every response passes the R4B
models and the project's own rules. The same for every segment of every 270 translated to requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.fhir.models import validate_structure
from gateway.fhir.rules import check_response
from gateway.translate import load_tables
from gateway.translate.request_from_270 import translate_270
from gateway.translate.response_271 import translate_271
from gateway.x12.reader import read_x12
from tests.conftest import CORPUS, FIXTURES, corpus_index

NOW = "2025-01-15T09:30:00Z"
FILES = sorted((FIXTURES / "x12" / "271").glob("*.271")) + sorted(
    (FIXTURES / "x12" / "271-nonconforming").glob("*.271"))
CORPUS_271 = [CORPUS / row["file"] for row in corpus_index() if row["transaction"] == "271"]
FILES_270 = sorted((FIXTURES / "x12" / "270").glob("*.270")) + sorted(
    (FIXTURES / "x12" / "271-nonconforming").glob("*.270")) + sorted((FIXTURES / "golden" / "270").glob("*.270"))
CORPUS_270 = [CORPUS / row["file"] for row in corpus_index() if row["transaction"] == "270"]


def account(path: Path) -> int:
    responses = 0
    tables = load_tables()
    for txn in read_x12(path.read_bytes()).transactions:
        covered: set[int] = set()
        for result in translate_271(txn, tables, now=NOW):
            covered |= result.scope
            responses += 1
            resource = result.resource
            validate_structure(resource)
            assert check_response(resource) == [], resource["id"]
            segments = {s.position: s for s in txn.segments()}
            raw_in_notes = {n.raw for n in result.notes}
            for position in result.scope:
                seg = segments[position]
                if seg.id not in ("EB", "MSG"):
                    continue
                mapped = position in result.mapped
                noted = position in result.noted and seg.to_x12() in raw_in_notes
                assert mapped or noted, f"{path.name}: {seg.to_x12()} at {position} is neither mapped nor noted"
            # the notes travel in the resource itself
            notes = [e for e in resource.get("extension", []) if e["url"].endswith("/StructureDefinition/processNote")]
            assert len(notes) == len(result.notes)
        # and every segment is some response's (a second receiver's rejection, say, is not left out)
        missing = [s.to_x12() for s in txn.segments() if s.position not in covered and s.id not in ("ST", "SE")]
        assert not missing, f"{path.name}: in no response: {missing}"
    return responses


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture_271_is_fully_accounted_for(path: Path):
    assert account(path) >= 1


@pytest.mark.corpus
@pytest.mark.parametrize("path", CORPUS_271 or [pytest.param(None, marks=pytest.mark.skip(
    reason="../shared/corpus is not present"))], ids=lambda p: p.name[-50:] if p else "none")
def test_corpus_271_is_fully_accounted_for(path: Path):
    assert account(path) >= 1


def account_270(path: Path) -> int:
    """Every segment of every 270 transaction went into the requests or is in a note with its raw text."""
    requests = 0
    tables = load_tables()
    for txn in read_x12(path.read_bytes()).transactions:
        carried: set[int] = set()
        bundle, notes = translate_270(txn, tables, now=NOW, carried=carried)
        # the translation's last resort ("not read by the translation") counts as a miss: each segment has a place
        unread = [n.raw for n in notes if "is not read by the translation" in n.text]
        assert not unread, f"{path.name}: read by no step of the translation: {unread}"
        noted = {(n.source.rsplit("@", 1)[-1], n.raw) for n in notes}
        for seg in txn.segments():
            assert seg.position in carried or (str(seg.position), seg.to_x12()) in noted, \
                f"{path.name}: {seg.to_x12()} at {seg.position} is neither carried nor noted"
        for entry in bundle["entry"]:
            resource = entry["resource"]
            validate_structure(resource)
            if resource["resourceType"] == "CoverageEligibilityRequest":
                requests += 1
                texts = {e["extension"][2]["valueString"] for e in resource.get("extension", [])}
                # a request carries the notes of its own loops and of the payer and provider above it
                assert texts <= {n.text for n in notes}
    return requests


@pytest.mark.parametrize("path", FILES_270, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture_270_is_fully_accounted_for(path: Path):
    assert account_270(path) >= 1


@pytest.mark.corpus
@pytest.mark.parametrize("path", CORPUS_270 or [pytest.param(None, marks=pytest.mark.skip(
    reason="../shared/corpus is not present"))], ids=lambda p: p.name[-50:] if p else "none")
def test_corpus_270_is_fully_accounted_for(path: Path):
    assert account_270(path) >= 1
