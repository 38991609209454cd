"""Scenario marks: the plugin's own are registered, unknown ones are judged per file with
the mark's file:line (pytester, model mode)."""

from __future__ import annotations

import pytest

from tests.scenario_files import PLAIN, write_scenarios

SLOW = "name: slow one\nmarks: [slow]\nsteps:\n  - reboot: {}\n"
UNKNOWN = "name: unknown mark\nmarks:\n  - slow\n  - nightly\nsteps:\n  - reboot: {}\n"


@pytest.fixture
def scenarios(pytester: pytest.Pytester) -> None:
    write_scenarios(pytester, slow_one=SLOW, plain=PLAIN)


def test_slow_and_qemu_need_no_registration_even_with_strict_markers(pytester, scenarios):
    result = pytester.runpytest(
        "--hil-backend=model", "--strict-markers", "-W", "error", "-m", "slow", "-q"
    )
    result.assert_outcomes(passed=1, deselected=1)
    result = pytester.runpytest("--strict-markers", "-m", "qemu", "--collect-only", "-q")
    assert sorted(line for line in result.outlines if "::" in line) == [
        "scenarios/plain.yaml::plain",
        "scenarios/slow_one.yaml::slow_one",
    ]


def test_unknown_mark_with_strict_markers_fails_that_scenario_at_its_line(pytester, scenarios):
    (pytester.path / "scenarios" / "unknown.yaml").write_text(UNKNOWN)
    result = pytester.runpytest("--hil-backend=model", "--strict-markers", "-rf")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "scenarios/unknown.yaml:4:5: mark 'nightly': 'nightly' not found in `markers`*",
            "  hint: register it*",
            "FAILED scenarios/unknown.yaml::unknown*",
        ]
    )
    assert "Interrupted" not in result.stdout.str()


def test_unknown_mark_warns_at_its_file_and_line(pytester, scenarios):
    (pytester.path / "scenarios" / "unknown.yaml").write_text(UNKNOWN)
    result = pytester.runpytest("--hil-backend=model")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(["*scenarios/unknown.yaml:4: PytestUnknownMarkWarning*nightly*"])


def test_unknown_mark_warning_as_error_fails_that_scenario_only(pytester, scenarios):
    (pytester.path / "scenarios" / "unknown.yaml").write_text(UNKNOWN)
    result = pytester.runpytest(
        "--hil-backend=model", "-W", "error::pytest.PytestUnknownMarkWarning"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["scenarios/unknown.yaml:4:5: mark 'nightly': Unknown*"])


def test_a_registered_project_mark_applies(pytester, scenarios):
    (pytester.path / "scenarios" / "unknown.yaml").write_text(UNKNOWN)
    pytester.makeini("[pytest]\nmarkers =\n    nightly: runs at night\n")
    result = pytester.runpytest("--hil-backend=model", "--strict-markers", "-m", "nightly")
    result.assert_outcomes(passed=1, deselected=2)
