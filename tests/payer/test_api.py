"""The eligibility API on a real server on loopback: create, patch, delete, operations, bad input."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from werkzeug.serving import make_server

from gateway.payer.app import create_payer_app
from tests.conftest import FIXTURES
from tests.payer.test_answer import DELGADO


@pytest.fixture
def server(tmp_path):
    app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{tmp_path / 'payer.db'}"})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", app
    httpd.shutdown()
    app.extensions["payer_store"].close()


def wait(url: str) -> dict:
    for _ in range(100):
        body = requests.get(url, timeout=5).json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"operation {url} did not finish")


def create(base: str, record: dict) -> dict:
    response = requests.post(f"{base}/eligibility", json=record, timeout=5)
    assert response.status_code == 202, response.text
    return wait(response.headers["Operation-Location"])


def test_create_read_patch_delete(server):
    base, _ = server
    assert create(base, DELGADO)["status"] == "succeeded"
    keys = {"memberid": DELGADO["memberid"], "groupnumber": DELGADO["groupnumber"]}
    assert requests.get(f"{base}/eligibility", params=keys, timeout=5).json()["lastname"] == "DELGADO"
    again = create(base, DELGADO)
    assert again["status"] == "failed" and "already exists" in again["errors"][0]
    patch = {"accumulators": [{"record_action": "m", "accum_name": "DED", "coveragetype": "MEDICAL",
                               "innetwork": "Y", "individualaccum": "Y", "currentamount": 900}],
             "coverages": [{"record_action": "n", "covtypename": "DENTAL", "covtypedesc": "ACME DENTAL",
                            "coveffdate": "20250101"}],
             "benefits": [{"record_action": "d", "servicetype": "98", "benefittype": "copay", "innetwork": "Y"}]}
    response = requests.patch(f"{base}/eligibility", params=keys, json=patch, timeout=5)
    assert response.status_code == 202
    assert wait(response.headers["Operation-Location"])["status"] == "succeeded"
    record = requests.get(f"{base}/eligibility", params=keys, timeout=5).json()
    assert record["accumulators"][0]["currentamount"] == 900
    assert record["coverages"][1]["coveffdate"] == "2025-01-01"
    assert [b["servicetype"] for b in record["benefits"]] == ["30"]
    bad_patch = {"coverages": [{"record_action": "m", "covtypename": "VISION", "covtypedesc": "X"}]}
    response = requests.patch(f"{base}/eligibility", params=keys, json=bad_patch, timeout=5)
    failed = wait(response.headers["Operation-Location"])
    assert failed["status"] == "failed" and "no coverages record" in failed["errors"][0]
    response = requests.delete(f"{base}/eligibility", params=keys, timeout=5)
    assert wait(response.headers["Operation-Location"])["status"] == "succeeded"
    assert requests.get(f"{base}/eligibility", params=keys, timeout=5).status_code == 404


@pytest.mark.parametrize("record, path", [
    ({**DELGADO, "MemberID": "x"}, "MemberID"),
    ({k: v for k, v in DELGADO.items() if k != "memberid"}, "memberid"),
    ({**DELGADO, "salary": "lots"}, "salary"),
    ({**DELGADO, "dob": "1978-13-40"}, "dob"),
    ({**DELGADO, "accumulators": [{**DELGADO["accumulators"][0], "daterange": "2025"}]}, "accumulators[0].daterange"),
    ({**DELGADO, "accumulators": [{**DELGADO["accumulators"][0], "innetwork": "maybe"}]},
     "accumulators[0].innetwork"),
    ({**DELGADO, "coverages": [{"covtypename": "MEDICAL", "record_action": "n"}]}, "coverages[0].record_action"),
    # values a 271 cannot carry, or would carry altered
    ({**DELGADO, "dob": "1980-02-31"}, "dob"),
    ({**DELGADO, "coverages": [{**DELGADO["coverages"][0], "coveffdate": "20250230"}]}, "coverages[0].coveffdate"),
    ({**DELGADO, "accumulators": [{**DELGADO["accumulators"][0], "currentamount": "NaN"}]},
     "accumulators[0].currentamount"),
    ({**DELGADO, "accumulators": [{**DELGADO["accumulators"][0], "maximumamount": "Infinity"}]},
     "accumulators[0].maximumamount"),
    ({**DELGADO, "benefits": [{**DELGADO["benefits"][0], "amount": "1e20"}]}, "benefits[0].amount"),
    ({**DELGADO, "benefits": [{**DELGADO["benefits"][0], "amount": -5}]}, "benefits[0].amount"),
    ({**DELGADO, "benefits": [{**DELGADO["benefits"][1], "percent": 250}]}, "benefits[0].percent"),
    ({**DELGADO, "coverages": [{**DELGADO["coverages"][0], "covtypedesc": "PLAN*GOLD~EB*1"}]},
     "coverages[0].covtypedesc"),
    ({**DELGADO, "priorauth": [{**DELGADO["priorauth"][0], "url": "https://x.example/a>b^c*d~e"}]},
     "priorauth[0].url"),
    ({**DELGADO, "lastname": "DEL\x07GADO"}, "lastname"),
])
def test_bad_input_is_400_with_every_problem_and_its_path(server, record, path):
    base, app = server
    response = requests.post(f"{base}/eligibility", json=record, timeout=5)
    assert response.status_code == 400
    assert path in [p["path"] for p in response.json()["problems"]]
    assert app.extensions["payer_store"].by_member_id() == {}


def test_unknown_record_action_in_a_patch(server):
    base, _ = server
    response = requests.patch(f"{base}/eligibility", params={"memberid": "A", "groupnumber": "B"},
                              json={"coverages": [{"record_action": "x", "covtypename": "MEDICAL"}]}, timeout=5)
    assert response.status_code == 400 and "record_action" in response.text


@pytest.mark.parametrize("patch, path", [
    ({"coverages": [{"covtypename": "X", "record_action": ["n"]}]}, "coverages[0].record_action"),   # was a 500
    ({"coverages": [{"covtypename": "X", "record_action": {}}]}, "coverages[0].record_action"),
    ({"record_action": "n"}, "record_action"),   # the member itself has none: it was stored on the record
])
def test_bad_record_actions_in_a_patch_are_400(server, patch, path):
    base, _ = server
    response = requests.patch(f"{base}/eligibility", params={"memberid": "A", "groupnumber": "B"}, json=patch,
                              timeout=5)
    assert response.status_code == 400
    assert path in [p["path"] for p in response.json()["problems"]]


def test_an_unsupported_interchange_version_gets_a_ta1_003_echoing_the_control_number(server):
    base, _ = server
    data = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes().replace(b"*00501*", b"*00401*", 1)
    response = requests.post(f"{base}/x12", data=data, headers={"Content-Type": "application/edi-x12"}, timeout=10)
    assert "TA1*000001001*250310*0915*R*003~" in response.text and "ST*" not in response.text


def test_a_repetition_separator_equal_to_the_element_separator_is_read_by_the_fixed_isa_layout(server):
    """ISA11 "*": counted as a separator it shifted every later element, and the answer echoed a wrong ISA13."""
    base, _ = server
    create(base, DELGADO)
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    assert text[82] == "^"
    response = requests.post(f"{base}/x12", data=(text[:82] + "*" + text[83:]).encode(),
                             headers={"Content-Type": "application/edi-x12"}, timeout=10)
    assert response.status_code == 200 and "ST*271" in response.text
    assert "*T*>~" in response.text[:106]   # usage T echoed from the 270's ISA15, the right element


def test_raw_x12_answers_a_270_for_a_loaded_member(server):
    base, _ = server
    create(base, DELGADO)
    response = requests.post(f"{base}/x12", data=(FIXTURES / "x12" / "270" / "subscriber-generic.270").read_bytes(),
                             headers={"Content-Type": "application/edi-x12"}, timeout=10)
    assert response.status_code == 200 and "ST*271" in response.text
    assert "EB*C*IND*30***23*1500" in response.text


def test_an_invalid_270_gets_a_999(server):
    base, _ = server
    data = (FIXTURES / "x12" / "invalid" / "eq01-invalid-code.x12").read_bytes()
    response = requests.post(f"{base}/x12", data=data, timeout=10)
    assert "ST*999" in response.text and "IK5*R" in response.text


def applied(store, op_id: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether the store's worker applies the operation within 5 s."""
    for _ in range(100):
        if store.operation(op_id).status == "succeeded":
            return True
        time.sleep(0.05)
    return store.operation(op_id).status == "succeeded"


def test_an_accepted_operation_survives_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    first = create_payer_app({"PAYER_DATABASE_URL": url, "PAYER_WORKER": False})
    op_id = first.extensions["payer_store"].submit("create", DELGADO["memberid"], DELGADO["groupnumber"], DELGADO)
    first.extensions["payer_store"].engine.dispose()   # the process dies before the worker ran
    second = create_payer_app({"PAYER_DATABASE_URL": url})
    store = second.extensions["payer_store"]
    assert applied(store, op_id)
    assert store.get(DELGADO["memberid"], DELGADO["groupnumber"])["lastname"] == "DELGADO"
    store.close()


def _postgres_url() -> str | None:
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                connection.execute(text("select 1"))
        finally:
            engine.dispose()
        return url
    except Exception:  # noqa: BLE001 - any failure means no server to test against
        return None


def test_postgresql_store_when_the_server_is_there():
    url = _postgres_url()
    if url is None:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    from sqlalchemy import text

    app = create_payer_app({"PAYER_DATABASE_URL": url, "PAYER_WORKER": False})
    store = app.extensions["payer_store"]
    with store.engine.begin() as connection:
        connection.execute(text("delete from payer_members where memberid = :m"), {"m": DELGADO["memberid"]})
    op_id = store.submit("create", DELGADO["memberid"], DELGADO["groupnumber"], DELGADO)
    store.process_pending()
    assert store.operation(op_id).status == "succeeded"
    assert store.by_member_id()[DELGADO["memberid"]]["dob"] == "1978-05-14"
    with store.engine.begin() as connection:
        connection.execute(text("delete from payer_members where memberid = :m"), {"m": DELGADO["memberid"]})
    store.close()


def test_a_killed_process_leaves_its_accepted_create_for_the_next_one(tmp_path):
    """A real process accepts a create and dies (os._exit) before any worker runs; the next one applies it."""
    import json
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'killed.db'}"
    script = (
        "import json, os, sys\n"
        "from gateway.payer.app import create_payer_app\n"
        f"app = create_payer_app({{'PAYER_DATABASE_URL': {url!r}, 'PAYER_WORKER': False}})\n"
        "record = json.loads(sys.stdin.read())\n"
        "print(app.extensions['payer_store'].submit('create', record['memberid'], record['groupnumber'], record))\n"
        "sys.stdout.flush()\n"
        "os._exit(137)\n")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(DELGADO), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 137, done.stderr
    op_id = done.stdout.strip()
    app = create_payer_app({"PAYER_DATABASE_URL": url})
    store = app.extensions["payer_store"]
    assert applied(store, op_id)
    store.close()


def test_seed_loads_the_demo_members_once(tmp_path):
    from gateway.cli import seed_members

    app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{tmp_path / 'seed.db'}", "PAYER_WORKER": False})
    first = seed_members(app, FIXTURES / "members")
    assert first >= 12 and seed_members(app, FIXTURES / "members") == 0
    assert len(app.extensions["payer_store"].by_member_id()) == first
    app.extensions["payer_store"].close()


def test_two_interchanges_the_second_in_error_get_a_ta1_rejecting_the_second(server):
    base, _ = server
    good = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    bad = good.replace("*000001001*", "*000001002*", 1).replace("IEA*1*000001001~", "IEA*1*000009999~")
    assert bad != good
    response = requests.post(f"{base}/x12", data=(good + bad).encode(), headers={"Content-Type": "application/edi-x12"},
                             timeout=10)
    assert "TA1*000001002*" in response.text and "*R*" in response.text   # was TA1*000001001*...*A*000


@pytest.mark.parametrize("change", ["no set", "no group", "set outside the group"])
def test_an_interchange_a_999_cannot_name_gets_a_ta1_024(server, change):
    """It got a 999 with an empty AK1 (AK9*A: "accepted") to UNKNOWN, or for a set after the GE, a 999 rejecting the
    valid set before it; a 999 acknowledges the sets of functional groups, and these have none to name."""
    base, _ = server
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    st_at, ge_at = text.index("ST*270"), text.index("GE*")
    data = {"no set": text[:st_at] + text[ge_at:].replace("GE*1*", "GE*0*"),
            "no group": text[:text.index("GS*")] + text[text.index("IEA*"):].replace("IEA*1*", "IEA*0*"),
            "set outside the group": text[:ge_at] + text[ge_at:text.index("IEA*")] + text[st_at:ge_at]
            + text[text.index("IEA*"):]}[change]
    response = requests.post(f"{base}/x12", data=data.encode(), timeout=10)
    assert response.status_code == 200 and "ST*" not in response.text
    assert "*ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *" in response.text   # back to the sender, not to UNKNOWN
    assert "TA1*000001001*250310*0915*R*024~" in response.text


def _acc(**change):  # type: ignore[no-untyped-def]
    return {**DELGADO, "accumulators": [{**DELGADO["accumulators"][0], **change}, DELGADO["accumulators"][1]]}


@pytest.mark.parametrize("record, path", [
    ({**DELGADO, "coverages": [{**DELGADO["coverages"][0], "covtermdate": "2024-12-31"},
                               DELGADO["coverages"][1]]}, "coverages[0].covtermdate"),
    (_acc(currentamount=1600), "accumulators[0].currentamount"),   # used 1600 of a 1500 limit
    (_acc(daterange="2025-12-31/2025-01-01"), "accumulators[0].daterange"),
    (_acc(coveragetype="DENTAL"), "accumulators[0].coveragetype"),
    (_acc(accum_name="CHIRO"), "accumulators[1].accum_name"),
    ({**DELGADO, "benefits": [{**DELGADO["benefits"][0], "servicetype": "29"}]}, "benefits[0].servicetype"),
    ({**DELGADO, "benefits": [{**DELGADO["benefits"][0], "timeperiod": "fortnight"}]}, "benefits[0].timeperiod"),
    ({**DELGADO, "benefits": [{k: v for k, v in DELGADO["benefits"][1].items() if k != "percent"}]},
     "benefits[0].percent"),
    ({**DELGADO, "dependents": [{"depmemberid": "D1", "firstname": "ANA", "lastname": "DELGADO", "dob": "2010-01-01",
                                 "relationship": "child", "coverages": [], "benefits": [],
                                 "accumulators": [{**DELGADO["accumulators"][0], "coveragetype": "VISION"}]}]},
     "dependents[0].accumulators[0].coveragetype"),
])
def test_a_self_contradictory_record_is_400_with_the_path(server, record, path):
    """Each field valid on its own, together they made the simulator write an invalid or contradictory 271."""
    base, app = server
    response = requests.post(f"{base}/eligibility", json=record, timeout=5)
    assert response.status_code == 400, response.text
    assert [p["path"] for p in response.json()["problems"]] == [path]
    assert app.extensions["payer_store"].by_member_id() == {}


def test_every_cross_field_problem_is_listed_at_once(server):
    base, _ = server
    record = {**_acc(currentamount=1600, daterange="2025-12-31/2025-01-01", coveragetype="DENTAL"),
              "benefits": [{**DELGADO["benefits"][0], "servicetype": "ZZ", "timeperiod": "fortnight"}]}
    response = requests.post(f"{base}/eligibility", json=record, timeout=5)
    assert response.status_code == 400
    assert sorted(p["path"] for p in response.json()["problems"]) == [
        "accumulators[0].coveragetype", "accumulators[0].currentamount", "accumulators[0].daterange",
        "benefits[0].servicetype", "benefits[0].timeperiod"]


def test_a_patch_that_would_contradict_the_stored_record_is_400_and_the_record_is_unchanged(server):
    base, app = server
    assert create(base, DELGADO)["status"] == "succeeded"
    keys = {"memberid": DELGADO["memberid"], "groupnumber": DELGADO["groupnumber"]}
    patch = {"accumulators": [{"record_action": "m", "accum_name": "DED", "coveragetype": "MEDICAL",
                               "innetwork": "Y", "individualaccum": "Y", "currentamount": 9000}]}
    response = requests.patch(f"{base}/eligibility", params=keys, json=patch, timeout=5)
    assert response.status_code == 400
    assert [p["path"] for p in response.json()["problems"]] == ["accumulators[0].currentamount"]
    # the operation checks again when it runs (the record may have changed since the request was accepted)
    store = app.extensions["payer_store"]
    op_id = store.submit("patch", DELGADO["memberid"], DELGADO["groupnumber"], patch)
    store.process_pending()
    assert store.operation(op_id).status == "failed"
    assert "accumulators[0].currentamount" in store.operation(op_id).errors[0]
    assert store.get(DELGADO["memberid"], DELGADO["groupnumber"])["accumulators"][0]["currentamount"] == 750


def test_the_seed_loader_refuses_a_contradictory_record(tmp_path):
    import json

    from click.testing import CliRunner

    from gateway.cli import main

    folder = tmp_path / "seed"
    folder.mkdir()
    (folder / "bad.json").write_text(json.dumps(_acc(currentamount=1600)))
    result = CliRunner().invoke(main, ["payer", "serve", "--seed", str(folder), "--database",
                                       f"sqlite:///{tmp_path / 'seed.db'}", "--port", "0",
                                       "--worker-class", "gthread"])   # gevent would monkey-patch pytest
    assert result.exit_code == 1
    assert "accumulators[0].currentamount" in result.output


def test_a_member_id_on_file_under_another_group_is_refused(server):
    """The store is keyed by (memberid, groupnumber) but a 270 finds a person by member id alone: a second record
    with the same id silently shadowed the first."""
    base, app = server
    assert create(base, DELGADO)["status"] == "succeeded"
    response = requests.post(f"{base}/eligibility", json={**DELGADO, "groupnumber": "OTHER", "lastname": "SHADOW"},
                             timeout=5)
    assert response.status_code == 409
    problem, = response.json()["problems"]
    assert problem["path"] == "memberid" and "already on file" in problem["message"]
    # a dependent's own id is a member id too, both ways
    dependent = {"depmemberid": DELGADO["memberid"], "firstname": "ANA", "lastname": "DELGADO",
                 "dob": "2010-01-01", "relationship": "child"}
    response = requests.post(f"{base}/eligibility", json={**DELGADO, "memberid": "NEW1", "dependents": [dependent]},
                             timeout=5)
    assert response.status_code == 409
    assert response.json()["problems"][0]["path"] == "dependents[0].depmemberid"
    assert create(base, {**DELGADO, "memberid": "NEW2", "dependents": [{**dependent, "depmemberid": "DEP9"}]}
                  )["status"] == "succeeded"
    response = requests.post(f"{base}/eligibility", json={**DELGADO, "memberid": "DEP9"}, timeout=5)
    assert response.status_code == 409
    patch = {"dependents": [{**dependent, "depmemberid": "DEP9", "record_action": "n"}]}
    response = requests.patch(f"{base}/eligibility", params={"memberid": DELGADO["memberid"],
                                                             "groupnumber": DELGADO["groupnumber"]}, json=patch,
                              timeout=5)
    assert response.status_code == 409
    # the operation checks too (two creates accepted before either ran)
    store = app.extensions["payer_store"]
    op_id = store.submit("create", DELGADO["memberid"], "OTHER", {**DELGADO, "groupnumber": "OTHER"})
    store.process_pending()
    assert store.operation(op_id).status == "failed" and "already on file" in store.operation(op_id).errors[0]
    assert store.by_member_id()[DELGADO["memberid"]]["lastname"] == "DELGADO"


def test_the_seed_loader_refuses_a_member_id_held_by_another_file(tmp_path):
    import json

    from click.testing import CliRunner

    from gateway.cli import main

    folder = tmp_path / "seed"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(DELGADO))
    (folder / "b.json").write_text(json.dumps({**DELGADO, "groupnumber": "OTHER"}))
    result = CliRunner().invoke(main, ["payer", "serve", "--seed", str(folder), "--database",
                                       f"sqlite:///{tmp_path / 'seed.db'}", "--port", "0",
                                       "--worker-class", "gthread"])   # gevent would monkey-patch pytest
    assert result.exit_code == 1
    assert "b.json" in result.output and "already on file" in result.output


def _held(value: str, path: str, memberid: str, groupnumber: str) -> str:
    """The message of an id clash, word for word."""
    return (f"{value!r} is already on file as {path} of the record memberid {memberid!r} groupnumber "
            f"{groupnumber!r}: member ids are unique across groups (a 270 finds a person by id alone)")


def _person(memberid: str, *dependent_ids: str, groupnumber: str = DELGADO["groupnumber"]) -> dict:
    return {**DELGADO, "memberid": memberid, "groupnumber": groupnumber,
            "dependents": [{"depmemberid": d, "firstname": "ANA", "lastname": "DELGADO", "dob": "2010-01-01",
                            "relationship": "child"} for d in dependent_ids]}


def _child(depmemberid: str, action: str) -> dict:
    return {"depmemberid": depmemberid, "firstname": "LUIS", "lastname": "DELGADO", "dob": "2012-02-02",
            "relationship": "child", "record_action": action}


def _store(tmp_path, name: str = "ids.db"):  # type: ignore[no-untyped-def]
    app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{tmp_path / name}", "PAYER_WORKER": False})
    return app.extensions["payer_store"]


def _done(store, kind: str, memberid: str, groupnumber: str, payload: dict):  # type: ignore[no-untyped-def]
    op_id = store.submit(kind, memberid, groupnumber, payload)
    store.process_pending()
    return store.operation(op_id)


def test_every_id_clash_keeps_its_path_and_message(tmp_path):
    """The uniqueness rule through the id index: what a scan of every record reported, path and words."""
    store = _store(tmp_path)
    group = DELGADO["groupnumber"]
    assert _done(store, "create", "A1", group, _person("A1", "A1-02")).status == "succeeded"
    assert _done(store, "create", "B1", "G2", _person("B1", "B1-02", groupnumber="G2")).status == "succeeded"
    # another record's member id, under any group
    assert store.id_conflicts(_person("A1"), "A1", "OTHER") == [
        {"path": "memberid", "message": _held("A1", "memberid", "A1", group)}]
    # another record's dependent id, and a dependent holding a member id: by record as stored, then path order
    record = _person("B1-02", "A1", "NEW-02")
    expected = [{"path": "dependents[0].depmemberid", "message": _held("A1", "memberid", "A1", group)},
                {"path": "memberid", "message": _held("B1-02", "dependents[0].depmemberid", "B1", "G2")}]
    assert store.id_conflicts(record, "B1-02", group) == expected
    op = _done(store, "create", "B1-02", group, record)
    assert op.status == "failed" and op.errors == [f"{p['path']}: {p['message']}" for p in expected]
    assert store.get("B1-02", group) is None
    # a record's own ids are no clash when it is updated
    assert store.id_conflicts(_person("A1", "A1-02"), "A1", group) == []
    assert _done(store, "patch", "A1", group, {"firstname": "MARIA JOSE"}).status == "succeeded"
    # a patch adding a dependent whose id another record holds
    op = _done(store, "patch", "A1", group, {"dependents": [_child("B1", "n")]})
    assert op.status == "failed"
    assert op.errors == ["dependents[1].depmemberid: " + _held("B1", "memberid", "B1", "G2")]
    assert [d["depmemberid"] for d in store.get("A1", group)["dependents"]] == ["A1-02"]
    # a patch changing a dependent's id: the old one is free, the new one held, at its new path
    assert _done(store, "patch", "A1", group,
                 {"dependents": [_child("A1-02", "d"), _child("A1-09", "n")]}).status == "succeeded"
    assert store.id_conflicts(_person("Z1", "A1-02"), "Z1", group) == []
    assert store.id_conflicts(_person("Z1", "A1-09"), "Z1", group) == [
        {"path": "dependents[0].depmemberid", "message": _held("A1-09", "dependents[0].depmemberid", "A1", group)}]
    # a delete frees every id of the record, and a new record may take them
    assert _done(store, "delete", "B1", "G2", {}).status == "succeeded"
    assert store.id_conflicts(_person("B1-02", "B1"), "B1-02", group) == []
    assert _done(store, "create", "B1-02", group, _person("B1-02", "B1")).status == "succeeded"
    assert store.by_member_id()["B1-02"]["dependents"][0]["depmemberid"] == "B1"
    store.close()


def test_a_database_from_before_the_id_index_gets_it_filled(tmp_path):
    """An older version made the member and operation tables only: opening the file adds the index and fills it
    from the records on file, so their ids stay taken."""
    from sqlalchemy import create_engine, insert, inspect

    from gateway.payer.store import Member, MemberStore, Operation

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    Member.__table__.create(engine)
    Operation.__table__.create(engine)
    with engine.begin() as connection:   # the second holds an id twice, as a database from before the check may
        connection.execute(insert(Member.__table__), [
            {"memberid": "A1", "groupnumber": "G1", "record": _person("A1", "A1-02", groupnumber="G1")},
            {"memberid": "B1", "groupnumber": "G2", "record": _person("B1", "A1-02", groupnumber="G2")}])
    engine.dispose()
    store = MemberStore(url)
    assert inspect(store.engine).has_table("payer_member_ids")
    assert store.id_conflicts(_person("N1", "B1", "A1-02"), "N1", "G3") == [
        {"path": "dependents[1].depmemberid", "message": _held("A1-02", "dependents[0].depmemberid", "A1", "G1")},
        {"path": "dependents[0].depmemberid", "message": _held("B1", "memberid", "B1", "G2")}]
    assert _done(store, "delete", "A1", "G1", {}).status == "succeeded"
    assert store.id_conflicts(_person("A1"), "A1", "G3") == []
    store.close()
    again = MemberStore(url)   # filled once: a second opening finds it filled and leaves it
    assert again.id_conflicts(_person("B1"), "B1", "G3")[0]["path"] == "memberid"
    again.close()


def test_an_operation_refused_twice_by_the_database_fails_and_the_worker_goes_on(tmp_path, monkeypatch):
    """Another process storing the same id between the check and the commit, twice: that operation fails with a
    reason; the next one is applied (the IntegrityError used to end the worker thread, every later one pending)."""
    from sqlalchemy.exc import IntegrityError

    from gateway.payer.store import MemberStore

    store = _store(tmp_path)
    real = MemberStore._apply

    def clashing(self, session, op):  # type: ignore[no-untyped-def]
        if op.memberid == "RACE1":
            raise IntegrityError("INSERT", None, Exception("UNIQUE constraint failed"))
        return real(self, session, op)

    monkeypatch.setattr(MemberStore, "_apply", clashing)
    lost, kept = store.submit("create", "RACE1", "G1", _person("RACE1")), store.submit("create", "OK1", "G1",
                                                                                          _person("OK1"))
    store.start_worker()
    try:
        deadline = time.monotonic() + 10
        while store.operation(kept).status in ("notStarted", "running") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.operation(lost).status == "failed" and "submit it again" in store.operation(lost).errors[0]
        assert store.operation(kept).status == "succeeded" and store.get("OK1", "G1") is not None
    finally:
        store.stop_worker()
        store.close()


@contextmanager
def _work(engine) -> Iterator[dict[str, int]]:  # type: ignore[no-untyped-def]
    """What the block costs the database: SQL statements, member rows the ORM builds (each one's JSON parsed)
    and SQLite virtual machine steps (rows read, whatever the SQL)."""
    from sqlalchemy import event

    from gateway.payer.store import Member

    work = {"statements": 0, "members loaded": 0, "steps": 0}

    def statement(*_: object) -> None:
        work["statements"] += 1

    def loaded(*_: object) -> None:
        work["members loaded"] += 1

    def step() -> int:
        work["steps"] += 1
        return 0

    def checkout(dbapi_connection, *_: object) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.set_progress_handler(step, 1)

    def checkin(dbapi_connection, *_: object) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.set_progress_handler(None, 1)

    hooks = [(engine, "before_cursor_execute", statement), (Member, "load", loaded),
             (engine, "checkout", checkout), (engine, "checkin", checkin)]
    for target, name, hook in hooks:
        event.listen(target, name, hook)
    try:
        yield work
    finally:
        for target, name, hook in hooks:
            event.remove(target, name, hook)


@pytest.mark.parametrize("path", ["create", "seed"])
def test_adding_a_member_costs_the_same_with_10_or_200_on_file(tmp_path, path):
    """Each create read and parsed every stored record to check its ids (seeding N members was O(N^2)); the check
    is an indexed lookup now. Work counted, not timed: statements, member rows loaded, SQLite steps."""
    import json

    from gateway.cli import seed_members

    costs = []
    for stored in (10, 200):
        app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{tmp_path / f'{path}{stored}.db'}",
                                "PAYER_WORKER": False})
        store = app.extensions["payer_store"]
        for i in range(stored):
            store.submit("create", f"M{i}", "G1", _person(f"M{i}", f"M{i}-02", groupnumber="G1"))
        store.process_pending()
        folder = tmp_path / f"{path}{stored}"
        folder.mkdir()
        (folder / "new.json").write_text(json.dumps(_person("NEW1", "NEW1-02")))
        with _work(store.engine) as work:
            if path == "seed":
                assert seed_members(app, folder) == 1
            else:
                assert store.id_conflicts(_person("NEW1", "NEW1-02"), "NEW1", "G1") == []
                assert _done(store, "create", "NEW1", "G1", _person("NEW1", "NEW1-02")).status == "succeeded"
        # and a clash is still found among the 200
        assert store.id_conflicts(_person("M7"), "M7", "OTHER")[0]["path"] == "memberid"
        store.close()
        costs.append(work)
    few, many = costs
    assert many["statements"] == few["statements"] and many["members loaded"] == few["members loaded"] == 0
    assert many["steps"] <= few["steps"] * 1.2, costs


def test_the_member_cache_follows_applied_operations_without_reading_every_record(tmp_path):
    """A 270 after each create re-read and parsed the whole member table; the cache now takes the change over."""
    from gateway.payer.store import MemberStore

    store = _store(tmp_path)
    group = DELGADO["groupnumber"]
    for memberid in ("A1", "B1", "C1"):
        assert _done(store, "create", memberid, group, _person(memberid)).status == "succeeded"
    before = store.by_member_id()
    assert _done(store, "create", "D1", group, _person("D1")).status == "succeeded"
    assert _done(store, "patch", "A1", group, {"firstname": "ANNA"}).status == "succeeded"
    assert _done(store, "delete", "B1", group, {}).status == "succeeded"
    assert _done(store, "create", "C1", "G2", _person("C1", groupnumber="G2")).status == "failed"
    with _work(store.engine) as work:
        members = store.by_member_id()
    assert work["statements"] == 0
    assert sorted(before) == ["A1", "B1", "C1"] and before["A1"]["firstname"] == "MARIA"   # not changed in place
    fresh = MemberStore(store.engine.url.render_as_string(hide_password=False))
    assert members == fresh.by_member_id() and sorted(members) == ["A1", "C1", "D1"]
    assert members["A1"]["firstname"] == "ANNA"
    fresh.close()
    store.close()


@pytest.mark.parametrize("content, message", [
    ('{"memberid": "A", "lastname": "M\u00dcLLER"}'.encode("latin-1"), "not UTF-8 (byte 0xdc at offset 32)"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"memberid": "A"', "cannot read"),
])
def test_an_unreadable_seed_file_is_one_line_and_exit_2(tmp_path, content, message):
    """A non-UTF-8 file crashed payer serve with a UnicodeDecodeError traceback (truncated JSON was a clean 2)."""
    from click.testing import CliRunner

    from gateway.cli import main

    folder = tmp_path / "seed"
    folder.mkdir()
    (folder / "bad.json").write_bytes(content)
    result = CliRunner().invoke(main, ["payer", "serve", "--seed", str(folder), "--database",
                                       f"sqlite:///{tmp_path / 'seed.db'}", "--port", "0",
                                       "--worker-class", "gthread"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("path", ["/eligibility", "/scenarios"])
def test_deeply_nested_json_is_a_400_in_the_json_error_shape(server, path):
    """It was an HTML 500 (RecursionError in the JSON decoder)."""
    base, _ = server
    response = requests.post(f"{base}{path}", data=b"[" * 100_000 + b"]" * 100_000,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
    assert response.json()["problems"] == [{"path": "$", "message": "the JSON is nested too deeply"}]
    response = requests.patch(f"{base}/eligibility", params={"memberid": "A", "groupnumber": "B"},
                              data=b"[" * 100_000 + b"]" * 100_000, headers={"Content-Type": "application/json"},
                              timeout=10)
    assert response.status_code == 400 and response.json()["problems"][0]["message"] == "the JSON is nested too deeply"


def test_flask_refusals_are_json_for_the_json_apis_and_text_for_x12(server):
    """404, 405 and 413 were Flask's HTML pages; /x12 labelled its 'not readable as X12' text as X12."""
    base, _ = server
    for response, status in ((requests.get(f"{base}/nowhere", timeout=5), 404),
                             (requests.put(f"{base}/eligibility", json={}, timeout=5), 405),
                             (requests.put(f"{base}/scenarios", json={}, timeout=5), 405),
                             (requests.post(f"{base}/eligibility", data=b"{" + b" " * (6 * 1024 * 1024) + b"}",
                                            headers={"Content-Type": "application/json"}, timeout=30), 413)):
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/json", response.text[:200]
        assert response.json()["error"].startswith(str(status))
    assert "POST" in requests.put(f"{base}/eligibility", timeout=5).headers["Allow"]
    for response, status in ((requests.get(f"{base}/x12", timeout=5), 405),
                             (requests.post(f"{base}/x12", data=b"X" * (6 * 1024 * 1024), timeout=30), 413),
                             (requests.post(f"{base}/x12", data=b"hello", timeout=5), 400)):
        assert response.status_code == status
        assert response.headers["Content-Type"].startswith("text/plain"), response.text[:200]
    assert requests.post(f"{base}/x12", data=b"hello", timeout=5).text.startswith("not readable as X12")


@pytest.mark.parametrize(("database", "message"), [
    ("notaurl", "not a database URL"),
    ("postgresql://sim:s3cret@127.0.0.1:1/members", "connection"),
])
def test_a_member_store_that_cannot_be_opened_is_one_line_and_exit_2(database, message):
    """It was a SQLAlchemy traceback."""
    from click.testing import CliRunner

    from gateway.cli import main

    result = CliRunner().invoke(main, ["payer", "serve", "--database", database, "--port", "0",
                                       "--worker-class", "gthread"])   # gthread: no monkey-patching in the test
    assert result.exit_code == 2 and "--database: cannot open the simulator's member store: " in result.output
    assert message in result.output and "s3cret" not in result.output and "Traceback" not in result.output


def _from_other_sender(text: str, control: str) -> str:
    """The same 270 interchange from another sender (ISA06 and GS02), numbered ``control``: GS06 and ST02 stay."""
    return (text.replace("FHIRX12GW      ", "OTHERSENDER    ").replace("GS*HS*FHIRX12GW*", "GS*HS*OTHERSENDER*")
            .replace("000001001", control))


def _interchanges(text: str) -> list[str]:
    return ["ISA" + part for part in text.split("ISA")[1:]]


@pytest.mark.parametrize("kind", ["271", "999"])
def test_each_interchange_of_a_request_is_answered_back_to_its_own_sender(server, kind):
    """A 271 (or a 999) answering a request of two interchanges from two senders went, whole, to the first sender,
    with the second sender's defects reported against the first sender's set."""
    base, _ = server
    good = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    other = _from_other_sender(good, "000002002")
    if kind == "999":   # the second sender's set is invalid
        other = other.replace("EQ*30~", "EQ*ZZ~")
    response = requests.post(f"{base}/x12", data=(good + other).encode(),
                             headers={"Content-Type": "application/edi-x12"}, timeout=10)
    assert response.status_code == 200
    first, second = _interchanges(response.text)
    assert "*ZZ*FHIRX12GW      *" in first and "*ZZ*OTHERSENDER    *" in second
    assert f"ST*{kind}*" in first and f"ST*{kind}*" in second
    assert "*ACMEHLTH*FHIRX12GW*" in first and "*ACMEHLTH*OTHERSENDER*" in second   # GS02/GS03
    numbers = [text[90:99] for text in (first, second)]
    assert numbers[0] != numbers[1] and all(text.endswith(f"*{n}~") for text, n in zip((first, second), numbers,
                                                                                        strict=True))
    if kind == "999":
        assert "IK5*A~" in first and "IK3*" not in first
        assert "IK4*1*1365*7*ZZ~" in second and "IK5*R*5~" in second


def test_two_interchanges_both_in_error_get_a_ta1_each_back_to_its_sender(server):
    base, _ = server
    good = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    bad = good.replace("IEA*1*000001001~", "IEA*1*000009999~")
    other = _from_other_sender(bad, "000002002")
    response = requests.post(f"{base}/x12", data=(bad + other).encode(),
                             headers={"Content-Type": "application/edi-x12"}, timeout=10)
    first, second = _interchanges(response.text)
    assert "*ZZ*FHIRX12GW      *" in first and "TA1*000001001*250310*0915*R*001~" in first
    assert "*ZZ*OTHERSENDER    *" in second and "TA1*000002002*250310*0915*R*001~" in second


def test_an_interchange_repeating_an_isa13_gets_the_ta1_025_and_only_it(server):
    """The same interchange sent twice in one request was answered with two 271s; the TA1 must answer the repeat
    alone (both have ISA13 000001001: choosing by it answered the first one too, "accepted")."""
    base, _ = server
    good = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    response = requests.post(f"{base}/x12", data=(good + good).encode(),
                             headers={"Content-Type": "application/edi-x12"}, timeout=10)
    assert response.status_code == 200 and "ST*" not in response.text
    [answer] = _interchanges(response.text)
    assert "*ZZ*ACMEHLTH       *ZZ*FHIRX12GW      *" in answer and "TA1*000001001*250310*0915*R*025~" in answer


def test_a_group_repeating_a_gs06_gets_a_999_rejecting_that_group(server):
    base, _ = server
    good = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    head, tail = good.split("GE*1*1001~\n")
    group = head[head.index("GS*"):] + "GE*1*1001~\n"
    response = requests.post(f"{base}/x12", data=(head + "GE*1*1001~\n" + group + tail.replace("IEA*1*", "IEA*2*"))
                             .encode(), headers={"Content-Type": "application/edi-x12"}, timeout=10)
    assert response.status_code == 200 and "ST*999*" in response.text
    assert [s for s in response.text.split("~") if s.startswith("AK9")] == ["AK9*A*1*1*1", "AK9*R*1*1*0*19"]
