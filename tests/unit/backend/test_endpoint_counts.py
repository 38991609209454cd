"""The host end's byte count against a real unix socket whose reader stops mid-chunk.

Regression (scenarios/faults/guest_close_mid_stream.yaml under load): the sender used a
blocking send() of a whole 1 MiB span; QEMU read part of it, then the guest closed and QEMU
stopped reading, so send() stayed in the kernel with those bytes delivered and never counted,
and the guest had "more than was sent".  Here the peer plays QEMU: it reads part of a large
chunk and stops; the held count must equal exactly what reached the peer's socket.
"""

from __future__ import annotations

import socket

from harness.backend.endpoint import HostEndpoint
from tests.unit.backend.peer import drain, read_exactly

CHUNK = 4 << 20  # one chunk, far larger than a unix socket's queue: one send() cannot finish


def test_held_count_is_what_reached_the_socket(pair: tuple[HostEndpoint, socket.socket]) -> None:
    endpoint, peer = pair
    endpoint.write(b"\x5a" * CHUNK)
    read = read_exactly(peer, 1 << 20)  # the peer takes part of the chunk, then stops reading
    with endpoint.hold_sending() as sent:
        queued = drain(peer)  # room again, but a held sender passes nothing more
        assert endpoint.bytes_sent == sent
        assert drain(peer) == 0
    assert 0 < sent < CHUNK
    assert sent == read + queued
    assert endpoint.pending_out == CHUNK - sent


def test_sender_goes_on_after_a_hold(pair: tuple[HostEndpoint, socket.socket]) -> None:
    endpoint, peer = pair
    endpoint.write(b"\xa5" * CHUNK)
    read = read_exactly(peer, 4096)
    with endpoint.hold_sending() as sent:
        read += drain(peer)
    assert read == sent
    read += read_exactly(peer, CHUNK - read)
    endpoint.wait_sent(timeout=10)
    assert endpoint.bytes_sent == read == CHUNK
    assert endpoint.pending_out == 0


def test_dropped_rest_is_never_counted(pair: tuple[HostEndpoint, socket.socket]) -> None:
    """A stopped stream: queued chunks go, a begun one stays pending (no torn write)."""
    endpoint, peer = pair
    endpoint.write(b"\x01" * CHUNK)
    endpoint.write(b"\x02" * CHUNK)
    read = read_exactly(peer, 8192)
    with endpoint.hold_sending() as sent:
        dropped = endpoint.drop_pending()
        read += drain(peer)
    assert dropped == CHUNK
    assert read == sent
    assert endpoint.pending_out == CHUNK - sent
