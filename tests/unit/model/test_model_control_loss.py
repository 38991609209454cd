"""QEMU drops control messages when the guest's control rx queue (c_ivq) has no free buffer.

QEMU send_control_msg: virtqueue_pop fails -> return 0 (no retry, no queueing).  Linux fills
c_ivq completely at probe (fill_queue) and control_work_handler gives a buffer back only after
handle_control_message returned.  Observed on QEMU 7.2.22 (c_ivq 32 entries, TCG, Linux 6.1):
24 host-connected ports, reboot -> the guest shows host_connected 0 on ports 8-24.
"""

from __future__ import annotations

import pytest

from harness.model import (
    Behaviour,
    ModelError,
    Payload,
    ReadResult,
    VirtioSerialModel,
    migrate,
)
from harness.model import control as C
from harness.model.migration import clone_configuration
from harness.model.snapshot import ABSENT

QEMU_7_2 = Behaviour(control_rx_buffers=32)  # virtio_add_queue(vdev, 32, control_in)
QEMU_10_0_13 = Behaviour(control_rx_buffers=1024)  # every queue VIRTQUEUE_MAX_SIZE


def serial_ports(count: int, host_connected: bool = True) -> list[C.DevicePort]:
    return [C.DevicePort(i, f"p{i}", host_connected=host_connected) for i in range(1, count + 1)]


def lost_events(log: list[C.Wire]) -> list[tuple[str, int]]:
    return [(C.EVENT_NAMES[m.event], m.id) for m in C.lost(log)]


# ------------------------------------------------------------------ the handshake alone
def test_24_connected_ports_lose_port_open_from_port_8() -> None:
    # 24 PORT_ADDs leave 8 buffers; each PORT_ADD handled costs PORT_NAME + PORT_OPEN and
    # gives one buffer back: 8 - (k - 1) free before port k, so port 8 has 1 (name only).
    log, driver = C.handshake(serial_ports(24), max_nr_ports=31, behaviour=QEMU_7_2)
    assert lost_events(log) == [("PORT_OPEN", k) for k in range(8, 25)]
    assert [p for p in driver.ports if driver.ports[p].host_connected] == list(range(1, 8))
    assert all(driver.ports[k].name == f"p{k}" for k in range(1, 25))  # names all arrive
    assert all(w.lost == (w.message.event == C.PORT_OPEN and w.message.id >= 8) for w in log)


def test_1024_buffers_lose_nothing() -> None:
    log, driver = C.handshake(serial_ports(24), max_nr_ports=31, behaviour=QEMU_10_0_13)
    assert C.lost(log) == []
    assert all(port.host_connected for port in driver.ports.values())


def test_unlimited_buffers_and_host_closed_ports_lose_nothing() -> None:
    device = C.DeviceControl(serial_ports(30))
    driver = C.DriverControl(31)
    log = C.exchange(device, driver, C.ControlMessage(C.BAD_ID, C.DEVICE_READY, 1))
    assert C.lost(log) == [] and len(driver.ports) == 30
    # host ends closed at probe (what a first boot in the harness has): 1 message per port
    log, _ = C.handshake(serial_ports(31, host_connected=False), 31, QEMU_7_2)
    assert C.lost(log) == []


def test_more_ports_than_buffers_lose_port_add() -> None:
    log, driver = C.handshake(serial_ports(34, host_connected=False), 64, QEMU_7_2)
    assert lost_events(log)[:2] == [("PORT_ADD", 33), ("PORT_ADD", 34)]
    assert sorted(driver.ports) == list(range(1, 33))


def test_consoles_cost_three_messages_and_can_lose_console_port() -> None:
    # 3 consoles (host-connected from realize), 3 buffers: all taken by the PORT_ADDs
    ports = [C.DevicePort(i, f"c{i}", is_console=True, host_connected=True) for i in (1, 2, 3)]
    log, driver = C.handshake(ports, 31, Behaviour(control_rx_buffers=3))
    assert lost_events(log) == [
        ("CONSOLE_PORT", 1),
        ("PORT_NAME", 1),
        ("PORT_OPEN", 1),
        ("PORT_NAME", 2),
        ("PORT_OPEN", 2),
        ("PORT_NAME", 3),
        ("PORT_OPEN", 3),
    ]
    assert not driver.ports[1].is_console and driver.ports[2].is_console
    assert driver.ports[2].name is None and driver.ports[3].guest_connected


# ------------------------------------------------------------------ the model
def connected_model(count: int, behaviour: Behaviour) -> VirtioSerialModel:
    model = VirtioSerialModel(behaviour)
    model.hotplug_controller("vser0")
    for i in range(1, count + 1):
        model.hotplug(f"p{i:02d}", controller="vser0", nr=i)
        model.host_open(f"p{i:02d}")
    return model


def test_reboot_predicts_the_lost_port_opens() -> None:
    model = connected_model(24, QEMU_7_2)
    model.reboot()
    snap = model.snapshot()
    guest_open = sorted(n for n, v in snap.ports.items() if v.guest.host_connected)
    assert guest_open == [f"p{i:02d}" for i in range(1, 8)]
    assert all(view.qemu.host_connected for view in snap.ports.values())  # QEMU: host on
    # what a guest program sees on a lost port: EOF, poll IN|HUP, writes block
    model.guest_open("p08")
    assert model.poll("p08") == {"IN", "HUP"}
    read = model.guest_read("p08").value
    assert isinstance(read, ReadResult) and read.eof
    write = model.guest_write("p08", Payload.literal(b"waits")).pending
    assert write is not None
    # a host reconnect sends PORT_OPEN again (buffers are free by now): the write completes
    model.host_close("p08")
    done = model.host_open("p08")
    assert [c.ticket for c in done.completed] == [write.ticket]
    assert model.snapshot().ports["p08"].guest.host_connected


def test_reboot_with_1024_buffers_keeps_every_port_open() -> None:
    model = connected_model(24, QEMU_10_0_13)
    model.reboot()
    assert all(view.guest.host_connected for view in model.snapshot().ports.values())


def test_hotplug_one_at_a_time_never_loses() -> None:
    # each hotplug is one PORT_ADD, answered before the next: the queue never runs dry
    model = connected_model(30, Behaviour(control_rx_buffers=2))
    assert all(view.guest.host_connected for view in model.snapshot().ports.values())


def test_lost_console_port_leaves_a_plain_nameless_port() -> None:
    model = VirtioSerialModel(Behaviour(control_rx_buffers=3))
    model.hotplug_controller("vser0")
    for name in ("c1", "c2", "c3"):
        model.hotplug(name, controller="vser0", console=True)
    model.reboot()
    snap = model.snapshot()
    c1, c2 = snap.ports["c1"], snap.ports["c2"]
    assert not c1.guest.is_console and c1.guest.console_vtermno == 0
    assert not c1.qemu.guest_connected and c1.guest.name is None  # no init_port_console
    assert c2.guest.is_console and c2.guest.console_vtermno == 1 and c2.qemu.guest_connected
    assert snap.ports["c3"].guest.console_vtermno == 2


def test_lost_port_add_leaves_the_port_unknown_to_the_guest() -> None:
    model = VirtioSerialModel(Behaviour(control_rx_buffers=2))
    model.hotplug_controller("vser0")
    for name in ("a", "b", "c"):
        model.hotplug(name, controller="vser0")
    model.host_open("a")
    model.host_open("c")
    model.host_write("c", Payload.literal(b"stays in the socket"))
    model.reboot()
    snap = model.snapshot()
    assert snap.ports["c"].guest == ABSENT and snap.ports["c"].qemu.host_connected
    assert snap.ports["a"].guest.host_connected is False  # PORT_OPEN of a lost too
    with pytest.raises(ModelError) as excinfo:
        model.guest_open("c")
    assert excinfo.value.text == "ENOENT"
    model.host_close("c")  # PORT_OPEN 0 to a port the guest does not know: dropped
    model.host_open("c")
    assert model.snapshot().ports["c"].guest == ABSENT
    model.reboot()  # still too few buffers: the reset finds no guest side to clear
    assert model.snapshot().ports["c"].guest == ABSENT
    model.behaviour = QEMU_7_2
    model.reboot()  # enough buffers this time: the guest learns of it
    assert model.snapshot().ports["c"].guest.host_connected


def test_unplug_and_migrate_a_port_the_guest_never_saw() -> None:
    model = VirtioSerialModel(Behaviour(control_rx_buffers=1))
    model.hotplug_controller("vser0")
    model.hotplug("a", controller="vser0")
    model.hotplug("b", controller="vser0")
    model.host_open("b")
    model.reboot()
    assert model.snapshot().ports["b"].guest == ABSENT
    dest = clone_configuration(model)
    dest.host_close("b")  # destination's host end is closed: post-load PORT_OPEN 0
    events = migrate(model, dest)
    assert ("PORT_OPEN", "b", 0) in [(e.kind, e.port, e.value) for e in events]
    assert dest.snapshot().ports["b"].guest == ABSENT
    model.unplug("b")  # PORT_REMOVE for a port the guest never had: nothing to undo
    assert "b" in model.removed
