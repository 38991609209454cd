"""The soak's pure parts: its seeded plan, its table, its growth bounds and its SVG plot."""

from __future__ import annotations

from dataclasses import replace

from harness.scenario.steps import STEPS
from harness.soak import (
    BOUNDS,
    COLUMNS,
    IN,
    OUT,
    Sample,
    SoakPlan,
    growth,
    qemu_own,
    svg_plot,
    table,
)


def sample(round_: int, **changes: float) -> Sample:
    base = Sample(round_, 1.0, "vm_stop", 10.0, 300.0, 100.0, 40, 80.0, 20, 300.0, 50.0, 30.0)
    return replace(base, **changes)


def test_the_plan_is_seeded_and_made_of_registered_steps() -> None:
    one, two = SoakPlan(7), SoakPlan(7)
    rounds = [one.round() for _ in range(20)]
    assert rounds == [two.round() for _ in range(20)]
    for steps, faults in rounds:
        assert steps[:2] == [("host_stream", {"port": IN}), ("guest_stream", {"port": OUT})]
        assert ("stream_end", {"port": IN}) in steps and faults
        assert all(kind in STEPS for kind, _ in steps)
    assert any("migrate" in faults for _, faults in rounds)
    assert SoakPlan(8).round() != SoakPlan(7).round() or SoakPlan(9).round() != SoakPlan(7).round()


def test_table_has_a_row_per_sample_under_the_columns() -> None:
    lines = table([sample(1), sample(2)]).splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert len(lines) == 4 and lines[3].split()[0] == "2"


def test_growth_past_a_bound_is_reported_from_the_first_sample_after_warm_up() -> None:
    flat = [sample(1, harness_rss_mib=10.0), sample(2), sample(3, harness_fds=20 + 2)]
    assert growth(flat) == []
    # QEMU's RSS follows the guest's RAM use; only what QEMU keeps itself is bounded
    before = {"MemTotal": 480.0, "MemFree": 380.0}
    after = {"MemTotal": 480.0, "MemFree": 180.0}  # the guest used 200 MiB more
    assert qemu_own(300.0, before) == qemu_own(500.0, after) == 200.0
    grown = sample(3, qemu_fds=40 + BOUNDS["qemu_fds"] + 1)
    (problem,) = growth([sample(1), sample(2), grown])
    assert problem.startswith("qemu_fds grew by") and "from round 2" in problem
    assert growth([sample(1)]) == []


def test_the_plot_is_an_svg_with_one_line_per_series() -> None:
    svg = svg_plot([sample(1), sample(2, qemu_rss_mib=120.0)])
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count("<polyline") == len(COLUMNS) - 4
    assert "qemu_rss_mib: 120.0 .. 300.0" in svg


def test_soak_runs_on_the_qemu_named_by_the_qemu_option(monkeypatch) -> None:
    """`--qemu SPEC` reaches soak() (which starts every machine, migration destinations too,
    on it); without it the soak keeps the default QEMU."""
    import harness.logs
    import harness.soak
    from harness.__main__ import main
    from harness.images.qemu_pkg import DEFAULT_QEMU

    calls: list[tuple[float, int, str]] = []

    def fake_soak(minutes: float, seed: int, qemu: str = DEFAULT_QEMU) -> int:
        calls.append((minutes, seed, qemu))
        return 0

    monkeypatch.setattr(harness.soak, "soak", fake_soak)
    monkeypatch.setattr(harness.logs, "print_progress", lambda: None)
    spec = "debian:trixie/qemu-system-x86"
    assert main(["soak", "--minutes", "2", "--seed", "7", "--qemu", spec]) == 0
    assert main(["soak", "--minutes", "1"]) == 0
    assert calls == [(2.0, 7, spec), (1.0, 1, DEFAULT_QEMU)]


def test_a_plan_never_picks_a_left_out_fault() -> None:
    plan = SoakPlan(7, left_out=("migrate:live",))
    faults = [plan.round()[1] for _ in range(200)]
    assert not any("migrate:live" in f for f in faults)
    assert any("migrate:paused" in f for f in faults)  # the other migrations still run
    everything = SoakPlan(7)
    assert any("migrate:live" in everything.round()[1] for _ in range(200))


def test_live_migration_is_left_out_only_on_a_qemu_with_the_tcg_dirty_tracking_bug(
    monkeypatch,
) -> None:
    import harness.machine.qemu_spec
    from harness.soak import left_out_faults

    versions = {"old": "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)", "new": "10.0.13"}
    monkeypatch.setattr(harness.machine.qemu_spec, "qemu_version", versions.__getitem__)
    assert left_out_faults("old", "tcg") == ("migrate:live",)
    assert left_out_faults("old", "kvm") == ()
    assert left_out_faults("new", "tcg") == ()
