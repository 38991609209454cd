"""Run a Scenario on the spec model and, optionally, on a real system, step by step.

Per step: predict with the model, run it for real (in the background when the model says a
guest operation blocks), compare errors and data, follow blocked operations until the model
says they complete, wait for the real system to settle on the predicted snapshot, then check
the console.  The first disagreement raises ScenarioFailure naming the step, the port, and a
port | field | expected | actual table, because that is what a reader needs to act on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from harness.backend.settle import settle
from harness.errors import HarnessError, NotApplicable, OperationFailed
from harness.model import (
    Behaviour,
    Completion,
    Difference,
    ModelError,
    Pending,
    ReadResult,
    Snapshot,
    VirtioSerialModel,
    build_model,
    format_diff,
)
from harness.model.payload import slices_bytes
from harness.scenario.observe import arrivals, check_differences, sigio_events
from harness.scenario.schema import Scenario
from harness.scenario.steps import STEPS, DestinationBehaviour, Step, StepCall, same_qemu
from harness.scenario.streams import StreamBook
from harness.scenario.system import RealSystem
from harness.scenario.wire_check import SavedState

log = logging.getLogger("hil.scenario")
StepContext = Callable[[Step], AbstractContextManager[Any]]
BOOT = Step(0, "boot", {}, None, "", 0, 0)
DEFAULT_READ = 65536


@dataclass(frozen=True)
class RunnerOptions:
    """Timeouts; the defaults suit TCG guests, model-only runs never wait."""

    settle_timeout: float = 10.0
    poll_interval: float = 0.05
    op_timeout: float = 60.0
    quiet_timeout: float = 0.5  # how long a read that should find nothing may wait


class ScenarioFailure(HarnessError, AssertionError):
    """The first disagreement; ``str()`` starts with ``step N (<kind> <port>): ``.

    Also an AssertionError: pytest reports it as the test failing, like a failed ``assert``.
    """

    def __init__(
        self,
        step: Step,
        message: str,
        table: str | Sequence[Difference] = "",
        console: list[str] | None = None,
    ) -> None:
        #: the fields that differ (exploration tells one finding from another by them)
        self.fields: tuple[str, ...] = ()
        if not isinstance(table, str):
            self.fields = tuple(sorted({d.field for d in table}))
            table = format_diff(list(table))
        self.step, self.reason, self.table = step, message, table
        self.console = console or []
        text = f"step {step.index} ({step.label}): {message}"
        super().__init__(f"{text}\n{table}" if table else text)


@dataclass
class Prediction:
    """What the model says one step does."""

    value: object = None
    error: ModelError | None = None
    pending: Pending | None = None
    completed: tuple[Completion, ...] = ()


#: The explorer's say on a step, given the model's prediction: see ``run_step``.
Decide = Callable[[Step, Prediction], Step | None]


@dataclass
class _Background:
    """A guest operation the model predicts is blocked, running for real in the background."""

    step: Step
    pending: Pending
    handle: object | None


@dataclass
class _Outcome:
    """What the real system did in one step."""

    value: object = None
    error: str | None = None


@dataclass
class ScenarioRunner:
    """Drives one scenario; ``run()`` boots the real system (the caller stops it)."""

    scenario: Scenario
    real: RealSystem | None = None
    options: RunnerOptions = field(default_factory=RunnerOptions)
    step_context: StepContext = lambda step: nullcontext()
    #: the switches of the kernel and QEMU under test, for the boot model and every model
    #: that follows it on the same QEMU
    behaviour: Behaviour = field(default_factory=Behaviour)
    #: a migration to another QEMU (the step's `destination: {qemu:}`, or the run's
    #: destination QEMU): its switches, which the destination model runs on (Behaviour
    #: QUEUE_SIZE_SWITCHES only from the next guest reset)
    destination_behaviour: DestinationBehaviour = same_qemu
    model: VirtioSerialModel = field(init=False)
    background: list[_Background] = field(init=False, default_factory=list)
    sigio: dict[str, list[frozenset[str]]] = field(init=False, default_factory=dict)
    #: ports opened with host data arriving at the open: the real guest may record one SIGIO
    #: with this mask first (see _record_sigio)
    sigio_maybe: dict[str, frozenset[str]] = field(init=False, default_factory=dict)
    streams: StreamBook = field(init=False, default_factory=StreamBook)
    #: the model's snapshot after the last step run (what the real system settled on)
    predicted: Snapshot | None = field(init=False, default=None)
    _console_seen: int = field(init=False, default=0)

    # ------------------------------------------------------------- driving
    def run(self) -> None:
        self.prepare()
        for step in self.scenario.steps:
            self.run_guarded(step)
        self.finish()

    def prepare(self) -> None:
        """Build the model and boot the real system (step 0); steps may follow."""
        self.model = build_model(self.scenario.machine, self.behaviour)
        if self.real is not None:
            with self.step_context(BOOT):
                self.real.start(self.scenario.machine)
                self._settle(BOOT, self.model.snapshot())
                self._check_console(BOOT)

    def run_guarded(self, step: Step) -> None:
        """One step; QEMU dying or the guest falling silent fails it, with the context."""
        log.info("%s: step %d %s", self.scenario.name, step.index, step.label)
        with self.step_context(step):
            try:
                self.run_step(step)
            except (ScenarioFailure, NotApplicable):
                raise
            except HarnessError as error:
                raise self._lost(step, error) from error

    def finish(self) -> None:
        """The end of a scenario: an operation still blocked here was never judged.

        Its ``expect``, ``eof`` or ``expect_error`` only applies when it completes, so a
        scenario that ends first would pass without ever checking them: fail instead.
        """
        for job in self.background:
            args = job.step.args
            unchecked = [f"{key}: {_yaml(args[key])}" for key in _EXPECTATIONS if key in args]
            if job.step.expect_error is not None:
                unchecked.append(f"expect_error: {job.step.expect_error!r}")
            if unchecked:
                raise ScenarioFailure(
                    job.step,
                    f"still blocked when the scenario ended, so {' and '.join(unchecked)} "
                    "was never checked; add the step that completes it, or drop the expectation",
                )

    def _lost(self, step: Step, error: HarnessError) -> ScenarioFailure:
        """A harness-level failure mid-step: QEMU's exit status and the console's tail."""
        if self.real is None:
            return ScenarioFailure(step, f"{type(error).__name__}: {error}")
        context = self.real.failure_context()
        fresh = self.real.console_problems()[self._console_seen :]  # the guest kernel's own
        return ScenarioFailure(
            step, f"{context.headline}: {error}", context.console_tail, console=fresh
        )

    def run_step(self, step: Step, decide: Decide | None = None) -> Step | None:
        """Run one step; return it as run (None: dropped by ``decide``).

        ``decide`` (the explorer) sees the model's prediction before anything runs for real
        and returns the step to run, with the expect_error it chose, or None to drop a step
        the model predicts fails (a failing model operation changes nothing, so dropping it
        leaves no trace).  One prediction serves both, instead of one on a copy first.
        """
        before, delivered = self.model.snapshot(), self.model.delivered()
        prediction = self._predict(step)
        if decide is not None:
            decided = decide(step, prediction)
            if decided is None:
                if prediction.error is None:
                    raise AssertionError(f"{step.label}: only a failing step can be dropped")
                return None
            step = decided
        if self.real is not None:
            for port in self.streams.due(step.index):
                self.real.stop_stream_writer(port)
        self.streams.observe(step, prediction.error is None)
        actual = self._apply_real(step, prediction)
        self._judge_error(step, prediction, actual)
        if prediction.error is None and actual.error is None:
            self._judge_value(step, prediction, actual)
        after = self.model.snapshot()
        arrived = arrivals(delivered, self.model.delivered())
        self._record_sigio(step, prediction, (before, after), arrived)
        self._check_console(step)  # a panicked guest fails here, before any agent wait
        self._settle(step, after)
        self._follow_background(step, prediction)
        if STEPS[step.kind].asserts:
            self._check(step)
        self._check_console(step)
        self.predicted = after
        return step

    # ------------------------------------------------------------- model side
    def _call(self, step: Step) -> StepCall:
        return StepCall(
            step,
            self.model,
            self.scenario.name,
            streams=self.streams,
            destination_behaviour=self.destination_behaviour,
        )

    def _predict(self, step: Step) -> Prediction:
        call = self._call(step)
        try:
            outcome = STEPS[step.kind].model(call)
        except ModelError as error:
            return Prediction(error=error)
        self.model = call.model  # a migration goes on with the destination's model
        return Prediction(outcome.value, None, outcome.pending, outcome.completed)

    # ------------------------------------------------------------- real side
    def _apply_real(self, step: Step, prediction: Prediction) -> _Outcome:
        if prediction.pending is not None:  # followed in model mode too: it must end as said
            self._start_background(step, prediction.pending)
            return _Outcome()
        if self.real is None:
            return _Outcome(prediction.value, prediction.error.text if prediction.error else None)
        call = self._call(step)
        call.read_size = self._read_size(step, prediction)
        if prediction.error is not None:
            call.timeout = self.options.quiet_timeout
        else:
            call.timeout = self.options.op_timeout
        try:
            return _Outcome(STEPS[step.kind].real(self.real, call))
        except Exception as failure:
            text = failure_text(failure)
            if text is None:
                raise
            return _Outcome(error=text)

    def _read_size(self, step: Step, prediction: Prediction) -> int:
        """Read exactly what the model says is deliverable, else the author's max_bytes."""
        if isinstance(prediction.value, ReadResult) and prediction.value.length:
            return prediction.value.length
        return step.args.get("max_bytes") or DEFAULT_READ

    def _start_background(self, step: Step, pending: Pending) -> None:
        handle = None
        start = STEPS[step.kind].background
        if self.real is not None:
            if start is None:
                raise AssertionError(f"the model blocks {step.kind}, which cannot run blocked")
            handle = start(self.real, self._call(step))
        self.background.append(_Background(step, pending, handle))

    # ------------------------------------------------------------- judging
    def _judge_error(self, step: Step, prediction: Prediction, actual: _Outcome) -> None:
        """expect_error must be a substring of the model's AND the real system's text.

        A step the model predicts blocks has no error yet: its expect_error is judged when it
        completes (``_judge_end``), or fails the scenario if it never does (``finish``).
        """
        if prediction.pending is not None:
            return
        model_text = prediction.error.text if prediction.error else None
        if step.expect_error is None:
            if model_text is not None:
                raise ScenarioFailure(
                    step,
                    f"the model predicts this step fails with "
                    f"{model_text!r}; add expect_error if that is intended",
                )
            if actual.error is not None:
                raise ScenarioFailure(
                    step,
                    f"the real system failed with {actual.error!r}, the model predicts success",
                )
            return
        want = step.expect_error
        if model_text is None or want not in model_text:
            raise ScenarioFailure(
                step, f"expected error {want!r}, the model predicts {_describe(model_text)}"
            )
        if self.real is not None and (actual.error is None or want not in actual.error):
            raise ScenarioFailure(
                step, f"expected error {want!r}, the real system gave {_describe(actual.error)}"
            )

    def _judge_value(self, step: Step, prediction: Prediction, actual: _Outcome) -> None:
        if isinstance(prediction.value, ReadResult):
            self._judge_read(step, step, prediction.value, actual.value)
        elif isinstance(prediction.value, SavedState) and isinstance(actual.value, SavedState):
            differences = prediction.value.differences(actual.value, self._streamed_ports())
            if differences:
                raise ScenarioFailure(
                    step,
                    "the migration stream's virtio-serial state differs from the model's "
                    "saved state (expected: model, actual: QEMU's stream)",
                    differences,
                )
        elif (
            STEPS[step.kind].compares_count
            and self.real is not None
            and (actual.value != prediction.value)
        ):
            raise ScenarioFailure(
                step,
                "bytes written differ",
                _table(step, "written", prediction.value, actual.value),
            )

    def _streamed_ports(self) -> frozenset[tuple[str, int]]:
        """(controller, port id) of the ports a stream runs on (see SavedState.differences)."""
        ports = (self.model.ports.get(name) for name in self.streams.active)
        return frozenset((port.controller, port.nr) for port in ports if port is not None)

    def _judge_read(self, step: Step, origin: Step, predicted: ReadResult, real: object) -> None:
        """Author's literal vs the model first (the model must agree with the author too).

        ``origin`` is the read step whose ``expect``/``eof`` apply (a blocked read completes
        during a later ``step``).  At EOF a read returns no bytes, so ``expect: ""`` holds.
        """
        label = origin.args.get("port", "")
        expect: str | None = origin.args.get("expect")
        if "eof" in origin.args and origin.args["eof"] != predicted.eof:
            raise ScenarioFailure(
                step,
                "the model disagrees with the scenario's eof",
                _table(origin, "eof", origin.args["eof"], predicted.eof),
            )
        if expect is not None:
            got = slices_bytes(predicted.slices).decode("utf-8", "replace")
            if got != expect:
                at_eof = ' (the read is at EOF: it returns no bytes; expect: "" or eof: true)'
                raise ScenarioFailure(
                    step,
                    "the model disagrees with the scenario's expect"
                    + (at_eof if predicted.eof else ""),
                    _table(origin, "data", expect, got),
                )
        if self.real is None:
            return
        rows = [
            Difference(label, "length", predicted.length, getattr(real, "length", None)),
            Difference(label, "sha256", predicted.sha256(), getattr(real, "sha256", None)),
            Difference(label, "eof", predicted.eof, getattr(real, "eof", None)),
        ]
        if expect is not None and not predicted.eof:
            data = getattr(real, "data", None)
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            rows.append(Difference(label, "data", expect, text))
        bad = [row for row in rows if row.expected != row.actual]
        if bad:
            raise ScenarioFailure(step, "the real read differs from the prediction", bad)

    # ------------------------------------------------------------- background ops
    def _follow_background(self, step: Step, prediction: Prediction) -> None:
        """Completed ones must have completed as predicted; the others must still block."""
        done = {c.ticket: c for c in prediction.completed}
        blocked = {p.ticket for p in self.model.blocked()}
        still: list[_Background] = []
        for job in self.background:
            if job.pending.ticket in done:
                self._judge_completion(step, job, done[job.pending.ticket])
            elif job.pending.ticket not in blocked:
                self._wait_done(step, job)
            else:
                self._assert_blocked(step, job)
                still.append(job)
        self.background = still

    def _wait_done(self, step: Step, job: _Background) -> tuple[object, str | None]:
        if self.real is None:
            return None, None
        deadline = time.monotonic() + self.options.op_timeout
        while True:
            finished, result, error = self.real.guest_op_state(job.handle)
            if finished:
                return result, error
            if time.monotonic() > deadline:
                raise ScenarioFailure(
                    step,
                    f"{job.pending.op} started at step {job.step.index} "
                    f"should have completed here but is still blocked after "
                    f"{self.options.op_timeout:.0f} s",
                )
            time.sleep(self.options.poll_interval)

    def _judge_completion(self, step: Step, job: _Background, done: Completion) -> None:
        result, error = self._wait_done(step, job)
        what = f"{job.pending.op} started at step {job.step.index}"
        self._judge_end(step, job, done)
        if isinstance(done.result, ReadResult):
            self._judge_read(step, job.step, done.result, result)
        if self.real is None:
            return
        if done.error is not None:
            if error is None or done.error.text not in error:
                raise ScenarioFailure(
                    step,
                    f"{what} should fail with {done.error.text!r}, "
                    f"the real system gave {_describe(error)}",
                )
            return
        if error is not None:
            raise ScenarioFailure(step, f"{what} failed with {error!r}, the model predicts success")
        if isinstance(done.result, ReadResult):
            self._judge_read(step, job.step, done.result, result)
        elif result != done.result:
            raise ScenarioFailure(
                step,
                f"{what} returned a different count",
                _table(step, "written", done.result, result),
            )

    def _judge_end(self, step: Step, job: _Background, done: Completion) -> None:
        """The blocked step's expect_error is about how it ends: the model must agree."""
        what = f"{job.pending.op} started at step {job.step.index}"
        model_text = done.error.text if done.error else None
        want = job.step.expect_error
        if want is None and model_text is not None:
            raise ScenarioFailure(
                step,
                f"{what} ends here with {model_text!r} (the model predicts it); add "
                f"expect_error: {model_text} to step {job.step.index} if that is intended",
            )
        if want is not None and (model_text is None or want not in model_text):
            raise ScenarioFailure(
                step,
                f"{what} should end with error {want!r} (its expect_error), "
                f"the model predicts it ends with {_describe(model_text)}",
            )

    def _assert_blocked(self, step: Step, job: _Background) -> None:
        if self.real is None:
            return
        finished, result, error = self.real.guest_op_state(job.handle)
        if finished:
            raise ScenarioFailure(
                step,
                f"{job.pending.op} started at step {job.step.index} "
                f"completed ({_describe(error) if error else result!r}), the "
                "model predicts it is still blocked",
            )

    # ------------------------------------------------------------- snapshots
    def _settle(self, step: Step, predicted: Snapshot) -> Snapshot:
        """Wait (bounded) for the real system to show the predicted state; return it."""
        if self.real is None or self.streams.paused:  # a stopped guest cannot be asked
            return predicted
        real = self.real
        actual, differences = settle(
            predicted,
            lambda: self.streams.blind(predicted, real.snapshot()),
            self.options.settle_timeout,
            self.options.poll_interval,
        )
        if differences:
            raise ScenarioFailure(
                step,
                "the real system did not settle on the predicted state within "
                f"{self.options.settle_timeout:g} s",
                differences,
            )
        return actual

    def _check(self, step: Step) -> None:
        """The author's values must hold on the model and on the real system."""
        model_view = self.model.snapshot()
        bad = check_differences(step.args, model_view, self.sigio)
        if bad:
            raise ScenarioFailure(step, "the model disagrees with the scenario", bad)
        if self.real is None:
            return
        real_view = self.real.snapshot()
        port = step.args.get("port")
        real_sigio = {}
        if "sigio" in step.args and port:
            real_sigio = {port: collapse(self.real.sigio(port))}
        bad = check_differences(step.args, real_view, real_sigio)
        if bad and isinstance(port, str) and port in real_sigio:
            maybe = self.sigio_maybe.get(port)
            if maybe is not None and real_sigio[port][:1] == [maybe]:
                bad = check_differences(step.args, real_view, {port: real_sigio[port][1:]})
        if bad:
            raise ScenarioFailure(step, "the real system disagrees with the scenario", bad)

    def _record_sigio(
        self,
        step: Step,
        prediction: Prediction,
        snapshots: tuple[Snapshot, Snapshot],
        arrived: set[str],
    ) -> None:
        """The SIGIOs the step raises (sigio_events), from the model's snapshots before and
        after it and the ports QEMU put data into."""
        before, after = snapshots
        if step.kind == "guest_open" and prediction.error is None:
            # Host data that arrives at the open fills the guest's buffers while the agent
            # turns O_ASYNC on (fcntl after open()): each fill after that raises SIGIO, the
            # ones before do not.  Found by exploration (6.1, 6.12): 300000 bytes queued,
            # guest_open, and one {IN,OUT} SIGIO the model did not predict.  The first
            # observation may be that one, or not.
            port = step.args["port"]
            self.sigio[port] = []
            self.sigio_maybe.pop(port, None)
            new = after.ports.get(port)
            if port in arrived and new is not None and new.poll is not None:
                self.sigio_maybe[port] = new.poll
        for port, mask in sigio_events(before, after, arrived):
            masks = self.sigio.setdefault(port, [])
            if not masks or masks[-1] != mask:
                masks.append(mask)

    def _check_console(self, step: Step) -> None:
        if self.real is None:
            return
        problems = self.real.console_problems()
        fresh, self._console_seen = problems[self._console_seen :], len(problems)
        if fresh:
            raise ScenarioFailure(
                step, "the guest console reports a kernel problem", "\n".join(fresh), console=fresh
            )


_EXPECTATIONS = ("expect", "eof")


def failure_text(error: BaseException) -> str | None:
    """The device's text of a real step failure (any OperationFailed), else None.

    Anything else is a harness problem or bug and must propagate.
    """
    return error.text if isinstance(error, OperationFailed) else None


def collapse(masks: list[frozenset[str]]) -> list[frozenset[str]]:
    """Consecutive equal SIGIO masks are one observation: interrupt batching is not a spec."""
    out: list[frozenset[str]] = []
    for mask in masks:
        if not out or out[-1] != mask:
            out.append(mask)
    return out


def _yaml(value: object) -> str:
    """A value as the author wrote it: true/false, quoted text."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _describe(error: str | None) -> str:
    return "success" if error is None else repr(error)


def _table(step: Step, name: str, expected: object, actual: object) -> list[Difference]:
    return [Difference(step.target or "-", name, expected, actual)]


def run_scenario(
    scenario: Scenario,
    real: RealSystem | None = None,
    options: RunnerOptions | None = None,
    step_context: StepContext | None = None,
) -> ScenarioRunner:
    """Run every step (booting ``real`` if given; the caller stops it); return the runner."""
    runner = ScenarioRunner(scenario, real, options or RunnerOptions())
    if step_context is not None:
        runner.step_context = step_context
    runner.run()
    return runner
