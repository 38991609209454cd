"""The real system a scenario runs on: one QEMU guest, its host endpoints and its guest agent.

Every operation here is the real counterpart of a model operation, and `snapshot()` returns the
model's own Snapshot type built from what QEMU (`info qtree`) and the guest (sysfs + debugfs via
the agent, poll on open fds) report, so the two can be diffed field by field.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.backend import faults
from harness.backend.endpoint import HostEndpoint, Received, unread_by_peer
from harness.backend.streams import StreamReport, StreamRunner
from harness.errors import OperationFailed
from harness.guest.agent_client import AgentClient, AgentError
from harness.guest.guest import READY_MARKER, Guest
from harness.machine.errors import MachineError, QmpError, ReadTimeout
from harness.machine.migration import MODES, MigrationRefused, MigrationStats
from harness.machine.migration import migrate as run_migration
from harness.machine.ports import PortManager
from harness.machine.qemu import ControllerSpec, PortSpec
from harness.machine.wire import DeviceState, read_stream_file
from harness.model.declarations import Backend, MachineDecl, PortDecl
from harness.model.payload import Payload
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
STREAM_THRESHOLD = 256 * 1024  # larger guest transfers go as agent streams (hash only)
log = logging.getLogger("hil.backend")


class ObservationError(MachineError):
    """The guest did not report a field the snapshot needs: never guess a value for it."""


class RealFailure(OperationFailed):
    """A real operation failed; `text` is QEMU's message or the guest errno name."""


GuestFactory = Callable[..., Guest]


@dataclass(frozen=True)
class _Fd:
    """A guest fd the agent holds: its agent handle and the port instance (plug) it opened.

    Fds belong to port instances, not names: after an unplug and a new plug under the same
    name, the old fd keeps referring to the unplugged port (ENODEV, poll HUP)."""

    handle: str
    ident: str


@dataclass
class _Port:
    spec: PortSpec
    backend: Backend
    endpoint: HostEndpoint | None

    @property
    def controller(self) -> str:
        return self.spec.controller


class QemuSystem:
    """Implements the scenario layer's RealSystem protocol on a real QEMU guest."""

    def __init__(
        self,
        create_guest: GuestFactory,
        boot_timeout: float = 120,
        destination_qemu: str | None = None,
    ) -> None:
        self._create_guest = create_guest
        self.boot_timeout = boot_timeout
        self.destination_qemu = destination_qemu  # None: migrations stay on the source's QEMU
        self.socket_dir = Path(tempfile.mkdtemp(prefix="hil-ports-"))
        self.guest: Guest | None = None
        self.agent: AgentClient | None = None
        self.ports: PortManager | None = None
        self._ports: dict[str, _Port] = {}
        self._plugs = 0
        self._sigio: dict[str, list[frozenset[str]]] = {}  # by agent handle
        self.migrations: list[MigrationStats] = []
        self._fds: dict[str, list[_Fd]] = {}  # by port name, oldest first
        self._console_mark = 0
        self._kernel_messages: list[str] = []
        self.streams = StreamRunner(lambda: self._need_guest()[1], self.host_endpoint)
        self.lost = False  # the machine stopped answering: artifacts skip the agent

    # -- lifetime ----------------------------------------------------------------------------

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
        if self.agent is not None:
            self.agent.disconnect()
        if self.guest is not None:
            self.guest.shutdown()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _declare(self, port: PortDecl) -> _Port:
        """A fresh QEMU identity and socket for every plug (see PortSpec.ident)."""
        self._plugs += 1
        path = self.socket_dir / f"{self._plugs}.sock" if port.backend == "socket" else None
        spec = PortSpec(
            port.name, port.controller, port.nr, port.console, path, f"port{self._plugs}"
        )
        endpoint = HostEndpoint(port.name, path) if path is not None else None
        return _Port(spec, port.backend, endpoint)

    def _register(self, port: _Port) -> PortSpec:
        self._ports[port.spec.name] = port
        return port.spec

    def _need_guest(self) -> tuple[Guest, AgentClient, PortManager]:
        if self.guest is None or self.agent is None or self.ports is None:
            raise MachineError("the real system is not started")
        return self.guest, self.agent, self.ports

    # -- host side ---------------------------------------------------------------------------

    def _endpoint(self, port: str) -> HostEndpoint:
        entry = self._ports.get(port)
        if entry is None or entry.endpoint is None:
            raise RealFailure(
                "ENOENT", f"port {port} has no host socket (backend: none or unknown)"
            )
        return entry.endpoint

    def endpoint(self, port: str) -> HostEndpoint:
        """The host end of ``port`` (its socket connection): counters and logs for tests that
        watch a transfer directly (bytes_sent, migration_log)."""
        return self._endpoint(port)

    def port_spec(self, port: str) -> PortSpec:
        """QEMU's identity of ``port`` (device id, chardev path), e.g. to match QMP events."""
        entry = self._ports.get(port)
        if entry is None:
            raise RealFailure("ENOENT", f"no port {port} is plugged")
        return entry.spec

    def host_open(self, port: str) -> None:
        self._endpoint(port).connect()

    def host_close(self, port: str) -> None:
        self._endpoint(port).close()

    def host_write(self, port: str, payload: Payload) -> None:
        self._endpoint(port).write(payload)

    def host_read(self, port: str, length: int, timeout: float) -> Received:
        """Nothing at all arriving in time is the host's EAGAIN (its socket is non-blocking in
        spirit: the harness never waits on the guest unbounded)."""
        endpoint = self._endpoint(port)
        if not endpoint.connected:
            raise RealFailure("ENOTCONN", f"host end of {port} is not connected")
        try:
            return endpoint.read(length, timeout)
        except ReadTimeout as error:
            if error.received == 0 and endpoint.buffered_in == 0:
                raise RealFailure("EAGAIN", str(error)) from None
            raise

    def host_stall(self, port: str, stalled: bool) -> None:
        self._endpoint(port).stall(stalled)

    # -- guest side --------------------------------------------------------------------------

    def _agent_call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AgentError as error:
            raise RealFailure(error.errno, str(error)) from None

    def _instance(self, port: str) -> str | None:
        entry = self._ports.get(port)
        return entry.spec.ident if entry is not None else None

    def _current_fd(self, port: str) -> _Fd | None:
        """The fd the guest holds for the port now plugged under this name, if any."""
        ident = self._instance(port)
        return next((f for f in self._fds.get(port, []) if f.ident == ident), None)

    def _handle(self, port: str) -> str:
        """The agent handle a step's port name means (the model's rule, _guest_fd_port): the
        fd of the port plugged now, else the newest fd still held for an earlier port of
        that name; the bare name when none (the agent then answers EBADF)."""
        current = self._current_fd(port)
        if current is not None:
            return current.handle
        held = self._fds.get(port, [])
        return held[-1].handle if held else port

    def guest_open(self, port: str, nonblocking: bool = False) -> None:
        """A second open goes to the kernel as a second fd, so its answer (EBUSY) is real."""
        _, agent, _ = self._need_guest()
        held = self._fds.get(port, [])
        if self._current_fd(port) is not None:
            self._agent_call(agent.open, port, nonblocking=nonblocking, extra=True)
            return
        opened = self._agent_call(
            agent.open, port, nonblocking=nonblocking, sigio=True, extra=bool(held)
        )
        handle = str(opened["handle"])
        self._fds.setdefault(port, []).append(_Fd(handle, self._instance(port) or ""))
        self._sigio[handle] = []

    def guest_close(self, port: str) -> None:
        _, agent, _ = self._need_guest()
        handle = self._handle(port)
        held = [f for f in self._fds.get(port, []) if f.handle != handle]
        self._fds[port] = held
        self._agent_call(agent.close, handle)

    def guest_seek(self, port: str) -> None:
        _, agent, _ = self._need_guest()
        self._agent_call(agent.seek, self._handle(port))

    def guest_read(self, port: str, max_bytes: int, timeout: float) -> Received:
        """Read until `max_bytes` arrived (the model says that much is deliverable), or EOF."""
        _, agent, _ = self._need_guest()
        port = self._handle(port)
        if max_bytes > STREAM_THRESHOLD:
            result = self._agent_call(agent.recv_stream, port, max_bytes, timeout=timeout)
            return Received(int(result["bytes"]), result["sha256"], None, False)
        data = bytearray()
        eof = False
        deadline = time.monotonic() + timeout
        while len(data) < max_bytes or max_bytes == 0:
            chunk, eof = self._agent_call(
                agent.read,
                port,
                max_bytes - len(data) or 65536,
                timeout=max(0.1, deadline - time.monotonic()),
            )
            data += chunk
            if eof or not chunk or max_bytes == 0:
                break
        return Received(len(data), hashlib.sha256(data).hexdigest(), bytes(data), eof)

    def guest_write(self, port: str, payload: Payload, timeout: float = 60) -> int:
        _, agent, _ = self._need_guest()
        port = self._handle(port)
        if payload.seed is not None:
            result = self._agent_call(
                agent.send_stream, port, payload.seed, payload.length, timeout=timeout
            )
            return int(result["bytes"])
        return int(self._agent_call(agent.write, port, payload.data or b""))

    def start_guest_op(self, op: str, port: str, **args: Any) -> int:
        _, agent, _ = self._need_guest()
        if op == "open":  # the agent names the fd after the port, as guest_open does
            self._fds.setdefault(port, []).append(_Fd(port, self._instance(port) or ""))
        else:
            port = self._handle(port)
        if op == "write" and "payload" in args:
            payload: Payload = args.pop("payload")
            if payload.seed is not None:
                return self._start_background(
                    agent, "send_stream", name=port, seed=payload.seed, length=payload.length
                )
            args["data"] = base64.b64encode(payload.data or b"").decode()
        return self._start_background(agent, op, name=port, **args)

    def _start_background(self, agent: AgentClient, op: str, **args: Any) -> int:
        result = self._agent_call(agent.call, "start", args={"op": op, "args": args})
        return int(result["ticket"])

    def guest_op_state(self, handle: int) -> tuple[bool, Any, str | None]:
        _, agent, _ = self._need_guest()
        state = agent.ticket(handle)
        if not state["done"]:
            return False, None, None
        reply = state["reply"]
        if reply.get("ok"):
            return True, _op_result(reply.get("result")), None
        return True, None, reply.get("error", {}).get("errno", "?")

    def sigio(self, port: str) -> list[frozenset[str]]:
        """Every SIGIO mask of this port's fd since it was opened (the agent hands out new ones)."""
        _, agent, _ = self._need_guest()
        handle = self._handle(port)
        fresh = [frozenset(e.get("events", [])) for e in self._agent_call(agent.sigio, handle)]
        self._sigio.setdefault(handle, []).extend(fresh)
        return list(self._sigio[handle])

    # -- hotplug -----------------------------------------------------------------------------

    def _qmp(self, function: Callable[..., Any], *args: Any) -> None:
        try:
            function(*args)
        except QmpError as error:
            raise RealFailure(error.desc) from None

    def hotplug(
        self, name: str, nr: int | None, console: bool, controller: str, backend: Backend
    ) -> None:
        _, agent, ports = self._need_guest()
        port = self._declare(PortDecl(name, controller, nr, console, backend))
        self._qmp(ports.add_port, port.spec)
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
        if entry.endpoint is not None and entry.endpoint.connected:
            entry.endpoint.close()
        del self._ports[name]
        agent.wait_port(name, gone=True)

    def hotplug_controller(self, controller_id: str, max_ports: int) -> None:
        self._qmp(self._need_guest()[2].add_controller, controller_id, max_ports)

    def unplug_controller(self, controller_id: str) -> None:
        _, agent, ports = self._need_guest()
        gone = [p.spec.name for p in self._ports.values() if p.controller == controller_id]
        self._qmp(ports.remove_controller, controller_id)
        for name in gone:
            entry = self._ports.pop(name)
            if entry.endpoint is not None and entry.endpoint.connected:
                entry.endpoint.close()
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

    def migrate(
        self, destination: MachineDecl | None, mode: str = "live", qemu: str | None = None
    ) -> MigrationStats:
        """Move the guest to a new QEMU (same configuration, or `destination`'s), carrying the
        host ends over: connected ones connect to the destination before it loads, and bytes
        the source never read are re-sent exactly (see HostEndpoint.switch_to_successor).
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
                at_switchover=lambda: _pause_all(e for e, _ in endpoints),
            )
        except MigrationRefused as error:
            for endpoint, _ in endpoints:
                endpoint.drop_successor()
                endpoint.pause_sending(False)
            target.shutdown()
            raise RealFailure(error.text) from None
        self._hand_over(guest, target, planned, endpoints)
        if stats.stream is not None:
            stats = replace(stats, wire=self._wire_state(stats.stream, slots))
        self.migrations.append(stats)
        return stats

    @staticmethod
    def _wire_state(stream: Path, slots: dict[str | None, str]) -> dict[str, DeviceState]:
        """The stream's virtio-serial state per controller id (sections are named by PCI
        slot; the source's qtree maps slots to ids)."""
        return {slots.get(s.pci_addr, s.idstr): s.state for s in read_stream_file(stream)}

    def _destination_ports(
        self, destination: MachineDecl | None, ports: PortManager
    ) -> dict[str, _Port]:
        """The destination's ports: the source's own (ids pinned from qtree) unless overridden."""
        _, qtree_ports = ports.qtree()
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
        planned: dict[str, _Port] = {}
        for decl in wanted:
            nr = decl.nr if decl.nr is not None else getattr(qtree_ports.get(decl.name), "nr", None)
            port = self._declare(replace(decl, nr=nr))
            source = self._ports.get(decl.name)
            if source is not None:  # same QEMU id: VSERPORT_CHANGE keeps naming the same port
                port = _Port(
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
        planned: dict[str, _Port],
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

    def _connect_successors(self, planned: dict[str, _Port]) -> list[tuple[HostEndpoint, Path]]:
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
        planned: dict[str, _Port],
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
        self.guest = target
        self.ports = PortManager(target.machine)
        target.connect_ssh(self.boot_timeout)
        self.agent = AgentClient(target).start()

    # -- streams and faults (harness.backend.streams, harness.backend.faults) -----------------

    def host_endpoint(self, port: str) -> HostEndpoint:
        return self._endpoint(port)

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
        for name in self._ports:
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

    # -- observation -------------------------------------------------------------------------

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


def _pause_all(endpoints: Iterable[HostEndpoint]) -> None:
    """At the switchover point no host sender may write to the source any more."""
    for endpoint in endpoints:
        endpoint.pause_sending()


def _op_result(result: Any) -> Any:
    """A background op's agent reply in the shape its foreground twin returns: bytes written
    for writes, a Received for reads, None for opens."""
    if not isinstance(result, dict):
        return result
    if "written" in result:
        return int(result["written"])
    if "data" in result:
        data = base64.b64decode(result["data"])
        return Received(len(data), hashlib.sha256(data).hexdigest(), data, bool(result.get("eof")))
    if "bytes" in result:
        if "eof" in result:
            return Received(int(result["bytes"]), result["sha256"], None, bool(result["eof"]))
        return int(result["bytes"])
    return None


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
