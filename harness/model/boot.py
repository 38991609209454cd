"""The model of a freshly booted machine, built from its declaration."""

from __future__ import annotations

from harness.model.behaviour import Behaviour
from harness.model.declarations import MachineDecl, PortDecl
from harness.model.device import VirtioSerialModel


def build_model(machine: MachineDecl, behaviour: Behaviour | None = None) -> VirtioSerialModel:
    """Controllers, then ports, in declaration order (QEMU realizes ``-device`` in order).

    Raises ModelError where QEMU would refuse to start such a machine.
    """
    model = VirtioSerialModel(behaviour)
    for controller in machine.controllers:
        model.hotplug_controller(controller.id, controller.max_ports)
    for port in machine.ports:
        plug_declared(model, port)
    model.boot()  # the guest driver probes the controllers only now, in PCI slot order
    return model


def plug_declared(model: VirtioSerialModel, port: PortDecl) -> int:
    """Add a declared port as its ``-device`` line would (ModelError where QEMU refuses)."""
    return model.hotplug(
        port.name,
        controller=port.controller,
        nr=port.nr,
        console=port.console,
        backend=port.backend,
    )
