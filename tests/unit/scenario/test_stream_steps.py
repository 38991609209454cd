"""Stream and fault steps on the model alone: what they require, and what the book records."""

from __future__ import annotations

import pytest

from harness.errors import NotApplicable
from harness.machine.errors import MachineError
from harness.model.device import G2H, H2G
from harness.model.snapshot import QemuPortView
from harness.scenario.runner import ScenarioFailure, ScenarioRunner, run_scenario
from harness.scenario.schema import ScenarioError, parse_scenario
from tests.unit.scenario.fake_system import FakeSystem, run_fake

HEAD = """
name: streams
machine:
  ports:
    - {name: p, nr: 1}
    - {name: q, nr: 2}
steps:
"""


def run(steps: str) -> ScenarioRunner:
    return run_scenario(parse_scenario(HEAD + steps))


def test_a_stream_needs_both_ends_open() -> None:
    with pytest.raises(ScenarioFailure, match="ENOTCONN"):
        run("  - guest_open: p\n  - host_stream: p\n")
    with pytest.raises(ScenarioFailure, match="EBADF"):
        run("  - host_open: p\n  - guest_stream: p\n")


def test_one_stream_per_port_and_stream_end_needs_one() -> None:
    opened = "  - host_open: p\n  - guest_open: p\n"
    with pytest.raises(ScenarioFailure, match="EBUSY"):
        run(opened + "  - host_stream: p\n  - guest_stream: p\n")
    with pytest.raises(ScenarioFailure, match=r"stream_end p.*ENOENT"):
        run(opened + "  - stream_end: p\n")
    with pytest.raises(ScenarioFailure, match="ENODEV"):
        run(opened + "  - unplug: p\n  - host_stream: p\n")


def test_size_and_until_exclude_each_other() -> None:
    with pytest.raises(ScenarioError, match="size: or until:, not both"):
        parse_scenario(HEAD + "  - host_stream: {port: p, size: 10, until: 4}\n")


def test_the_book_records_faults_cuts_and_pauses() -> None:
    runner = run(
        "  - host_open: p\n  - guest_open: p\n  - host_open: q\n  - guest_open: q\n"
        "  - host_stream: {port: p, until: 8}\n  - guest_stream: q\n"
        "  - vm_stop:\n  - vm_cont:\n  - host_close: p\n  - stream_end: p\n  - stream_end: q\n"
    )
    book = runner.streams
    assert book.active == {} and not book.paused and book.streamed == {"p", "q"}
    p, q = book.ended["p"], book.ended["q"]
    assert p.direction == H2G and q.direction == G2H and p.until == 8
    assert p.cut is not None and p.cut.fault == "host_close" and q.cut is None
    assert q.faults == ["vm_stop (step 7)", "vm_cont (step 8)", "host_close (step 9)"][:2]


def test_module_reload_is_refused_while_a_port_is_open() -> None:
    with pytest.raises(ScenarioFailure, match=r"module_reload.*EAGAIN"):
        run("  - guest_open: p\n  - module_reload:\n")
    runner = run("  - guest_open: p\n  - guest_close: p\n  - module_reload:\n")
    assert runner.model.ports["p"].guest is not None


def test_blind_takes_stream_dependent_fields_from_the_prediction() -> None:
    runner = run("  - host_open: p\n  - guest_open: p\n  - host_stream: p\n")
    predicted = runner.model.snapshot()
    port = predicted.ports["p"]
    busy = port.__class__(
        port.controller,
        port.nr,
        port.is_console,
        QemuPortView(True, True, True),
        port.guest.__class__(**{**port.guest.__dict__, "bytes_received": 999}),
        frozenset({"IN"}),
    )
    actual = predicted.__class__(predicted.controllers, {**predicted.ports, "p": busy})
    assert runner.streams.blind(predicted, actual) == predicted


class _DyingSystem(FakeSystem):
    """QEMU dies under the harness at vm_stop (a machine-level error, not a device error)."""

    def vm_stop(self) -> None:
        raise MachineError("QMP connection closed")


def test_a_machine_error_fails_the_step_with_the_machine_state_and_console_tail() -> None:
    scenario = parse_scenario(HEAD + "  - host_open: p\n  - vm_stop:\n  - host_close: p\n")
    with pytest.raises(ScenarioFailure) as failure:
        run_fake(scenario, _DyingSystem())
    assert failure.value.step.index == 2
    assert str(failure.value).startswith(
        "step 2 (vm_stop): the fake machine is gone: QMP connection closed\nconsole tail:"
    )


def test_not_applicable_passes_through_for_the_plugin_to_skip() -> None:
    class BuiltIn(FakeSystem):
        def module_reload(self) -> None:
            raise NotApplicable("virtio_console is built into this kernel")

    with pytest.raises(NotApplicable):
        run_fake(parse_scenario(HEAD + "  - module_reload:\n"), BuiltIn())


def test_data_steps_on_a_streamed_port_are_refused() -> None:
    steps = "  - host_open: p\n  - guest_open: p\n  - host_stream: p\n"
    with pytest.raises(ScenarioFailure, match=r"step 4 .*add a stream_end before it"):
        run(steps + "  - host_write: {port: p, data: x}\n")
