"""A RealSystem made of a second model instance, with hooks to inject one disagreement.

Derived from the step registry: every step operation of the RealSystem protocol replays the
current step kind's *model* operation on the fake's own model (the runner tells the fake which
step is running through its public ``step_context`` hook; see ``run_fake``).  A new step kind
therefore needs no change here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from harness.model import MachineDecl, ModelError, Outcome, ReadResult, Snapshot, build_model
from harness.model.payload import slices_bytes
from harness.scenario.observe import sigio_events
from harness.scenario.runner import RunnerOptions, ScenarioRunner, run_scenario
from harness.scenario.schema import Scenario
from harness.scenario.steps import STEPS, Step, StepCall
from harness.scenario.system import RealSystem, StepFailure


@dataclass(frozen=True)
class Read:
    length: int
    sha256: str
    data: bytes | None
    eof: bool


def as_read(result: ReadResult) -> Read:
    return Read(result.length, result.sha256(), slices_bytes(result.slices), result.eof)


@dataclass(frozen=True)
class FakeContext:
    headline: str
    console_tail: str


class FakeSystem:
    def __init__(
        self,
        tamper: Callable[[Snapshot], Snapshot] | None = None,
        fail: dict[str, str] | None = None,
    ) -> None:
        self.tamper = tamper
        self.fail = fail or {}  # method name -> error text to raise instead of running
        self.problems: list[str] = []
        self.done: dict[int, tuple[object, str | None]] = {}
        self.early: set[int] = set()  # tickets to report as done although still blocked
        self.sigio_log: dict[str, list[frozenset[str]]] = {}
        self.stopped = False
        self.scenario = ""
        self.current: Step | None = None

    @contextmanager
    def step_context(self, step: Step) -> Iterator[None]:
        """The runner's step hook: remember which step the next operation belongs to."""
        self.current = step
        yield

    # -- the replay every step operation shares
    def replay(self, name: str) -> Outcome:
        """Run the current step's model operation on this fake's model, as a real system."""
        if name in self.fail:
            raise StepFailure(self.fail[name])
        assert self.current is not None, "run the fake through run_fake()"
        call = StepCall(self.current, self.model, self.scenario)
        before = self.model.snapshot()
        try:
            outcome = STEPS[self.current.kind].model(call)
        except ModelError as error:
            raise StepFailure(error.text) from None
        self.model = call.model
        after = self.model.snapshot()
        for done in outcome.completed:
            result = as_read(done.result) if isinstance(done.result, ReadResult) else done.result
            self.done[done.ticket] = (result, done.error.text if done.error else None)
        for port, view in after.ports.items():
            old = before.ports.get(port)
            if view.poll is not None and (old is None or old.poll is None):
                self.sigio_log[port] = []  # a fresh guest fd: its SIGIO history starts empty
        for port, mask in sigio_events(before, after):
            self.sigio_log.setdefault(port, []).append(mask)
        return outcome

    # -- what is not a step operation
    def start(self, machine: MachineDecl) -> None:
        self.model = build_model(machine)

    def stop(self) -> None:
        self.stopped = True

    def start_guest_op(self, op: str, port: str, **args: object) -> object:
        outcome = self.replay(f"guest_{op}")
        assert outcome.pending is not None
        return outcome.pending.ticket

    def guest_op_state(self, handle: object) -> tuple[bool, object, str | None]:
        if handle in self.early:
            return True, None, None
        if isinstance(handle, int) and handle in self.done:
            result, error = self.done[handle]
            return True, result, error
        return False, None, None

    def snapshot(self) -> Snapshot:
        snap = self.model.snapshot()
        return self.tamper(snap) if self.tamper else snap

    def sigio(self, port: str) -> list[frozenset[str]]:
        return list(self.sigio_log.get(port, []))

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


def _operation(name: str) -> Callable[..., object]:
    def operation(self: FakeSystem, *args: Any, **kwargs: Any) -> object:
        value = self.replay(name).value
        return as_read(value) if isinstance(value, ReadResult) else value

    operation.__name__ = name
    return operation


# Every RealSystem method the fake does not define itself is a step operation: replay it.
for _name, _member in vars(RealSystem).items():
    if callable(_member) and not _name.startswith("_") and _name not in vars(FakeSystem):
        setattr(FakeSystem, _name, _operation(_name))


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
