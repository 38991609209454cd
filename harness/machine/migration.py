"""Migrating a guest between two QEMU processes of this host, over QMP.

Three modes: `live` (the guest keeps running), `paused` (stop, migrate, cont) and `file` (save
to a file, restore from it: also the base of fast start from a booted snapshot).

Two capabilities make the result judgeable: `return-path`, so that a destination that refuses
the stream (different ports, bitmap mismatch) fails the migration on the *source*, which then
keeps running; and `pause-before-switchover`, which stops at the point where the guest is
already paused but device state is not yet saved, so the host side can quiesce its sockets
(see QemuSystem.migrate) before the chardevs change hands.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from harness.machine.errors import MachineError
from harness.machine.qemu import Machine
from harness.machine.qmp import QmpSession
from harness.machine.relay import MigrationRelay, feed_file
from harness.machine.wire import DeviceState, Section, read_stream_file

log = logging.getLogger("hil.machine")

Mode = Literal["live", "paused", "file"]
MODES: tuple[Mode, ...] = ("live", "paused", "file")


class MigrationRefused(MachineError):
    """The migration failed; `text` is QEMU's reason (destination stderr or query-migrate)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class MigrationStats:
    mode: Mode
    total_ms: int | None
    downtime_ms: int | None
    transferred_bytes: int | None
    wall_seconds: float
    stream: Path | None = None  # the migration stream as a file (mode file)
    #: the stream's virtio-serial sections (every mode: the file, or what the relay copied)
    sections: tuple[Section, ...] | None = None
    wire_error: str | None = None  # why `sections` is empty (the wire check fails with it)
    wire: dict[str, DeviceState] | None = None  # their state by controller id (the backend's)


def migration_uri(mode: Mode, workdir: Path) -> tuple[str, str]:
    """(source uri, destination uri) for a mode; a socket mode's source goes to the relay."""
    if mode == "file":
        image = workdir / MIGRATION_FILE  # MigrationStats.stream names it
        return f"exec:cat > {image}", f"unix:{workdir / INCOMING_SOCKET}"  # relay.feed_file
    return f"unix:{workdir / RELAY_SOCKET}", f"unix:{workdir / INCOMING_SOCKET}"


#: The harness's end of a socket migration (machine.relay), next to the destination's.
RELAY_SOCKET = "relay.sock"
#: A file migration's stream, in the destination's work directory.
MIGRATION_FILE = "migration.state"
#: The destination's incoming socket: the relay's far end, or where a file is fed from.
INCOMING_SOCKET = "migration.sock"
#: How long the relay may still copy once QEMU reported the migration's end.
RELAY_FINISH_TIMEOUT = 30.0


def _set_capabilities(qmp: QmpSession, names: dict[str, bool]) -> None:
    qmp.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": k, "state": v} for k, v in names.items()]},
    )


def migrate(
    source: Machine,
    destination: Machine,
    mode: Mode,
    workdir: Path,
    at_switchover: Callable[[], None],
    timeout: float = 300,
    pause_mid_section: float = 0.0,
) -> MigrationStats:
    """Move the guest from `source` to `destination` (started with `incoming="defer"`).

    `at_switchover` runs while both are paused, before device state is saved. On failure the
    source is running again and MigrationRefused carries QEMU's reason.
    `pause_mid_section`: a gap in the stream inside the virtio-serial section (machine.relay;
    the README finding's test)."""
    assert source.qmp is not None and destination.qmp is not None
    started = time.monotonic()
    source_uri, destination_uri = migration_uri(mode, workdir)
    incoming = Path(destination_uri.removeprefix("unix:"))
    relay = None
    feed = None
    if mode == "file":  # the harness feeds the file: `exec:cat`'s pipe may run dry
        feed = partial(feed_file, workdir / MIGRATION_FILE, incoming, timeout, pause_mid_section)
    else:  # the harness owns the channel: the wire is read on its way
        relay = MigrationRelay(
            Path(source_uri.removeprefix("unix:")), incoming, timeout, pause_mid_section
        )
    try:
        uris = (relay.uri if relay is not None else source_uri, destination_uri)
        info = _run(source, destination, mode, uris, relay, at_switchover, timeout, feed)
        sections, wire_error = _sections(relay, workdir / MIGRATION_FILE)
    finally:
        if relay is not None:
            relay.close()
    stats = MigrationStats(
        mode,
        info.get("total-time"),
        info.get("downtime"),
        (info.get("ram") or {}).get("transferred"),
        time.monotonic() - started,
        workdir / MIGRATION_FILE if mode == "file" else None,
        tuple(sections),
        wire_error,
    )
    log.info("%s -> %s: migration done: %s", source.name, destination.name, stats)
    return stats


def _sections(relay: MigrationRelay | None, stream: Path) -> tuple[list[Section], str | None]:
    """The virtio-serial sections the stream carried and, if none, why. Not raised here: the
    guest has moved, so the caller hands it over first and then fails the wire check."""
    try:
        sections = relay.finish(RELAY_FINISH_TIMEOUT) if relay else read_stream_file(stream)
    except MachineError as error:
        return [], str(error)
    if not sections:
        return [], f"{relay.uri if relay else stream}: no virtio-console section in the stream"
    return sections, None


def _run(
    source: Machine,
    destination: Machine,
    mode: Mode,
    uris: tuple[str, str],
    relay: MigrationRelay | None,
    at_switchover: Callable[[], None],
    timeout: float,
    feed: Callable[[], object] | None,
) -> dict[str, Any]:
    """The QMP side of `migrate`: query-migrate's answer once both ends are done."""
    assert source.qmp is not None and destination.qmp is not None
    source_uri, destination_uri = uris
    live = mode == "live"
    # `events`: MIGRATION status events are only sent with it (QEMU 7.2 and 10.0 alike).
    capabilities = {"events": True, "return-path": mode != "file", "pause-before-switchover": live}
    _set_capabilities(destination.qmp, {"events": True, "return-path": mode != "file"})
    if mode != "file":  # a file is read only once it is complete
        destination.qmp.execute("migrate-incoming", {"uri": destination_uri})
    _set_capabilities(source.qmp, capabilities)
    if relay is not None:  # listening before the source connects
        relay.start()
    if not live:
        source.qmp.execute("stop")
        at_switchover()  # before `migrate`: the device state may be saved right away
    mark = len(source.qmp.events)
    source.qmp.execute("migrate", {"uri": source_uri})
    if live:
        _await_status(source, ("pre-switchover", "failed"), timeout, mark)
        if _status(source) == "pre-switchover":
            at_switchover()
            source.qmp.execute("migrate-continue", {"state": "pre-switchover"})
    _await_status(source, ("completed", "failed", "cancelled"), timeout, mark)
    info = source.qmp.execute("query-migrate")
    if info.get("status") != "completed":
        _keep_source_running(source)
        raise MigrationRefused(_failure_text(info, destination))
    if feed is not None:  # a file is read only once it is complete
        destination.qmp.execute("migrate-incoming", {"uri": destination_uri})
        feed()
    try:
        _await_destination(destination, timeout)
    except MigrationRefused:
        _keep_source_running(source)  # file mode: the source finished; the load failed later
        raise
    destination.qmp.execute("cont")
    return dict(info)


def _keep_source_running(source: Machine) -> None:
    """A refused migration must leave the guest running where it was (QEMU restarts a live
    source itself; a source we stopped, or one that finished a file save, needs `cont`)."""
    assert source.qmp is not None
    if source.qmp.execute("query-status").get("status") != "running":
        source.qmp.execute("cont")


def _status(machine: Machine) -> str:
    assert machine.qmp is not None
    return str(machine.qmp.execute("query-migrate").get("status", ""))


def _await_status(machine: Machine, wanted: tuple[str, ...], timeout: float, after: int) -> None:
    """MIGRATION events carry the status; query-migrate covers an event we raced."""
    assert machine.qmp is not None
    if _status(machine) in wanted:
        return
    machine.qmp.wait_event(
        "MIGRATION",
        timeout,
        where=lambda e: e.data.get("status") in wanted,
        after=after,
        what=f"with status {'/'.join(wanted)} on {machine.name}",
    )


def _await_destination(destination: Machine, timeout: float) -> None:
    """The destination has loaded everything when it leaves the `inmigrate` run state."""
    assert destination.qmp is not None
    deadline = time.monotonic() + timeout
    while True:
        status = destination.qmp.execute("query-status")
        if status.get("status") not in ("inmigrate", "prelaunch"):
            if status.get("status") not in ("paused", "running", "postmigrate"):
                raise MigrationRefused(_destination_error(destination, status.get("status")))
            return
        if not destination.running:
            raise MigrationRefused(_destination_error(destination, "exited"))
        if time.monotonic() > deadline:
            raise MachineError(f"destination still {status.get('status')} after {timeout:.0f} s")
        time.sleep(0.05)  # no event marks the end of an incoming load on every version


#: How long a destination that refused the stream may take to print its reasons and exit.
DESTINATION_EXIT_TIMEOUT = 10.0


def _failure_text(info: dict[str, object], destination: Machine) -> str:
    """The source's reason and the destination's own words. Why wait for the destination to
    exit first: with return-path, 10.0's source reports the failure ("Sibling indicated
    error 1") before the destination has printed its last line ("load of migration failed:
    Invalid argument"), which a read right away would miss."""
    reason = str(info.get("error-desc") or "")
    if destination.process is not None:
        try:
            destination.process.wait(timeout=DESTINATION_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.info("destination still running %.0f s after the failure", DESTINATION_EXIT_TIMEOUT)
    stderr = _destination_error(destination, "")
    return "; ".join(part for part in (reason, stderr) if part) or "migration failed"


def _destination_error(destination: Machine, state: object) -> str:
    log = destination.stderr_log
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    lines = [ln.removeprefix("qemu-system-x86_64: ") for ln in text.splitlines() if ln.strip()]
    return " / ".join(lines[-3:]) or f"destination state {state}"
