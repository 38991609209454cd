"""Open/close, data, blocking, poll and throttling on both sides.

QEMU behaviour cites the seed (2010 hw/virtio-serial-bus.c) line numbers; guest behaviour
cites Linux drivers/char/virtio_console.c functions (6.x).
"""

from __future__ import annotations

import hashlib

import pytest

from harness.model import (
    EITHER,
    EOF_RESULT,
    G2H,
    H2G,
    Backend,
    Behaviour,
    ModelError,
    Payload,
    PortView,
    VirtioSerialModel,
    payload_bytes,
)
from harness.model.payload import slices_bytes
from tests.unit.model.conftest import error_of, open_port


def data_of(outcome) -> bytes:
    return slices_bytes(outcome.value.slices)


# ------------------------------------------------------------------ host open/close
def test_host_open_sets_both_views(model):
    # seed 224-234: virtio_serial_open sets host_connected and sends PORT_OPEN 1
    model.hotplug("p", controller="vser0")
    model.host_open("p")
    view = model.snapshot().ports["p"]
    assert view.qemu.host_connected and view.guest.host_connected
    assert not view.qemu.guest_connected


def test_host_open_twice_and_close_unopened(model):
    model.hotplug("p", controller="vser0")
    assert "ENOTCONN" in error_of(model.host_close, "p")
    model.host_open("p")
    assert "EISCONN" in error_of(model.host_open, "p")


def hotplug_console(model: VirtioSerialModel, backend: Backend = "socket") -> PortView:
    """Console 'con' on vser0; its view once the guest's handshake ran."""
    model.hotplug("con", controller="vser0", console=True, backend=backend)
    return model.snapshot().ports["con"]


def test_console_with_chardev_is_host_connected_from_realize(model):
    # virtio-console.c virtconsole_realize: consoles call virtio_serial_open at realize
    view = hotplug_console(model)
    assert view.qemu.host_connected and view.guest.host_connected
    # the client coming and going does not change QEMU's state (no chr_event for consoles)
    model.host_open("con")
    model.host_close("con")
    assert model.snapshot().ports["con"].qemu.host_connected


def test_console_without_chardev_never_host_connected(model):
    assert not hotplug_console(model, backend="none").qemu.host_connected
    with pytest.raises(ModelError, match="ECONNREFUSED"):
        model.host_open("con")


def test_console_guest_state_after_handshake(model):
    # Linux init_port_console: guest_connected = true, PORT_OPEN 1; vtermno from 1
    view = hotplug_console(model)
    assert view.qemu.guest_connected and view.guest.guest_connected
    assert view.guest.is_console and view.guest.console_vtermno == 1


def test_host_close_discards_queued_guest_data_and_resets_throttle():
    # seed 237-249: throttled = false, discard_vq_data, PORT_OPEN 0
    opened = open_port(host_socket_sndbuf=0)
    opened.set_host_backpressure("p", True)
    opened.guest_write("p", b"abcdef")
    assert opened.snapshot().ports["p"].qemu.throttled
    opened.host_close("p")
    view = opened.snapshot().ports["p"]
    assert not view.qemu.throttled and not view.qemu.host_connected
    assert not view.guest.host_connected
    assert [(d.direction, d.nbytes) for d in opened.discards] == [(G2H, 6)]


def test_host_close_loses_unread_socket_data(opened):
    opened.guest_write("p", b"unread")
    opened.guest_close("p")
    opened.host_write("p", b"unsent")
    opened.host_close("p")
    assert {(d.direction, d.nbytes) for d in opened.discards} == {(G2H, 6), (H2G, 6)}


# ------------------------------------------------------------------ guest open/close
def test_guest_open_close(opened):
    # seed 387-388: PORT_OPEN from the guest sets guest_connected
    assert opened.snapshot().ports["p"].qemu.guest_connected
    opened.guest_close("p")
    view = opened.snapshot().ports["p"]
    assert not view.qemu.guest_connected and not view.guest.guest_connected
    assert view.poll is None


def test_second_guest_open_is_ebusy(opened):
    with pytest.raises(ModelError) as err:
        opened.guest_open("p")
    assert err.value.text == "EBUSY"


def test_console_port_open_is_enxio(model):
    model.hotplug("con", controller="vser0", console=True)
    with pytest.raises(ModelError, match=r"^ENXIO"):
        model.guest_open("con")


def test_open_after_unplug_and_of_unknown_is_enoent(model):
    model.hotplug("p", controller="vser0")
    model.unplug("p")
    with pytest.raises(ModelError, match=r"^ENOENT \(port was unplugged"):
        model.guest_open("p")
    with pytest.raises(ModelError, match=r"^ENOENT"):
        model.guest_open("never")
    with pytest.raises(ModelError, match=r"^ENOENT"):
        model.guest_close("never")
    with pytest.raises(ModelError, match=r"^ENODEV"):
        model.host_open("p")


def test_guest_close_without_open_is_ebadf(model):
    model.hotplug("p", controller="vser0")
    with pytest.raises(ModelError, match="EBADF"):
        model.guest_close("p")


def test_lseek_is_espipe(opened):
    with pytest.raises(ModelError, match="ESPIPE"):
        opened.guest_seek("p")


# ------------------------------------------------------------------ guest -> host
def test_guest_write_reaches_host(opened):
    out = opened.guest_write("p", b"hello")
    assert out.value == 5 and out.pending is None
    assert data_of(opened.host_read("p")) == b"hello"
    assert opened.snapshot().ports["p"].guest.bytes_sent == 5


def test_guest_write_blocks_while_host_closed_and_completes_on_open(model):
    # Linux will_write_block: !host_connected -> block; PORT_OPEN 1 wakes the writer
    model.hotplug("p", controller="vser0")
    model.guest_open("p")
    out = model.guest_write("p", b"xyz")
    assert out.pending is not None and out.value is None
    assert model.blocked() == [out.pending]
    opened = model.host_open("p")
    assert [(c.ticket, c.result) for c in opened.completed] == [(out.pending.ticket, 3)]
    assert model.blocked() == []
    assert data_of(model.host_read("p")) == b"xyz"


def test_nonblocking_guest_write_while_host_closed_is_eagain(model):
    model.hotplug("p", controller="vser0")
    model.guest_open("p", nonblocking=True)
    with pytest.raises(ModelError, match="EAGAIN"):
        model.guest_write("p", b"x")


def test_empty_guest_write_returns_0(opened):
    assert opened.guest_write("p", b"").value == 0


def test_guest_write_is_split_in_32k_buffers():
    # port_fops_write: count = min(32 KiB, count); one out_vq buffer per call
    m = open_port(stalled=True, host_socket_sndbuf=0)
    m.guest_write("p", Payload.generated(1, 3 * 32768 + 5))
    port = m.ports["p"]
    assert port.held.length == 32768
    assert [c.length for c in port.guest.outvq] == [32768, 32768, 5]


def test_outvq_full_nonblocking_is_partial_then_eagain():
    # 2 descriptors: the popped (held) element plus one queued buffer fill the queue
    m = VirtioSerialModel(
        Behaviour(guest_outvq_buffers=2, guest_write_chunk=4, host_socket_sndbuf=0)
    )
    m.hotplug_controller("c")
    m.hotplug("p", controller="c")
    m.host_open("p")
    m.guest_open("p", nonblocking=True)
    m.set_host_backpressure("p", True)
    assert m.guest_write("p", b"0123456789").value == 8
    assert "OUT" not in m.poll("p")
    with pytest.raises(ModelError, match="EAGAIN"):
        m.guest_write("p", b"more")
    m.set_host_backpressure("p", False)
    assert data_of(m.host_read("p")) == b"01234567"
    assert "OUT" in m.poll("p")


def test_blocked_write_resumes_when_host_drains():
    m = open_port(stalled=True, guest_outvq_buffers=1, guest_write_chunk=2, host_socket_sndbuf=0)
    out = m.guest_write("p", b"abcdef")
    assert out.pending is not None
    done = m.set_host_backpressure("p", False)
    assert [c.result for c in done.completed] == [6]
    assert data_of(m.host_read("p")) == b"abcdef"


# ------------------------------------------------------------------ throttling
def test_short_chardev_write_throttles_and_keeps_element():
    # flush_buf: a write the stalled socket refuses throttles the port and keeps the element;
    # a fresh socket takes the first write whole (unix_stream_sendmsg: one skb per write)
    m = open_port(stalled=True, host_socket_sndbuf=1, guest_write_chunk=2)
    m.guest_write("p", b"hello")
    port = m.ports["p"]
    assert port.throttled and slices_bytes(port.held.slices) == b"ll" and port.held_offset == 0
    assert m.snapshot().ports["p"].qemu.throttled is True
    # "he" waits in the socket: the stalled host reads nothing, and that unthrottles nothing
    assert error_of(m.host_read, "p") == "EAGAIN"
    assert m.snapshot().ports["p"].qemu.throttled is True
    m.set_host_backpressure("p", False)
    assert data_of(m.host_read("p")) == b"hello"
    assert m.snapshot().ports["p"].qemu.throttled is False


def test_stalled_socket_takes_writes_by_their_charge():
    # 100-byte writes are charged 356..1224 bytes each: 212992 takes 175 for certain, refuses
    # the 600th for certain, and in between the real socket may already have refused one
    m = open_port(stalled=True, guest_write_chunk=100)
    m.guest_write("p", Payload.generated(3, 100 * 175))
    assert m.snapshot().ports["p"].qemu.throttled is False
    m.guest_write("p", Payload.generated(4, 100))
    view = m.snapshot().ports["p"].qemu
    assert view.throttled == EITHER and view.throttled == True and view.throttled == False  # noqa: E712
    m.guest_write("p", Payload.generated(5, 100 * 500))
    assert m.snapshot().ports["p"].qemu.throttled is True
    assert m.ports["p"].socket.nbytes == 100 * 599
    m.set_host_backpressure("p", False)
    assert data_of(m.host_read("p")) == b"".join(
        payload_bytes(Payload.generated(seed, n)) for seed, n in ((3, 17500), (4, 100), (5, 50000))
    )
    assert m.snapshot().ports["p"].qemu.throttled is False


def test_a_large_write_under_the_socket_buffer_does_not_throttle():
    # the 300000-byte write the explorer drew: 9 writes of 32 KiB and one of 5088, after
    # 100 bytes; the socket took the 100 bytes and 3 x 32 KiB for certain
    m = open_port(stalled=True)
    m.guest_write("p", Payload.generated(1, 100))
    assert m.snapshot().ports["p"].qemu.throttled is False
    m.guest_write("p", Payload.generated(2, 3 * 32768))
    assert m.snapshot().ports["p"].qemu.throttled is False
    m.guest_write("p", Payload.generated(3, 300000))
    assert m.snapshot().ports["p"].qemu.throttled is True


def test_stall_without_data_does_not_throttle(opened):
    opened.set_host_backpressure("p", True)
    assert not opened.snapshot().ports["p"].qemu.throttled


def test_backpressure_needs_a_connected_host(model):
    model.hotplug("p", controller="vser0")
    with pytest.raises(ModelError, match="ENOTCONN"):
        model.set_host_backpressure("p", True)


def test_console_never_throttles_and_its_input_waits_in_the_guest_queue(model):
    # virtio-console.c flush_buf: throttling only for !is_console
    model.hotplug("con", controller="vser0", console=True)
    model.host_open("con")
    model.set_host_backpressure("con", True)
    model.host_write("con", b"to-hvc")
    view = model.snapshot().ports["con"]
    assert not view.qemu.throttled
    # in_intr's get_inbuf took the buffer and counted it; no tty on the hvc reads it
    assert view.guest.bytes_received == 6 and not model.discards
    model.host_write("con", b"more")
    assert model.snapshot().ports["con"].guest.bytes_received == 6  # the next buffer waits


# ------------------------------------------------------------------ host -> guest
def test_host_data_waits_in_socket_until_guest_opens(model):
    # seed 266-277 virtio_serial_guest_ready: 0 while !guest_connected (multiport)
    model.hotplug("p", controller="vser0")
    model.host_open("p")
    model.host_write("p", b"early")
    assert model.snapshot().ports["p"].guest.bytes_received == 0
    model.guest_open("p")
    assert data_of(model.guest_read("p")) == b"early"
    assert model.snapshot().ports["p"].guest.bytes_received == 5


def test_host_write_requires_connection(model):
    model.hotplug("p", controller="vser0")
    with pytest.raises(ModelError, match="ENOTCONN"):
        model.host_write("p", b"x")


def test_guest_read_limits_and_blocking(opened):
    out = opened.guest_read("p", max_bytes=3)
    assert out.pending is not None
    done = opened.host_write("p", b"abcdef")
    [completion] = done.completed
    assert slices_bytes(completion.result.slices) == b"abc"
    assert data_of(opened.guest_read("p", max_bytes=10)) == b"def"


def test_guest_read_eof_after_buffered_data(opened):
    # port_fops_read: buffered data first, then 0 when !host_connected
    opened.host_write("p", b"last")
    opened.host_close("p")
    assert data_of(opened.guest_read("p")) == b"last"
    assert opened.guest_read("p").value == EOF_RESULT


def test_blocked_read_completes_with_eof_on_host_close(opened):
    pending = opened.guest_read("p").pending
    done = opened.host_close("p")
    assert [(c.ticket, c.result) for c in done.completed] == [(pending.ticket, EOF_RESULT)]


def test_nonblocking_read_without_data_is_eagain(model):
    model.hotplug("p", controller="vser0")
    model.host_open("p")
    model.guest_open("p", nonblocking=True)
    with pytest.raises(ModelError, match="EAGAIN"):
        model.guest_read("p")


def test_guest_close_drops_unread_input(opened):
    # port_fops_release -> discard_port_data: counted in bytes_discarded
    opened.host_write("p", b"unread")
    opened.guest_close("p")
    view = opened.snapshot().ports["p"]
    assert view.guest.bytes_discarded == 6 and view.guest.bytes_received == 6
    assert opened.discards[-1].direction == H2G


def test_guest_rx_capacity_leaves_rest_in_socket():
    m = open_port(guest_rx_capacity=4)
    m.host_write("p", b"0123456789")
    m.guest_close("p")  # only what reached the guest buffers is dropped
    assert m.discards[-1].nbytes == 4
    m.guest_open("p")
    assert data_of(m.guest_read("p")) == b"456789"


def test_host_read_errors(model):
    model.hotplug("p", controller="vser0")
    assert "ENOTCONN" in error_of(model.host_read, "p")
    model.host_open("p")
    assert "EAGAIN" in error_of(model.host_read, "p")
    assert "ENOENT" in error_of(model.host_read, "never")


def test_generated_payload_roundtrip_sha(opened):
    payload = Payload.generated(7, 200_000)
    opened.guest_write("p", payload)
    result = opened.host_read("p").value
    assert result.length == 200_000
    assert result.sha256() == hashlib.sha256(payload_bytes(payload)).hexdigest()


# ------------------------------------------------------------------ poll
def test_poll_masks(model):
    # port_fops_poll: IN if data or host closed; OUT if writable; HUP if host closed
    model.hotplug("p", controller="vser0")
    model.guest_open("p")
    assert model.poll("p") == {"IN", "HUP"}
    model.host_open("p")
    assert model.poll("p") == {"OUT"}
    model.host_write("p", b"x")
    assert model.poll("p") == {"IN", "OUT"}
    assert model.snapshot().ports["p"].poll == {"IN", "OUT"}


def test_poll_without_fd_is_ebadf(model):
    model.hotplug("p", controller="vser0")
    with pytest.raises(ModelError, match="EBADF"):
        model.poll("p")


# ------------------------------------------------------------------ unplug while open
def test_unplug_while_open(opened):
    # Linux unplug_port: guest/host_connected false, waiters woken; read/write ENODEV
    reader = opened.guest_read("p").pending
    done = opened.unplug("p")
    assert done.completed[0].ticket == reader.ticket
    assert done.completed[0].error.text == "ENODEV"
    assert opened.poll("p") == {"HUP"}
    with pytest.raises(ModelError, match="ENODEV"):
        opened.guest_read("p")
    with pytest.raises(ModelError, match="ENODEV"):
        opened.guest_write("p", b"x")
    with pytest.raises(ModelError, match="ENODEV"):
        opened.host_write("p", b"x")
    with pytest.raises(ModelError, match="ENODEV"):
        opened.host_read("p")
    opened.guest_close("p")
    with pytest.raises(ModelError, match="EBADF"):
        opened.guest_close("p")


def test_unplug_discards_queued_data_both_ways():
    opened = open_port(host_socket_sndbuf=0)
    opened.guest_close("p")
    opened.host_write("p", b"in-socket")
    opened.set_host_backpressure("p", True)
    opened.guest_open("p")  # socket data moves into the guest buffers
    opened.guest_write("p", b"held")
    opened.unplug("p")
    reasons = {(d.direction, d.where): d.nbytes for d in opened.discards}
    assert reasons == {(G2H, "QEMU"): 4, (H2G, "guest"): 9}


def test_unplug_discards_host_data_not_yet_read_by_qemu(model):
    model.hotplug("p", controller="vser0")
    model.host_open("p")
    model.host_write("p", b"stuck")
    model.unplug("p")
    assert [(d.where, d.nbytes) for d in model.discards] == [("host socket", 5)]


def test_host_can_still_read_what_reached_its_socket_after_unplug(opened):
    opened.guest_write("p", b"bye")
    opened.unplug("p")
    assert data_of(opened.host_read("p")) == b"bye"


def test_console_unplug_frees_vtermno_for_reuse():
    # kernels with ida_alloc_min(&vtermno_ida, 1) / ida_free on unplug
    model = VirtioSerialModel(Behaviour(console_vtermno_reuse=True))
    model.hotplug_controller("vser0")
    model.hotplug("c1", controller="vser0", console=True)
    model.hotplug("c2", controller="vser0", console=True)
    model.unplug("c1")
    model.hotplug("c3", controller="vser0", console=True)
    assert model.snapshot().ports["c3"].guest.console_vtermno == 1


def test_console_vtermno_counter_without_reuse():
    m = VirtioSerialModel(Behaviour(console_vtermno_reuse=False))
    m.hotplug_controller("c")
    m.hotplug("c1", controller="c", console=True)
    m.unplug("c1")
    m.hotplug("c2", controller="c", console=True)
    assert m.snapshot().ports["c2"].guest.console_vtermno == 2


# ------------------------------------------------------------------ guest reset
def test_guest_reset(opened):
    opened.hotplug("con", controller="vser0", console=True)
    opened.hotplug("gone", controller="vser0")
    opened.guest_open("gone")
    opened.unplug("gone")
    opened.hotplug("gone2", controller="vser0")
    opened.unplug("gone2")
    reader = opened.guest_read("p").pending
    done = opened.reboot()
    assert done.completed[0].ticket == reader.ticket
    assert done.completed[0].error.text == "KILLED"
    view = opened.snapshot().ports["p"]
    assert not view.qemu.guest_connected and view.guest.host_connected and view.poll is None
    assert opened.snapshot().ports["con"].guest.console_vtermno == 1
    assert all(port.guest is None for port in opened.removed.values())
    opened.guest_open("p")


def test_guest_reset_drops_guest_buffers(opened):
    opened.host_write("p", b"lost")
    opened.guest_reset()
    assert [(d.where, d.nbytes, d.reason) for d in opened.discards] == [("guest", 4, "guest reset")]


def test_guest_reset_single_port_controller():
    m = VirtioSerialModel()
    m.hotplug_controller("one", max_ports=1)
    m.hotplug("con", controller="one", console=True)
    m.guest_reset()
    assert m.snapshot().ports["con"].guest.name is None


def test_guest_close_cancels_blocked_ops(opened):
    pending = opened.guest_read("p").pending
    done = opened.guest_close("p")
    assert done.completed[0].ticket == pending.ticket
    assert done.completed[0].error.text == "EBADF"


def test_bytes_received_counts_only_the_buffer_the_driver_holds(opened):
    # drivers/char/virtio_console.c: bytes_received += buf->len in get_inbuf(), called for one
    # buffer at a time (in_intr when port->inbuf is NULL, fill_readbuf when it is used up).
    name = next(iter(opened.ports))
    opened.host_write(name, Payload.generated(7, 1024 * 1024))
    assert opened.snapshot().ports[name].guest.bytes_received == 4096
    opened.guest_read(name, 1000)
    assert opened.snapshot().ports[name].guest.bytes_received == 4096
    opened.guest_close(name)  # discard_port_data takes (and counts) every buffer
    received = opened.snapshot().ports[name].guest
    assert received.bytes_received == received.bytes_discarded + 1000


def test_a_read_ending_inside_a_buffer_keeps_it_held():
    # get_inbuf counts a buffer whole when the driver takes it; fill_readbuf keeps a buffer
    # that a read left bytes in (found by exploration: 300000 queued, read 5000 -> 8192)
    m = open_port(host_socket_sndbuf=0)
    m.host_write("p", Payload.generated(1, 300000))
    counted = [m.snapshot().ports["p"].guest.bytes_received]
    for size in (5000, 3192, 10000):
        assert m.guest_read("p", size).value.length == size
        counted.append(m.snapshot().ports["p"].guest.bytes_received)
    assert counted == [4096, 8192, 3 * 4096, 5 * 4096]


def test_the_last_buffer_counts_only_what_it_holds():
    m = open_port()
    m.host_write("p", Payload.generated(2, 4096 + 100))
    assert m.guest_read("p", 4096 + 50).value.length == 4096 + 50
    assert m.snapshot().ports["p"].guest.bytes_received == 4096 + 100
    assert m.ports["p"].guest.held == 50
