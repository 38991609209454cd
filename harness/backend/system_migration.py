"""QemuSystem's migration: a destination QEMU with the same (or a given) machine, host ends
carried over without a disconnect, and the virtio-serial state the stream carried (every
mode: read from the file, or from the harness's relay of a live or paused migration)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from harness.backend.endpoint import HostEndpoint, unread_by_peer
from harness.backend.system_base import (
    PortPlug,
    RealFailure,
    SystemBase,
)
from harness.guest.agent_client import AgentClient
from harness.guest.guest import Guest
from harness.machine.errors import MachineError
from harness.machine.migration import MODES, MigrationRefused, MigrationStats
from harness.machine.migration import migrate as run_migration
from harness.machine.ports import PortManager
from harness.machine.qemu import ControllerSpec
from harness.machine.wire import DeviceState, WireError
from harness.model.declarations import MachineDecl, PortDecl


class Migrating(SystemBase):
    """Migration to a new QEMU, carrying the host ends and the guest's agent over."""

    def migrate(
        self, destination: MachineDecl | None, mode: str = "live", qemu: str | None = None
    ) -> MigrationStats:
        """Move the guest to a new QEMU (same configuration, or `destination`'s), carrying the
        host ends over: connected ones connect to the destination before it loads, and bytes
        the source never read are re-sent exactly (see HostEndpoint.switch_to_successor), and
        the source is neither written to nor read from after the switchover point (hold).
        `qemu` (else the run's destination QEMU, else the source's) runs the destination,
        with the source's versioned machine type."""
        guest, _, ports = self._need_guest()
        if mode not in MODES:
            raise RealFailure(f"unknown migration mode {mode!r}")
        planned = self._destination_ports(destination, ports)
        qemu = qemu or self.destination_qemu or guest.machine.spec.qemu
        slots = {c.addr: c.id for c in ports.qtree()[0].values()}
        try:
            target = self._start_destination(guest, destination, planned, ports, qemu)
        except MachineError as error:  # e.g. the older QEMU lacks the source's machine type
            raise RealFailure(str(error)) from None
        endpoints = self._connect_successors(planned)
        try:
            stats = run_migration(
                guest.machine,
                target.machine,
                mode,
                target.machine.workdir,
                at_switchover=lambda: _hold_all(guest, (e for e, _ in endpoints)),
            )
        except MigrationRefused as error:
            for endpoint, _ in endpoints:
                endpoint.drop_successor()
                endpoint.hold(False)
            target.shutdown()
            raise RealFailure(error.text) from None
        self._hand_over(guest, target, planned, endpoints)
        stats = replace(stats, wire=self._wire_state(stats, slots))
        self.migrations.append(stats)
        return stats

    @staticmethod
    def _wire_state(stats: MigrationStats, slots: dict[str | None, str]) -> dict[str, DeviceState]:
        """The stream's virtio-serial state per controller id (sections are named by PCI
        slot; the source's qtree maps slots to ids). Every mode's stream is read: a file's,
        or a live / paused one on its way through the harness's relay."""
        if not slots:  # every controller unplugged: no virtio-console section to read
            return {}
        if not stats.sections:
            raise WireError(stats.wire_error or "the migration stream was not read")
        return {slots.get(s.pci_addr, s.idstr): s.state for s in stats.sections}

    def _destination_ports(
        self, destination: MachineDecl | None, ports: PortManager
    ) -> dict[str, PortPlug]:
        """The destination's ports: the source's own (ids pinned from qtree) unless overridden.

        In the source's plug order, not qtree's (which lists a bus's newest device first): QEMU
        keeps ports in plug order and saves them in it, so a destination started in qtree order
        would reverse the order on every hop, and its stream would no longer match the model's.
        """
        _, listed = ports.qtree()
        plugged = {name: index for index, name in enumerate(self._ports)}
        qtree_ports = dict(
            sorted(listed.items(), key=lambda item: plugged.get(item[0], len(plugged)))
        )
        wanted = (
            [
                PortDecl(
                    q.name,
                    q.controller,
                    q.nr,
                    q.driver == "virtconsole",
                    self._ports[q.name].backend if q.name in self._ports else "none",
                )
                for q in qtree_ports.values()
            ]
            if destination is None
            else list(destination.ports)
        )
        planned: dict[str, PortPlug] = {}
        for decl in wanted:
            nr = decl.nr if decl.nr is not None else getattr(qtree_ports.get(decl.name), "nr", None)
            port = self._declare(replace(decl, nr=nr))
            source = self._ports.get(decl.name)
            if source is not None:  # same QEMU id: VSERPORT_CHANGE keeps naming the same port
                port = PortPlug(
                    replace(port.spec, ident=source.spec.ident or port.spec.ident),
                    port.backend,
                    source.endpoint if port.endpoint else None,
                )
            planned[decl.name] = port
        return planned

    def _start_destination(
        self,
        guest: Guest,
        destination: MachineDecl | None,
        planned: dict[str, PortPlug],
        ports: PortManager,
        qemu: str,
    ) -> Guest:
        qtree_controllers, _ = ports.qtree()
        if destination is None:
            controllers = [
                ControllerSpec(c.id, c.max_ports, c.addr) for c in qtree_controllers.values()
            ]
        else:
            source_addr = {c.id: c.addr for c in qtree_controllers.values()}
            controllers = [
                ControllerSpec(c.id, c.max_ports, source_addr.get(c.id))
                for c in destination.controllers
            ]
        specs = [p.spec for p in planned.values()]
        target = self._create_guest(
            "destination",
            boot=False,
            incoming="defer",
            controllers=controllers,
            ports=specs,
            memory_mib=guest.machine.spec.memory_mib,
            qemu=qemu,
            machine_type=guest.machine.machine_type,
        )
        target.machine.start()
        return target

    def _connect_successors(self, planned: dict[str, PortPlug]) -> list[tuple[HostEndpoint, Path]]:
        endpoints = []
        for name, port in planned.items():
            source = self._ports.get(name)
            if (
                source
                and source.endpoint
                and source.endpoint.connected
                and port.spec.chardev_path is not None
            ):
                source.endpoint.connect_successor(port.spec.chardev_path)
                endpoints.append((source.endpoint, port.spec.chardev_path))
        return endpoints

    def _hand_over(
        self,
        guest: Guest,
        target: Guest,
        planned: dict[str, PortPlug],
        endpoints: list[tuple[HostEndpoint, Path]],
    ) -> None:
        inodes = {e.inode: e for e, _ in endpoints if e.inode is not None}
        unread = unread_by_peer(set(inodes))  # measured while the paused source still holds them
        guest.shutdown()
        for inode, endpoint in inodes.items():
            new_path = next(path for e, path in endpoints if e is endpoint)
            endpoint.switch_to_successor(unread.get(inode, 0), new_path)
        for port in planned.values():
            if port.endpoint is not None and port.spec.chardev_path is not None:
                port.endpoint.path = port.spec.chardev_path
        self._ports = planned
        self._unplugged.clear()  # the destination never had them: unknown ports (ENOENT) now
        self.guest = target
        self.ports = PortManager(target.machine)
        target.connect_ssh(self.boot_timeout)
        if self.agent is not None:
            self.agent.disconnect()  # the source's channel: its socket would leak per hop
        self.agent = AgentClient(target).start()


#: QMP round trips on the paused source after the hold (see _hold_all).
SETTLE_ROUND_TRIPS = 2


def _hold_all(source: Guest, endpoints: Iterable[HostEndpoint]) -> None:
    """At the switchover point (vCPUs stopped, device state not yet saved) the host ends
    neither write to nor read from the source any more (HostEndpoint.hold: QEMU would
    otherwise flush held guest data after its state was saved, and the destination would
    send it again).

    Then a few QMP round trips before `migrate-continue`: a read of ours just before the hold
    may have left the source's socket writable, and QEMU reacts to that in its main loop (a
    chardev watch schedules the port's flush bottom half). Each reply comes from a later
    main-loop iteration than the hold, so that flush has run, before the state is saved,
    and the socket is full again or the port has nothing left to send."""
    for endpoint in endpoints:
        endpoint.hold()
    qmp = source.machine.qmp
    if qmp is not None:
        for _ in range(SETTLE_ROUND_TRIPS):
            qmp.execute("query-status")
