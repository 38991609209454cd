"""Real fault operations on one QEMU guest: pause, SSH loss, driver reload, kill, panic.

Each is the real counterpart of a fault step (``harness.scenario.faults``); ``QemuSystem``
exposes them as public methods.  ``failure_context`` is what a report needs when the machine
itself stopped answering: QEMU's exit status, or the console's last lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

from harness.errors import NotApplicable, OperationFailed
from harness.guest.guest import Guest
from harness.machine.errors import MachineError

PANIC = r"Kernel panic"  # printed after "sysrq: Trigger a crash": wait for the panic itself
KILL_WAIT = 10.0  # seconds QEMU may take to be reaped after SIGKILL
TAIL_LINES = 40
MODULE = "virtio_console"


@dataclass(frozen=True)
class MachineState:
    """Why the machine stopped answering (scenario.system.FailureContext's shape)."""

    headline: str
    console_tail: str


class QemuDied(MachineError):
    """QEMU exited under the harness; the text carries its exit status."""


def exit_status(code: int | None) -> str:
    """``-9`` -> ``-9 (SIGKILL)``: a negative Popen code is the signal that ended it."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


def qmp(guest: Guest, command: str) -> None:
    assert guest.machine.qmp is not None
    guest.machine.qmp.execute(command)


def ssh_drop(guest: Guest) -> None:
    """Close the SSH connection under the agent client; its next call reconnects."""
    if guest.ssh is not None:
        guest.ssh.close()


def module_reload(guest: Guest, timeout: float = 60) -> None:
    """rmmod + insmod of virtio_console from the image's module directory."""
    where = guest.run(
        f"if [ -e /sys/module/{MODULE}/initstate ]; then "
        f"grep '{MODULE}' /etc/hil/modules.order; else echo BUILTIN; fi",
        timeout=timeout,
    ).output.strip()
    if not where or where == "BUILTIN":
        raise NotApplicable(
            f"{MODULE} is built into this kernel (no /sys/module/{MODULE}/initstate): "
            "module_reload needs a kernel where it is a module"
        )
    removed = guest.run(f"rmmod {MODULE}", timeout=timeout)
    if removed.exit_code != 0:
        text = (removed.output + removed.stderr).strip()
        # delete_module() answers EWOULDBLOCK (= EAGAIN) while the module has references
        if "temporarily unavailable" in text or "in use" in text:
            raise OperationFailed("EAGAIN", f"rmmod {MODULE}: {text}")
        raise OperationFailed(f"EIO: rmmod {MODULE}: {text}")
    loaded = guest.run(f"insmod /lib/modules/hil/{where.splitlines()[0]}", timeout=timeout)
    if loaded.exit_code != 0:
        raise OperationFailed("EIO", f"insmod {MODULE}: {(loaded.output + loaded.stderr).strip()}")


def qemu_kill(guest: Guest) -> None:
    """SIGKILL QEMU, reap it, and fail with its exit status (what a dying QEMU looks like)."""
    process = guest.machine.process
    if process is None:
        raise MachineError("qemu_kill: QEMU is not running")
    os.kill(process.pid, signal.SIGKILL)
    try:
        code = process.wait(timeout=KILL_WAIT)
    except subprocess.TimeoutExpired:
        code = None
    raise QemuDied(f"QEMU was killed (qemu_kill step): exit status {exit_status(code)}")


def guest_panic(guest: Guest, timeout: float = 60) -> None:
    """Crash the kernel through the serial shell; return once the console shows the panic."""
    console = guest.machine.console
    assert console is not None
    mark = console.position()
    console.send_raw("echo c > /proc/sysrq-trigger\n")
    console.wait_for(PANIC, timeout, "the guest kernel to panic after sysrq c", since=mark)


def headline(guest: Guest | None, problems: list[str]) -> str:
    """QEMU's exit status; else the guest kernel's first reported problem; else silence."""
    if guest is None or guest.machine.process is None:
        return "the real system is not running"
    code = guest.machine.process.poll()
    if code is not None:
        return f"QEMU exited with status {exit_status(code)}"
    if problems:
        return f"the guest console reports a kernel problem ({problems[0]})"
    return "the guest stopped answering (QEMU still runs)"


def console_tail(guest: Guest | None, lines: int = TAIL_LINES) -> str:
    if guest is None or guest.machine.console is None:
        return "(no console)"
    text = guest.machine.console.text().splitlines()[-lines:]
    return "console tail:\n" + "\n".join(text)
