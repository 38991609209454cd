"""Issue 13: QEMU SIGKILLed mid-stream and a guest kernel panic each fail their scenario with a
clear message and the artifacts, nothing hangs, and the next scenario in the same run passes."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.qemu

PORTS = """
machine:
  ports:
    - {name: org.fail.p, nr: 1}
steps:
  - host_open: org.fail.p
  - guest_open: org.fail.p
  - guest_stream: org.fail.p
"""
SCENARIOS = {
    "a_qemu_killed.yaml": "name: qemu killed mid-stream\n" + PORTS + "  - qemu_kill:\n"
    "  - stream_end: org.fail.p\n",
    "b_after_kill.yaml": "name: after the kill\n" + PORTS + "  - stream_end: org.fail.p\n",
    "c_guest_panics.yaml": "name: guest panics mid-stream\n" + PORTS + "  - guest_panic:\n"
    "  - stream_end: org.fail.p\n",
    "d_after_panic.yaml": "name: after the panic\n" + PORTS + "  - stream_end: org.fail.p\n",
}


def _attachments(node: dict) -> set[str]:
    names = {a["name"] for a in node.get("attachments", [])}
    for step in node.get("steps", []):
        names |= _attachments(step)
    return names


def test_qemu_kill_and_guest_panic_fail_fast_and_the_next_scenario_passes(
    pytester: pytest.Pytester,
) -> None:
    folder = pytester.path / "scenarios"
    folder.mkdir()
    for name, text in SCENARIOS.items():
        (folder / name).write_text(text)
    results = pytester.path / "allure-results"
    run = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--hil-accel=tcg",
        f"--alluredir={results}",
        "scenarios",
        timeout=900,  # a bound on the whole run: a hang fails here instead of blocking CI
    )
    run.assert_outcomes(failed=2, passed=2)
    run.stdout.fnmatch_lines(
        [
            "*a_qemu_killed.yaml: step 4 (qemu_kill): QEMU exited with status -9 (SIGKILL)*",
            "*c_guest_panics.yaml: step 4 (guest_panic): the guest console reports a kernel*",
        ]
    )
    assert "Kernel panic" in run.stdout.str()
    by_name = {}
    for path in results.glob("*-result.json"):
        result = json.loads(path.read_text())
        by_name[result["name"]] = result
    assert {by_name[n]["status"] for n in ("after the kill", "after the panic")} == {"passed"}
    for failed in ("qemu killed mid-stream", "guest panics mid-stream"):
        assert by_name[failed]["status"] == "failed"
        names = _attachments(by_name[failed])
        for wanted in ("diff", "serial log", "QMP transcript"):
            assert wanted in names, f"{failed}: {wanted!r} missing from {sorted(names)}"
