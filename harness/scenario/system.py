"""The contract between the scenario runner and a real system (QEMU + guest + host sockets).

The backend implements ``RealSystem`` structurally (no import of this module is needed, and
this module imports nothing from the backend), so the runner can be tested against fakes and
the layers stay ordered: scenario -> model only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from harness.errors import OperationFailed

if TYPE_CHECKING:
    from harness.model import Backend, MachineDecl, Payload, Snapshot

GuestOp = Literal["read", "write", "open"]


class FailureContext(Protocol):
    """What a failure report needs when the machine itself is the problem."""

    @property
    def headline(self) -> str: ...  # "QEMU exited with status -9 (SIGKILL)"
    @property
    def console_tail(self) -> str: ...

#: Names ``artifacts()`` should use; the plugin attaches whatever is returned.
ARTIFACT_NAMES = ("serial log", "QMP transcript", "kernel messages", "agent log")


class StepFailure(OperationFailed):
    """A real operation failed; ``text`` is QEMU's error message or the guest errno name.

    The runner matches ``expect_error`` as a substring of ``text``, exactly as it does
    against the model's ``ModelError.text``, so both must carry the same vocabulary. A real
    system may raise any ``OperationFailed`` (the backend raises its RealFailure).
    """


class ReadData(Protocol):
    """What a read consumed (harness.backend.endpoint.Received has this shape)."""

    @property
    def length(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def data(self) -> bytes | None: ...
    @property
    def eof(self) -> bool: ...


@runtime_checkable
class RealSystem(Protocol):
    """One real machine driven step by step; every failure raises StepFailure."""

    def start(self, machine: MachineDecl) -> None:
        """Boot with these controllers and ports; return when the guest agent is ready."""

    def stop(self) -> None:
        """Shut down; must be safe to call after a failed start."""

    def host_open(self, port: str) -> None: ...
    def host_close(self, port: str) -> None: ...

    def host_write(self, port: str, payload: Payload) -> None:
        """Queue ``payload`` on the host socket and return at once (never blocks)."""

    def host_read(self, port: str, length: int, timeout: float) -> ReadData:
        """Read exactly ``length`` bytes (fewer only at timeout/EOF); EAGAIN when none."""

    def host_stall(self, port: str, stalled: bool) -> None:
        """Stop (True) or resume (False) reading the host socket, like a busy host program."""

    def guest_open(self, port: str, nonblocking: bool) -> None: ...
    def guest_close(self, port: str) -> None: ...

    def guest_read(self, port: str, max_bytes: int, timeout: float) -> ReadData:
        """Read until ``max_bytes`` arrived, EOF, or ``timeout``; errno names on failure."""

    def guest_write(self, port: str, payload: Payload, timeout: float) -> int:
        """Write the payload (loop over write() calls); return the bytes accepted."""

    def guest_seek(self, port: str) -> None:
        """lseek() on the guest fd (expected to fail with ESPIPE)."""

    def start_guest_op(self, op: GuestOp, port: str, **args: object) -> object:
        """Start a (predicted-blocking) guest operation in the background; return a handle.

        ``read``: max_bytes (int | None); ``write``: payload; ``open``: nonblocking.
        """

    def guest_op_state(self, handle: object) -> tuple[bool, object, str | None]:
        """(done, result, error text or None); result as guest_read/guest_write return."""

    def hotplug(
        self, name: str, nr: int | None, console: bool, controller: str, backend: Backend
    ) -> None: ...
    def unplug(self, name: str) -> None: ...
    def hotplug_controller(self, id: str, max_ports: int) -> None: ...
    def unplug_controller(self, id: str) -> None: ...

    def migrate(self, destination: MachineDecl | None, mode: str = "live") -> None:
        """Migrate to a new QEMU started with ``destination`` (None: the same configuration)."""

    def reboot(self) -> None: ...

    def snapshot(self) -> Snapshot:
        """QEMU's and the guest's view now (poll set for ports with an open guest fd)."""

    def sigio(self, port: str) -> list[frozenset[str]]:
        """Poll masks sampled at each SIGIO on the port's guest fd since it was opened."""

    def console_problems(self) -> list[str]:
        """Console excerpts with BUG:/WARNING:/Oops/Kernel panic/general protection so far."""

    # -- streams and faults (harness.scenario.streams / harness.scenario.faults) ----------
    def start_stream(
        self, port: str, direction: str, seed: int, size: int | None, chunk: int
    ) -> object:
        """Start a checked background stream (``host->guest`` or ``guest->host``) on ``port``."""

    def stop_stream_writer(self, port: str) -> None:
        """Stop the stream's writer now (``until:``); its reader drains at ``stream_end``."""

    def end_stream(self, port: str, stop: bool, timeout: float) -> Any:
        """Stop the writer if ``stop``, drain, and report what each layer passed."""

    def vm_stop(self) -> None: ...
    def vm_cont(self) -> None: ...
    def ssh_drop(self) -> None: ...
    def module_reload(self) -> None: ...

    def qemu_kill(self) -> None:
        """SIGKILL QEMU and raise (a HarnessError naming its exit status)."""

    def guest_panic(self) -> None:
        """Crash the guest kernel (sysrq c); return once the console shows it."""

    def failure_context(self) -> FailureContext:
        """Why the system stopped answering: QEMU's exit status, else the guest's state."""

    def artifacts(self) -> dict[str, str]:
        """Logs to attach on failure, keyed by ARTIFACT_NAMES."""
