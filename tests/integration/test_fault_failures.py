"""Issue 13: QEMU SIGKILLed mid-stream and a guest kernel panic each fail their scenario with a
clear message and the artifacts, nothing hangs, and the next scenario in the same run passes."""

from __future__ import annotations

import json

import pytest

from tests.scenario_files import attachment_names, one_port_scenario, write_scenarios

pytestmark = pytest.mark.qemu

STREAMING = ("host_open: org.fail.p", "guest_open: org.fail.p", "guest_stream: org.fail.p")
END = "stream_end: org.fail.p"


def _streaming(name: str, *then: str) -> str:
    """Port org.fail.p open on both ends, a guest stream running, then ``then``."""
    return one_port_scenario(name, *STREAMING, *then, port="org.fail.p", nr=1)


SCENARIOS = {
    "a_qemu_killed": _streaming("qemu killed mid-stream", "qemu_kill:", END),
    "b_after_kill": _streaming("after the kill", END),
    "c_guest_panics": _streaming("guest panics mid-stream", "guest_panic:", END),
    "d_after_panic": _streaming("after the panic", END),
}


def test_qemu_kill_and_guest_panic_fail_fast_and_the_next_scenario_passes(
    pytester: pytest.Pytester,
) -> None:
    write_scenarios(pytester, **SCENARIOS)
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
        names = attachment_names(by_name[failed])
        for wanted in ("diff", "serial log", "QMP transcript"):
            assert wanted in names, f"{failed}: {wanted!r} missing from {sorted(names)}"
