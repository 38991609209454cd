"""Issue 4: every port operation for real, read back from QEMU and the guest, held to the model.

Written against the public Python API (``hil_vm``): every call is a scenario step, so after each
one the model's prediction, QEMU's qtree and the guest's debugfs/poll must agree (bounded
settle), and a failure shows the same diff table as a YAML scenario.
"""

from __future__ import annotations

import pytest

from harness import VM, OperationError, RunnerOptions, ScenarioFailure
from harness.backend.system import QemuSystem, RealFailure
from harness.plugin.fixtures import VMFactory

pytestmark = pytest.mark.qemu
MIB = 1024 * 1024
NAME = "org.hil.data"


def test_host_and_guest_open_close_are_seen_across(hil_vm: VM) -> None:
    port = hil_vm.hotplug(NAME)
    port.host.open()
    hil_vm.check(port, host_connected=True, guest_connected=False)
    port.guest.open()
    hil_vm.check(port, guest_connected=True, poll={"OUT"})
    port.host.close()
    hil_vm.check(port, host_connected=False, poll={"IN", "HUP"})  # EOF is readable
    port.guest.close()
    hil_vm.check(port, guest_connected=False, poll=None)

    system = hil_vm.real
    assert isinstance(system, QemuSystem) and system.ports is not None
    device = system.port_spec(NAME).device_id
    # QEMU rate-limits VSERPORT_CHANGE to one per second per id: the close may come later.
    system.ports.qmp.wait_event(
        "VSERPORT_CHANGE",
        5,
        where=lambda e: e.data == {"id": device, "open": False},
        what=f"(open false) for {device}",
    )
    events = [e.data["open"] for e in system.ports.port_events(system.port_spec(NAME))]
    assert events == [True, False], f"VSERPORT_CHANGE open flags in order: {events}"


def test_data_waits_for_the_other_side(hil_vm: VM) -> None:
    """Guest writes block while the host is closed; host data waits until the guest opens."""
    port = hil_vm.hotplug(NAME)
    port.host.open()
    port.host.write(b"early")
    hil_vm.check(port, bytes_received=0)  # nobody in the guest holds the port: nothing moves
    port.guest.open()
    assert port.guest.read() == b"early"

    port.host.close()
    port.guest.close()
    with port.guest.open(nonblocking=True) as guest, pytest.raises(OperationError, match="EAGAIN"):
        guest.write(b"x")  # the host is away: a non-blocking write cannot queue anything

    with port.guest.open() as guest:
        write = guest.start_write(b"late")
        for _ in range(3):  # every step checks the real write is still blocked, as predicted
            hil_vm.check(port, host_connected=False)
        assert not write.done
        port.host.open()  # the step at which the model says the write completes
        assert write.result == 4
        assert port.host.read() == b"late"


def test_64_mib_each_way_without_loss(hil_vm_factory: VMFactory) -> None:
    """Host -> guest in one stream; guest -> host in 2 MiB writes, each read by the host before
    the next (the host end buffers at most 4 MiB unread: a bigger write would wait on it)."""
    vm = hil_vm_factory(options=RunnerOptions(op_timeout=300))
    port = vm.hotplug(NAME)
    with port.host.connect() as host, port.guest.open() as guest:
        host.write(size=64 * MIB)
        received = 0
        while received < 64 * MIB:  # length and SHA-256 of every read are judged per step
            received += len(guest.read())
        assert received == 64 * MIB
        for _ in range(32):
            assert guest.write(size=2 * MIB) == 2 * MIB
            assert len(host.read()) == 2 * MIB
        vm.check(port, bytes_received=64 * MIB, bytes_sent=64 * MIB, bytes_discarded=0)


def test_slow_host_reader_throttles_the_port_and_loses_nothing(hil_vm: VM) -> None:
    """1 MiB: far more than a unix socket buffers, far less than the guest's 128 out_vq buffers
    of 32 KiB, so QEMU throttles the port while the guest's write itself completes."""
    port = hil_vm.hotplug(NAME)
    with port.host.connect() as host, port.guest.open() as guest:
        with host.stalled():
            assert guest.write(size=MIB) == MIB
            hil_vm.check(port, throttled=True, bytes_sent=MIB)
        assert len(host.read()) == MIB  # length and SHA-256 judged by the step
        hil_vm.check(port, throttled=False)


def test_unplug_while_the_guest_holds_the_port_open(hil_vm: VM) -> None:
    port = hil_vm.hotplug(NAME)
    with port.host.connect(), port.guest.open() as guest:
        port.unplug()
        hil_vm.check(port, exists=False)
        with pytest.raises(OperationError, match="ENODEV"):
            guest.read(16)
        with pytest.raises(OperationError, match="ENODEV"):
            guest.write(b"x")


@pytest.mark.parametrize(
    ("case", "nr", "expected"),
    [
        (
            "nr 0 for a serial port",
            0,
            "Port number 0 on virtio-serial devices reserved for virtconsole devices",
        ),
        ("out of range", 31, "Out-of-range port id specified, max. allowed: 30"),
    ],
)
def test_hotplug_errors_are_qemus_own_text(hil_vm: VM, case: str, nr: int, expected: str) -> None:
    with pytest.raises(OperationError, match=expected):
        hil_vm.hotplug(f"org.hil.{case.replace(' ', '-')}", nr=nr)
    hil_vm.check()


def test_duplicate_name_and_one_port_too_many(hil_vm: VM) -> None:
    small = hil_vm.hotplug_controller("vser1", max_ports=2)
    small.add_port("org.hil.one")
    with pytest.raises(OperationError, match=r"A port already exists by name org\.hil\.one"):
        hil_vm.hotplug("org.hil.one", controller="vser0")
    # max_ports=2: id 0 is reserved for a console, id 1 is taken; QEMU picks id 2 and refuses it
    small.add_port("org.hil.two", expect_error="Out-of-range port id specified, max. allowed: 1")
    hil_vm.check(small, max_ports=2)


def test_hotplug_churn_keeps_guest_and_qemu_in_step(hil_vm: VM) -> None:
    """Every hotplug/unplug step settles on the model's snapshot: QEMU's ports and the guest's
    ports (debugfs) agree after each of them, and the console shows no kernel problem."""
    names = [f"org.hil.churn{i}" for i in range(30)]
    ports = [hil_vm.hotplug(name) for name in names]
    for port in ports[:25]:
        port.unplug()
    for name in names[:5]:
        hil_vm.hotplug(name)
    for _ in range(50):
        hil_vm.unplug(names[0])
        hil_vm.hotplug(names[0])
    assert sorted(p.name for p in hil_vm.ports) == sorted(names[:5] + names[25:])
    system = hil_vm.real
    assert isinstance(system, QemuSystem) and system.agent is not None
    problems = [m for m in system.agent.kmsg() if "WARNING" in str(m) or "BUG" in str(m)]
    assert not problems, problems


def test_a_real_system_that_differs_from_the_model_fails_the_check(hil_vm: VM) -> None:
    """The oracle bites through the API: connect the host end behind the model's back and the
    next comparison fails with the runner's diff table (QEMU's and the guest's view)."""
    port = hil_vm.hotplug(NAME)
    hil_vm.real.host_open(port.name)  # not a step: the model still says disconnected
    with pytest.raises(ScenarioFailure) as failure:
        hil_vm.check()
    text = str(failure.value)
    assert text.startswith("step 2 (check): the real system did not settle"), text
    assert "qemu.host_connected" in text and "guest.host_connected" in text, text


def test_unknown_port_operations_fail_clearly(hil_system: QemuSystem) -> None:
    with pytest.raises(RealFailure, match="ENOENT"):
        hil_system.host_open("org.never.declared")
