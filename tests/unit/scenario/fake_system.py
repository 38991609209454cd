"""The explorer's ModelSystem (a second model instance as the real system), with hooks to inject
one disagreement: a tampered snapshot, a failing operation, console problems, a background
operation reported done too early.

Like ModelSystem, every step operation of the RealSystem protocol replays the current step
kind's model operation on the fake's own model (the runner tells the fake which step is running
through its public ``step_context`` hook; see ``run_fake``), so a new step kind needs no change
here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from harness.model import Outcome, Snapshot
from harness.scenario.model_system import ModelSystem
from harness.scenario.runner import RunnerOptions, ScenarioRunner, run_scenario
from harness.scenario.schema import Scenario
from harness.scenario.system import StepFailure


@dataclass(frozen=True)
class FakeContext:
    headline: str
    console_tail: str


class FakeSystem(ModelSystem):
    def __init__(
        self,
        tamper: Callable[[Snapshot], Snapshot] | None = None,
        fail: dict[str, str] | None = None,
    ) -> None:
        super().__init__("")
        self.tamper = tamper
        self.fail = fail or {}  # method name -> error text to raise instead of running
        self.problems: list[str] = []
        self.early: set[int] = set()  # tickets to report as done although still blocked

    def replay(self, operation: str) -> Outcome:
        if operation in self.fail:
            raise StepFailure(self.fail[operation])
        return super().replay(operation)

    def start_guest_op(self, op: str, port: str, **args: object) -> object:
        handle = super().start_guest_op(op, port, **args)
        assert handle != -1, "the runner started in the background what the model says completes"
        return handle

    def guest_op_state(self, handle: object) -> tuple[bool, object, str | None]:
        if handle in self.early:
            return True, None, None
        return super().guest_op_state(handle)

    def snapshot(self) -> Snapshot:
        snap = super().snapshot()
        return self.tamper(snap) if self.tamper else snap

    def console_problems(self) -> list[str]:
        return list(self.problems)

    def failure_context(self) -> FakeContext:
        return FakeContext("the fake machine is gone", "console tail:\nlast line")

    def artifacts(self) -> dict[str, str]:
        return {
            "serial log": "boot...",
            "QMP transcript": "{}",
            "kernel messages": "",
            "agent log": "ok",
        }


def run_fake(
    scenario: Scenario, fake: FakeSystem, options: RunnerOptions | None = None
) -> ScenarioRunner:
    """Run ``scenario`` against ``fake`` (which follows the steps through step_context)."""
    fake.scenario = scenario.name
    return run_scenario(scenario, fake, options, fake.step_context)


def throttle(port: str) -> Callable[[Snapshot], Snapshot]:
    """A tamper that shows ``port`` throttled in QEMU's view."""

    def tamper(snap: Snapshot) -> Snapshot:
        ports = dict(snap.ports)
        if port in ports:
            view = ports[port]
            ports[port] = replace(view, qemu=replace(view.qemu, throttled=True))
        return Snapshot(snap.controllers, ports)

    return tamper
