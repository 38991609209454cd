"""Starting a guest from a saved ready state instead of booting it (`--hil-start=snapshot`).

The first guest of a kind boots, gets ready (ready marker, SSH, the guest agent), is made
restorable (below) and saved; it then runs on as a booted guest. Every later guest of that kind
starts QEMU from the saved state: ready when the agent answers over its TCP forward (SSH is
connected on first use). A state that does not load, or a restored guest whose agent does not
answer, is deleted and the guest boots instead, with one warning naming why.

What the guest holds across a restore, and how it is made equal to a fresh boot:
- host ends of ports: none are connected at save time (boot ports start closed), and each QEMU
  has new chardev sockets; port ids are fixed by the identical command line (the key);
- SSH and agent connections: closed before the save and the guest waited on until none is
  established, so no stale session or bridge survives; the agent daemon and its listeners do;
- user-mode network: the hostfwd ports are new per QEMU and read back after the start;
- the guest's wall clock stood still while the state was on disk, and every restore starts from
  one random pool: the agent's `resumed` op sets the host's time and mixes in fresh entropy;
- the console: a restored guest's console log starts at the resume, so kernel-problem scans
  see exactly what happened since.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.guest.agent_client import AgentClient, AgentError, reply_result
from harness.guest.guest import Guest
from harness.machine.errors import MachineError
from harness.machine.qemu import Machine
from harness.machine.qemu_spec import qemu_command
from harness.machine.savestate import (
    StateRefused,
    finish_restore,
    restore_spec,
    save_state,
    with_ram_file,
)
from harness.machine.snapshot_cache import CachedState, StateCache, StateKey, state_key

StartMode = Literal["snapshot", "boot"]
START_MODES: tuple[StartMode, ...] = ("snapshot", "boot")
AGENT_READY_TIMEOUT = 15.0  # a restored guest answers in milliseconds; TCG under load: seconds
LOAD_TIMEOUT = 60.0
#: Busy-waits (bounded) in the guest until no TCP connection is established: the closed SSH
#: and agent sessions must be gone from the saved state.
_SETTLE_CONNECTIONS = (
    "i=0; while grep -qE '^ *[0-9]+: [0-9A-F]+:[0-9A-F]+ [0-9A-F]+:[0-9A-F]+ 01 ' "
    "/proc/net/tcp && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; echo settled=$i"
)


@dataclass
class StartReport:
    """How a guest started: `boot` or `restore`, seconds from QEMU's start to ready, and the
    warning to show when a saved state could not be used or made (the caller shows it)."""

    mode: Literal["boot", "restore"]
    seconds: float
    key: str | None = None
    save_seconds: float | None = None
    save_bytes: int | None = None
    warning: str | None = None

    def describe(self, name: str) -> str:
        text = f"hil: {name}: {self.mode} {self.seconds:.2f} s"
        if self.save_seconds is not None:
            text += f" (state {self.key} saved in {self.save_seconds:.2f} s, "
            text += f"{(self.save_bytes or 0) / 2**20:.0f} MiB)"
        elif self.key is not None:
            text += f" (state {self.key})"
        return text


def start_guest(
    guest: Guest, cache: StateCache | None, timeout: float, extra_key: dict[str, str]
) -> StartReport:
    """Start `guest` (a Guest whose machine is not started): restore it from `cache` when a
    state of its kind is there, else boot it (and save its state for the next ones)."""
    if cache is None or not restorable(guest.machine):
        return _boot(guest, timeout)
    key = state_key(guest.machine.argv(-1, -1), extra_key, qemu_command(guest.machine.spec.qemu))
    outcome: StartReport | str | None = None
    found = cache.lookup(key)
    if found is not None:
        outcome = _restore(guest, cache, key, found)
        if isinstance(outcome, StartReport):
            return outcome
    try:
        with cache.building(key, timeout=2 * timeout + LOAD_TIMEOUT):
            found = cache.lookup(key)  # built by another process while we waited
            if found is not None and outcome is None:
                outcome = _restore(guest, cache, key, found)
                if isinstance(outcome, StartReport):
                    return outcome
            report = _boot_and_save(guest, cache, key, timeout)
    except MachineError as error:
        if guest.machine.process is not None:
            raise
        report = _boot(guest, timeout)
        report.warning = f"hil: {guest.machine.name}: no saved state ({error}): booted"
    if isinstance(outcome, str):
        report.warning = outcome
    return report


def restorable(machine: Machine) -> bool:
    """Only plain guests (SSH, booting, no migration) have a ready state worth saving."""
    return machine.spec.ssh and machine.spec.incoming is None and machine.process is None


def _boot(guest: Guest, timeout: float) -> StartReport:
    guest.boot(timeout)
    return StartReport("boot", guest.boot_times.to_ssh)


def _boot_and_save(guest: Guest, cache: StateCache, key: StateKey, timeout: float) -> StartReport:
    planned = guest.machine  # never started: dropped unused, as its files get reused
    ram = cache.scratch(key, "running")  # this guest's RAM, copied into the template at save
    guest.machine = Machine(
        with_ram_file(planned.spec, ram, share=True),
        planned.workdir,
        planned.name,
        planned.timeouts,
    )
    try:
        report = _boot(guest, timeout)
        report.key = key.short
        agent = AgentClient(guest, transport="tcp").start()  # starts the daemon over SSH
        agent.disconnect()
        assert guest.ssh is not None
        guest.ssh.close()
        guest.ssh = None
        guest.run(_SETTLE_CONNECTIONS, timeout=15, channel="serial")
        meta = {"kernel_release": guest.kernel_release, "created": time.time()}
        try:
            cache.publish(key, lambda tmps: _save(guest.machine, tmps, ram, report), meta)
        except (MachineError, OSError) as error:
            if not guest.machine.running:
                raise
            # e.g. a full disk: this guest runs on (save_state resumed it), later ones boot
            report.warning = f"hil: {guest.machine.name}: state {key.short} not saved: {error}"
            report.save_seconds = None
    finally:
        ram.unlink(missing_ok=True)  # QEMU keeps its mapping; the name must not outlive us
    _resumed(guest)  # its clock stood still during the save, too
    return report


def _save(machine: Machine, tmps: dict[str, Path], ram: Path, report: StartReport) -> None:
    stats = save_state(machine, tmps["state"], ram, tmps["ram"])
    report.save_seconds, report.save_bytes = stats.seconds, stats.bytes


def _restore(
    guest: Guest, cache: StateCache, key: StateKey, found: CachedState
) -> StartReport | str:
    """A restored guest; or, for a state that did not work, the reason (the state deleted,
    `guest.machine` a fresh unstarted machine of the same name, the failed one's logs kept)."""
    planned = guest.machine  # never started: dropped unused, as its files get reused
    machine = Machine(
        restore_spec(planned.spec, found.paths["ram"]),
        planned.workdir,
        planned.name,
        planned.timeouts,
    )
    guest.machine = machine
    try:
        machine.start()
        finish_restore(machine, found.paths["state"], LOAD_TIMEOUT)
        _resumed(guest)
    except (MachineError, AgentError) as error:
        reason = error.reason if isinstance(error, StateRefused) else str(error)
        machine.shutdown()
        _keep_logs(machine, "refused")
        cache.discard(key)
        warning = (
            f"hil: {machine.name}: saved state {key.short} could not be used ({reason}): "
            "deleted it, booting instead"
        )
        guest.machine = Machine(planned.spec, planned.workdir, planned.name, planned.timeouts)
        return warning
    guest.kernel_release = found.meta.get("kernel_release")
    seconds = time.monotonic() - (machine.spawned_at or time.monotonic())
    guest.boot_times.to_ready_marker = guest.boot_times.to_ssh = seconds
    return StartReport("restore", seconds, key.short)


def _resumed(guest: Guest) -> None:
    """Ready = the agent answers over TCP; the probe is the `resumed` op, which gives the
    guest the host's clock and fresh entropy (one round trip)."""
    agent = AgentClient(guest, start_timeout=AGENT_READY_TIMEOUT, transport="tcp")
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    while True:
        args = {"time": time.time(), "entropy": base64.b64encode(os.urandom(64)).decode()}
        reply = agent.open_direct(AGENT_READY_TIMEOUT, "resumed", args)
        if reply is not None:
            break
        if time.monotonic() > deadline:
            raise MachineError(
                f"the guest agent did not answer on its TCP forward within "
                f"{AGENT_READY_TIMEOUT:.0f} s of the restore"
            )
        time.sleep(0.01)  # the forward refused: the guest has not run far enough yet
    agent.disconnect()
    reply_result(reply, "resumed")


def _keep_logs(machine: Machine, suffix: str) -> None:
    """Keep a failed start's transcripts beside the next attempt's (same machine name)."""
    for path in (machine.qmp_log, machine.console_log, machine.stderr_log):
        if path.exists():
            path.rename(path.with_name(f"{path.name}.{suffix}"))
    cmdline = machine.workdir / f"{machine.name}.cmdline"
    if cmdline.exists():
        cmdline.rename(cmdline.with_name(f"{cmdline.name}.{suffix}"))
