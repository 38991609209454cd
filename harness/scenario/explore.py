"""Random step sequences judged by the model, shrunk to a YAML scenario on disagreement.

A hypothesis ``RuleBasedStateMachine`` over the step registry (``STEPS``): hypothesis draws one
integer per step (``Choices``), which picks the kind and its arguments from the kind's ``keys``
(``ARG_POLICY`` says how to draw a key by name, else by its type), so a new step kind joins
exploration with no change here. Every example builds ``Step`` objects and drives
``ScenarioRunner.run_step`` on the model and the real system, exactly as a scenario runs. A
step the model predicts fails is drawn too: its ``expect_error`` is the model's text, so the
real system must fail the same way. When the runner raises ``ScenarioFailure``, hypothesis
shrinks the example by replaying it; the last (minimal) failing sequence is written as a
scenario file that plain ``pytest FILE`` reruns.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast

import yaml
from hypothesis import HealthCheck, Phase, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.errors import Flaky, FlakyStrategyDefinition, Unsatisfiable
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from harness.errors import HarnessError, NotApplicable
from harness.model import (
    BACKENDS,
    Completion,
    ControllerDecl,
    Either,
    MachineDecl,
    MaybeBool,
    PortDecl,
    Snapshot,
    VirtioSerialModel,
    build_model,
)
from harness.model.behaviour import Behaviour
from harness.scenario.runner import Prediction, RunnerOptions, ScenarioFailure, ScenarioRunner
from harness.scenario.schema import Scenario, parse_scenario
from harness.scenario.steps import MIGRATION_MODES, STEPS, Arg, Step, StepKind, migration_mode
from harness.scenario.system import RealSystem

#: The name every explored example runs under: ``size:`` payloads are seeded by scenario name
#: and step index, so the written finding (same name, same indices) moves the same bytes.
EXPLORE_NAME = "explore finding"
DEFAULT_OUT = "explore-findings"
#: Added to a finding that failed once and not when hypothesis replayed it (a race in the
#: real system, or a model rule that depends on timing): written as it last failed, unshrunk.
NOT_REPLAYED = (
    "\n(this sequence failed, then passed when replayed: a race; written as it last failed, "
    "not shrunk further)"
)
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
#: Step kinds whose arguments are not drawn from their keys: ``check`` takes the model's
#: poll and SIGIO history (``_check_args``);
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
#: One step in this many may run a step the model predicts fails; the others draw again
#: (``DRAWS_PER_STEP``) until the model predicts success.  A rule per draw instead ran mostly
#: errors where most steps fail (every port unplugged): 727 of 1013 real steps.
ERROR_ODDS = 4
#: One draw in this many is a ``rare`` kind (``StepKind.rare``).  Drawn as often as the
#: rest, reboots (11 s on the TCG guest) and migrations (4 s; the other kinds take 10-100 ms)
#: took 85-90% of a real exploration's time, and most examples lost their controller within
#: a few steps, then drew ssh_drop and module_reload, the only kinds that still succeed.
RARE_ODDS = 32
#: The most of an example's kinds swarm testing leaves out, in 256ths (per example, a
#: share drawn up to this): up to all of them left most examples a few kinds, and a bug
#: needing three given kinds (open both ends, write) was in one example of a hundred.
SWARM_LEFT_OUT = 128
#: Draws one step may take: a draw that runs nothing (a dropped predicted error, arguments
#: that cannot be drawn) is drawn again.  One draw per step left 60% of an example's steps
#: empty, and a bug that needs four steps on one port needs an example that long.
DRAWS_PER_STEP = 4
#: A model playing the real system settles at once: waiting would only slow shrinking.
MODEL_OPTIONS = RunnerOptions(
    settle_timeout=0.0, poll_interval=0.0, op_timeout=0.0, quiet_timeout=0.0
)
PHASES = (Phase.reuse, Phase.generate, Phase.shrink)
#: Examples per hypothesis run, on a real system and where nothing waits (``MODEL_OPTIONS``).
REAL_RUN_EXAMPLES = 5
MODEL_RUN_EXAMPLES = 200
#: Steps one rule call runs in model-only mode (one on a real system): hypothesis's own work
#: per rule call (~0.45 ms: the rule, the draw, its bookkeeping) was 60% of model-only time.
#: Hypothesis then shrinks groups of steps; ``Exploration.shorten`` deletes single ones.
MODEL_STEPS_PER_RULE = 4
#: How long a finding's step-deletion pass (``Exploration.shorten``) may replay, at most.
#: Hypothesis stops shrinking after five minutes, and on a real guest, where an example is a
#: restore plus seconds of steps, that left a planted mutant at 21 steps.
SHORTEN_SECONDS = 600.0


@dataclass
class Pools:
    """Names a drawn step may use: known ones (schema-valid references) and fresh ones."""

    ports: set[str]
    controllers: set[str]
    #: the port of the last step run: the next step stays on it 3 times in 4, because
    #: bugs live in sequences on one port (open, write, close it), rare when each step
    #: picks among all ports afresh
    last_port: str | None = None


_MASK64 = (1 << 64) - 1


class Choices:
    """Every choice of one step, from the one integer hypothesis drew for it (splitmix64).

    Why not a hypothesis draw per choice: each costs tens of microseconds, a rule selection
    hundreds, and a step made ten of them; one integer per step keeps exploration at
    thousands of steps per second.  Shrinking is unchanged where it matters: hypothesis
    deletes whole steps (rule calls), and tries smaller integers, each a different step.
    """

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def below(self, n: int) -> int:
        """A number in ``range(n)``; the next value of the stream."""
        self.state = z = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return (z ^ (z >> 31)) % n

    def pick(self, values: Sequence[Any]) -> Any:
        return values[self.below(len(values))]

    def flag(self) -> bool:
        return self.below(2) == 1


#: What hypothesis draws per step: the seed of its ``Choices``.
STEP_CHOICE = st.integers(0, _MASK64)

Drawer = Callable[[Choices, Pools], Any]


def _draw_port(choices: Choices, pools: Pools) -> Any:
    if pools.last_port in pools.ports and choices.below(4):
        return pools.last_port
    return choices.pick(sorted(pools.ports))


def _draw_new_port(choices: Choices, pools: Pools) -> Any:
    return choices.pick(sorted(pools.ports | set(NEW_PORTS)))


def _draw_controller(choices: Choices, pools: Pools) -> Any:
    return choices.pick(sorted(pools.controllers))


def _draw_new_controller(choices: Choices, pools: Pools) -> Any:
    return choices.pick(sorted(pools.controllers | set(NEW_CONTROLLERS)))


def _fixed(values: Sequence[Any]) -> Drawer:
    return lambda choices, pools: choices.pick(values)


#: How a key is drawn, by (kind, key) first, then by key; None: never drawn.
ARG_POLICY: dict[tuple[str, str] | str, Drawer | None] = {
    ("hotplug", "name"): _draw_new_port,
    ("hotplug_controller", "id"): _draw_new_controller,
    ("unplug_controller", "id"): _draw_controller,
    "controller": _draw_controller,
    "port": _draw_port,
    "nr": _fixed(range(0, 6)),
    "max_ports": _fixed((1, 2, 4, 31, 0)),
    "size": _fixed(SIZES),
    "max_bytes": _fixed((1, 100, 5000)),
    "backend": _fixed(BACKENDS),
    "mode": _fixed(MIGRATION_MODES),
    "destination": None,
    **{key: None for key in EXPECTATION_KEYS},
}
#: Keys drawn every time (a payload needs data: or size:, and data: is not drawn).
ALWAYS = frozenset({"size"})


def _by_type(arg: Arg) -> Drawer | None:
    """Keys no policy names: draw from the Arg's own type and range."""
    if arg.type == "bool":
        return _fixed((False, True))
    if arg.type == "int":
        low = arg.low or 0
        return _fixed(range(low, 1 + (low + 8 if arg.high is None else min(arg.high, low + 8))))
    if arg.type == "str" and arg.choices:
        return _fixed(arg.choices)
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


@dataclass(frozen=True)
class KeyPlan:
    """How one key of a kind is drawn: worked out once per kind, not once per step."""

    key: str
    arg: Arg
    draw: Drawer | None
    required: bool


def key_plans(kind: StepKind) -> tuple[KeyPlan, ...]:
    return tuple(
        KeyPlan(key, arg, drawer(kind, key), key in kind.required or key in ALWAYS)
        for key, arg in kind.keys.items()
    )


def draw_args(
    choices: Choices, kind: StepKind, pools: Pools, plans: tuple[KeyPlan, ...] | None = None
) -> dict[str, Any] | None:
    """Arguments for ``kind`` (``plans``: its ``key_plans``, if already worked out); None when
    a required key cannot be drawn."""
    args: dict[str, Any] = {}
    for plan in key_plans(kind) if plans is None else plans:
        if plan.draw is None:
            if plan.required:
                return None
            continue
        if plan.required or choices.flag():
            args[plan.key] = _in_range(plan.arg, plan.draw(choices, pools))
    if kind.validate is not None and kind.validate(args) is not None:
        return None
    return args


def failure_text(failure: BaseException) -> str:
    """A finding's text.  Besides disagreements (ScenarioFailure) and broken model invariants,
    any error the harness raised inside a step is a finding: a QEMU that died, an agent that
    failed, a guest port that could not be observed.  Those name their type."""
    if isinstance(failure, ScenarioFailure | InvariantBroken):
        return str(failure)
    return f"{type(failure).__name__}: {failure}"


@dataclass(frozen=True)
class Signature:
    """What tells one finding from another: the step kind and the reason, its numbers
    blanked, and the fields that differ.  Exploration goes on after a finding and drops the
    examples that fail the same way again, instead of writing the same finding twice."""

    where: str
    fields: frozenset[str] = frozenset()

    @classmethod
    def of(cls, failure: BaseException) -> Signature:
        if isinstance(failure, ScenarioFailure):
            reason = re.sub(r"\d+", "#", failure.reason)
            return cls(f"{failure.step.kind}: {reason}", frozenset(failure.fields))
        first = str(failure).splitlines()[0] if str(failure) else ""
        return cls(f"{type(failure).__name__}: " + re.sub(r"\d+", "#", first))

    def same(self, other: Signature) -> bool:
        """Same step kind and reason, and a field in common (the fields differ with the
        state around the bug: a port the guest has open adds its poll mask)."""
        if self.where != other.where:
            return False
        return bool(self.fields & other.fields) or not (self.fields or other.fields)


# ------------------------------------------------------------------ statistics
@dataclass
class Finding:
    path: Path
    failure: str
    steps_first: int  # steps of the first failing example hypothesis found
    steps_shrunk: int
    seconds: float  # from the start of the exploration to the written file
    found_seconds: float  # from the start to the first failing step (before shrinking)
    steps_before: int  # steps run, all examples, up to the first failing step


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
                f"steps, found after {finding.found_seconds:.1f} s and {finding.steps_before} "
                f"steps, written after {finding.seconds:.1f} s): {first_line}"
            )
        return "\n".join(lines)


def abstract_state(snapshot: Snapshot) -> str:
    """A model state without byte counters: which ports exist, open where, throttled, poll."""
    parts = []
    for name in sorted(snapshot.ports):
        view = snapshot.ports[name]
        qemu = view.qemu
        flags = (
            "".join(_flag(v) for v in (qemu.guest_connected, qemu.host_connected, qemu.throttled))
            if qemu
            else "-"
        )
        poll = "".join(sorted(view.poll)) if view.poll is not None else "x"
        parts.append(f"{name}@{view.controller}:{view.nr}:{flags}:{poll}")
    parts.append("|".join(sorted(snapshot.controllers)))
    return ";".join(parts)


def _flag(value: MaybeBool) -> str:
    return "?" if isinstance(value, Either) else str(int(value))


@dataclass
class CoverageResult:
    percent: float | None = None  # None: coverage.py missing, or already measuring (pytest-cov)


@contextmanager
def model_coverage(exploration: Exploration) -> Iterator[CoverageResult]:
    """Branch coverage of harness/model reached by ``exploration`` run inside the block.

    Traced only while the exploration runs the model (``Exploration.measure``: each
    example's boot and each step), not during hypothesis's own work: Python 3.11's tracer
    sees every call, and tracing hypothesis too halved the steps per second.  All model code
    runs there, so the number is the same.  The model is imported before measuring starts,
    so its module-level lines (def, class) count as missed: the number is a lower bound.
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
        cov.stop()
    except Exception:  # coverage.py cannot trace here (e.g. in-process pytester): no number
        yield result
        return

    @contextmanager
    def measuring() -> Iterator[None]:
        cov.start()
        try:
            yield
        finally:
            cov.stop()

    exploration.measure = measuring
    try:
        yield result
    finally:
        exploration.measure = nullcontext
        try:
            result.percent = cov.report(file=io.StringIO())
        except coverage.CoverageException:
            result.percent = None


# ------------------------------------------------------------------ invariants (model mode)
class InvariantBroken(HarnessError, AssertionError):
    """The model broke one of its own rules (model-only exploration checks these)."""


def check_invariants(model: VirtioSerialModel, snap: Snapshot | None = None) -> None:
    """No negative counters, conservation per direction, legal connection states.

    ``snap``: the model's snapshot when the caller has it already (the runner's, after a step).
    """
    if snap is None:
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
    #: stop at the first finding (a planted mutant's hunt); else explore on until the time
    #: or example bound, skipping examples that fail like a finding already written
    stop_at_finding: bool = False
    exclude: frozenset[str] = frozenset()  # step kinds not drawn (besides NOT_DRAWN)
    #: (kind, mode) pairs not run, e.g. ("migrate", "live") on a QEMU known to corrupt the
    #: guest there (qemu_versions.QEMU_BUGS): a finding must replay, a QEMU race does not
    left_out: frozenset[tuple[str, str]] = frozenset()
    #: wraps each example (an allure step, a mutant); called with the example number
    example_context: Callable[[int], AbstractContextManager[Any]] = lambda n: nullcontext()
    #: wraps every stretch that runs the model (boot, each step): see ``model_coverage``
    measure: Callable[[], AbstractContextManager[Any]] = nullcontext
    stats: Stats = field(init=False, default_factory=Stats)
    #: kinds the real system cannot run at all (module_reload on a built-in driver), with why:
    #: found on the first try, that example is dropped and the kind is not drawn again
    not_applicable: dict[str, str] = field(init=False, default_factory=dict)
    _failing: list[Step] | None = field(init=False, default=None)
    _failure: str = field(init=False, default="")
    _signature: Signature | None = field(init=False, default=None)
    _known: list[Signature] = field(init=False, default_factory=list)  # written findings'
    _first_failing: int = field(init=False, default=0)
    _found: tuple[float, int] = field(init=False, default=(0.0, 0))  # seconds, steps run
    _start: float = field(init=False, default=0.0)
    _machine_cls: type[RuleBasedStateMachine] | None = field(init=False, default=None)

    @property
    def steps_per_rule(self) -> int:
        return MODEL_STEPS_PER_RULE if self.real_factory is None else 1

    def examples_per_run(self) -> int:
        """Examples per hypothesis run (each run costs a fixed setup; the seed moves on per
        run): few where an example boots a real guest, many where nothing waits."""
        fast = self.real_factory is None or self.options == MODEL_OPTIONS
        return MODEL_RUN_EXAMPLES if fast else REAL_RUN_EXAMPLES

    def run(self) -> Stats:
        """Explore until the time or the example budget is spent (or, with
        ``stop_at_finding``, a finding is written)."""
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
        """One hypothesis run of a few examples; False: stop exploring."""
        size = min(self.examples_per_run(), self.max_examples - self.stats.examples)
        machine_cls = self.machine_class()
        hypothesis_seed(self.seed * 100003 + chunk)(machine_cls)
        db: ExampleDatabase | None = None
        if self.database is not None:
            db = DirectoryBasedExampleDatabase(str(self.database))
        config = settings(
            max_examples=size,
            stateful_step_count=max(1, self.steps_per_example // self.steps_per_rule),
            deadline=None,
            database=db,
            phases=PHASES if chunk == 0 else PHASES[1:],  # the database replays once
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            print_blob=False,
        )
        try:
            run_state_machine_as_test(machine_cls, settings=config)
        except NotApplicable:
            raise
        except HarnessError as failure:  # a disagreement, a broken invariant, a harness error
            self._record_finding(failure)
            return not self.stop_at_finding
        except (Flaky, FlakyStrategyDefinition, Unsatisfiable) as flaky:
            if self._failing is not None:  # it failed, then did not when replayed: a race
                self._record_finding(flaky, NOT_REPLAYED)
                return not self.stop_at_finding
            if isinstance(flaky, Unsatisfiable) and self._known:
                return True  # every example failed like a written finding: draw on
            if self.time_left() > 0:
                raise
            return False  # hypothesis noticed the examples dropped after the time bound: done
        return True

    def machine_class(self) -> type[RuleBasedStateMachine]:
        """The state machine class, built once (kinds and key plans are worked out there)."""
        if self._machine_cls is None:
            self._machine_cls = build_state_machine(self)
        return self._machine_cls

    def _record_finding(self, failure: BaseException, note: str = "") -> None:
        steps = self._failing or []
        text = self._failure or failure_text(failure)
        signature = self._signature or Signature.of(failure)
        self._known.append(signature)
        if not note and steps:
            steps, text = self.shorten(steps, text, signature)
        self._failing, self._failure, self._signature = None, "", None
        text += note
        path, _ = write_finding(self.out_dir, steps, self.machine, text, self.label)
        self.stats.findings.append(
            Finding(
                path,
                text,
                self._first_failing,
                len(steps),
                time.monotonic() - self._start,
                *self._found,
            )
        )

    def shorten(
        self, steps: list[Step], failure: str, signature: Signature
    ) -> tuple[list[Step], str]:
        """Delete steps one at a time, last but one first, keeping each deletion after which
        a replay on a fresh system still fails the same way; (the steps, the failure).

        Hypothesis shrinks the 64-bit choice behind every step and gives up after five
        minutes, which on a real guest left a planted mutant at 21 steps.  Deleting whole
        steps, the model deciding each step's expect_error again, costs one replay per step."""
        deadline = time.monotonic() + SHORTEN_SECONDS
        index = len(steps) - 2
        while index >= 0 and time.monotonic() < deadline:
            replayed = self._replay(steps[:index] + steps[index + 1 :], signature)
            if replayed is not None:
                steps, failure = replayed
            index = min(index - 1, len(steps) - 2)
        return steps, failure

    def _replay(self, steps: list[Step], signature: Signature) -> tuple[list[Step], str] | None:
        """Run ``steps`` on a fresh model and system: (the steps run, the failure) when it
        fails with ``signature``, else None."""
        machine = cast(ReplayMachine, self.machine_class()())
        failed: list[tuple[list[Step], BaseException]] = []
        machine.on_failure = lambda run, failure: failed.append((list(run), failure))
        machine.replaying = True
        try:
            machine.start(0)
            for step in steps:
                machine.replay(step)
        except HarnessError:  # recorded by on_failure, or NotApplicable: no finding
            pass
        finally:
            machine.teardown()
        if failed and Signature.of(failed[-1][1]).same(signature):
            return failed[-1][0], failure_text(failed[-1][1])
        return None

    # -- called by the state machine
    def already_found(self, failure: BaseException) -> bool:
        """The failure is a finding written earlier in this exploration."""
        found = Signature.of(failure)
        return any(found.same(known) for known in self._known)

    def note_failure(self, steps: list[Step], failure: BaseException) -> None:
        """The last failing example is the minimal one: hypothesis replays it at the end."""
        if self._failing is None:
            self._first_failing = len(steps)
            self._found = (time.monotonic() - self._start, self.stats.steps)
        self._failing, self._failure = list(steps), failure_text(failure)
        self._signature = Signature.of(failure)


class ReplayMachine(Protocol):
    """What ``Exploration.shorten`` drives of an example machine, outside hypothesis."""

    on_failure: Callable[[list[Step], BaseException], None]
    replaying: bool

    def start(self, swarm: int) -> None: ...
    def replay(self, step: Step) -> None: ...
    def teardown(self) -> None: ...


def drawable_kinds(exploration: Exploration) -> tuple[str, ...]:
    """The step kinds one step may be: the registry's, ``check`` among them, in its order."""
    return tuple(k for k in STEPS if k == "check" or k not in NOT_DRAWN | exploration.exclude)


def swarm_kinds(kinds: tuple[str, ...], swarm: int) -> tuple[str, ...]:
    """The kinds one example draws from (swarm testing, as hypothesis does for rules).

    An example that never closes, or never migrates, goes deeper where it does go: each kind
    is left out with a probability drawn per example.  ``swarm`` 0 (where shrinking heads)
    leaves none out, and one kind always stays.
    """
    if swarm == 0:
        return kinds
    choices = Choices(swarm)
    left_out = choices.below(SWARM_LEFT_OUT)  # in 256ths
    kept = tuple(kind for kind in kinds if choices.below(256) >= left_out)
    return kept or (choices.pick(kinds),)


@dataclass(frozen=True)
class KindDraw:
    """How one step picks its kind among an example's kinds: a rare kind (``StepKind.rare``)
    one draw in ``RARE_ODDS``, else a common one; each group uniformly."""

    common: tuple[str, ...]
    rare: tuple[str, ...]

    @classmethod
    def of(cls, kinds: tuple[str, ...]) -> KindDraw:
        rare = tuple(k for k in kinds if STEPS[k].rare)
        return cls(tuple(k for k in kinds if k not in rare), rare)

    def pick(self, choices: Choices) -> str:
        if self.rare and (not self.common or choices.below(RARE_ODDS) == 0):
            return str(choices.pick(self.rare))
        return str(choices.pick(self.common))


def build_state_machine(exploration: Exploration) -> type[RuleBasedStateMachine]:
    """A state machine class whose one rule runs one step of any drawable kind.

    Hypothesis draws one integer per step (``STEP_CHOICE``); its ``Choices`` pick the kind
    and the arguments.  The kinds, and how each key is drawn, are worked out here once.
    """
    kinds = drawable_kinds(exploration)
    plans = {name: key_plans(STEPS[name]) for name in kinds if name != "check"}

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
            self.runner = _new_runner(exploration)
            self.kinds = KindDraw.of(kinds)
            #: where a failing step is reported (``Exploration.shorten`` listens itself)
            self.on_failure: Callable[[list[Step], BaseException], None] = exploration.note_failure
            self.replaying = False  # run by ``Exploration.shorten``, outside hypothesis

        @initialize(swarm=STEP_CHOICE)
        def boot(self, swarm: int) -> None:
            """A fresh model (and real system); ``swarm`` picks the kinds this example uses."""
            ex = self.exploration
            if ex.time_left() <= 0 and not ex.failing:
                reject()  # time is up and nothing to shrink: hypothesis drops this example
            ex.stats.examples += 1
            with ex.measure():
                self.start(swarm)

        def start(self, swarm: int) -> None:
            ex = self.exploration
            self.context = ex.example_context(ex.stats.examples)
            self.context.__enter__()
            if ex.real_factory is not None:
                self.real = ex.real_factory()
                self.runner.real = self.real
                step_hook = getattr(self.real, "step_context", None)
                if step_hook is not None:
                    self.runner.step_context = step_hook
                self.real.start(ex.machine)
            usable = tuple(k for k in kinds if k not in ex.not_applicable)
            self.kinds = KindDraw.of(swarm_kinds(usable, swarm))
            self.runner.model = build_model(ex.machine, ex.behaviour)
            self.state = abstract_state(self.runner.model.snapshot())
            ex.stats.states.add(self.state)

        def teardown(self) -> None:
            try:
                if self.real is not None:
                    self.real.stop()
            finally:
                self.context.__exit__(None, None, None)

        @rule(choice=STEP_CHOICE)
        def step(self, choice: int) -> None:
            """One step (``steps_per_rule`` in model-only mode): its kind, then its
            arguments, from the integer drawn for it."""
            choices = Choices(choice)
            with self.exploration.measure():
                for _ in range(self.exploration.steps_per_rule):
                    self._step(choices)

        def _step(self, choices: Choices) -> None:
            """Draw again (the same ``Choices`` stream goes on) while a draw runs nothing."""
            may_fail = choices.below(ERROR_ODDS) == 0
            for _ in range(DRAWS_PER_STEP):
                kind = self.kinds.pick(choices)
                if kind == "check":
                    args = self._check_args(choices)
                else:
                    args = self._step_args(choices, STEPS[kind], plans[kind])
                if args is None or self._left_out(kind, args):
                    continue
                if self.run(kind, args, may_fail):
                    return

        def _left_out(self, kind: str, args: dict[str, Any]) -> bool:
            return (kind, migration_mode(args)) in self.exploration.left_out

        def _step_args(
            self, choices: Choices, kind: StepKind, key_plans: tuple[KeyPlan, ...]
        ) -> dict[str, Any] | None:
            args = draw_args(choices, kind, self.pools, key_plans)
            if args is None:
                return None
            if kind.defaults is not None:
                args = kind.defaults(args, self.exploration.machine)
            if kind.background is not None and args.get("port") in self.blocked_ports():
                return None  # one blocked operation per port: the agent runs one per fd
            return args

        def _check_args(self, choices: Choices) -> dict[str, Any] | None:
            """poll + SIGIO history of a port with an open guest fd, as the model says."""
            snap = self.runner.predicted or self.runner.model.snapshot()
            open_ports = sorted(n for n, v in snap.ports.items() if v.poll is not None)
            if not open_ports:
                return None
            return self.check_args_for(choices.pick(open_ports))

        def check_args_for(self, port: str) -> dict[str, Any] | None:
            """The check of ``port`` the model expects now; None when its guest fd is shut."""
            snap = self.runner.predicted or self.runner.model.snapshot()
            view = snap.ports.get(port)
            if view is None or view.poll is None:
                return None
            args: dict[str, Any] = {"port": port, "poll": view.poll}
            if port in self.runner.sigio:
                args["sigio"] = tuple(_collapse(self.runner.sigio[port]))
            return args

        def run(self, kind: str, args: dict[str, Any], may_fail: bool) -> bool:
            """Run the step as a scenario would, its expect_error the model's prediction;
            False: dropped.

            Most predicted errors are dropped (drawn, so shrinking can keep one): errors are
            cheap to reach, and sequences of valid steps reach the deeper states.
            """
            index = len(self.steps) + 1
            probe = Step(index, kind, args, None, "<explore>", index, 1)

            def decide(step: Step, prediction: Prediction) -> Step | None:
                if prediction.error is not None and not may_fail:
                    return None
                self._expect_endings(prediction.completed)
                error = prediction.error
                step = replace(step, expect_error=error.text if error is not None else None)
                self._record(step)
                return step

            ex = self.exploration
            try:
                with self.runner.step_context(probe):
                    step = self.runner.run_step(probe, decide)
                if step is None:
                    return False
                if ex.invariants:
                    check_invariants(self.runner.model, self.runner.predicted)
                    ex.stats.invariant_checks += 1
            except NotApplicable as reason:
                if self.replaying:
                    raise
                if kind not in ex.not_applicable:
                    print(f"explore: {kind} is not drawn any more: {reason}", flush=True)
                ex.not_applicable[kind] = str(reason)
                reject()  # the model already ran it: this example cannot go on
            except HarnessError as failure:  # see failure_text: a harness error is one too
                if not self.replaying and ex.already_found(failure):
                    reject()  # written already: draw on for other findings
                self.on_failure(self.steps, failure)
                raise
            if isinstance(args.get("port"), str):
                self.pools.last_port = args["port"]
            provides = STEPS[kind].provides
            if provides is not None and step.expect_error is None:
                ports, controllers = provides(args)
                self.pools.ports.update(ports)
                self.pools.controllers.update(controllers)
            state = abstract_state(self.runner.predicted or self.runner.model.snapshot())
            ex.stats.states.add(state)
            ex.stats.transitions.add((self.state, kind, state))
            self.state = state
            return True

        def replay(self, step: Step) -> None:
            """Run a recorded step again, the model deciding its expect_error (a check
            compares with the model's values now; it is left out where its fd is shut)."""
            args: dict[str, Any] | None = dict(step.args)
            if step.kind == "check":
                args = self.check_args_for(str(step.args.get("port")))
            if args is not None:
                self.run(step.kind, args, may_fail=True)

        def _record(self, step: Step) -> None:
            """The step joins the example (a failure in it is the example's last step)."""
            self.steps.append(step)
            ex = self.exploration
            ex.stats.steps += 1
            ex.stats.errors_drawn += step.expect_error is not None

        def _expect_endings(self, completed: tuple[Completion, ...]) -> None:
            """A blocked step that this step ends with an error gets that expect_error."""
            endings = {c.ticket: c.error.text for c in completed if c.error is not None}
            for job in self.runner.background:
                text = endings.get(job.pending.ticket)
                if text is None:
                    continue
                job.step = replace(job.step, expect_error=text)
                self.steps[job.step.index - 1] = job.step

        def blocked_ports(self) -> set[str]:
            return {p.port for p in self.runner.model.blocked()}

    return Explore


def _collapse(masks: list[frozenset[str]]) -> Iterator[frozenset[str]]:
    last = None
    for mask in masks:
        if mask != last:
            yield mask
        last = mask


def _new_runner(exploration: Exploration) -> ScenarioRunner:
    scenario = Scenario(EXPLORE_NAME, "", (), exploration.machine, ())
    return ScenarioRunner(scenario, None, exploration.options, behaviour=exploration.behaviour)
