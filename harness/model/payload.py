"""Payload descriptions and streaming helpers.

Payloads can be hundreds of MiB, so the model never stores them: data in flight is a queue of
``Slice(payload, start, end)`` and bytes are produced on demand.  The generator is deliberately
trivial so that a stdlib-only guest agent can re-implement it byte for byte:

    block k (k = offset // 65536) of the stream with seed s is
    random.Random(s * 1_000_003 + k).randbytes(65536), truncated to the payload length.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BLOCK_SIZE = 65536


@dataclass(frozen=True)
class Payload:
    """Either literal ``data`` or a generated stream ``(seed, length)``."""

    data: bytes | None = None
    seed: int | None = None
    length: int = 0

    def __post_init__(self) -> None:
        if self.data is not None:
            object.__setattr__(self, "length", len(self.data))
        elif self.seed is None:
            raise ValueError("a Payload needs data or a seed")

    @classmethod
    def literal(cls, data: bytes) -> Payload:
        return cls(data=bytes(data))

    @classmethod
    def generated(cls, seed: int, length: int) -> Payload:
        return cls(seed=seed, length=length)

    def __len__(self) -> int:
        return self.length


def as_payload(value: Payload | bytes) -> Payload:
    """Accept raw bytes wherever a Payload is expected (scenario convenience)."""
    return value if isinstance(value, Payload) else Payload.literal(value)


def generated_block(seed: int, index: int) -> bytes:
    """Block ``index`` of the generated stream for ``seed`` (always 65536 bytes)."""
    return random.Random(seed * 1_000_003 + index).randbytes(BLOCK_SIZE)


def _bounds(payload: Payload, start: int, end: int | None) -> tuple[int, int]:
    stop = payload.length if end is None else end
    if not 0 <= start <= stop <= payload.length:
        raise ValueError(f"range {start}:{stop} outside payload of {payload.length} bytes")
    return start, stop


def iter_chunks(payload: Payload, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Yield the bytes of ``payload[start:end]`` at most one block at a time."""
    start, stop = _bounds(payload, start, end)
    if payload.data is not None:
        if stop > start:
            yield payload.data[start:stop]
        return
    assert payload.seed is not None
    pos = start
    while pos < stop:
        index, offset = divmod(pos, BLOCK_SIZE)
        take = min(BLOCK_SIZE - offset, stop - pos)
        yield generated_block(payload.seed, index)[offset : offset + take]
        pos += take


def payload_bytes(payload: Payload, start: int = 0, end: int | None = None) -> bytes:
    """Materialise ``payload[start:end]`` (only for small ranges)."""
    return b"".join(iter_chunks(payload, start, end))


def sha256_of(payload: Payload, start: int = 0, end: int | None = None) -> str:
    """Hex SHA-256 of ``payload[start:end]`` computed without materialising it."""
    digest = hashlib.sha256()
    for chunk in iter_chunks(payload, start, end):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Slice:
    """Bytes ``[start, end)`` of a payload: the unit of data in flight."""

    payload: Payload
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def data(self) -> bytes:
        return payload_bytes(self.payload, self.start, self.end)


def slices_sha256(slices: Iterable[Slice]) -> str:
    """Hex SHA-256 of the concatenation of ``slices``."""
    digest = hashlib.sha256()
    for piece in slices:
        for chunk in iter_chunks(piece.payload, piece.start, piece.end):
            digest.update(chunk)
    return digest.hexdigest()


def slices_bytes(slices: Iterable[Slice]) -> bytes:
    return b"".join(piece.data() for piece in slices)


class SliceQueue:
    """FIFO of slices with a byte count; merges adjacent slices of the same payload."""

    def __init__(self, slices: Iterable[Slice] = ()) -> None:
        self._items: deque[Slice] = deque()
        self.nbytes = 0
        for piece in slices:
            self.push(piece)

    def push(self, piece: Slice) -> None:
        if piece.length == 0:
            return
        if self._items:
            last = self._items[-1]
            if last.end == piece.start and last.payload == piece.payload:
                self._items[-1] = Slice(last.payload, last.start, piece.end)
                self.nbytes += piece.length
                return
        self._items.append(piece)
        self.nbytes += piece.length

    def take(self, limit: int | None = None) -> list[Slice]:
        """Remove and return up to ``limit`` bytes (all when None) from the front."""
        budget = self.nbytes if limit is None else min(limit, self.nbytes)
        out: list[Slice] = []
        while budget > 0:
            head = self._items[0]
            if head.length <= budget:
                self._items.popleft()
                out.append(head)
                budget -= head.length
                self.nbytes -= head.length
            else:
                out.append(Slice(head.payload, head.start, head.start + budget))
                self._items[0] = Slice(head.payload, head.start + budget, head.end)
                self.nbytes -= budget
                budget = 0
        return out

    def slices(self) -> list[Slice]:
        return list(self._items)

    def __len__(self) -> int:
        return self.nbytes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SliceQueue):
            return NotImplemented
        return self._items == other._items

    __hash__ = None  # type: ignore[assignment]
