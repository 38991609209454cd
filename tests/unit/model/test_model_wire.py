"""Byte-exact control codec, handshake, save format and load failures.

Vectors in fixtures/vectors/ were written by hand from the seed's structs and put calls, except
qemu_migration.json: captured from QEMU 7.2 (fixtures/vectors/capture_qemu_migration.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.model import Behaviour, ModelError, Payload, VirtioSerialModel, decode, encode
from harness.model import control as C
from harness.model.migration import clone_configuration, load, migrate, save
from tests.unit.model.conftest import open_port

VECTORS = Path(__file__).resolve().parents[3] / "fixtures" / "vectors"


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


CONTROL = json.loads((VECTORS / "control.json").read_text())["vectors"]
MIGRATION = json.loads((VECTORS / "migration.json").read_text())


@pytest.mark.parametrize("vector", CONTROL, ids=[v["what"] for v in CONTROL])
def test_control_codec_matches_hand_built_vectors(vector):
    message = C.ControlMessage(
        vector["id"], vector["event"], vector["value"], bytes.fromhex(vector["payload"])
    )
    assert encode(message) == bytes.fromhex(vector["hex"])
    assert decode(bytes.fromhex(vector["hex"])) == message


def test_short_control_message_is_ignored():
    # seed 312-314: len < sizeof(cpkt) -> return
    assert decode(b"\x01\x00\x00\x00\x06\x00\x01") is None
    device = C.DeviceControl([C.DevicePort(1, "a")])
    assert device.receive(b"\x01\x00\x00\x00\x06\x00\x01") == []
    assert not device.ports[0].guest_connected


def test_port_name_with_and_without_trailing_nul():
    with_nul = C.port_name_message(1, "org.test.0", Behaviour())
    assert encode(with_nul) == bytes.fromhex(CONTROL[-1]["hex"])
    spec = C.port_name_message(1, "org.test.0", Behaviour(port_name_trailing_nul=False))
    assert encode(spec) == bytes.fromhex(CONTROL[-1]["hex"])[:-1]
    # Linux strscpy(name, payload, len + 1) yields the same name either way
    for message in (with_nul, spec):
        driver = C.DriverControl(4, {1: C.DriverPort(1)})
        driver.receive(encode(message))
        assert driver.ports[1].name == "org.test.0"


def test_handshake_sequence():
    # DEVICE_READY -> PORT_ADD per port (seed 335-337) -> PORT_READY -> CONSOLE_PORT,
    # PORT_NAME, PORT_OPEN (seed 353-374) -> the driver answers CONSOLE_PORT with PORT_OPEN 1
    ports = [C.DevicePort(0, "con", is_console=True, host_connected=True), C.DevicePort(2, "b")]
    log, driver = C.handshake(ports, max_nr_ports=31)
    got = [
        (w.direction[:6], C.EVENT_NAMES[w.message.event], w.message.id, w.message.value)
        for w in log
    ]
    assert got == [
        ("driver", "DEVICE_READY", C.BAD_ID, 1),
        ("device", "PORT_ADD", 0, 1),
        ("device", "PORT_ADD", 2, 1),
        ("driver", "PORT_READY", 0, 1),
        ("device", "CONSOLE_PORT", 0, 1),
        ("device", "PORT_NAME", 0, 1),
        ("device", "PORT_OPEN", 0, 1),
        ("driver", "PORT_READY", 2, 1),
        ("device", "PORT_NAME", 2, 1),
        ("driver", "PORT_OPEN", 0, 1),
    ]
    assert log[5].message.payload == b"con\0"
    assert driver.ports[0].is_console and driver.ports[0].host_connected
    assert driver.ports[2].name == "b" and not driver.ports[2].host_connected
    assert ports[0].guest_connected and not ports[1].guest_connected


def test_device_control_error_paths():
    device = C.DeviceControl([C.DevicePort(1, None)])
    assert device.receive(encode(C.ControlMessage(C.BAD_ID, C.DEVICE_READY, 0))) == []
    assert device.receive(encode(C.ControlMessage(9, C.PORT_OPEN, 1))) == []  # unknown id
    assert device.receive(encode(C.ControlMessage(1, C.PORT_READY, 0))) == []
    assert device.receive(encode(C.ControlMessage(1, C.PORT_READY, 1))) == []  # no name
    assert device.receive(encode(C.ControlMessage(1, C.RESIZE, 0))) == []
    assert device.errors == [
        "Guest failure in adding device",
        "Unexpected port id 9",
        "Guest failure in adding port 1",
    ]


def test_driver_control_edge_cases():
    driver = C.DriverControl(max_nr_ports=4)
    assert driver.receive(b"short") == []
    assert driver.receive(encode(C.ControlMessage(7, C.PORT_OPEN, 1))) == []  # unknown id
    assert driver.receive(encode(C.ControlMessage(4, C.PORT_ADD, 1))) == []  # out of bound
    ready = [C.ControlMessage(1, C.PORT_READY, 1)]
    assert driver.receive(encode(C.ControlMessage(1, C.PORT_ADD, 1))) == ready
    assert driver.receive(encode(C.ControlMessage(1, C.PORT_ADD, 1))) == ready  # re-ready
    driver.receive(encode(C.ControlMessage(1, C.PORT_NAME, 1, b"first\0")))
    driver.receive(encode(C.ControlMessage(1, C.PORT_NAME, 1, b"second\0")))
    assert driver.ports[1].name == "first"
    assert driver.receive(encode(C.ControlMessage(1, C.CONSOLE_PORT, 0))) == []
    driver.receive(encode(C.ControlMessage(1, C.CONSOLE_PORT, 1)))
    assert driver.receive(encode(C.ControlMessage(1, C.CONSOLE_PORT, 1))) == []
    driver.receive(encode(C.ControlMessage(1, C.PORT_REMOVE, 1)))
    assert driver.ports == {}
    assert str(C.ControlMessage(1, C.PORT_NAME, 1, b"x")) == "PORT_NAME(id=1, value=1) b'x'"
    assert str(C.ControlMessage(1, 99, 0)) == "99(id=1, value=0)"


# ------------------------------------------------------------------ migration
def three_port_model() -> VirtioSerialModel:
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=31)
    m.hotplug("con", controller="c", console=True)
    m.hotplug("a", controller="c")
    m.hotplug("b", controller="c", nr=5)
    m.host_open("a")
    m.guest_open("a")
    return m


def test_save_layout_matches_hand_built_vector():
    assert save(three_port_model()) == hexbytes(MIGRATION["three_ports"]["hex"])


def test_save_of_popped_element_matches_vector():
    m = open_port("a", stalled=True, host_socket_sndbuf=1, guest_write_chunk=2)
    m.guest_write("a", b"hello")
    assert save(m) == hexbytes(MIGRATION["held_element"]["hex"])


def test_save_two_word_map():
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=40)
    assert save(m) == hexbytes(MIGRATION["max_ports_40_empty"]["hex"])


def test_save_needs_a_controller_name_with_several():
    m = VirtioSerialModel()
    m.hotplug_controller("a")
    m.hotplug_controller("b")
    with pytest.raises(ValueError):
        save(m)


def test_load_fails_when_a_bitmap_word_differs():
    # seed 576-586: ports_map word mismatch -> fail migration
    dest = VirtioSerialModel()
    dest.hotplug_controller("c", max_ports=31)
    dest.hotplug("con", controller="c", console=True)
    dest.hotplug("a", controller="c")
    with pytest.raises(ModelError) as err:
        load(dest, hexbytes(MIGRATION["three_ports"]["hex"]))
    assert err.value.text == "load of migration failed: Invalid argument"


def test_load_fails_when_a_port_id_is_missing():
    # same map, but nr_active lists id 6 which the destination lacks (seed 595-597)
    data = bytearray(hexbytes(MIGRATION["three_ports"]["hex"]))
    dest = clone_configuration(three_port_model())
    data[-10:-6] = (6).to_bytes(4, "big")
    with pytest.raises(ModelError, match="Invalid argument"):
        load(dest, bytes(data))


def test_load_truncated_stream():
    dest = clone_configuration(three_port_model())
    with pytest.raises(ModelError, match="Input/output error"):
        load(dest, hexbytes(MIGRATION["three_ports"]["hex"])[:-3])
    raw = hexbytes(MIGRATION["held_element"]["hex"])
    m = VirtioSerialModel()
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    with pytest.raises(ModelError, match="Input/output error"):
        load(m, raw[:-20])
    bad_magic = raw.replace(b"VQE1", b"XXXX")
    with pytest.raises(ModelError, match="bad element blob"):
        load(m, bad_magic)


def test_max_ports_difference_today_fails_only_through_the_bitmap():
    source = VirtioSerialModel()
    source.hotplug_controller("c", max_ports=31)
    dest = VirtioSerialModel()
    dest.hotplug_controller("c", max_ports=20)
    assert load(dest, save(source)) == []  # same single word 0x1: loads today
    strict = VirtioSerialModel(Behaviour(load_checks_max_nr_ports=True))
    strict.hotplug_controller("c", max_ports=20)
    with pytest.raises(ModelError, match="more ports than us"):
        load(strict, save(source))  # seed 571-574


def test_seed_loop_uses_source_word_count():
    source = VirtioSerialModel()
    source.hotplug_controller("c", max_ports=31)
    dest = VirtioSerialModel(Behaviour(load_checks_max_nr_ports=True))
    dest.hotplug_controller("c", max_ports=40)
    assert load(dest, save(source)) == []
    today = VirtioSerialModel()
    today.hotplug_controller("c", max_ports=40)
    # today loops over the destination's 2 words: it reads the source's nr_active_ports (0)
    # as word 1 (equal to the destination's 0) and then runs off the end of the section
    with pytest.raises(ModelError, match="Input/output error"):
        load(today, save(source))


def test_post_load_port_open_resend_and_unthrottle():
    # seed 600-607: PORT_OPEN with the destination's host state where it differs;
    # seed 625-628: a popped element is unthrottled on the destination
    source = VirtioSerialModel(Behaviour(host_socket_sndbuf=1, guest_write_chunk=2))
    source.hotplug_controller("c")
    source.hotplug("a", controller="c")
    source.hotplug("b", controller="c")
    source.host_open("a")
    source.guest_open("a")
    source.host_open("b")
    source.set_host_backpressure("a", True)
    source.guest_write("a", b"hello")
    dest = VirtioSerialModel()
    dest.hotplug_controller("c")
    dest.hotplug("a", controller="c")
    dest.hotplug("b", controller="c")
    dest.host_open("a")  # b's host is not connected on the destination
    events = load(dest, save(source))
    assert [(e.kind, e.port, e.value) for e in events] == [
        ("VSERPORT_CHANGE", "a", 1),
        ("PORT_OPEN", "b", 0),
        ("VSERPORT_CHANGE", "b", 0),
    ]
    assert not dest.ports["a"].throttled
    assert dest.host_read("a").value.slices[0].data() == b"ll"  # the held element


def test_migrate_reproduces_state():
    source = three_port_model()
    source.host_write("a", Payload.generated(3, 1000))
    dest = clone_configuration(source)
    migrate(source, dest)
    assert dest.snapshot() == source.snapshot()


# ------------------------------------------- guest_connected != host_connected
def one_port(guest: bool, host: bool) -> VirtioSerialModel:
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=31)
    m.hotplug("a", controller="c")
    if host:
        m.host_open("a")
    if guest:
        m.guest_open("a")
    return m


@pytest.mark.parametrize(
    ("vector", "guest", "host"),
    [("guest_open_host_closed", True, False), ("host_open_guest_closed", False, True)],
)
def test_connected_bytes_in_save_order_guest_then_host(vector, guest, host):
    # seed 518-519: qemu_put_byte(guest_connected) then qemu_put_byte(host_connected)
    data = hexbytes(MIGRATION[vector]["hex"])
    assert save(one_port(guest, host)) == data
    dest = one_port(False, host)  # same host connections; the guest's open state travels
    events = load(dest, data)
    assert dest.ports["a"].guest_connected is guest
    assert dest.ports["a"].host_connected is host
    assert [(e.kind, e.value) for e in events] == [("VSERPORT_CHANGE", int(guest))]


# ------------------------------------------------------ captured from real QEMU
QEMU = json.loads((VECTORS / "qemu_migration.json").read_text())


def qemu_source() -> VirtioSerialModel:
    """The model of the machine the capture booted, with its ports opened as it did."""
    m = VirtioSerialModel()
    m.hotplug_controller("vser0", max_ports=40)
    for port in QEMU["ports"]:
        m.hotplug(port["name"], controller="vser0", nr=port["nr"])
        if port["host_open"]:
            m.host_open(port["name"])
        if port["guest_open"]:
            m.guest_open(port["name"])
    return m


def test_qemu_7_2_vector_has_both_mismatches_and_a_second_map_word():
    states = {(p["guest_open"], p["host_open"]) for p in QEMU["ports"]}
    assert {(True, False), (False, True)} <= states
    assert max(p["nr"] for p in QEMU["ports"]) >= 32
    assert QEMU["qemu_version"]["qemu"]["major"] == 7


def test_save_reproduces_the_device_part_qemu_7_2_wrote():
    assert save(qemu_source()).hex() == QEMU["device_hex"]


def test_load_of_the_device_part_qemu_7_2_wrote():
    source = qemu_source()
    dest = clone_configuration(source)  # same ports, same host connections, guest closed
    events = load(dest, bytes.fromhex(QEMU["device_hex"]))
    for port in QEMU["ports"]:
        got = dest.ports[port["name"]]
        assert (got.guest_connected, got.host_connected) == (port["guest_open"], port["host_open"])
    assert [(e.kind, e.port, e.value) for e in events] == [
        ("VSERPORT_CHANGE", p["name"], int(p["guest_open"])) for p in QEMU["ports"]
    ]
    assert save(dest).hex() == QEMU["device_hex"]


def test_load_of_qemu_7_2_bytes_into_other_host_states_resends_port_open():
    # seed 600-607: the destination tells the guest its own host state where it differs
    dest = clone_configuration(qemu_source())
    dest.host_close("org.v.host")
    dest.host_open("org.v.guest")
    events = load(dest, bytes.fromhex(QEMU["device_hex"]))
    assert [(e.port, e.value) for e in events if e.kind == "PORT_OPEN"] == [
        ("org.v.host", 0),
        ("org.v.guest", 1),
    ]
    assert dest.ports["org.v.guest"].guest_connected
    assert not dest.ports["org.v.host"].guest_connected
