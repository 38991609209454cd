"""The QEMU under test as the model sees it: which behaviour switches its version sets.

Like the kernel mapping (kernels.KERNEL_CHANGES), each entry is a QEMU change our steps can
observe, so the oracle predicts what *this* QEMU does.  Pure functions: the version string
comes from `qemu-system-x86_64 --version` (fixtures.qemu_version).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from harness.model import Behaviour
from harness.plugin.kernels import with_switches

Version = tuple[int, int, int]


@dataclass(frozen=True)
class QemuChange:
    """From `since` up to (not including) `until`, the model's `switch` takes `value`.
    `until` None: every later version too.  `evidence` says where the change comes from."""

    since: Version
    until: Version | None
    switch: str
    value: object
    evidence: str


#: Every virtqueue 1024 entries: QEMU 10.0.13's virtio_add_queue ignores the device's size.
_MAX_QUEUES = ((10, 0, 13), (10, 1, 0))
_MAX_QUEUES_EVIDENCE = (
    "virtio_add_queue sets vring.num = VIRTQUEUE_MAX_SIZE (1024) for every queue of every "
    "device in 10.0.13 (see control_rx_buffers); Linux fill_queue fills every slot"
)

#: Oldest first.  Versions outside every range keep the Behaviour defaults (Debian 12's 7.2).
QEMU_CHANGES: tuple[QemuChange, ...] = (
    QemuChange(
        *_MAX_QUEUES,
        "control_rx_buffers",
        1024,
        "QEMU 10.0.13 (stable; Debian 13's 1:10.0.13+ds-0+deb13u1) sets every virtqueue to "
        "VIRTQUEUE_MAX_SIZE in virtio_add_queue ('Always set to max queue size for qemu "
        "<11.1'; most likely the CVE-2026-50626 fix 'virtio-mmio: fix QUEUE_NUM_MAX'), so "
        "virtio-serial's control rx queue has 1024 entries instead of 32 and the guest "
        "prefills 1024 buffers. Observed: `info virtio-queue-status` queue 2 num 1024 on "
        "10.0.13, 32 on 7.2.22; scenario findings/lost_port_open_on_reboot loses PORT_OPEN "
        "for ports 8-24 on 7.2.22 and none on 10.0.13. Other stable branches unverified",
    ),
    QemuChange(*_MAX_QUEUES, "guest_outvq_buffers", 1024, _MAX_QUEUES_EVIDENCE),
    QemuChange(*_MAX_QUEUES, "guest_rx_capacity", 1024 * 4096, _MAX_QUEUES_EVIDENCE),
)


def qemu_version_tuple(version: str | None) -> Version | None:
    """(major, minor, micro) of a `--version` string such as "7.2.22 (Debian ...)"."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def behaviour_for_qemu(version: str | None, base: Behaviour | None = None) -> Behaviour:
    """The model switches for a QEMU version; an unknown version keeps the defaults."""
    found = qemu_version_tuple(version)
    changes = [c for c in QEMU_CHANGES if found is not None and _within(found, c)]
    return with_switches(base, ((c.switch, c.value) for c in changes))


def _within(version: Version, change: QemuChange | QemuBug) -> bool:
    return version >= change.since and (change.until is None or version < change.until)


@dataclass(frozen=True)
class QemuBug:
    """A QEMU bug a scenario demonstrates but that no model switch can predict (a race: it
    shows in some runs only, as whatever the lost memory held).  A scenario marked `mark`
    that fails at or after a `trigger` step (kind, mode) on a QEMU in [since, until) under
    `accel` is reported as xfail with `evidence`: after the trigger the guest's memory cannot
    be trusted.  A failure before it, or on another QEMU, still fails."""

    mark: str
    since: Version
    until: Version | None
    accel: str
    trigger: tuple[str, str]
    evidence: str

    def triggered_by(self, kind: str, args: dict[str, Any]) -> bool:
        from harness.scenario.steps import migration_mode

        return (kind, migration_mode(args)) == self.trigger


#: The known QEMU bugs, by the scenario mark that names them.
QEMU_BUGS: tuple[QemuBug, ...] = (
    QemuBug(
        "qemu_bug_tcg_migration_dirty",
        (0, 0, 0),
        (9, 0, 0),
        "tcg",
        ("migrate", "live"),
        "QEMU before 9.0 loses guest writes during a live migration under TCG: the fast path "
        "of cpu_physical_memory_sync_dirty_bitmap clears the migration dirty bits without "
        "tlb_reset_dirty_range_all, so stores through a TLB entry without TLB_NOTDIRTY are "
        "not tracked and the destination runs on stale pages (upstream fix 03bfc2188f "
        "'physmem: Fix migration dirty bitmap coherency with TCG memory access', 9.0-rc0; "
        "not in 7.2.x stable: Debian 12's 7.2.22 corrupts guest memory, 10.0.13 does not). "
        "README Findings, scenarios/findings/live_migration_tcg_corruption.yaml",
    ),
)


def known_qemu_bug(
    marks: list[str], version: str | None, accel: str | None, guest_kernel_reported: bool = False
) -> QemuBug | None:
    """The bug among `marks` that this QEMU version and accelerator have, if any.  With
    `guest_kernel_reported` (the failure is the guest kernel's own oops) every known bug
    counts, marked or not: guest RAM corrupted by QEMU shows first as exactly that."""
    if guest_kernel_reported:
        marks = [*marks, *(bug.mark for bug in QEMU_BUGS)]
    found = qemu_version_tuple(version)
    if found is None or accel is None:
        return None
    for bug in QEMU_BUGS:
        if bug.mark in marks and _within(found, bug) and accel == bug.accel:
            return bug
    return None
