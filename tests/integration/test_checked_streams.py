"""Checked streams on a real guest: exact streams pass both ways, several at once; a lost,
duplicated, reordered or corrupted 4 KiB block is caught and located, host -> guest by the
guest agent and guest -> host by the host endpoint's checker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.backend.endpoint import Checked, HostEndpoint
from harness.guest.agent_client import AgentClient
from harness.guest.guest import Guest
from harness.model.payload import (
    BLOCK_SIZE,
    Payload,
    StreamChecker,
    payload_bytes,
    sha256_of,
)
from tests.integration.polling import wait_until
from tests.integration.test_agent import HostPort

pytestmark = pytest.mark.qemu

MIB = 1 << 20
CORRUPTIONS = ("loss", "duplication", "reordering", "corruption")


@pytest.fixture
def endpoints(
    hil_guest: Guest, hil_socket_root: Path, agent: AgentClient
) -> Iterator[Callable[[int], list[HostEndpoint]]]:
    """``make(count)``: that many hotplugged ports, host-connected, opened by the agent."""
    made: list[HostEndpoint] = []

    def make(count: int) -> list[HostEndpoint]:
        for nr in range(1, count + 1):
            port = HostPort(hil_guest, hil_socket_root, f"org.test.c{nr}", nr).plug()
            agent.wait_port(port.name, timeout=30)
            endpoint = HostEndpoint(port.name, port.path)
            endpoint.connect()
            made.append(endpoint)
            wait_until(
                lambda n=port.name: agent.port_info(n)["host_connected"] == 1, 30, "host open"
            )
            agent.open(port.name)
        return list(made)

    yield make
    for endpoint in made:
        endpoint.close()


def doctored(kind: str, payload: Payload, block: int) -> tuple[bytes, int, int]:
    """``payload``'s bytes with 4 KiB block ``block`` lost, duplicated (the copy follows it),
    swapped with the next one, or with one byte flipped; with the offset of the first bad
    block and the block index its header names."""
    data = bytearray(payload_bytes(payload))
    at = block * BLOCK_SIZE
    original = bytes(data[at : at + BLOCK_SIZE])
    if kind == "loss":
        del data[at : at + BLOCK_SIZE]
        return bytes(data), at, block + 1
    if kind == "duplication":
        data[at + BLOCK_SIZE : at + BLOCK_SIZE] = original
        return bytes(data), at + BLOCK_SIZE, block
    if kind == "reordering":
        data[at : at + 2 * BLOCK_SIZE] = data[at + BLOCK_SIZE : at + 2 * BLOCK_SIZE] + original
        return bytes(data), at, block + 1
    data[at + 2000] ^= 0x01
    return bytes(data), at, block


def test_checked_streams_pass_both_ways_with_exact_counts(
    agent: AgentClient, endpoints: Callable[[int], list[HostEndpoint]]
) -> None:
    [endpoint] = endpoints(1)
    to_guest = Payload.generated(41, 8 * MIB + 123)
    endpoint.write(to_guest)
    got = agent.check_stream(endpoint.name, 41, to_guest.length, timeout=60)
    assert (got["match"], got["bytes"], got["mismatch"]) == (True, to_guest.length, None)

    to_host = Payload.generated(42, 8 * MIB + 321)
    ticket = agent.start_background(
        "send_stream", name=endpoint.name, seed=42, length=to_host.length
    )
    checked = endpoint.read_checked(to_host, timeout=60)
    assert agent.wait_ticket(ticket, timeout=120)["bytes"] == to_host.length
    assert checked.ok, checked.describe()
    assert checked.length == to_host.length and checked.sha256 == sha256_of(to_host)
    info = agent.port_info(endpoint.name)
    assert (info["bytes_received"], info["bytes_sent"]) == (to_guest.length, to_host.length)


def test_four_ports_both_ways_at_once_in_one_agent_op(
    agent: AgentClient, endpoints: Callable[[int], list[HostEndpoint]]
) -> None:
    ports = endpoints(4)
    length = 4 * MIB + 7
    specs = []
    for k, endpoint in enumerate(ports):
        endpoint.write(Payload.generated(100 + k, length))
        specs.append({"name": endpoint.name, "dir": "check", "seed": 100 + k, "length": length})
        specs.append({"name": endpoint.name, "dir": "send", "seed": 200 + k, "length": length})
    tickets = agent.start_background("streams", streams=specs, timeout=60)
    checks = [e.read_checked(Payload.generated(200 + k, length), 120) for k, e in enumerate(ports)]
    results = agent.wait_ticket(tickets, timeout=300)
    assert [r["bytes"] for r in results] == [length] * 8
    assert all(r["match"] for r in results if "match" in r), results
    assert all(c.ok for c in checks), [c.describe() for c in checks]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_guest_check_locates_a_doctored_block_from_the_host(
    kind: str, agent: AgentClient, endpoints: Callable[[int], list[HostEndpoint]]
) -> None:
    [endpoint] = endpoints(1)
    payload = Payload.generated(51, 2 * MIB + 5000)
    data, bad_offset, found_index = doctored(kind, payload, 300)
    endpoint.write(data)
    got = agent.check_stream(endpoint.name, 51, len(data), timeout=60)
    assert got["match"] is False
    assert got["bytes"] == len(data), "reading goes on after a mismatch: exact accounting"
    assert got["mismatch"]["offset"] == bad_offset
    assert got["mismatch"]["found_index"] == found_index
    assert agent.port_info(endpoint.name)["bytes_received"] == len(data)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_host_check_locates_a_doctored_block_of_guest_data(
    kind: str, agent: AgentClient, endpoints: Callable[[int], list[HostEndpoint]]
) -> None:
    """What the guest really sent, doctored on the host before the checker sees it."""
    [endpoint] = endpoints(1)
    payload = Payload.generated(52, MIB + 9000)
    agent.send_stream(endpoint.name, 52, payload.length)
    received = endpoint.read(payload.length, 60, keep_limit=payload.length)
    assert received.data is not None and received.data == payload_bytes(payload)
    data, bad_offset, found_index = doctored(kind, payload, 100)
    checker = StreamChecker(payload)
    for at in range(0, len(data), 65536):
        checker.feed(data[at : at + 65536])
    assert checker.mismatch is not None and checker.mismatch.offset == bad_offset
    assert checker.mismatch.found is not None and checker.mismatch.found.index == found_index
    assert checker.received == len(data)


def test_host_read_checked_reports_the_first_bad_block(
    agent: AgentClient, endpoints: Callable[[int], list[HostEndpoint]]
) -> None:
    """A guest stream of another seed from offset 0: the first block is reported, with what
    it was, and the counts stay exact."""
    [endpoint] = endpoints(1)
    length = MIB
    agent.send_stream(endpoint.name, 61, length)
    checked: Checked = endpoint.read_checked(Payload.generated(60, length), 60)
    assert not checked.ok and checked.length == length and checked.sha256 is None
    assert checked.mismatch is not None and checked.mismatch.offset == 0
    assert "block 0 (offset 0) of seed tag 3d00000000000000" in checked.describe()
