"""The step registry: one definition per step kind, and everything else derived from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.model import (
    DEFAULT_CONTROLLER,
    DEFAULT_MAX_PORTS,
    DEFAULT_MEMORY,
    MachineDecl,
    Outcome,
    VirtioSerialModel,
)
from harness.scenario.runner import ScenarioFailure, run_scenario
from harness.scenario.schema import ScenarioError, parse_scenario
from harness.scenario.steps import STEPS, StepCall, StepKind, port_kind, register, steps_table
from harness.scenario.system import RealSystem

ROOT = Path(__file__).resolve().parents[3]


def _reopen_model(call: StepCall) -> Outcome:
    call.model.guest_close(call.port)
    return call.model.guest_open(call.port)


def _reopen_real(system: RealSystem, call: StepCall) -> None:
    system.guest_close(call.port)
    system.guest_open(call.port, False)


@pytest.fixture
def guest_reopen() -> Iterator[StepKind]:
    """A toy step kind defined here and nowhere else: close and open the guest fd again."""
    kind = register(
        port_kind("guest_reopen", _reopen_model, _reopen_real, "close and open the guest fd")
    )
    yield kind
    del STEPS[kind.name]


TOY = "name: toy\nmachine: {ports: [{name: p, nr: 1}]}\nsteps:\n  - guest_open: p\n"


def test_a_step_kind_registered_in_a_test_validates_and_runs(guest_reopen):
    scenario = parse_scenario(
        TOY + "  - guest_reopen: p\n  - check: {port: p, guest_connected: true}\n"
    )
    assert [s.kind for s in scenario.steps] == ["guest_open", "guest_reopen", "check"]
    run_scenario(scenario)
    with pytest.raises(ScenarioError, match="names port 'q'"):
        parse_scenario(TOY + "  - guest_reopen: {port: q}\n")
    with pytest.raises(ScenarioError, match="did you mean 'port'"):
        parse_scenario(TOY + "  - guest_reopen: {prot: p}\n")
    assert "| `guest_reopen` | port | close and open the guest fd |" in steps_table()


def test_the_toy_kind_fails_like_any_other(guest_reopen):
    """The model's errors reach the scenario through the registered operation."""
    scenario = parse_scenario(
        "name: toy\nmachine: {ports: [{name: p, nr: 1}]}\nsteps:\n  - guest_reopen: p\n"
    )
    with pytest.raises(ScenarioFailure, match=r"^step 1 \(guest_reopen p\): .*EBADF"):
        run_scenario(scenario)


def test_a_kind_is_registered_once(guest_reopen):
    with pytest.raises(ValueError, match="already registered"):
        register(guest_reopen)


def test_readme_step_table_is_the_registry():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert steps_table() in readme, "README's step table drifted: paste steps_table() output"


def test_declaration_defaults_are_defined_once():
    machine = MachineDecl()
    assert machine.memory == DEFAULT_MEMORY
    assert [(c.id, c.max_ports) for c in machine.controllers] == [
        (DEFAULT_CONTROLLER, DEFAULT_MAX_PORTS)
    ]
    assert machine.ports == ()


#: Step kinds whose operation is named differently on purpose: a check and a migration are
#: the runner's, and a stalled host is a model switch (set_host_backpressure) but a real action.
NOT_AN_OPERATION = {"check", "migrate", "host_stall", "host_resume"}
#: Streams are the runner's StreamBook's (harness.scenario.streams); these faults change
#: nothing in the device model (module_reload is the model's guest_reset once allowed).
NOT_AN_OPERATION |= {"host_stream", "guest_stream", "stream_end", "module_reload"}
NOT_AN_OPERATION |= {"vm_stop", "vm_cont", "ssh_drop", "qemu_kill", "guest_panic"}


@pytest.mark.parametrize("kind", sorted(set(STEPS) - NOT_AN_OPERATION))
def test_same_operation_same_name_in_model_real_system_and_step(kind):
    assert callable(getattr(VirtioSerialModel, kind, None)), f"model has no {kind}()"
    assert callable(getattr(RealSystem, kind, None)), f"RealSystem has no {kind}()"
