"""Payload descriptions and streaming helpers.

Payloads can be hundreds of MiB, so the model never stores them: data in flight is a queue of
``Slice(payload, start, end)`` and bytes are produced on demand.  The generator is built so that
a stdlib-only guest agent under TCG can produce and check it at device speed with C-level bytes
operations only (copy, slice, step-slice assignment, memcmp) — no per-byte or per-block Python
work and no hashing — while every 4 KiB block still names itself, so that loss, duplication,
reordering and corruption are located to the block:

    the stream with seed s is a sequence of 4 KiB blocks; block k (bytes [4096 k, 4096 k + 4096))
    starts with a 16-byte header: the seed's low 64 bits (little endian) and k (64-bit little
    endian); the other 4080 bytes are the filler at the same position of the seed's 1 MiB
    pool: the shared pool random.Random(POOL_SEED).randbytes(1 MiB) rotated left by
    pool_shift(s) = (s * 2654435761) mod 1 MiB bytes.

(One shared pool: a new seed costs a rotation, two copies, where a pool of its own, drawn from
its own generator, took 30-50 ms in the TCG guest: 8 streams started at once paid 0.3 s.)

So span m (1 MiB, blocks 256 m .. 256 m + 255) is the pool with headers where only the bytes
9..15 of each block's index (m, little endian) change from span to span: one copy of a per-seed
template plus up to seven step-slice assignments.  A payload of any length is the prefix of that
stream.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

BLOCK_SIZE = 4096  # the unit that is checked and located: it carries its seed and index
HEADER_SIZE = 16  # seed (8 bytes) + block index (8 bytes), both little endian
SPAN_SIZE = 1 << 20  # the unit of generation: one template copy per span
_BLOCKS_PER_SPAN = SPAN_SIZE // BLOCK_SIZE
_SEED_MASK = (1 << 64) - 1


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


def seed_tag(seed: int) -> bytes:
    """The 8 header bytes that name the stream of ``seed`` (its low 64 bits)."""
    return (seed & _SEED_MASK).to_bytes(8, "little")


POOL_SEED = 1_000_003


@lru_cache(maxsize=1)
def shared_pool() -> bytes:
    return random.Random(POOL_SEED).randbytes(SPAN_SIZE)


def pool_shift(seed: int) -> int:
    return (seed * 2654435761) % SPAN_SIZE


@lru_cache(maxsize=16)
def _template(seed: int) -> bytes:
    """Span 0 of ``seed``: its pool with every block's header (index high bytes zero)."""
    shared, shift = shared_pool(), pool_shift(seed)
    pool = bytearray(memoryview(shared)[shift:])
    pool += memoryview(shared)[:shift]
    # one step-slice write per header byte, not one Python iteration per block (the guest
    # agent's copy of this runs under TCG, where that loop cost more than the copies)
    for j, value in enumerate(seed_tag(seed) + bytes(8)):
        pool[j::BLOCK_SIZE] = bytes((value,)) * _BLOCKS_PER_SPAN
    pool[8::BLOCK_SIZE] = bytes(range(_BLOCKS_PER_SPAN))  # block i's index: i < 256
    return bytes(pool)


def generated_span(seed: int, index: int) -> bytes:
    """Span ``index`` (bytes ``[index * SPAN_SIZE, (index + 1) * SPAN_SIZE)``) of ``seed``."""
    span = bytearray(_template(seed))
    set_span_index(span, index)
    return bytes(span)


def set_span_index(span: bytearray, index: int) -> None:
    """Turn ``span`` (any span of a seed) into span ``index`` of that seed, in place: spans
    differ only in bytes 9..15 of each block's index."""
    for j, value in enumerate(index.to_bytes(7, "little")):
        span[9 + j :: BLOCK_SIZE] = bytes((value,)) * _BLOCKS_PER_SPAN


@dataclass(frozen=True)
class BlockHeader:
    """What a 4 KiB block says it is."""

    tag: bytes
    index: int

    @classmethod
    def parse(cls, block: bytes) -> BlockHeader | None:
        if len(block) < HEADER_SIZE:
            return None
        return cls(bytes(block[:8]), int.from_bytes(block[8:HEADER_SIZE], "little"))

    def describe(self, seed: int) -> str:
        whose = "this stream" if self.tag == seed_tag(seed) else f"seed tag {self.tag.hex()}"
        return f"block {self.index} (offset {self.index * BLOCK_SIZE}) of {whose}"


@dataclass(frozen=True)
class Mismatch:
    """The first 4 KiB block of a checked stream that differs from the expected bytes."""

    offset: int  # payload offset of that block's start (a multiple of BLOCK_SIZE)
    found: BlockHeader | None  # its header as received when the block was received whole

    def describe(self, seed: int | None) -> str:
        where = f"block at offset {self.offset} (block {self.offset // BLOCK_SIZE})"
        if seed is None or self.found is None:
            return f"{where} differs from the expected bytes"
        return f"{where} differs: received {self.found.describe(seed)}"


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
        index, offset = divmod(pos, SPAN_SIZE)
        take = min(SPAN_SIZE - offset, stop - pos)
        span = generated_span(payload.seed, index)
        yield span if take == SPAN_SIZE else span[offset : offset + take]
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


class StreamChecker:
    """Checks bytes as they arrive against ``payload[start:]``, one memcmp per piece.

    Strict and located: the first 4 KiB block that differs (lost, duplicated, reordered or
    corrupted data all shift or change a block) is kept as ``mismatch``; bytes past the payload's
    end are a mismatch at the end.  ``received`` counts every byte fed, matching or not, so the
    accounting stays exact after a mismatch.  (The guest agent has the same loop, stdlib only.)
    """

    def __init__(self, payload: Payload, start: int = 0) -> None:
        if payload.seed is None:
            raise ValueError("only generated payloads can be checked block by block")
        self.payload = payload
        self.seed: int = payload.seed
        self.start = start
        self.received = 0
        self.mismatch: Mismatch | None = None
        self._span_index = 0
        self._span = bytearray(_template(self.seed))
        self._view = memoryview(self._span)

    @property
    def position(self) -> int:
        return self.start + self.received

    @property
    def complete(self) -> bool:
        """Everything up to the payload's end arrived, and nothing else."""
        return self.mismatch is None and self.position == self.payload.length

    def feed(self, data: bytes) -> None:
        if self.mismatch is None:
            self.mismatch = self._check(data, self.position)
        self.received += len(data)

    def _check(self, data: bytes, pos: int) -> Mismatch | None:
        done = 0
        while done < len(data):
            at = pos + done
            if at >= self.payload.length:
                return Mismatch(at, BlockHeader.parse(data[done : done + HEADER_SIZE]))
            index, offset = divmod(at, SPAN_SIZE)
            if index != self._span_index:
                set_span_index(self._span, index)
                self._span_index = index
            take = min(SPAN_SIZE - offset, len(data) - done, self.payload.length - at)
            if not data.startswith(self._view[offset : offset + take], done):
                return self._locate(data, done, at, take)
            done += take
        return None

    def _locate(self, data: bytes, done: int, at: int, take: int) -> Mismatch:
        """The first differing block of ``data[done:done + take]`` (which is ``at`` onwards)."""
        block = at - at % BLOCK_SIZE
        while True:
            lo, hi = max(block, at), min(block + BLOCK_SIZE, at + take)
            got = data[done + lo - at : done + hi - at]
            if got != payload_bytes(self.payload, lo, hi):
                first = done + block - at
                header = data[first : first + HEADER_SIZE] if block >= at else b""
                return Mismatch(block, BlockHeader.parse(header))
            block += BLOCK_SIZE


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

    def __deepcopy__(self, memo: dict[int, object]) -> Slice:
        return self  # immutable, payload too: a copied model may share it (migration copies)


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

    def __deepcopy__(self, memo: dict[int, object]) -> SliceQueue:
        """A new queue of the same (immutable) slices."""
        copied = SliceQueue()
        copied._items = deque(self._items)
        copied.nbytes = self.nbytes
        return copied

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
