"""Issue 10: guests start from a saved ready state (--hil-start=snapshot), safely.

Every test has its own state directory (`--hil-state-dir` / HilSettings.state_dir), so it starts
from a cold cache; the image cache is the real one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.guest.agent_client import AgentClient
from harness.images.builder import default_cache_dir
from harness.machine.qemu import PortSpec
from harness.plugin.faststart import start
from harness.plugin.fixtures import GuestPool
from harness.plugin.options import HilSettings
from tests.scenario_files import one_port_scenario, write_scenarios

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parents[2]
#: Read at import: the pytester fixture points HOME at its own directory during a test.
REAL_CACHE = default_cache_dir()
PLAIN = one_port_scenario(
    "plain",
    "host_open: org.example.data",
    "guest_open: org.example.data",
    'host_write: {port: org.example.data, data: "hello"}',
    'guest_read: {port: org.example.data, expect: "hello"}',
    "check: {port: org.example.data, host_connected: true, guest_connected: true}",
)


@pytest.fixture
def snapshot_pool(hil_settings, hil_image, hil_accel, tmp_path):
    settings = dataclasses.replace(
        hil_settings, start="snapshot", state_dir=str(tmp_path / "states")
    )
    pool = GuestPool(settings, hil_image, hil_accel, tmp_path / "work")
    yield pool
    pool.shutdown_all()


def _start(pool: GuestPool, name: str = "guest", **overrides: object):
    guest = pool.create(name, boot=False, **overrides)
    return guest, start(guest, pool.settings, pool.image)


def _builds(settings: HilSettings) -> list[str]:
    log = Path(str(settings.state_dir)) / "builds.log"
    return log.read_text().splitlines() if log.exists() else []


def test_second_guest_restores_and_is_ready_like_a_booted_one(snapshot_pool):
    first, booted = _start(snapshot_pool)
    assert booted.mode == "boot" and booted.save_bytes
    assert first.run("echo still running").output.strip() == "still running"
    (template,) = Path(str(snapshot_pool.settings.state_dir)).glob("*.ram")
    template_digest = hashlib.sha256(template.read_bytes()).hexdigest()
    second, restored = _start(snapshot_pool)
    assert restored.mode == "restore" and restored.key == booted.key
    assert second.kernel_release == first.kernel_release
    assert second.ssh is None  # SSH is set up on first use
    assert second.run("uname -r").output.strip() == first.kernel_release
    # the guest clock was set from the host's, not left at the save
    guest_time = float(second.run("date +%s").output)
    assert abs(guest_time - time.time()) < 30
    # no stale SSH session or agent bridge came along from the saved guest
    sessions = second.run("ls /proc/*/exe -l 2>/dev/null | grep -c dropbear").output
    assert int(sessions) == 2  # the listener and this command's session
    agent = AgentClient(second, transport="tcp").start()
    assert agent.ping()["open"] == []
    assert second.machine.console is not None
    assert "HIL-READY" not in second.machine.console.text()  # its log starts at the resume
    # the guest wrote to its RAM (commands, agent); the template it maps privately did not change
    second.run("head -c 50000000 /dev/urandom > /tmp/fill")
    assert hashlib.sha256(template.read_bytes()).hexdigest() == template_digest


def test_a_corrupted_state_is_deleted_and_the_guest_boots_with_a_warning(snapshot_pool):
    _, booted = _start(snapshot_pool)
    (state,) = Path(str(snapshot_pool.settings.state_dir)).glob("*.state")  # device state
    with state.open("r+b") as handle:
        handle.truncate(state.stat().st_size // 2)
    guest, report = _start(snapshot_pool)
    assert report.mode == "boot"
    assert report.warning is not None
    assert f"saved state {booted.key} could not be used" in report.warning
    assert "booting instead" in report.warning
    assert guest.run("true").exit_code == 0
    assert (guest.machine.workdir / "guest.qemu.stderr.refused").exists()
    # the boot saved a good state again, which the next guest restores
    assert len(_builds(snapshot_pool.settings)) == 2
    assert _start(snapshot_pool)[1].mode == "restore"


def test_qemu_binary_and_boot_ports_are_part_of_the_kind(snapshot_pool, tmp_path):
    _, base = _start(snapshot_pool)
    wrapper = tmp_path / "qemu-wrapper"
    real = subprocess.run(["which", snapshot_pool.settings.qemu], capture_output=True, text=True)
    wrapper.write_text(f'#!/bin/sh\nexec {real.stdout.strip()} "$@"\n')
    wrapper.chmod(0o755)
    _, other_qemu = _start(snapshot_pool, qemu=str(wrapper))
    assert other_qemu.mode == "boot" and other_qemu.key != base.key
    port = PortSpec("org.example.p", "vser0", 3, False, tmp_path / "p.sock", "port1")
    _, other_ports = _start(snapshot_pool, ports=[port])
    assert other_ports.mode == "boot" and other_ports.key not in (base.key, other_qemu.key)
    assert len(_builds(snapshot_pool.settings)) == 3


def _pytest_env() -> dict[str, str]:
    return {**os.environ, "HIL_CACHE_DIR": str(REAL_CACHE), "PYTHONPATH": str(ROOT)}


def test_xdist_workers_on_a_cold_cache_build_each_state_once(pytester, tmp_path, monkeypatch):
    states = tmp_path / "states"
    write_scenarios(pytester, **{f"plain{index}": PLAIN for index in range(4)})
    monkeypatch.setenv("HIL_CACHE_DIR", str(REAL_CACHE))
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider", "--hil-accel=tcg", f"--hil-state-dir={states}"
    )
    result.assert_outcomes(passed=4)
    builds = (states / "builds.log").read_text().splitlines()
    assert len(builds) == 1, builds
    assert len(list(states.glob("*.state"))) == 1


def test_boot_mode_runs_a_scenario_without_saved_states(pytester, tmp_path, monkeypatch):
    """CI runs the default (snapshot) mode; this keeps boot mode covered."""
    states = tmp_path / "states"
    write_scenarios(pytester, plain=PLAIN)
    monkeypatch.setenv("HIL_CACHE_DIR", str(REAL_CACHE))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--hil-accel=tcg", "--hil-start=boot", f"--hil-state-dir={states}"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["hil: scenario: boot *s"])
    assert not states.exists()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


SLOW_TEST = """\
def test_guest(hil_guest):
    assert hil_guest.run("true").exit_code == 0
"""


def test_ctrl_c_during_a_save_leaves_no_state_that_a_later_run_loads(tmp_path):
    """SIGINT while the first guest's state is being written: no half file under a final
    name, no temporary left behind, and the next run boots (or restores a complete state)."""
    states = tmp_path / "states"
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_guest.py").write_text(SLOW_TEST)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--hil-accel=tcg"]
    argv += [f"--hil-state-dir={states}", "-q", "test_guest.py"]
    process = subprocess.Popen(
        argv,
        cwd=project,
        env=_pytest_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # a run started in the background inherits SIGINT ignored; Python then keeps it so
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    interrupted = False
    while time.monotonic() < deadline and process.poll() is None:
        if any(_size(p) > 0 for p in states.glob(".*.state.*.tmp")):  # the device state
            process.send_signal(signal.SIGINT)
            interrupted = True
            break
        time.sleep(0.005)
    output = process.communicate(timeout=120)[0].decode(errors="replace")
    assert interrupted, f"the save was never seen in progress:\n{output}"
    assert "KeyboardInterrupt" in output
    assert list(states.glob(".*.tmp")) == []
    assert list(states.glob("*.state")) == []
    again = subprocess.run(
        [*argv[:-1], "-s", "test_guest.py"],
        cwd=project,
        env=_pytest_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert again.returncode == 0, again.stdout
    assert "hil: guest: boot" in again.stdout
    assert "could not be used" not in again.stdout
