"""The runner threads a migration's destination QEMU to the model: after the hop the model
runs on the destination's switches (queue sizes from the next guest reset), as the real
destination QEMU does. scenarios/cross_qemu/reboot_after_upgrade.yaml on the model alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.model import Behaviour
from harness.plugin.qemu_versions import behaviour_for_qemu
from harness.scenario.runner import ScenarioRunner
from harness.scenario.schema import load_scenario
from harness.scenario.steps import Destination

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = load_scenario(ROOT / "scenarios/cross_qemu/reboot_after_upgrade.yaml")
QEMU_10_0_13 = behaviour_for_qemu("10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)")


def _guest_sees_host_open(runner: ScenarioRunner) -> int:
    ports = runner.model.ports.values()
    return sum(1 for p in ports if p.guest is not None and p.guest.host_connected)


def _run(destination: Behaviour | None, asked: list[str | None]) -> ScenarioRunner:
    def switches(qemu: str | None) -> Behaviour | None:
        asked.append(qemu)
        return destination

    runner = ScenarioRunner(SCENARIO, destination_behaviour=switches)
    runner.run()
    return runner


def test_the_reboot_after_an_upgrade_hop_runs_on_the_destination_qemus_queues() -> None:
    asked: list[str | None] = []
    runner = _run(QEMU_10_0_13, asked)
    assert asked == [None]  # no qemu in the step: the run's destination QEMU decides
    assert runner.model.behaviour == QEMU_10_0_13 and runner.model.reset_behaviour is None
    assert _guest_sees_host_open(runner) == 24


def test_without_a_destination_qemu_the_model_stays_on_the_sources() -> None:
    runner = _run(None, [])
    assert runner.model.behaviour == Behaviour()
    assert _guest_sees_host_open(runner) == 7  # 7.2 again: PORT_OPEN lost from port 8


def test_a_steps_own_destination_qemu_is_asked_for() -> None:
    asked: list[str | None] = []
    steps = tuple(
        replace(s, args={**s.args, "destination": Destination(None, "debian:trixie/x")})
        if s.kind == "migrate"
        else s
        for s in SCENARIO.steps
    )
    runner = ScenarioRunner(
        replace(SCENARIO, steps=steps),
        destination_behaviour=lambda qemu: asked.append(qemu) or QEMU_10_0_13,
    )
    runner.run()
    assert asked == ["debian:trixie/x"] and _guest_sees_host_open(runner) == 24
