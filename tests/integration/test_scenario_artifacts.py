"""Issue 5: a scenario failing on the real system leaves every attachment in allure results."""

from __future__ import annotations

import json

import pytest

from tests.scenario_files import attachment_names, one_port_scenario, write_scenarios

pytestmark = pytest.mark.qemu

WRONG_CHECK = one_port_scenario(
    "deliberately wrong check",
    "host_open: org.wrong.p",
    "check: {port: org.wrong.p, host_connected: false}",
    port="org.wrong.p",
    nr=2,
)


def test_failing_scenario_attaches_diff_logs_transcript_and_kernel_messages(
    pytester: pytest.Pytester,
) -> None:
    write_scenarios(pytester, wrong_check=WRONG_CHECK)
    results = pytester.path / "allure-results"
    run = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--hil-accel=tcg", f"--alluredir={results}", "scenarios"
    )
    run.assert_outcomes(failed=1)
    run.stdout.fnmatch_lines(["*step 2 (check org.wrong.p)*", "*host_connected*False*True*"])
    (result,) = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    names = attachment_names(result)
    for wanted in ("diff", "serial log", "QMP transcript", "kernel messages", "agent log"):
        assert wanted in names, f"{wanted!r} missing from {sorted(names)}"
    texts = {a["name"]: (results / a["source"]).read_text() for a in result["attachments"]}
    assert "HIL-READY" in texts["serial log"]
    assert '"execute": "cont"' in texts["QMP transcript"]  # the start command is recorded
