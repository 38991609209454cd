"""Issue 2: a real guest boots under QEMU, and we reach it over SSH and over serial."""

from __future__ import annotations

import pytest

from harness.guest.guest import Guest

pytestmark = pytest.mark.qemu


def test_ssh_command_output_and_exit_codes(hil_guest: Guest) -> None:
    release = hil_guest.run("uname -r")
    assert release.exit_code == 0
    assert release.output.strip() == hil_guest.kernel_release

    failing = hil_guest.run("echo to-stdout; echo to-stderr >&2; exit 7")
    assert (failing.exit_code, failing.output, failing.stderr) == (7, "to-stdout\n", "to-stderr\n")


def test_serial_command_output_and_exit_codes(hil_guest: Guest) -> None:
    ok = hil_guest.run("cat /proc/sys/kernel/osrelease", channel="serial")
    assert (ok.exit_code, ok.output.strip()) == (0, hil_guest.kernel_release)

    missing = hil_guest.run("ls /no/such/path", channel="serial")
    assert missing.exit_code != 0
    assert "/no/such/path" in missing.output


def test_serial_output_is_not_confused_with_echoed_input(hil_guest: Guest) -> None:
    # The command text contains what a naive framer would take as output markers.
    result = hil_guest.run("printf 'a\\nb\\n'; echo __HIL_E_1 0", channel="serial")
    assert result.output == "a\nb\n__HIL_E_1 0\n"
    assert result.exit_code == 0


def test_both_channels_reach_the_same_guest(hil_guest: Guest) -> None:
    hil_guest.run("echo written-over-ssh > /tmp/channel-check")
    assert hil_guest.run("cat /tmp/channel-check", channel="serial").output == "written-over-ssh\n"


def test_guest_has_the_modules_and_filesystems_the_harness_needs(hil_guest: Guest) -> None:
    modules = hil_guest.run("cat /proc/modules").output
    for module in ("virtio_console", "virtio_net", "virtio_pci"):
        assert f"{module} " in modules
    mounts = hil_guest.run("cat /proc/mounts").output
    for fs in ("debugfs /sys/kernel/debug", "devpts /dev/pts", "proc /proc", "sysfs /sys"):
        assert fs in mounts


def test_init_respawns_the_serial_shell(hil_guest: Guest) -> None:
    """PID 1 is a supervisor: killing the console shell must not take the guest down."""
    position = hil_guest.serial.position()
    hil_guest.serial.send_raw("exit\n")
    # The respawned login shell prints its prompt; input sent before it exists would be lost.
    hil_guest.serial.wait_for(r"hil# ", 30, "the respawned shell's prompt", since=position + 1)
    assert hil_guest.run("echo still-here", channel="serial", timeout=30).output == "still-here\n"
    assert hil_guest.run("cat /proc/1/comm").output.strip() == "init"
