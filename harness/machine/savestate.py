"""Saving a running guest's whole state to a file, and starting a QEMU from such a file.

The base of fast start (see harness/guest/faststart.py): the save is a file migration to a
`cat` that QEMU spawns (`exec:`, which QEMU 7.2 and 10.0 both have; `file:` URIs need 8.2+), and
the restore starts QEMU with `-incoming exec:cat FILE` on its command line, so the load begins
while we are still reading QMP's greeting. A stream that QEMU cannot load (truncated, another
device set, another QEMU) makes QEMU exit with its reason on stderr: StateRefused carries it.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path

from harness.machine.errors import MachineError
from harness.machine.qemu import Machine, MachineSpec

#: query-status states of a QEMU that is still loading its incoming stream.
_LOADING = ("inmigrate", "prelaunch")
_POLL = 0.005  # no event marks the end of an incoming load on every version; loads take ~0.1 s


class StateRefused(MachineError):
    """QEMU could not load a saved state; `reason` is its own words (stderr) or ours."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SaveStats:
    seconds: float
    bytes: int


def save_state(machine: Machine, path: Path, timeout: float = 120) -> SaveStats:
    """Write the guest's state to `path` (stop, migrate to a file, cont): the guest runs on.

    The caller owns atomicity: `path` should be a temporary name that it renames once this
    returned (see StateCache.publish)."""
    assert machine.qmp is not None
    started = time.monotonic()
    qmp = machine.qmp
    qmp.execute(
        "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
    )
    qmp.execute("stop")
    try:
        mark = len(qmp.events)
        qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(path))}"})
        status = str(qmp.execute("query-migrate").get("status", ""))
        if status not in ("completed", "failed", "cancelled"):
            qmp.wait_event(
                "MIGRATION",
                timeout,
                where=lambda e: e.data.get("status") in ("completed", "failed", "cancelled"),
                after=mark,
                what=f"the state save of {machine.name} to {path}",
            )
        info = qmp.execute("query-migrate")
        if info.get("status") != "completed":
            raise MachineError(
                f"{machine.name}: saving the state to {path} failed: "
                f"{info.get('error-desc') or info.get('status')}"
            )
    finally:
        if machine.running and qmp.execute("query-status").get("status") != "running":
            qmp.execute("cont")
    return SaveStats(time.monotonic() - started, path.stat().st_size)


def restore_spec(spec: MachineSpec, state: Path) -> MachineSpec:
    """`spec` started from `state` instead of booting (everything else identical)."""
    return replace(spec, incoming=f"exec:cat {shlex.quote(str(state))}")


def finish_restore(machine: Machine, timeout: float = 30) -> float:
    """Wait until `machine` (started with restore_spec) has loaded its state, then run it.

    Returns the seconds from QEMU's start to running. StateRefused if QEMU refused the state
    or exited; MachineError if it is still loading after `timeout`."""
    assert machine.qmp is not None
    deadline = time.monotonic() + timeout
    while True:
        if not machine.running:
            raise StateRefused(_qemu_reason(machine, "QEMU exited while loading the state"))
        try:
            status = str(machine.qmp.execute("query-status").get("status"))
        except MachineError:
            if not machine.running:
                continue  # exited between the checks: report its stderr
            raise
        if status not in _LOADING:
            break
        if time.monotonic() > deadline:
            raise MachineError(
                f"{machine.name}: still loading its saved state after {timeout:.0f} s"
            )
        time.sleep(_POLL)
    if status != "paused":
        raise StateRefused(_qemu_reason(machine, f"QEMU is {status} after loading the state"))
    machine.resume()
    return time.monotonic() - (machine.spawned_at or time.monotonic())


def _qemu_reason(machine: Machine, fallback: str) -> str:
    """QEMU's last stderr lines (`load of migration failed: ...`), without the binary name."""
    log = machine.stderr_log
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    lines = [
        ln.split(": ", 1)[-1] if ln.startswith("qemu-system") else ln for ln in text.splitlines()
    ]
    return " / ".join(ln for ln in lines[-3:] if ln.strip()) or fallback
