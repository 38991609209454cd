"""Observable state: what QEMU prints, what the guest shows, and a readable diff.

Ports are compared by controller and id (nr), never by sysfs device name: the N in vportNpM
is the global virtio device index, which depends on PCI enumeration order.  A port the guest
shows where QEMU has none (port 0 of a controller without MULTIPORT, which Linux's probe
always creates) is keyed ``guest_only_key(controller, nr)`` and has no QEMU view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from harness.model.either import MaybeBool
from harness.model.vterm import Vtermno

if TYPE_CHECKING:
    from harness.model.device import GuestPort, VirtioSerialModel

_VPORT = re.compile(r"^vport(\d+)p(\d+)$")


def parse_vport(device_name: str) -> tuple[int, int]:
    """ "vport2p5" -> (2, 5): (virtio device index, port id)."""
    match = _VPORT.match(device_name)
    if match is None:
        raise ValueError(f"not a virtio-serial port device name: {device_name!r}")
    return int(match.group(1)), int(match.group(2))


def guest_only_key(controller: str, nr: int) -> str:
    """Snapshot key of a guest port with no QEMU port behind it (no name to key it by)."""
    return f"<{controller} port {nr}>"


def port_nr_from_vport(device_name: str) -> int:
    """ "vport2p5" -> 5."""
    return parse_vport(device_name)[1]


@dataclass(frozen=True)
class QemuPortView:
    """`info qtree`: "port N, guest on|off, host on|off, throttle on|off"."""

    guest_connected: bool
    host_connected: bool
    throttled: MaybeBool


@dataclass(frozen=True)
class GuestPortView:
    """sysfs name + debugfs /sys/kernel/debug/virtio-ports/vportNpM."""

    present: bool
    name: str | None = None
    guest_connected: bool = False
    host_connected: bool = False
    is_console: bool = False
    console_vtermno: Vtermno = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_discarded: int = 0


#: A field one side of a diff has and the other lacks (e.g. a QEMU view against none).
ABSENT_FIELD = "<absent>"

#: What the real reader reports for a port the guest does not show.
ABSENT = GuestPortView(present=False)


@dataclass(frozen=True)
class PortView:
    controller: str
    nr: int
    is_console: bool
    qemu: QemuPortView | None  # None: QEMU has no port there (see guest_only_key)
    guest: GuestPortView
    poll: frozenset[str] | None = None


@dataclass(frozen=True)
class ControllerView:
    id: str
    max_ports: int
    multiport: bool


@dataclass(frozen=True)
class Snapshot:
    controllers: dict[str, ControllerView]
    ports: dict[str, PortView]

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Difference:
    port: str
    field: str
    expected: object
    actual: object


def take_snapshot(model: VirtioSerialModel) -> Snapshot:
    controllers = {
        c.id: ControllerView(c.id, c.max_ports, c.multiport) for c in model.controllers.values()
    }
    ports = {}
    for name, port in model.ports.items():
        guest = port.guest
        if guest is None:  # the guest never got PORT_ADD (see Behaviour.control_rx_buffers)
            qemu = QemuPortView(port.guest_connected, port.host_connected, port.throttle_view)
            ports[name] = PortView(port.controller, port.nr, port.console, qemu, ABSENT)
            continue
        poll = model.poll(name) if guest.fd is not None else None
        qemu = QemuPortView(port.guest_connected, port.host_connected, port.throttle_view)
        ports[name] = PortView(port.controller, port.nr, port.console, qemu, _guest(guest), poll)
    for ctrl in model.controllers.values():
        if ctrl.guest0 is not None and not any(model.ports[n].nr == 0 for n in ctrl.ports):
            key = guest_only_key(ctrl.id, 0)
            ports[key] = PortView(ctrl.id, 0, False, None, _guest(ctrl.guest0))
    return Snapshot(controllers, ports)


def _guest(guest: GuestPort) -> GuestPortView:
    return GuestPortView(
        True,
        guest.name,
        guest.guest_connected,
        guest.host_connected,
        guest.is_console,
        guest.vtermno,
        guest.bytes_sent,
        guest.bytes_received,
        guest.bytes_discarded,
    )


def _flatten(value: object, prefix: str) -> dict[str, object]:
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for item in fields(value):
            out.update(_flatten(getattr(value, item.name), f"{prefix}{item.name}."))
        return out
    return {prefix.rstrip("."): value}


def _diff_maps(kind: str, expected: dict[str, Any], actual: dict[str, Any]) -> list[Difference]:
    out = []
    for key in sorted(set(expected) | set(actual)):
        label = f"{kind}{key}"
        if key not in actual or key not in expected:
            out.append(Difference(label, "present", key in expected, key in actual))
            continue
        left, right = _flatten(expected[key], ""), _flatten(actual[key], "")
        out.extend(
            Difference(label, path, left.get(path, ABSENT_FIELD), right.get(path, ABSENT_FIELD))
            for path in [*left, *(p for p in right if p not in left)]
            if left.get(path, ABSENT_FIELD) != right.get(path, ABSENT_FIELD)
        )
    return out


def diff(expected: Snapshot, actual: Snapshot) -> list[Difference]:
    """Every (port, dotted field) whose value differs; controllers are "controller:<id>"."""
    return _diff_maps("controller:", expected.controllers, actual.controllers) + _diff_maps(
        "", expected.ports, actual.ports
    )


def _show(value: object) -> str:
    if isinstance(value, frozenset):
        return "{" + ",".join(sorted(value)) + "}"
    return repr(value)


def format_diff(differences: list[Difference]) -> str:
    """A plain-text table: port | field | expected | actual."""
    if not differences:
        return "no differences"
    rows = [("port", "field", "expected", "actual")]
    rows += [(d.port, d.field, _show(d.expected), _show(d.actual)) for d in differences]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
