"""The host end of one virtio-serial port: a unix socket client of QEMU's chardev server.

Connecting is "host open", closing is "host close". Writes never block the harness: a sender
thread feeds the socket while the caller goes on, so backpressure is visible as bytes still
queued (`pending_out`) rather than as a hung test. A receiver thread reads into a bounded buffer
(`RECEIVE_LIMIT`); when nobody consumes, it stops reading and QEMU throttles the port — the
harness never holds more than that in memory, whatever the payload size. `stall()` stops reading
on purpose (a slow host) to make QEMU throttle.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.machine.errors import MachineError, ReadTimeout, WaitTimeout
from harness.model.payload import Mismatch, Payload, StreamChecker, iter_chunks, sha256_of

log = logging.getLogger("hil.backend")
RECEIVE_LIMIT = 4 * 1024 * 1024
REPLAY_LIMIT = 8 * 1024 * 1024  # > any unix socket queue: what QEMU may not have read yet
_CHUNK = 262144  # per recv(): fewer, larger chunks cost the host less per byte
_RX_POLL = 0.1  # the receiver's poll() timeout: it re-checks close() this often when idle
SEND_POLL = 0.2  # a sender waiting for room looks at close/pause/hold this often


class SentTail:
    """The last ``limit`` bytes sent (at least), kept for a migration's replay as views of the
    chunks they were sent from: queued chunks are immutable, so keeping them copies nothing
    (a byte copy per send() cost the host as much CPU as the send itself)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._views: deque[memoryview] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, view: memoryview) -> None:
        if not view:
            return
        self._views.append(view)
        self._size += len(view)
        while self._size - len(self._views[0]) >= self.limit:
            self._size -= len(self._views.popleft())

    def take_last(self, count: int) -> bytes:
        """Remove the last ``count`` bytes (at most len(self)) and return them."""
        pieces: list[memoryview] = []
        while count:
            view = self._views.pop()
            if len(view) > count:
                self._views.append(view[: len(view) - count])
                view = view[len(view) - count :]
            pieces.append(view)
            self._size -= len(view)
            count -= len(view)
        return b"".join(reversed(pieces))

    def clear(self) -> None:
        self._views.clear()
        self._size = 0


@dataclass(frozen=True)
class Received:
    """What a read consumed: count, SHA-256 and (for small reads) the bytes themselves."""

    length: int
    sha256: str
    data: bytes | None  # kept only when length <= keep_limit
    eof: bool


@dataclass(frozen=True)
class Checked:
    """What a checked read consumed: exact count, the first bad 4 KiB block (if any), and when
    the first and last bytes were taken (monotonic seconds; equal when nothing arrived)."""

    payload: Payload
    start: int
    length: int
    mismatch: Mismatch | None
    eof: bool
    first_at: float
    last_at: float

    @property
    def ok(self) -> bool:
        return self.mismatch is None and self.start + self.length == self.payload.length

    @property
    def sha256(self) -> str | None:
        """SHA-256 of what arrived when it is the payload's bytes (computed here, on the host,
        from the model's generator: the bytes were compared one by one); None otherwise."""
        if self.mismatch is not None:
            return None
        return sha256_of(self.payload, self.start, self.start + self.length)

    def describe(self) -> str:
        if self.mismatch is not None:
            return self.mismatch.describe(self.payload.seed)
        expected = self.payload.length - self.start
        end = " (EOF)" if self.eof else ""
        return f"{self.length} of {expected} bytes arrived{end}, all as expected"


class HostEndpoint:
    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._sock: socket.socket | None = None
        self._lock = threading.Condition()
        self._inbox: deque[bytes] = deque()
        self._inbox_size = 0
        self._eof = False
        self._outbox: deque[Iterator[bytes]] = deque()
        self._pending_out = 0
        self._in_send = False  # a send() call is under way: its bytes are not counted yet
        self._holds = 0  # hold_sending() callers: the sender starts no send() meanwhile
        self._stalled = False
        self._closing = False
        self.bytes_sent = 0
        self.bytes_received = 0
        #: connect() calls so far: a migration's switch carries the same connection over
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self._paused = False
        self._held = False  # hold(): at a switchover, the source's socket is not read any more
        self._received_at_hold = 0
        # a chunk the sender has begun (a view: its rest is never copied), kept across migration
        self._partial: bytes | memoryview = b""
        self._recent = SentTail(REPLAY_LIMIT)  # to re-send what QEMU did not read
        self._successor: socket.socket | None = None
        self.migration_log: list[str] = []

    # -- connection ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, timeout: float = 10) -> None:
        if self._sock is not None:
            raise MachineError(f"host end of {self.name} is already connected")
        self._start(_connect(self.path, timeout, self.name))
        self.connections += 1

    @property
    def inode(self) -> int | None:
        """Our socket's inode: `ss` names QEMU's end of the connection by it."""
        return os.fstat(self._sock.fileno()).st_ino if self._sock is not None else None

    def _start(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            self._closing = False
            self._eof = False
        self._threads = [
            threading.Thread(
                target=self._receive_loop, args=(sock,), daemon=True, name=f"rx-{self.name}"
            ),
            threading.Thread(
                target=self._send_loop, args=(sock,), daemon=True, name=f"tx-{self.name}"
            ),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> int:
        """Disconnect; returns how many queued outgoing bytes were never sent (dropped)."""
        self.drop_successor()
        with self._lock:
            sock, self._sock = self._sock, None
            self._closing = True
            dropped = self._pending_out
            self._outbox.clear()
            self._partial = b""
            self._recent.clear()
            self._pending_out = 0
            self._inbox.clear()
            self._inbox_size = 0
            self._lock.notify_all()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        return dropped

    # -- sending ---------------------------------------------------------------------------

    def write(self, payload: Payload | bytes) -> None:
        """Queue `payload` for sending and return at once."""
        payload = payload if isinstance(payload, Payload) else Payload.literal(payload)
        with self._lock:
            if self._sock is None:
                raise MachineError(f"host end of {self.name} is not connected")
            self._outbox.append(iter_chunks(payload))
            self._pending_out += payload.length
            self._lock.notify_all()

    @property
    def pending_out(self) -> int:
        with self._lock:
            return self._pending_out

    def wait_eof(self, timeout: float) -> None:
        """Until the peer's end of the socket is closed and everything before it received
        (not while receiving is paused: stalled, held, or the inbox full)."""
        self._wait_while(
            lambda: not self._eof and self._sock is not None and not self._receiving_paused(),
            timeout,
            lambda: (
                f"QEMU did not close its end of the socket within {timeout:.0f} s "
                "(the chardev was removed)"
            ),
        )

    def wait_sent(self, timeout: float) -> None:
        self._wait_while(
            lambda: bool(self._pending_out) and self._sock is not None,
            timeout,
            lambda: (
                f"{self._pending_out} bytes still unsent after {timeout:.0f} s "
                "(QEMU not reading: guest closed or port throttled)"
            ),
        )

    def _wait_while(
        self, waiting: Callable[[], bool], timeout: float, why: Callable[[], str]
    ) -> None:
        """(Lock not held) Wait on the lock's condition while ``waiting()``; WaitTimeout with
        ``why()`` (evaluated under the lock, at the timeout) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while waiting():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(f"host end of {self.name}: {why()}")
                self._lock.wait(remaining)

    def _send_loop(self, sock: socket.socket) -> None:
        """Feed the socket without ever blocking inside send(): a blocking send() of a whole
        chunk would pass part of it to QEMU while ``bytes_sent`` still lacks it (and stay in
        the kernel for good once QEMU stops reading), so every count would lag the socket."""
        while True:
            with self._lock:
                idle = not self._partial and not self._outbox
                while (self._paused or self._holds or idle) and not self._closing:
                    self._lock.wait()
                    idle = not self._partial and not self._outbox
                if self._closing:
                    return
                if not self._partial:
                    self._partial = memoryview(next(self._outbox[0], b""))
                    if not self._partial:
                        self._outbox.popleft()
                        continue
                pending = self._partial
                self._in_send = True
            try:
                sent = sock.send(pending, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as error:
                self._sent(pending, 0)
                self._fail(error)
                return
            self._sent(pending, sent)
            if not sent and not self._wait_room(sock):
                return

    def _sent(self, pending: bytes | memoryview, sent: int) -> None:
        """Count what one send() call passed to the socket; the call is over."""
        with self._lock:
            self._in_send = False
            self._partial = self._partial[sent:]
            self.bytes_sent += sent
            self._pending_out = max(0, self._pending_out - sent)  # close() may have zeroed it
            self._recent.add(memoryview(pending)[:sent])
            self._lock.notify_all()

    def _wait_room(self, sock: socket.socket) -> bool:
        """Until the socket takes bytes again or SEND_POLL passes; False once it is gone."""
        try:
            select.select([], [sock], [], SEND_POLL)
        except (OSError, ValueError) as error:  # closed under us (ValueError: fileno -1)
            self._fail(error if isinstance(error, OSError) else OSError(str(error)))
            return False
        return True

    @contextlib.contextmanager
    def hold_sending(self, timeout: float = 10) -> Iterator[int]:
        """Hold the sender between send() calls and yield ``bytes_sent``, exact and fixed while
        held: what crossed the socket can then be measured against it (a stream's end)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._holds += 1
            try:
                while self._in_send:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WaitTimeout(
                            f"host end of {self.name}: a send() call still under way after "
                            f"{timeout:.0f} s (the sender thread is not running)"
                        )
                    self._lock.wait(remaining)
                sent = self.bytes_sent
            except BaseException:
                self._holds -= 1
                raise
        try:
            yield sent
        finally:
            with self._lock:
                self._holds -= 1
                self._lock.notify_all()

    def drop_pending(self) -> int:
        """Stop sending what is still queued (a stream told to stop); returns the bytes dropped."""
        with self._lock:
            dropped = self._pending_out - len(self._partial)
            self._outbox.clear()
            self._pending_out = len(self._partial)  # a begun chunk still goes: no torn write
            self._lock.notify_all()
            return dropped

    # -- migration -----------------------------------------------------------------------------

    def pause_sending(self, paused: bool = True) -> None:
        with self._lock:
            self._paused = paused
            self._lock.notify_all()

    def hold(self, held: bool = True) -> None:
        """At a migration's switchover: neither write to nor read from the source any more
        (until switch_to_successor drains what it wrote, or hold(False) after a refusal). No
        recv() happens after this returns: the receiver reads only under the lock, after
        checking the hold.

        Why reading must stop too: QEMU 7.2 keeps flushing a throttled port's held and queued
        guest data to its chardev whenever the socket turns writable, with the VM stopped and
        even after the device state (which still counts those bytes as unsent) went to the
        destination, which then sends them again (README Findings). Once we stop reading, the
        source's socket stays full, so it cannot write after its state was saved."""
        with self._lock:
            self._paused = self._held = held
            self._lock.notify_all()
            while held and self._in_send:  # a send() under way ends at once (non-blocking)
                self._lock.wait()
            if held:
                self._received_at_hold = self.bytes_received
                self._note(
                    f"held at {time.time():.3f}: {self.bytes_received} bytes received from "
                    f"the source, {self.bytes_sent} sent to it"
                )

    def connect_successor(self, path: Path, timeout: float = 10) -> None:
        """Connect to the migration destination's chardev now, so that the destination loads
        with the host already connected (no PORT_OPEN 0/1 blip the model does not predict)."""
        self._successor = _connect(path, timeout, self.name)
        self._note(f"connected to destination socket {path}")

    def _note(self, text: str) -> None:
        """A migration event of this host end: kept for failure reports, and logged."""
        self.migration_log.append(text)
        log.info("host end of %s: %s", self.name, text)

    def drop_successor(self) -> None:
        if self._successor is not None:
            self._successor.close()
            self._successor = None

    def switch_to_successor(self, unread_by_source: int, new_path: Path) -> None:
        """After the source stopped for good: keep what it wrote to us, re-send what it never
        read (exactly `unread_by_source` bytes, measured in its socket), continue on the new
        socket. The source must have exited (our old socket at EOF) before this is called."""
        assert self._successor is not None, "connect_successor() first"
        old = self._sock
        with self._lock:
            self._closing = True  # the old socket's threads end (the receiver at its EOF)
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
            if thread.is_alive():
                raise MachineError(f"host end of {self.name}: {thread.name} did not stop")
        with self._lock:
            if old is not None:
                late = self.bytes_received - self._received_at_hold
                residue = self._drain_residue(old)
                self._note(
                    f"source exited; at {time.time():.3f} drained the {residue} bytes it wrote "
                    f"that were still queued ({late} read between the hold and its exit)"
                )
                old.close()
            if unread_by_source > len(self._recent):
                raise MachineError(
                    f"host end of {self.name}: {unread_by_source} bytes unread by the source "
                    f"QEMU, more than the {len(self._recent)} kept for replay"
                )
            if unread_by_source:
                replay = self._recent.take_last(unread_by_source)
                self._partial = replay + self._partial
                self._pending_out += unread_by_source
                self.bytes_sent -= unread_by_source
            self._note(
                f"switched to {new_path}: re-sending {unread_by_source} bytes the source never "
                f"read, kept {self._inbox_size} received bytes"
            )
            self.path = new_path
            self._eof = False
            self._closing = False
            self._paused = False
            self._held = False
            successor, self._successor = self._successor, None
        self._start(successor)

    def _drain_residue(self, sock: socket.socket) -> int:
        """Everything the source wrote before exiting, whatever the receive limit or stall;
        returns the byte count."""
        sock.setblocking(False)
        drained = 0
        while True:
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, OSError):
                return drained
            if not data:
                return drained
            drained += len(data)
            self._inbox.append(data)
            self._inbox_size += len(data)
            self.bytes_received += len(data)

    # -- receiving ---------------------------------------------------------------------------

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) reading the socket, like a host application that is busy."""
        with self._lock:
            self._stalled = stalled
            self._lock.notify_all()

    @property
    def buffered_in(self) -> int:
        with self._lock:
            return self._inbox_size

    def read(self, length: int | None, timeout: float, keep_limit: int = 1 << 20) -> Received:
        """Consume exactly `length` bytes (or, with None, whatever arrives until `timeout`
        passes quietly), hashing as it goes; stops early only at EOF."""
        digest = hashlib.sha256()
        kept = bytearray()
        count = 0
        deadline = time.monotonic() + timeout
        with self._lock:
            while length is None or count < length:
                if self._inbox:
                    take = self._pop(None if length is None else length - count)
                    digest.update(take)
                    count += len(take)
                    if count <= keep_limit:
                        kept += take
                    continue
                if self._eof or self._sock is None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if length is None:
                        break
                    raise ReadTimeout(
                        f"host end of {self.name}: read {count} of {length} bytes within "
                        f"{timeout:.0f} s",
                        received=count,
                        wanted=length,
                    )
                self._lock.wait(remaining)
            eof = self._eof and not self._inbox
        return Received(
            count, digest.hexdigest(), bytes(kept) if count <= keep_limit else None, eof
        )

    def read_checked(
        self, payload: Payload, timeout: float, start: int = 0, length: int | None = None
    ) -> Checked:
        """Consume ``length`` bytes (default: up to the payload's end) and compare them with
        ``payload[start:]`` as they arrive (memcmp per chunk; the first bad 4 KiB block is
        located).  Stops early only at EOF; ``timeout`` bounds each wait for data."""
        checker = StreamChecker(payload, start)
        want = payload.length - start if length is None else length
        first_at = last_at = 0.0
        began = time.monotonic()
        with self._lock:
            while checker.received < want:
                since = last_at or began
                take = self._next(checker.received, want, since, timeout, "checked read got")
                if take is None:
                    break
                last_at = time.monotonic()
                first_at = first_at or last_at
                self._lock.release()  # compare outside the lock: the receiver goes on
                try:
                    checker.feed(take)
                finally:
                    self._lock.acquire()
            eof = self._eof and not self._inbox
        return Checked(
            payload, start, checker.received, checker.mismatch, eof, first_at, last_at or first_at
        )

    def drain(self, length: int, timeout: float) -> tuple[int, float, float]:
        """Consume and discard ``length`` bytes (the raw path: no hash, no compare); returns
        (count, first byte time, last byte time).  Stops early only at EOF."""
        count = 0
        first_at = last_at = 0.0
        began = time.monotonic()
        with self._lock:
            while count < length:
                chunk = self._next(count, length, last_at or began, timeout, "drained")
                if chunk is None:
                    break
                count += len(chunk)
                last_at = time.monotonic()
                first_at = first_at or last_at
        return count, first_at, last_at or first_at

    def _next(self, got: int, want: int, since: float, timeout: float, what: str) -> bytes | None:
        """(Lock held) up to ``want - got`` bytes once some arrived; None at EOF.  ReadTimeout
        ("{what} {got} of {want} bytes") once nothing arrived for ``timeout`` seconds ``since``
        the last byte (or since the read began when none arrived yet)."""
        while not self._inbox:
            if self._eof or self._sock is None:
                return None
            remaining = since + timeout - time.monotonic()
            if remaining <= 0:
                raise ReadTimeout(
                    f"host end of {self.name}: {what} {got} of {want} bytes, then nothing for "
                    f"{timeout:.0f} s",
                    got,
                    want,
                )
            self._lock.wait(remaining)
        return self._pop(want - got)

    def take(self, limit: int, timeout: float) -> bytes:
        """Up to ``limit`` received bytes, waiting at most ``timeout`` for the first one;
        b"" when none came (a stream consumer's step: it never holds more than ``limit``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._inbox:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    return b""
                self._lock.wait(remaining)
            return self._pop(limit)

    def _pop(self, limit: int | None) -> bytes:
        """(Lock held, inbox not empty) the first received chunk, at most ``limit`` bytes of it
        (the rest stays first in line); wakes the receiver, which may have room again."""
        chunk = self._inbox.popleft()
        if limit is not None and len(chunk) > limit:
            self._inbox.appendleft(chunk[limit:])
            chunk = chunk[:limit]
        self._inbox_size -= len(chunk)
        self._lock.notify_all()
        return chunk

    def _receive_loop(self, sock: socket.socket) -> None:
        """Wait for data with poll(), then recv() without blocking *under the lock*, after
        checking hold(): so once hold() has taken the lock, no recv() follows (a blocking recv
        could read once more after the hold)."""
        readable = select.poll()
        readable.register(sock, select.POLLIN)
        while True:
            with self._lock:
                while self._receiving_paused() and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
            try:
                if not readable.poll(_RX_POLL * 1000):
                    continue
            except OSError as error:
                self._fail(error)
                return
            with self._lock:
                if self._closing or self._receiving_paused():
                    continue
                try:
                    data = sock.recv(_CHUNK, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError as error:
                    self._fail(error)
                    return
                if not data:
                    self._eof = True
                    self._lock.notify_all()
                    return
                self._inbox.append(data)
                self._inbox_size += len(data)
                self.bytes_received += len(data)
                self._lock.notify_all()

    def _receiving_paused(self) -> bool:
        """Stalled, held at a switchover, or the inbox full (lock held)."""
        return self._stalled or self._held or self._inbox_size >= RECEIVE_LIMIT

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if not self._closing:
                self.error = error
                self._eof = True
            self._lock.notify_all()


def _connect(path: Path, timeout: float, name: str) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as error:
            sock.close()
            if time.monotonic() > deadline:
                raise WaitTimeout(
                    f"host end of {name}: chardev socket {path} not accepting within "
                    f"{timeout:.0f} s ({error})"
                ) from None
            time.sleep(0.05)  # QEMU creates the listening socket asynchronously


def unread_by_peer(inodes: set[int]) -> dict[int, int]:
    """Bytes QEMU has not read from each of our sockets (by our socket's inode).

    Our own send queue (SIOCOUTQ) counts kernel overhead, not bytes; the peer's receive queue,
    which `ss -x` reports per socket with the peer's inode, is exact."""
    if not inodes:
        return {}
    try:
        output = subprocess.run(["ss", "-xn"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise MachineError(
            "migration needs `ss` to measure bytes QEMU left unread: apt-get install iproute2 "
            "(sh .ci/bootstrap does)"
        ) from None
    return parse_unread(output, inodes)


def parse_unread(ss_output: str, inodes: set[int]) -> dict[int, int]:
    """`ss -xn` rows whose peer is one of `inodes`: Recv-Q of that peer, keyed by our inode."""
    unread: dict[int, int] = {}
    for line in ss_output.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6 and fields[0] == "u_str" and fields[-1].isdigit():
            peer = int(fields[-1])
            if peer in inodes:
                unread[peer] = int(fields[2])
    return unread
