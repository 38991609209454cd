"""--hil-qemu / --hil-qemu-destination: judged once at start, items parametrized per QEMU,
a step's destination qemu validated at its line (pytester, model mode: nothing boots)."""

from __future__ import annotations

import pytest

from harness.images.qemu_pkg import QEMU_SPEC_FORMS


@pytest.mark.parametrize("option", ["--hil-qemu", "--hil-qemu-destination"])
def test_a_malformed_qemu_spec_is_one_usage_error(pytester, two_scenarios, option):
    result = pytester.runpytest("--hil-backend=model", f"{option}=debian:trixie")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"ERROR: {option}=debian:trixie: QEMU 'debian:trixie': write debian:SUITE" in err
    assert f"{option} takes {QEMU_SPEC_FORMS}" in err
    assert "Traceback" not in err + result.stdout.str()


def test_several_qemus_make_one_item_per_qemu(pytester, two_scenarios):
    result = pytester.runpytest(
        "--collect-only",
        "-q",
        "--hil-qemu=qemu-system-x86_64",
        "--hil-qemu=debian:trixie/qemu-system-x86",
    )
    assert sorted(line for line in result.outlines if "::" in line) == [
        "scenarios/one.yaml::one[debian:trixie/qemu-system-x86]",
        "scenarios/one.yaml::one[qemu-system-x86_64]",
        "scenarios/two.yaml::two[debian:trixie/qemu-system-x86]",
        "scenarios/two.yaml::two[qemu-system-x86_64]",
    ]


def test_a_python_test_booting_a_guest_is_parametrized_per_qemu(pytester):
    pytester.makepyfile(test_boot="def test_boot(hil_qemu):\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q", "--hil-qemu=a", "--hil-qemu=b")
    assert sorted(line for line in result.outlines if "::" in line) == [
        "test_boot.py::test_boot[a]",
        "test_boot.py::test_boot[b]",
    ]


def test_a_destination_qemu_of_the_wrong_shape_fails_at_its_line(pytester):
    folder = pytester.mkdir("scenarios")
    (folder / "bad.yaml").write_text(
        "name: bad\nsteps:\n  - migrate: {destination: {qemu: 'debian:x'}}\n"
    )
    (folder / "good.yaml").write_text(
        "name: good\nsteps:\n  - migrate: {destination: {qemu: qemu-system-x86_64}}\n"
    )
    result = pytester.runpytest("--hil-backend=model", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["scenarios/bad.yaml:3:35: QEMU 'debian:x': write debian:SUITE*"])
