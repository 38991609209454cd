"""The guest agent on a real guest: ports, I/O, background ops, SIGIO, streams, kmsg, reconnects.

Ports are hotplugged with raw QMP here (the port-management layer lives elsewhere).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.guest.agent_client import AgentClient, AgentError
from harness.guest.guest import Guest
from harness.model.payload import Payload, iter_chunks, sha256_of
from tests.integration.polling import wait_until

pytestmark = pytest.mark.qemu


class HostPort:
    """One hotplugged virtserialport with a unix-socket chardev the test connects to."""

    def __init__(self, guest: Guest, socket_dir: Path, name: str, nr: int) -> None:
        self.guest = guest
        self.name = name
        self.nr = nr
        self.ident = f"p{nr}"
        self.path = socket_dir / f"{self.ident}-{int(time.time() * 1000) % 100000}.sock"
        self.sock: socket.socket | None = None

    def plug(self) -> HostPort:
        qmp = self.guest.machine.qmp
        assert qmp is not None
        qmp.execute(
            "chardev-add",
            {
                "id": f"ch{self.nr}",
                "backend": {
                    "type": "socket",
                    "data": {
                        "addr": {"type": "unix", "data": {"path": str(self.path)}},
                        "server": True,
                        "wait": False,
                    },
                },
            },
        )
        qmp.execute(
            "device_add",
            {
                "driver": "virtserialport",
                "bus": "vser0.0",
                "chardev": f"ch{self.nr}",
                "name": self.name,
                "id": self.ident,
                "nr": self.nr,
            },
        )
        return self

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.path))
        sock.settimeout(30)
        self.sock = sock
        return sock

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def recv_exactly(self, length: int, timeout: float = 60) -> tuple[int, str]:
        """Read `length` bytes; returns (count, sha256)."""
        assert self.sock is not None
        digest = hashlib.sha256()
        got = 0
        deadline = time.monotonic() + timeout
        while got < length:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = self.sock.recv(min(65536, length - got))
            if not data:
                break
            digest.update(data)
            got += len(data)
        return got, digest.hexdigest()

    def unplug(self, timeout: float = 30) -> None:
        qmp = self.guest.machine.qmp
        assert qmp is not None
        after = len(qmp.events)
        qmp.execute("device_del", {"id": self.ident})
        qmp.wait_event(
            "DEVICE_DELETED",
            timeout,
            after=after,
            where=lambda e: e.data.get("device") == self.ident,
        )


def errno_of(call: Callable[[], object]) -> str:
    """The errno name the agent fails ``call`` with (it must fail)."""
    with pytest.raises(AgentError) as failure:
        call()
    return failure.value.errno


@pytest.fixture
def port_factory(
    hil_guest: Guest, hil_socket_root: Path, agent: AgentClient
) -> Iterator[Callable[..., HostPort]]:
    ports: list[HostPort] = []

    def create(name: str = "org.test.p1", nr: int = 1, connect: bool = False) -> HostPort:
        port = HostPort(hil_guest, hil_socket_root, name, nr).plug()
        ports.append(port)
        agent.wait_port(name, timeout=30)
        if connect:
            port.connect()
            wait_until(lambda: agent.port_info(name)["host_connected"] == 1, 30, "host_connected")
        return port

    yield create
    for port in ports:
        port.disconnect()


def test_list_ports_after_hotplug_shows_name_nr_and_debugfs_fields(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    assert agent.list_ports() == []
    port_factory("org.test.p1", nr=3)
    [entry] = agent.list_ports()
    assert entry["name"] == "org.test.p1"
    assert entry["nr"] == 3
    assert entry["dev"].startswith("vport") and entry["dev"].endswith("p3")
    for key in (
        "guest_connected",
        "host_connected",
        "outvq_full",
        "bytes_sent",
        "bytes_received",
        "bytes_discarded",
        "console_vtermno",
    ):
        assert isinstance(entry[key], int), key
    assert entry["is_console"] == "no"
    assert (entry["guest_connected"], entry["host_connected"]) == (0, 0)


def test_open_close_ebusy_and_espipe(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port_factory()
    opened = agent.open("org.test.p1")
    assert opened["handle"] == "org.test.p1"
    assert agent.port_info("org.test.p1")["guest_connected"] == 1
    assert agent.port_info("org.test.p1")["agent_handles"] == ["org.test.p1"]

    assert errno_of(lambda: agent.open("org.test.p1", extra=True)) == "EBUSY"
    assert errno_of(lambda: agent.open("org.test.p1")) == "EALREADY"

    assert errno_of(lambda: agent.seek("org.test.p1")) == "ESPIPE"

    agent.close("org.test.p1")
    assert agent.port_info("org.test.p1")["guest_connected"] == 0
    assert errno_of(lambda: agent.poll("org.test.p1")) == "EBADF"
    assert errno_of(lambda: agent.open("org.test.nope")) == "ENOENT"


def test_host_connection_is_visible_in_debugfs_and_poll(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port = port_factory()
    agent.open("org.test.p1")
    assert "HUP" in agent.poll("org.test.p1")  # host side not connected yet

    port.connect()
    wait_until(lambda: agent.port_info("org.test.p1")["host_connected"] == 1, 30, "host_connected")
    events = agent.poll("org.test.p1")
    assert "OUT" in events and "HUP" not in events and "IN" not in events

    port.disconnect()
    wait_until(
        lambda: agent.port_info("org.test.p1")["host_connected"] == 0,
        30,
        "host_connected back to 0",
    )
    assert "HUP" in agent.poll("org.test.p1")
    agent.close("org.test.p1")


def test_blocking_read_in_background_completes_when_host_writes(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port = port_factory(connect=True)
    agent.open("org.test.p1")
    ticket = agent.start_background("read", name="org.test.p1", max_bytes=100)
    # A later request the agent answers while the read blocks (no fixed sleep): nothing is
    # readable, so after this round trip the read must still be pending.
    assert "IN" not in agent.poll("org.test.p1")
    assert agent.ticket(ticket)["done"] is False
    assert port.sock is not None
    port.sock.sendall(b"hello guest")
    result = agent.wait_ticket(ticket, timeout=30)
    assert result["data"] and result["eof"] is False
    assert base64.b64decode(result["data"]) == b"hello guest"

    # Guest -> host through a plain write.
    assert agent.write("org.test.p1", b"hello host") == 10
    assert port.recv_exactly(10) == (10, hashlib.sha256(b"hello host").hexdigest())


def test_read_timeout_on_a_blocking_fd(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port_factory(connect=True)
    agent.open("org.test.p1")
    assert errno_of(lambda: agent.read("org.test.p1", timeout=0.5)) == "ETIMEDOUT"


def test_nonblocking_read_and_write_give_eagain(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port = port_factory(connect=True)
    agent.open("org.test.p1", nonblocking=True)
    assert errno_of(lambda: agent.read("org.test.p1")) == "EAGAIN"

    port.disconnect()
    wait_until(lambda: agent.port_info("org.test.p1")["host_connected"] == 0, 30, "host closed")
    assert errno_of(lambda: agent.write("org.test.p1", b"x")) == "EAGAIN"
    # Reading with the host closed and nothing queued returns EOF rather than EAGAIN.
    data, eof = agent.read("org.test.p1")
    assert (data, eof) == (b"", True)


def test_blocking_write_waits_for_the_host_to_open(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port = port_factory()
    agent.open("org.test.p1")
    data = base64.b64encode(b"xyz").decode()
    ticket = agent.start_background("write", name="org.test.p1", data=data)
    # A later request the agent answers while the write blocks (no fixed sleep): the host end
    # is closed (HUP, not writable), so after this round trip the write must still be pending.
    assert "OUT" not in agent.poll("org.test.p1")
    assert agent.ticket(ticket)["done"] is False
    port.connect()
    assert agent.wait_ticket(ticket, timeout=30)["written"] == 3
    assert port.recv_exactly(3) == (3, hashlib.sha256(b"xyz").hexdigest())


def test_streams_of_one_mib_both_ways_match_the_host_sha256(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port = port_factory(connect=True)
    agent.open("org.test.p1")
    length = 1 << 20

    # guest -> host
    ticket = agent.start_background(
        "send_stream", name="org.test.p1", seed=7, length=length, sha256=True
    )
    received = port.recv_exactly(length, timeout=120)
    sent = agent.wait_ticket(ticket, timeout=60)
    expected = sha256_of(Payload.generated(7, length))
    assert sent["bytes"] == length and sent["sha256"] == expected
    assert received == (length, expected)

    # host -> guest
    ticket = agent.start_background("recv_stream", name="org.test.p1", length=length, timeout=60)
    assert port.sock is not None
    for chunk in iter_chunks(Payload.generated(11, length)):
        port.sock.sendall(chunk)
    got = agent.wait_ticket(ticket, timeout=120)
    assert got["bytes"] == length
    assert got["sha256"] == sha256_of(Payload.generated(11, length))


def test_write_reports_short_writes_of_32k(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port = port_factory(connect=True)
    agent.open("org.test.p1")
    result = agent.call("write", name="org.test.p1", seed=3, length=100_000)
    assert result["written"] == 100_000
    assert max(result["sizes"]) <= 32768 and result["calls"] >= 4
    assert port.recv_exactly(100_000) == (100_000, sha256_of(Payload.generated(3, 100_000)))
    # One write() call of 100000 bytes is cut to 32 KiB by virtio_console.
    single = agent.call("write", name="org.test.p1", seed=3, length=100_000, single=True)
    assert (single["written"], single["calls"]) == (32768, 1)
    assert port.recv_exactly(32768)[0] == 32768


def test_sigio_masks_are_collected(
    agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    """Observed on 6.1: one SIGIO per host open (mask OUT), per arriving data (IN|OUT) and per
    host close (IN|HUP); none when the guest's own writes are consumed."""
    port = port_factory()
    agent.open("org.test.p1", sigio=True)
    assert agent.sigio("org.test.p1") == []
    port.connect()
    wait_until(lambda: agent.port_info("org.test.p1")["host_connected"] == 1, 30, "host_connected")
    masks = wait_until(lambda: agent.sigio("org.test.p1"), 30, "a SIGIO on host open")
    assert [m["events"] for m in masks] == [["OUT"]]

    assert port.sock is not None
    port.sock.sendall(b"ping")
    masks = wait_until(lambda: agent.sigio("org.test.p1"), 30, "a SIGIO on data")
    assert [m["events"] for m in masks] == [["IN", "OUT"]]

    port.disconnect()
    masks = wait_until(lambda: agent.sigio("org.test.p1"), 30, "a SIGIO on host close")
    assert [m["events"] for m in masks] == [["IN", "HUP"]]
    agent.close("org.test.p1")


def test_kmsg_returns_new_kernel_lines(hil_guest: Guest, agent: AgentClient) -> None:
    agent.kmsg()  # drain what happened since the agent started
    hil_guest.run("echo hil-test-marker > /dev/kmsg")
    lines = wait_until(agent.kmsg, 10, "kmsg lines")
    assert any("hil-test-marker" in line["text"] for line in lines)
    assert not any("hil-test-marker" in line["text"] for line in agent.kmsg())


def test_agent_survives_a_dropped_ssh_connection(
    hil_guest: Guest, agent: AgentClient, port_factory: Callable[..., HostPort]
) -> None:
    port_factory(connect=True)
    agent.open("org.test.p1")
    pid = agent.ping()["pid"]
    assert hil_guest.ssh is not None
    transport = hil_guest.ssh.client.get_transport()
    assert transport is not None
    transport.close()

    after = agent.ping()
    assert after["pid"] == pid
    assert after["open"] == ["org.test.p1"]
    assert agent.reconnects == 1
    assert agent.port_info("org.test.p1")["guest_connected"] == 1
    assert "OUT" in agent.poll("org.test.p1")


def test_serial_fallback(
    hil_guest: Guest, port_factory: Callable[..., HostPort], agent: AgentClient
) -> None:
    port_factory()
    pong = agent.call("ping", channel="serial", timeout=60)
    assert pong["pong"] is True
    assert pong["pid"] == agent.ping()["pid"]  # the same daemon on both channels
    ports = agent.call("list_ports", channel="serial", timeout=60)
    assert [p["name"] for p in ports] == ["org.test.p1"]
    missing = errno_of(
        lambda: agent.call("open", channel="serial", timeout=60, name="org.test.nope")
    )
    assert missing == "ENOENT"


def test_unplug_while_open(agent: AgentClient, port_factory: Callable[..., HostPort]) -> None:
    """Observation: what an open fd sees after hot-unplug (the agent must report, not crash)."""
    port = port_factory(connect=True)
    agent.open("org.test.p1")
    port.unplug()
    agent.wait_port("org.test.p1", timeout=30, gone=True)
    events = agent.poll("org.test.p1")
    assert "HUP" in events
    assert errno_of(lambda: agent.read("org.test.p1", timeout=1)) == "ENODEV"
    agent.close("org.test.p1")
    assert agent.ping()["open"] == []
