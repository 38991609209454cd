"""One QEMU process: its command line, start (-S, then `cont`), transcripts and shutdown.

QMP and the serial console both run over socketpairs created before QEMU starts (QEMU gets one
end as `fd=`): no path races, nothing QEMU prints before we connect is lost, and QEMU cannot
outlive the sockets' owner unnoticed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.machine.affinity import Pinning, pin_vcpus
from harness.machine.console import Console
from harness.machine.errors import MachineError, QmpError, WaitTimeout
from harness.machine.process import kill_on_collect, spawn, terminate
from harness.machine.qemu_spec import default_machine_type, qemu_command
from harness.machine.qmp import QmpSession, Transcript

log = logging.getLogger("hil.machine")

Accel = Literal["kvm", "tcg"]
KVM_CPU = "host,-arch-capabilities"  # plain `host` fails on some nested hypervisors (MSR 0x10a)
RAM_BACKEND_ID = "hil-ram"  # one RAM block name for every guest, so any two can migrate
GUEST_AGENT_PORT = 7011  # the guest agent's TCP listener (hil_agent.TCP_ADDRESS)


def _usernet_forward(guest_port: int) -> re.Pattern[str]:
    return re.compile(
        rf"TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+10\.0\.2\.15\s+{guest_port}\b"
    )


_USERNET_PORT = _usernet_forward(22)
_USERNET_AGENT_PORT = _usernet_forward(GUEST_AGENT_PORT)


@dataclass(frozen=True)
class ControllerSpec:
    id: str
    max_ports: int = 31
    addr: str | None = None  # PCI slot; pinned on migration destinations


@dataclass(frozen=True)
class PortSpec:
    """A port. `chardev_path` None means no chardev (backend: none). `ident` names the QEMU
    device (and its chardev); give each plug its own, so that plugging a duplicate name reaches
    virtio-serial's own check instead of failing earlier on a duplicate QEMU id."""

    name: str
    controller: str
    nr: int | None = None
    console: bool = False
    chardev_path: Path | None = None
    ident: str = ""

    @property
    def device_id(self) -> str:
        return self.ident or port_device_id(self.name)

    @property
    def chardev_id(self) -> str:
        return f"ch-{self.device_id}"


def port_device_id(name: str) -> str:
    """A QEMU device id for a port name (ids allow fewer characters than port names)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if cleaned != name or not name[:1].isalpha():
        cleaned = f"{cleaned}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    return f"port-{cleaned}"


def ram_backend(spec: MachineSpec) -> str:
    """The guest RAM's memory backend: anonymous, or a file (see MachineSpec.ram_file)."""
    size = f"id={RAM_BACKEND_ID},size={spec.memory_mib}M"
    if spec.ram_file is None:
        return f"memory-backend-ram,{size}"
    share = "on" if spec.ram_file_shared else "off"
    return f"memory-backend-file,{size},mem-path={spec.ram_file},share={share}"


def port_chardev_args(port: PortSpec) -> list[str]:
    """-chardev/-device arguments for a boot-time port (same properties as hotplug uses)."""
    args: list[str] = []
    props = [f"bus={port.controller}.0", f"name={port.name}", f"id={port.device_id}"]
    if port.nr is not None:
        props.append(f"nr={port.nr}")
    if port.chardev_path is not None:
        args += [
            "-chardev",
            f"socket,id={port.chardev_id},path={port.chardev_path},server=on,wait=off",
        ]
        props.append(f"chardev={port.chardev_id}")
    driver = "virtconsole" if port.console else "virtserialport"
    return [*args, "-device", ",".join([driver, *props])]


@dataclass
class MachineSpec:
    kernel: Path
    initrd: Path
    cmdline: str
    accel: Accel = "tcg"
    qemu: str = "qemu-system-x86_64"  # a QEMU spec (qemu_pkg.QEMU_SPEC_FORMS)
    machine_type: str | None = None  # None: the versioned type `pc` is on this QEMU
    memory_mib: int = 512
    cpus: int = 1
    controllers: list[ControllerSpec] = field(default_factory=list)
    ports: list[PortSpec] = field(default_factory=list)
    ssh: bool = True
    incoming: str | None = None  # e.g. "unix:/path" or "defer": start waiting for a migration
    ram_file: Path | None = None  # guest RAM in this file (fast start); None: anonymous memory
    ram_file_shared: bool = False  # share=on: the file is the RAM; off: a private COW template
    extra_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Timeouts:
    qmp_greeting: float = 15
    first_console_output: float = 20  # a real kernel prints within ~1 s; silence = not booting
    quit: float = 10
    term: float = 5
    kill: float = 5


class Machine:
    """A running QEMU: `qmp`, `console`, `ssh_port`, and the files it leaves in `workdir`."""

    def __init__(
        self, spec: MachineSpec, workdir: Path, name: str = "guest", timeouts: Timeouts = Timeouts()
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.name = name
        self.timeouts = timeouts
        self.process: subprocess.Popen[bytes] | None = None
        self.qmp: QmpSession | None = None
        self.console: Console | None = None
        self.ssh_port: int | None = None
        self.agent_port: int | None = None  # host end of the guest agent's TCP forward
        self.qemu_version: dict[str, Any] = {}
        self.started_at: float | None = None
        self.spawned_at: float | None = None  # monotonic time QEMU was executed
        workdir.mkdir(parents=True, exist_ok=True)
        self.qmp_log = workdir / f"{name}.qmp.jsonl"
        self.console_log = workdir / f"{name}.console.log"
        self.stderr_log = workdir / f"{name}.qemu.stderr"
        self._transcript = Transcript(self.qmp_log)
        self._shutdown_result: str | None = None

    # -- start ---------------------------------------------------------------------------

    def argv(self, qmp_fd: int, console_fd: int) -> list[str]:
        spec = self.spec
        argv = [
            *qemu_command(spec.qemu).argv,
            "-S",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-machine",
            f"{self.machine_type},memory-backend={RAM_BACKEND_ID}",
            "-object",
            ram_backend(spec),
            "-accel",
            spec.accel,
            "-m",
            str(spec.memory_mib),
            "-smp",
            str(spec.cpus),
            "-name",
            # thread names ("CPU 0/TCG", ...) for debugging and for pin_vcpus
            f"{self.name.replace(',', ',,')},debug-threads=on",
            "-kernel",
            str(spec.kernel),
            "-initrd",
            str(spec.initrd),
            "-append",
            spec.cmdline,
            "-chardev",
            f"socket,id=qmp,fd={qmp_fd}",
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            f"socket,id=console,fd={console_fd}",
            "-serial",
            "chardev:console",
        ]
        if spec.accel == "kvm":
            argv += ["-cpu", KVM_CPU]
        if spec.ssh:
            argv += [
                "-netdev",
                "user,id=net0,hostfwd=tcp:127.0.0.1:0-:22,"
                f"hostfwd=tcp:127.0.0.1:0-10.0.2.15:{GUEST_AGENT_PORT}",
                "-device",
                "virtio-net-pci,netdev=net0,romfile=",
            ]
        for controller in spec.controllers:
            device = f"virtio-serial-pci,id={controller.id},max_ports={controller.max_ports}"
            argv += ["-device", device + (f",addr={controller.addr}" if controller.addr else "")]
        for port in spec.ports:
            argv += port_chardev_args(port)
        if spec.incoming:
            argv += ["-incoming", spec.incoming]
        return [*argv, *spec.extra_args]

    def start(self) -> None:
        """Start QEMU paused, attach QMP and the console, then let it run (unless incoming)."""
        self._check_files()
        qmp_ours, qmp_theirs = socket.socketpair()
        console_ours, console_theirs = socket.socketpair()
        argv = self.argv(qmp_theirs.fileno(), console_theirs.fileno())
        (self.workdir / f"{self.name}.cmdline").write_text(" ".join(argv) + "\n")
        log.info("%s: starting QEMU: %s", self.name, shlex.join(argv))
        self.spawned_at = time.monotonic()
        try:
            self.process = spawn(
                argv,
                self.stderr_log,
                [qmp_theirs.fileno(), console_theirs.fileno()],
                qemu_command(self.spec.qemu).environment(),
            )
        except OSError as error:
            raise MachineError(f"could not execute {argv[0]}: {error}") from error
        finally:
            qmp_theirs.close()
            console_theirs.close()
        self._finalizer = kill_on_collect(self, self.process)
        self.console = Console(self.name, console_ours, self.console_log)
        self.qmp = QmpSession(self.name, self._transcript)
        try:
            self.qemu_version = self.qmp.connect(qmp_ours, self.timeouts.qmp_greeting)
        except MachineError as error:
            raise self._startup_failure(str(error)) from None
        if self.spec.ssh:
            self.ssh_port, self.agent_port = self._forwarded_ports()
        if not self.spec.incoming:
            self.resume()

    def resume(self) -> None:
        assert self.qmp is not None
        self.qmp.execute("cont")
        self.started_at = time.monotonic()

    def wait_for_first_output(self) -> None:
        """A kernel that never prints is not booting: fail in seconds, not at the test timeout."""
        assert self.console is not None
        try:
            self.console.wait_for(
                r"\S", self.timeouts.first_console_output, "the first kernel output"
            )
        except WaitTimeout:
            if self.process is not None and self.process.poll() is not None:
                raise self._startup_failure(
                    "QEMU exited before the guest printed anything"
                ) from None
            raise MachineError(
                f"{self.name}: nothing reached the serial console within "
                f"{self.timeouts.first_console_output:.0f} s of starting the guest "
                f"({self.spec.accel}): "
                f"the kernel did not start. Is {self.spec.kernel} a kernel for this machine? "
                "(with accel kvm, a nested hypervisor may hang the boot: try --hil-accel=tcg)"
            ) from None

    def wait_for_console(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        """Wait for `pattern` on the console, failing early if QEMU exits."""
        assert self.console is not None
        self.wait_for_first_output()
        try:
            return self.console.wait_for(pattern, timeout, what)
        except WaitTimeout:
            if self.process is not None and self.process.poll() is not None:
                raise self._startup_failure(f"QEMU exited while waiting for {what}") from None
            raise

    @property
    def machine_type(self) -> str:
        """The versioned machine type this guest runs (a migration destination takes it)."""
        return self.spec.machine_type or default_machine_type(self.spec.qemu)

    def _check_files(self) -> None:
        for what, path in (("kernel", self.spec.kernel), ("initrd", self.spec.initrd)):
            if not Path(path).is_file():
                raise MachineError(
                    f"{what} {path} does not exist: check --hil-kernel / --hil-image"
                )

    def _startup_failure(self, reason: str) -> MachineError:
        assert self.process is not None
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
            terminate(self.process, self.timeouts.term, self.timeouts.kill)
        stderr = self.stderr_log.read_text(errors="replace").strip()
        return MachineError(
            f"{self.name}: QEMU failed to start ({reason}); exit code {code}; "
            f"stderr: {stderr or '(empty)'}"
        )

    def _forwarded_ports(self) -> tuple[int, int | None]:
        """(SSH, guest agent) host ports of the user-net forwards (ephemeral, per QEMU)."""
        assert self.qmp is not None
        usernet = self.qmp.hmp("info usernet")
        match = _USERNET_PORT.search(usernet)
        if match is None:
            raise MachineError(f"{self.name}: no SSH host forward in `info usernet`:\n{usernet}")
        agent = _USERNET_AGENT_PORT.search(usernet)
        return int(match.group(1)), int(agent.group(1)) if agent else None

    def pin_vcpus(self) -> Pinning:
        """Give the running guest's vCPU threads cores of their own (see affinity)."""
        if self.process is None or not self.running:
            raise MachineError(f"{self.name}: QEMU is not running, nothing to pin")
        return pin_vcpus(self.process.pid)

    # -- stop ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def shutdown(self) -> str:
        """QMP quit, then SIGTERM, then SIGKILL, each bounded; returns how QEMU ended."""
        if self._shutdown_result is not None:
            return self._shutdown_result
        how = "not started"
        if self.process is not None:
            how = self._quit_or_escalate()
        if self.qmp is not None:
            self.qmp.close()
        if self.console is not None:
            self.console.close()
        self._transcript.record("shutdown", how)
        log.info("%s: QEMU stopped (%s)", self.name, how)
        self._transcript.close()
        self._shutdown_result = how
        return how

    def _quit_or_escalate(self) -> str:
        assert self.process is not None
        if self.process.poll() is not None:
            return f"exited by itself ({self.process.returncode})"
        if self.qmp is not None:
            try:
                self.qmp.execute("quit", timeout=self.timeouts.quit)
                self.process.wait(timeout=self.timeouts.quit)
                return "QMP quit"
            except (MachineError, QmpError, subprocess.TimeoutExpired):
                pass
        return terminate(self.process, self.timeouts.term, self.timeouts.kill)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
