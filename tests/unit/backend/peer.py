"""The test's end of a host endpoint's socket: it reads like QEMU, or stops reading."""

from __future__ import annotations

import socket


def read_exactly(peer: socket.socket, length: int) -> int:
    """Read exactly ``length`` bytes (blocking, with the socket's timeout)."""
    got = 0
    while got < length:
        data = peer.recv(min(65536, length - got))
        assert data, f"peer saw EOF after {got} of {length} bytes"
        got += len(data)
    return got


def drain(peer: socket.socket) -> int:
    """Everything queued for the peer right now, without waiting for more."""
    got = 0
    peer.setblocking(False)
    try:
        while True:
            try:
                data = peer.recv(65536)
            except BlockingIOError:
                return got
            assert data, "peer saw EOF while draining"
            got += len(data)
    finally:
        peer.settimeout(10)
