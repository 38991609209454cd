"""Snapshot/diff formatting, vport name parsing, payload generator and slice queues."""

from __future__ import annotations

import copy
import hashlib
import random

import pytest

from harness.model import (
    Difference,
    Payload,
    Slice,
    VirtioSerialModel,
    diff,
    format_diff,
    parse_vport,
    payload_bytes,
    port_nr_from_vport,
    sha256_of,
)
from harness.model.migration import clone_configuration, load, migrate, save
from harness.model.payload import SliceQueue, as_payload
from tests.unit.model.conftest import open_port


def test_parse_vport():
    assert parse_vport("vport2p5") == (2, 5)
    assert port_nr_from_vport("vport0p30") == 30
    with pytest.raises(ValueError):
        parse_vport("hvc0")


def test_diff_reports_dotted_fields_and_missing_ports(opened):
    expected = opened.snapshot()
    opened.host_close("p")
    opened.hotplug_controller("vser1", max_ports=2)
    opened.hotplug("q", controller="vser1")
    actual = opened.snapshot()
    got = diff(expected, actual)
    assert Difference("controller:vser1", "present", False, True) in got
    assert Difference("p", "qemu.host_connected", True, False) in got
    assert Difference("p", "guest.host_connected", True, False) in got
    assert Difference("p", "poll", frozenset({"OUT"}), frozenset({"IN", "HUP"})) in got
    assert Difference("q", "present", False, True) in got
    table = format_diff(got)
    lines = table.splitlines()
    assert lines[0].split() == ["port", "field", "expected", "actual"]
    assert set(lines[1]) <= {"-", " "}
    assert any("qemu.host_connected" in line and "True" in line for line in lines)
    assert "{HUP,IN}" in table
    assert format_diff([]) == "no differences"
    assert diff(actual, actual) == []


def _recipe(seed, start, stop):
    """The documented recipe, block by block (slow, independent of the implementation)."""
    shared = random.Random(1_000_003).randbytes(1 << 20)
    shift = (seed * 2654435761) % (1 << 20)
    pool = shared[shift:] + shared[:shift]
    out = bytearray()
    for k in range(start // 4096, (stop + 4095) // 4096):
        filler = pool[(k % 256) * 4096 + 16 : (k % 256) * 4096 + 4096]
        out += (seed % (1 << 64)).to_bytes(8, "little") + k.to_bytes(8, "little") + filler
    first = start - start % 4096
    return bytes(out[start - first : stop - first])


def test_generator_is_the_documented_recipe():
    p = Payload.generated(5, 70000)
    expected = _recipe(5, 0, 70000)
    assert payload_bytes(p) == expected
    assert payload_bytes(p, 65530, 65540) == expected[65530:65540]
    assert sha256_of(p, 10, 69999) == hashlib.sha256(expected[10:69999]).hexdigest()
    assert len(p) == 70000
    far = Payload.generated(-9, 300 << 20)  # span 257: index bytes beyond the first change
    start = (257 << 20) - 5000
    assert payload_bytes(far, start, start + 20000) == _recipe(-9, start, start + 20000)


def test_payload_validation():
    with pytest.raises(ValueError):
        Payload()
    with pytest.raises(ValueError):
        payload_bytes(Payload.literal(b"abc"), 2, 5)
    assert payload_bytes(Payload.literal(b"abc"), 1, 1) == b""
    lit = Payload.literal(b"xy")
    assert as_payload(lit) is lit and as_payload(b"xy") == lit


def test_slice_queue_merges_and_splits():
    p = Payload.literal(b"0123456789")
    q = SliceQueue([Slice(p, 0, 4), Slice(p, 4, 6), Slice(p, 6, 6)])
    assert q.slices() == [Slice(p, 0, 6)]
    q.push(Slice(Payload.literal(b"zz"), 0, 2))
    assert len(q) == 8
    assert [s.data() for s in q.take(7)] == [b"012345", b"z"]
    assert q == SliceQueue([Slice(Payload.literal(b"zz"), 1, 2)])
    assert q.__eq__(object()) is NotImplemented


def test_load_matches_ports_by_id_not_name():
    source = VirtioSerialModel()
    source.hotplug_controller("c")
    source.hotplug("a", controller="c")
    dest = VirtioSerialModel()
    dest.hotplug_controller("c")
    dest.hotplug("z", controller="c")
    assert [e.port for e in load(dest, save(source), source=source)] == ["z"]


def test_a_copied_model_shares_slices_and_copies_their_queues():
    """Slices (and their payloads) are immutable, so a migration's deep copy shares them
    rather than rebuilding each one; the queues holding them are copied."""
    piece = Slice(Payload.literal(b"abcdef"), 0, 6)
    queue = SliceQueue([piece])
    copied_queue, copied_piece = copy.deepcopy((queue, piece))
    assert copied_piece is piece
    assert copied_queue == queue and copied_queue is not queue
    copied_queue.take(2)
    assert (queue.nbytes, copied_queue.nbytes) == (6, 4)


def test_generated_payload_in_a_popped_element_survives_migration():
    source = open_port("a", stalled=True, host_socket_sndbuf=1, guest_write_chunk=3)
    payload = Payload.generated(9, 10)
    source.guest_write("a", payload)
    dest = clone_configuration(source)
    migrate(source, dest)
    assert dest.snapshot() == source.snapshot()
    dest.set_host_backpressure("a", False)
    got = b"".join(s.data() for s in dest.host_read("a").value.slices)
    assert got == payload_bytes(payload)


def test_blocked_ops_on_other_ports_are_untouched(opened):
    opened.hotplug("q", controller="vser0")
    opened.host_open("q")
    opened.guest_open("q")
    first = opened.guest_read("p").pending
    second = opened.guest_read("q").pending
    done = opened.guest_close("q")
    assert [c.ticket for c in done.completed] == [second.ticket]
    assert opened.blocked() == [first]
