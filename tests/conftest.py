"""Shared fixtures: project fixture folders and the public sample corpus (skipped when absent)."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
# beside the checkout; FHIR_X12_CORPUS names it for a checkout elsewhere (a git worktree)
CORPUS = Path(os.environ.get("FHIR_X12_CORPUS") or ROOT.parent / "shared" / "corpus")
MAPPINGS = ROOT / "mappings"
# https://hl7.org/fhir/R4/valueset-issue-type.html: every OperationOutcome issue code must be one of these
ISSUE_TYPES = {"invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
               "forbidden", "suppressed", "processing", "not-supported", "duplicate", "multiple-matches",
               "not-found", "deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule",
               "conflict", "transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled",
               "informational"}


def corpus_index() -> list[dict[str, str]]:
    """Rows of ``../shared/corpus/INDEX.tsv`` (empty when the corpus is not beside the checkout)."""
    index = CORPUS / "INDEX.tsv"
    if not index.exists():
        return []
    with index.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def corpus_params() -> list:
    rows = corpus_index()
    if not rows:
        return [pytest.param(None, marks=pytest.mark.skip(reason="../shared/corpus is not present"))]
    return [pytest.param(row, id=row["file"].split("/")[-1][:60]) for row in rows]


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite the expected files under fixtures/golden from the current output "
                          "(then read the diff like code)")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def header_drip() -> Iterator[str]:
    """A server that answers every request with a status line and then one header line every 0.2 s, for ever:
    each read of the socket is well within a read timeout, the answer never ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for n in range(200):
                    if stop.wait(0.2):
                        return
                    conn.sendall(f"X-Drip-{n}: x\r\n".encode())
            except OSError:   # the client gave up and closed: as meant
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    stop.set()
    thread.join(5)
    listener.close()


@pytest.fixture(scope="session")
def loopback_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA (``ca.pem``) and a server certificate it signed for 127.0.0.1 (``server.pem``, ``server.key``),
    made with the openssl command line (skipped where it is not installed)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("loopback-ca")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=loopback CA")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return folder


def mappings_with(tmp_path: Path, file: str | None = None, old: str = "", new: str = "") -> str:
    """A copy of the shipped mappings under ``tmp_path`` with ``old`` replaced by ``new`` in ``file`` (a path under
    mappings/, ``codes/network.yaml`` say), for tests of what a changed table does; its folder, as the loaders take
    it. The text must be there: a test whose edit silently did nothing would test the shipped tables."""
    base = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, base)
    if file is not None:
        path = base / file
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{file} has no {old!r}"
        path.write_text(text.replace(old, new), encoding="utf-8")
    return str(base)
