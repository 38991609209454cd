"""Saving a running guest's state to files, and starting a QEMU from them.

The base of fast start (see harness/guest/faststart.py). Guest RAM is not streamed: a guest
that will be saved runs with its RAM in a file (memory-backend-file, share=on), the save
migrates only device state (`x-ignore-shared`) to a `cat` that QEMU spawns (`exec:`, in QEMU
7.2 and 10.0; `file:` URIs need 8.2+) and copies the RAM file (sparse) into a *template* while
the guest is stopped. A restore maps the template privately (share=off: MAP_PRIVATE, so the
template is never written), loads the device state (~0.4 MB) and runs: pages are read from the
page cache when first touched instead of ~120 MB being parsed from a stream up front
(measured on QEMU 7.2 TCG: load ~0.05 s instead of ~0.15-0.5 s). A device state that QEMU
cannot load makes it exit with its reason on stderr: StateRefused carries it.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from harness.machine.errors import MachineError
from harness.machine.qemu import Machine, MachineSpec

#: query-status states of a QEMU that is still loading its incoming stream.
_LOADING = ("inmigrate", "prelaunch")
#: query-migrate states of a migration still under way.
_ACTIVE = ("setup", "active", "cancelling", "pre-switchover", "device", "wait-unplug")
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


def with_ram_file(spec: MachineSpec, mem_path: Path, share: bool) -> MachineSpec:
    """`spec` with guest RAM in `mem_path`: share=on for a guest to be saved (the file is its
    RAM), share=off to start from a template (private copy-on-write mapping of the file)."""
    return replace(spec, ram_file=mem_path, ram_file_shared=share)


def save_state(
    machine: Machine, device_state: Path, ram: Path, template: Path, timeout: float = 120
) -> SaveStats:
    """Stop the guest (running with_ram_file(share=True) on `ram`), write its device state to
    `device_state` and a sparse copy of its RAM to `template`, and let it run on.

    The caller owns atomicity: both paths should be temporary names that it renames once this
    returned (see StateCache.publish)."""
    assert machine.qmp is not None
    started = time.monotonic()
    qmp = machine.qmp
    capabilities = [{"capability": c, "state": True} for c in ("events", "x-ignore-shared")]
    qmp.execute("migrate-set-capabilities", {"capabilities": capabilities})
    qmp.execute("stop")
    try:
        mark = len(qmp.events)
        qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(device_state))}"})
        status = str(qmp.execute("query-migrate").get("status", ""))
        if status not in ("completed", "failed", "cancelled"):
            qmp.wait_event(
                "MIGRATION",
                timeout,
                where=lambda e: e.data.get("status") in ("completed", "failed", "cancelled"),
                after=mark,
                what=f"the state save of {machine.name} to {device_state}",
            )
        info = qmp.execute("query-migrate")
        if info.get("status") != "completed":
            raise MachineError(
                f"{machine.name}: saving the state to {device_state} failed: "
                f"{info.get('error-desc') or info.get('status')}"
            )
        _sparse_copy(ram, template, timeout)
    finally:
        if machine.running:
            _run_on(machine)
    size = device_state.stat().st_size + template.stat().st_blocks * 512
    return SaveStats(time.monotonic() - started, size)


def _sparse_copy(source: Path, target: Path, timeout: float) -> None:
    """Only the guest pages ever written take space (an idle 512 MiB guest: ~115 MiB)."""
    result = subprocess.run(
        ["cp", "--sparse=always", str(source), str(target)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise MachineError(f"copying guest RAM {source} to {target} failed: {result.stderr}")


def restore_spec(spec: MachineSpec, template: Path) -> MachineSpec:
    """`spec` started from a template (everything else identical); see finish_restore."""
    return replace(with_ram_file(spec, template, share=False), incoming="defer")


def finish_restore(machine: Machine, device_state: Path, timeout: float = 30) -> float:
    """Load `device_state` into `machine` (started with restore_spec) and run it.

    Returns the seconds from QEMU's start to running. StateRefused if QEMU refused the state
    or exited; MachineError if it is still loading after `timeout`."""
    assert machine.qmp is not None
    deadline = time.monotonic() + timeout
    try:
        _ignore_shared(machine, True)
        machine.qmp.execute(
            "migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(device_state))}"}
        )
    except MachineError as error:
        raise StateRefused(_qemu_reason(machine, str(error))) from None
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
    _ignore_shared(machine, False)  # a later migration of this guest sends its RAM
    machine.resume()
    return time.monotonic() - (machine.spawned_at or time.monotonic())


def _run_on(machine: Machine, timeout: float = 10) -> None:
    """After a save, finished or interrupted (Ctrl-C, an error): no migration left running,
    x-ignore-shared off (a later migration of this guest sends its RAM), the guest running."""
    assert machine.qmp is not None
    machine.qmp.execute("migrate_cancel")  # a no-op once the save completed
    deadline = time.monotonic() + timeout
    while machine.qmp.execute("query-migrate").get("status") in _ACTIVE:
        if time.monotonic() > deadline:
            raise MachineError(f"{machine.name}: the state save did not stop after cancelling")
        time.sleep(_POLL)
    _ignore_shared(machine, False)
    if machine.qmp.execute("query-status").get("status") != "running":
        machine.qmp.execute("cont")


def _ignore_shared(machine: Machine, state: bool) -> None:
    assert machine.qmp is not None
    machine.qmp.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "x-ignore-shared", "state": state}]},
    )


def _qemu_reason(machine: Machine, fallback: str) -> str:
    """QEMU's last stderr lines (`load of migration failed: ...`), without the binary name."""
    log = machine.stderr_log
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    lines = [
        ln.split(": ", 1)[-1] if ln.startswith("qemu-system") else ln for ln in text.splitlines()
    ]
    return " / ".join(ln for ln in lines[-3:] if ln.strip()) or fallback
