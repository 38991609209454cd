"""Guest agent protocol and payload generator, without QEMU.

The agent file is stdlib-only and not importable as part of the package (it is copied into the
guest), so it is loaded from its path.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import importlib.util
import os
import platform
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harness.guest import agent_client
from harness.guest.agent_client import AgentError, decode_reply, encode_request, reply_result
from harness.model.payload import (
    SPAN_SIZE,
    Payload,
    StreamChecker,
    generated_span,
    payload_bytes,
    sha256_of,
)

AGENT_FILE = Path(agent_client.__file__).parent / "agent" / "hil_agent.py"


@pytest.fixture(scope="module")
def hil_agent() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hil_agent_under_test", AGENT_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- encoding ---------------------------------------------------------------------------------


def test_client_request_decodes_in_the_agent(hil_agent: ModuleType) -> None:
    line = encode_request(5, "open", {"name": "org.test.p1", "nonblocking": True})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert hil_agent.decode_message(line) == {
        "id": 5,
        "op": "open",
        "args": {"name": "org.test.p1", "nonblocking": True},
    }


def test_agent_replies_decode_in_the_client(hil_agent: ModuleType) -> None:
    ok = hil_agent.encode_message(hil_agent.ok_reply(3, {"events": ["OUT"], "mask": 4}))
    assert ok.endswith(b"\n") and ok.count(b"\n") == 1
    assert reply_result(decode_reply(ok)) == {"events": ["OUT"], "mask": 4}

    failed = hil_agent.encode_message(hil_agent.error_reply(4, "EBUSY", "busy", bytes=10))
    with pytest.raises(AgentError) as error:
        reply_result(decode_reply(failed), "open")
    assert (error.value.errno, error.value.message, error.value.op) == ("EBUSY", "busy", "open")
    assert error.value.details == {"bytes": 10}
    assert "open: EBUSY: busy" in str(error.value)


def test_non_ascii_payloads_survive_the_line_framing(hil_agent: ModuleType) -> None:
    message = hil_agent.ok_reply(1, {"text": "line\nbreak \u00e9 \x00"})
    line = hil_agent.encode_message(message)
    assert line.count(b"\n") == 1
    assert decode_reply(line) == message


def test_decode_rejects_non_objects(hil_agent: ModuleType) -> None:
    with pytest.raises(ValueError):
        hil_agent.decode_message(b"[1, 2]")
    with pytest.raises(ValueError):
        decode_reply(b'{"id": 1}')


def test_errno_names_and_poll_names(hil_agent: ModuleType) -> None:
    assert hil_agent.errno_name(errno.EBUSY) == "EBUSY"
    assert hil_agent.errno_name(errno.ESPIPE) == "ESPIPE"
    assert hil_agent.errno_name(None) == "EIO"
    assert hil_agent.poll_names(0x4 | 0x10) == ["OUT", "HUP"]
    assert hil_agent.poll_names(0x1 | 0x8 | 0x20) == ["IN", "ERR", "NVAL"]


def test_serial_reply_line_is_found_among_console_noise() -> None:
    reply = {"id": 9, "ok": True, "result": {"pong": True}}
    line = (
        agent_client.REPLY_PREFIX
        + base64.b64encode((agent_client.json.dumps(reply)).encode()).decode()
    )
    noisy = f"[   12.3] virtio_console: something\r\n{line}\r\n"
    assert agent_client.parse_serial_reply(noisy) == reply
    with pytest.raises(agent_client.AgentConnectionError):
        agent_client.parse_serial_reply("python3: not found\n")


# -- sysfs / debugfs parsing ------------------------------------------------------------------


def test_parse_debugfs_fields(hil_agent: ModuleType) -> None:
    text = (
        "name: org.test.p1\nguest_connected: 1\nhost_connected: 0\noutvq_full: 0\n"
        "bytes_sent: 10\nbytes_received: 20\nbytes_discarded: 0\nis_console: no\n"
        "console_vtermno: 0\n"
    )
    assert hil_agent.parse_debugfs(text) == {
        "name": "org.test.p1",
        "guest_connected": 1,
        "host_connected": 0,
        "outvq_full": 0,
        "bytes_sent": 10,
        "bytes_received": 20,
        "bytes_discarded": 0,
        "is_console": "no",
        "console_vtermno": 0,
    }
    assert hil_agent.parse_debugfs("name: \n") == {"name": ""}


def test_parse_dev(hil_agent: ModuleType) -> None:
    assert hil_agent.parse_dev("vport1p3") == (1, 3)
    assert hil_agent.parse_dev("vport12p30") == (12, 30)
    assert hil_agent.parse_dev("vportXp1") is None
    assert hil_agent.parse_dev("hvc0") is None


# -- payload generator ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7, 123456789, -3, (1 << 63) - 1])
@pytest.mark.parametrize("index", [0, 1, 17, 256, 70_000, (1 << 56) - 1])
def test_generated_span_matches_the_model(hil_agent: ModuleType, seed: int, index: int) -> None:
    assert hil_agent.generated_span(seed, index) == generated_span(seed, index)


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, 0),
        (0, 1),
        (0, 65536),
        (65530, 20),
        (1000, 200_000),
        (131072, 65537),
        (SPAN_SIZE - 10, SPAN_SIZE + 20),
        (300 * SPAN_SIZE + 5, 3 * SPAN_SIZE),
    ],
)
def test_generated_ranges_match_the_model(hil_agent: ModuleType, offset: int, length: int) -> None:
    payload = Payload.generated(42, offset + length)
    assert hil_agent.generated_bytes(42, length, offset) == payload_bytes(payload, offset)


def test_iter_generated_respects_the_chunk_limit(hil_agent: ModuleType) -> None:
    chunks = list(hil_agent.iter_generated(5, 100, 100 + 100_000, 32768))
    assert max(len(c) for c in chunks) <= 32768
    assert b"".join(chunks) == payload_bytes(Payload.generated(5, 100_100), 100)


# -- ops on host fds (pipes and socketpairs stand in for ports) -------------------------------


def _inject(hil_agent: ModuleType, agent: object, handle: str, fd: int, nonblocking: bool) -> None:
    agent.ports[handle] = hil_agent.Port(handle, handle, "test", fd, nonblocking, False)  # type: ignore[attr-defined]


def test_handle_reports_unknown_ops_and_bad_args(hil_agent: ModuleType) -> None:
    agent = hil_agent.Agent()
    assert agent.handle({"id": 1, "op": "nope"})["error"]["errno"] == "EINVAL"
    assert agent.handle({"id": 2, "op": "read", "args": {}})["error"]["errno"] == "EINVAL"
    assert agent.handle({"id": 3, "op": "read", "args": {"name": "x"}})["error"]["errno"] == "EBADF"
    bad_type = agent.handle({"id": 4, "op": "poll", "args": {"name": 5}})
    assert bad_type["error"]["errno"] == "EINVAL"
    assert agent.handle({"id": 5, "op": "ping"})["result"]["pong"] is True


def test_nonblocking_write_stops_at_eagain_and_reports_progress(hil_agent: ModuleType) -> None:
    agent = hil_agent.Agent()
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        _inject(hil_agent, agent, "pipe", w, True)
        reply = agent.handle(
            {"id": 1, "op": "write", "args": {"name": "pipe", "seed": 1, "length": 1 << 20}}
        )
        assert reply["ok"], reply
        assert reply["result"]["stopped"] == "EAGAIN"
        assert 0 < reply["result"]["written"] < 1 << 20
        again = agent.handle({"id": 2, "op": "write", "args": {"name": "pipe", "data": "eA=="}})
        assert again["error"]["errno"] == "EAGAIN"
        assert (
            agent.handle({"id": 3, "op": "seek", "args": {"name": "pipe"}})["error"]["errno"]
            == "ESPIPE"
        )
    finally:
        agent.close_all()
        os.close(r)


def test_read_timeout_and_eof(hil_agent: ModuleType) -> None:
    agent = hil_agent.Agent()
    r, w = os.pipe()
    _inject(hil_agent, agent, "pipe", r, False)
    try:
        timed = agent.handle({"id": 1, "op": "read", "args": {"name": "pipe", "timeout": 0.1}})
        assert timed["error"]["errno"] == "ETIMEDOUT"
        os.write(w, b"abc")
        got = agent.handle({"id": 2, "op": "read", "args": {"name": "pipe", "timeout": 1}})
        assert base64.b64decode(got["result"]["data"]) == b"abc" and not got["result"]["eof"]
        os.close(w)
        eof = agent.handle({"id": 3, "op": "read", "args": {"name": "pipe", "timeout": 1}})
        assert eof["result"]["eof"] is True
    finally:
        agent.close_all()


def test_a_close_ends_a_blocking_read_that_waits_for_data(hil_agent: ModuleType) -> None:
    """The model: guest_close ends a guest read blocked on the port with EBADF, and the port
    is released (guest_connected false).  A thread blocked in read() keeps the file open
    through any close; the agent's read waits in poll(), beside the close signal, instead
    (found by the 20-minute exploration on Debian 13: open, blocking read, close)."""
    agent = hil_agent.Agent()
    r, w = os.pipe()
    _inject(hil_agent, agent, "pipe", r, False)
    try:
        args = {"op": "read", "args": {"name": "pipe", "max_bytes": 100}}
        ticket = agent.handle({"id": 1, "op": "start", "args": args})["result"]["ticket"]
        deadline = time.monotonic() + 10
        while agent.ports["pipe"].users == 0 or not _a_thread_waits_in_poll():
            assert time.monotonic() < deadline, "the read did not wait in poll() within 10 s"
            time.sleep(0.01)
        assert agent.handle({"id": 2, "op": "close", "args": {"name": "pipe"}})["ok"]
        state = agent.handle({"id": 3, "op": "ticket", "args": {"ticket": ticket, "wait": 10}})
        reply = state["result"]["reply"]
        assert reply is not None, f"the read did not end at the close: {state}"
        assert reply["error"]["errno"] == "EBADF", reply
    finally:
        agent.close_all()
        os.close(w)


@pytest.mark.parametrize("op", ["flow", "check_stream", "recv_stream"])
def test_a_port_closed_under_a_stream_never_hands_its_fd_number_to_the_next_open(
    hil_agent: ModuleType, op: str
) -> None:
    """guest_close while a stream reads the port: the next open must not get the same fd
    number while the stream still runs, or the stream reads the other port's bytes (the 10.0
    soak's duplicated, wrong-prefix h2g stream)."""
    agent = hil_agent.Agent()
    first_r, first_w = os.pipe()
    _inject(hil_agent, agent, "first", first_r, False)
    sent = hil_agent.generated_bytes(5, 8192)
    os.write(first_w, sent)
    # A long wait for data: the close must end the stream, not the stream's own timeout
    # (a poll() waiting on the port's old file is not woken by the dead socket: Port.poll).
    args = {"name": "first", "seed": 5, "length": 1 << 20, "timeout": 60}
    if op == "flow":
        args.update(flow="f", direction="in")
    ticket = agent.handle({"id": 1, "op": "start", "args": {"op": op, "args": args}})
    ticket_id = ticket["result"]["ticket"]
    deadline = time.monotonic() + 10
    while agent.ports["first"].users == 0 or select.select([first_r], [], [], 0)[0]:
        assert time.monotonic() < deadline, "the stream did not read the first bytes in 10 s"
        time.sleep(0.01)
    while op != "flow" and not _a_thread_waits_in_poll():  # flows poll in 0.2 s slices
        assert time.monotonic() < deadline, "the stream did not wait in poll() within 10 s"
        time.sleep(0.01)
    assert agent.handle({"id": 2, "op": "close", "args": {"name": "first"}})["ok"]
    second_r, second_w = os.pipe()
    try:
        _inject(hil_agent, agent, "second", second_r, False)
        os.write(second_w, b"x" * 4096)
        state = agent.handle({"id": 3, "op": "ticket", "args": {"ticket": ticket_id, "wait": 10}})
        reply = state["result"]["reply"]
        assert reply is not None, f"the stream did not end at the close: {state}"
        result = reply.get("result") or reply.get("error")  # recv_stream fails with EBADF
        assert result is not None and result["bytes"] == len(sent), state
        assert result.get("error", result.get("errno")) == "EBADF", result
        assert os.read(second_r, 8192) == b"x" * 4096  # the other port's bytes stayed there
        if first_r not in (second_r, second_w):  # (the stream may have ended before the open)
            with pytest.raises(OSError):  # the last user closed the retired number
                os.fstat(first_r)
    finally:
        agent.close_all()
        for fd in (first_w, second_w):
            os.close(fd)


#: poll() and ppoll() by machine (/proc/<pid>/task/<tid>/syscall's first field).
_POLL_SYSCALLS = {"x86_64": {"7", "271"}, "aarch64": {"73"}}


def _a_thread_waits_in_poll() -> bool:
    """A thread of this process is blocked in poll(): the close then meets a stream that
    waits on the port's old file, the case a close must wake (Port.poll)."""
    calls = _POLL_SYSCALLS.get(platform.machine(), set())
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "syscall").read_text().split()[0] in calls:
                return True
    return False


def test_a_flow_on_a_blocking_fd_never_blocks_in_the_kernel(hil_agent: ModuleType) -> None:
    """poll() says POLLOUT, yet a blocking write can still block (virtio_console: the host
    disconnected in between; a pipe: less room than the chunk): the flow must stay stoppable,
    so it writes non-blocking and the port is blocking again afterwards."""
    agent = hil_agent.Agent()
    r, w = os.pipe()
    _inject(hil_agent, agent, "pipe", w, False)
    args = {"name": "pipe", "flow": "f", "direction": "out", "seed": 3, "chunk": 32768}
    ticket = agent.handle({"id": 1, "op": "start", "args": {"op": "flow", "args": args}})
    try:
        deadline = time.monotonic() + 10
        while select.select([], [w], [], 0)[1]:  # until the flow has filled the pipe
            assert time.monotonic() < deadline, "the flow did not fill the pipe in 10 s"
            time.sleep(0.01)
        before = agent.handle({"id": 4, "op": "flow_state", "args": {"flow": "f"}})
        os.read(r, 8192)  # room for less than a chunk: POLLOUT, but a blocking write blocks
        while (
            agent.handle({"id": 5, "op": "flow_state", "args": {"flow": "f"}})["result"]["bytes"]
            == before["result"]["bytes"]
        ):
            assert time.monotonic() < deadline + 10, "the flow wrote nothing into the room"
            time.sleep(0.01)
        agent.handle({"id": 2, "op": "flow_stop", "args": {"flow": "f"}})
        state = agent.handle(
            {"id": 3, "op": "ticket", "args": {"ticket": ticket["result"]["ticket"], "wait": 3}}
        )
        assert state["result"]["done"], "the flow blocked in write() and could not stop"
        result = state["result"]["reply"]["result"]
        assert result["stopped"] and result["error"] is None, result
        assert os.get_blocking(w)
    finally:
        os.close(r)  # a flow still blocked in write() ends with EPIPE
        agent.close_all()


def test_streams_match_the_model_sha256(hil_agent: ModuleType) -> None:
    agent = hil_agent.Agent()
    a, b = socket.socketpair()
    _inject(hil_agent, agent, "sock", a.fileno(), False)
    length = 300_000
    received = hashlib.sha256()

    def drain() -> None:
        got = 0
        while got < length:
            data = b.recv(65536)
            received.update(data)
            got += len(data)

    reader = threading.Thread(target=drain)
    reader.start()
    sent = agent.handle(
        {
            "id": 1,
            "op": "send_stream",
            "args": {"name": "sock", "seed": 9, "length": length, "sha256": True},
        }
    )
    reader.join(10)
    expected = sha256_of(Payload.generated(9, length))
    assert sent["result"]["sha256"] == expected == received.hexdigest()

    ticket = agent.handle(
        {
            "id": 2,
            "op": "start",
            "args": {"op": "recv_stream", "args": {"name": "sock", "length": length, "timeout": 5}},
        }
    )
    for chunk in hil_agent.iter_generated(9, 0, length):
        b.sendall(chunk)
    state = agent.handle(
        {"id": 3, "op": "ticket", "args": {"ticket": ticket["result"]["ticket"], "wait": 10}}
    )
    assert state["result"]["done"], state
    assert state["result"]["reply"]["result"]["sha256"] == expected
    a.detach()  # the agent owns the fd now
    agent.close_all()
    b.close()


def _doctored(kind: str, payload: Payload, block: int) -> tuple[bytes, int, int]:
    """``payload``'s bytes with 4 KiB block ``block`` lost, duplicated, swapped with the next
    one, or with one byte flipped (the stream keeps its length, except for a loss); also where
    the first bad block is and which block index its header names."""
    data = bytearray(payload_bytes(payload))
    at = block * 4096
    original = bytes(data[at : at + 4096])
    if kind == "loss":
        del data[at : at + 4096]
        return bytes(data), at, block + 1
    if kind == "duplication":
        data[at + 4096 : at + 4096] = original
        del data[-4096:]
        return bytes(data), at + 4096, block
    if kind == "reordering":
        data[at : at + 8192] = data[at + 4096 : at + 8192] + original
        return bytes(data), at, block + 1
    data[at + 1000] ^= 0x40
    return bytes(data), at, block


CORRUPTIONS = ("loss", "duplication", "reordering", "corruption")


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("bad_block", [0, 5, 300])
def test_agent_check_stream_locates_each_corruption(
    hil_agent: ModuleType, kind: str, bad_block: int
) -> None:
    """The agent's check_stream op on a socket fed a doctored stream, then EOF."""
    agent = hil_agent.Agent()
    a, b = socket.socketpair()
    _inject(hil_agent, agent, "sock", a.fileno(), False)
    payload = Payload.generated(77, 2 * SPAN_SIZE + 12345)
    doctored, bad_offset, found_index = _doctored(kind, payload, bad_block)
    writer = threading.Thread(target=lambda: (b.sendall(doctored), b.shutdown(socket.SHUT_WR)))
    writer.start()
    reply = agent.handle(
        {
            "id": 1,
            "op": "check_stream",
            "args": {"name": "sock", "seed": 77, "length": payload.length, "timeout": 10},
        }
    )
    writer.join(10)
    result = reply["result"]
    assert result["match"] is False
    assert result["bytes"] == len(doctored)
    assert result["mismatch"]["offset"] == bad_offset
    assert result["mismatch"]["found_index"] == found_index
    assert result["mismatch"]["same_stream"] is True
    a.detach()
    agent.close_all()
    b.close()


def test_agent_check_stream_accepts_the_exact_stream_in_pieces(hil_agent: ModuleType) -> None:
    agent = hil_agent.Agent()
    a, b = socket.socketpair()
    _inject(hil_agent, agent, "sock", a.fileno(), False)
    payload = Payload.generated(5, 3 * SPAN_SIZE + 7)
    offset = 4000  # not block aligned: a stream may resume anywhere

    def feed() -> None:
        for chunk in hil_agent.iter_generated(5, offset, payload.length, 12345):
            b.sendall(chunk)

    writer = threading.Thread(target=feed)
    writer.start()
    reply = agent.handle(
        {
            "id": 1,
            "op": "check_stream",
            "args": {
                "name": "sock",
                "seed": 5,
                "offset": offset,
                "length": payload.length - offset,
                "timeout": 10,
            },
        }
    )
    writer.join(10)
    assert reply["result"]["match"] is True, reply
    assert reply["result"]["bytes"] == payload.length - offset
    assert os.get_blocking(a.fileno()), "check_stream restores the fd's flags"
    a.detach()
    agent.close_all()
    b.close()


def test_agent_streams_run_both_ways_on_several_fds_in_one_op(hil_agent: ModuleType) -> None:
    """Two "ports", each checked one way and sent the other, in one streams op."""
    agent = hil_agent.Agent()
    pairs = [socket.socketpair() for _ in range(2)]
    for k, (a, _) in enumerate(pairs):
        _inject(hil_agent, agent, f"s{k}", a.fileno(), False)
    length = SPAN_SIZE + 777
    received = [bytearray(), bytearray()]

    def pump(k: int, b: socket.socket) -> None:
        payload = hil_agent.generated_bytes(100 + k, length)
        b.setblocking(True)
        sender = threading.Thread(target=b.sendall, args=(payload,))
        sender.start()
        while len(received[k]) < length:
            received[k] += b.recv(65536)
        sender.join(10)

    pumps = [threading.Thread(target=pump, args=(k, b)) for k, (_, b) in enumerate(pairs)]
    for thread in pumps:
        thread.start()
    specs = [
        {"name": f"s{k}", "dir": d, "seed": (100 if d == "check" else 200) + k, "length": length}
        for k in range(2)
        for d in ("check", "send")
    ]
    reply = agent.handle({"id": 1, "op": "streams", "args": {"streams": specs, "timeout": 10}})
    for thread in pumps:
        thread.join(10)
    results = reply["result"]
    assert [r["bytes"] for r in results] == [length] * 4
    assert [r["match"] for r in results if "match" in r] == [True, True]
    for k in range(2):
        assert bytes(received[k]) == payload_bytes(Payload.generated(200 + k, length))
    for a, b in pairs:
        a.detach()
        b.close()
    agent.close_all()


def test_a_stream_does_not_turn_a_concurrent_blocking_send_into_eagain(
    hil_agent: ModuleType,
) -> None:
    """check_stream makes the shared fd non-blocking while it runs; a send_stream on the same
    port (opened blocking) meanwhile waits in poll() instead of failing with EAGAIN, and the
    port is blocking again once both are done."""
    agent = hil_agent.Agent()
    a, b = socket.socketpair()
    _inject(hil_agent, agent, "sock", a.fileno(), False)
    b.settimeout(20)  # a broken agent fails the test instead of hanging it
    to_agent, from_agent = 3 * SPAN_SIZE, 4 * SPAN_SIZE
    drained = bytearray()

    def peer_send() -> None:
        b.sendall(hil_agent.generated_bytes(61, to_agent))

    def peer_drain() -> None:
        time.sleep(0.5)  # let the agent's sends fill the socket first
        with contextlib.suppress(TimeoutError):
            while len(drained) < from_agent:
                drained.extend(b.recv(65536))

    checking = agent.handle(
        {
            "id": 1,
            "op": "start",
            "args": {
                "op": "check_stream",
                "args": {"name": "sock", "seed": 61, "length": to_agent, "timeout": 10},
            },
        }
    )
    helpers = [threading.Thread(target=peer_send), threading.Thread(target=peer_drain)]
    for thread in helpers:
        thread.start()
    sent = agent.handle(
        {"id": 2, "op": "send_stream", "args": {"name": "sock", "seed": 62, "length": from_agent}}
    )
    state = agent.handle(
        {"id": 3, "op": "ticket", "args": {"ticket": checking["result"]["ticket"], "wait": 20}}
    )
    for thread in helpers:
        thread.join(20)
    assert sent.get("result", sent)["bytes"] == from_agent, sent
    assert state["result"]["reply"]["result"]["match"] is True, state
    assert bytes(drained) == payload_bytes(Payload.generated(62, from_agent))
    assert os.get_blocking(a.fileno())
    a.detach()
    agent.close_all()
    b.close()


def _stepped_check(
    hil_agent: ModuleType, data: bytes, pieces: list[int], seed: int, length: int
) -> Any:
    """A check StreamIO on a pipe fed ``data`` in ``pieces`` (sizes), one step per piece, so
    that every read ends exactly where a piece does (like a partial port buffer)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    port = hil_agent.Port("pipe", "pipe", "test", r, True, False)
    stream = hil_agent.StreamIO(port, False, seed, 0, length)
    at = 0
    try:
        for size in pieces:
            os.write(w, data[at : at + size])
            at += size
            assert stream.step()
    finally:
        os.close(r)
        os.close(w)
    return stream


def test_check_locates_corruption_in_a_short_last_block(hil_agent: ModuleType) -> None:
    payload = Payload.generated(31, 8 * 4096)
    data = bytearray(payload_bytes(payload))
    data[2 * 4096 + 3000] ^= 1
    stream = _stepped_check(hil_agent, bytes(data), [2 * 4096 + 3500, 4096], 31, len(data))
    assert stream.mismatch["offset"] == 2 * 4096
    assert stream.mismatch["found_index"] == 2


def test_check_locates_a_bad_header_cut_short(hil_agent: ModuleType) -> None:
    payload = Payload.generated(31, 8 * 4096)
    data = bytearray(payload_bytes(payload))
    data[4096 + 3] ^= 1
    stream = _stepped_check(hil_agent, bytes(data), [4096 + 10, 4096], 31, len(data))
    assert stream.mismatch == {"offset": 4096}


def test_check_locates_a_bad_block_when_reads_never_line_up(hil_agent: ModuleType) -> None:
    """Port buffers offset from the blocks (a short one moved every boundary): each read is
    compared where it lands in the stream, and a bad block is still located."""
    payload = Payload.generated(32, 64 * 4096)
    data = bytearray(payload_bytes(payload))
    data[50 * 4096 + 77] ^= 1
    pieces = [100] + [4096] * 63 + [4096 - 100]
    stream = _stepped_check(hil_agent, bytes(data), pieces, 32, len(data))
    assert stream.done == len(data)
    assert stream.mismatch["offset"] == 50 * 4096
    assert stream.mismatch["found_index"] == 50


def test_check_of_unaligned_reads_accepts_the_exact_stream(hil_agent: ModuleType) -> None:
    payload = Payload.generated(33, 64 * 4096)
    pieces = [100] + [4096] * 63 + [4096 - 100]
    stream = _stepped_check(hil_agent, payload_bytes(payload), pieces, 33, payload.length)
    assert stream.mismatch is None and stream.done == payload.length


@pytest.mark.parametrize("bad_block", [None, 3, 64 + 5, 256 + 64 + 1, 512])
def test_check_over_spans_with_reads_off_the_blocks(
    hil_agent: ModuleType, bad_block: int | None
) -> None:
    """Reads that never line up with the blocks, over three spans (the expected span moves
    on under the reads): a bad block is located in whichever span it lies, and the exact
    stream passes."""
    payload = Payload.generated(34, 2 * SPAN_SIZE + 5000)
    data = bytearray(payload_bytes(payload))
    if bad_block is not None:
        data[bad_block * 4096 + 2000] ^= 0x10
    pieces = [100] + [4096] * ((len(data) - 100) // 4096)
    pieces.append(len(data) - sum(pieces))
    stream = _stepped_check(hil_agent, bytes(data), pieces, 34, len(data))
    result = stream.result()
    assert result["bytes"] == len(data)
    if bad_block is None:
        assert result["match"] is True and result["mismatch"] is None
    else:
        assert result["match"] is False
        # no read holds the bad block whole, so its header is not quoted (only its offset)
        assert result["mismatch"] == {"offset": bad_block * 4096}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_host_checker_locates_each_corruption(kind: str) -> None:
    payload = Payload.generated(78, SPAN_SIZE + 50_000)
    checker = StreamChecker(payload)
    doctored, bad_offset, found_index = _doctored(kind, payload, 260)
    for at in range(0, len(doctored), 65536):
        checker.feed(doctored[at : at + 65536])
    assert checker.mismatch is not None and checker.mismatch.offset == bad_offset
    assert checker.mismatch.found is not None
    assert checker.mismatch.found.index == found_index
    assert checker.received == len(doctored) and not checker.complete


# -- the real entry points on this host's interpreters ----------------------------------------


def _interpreters() -> list[str]:
    found = [sys.executable]
    for name in ("python3.11", "python3.13"):
        path = shutil.which(name)
        candidates = [path] if path else []
        candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/3.*/bin/{name}"))
        for candidate in candidates:
            ok = subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0
            if ok:
                found.append(candidate)
                break
    return list(dict.fromkeys(found))


@pytest.mark.parametrize("python", _interpreters())
def test_ensure_once_and_bridge_run_on_this_interpreter(python: str, tmp_path: Path) -> None:
    run_dir = Path(f"/tmp/hilu-{os.getpid()}-{abs(hash(python)) % 10000}")
    run_dir.mkdir()
    env = {**os.environ, "HIL_AGENT_RUN_DIR": str(run_dir)}
    try:
        ensure = subprocess.run(
            [python, str(AGENT_FILE), "ensure"], env=env, timeout=30, capture_output=True, text=True
        )
        assert ensure.returncode == 0, ensure.stderr
        request = base64.b64encode(encode_request(1, "ping", {})).decode()
        once = subprocess.run(
            [python, str(AGENT_FILE), "once", request],
            env=env,
            timeout=30,
            capture_output=True,
            text=True,
        )
        reply = agent_client.parse_serial_reply(once.stdout)
        assert reply["ok"] and reply["result"]["pong"]
        daemon_pid = reply["result"]["pid"]
        # ensure is idempotent: same daemon.
        again = subprocess.run([python, str(AGENT_FILE), "ensure"], env=env, timeout=30)
        assert again.returncode == 0
        bridge = subprocess.run(
            [python, str(AGENT_FILE), "bridge"],
            env=env,
            timeout=30,
            capture_output=True,
            input=encode_request(2, "ping", {}) + encode_request(3, "kmsg", {}),
        )
        lines = bridge.stdout.splitlines()
        assert [decode_reply(line)["id"] for line in lines] == [2, 3]
        assert decode_reply(lines[0])["result"]["pid"] == daemon_pid
    finally:
        lock = run_dir / "hil-agent.lock"
        if lock.exists() and lock.read_text().strip():
            pid = int(lock.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.parametrize("seed", range(3))
def test_cut_gives_the_pieces_slicing_would(hil_agent: ModuleType, seed: int) -> None:
    """The agent's C-built iovecs (map/slice) against a plain slicing loop."""
    rng = random.Random(seed)
    view = memoryview(bytes(range(256)) * 40)
    for _ in range(300):
        start = rng.randrange(0, len(view))
        end = rng.randrange(start, len(view) + 1)
        step = rng.randrange(1, 5000)
        want = [bytes(view[i : min(i + step, end)]) for i in range(start, end, step)]
        assert [bytes(piece) for piece in hil_agent.cut(view, start, end, step)] == want
