"""The migration relay on real unix sockets (no QEMU): what it copies, reads, and how it ends.

The two QEMUs are stood in for by plain sockets: the "source" connects to the relay and
sends a stream (a real 7.2 stream's virtio-serial sections between junk standing for RAM),
the "destination" listens like `migrate-incoming` and answers on the return path.
"""

from __future__ import annotations

import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import pytest

from harness.machine.relay import MigrationRelay, feed_file
from harness.machine.wire import read_sections, section_footer

ROOT = Path(__file__).resolve().parents[3]
SECTIONS = (ROOT / "fixtures/wire/qemu-7.2-file-migration.bin").read_bytes()
RAM = bytes(range(256)) * 4096 * 4  # 4 MiB standing for guest RAM
STREAM = RAM + SECTIONS + b"QEMU end" + RAM[:1000]


@pytest.fixture
def where() -> Iterator[Path]:
    """A short directory (sun_path holds 108 bytes; pytest's tmp paths can be longer)."""
    with tempfile.TemporaryDirectory(prefix="hil-relay-") as name:
        yield Path(name)


class Destination(threading.Thread):
    """Accepts one connection, reads up to `take` bytes (all: None), answers `reply`."""

    def __init__(self, path: Path, reply: bytes, take: int | None = None) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.reply, self.take, self.received = reply, take, bytearray()
        self.start()

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            while self.take is None or len(self.received) < self.take:
                data = conn.recv(65536)
                if not data:
                    break
                self.received += data
            conn.sendall(self.reply)
        self.listener.close()


def _source(path: Path, stream: bytes) -> tuple[bytes, str | None]:
    """Send `stream` in pieces, then read the return path to its end: (reply, send error)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        error = None
        try:
            for at in range(0, len(stream), 100_003):
                sock.sendall(stream[at : at + 100_003])
            sock.shutdown(socket.SHUT_WR)
        except OSError as failed:  # the far side went away: what QEMU would see
            error = type(failed).__name__
        reply = bytearray()
        try:
            while data := sock.recv(65536):
                reply += data
        except OSError:
            pass
        return bytes(reply), error


def test_every_byte_crosses_both_ways_and_the_sections_are_read(where: Path) -> None:
    destination = Destination(where / "incoming.sock", b"shut: loaded")
    relay = MigrationRelay(where / "relay.sock", where / "incoming.sock", timeout=10).start()
    reply, error = _source(relay.listen_path, STREAM)
    sections = relay.finish(10)
    destination.join(10)
    assert (reply, error) == (b"shut: loaded", None)
    assert bytes(destination.received) == STREAM
    assert relay.scanner.total == len(STREAM) and relay.returned == len(reply)
    expected = read_sections(SECTIONS)
    assert [(s.idstr, s.state) for s in sections] == [(s.idstr, s.state) for s in expected]
    assert [s.start for s in sections] == [len(RAM) + s.start for s in expected]
    relay.close()
    assert not relay.listen_path.exists()


def test_a_destination_that_gives_up_ends_the_relay_and_the_source_sees_it(where: Path) -> None:
    """Like a destination refusing a section: it stops reading, answers and closes."""
    destination = Destination(where / "incoming.sock", b"shut: error 1", take=len(RAM) // 2)
    relay = MigrationRelay(where / "relay.sock", where / "incoming.sock", timeout=10).start()
    reply, error = _source(relay.listen_path, STREAM * 4)
    relay.finish(10)
    destination.join(10)
    assert reply == b"shut: error 1"  # the return path got through before the end
    assert error is not None  # the source's own send failed: it reports that, not the relay
    assert relay.error is not None  # logged; the source reports the failure itself


def test_no_source_connection_ends_the_relay_naming_what_it_waited_for(where: Path) -> None:
    relay = MigrationRelay(where / "relay.sock", where / "incoming.sock", timeout=0.2).start()
    assert relay.finish(10) == []
    assert relay.error == f"no connection from the source QEMU on {relay.listen_path} in 0.2 s"


def test_a_destination_that_is_not_listening_closes_the_source_channel(where: Path) -> None:
    relay = MigrationRelay(where / "relay.sock", where / "gone.sock", timeout=10).start()
    reply, _ = _source(relay.listen_path, RAM)
    assert reply == b""
    assert relay.finish(10) == []
    assert relay.error is not None and str(where / "gone.sock") in relay.error


class Recorder(threading.Thread):
    """A destination that reads everything, noting (time, bytes so far) at every piece."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.received = bytearray()
        self.pieces: list[tuple[float, int]] = []
        self.start()

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            while data := conn.recv(65536):
                self.received += data
                self.pieces.append((time.monotonic(), len(self.received)))
        self.listener.close()


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"10 s passed waiting for {what}"
        time.sleep(0.01)


@contextmanager
def _holding_relay(where: Path) -> Iterator[tuple[Recorder, MigrationRelay, socket.socket]]:
    """A relay that holds for up to 30 s of silence, the recorder at its destination and a
    source connected to it; the caller sends, shuts the source down and finishes the relay."""
    destination = Recorder(where / "incoming.sock")
    relay = MigrationRelay(where / "relay.sock", where / "incoming.sock", 10, hold_quiet=30)
    relay.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as source:
        source.settimeout(10)
        source.connect(str(relay.listen_path))
        yield destination, relay, source
    destination.join(10)


def _relay_while_the_source_waits(where: Path, stream: bytes) -> MigrationRelay:
    """Send `stream` through a holding relay, keeping the source's end open until the
    destination has all of it (a source waiting for the return path); the relay, finished."""
    with _holding_relay(where) as (destination, relay, source):
        source.sendall(stream)
        _wait(lambda: len(destination.received) == len(stream), "the whole stream, source open")
        source.shutdown(socket.SHUT_WR)
        relay.finish(10)
    assert bytes(destination.received) == stream
    return relay


def _gap_after(recorder: Recorder, count: int) -> float:
    """Seconds between the piece that ended at byte ``count`` and the next one (not the
    longest gap: on a loaded machine a scheduling delay elsewhere can be longer)."""
    gaps = [
        later - earlier for (earlier, end), (later, _) in pairwise(recorder.pieces) if end == count
    ]
    assert gaps, f"no piece ended at byte {count}: {[end for _, end in recorder.pieces]}"
    return gaps[0]


def test_from_the_virtio_serial_section_on_the_stream_goes_on_in_one_piece(where: Path) -> None:
    """What a destination QEMU must not wait for in the middle (README finding "QEMU flushes
    a held element while the device is half loaded"): the relay holds it until the end."""
    with _holding_relay(where) as (destination, relay, source):
        source.sendall(RAM)
        _wait(lambda: len(destination.received) == len(RAM), "the RAM part at the destination")
        source.sendall(SECTIONS[:1000])
        _wait(lambda: relay.scanner.total == len(RAM) + 1000, "the relay to read the section")
        source.sendall(SECTIONS[1000:])
        _wait(lambda: relay.scanner.total == len(RAM) + len(SECTIONS), "the rest of it")
        assert len(destination.received) == len(RAM)  # held, not passed on in pieces
        source.shutdown(socket.SHUT_WR)  # the end: everything held goes on
        relay.finish(10)
    assert bytes(destination.received) == RAM + SECTIONS
    assert destination.pieces[-1][1] == len(RAM) + len(SECTIONS)


def test_a_pause_inside_the_section_splits_it_where_the_rings_are_loaded(where: Path) -> None:
    """The finding's test needs the destination to run dry right before the extra state."""
    rest = b"\x05\x12virtio/extra_state" + bytes(64) + b"QEMU end"
    destination = Recorder(where / "incoming.sock")
    relay = MigrationRelay(where / "relay.sock", where / "incoming.sock", 10, 0.3).start()
    reply, error = _source(relay.listen_path, RAM + SECTIONS + rest)
    relay.finish(10)
    destination.join(10)
    assert (reply, error) == (b"", None)
    assert bytes(destination.received) == RAM + SECTIONS + rest
    assert _gap_after(destination, len(RAM) + len(SECTIONS) + 2) >= 0.3  # after the header


def test_a_saved_file_is_fed_whole_with_the_same_split_when_asked(where: Path) -> None:
    """File migrations: the harness feeds the destination (no `exec:cat` pipe that could run
    dry mid-section), and the finding's test can make the same gap there."""
    rest = b"\x05\x12virtio/extra_state" + bytes(64) + b"QEMU end"
    image = where / "migration.state"
    image.write_bytes(RAM + SECTIONS + rest)
    destination = Recorder(where / "incoming.sock")
    assert (
        feed_file(image, where / "incoming.sock", 10, pause_mid_section=0.3) == image.stat().st_size
    )
    destination.join(10)
    assert bytes(destination.received) == RAM + SECTIONS + rest
    assert _gap_after(destination, len(RAM) + len(SECTIONS) + 2) >= 0.3


def test_each_section_goes_on_once_its_footer_arrived_while_the_source_waits(where: Path) -> None:
    """A source with a return path does not end its stream: it waits for the destination's
    answer, which needs the section; the relay must not wait for the source's end."""
    first, second = read_sections(SECTIONS)
    subsections = b"\x05\x12virtio/extra_state" + bytes(64)
    stream = RAM + b"".join(
        SECTIONS[s.start : s.end] + subsections + s.footer for s in (first, second)
    )
    stream += b"\x00\x06"  # QEMU_VM_EOF after the last footer (a hot-plugged controller's
    # section is the last one), then the JSON description: a real 7.2 stream's bytes
    _relay_while_the_source_waits(where, stream)


def test_a_section_whose_device_part_cannot_be_read_is_still_held_to_its_footer(
    where: Path,
) -> None:
    """The hold reads only the section's header and footer (a device part the wire parser
    does not understand must not make the relay wait for the source's end)."""
    idstr = b"0000:00:03.0/virtio-console"
    header = b"\x04" + struct.pack(">I", 42) + bytes([len(idstr)]) + idstr + bytes(4)
    header += struct.pack(">I", 3)
    stream = RAM + header + b"no device part here" + section_footer(42) + b"\x01"
    relay = _relay_while_the_source_waits(where, stream)
    assert relay.scanner.sections() == [] and relay.scanner.begun == 1
