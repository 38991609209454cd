"""Random step sequences judged by the model, shrunk to a YAML scenario on disagreement.

A hypothesis ``RuleBasedStateMachine`` whose rules are the step registry: one rule per
registered step kind (``STEPS``), its arguments drawn from the kind's ``keys`` (``ARG_POLICY``
says how to draw a key by name, else by its type), so a new step kind joins exploration with
no change here.  Every example builds ``Step`` objects and drives ``ScenarioRunner.run_step``
on the model and the real system, exactly as a scenario runs.  A step the model predicts
fails is drawn too: its ``expect_error`` is the model's text, so the real system must fail
the same way.  When the runner raises ``ScenarioFailure``, hypothesis shrinks the example by
replaying it; the last (minimal) failing sequence is written as a scenario file that plain
``pytest FILE`` reruns.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.errors import Flaky, FlakyStrategyDefinition
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from harness.errors import HarnessError
from harness.model import (
    BACKENDS,
    ControllerDecl,
    MachineDecl,
    ModelError,
    PortDecl,
    Snapshot,
    VirtioSerialModel,
    build_model,
)
from harness.model.behaviour import Behaviour
from harness.scenario.runner import RunnerOptions, ScenarioFailure, ScenarioRunner
from harness.scenario.schema import Scenario, parse_scenario
from harness.scenario.steps import MIGRATION_MODES, STEPS, Arg, Step, StepCall, StepKind
from harness.scenario.system import RealSystem

#: The name every explored example runs under: ``size:`` payloads are seeded by scenario name
#: and step index, so the written finding (same name, same indices) moves the same bytes.
EXPLORE_NAME = "explore finding"
DEFAULT_OUT = "explore-findings"
#: Small enough that "Maximum port limit" and out-of-range ids are reachable in a few steps.
EXPLORE_MACHINE = MachineDecl(
    controllers=(ControllerDecl("vser0", 4),),
    ports=(
        PortDecl("ex1", nr=1),
        PortDecl("ex2", nr=2),
        PortDecl("excon", nr=3, console=True),
    ),
)
#: Names hotplug may use besides the known ones (a known one is a duplicate-name error).
NEW_PORTS = ("ex3", "ex4")
NEW_CONTROLLERS = ("vser1", "vser2")
#: Step kinds that are not drawn as plain rules: ``check`` is drawn by ``rule_check``;
#: qemu_kill and guest_panic end a scenario by design; vm_stop freezes the guest until a
#: vm_cont (drawn apart, every later guest step would wait out its timeout); streams have a
#: rule of their own (no data step on a streamed port before its stream_end) not drawn yet.
NOT_DRAWN = frozenset(
    {"check", "qemu_kill", "guest_panic", "vm_stop", "vm_cont"}
    | {"host_stream", "guest_stream", "stream_end"}
)
#: Keys that state an expectation: the runner compares against the model's prediction anyway.
EXPECTATION_KEYS = frozenset({"expect", "eof", "data"})
SIZES = (0, 1, 7, 100, 4096, 40000, 300000)
#: How many steps one example may have (hypothesis draws up to this many).
DEFAULT_STEPS = 30
#: One in this many steps the model predicts fail is run (the others are skipped).
ERROR_ODDS = 4
#: A model playing the real system settles at once: waiting would only slow shrinking.
MODEL_OPTIONS = RunnerOptions(
    settle_timeout=0.0, poll_interval=0.0, op_timeout=0.0, quiet_timeout=0.0
)
PHASES = (Phase.reuse, Phase.generate, Phase.shrink)


@dataclass
class Pools:
    """Names a drawn step may use: known ones (schema-valid references) and fresh ones."""

    ports: set[str]
    controllers: set[str]


Drawer = Callable[[st.DataObject, Pools], Any]


def _draw_port(data: st.DataObject, pools: Pools) -> Any:
    return data.draw(st.sampled_from(sorted(pools.ports)))


def _draw_new_port(data: st.DataObject, pools: Pools) -> Any:
    return data.draw(st.sampled_from(sorted(pools.ports | set(NEW_PORTS))))


def _draw_controller(data: st.DataObject, pools: Pools) -> Any:
    return data.draw(st.sampled_from(sorted(pools.controllers)))


def _draw_new_controller(data: st.DataObject, pools: Pools) -> Any:
    return data.draw(st.sampled_from(sorted(pools.controllers | set(NEW_CONTROLLERS))))


def _fixed(strategy: st.SearchStrategy[Any]) -> Drawer:
    return lambda data, pools: data.draw(strategy)


#: How a key is drawn, by (kind, key) first, then by key; None: never drawn.
ARG_POLICY: dict[tuple[str, str] | str, Drawer | None] = {
    ("hotplug", "name"): _draw_new_port,
    ("hotplug_controller", "id"): _draw_new_controller,
    ("unplug_controller", "id"): _draw_controller,
    "controller": _draw_controller,
    "port": _draw_port,
    "nr": _fixed(st.integers(0, 5)),
    "max_ports": _fixed(st.sampled_from((1, 2, 4, 31, 0))),
    "size": _fixed(st.sampled_from(SIZES)),
    "max_bytes": _fixed(st.sampled_from((1, 100, 5000))),
    "backend": _fixed(st.sampled_from(BACKENDS)),
    "mode": _fixed(st.sampled_from(MIGRATION_MODES)),
    "destination": None,
    **{key: None for key in EXPECTATION_KEYS},
}
#: Keys drawn every time (a payload needs data: or size:, and data: is not drawn).
ALWAYS = frozenset({"size"})


def _by_type(arg: Arg) -> Drawer | None:
    """Keys no policy names: draw from the Arg's own type and range."""
    if arg.type == "bool":
        return _fixed(st.booleans())
    if arg.type == "int":
        low = arg.low or 0
        return _fixed(st.integers(low, low + 8 if arg.high is None else min(arg.high, low + 8)))
    if arg.type == "str" and arg.choices:
        return _fixed(st.sampled_from(arg.choices))
    return None  # str without choices (a name we cannot invent), machine, masks: not drawn


def drawer(kind: StepKind, key: str) -> Drawer | None:
    if (kind.name, key) in ARG_POLICY:
        return ARG_POLICY[(kind.name, key)]
    if key in ARG_POLICY:
        return ARG_POLICY[key]
    if kind.refers.get(key) == "port":
        return _draw_port
    if kind.refers.get(key) == "controller":
        return _draw_controller
    return _by_type(kind.keys[key])


def _in_range(arg: Arg, value: Any) -> Any:
    """A policy's value inside the kind's own range (the schema would refuse it otherwise)."""
    if arg.type != "int" or not isinstance(value, int):
        return value
    if arg.low is not None and value < arg.low:
        return arg.low
    if arg.high is not None and value > arg.high:
        return arg.high
    return value


def draw_args(data: st.DataObject, kind: StepKind, pools: Pools) -> dict[str, Any] | None:
    """Arguments for ``kind``; None when a required key cannot be drawn."""
    args: dict[str, Any] = {}
    for key in kind.keys:
        draw = drawer(kind, key)
        required = key in kind.required or key in ALWAYS
        if draw is None:
            if required:
                return None
            continue
        if required or data.draw(st.booleans()):
            args[key] = _in_range(kind.keys[key], draw(data, pools))
    if kind.validate is not None and kind.validate(args) is not None:
        return None
    return args


# ------------------------------------------------------------------ statistics
@dataclass
class Finding:
    path: Path
    failure: str
    steps_first: int  # steps of the first failing example hypothesis found
    steps_shrunk: int
    seconds: float  # from the start of the exploration to the written file


@dataclass
class Stats:
    """What the end-of-run summary reports."""

    label: str = ""
    examples: int = 0
    steps: int = 0
    states: set[str] = field(default_factory=set)
    transitions: set[tuple[str, str, str]] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    errors_drawn: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time: steps/s on a shared, loaded machine
    coverage: float | None = None
    invariant_checks: int = 0

    def summary(self) -> str:
        rate = self.steps / self.seconds if self.seconds else 0.0
        cpu_rate = self.steps / self.cpu_seconds if self.cpu_seconds else 0.0
        lines = [
            f"explore[{self.label}]: {self.examples} examples, {self.steps} steps "
            f"({rate:.0f} steps/s wall, {cpu_rate:.0f} per CPU second; "
            f"{self.errors_drawn} predicted errors), "
            f"{len(self.states)} distinct model states, {len(self.transitions)} transitions, "
            f"{self.seconds:.1f} s",
        ]
        if self.coverage is not None:
            lines.append(f"  model branch coverage reached: {self.coverage:.1f}%")
        if not self.findings:
            lines.append("  findings: none")
        for finding in self.findings:
            first_line = finding.failure.splitlines()[0] if finding.failure else ""
            lines.append(
                f"  finding: {finding.path} ({finding.steps_first} -> {finding.steps_shrunk} "
                f"steps, found after {finding.seconds:.1f} s): {first_line}"
            )
        return "\n".join(lines)


def abstract_state(snapshot: Snapshot) -> str:
    """A model state without byte counters: which ports exist, open where, throttled, poll."""
    parts = []
    for name in sorted(snapshot.ports):
        view = snapshot.ports[name]
        qemu = view.qemu
        flags = (
            f"{qemu.guest_connected:d}{qemu.host_connected:d}{qemu.throttled:d}" if qemu else "-"
        )
        poll = "".join(sorted(view.poll)) if view.poll is not None else "x"
        parts.append(f"{name}@{view.controller}:{view.nr}:{flags}:{poll}")
    parts.append("|".join(sorted(snapshot.controllers)))
    return ";".join(parts)


@dataclass
class CoverageResult:
    percent: float | None = None  # None: coverage.py missing, or already measuring (pytest-cov)


@contextmanager
def model_coverage() -> Iterator[CoverageResult]:
    """Branch coverage of harness/model reached inside the block (coverage.py's API).

    The model is imported before measuring starts, so its module-level lines (def, class)
    count as missed: the number is a lower bound of what the exploration reached.
    """
    result = CoverageResult()
    try:
        import coverage
    except ImportError:
        yield result
        return
    if coverage.Coverage.current() is not None or sys.gettrace() is not None:
        yield result  # pytest-cov or a debugger traces already: do not take over
        return
    import harness.model

    include = str(Path(harness.model.__file__).parent / "*")
    try:
        cov = coverage.Coverage(branch=True, include=[include], data_file=None)
        cov.start()
    except Exception:  # coverage.py cannot trace here (e.g. in-process pytester): no number
        yield result
        return
    try:
        yield result
    finally:
        cov.stop()
        try:
            result.percent = cov.report(file=io.StringIO())
        except coverage.CoverageException:
            result.percent = None


# ------------------------------------------------------------------ invariants (model mode)
class InvariantBroken(HarnessError, AssertionError):
    """The model broke one of its own rules (model-only exploration checks these)."""


def check_invariants(model: VirtioSerialModel) -> None:
    """No negative counters, conservation per direction, legal connection states."""
    snap = model.snapshot()
    for name, view in snap.ports.items():
        guest = view.guest
        for field_name in ("bytes_sent", "bytes_received", "bytes_discarded", "console_vtermno"):
            if getattr(guest, field_name) < 0:
                raise InvariantBroken(f"{name}: {field_name} is negative")
        if guest.bytes_discarded > guest.bytes_received:
            raise InvariantBroken(f"{name}: discarded more than it received")
        if view.poll is not None and not view.poll <= {"IN", "OUT", "HUP"}:
            raise InvariantBroken(f"{name}: poll mask {sorted(view.poll)}")
        if view.poll is not None and "HUP" in view.poll and "OUT" in view.poll:
            raise InvariantBroken(f"{name}: poll says both HUP and OUT")
    for direction in model.written:
        moved = model.read[direction] + model.in_flight(direction) + model.discarded(direction)
        if moved != model.written[direction]:
            raise InvariantBroken(
                f"{direction}: read {model.read[direction]} + in flight "
                f"{model.in_flight(direction)} + discarded {model.discarded(direction)} "
                f"!= written {model.written[direction]}"
            )


# ------------------------------------------------------------------ the YAML writer
def _yaml_value(value: Any) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple | list):
        return [_yaml_value(v) for v in value]
    return value


def _machine_yaml(machine: MachineDecl) -> dict[str, Any]:
    ports = []
    for port in machine.ports:
        entry: dict[str, Any] = {"name": port.name, "controller": port.controller}
        if port.nr is not None:
            entry["nr"] = port.nr
        if port.console:
            entry["console"] = True
        if port.backend != "socket":
            entry["backend"] = port.backend
        ports.append(entry)
    return {
        "memory": machine.memory,
        "controllers": [{"id": c.id, "max_ports": c.max_ports} for c in machine.controllers],
        "ports": ports,
    }


def scenario_yaml(
    steps: list[Step], machine: MachineDecl, description: str, name: str = EXPLORE_NAME
) -> str:
    """A scenario file for ``steps``; indices 1..n as explored (payload seeds depend on them)."""
    body = []
    for step in steps:
        entry: dict[str, Any] = {step.kind: {k: _yaml_value(v) for k, v in step.args.items()}}
        if not step.args:
            entry[step.kind] = None
        if step.expect_error is not None:
            entry["expect_error"] = step.expect_error
        body.append(entry)
    document = {
        "name": name,
        "description": description,
        "machine": _machine_yaml(machine),
        "steps": body,
    }
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


class _Dumper(yaml.SafeDumper):
    """Multi-line text (the failure table in the description) as a readable ``|`` block."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def write_finding(
    out_dir: Path, steps: list[Step], machine: MachineDecl, failure: str, label: str
) -> tuple[Path, Scenario]:
    """Write, then validate by parsing it back: a finding nobody can rerun is worthless."""
    description = (
        f"Found by exploration ({label}); the model and the real system disagree:\n{failure}"
    )
    text = scenario_yaml(steps, machine, description)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() else "-" for c in label).strip("-") or "model"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"explore-{safe}-{digest}.yaml"
    path.write_text(text)
    return path, parse_scenario(text, str(path))


# ------------------------------------------------------------------ the state machine
@dataclass
class Exploration:
    """One exploration: settings, the real system to drive, and what it found."""

    real_factory: Callable[[], RealSystem] | None = None
    machine: MachineDecl = EXPLORE_MACHINE
    behaviour: Behaviour = field(default_factory=Behaviour)
    label: str = "model"
    seed: int = 0
    seconds: float = 60.0
    max_examples: int = 1000
    steps_per_example: int = DEFAULT_STEPS
    out_dir: Path = Path(DEFAULT_OUT)
    database: Path | None = None
    options: RunnerOptions = field(default_factory=RunnerOptions)
    invariants: bool = True
    exclude: frozenset[str] = frozenset()  # step kinds not drawn (besides NOT_DRAWN)
    #: wraps each example (an allure step, a mutant); called with the example number
    example_context: Callable[[int], AbstractContextManager[Any]] = lambda n: nullcontext()
    stats: Stats = field(init=False)
    _failing: list[Step] | None = field(init=False, default=None)
    _failure: str = field(init=False, default="")
    _first_failing: int = field(init=False, default=0)
    _start: float = field(init=False, default=0.0)

    def run(self) -> Stats:
        """Explore until the time or the example budget is spent, or a finding is written."""
        self.stats = Stats(self.label)
        self._start = time.monotonic()
        cpu = time.process_time()
        chunk = 0
        try:
            while self.time_left() > 0 and self.stats.examples < self.max_examples:
                if not self._run_chunk(chunk):
                    break
                chunk += 1
        finally:
            self.stats.seconds = time.monotonic() - self._start
            self.stats.cpu_seconds = time.process_time() - cpu
        return self.stats

    @property
    def failing(self) -> bool:
        """A failure was seen: shrinking replays examples however late it is."""
        return self._failing is not None

    def time_left(self) -> float:
        return self.seconds - (time.monotonic() - self._start)

    def _run_chunk(self, chunk: int) -> bool:
        """One hypothesis run of a few examples; False after a finding (stop there)."""
        size = 5 if self.real_factory is not None else 50
        size = min(size, self.max_examples - self.stats.examples)
        machine_cls = build_state_machine(self)
        hypothesis_seed(self.seed * 100003 + chunk)(machine_cls)
        db: ExampleDatabase | None = None
        if self.database is not None:
            db = DirectoryBasedExampleDatabase(str(self.database))
        config = settings(
            max_examples=size,
            stateful_step_count=self.steps_per_example,
            deadline=None,
            database=db,
            phases=PHASES if chunk == 0 else PHASES[1:],  # the database replays once
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            print_blob=False,
        )
        try:
            run_state_machine_as_test(machine_cls, settings=config)
        except (ScenarioFailure, InvariantBroken) as failure:
            self._record_finding(failure)
            return False
        except (Flaky, FlakyStrategyDefinition):
            if self.time_left() > 0:
                raise
            return False  # hypothesis noticed the idle examples after the time bound: done
        return True

    def _record_finding(self, failure: BaseException) -> None:
        steps = self._failing or []
        text = self._failure or str(failure)
        path, _ = write_finding(self.out_dir, steps, self.machine, text, self.label)
        self.stats.findings.append(
            Finding(path, text, self._first_failing, len(steps), time.monotonic() - self._start)
        )

    # -- called by the state machine
    def note_failure(self, steps: list[Step], failure: BaseException) -> None:
        """The last failing example is the minimal one: hypothesis replays it at the end."""
        if self._failing is None:
            self._first_failing = len(steps)
        self._failing, self._failure = list(steps), str(failure)


def build_state_machine(exploration: Exploration) -> type[RuleBasedStateMachine]:
    """A state machine class with one rule per drawable step kind of the registry."""

    class Explore(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.exploration = exploration
            self.steps: list[Step] = []
            self.pools = Pools(
                {p.name for p in exploration.machine.ports},
                {c.id for c in exploration.machine.controllers},
            )
            self.real: RealSystem | None = None
            self.context: AbstractContextManager[Any] = nullcontext()
            self.state = ""
            self.idle = False  # time is up: this example does nothing
            self.runner = _new_runner(exploration)

        @initialize()
        def boot(self) -> None:
            ex = self.exploration
            if ex.time_left() <= 0 and not ex.failing:  # time up, nothing to shrink: idle
                self.idle = True
                return
            ex.stats.examples += 1
            self.context = ex.example_context(ex.stats.examples)
            self.context.__enter__()
            if ex.real_factory is not None:
                self.real = ex.real_factory()
                self.runner.real = self.real
                step_hook = getattr(self.real, "step_context", None)
                if step_hook is not None:
                    self.runner.step_context = step_hook
                self.real.start(ex.machine)
            self.runner.model = build_model(ex.machine, ex.behaviour)
            self.state = abstract_state(self.runner.model.snapshot())
            ex.stats.states.add(self.state)

        def teardown(self) -> None:
            try:
                if self.real is not None:
                    self.real.stop()
            finally:
                self.context.__exit__(None, None, None)

        def run(self, kind: str, args: dict[str, Any], data: st.DataObject) -> None:
            """Predict on a copy for expect_error, then run the step as a scenario would.

            Most predicted errors are skipped (drawn, so shrinking can keep one): errors are
            cheap to reach, and sequences of valid steps reach the deeper states.
            """
            if self.idle:
                return
            index = len(self.steps) + 1
            probe = Step(index, kind, args, None, "<explore>", index, 1)
            expect_error, endings = _predict(self.runner, probe)
            if expect_error is not None and data.draw(st.integers(0, ERROR_ODDS - 1)):
                return
            step = replace(probe, expect_error=expect_error)
            self._expect_endings(endings)
            self.steps.append(step)
            ex = self.exploration
            ex.stats.steps += 1
            ex.stats.errors_drawn += expect_error is not None
            try:
                with self.runner.step_context(step):
                    self.runner.run_step(step)
                if ex.invariants:
                    check_invariants(self.runner.model)
                    ex.stats.invariant_checks += 1
            except (ScenarioFailure, InvariantBroken) as failure:
                ex.note_failure(self.steps, failure)
                raise
            provides = STEPS[kind].provides
            if provides is not None and expect_error is None:
                ports, controllers = provides(args)
                self.pools.ports.update(ports)
                self.pools.controllers.update(controllers)
            state = abstract_state(self.runner.model.snapshot())
            ex.stats.states.add(state)
            ex.stats.transitions.add((self.state, kind, state))
            self.state = state

        def _expect_endings(self, endings: Mapping[int, str]) -> None:
            """A blocked step that this step ends with an error gets that expect_error."""
            for job in self.runner.background:
                text = endings.get(job.pending.ticket)
                if text is None:
                    continue
                job.step = replace(job.step, expect_error=text)
                self.steps[job.step.index - 1] = job.step

        def blocked_ports(self) -> set[str]:
            return {p.port for p in self.runner.model.blocked()}

        @rule(data=st.data())
        def rule_check(self, data: st.DataObject) -> None:
            """poll + SIGIO history of a port with an open guest fd, as the model says."""
            if self.idle:
                return
            snap = self.runner.model.snapshot()
            open_ports = sorted(n for n, v in snap.ports.items() if v.poll is not None)
            if not open_ports:
                return
            port = data.draw(st.sampled_from(open_ports))
            args: dict[str, Any] = {"port": port, "poll": snap.ports[port].poll}
            if port in self.runner.sigio:
                args["sigio"] = tuple(_collapse(self.runner.sigio[port]))
            self.run("check", args, data)

    for kind in STEPS.values():
        if kind.name not in NOT_DRAWN | exploration.exclude:
            setattr(Explore, f"rule_{kind.name}", _kind_rule(kind))
    return Explore


def _collapse(masks: list[frozenset[str]]) -> Iterator[frozenset[str]]:
    last = None
    for mask in masks:
        if mask != last:
            yield mask
        last = mask


def _kind_rule(kind: StepKind) -> Any:
    def step_rule(self: Any, data: st.DataObject) -> None:
        if self.idle:
            return
        args = draw_args(data, kind, self.pools)
        if args is None:
            return
        defaults = kind.defaults
        if defaults is not None:
            args = defaults(args, self.exploration.machine)
        port = args.get("port")
        if kind.background is not None and port in self.blocked_ports():
            return  # one blocked operation per port: the agent runs one per fd
        self.run(kind.name, args, data)

    step_rule.__name__ = f"rule_{kind.name}"
    return rule(data=st.data())(step_rule)


def _new_runner(exploration: Exploration) -> ScenarioRunner:
    scenario = Scenario(EXPLORE_NAME, "", (), exploration.machine, ())
    return ScenarioRunner(scenario, None, exploration.options, behaviour=exploration.behaviour)


def _predict(runner: ScenarioRunner, step: Step) -> tuple[str | None, dict[int, str]]:
    """The model's error for ``step`` and the errors blocked operations end with, on a copy."""
    state = (runner.model, runner.streams)
    model, streams = pickle.loads(pickle.dumps(state, pickle.HIGHEST_PROTOCOL))
    call = StepCall(step, model, EXPLORE_NAME, streams=streams)
    try:
        outcome = STEPS[step.kind].model(call)
    except ModelError as error:
        return error.text, {}
    return None, {c.ticket: c.error.text for c in outcome.completed if c.error is not None}
