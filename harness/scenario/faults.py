"""Fault steps: what real hosts do to a guest while data flows.

Each is one registered step kind (model operation, real operation, docs row).  The model side
of a fault is mostly "nothing changes in the device" (``vm_stop``, ``ssh_drop``); what a fault
does to background streams is in ``harness.model.streams`` and applied by the runner's
``StreamBook``.  ``qemu_kill`` and ``guest_panic`` exist to prove the harness fails fast and
cleanly; a scenario using them fails on a real system by design.
"""

from __future__ import annotations

from harness.model import Outcome, VirtioSerialModel
from harness.model import errors as E
from harness.model.errors import ModelError
from harness.scenario.steps import StepCall, StepKind, register

IN_USE = "virtio_console is in use"


def _module_reload(call: StepCall) -> Outcome:
    """rmmod refuses while any port is open, an unplugged one too: each fd holds a module
    reference, and delete_module() then answers EWOULDBLOCK (EAGAIN) (kernel/module/main.c
    try_stop_module).  Found by exploration on 6.1: open, unplug, module_reload."""
    model: VirtioSerialModel = call.model
    open_ports = model.guest_fds_open()
    if open_ports:
        raise ModelError(E.EAGAIN, f"{IN_USE}: {', '.join(open_ports)} open in the guest")
    return model.guest_reset()


def _nothing(call: StepCall) -> Outcome:
    return Outcome()


for _kind in (
    StepKind(
        "vm_stop",
        {},
        _nothing,
        lambda r, c: r.vm_stop(),
        "none",
        "QMP `stop`: the guest freezes, host ends keep their sockets (no settle while stopped)",
    ),
    StepKind(
        "vm_cont", {}, _nothing, lambda r, c: r.vm_cont(), "none", "QMP `cont`: the guest runs on"
    ),
    StepKind(
        "ssh_drop",
        {},
        _nothing,
        lambda r, c: r.ssh_drop(),
        "none",
        "cut the harness's SSH connection; the guest agent carries on and is reached again",
        rare=True,
    ),
    StepKind(
        "module_reload",
        {},
        _module_reload,
        lambda r, c: r.module_reload(),
        "none",
        "`rmmod virtio_console; insmod` it again (EAGAIN while a port is open; fails "
        "with a clear reason when the driver is built in)",
        rare=True,
    ),
    StepKind(
        "qemu_kill",
        {},
        _nothing,
        lambda r, c: r.qemu_kill(),
        "none",
        "SIGKILL QEMU: the scenario fails at once with QEMU's exit status and the artifacts",
    ),
    StepKind(
        "guest_panic",
        {},
        _nothing,
        lambda r, c: r.guest_panic(),
        "none",
        "`echo c > /proc/sysrq-trigger`: the step fails with the console's panic lines",
    ),
):
    register(_kind)
