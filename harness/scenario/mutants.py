"""TEST-ONLY: plant a wrong rule in the model, to show that exploration finds and shrinks it.

Each mutant wraps one step kind's model operation in ``STEPS`` (the model package itself is
untouched, so its coverage and its callers stay honest).  ``pristine(kind)`` is always the
correct operation: ``ModelSystem`` replays it, so in model mode a correct model plays the
real system against the mutated one.  Never used outside tests and ``--hil-explore-mutant``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from harness.model import ModelError, Outcome
from harness.scenario.steps import STEPS, ModelOp, StepCall

Wrapper = Callable[[ModelOp], ModelOp]
_SAVED: dict[str, ModelOp] = {}


def pristine(kind: str) -> ModelOp:
    """The correct model operation of ``kind`` (the registered one, even while mutated)."""
    return _SAVED.get(kind, STEPS[kind].model)


def _host_close_poll(op: ModelOp) -> ModelOp:
    """The guest is never told that the host closed: poll keeps OUT, lacks HUP."""

    def mutated(call: StepCall) -> Outcome:
        outcome = op(call)
        port = call.model.ports.get(call.port)
        if port is not None and port.guest is not None and not port.console:
            port.guest.host_connected = True
        return outcome

    return mutated


def _id_allocation(op: ModelOp) -> ModelOp:
    """hotplug without nr takes the highest free id instead of QEMU's lowest."""

    def mutated(call: StepCall) -> Outcome:
        ctrl = call.model.controllers.get(str(call.args.get("controller")))
        if call.args.get("nr") is not None or call.args.get("console") or ctrl is None:
            return op(call)
        used = {call.model.ports[name].nr for name in ctrl.ports}
        free = [nr for nr in range(1, ctrl.max_ports) if nr not in used]
        if not free:
            return op(call)
        step = replace(call.step, args={**call.args, "nr": free[-1]})
        moved = replace(call, step=step)
        outcome = op(moved)
        call.model = moved.model
        return outcome

    return mutated


def _no_discard_on_close(op: ModelOp) -> ModelOp:
    """guest_close drops unread input without counting it in bytes_discarded."""

    def mutated(call: StepCall) -> Outcome:
        port = call.model.ports.get(call.port)
        guest = port.guest if port is not None else None
        before = guest.bytes_discarded if guest is not None else 0
        outcome = op(call)
        if guest is not None:
            guest.bytes_discarded = before
        return outcome

    return mutated


def _wrong_error_text(op: ModelOp) -> ModelOp:
    """A second open of an open port predicts EAGAIN instead of EBUSY."""

    def mutated(call: StepCall) -> Outcome:
        try:
            return op(call)
        except ModelError as error:
            if error.text == "EBUSY":
                raise ModelError("EAGAIN") from None
            raise

    return mutated


def _write_count(op: ModelOp) -> ModelOp:
    """A completed guest write reports one byte fewer than it wrote."""

    def mutated(call: StepCall) -> Outcome:
        outcome = op(call)
        if isinstance(outcome.value, int) and outcome.value > 0:
            return replace(outcome, value=outcome.value - 1)
        return outcome

    return mutated


def _reboot_keeps_host_state(op: ModelOp) -> ModelOp:
    """After reboot the guest forgets that the host is connected (no PORT_OPEN resent)."""

    def mutated(call: StepCall) -> Outcome:
        outcome = op(call)
        for port in call.model.ports.values():
            if port.guest is not None and not port.console:
                port.guest.host_connected = False
        return outcome

    return mutated


#: name -> (step kind, wrapper, what is wrong)
MUTANTS: dict[str, tuple[str, Wrapper, str]] = {
    "host_close_poll": ("host_close", _host_close_poll, "poll mask after host close"),
    "id_allocation": ("hotplug", _id_allocation, "highest free port id instead of lowest"),
    "no_discard_on_close": ("guest_close", _no_discard_on_close, "discard on close not counted"),
    "wrong_error_text": ("guest_open", _wrong_error_text, "EAGAIN instead of EBUSY"),
    "write_count": ("guest_write", _write_count, "guest write count one short"),
    "reboot_host_state": ("reboot", _reboot_keeps_host_state, "reboot forgets host connection"),
}


@contextmanager
def planted(name: str) -> Iterator[None]:
    """Run with mutant ``name`` planted in the step registry's model operation."""
    if name not in MUTANTS:
        raise KeyError(f"no mutant {name!r}; known: {', '.join(MUTANTS)}")
    kind, wrap, _ = MUTANTS[name]
    original = STEPS[kind]
    _SAVED[kind] = original.model
    STEPS[kind] = replace(original, model=wrap(original.model))
    try:
        yield
    finally:
        STEPS[kind] = original
        del _SAVED[kind]
