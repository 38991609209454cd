"""The real system a scenario runs on: one QEMU guest, its host endpoints and its guest agent.

Every operation here is the real counterpart of a model operation, and `snapshot()` returns the
model's own Snapshot type built from what QEMU (`info qtree`) and the guest (sysfs + debugfs via
the agent, poll on open fds) report, so the two can be diffed field by field.

QemuSystem is assembled from one part per job (system_host, system_guest, system_plugging,
system_migration, system_observation, all on system_base); lifecycle, streams and faults are
here.
"""

from __future__ import annotations

import shutil

from harness.backend import faults
from harness.backend.streams import StreamReport
from harness.backend.system_base import (
    GuestFactory,
    RealFailure,
    log,
)
from harness.backend.system_guest import GuestOps
from harness.backend.system_host import HostSide
from harness.backend.system_migration import Migrating
from harness.backend.system_observation import (
    KERNEL_PROBLEMS,
    ObservationError,
    Observing,
    guest_port_view,
)
from harness.backend.system_plugging import Plugging
from harness.guest.agent_client import AgentClient
from harness.machine.ports import PortManager
from harness.machine.qemu import ControllerSpec
from harness.model.declarations import MachineDecl

__all__ = [
    "KERNEL_PROBLEMS",
    "GuestFactory",
    "ObservationError",
    "QemuSystem",
    "RealFailure",
    "guest_port_view",
]


class QemuSystem(HostSide, GuestOps, Plugging, Migrating, Observing):
    """Implements the scenario layer's RealSystem protocol on a real QEMU guest."""

    def start(self, machine: MachineDecl) -> None:
        boot_ports = [self._register(self._declare(p)) for p in machine.ports]
        controllers = [ControllerSpec(c.id, c.max_ports) for c in machine.controllers]
        self.guest = self._create_guest(
            "scenario", memory_mib=machine.memory, controllers=controllers, ports=boot_ports
        )
        self.ports = PortManager(self.guest.machine)
        self.agent = AgentClient(self.guest, transport="tcp").start()
        named = {c.id for c in machine.controllers if c.max_ports > 1}
        for port in boot_ports:
            if port.controller in named:
                self.agent.wait_port(port.name)
        log.info(
            "real system ready: controllers %s, ports %s",
            [c.id for c in controllers],
            [p.name for p in boot_ports],
        )

    def stop(self) -> None:
        self.streams.stop_all()
        for port in self._ports.values():
            if port.endpoint is not None and port.endpoint.connected:
                port.endpoint.close()
        for name in list(self._unplugged_ends):
            self._close_unplugged_end(name)
        if self.agent is not None:
            self.agent.disconnect()
        if self.guest is not None:
            self.guest.shutdown()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def start_stream(
        self, port: str, direction: str, seed: int, size: int | None, chunk: int
    ) -> str:
        return self.streams.start(port, direction, seed, size, chunk)

    def stop_stream_writer(self, port: str) -> None:
        self.streams.stop_writer(port)

    def end_stream(self, port: str, stop: bool, timeout: float) -> StreamReport:
        return self.streams.end(port, stop, timeout)

    def vm_stop(self) -> None:
        faults.qmp(self._need_guest()[0], "stop")

    def vm_cont(self) -> None:
        faults.qmp(self._need_guest()[0], "cont")

    def ssh_drop(self) -> None:
        faults.ssh_drop(self._need_guest()[0])

    def module_reload(self) -> None:
        guest, agent, _ = self._need_guest()
        faults.module_reload(guest)
        for name, port in self._ports.items():
            if self._names_reach_guest(port.controller):  # a max_ports 1 port has no name
                agent.wait_port(name)

    def qemu_kill(self) -> None:
        self.lost = True
        faults.qemu_kill(self._need_guest()[0])

    def guest_panic(self) -> None:
        self.lost = True
        faults.guest_panic(self._need_guest()[0])

    def failure_context(self) -> faults.MachineState:
        """QEMU's exit status or the guest's silence, with the console's last lines."""
        self.lost = True
        problems = self.console_problems() if self.guest is not None else []
        return faults.MachineState(
            faults.headline(self.guest, problems), faults.console_tail(self.guest)
        )
