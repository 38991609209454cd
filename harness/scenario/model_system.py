"""A RealSystem made of a second, correct model: the explorer's "real system" in model mode.

Why: with a rule planted in the runner's model (harness.scenario.mutants) the explorer must
find a disagreement without QEMU, so CI can check that exploration finds and shrinks planted
bugs in seconds.  Every operation replays the current step kind's *pristine* model operation
(``mutants.pristine``) on this system's own model; the runner says which step is running
through its public ``step_context`` hook.  A new step kind therefore needs no change here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from harness.model import (
    MachineDecl,
    ModelError,
    Outcome,
    ReadResult,
    Snapshot,
    VirtioSerialModel,
    build_model,
)
from harness.model.behaviour import Behaviour
from harness.model.payload import slices_bytes
from harness.scenario.mutants import planted, pristine
from harness.scenario.observe import arrivals, sigio_events
from harness.scenario.steps import Step, StepCall
from harness.scenario.system import RealSystem, StepFailure

#: Step kinds a model cannot play as the real system: a stream is judged by the real
#: end_stream report (bytes sent, delivered, per layer), which only a real system produces.
CANNOT_PLAY = frozenset({"host_stream", "guest_stream", "stream_end"})


@dataclass(frozen=True)
class ModelRead:
    """What a read consumed, in the shape of the backend's ``Received``."""

    length: int
    sha256: str
    data: bytes | None
    eof: bool


def as_read(result: ReadResult) -> ModelRead:
    return ModelRead(result.length, result.sha256(), slices_bytes(result.slices), result.eof)


class ModelSystem:
    """The correct model behind the RealSystem protocol; see the module docstring."""

    model: VirtioSerialModel  # set by start()

    def __init__(self, scenario: str, behaviour: Behaviour | None = None) -> None:
        self.scenario = scenario
        self.behaviour = behaviour or Behaviour()
        self.current: Step | None = None
        self.done: dict[int, tuple[object, str | None]] = {}
        self.sigio_log: dict[str, list[frozenset[str]]] = {}

    @contextmanager
    def step_context(self, step: Step) -> Iterator[None]:
        """The runner's step hook: remember which step the next operation belongs to."""
        self.current = step
        yield

    def replay(self, operation: str) -> Outcome:
        """Run the current step's pristine model operation on this system's model.

        ``operation`` is the RealSystem method being played (a subclass may fail it instead).
        """
        if self.current is None:
            raise RuntimeError(f"ModelSystem ran {operation} outside the runner's step_context")
        call = StepCall(self.current, self.model, self.scenario)
        before, delivered = self.model.snapshot(), self.model.delivered()
        try:
            outcome = pristine(self.current.kind)(call)
        except ModelError as error:
            raise StepFailure(error.text) from None
        self.model = call.model
        self.model.behaviour = self.behaviour
        after = self.model.snapshot()
        for done in outcome.completed:
            result = as_read(done.result) if isinstance(done.result, ReadResult) else done.result
            self.done[done.ticket] = (result, done.error.text if done.error else None)
        for port, view in after.ports.items():
            old = before.ports.get(port)
            if view.poll is not None and (old is None or old.poll is None):
                self.sigio_log[port] = []  # a fresh guest fd: its SIGIO history starts empty
        arrived = arrivals(delivered, self.model.delivered())
        for port, mask in sigio_events(before, after, arrived):
            self.sigio_log.setdefault(port, []).append(mask)
        return outcome

    def start(self, machine: MachineDecl) -> None:
        self.model = build_model(machine)
        self.model.behaviour = self.behaviour

    def stop(self) -> None:
        """Nothing runs: nothing to stop."""

    def start_guest_op(self, op: str, port: str, **args: object) -> object:
        outcome = self.replay(f"guest_{op}")
        return outcome.pending.ticket if outcome.pending is not None else -1

    def guest_op_state(self, handle: object) -> tuple[bool, object, str | None]:
        if isinstance(handle, int) and handle in self.done:
            result, error = self.done[handle]
            return True, result, error
        return False, None, None

    def snapshot(self) -> Snapshot:
        return self.model.snapshot()

    def sigio(self, port: str) -> list[frozenset[str]]:
        return list(self.sigio_log.get(port, []))

    def console_problems(self) -> list[str]:
        return []

    def artifacts(self) -> dict[str, str]:
        return {}


def _operation(name: str) -> Callable[..., object]:
    def operation(self: ModelSystem, *args: Any, **kwargs: Any) -> object:
        value = self.replay(name).value
        return as_read(value) if isinstance(value, ReadResult) else value

    operation.__name__ = name
    return operation


# Every RealSystem method not defined above is a step operation: replay the current step.
for _name, _member in vars(RealSystem).items():
    if callable(_member) and not _name.startswith("_") and _name not in vars(ModelSystem):
        setattr(ModelSystem, _name, _operation(_name))


def model_system_factory(
    scenario: str, behaviour: Behaviour | None = None
) -> Callable[[], RealSystem]:
    """A factory as the explorer takes it (the step operations are added above, at import)."""
    return lambda: cast(RealSystem, ModelSystem(scenario, behaviour))


def mutant_explains(path: Path, mutant: str, behaviour: Behaviour | None = None) -> bool:
    """Whether a finding is the planted rule's: it disagrees in model space (a correct model
    playing the real system against the mutated one) only because of ``mutant``.  A genuine
    model/real disagreement found while hunting is not explained by it."""
    from harness.scenario.explore import MODEL_OPTIONS
    from harness.scenario.runner import ScenarioFailure, run_scenario
    from harness.scenario.schema import load_scenario

    scenario = load_scenario(path)
    system = ModelSystem(scenario.name, behaviour)
    with planted(mutant):
        try:
            run_scenario(scenario, cast(RealSystem, system), MODEL_OPTIONS, system.step_context)
        except ScenarioFailure:
            return True
    return False
