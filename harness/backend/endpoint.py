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
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.machine.errors import MachineError, WaitTimeout
from harness.model.payload import Payload, iter_chunks

RECEIVE_LIMIT = 4 * 1024 * 1024
_CHUNK = 65536


@dataclass(frozen=True)
class Received:
    """What a read consumed: count, SHA-256 and (for small reads) the bytes themselves."""

    length: int
    sha256: str
    data: bytes | None  # kept only when length <= keep_limit
    eof: bool


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
        self._stalled = False
        self._closing = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    # -- connection ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, timeout: float = 10) -> None:
        if self._sock is not None:
            raise MachineError(f"host end of {self.name} is already connected")
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as error:
                sock.close()
                if time.monotonic() > deadline:
                    raise WaitTimeout(
                        f"host end of {self.name}: chardev socket {self.path} not accepting "
                        f"within {timeout:.0f} s ({error})"
                    ) from None
                time.sleep(0.05)  # QEMU creates the listening socket asynchronously
        self._start(sock)

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
        with self._lock:
            sock, self._sock = self._sock, None
            self._closing = True
            dropped = self._pending_out
            self._outbox.clear()
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

    def wait_sent(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending_out and self._sock is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"host end of {self.name}: {self._pending_out} bytes still unsent after "
                        f"{timeout:.0f} s (QEMU not reading: guest closed or port throttled)"
                    )
                self._lock.wait(remaining)

    def _send_loop(self, sock: socket.socket) -> None:
        pending = b""
        while True:
            with self._lock:
                while not pending and not self._outbox and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
                if not pending:
                    pending = next(self._outbox[0], b"")
                    if not pending:
                        self._outbox.popleft()
                        continue
            try:
                sent = sock.send(pending)
            except OSError as error:
                self._fail(error)
                return
            pending = pending[sent:]
            with self._lock:
                self.bytes_sent += sent
                self._pending_out -= sent
                self._lock.notify_all()

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
                    chunk = self._inbox.popleft()
                    take = chunk if length is None else chunk[: length - count]
                    if len(take) < len(chunk):
                        self._inbox.appendleft(chunk[len(take) :])
                    self._inbox_size -= len(take)
                    digest.update(take)
                    count += len(take)
                    if count <= keep_limit:
                        kept += take
                    self._lock.notify_all()
                    continue
                if self._eof or self._sock is None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if length is None:
                        break
                    raise WaitTimeout(
                        f"host end of {self.name}: read {count} of {length} bytes within "
                        f"{timeout:.0f} s"
                    )
                self._lock.wait(remaining)
            eof = self._eof and not self._inbox
        return Received(
            count, digest.hexdigest(), bytes(kept) if count <= keep_limit else None, eof
        )

    def _receive_loop(self, sock: socket.socket) -> None:
        while True:
            with self._lock:
                while (self._stalled or self._inbox_size >= RECEIVE_LIMIT) and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
            try:
                data = sock.recv(_CHUNK)
            except OSError as error:
                self._fail(error)
                return
            with self._lock:
                if not data:
                    self._eof = True
                    self._lock.notify_all()
                    return
                self._inbox.append(data)
                self._inbox_size += len(data)
                self.bytes_received += len(data)
                self._lock.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if not self._closing:
                self.error = error
                self._eof = True
            self._lock.notify_all()
