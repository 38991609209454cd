"""CPU affinity: give a guest's vCPU threads cores of their own.

Why: under TCG the vCPU thread is the guest, and on a small host (our CI machines have two
cores) it shares the cores with QEMU's main loop (which moves port data between the chardev
sockets and the virtqueues) and with the harness's own endpoint threads.  Left to the scheduler,
which core the vCPU shares with whom changes from one transfer to the next, and with it the
result: 10 unpinned 128 MiB guest -> host pairs gave raw 230-516 MB/s (median 350).  Pinned
(vCPUs on the last cores, everything else on the rest), both halves of a raw/checked pair run on
the same layout and both ran faster (raw median 451); the host's own speed still varies.
QEMU names its threads only with ``-name ...,debug-threads=on`` (Machine passes it):
vCPU threads are ``CPU <n>/TCG`` or ``CPU <n>/KVM`` (``ALL CPUs/TCG`` without MTTCG).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from harness.machine.errors import MachineError

_VCPU_NAME = re.compile(r"^(CPU \d+|ALL CPUs)/")


@dataclass(frozen=True)
class Pinning:
    """Where a pinned QEMU's threads run: ``vcpus`` maps vCPU thread id -> core."""

    vcpus: dict[int, int]
    others: frozenset[int]

    def describe(self) -> str:
        cores = ",".join(str(core) for core in sorted(set(self.vcpus.values())))
        rest = ",".join(str(core) for core in sorted(self.others))
        return f"vCPU thread(s) on core(s) {cores}; QEMU's other threads and the harness on {rest}"


def thread_names(pid: int) -> dict[int, str]:
    """Thread id -> name (comm) of every thread of ``pid`` (threads that end meanwhile are
    left out)."""
    names = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{entry}/comm") as comm:
                names[int(entry)] = comm.read().strip()
        except FileNotFoundError:
            continue
    return names


def vcpu_threads(pid: int) -> list[int]:
    """The vCPU thread ids of QEMU process ``pid``, in vCPU order."""
    named = thread_names(pid)
    return sorted(
        (tid for tid, name in named.items() if _VCPU_NAME.match(name)), key=lambda t: named[t]
    )


def plan(vcpus: int, allowed: set[int]) -> tuple[list[int], frozenset[int]]:
    """(a core per vCPU, the cores for everything else) from ``allowed``: the vCPUs take the
    highest cores, at least one core stays for the rest.  MachineError if there are too few."""
    cores = sorted(allowed)
    if vcpus < 1 or len(cores) < vcpus + 1:
        raise MachineError(
            f"cannot give {vcpus} vCPU thread(s) cores of their own with {len(cores)} usable "
            f"core(s) ({cores}): run unpinned, or on a machine with more cores"
        )
    return cores[-vcpus:], frozenset(cores[:-vcpus])


def pin_vcpus(pid: int) -> Pinning:
    """Pin QEMU ``pid``'s vCPU threads to cores of their own and its other threads to the
    remaining cores this process may use.  Threads QEMU starts later inherit the main thread's
    (non-vCPU) cores."""
    vcpus = vcpu_threads(pid)
    if not vcpus:
        raise MachineError(
            f"QEMU (pid {pid}) has no thread named like a vCPU ('CPU 0/TCG'): was it started "
            "with -name ...,debug-threads=on?"
        )
    vcpu_cores, others = plan(len(vcpus), os.sched_getaffinity(0))
    for tid in thread_names(pid):
        if tid not in vcpus:
            os.sched_setaffinity(tid, others)
    for tid, core in zip(vcpus, vcpu_cores, strict=True):
        os.sched_setaffinity(tid, {core})
    return Pinning(dict(zip(vcpus, vcpu_cores, strict=True)), others)


@contextmanager
def confined(cores: frozenset[int]) -> Iterator[None]:
    """Run this process's threads (those alive now and those they start) on ``cores`` only,
    and restore each thread's previous cores afterwards."""
    me = os.getpid()
    before = {tid: os.sched_getaffinity(tid) for tid in thread_names(me)}
    for tid in before:
        os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        # threads started meanwhile inherited ``cores``: they get the process's old cores
        old = before.get(me, os.sched_getaffinity(0))
        for tid in thread_names(me):
            try:
                os.sched_setaffinity(tid, before.get(tid, old))
            except ProcessLookupError:  # that thread ended meanwhile
                continue


__all__ = ["Pinning", "confined", "pin_vcpus", "plan", "thread_names", "vcpu_threads"]
