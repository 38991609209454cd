"""Issue 5: a scenario failing on the real system leaves every attachment in allure results."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.qemu

WRONG_CHECK = """
name: deliberately wrong check
machine:
  ports:
    - {name: org.wrong.p, nr: 2}
steps:
  - host_open: org.wrong.p
  - check: {port: org.wrong.p, host_connected: false}
"""


def _attachment_names(node: dict) -> set[str]:
    names = {a["name"] for a in node.get("attachments", [])}
    for step in node.get("steps", []):
        names |= _attachment_names(step)
    return names


def test_failing_scenario_attaches_diff_logs_transcript_and_kernel_messages(
    pytester: pytest.Pytester,
) -> None:
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "wrong_check.yaml").write_text(WRONG_CHECK)
    results = pytester.path / "allure-results"
    run = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--hil-accel=tcg", f"--alluredir={results}", "scenarios"
    )
    run.assert_outcomes(failed=1)
    run.stdout.fnmatch_lines(["*step 2 (check org.wrong.p)*", "*host_connected*False*True*"])
    (result,) = [json.loads(p.read_text()) for p in results.glob("*-result.json")]
    names = _attachment_names(result)
    for wanted in ("diff", "serial log", "QMP transcript", "kernel messages", "agent log"):
        assert wanted in names, f"{wanted!r} missing from {sorted(names)}"
    texts = {a["name"]: (results / a["source"]).read_text() for a in result["attachments"]}
    assert "HIL-READY" in texts["serial log"]
    assert '"execute": "cont"' in texts["QMP transcript"]  # the start command is recorded
