#!/usr/bin/env python3
"""HIL guest agent: one long-lived daemon per guest that drives virtio-serial ports.

Standard library only (the guest has a *minimal* Python 3.11 plus json); must also run on 3.13.

Commands:
    hil_agent.py serve [--foreground]   run the daemon (double fork + setsid unless --foreground)
    hil_agent.py ensure                 start the daemon unless running; wait until it accepts
    hil_agent.py bridge                 relay stdin/stdout <-> the daemon's unix socket
    hil_agent.py once <b64-request>     ensure, send one request, print `HILAGENT <b64-reply>`

Protocol: JSON lines.  Request ``{"id": n, "op": "...", "args": {...}}``; reply
``{"id": n, "ok": true, "result": ...}`` or
``{"id": n, "ok": false, "error": {"errno": "EBUSY", "message": "..."}}`` where ``errno`` is the
errno *name* for OS errors, ``ETIMEDOUT`` for agent-side timeouts, ``EINVAL`` for bad arguments,
``EPROTO`` for unparsable requests and ``INTERNAL`` for agent bugs (message has the traceback).

Ports are addressed by their virtio-serial name (``/sys/class/virtio-ports/*/name``) or by their
device name (``vport1p3``).  The agent keeps one fd per open name (the "handle"); ``open`` with
``extra=true`` opens an additional fd under the handle ``<name>#<k>``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

RUN_DIR = os.environ.get("HIL_AGENT_RUN_DIR", "/run")  # overridable for host-side tests
SOCKET_PATH = f"{RUN_DIR}/hil-agent.sock"
LOCK_PATH = f"{RUN_DIR}/hil-agent.lock"
LOG_PATH = f"{RUN_DIR}/hil-agent.log"
# Also served on TCP at the guest's user-net address: the host reaches it through a QEMU
# hostfwd without SSH (a guest restored from a snapshot answers in milliseconds). Binding to
# 10.0.2.15 only means a host-side test run never listens on the host's network.
TCP_ADDRESS = ("10.0.2.15", 7011)
SYSFS_PORTS = "/sys/class/virtio-ports"
DEBUGFS_PORTS = "/sys/kernel/debug/virtio-ports"
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
REPLY_PREFIX = "HILAGENT "
BLOCK_SIZE = 65536
#: How often a blocking write with no host end looks whether the host came (wait_writable).
WRITABLE_RECHECK = 0.05
WRITE_CHUNK = 32768  # virtio_console accepts at most 32 KiB per write() call
O_ASYNC = getattr(os, "O_ASYNC", 0o20000)
F_SETOWN = getattr(fcntl, "F_SETOWN", 8)
F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
#: One realtime signal per port with O_ASYNC (F_SETSIG), so a signal names its port: plain
#: SIGIO does not, and recording it on every async port put one port's PORT_OPEN in the
#: SIGIO history of the others (found by exploration).  SIGIO itself still comes when the
#: kernel's realtime queue overflows, or when more ports are async than there are signals.
SIGIO_SIGNALS = tuple(range(signal.SIGRTMIN, signal.SIGRTMAX))

POLL_FLAGS = (
    ("IN", select.POLLIN),
    ("PRI", select.POLLPRI),
    ("OUT", select.POLLOUT),
    ("ERR", select.POLLERR),
    ("HUP", select.POLLHUP),
    ("NVAL", select.POLLNVAL),
)


# -- encoding ---------------------------------------------------------------------------------


def encode_message(message: dict[str, Any]) -> bytes:
    """One JSON line (compact, ASCII only, newline-terminated)."""
    return (json.dumps(message, separators=(",", ":"), sort_keys=True) + "\n").encode("ascii")


def decode_message(line: bytes | str) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def ok_reply(ident: Any, result: Any) -> dict[str, Any]:
    return {"id": ident, "ok": True, "result": result}


def error_reply(ident: Any, name: str, message: str, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"errno": name, "message": message}
    error.update(extra)
    return {"id": ident, "ok": False, "error": error}


def errno_name(number: int | None) -> str:
    if number is None:
        return "EIO"
    return errno.errorcode.get(number, f"E{number}")


def poll_names(mask: int) -> list[str]:
    return [name for name, bit in POLL_FLAGS if mask & bit]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class AgentFailure(Exception):
    """A failure reported as ``ok: false`` with an errno-like name."""

    def __init__(self, name: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.extra = extra


# -- payload generator and checker (identical to harness.model.payload) ---------------------
#
# Built for a TCG guest: generating and checking cost one template copy per MiB, a few C-level
# step-slice assignments and one memcmp (bytearray.startswith) per read; no per-byte or
# per-block Python work and no hashing.  Each 4 KiB block starts with the stream's seed tag
# and its block index, so the first bad block is located and named on a mismatch.

STREAM_BLOCK = 4096
HEADER_SIZE = 16
SPAN_SIZE = 1 << 20
BLOCKS_PER_SPAN = SPAN_SIZE // STREAM_BLOCK
READV_SIZE = 512 * 1024  # one readv() of 4 KiB iovecs can take all 128 buffers a port holds
_TEMPLATES: dict[int, bytes] = {}


def seed_tag(seed: int) -> bytes:
    return (seed & ((1 << 64) - 1)).to_bytes(8, "little")


POOL_SEED = 1_000_003
_POOL: list[bytes] = []


def shared_pool() -> bytes:
    """The shared pool twice over: any rotation of it is one slice (one copy under TCG, where
    a rotation by concatenation cost 6 ms per seed)."""
    if not _POOL:
        pool = random.Random(POOL_SEED).randbytes(SPAN_SIZE)
        _POOL.append(pool + pool)
    return _POOL[0]


def span_template(seed: int) -> bytes:
    """Span 0 of ``seed``: its pool (the shared one rotated by ``(seed * 2654435761) mod
    1 MiB``) with every block's header (index high bytes 0)."""
    template = _TEMPLATES.get(seed)
    if template is None:
        shift = (seed * 2654435761) % SPAN_SIZE
        pool = bytearray(memoryview(shared_pool())[shift : shift + SPAN_SIZE])
        for j, value in enumerate(seed_tag(seed) + bytes(8)):  # one step-slice per byte
            pool[j::STREAM_BLOCK] = bytes((value,)) * BLOCKS_PER_SPAN
        pool[8::STREAM_BLOCK] = bytes(range(BLOCKS_PER_SPAN))  # block i's index: i < 256
        template = bytes(pool)
        if len(_TEMPLATES) >= 8:
            _TEMPLATES.clear()
        _TEMPLATES[seed] = template
    return template


def set_span_index(span: bytearray, index: int) -> None:
    """Turn ``span`` (a copy of its seed's template, holding any span) into span ``index``:
    only bytes 9..15 of the blocks' indexes differ between spans, so no copy is needed."""
    for j, value in enumerate(index.to_bytes(7, "little")):
        span[9 + j :: STREAM_BLOCK] = bytes((value,)) * BLOCKS_PER_SPAN


def generated_span(seed: int, index: int) -> bytes:
    span = bytearray(span_template(seed))
    set_span_index(span, index)
    return bytes(span)


def iter_generated(seed: int, start: int, stop: int, limit: int = SPAN_SIZE) -> Iterator[bytes]:
    """Bytes ``[start, stop)`` of the generated stream, at most ``limit`` bytes per chunk."""
    span = bytearray(span_template(seed))
    view = memoryview(span)
    current = 0
    pos = start
    while pos < stop:
        index, offset = divmod(pos, SPAN_SIZE)
        if index != current:
            set_span_index(span, index)
            current = index
        take = min(SPAN_SIZE - offset, stop - pos, limit)
        yield bytes(view[offset : offset + take])
        pos += take


def generated_bytes(seed: int, length: int, offset: int = 0) -> bytes:
    return b"".join(iter_generated(seed, offset, offset + length))


def cut(view: memoryview, start: int, end: int, step: int) -> list[memoryview]:
    """iovecs: ``view[start:end]`` in pieces of ``step`` bytes (the last may be short), built
    by map() and slice() in C: a list comprehension costs some 25 us per item under TCG."""
    whole = view[:end]
    return list(
        map(
            whole.__getitem__,
            map(slice, range(start, end, step), range(start + step, end + step, step)),
        )
    )


class SpanCursor:
    """The expected stream of one seed, one reusable span buffer at a time."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.span = bytearray(span_template(seed))
        self.view = memoryview(self.span)
        self.current = 0

    def at(self, pos: int) -> tuple[memoryview, int]:
        """(the span holding stream offset ``pos``, ``pos``'s offset in it)."""
        index, offset = divmod(pos, SPAN_SIZE)
        if index != self.current:
            set_span_index(self.span, index)
            self.current = index
        return self.view, offset


def check_piece(
    cursor: SpanCursor, data: bytearray, length: int, pos: int
) -> dict[str, Any] | None:
    """Compare ``data[:length]`` with the stream at ``pos``: None, or the first bad block."""
    done = 0
    while done < length:
        view, offset = cursor.at(pos + done)
        take = min(SPAN_SIZE - offset, length - done)
        if not data.startswith(view[offset : offset + take], done):
            return locate_mismatch(cursor, data, done, pos + done, take)
        done += take
    return None


def locate_mismatch(
    cursor: SpanCursor, data: bytearray, done: int, at: int, take: int
) -> dict[str, Any]:
    """The slow path, only after a failed compare: walk the 4 KiB blocks of that piece."""
    block = at - at % STREAM_BLOCK
    while True:
        lo, hi = max(block, at), min(block + STREAM_BLOCK, at + take)
        view, offset = cursor.at(lo)
        if data[done + lo - at : done + hi - at] != view[offset : offset + hi - lo]:
            found: dict[str, Any] = {"offset": block}
            if block >= at and hi - block >= HEADER_SIZE:
                head = bytes(data[done + block - at : done + block - at + HEADER_SIZE])
                found["found_tag"] = head[:8].hex()
                found["found_index"] = int.from_bytes(head[8:], "little")
                found["same_stream"] = head[:8] == seed_tag(cursor.seed)
            return found
        block += STREAM_BLOCK


class Skipped:
    """The bytes a flow reads before its own stream (flow ``skip``), hashed apart."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.count = 0
        self.digest = hashlib.sha256()

    def size(self, chunk: int) -> int:
        """How much the next read may take while skipping; 0 once done."""
        return min(chunk, self.length - self.count)

    def take(self, data: bytes) -> bool:
        """Hash ``data`` apart if it is still skipped bytes (a read never straddles the end)."""
        if self.count >= self.length:
            return False
        self.digest.update(data)
        self.count += len(data)
        return True

    def result(self) -> dict[str, Any]:
        if not self.length:
            return {}
        return {"skipped": self.count, "skip_sha256": self.digest.hexdigest()}


class StreamIO:
    """One checked stream on a port fd that is non-blocking while it runs.

    Checking: readv() into 4 KiB iovecs takes every buffer the port holds in one call (the
    kernel fills iovec after iovec until one comes up short), then one memcmp per read against
    the expected span.  Sending: writev() of 32 KiB iovecs (virtio_console's most per write)
    straight from the span.  Either way the Python work is per read/write call, not per byte
    or block, and nothing is hashed."""

    def __init__(self, port: Port, send: bool, seed: int, offset: int, length: int) -> None:
        self.port = port
        self.send = send
        self.offset = offset
        self.length = length
        self.cursor = SpanCursor(seed)
        self.done = 0
        self.calls = 0
        self.eof = False
        self.errno: str | None = None
        self.mismatch: dict[str, Any] | None = None
        self.t0 = self.t1 = time.monotonic()
        self.check_seconds = 0.0  # time spent comparing (the rest is the port and the loop)
        self.waits = 0  # calls that would have blocked (then poll)
        self.asked = 0  # bytes the last call asked for
        self.full = False  # the last call moved all it asked for: the next may well too
        self.buffer = bytearray(0 if send else READV_SIZE)
        whole = memoryview(self.buffer)
        self.iov = cut(whole, 0, len(self.buffer), STREAM_BLOCK)

    @property
    def finished(self) -> bool:
        return self.done >= self.length or self.eof or self.errno is not None

    @property
    def events(self) -> int:
        return select.POLLOUT if self.send else select.POLLIN | select.POLLPRI

    def step(self) -> bool:
        """One non-blocking readv/writev; False when it would block."""
        self.full = False
        if self.port.closed:  # closed under the stream: its fd number is a dead socket now
            self.errno = "EBADF"
            return True
        try:
            n = self._write() if self.send else self._read()
        except BlockingIOError:
            self.waits += 1
            return False
        except OSError as error:
            self.errno = errno_name(error.errno)
            return True
        self.calls += 1
        self.full = n == self.asked
        if not n and not self.send:
            self.eof = True
        self.done += n
        if self.finished:
            self.t1 = time.monotonic()
        return True

    def _write(self) -> int:
        view, at = self.cursor.at(self.offset + self.done)
        end = min(SPAN_SIZE, at + self.length - self.done)
        self.asked = end - at
        return os.writev(self.port.fd, cut(view, at, end, WRITE_CHUNK))

    def _read(self) -> int:
        left = self.length - self.done
        pos = self.offset + self.done
        iov = self.iov
        self.asked = READV_SIZE
        if left < READV_SIZE:
            whole = memoryview(self.buffer)
            iov = cut(whole, 0, left, STREAM_BLOCK)
            self.asked = left
        n = os.readv(self.port.fd, iov)
        if n and self.mismatch is None:
            began = time.monotonic()
            self.mismatch = check_piece(self.cursor, self.buffer, n, pos)
            self.check_seconds += time.monotonic() - began
        return n

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.port.handle,
            "bytes": self.done,
            "calls": self.calls,
            "waits": self.waits,
            "seconds": round(self.t1 - self.t0, 3),
            "t0": self.t0,
            "t1": self.t1,
        }
        if self.errno is not None:
            out["errno"] = self.errno
        if not self.send:
            out.update(
                eof=self.eof,
                reads=self.calls,
                match=self.mismatch is None and self.done == self.length,
                mismatch=self.mismatch,
                check_seconds=round(self.check_seconds, 3),
            )
        return out


def run_streams(streams: list[StreamIO], timeout: float) -> None:
    """Drive ``streams`` to their ends in this thread; ETIMEDOUT once none moved for
    ``timeout`` seconds.  Each fd is non-blocking for the duration (its flags are restored)."""
    ports = list({id(s.port): s.port for s in streams}.values())
    for port in ports:
        stream_mode(port, True)
    started = time.monotonic()
    for stream in streams:
        stream.t0 = stream.t1 = started
    try:
        StreamPoller(streams).drive(timeout)
    finally:
        for port in ports:
            with contextlib.suppress(OSError):
                stream_mode(port, False)


_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_WRITABLE = select.POLLOUT | select.POLLERR


class StreamPoller:
    """One poll() per round says which streams can move, and only those are stepped; a round
    in which every stream moved all it asked for skips the poll (the guest is the bottleneck
    then, and the port holds more: one poll() per 256 KiB read cost 3-6% of a checked stream).

    Stepping every stream in turn cost an EAGAIN exception for each idle one per round in
    the TCG guest's Python (4 ports both ways: 8 streams, most of them waiting)."""

    def __init__(self, streams: list[StreamIO]) -> None:
        self.streams = streams
        self.poller = select.poll()
        self.wanted: dict[int, int] = {}
        self.signals = {s.port.close_signal() for s in streams}  # see Port.poll
        self.closes = select.poll()
        for fd in self.signals:
            self.poller.register(fd, select.POLLIN)
            self.closes.register(fd, select.POLLIN)

    def _want(self, active: list[StreamIO]) -> None:
        """Poll each fd for what its unfinished streams wait for: a finished sender's
        POLLOUT would wake every poll at once and stall its port's reader."""
        wanted: dict[int, int] = {}
        for stream in active:
            wanted[stream.port.fd] = wanted.get(stream.port.fd, 0) | stream.events
        for fd in self.wanted.keys() - wanted.keys():
            self.poller.unregister(fd)
        for fd, events in wanted.items():
            if self.wanted.get(fd) != events:
                self.poller.register(fd, events)  # registers or modifies
        self.wanted = wanted

    def drive(self, timeout: float) -> None:
        ready = list(self.streams)  # the first round tries every stream
        moved_at = time.monotonic()
        while True:
            active = [s for s in self.streams if not s.finished]
            if not active:
                return
            self._want(active)
            moved = False
            stepped = [s for s in ready if not s.finished]
            for stream in stepped:  # one call each in turn: no stream starves the others
                moved = stream.step() or moved
            now = time.monotonic()
            if moved:
                moved_at = now
            left = timeout - (now - moved_at)
            if left <= 0:
                self._timed_out(timeout, active)
            if len(stepped) == len(active) and all(s.full for s in stepped):
                ready = stepped  # each moved all it asked for, so more is likely there
                continue
            ready = self._ready(active, 0 if moved else left)

    def _ready(self, active: list[StreamIO], wait: float) -> list[StreamIO]:
        events = dict(self.poller.poll(max(0, int(wait * 1000))))
        if any(fd in events for fd in self.signals):
            return active  # a port was closed under its stream: the step says EBADF
        ready = [s for s in active if self._moves(s, events.get(s.port.fd, 0))]
        if events and not ready and wait:
            # POLLHUP alone (no host end) wakes poll() at once but moves no sender: wait
            # for a close in steps instead of spinning (wait_writable does the same)
            self.closes.poll(int(min(wait, WRITABLE_RECHECK) * 1000))
            return active if wait <= WRITABLE_RECHECK else []
        return ready

    @staticmethod
    def _moves(stream: StreamIO, events: int) -> bool:
        if not stream.send:
            return bool(events & _READABLE)
        if events & _WRITABLE:
            return True
        # POLLHUP: no host end (wait) or unplugged (the write fails at once)
        return bool(events & select.POLLHUP) and not no_host_end(stream.port.fd)

    def _timed_out(self, timeout: float, active: list[StreamIO]) -> None:
        waiting = ", ".join(f"{s.port.handle} at {s.done} of {s.length}" for s in active)
        raise AgentFailure(
            "ETIMEDOUT",
            f"streams: nothing moved for {timeout} s ({waiting})",
            streams=[s.result() for s in self.streams],
        )


_MODE_LOCK = threading.Lock()


def stream_mode(port: Port, enter: bool) -> None:
    """Streams need O_NONBLOCK, which is a flag of the open file that every op on the port
    shares: the first stream on a port sets it, the last one restores the mode the port was
    opened with, and blocking ops (send_stream, write, read) on a port opened blocking wait in
    poll() when they meet EAGAIN meanwhile (see wait_ready)."""
    with _MODE_LOCK:
        port.streams += 1 if enter else -1
        if port.streams == (1 if enter else 0):
            flags = fcntl.fcntl(port.fd, fcntl.F_GETFL)
            blocking = not enter and not port.nonblocking
            flags = (flags & ~os.O_NONBLOCK) if blocking else (flags | os.O_NONBLOCK)
            fcntl.fcntl(port.fd, fcntl.F_SETFL, flags)


def no_host_end(fd: int) -> bool:
    """Whether a port whose poll() says POLLHUP has no host end (port_fops_poll adds POLLIN:
    a read would not block) rather than being unplugged (POLLHUP alone)."""
    return bool(_poll_fd(fd, 0, select.POLLIN) & select.POLLIN)


def wait_writable(port: Port) -> None:
    """A blocking write waits here, not inside write(): a close under a write blocked in the
    kernel would not release the port (the call holds its file) until the write ended.
    EBADF (an OSError, as from the write) once the port was closed under the wait."""
    while True:
        mask = port.poll(None, select.POLLOUT)
        if port.closed:
            raise OSError(errno.EBADF, f"port {port.handle!r} was closed under the write")
        if mask & select.POLLOUT or not no_host_end(port.fd):
            return  # writable; or POLLHUP alone: unplugged, and the write fails at once
        # POLLIN|POLLHUP: no host end, poll() answers at once, so it cannot wait for the
        # host's PORT_OPEN.  Look again in a while (a close ends the wait at once).
        _poll_fd(port.close_signal(), WRITABLE_RECHECK, select.POLLIN)


def wait_ready(port: Port, error: OSError, events: int) -> bool:
    """True when a blocking op met EAGAIN only because a stream made the fd non-blocking:
    it has waited in poll() for ``events`` and should retry."""
    if error.errno != errno.EAGAIN or port.nonblocking:
        return False
    port.poll(None, events)  # a close wakes it: the retry then meets the dead socket
    return True


# -- ports ------------------------------------------------------------------------------------


def _read_text(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _parse_value(text: str) -> int | str:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


def parse_debugfs(text: str) -> dict[str, int | str]:
    """``key: value`` lines of /sys/kernel/debug/virtio-ports/vportNpM -> dict."""
    fields: dict[str, int | str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = _parse_value(value)
    return fields


def parse_dev(dev: str) -> tuple[int, int] | None:
    """``vport1p3`` -> (1, 3)."""
    if not dev.startswith("vport") or "p" not in dev[5:]:
        return None
    left, _, right = dev[5:].partition("p")
    if not (left.isdigit() and right.isdigit()):
        return None
    return int(left), int(right)


def list_ports() -> list[dict[str, Any]]:
    try:
        devs = os.listdir(SYSFS_PORTS)
    except FileNotFoundError:
        return []
    ports = []
    for dev in sorted(devs, key=lambda d: parse_dev(d) or (1 << 30, 0)):
        parsed = parse_dev(dev)
        if parsed is None:
            continue
        name = (_read_text(f"{SYSFS_PORTS}/{dev}/name") or "").strip() or None
        entry: dict[str, Any] = {
            "dev": dev,
            "path": f"/dev/{dev}",
            "device": parsed[0],
            "nr": parsed[1],
        }
        debug_text = _read_text(f"{DEBUGFS_PORTS}/{dev}")
        if debug_text is not None:
            for key, value in parse_debugfs(debug_text).items():
                entry[key] = value
        entry["name"] = name
        entry["debugfs"] = debug_text is not None
        entry["pci"] = pci_slot(f"{SYSFS_PORTS}/{dev}")
        ports.append(entry)
    return ports


def pci_slot(path: str) -> str | None:
    """The PCI address of the controller behind a port, as QEMU's qtree prints it ("03.0").

    /sys/class/virtio-ports/vportNpM resolves to .../0000:00:03.0/virtioN/virtio-ports/...:
    the last PCI component names the virtio-serial-pci device, which is how a port is tied
    to its controller (vportN's N is only the probe order)."""
    slots = [part for part in os.path.realpath(path).split("/") if PCI_ADDRESS.match(part)]
    return slots[-1].split(":", 2)[2] if slots else None


def find_dev(name: str) -> str:
    for entry in list_ports():
        if entry["name"] == name or entry["dev"] == name:
            return str(entry["dev"])
    raise AgentFailure("ENOENT", f"no virtio-serial port named {name!r}")


class Port:
    def __init__(
        self, handle: str, name: str, dev: str, fd: int, nonblocking: bool, sigio: bool
    ) -> None:
        self.handle = handle
        self.name = name
        self.dev = dev
        self.fd = fd
        self.nonblocking = nonblocking
        self.sigio = sigio
        self.sigio_masks: list[dict[str, Any]] = []
        self.streams = 0  # StreamIO runs that hold the fd non-blocking (see stream_mode)
        self.users = 0  # long ops running on the fd (see Agent.using)
        self.closed = False  # op_close ran: the fd number is a dead socket until users end
        self._signal_r: int | None = None  # close_signal's pipe: read end ...
        self._signal_w: int | None = None  # ... and write end, closed once the port is

    def close_signal(self) -> int:
        """An fd that turns readable (EOF) once the port is closed. A long op polls it beside
        the port: the dead socket put in the port's place (Agent.retire) does not wake a
        poll() already waiting on the port's old file, which would wait out its timeout."""
        with _MODE_LOCK:
            if self._signal_r is None:
                self._signal_r, self._signal_w = os.pipe()
                if self.closed:
                    self._close_signal_end()
            return self._signal_r

    def signal_closed(self) -> None:
        """(Agent.retire, after ``closed`` is set) Wake every op polling close_signal."""
        with _MODE_LOCK:
            self._close_signal_end()

    def _close_signal_end(self) -> None:
        if self._signal_w is not None:
            os.close(self._signal_w)
            self._signal_w = None

    def release_signal(self) -> None:
        """(The port's last user, or retire without users) Close what is left of the pipe."""
        with _MODE_LOCK:
            self._close_signal_end()
            if self._signal_r is not None:
                os.close(self._signal_r)
                self._signal_r = None

    def poll(self, timeout: float | None, events: int) -> int:
        """poll() on the port, woken by a close too: then POLLHUP (the caller's next read or
        write meets the dead socket and ``closed``)."""
        return _poll_fd(self.fd, timeout, events, wake=self.close_signal())

    def errno_of(self, error: OSError) -> str:
        """An error's errno name; EBADF once the port was closed under the op (its fd number
        is a dead socket then, whose EPIPE or EOF would misname what happened: Agent.retire)."""
        return "EBADF" if self.closed else errno_name(error.errno)

    def describe(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "name": self.name,
            "dev": self.dev,
            "fd": self.fd,
            "nonblocking": self.nonblocking,
            "sigio": self.sigio,
        }


# -- the agent state and ops ------------------------------------------------------------------


def _dead_socket() -> int:
    """An fd that stands in for a closed port's number (Agent.retire): reads give EOF, writes
    EPIPE, poll returns at once, so an op still holding the number ends instead of waiting."""
    kept, peer = socket.socketpair()
    peer.close()
    kept.shutdown(socket.SHUT_RDWR)
    return kept.detach()


def _poll_fd(
    fd: int, timeout: float | None, events: int | None = None, wake: int | None = None
) -> int:
    """`fd`'s poll mask; POLLHUP when `wake` (an fd that turns readable) ended the wait."""
    poller = select.poll()
    if events is None:
        events = select.POLLIN | select.POLLPRI | select.POLLOUT
    poller.register(fd, events)
    if wake is not None:
        poller.register(wake, select.POLLIN)
    wait_ms = None if timeout is None else max(0, int(timeout * 1000))
    mask = 0
    for ready, revents in poller.poll(wait_ms):
        mask |= revents if ready == fd else select.POLLHUP
    return mask


def _arg(
    args: dict[str, Any], key: str, default: Any = ..., kind: type | tuple[type, ...] = object
) -> Any:
    if key not in args or args[key] is None:
        if default is ...:
            raise AgentFailure("EINVAL", f"missing argument {key!r}")
        return default
    value = args[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise AgentFailure("EINVAL", f"argument {key!r} has the wrong type: {value!r}")
    return value


class Agent:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.ports: dict[str, Port] = {}
        self.tickets: dict[int, dict[str, Any]] = {}
        self.next_ticket = 1
        self.started = time.time()
        self.kmsg_fd: int | None = None
        self.kmsg_lock = threading.Lock()
        self.flows: dict[str, dict[str, Any]] = {}
        self.dead_fd = _dead_socket()
        self.sigio_ports: dict[int, Port] = {}  # realtime signal -> its port (F_SETSIG)
        self._open_kmsg()
        self.ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")
        }

    # dispatch ----------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        ident = request.get("id")
        op = request.get("op")
        args = request.get("args") or {}
        try:
            if not isinstance(op, str) or op not in self.ops:
                raise AgentFailure("EINVAL", f"unknown op {op!r}; known: {sorted(self.ops)}")
            if not isinstance(args, dict):
                raise AgentFailure("EINVAL", "args must be an object")
            return ok_reply(ident, self.ops[op](args))
        except AgentFailure as failure:
            return error_reply(ident, failure.name, failure.message, **failure.extra)
        except OSError as error:
            return error_reply(ident, errno_name(error.errno), str(error))
        except (KeyError, TypeError, ValueError) as error:
            return error_reply(ident, "EINVAL", f"{type(error).__name__}: {error}")
        except Exception as error:  # an agent bug: report it instead of dropping the connection
            return error_reply(ident, "INTERNAL", f"{error!r}\n{traceback.format_exc()}")

    def port(self, args: dict[str, Any]) -> Port:
        handle = _arg(args, "name", kind=str)
        with self.lock:
            port = self.ports.get(handle)
        if port is None:
            raise AgentFailure("EBADF", f"port {handle!r} is not open in the agent")
        return port

    @contextlib.contextmanager
    def using(self, args: dict[str, Any]) -> Iterator[Port]:
        """The port of a long op (a stream, a flow) that may run while another request
        closes it.  A plain close() would free the fd number, the next open could get the same
        number, and the op would go on reading or writing another port's file (bytes counted
        twice, a stream's prefix wrong).  So while an op uses the port, close() only retires the
        number (see op_close) and the last user closes it."""
        port = self.port(args)
        with self.lock:
            port.users += 1
        try:
            yield port
        finally:
            with self.lock:
                port.users -= 1
                if port.closed and not port.users:
                    port.release_signal()
                    os.close(port.fd)

    def retire(self, port: Port) -> None:
        """Release the port now: close its fd, or while a long op still uses the number, put
        a dead socket in its place (dup2 closes the port's file atomically; the op sees EOF or
        EPIPE and ``port.closed``, and closes the number when it ends).  Call with the lock."""
        port.closed = True
        if port.users:
            os.dup2(self.dead_fd, port.fd)
            port.signal_closed()
        else:
            port.release_signal()
            os.close(port.fd)

    # basics ------------------------------------------------------------------------------

    def op_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "uptime": round(time.time() - self.started, 3),
            "open": sorted(self.ports),
        }

    def op_list_ports(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        ports = list_ports()
        with self.lock:
            open_by_dev: dict[str, list[str]] = {}
            for port in self.ports.values():
                open_by_dev.setdefault(port.dev, []).append(port.handle)
        for entry in ports:
            entry["agent_handles"] = sorted(open_by_dev.get(entry["dev"], []))
        return ports

    def op_open_ports(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            return [port.describe() for port in self.ports.values()]

    def op_wait_port(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _arg(args, "name", kind=str)
        timeout = _arg(args, "timeout", 10.0, (int, float))
        gone = _arg(args, "gone", False, bool)
        deadline = time.monotonic() + timeout
        while True:
            match = [p for p in list_ports() if name in (p["name"], p["dev"])]
            if match and not gone:
                return match[0]
            if not match and gone:
                return {"gone": True}
            if time.monotonic() >= deadline:
                state = "still present" if gone else "did not appear"
                raise AgentFailure("ETIMEDOUT", f"port {name!r} {state} within {timeout} s")
            time.sleep(0.05)

    # open / close ------------------------------------------------------------------------

    def op_open(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _arg(args, "name", kind=str)
        nonblocking = _arg(args, "nonblocking", False, bool)
        sigio = _arg(args, "sigio", False, bool)
        extra = _arg(args, "extra", False, bool)
        dev = find_dev(name)
        with self.lock:
            if not extra and name in self.ports:
                raise AgentFailure(
                    "EALREADY",
                    f"the agent already holds an fd for {name!r}; pass extra=true "
                    "to open a second one",
                )
            handle = name
            if extra:
                k = 2
                while f"{name}#{k}" in self.ports:
                    k += 1
                handle = f"{name}#{k}"
            flags = os.O_RDWR | os.O_NOCTTY | (os.O_NONBLOCK if nonblocking else 0)
            fd = os.open(f"/dev/{dev}", flags)
            port = Port(handle, name, dev, fd, nonblocking, sigio)
            self.ports[handle] = port
        if sigio:
            try:
                self._enable_sigio(port)
            except OSError:
                with self.lock:
                    self.ports.pop(handle, None)
                os.close(fd)
                raise
        return port.describe()

    def _enable_sigio(self, port: Port) -> None:
        fcntl.fcntl(port.fd, F_SETSIG, self._sigio_signal(port))
        fcntl.fcntl(port.fd, F_SETOWN, os.getpid())
        flags = fcntl.fcntl(port.fd, fcntl.F_GETFL)
        fcntl.fcntl(port.fd, fcntl.F_SETFL, flags | O_ASYNC)

    def _sigio_signal(self, port: Port) -> int:
        """The port's own realtime signal (0, plain SIGIO, when none is free)."""
        with self.lock:
            for number, owner in self.sigio_ports.items():
                if owner is port:
                    return number
            for number in SIGIO_SIGNALS:
                if number not in self.sigio_ports:
                    self.sigio_ports[number] = port
                    return number
        return 0

    def _release_sigio(self, port: Port) -> None:
        with self.lock:
            for number in [n for n, owner in self.sigio_ports.items() if owner is port]:
                del self.sigio_ports[number]

    def op_set_flags(self, args: dict[str, Any]) -> dict[str, Any]:
        """Change O_NONBLOCK / O_ASYNC on an open handle."""
        port = self.port(args)
        nonblocking = _arg(args, "nonblocking", port.nonblocking, bool)
        sigio = _arg(args, "sigio", port.sigio, bool)
        flags = fcntl.fcntl(port.fd, fcntl.F_GETFL)
        flags = (flags | os.O_NONBLOCK) if nonblocking else (flags & ~os.O_NONBLOCK)
        if sigio:
            fcntl.fcntl(port.fd, F_SETSIG, self._sigio_signal(port))
            fcntl.fcntl(port.fd, F_SETOWN, os.getpid())
            flags |= O_ASYNC
        else:
            flags &= ~O_ASYNC
        fcntl.fcntl(port.fd, fcntl.F_SETFL, flags)
        if not sigio:
            self._release_sigio(port)
        port.nonblocking, port.sigio = nonblocking, sigio
        return port.describe()

    def op_close(self, args: dict[str, Any]) -> dict[str, Any]:
        port = self.port(args)
        with self.lock:
            if self.ports.pop(port.handle, None) is None:
                raise AgentFailure("EBADF", f"port {port.handle!r} is not open in the agent")
            self.retire(port)
            self._release_sigio(port)
        return {"closed": port.handle}

    def close_all(self) -> None:
        with self.lock:
            ports, self.ports = list(self.ports.values()), {}
            for port in ports:
                with contextlib.suppress(OSError):
                    self.retire(port)
            self.sigio_ports.clear()

    # I/O ---------------------------------------------------------------------------------

    def op_poll(self, args: dict[str, Any]) -> dict[str, Any]:
        port = self.port(args)
        timeout = _arg(args, "timeout", 0, (int, float))
        mask = _poll_fd(port.fd, timeout)
        return {"events": poll_names(mask), "mask": mask}

    def op_read(self, args: dict[str, Any]) -> dict[str, Any]:
        """A read; one that waits is a long op (``using``): a close under it ends it."""
        with self.using(args) as port:
            return self._read(port, args)

    def _read(self, port: Port, args: dict[str, Any]) -> dict[str, Any]:
        max_bytes = _arg(args, "max_bytes", BLOCK_SIZE, int)
        timeout = _arg(args, "timeout", None, (int, float))
        if not port.nonblocking:  # wait in poll(), where a close wakes it, not in read()
            mask = port.poll(timeout, select.POLLIN | select.POLLPRI)
            if port.closed:
                raise AgentFailure("EBADF", f"port {port.handle!r} was closed under the read")
            if not mask:
                raise AgentFailure(
                    "ETIMEDOUT",
                    f"nothing to read on {port.handle!r} within {timeout} s (poll mask 0)",
                )
        while True:
            try:
                data = os.read(port.fd, max_bytes)
                break
            except OSError as error:
                if not wait_ready(port, error, select.POLLIN | select.POLLPRI):
                    raise
        return {"data": b64(data), "length": len(data), "eof": not data and max_bytes > 0}

    def op_write(self, args: dict[str, Any]) -> dict[str, Any]:
        """A write; one that waits is a long op (``using``): a close under it ends it."""
        with self.using(args) as port:
            return self._write(port, args)

    def _write(self, port: Port, args: dict[str, Any]) -> dict[str, Any]:
        single = _arg(args, "single", False, bool)
        if "data" in args and args["data"] is not None:
            data = base64.b64decode(_arg(args, "data", kind=str))
            chunks: Iterator[bytes] = iter([data])
            total_length = len(data)
        else:
            seed = _arg(args, "seed", kind=int)
            total_length = _arg(args, "length", kind=int)
            offset = _arg(args, "offset", 0, int)
            chunks = iter_generated(seed, offset, offset + total_length)
        written = calls = 0
        sizes: list[int] = []
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                try:
                    if not port.nonblocking:  # wait in poll(), where a close wakes it
                        wait_writable(port)
                    n = os.write(port.fd, view)
                except OSError as error:
                    if wait_ready(port, error, select.POLLOUT):
                        continue
                    if written == 0:
                        raise
                    return {
                        "written": written,
                        "calls": calls,
                        "sizes": sizes[:64],
                        "stopped": errno_name(error.errno),
                        "requested": total_length,
                    }
                calls += 1
                sizes.append(n)
                written += n
                view = view[n:]
                if single:
                    return {
                        "written": written,
                        "calls": calls,
                        "sizes": sizes,
                        "stopped": None,
                        "requested": total_length,
                    }
        return {
            "written": written,
            "calls": calls,
            "sizes": sizes[:64],
            "stopped": None,
            "requested": total_length,
        }

    def op_seek(self, args: dict[str, Any]) -> dict[str, Any]:
        port = self.port(args)
        offset = _arg(args, "offset", 0, int)
        whence = _arg(args, "whence", os.SEEK_CUR, int)
        return {"offset": os.lseek(port.fd, offset, whence)}

    def op_send_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        """Write ``length`` generated bytes: one writev() of 32 KiB iovecs per span, no
        per-block work; ``sha256: true`` also hashes them (slow under TCG: the host checks)."""
        with self.using(args) as port:
            return self._send_stream(port, args)

    def _send_stream(self, port: Port, args: dict[str, Any]) -> dict[str, Any]:
        seed = _arg(args, "seed", kind=int)
        length = _arg(args, "length", kind=int)
        offset = _arg(args, "offset", 0, int)
        chunk = max(1, min(WRITE_CHUNK, _arg(args, "chunk", WRITE_CHUNK, int)))
        digest = hashlib.sha256() if _arg(args, "sha256", False, bool) else None
        cursor = SpanCursor(seed)
        sent = calls = 0
        started = time.monotonic()
        while sent < length:
            view, at = cursor.at(offset + sent)
            end = min(SPAN_SIZE, at + length - sent)
            iov = cut(view, at, end, chunk)
            try:
                if not port.nonblocking:  # wait in poll(), where a close wakes it
                    wait_writable(port)
                n = os.writev(port.fd, iov)
            except OSError as error:
                if wait_ready(port, error, select.POLLOUT):
                    continue
                raise AgentFailure(
                    port.errno_of(error),
                    f"send_stream stopped after {sent} bytes: {error}",
                    bytes=sent,
                ) from None
            if digest is not None:
                digest.update(view[at : at + n])
            sent += n
            calls += 1
        result: dict[str, Any] = {
            "bytes": sent,
            "calls": calls,
            "seconds": round(time.monotonic() - started, 3),
        }
        if digest is not None:
            result["sha256"] = digest.hexdigest()
        return result

    def op_check_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        """Read ``length`` bytes and check them against the generated stream of ``seed`` from
        ``offset`` (see StreamIO).  The reply has ``match`` and, on a mismatch, the first bad
        4 KiB block (``mismatch.offset``, a stream offset) with what its header says; reading
        goes on after a mismatch so that ``bytes`` stays exact.  ``timeout`` bounds each wait
        for data; EOF ends early."""
        with self.using(args) as port:
            stream = self._stream(port, args, "check")
            run_streams([stream], _arg(args, "timeout", 30, (int, float)))
        return stream.result()

    def op_streams(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Several checked streams at once, both ways, in one thread (poll over every fd: no
        GIL hand-offs between threads).  ``streams``: a list of ``{name, dir: "check"|"send",
        seed, length, offset}``; one result per stream, as check_stream's (``bytes`` sent for
        "send"); an error on one stream ends that stream only (``errno`` in its result)."""
        specs = _arg(args, "streams", kind=list)
        with contextlib.ExitStack() as ports:
            streams = [
                self._stream(
                    ports.enter_context(self.using(spec)), spec, _arg(spec, "dir", kind=str)
                )
                for spec in specs
            ]
            run_streams(streams, _arg(args, "timeout", 30, (int, float)))
        return [stream.result() for stream in streams]

    def _stream(self, port: Port, spec: dict[str, Any], direction: str) -> StreamIO:
        if direction not in ("check", "send"):
            raise AgentFailure("EINVAL", f"stream direction {direction!r}: check or send")
        return StreamIO(
            port,
            direction == "send",
            _arg(spec, "seed", kind=int),
            _arg(spec, "offset", 0, int),
            _arg(spec, "length", kind=int),
        )

    def op_echo(self, args: dict[str, Any]) -> dict[str, Any]:
        """Send back ``count`` messages of ``size`` bytes as they arrive (round-trip probes)."""
        with self.using(args) as port:
            return self._echo(port, args)

    def _echo(self, port: Port, args: dict[str, Any]) -> dict[str, Any]:
        size = max(1, _arg(args, "size", kind=int))
        count = _arg(args, "count", kind=int)
        timeout = _arg(args, "timeout", 30, (int, float))
        for done in range(count):
            message = b""
            while len(message) < size:
                if not port.poll(timeout, select.POLLIN | select.POLLPRI):
                    raise AgentFailure(
                        "ETIMEDOUT", f"echo: message {done} incomplete after {timeout} s"
                    )
                data = os.read(port.fd, size - len(message))
                if not data:
                    return {"echoed": done, "eof": True}
                message += data
            view = memoryview(message)
            while view:
                view = view[os.write(port.fd, view) :]
        return {"echoed": count, "eof": False}

    def op_recv_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        """Read ``length`` bytes (or until EOF); ``timeout`` bounds each wait for data."""
        with self.using(args) as port:
            return self._recv_stream(port, args)

    def _recv_stream(self, port: Port, args: dict[str, Any]) -> dict[str, Any]:
        length = _arg(args, "length", kind=int)
        timeout = _arg(args, "timeout", 30, (int, float))
        slow = _arg(args, "slow", None, (int, float))
        chunk = max(1, _arg(args, "chunk", BLOCK_SIZE, int))
        if slow:
            chunk = max(1, min(chunk, int(slow) // 10 or 1))
        digest = hashlib.sha256()
        got = reads = 0
        eof = False
        started = time.monotonic()
        while got < length:
            mask = port.poll(timeout, select.POLLIN | select.POLLPRI)
            if not mask:
                raise AgentFailure(
                    "ETIMEDOUT",
                    f"recv_stream: no data for {timeout} s after {got} of {length} bytes",
                    bytes=got,
                    sha256=digest.hexdigest(),
                )
            try:
                data = os.read(port.fd, min(chunk, length - got))
            except OSError as error:
                if error.errno == errno.EAGAIN:
                    continue
                raise AgentFailure(
                    port.errno_of(error),
                    f"recv_stream stopped after {got} bytes: {error}",
                    bytes=got,
                    sha256=digest.hexdigest(),
                ) from None
            reads += 1
            if not data:
                if port.closed:  # the dead socket's EOF, not the port's
                    raise AgentFailure(
                        "EBADF", f"recv_stream: port closed after {got} bytes", bytes=got
                    )
                eof = True
                break
            digest.update(data)
            got += len(data)
            if slow:
                due = started + got / slow
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        return {
            "bytes": got,
            "sha256": digest.hexdigest(),
            "eof": eof,
            "reads": reads,
            "seconds": round(time.monotonic() - started, 3),
        }

    # flows: stoppable checked streams (scenario host_stream/guest_stream) ----------------

    def op_flow(self, args: dict[str, Any]) -> dict[str, Any]:
        """Send (``out``) or receive (``in``) the generated stream until ``length``, EOF, an
        error or ``flow_stop``; never blocks in the kernel, so a stop always ends it.

        Errors are results, not failures: a fault (unplug, close) ends a stream on purpose.
        ``skip`` (``in``): read this many bytes first and hash them apart (``skipped``,
        ``skip_sha256``): an earlier stream's bytes still queued for the port come first."""
        with self.using(args) as port:
            # Non-blocking while it runs: poll() said POLLOUT, but a host that disconnects
            # before the write makes virtio_console block a blocking write until it comes back
            # (will_write_block), and the flow could not be stopped (the soak's lost count).
            stream_mode(port, True)
            try:
                return self._flow(port, args)
            finally:
                with contextlib.suppress(OSError):
                    stream_mode(port, False)

    def _flow(self, port: Port, args: dict[str, Any]) -> dict[str, Any]:
        flow = _arg(args, "flow", kind=str)
        out = _arg(args, "direction", kind=str) == "out"
        seed = _arg(args, "seed", 0, int)
        length = _arg(args, "length", -1, int)
        chunk = max(1, _arg(args, "chunk", WRITE_CHUNK, int))
        state = {"bytes": 0, "stop": False, "done": False}
        with self.lock:
            self.flows[flow] = state
        digest = hashlib.sha256()
        eof, error = False, None
        fd, want = port.fd, select.POLLOUT if out else select.POLLIN | select.POLLPRI
        pieces = iter_generated(seed, 0, length if length >= 0 else 1 << 62, chunk)
        pending = b""
        skip = Skipped(_arg(args, "skip", 0, int))
        while not state["stop"] and (length < 0 or state["bytes"] < length):
            if port.closed:  # closed under the flow: its fd number is a dead socket now
                error = "EBADF"
                break
            try:
                mask = _poll_fd(fd, 0.2, want)
                if mask & select.POLLNVAL:
                    error = "EBADF"
                    break
                if not mask & (want | select.POLLHUP | select.POLLERR):
                    continue
                if out:
                    if not mask & select.POLLOUT:
                        time.sleep(0.05)  # POLLHUP alone: the host is away, wait for it
                        continue
                    pending = pending or next(pieces)
                    n = os.write(fd, pending)
                    digest.update(pending[:n])
                    pending = pending[n:]
                else:
                    size = chunk if length < 0 else min(chunk, length - state["bytes"])
                    data = os.read(fd, skip.size(chunk) or size)
                    if not data:
                        eof = True
                        break
                    if skip.take(data):
                        continue
                    digest.update(data)
                    n = len(data)
            except OSError as failure:
                if failure.errno == errno.EAGAIN:
                    continue
                error = errno_name(failure.errno)
                break
            state["bytes"] += n
        if port.closed and (eof or error):  # the dead socket's EOF or EPIPE (see retire)
            eof, error = False, "EBADF"
        state["done"] = True
        return {
            "bytes": state["bytes"],
            "sha256": digest.hexdigest(),
            "eof": eof,
            "error": error,
            "stopped": state["stop"],
            **skip.result(),
        }

    def op_flow_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        """Ask a running flow to end at its next poll (0.2 s at most)."""
        with self.lock:
            state = self.flows.get(_arg(args, "flow", kind=str))
        if state is None:
            raise AgentFailure("ENOENT", f"no flow {args.get('flow')!r}")
        state["stop"] = True
        return {"bytes": state["bytes"], "done": state["done"]}

    def op_flow_state(self, args: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            state = self.flows.get(_arg(args, "flow", kind=str))
        if state is None:
            raise AgentFailure("ENOENT", f"no flow {args.get('flow')!r}")
        return {"bytes": state["bytes"], "done": state["done"]}

    # SIGIO -------------------------------------------------------------------------------

    def on_sigio(self, signum: int, frame: object) -> None:
        """Record the poll mask at the signal: on its own port for a port's realtime signal;
        plain SIGIO names no port, so on every async port."""
        now = time.time()
        with self.lock:
            own = self.sigio_ports.get(signum)
            ports = [own] if own is not None else [p for p in self.ports.values() if p.sigio]
        for port in ports:
            try:
                mask = _poll_fd(port.fd, 0)
            except (OSError, ValueError):
                mask = select.POLLNVAL
            port.sigio_masks.append({"t": round(now, 6), "mask": mask, "events": poll_names(mask)})

    def op_sigio(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        port = self.port(args)
        with self.lock:
            masks, port.sigio_masks = port.sigio_masks, []
        return masks

    # background --------------------------------------------------------------------------

    def op_start(self, args: dict[str, Any]) -> dict[str, Any]:
        op = _arg(args, "op", kind=str)
        op_args = _arg(args, "args", {}, dict)
        if op not in self.ops or op in ("start", "ticket"):
            raise AgentFailure("EINVAL", f"cannot run {op!r} in the background")
        with self.lock:
            ticket = self.next_ticket
            self.next_ticket += 1
            record: dict[str, Any] = {
                "done": False,
                "reply": None,
                "op": op,
                "started": time.time(),
            }
            self.tickets[ticket] = record

        def run() -> None:
            block_sigio()
            reply = self.handle({"id": ticket, "op": op, "args": op_args})
            with self.lock:
                record["reply"] = reply
                record["finished"] = time.time()
                record["done"] = True

        threading.Thread(target=run, name=f"ticket-{ticket}", daemon=True).start()
        return {"ticket": ticket}

    def op_ticket(self, args: dict[str, Any]) -> dict[str, Any]:
        ticket = _arg(args, "ticket", kind=int)
        wait = _arg(args, "wait", 0, (int, float))
        deadline = time.monotonic() + wait
        while True:
            with self.lock:
                record = self.tickets.get(ticket)
                if record is None:
                    raise AgentFailure("ENOENT", f"no ticket {ticket}")
                if record["done"] or time.monotonic() >= deadline:
                    result = {
                        "done": record["done"],
                        "reply": record["reply"],
                        "op": record["op"],
                        "elapsed": round(
                            record.get("finished", time.time()) - record["started"], 3
                        ),
                    }
                    if record["done"] and args.get("forget", True):
                        self.tickets.pop(ticket, None)
                    return result
            time.sleep(0.02)

    # kernel messages ---------------------------------------------------------------------

    def _open_kmsg(self) -> None:
        try:
            self.kmsg_fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.kmsg_fd, 0, os.SEEK_END)
        except OSError:
            self.kmsg_fd = None

    @staticmethod
    def _read_kmsg_records(fd: int, limit: int = 100000) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        while len(records) < limit:
            try:
                raw = os.read(fd, 8192)
            except OSError as error:
                if error.errno == errno.EPIPE:  # overwritten records: keep going
                    records.append(
                        {"seq": None, "level": None, "ts_usec": None, "text": "<kmsg records lost>"}
                    )
                    continue
                if error.errno in (errno.EAGAIN, errno.EINVAL):
                    break
                raise
            if not raw:
                break
            header, _, rest = raw.decode(errors="replace").partition(";")
            text = rest.split("\n", 1)[0]
            parts = header.split(",")
            try:
                prio, seq, ts = int(parts[0]), int(parts[1]), int(parts[2])
            except (IndexError, ValueError):
                prio, seq, ts = 6, -1, 0
            records.append(
                {"seq": seq, "level": prio & 7, "facility": prio >> 3, "ts_usec": ts, "text": text}
            )
        return records

    def op_kmsg(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Kernel messages since the previous call (the first call: since the agent started)."""
        with self.kmsg_lock:
            if self.kmsg_fd is None:
                raise AgentFailure("ENOENT", "/dev/kmsg is not available")
            return self._read_kmsg_records(self.kmsg_fd)

    def op_dmesg_problems(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Records of the whole kernel log at level <= err or mentioning BUG/WARNING/Oops."""
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        try:
            records = self._read_kmsg_records(fd)
        finally:
            os.close(fd)
        words = ("BUG", "WARNING", "Oops", "Call Trace", "general protection", "Kernel panic")
        return [
            r
            for r in records
            if (r["level"] is not None and r["level"] <= 3) or any(w in r["text"] for w in words)
        ]

    # misc --------------------------------------------------------------------------------

    def op_resumed(self, args: dict[str, Any]) -> dict[str, Any]:
        """After a restore from a saved state: the host's wall clock (the guest's stood still
        while the state was on disk) and fresh entropy (every guest restored from one state
        would otherwise share its random pool). Mixing into /dev/urandom credits nothing."""
        clock = _arg(args, "time", kind=(int, float))
        seed = base64.b64decode(_arg(args, "entropy", kind=str))
        skew = clock - time.time()
        time.clock_settime(time.CLOCK_REALTIME, clock)
        with open("/dev/urandom", "wb") as pool:
            pool.write(seed)
        return {"skew": round(skew, 3), "entropy": len(seed)}

    def op_sleep(self, args: dict[str, Any]) -> dict[str, Any]:
        seconds = _arg(args, "seconds", kind=(int, float))
        time.sleep(seconds)
        return {"slept": seconds}


# -- daemon -----------------------------------------------------------------------------------


def block_sigio() -> None:
    """Worker threads block SIGIO (and the ports' realtime signals) so the kernel delivers
    them to the main thread (handler)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO, *SIGIO_SIGNALS})


def serve_connection(agent: Agent, conn: socket.socket) -> None:
    block_sigio()
    buffer = b""
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    request = decode_message(line)
                except ValueError as error:
                    reply = error_reply(None, "EPROTO", f"unparsable request: {error}")
                else:
                    reply = agent.handle(request)
                conn.sendall(encode_message(reply))
    except OSError:
        return
    finally:
        conn.close()


def serve_forever() -> None:
    lock_fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log("another agent holds the lock; exiting")
        return
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())
    agent = Agent()
    for number in (signal.SIGIO, *SIGIO_SIGNALS):
        signal.signal(number, agent.on_sigio)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    if os.path.exists(SOCKET_PATH):
        os.unlink(SOCKET_PATH)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(SOCKET_PATH)
    listener.listen(16)
    listeners: list[Any] = [listener, *tcp_listener()]
    log(f"serving on {SOCKET_PATH} (pid {os.getpid()}, python {sys.version.split()[0]})")
    while True:
        readable, _, _ = select.select([*listeners, wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(OSError):
                os.read(wake_r, 4096)
        for ready in listeners:
            if ready in readable:
                conn, _ = ready.accept()
                threading.Thread(target=serve_connection, args=(agent, conn), daemon=True).start()


def tcp_listener() -> list[socket.socket]:
    """The TCP listener at TCP_ADDRESS, or none where that address does not exist (a host)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(TCP_ADDRESS)
    except OSError as error:
        listener.close()
        log(f"no TCP listener at {TCP_ADDRESS}: {error}")
        return []
    listener.listen(16)
    log(f"serving on tcp {TCP_ADDRESS[0]}:{TCP_ADDRESS[1]}")
    return [listener]


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} hil-agent: {message}\n")
    sys.stderr.flush()


def daemonize() -> bool:
    """Double fork; returns True in the daemon, False in the original process."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return False
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    null = os.open("/dev/null", os.O_RDONLY)
    out = os.open(LOG_PATH, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, 1024)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    return True


def run_daemon() -> None:
    try:
        serve_forever()
    except BaseException:
        log(f"daemon died:\n{traceback.format_exc()}")
    finally:
        os._exit(0)


def connect(timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(SOCKET_PATH)
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def ensure(timeout: float = 20.0) -> int:
    """Start the daemon unless it answers; returns 0 once it accepts connections."""
    try:
        connect().close()
        return 0
    except OSError:
        pass
    if daemonize():
        run_daemon()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connect().close()
            return 0
        except OSError:
            time.sleep(0.05)
    sys.stderr.write(f"hil-agent did not accept connections within {timeout} s; log tail:\n")
    sys.stderr.write((_read_text(LOG_PATH) or "")[-2000:])
    return 1


def bridge() -> int:
    if ensure() != 0:
        return 1
    sock = connect()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sources = [stdin, sock]
    while sources:
        readable, _, _ = select.select(sources, [], [])
        if stdin in readable:
            data = os.read(stdin, 65536)
            if data:
                sock.sendall(data)
            else:
                sources.remove(stdin)
                sock.shutdown(socket.SHUT_WR)
        if sock in readable:
            data = sock.recv(65536)
            if not data:
                return 0
            view = memoryview(data)
            while view:
                view = view[os.write(stdout, view) :]
    return 0


def once(encoded: str) -> int:
    if ensure() != 0:
        return 1
    request = base64.b64decode(encoded)
    sock = connect()
    sock.sendall(request.rstrip(b"\n") + b"\n")
    buffer = b""
    while b"\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            break
        buffer += data
    sock.close()
    line = buffer.split(b"\n", 1)[0]
    sys.stdout.write(REPLY_PREFIX + base64.b64encode(line).decode("ascii") + "\n")
    sys.stdout.flush()
    return 0 if line else 1


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "serve":
        if "--foreground" in argv:
            serve_forever()
            return 0
        if daemonize():
            run_daemon()
        return 0
    if command == "ensure":
        return ensure()
    if command == "bridge":
        return bridge()
    if command == "once" and len(argv) == 3:
        return once(argv[2])
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
