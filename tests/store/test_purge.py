"""Retention: old transactions are deleted with their identifiers, in batches, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from gateway.cli import main
from gateway.store import AuditStore
from gateway.store.models import RecordIdentifier

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def fill(store: AuditStore, ages_in_days: list[float]) -> None:
    """One answered transaction per age, each with a request and a response identifier."""
    for n, days in enumerate(ages_in_days):
        received = NOW - timedelta(days=days)
        store.record_request(f"t{n}", {"resourceType": "CoverageEligibilityRequest", "status": "active",
                                       "identifier": [{"system": "urn:req", "value": f"q{n}"}]},
                             None, "ACME01", f"T{n}", received)
        store.record_answer(f"t{n}", x12_response="ISA~", outcome=None, aaa_codes=[], http_status=200,
                            answered_at=received, response={"resourceType": "CoverageEligibilityResponse",
                                                            "id": f"r{n}", "outcome": "complete",
                                                            "identifier": [{"system": "urn:rsp", "value": f"s{n}"}]})


def identifiers(store: AuditStore) -> int:
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(RecordIdentifier)).scalar_one()


@pytest.fixture
def store(database_url: str):
    with AuditStore(database_url) as opened:
        yield opened


@pytest.mark.parametrize("batch", [1, 2, 500])
def test_purge_deletes_what_is_older_and_keeps_the_rest(store: AuditStore, batch: int):
    fill(store, [90, 45, 31, 29, 1, 0])
    assert store.purge(NOW - timedelta(days=30), batch=batch, dry_run=True) == 3
    assert identifiers(store) == 12   # a dry run deletes nothing
    assert store.purge(NOW - timedelta(days=30), batch=batch) == 3
    assert [store.get_request(f"t{n}") is None for n in range(6)] == [True, True, True, False, False, False]
    assert identifiers(store) == 6   # the kept transactions' request and response identifiers, no orphans
    found, total = store.search_requests({"identifier": ["urn:req|q0"]}, 10, 0)
    assert (found, total) == ([], 0)
    found, total = store.search_responses({"identifier": ["urn:rsp|s3"]}, 10, 0)
    assert total == 1 and found[0]["id"] == "r3"
    assert store.purge(NOW - timedelta(days=30), batch=batch) == 0   # nothing left to do


def test_purge_refuses_an_empty_batch(store: AuditStore):
    with pytest.raises(ValueError, match="batch"):
        store.purge(NOW, batch=0)


def test_purge_takes_naive_times_as_utc(store: AuditStore):
    fill(store, [2, 0.5])
    assert store.purge((NOW - timedelta(days=1)).replace(tzinfo=None)) == 1
    assert store.get_request("t1") is not None


def test_the_cli_purges_by_age_and_dry_run_only_counts(database_url: str):
    now = datetime.now(UTC)
    with AuditStore(database_url) as opened:
        for n, days in enumerate([40, 35, 2]):
            opened.record_request(f"c{n}", {"resourceType": "CoverageEligibilityRequest", "status": "active"},
                                  None, "ACME01", f"C{n}", now - timedelta(days=days))
    runner = CliRunner()
    dry = runner.invoke(main, ["store", "purge", "--older-than", "30d", "--database", database_url, "--dry-run"])
    assert dry.exit_code == 0 and dry.output.startswith("would delete 2 transaction(s) received before ")
    done = runner.invoke(main, ["store", "purge", "--older-than", "30d", "--database", database_url])
    assert done.exit_code == 0 and done.output.startswith("deleted 2 transaction(s) received before ")
    with AuditStore(database_url) as opened:
        assert opened.get_request("c2") is not None and opened.get_request("c0") is None


@pytest.mark.parametrize(("age", "words"), [("30x", "not a duration like 30d"), ("", "not a duration"),
                                             ("59m", "at least 1h"), ("0d", "at least 1h"),
                                             ("999999w", "at most 100 years")])
def test_the_cli_refuses_bad_ages_in_one_line(tmp_path, age: str, words: str):
    result = CliRunner().invoke(main, ["store", "purge", "--older-than", age, "--database",
                                       f"sqlite:///{tmp_path / 'a.db'}"])
    assert result.exit_code == 2 and words in result.output and len(result.output.splitlines()) == 1
    assert not (tmp_path / "a.db").exists()   # refused before the store is opened


def test_the_cli_names_an_unreachable_store_without_its_password():
    url = "postgresql+psycopg://gateway:s3cret@127.0.0.1:1/audit"
    result = CliRunner().invoke(main, ["store", "purge", "--older-than", "30d", "--database", url])
    assert result.exit_code == 2 and "cannot open the audit store (--database): connection" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("url", ["postgresql://gateway:s3cret@127.0.0.1:badport/audit", "notaurl",
                                 "http://gateway:s3cret@example.org/db"])
def test_the_cli_names_a_url_that_is_no_database_in_one_line(url: str):
    result = CliRunner().invoke(main, ["store", "migrate", "--database", url])
    assert result.exit_code == 2 and "cannot open the audit store (--database): not a" in result.output
    assert "s3cret" not in result.output and len(result.output.splitlines()) == 1


@pytest.mark.parametrize("dry_run", [False, True])
def test_purge_never_creates_a_store_where_there_is_none(tmp_path, dry_run: bool):
    """A retention job pointed at a mistyped path must fail, not purge a new empty store every night."""
    url = f"sqlite:///{tmp_path / 'typo' / 'gw.db'}"
    result = CliRunner().invoke(main, ["store", "purge", "--older-than", "30d", "--database", url,
                                       *(["--dry-run"] if dry_run else [])])
    assert result.exit_code == 2 and f"there is no audit store at {tmp_path / 'typo' / 'gw.db'}" in result.output
    assert not (tmp_path / "typo").exists()
    empty = tmp_path / "empty.db"
    empty.touch()   # a file, but no store in it: refused, and left as it was found (no WAL files, no pragmas)
    result = CliRunner().invoke(main, ["store", "purge", "--older-than", "30d", "--database", f"sqlite:///{empty}"])
    assert result.exit_code == 2 and "holds no audit store" in result.output
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
    other = tmp_path / "other.txt"
    other.write_text("not a database at all, " * 100)
    result = CliRunner().invoke(main, ["store", "purge", "--older-than", "30d", "--database", f"sqlite:///{other}"])
    assert result.exit_code == 2 and "is not a SQLite database the gateway can read" in result.output


def test_the_cli_names_a_store_newer_than_the_code(tmp_path):
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'new.db'}"
    with AuditStore(url):
        pass
    engine = create_engine(url)
    with engine.begin() as connection:   # as a later version of the gateway would leave it
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    result = CliRunner().invoke(main, ["store", "purge", "--older-than", "30d", "--database", url])
    assert result.exit_code == 2 and "at schema 9999, newer than this version" in result.output
    assert "Traceback" not in result.output


def test_the_cli_migrates(tmp_path):
    result = CliRunner().invoke(main, ["store", "migrate", "--database", f"sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 0 and "up to date" in result.output and (tmp_path / "m.db").exists()


@pytest.mark.parametrize("made_by_hand", [False, True])
def test_a_store_made_before_the_index_is_upgraded_when_opened(database_url: str, made_by_hand: bool):
    from alembic import command
    from sqlalchemy import create_engine, inspect, text

    from gateway.store.migrate import alembic_config

    command.upgrade(alembic_config(database_url), "0001")
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            assert "ix_eligibility_transactions_received_at" not in {
                i["name"] for i in inspect(connection).get_indexes("eligibility_transactions")}
            if made_by_hand:   # as an operator would, without locking (CONCURRENTLY on PostgreSQL), beforehand
                connection.execute(text("CREATE INDEX ix_eligibility_transactions_received_at "
                                        "ON eligibility_transactions (received_at)"))
    finally:
        engine.dispose()
    with AuditStore(database_url) as opened:   # migrates to head on open
        fill(opened, [40, 1])
        with opened.engine.connect() as connection:
            assert "ix_eligibility_transactions_received_at" in {
                i["name"] for i in inspect(connection).get_indexes("eligibility_transactions")}
        assert opened.purge(NOW - timedelta(days=30)) == 1


def test_open_problem_never_shows_the_password_however_the_driver_quotes_it():
    from gateway.store.migrate import open_problem

    url = "postgresql://gateway:p%40ss-" + "x" * 20 + "@db.example/audit"
    secret = "p@ss-" + "x" * 20
    for text in (f"{'y' * 290} {secret} tail", f"connection for {url} failed", f"password {secret} refused"):
        said = open_problem(RuntimeError(text), url)
        assert "p@ss" not in said and "p%40ss" not in said and "xxxxxxxxxx" not in said


def test_open_problem_redacts_the_password_as_written_in_any_case_of_percent_encoding():
    from gateway.store.migrate import open_problem

    url = "postgresql://u:p%2fss%40word@db.example/audit"
    for quoted in ("p%2fss%40word", "p%2Fss%40word", "p/ss@word"):
        assert quoted not in open_problem(RuntimeError(f"connection for postgresql://u:{quoted}@db failed"), url)


def test_a_sqlite_file_under_the_home_folder_is_the_home_folders(tmp_path, monkeypatch):
    from gateway.store.migrate import normalize_url

    monkeypatch.setenv("HOME", str(tmp_path))
    assert normalize_url("sqlite:///~/audit/gw.db") == f"sqlite:///{tmp_path}/audit/gw.db"
    with AuditStore("sqlite:///~/audit/gw.db"):
        pass
    assert (tmp_path / "audit" / "gw.db").is_file()
    result = CliRunner().invoke(main, ["store", "purge", "--older-than", "30d", "--dry-run", "--database",
                                       "sqlite:///~/audit/gw.db"])
    assert result.exit_code == 0, result.output
