"""The ``fhir-x12`` command: validate (and, as they land, translate and serve) from the shell.

Exit codes (DESIGN §3): 0 success, 1 input understood but invalid, 2 unreadable input or usage.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson

from gateway.errors import GatewayError, X12SyntaxError, quoted
from gateway.x12.model import Finding

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def _fail(message: str, code: int = EXIT_UNREADABLE) -> None:
    click.echo(f"fhir-x12: {message}", err=True)
    sys.exit(code)


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        _fail(f"{path}: no such file")
    except IsADirectoryError:
        _fail(f"{path}: is a directory, not a file")
    except OSError as exc:
        _fail(f"{path}: cannot read: {exc.strerror}")
    raise AssertionError("unreachable")


def _parse_date(value: str | None) -> datetime:
    if value is None:
        return datetime.now().replace(second=0, microsecond=0)
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M")
    except ValueError:
        _fail(f"--date {value!r} is not YYYY-MM-DDTHH:MM")
    raise AssertionError("unreachable")


def format_finding(f: Finding) -> str:
    """One line a person can act on: severity, code, where, what."""
    where = []
    if f.transaction:
        where.append(f"ST {f.transaction}")
    if f.loop:
        where.append(f"loop {f.loop}")
    if f.segment:
        where.append(f"{f.segment} at position {f.position}" if f.position else f.segment)
    if f.element:
        where.append(f.element + (f" repetition {f.repetition}" if f.repetition else ""))
    # the acknowledgment element the code goes in (IK502 4), not the bare code (it read like a count)
    ack = f" [{_ACK_ELEMENTS.get(f.level, f.level)} {f.ack_code}]" if f.ack_code else ""
    return f"{f.severity.upper():7} {f.code}{ack}: {', '.join(where) or 'interchange'}: {f.message}"


# where each level's code goes in the TA1 or 999
_ACK_ELEMENTS = {"interchange": "TA105", "group": "AK905", "transaction": "IK502", "segment": "IK304",
                 "element": "IK403"}


class _Commands(click.Group):
    """The command group, with one-line messages for output that cannot be written (a full disk, ``> /dev/full``):
    click already ends quietly on a closed pipe."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG):
                raise
            _fail(f"cannot write the output: {exc.strerror or exc}")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fhir-x12-gateway")
def main() -> None:
    """FHIR R4 <-> X12 005010X279A1 eligibility (270/271) gateway tools."""


@main.command()
@click.argument("file")
@click.option("--ack", "ack", type=click.Choice(["999", "ta1"], case_sensitive=False),
              help="Write a 999 or TA1 acknowledgment to stdout (findings go to stderr).")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
@click.option("--control-number", type=click.IntRange(1, 999_999_999), default=1, show_default=True,
              help="Interchange control number of the acknowledgment (of the first: each interchange in FILE "
                   "gets one of its own, numbered on from N).")
@click.option("--date", "date", help="Acknowledgment date and time, YYYY-MM-DDTHH:MM (default: now).")
def validate(file: str, ack: str | None, as_json: bool, control_number: int, date: str | None) -> None:
    """Validate a 270 or 271 against the 005010X279A1 implementation guide.

    A TA1, 999 or 997 is read instead: its elements are checked and what it says is listed (ACK lines).
    Exit 0 when valid, 1 with findings, 2 when FILE cannot be read as X12.
    """
    from gateway.x12.ack import build_999, build_ta1s
    from gateway.x12.validate import validate_x12

    data = _read_input(file)
    now = _parse_date(date)
    try:
        if len(data) > 1 << 20:
            from gateway.runtime import warm_up

            warm_up()
        report = validate_x12(data)
    except X12SyntaxError as exc:
        _fail(f"{file}: not readable as X12: {exc}")
        return
    except GatewayError as exc:
        _fail(f"{file}: {exc}")
        return
    # an acknowledgment (TA1, 999, 997) is not a set this validates: what it says is shown instead
    from gateway.transport.acks import load_ack_codes, read_acknowledgments

    said = read_acknowledgments(report, data, load_ack_codes())
    findings_out = sys.stderr if ack else sys.stdout
    if as_json:
        payload = {"file": file, **report.to_dict(), **({"acknowledgment": said} if said else {})}
        click.echo(json.dumps(payload, indent=2), file=findings_out)
    else:
        for finding in report.findings:
            click.echo(format_finding(finding), file=findings_out)
        for item in said:
            click.echo(f"ACK     {item['message']}", file=findings_out)
        summary = "valid" if report.valid else f"invalid: {len(report.errors)} error(s)"
        click.echo(f"{file}: {summary}, {len(report.findings)} finding(s) in "
                   f"{len(report.transactions)} transaction set(s)", file=findings_out)
    if ack:
        if ack.lower() == "ta1":
            click.echo(build_ta1s(report.interchanges, report.findings, control_number=control_number, now=now),
                       nl=False)
        else:
            try:
                text = build_999(report.transactions, report.findings, control_number=control_number, now=now)
            except GatewayError as exc:   # no set in a functional group: nothing a 999 names
                _fail(f"{file}: no 999: {exc} (--ack ta1)", EXIT_INVALID)
            click.echo(text, nl=False)
    sys.exit(0 if report.valid else EXIT_INVALID)


@main.command()
@click.argument("file")
@click.option("-o", "--output", "output", help="Write the result to this file instead of stdout.")
@click.option("--control-number", type=click.IntRange(1, 999_999_999), default=1, show_default=True,
              help="Interchange control number of a generated 270.")
@click.option("--date", "date", help="Timestamp written into the output, YYYY-MM-DDTHH:MM (default: now).")
@click.option("--sender-id", default="GATEWAY", show_default=True, callback=lambda _c, p, v: _interchange_id(p, v),
              help="ISA06/GS02 of a generated 270 (2 to 15 letters, digits, spaces, '-' or '.').")
@click.option("--receiver-id", callback=lambda _c, p, v: _interchange_id(p, v),
              help="ISA08/GS03 of a generated 270 (default: the payer id, when it has 2 to 15 characters).")
@click.option("--provider-npi", help="NPI of the 2100B provider when the request names none (with --provider-name).")
@click.option("--provider-name", help="That provider's organization name, or a person's last name.")
@click.option("--provider-first-name", help="The provider is a person with this first name (NM102 1).")
@click.option("--provider-taxonomy", help="The provider's NUCC taxonomy code, sent in PRV (e.g. 207Q00000X).")
@click.option("--notes/--no-notes", default=True, show_default=True,
              help="Also list on stderr what the translation could not carry.")
def translate(file: str, output: str | None, control_number: int, date: str | None, sender_id: str,
              receiver_id: str | None, provider_npi: str | None, provider_name: str | None,
              provider_first_name: str | None, provider_taxonomy: str | None, notes: bool) -> None:
    """Translate FILE; the direction follows from its content.

    FHIR CoverageEligibilityRequest (or a Bundle holding one) -> X12 270; X12 270 -> a Bundle of
    requests; X12 271 -> a CoverageEligibilityResponse (a Bundle when it answers several patients).
    Exit 0 on success, 1 when the input is understood but cannot be translated, 2 when it is unreadable.
    """
    from gateway.translate import TranslationError, load_tables
    from gateway.translate.document import translate_document
    from gateway.transport.routing import check_information_receiver

    tables = load_tables()
    receiver = None
    options = {"npi": provider_npi, "name": provider_name, "first_name": provider_first_name,
               "taxonomy": provider_taxonomy}
    if any(value is not None for value in options.values()):
        if provider_npi is None or provider_name is None:
            _fail("--provider-npi and --provider-name go together (--provider-first-name and --provider-taxonomy "
                  "add to them)")
        given = {key: value for key, value in options.items() if value is not None}
        if provider_first_name is not None:
            given["entity"] = "person"
        checked, problems = check_information_receiver(given, "")
        if checked is None:   # each problem is ".key: what is wrong": name the option and the value given
            _fail("; ".join(f"--provider-{key.replace('_', '-')} {given.get(key)!r}:{why.split(' (quote it')[0]}"
                            for key, _, why in (p[1:].partition(":") for p in problems)))
            return
        receiver = checked.as_resource(tables.systems)
    data = _read_input(file)
    now = _parse_date(date)
    try:
        result = translate_document(data, tables, now=now, control_number=control_number,
                                    sender_id=sender_id, receiver_id=receiver_id, information_receiver=receiver)
    except TranslationError as exc:
        click.echo(f"fhir-x12: {file}: {exc}", err=True)
        sys.exit(EXIT_UNREADABLE if exc.status == 400 else EXIT_INVALID)
    except X12SyntaxError as exc:
        _fail(f"{file}: not readable as X12 or FHIR JSON: {exc}")
        return
    except GatewayError as exc:
        _fail(f"{file}: {exc}", EXIT_INVALID)
        return
    text = result.output if isinstance(result.output, str) else orjson.dumps(
        result.output, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE).decode()
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail(f"{output}: cannot write: {exc.strerror}")
    else:
        click.echo(text, nl=False)
    for finding in result.findings:   # errors in the input: always said, whatever --notes
        click.echo(f"fhir-x12: input defect: {format_finding(finding)}", err=True)
    if notes:
        for change in result.write_notes:
            click.echo(f"fhir-x12: changed {change.element} {quoted(change.original)} -> {change.written!r}: "
                       f"{change.reason}", err=True)
        for note in result.notes:
            where = f" [{note.source}]" if note.source else ""
            click.echo(f"fhir-x12: not carried{where}: {note.text}", err=True)
    if result.findings:   # translated as far as it could be read, but the input is defective: not a clean 0
        click.echo(f"fhir-x12: {file}: the input has {len(result.findings)} error(s); the output may be incomplete",
                   err=True)
        sys.exit(EXIT_INVALID)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes (each with its own app, store connections and payer pools).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="threads per gthread worker (requests waiting on a payer hold one each).")
@click.option("--worker-class", "worker_class", type=click.Choice(["gthread", "gevent"]), default="gthread",
              show_default=True, help="gevent: cooperative workers (monkey-patched), cheaper per request under load.")
@click.option("--keepalive", default=5, show_default=True, type=click.IntRange(0, 3600), metavar="SECONDS",
              help="how long an idle client connection is kept open; behind a load balancer, more than its idle "
                   "timeout (a stop then waits up to 25 s for idle connections).")
def serve_gateway(host: str, port: int, workers: int, threads: int, worker_class: str, keepalive: int) -> None:
    """Run the gateway (configuration from FHIR_X12_* environment variables) under gunicorn.

    Metrics are shared across the workers (prometheus_client multiprocess mode, PROMETHEUS_MULTIPROC_DIR).
    """
    _port_free(host, port, "--port")
    if worker_class == "gevent":
        from gevent import monkey

        monkey.patch_all()   # before the app's modules (ssl, sockets, threads) are imported

    from gateway.errors import ConfigError
    from gateway.observability import STARTUP_REPORTED_ENV
    from gateway.serving import multiprocess_metrics, serve

    # the workers share each payer's concurrency limit (unless the operator counts processes on other hosts too)
    os.environ.setdefault("FHIR_X12_PROCESSES", str(workers))

    try:
        # entered before the app (and prometheus_client) is imported: see multiprocess_metrics
        with multiprocess_metrics() as metrics_dir:
            from gateway.app import create_app

            _app_or_fail(create_app).extensions["fhir_x12"]["close"]()   # check the configuration, migrate once
            os.environ[STARTUP_REPORTED_ENV] = "1"   # the check said its warnings: the workers need not repeat them
            serve(create_app, host, port, threads=threads, workers=workers, worker_class=worker_class,
                  multiprocess_dir=metrics_dir, keepalive=keepalive, fhir_errors=True)
    except ConfigError as exc:
        _fail(f"configuration: {exc}")


def _port_free(host: str, port: int, option: str) -> None:
    """Exit 2 naming the option when something already listens on the port: found before anything starts (the
    store migrated, a simulator seeded), rather than by gunicorn retrying for 5 s and leaving a traceback."""
    import socket

    if port == 0:
        return
    address = host.strip("[]")   # gunicorn takes an IPv6 address in brackets ([::1]); bind does not
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gunicorn binds: TIME_WAIT is free
            probe.bind((address, port))
    except OSError as exc:
        _fail(f"{option} {port}: cannot listen on {host}:{port}: {exc.strerror or exc}")


def _app_or_fail(factory):  # type: ignore[no-untyped-def]
    """The app, or a one-line message naming the bad setting (exit 2) instead of a traceback."""
    try:
        return factory()
    except GatewayError as exc:
        _fail(f"configuration: {exc}")
    except Exception as exc:   # a database that cannot be reached, say
        _fail(f"cannot start: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")


@main.command("demo")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="the gateway's port")
@click.option("--payer-port", default=8090, show_default=True, type=click.IntRange(0, 65535),
              help="the payer simulator's port")
@click.option("--members", default="fixtures/members", show_default=True,
              type=click.Path(exists=True, file_okay=False), help="member records for the simulator")
@click.option("--workdir", default=".demo", show_default=True, help="where the demo keeps its databases")
def demo(port: int, payer_port: int, members: str, workdir: str) -> None:
    """The payer simulator with the demo members, and the gateway routed to it over CORE SOAP."""
    import os
    import secrets
    import subprocess

    from gateway.app import create_app
    from gateway.serving import serve, stop, wait_ready

    for name, number in (("--port", port), ("--payer-port", payer_port)):
        _port_free("127.0.0.1", number, name)   # else a stale simulator would answer for ours, and say so nowhere
    folder = Path(workdir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"--workdir {workdir}: cannot make the folder: {exc.strerror or exc}")
    payer_url = f"http://127.0.0.1:{payer_port}"
    simulator = subprocess.Popen([sys.executable, "-m", "gateway.cli", "payer", "serve", "--port", str(payer_port),
                                  "--seed", members, "--database", f"sqlite:///{folder / 'payer.db'}"])
    try:
        problem = wait_ready(f"{payer_url}/scenarios", simulator, 30)
        if problem:
            _fail(f"the payer simulator did not start on port {payer_port}: {problem}")
        writers = [t.strip() for t in (os.environ.get("FHIR_X12_TOKENS") or "").split(",")
                   if t.strip() and not t.strip().endswith(":read")]
        token = writers[0] if writers else secrets.token_urlsafe(24)
        if not writers:   # none configured (or only read-only ones): the demo's own, which may write
            os.environ["FHIR_X12_TOKENS"] = ",".join(filter(None, [os.environ.get("FHIR_X12_TOKENS", ""), token]))
        os.environ["FHIR_X12_PAYER_URL"] = f"{payer_url}/core/soap"
        os.environ.setdefault("FHIR_X12_DATABASE_URL", f"sqlite:///{folder / 'gateway.db'}")
        _app_or_fail(create_app).extensions["fhir_x12"]["close"]()   # check the configuration, migrate once
        sample = Path(members).parent / "fhir" / "requests" / "subscriber-generic.json"
        who = "MARIA DELGADO" if sample.is_file() else "a member of yours (with a request of your own)"
        if not sample.is_file():
            sample = Path("your-request.json")
        click.echo(f"""
fhir-x12 demo: payer simulator on {payer_url}, gateway on http://127.0.0.1:{port}
Bearer token: {token}

Ask the simulated payer about {who} (a real CoverageEligibilityResponse comes back):

  curl -s -X POST 'http://127.0.0.1:{port}/CoverageEligibilityRequest/$submit' \\
       -H 'Authorization: Bearer {token}' -H 'Content-Type: application/fhir+json' \\
       --data-binary @{sample}

Press Ctrl+C to stop both.
""", err=True)
        serve(create_app, "127.0.0.1", port, fhir_errors=True)
    finally:
        stop(simulator, 10)


@main.group()
def store() -> None:
    """The gateway's audit store: migrations and retention."""


_DATABASE_HELP = "the audit store (default: $FHIR_X12_DATABASE_URL, else the SQLite file fhir-x12-gateway.db)"
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MIN_RETENTION_SECONDS = 3600   # requests in flight (and queued async ones) are never purged
MAX_RETENTION_SECONDS = 100 * 365 * 86400


def _retention(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``2w`` -> seconds."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*([mhdw])\s*", text.lower())
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m or 2w")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds < MIN_RETENTION_SECONDS:
        raise click.BadParameter("must be at least 1h: transactions still in flight are never purged")
    if seconds > MAX_RETENTION_SECONDS:
        raise click.BadParameter("must be at most 100 years")
    return seconds


def _open_store(database: str | None, *, migrate: bool = True):  # type: ignore[no-untyped-def]
    """The audit store, or exit 2 with why, naming where the URL came from (never its password).

    ``migrate=False`` (maintenance): only a store that exists and is migrated opens; a mistyped path must fail,
    not become a new empty store that a retention job purges "successfully" for ever."""
    from alembic.util.exc import CommandError as AlembicError
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.store import AuditStore, database_url
    from gateway.store.migrate import open_problem

    url = database or database_url()
    try:
        return AuditStore(url, migrate=migrate)
    except (SQLAlchemyError, GatewayError, OSError, ImportError, AlembicError, ValueError) as exc:
        source = "--database" if database else "FHIR_X12_DATABASE_URL" if os.environ.get("FHIR_X12_DATABASE_URL") \
            else "the default SQLite file"
        _fail(f"store: cannot open the audit store ({source}): {open_problem(exc, url)}")


@store.command("migrate")
@click.option("--database", "database", metavar="URL", help=_DATABASE_HELP)
def store_migrate(database: str | None) -> None:
    """Create or upgrade the audit store's tables (the gateway also does it when it starts)."""
    _open_store(database).close()
    click.echo("fhir-x12: the audit store is up to date", err=True)


@store.command("purge")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="delete transactions received longer ago than AGE: 30d, 12h, 2w ... (at least 1h)")
@click.option("--database", "database", metavar="URL", help=_DATABASE_HELP)
@click.option("--dry-run", is_flag=True, help="only count what would be deleted")
def store_purge(older_than: str, database: str | None, dry_run: bool) -> None:
    """Delete old eligibility transactions (request, 270, 271, response and their identifiers).

    Deletes in small batches, so a gateway using the same store keeps working meanwhile. SQLite reuses the
    freed pages; the file itself only shrinks with VACUUM.
    """
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.exc import SQLAlchemyError

    try:
        seconds = _retention(older_than)
    except click.BadParameter as exc:
        _fail(f"--older-than: {exc.message}")
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds)
    audit = _open_store(database, migrate=False)
    try:
        count = audit.purge(before, dry_run=dry_run)
    except SQLAlchemyError as exc:
        _fail(f"store: the purge failed ({type(exc).__name__}); batches already deleted stay deleted", EXIT_INVALID)
    finally:
        audit.close()
    stamp = before.isoformat().replace("+00:00", "Z")
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {count} transaction(s) received before {stamp}")


@main.group()
def payer() -> None:
    """The payer simulator: a member database that answers 270s."""


@payer.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
@click.option("--database", "database", default="sqlite:///payer-simulator.db", show_default=True,
              help="SQLAlchemy URL of the member database (SQLite file or postgresql+psycopg://...).")
@click.option("--seed", "seed", type=click.Path(exists=True, file_okay=False),
              help="Load every member record (*.json) in this folder first (existing ones are kept).")
@click.option("--payer-id", "payer_id", help="Answer only 270s addressed to this payer id (2100A NM109).")
@click.option("--validation", type=click.Choice(["full", "structure"]), default="full", show_default=True,
              help="full: implementation-guide validation of every 270 (pyx12), as a payer does; structure: "
                   "envelope, loops and counts only (load tests, where the simulator must not be the bottleneck).")
@click.option("--worker-class", "worker_class", type=click.Choice(["gthread", "gevent"]), default="gevent",
              show_default=True,
              help="gevent: one cooperative (monkey-patched) worker whose fault sleeps (latency, timeout) hold only "
                   "their own request; gthread: a fixed pool of --threads, which as many held requests exhaust.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="threads of the gthread worker (a latency or timeout fault holds one for its seconds).")
@click.option("--accounts-env", "accounts_env", metavar="NAME",
              help="Require credentials on the 270 endpoints: NAME is an environment variable holding "
                   "user:password[,user:password...] (CORE UsernameToken / UserName+Password; HTTP Basic on /x12). "
                   "Without it the endpoints are open.")
def payer_serve(host: str, port: int, database: str, seed: str | None, payer_id: str | None,
                validation: str, worker_class: str, threads: int, accounts_env: str | None) -> None:
    """Run the payer simulator under gunicorn (one process: the scenarios live in memory).

    gevent by default: an injected fault (a 30 s timeout) must slow only its own request, never /scenarios or the
    other members' answers, as eight of them did when they held all eight gthread threads."""
    import os

    # read before anything starts, so a wrong variable is a usage error (exit 2) rather than a server refusing
    # everyone; messages name the variable, never its value (secrets stay off the command line and out of logs)
    accounts_text = os.environ.get(accounts_env, "") if accounts_env else None
    if accounts_text is not None and not accounts_text.strip():
        _fail(f"--accounts-env {accounts_env}: the environment variable is not set or is empty")
    from gateway.payer.accounts import parse_accounts

    accounts = None
    if accounts_text is not None:
        try:
            accounts = parse_accounts(accounts_text)
        except ValueError as exc:
            _fail(f"--accounts-env {accounts_env}: {exc}")
    if worker_class == "gevent":   # the default: every usage error above is reported before patching
        from gevent import monkey

        monkey.patch_all()   # before the app's modules (sockets, threads) are imported
    from gateway.payer.app import create_payer_app
    from gateway.serving import serve

    _port_free(host, port, "--port")
    config = {"PAYER_DATABASE_URL": database, "PAYER_ID": payer_id, "PAYER_VALIDATION": validation,
              "PAYER_ACCOUNTS": accounts}
    if accounts is not None:
        click.echo(f"fhir-x12: the 270 endpoints require credentials ({len(accounts)} account(s) from "
                   f"{accounts_env})", err=True)
    # seed (and finish what a previous run left queued) here; the served app, with its operations worker
    # thread, is built in the gunicorn worker process: a thread started before the fork would not exist there
    try:
        setup = create_payer_app({**config, "PAYER_WORKER": False})
    except Exception as exc:   # a URL that is no database, a server that cannot be reached: one line, exit 2
        from gateway.store.migrate import open_problem

        _fail(f"--database: cannot open the simulator's member store: {open_problem(exc, database)}")
        return
    try:
        if seed:
            loaded = seed_members(setup, Path(seed))
            click.echo(f"fhir-x12: {loaded} member record(s) from {seed}", err=True)
        setup.extensions["payer_store"].process_pending()
    finally:
        setup.extensions["payer_store"].close()
    serve(lambda: create_payer_app(config), host, port, threads=threads, worker_class=worker_class)


def _interchange_id(param: click.Parameter, value: str | None) -> str | None:
    """An ISA06/ISA08 (and GS02/GS03) id as the writer would send it unchanged, or a usage error."""
    if value is not None and not (2 <= len(value) <= 15 and all(ch.isascii() and (ch.isalnum() or ch in " -.")
                                                               for ch in value)):   # GS02/GS03: 2 to 15
        raise click.BadParameter("an interchange id is 2 to 15 letters, digits, spaces, '-' or '.'", param=param)
    return value


def seed_members(app, folder: Path) -> int:  # type: ignore[no-untyped-def]
    """Queue every record of ``folder`` that is not stored yet and apply them; how many were new."""
    from gateway.payer.records import validate_record

    store = app.extensions["payer_store"]
    count = 0
    for path in sorted(folder.glob("*.json")):
        try:
            record, problems = validate_record(json.loads(path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:   # a ValueError, but not a JSONDecodeError: it was a traceback
            _fail(f"{path}: cannot read: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})")
            return count
        except RecursionError:
            _fail(f"{path}: cannot read: JSON nested too deeply")
            return count
        except (OSError, json.JSONDecodeError) as exc:
            _fail(f"{path}: cannot read: {exc}")
            return count
        if problems:
            _fail(f"{path}: " + "; ".join(f"{p['path']}: {p['message']}" for p in problems), EXIT_INVALID)
        if store.get(record["memberid"], record["groupnumber"]) is None:
            # applied one by one: a file whose ids another record (or an earlier file) holds fails here, by name
            op_id = store.submit("create", record["memberid"], record["groupnumber"], record)
            store.process_pending()
            op = store.operation(op_id)
            if op is not None and op.status == "failed":
                _fail(f"{path}: " + "; ".join(op.errors), EXIT_INVALID)
            count += 1
    store.process_pending()
    return count


if __name__ == "__main__":  # pragma: no cover
    main()
