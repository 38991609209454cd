"""Starting QEMU so that it can never outlive us, and stopping it by escalation.

Three layers make sure no QEMU is left behind: PR_SET_PDEATHSIG(SIGKILL) in the child (the kernel
kills QEMU when the launching thread dies, even if pytest is SIGKILLed), a session of its own (a
Ctrl-C meant for pytest does not kill QEMU mid-teardown, pytest's finalizers shut it down in
order), and a weakref finalizer on the Python object for the paths in between.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import weakref
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the forked child before exec; only async-signal-safe work here."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent already died between fork and prctl
        os._exit(1)


def spawn(
    argv: Sequence[str], stderr_path: Path, pass_fds: Sequence[int]
) -> subprocess.Popen[bytes]:
    """Start `argv` tied to this process's life.

    PDEATHSIG fires when the *thread* that forked exits, so QEMU must be started from a thread
    that lives as long as the machine (the test's main thread does).
    """
    parent = os.getpid()
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=lambda: _die_with_parent(parent),
        )
    return process


def kill_on_collect(
    owner: object, process: subprocess.Popen[bytes]
) -> weakref.finalize[[subprocess.Popen[bytes]], object]:
    """Kill `process` when `owner` is garbage-collected or the interpreter exits."""
    return weakref.finalize(owner, kill_quietly, process)


def kill_quietly(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def terminate(process: subprocess.Popen[bytes], term_timeout: float, kill_timeout: float) -> str:
    """SIGTERM, then SIGKILL; returns how the process ended (for the transcript)."""
    if process.poll() is not None:
        return f"already exited ({process.returncode})"
    process.terminate()
    try:
        process.wait(timeout=term_timeout)
        how = "SIGTERM"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=kill_timeout)
        how = "SIGKILL"
    return how
