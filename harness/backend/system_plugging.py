"""QemuSystem's plugging: ports and controllers added and removed over QMP, and guest
reboots (which re-run the driver's probe)."""

from __future__ import annotations

from harness.backend.system_base import (
    RealFailure,
    SystemBase,
)
from harness.guest.agent_client import AgentClient
from harness.guest.guest import READY_MARKER
from harness.model.declarations import Backend, PortDecl


class Plugging(SystemBase):
    """Hotplug/unplug of ports and controllers, and reboot."""

    def hotplug(
        self, name: str, nr: int | None, console: bool, controller: str, backend: Backend
    ) -> None:
        _, agent, ports = self._need_guest()
        port = self._declare(PortDecl(name, controller, nr, console, backend))
        self._qmp(ports.add_port, port.spec)
        self._close_unplugged_end(name)  # the name is a new port's: the old socket goes
        self._register(port)
        if self._names_reach_guest(controller):
            agent.wait_port(name)

    def _names_reach_guest(self, controller: str) -> bool:
        """Only a MULTIPORT controller (max_ports > 1) tells the guest about a port at all
        (PORT_ADD, PORT_NAME): without it there is no name to wait for in the guest."""
        found = self._need_guest()[2].qtree()[0].get(controller)
        return found is None or found.max_ports > 1

    def unplug(self, name: str) -> None:
        _, agent, ports = self._need_guest()
        entry = self._ports.get(name)
        if entry is None:
            raise RealFailure(f"Device '{name}' not found", "no such port was plugged")
        self._qmp(ports.remove_port, entry.spec)
        self._keep_unplugged_end(entry)
        del self._ports[name]
        self._unplugged.add(name)
        agent.wait_port(name, gone=True)

    def hotplug_controller(self, controller_id: str, max_ports: int) -> None:
        self._qmp(self._need_guest()[2].add_controller, controller_id, max_ports)

    def unplug_controller(self, controller_id: str) -> None:
        _, agent, ports = self._need_guest()
        gone = [p.spec for p in self._ports.values() if p.controller == controller_id]
        self._qmp(ports.remove_controller, controller_id, gone)
        for spec in gone:
            name = spec.name
            entry = self._ports.pop(name)
            self._unplugged.add(name)
            self._keep_unplugged_end(entry)
            agent.wait_port(name, gone=True)

    def reboot(self) -> None:
        guest, agent, _ = self._need_guest()
        self.streams.note_progress()  # the agent's stream counts die with the guest
        agent.disconnect()
        self._fds.clear()  # the agent that held them died with the guest
        self._sigio.clear()
        assert guest.machine.console is not None
        mark = guest.machine.console.position()
        guest.serial.send_raw("reboot -f\n")  # -f: no init shutdown; the reset is what we test
        guest.machine.console.wait_for(
            READY_MARKER, self.boot_timeout, "the guest to come back after reboot", since=mark
        )
        guest.connect_ssh(self.boot_timeout)
        self.agent = AgentClient(guest).start()
        for name, port in self._ports.items():
            if self._names_reach_guest(port.controller):
                self.agent.wait_port(name)
