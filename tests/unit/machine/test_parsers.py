"""Pure parsers of QEMU/host output the machine and backend layers rely on."""

from __future__ import annotations

from pathlib import Path

from harness.backend.endpoint import parse_unread
from harness.machine.ports import QtreeController, parse_qtree

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


def test_qtree_controllers_keep_their_own_max_ports_and_pci_slot() -> None:
    controllers, _ = parse_qtree((FIXTURES / "qtree/qemu-7.2-two-controllers.txt").read_text())
    assert controllers == {
        "vser0": QtreeController("vser0", 31, "04.0"),
        "vser1": QtreeController("vser1", 8, "05.0"),
    }


def test_qtree_ports_carry_bus_driver_and_state_line() -> None:
    _, ports = parse_qtree((FIXTURES / "qtree/qemu-7.2-two-controllers.txt").read_text())
    assert sorted(ports) == ["org.a.console", "org.a.data", "org.b.one"]
    console, data, other = ports["org.a.console"], ports["org.a.data"], ports["org.b.one"]
    assert (console.driver, console.nr, console.controller, console.chardev) == (
        "virtconsole",
        0,
        "vser0",
        "",
    )
    assert (data.nr, data.guest_connected, data.host_connected, data.throttled) == (
        3,
        False,
        True,
        True,
    )
    assert (other.controller, other.device_id, other.guest_connected) == ("vser1", "port7", True)


SS_OUTPUT = """Netid State Recv-Q Send-Q Local Address:Port  Peer Address:Port Process
u_str ESTAB 12345  0      /tmp/hil-ports-x/1.sock 43508            * 43507
u_str ESTAB 0      13056                 * 43507            * 43508
u_str ESTAB 7      0      /tmp/other.sock 50001            * 50000
"""


def test_unread_bytes_are_the_peer_receive_queue_of_our_sockets() -> None:
    # Our socket is inode 43507; QEMU's end (43508) names it as peer with 12345 unread bytes.
    assert parse_unread(SS_OUTPUT, {43507, 99999}) == {43507: 12345}
