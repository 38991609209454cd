"""The bytes a guest close leaves in the host socket, carried to the port's next stream."""

from __future__ import annotations

import hashlib

from harness.backend.streams import UNBOUNDED, Residue, residue_sha256, split_residue
from harness.model.payload import Payload, iter_chunks


def _bytes(seed: int, start: int, end: int) -> bytes:
    return b"".join(iter_chunks(Payload.generated(seed, UNBOUNDED), start, end))


def test_split_takes_from_the_front_across_segments() -> None:
    segments = [Residue(1, 100, 50), Residue(2, 0, 30)]
    assert split_residue(segments, 0) == ([], segments)
    assert split_residue(segments, 20) == (
        [Residue(1, 100, 20)],
        [Residue(1, 120, 30), Residue(2, 0, 30)],
    )
    assert split_residue(segments, 60) == (
        [Residue(1, 100, 50), Residue(2, 0, 10)],
        [Residue(2, 10, 20)],
    )
    assert split_residue(segments, 999) == (segments, [])


def test_sha256_is_of_the_segments_bytes_in_order() -> None:
    segments = [Residue(3, 5000, 70000), Residue(4, 0, 1234)]
    want = hashlib.sha256(_bytes(3, 5000, 75000) + _bytes(4, 0, 1234)).hexdigest()
    assert residue_sha256(segments) == want
    swapped = list(reversed(segments))
    assert residue_sha256(swapped) != want
    assert residue_sha256([]) == hashlib.sha256(b"").hexdigest()
