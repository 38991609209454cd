"""The public Python API: a machine with typed handles whose every call is a scenario step.

Why this shape: a Python test must get exactly the oracle a YAML scenario gets.  So every call
below builds a ``harness.scenario.steps.Step`` and runs it through ``ScenarioRunner.run_step``:
the spec model predicts, the real system (QEMU + guest + host sockets) runs it, errors and
values are judged, the real snapshot must settle on the predicted one, guest operations the
model says block are followed until the step that completes them, and the console is checked
for kernel problems.  A disagreement raises the runner's own ``ScenarioFailure`` with the same
port | field | expected | actual table as a YAML run.  Without a real system (``--hil-backend
model``) the same calls run on the model alone, in milliseconds.

Handles (``Controller``, ``Port``, ``HostEnd``, ``GuestEnd``, ``BackgroundOp``) hold names and
the machine, never a QEMU object, so they stay valid across ``migrate()`` and ``reboot()``.

Before a step runs, a throwaway copy of the model runs the step kind's own model operation
(the step registry's, as the runner does) to say what the step will return: the bytes a read
delivers, whether a guest read/write blocks, or the error it fails with.  That copy only shapes
the return value (bytes, ``BackgroundOp``, ``OperationError``, ``OperationBlocks``); judging
stays with the runner, and after every step the copy must equal the runner's model (checked).

    def test_echo(hil_vm: VM) -> None:
        port = hil_vm.controller("vser0").add_port("org.example.echo")
        with port.host.connect() as host, port.guest.open() as guest:
            host.write(b"ping")
            assert guest.read() == b"ping"
            hil_vm.check(port, bytes_received=4)
            with pytest.raises(OperationError, match="EBUSY"):
                port.guest.open()  # a second open: the model predicts EBUSY, the guest agrees
        port.unplug()
        hil_vm.check(port, exists=False)
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Self

from harness.errors import HarnessError, OperationFailed
from harness.model import (
    DEFAULT_MAX_PORTS,
    Behaviour,
    ModelError,
    Outcome,
    PortView,
    ReadResult,
    Snapshot,
    VirtioSerialModel,
)

# Part of the public API (``harness.__all__`` lists it): re-exported by name.
from harness.model import ControllerDecl as ControllerDecl
from harness.model import MachineDecl as MachineDecl
from harness.model import PortDecl as PortDecl
from harness.model.payload import slices_bytes
from harness.scenario.runner import RunnerOptions as RunnerOptions
from harness.scenario.runner import ScenarioFailure as ScenarioFailure
from harness.scenario.runner import ScenarioRunner
from harness.scenario.schema import Scenario
from harness.scenario.steps import (
    CHECK_CONTROLLER_FIELDS,
    CHECK_PORT_FIELDS,
    MIGRATION_MODES,
    STEPS,
    Arg,
    Destination,
    DestinationBehaviour,
    Step,
    StepCall,
    same_qemu,
)
from harness.scenario.system import RealSystem

MigrationMode = Literal["live", "paused", "file"]
Data = bytes | str
StepContext = Callable[[Step], AbstractContextManager[Any]]
_THIS_FILE = str(Path(__file__).resolve())


class OperationError(OperationFailed):
    """The operation failed, as the model predicted and the real system confirmed.

    ``text`` is the model's error text (QEMU's message or a guest errno name such as
    ``ENXIO``); the runner has already checked that the real system's error contains it.
    Raised only where the failure is agreed, so ``pytest.raises(OperationError, match=...)``
    asserts the same thing as ``expect_error:`` in YAML.
    """

    def __init__(self, text: str, step: Step) -> None:
        super().__init__(text, f"step {step.index} ({step.label}) failed")
        self.step = step


class OperationBlocks(HarnessError):
    """The model predicts this call blocks until a later step unblocks it.

    A blocking call in a single-threaded test would never return, so nothing ran: start it in
    the background instead (``start_read()`` / ``start_write()``) and let a later step (a host
    write, a host open, an unplug...) complete it.
    """


@dataclass
class BackgroundOp:
    """A guest read or write that the model predicted would block when it was started.

    The runner keeps it running on the real guest and checks after every later step that it is
    still blocked, until the step at which the model says it completes: there it must complete
    with the predicted bytes or error.  ``done``/``result``/``error`` are the agreed outcome.
    """

    op: str
    port: str
    ticket: int
    started_at: int
    done: bool = False
    value: object = None
    error: str | None = None

    @property
    def result(self) -> bytes | int:
        """Bytes read (``guest_read``) or bytes written (``guest_write``) once completed."""
        if not self.done:
            raise AssertionError(
                f"{self.op} on {self.port} (started at step {self.started_at}) is still blocked"
            )
        if self.error is not None:
            raise AssertionError(f"{self.op} on {self.port} failed with {self.error}")
        if isinstance(self.value, ReadResult):
            return slices_bytes(self.value.slices)
        if not isinstance(self.value, int):
            raise AssertionError(f"{self.op} on {self.port} completed without a count")
        return self.value


# ---------------------------------------------------------------------------- the machine
@dataclass
class VM:
    """One machine (model + optional real system) driven by Python calls, step by step.

    Create it through the ``hil_vm`` / ``hil_vm_factory`` fixtures; ``start()`` boots it (step
    0, like a scenario's boot) and ``stop()`` shuts the real system down.
    """

    machine: MachineDecl = field(default_factory=MachineDecl)
    system: RealSystem | None = None
    name: str = "python test"
    options: RunnerOptions = field(default_factory=RunnerOptions)
    behaviour: Behaviour = field(default_factory=Behaviour)
    step_context: StepContext = lambda step: nullcontext()
    #: a migration's destination QEMU's switches (see ScenarioRunner.destination_behaviour)
    destination_behaviour: DestinationBehaviour = same_qemu
    runner: ScenarioRunner = field(init=False)
    steps_run: int = field(init=False, default=0)
    background: dict[int, BackgroundOp] = field(init=False, default_factory=dict)
    known_ports: set[str] = field(init=False, default_factory=set)
    #: The step that failed (a disagreement or a harness error): context managers then skip
    #: their closing steps, so the report shows that failure, not a cascade of later ones.
    failed_at: Step | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        scenario = Scenario(self.name, "", (), self.machine, (), "")
        self.runner = ScenarioRunner(
            scenario,
            self.system,
            self.options,
            self.step_context,
            behaviour=self.behaviour,
            destination_behaviour=self.destination_behaviour,
        )
        self.known_ports = {p.name for p in self.machine.ports}

    # ------------------------------------------------------------- lifetime
    def start(self) -> VM:
        """Boot (model, and the real system if any) and settle on the boot snapshot."""
        self.runner.run()
        return self

    def finish(self) -> None:
        """The end of the test: a background op still blocked with an expectation (``expect``,
        ``expect_error``) was never judged, which fails as it does at a scenario's end."""
        if self.failed_at is None:
            self.runner.finish()

    def stop(self) -> None:
        """Shut the real system down (safe after a failed start)."""
        if self.system is not None:
            self.system.stop()

    @property
    def model(self) -> VirtioSerialModel:
        """The spec model as it stands after the last step (read it, do not drive it)."""
        return self.runner.model

    @property
    def real(self) -> RealSystem:
        """The real system, for observations the API does not cover (not in model mode)."""
        if self.system is None:
            raise RuntimeError(
                "this machine runs on the model alone (--hil-backend=model): it has no real "
                "system; run with --hil-backend=qemu for what needs one"
            )
        return self.system

    # ------------------------------------------------------------- handles
    def controller(self, id: str) -> Controller:
        """The handle of a controller that exists now (declared at boot or hotplugged)."""
        if id not in self.model.controllers:
            raise KeyError(_unknown("controller", id, list(self.model.controllers)))
        return Controller(self, id)

    @property
    def controllers(self) -> list[Controller]:
        return [Controller(self, cid) for cid in self.model.controllers]

    def port(self, name: str) -> Port:
        """The handle of a port declared at boot or hotplugged earlier (unplugged ones too)."""
        if name not in self.known_ports:
            raise KeyError(_unknown("port", name, sorted(self.known_ports)))
        return Port(self, name)

    @property
    def ports(self) -> list[Port]:
        """Ports that exist now, in the model's order."""
        return [Port(self, name) for name in self.model.ports]

    # ------------------------------------------------------------- machine operations
    def hotplug(
        self,
        name: str,
        *,
        controller: Controller | str | None = None,
        nr: int | None = None,
        console: bool = False,
        backend: Literal["socket", "none"] = "socket",
        expect_error: str | None = None,
    ) -> Port:
        """chardev-add + device_add a port (on the first controller unless named)."""
        cid = controller.id if isinstance(controller, Controller) else controller
        if cid is None:
            if not self.model.controllers:
                raise ValueError("hotplug needs a controller, and this machine has none")
            cid = next(iter(self.model.controllers))
        args: dict[str, Any] = {"name": name, "controller": cid, "console": console}
        args["backend"] = backend
        if nr is not None:
            args["nr"] = nr
        self.step("hotplug", args, expect_error)
        self.known_ports.add(name)
        return Port(self, name)

    def unplug(self, port: Port | str, *, expect_error: str | None = None) -> None:
        """device_del; waits for DEVICE_DELETED and for the guest to drop the port."""
        self.step("unplug", {"port": _name(port)}, expect_error)

    def hotplug_controller(
        self, id: str, max_ports: int = DEFAULT_MAX_PORTS, *, expect_error: str | None = None
    ) -> Controller:
        """device_add a virtio-serial-pci controller."""
        self.step("hotplug_controller", {"id": id, "max_ports": max_ports}, expect_error)
        return Controller(self, id)

    def unplug_controller(
        self, controller: Controller | str, *, expect_error: str | None = None
    ) -> None:
        """device_del a controller (its ports go with it)."""
        cid = controller.id if isinstance(controller, Controller) else controller
        self.step("unplug_controller", {"id": cid}, expect_error)

    def migrate(
        self,
        destination: MachineDecl | None = None,
        *,
        mode: MigrationMode = "live",
        expect_error: str | None = None,
        qemu: str | None = None,
    ) -> None:
        """Migrate to a new QEMU (the same configuration, or ``destination``); handles follow.
        ``qemu`` (a QEMU spec) runs the destination; default: --hil-qemu-destination, else
        the source's QEMU.

        A destination QEMU refuses raises OperationError (the model predicts the refusal and
        QEMU's text must contain the model's), or is asserted with ``expect_error=``.
        """
        if mode not in MIGRATION_MODES:
            raise ValueError(f"unknown migration mode {mode!r}: use one of {MIGRATION_MODES}")
        args: dict[str, Any] = {"mode": mode}
        if destination is not None or qemu is not None:
            args["destination"] = Destination(destination, qemu)
        if destination is not None:
            self.known_ports.update(p.name for p in destination.ports)
        self.step("migrate", args, expect_error)

    def reboot(self) -> None:
        """Guest reboot (reset): guest fds are gone, host ends stay connected."""
        self.step("reboot", {})

    # ------------------------------------------------------------- the oracle
    def check(self, target: Port | Controller | None = None, /, **fields: object) -> None:
        """Run the three-way comparison now, and assert ``fields`` on the model and QEMU.

        Without arguments: the real snapshot (QEMU's qtree, the guest's debugfs and poll) must
        settle on the model's prediction within the settle timeout.  With a port or controller
        and fields (``check(port, throttled=True, poll={"OUT"})``), the fields must also hold on
        the model and on the real system: the same fields as a YAML ``check`` step (``poll``:
        a set of ``IN``/``OUT``/``HUP`` or None for "not open"; ``sigio``: a list of sets).
        """
        if target is None:
            if fields:
                raise TypeError("check(**fields) needs a port or controller to check them on")
            self.step("check", {"port": None})
            return
        if isinstance(target, Port):
            args = {"port": target.name, **_check_fields(fields, CHECK_PORT_FIELDS, "port")}
        else:
            args = {
                "controller": target.id,
                **_check_fields(fields, CHECK_CONTROLLER_FIELDS, "controller"),
            }
        if len(args) == 1:
            args["exists"] = True  # check(port): it exists, and everything settles
        self.step("check", args)

    # ------------------------------------------------------------- the step engine
    def step(
        self,
        kind: str,
        args: dict[str, Any],
        expect_error: str | None = None,
        *,
        background: bool = False,
    ) -> object:
        """Run one step through the scenario runner; return what the model says it returned.

        Returns the step's value (a ReadResult for reads, an int for writes, a BackgroundOp
        when the model says a guest operation blocks).  If the model predicts an error and no
        ``expect_error`` was given, the step runs expecting that error (so the real system must
        agree) and OperationError is raised; with ``expect_error`` the runner judges it and
        None is returned.  ``background``: the caller wants a BackgroundOp (a predicted block
        is what it asked for; a read or write that does not block comes back already done).
        """
        if expect_error is not None and not expect_error:
            raise ValueError("expect_error must be a non-empty text (an errno name or message)")
        self.steps_run += 1
        path, line = _caller()
        step = Step(self.steps_run, kind, args, expect_error, path, line, 1)
        probe, outcome, predicted_error = self._probe(step)
        if outcome is not None and outcome.pending is not None and not background:
            self.steps_run -= 1
            raise OperationBlocks(
                f"the model predicts {kind} on {args.get('port')} blocks until a later step "
                "unblocks it; use start_read()/start_write() and let a later step complete it"
            )
        if predicted_error is not None and expect_error is None:
            step = replace(step, expect_error=predicted_error)
        try:
            with self.step_context(step):
                self.runner.run_step(step)
        except BaseException:
            self.failed_at = step
            raise
        self._agree_with_probe(step, probe)
        if outcome is not None:
            self._record_completions(outcome)
        if predicted_error is not None:
            if expect_error is None:
                raise OperationError(predicted_error, step)
            if background:
                port = str(args.get("port"))
                return BackgroundOp(kind, port, -1, step.index, True, None, predicted_error)
            return None
        return self._value(step, outcome, background)

    def _probe(self, step: Step) -> tuple[VirtioSerialModel | None, Outcome | None, str | None]:
        """A copy of the model runs the step's own model operation (the registry's, as the
        runner does) first: what will the step return, block on, or fail with?"""
        call = StepCall(
            step,
            copy.deepcopy(self.runner.model),
            self.name,
            destination_behaviour=self.runner.destination_behaviour,
        )
        try:
            outcome = STEPS[step.kind].model(call)
        except ModelError as error:
            return None, None, error.text
        return call.model, outcome, None

    def _agree_with_probe(self, step: Step, probe: VirtioSerialModel | None) -> None:
        """The copy and the runner's model must have done the same (else the API would lie)."""
        if probe is not None and probe.snapshot() != self.runner.model.snapshot():
            raise AssertionError(
                f"step {step.index} ({step.label}): the API's prediction diverged from the "
                "runner's model (a harness bug: report it)"
            )

    def _value(self, step: Step, outcome: Outcome | None, background: bool) -> object:
        if outcome is None:
            return None
        pending = outcome.pending
        if pending is not None:
            op = BackgroundOp(pending.op, pending.port, pending.ticket, step.index)
            self.background[op.ticket] = op
            return op
        if background:
            port = str(step.args.get("port"))
            return BackgroundOp(step.kind, port, -1, step.index, True, outcome.value)
        return outcome.value

    def _record_completions(self, outcome: Outcome) -> None:
        for done in outcome.completed:
            op = self.background.get(done.ticket)
            if op is not None:
                op.done, op.value = True, done.result
                op.error = done.error.text if done.error is not None else None

    def snapshot(self) -> Snapshot:
        """The model's snapshot after the last step (the real one settled on it)."""
        return self.model.snapshot()


# ---------------------------------------------------------------------------- handles
@dataclass(frozen=True)
class Controller:
    """A virtio-serial controller, by id."""

    vm: VM
    id: str

    def add_port(
        self,
        name: str,
        *,
        nr: int | None = None,
        console: bool = False,
        backend: Literal["socket", "none"] = "socket",
        expect_error: str | None = None,
    ) -> Port:
        """Hotplug a port on this controller."""
        return self.vm.hotplug(
            name,
            controller=self.id,
            nr=nr,
            console=console,
            backend=backend,
            expect_error=expect_error,
        )

    def unplug(self, *, expect_error: str | None = None) -> None:
        self.vm.unplug_controller(self.id, expect_error=expect_error)

    @property
    def max_ports(self) -> int:
        return self.vm.model.controllers[self.id].max_ports

    @property
    def ports(self) -> list[Port]:
        return [p for p in self.vm.ports if p.controller_id == self.id]


@dataclass(frozen=True)
class Port:
    """A port by name: ``host`` is its chardev socket end, ``guest`` its /dev/vportNpM end."""

    vm: VM
    name: str

    @property
    def host(self) -> HostEnd:
        return HostEnd(self)

    @property
    def guest(self) -> GuestEnd:
        return GuestEnd(self)

    @property
    def exists(self) -> bool:
        return self.name in self.vm.model.ports

    @property
    def nr(self) -> int:
        """The port id the model (and, checked, QEMU) gave it."""
        return self.vm.snapshot().ports[self.name].nr

    @property
    def controller_id(self) -> str:
        return self.vm.snapshot().ports[self.name].controller

    def unplug(self, *, expect_error: str | None = None) -> None:
        self.vm.unplug(self, expect_error=expect_error)

    def check(self, **fields: object) -> None:
        """``vm.check(port, **fields)``."""
        self.vm.check(self, **fields)


@dataclass(frozen=True)
class _End:
    """What both ends of a port share: the port, its view in the snapshot, steps about it."""

    port: Port

    def __enter__(self) -> Self:
        return self

    def _view(self) -> PortView | None:
        return self.port.vm.snapshot().ports.get(self.port.name)

    def _cleanup_allowed(self) -> bool:
        """No cleanup step after a failed one (the failure is what the test reports)."""
        return self.port.vm.failed_at is None

    def _step(
        self, kind: str, args: dict[str, Any], expect_error: str | None, background: bool = False
    ) -> object:
        port_args = {"port": self.port.name, **args}
        return self.port.vm.step(kind, port_args, expect_error, background=background)


@dataclass(frozen=True)
class HostEnd(_End):
    """The host end: the test's connection to the port's chardev unix socket."""

    @property
    def connected(self) -> bool:
        view = self._view()
        return view is not None and view.qemu is not None and view.qemu.host_connected

    def open(self, *, expect_error: str | None = None) -> HostEnd:
        """Connect the socket (the guest sees the host open)."""
        self._step("host_open", {}, expect_error)
        return self

    def connect(self, *, expect_error: str | None = None) -> HostEnd:
        """``open()``; as a context manager it closes the connection again on exit."""
        return self.open(expect_error=expect_error)

    def close(self, *, expect_error: str | None = None) -> None:
        self._step("host_close", {}, expect_error)

    def write(
        self, data: Data | None = None, *, size: int | None = None, expect_error: str | None = None
    ) -> None:
        """Queue bytes on the socket (never blocks): ``data`` literal, or ``size`` seeded bytes."""
        self._step("host_write", _data_args(data, size), expect_error)

    def read(
        self,
        max_bytes: int | None = None,
        *,
        expect: Data | None = None,
        expect_error: str | None = None,
    ) -> bytes:
        """Read what the model says QEMU delivered (length and SHA-256 are compared)."""
        args = _read_args(max_bytes, expect, None)
        return _bytes(self._step("host_read", args, expect_error))

    def stall(self) -> None:
        """Stop reading the socket: QEMU's writes go short and the port throttles."""
        self._step("host_stall", {}, None)

    def resume(self) -> None:
        """Read the socket again (QEMU unthrottles the port)."""
        self._step("host_resume", {}, None)

    @contextmanager
    def stalled(self) -> Iterator[HostEnd]:
        """``stall()`` for the block, ``resume()`` after it."""
        self.stall()
        try:
            yield self
        finally:
            if self._cleanup_allowed():
                self.resume()

    def __exit__(self, *exc: object) -> None:
        if self._cleanup_allowed() and self.connected:
            self.close()


@dataclass(frozen=True)
class GuestEnd(_End):
    """The guest end: the guest agent's fd on /dev/vportNpM."""

    @property
    def is_open(self) -> bool:
        view = self._view()
        return view is not None and view.poll is not None

    def open(self, *, nonblocking: bool = False, expect_error: str | None = None) -> GuestEnd:
        """open() in the guest; as a context manager it closes the fd again on exit."""
        self._step("guest_open", {"nonblocking": nonblocking}, expect_error)
        return self

    def close(self, *, expect_error: str | None = None) -> None:
        self._step("guest_close", {}, expect_error)

    def read(
        self,
        max_bytes: int | None = None,
        *,
        expect: Data | None = None,
        eof: bool | None = None,
        expect_error: str | None = None,
    ) -> bytes:
        """read() what the model says is deliverable; b"" at EOF.

        Raises OperationBlocks (nothing ran) where the model says the read blocks.
        """
        args = _read_args(max_bytes, expect, eof)
        return _bytes(self._step("guest_read", args, expect_error))

    def start_read(
        self,
        max_bytes: int | None = None,
        *,
        expect: Data | None = None,
        eof: bool | None = None,
        expect_error: str | None = None,
    ) -> BackgroundOp:
        """A read that may block: returns a BackgroundOp a later step completes.

        ``expect``/``eof``/``expect_error`` are judged when it ends (an unplug ends a blocked
        read with ENODEV); still blocked at the end of the test with one of them, it fails.
        """
        args = _read_args(max_bytes, expect, eof)
        return _started(self._step("guest_read", args, expect_error, background=True))

    def write(
        self, data: Data | None = None, *, size: int | None = None, expect_error: str | None = None
    ) -> int:
        """write() (looped over 32 KiB calls); returns the bytes accepted.

        Raises OperationBlocks (nothing ran) where the model says the write blocks.
        """
        written = self._step("guest_write", _data_args(data, size), expect_error)
        return int(written) if isinstance(written, int) else 0

    def start_write(
        self,
        data: Data | None = None,
        *,
        size: int | None = None,
        expect_error: str | None = None,
    ) -> BackgroundOp:
        """A write that may block: returns a BackgroundOp a later step completes
        (``expect_error``: how it ends, as for ``start_read``)."""
        args = _data_args(data, size)
        return _started(self._step("guest_write", args, expect_error, background=True))

    def seek(self, *, expect_error: str | None = None) -> None:
        """lseek() on the fd (a port is a stream: ESPIPE)."""
        self._step("guest_seek", {}, expect_error)

    def poll(self) -> frozenset[str] | None:
        """The fd's poll mask (None: not open), after the three-way comparison agreed on it."""
        self.port.vm.check()
        view = self._view()
        return None if view is None else view.poll

    def __exit__(self, *exc: object) -> None:
        if self._cleanup_allowed() and self.is_open:
            self.close()


# ---------------------------------------------------------------------------- helpers
def _caller() -> tuple[str, int]:
    """The test's file and line, so a failing step can be found in the test's source."""
    frame = inspect.currentframe()
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()) == _THIS_FILE:
        frame = frame.f_back
    if frame is None:
        return "<python>", 0
    return frame.f_code.co_filename, frame.f_lineno


def _name(port: Port | str) -> str:
    return port.name if isinstance(port, Port) else port


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known) or 'none'}"
    return f"no {what} {name!r} on this machine; {hint}"


def _text(data: Data, what: str) -> str:
    """The runner carries literal data as text: bytes must be UTF-8 (else use size=)."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"{what} must be UTF-8 text; for binary data use size= (seeded random bytes)"
        ) from None


def _data_args(data: Data | None, size: int | None) -> dict[str, Any]:
    if (data is None) == (size is None):
        raise TypeError("give exactly one of data (literal bytes) and size= (seeded bytes)")
    if size is not None:
        if size < 0:
            raise ValueError("size must not be negative")
        return {"size": size}
    return {"data": _text(data, "data")}  # type: ignore[arg-type]


def _read_args(max_bytes: int | None, expect: Data | None, eof: bool | None) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if max_bytes is not None:
        args["max_bytes"] = max_bytes
    if expect is not None:
        args["expect"] = _text(expect, "expect")
    if eof is not None:
        args["eof"] = eof
    return args


def _bytes(value: object) -> bytes:
    return slices_bytes(value.slices) if isinstance(value, ReadResult) else b""


def _started(value: object) -> BackgroundOp:
    if not isinstance(value, BackgroundOp):
        raise AssertionError("internal: a background op did not come back as one")
    return value


def _bits(value: object, what: str) -> frozenset[str]:
    """A poll mask given as any collection of bit names ({"IN", "OUT"}, ["HUP"], ...)."""
    if not isinstance(value, Iterable) or isinstance(value, str):
        raise TypeError(f"{what} must be a set of poll bits such as {{'IN', 'OUT'}}, got {value!r}")
    return frozenset(str(bit) for bit in value)


def _check_fields(fields: dict[str, object], allowed: dict[str, Arg], what: str) -> dict[str, Any]:
    """Field names as in YAML; poll/sigio accept any iterables of bit names."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{name!r} is not a field of a {what} check{hint}")
        if allowed[name].type == "mask" and value is not None:
            value = _bits(value, name)
        elif allowed[name].type == "sigio":
            if not isinstance(value, Iterable) or isinstance(value, str):
                raise TypeError(f"{name} must be a list of sets of poll bits, got {value!r}")
            value = tuple(_bits(mask, name) for mask in value)
        out[name] = value
    return out
