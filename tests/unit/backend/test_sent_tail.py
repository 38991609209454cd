"""The replay tail keeps the last bytes sent as views, never copies: what it returns on a
migration must still be exactly the newest bytes, in order."""

from __future__ import annotations

import random

import pytest

from harness.backend.endpoint import SentTail


def test_it_keeps_at_least_the_limit_and_drops_whole_older_chunks() -> None:
    tail = SentTail(10)
    for chunk in (b"abcd", b"efgh", b"ijkl", b"mnop"):
        tail.add(memoryview(chunk))
    assert len(tail) == 12  # "efgh" + "ijkl" + "mnop": dropping "efgh" would keep only 8
    assert tail.take_last(12) == b"efghijklmnop"
    assert len(tail) == 0


def test_take_last_splits_a_chunk_and_keeps_its_head() -> None:
    tail = SentTail(100)
    tail.add(memoryview(b"0123456789"))
    tail.add(memoryview(b""))
    tail.add(memoryview(b"abc"))
    assert tail.take_last(5) == b"89abc"
    assert tail.take_last(0) == b""
    assert tail.take_last(8) == b"01234567"
    tail.add(memoryview(b"xyz"))
    tail.clear()
    assert len(tail) == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_sends_and_replays_match_a_byte_copy(seed: int) -> None:
    """Against a plain bytearray of everything sent: the tail is always its newest bytes, at
    least ``limit`` of them while nothing was taken back, and take_last() returns them."""
    rng = random.Random(seed)
    limit = 64
    tail, sent = SentTail(limit), bytearray()
    for _ in range(3000):
        chunk = rng.randbytes(rng.randrange(0, 30))
        tail.add(memoryview(chunk))
        sent += chunk
        assert limit <= len(tail) < limit + 30 or len(tail) == len(sent)
        if rng.random() < 0.05:
            count = rng.randrange(0, len(tail) + 1)
            assert tail.take_last(count) == bytes(sent[len(sent) - count :])
            del sent[len(sent) - count :]
            kept = tail.take_last(len(tail))  # all of it, then back as one chunk
            assert kept == bytes(sent[len(sent) - len(kept) :])
            sent = bytearray(kept)
            tail.add(memoryview(kept))
