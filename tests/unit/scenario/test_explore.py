"""Exploration in model mode: findings are written, valid, rerunnable; planted rules are found."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from harness.errors import NotApplicable
from harness.machine.errors import MachineError
from harness.model import Difference, ModelError, Outcome, build_model
from harness.model.device import G2H
from harness.scenario.explore import (
    ERROR_ODDS,
    EXPLORE_MACHINE,
    EXPLORE_NAME,
    MODEL_OPTIONS,
    NOT_REPLAYED,
    RARE_ODDS,
    Choices,
    Exploration,
    InvariantBroken,
    KindDraw,
    Signature,
    check_invariants,
    drawable_kinds,
    scenario_yaml,
)
from harness.scenario.model_system import (
    CANNOT_PLAY,
    ModelSystem,
    model_system_factory,
    mutant_explains,
)
from harness.scenario.mutants import MUTANTS, planted
from harness.scenario.runner import ScenarioFailure, ScenarioRunner, run_scenario
from harness.scenario.schema import Scenario, load_scenario, parse_scenario
from harness.scenario.steps import STEPS, ModelOp, Step, StepCall
from harness.scenario.system import RealSystem, StepFailure

#: A ceiling only: the seeded hunt stops at its finding, which does not depend on the time
#: (138 s for the deepest mutant on a loaded 2-core machine, seconds for the others).
HUNT_SECONDS = 1800.0


def hunt(
    mutant: str, out: Path, seconds: float = HUNT_SECONDS, stop_at_finding: bool = True
) -> Exploration:
    exploration = Exploration(
        real_factory=model_system_factory(EXPLORE_NAME),
        label=f"mutant-{mutant}",
        seed=1,
        seconds=seconds,
        out_dir=out,
        options=MODEL_OPTIONS,
        exclude=CANNOT_PLAY,
        stop_at_finding=stop_at_finding,
    )
    with planted(mutant):
        exploration.run()
    return exploration


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_planted_rule_is_found_and_shrunk(mutant: str, tmp_path: Path) -> None:
    stats = hunt(mutant, tmp_path).stats
    assert len(stats.findings) == 1, stats.summary()
    finding = stats.findings[0]
    assert 1 <= finding.steps_shrunk <= 8, stats.summary()
    assert finding.steps_shrunk <= finding.steps_first
    assert finding.path.parent == tmp_path
    assert mutant_explains(finding.path, mutant)  # the finding is the planted rule's


def test_exploration_goes_on_after_a_finding_and_writes_it_once(tmp_path: Path) -> None:
    """Without stop_at_finding the time bound ends the run; examples that fail like a
    written finding are dropped, so no two findings are the same."""
    stats = hunt("host_close_poll", tmp_path, seconds=5, stop_at_finding=False).stats
    assert stats.findings, stats.summary()
    assert stats.steps > stats.findings[-1].steps_before, stats.summary()  # explored on
    signatures = [Signature.of(ScenarioFailure(_step(1), f.failure)) for f in stats.findings]
    assert len(stats.findings) == len(set(f.path for f in stats.findings))
    assert len(signatures) == len(stats.findings)


def test_signature_tells_findings_apart() -> None:
    step, other = _step(3, "host_close"), _step(5, "host_close")
    diff = [Difference("ex1", "guest.host_connected", True, False)]
    more = [*diff, Difference("ex1", "poll", "{OUT}", "{HUP,IN}")]
    first = Signature.of(ScenarioFailure(step, "did not settle within 10 s", diff))
    assert first.same(Signature.of(ScenarioFailure(other, "did not settle within 0 s", more)))
    poll_only = [Difference("ex2", "poll", "{OUT}", "{IN}")]
    assert not first.same(Signature.of(ScenarioFailure(other, "did not settle", poll_only)))
    assert not first.same(Signature.of(ScenarioFailure(_step(3, "guest_close"), "x", diff)))


def test_shorten_deletes_the_steps_a_finding_does_not_need(tmp_path: Path) -> None:
    """The step-deletion pass after hypothesis: padding around a planted rule's finding goes,
    and the result still fails the same way when run as a scenario."""
    exploration = hunt("host_close_poll", tmp_path)
    finding = load_scenario(exploration.stats.findings[0].path)
    padding = [
        Step(0, "host_open", {"port": "ex2"}, None, "<test>", 0, 1),
        Step(0, "guest_open", {"port": "ex2"}, None, "<test>", 0, 1),
        Step(0, "host_write", {"port": "ex2", "data": "abc"}, None, "<test>", 0, 1),
    ]
    padded = padding[:2] + list(finding.steps[:-1]) + padding[2:] + [finding.steps[-1]]
    failure = exploration.stats.findings[0].failure
    with planted("host_close_poll"):
        signature = Signature.of(_failure_of(finding))
        steps, text = exploration.shorten(padded, failure, signature)
    assert [(s.kind, s.args) for s in steps] == [(s.kind, s.args) for s in finding.steps]
    assert text.splitlines()[0] == failure.splitlines()[0]


def _failure_of(scenario: Scenario) -> ScenarioFailure:
    system = ModelSystem(scenario.name)
    with pytest.raises(ScenarioFailure) as failure:
        run_scenario(scenario, cast(RealSystem, system), MODEL_OPTIONS, system.step_context)
    return failure.value


def _step(index: int, kind: str = "host_close") -> Step:
    return Step(index, kind, {"port": "ex1"}, None, "<test>", index, 1)


def test_finding_validates_round_trips_and_reproduces(tmp_path: Path) -> None:
    finding = hunt("wrong_error_text", tmp_path).stats.findings[0]
    scenario = load_scenario(finding.path)
    assert scenario.machine == EXPLORE_MACHINE
    again = parse_scenario(scenario_yaml(list(scenario.steps), scenario.machine, "again"))
    assert [(s.kind, s.args, s.expect_error) for s in again.steps] == [
        (s.kind, s.args, s.expect_error) for s in scenario.steps
    ]
    # With the wrong rule planted the file disagrees, as it did while exploring ...
    system = ModelSystem(scenario.name)
    with planted("wrong_error_text"), pytest.raises(ScenarioFailure) as failure:
        run_scenario(scenario, cast(RealSystem, system), MODEL_OPTIONS, system.step_context)
    assert "EBUSY" in str(failure.value)
    # ... and the correct model rejects the file's expectation: it is the planted rule's text.
    with pytest.raises(ScenarioFailure, match="the model predicts 'EBUSY'"):
        run_scenario(scenario)


def test_model_only_exploration_is_seeded_and_keeps_invariants(tmp_path: Path) -> None:
    runs = [
        Exploration(seed=7, seconds=600, max_examples=30, out_dir=tmp_path).run() for _ in range(2)
    ]
    assert not runs[0].findings, runs[0].summary()
    assert runs[0].examples >= 30  # hypothesis may run a few more than max_examples
    assert runs[0].invariant_checks == runs[0].steps > 0
    assert (runs[0].steps, runs[0].states, runs[0].transitions) == (
        runs[1].steps,
        runs[1].states,
        runs[1].transitions,
    )


def test_rare_kinds_come_one_draw_in_rare_odds() -> None:
    """Reboots and migrations (seconds each on a real guest) and controller unplugs (which
    leave nothing for port steps) drawn as often as the rest took most of a real run."""
    draw = KindDraw.of(drawable_kinds(Exploration()))
    assert {"reboot", "migrate", "unplug_controller"} <= set(draw.rare)
    assert {"guest_open", "host_write", "guest_close", "check"} <= set(draw.common)
    picks = [draw.pick(Choices(seed)) for seed in range(20000)]
    share = sum(kind in draw.rare for kind in picks) / len(picks)
    assert 0.7 / RARE_ODDS < share < 1.3 / RARE_ODDS
    assert set(picks) == set(draw.common) | set(draw.rare)  # every kind still comes
    assert KindDraw.of(("reboot",)).pick(Choices(1)) == "reboot"  # an example of rare only


def test_most_steps_run_what_the_model_says_succeeds(tmp_path: Path) -> None:
    """One step in ERROR_ODDS may run a predicted error; the others draw again.  With the
    odds applied per draw, a run where most steps fail (every port unplugged) ran errors in
    727 of 1013 steps.  (Steps that drew nothing runnable are not counted, hence above
    1/ERROR_ODDS.)"""
    stats = Exploration(seed=5, seconds=600, max_examples=60, out_dir=tmp_path).run()
    assert not stats.findings, stats.summary()
    assert stats.errors_drawn > 0
    assert stats.errors_drawn < 1.6 * stats.steps / ERROR_ODDS, stats.summary()


def test_invariants_catch_a_broken_counter() -> None:
    model = build_model(EXPLORE_MACHINE)
    check_invariants(model)
    model.written[G2H] += 5
    with pytest.raises(InvariantBroken, match="written"):
        check_invariants(model)


def test_scenario_yaml_writes_errors_and_empty_steps() -> None:
    steps = [
        Step(1, "guest_open", {"port": "ex1"}, None, "", 1, 1),
        Step(2, "guest_open", {"port": "ex1"}, "EBUSY", "", 2, 1),
        Step(3, "reboot", {}, None, "", 3, 1),
        Step(4, "check", {"port": "ex1", "poll": frozenset({"OUT"})}, None, "", 4, 1),
    ]
    parsed = parse_scenario(scenario_yaml(steps, EXPLORE_MACHINE, "line one\nline two"))
    assert [(s.kind, s.args, s.expect_error) for s in parsed.steps] == [
        (s.kind, s.args, s.expect_error) for s in steps
    ]
    assert parsed.description == "line one\nline two"


def test_example_database_replays_a_finding_first(tmp_path: Path) -> None:
    """Tomorrow's run (another seed) starts with today's finding from the database."""
    paths = []
    for seed in (1, 2):
        exploration = Exploration(
            real_factory=model_system_factory(EXPLORE_NAME),
            seed=seed,
            seconds=HUNT_SECONDS,
            out_dir=tmp_path / "found",
            database=tmp_path / "db",
            options=MODEL_OPTIONS,
            exclude=CANNOT_PLAY,
            stop_at_finding=True,
        )
        with planted("host_close_poll"):
            stats = exploration.run()
        paths.append(stats.findings[0].path)
    assert stats.examples <= 2  # the stored example, and its replay after shrinking
    assert paths[0] == paths[1]


def test_replug_discards_the_old_host_socket_data_once() -> None:
    """Found by model-only exploration: the conservation invariant counted the old port's
    unread host-socket bytes as in flight and as discarded after a re-plug of its name."""
    model = build_model(EXPLORE_MACHINE)
    model.host_open("ex1")
    model.guest_open("ex1")
    model.guest_write("ex1", b"x")
    model.unplug("ex1")
    model.hotplug("ex1", controller="vser0")
    check_invariants(model)
    assert model.discarded(G2H) == 1


def test_a_step_the_model_refuses_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The explorer drops most predicted errors after predicting them on the live model
    (``ScenarioRunner.run_step``'s ``decide``), which is only sound if a failing model
    operation leaves the model exactly as it was: check that for every error explored."""
    refused: list[str] = []

    def atomic(op: ModelOp) -> ModelOp:
        def checked(call: StepCall) -> Outcome:
            before = pickle.dumps((call.model, call.streams))
            try:
                return op(call)
            except ModelError:
                assert pickle.dumps((call.model, call.streams)) == before, call.step.label
                refused.append(call.step.kind)
                raise

        return checked

    for name, kind in list(STEPS.items()):
        monkeypatch.setitem(STEPS, name, replace(kind, model=atomic(kind.model)))
    stats = Exploration(seed=3, seconds=600, max_examples=100, out_dir=tmp_path).run()
    assert not stats.findings, stats.summary()
    assert len(set(refused)) >= 10  # most kinds were refused at least once


def test_runner_drops_only_a_step_the_model_refuses() -> None:
    runner = ScenarioRunner(Scenario("drop", "", (), EXPLORE_MACHINE, ()))
    runner.prepare()
    close = Step(1, "guest_close", {"port": "ex1"}, None, "", 1, 1)  # not open: EBADF
    assert runner.run_step(close, lambda step, prediction: None) is None
    assert runner.predicted is None  # nothing ran
    open_ = Step(1, "guest_open", {"port": "ex1"}, None, "", 1, 1)
    with pytest.raises(AssertionError, match="only a failing step can be dropped"):
        runner.run_step(open_, lambda step, prediction: None)
    open_other = replace(open_, args={"port": "ex2"})
    assert runner.run_step(open_other, lambda step, prediction: step) == open_other
    assert runner.predicted is not None and runner.predicted.ports["ex2"].poll is not None


def explore_against(system: type[ModelSystem], out: Path, **settings: Any) -> Exploration:
    """A seeded model-mode exploration whose "real" side is ``system`` (a ModelSystem)."""
    return Exploration(
        real_factory=lambda: cast(RealSystem, system(EXPLORE_NAME)),
        seed=1,
        seconds=600,
        out_dir=out,
        options=MODEL_OPTIONS,
        exclude=CANNOT_PLAY,
        **settings,
    )


class BuiltInDriver(ModelSystem):
    """A real system whose kernel has virtio_console built in (Debian 13's cloud kernel)."""

    def module_reload(self) -> None:
        raise NotApplicable("virtio_console is built into this kernel")


def test_a_kind_the_real_system_cannot_run_is_dropped_not_a_crash(tmp_path: Path) -> None:
    """Found by the 20-minute run on Debian 13: module_reload's NotApplicable ended the whole
    exploration; now that example is dropped and the kind is not drawn again."""
    exploration = explore_against(BuiltInDriver, tmp_path, max_examples=60)
    stats = exploration.run()
    assert not stats.findings, stats.summary()
    assert "built into" in exploration.not_applicable["module_reload"]
    assert stats.examples >= 60


class CountsMigrations(ModelSystem):
    """The model as the real system, counting the migrations it is asked for by mode."""

    modes: ClassVar[list[str]] = []

    def migrate(self, destination: object, mode: str = "live", qemu: str | None = None) -> object:
        CountsMigrations.modes.append(mode)
        return self.replay("migrate").value


def test_steps_left_out_for_a_known_qemu_bug_are_never_run(tmp_path: Path) -> None:
    """QEMU 7.2 under TCG corrupts guest RAM in live migrations (qemu_versions.QEMU_BUGS):
    a finding there would not replay, so the explorer runs the other modes only."""
    CountsMigrations.modes = []
    exploration = explore_against(
        CountsMigrations, tmp_path, max_examples=80, left_out=frozenset({("migrate", "live")})
    )
    stats = exploration.run()
    assert not stats.findings, stats.summary()
    assert CountsMigrations.modes and "live" not in CountsMigrations.modes


class RacesOnce(ModelSystem):
    """A real system whose third host_open of the run fails, and no other: a race."""

    opens: ClassVar[int] = 0

    def host_open(self, port: str) -> object:
        RacesOnce.opens += 1
        if RacesOnce.opens == 3:
            raise StepFailure("EIO")
        return self.replay("host_open").value


def test_a_failure_that_does_not_replay_is_written_as_it_failed(tmp_path: Path) -> None:
    """Found by the 20-minute exploration on Debian 12 (a console vtermno race at reboot):
    hypothesis's replay passed, it raised Flaky, and the run ended with no file at all."""
    RacesOnce.opens = 0
    stats = explore_against(RacesOnce, tmp_path, max_examples=100).run()
    (finding,) = stats.findings
    assert finding.failure.endswith(NOT_REPLAYED) and "EIO" in finding.failure
    steps = load_scenario(finding.path).steps
    assert steps[-1].kind == "host_open"


class AgentDiesOnClose(ModelSystem):
    """A real system where every guest_close fails inside the harness (not as an errno)."""

    def guest_close(self, port: str) -> object:
        raise MachineError(f"the guest agent went away while closing {port}")


def test_a_harness_error_in_a_step_is_a_finding(tmp_path: Path) -> None:
    """Found by the second exploration on 6.1: an ObservationError in a settle ended the run
    with hypothesis's FlakyFailure and no file; an error the harness raises in a step is
    written as a finding, shrunk, with its type in the text."""
    stats = explore_against(AgentDiesOnClose, tmp_path, max_examples=100).run()
    assert stats.findings, stats.summary()
    for finding in stats.findings:  # one per port name: the texts differ
        assert finding.failure.startswith("MachineError: the guest agent went away")
        steps = load_scenario(finding.path).steps
        assert steps[-1].kind == "guest_close" and len(steps) <= 2
