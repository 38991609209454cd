"""Runner logic against the model alone and against a fake real system (a second model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.scenario.runner import RunnerOptions, ScenarioFailure, run_scenario
from harness.scenario.schema import Scenario, load_scenario, parse_scenario
from harness.scenario.system import RealSystem

from .fake_system import FakeSystem, run_fake, throttle

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted(
    (ROOT / "fixtures" / "scenarios").glob("*.yaml")
)
FAST = RunnerOptions(settle_timeout=0.05, poll_interval=0.01, op_timeout=0.05)
PORT = "name: t\nmachine: {ports: [{name: p, nr: 1}]}\nsteps:\n"


def test_fake_satisfies_the_protocol():
    assert isinstance(FakeSystem(), RealSystem)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenarios_pass_on_the_model(path):
    run_scenario(load_scenario(path))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenarios_pass_against_an_agreeing_system(path):
    run_fake(load_scenario(path), FakeSystem(), FAST)


def test_a_snapshot_disagreement_fails_with_the_diff():
    scenario = parse_scenario(PORT + "  - host_open: p\n  - guest_open: p\n")
    with pytest.raises(ScenarioFailure) as info:
        run_fake(scenario, FakeSystem(tamper=throttle("p")), FAST)
    text = str(info.value)
    assert text.startswith("step 0 (boot): the real system did not settle")
    assert "qemu.throttled" in text and "False" in text and "True" in text


def test_an_unexpected_real_error_fails_the_step():
    scenario = parse_scenario(PORT + "  - host_open: p\n")
    with pytest.raises(
        ScenarioFailure,
        match=r"^step 1 \(host_open p\): the real system "
        r"failed with 'ECONNREFUSED'",
    ):
        run_fake(scenario, FakeSystem(fail={"host_open": "ECONNREFUSED"}), FAST)


def test_an_expected_error_must_happen_on_the_real_system_too():
    scenario = parse_scenario(
        PORT + "  - guest_open: p\n  - guest_open: p\n    expect_error: EBUSY\n"
    )
    with pytest.raises(ScenarioFailure, match="the real system gave success"):
        run_fake(scenario, _ForgetsOpen(), FAST)


class _ForgetsOpen(FakeSystem):
    """Lets the second open succeed: the model says EBUSY."""

    def guest_open(self, port: str, nonblocking: bool) -> None:
        if self.model.ports[port].guest.fd is None:
            super().guest_open(port, nonblocking)


def test_the_model_must_agree_with_expect_error():
    scenario = parse_scenario(PORT + "  - guest_open: p\n    expect_error: EBUSY\n")
    with pytest.raises(ScenarioFailure, match="expected error 'EBUSY', the model predicts success"):
        run_scenario(scenario)


def test_a_model_error_without_expect_error_fails():
    scenario = parse_scenario(
        PORT + "  - guest_seek: p\n    expect_error: EBADF\n  - guest_open: p\n  - guest_seek: p\n"
    )
    with pytest.raises(
        ScenarioFailure,
        match=r"^step 3 \(guest_seek p\): the model predicts "
        "this step fails with 'ESPIPE'",
    ):
        run_scenario(scenario)


def test_console_problems_fail_the_step_they_appear_in():
    scenario = parse_scenario(PORT + "  - host_open: p\n  - host_close: p\n")

    class Noisy(FakeSystem):
        def host_close(self, port: str) -> None:
            super().host_close(port)
            self.problems.append("BUG: unable to handle page fault")

    with pytest.raises(ScenarioFailure) as info:
        run_fake(scenario, Noisy(), FAST)
    assert str(info.value).startswith("step 2 (host_close p): the guest console reports")
    assert info.value.console == ["BUG: unable to handle page fault"]


def test_a_blocked_operation_must_stay_blocked():
    scenario = parse_scenario(
        PORT + "  - host_open: p\n  - guest_open: p\n"
        "  - guest_read: p\n  - check: {port: p, guest_connected: true}\n"
    )

    class Early(FakeSystem):
        def start_guest_op(self, op: str, port: str, **args: object) -> object:
            handle = super().start_guest_op(op, port, **args)
            self.early.add(handle)
            return handle

    with pytest.raises(
        ScenarioFailure,
        match=r"^step 3 \(guest_read p\): guest_read started "
        "at step 3 completed",
    ):
        run_fake(scenario, Early(), FAST)


def test_a_blocked_operation_completes_with_the_predicted_result():
    scenario = parse_scenario(
        PORT + "  - host_open: p\n  - guest_open: p\n"
        "  - guest_read: {port: p, expect: hi}\n"
        "  - host_write: {port: p, data: hi}\n"
    )
    runner = run_fake(scenario, FakeSystem(), FAST)
    assert runner.background == []


def test_expect_literal_is_checked_against_the_model():
    scenario = parse_scenario(
        PORT + "  - host_open: p\n  - guest_open: p\n"
        "  - host_write: {port: p, data: hi}\n"
        "  - guest_read: {port: p, expect: ho}\n"
    )
    with pytest.raises(ScenarioFailure, match="the model disagrees with the scenario's expect"):
        run_scenario(scenario)


def test_wrong_check_names_port_field_expected_and_actual():
    scenario = parse_scenario(PORT + "  - check: {port: p, nr: 2, guest_connected: false}\n")
    with pytest.raises(ScenarioFailure) as info:
        run_scenario(scenario)
    lines = str(info.value).splitlines()
    assert lines[0] == "step 1 (check p): the model disagrees with the scenario"
    assert lines[-1].split() == ["p", "nr", "2", "1"]


def test_real_check_disagreement_is_reported_separately():
    scenario = parse_scenario(PORT + "  - check: {port: p, throttled: false}\n")
    system = FakeSystem()
    runner_options = RunnerOptions(settle_timeout=0.05, poll_interval=0.01)
    calls = []

    def late_tamper(snap):
        calls.append(1)
        return throttle("p")(snap) if len(calls) > 2 else snap

    system.tamper = late_tamper
    with pytest.raises(ScenarioFailure, match="the real system disagrees with the scenario"):
        run_fake(scenario, system, runner_options)


def test_sizes_use_seeded_payloads_that_both_sides_agree_on():
    scenario = parse_scenario(
        PORT + "  - host_open: p\n  - guest_open: p\n"
        "  - guest_write: {port: p, size: 200000}\n"
        "  - host_read: p\n"
    )
    run_fake(scenario, FakeSystem(), FAST)


# -------------------------------------------------- blocked operations and their expectations
DISCARDED = (
    PORT + "  - host_open: p\n  - guest_open: p\n  - host_write: {port: p, data: hi}\n"
    "  - guest_close: p\n  - guest_open: p\n"
)


@pytest.mark.parametrize("real", [False, True], ids=["model", "fake"])
def test_an_expectation_still_blocked_at_the_end_fails(real):
    """The issue's case: the data was discarded by the close, so this read never completes."""
    scenario = parse_scenario(DISCARDED + '  - guest_read: {port: p, expect: "never"}\n')
    with pytest.raises(ScenarioFailure) as info:
        run_fake(scenario, FakeSystem(), FAST) if real else run_scenario(scenario)
    text = str(info.value)
    assert text.startswith("step 6 (guest_read p): still blocked when the scenario ended")
    assert "expect: 'never' was never checked" in text


@pytest.mark.parametrize(
    ("key", "words"),
    [("eof: false", "so eof: false was never"), ("expect_error: ENODEV", "so expect_error: 'E")],
)
def test_every_kind_of_expectation_counts(key, words):
    scenario = parse_scenario(DISCARDED + f"  - guest_read: {{port: p, {key}}}\n")
    with pytest.raises(ScenarioFailure, match=words):
        run_scenario(scenario)


def test_a_blocked_read_without_expectations_may_stay_blocked():
    run_scenario(parse_scenario(DISCARDED + "  - guest_read: p\n"))


UNPLUGGED = PORT + "  - host_open: p\n  - guest_open: p\n  - guest_read: p\n"


def _blocked_read(expect_error: str, then: str) -> Scenario:
    """Step 3: a guest read that blocks, expecting ``expect_error``; step 4: ``then``."""
    read = f"guest_read: p\n    expect_error: {expect_error}\n"
    return parse_scenario(UNPLUGGED.replace("guest_read: p\n", read) + f"  - {then}\n")


@pytest.mark.parametrize("real", [False, True], ids=["model", "fake"])
def test_expect_error_on_a_blocking_step_is_how_it_ends(real):
    scenario = _blocked_read("ENODEV", "unplug: p")
    runner = run_fake(scenario, FakeSystem(), FAST) if real else run_scenario(scenario)
    assert runner.background == []


def test_a_blocked_op_ending_in_an_error_needs_expect_error():
    with pytest.raises(ScenarioFailure) as info:
        run_scenario(parse_scenario(UNPLUGGED + "  - unplug: p\n"))
    assert str(info.value).startswith(
        "step 4 (unplug p): guest_read started at step 3 ends here with 'ENODEV'"
    )
    assert "add expect_error: ENODEV to step 3" in str(info.value)


@pytest.mark.parametrize(
    ("expect_error", "then", "words"),
    [
        ("EAGAIN", "unplug: p", "should end with error 'EAGAIN'"),
        ("ENODEV", "host_write: {port: p, data: hi}", "the model predicts it ends with success"),
    ],
    ids=["ends-with-another-error", "ends-with-success"],
)
def test_a_blocked_op_must_end_as_its_expect_error_says(expect_error, then, words):
    with pytest.raises(ScenarioFailure, match=words):
        run_scenario(_blocked_read(expect_error, then))


def test_the_real_end_of_a_blocked_op_must_match_too():
    scenario = _blocked_read("ENODEV", "unplug: p")

    class WrongEnd(FakeSystem):
        def guest_op_state(self, handle: object) -> tuple[bool, object, str | None]:
            done, result, error = super().guest_op_state(handle)
            return done, result, "EIO" if error else None

    with pytest.raises(ScenarioFailure, match="should fail with 'ENODEV', the real system gave"):
        run_fake(scenario, WrongEnd(), FAST)


def test_eof_of_a_blocked_read_is_its_own_steps():
    """A read blocked at step 3 that ends at EOF is judged by step 3's eof, not the later step's."""
    scenario = parse_scenario(
        PORT + "  - host_open: p\n  - guest_open: p\n  - guest_read: {port: p, eof: false}\n"
        "  - host_close: p\n"
    )
    with pytest.raises(ScenarioFailure, match="the model disagrees with the scenario's eof"):
        run_scenario(scenario)


# -------------------------------------------------- reads at EOF
AT_EOF = PORT + "  - host_open: p\n  - guest_open: p\n  - host_close: p\n"


@pytest.mark.parametrize("real", [False, True], ids=["model", "fake"])
def test_expect_empty_is_the_empty_read_at_eof(real):
    scenario = parse_scenario(AT_EOF + '  - guest_read: {port: p, expect: "", eof: true}\n')
    run_fake(scenario, FakeSystem(), FAST) if real else run_scenario(scenario)


def test_there_is_no_eof_magic_string():
    scenario = parse_scenario(AT_EOF + '  - guest_read: {port: p, expect: "<EOF>"}\n')
    with pytest.raises(ScenarioFailure) as info:
        run_scenario(scenario)
    assert 'the read is at EOF: it returns no bytes; expect: "" or eof: true' in str(info.value)


# -------------------------------------------------- collection (pytester)
def test_an_absurd_max_ports_fails_its_file_and_the_others_still_run(pytester):
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "absurd.yaml").write_text(
        "name: absurd\nmachine:\n  controllers: [{id: vser0, max_ports: -1}]\nsteps:\n  - reboot:\n"
    )
    (pytester.path / "scenarios" / "fine.yaml").write_text("name: fine\nsteps:\n  - reboot:\n")
    result = pytester.runpytest("--hil-backend=model", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*absurd.yaml:3:40: max_ports -1 is out of range*"])
    assert "IndexError" not in result.stdout.str()


def test_a_blocked_expectation_fails_the_item_through_the_plugin(pytester):
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "never.yaml").write_text(
        "name: never\n" + DISCARDED.split("\n", 1)[1] + '  - guest_read: {port: p, expect: "x"}\n'
    )
    result = pytester.runpytest("--hil-backend=model", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*step 6 (guest_read p): still blocked when the scenario ended*"])


class _SigioAtOpen(FakeSystem):
    """A guest whose agent turned O_ASYNC on while the open's host data was still filling
    buffers: one {IN,OUT} SIGIO the model does not predict (found by exploration)."""

    def guest_open(self, port: str, nonblocking: bool = False) -> None:
        self.replay("guest_open")
        self.sigio_log[port] = [frozenset({"IN", "OUT"})]


OPEN_WITH_DATA = PORT + (
    "  - host_open: p\n  - host_write: {port: p, size: 300000}\n  - guest_open: p\n"
)


def test_a_sigio_from_data_arriving_at_the_open_may_come_first():
    scenario = parse_scenario(OPEN_WITH_DATA + "  - check: {port: p, sigio: []}\n")
    run_fake(scenario, _SigioAtOpen(), FAST)  # the real list starts with it: accepted
    run_fake(scenario, FakeSystem(), FAST)  # and without it


def test_a_sigio_at_an_open_without_arriving_data_is_a_finding():
    scenario = parse_scenario(
        PORT + "  - host_open: p\n  - guest_open: p\n  - check: {port: p, sigio: []}\n"
    )
    with pytest.raises(ScenarioFailure, match="the real system disagrees"):
        run_fake(scenario, _SigioAtOpen(), FAST)
