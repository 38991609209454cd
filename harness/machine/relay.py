"""The harness in the middle of a live or paused migration's channel.

The source QEMU migrates to a unix socket the harness listens on; the relay connects to the
destination's incoming socket and copies bytes both ways (the return path carries the
destination's replies, e.g. its "loaded" or "failed" shut message), reading the
virtio-serial sections of the forward stream as they pass (wire.StreamScanner: the stream
itself, mostly guest RAM, is never kept).

The relay holds each virtio-serial section from its header to its footer and passes it on in
one piece. Why: a destination QEMU that has read the device's port
data but must wait for the rest of the section runs the port's flush while half loaded
(README finding "QEMU flushes a held element while the device is half loaded"): it writes one
held element and marks the whole controller broken. Users' migrations meet that
whenever the network splits the section; the harness's own runs must not, except the test
that shows it (`pause_mid_section`).

It never decides a migration's outcome: when either side closes or fails, the relay passes
the end on (a half-close, or closing both) and stops, and QEMU reports the failure in its own
words. Every wait is bounded and names what it waited for.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from harness.machine.errors import MachineError
from harness.machine.wire import Section, StreamScanner

log = logging.getLogger("hil.machine")

_CHUNK = 256 * 1024
#: While holding (see the module's doc), how long the source may be silent before the held
#: bytes go on although the section's footer was not seen (a stream without footers, or one
#: this relay does not read right): the destination may be waiting for them.
HOLD_QUIET = 1.0
#: The subsection that follows the virtqueues' ring addresses in a virtio device's section.
_RINGS_LOADED = b"virtio/extra_state"
#: What may follow a device section: the next section (QEMU_VM_SECTION_START/PART/END/FULL),
#: a command, the stream's end (QEMU_VM_EOF: a hot-plugged controller's section is the last
#: one) or its JSON description (migration/savevm.c).
_AFTER_A_SECTION = frozenset({0x00, 0x01, 0x02, 0x03, 0x04, 0x06, 0x08})
#: Held bytes beyond this go on at once (a stream that is not the expected short tail).
_HOLD_LIMIT = 16 * 1024 * 1024


class MigrationRelay:
    """Listens on `listen_path` for the source; copies to `destination_path`'s listener."""

    def __init__(
        self,
        listen_path: Path,
        destination_path: Path,
        timeout: float,
        pause_mid_section: float = 0.0,
        hold_quiet: float = HOLD_QUIET,
    ) -> None:
        self.listen_path = listen_path
        self.destination_path = destination_path
        self.timeout = timeout  # for the source's connection and the destination's accept
        self.hold_quiet = hold_quiet
        self.scanner = StreamScanner()
        self._forward = Forward(self.scanner, pause_mid_section)
        self.returned = 0  # bytes of the return path
        self.error: str | None = None  # why the relay stopped early (QEMU says its own part)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def uri(self) -> str:
        """What the source's `migrate` command is given."""
        return f"unix:{self.listen_path}"

    def start(self) -> MigrationRelay:
        self.listen_path.unlink(missing_ok=True)
        self._listener.bind(str(self.listen_path))
        self._listener.listen(1)
        self._listener.settimeout(self.timeout)
        self._spawn(self._run, "migration-relay")
        return self

    def finish(self, timeout: float) -> list[Section]:
        """After QEMU finished the migration: wait until both directions ended, then the
        sections the stream carried. A relay still copying then is stopped and named."""
        deadline = time.monotonic() + timeout
        while (alive := [t for t in self._threads if t.is_alive()]) and (
            time.monotonic() < deadline
        ):  # the return path's thread is started by the first one: look again after each
            alive[0].join(max(0.0, deadline - time.monotonic()))
        if alive:
            self.close()
            raise MachineError(
                f"migration relay {self.listen_path.name} -> {self.destination_path.name}: "
                f"still copying {timeout:.0f} s after QEMU reported the migration's end "
                f"({self.scanner.total} bytes forwarded, {self.returned} returned)"
            )
        log.info(
            "migration relay: %d bytes forwarded, %d returned%s",
            self.scanner.total,
            self.returned,
            f" ({self.error})" if self.error else "",
        )
        return self.scanner.sections()

    def close(self) -> None:
        """Stop now (both sockets closed: a side still sending sees the channel end) and
        wait for the copying threads (each ends once its socket is shut down)."""
        self._close_sockets()
        for thread in list(self._threads):
            thread.join(self.timeout)
            if thread.is_alive():
                log.warning("migration relay thread %s did not end", thread.name)
        self.listen_path.unlink(missing_ok=True)

    def _close_sockets(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        for sock in (self._listener, *sockets):
            _shutdown(sock, socket.SHUT_RDWR)
            sock.close()

    # ------------------------------------------------------------------ threads
    def _spawn(self, target: Callable[..., object], name: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            source, _ = self._listener.accept()
        except TimeoutError:
            self._stop(
                f"no connection from the source QEMU on {self.listen_path} in {self.timeout:g} s"
            )
            return
        except OSError as error:  # closed by close(): the migration never started
            self._stop(f"listener closed: {error}")
            return
        source.settimeout(None)
        self._keep(source)
        destination = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._keep(destination)
        destination.settimeout(self.timeout)
        try:
            destination.connect(str(self.destination_path))
        except OSError as error:  # e.g. the destination QEMU exited: the source says so
            self._stop(f"cannot connect to the destination's {self.destination_path}: {error}")
            self._close_sockets()
            return
        destination.settimeout(None)
        back = self._spawn(self._pump, "migration-relay-return", destination, source, False)
        if self._pump(source, destination, True) == "write":
            # The destination is gone (e.g. it refused a section): its last words on the
            # return path (the "failed" shut message) still go to the source, then the end.
            back.join(self.timeout)
            self._close_sockets()

    def _pump(self, src: socket.socket, dst: socket.socket, forward: bool) -> str | None:
        """Copy until `src` ends, then half-close `dst` so its reader sees the end too.

        Returns which side failed: "read" (`src` is gone: its end is passed on like an
        end of stream) or "write" (`dst` is gone; a source gone from the return path closes
        everything, the forward pump's caller waits for the return path first)."""
        failed = None
        try:
            while True:
                failed = "read"
                data = self._receive(src, forward and self._forward.holding)
                failed = "write"
                if data is None:  # the source paused while we hold: pass it all on
                    self._forward.release(dst, f"the source paused {self.hold_quiet:g} s")
                    continue
                if not data:
                    break
                if forward:
                    self._forward.take(data, dst)
                else:
                    dst.sendall(data)
                    self.returned += len(data)
            if forward:
                self._forward.release(dst, "the stream ended")
            failed = None
        except OSError as error:
            self._stop(f"{'source -> destination' if forward else 'return path'}: {error}")
            if failed == "write" and not forward:
                self._close_sockets()
                return failed
        if failed != "write":
            _shutdown(dst, socket.SHUT_WR)
        return failed

    def _receive(self, src: socket.socket, holding: bool) -> bytes | None:
        """The next piece (b"" at the end); None when holding and the source stayed silent
        for `hold_quiet` seconds."""
        if not holding:
            return src.recv(_CHUNK)
        src.settimeout(self.hold_quiet)
        try:
            return src.recv(_CHUNK)
        except TimeoutError:
            return None
        finally:
            src.settimeout(None)

    def _keep(self, sock: socket.socket) -> None:
        """Track a socket for close(); one opened after close() is closed at once."""
        with self._lock:
            if not self._closed:
                self._sockets.append(sock)
                return
        sock.close()

    def _stop(self, why: str) -> None:
        if self.error is None:
            self.error = why
            log.info("migration relay %s: %s", self.listen_path.name, why)


class Forward:
    """The forward stream on its way to the destination: scanned, and each virtio-serial
    section held from its header until its footer (and one byte more) arrived, then passed
    on in one piece (see the module's doc for why)."""

    def __init__(self, scanner: StreamScanner, pause_mid_section: float = 0.0) -> None:
        self.scanner = scanner
        #: > 0: the held bytes go on in two pieces this many seconds apart, split inside the
        #: virtio-serial section where its rings' addresses are loaded and the rest is not
        #: (before its "virtio/extra_state" subsection; what a slow network may do)
        self.pause_mid_section = pause_mid_section
        self._held = bytearray()
        self._done = 0  # sections passed on whole
        self._paused = False  # the pause inside the section was made

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def take(self, data: bytes, dst: socket.socket) -> None:
        self.scanner.feed(data)
        if not self._held and self.scanner.begun == self._done:
            dst.sendall(data)
            return
        self._held += data
        if self._sections_whole():
            self.release(dst, "its footer arrived")
        elif len(self._held) >= _HOLD_LIMIT:
            self.release(dst, f"{_HOLD_LIMIT} bytes held, no footer")

    def _sections_whole(self) -> bool:
        """Every section begun is in the held bytes up to its footer and the next item's
        first byte (a footer's five bytes could occur inside the section's data; followed
        by what may follow a section they almost surely do not)."""
        start = self.scanner.total - len(self._held)  # stream offset of held[0]
        for header, footer in self.scanner.footers()[self._done :]:
            at = max(0, header - start)
            while True:
                at = self._held.find(footer, at)
                after = at + len(footer)
                if at < 0 or after >= len(self._held):
                    return False
                if self._held[after] in _AFTER_A_SECTION:
                    break
                at += 1
        return True

    def release(self, dst: socket.socket, why: str) -> None:
        """Send what is held; split inside the virtio-serial section when
        `pause_mid_section` asks for it."""
        held, self._held = self._held, bytearray()
        done, self._done = self._done, self.scanner.begun
        if not held:
            return
        start = self.scanner.total - len(held)  # stream offset of held[0]
        log.info(
            "migration relay: %d bytes held for the virtio-serial section (from stream "
            "offset %d): %s",
            len(held),
            start,
            why,
        )
        # What came before the section goes first: the section itself then starts with an
        # empty socket buffer, so the kernel queues it in one or two pieces, not as the
        # destination happens to free space.
        first = self.scanner.footers()[done:][:1]
        header = first[0][0] - start if first else 0
        pause = self._split_at(held, start)
        cuts = sorted({0, len(held), *(c for c in (header, pause) if 0 < c < len(held))})
        for begin, end in pairwise(cuts):
            if pause and begin == pause:
                log.info(
                    "migration relay: pausing %.2f s inside the virtio-serial section "
                    "(stream offset %d)",
                    self.pause_mid_section,
                    start + pause,
                )
                # A deliberate gap in the stream, not a wait for anything: the destination
                # must run out of bytes right there (README finding).
                time.sleep(self.pause_mid_section)
            dst.sendall(held[begin:end])

    def _split_at(self, held: bytearray, start: int) -> int:
        """Where to split `held` (stream offset `start`): before the first virtio-serial
        section's extra-state subsection, when a pause is asked for and none was made yet;
        else 0 (no split)."""
        if self.pause_mid_section <= 0 or self._paused:
            return 0
        for section in self.scanner.sections():
            if start <= section.end < start + len(held):
                at = held.find(_RINGS_LOADED, section.end - start)
                if at > 0:
                    self._paused = True
                    return at
        return 0


def feed_file(
    image: Path, destination_path: Path, timeout: float, pause_mid_section: float = 0.0
) -> int:
    """Send a saved migration stream to a destination's incoming unix socket, held like the
    relay's forward stream (a pipe from `exec:cat` can run dry mid-section as well); the
    bytes sent. A destination that stops reading (it refused the stream) ends it early:
    QEMU says why."""
    forward = Forward(StreamScanner(), pause_mid_section)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dst, image.open("rb") as src:
        dst.settimeout(timeout)
        dst.connect(str(destination_path))
        try:
            while data := src.read(_CHUNK):
                forward.take(data, dst)
            forward.release(dst, "the file ended")
        except OSError as error:
            log.info("migration file feed %s: %s", image.name, error)
        _shutdown(dst, socket.SHUT_WR)  # what it has not read yet stays readable
    return forward.scanner.total


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):  # already closed or never connected
        sock.shutdown(how)
