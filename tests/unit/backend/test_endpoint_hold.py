"""HostEndpoint.hold at a migration's switchover, against a unix socket peer standing in for
QEMU's chardev server (pure harness logic: no QEMU needed to show what our end reads when).

Why it matters: QEMU 7.2 flushes guest data a throttled port still holds whenever the source's
socket turns writable, even after the device state was saved, and the destination sends those
bytes again (README Findings). So from the switchover on, the host end must not read the
source's socket; what the source wrote is drained only once it has exited.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.backend.endpoint import HostEndpoint

TIMEOUT = 10.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Peer:
    """A listening unix socket that accepts one connection (QEMU's side of a chardev)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.server.settimeout(TIMEOUT)
        self.conn, _ = self.server.accept()
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[[str], Peer]]:
    made: list[Peer] = []

    def make(name: str) -> Peer:
        made.append(Peer(tmp_path / f"{name}.sock"))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def received(endpoint: HostEndpoint) -> bytes:
    return endpoint.read(None, 0.05).data or b""


def test_a_refused_migration_reads_the_source_again(peers: Callable[[str], Peer]) -> None:
    """hold(False) (the destination refused the stream, the source runs on) reads again."""
    source = peers("source")
    endpoint = HostEndpoint("org.test.port", source.path)
    endpoint.connect()
    conn = source.accept()
    try:
        endpoint.hold()
        endpoint.hold(False)
        conn.sendall(b"after the refusal")
        wait_until(lambda: endpoint.bytes_received == 17, "bytes after hold(False)")
        assert received(endpoint) == b"after the refusal"
    finally:
        endpoint.close()


def test_bytes_written_after_the_hold_are_read_only_after_the_source_exits(
    peers: Callable[[str], Peer],
) -> None:
    """Bytes before the hold, bytes the source wrote after it (drained at the switch, none read
    earlier), then the successor's: in that order, each once."""
    source, destination = peers("source"), peers("destination")
    endpoint = HostEndpoint("org.test.port", source.path)
    endpoint.connect()
    conn = source.accept()
    try:
        conn.sendall(b"before ")
        wait_until(lambda: endpoint.bytes_received == 7, "bytes before the hold")
        endpoint.hold()
        conn.sendall(b"queued at the source ")
        endpoint.connect_successor(destination.path)
        successor = destination.accept()
        conn.close()  # the source QEMU exits
        endpoint.switch_to_successor(0, destination.path)
        successor.sendall(b"from the destination")
        wait_until(lambda: endpoint.bytes_received == 48, "the destination's bytes")
        assert received(endpoint) == b"before queued at the source from the destination"
        assert any(
            "drained the 21 bytes" in line and "(0 read between the hold" in line
            for line in endpoint.migration_log
        ), endpoint.migration_log
    finally:
        endpoint.close()
