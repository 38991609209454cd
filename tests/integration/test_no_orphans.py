"""Issue 2: QEMU dies with the test process, even when pytest is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.polling import wait_until

pytestmark = pytest.mark.qemu

INNER_TEST = """
import os
from pathlib import Path

def test_hold_a_live_guest(hil_guest):
    Path(os.environ["QEMU_PID_FILE"]).write_text(str(hil_guest.machine.process.pid))
    assert hil_guest.run("true").exit_code == 0
    os.read(os.open(os.environ["BLOCK_FIFO"], os.O_RDONLY), 1)  # blocks until killed
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for a reaper is dead for our purpose.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


@pytest.mark.parametrize(
    "signal_number", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "ctrl-c"]
)
def test_killed_or_interrupted_pytest_leaves_no_qemu(
    tmp_path: Path, pytestconfig: pytest.Config, signal_number: int
) -> None:
    """SIGKILL: nothing of pytest runs, PR_SET_PDEATHSIG kills QEMU. Ctrl-C (SIGINT to pytest
    only: QEMU is in its own session) unwinds pytest, whose fixture teardown stops QEMU."""
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    pid_file, fifo = tmp_path / "qemu.pid", tmp_path / "block.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "QEMU_PID_FILE": str(pid_file), "BLOCK_FIFO": str(fifo)}
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(tmp_path),
        "--hil-accel=tcg",
        f"--hil-image={pytestconfig.getoption('--hil-image')}",
    ]
    inner = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_until(
            lambda: pid_file.exists() and pid_file.read_text(), 180, "the inner guest to boot"
        )
        qemu_pid = int(pid_file.read_text())
        assert _alive(qemu_pid)
        wait_until(lambda: _fifo_has_reader(fifo), 60, "the inner test to block")
        inner.send_signal(signal_number)
        inner.wait(timeout=60)
        wait_until(lambda: not _alive(qemu_pid), 15, f"QEMU pid {qemu_pid} to die with pytest")
    finally:
        if inner.poll() is None:
            inner.kill()
        inner.wait()


def _fifo_has_reader(fifo: Path) -> bool:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True
