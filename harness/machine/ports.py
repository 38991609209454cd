"""virtio-serial controllers and ports managed over QMP, and QEMU's own view of them.

Errors are QEMU's, verbatim (QmpError.desc), because the model predicts exactly those texts.
Unplug waits for DEVICE_DELETED: device_del only *requests* removal (the guest must ack the
ACPI eject for a controller), and returning before the event would race the next step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.machine.qemu import Machine, PortSpec
from harness.machine.qmp import QmpEvent, QmpSession

_QTREE_DEVICE = re.compile(r'^\s*dev: (virtserialport|virtconsole), id "([^"]*)"')
_QTREE_BUS = re.compile(r"^\s*bus: (\S+)\.0$")
_QTREE_PROPERTY = re.compile(r'^\s*(nr|name|chardev) = (?:"([^"]*)"|(\d+))')
_QTREE_STATE = re.compile(r"^\s*port (\d+), guest (on|off), host (on|off), throttle (on|off)")
_QTREE_CONTROLLER = re.compile(r'^\s*dev: virtio-serial-pci, id "([^"]*)"')
_QTREE_MAX_PORTS = re.compile(r"^\s*max_ports = (\d+)")
_QTREE_ADDR = re.compile(r"^\s*addr = (\S+)$")

#: The send buffer every new socket gets, QEMU's chardev sockets included (it sets none).
WMEM_DEFAULT = Path("/proc/sys/net/core/wmem_default")


def chardev_socket_sndbuf() -> int | None:
    """The bytes a chardev socket's writes may be charged before they come back short
    (the model's Behaviour.host_socket_sndbuf); None where the host does not say."""
    try:
        return int(WMEM_DEFAULT.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class QtreePort:
    """One port as `info qtree` prints it."""

    device_id: str
    controller: str
    driver: str
    nr: int
    name: str
    chardev: str
    guest_connected: bool
    host_connected: bool
    throttled: bool


@dataclass(frozen=True)
class QueueStatus:
    """A virtqueue's indexes as QEMU keeps them (`x-query-virtio-queue-status`): elements the
    guest made available and QEMU has not popped are `shadow_avail_idx - last_avail_idx`;
    `inuse` counts popped ones not yet returned."""

    inuse: int
    last_avail_idx: int
    shadow_avail_idx: int
    used_idx: int

    @property
    def waiting(self) -> int:
        return (self.shadow_avail_idx - self.last_avail_idx) % 0x10000


@dataclass(frozen=True)
class QtreeController:
    id: str
    max_ports: int
    addr: str | None = None  # PCI slot, e.g. "04.0": a migration destination must match it


def parse_qtree(text: str) -> tuple[dict[str, QtreeController], dict[str, QtreePort]]:
    """Controllers by id and ports by name, from `info qtree`'s indented text."""
    controllers: dict[str, QtreeController] = {}
    ports: dict[str, QtreePort] = {}
    controller: str | None = None
    bus: str | None = None
    device: dict[str, str] | None = None
    addr: str | None = None
    for line in text.splitlines():
        if match := _QTREE_CONTROLLER.match(line):
            controller, addr = match.group(1), None
        elif (match := _QTREE_ADDR.match(line)) and controller is not None and addr is None:
            addr = match.group(1)
        elif (match := _QTREE_MAX_PORTS.match(line)) and controller is not None:
            controllers[controller] = QtreeController(controller, int(match.group(1)), addr)
        elif match := _QTREE_BUS.match(line):
            bus = match.group(1)
        elif (match := _QTREE_DEVICE.match(line)) and bus is not None:
            device = {"driver": match.group(1), "id": match.group(2)}
        elif (match := _QTREE_PROPERTY.match(line)) and device is not None:
            device[match.group(1)] = (
                match.group(2) if match.group(2) is not None else match.group(3)
            )
        elif (match := _QTREE_STATE.match(line)) and device is not None and bus is not None:
            ports[device.get("name", "")] = QtreePort(
                device_id=device["id"],
                controller=bus,
                driver=device["driver"],
                nr=int(match.group(1)),
                name=device.get("name", ""),
                chardev=device.get("chardev", ""),
                guest_connected=match.group(2) == "on",
                host_connected=match.group(3) == "on",
                throttled=match.group(4) == "on",
            )
            device = None
    return controllers, ports


class PortManager:
    """Hot-add/remove of controllers and ports on one machine."""

    def __init__(self, machine: Machine, unplug_timeout: float = 30) -> None:
        assert machine.qmp is not None, "machine not started"
        self.machine = machine
        self.qmp: QmpSession = machine.qmp
        self.unplug_timeout = unplug_timeout

    def add_controller(self, controller_id: str, max_ports: int = 31) -> None:
        self.qmp.execute(
            "device_add",
            {"driver": "virtio-serial-pci", "id": controller_id, "max_ports": max_ports},
        )

    def remove_controller(self, controller_id: str, ports: Sequence[PortSpec] = ()) -> None:
        """device_del of the controller (its ``ports`` go with it), then chardev-remove of
        those ports' chardevs, as for one port: QEMU closes their sockets then."""
        self._unplug(controller_id)
        for port in ports:
            if port.chardev_path is not None:
                self.qmp.execute("chardev-remove", {"id": port.chardev_id})

    def add_port(self, port: PortSpec) -> None:
        """chardev-add (if the port has one) then device_add; a refused device_add removes the
        chardev again so that a failed hotplug leaves nothing behind."""
        arguments: dict[str, object] = {
            "driver": "virtconsole" if port.console else "virtserialport",
            "bus": f"{port.controller}.0",
            "name": port.name,
            "id": port.device_id,
        }
        if port.nr is not None:
            arguments["nr"] = port.nr
        chardev = None
        if port.chardev_path is not None:
            chardev = port.chardev_id
            self.qmp.execute(
                "chardev-add",
                {
                    "id": chardev,
                    "backend": {
                        "type": "socket",
                        "data": {
                            "addr": {"type": "unix", "data": {"path": str(port.chardev_path)}},
                            "server": True,
                            "wait": False,
                        },
                    },
                },
            )
            arguments["chardev"] = chardev
        try:
            self.qmp.execute("device_add", arguments)
        except Exception:
            if chardev is not None:
                self.qmp.execute("chardev-remove", {"id": chardev})
            raise

    def remove_port(self, port: PortSpec) -> None:
        self._unplug(port.device_id)
        if port.chardev_path is not None:
            self.qmp.execute("chardev-remove", {"id": port.chardev_id})

    def _unplug(self, device_id: str) -> None:
        mark = len(self.qmp.events)
        self.qmp.execute("device_del", {"id": device_id})
        self.qmp.wait_event(
            "DEVICE_DELETED",
            self.unplug_timeout,
            where=lambda e: e.data.get("device") == device_id,
            after=mark,
            what=f"for device {device_id}",
        )

    def qtree(self) -> tuple[dict[str, QtreeController], dict[str, QtreePort]]:
        return parse_qtree(self.qmp.hmp("info qtree"))

    def output_queue(self, port: PortSpec) -> QueueStatus:
        """The guest -> host virtqueue of a port (multiport layout: port 0 has queue 1, the
        control queues are 2 and 3, port n >= 1 has 2n + 3)."""
        nr = port.nr if port.nr is not None else self.qtree()[1][port.name].nr
        queue = 1 if nr == 0 else 2 * nr + 3
        status = self.qmp.execute(
            "x-query-virtio-queue-status",
            {"path": f"/machine/peripheral/{port.controller}/virtio-backend", "queue": queue},
        )
        return QueueStatus(
            inuse=status["inuse"],
            last_avail_idx=status["last-avail-idx"],
            shadow_avail_idx=status["shadow-avail-idx"],
            used_idx=status["used-idx"],
        )

    def controller_broken(self, controller_id: str) -> bool:
        """QEMU marked the controller's virtio device broken (it met an error it cannot
        recover from and wants a reset; nothing moves on any of its ports until then)."""
        status = self.qmp.execute(
            "x-query-virtio-status", {"path": f"/machine/peripheral/{controller_id}/virtio-backend"}
        )
        return bool(status["broken"])

    def port_events(self, port: PortSpec) -> list[QmpEvent]:
        """VSERPORT_CHANGE events of one port, in the order QEMU sent them."""
        device_id = port.device_id
        return [
            e
            for e in self.qmp.events
            if e.name == "VSERPORT_CHANGE" and e.data.get("id") == device_id
        ]
