"""A RealSystem made of a second model instance, with hooks to inject one disagreement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from harness.model import ModelError, Outcome, Payload, ReadResult, Snapshot
from harness.model.migration import clone_configuration, migrate
from harness.model.payload import slices_bytes
from harness.scenario.observe import sigio_events
from harness.scenario.schema import MachineDecl, build_model
from harness.scenario.system import StepFailure


@dataclass(frozen=True)
class Read:
    length: int
    sha256: str
    data: bytes | None
    eof: bool


def as_read(result: ReadResult) -> Read:
    return Read(result.length, result.sha256(), slices_bytes(result.slices), result.eof)


class FakeSystem:
    def __init__(
        self,
        tamper: Callable[[Snapshot], Snapshot] | None = None,
        fail: dict[str, str] | None = None,
    ) -> None:
        self.tamper = tamper
        self.fail = fail or {}  # method name -> error text to raise instead of running
        self.problems: list[str] = []
        self.done: dict[int, tuple[object, str | None]] = {}
        self.early: set[int] = set()  # tickets to report as done although still blocked
        self.sigio_log: dict[str, list[frozenset[str]]] = {}
        self.stopped = False

    # -- plumbing
    def _do(self, name: str, call: Callable[[], Outcome]) -> Outcome:
        if name in self.fail:
            raise StepFailure(self.fail[name])
        before = self.model.snapshot()
        try:
            outcome = call()
        except ModelError as error:
            raise StepFailure(error.text) from None
        for done in outcome.completed:
            result = as_read(done.result) if isinstance(done.result, ReadResult) else done.result
            self.done[done.ticket] = (result, done.error.text if done.error else None)
        for port, mask in sigio_events(before, self.model.snapshot()):
            self.sigio_log.setdefault(port, []).append(mask)
        return outcome

    def start(self, machine: MachineDecl) -> None:
        self.model = build_model(machine)

    def stop(self) -> None:
        self.stopped = True

    def host_open(self, port: str) -> None:
        self._do("host_open", lambda: self.model.host_open(port))

    def host_close(self, port: str) -> None:
        self._do("host_close", lambda: self.model.host_close(port))

    def host_write(self, port: str, payload: Payload) -> None:
        self._do("host_write", lambda: self.model.host_write(port, payload))

    def host_read(self, port: str, length: int, timeout: float) -> Read:
        return as_read(self._do("host_read", lambda: self.model.host_read(port, length)).value)

    def guest_open(self, port: str, nonblocking: bool) -> None:
        self._do("guest_open", lambda: self.model.guest_open(port, nonblocking))
        self.sigio_log[port] = []

    def guest_close(self, port: str) -> None:
        self._do("guest_close", lambda: self.model.guest_close(port))

    def guest_read(self, port: str, max_bytes: int, timeout: float) -> Read:
        outcome = self._do("guest_read", lambda: self.model.guest_read(port, max_bytes))
        return as_read(outcome.value)

    def guest_write(self, port: str, payload: Payload, timeout: float) -> int:
        return self._do("guest_write", lambda: self.model.guest_write(port, payload)).value

    def guest_seek(self, port: str) -> None:
        self._do("guest_seek", lambda: self.model.guest_seek(port))

    def start_guest_op(self, op: str, port: str, **args: object) -> object:
        if op == "read":
            outcome = self._do("guest_read", lambda: self.model.guest_read(port, args["max_bytes"]))
        else:
            outcome = self._do("guest_write", lambda: self.model.guest_write(port, args["payload"]))
        assert outcome.pending is not None
        return outcome.pending.ticket

    def guest_op_state(self, handle: object) -> tuple[bool, object, str | None]:
        if handle in self.early:
            return True, None, None
        if handle in self.done:
            result, error = self.done[handle]
            return True, result, error
        return False, None, None

    def hotplug(
        self, name: str, nr: int | None, console: bool, controller: str, backend: str
    ) -> None:
        self._do(
            "hotplug",
            lambda: Outcome(
                self.model.add_port(
                    name, controller=controller, nr=nr, console=console, backend=backend
                )
            ),
        )

    def unplug(self, name: str) -> None:
        self._do("unplug", lambda: self.model.remove_port(name))

    def hotplug_controller(self, id: str, max_ports: int) -> None:
        self._do("hotplug_controller", lambda: self.model.add_controller(id, max_ports))

    def unplug_controller(self, id: str) -> None:
        self._do("unplug_controller", lambda: self.model.remove_controller(id))

    def migrate(self, destination: MachineDecl | None) -> None:
        assert destination is None
        dest = clone_configuration(self.model)
        migrate(self.model, dest)
        self.model = dest

    def reboot(self) -> None:
        self._do("reboot", self.model.reboot)

    def snapshot(self) -> Snapshot:
        snap = self.model.snapshot()
        return self.tamper(snap) if self.tamper else snap

    def sigio(self, port: str) -> list[frozenset[str]]:
        return list(self.sigio_log.get(port, []))

    def console_problems(self) -> list[str]:
        return list(self.problems)

    def artifacts(self) -> dict[str, str]:
        return {
            "serial log": "boot...",
            "QMP transcript": "{}",
            "kernel messages": "",
            "agent log": "ok",
        }


def throttle(port: str) -> Callable[[Snapshot], Snapshot]:
    """A tamper that shows ``port`` throttled in QEMU's view."""

    def tamper(snap: Snapshot) -> Snapshot:
        ports = dict(snap.ports)
        if port in ports:
            view = ports[port]
            ports[port] = replace(view, qemu=replace(view.qemu, throttled=True))
        return Snapshot(snap.controllers, ports)

    return tamper
