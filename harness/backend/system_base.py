"""What every part of QemuSystem shares: the machine, its agent, its plugged ports and guest fds.

QemuSystem is split by job (host ends, guest operations, plugging, migration, observation),
each part in its own module so that each has one reason to change; they all build on this
state and these helpers.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backend.endpoint import HostEndpoint
from harness.backend.streams import StreamRunner
from harness.errors import OperationFailed
from harness.guest.agent_client import AgentClient, AgentError
from harness.guest.guest import Guest
from harness.machine.errors import MachineError, QmpError
from harness.machine.migration import MigrationStats
from harness.machine.ports import PortManager
from harness.machine.qemu import PortSpec
from harness.model.declarations import Backend, PortDecl

log = logging.getLogger("hil.backend")

#: How long an unplug waits for QEMU to close the removed chardev's end of its socket.
UNPLUG_EOF_TIMEOUT = 10.0


class RealFailure(OperationFailed):
    """A real operation failed; `text` is QEMU's message or the guest errno name."""


GuestFactory = Callable[..., Guest]


@dataclass(frozen=True)
class GuestFd:
    """A guest fd the agent holds: its agent handle and the port instance (plug) it opened.

    Fds belong to port instances, not names: after an unplug and a new plug under the same
    name, the old fd keeps referring to the unplugged port (ENODEV, poll HUP)."""

    handle: str
    ident: str


@dataclass
class PortPlug:
    spec: PortSpec
    backend: Backend
    endpoint: HostEndpoint | None

    @property
    def controller(self) -> str:
        return self.spec.controller


class SystemBase:
    """The state of one real system and the helpers all its parts use."""

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
        self._ports: dict[str, PortPlug] = {}
        self._unplugged: set[str] = set()  # host ops on these fail ENODEV, as in the model
        #: host ends of unplugged ports, still connected: a host program's socket keeps what
        #: arrived before the unplug readable (host_read), as the model's host socket does
        self._unplugged_ends: dict[str, HostEndpoint] = {}
        self._plugs = 0
        self._sigio: dict[str, list[frozenset[str]]] = {}  # by agent handle
        self.migrations: list[MigrationStats] = []
        self._fds: dict[str, list[GuestFd]] = {}  # by port name, oldest first
        self._kernel_messages: list[str] = []
        self.streams = StreamRunner(lambda: self._need_guest()[1], self.host_endpoint)
        self.lost = False  # the machine stopped answering: artifacts skip the agent

    def _declare(self, port: PortDecl) -> PortPlug:
        """A fresh QEMU identity and socket for every plug (see PortSpec.ident)."""
        self._plugs += 1
        path = self.socket_dir / f"{self._plugs}.sock" if port.backend == "socket" else None
        spec = PortSpec(
            port.name, port.controller, port.nr, port.console, path, f"port{self._plugs}"
        )
        endpoint = HostEndpoint(port.name, path) if path is not None else None
        return PortPlug(spec, port.backend, endpoint)

    def _register(self, port: PortPlug) -> PortSpec:
        self._ports[port.spec.name] = port
        return port.spec

    def _need_guest(self) -> tuple[Guest, AgentClient, PortManager]:
        if self.guest is None or self.agent is None or self.ports is None:
            raise MachineError("the real system is not started")
        return self.guest, self.agent, self.ports

    def _endpoint(self, port: str) -> HostEndpoint:
        entry = self._ports.get(port)
        if entry is None and port in self._unplugged:
            raise RealFailure("ENODEV", f"port {port} was unplugged")
        if entry is None or entry.endpoint is None:
            raise RealFailure(
                "ENOENT", f"port {port} has no host socket (backend: none or unknown)"
            )
        return entry.endpoint

    def _keep_unplugged_end(self, port: PortPlug) -> None:
        """At an unplug: the port's host end stays open for what it received (see
        ``_unplugged_ends``); an earlier one of that name is closed."""
        self._close_unplugged_end(port.spec.name)
        if port.endpoint is not None and port.endpoint.connected:
            port.endpoint.wait_eof(UNPLUG_EOF_TIMEOUT)  # chardev-remove closed QEMU's end
            self._unplugged_ends[port.spec.name] = port.endpoint

    def _close_unplugged_end(self, name: str) -> None:
        endpoint = self._unplugged_ends.pop(name, None)
        if endpoint is not None:
            endpoint.close()

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

    def host_endpoint(self, port: str) -> HostEndpoint:
        return self._endpoint(port)

    def _agent_call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AgentError as error:
            raise RealFailure(error.errno, str(error)) from None

    def _qmp(self, function: Callable[..., Any], *args: Any) -> None:
        try:
            function(*args)
        except QmpError as error:
            raise RealFailure(error.desc) from None

    def _instance(self, port: str) -> str | None:
        entry = self._ports.get(port)
        return entry.spec.ident if entry is not None else None

    def _current_fd(self, port: str) -> GuestFd | None:
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
        if not held and port not in self._ports and port not in self._unplugged:
            raise RealFailure("ENOENT", port)  # never plugged here (e.g. gone with a migration)
        return held[-1].handle if held else port
