"""The block-checked stream: StreamChecker, block headers and mismatch texts (pure logic)."""

from __future__ import annotations

import pytest

from harness.model.payload import (
    BLOCK_SIZE,
    SPAN_SIZE,
    BlockHeader,
    Mismatch,
    Payload,
    StreamChecker,
    payload_bytes,
    seed_tag,
)


def feed_all(checker: StreamChecker, data: bytes, piece: int = 65536) -> StreamChecker:
    for at in range(0, len(data), piece):
        checker.feed(data[at : at + piece])
    return checker


def test_the_exact_stream_is_complete_from_any_offset() -> None:
    payload = Payload.generated(3, 2 * SPAN_SIZE + 100)
    checker = feed_all(StreamChecker(payload, 1000), payload_bytes(payload, 1000), 100_000)
    assert checker.complete and checker.mismatch is None
    assert checker.received == payload.length - 1000 == checker.position - 1000


def test_a_short_stream_is_not_complete() -> None:
    payload = Payload.generated(3, 3 * BLOCK_SIZE)
    checker = feed_all(StreamChecker(payload), payload_bytes(payload, 0, BLOCK_SIZE))
    assert checker.mismatch is None and not checker.complete


def test_bytes_past_the_end_are_a_mismatch_at_the_end() -> None:
    payload = Payload.generated(3, 2 * BLOCK_SIZE)
    longer = payload_bytes(Payload.generated(3, 3 * BLOCK_SIZE))
    checker = feed_all(StreamChecker(payload), longer)
    assert checker.mismatch == Mismatch(2 * BLOCK_SIZE, BlockHeader(seed_tag(3), 2))
    assert checker.received == 3 * BLOCK_SIZE and not checker.complete


def test_only_the_first_mismatch_is_kept_and_counting_goes_on() -> None:
    payload = Payload.generated(4, 8 * BLOCK_SIZE)
    data = bytearray(payload_bytes(payload))
    data[5 * BLOCK_SIZE + 20] ^= 1
    data[6 * BLOCK_SIZE + 20] ^= 1
    checker = feed_all(StreamChecker(payload), bytes(data), BLOCK_SIZE)
    assert checker.mismatch is not None and checker.mismatch.offset == 5 * BLOCK_SIZE
    assert checker.received == len(data)


def test_a_bad_block_inside_a_big_piece_is_located() -> None:
    payload = Payload.generated(4, 40 * BLOCK_SIZE)
    data = bytearray(payload_bytes(payload))
    data[33 * BLOCK_SIZE + 20] ^= 1
    checker = feed_all(StreamChecker(payload), bytes(data), len(data))
    assert checker.mismatch == Mismatch(33 * BLOCK_SIZE, BlockHeader(seed_tag(4), 33))


def test_a_block_received_in_pieces_is_located_without_its_header() -> None:
    payload = Payload.generated(4, 4 * BLOCK_SIZE)
    data = bytearray(payload_bytes(payload))
    data[BLOCK_SIZE + 3000] ^= 1
    checker = StreamChecker(payload)
    checker.feed(bytes(data[: BLOCK_SIZE + 2000]))
    checker.feed(bytes(data[BLOCK_SIZE + 2000 :]))
    assert checker.mismatch == Mismatch(BLOCK_SIZE, None)
    assert checker.mismatch.describe(4) == (
        f"block at offset {BLOCK_SIZE} (block 1) differs from the expected bytes"
    )


def test_mismatch_texts_name_the_block_and_what_was_received() -> None:
    ours = Mismatch(8192, BlockHeader(seed_tag(7), 3))
    assert ours.describe(7) == (
        "block at offset 8192 (block 2) differs: received block 3 (offset 12288) of this stream"
    )
    other = Mismatch(0, BlockHeader(seed_tag(8), 0))
    assert "seed tag 0800000000000000" in other.describe(7)
    assert ours.describe(None).endswith("differs from the expected bytes")


def test_headers_need_sixteen_bytes() -> None:
    assert BlockHeader.parse(b"short") is None
    assert BlockHeader.parse(seed_tag(1) + (5).to_bytes(8, "little")) == BlockHeader(seed_tag(1), 5)


def test_literal_payloads_cannot_be_block_checked() -> None:
    with pytest.raises(ValueError, match="generated payloads"):
        StreamChecker(Payload.literal(b"abc"))


def test_literal_payloads_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError) as err:
        StreamChecker(Payload.literal(b"abc"))
    assert str(err.value) == "only generated payloads can be checked block by block"


def test_a_check_that_starts_in_a_later_span_uses_that_span() -> None:
    payload = Payload.generated(5, 2 * SPAN_SIZE)
    start = SPAN_SIZE + 3 * BLOCK_SIZE
    checker = feed_all(StreamChecker(payload, start), payload_bytes(payload, start))
    assert checker.mismatch is None and checker.complete


@pytest.mark.parametrize("piece", [1, BLOCK_SIZE])
def test_the_first_byte_of_every_piece_is_checked(piece: int) -> None:
    payload = Payload.generated(5, 3 * BLOCK_SIZE)
    data = bytearray(payload_bytes(payload))
    data[2 * BLOCK_SIZE] ^= 1  # the first byte of the third piece of BLOCK_SIZE
    checker = feed_all(StreamChecker(payload), bytes(data), piece)
    assert checker.mismatch is not None and checker.mismatch.offset == 2 * BLOCK_SIZE


def test_a_piece_across_a_span_boundary_is_checked_past_the_boundary() -> None:
    payload = Payload.generated(5, 2 * SPAN_SIZE)
    data = bytearray(payload_bytes(payload))
    data[SPAN_SIZE + 100] ^= 1  # in the first block past the boundary
    checker = StreamChecker(payload)
    checker.feed(bytes(data[:BLOCK_SIZE]))
    checker.feed(bytes(data[BLOCK_SIZE:]))
    bad = SPAN_SIZE // BLOCK_SIZE  # received whole (the piece starts on a block): header kept
    assert checker.mismatch == Mismatch(bad * BLOCK_SIZE, BlockHeader(seed_tag(5), bad))


def test_the_stream_going_on_past_the_end_in_a_later_piece_is_a_mismatch() -> None:
    payload = Payload.generated(3, 2 * BLOCK_SIZE)
    longer = payload_bytes(Payload.generated(3, 3 * BLOCK_SIZE))
    checker = StreamChecker(payload)
    checker.feed(longer[:BLOCK_SIZE])
    checker.feed(longer[BLOCK_SIZE:])
    assert checker.mismatch == Mismatch(2 * BLOCK_SIZE, BlockHeader(seed_tag(3), 2))


@pytest.mark.parametrize("bad_block", [1, 3])
def test_a_bad_block_in_a_later_piece_is_located_with_its_header(bad_block: int) -> None:
    """The second piece starts at block 1, so every block it holds arrives whole: the
    mismatch is the bad block, with the header it carried."""
    payload = Payload.generated(4, 6 * BLOCK_SIZE)
    data = bytearray(payload_bytes(payload))
    data[bad_block * BLOCK_SIZE + 20] ^= 1
    checker = StreamChecker(payload)
    checker.feed(bytes(data[:BLOCK_SIZE]))
    checker.feed(bytes(data[BLOCK_SIZE:]))
    expected = Mismatch(bad_block * BLOCK_SIZE, BlockHeader(seed_tag(4), bad_block))
    assert checker.mismatch == expected
