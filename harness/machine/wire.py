"""The virtio-serial part of a real QEMU migration stream, read field by field.

A migration stream (a `file` migration's state file) holds one section per device. Each
virtio-serial-pci controller's is a full section (type 0x04) named `<pci addr>/virtio-console`:

    u8 0x04, be32 section_id, u8 len, idstr, be32 instance_id, be32 version_id, then
    virtio_save(): [MSI-X table + PBA, be16 config_vector]   (virtio-pci save_config)
                   u8 status, u8 isr, be16 queue_sel, be32 features_lo,
                   be32 config_len, config (guest-endian: le16 cols, le16 rows,
                   le32 max_nr_ports[, le32 emerg_wr]),
                   be32 nr_queues, per queue: be32 num, be64 desc, be16 last_avail_idx
                   [, be16 vector with MSI-X],
                   then virtio_serial_save_device() (the layout harness.model.migration
                   writes: be16 cols, be16 rows, be32 max_nr_ports, ports_map words,
                   be32 nr_active_ports, per port be32 id, u8 guest_connected,
                   u8 host_connected, be32 elem_popped, ...).

The MSI-X part's length depends on the vector count, so the device part is found
structurally: the config_len/config/nr_queues triple that is self-consistent
(nr_queues = 2 * (max_nr_ports + 1)), then the queue entries (14 or 16 bytes each), then a
device part whose own max_nr_ports equals the config's. Nothing is taken from the model.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from harness.machine.errors import MachineError

SECTION_SUFFIX = b"/virtio-console"
_SECTION_FULL = 0x04
_SECTION_FOOTER = 0x7E  # QEMU_VM_SECTION_FOOTER, then the section id
_QUEUE_ENTRY_SIZES = (16, 14)  # with an MSI-X vector (virtio-pci's default), without


class WireError(MachineError):
    """The stream has no readable virtio-serial section where one was expected."""


@dataclass(frozen=True)
class WirePort:
    id: int
    guest_connected: int
    host_connected: int
    elem_popped: int


@dataclass(frozen=True)
class DeviceState:
    """virtio_serial_save_device's fields; `ports` stops after the first port with a popped
    element (what follows it is an element in QEMU's own encoding, not compared)."""

    cols: int
    rows: int
    max_nr_ports: int
    ports_map: tuple[int, ...]
    nr_active_ports: int
    ports: tuple[WirePort, ...]
    truncated: bool = False  # ports after a popped element were not read


def parse_device_state(data: bytes, offset: int = 0) -> DeviceState:
    """The device part at `offset` (also how the model's own saved state is read)."""
    return _parse_at(data, offset)[0]


def _parse_at(data: bytes, offset: int) -> tuple[DeviceState, int]:
    """The device state at `offset` and the offset just after what was read."""
    try:
        cols, rows, max_nr_ports = struct.unpack_from(">HHI", data, offset)
        offset += 8
        words = (max_nr_ports + 31) // 32
        ports_map = struct.unpack_from(f">{words}I", data, offset)
        offset += 4 * words
        (nr_active,) = struct.unpack_from(">I", data, offset)
        offset += 4
        ports = []
        for _ in range(nr_active):
            port = WirePort(*struct.unpack_from(">IBBI", data, offset))
            offset += 10
            ports.append(port)
            if port.elem_popped:
                state = DeviceState(
                    cols, rows, max_nr_ports, ports_map, nr_active, tuple(ports), True
                )
                return state, offset
    except struct.error:
        raise WireError("the virtio-serial device state ends early") from None
    return DeviceState(cols, rows, max_nr_ports, ports_map, nr_active, tuple(ports)), offset


@dataclass(frozen=True)
class Section:
    idstr: str  # e.g. "0000:00:04.0/virtio-console"
    version: int
    state: DeviceState

    start: int = 0  # offsets of the section header and of the device part's end
    end: int = 0
    section_id: int = 0  # the stream's number for it (in its header and its footer)

    @property
    def footer(self) -> bytes:
        """What ends the section (after the device part and its virtio subsections)."""
        return section_footer(self.section_id)

    @property
    def pci_addr(self) -> str:
        """The controller's PCI slot and function as `info qtree` shows it ("04.0")."""
        return self.idstr.split("/")[0].rsplit(":", 1)[-1]


def section_footer(section_id: int) -> bytes:
    """QEMU_VM_SECTION_FOOTER and the section's id: the end of a device's section."""
    return bytes([_SECTION_FOOTER]) + struct.pack(">I", section_id)


def read_sections(stream: bytes) -> list[Section]:
    """Every virtio-serial section of a migration stream, in stream order."""
    found = []
    for match in re.finditer(re.escape(SECTION_SUFFIX), stream):
        header = _header_before(stream, match.start(), match.end())
        if header is None:
            continue
        idstr, body = header
        (version,) = struct.unpack_from(">I", stream, body - 4)
        try:
            state, end = _parse_at(stream, _device_part(stream, body))
        except WireError:
            continue  # the name inside guest RAM or the stream's JSON description, not a section
        start, section_id = _section_head(stream, idstr, body)
        found.append(Section(idstr, version, state, start, end, section_id))
    return found


def excerpt(stream: bytes) -> bytes:
    """Only the virtio-serial sections of a stream (header to device part), concatenated:
    what `read_sections` needs, small enough for a test fixture."""
    return b"".join(stream[s.start : s.end] for s in read_sections(stream))


def read_stream_file(path: Path) -> list[Section]:
    """A stream file's sections, read in chunks (a RAM stream can be hundreds of MiB)."""
    scanner = StreamScanner()
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(_FILE_CHUNK):
                scanner.feed(chunk)
    except OSError as error:
        raise WireError(f"{path}: cannot read the migration stream: {error}") from None
    sections = scanner.sections()
    if not sections:
        raise WireError(f"{path}: no virtio-console section in the migration stream")
    return sections


#: Bytes kept before a name match (u8 type, be32 section id, u8 length, an idstr of at most
#: 255 bytes) and after it (the section body up to the device part: MSI-X table and PBA,
#: virtio core state with 16 bytes per queue; 511 ports need about 32 KiB).
_CAPTURE_BEFORE = 5 + 1 + 255
_CAPTURE_AFTER = 128 * 1024
_FILE_CHUNK = 1 << 20


class StreamScanner:
    """Finds the virtio-serial sections of a stream fed in pieces, keeping only them.

    Why: a live migration's stream passes through the harness (machine.relay) and is mostly
    guest RAM; the device sections come after it. Each piece is searched for the section
    name (a match split across pieces is found through the kept tail); a match with a full
    section header before it opens a capture of the bytes that follow, and only captures are
    kept (a few hundred KiB at most), never the stream.
    """

    def __init__(self) -> None:
        self.total = 0  # bytes fed so far
        self._tail = b""  # the last bytes fed, for a header or a name split across pieces
        self._open: list[tuple[int, bytearray]] = []  # (stream offset, bytes) still growing
        self._closed: list[tuple[int, bytes]] = []

    @property
    def begun(self) -> int:
        """How many virtio-serial sections began in what was fed (parsed or not yet)."""
        return len(self._open) + len(self._closed)

    def footers(self) -> list[tuple[int, bytes]]:
        """(stream offset of the header, the footer that ends it) for each section begun,
        in stream order, whether or not its device part can be read (the relay's hold
        must not depend on that)."""
        found = []
        for start, capture in sorted(self._closed + [(s, bytes(c)) for s, c in self._open]):
            own = capture[: _CAPTURE_BEFORE + len(SECTION_SUFFIX)]  # its match is in here
            headers = [
                header
                for match in re.finditer(re.escape(SECTION_SUFFIX), own)
                if (header := _header_before(capture, match.start(), match.end()))
            ]
            if not headers:
                continue
            head, section_id = _section_head(capture, *headers[-1])
            found.append((start + head, section_footer(section_id)))
        return found

    def feed(self, chunk: bytes) -> None:
        still: list[tuple[int, bytearray]] = []
        for start, capture in self._open:
            capture += chunk[: self._wanted(capture)]
            if self._wanted(capture):
                still.append((start, capture))
            else:
                self._closed.append((start, bytes(capture)))
        self._open = still
        keep = _CAPTURE_BEFORE + len(SECTION_SUFFIX)
        seam = self._tail[1 - len(SECTION_SUFFIX) :] + chunk[: len(SECTION_SUFFIX) - 1]
        if SECTION_SUFFIX in chunk or SECTION_SUFFIX in seam:  # rare: no copy otherwise
            self._capture(self._tail + chunk)
        self.total += len(chunk)
        self._tail = (self._tail + chunk[-keep:])[-keep:]

    def _capture(self, window: bytes) -> None:
        """Open a capture at every new match in `window` (the kept tail + the new piece)
        that has a full section header before it."""
        base = self.total - len(self._tail)  # stream offset of window[0]
        at = window.find(SECTION_SUFFIX)
        while at >= 0:
            end = at + len(SECTION_SUFFIX)
            if end > len(self._tail) and _header_before(window, at, end) is not None:
                begin = max(0, at - _CAPTURE_BEFORE)
                self._open.append((base + begin, bytearray(window[begin:])))
            at = window.find(SECTION_SUFFIX, at + 1)

    def sections(self) -> list[Section]:
        """Every section found so far (stream offsets), once each, in stream order."""
        found: dict[int, Section] = {}
        captures = self._closed + [(start, bytes(c)) for start, c in self._open]
        for start, capture in captures:
            for section in read_sections(capture):
                at = start + section.start
                found.setdefault(at, replace(section, start=at, end=start + section.end))
        return [found[at] for at in sorted(found)]

    @staticmethod
    def _wanted(capture: bytearray) -> int:
        return max(0, _CAPTURE_BEFORE + len(SECTION_SUFFIX) + _CAPTURE_AFTER - len(capture))


def _header_before(stream: bytes, start: int, end: int) -> tuple[str, int] | None:
    """(idstr, body offset) when the match is a full section's idstr, else None."""
    for length in range(len(SECTION_SUFFIX), min(start + len(SECTION_SUFFIX), 255) + 1):
        at = end - length - 1  # the length byte
        if at < 5 or stream[at] != length or stream[at - 5] != _SECTION_FULL:
            continue
        idstr = stream[at + 1 : end].decode("ascii", "replace")
        return idstr, end + 8  # instance_id, version_id
    return None


def _section_head(stream: bytes, idstr: str, body: int) -> tuple[int, int]:
    """(offset of the section header, its section id) from `_header_before`'s answer: the
    header is the type byte, be32 id, the idstr with its length byte, be32 instance and
    version."""
    start = body - 8 - len(idstr) - 6
    (section_id,) = struct.unpack_from(">I", stream, start + 1)
    return start, section_id


def _device_part(stream: bytes, body: int) -> int:
    """The offset of virtio_serial_save_device's data inside a section body."""
    limit = min(len(stream) - 16, body + 64 * 1024)
    for at in range(body, limit):
        (config_len,) = struct.unpack_from(">I", stream, at)
        if config_len not in (8, 12):
            continue
        # The port count comes from the queue count (two per port and two for control),
        # not from the config bytes: those are QEMU's cached copy (vdev->config), refreshed
        # only when the guest reads the config.  A controller the guest has not probed yet
        # saves zeros there; one whose max_ports changed on a migration, the old value.
        (nr_queues,) = struct.unpack_from(">I", stream, at + 4 + config_len)
        max_nr_ports = nr_queues // 2 - 1
        if max_nr_ports < 1 or nr_queues % 2:
            continue
        queues = at + 8 + config_len
        for size in _QUEUE_ENTRY_SIZES:
            device = queues + nr_queues * size
            if device + 8 <= len(stream):
                (own_max,) = struct.unpack_from(">I", stream, device + 4)
                if own_max == max_nr_ports:
                    return int(device)
    raise WireError("no virtio-serial device state found in its section")
