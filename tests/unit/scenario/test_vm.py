"""The public Python API on the model alone and on the fake real system: same oracle as YAML."""

from __future__ import annotations

import pytest

from harness import VM, ControllerDecl, MachineDecl, OperationBlocks, OperationError, PortDecl
from harness.scenario.runner import RunnerOptions, ScenarioFailure
from tests.unit.scenario.fake_system import FakeSystem, throttle

FAST = RunnerOptions(settle_timeout=0.2, poll_interval=0.01, op_timeout=0.5, quiet_timeout=0.1)


def model_vm(machine: MachineDecl | None = None) -> VM:
    return VM(machine or MachineDecl(), None, name="unit").start()


def fake_vm(fake: FakeSystem, machine: MachineDecl | None = None) -> VM:
    fake.scenario = "unit"
    vm = VM(machine or MachineDecl(), fake, "unit", FAST, step_context=fake.step_context)
    return vm.start()


def test_data_both_ways_and_checks_on_the_model() -> None:
    vm = model_vm()
    port = vm.controller("vser0").add_port("org.t.p", nr=3)
    with port.host.connect() as host, port.guest.open() as guest:
        host.write(b"ping")
        assert guest.read() == b"ping"
        vm.check(port, nr=3, bytes_received=4, poll={"OUT"}, host_connected=True)
        assert guest.write("pong") == 4
        assert host.read() == b"pong"
    vm.check(port, guest_connected=False, host_connected=False, poll=None)
    assert port.nr == 3 and port.controller_id == "vser0"


def test_a_wrong_expectation_fails_with_the_diff_table() -> None:
    vm = model_vm()
    port = vm.hotplug("org.t.p")
    with pytest.raises(ScenarioFailure) as failure:
        vm.check(port, host_connected=True)
    text = str(failure.value)
    assert text.startswith("step 2 (check org.t.p): the model disagrees with the scenario")
    assert "host_connected" in text and "True" in text and "False" in text


def test_predicted_errors_raise_operation_error_or_match_expect_error() -> None:
    vm = model_vm()
    port = vm.hotplug("org.t.p")
    port.guest.open()
    with pytest.raises(OperationError, match="EBUSY") as error:
        port.guest.open()
    assert error.value.text == "EBUSY" and error.value.step.kind == "guest_open"
    port.guest.open(expect_error="EBUSY")  # the YAML form: returns normally
    with pytest.raises(ScenarioFailure, match="expected error 'ENXIO'"):
        port.guest.seek(expect_error="ENXIO")  # the model says ESPIPE
    with pytest.raises(ValueError, match="non-empty"):
        port.guest.seek(expect_error="")


def test_a_predicted_block_runs_nothing_unless_started_in_the_background() -> None:
    vm = model_vm()
    port = vm.hotplug("org.t.p")
    port.host.open()
    port.guest.open()
    before, steps = vm.snapshot(), vm.steps_run
    with pytest.raises(OperationBlocks, match="start_read"):
        port.guest.read()
    assert (vm.snapshot(), vm.steps_run) == (before, steps)
    reading = port.guest.start_read()
    assert not reading.done
    with pytest.raises(AssertionError, match="still blocked"):
        _ = reading.result
    port.host.write(b"late")
    assert reading.done and reading.result == b"late"


def test_a_blocked_op_can_end_in_an_error() -> None:
    vm = model_vm()
    port = vm.hotplug("org.t.p")
    port.guest.open()
    writing = port.guest.start_write(b"x", expect_error="ENODEV")  # no host: blocks
    port.unplug()  # ends it: the runner judges expect_error here
    assert writing.done and writing.error == "ENODEV"


def test_a_blocked_op_ending_in_an_unexpected_error_fails() -> None:
    vm = model_vm()
    port = vm.hotplug("org.t.p")
    port.guest.open()
    port.guest.start_write(b"x")
    with pytest.raises(ScenarioFailure, match="add expect_error: ENODEV to step 3"):
        port.unplug()


def test_an_expectation_never_judged_fails_at_the_end() -> None:
    vm = model_vm()
    port = vm.hotplug("org.t.p")
    port.host.open()
    port.guest.open()
    port.guest.start_read(expect="never")
    with pytest.raises(ScenarioFailure, match="still blocked when the scenario ended"):
        vm.finish()


def test_handles_survive_migration_and_reboot() -> None:
    machine = MachineDecl(
        controllers=(ControllerDecl("a", 4), ControllerDecl("b", 2)),
        ports=(PortDecl("org.t.boot", controller="b", nr=1),),
    )
    vm = model_vm(machine)
    port = vm.port("org.t.boot")
    port.host.open()
    vm.migrate(mode="paused")
    vm.reboot()
    vm.check(port, host_connected=True, controller="b")
    vm.check(vm.controller("b"), max_ports=2, multiport=True)
    assert [c.id for c in vm.controllers] == ["a", "b"]
    assert [p.name for p in vm.controller("b").ports] == ["org.t.boot"]


def test_unknown_names_and_fields_get_a_did_you_mean() -> None:
    vm = model_vm(MachineDecl(ports=(PortDecl("org.t.boot"),)))
    with pytest.raises(KeyError, match=r"did you mean 'org\.t\.boot'"):
        vm.port("org.t.bot")
    with pytest.raises(KeyError, match="no controller 'vser9'"):
        vm.controller("vser9")
    with pytest.raises(TypeError, match="did you mean 'throttled'"):
        vm.check(vm.port("org.t.boot"), throttle=True)
    with pytest.raises(TypeError, match="set of poll bits"):
        vm.check(vm.port("org.t.boot"), poll="IN")  # a string would be a set of letters
    with pytest.raises(TypeError, match="exactly one of data"):
        vm.port("org.t.boot").host.write(b"x", size=3)
    with pytest.raises(ValueError, match="UTF-8"):
        vm.port("org.t.boot").host.write(b"\xff")


def test_a_real_disagreement_fails_and_skips_cleanup_steps() -> None:
    fake = FakeSystem()
    vm = fake_vm(fake)
    port = vm.hotplug("org.t.p")
    with pytest.raises(ScenarioFailure) as failure, port.host.connect():
        fake.tamper = throttle("org.t.p")  # QEMU shows what the model does not predict
        vm.check()
    assert str(failure.value).startswith("step 3 (check): the real system did not settle")
    assert "qemu.throttled" in str(failure.value)
    assert vm.failed_at is not None and vm.failed_at.kind == "check"
    assert vm.steps_run == 3  # hotplug, host_open, check: no host_close after the failure


def test_an_error_only_the_model_predicts_fails_the_step() -> None:
    fake = FakeSystem()
    vm = fake_vm(fake)
    port = vm.hotplug("org.t.p")
    port.guest.open()
    fake.fail["guest_seek"] = "EINVAL"
    with pytest.raises(ScenarioFailure, match="expected error 'ESPIPE', the real system gave"):
        port.guest.seek()
    fake.fail.clear()
    fake.fail["host_open"] = "ECONNREFUSED"
    vm.failed_at = None
    with pytest.raises(ScenarioFailure, match="the real system failed with 'ECONNREFUSED'"):
        port.host.open()


USER_TEST = """
import pytest
from harness import VM, MachineDecl, PortDecl, OperationError

def test_ok(hil_vm: VM) -> None:
    port = hil_vm.hotplug("org.u.p")
    with port.host.connect() as host, port.guest.open() as guest:
        host.write(b"hi")
        assert guest.read() == b"hi"

def test_factory(hil_vm_factory) -> None:
    vm = hil_vm_factory(MachineDecl(ports=(PortDecl("org.u.boot", nr=2),)))
    vm.check(vm.port("org.u.boot"), nr=2)

def test_wrong(hil_vm: VM) -> None:
    hil_vm.check(hil_vm.hotplug("org.u.q"), host_connected=True)
"""


def test_the_fixtures_run_a_user_test_file_in_model_mode(pytester: pytest.Pytester) -> None:
    """What a user project gets from the installed plugin: no conftest, no QEMU."""
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest("--hil-backend=model", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*step 2 (check org.u.q): the model disagrees with the scenario*",
            "*org.u.q*host_connected*True*False*",
        ]
    )
