"""The pytest plugin end to end (pytester, model mode: no QEMU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.scenario_files import one_port_scenario, write_scenarios

ROOT = Path(__file__).resolve().parents[3]
WRONG_CHECK = one_port_scenario(
    "wrong check",
    "host_open: org.example.data",
    "check: {port: org.example.data, host_connected: false}",
)


def _copy(pytester, folder: str, target: str) -> Path:
    dest = pytester.path / target
    shutil.copytree(ROOT / "fixtures" / folder, dest)
    return dest


def test_wrong_check_names_step_port_field_expected_actual(pytester):
    write_scenarios(pytester, wrong_check=WRONG_CHECK)
    result = pytester.runpytest("--hil-backend=model", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*step 2 (check org.example.data): the model disagrees with the scenario*",
            "*port*field*expected*actual*",
            "org.example.data*host_connected*False*True*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_test_id_is_the_file_stem_and_marks_apply(pytester):
    write_scenarios(pytester, marked="name: marked\nmarks: [slow]\nsteps:\n  - reboot: {}\n")
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    result = pytester.runpytest("--hil-backend=model", "-m", "slow", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["scenarios/marked.yaml::marked"])


def test_malformed_files_each_give_one_error_and_valid_files_still_pass(pytester):
    _copy(pytester, "malformed", "malformed")
    _copy(pytester, "scenarios", "scenarios")
    malformed = sorted((pytester.path / "malformed").glob("*.yaml"))
    valid = sorted((pytester.path / "scenarios").glob("*.yaml"))
    args = [str(p.relative_to(pytester.path)) for p in malformed]
    result = pytester.runpytest("--hil-backend=model", "scenarios", *args, "-rf")
    result.assert_outcomes(failed=len(malformed), passed=len(valid))
    out = result.stdout.str()
    for path in args:
        assert out.count(f"{path}:") >= 1, path
        assert f"FAILED {path}::{Path(path).stem}" in out
    assert "Traceback" not in out


def test_failing_scenario_attaches_the_diff_to_allure(pytester):
    write_scenarios(pytester, wrong_check=WRONG_CHECK)
    results = pytester.path / "allure-results"
    result = pytester.runpytest("--hil-backend=model", f"--alluredir={results}")
    result.assert_outcomes(failed=1)
    reports = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    assert len(reports) == 1
    report = reports[0]
    assert report["status"] == "failed"
    assert [s["name"] for s in report["steps"]] == [
        "step 1: host_open org.example.data",
        "step 2: check org.example.data",
    ]
    attachments = {a["name"]: a["source"] for a in report.get("attachments", [])}
    assert "diff" in attachments
    text = (results / attachments["diff"]).read_text()
    assert "host_connected" in text and "org.example.data" in text
