"""A booted guest as tests see it: one `run()` over SSH or serial, ready only when both work."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.guest.ssh import SshChannel
from harness.machine.accel import AccelChoice, choose_accel
from harness.machine.console import CommandResult, Console
from harness.machine.qemu import Machine, MachineSpec

if TYPE_CHECKING:
    from harness.images.builder import GuestImage

Channel = Literal["ssh", "serial"]
log = logging.getLogger("hil.guest")
READY_MARKER = r"HIL-READY kernel=(\S+)\r?\n"  # whole line: a half-arrived line must not match


@dataclass(frozen=True)
class Credentials:
    """What the image build produced for reaching the guest."""

    client_key: str
    host_public_key: str

    @classmethod
    def of(cls, image: GuestImage) -> Credentials:
        return cls(str(image.client_key), image.host_public_key)


@dataclass(frozen=True)
class ImageGuests:
    """Guests of one built image on one accelerator, for the tools that boot outside pytest
    (``python -m harness smoke``, the bench, the soak); the plugin has its own GuestFactory."""

    image: GuestImage
    choice: AccelChoice

    qemu: str = "qemu-system-x86_64"

    @classmethod
    def auto(cls, image: GuestImage, qemu: str = "qemu-system-x86_64") -> ImageGuests:
        """KVM where a probe boot of ``image`` on ``qemu`` (a --hil-qemu spec) works, else TCG
        (``choice`` says why)."""
        return cls(image, choose_accel("auto", qemu, image.kernel, image.initramfs), qemu)

    def guest(self, workdir: Path, name: str, **spec: Any) -> Guest:
        """A guest (not booted yet) working in ``workdir``; ``spec``: more MachineSpec fields."""
        image = self.image
        fields = {"qemu": self.qemu, **spec}  # a migration step may name the destination's QEMU
        machine = MachineSpec(
            image.kernel, image.initramfs, image.cmdline, accel=self.choice.accel, **fields
        )
        return Guest(Machine(machine, workdir, name), Credentials.of(image))


@dataclass
class BootTimes:
    to_ready_marker: float = 0.0
    to_ssh: float = 0.0


class Guest:
    def __init__(self, machine: Machine, credentials: Credentials) -> None:
        self.machine = machine
        self.credentials = credentials
        self.ssh: SshChannel | None = None
        self.kernel_release: str | None = None
        self.boot_times = BootTimes()

    @property
    def serial(self) -> Console:
        assert self.machine.console is not None, "guest not started"
        return self.machine.console

    def boot(self, timeout: float = 120) -> Guest:
        """Start QEMU and wait for the ready marker, then for SSH (both bounded by `timeout`)."""
        started = time.monotonic()
        self.machine.start()
        self.wait_ready(timeout, started)
        return self

    def wait_ready(self, timeout: float, started: float | None = None) -> None:
        started = started if started is not None else time.monotonic()
        match = self.machine.wait_for_console(READY_MARKER, timeout, "the guest's ready marker")
        self.kernel_release = match.group(1)
        self.boot_times.to_ready_marker = time.monotonic() - started
        self.connect_ssh(max(5.0, timeout - (time.monotonic() - started)))
        self.boot_times.to_ssh = time.monotonic() - started
        log.info(
            "%s: guest ready: kernel %s, ready marker after %.1f s, SSH after %.1f s",
            self.machine.name,
            self.kernel_release,
            self.boot_times.to_ready_marker,
            self.boot_times.to_ssh,
        )

    def connect_ssh(self, timeout: float) -> None:
        assert self.machine.ssh_port is not None, "machine started without SSH forwarding"
        if self.ssh is not None:
            self.ssh.close()
        self.ssh = SshChannel(
            self.machine.ssh_port, self.credentials.client_key, self.credentials.host_public_key
        )
        self.ssh.connect(timeout)

    def run(self, command: str, timeout: float = 30, channel: Channel = "ssh") -> CommandResult:
        if channel == "serial":
            return self.serial.run(command, timeout)
        if self.ssh is None or not self.ssh.connected:
            # a guest restored from a saved state connects SSH on first use, and a session
            # that was dropped (ssh_drop, a network hiccup) is reopened the same way
            self.connect_ssh(max(timeout, 30.0))
        assert self.ssh is not None
        return self.ssh.run(command, timeout)

    def shutdown(self) -> str:
        if self.ssh is not None:
            self.ssh.close()
        return self.machine.shutdown()
