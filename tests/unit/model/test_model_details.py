"""Details that mutation testing (tox -e mutation) found unpinned: messages, codecs, copies.

Each test names what it pins; tests/unit/model/mutation_survivors.md lists the mutants that
remain and why they are equivalent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest

from harness.model import (
    EITHER,
    Behaviour,
    ModelError,
    Payload,
    ReadResult,
    Slice,
    VirtioSerialModel,
    VtermRange,
    diff,
    encode,
    format_diff,
    handshake,
    parse_vport,
    sha256_of,
    slices_sha256,
)
from harness.model import control as C
from harness.model.boot import build_model
from harness.model.declarations import MachineDecl
from harness.model.migration import clone_configuration, load, migrate, save
from harness.model.payload import SliceQueue, iter_chunks, payload_bytes, slices_bytes
from harness.model.snapshot import (
    ABSENT,
    ABSENT_FIELD,
    PortView,
    QemuPortView,
    Snapshot,
    guest_only_key,
)
from tests.unit.model.conftest import error_of, open_port, plug_open


# ------------------------------------------------------------------- errors
def test_model_error_keeps_text_and_detail():
    error = ModelError("EBUSY", "port open")
    assert (error.text, error.detail, str(error)) == ("EBUSY", "port open", "EBUSY (port open)")
    assert str(ModelError("EBUSY")) == "EBUSY"


# ------------------------------------------------------------------ control
def test_driver_re_add_keeps_the_port_it_has():
    driver = C.DriverControl(max_nr_ports=4)
    driver.receive(encode(C.ControlMessage(1, C.PORT_ADD, 1)))
    driver.receive(encode(C.ControlMessage(1, C.PORT_NAME, 1, b"kept\0")))
    driver.receive(encode(C.ControlMessage(1, C.PORT_ADD, 1)))
    assert driver.ports[1].name == "kept"


def test_driver_console_port_is_guest_connected():
    driver = C.DriverControl(max_nr_ports=4)
    driver.receive(encode(C.ControlMessage(0, C.PORT_ADD, 1)))
    driver.receive(encode(C.ControlMessage(0, C.CONSOLE_PORT, 1)))
    assert driver.ports[0].guest_connected is True


@pytest.mark.parametrize(
    ("payload", "name"),
    [(b"first\0second\0", "first"), (b"bad\xff\0", "bad\ufffd")],
)
def test_driver_port_name_is_up_to_the_first_nul_with_bad_bytes_replaced(payload, name):
    driver = C.DriverControl(max_nr_ports=4)
    driver.receive(encode(C.ControlMessage(1, C.PORT_ADD, 1)))
    driver.receive(encode(C.ControlMessage(1, C.PORT_NAME, 1, payload)))
    assert driver.ports[1].name == name


def test_handshake_uses_the_behaviour_it_is_given():
    log, _ = handshake([C.DevicePort(1, "a")], 4, Behaviour(port_name_trailing_nul=False))
    names = [w.message.payload for w in log if w.message.event == C.PORT_NAME]
    assert names == [b"a"]


# ------------------------------------------------------------------ payload
def test_payload_errors_say_what_is_wrong():
    with pytest.raises(ValueError) as err:
        Payload()
    assert str(err.value) == "a Payload needs data or a seed"
    with pytest.raises(ValueError) as err:
        payload_bytes(Payload.literal(b"abc"), 2, 5)
    assert str(err.value) == "range 2:5 outside payload of 3 bytes"


def test_payload_helpers_default_to_the_whole_payload():
    data = Payload.literal(b"abc")
    assert list(iter_chunks(data)) == [b"abc"]
    assert list(iter_chunks(data, 1, 1)) == []
    assert sha256_of(data) == hashlib.sha256(b"abc").hexdigest()
    assert slices_sha256([Slice(data, 0, 2)]) == hashlib.sha256(b"ab").hexdigest()


def test_slice_queue_merges_only_adjacent_slices_of_one_payload():
    one, two = Payload.literal(b"abcd"), Payload.literal(b"wxyz")
    queue = SliceQueue([Slice(one, 0, 2), Slice(two, 2, 4)])
    assert queue.slices() == [Slice(one, 0, 2), Slice(two, 2, 4)]
    assert queue.take(2) == [Slice(one, 0, 2)]
    assert queue.slices() == [Slice(two, 2, 4)]  # nothing empty left behind
    assert queue.take(2) == [Slice(two, 2, 4)] and queue.slices() == []


# ----------------------------------------------------------------- snapshot
def test_parse_vport_error_names_the_input():
    with pytest.raises(ValueError) as err:
        parse_vport("hvc0")
    assert str(err.value) == "not a virtio-serial port device name: 'hvc0'"


def test_snapshot_shows_ids_names_and_presence():
    m = VirtioSerialModel()
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    snap = m.snapshot()
    assert snap.controllers["c"].id == "c"
    assert snap.ports["a"].guest.present is True
    assert snap.ports["a"].guest.name == "a"


def test_diff_goes_on_past_a_missing_port_and_formats_a_table():
    left, right = VirtioSerialModel(), VirtioSerialModel()
    for m in (left, right):
        m.hotplug_controller("c")
        m.hotplug("b", controller="c")
    left.hotplug("a", controller="c")
    right.host_open("b")
    differences = diff(left.snapshot(), right.snapshot())
    assert [(d.port, d.field) for d in differences] == [
        ("a", "present"),
        ("b", "qemu.host_connected"),
        ("b", "guest.host_connected"),
    ]
    assert format_diff(differences[:1]).splitlines() == [
        "port  field    expected  actual",
        "----  -------  --------  ------",
        "a     present  True      False",
    ]


# ---------------------------------------------------------------- migration
def migrated_error(data: bytes, dest: VirtioSerialModel) -> str:
    with pytest.raises(ModelError) as err:
        load(dest, data)
    return str(err.value)


def port_model(max_ports: int = 31, behaviour: Behaviour | None = None) -> VirtioSerialModel:
    m = VirtioSerialModel(behaviour)
    m.hotplug_controller("c", max_ports=max_ports)
    m.hotplug("a", controller="c")
    return m


def held_model(payload: Payload) -> VirtioSerialModel:
    m = open_port("a", stalled=True, host_socket_sndbuf=1, guest_write_chunk=2)
    m.guest_write("a", payload)
    return m


def test_migration_errors_say_where():
    data = save(port_model())
    truncated = "load of migration failed: Input/output error (section ends early)"
    assert migrated_error(data[:-3], port_model()) == truncated
    held = save(held_model(Payload.literal(b"hello")))
    magic = held.index(b"VQE1")
    assert migrated_error(held[: magic + 2], port_model()) == truncated  # inside the magic
    assert migrated_error(held[: magic + 30], port_model()) == truncated  # inside the data
    bad = held.replace(b"VQE1", b"XXXX")
    assert migrated_error(bad, port_model()) == (
        "load of migration failed: Invalid argument (bad element blob)"
    )
    other = VirtioSerialModel()
    other.hotplug_controller("c")
    other.hotplug("a", controller="c", nr=2)
    assert migrated_error(data, other) == (
        "load of migration failed: Invalid argument (ports_map word 0 differs)"
    )
    wrong_id = data[:-10] + struct.pack(">I", 7) + data[-6:]
    assert migrated_error(wrong_id, port_model()) == (
        "load of migration failed: Invalid argument (no port with id 7)"
    )
    strict = port_model(20, Behaviour(load_checks_max_nr_ports=True))
    assert migrated_error(data, strict) == (
        "load of migration failed: Invalid argument (source had more ports than us)"
    )


def test_strict_load_accepts_the_same_max_ports():
    strict = port_model(31, Behaviour(load_checks_max_nr_ports=True))
    events = load(strict, save(port_model()))
    assert [(e.kind, e.port, e.value) for e in events] == [("VSERPORT_CHANGE", "a", 0)]


@pytest.mark.parametrize("max_ports", [1, 32, 64, 100])
def test_save_and_load_every_map_size(max_ports):
    source = VirtioSerialModel()
    source.hotplug_controller("c", max_ports=max_ports)
    for i in range(1, max_ports):
        source.hotplug(f"p{i}", controller="c")
    data = save(source)
    words = (max_ports + 31) // 32
    assert len(data) == 8 + 4 * words + 4 + 10 * (max_ports - 1)
    dest = clone_configuration(source)
    load(dest, data)
    assert dest.controllers["c"].ports_map == source.controllers["c"].ports_map
    strict = clone_configuration(source)
    strict.behaviour = Behaviour(load_checks_max_nr_ports=True)
    load(strict, data)


def test_element_of_a_generated_payload_with_a_negative_seed():
    source = held_model(Payload.generated(-5, 5))
    data = save(source)
    # u8 1 (generated), be64 seed two's complement, be64 length
    assert struct.pack(">Bqq", 1, -5, 5) in data
    dest = port_model()
    dest.host_open("a")
    load(dest, data)
    (piece,) = dest.host_read("a").value.slices  # unthrottled on load, flushed
    # the held element (the out_vq behind it is guest RAM, which load() alone does not move)
    assert (piece.payload, piece.start, piece.end) == (Payload.generated(-5, 5), 2, 4)


def test_destination_carries_on_on_its_own_after_migration():
    source = held_model(Payload.literal(b"hello"))
    source.hotplug("con", controller="c", console=True)
    source.host_write("a", b"to guest")
    dest = clone_configuration(source)
    migrate(source, dest)
    assert dest.behaviour == source.behaviour
    assert dest.discarded("guest->host") == source.discarded("guest->host")
    source.guest_read("a")  # the source's queues are not the destination's
    source.host_close("a")
    assert dest.guest_read("a").value.slices[0].data() == b"to guest"
    assert dest.snapshot().ports["a"].guest.host_connected
    dest.hotplug("con2", controller="c", console=True)
    assert dest.snapshot().ports["con2"].guest.console_vtermno == 2
    dest.set_host_backpressure("a", False)
    assert dest.guest_read("a").pending.ticket >= 1


def test_clone_keeps_backends_and_migrate_loads_every_controller():
    source = VirtioSerialModel(Behaviour(guest_rx_buffer=7))
    source.hotplug_controller("c1")
    source.hotplug_controller("c2")
    source.hotplug("a", controller="c1", backend="none")
    source.hotplug("b", controller="c2")
    source.guest_open("a")
    source.guest_open("b")
    dest = clone_configuration(source)
    assert dest.behaviour == source.behaviour
    assert dest.ports["a"].backend == "none"
    events = migrate(source, dest)
    assert [(e.port, e.value) for e in events] == [("a", 1), ("b", 1)]


def test_load_tells_the_guest_the_destination_host_state():
    source = port_model()
    source.host_open("a")
    dest = port_model()
    load(dest, save(source))
    assert dest.snapshot().ports["a"].guest.host_connected is False


# ----------------------------------------------------- device: texts and records
def test_device_errors_name_the_port_and_the_reason():
    m = VirtioSerialModel()
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    m.hotplug("con", controller="c", console=True)
    m.hotplug("quiet", controller="c", backend="none")
    assert error_of(m.host_open, "nope") == "ENOENT (nope)"
    assert error_of(m.guest_close, "nope") == "ENOENT (nope)"
    assert error_of(m.guest_close, "a") == "EBADF (no open guest fd for a)"
    assert error_of(m.guest_open, "con") == "ENXIO (console ports are opened through hvc)"
    assert error_of(m.host_open, "quiet") == "ECONNREFUSED (port has no chardev)"
    m.unplug("a")
    assert error_of(m.host_open, "a") == "ENODEV (a)"


@pytest.mark.parametrize(
    ("end", "text"),
    [
        (lambda m: m.guest_close("a"), "EBADF (fd closed)"),
        (lambda m: m.unplug("a"), "ENODEV (port unplugged)"),
        (lambda m: m.guest_reset(), "KILLED (guest reset)"),
    ],
)
def test_blocked_operations_end_with_the_reason(end, text):
    m = open_port("a")
    read = m.guest_read("a").pending
    m.set_host_backpressure("a", True)
    m.hotplug("b", controller="c")
    m.guest_open("b")
    write = m.guest_write("b", b"x").pending  # host not connected: blocks
    assert (read.op, read.port, write.op, write.port) == ("guest_read", "a", "guest_write", "b")
    assert read.ticket != write.ticket
    done = next(c for c in end(m).completed if c.ticket == read.ticket)
    assert (done.op, done.port, done.result, str(done.error)) == ("guest_read", "a", None, text)


def test_every_discard_is_recorded_with_where_and_why():
    m = VirtioSerialModel(Behaviour(host_socket_sndbuf=1, guest_write_chunk=2, guest_rx_capacity=4))
    m.hotplug_controller("c")
    # unplug with bytes everywhere, then the same name plugged again
    m.hotplug("a", controller="c")
    m.host_open("a")
    m.guest_open("a")
    m.host_write("a", b"123456")  # 4 into the guest, 2 left in the host socket
    m.set_host_backpressure("a", True)
    m.guest_write("a", b"hello")  # "he" to the host socket, 3 held by QEMU
    m.unplug("a")
    m.hotplug("a", controller="c")  # the old "he" can no longer be read
    # host close with bytes both ways
    plug_open(m, "b", stalled=True)
    m.guest_write("b", b"abcdef")  # "ab" out, 4 held
    m.host_write("b", b"xy")
    m.guest_close("b")  # "xy" unread
    assert m.snapshot().ports["b"].guest.bytes_discarded == 2
    m.host_write("b", b"zz")  # waits in the socket: the guest has it closed
    m.host_close("b")
    # reset, and console output
    plug_open(m, "r", stalled=True)
    m.guest_write("r", b"abcdef")
    m.host_write("r", b"xy")
    m.hotplug("con", controller="c", console=True)
    m.host_open("con")
    m.host_write("con", b"abc")
    m.guest_reset()
    got = [(d.port, d.direction, d.where, d.nbytes, d.reason) for d in m.discards]
    g2h, h2g = "guest->host", "host->guest"
    assert got == [
        ("a", g2h, "QEMU", 3, "QEMU remove_port discards queued guest data"),
        ("a", h2g, "host socket", 2, "port unplugged"),
        ("a", h2g, "guest", 4, "port unplugged"),
        ("a", g2h, "host socket", 2, "port plugged again"),
        ("b", h2g, "guest", 2, "guest closed with unread input"),
        ("b", g2h, "host socket", 2, "host closed unread"),
        ("b", h2g, "host socket", 2, "host closed unsent"),
        ("b", g2h, "QEMU", 4, "host closed"),
        ("r", g2h, "QEMU", 4, "guest reset"),
        ("r", h2g, "guest", 2, "guest reset"),
        ("con", h2g, "guest", 3, "guest reset"),  # no tty read it: it waited in the queue
    ]


def test_reused_vtermnos_fill_the_lowest_gap():
    m = VirtioSerialModel(Behaviour(console_vtermno_reuse=True))
    m.hotplug_controller("c")
    for name in ("c1", "c2", "c3"):
        m.hotplug(name, controller="c", console=True)
    m.unplug("c2")
    m.hotplug("c4", controller="c", console=True)
    m.hotplug("c5", controller="c", console=True)
    got = {n: v.guest.console_vtermno for n, v in m.snapshot().ports.items()}
    assert got == {"c1": 1, "c3": 3, "c4": 2, "c5": 4}


def test_save_of_a_model_with_several_controllers_needs_a_name():
    m = VirtioSerialModel()
    m.hotplug_controller("a")
    m.hotplug_controller("b")
    with pytest.raises(ValueError) as err:
        save(m)
    assert str(err.value) == "name the controller: the model has more than one"


def queues_everywhere() -> VirtioSerialModel:
    """Bytes in the guest, in both host sockets, in QEMU's held element, a blocked write."""
    m = open_port("a", host_socket_sndbuf=1, guest_write_chunk=2, guest_rx_capacity=2)
    m.host_write("a", b"123456")
    m.set_host_backpressure("a", True)
    m.guest_write("a", b"hello")
    m.hotplug("b", controller="c")
    m.guest_open("b")
    assert m.guest_write("b", b"xyz").pending is not None
    return m


def test_source_going_on_after_migration_does_not_touch_the_destination():
    first, second = queues_everywhere(), queues_everywhere()
    moved, untouched = clone_configuration(first), clone_configuration(second)
    migrate(first, moved)
    migrate(second, untouched)
    first.set_host_backpressure("a", False)  # the source goes on using the queues it had
    first.host_read("a")
    first.guest_read("a")
    first.host_open("b")

    def drive(m: VirtioSerialModel) -> list[object]:
        return [
            m.set_host_backpressure("a", False),
            m.host_read("a"),
            m.guest_read("a"),
            m.host_open("b"),
            m.host_read("b"),
        ]

    assert drive(moved) == drive(untouched)


def test_host_read_errors_and_unthrottle_flags():
    m = VirtioSerialModel(Behaviour(host_socket_sndbuf=1, guest_write_chunk=2))
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    assert error_of(m.host_read, "nope") == "ENOENT (nope)"
    m.host_open("a")
    m.guest_open("a")
    m.set_host_backpressure("a", True)
    m.guest_write("a", b"abc")  # "ab" in the socket, 1 byte held: throttled
    assert m.snapshot().ports["a"].qemu.throttled is True
    # the stalled host reads only what it received before the stall: nothing
    assert error_of(m.host_read, "a") == "EAGAIN"
    assert m.snapshot().ports["a"].qemu.throttled is True
    m.set_host_backpressure("a", False)  # it reads the socket empty: the last byte goes out
    assert m.snapshot().ports["a"].qemu.throttled is False


def test_bytes_discarded_adds_up_over_closes():
    m = VirtioSerialModel()
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    m.host_open("a")
    for data in (b"12", b"345"):
        m.guest_open("a")
        m.host_write("a", data)
        m.guest_close("a")
    assert m.snapshot().ports["a"].guest.bytes_discarded == 5


def throttled_after_reset(sndbuf: int) -> VirtioSerialModel:
    """QEMU's guest_reset keeps ``throttled`` (spec: it drops the popped element only), so
    what the guest writes after the reset stays in its out_vq: nothing is popped."""
    m = VirtioSerialModel(Behaviour(host_socket_sndbuf=sndbuf, guest_write_chunk=2))
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    m.host_open("a")
    m.guest_open("a")
    m.set_host_backpressure("a", True)
    m.guest_write("a", b"x" * 5)  # the socket takes at most one write: throttled
    m.guest_reset()
    m.guest_open("a")
    assert m.guest_write("a", b"abc").value == 3  # accepted by the driver, into the out_vq
    assert (m.snapshot().ports["a"].qemu.throttled, element_popped(m)) == (True, False)
    return m


def element_popped(m: VirtioSerialModel) -> bool:
    """elem_popped of the only port of the only controller, as the migration section says
    (config 8 bytes, one map word, the port count, then id, guest and host connected)."""
    (popped,) = struct.unpack_from(">I", save(m), 8 + 4 + 4 + 4 + 1 + 1)
    return bool(popped)


def test_stalling_a_stalled_host_again_pops_nothing() -> None:
    m = throttled_after_reset(0)
    m.set_host_backpressure("a", True)  # the host still does not read: no chardev event
    assert (m.snapshot().ports["a"].qemu.throttled, element_popped(m)) == (True, False)


def test_a_stalled_host_reading_leaves_a_full_socket_throttled() -> None:
    m = throttled_after_reset(1)
    # what went into the socket before the reset is not read while stalled: no unthrottle
    assert error_of(m.host_read, "a", 0) == "EAGAIN"
    assert (m.snapshot().ports["a"].qemu.throttled, element_popped(m)) == (True, False)
    m.set_host_backpressure("a", False)
    assert m.host_read("a").value.length == 2 + 3  # the write before the reset, and after


def test_unplugging_port_0_without_multiport_leaves_nothing_in_flight() -> None:
    """The guest keeps its port 0 (no PORT_REMOVE without a control queue); the QEMU port's
    unsent host bytes are discarded, so written = discarded + in flight still holds."""
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=1)
    m.hotplug("con", controller="c", console=True)
    m.host_open("con")
    m.host_write("con", b"abc")  # guest_connected only at DRIVER_OK: waits in the socket
    m.unplug("con")
    assert (m.in_flight("host->guest"), m.discarded("host->guest")) == (0, 3)
    assert m.snapshot().ports["<c port 0>"].guest.is_console is True


def test_a_read_across_refilled_buffers_stops_at_max_bytes() -> None:
    """read(fd, buf, 6) never returns more than 6 bytes, also when the guest's buffers were
    refilled from the host socket while it read."""
    m = VirtioSerialModel(Behaviour(guest_rx_capacity=4))
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    m.host_open("a")
    m.guest_open("a")
    m.host_write("a", b"0123456789")  # 4 in the guest's buffers, 6 wait in the socket
    first, rest = m.guest_read("a", 6).value, m.guest_read("a").value
    assert isinstance(first, ReadResult) and isinstance(rest, ReadResult)
    assert (slices_bytes(first.slices), slices_bytes(rest.slices)) == (b"012345", b"6789")


def test_guest_open_errors_say_why() -> None:
    m = VirtioSerialModel(Behaviour(control_rx_buffers=1))
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    m.hotplug("b", controller="c")
    assert error_of(m.guest_open, "nope") == "ENOENT (nope)"
    m.reboot()  # one control rx buffer: only a's PORT_ADD reaches the guest
    assert error_of(m.guest_open, "b") == (
        "ENOENT (the guest never got PORT_ADD (no control rx buffer))"
    )


def test_reboot_tells_the_guest_every_port_name() -> None:
    """The probe handshake sends PORT_NAME for every port: sysfs shows each name again."""
    m = VirtioSerialModel()
    m.hotplug_controller("c")
    for name in ("a", "b"):
        m.hotplug(name, controller="c")
    m.hotplug("con", controller="c", console=True)
    m.reboot()
    assert {n: v.guest.name for n, v in m.snapshot().ports.items()} == {
        "a": "a",
        "b": "b",
        "con": "con",
    }


def test_host_close_discards_the_held_element_and_every_buffer_behind_it() -> None:
    """virtio_serial_close: discard_throttle_data + discard_vq_data (the whole out_vq)."""
    m = VirtioSerialModel(Behaviour(guest_write_chunk=2))
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    m.host_open("a")
    m.guest_open("a")
    m.set_host_backpressure("a", True)
    m.guest_write("a", b"hello")  # "he" popped and held, "ll" and "o" queued behind it
    m.host_close("a")
    assert (m.discarded("guest->host"), m.in_flight("guest->host")) == (5, 0)


def test_the_largest_uint32_max_ports_parses_and_is_then_too_many() -> None:
    """2**32 - 1 is a valid uint32 for QEMU's property parser: realize refuses it, as more
    than the 511 ports a controller supports."""
    m = VirtioSerialModel()
    assert error_of(m.hotplug_controller, "c", max_ports=2**32 - 1) == (
        "maximum ports supported: 511"
    )


def test_a_blocked_read_behind_a_blocked_write_still_completes() -> None:
    """Blocked operations of different ports are independent: a write still waiting for its
    host does not hold up a read whose data has arrived."""
    m = VirtioSerialModel()
    m.hotplug_controller("c")
    m.hotplug("w", controller="c")
    m.guest_open("w")
    write = m.guest_write("w", b"x").pending  # the host end of w is closed: blocks
    m.hotplug("r", controller="c")
    m.host_open("r")
    m.guest_open("r")
    read = m.guest_read("r").pending
    assert write is not None and read is not None
    done = m.host_write("r", b"data").completed
    assert [(c.ticket, c.op, c.port) for c in done] == [(read.ticket, "guest_read", "r")]
    assert isinstance(done[0].result, ReadResult)
    assert slices_bytes(done[0].result.slices) == b"data"
    assert m.blocked() == [write]


def test_an_unplugged_port_migrates_as_a_copy_the_source_cannot_touch() -> None:
    # the host never read "xyz" before the unplug, and the guest still holds the fd
    source = open_port("a")
    source.guest_write("a", b"xyz")
    source.unplug("a")
    dest = clone_configuration(source)
    migrate(source, dest)
    # (at EOF: the unplug removed the chardev, so the socket ends after the last byte)
    xyz = ReadResult((Slice(Payload.literal(b"xyz"), 0, 3),), eof=True)
    assert source.host_read("a").value == xyz
    source.guest_close("a")
    assert dest.host_read("a").value == xyz
    dest.guest_close("a")  # EBADF had the close on the source reached the destination


def test_a_stale_port_migrates_as_a_copy_the_source_cannot_touch() -> None:
    # plugged again under its name: the guest's fd still refers to the old (stale) port
    source = open_port("a")
    source.unplug("a")
    source.hotplug("a", controller="c")
    dest = clone_configuration(source)
    migrate(source, dest)
    source.guest_close("a")
    dest.guest_close("a")  # EBADF had the close on the source reached the destination


def test_build_model_runs_the_behaviour_it_is_given() -> None:
    behaviour = Behaviour(guest_rx_capacity=4096, control_rx_buffers=3)
    assert build_model(MachineDecl(), behaviour).behaviour == behaviour


def test_every_reply_the_driver_had_no_buffer_for_is_lost_on_its_way_to_the_driver() -> None:
    ports = [C.DevicePort(i, f"p{i}", host_connected=True) for i in (1, 2, 3)]
    log, _ = C.handshake(ports, 31, Behaviour(control_rx_buffers=3))
    lost = [wire for wire in log if wire.lost]
    assert lost and all(wire.direction == C.TO_DRIVER for wire in lost)


def test_a_port_whose_port_add_was_lost_shows_qemu_side_only() -> None:
    # 34 serial ports, host ends closed: the 32 control buffers go to 32 PORT_ADDs, and QEMU
    # drops the PORT_ADDs of ids 33 and 34 (see test_more_ports_than_buffers_lose_port_add)
    m = VirtioSerialModel(Behaviour(control_rx_buffers=32))
    m.hotplug_controller("c", max_ports=64)
    for nr in range(1, 35):
        m.hotplug(f"p{nr}", controller="c", nr=nr)
    m.boot()
    ports = m.snapshot().ports
    for nr in (33, 34):
        assert ports[f"p{nr}"] == PortView(
            "c", nr, False, QemuPortView(False, False, False), ABSENT
        )
    assert ports["p32"].guest.present


def test_a_field_only_one_side_has_is_a_difference() -> None:
    # QEMU has no port 0 on a controller without MULTIPORT (qemu None); the other side has one
    guest_only = PortView("c", 0, False, None, ABSENT)
    with_qemu = PortView("c", 0, False, QemuPortView(True, False, False), ABSENT)
    got = diff(Snapshot({}, {"x": guest_only}), Snapshot({}, {"x": with_qemu}))
    assert [(d.field, d.expected, d.actual) for d in got] == [
        ("qemu", None, ABSENT_FIELD),
        ("qemu.guest_connected", ABSENT_FIELD, True),
        ("qemu.host_connected", ABSENT_FIELD, False),
        ("qemu.throttled", ABSENT_FIELD, False),
    ]


@pytest.mark.parametrize("max_ports", [1, 31])
def test_a_controller_only_the_destination_has_keeps_its_own_guest_side(max_ports: int) -> None:
    # no section in the stream for it: it is not loaded, and no source port 0 replaces its own
    source = open_port("a")
    dest = clone_configuration(source)
    dest.hotplug_controller("d", max_ports=max_ports)
    before = dest.snapshot().ports.get(guest_only_key("d", 0))
    migrate(source, dest)
    assert dest.snapshot().ports.get(guest_only_key("d", 0)) == before
    assert (before is None) == (max_ports > 1)  # only a controller without MULTIPORT has one


def test_a_vterm_range_is_below_a_number_when_its_lowest_value_is() -> None:
    assert VtermRange(2, 4) < 3
    assert not VtermRange(2, 4) < 2


def test_either_equals_both_flags_and_only_flags() -> None:
    assert EITHER == True and EITHER == False and EITHER == EITHER  # noqa: E712
    assert EITHER != 1.5 and EITHER != "on"
    assert {EITHER: 1}[EITHER] == 1 and repr(EITHER) == "either"
    with pytest.raises(TypeError, match="compare it"):
        bool(EITHER)
    diffs = diff_of_throttled(EITHER, True) + diff_of_throttled(EITHER, False)
    assert diffs == [] and format_diff(diff_of_throttled(True, False)).count("True") == 1


def diff_of_throttled(expected: object, actual: bool) -> list[object]:
    m = VirtioSerialModel()
    m.hotplug_controller("c")
    m.hotplug("a", controller="c")
    want = m.snapshot()
    view = want.ports["a"]
    assert view.qemu is not None
    predicted = dataclasses.replace(view, qemu=dataclasses.replace(view.qemu, throttled=expected))
    real = dataclasses.replace(view, qemu=dataclasses.replace(view.qemu, throttled=actual))
    return list(
        diff(
            dataclasses.replace(want, ports={"a": predicted}),
            dataclasses.replace(want, ports={"a": real}),
        )
    )
