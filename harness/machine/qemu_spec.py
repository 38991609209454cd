"""A QEMU spec as the machine layer runs it: its command, its version, its machine types.

Everything here is asked once per process and spec (functools.cache): resolving a
`debian:SUITE/PACKAGE` spec may fetch and unpack it the first time (cached on disk), and
`--version` / `-machine help` are a process start each.
"""

from __future__ import annotations

import functools
import re
import subprocess

from harness.images.builder import default_cache_dir
from harness.images.errors import ImageBuildError
from harness.images.qemu_pkg import QemuCommand, parse_qemu_spec, prepare_qemu
from harness.machine.errors import MachineError

#: The machine family the harness boots; `-machine help` names its versioned types
#: (pc-i440fx-7.2, pc-i440fx-10.0) and which one the alias points to on each QEMU.
MACHINE_ALIAS = "pc"
_ALIAS_LINE = re.compile(rf"^{MACHINE_ALIAS}\s+.*\(alias of (\S+?)\)", re.MULTILINE)


@functools.cache
def qemu_command(spec: str) -> QemuCommand:
    """How to run the QEMU named by `spec` (see qemu_pkg.QEMU_SPEC_FORMS)."""
    try:
        return prepare_qemu(parse_qemu_spec(spec), default_cache_dir())
    except ImageBuildError as error:
        raise MachineError(f"QEMU {spec}: {error}") from None


def run_command(
    command: QemuCommand, args: list[str], timeout: float, failed: str
) -> subprocess.CompletedProcess[str]:
    """QEMU run as `command` runs it (its loader, libraries, environment), output captured;
    one that cannot start or outlives `timeout` is a MachineError saying `failed`."""
    try:
        return subprocess.run(
            [*command.argv, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=command.environment(),
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MachineError(f"{failed}: {error}") from None


def _run(spec: str, *args: str) -> str:
    result = run_command(
        qemu_command(spec), list(args), 60, f"QEMU {spec}: {' '.join(args)} failed"
    )
    if result.returncode != 0:
        raise MachineError(
            f"QEMU {spec}: {' '.join(args)} exited {result.returncode}: "
            f"{result.stderr.strip()[-1000:]}"
        )
    return result.stdout


@functools.cache
def qemu_version(spec: str) -> str:
    """`QEMU emulator version X` -> "X" (e.g. "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)")."""
    first = (_run(spec, "--version").splitlines() or ["unknown"])[0]
    return first.removeprefix("QEMU emulator version ").strip()


@functools.cache
def machine_types(spec: str) -> tuple[str, ...]:
    """Every machine type this QEMU offers (`-machine help`, first column)."""
    return tuple(
        line.split()[0]
        for line in _run(spec, "-machine", "help").splitlines()[1:]
        if line.strip() and not line.startswith(" ")
    )


@functools.cache
def default_machine_type(spec: str) -> str:
    """The versioned type `pc` stands for on this QEMU (pc-i440fx-7.2 on Debian 12's 7.2).

    Why versioned: a guest started on `pc` of one QEMU can only move to a QEMU that offers
    the same versioned type; naming it on both ends is what makes cross-version migration
    well defined (the newer QEMU keeps the older type's device layout and defaults).
    """
    found = _ALIAS_LINE.search(_run(spec, "-machine", "help"))
    if found is None:
        raise MachineError(f"QEMU {spec}: `-machine help` names no alias {MACHINE_ALIAS!r}")
    return found[1]
