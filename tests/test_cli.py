"""``fhir-x12 validate``: exit codes, JSON, acknowledgments, and errors that name the problem."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import FIXTURES

VALID = FIXTURES / "x12" / "271" / "subscriber-benefits.271"
INVALID = FIXTURES / "x12" / "invalid" / "se01-wrong-count.x12"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_valid_file_exits_0():
    result = run("validate", str(VALID))
    assert result.exit_code == 0, result.output
    assert "valid, 0 finding(s)" in result.output


def test_invalid_file_exits_1_with_located_findings():
    result = run("validate", str(INVALID))
    assert result.exit_code == 1
    assert "X12-SE-COUNT" in result.output and "SE at position" in result.output
    assert "X12-SE-COUNT [IK502 4]:" in result.output   # the 999 element the code goes in, not a bare number


def test_json_findings():
    result = run("validate", str(INVALID), "--json")
    payload = json.loads(result.output)
    assert payload["valid"] is False
    finding = next(f for f in payload["findings"] if f["code"] == "X12-SE-COUNT")
    assert finding["ack_code"] == "4" and finding["segment"] == "SE"


def test_ack_999_goes_to_stdout_and_findings_to_stderr():
    result = CliRunner().invoke(main, ["validate", str(INVALID), "--ack", "999", "--date", "2026-01-02T03:04",
                                       "--control-number", "55"])
    assert result.exit_code == 1
    assert result.stdout.startswith("ISA")
    assert "IK5*R*4" in result.stdout and "000000055" in result.stdout and "260102*0304" in result.stdout
    assert "X12-SE-COUNT" in result.stderr


def test_ack_ta1():
    path = FIXTURES / "x12" / "invalid" / "isa13-iea02-mismatch.x12"
    result = run("validate", str(path), "--ack", "ta1", "--date", "2026-01-02T03:04")
    assert "*R*001~" in result.stdout


TA1 = ("ISA*00*          *00*          *ZZ*PAYER01        *ZZ*GATEWAY01      *250115*0930*^*00501*000000101*0*P*:~"
       "TA1*{control}*{day}*{time}*{status}*{note}~IEA*0*000000101~")


def test_no_999_for_an_interchange_without_a_transaction_set_says_so(tmp_path):
    """It wrote a 999 with an empty AK1 that accepted nothing (AK9*A*0*0*0), addressed to UNKNOWN."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    path = tmp_path / "empty.x12"
    path.write_text(text[:text.index("GS*")] + text[text.index("IEA*"):].replace("IEA*1*", "IEA*0*"))
    result = run("validate", str(path), "--ack", "999")
    assert result.exit_code == 1 and not result.stdout.startswith("ISA")
    assert "no 999: a 999 acknowledges the transaction sets of functional groups" in result.stderr
    assert "(--ack ta1)" in result.stderr and "Traceback" not in result.output


def test_a_ta1_is_read_and_its_elements_checked(tmp_path):
    good = tmp_path / "good.ta1"
    good.write_text(TA1.format(control="000000101", day="250115", time="0930", status="R", note="022"))
    result = run("validate", str(good))
    assert result.exit_code == 0, result.output
    assert "ACK     interchange 000000101 rejected: Invalid control structure (TA105 code 022)" in result.output
    assert json.loads(run("validate", str(good), "--json").output)["acknowledgment"][0]["code"] == "022"
    bad = tmp_path / "bad.ta1"
    bad.write_text(TA1.format(control="101", day="251399", time="0970", status="Z", note="999"))
    result = run("validate", str(bad))
    assert result.exit_code == 1
    assert re.findall(r"X12-TA1: TA1 at position 2, (TA10\d):", result.output) == [
        "TA101", "TA102", "TA103", "TA104", "TA105"]


def test_a_999_is_read_not_called_an_unsupported_set(tmp_path):
    """A 999 the gateway wrote: what it says is listed, and it is not "invalid" for being a 999."""
    made = run("validate", str(FIXTURES / "x12" / "invalid" / "eq01-invalid-code.x12"), "--ack", "999",
               "--date", "2025-01-15T09:30")
    ack = tmp_path / "answer.999"
    ack.write_text(made.stdout)
    result = run("validate", str(ack))
    assert result.exit_code == 0, result.output
    assert "X12-SET-UNSUPPORTED" not in result.output
    assert "ACK     element EQ01 (data element 1365): Invalid code value (IK403 code 7): 'ZZ'" in result.output
    assert "ACK     transaction set 270 0001 rejected" in result.output


def test_unreadable_inputs_exit_2(tmp_path):
    missing = run("validate", str(tmp_path / "nope.x12"))
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    prose = tmp_path / "notes.txt"
    prose.write_text("just some notes")
    result = run("validate", str(prose))
    assert result.exit_code == 2 and "not readable as X12" in result.stderr and "no ISA" in result.stderr
    assert "Traceback" not in result.output


def test_bad_date_option_is_a_usage_error():
    result = run("validate", str(VALID), "--date", "yesterday")
    assert result.exit_code == 2 and "--date" in result.stderr


def _without_provider(tmp_path):
    bundle = json.loads((FIXTURES / "fhir" / "requests" / "subscriber-generic.json").read_text())
    bundle["entry"][0]["resource"].pop("provider")
    path = tmp_path / "no-provider.json"
    path.write_text(json.dumps(bundle))
    return str(path)


def test_translate_names_the_given_provider_when_the_request_has_none(tmp_path):
    request = _without_provider(tmp_path)
    refused = run("translate", request, "--date", "2026-01-02T03:04")
    assert refused.exit_code == 1 and "provider NPI" in refused.output
    done = run("translate", request, "--date", "2026-01-02T03:04", "--provider-npi", "1245319599",
               "--provider-name", "Riverbend Family Practice")
    assert done.exit_code == 0, done.output
    assert "NM1*1P*2*RIVERBEND FAMILY PRACTICE*****XX*1245319599~" in done.output


def test_translate_names_a_person_with_a_taxonomy_as_the_provider(tmp_path):
    done = run("translate", _without_provider(tmp_path), "--date", "2026-01-02T03:04", "--provider-npi", "1234567893",
               "--provider-name", "Okafor", "--provider-first-name", "Ada", "--provider-taxonomy", "207Q00000X")
    assert done.exit_code == 0, done.output
    assert "NM1*1P*1*OKAFOR*ADA****XX*1234567893~PRV*PE*PXC*207Q00000X~" in done.output


def test_translate_refuses_a_wrong_or_lone_provider_option(tmp_path):
    request = _without_provider(tmp_path)
    wrong = run("translate", request, "--provider-npi", "1245319598", "--provider-name", "X")
    assert wrong.exit_code == 2 and "--provider-npi '1245319598'" in wrong.output
    lone = run("translate", request, "--provider-npi", "1245319599")
    assert lone.exit_code == 2 and "go together" in lone.output
    taxonomy = run("translate", request, "--provider-npi", "1245319599", "--provider-name", "X",
                   "--provider-taxonomy", "207q")
    assert taxonomy.exit_code == 2 and "--provider-taxonomy '207q': a NUCC provider taxonomy code" in taxonomy.output
    assert "quote it" not in wrong.output


def test_translate_checks_fhir_structure_first_and_interchange_ids(tmp_path):
    request = json.loads((FIXTURES / "fhir" / "requests" / "subscriber-generic.json").read_text())
    request["entry"][1]["resource"]["birthDate"] = 19780514
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(request))
    refused = run("translate", str(path))
    assert refused.exit_code == 2 and "Bundle.entry[1].resource.birthDate" in refused.output
    assert "Traceback" not in refused.output
    good = str(FIXTURES / "fhir" / "requests" / "subscriber-generic.json")
    wrong = run("translate", good, "--receiver-id", "RECEIVER-ID-TOO-LONG-XYZ")
    assert wrong.exit_code == 2 and "--receiver-id" in wrong.output
    short = run("translate", good, "--sender-id", "G")   # GS02 takes 2 to 15 characters
    assert short.exit_code == 2 and "--sender-id" in short.output


def test_translate_of_a_defective_271_says_so_and_exits_1(tmp_path):
    text = VALID.read_text()
    cut = tmp_path / "cut.271"
    cut.write_text(text[:text.index("SE*")])   # no SE, GE or IEA
    done = run("translate", str(cut), "--no-notes")
    assert done.exit_code == 1
    assert "input defect" in done.output and "the output may be incomplete" in done.output


def test_a_999_acknowledges_each_functional_group_in_its_own_transaction_set(tmp_path):
    text = VALID.read_text()   # interchange 000002005 with group 2005: a second copy as 000002006 / 2006
    second = text.replace("*000002005*", "*000002006*").replace("*153006*2005*X*", "*153006*2006*X*")
    second = re.sub(r"GE\*1\*2005~", "GE*1*2006~", second)
    second = re.sub(r"IEA\*1\*000002005~", "IEA*1*000002006~", second)
    both = tmp_path / "two.271"
    both.write_text(text + second)
    ack = run("validate", str(both), "--ack", "999", "--date", "2026-01-02T03:04").output
    assert [s for s in ack.replace("\n", "").split("~") if s.startswith("AK1")] == [
        "AK1*HB*2005*005010X279A1", "AK1*HB*2006*005010X279A1"]
    assert ack.count("ST*999*") == 2


def test_translate_of_a_ta1_says_what_it_is(tmp_path):
    ta1 = tmp_path / "answer.ta1"
    ta1.write_text("ISA*00*          *00*          *ZZ*PAYERX         *ZZ*GATEWAY01      *250115*0930*^*00501*"
                   "000000902*0*P*:~TA1*000000901*250115*0930*A*000~IEA*0*000000902~")
    done = run("translate", str(ta1))
    assert done.exit_code == 1 and "TA1 interchange acknowledgment" in done.output


def test_output_that_cannot_be_written_is_one_line_not_a_traceback():
    """``> /dev/full``: a full disk while writing stdout."""
    import subprocess

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    for args in (["translate", str(FIXTURES / "fhir" / "requests" / "subscriber-generic.json")],
                 ["validate", str(FIXTURES / "x12" / "270" / "subscriber-generic.270")]):
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], stdout=full, stderr=subprocess.PIPE,
                                  text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().endswith("cannot write the output: No space left on device")


@pytest.mark.parametrize(("content", "words"), [
    (b"", "the input is empty"),
    (b"  \n", "the input is empty"),
    ('{"resourceType": "CoverageEligibilityRequest"}'.encode("utf-16"), "the input is UTF-16 text: save it as UTF-8"),
    ('{"resourceType": "CoverageEligibilityRequest"}'.encode("utf-32"), "the input is UTF-32 text: save it as UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "the input cannot be read as JSON: it nests too deeply"),
    (b'{"resourceType": "CoverageEligibilityRequest", "id": ' + b"1" * 5000 + b"}",
     "the input cannot be read as JSON: a number in it has more than 4,300 digits"),
])
def test_translate_says_what_an_unreadable_input_is(tmp_path, content: bytes, words: str):
    path = tmp_path / "input.json"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["translate", str(path)])
    assert result.exit_code == 2 and words in result.output and "no ISA" not in result.output


def _two_senders(tmp_path, second_change: tuple[str, str]) -> str:
    """A file of two 270 interchanges from two senders (ISA06/GS02), both with group 1001 and set 0001."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    other = (text.replace("FHIRX12GW      ", "OTHERSENDER    ").replace("GS*HS*FHIRX12GW*", "GS*HS*OTHERSENDER*")
             .replace("000001001", "000002002").replace(*second_change))
    path = tmp_path / "two-senders.x12"
    path.write_text(text + other)
    return str(path)


def test_each_interchange_gets_its_own_acknowledgment_back_to_its_sender(tmp_path):
    """One 999 interchange went to the first sender only, rejecting its set for the second sender's EQ01."""
    path = _two_senders(tmp_path, ("EQ*30~", "EQ*ZZ~"))
    ack = run("validate", path, "--ack", "999", "--control-number", "55", "--date", "2026-01-02T03:04").stdout
    first, second = ("ISA" + part for part in ack.split("ISA")[1:])
    assert "*ZZ*FHIRX12GW      *260102*0304*^*00501*000000055*" in first and "IK5*A~" in first
    assert "*ZZ*OTHERSENDER    *260102*0304*^*00501*000000056*" in second and "IK5*R*5~" in second
    ta1 = run("validate", path, "--ack", "ta1", "--control-number", "55", "--date", "2026-01-02T03:04").stdout
    first, second = ("ISA" + part for part in ta1.split("ISA")[1:])
    assert "*ZZ*FHIRX12GW      *" in first and "TA1*000001001*" in first and first.endswith("IEA*0*000000055~")
    assert "*ZZ*OTHERSENDER    *" in second and "TA1*000002002*" in second and second.endswith("IEA*0*000000056~")


def _two_groups_1001(text: str) -> str:
    """``text`` (one interchange, one group 1001) with a second copy of its group inside the same interchange."""
    head, tail = text.split("GE*1*1001~\n")
    group = head[head.index("GS*"):] + "GE*1*1001~\n"
    return head + "GE*1*1001~\n" + group + tail.replace("IEA*1*", "IEA*2*")


def test_a_repeated_isa13_or_gs06_is_reported_and_acknowledged(tmp_path):
    """Neither was reported: the same interchange sent twice got two TA1s "accepted", and a second group 1001 in one
    interchange a 999 accepting both groups."""
    text = (FIXTURES / "x12" / "270" / "subscriber-generic.270").read_text()
    twice = tmp_path / "twice.x12"
    twice.write_text(text + text)
    done = run("validate", str(twice))
    assert done.exit_code == 1
    assert ("ERROR   X12-ISA-DUPLICATE [TA105 025]: ISA at position 6, ISA13: ISA13 '000001001' of the file's "
            "interchange #2 is already the control number of its interchange #1") in done.output
    ta1 = run("validate", str(twice), "--ack", "ta1", "--control-number", "55", "--date", "2026-01-02T03:04").stdout
    first, second = ("ISA" + part for part in ta1.split("ISA")[1:])
    assert "TA1*000001001*250310*0915*A*000~" in first and first.endswith("IEA*0*000000055~")
    assert "TA1*000001001*250310*0915*R*025~" in second and second.endswith("IEA*0*000000056~")
    groups = tmp_path / "groups.x12"
    groups.write_text(_two_groups_1001(text))
    done = run("validate", str(groups), "--ack", "999", "--date", "2026-01-02T03:04")
    assert done.exit_code == 1 and "X12-GS-DUPLICATE [AK905 19]: GS, GS06: GS06 '1001'" in done.stderr
    assert [s for s in done.stdout.split("~") if s.startswith("AK9")] == ["AK9*A*1*1*1", "AK9*R*1*1*0*19"]
    payload = json.loads(run("validate", str(groups), "--json").output)
    assert [f["code"] for f in payload["findings"]] == ["X12-GS-DUPLICATE"]
    assert not {"set_ordinal", "group_ordinal", "interchange_ordinal"} & payload["findings"][0].keys()
