"""Choosing KVM or TCG by evidence, not by the presence of /dev/kvm.

/dev/kvm can exist and still not boot a kernel (a nested hypervisor hangs silently after
"Probing EDD"). The probe boots the actual kernel under KVM and waits a few seconds for the
kernel's first line; anything else means TCG, announced once by the caller.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.machine.errors import MachineError
from harness.machine.qemu import Accel, Machine, MachineSpec, Timeouts

AccelRequest = Literal["auto", "kvm", "tcg"]
_KERNEL_BANNER = r"Linux version \d"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str

    def describe(self) -> str:
        return f"accel {self.accel}: {self.reason}"


def probe_kvm(qemu: str, kernel: Path, initrd: Path, timeout: float = 8) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    spec = MachineSpec(
        kernel=kernel,
        initrd=initrd,
        accel="kvm",
        qemu=qemu,
        memory_mib=256,
        ssh=False,
        cmdline="console=ttyS0,115200 earlyprintk=ttyS0,115200 panic=-1",
    )
    with tempfile.TemporaryDirectory(prefix="hil-kvm-probe-") as scratch:
        machine = Machine(spec, Path(scratch), "kvm-probe", Timeouts(first_console_output=timeout))
        try:
            machine.start()
            assert machine.console is not None
            machine.console.wait_for(_KERNEL_BANNER, timeout, "the kernel banner under KVM")
            return True, "KVM booted the kernel in the probe"
        except MachineError as error:
            first_line = str(error).splitlines()[0]
            return False, f"KVM probe failed: {first_line}"
        finally:
            machine.shutdown()


def choose_accel(request: AccelRequest, qemu: str, kernel: Path, initrd: Path) -> AccelChoice:
    if request == "tcg":
        return AccelChoice("tcg", "forced by --hil-accel=tcg")
    if request == "kvm":
        return AccelChoice("kvm", "forced by --hil-accel=kvm")
    usable, reason = probe_kvm(qemu, kernel, initrd)
    if usable:
        return AccelChoice("kvm", reason)
    return AccelChoice("tcg", f"KVM is not usable here ({reason}); falling back to TCG")
