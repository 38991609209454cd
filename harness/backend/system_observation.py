"""QemuSystem's observation: the snapshot (QEMU's qtree, the guest's debugfs and poll) in
the model's own types, console problems and the artifacts attached on failure."""

from __future__ import annotations

import re
from typing import Any

from harness.backend.system_base import (
    SystemBase,
)
from harness.guest.agent_client import AgentError
from harness.machine.errors import MachineError
from harness.model.snapshot import (
    ABSENT,
    ControllerView,
    GuestPortView,
    PortView,
    QemuPortView,
    Snapshot,
    guest_only_key,
)

KERNEL_PROBLEMS = re.compile(
    r"^.*(BUG:|WARNING:|Oops|Kernel panic|general protection).*$", re.MULTILINE
)


class ObservationError(MachineError):
    """The guest did not report a field the snapshot needs: never guess a value for it."""


class Observing(SystemBase):
    """What QEMU and the guest report, as the model's Snapshot; logs for failures."""

    def snapshot(self) -> Snapshot:
        """QEMU's ports (by name) with the guest port at the same controller and id.

        Guest ports are tied to controllers by PCI address, not by name: a controller
        without MULTIPORT never tells the guest a name, and Linux's probe makes a port 0
        there even where QEMU has none (keyed ``guest_only_key``, with no QEMU view)."""
        _, agent, ports = self._need_guest()
        controllers, qemu_ports = ports.qtree()
        by_pci = {c.addr: c.id for c in controllers.values()}
        guest_ports: dict[tuple[str, int], dict[str, Any]] = {}
        for entry in agent.list_ports():
            pci = entry.get("pci")
            guest_ports[(by_pci.get(pci) or f"pci {pci}", int(entry["nr"]))] = entry
        views: dict[str, PortView] = {}
        for name, port in qemu_ports.items():
            guest = guest_ports.pop((port.controller, port.nr), None)
            fd = self._current_fd(name)
            views[name] = PortView(
                controller=port.controller,
                nr=port.nr,
                is_console=port.driver == "virtconsole",
                qemu=QemuPortView(port.guest_connected, port.host_connected, port.throttled),
                guest=guest_port_view(guest) if guest is not None else ABSENT,
                poll=frozenset(agent.poll(fd.handle)) & {"IN", "OUT", "HUP"} if fd else None,
            )
        for (controller, nr), entry in guest_ports.items():
            views[guest_only_key(controller, nr)] = PortView(
                controller, nr, False, None, guest_port_view(entry)
            )
        return Snapshot(
            {
                c.id: ControllerView(c.id, c.max_ports, c.max_ports > 1)
                for c in controllers.values()
            },
            views,
        )

    def console_problems(self) -> list[str]:
        guest, _, _ = self._need_guest()
        assert guest.machine.console is not None
        return [m.group(0).strip() for m in KERNEL_PROBLEMS.finditer(guest.machine.console.text())]

    def artifacts(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.guest is not None:
            machine = self.guest.machine
            out["serial log"] = (
                machine.console_log.read_text(errors="replace")
                if machine.console_log.exists()
                else ""
            )
            out["QMP transcript"] = (
                machine.qmp_log.read_text(errors="replace") if machine.qmp_log.exists() else ""
            )
        if self.agent is not None and not self.lost:
            try:
                messages = self.agent.kmsg()
                self._kernel_messages += [str(m.get("text", m)) for m in messages]
            except (AgentError, MachineError) as error:
                self._kernel_messages.append(f"(could not read kernel messages: {error})")
            out["kernel messages"] = "\n".join(self._kernel_messages) or (
                "(no kernel messages since the guest agent started)"
            )
            out["agent log"] = "\n".join(self.agent.log)
        return out


#: list_ports keys that the agent adds itself (not debugfs fields)
_NOT_DEBUGFS = frozenset({"dev", "path", "device", "nr", "name", "debugfs", "pci", "agent_handles"})


def guest_port_view(entry: dict[str, Any]) -> GuestPortView:
    def number(key: str) -> int:
        """debugfs prints counters as integers and flags as 0/1 or yes/no, depending on field.

        A field the guest did not report is an error, never 0: a silent 0 would match a
        prediction of 0 and hide a missing observation."""
        if entry.get(key) is None:
            raise ObservationError(
                f"guest port {entry.get('dev', '?')} (name {entry.get('name')!r}): debugfs "
                f"field {key!r} missing (debugfs {'read' if entry.get('debugfs') else 'unreadable'}"
                f"; fields: {sorted(k for k in entry if k not in _NOT_DEBUGFS)}); the kernel "
                "must print it in /sys/kernel/debug/virtio-ports/<dev>"
            )
        value = entry[key]
        if isinstance(value, str):
            value = {"yes": 1, "no": 0}.get(value.strip().lower(), value)
        try:
            return int(value)
        except ValueError:
            raise ObservationError(
                f"guest port {entry.get('dev', '?')}: debugfs field {key!r} is {value!r}, "
                "not a number or yes/no"
            ) from None

    return GuestPortView(
        present=True,
        name=entry.get("name"),
        guest_connected=bool(number("guest_connected")),
        host_connected=bool(number("host_connected")),
        is_console=bool(number("is_console")),
        console_vtermno=number("console_vtermno"),
        bytes_sent=number("bytes_sent"),
        bytes_received=number("bytes_received"),
        bytes_discarded=number("bytes_discarded"),
    )
