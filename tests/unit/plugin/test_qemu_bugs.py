"""Known QEMU bugs (qemu_versions.QEMU_BUGS): which QEMU, accelerator and step they excuse,
and that the shipped reproducer is marked with the bug and runs its trigger."""

from __future__ import annotations

from pathlib import Path

from harness.plugin.qemu_versions import QEMU_BUGS, known_qemu_bug
from harness.scenario.schema import load_scenario

ROOT = Path(__file__).resolve().parents[3]
TCG_DIRTY = "qemu_bug_tcg_migration_dirty"
REPRODUCER = ROOT / "scenarios/findings/live_migration_tcg_corruption.yaml"


def test_tcg_dirty_tracking_bug_is_known_before_9_0_under_tcg_only() -> None:
    marks = ["slow", TCG_DIRTY]
    bug = known_qemu_bug(marks, "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)", "tcg")
    assert bug is not None and bug.mark == TCG_DIRTY
    assert known_qemu_bug(marks, "8.2.9", "tcg") is bug
    assert known_qemu_bug(marks, "9.0.0", "tcg") is None  # the upstream fix
    assert known_qemu_bug(marks, "10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)", "tcg") is None
    assert known_qemu_bug(marks, "7.2.22", "kvm") is None  # KVM tracks dirty pages itself
    assert known_qemu_bug(marks, "unknown (no such binary)", "tcg") is None
    assert known_qemu_bug(marks, "7.2.22", None) is None  # accelerator not decided
    assert known_qemu_bug(["slow"], "7.2.22", "tcg") is None  # an unmarked scenario


def test_a_guest_kernel_oops_is_the_bug_in_an_unmarked_scenario_too() -> None:
    """Any scenario that migrates live on an affected QEMU can meet the corruption; when its
    failure is the guest kernel's own report, that is the bug's signature (xfail with the
    evidence); any other failure of an unmarked scenario still fails."""
    bug = known_qemu_bug(["slow"], "7.2.22", "tcg", guest_kernel_reported=True)
    assert bug is not None and bug.mark == TCG_DIRTY
    assert known_qemu_bug(["slow"], "7.2.22", "tcg", guest_kernel_reported=False) is None
    assert known_qemu_bug([], "10.0.13", "tcg", guest_kernel_reported=True) is None
    assert known_qemu_bug([], "7.2.22", "kvm", guest_kernel_reported=True) is None


def test_only_a_live_migration_triggers_the_tcg_dirty_tracking_bug() -> None:
    (bug,) = [b for b in QEMU_BUGS if b.mark == TCG_DIRTY]
    assert bug.triggered_by("migrate", {"mode": "live"})
    assert bug.triggered_by("migrate", {})  # live is the default mode
    for mode in ("paused", "file"):  # the guest is stopped before its RAM is sent
        assert not bug.triggered_by("migrate", {"mode": mode})
    assert not bug.triggered_by("vm_stop", {})


def test_the_reproducer_carries_the_mark_and_migrates_live_after_its_streams_start() -> None:
    scenario = load_scenario(REPRODUCER)
    assert TCG_DIRTY in scenario.marks
    kinds = [(s.kind, s.args.get("mode")) for s in scenario.steps]
    first_live = kinds.index(("migrate", "live"))
    assert ("host_stream", None) in kinds[:first_live]
    assert ("guest_stream", None) in kinds[:first_live]
    assert kinds.count(("migrate", "live")) >= 2
