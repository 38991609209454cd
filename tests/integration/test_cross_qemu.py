"""Issue 16: live migration from the QEMU under test to another QEMU, streams in flight.

Runs only with --hil-qemu-destination (marked cross_qemu: skipped with the reason
otherwise), e.g. `--hil-qemu=qemu-system-x86_64 --hil-qemu-destination=debian:trixie/
qemu-system-x86` for Debian 12's 7.2 -> Debian 13's 10.0. 64 MiB each way are moving when
the migration starts; every byte must arrive once, in order (length and SHA-256).
"""

from __future__ import annotations

import pytest

from harness.backend.system import QemuSystem
from harness.model import Payload
from harness.model.payload import sha256_of
from harness.plugin.options import HilSettings

pytestmark = [pytest.mark.qemu, pytest.mark.cross_qemu]
MIB = 1024 * 1024
NAME = "org.xq.stream"


def test_64_mib_each_way_cross_a_live_migration_to_the_destination_qemu(
    hil_system: QemuSystem, hil_settings: HilSettings
) -> None:
    destination = hil_settings.qemu_destination
    assert destination is not None  # cross_qemu items are skipped without it
    system = hil_system
    system.hotplug(NAME, None, False, "vser0", "socket")  # hot-plugged before the move
    system.host_open(NAME)
    system.guest_open(NAME)
    assert system.agent is not None and system.guest is not None
    source_type = system.guest.machine.machine_type
    to_guest = Payload.generated(1606, 64 * MIB)
    to_host = Payload.generated(1707, 64 * MIB)
    receiving = system.start_guest_op("recv_stream", NAME, length=to_guest.length, timeout=600)
    sending = system.start_guest_op("write", NAME, payload=to_host)
    system.host_write(NAME, to_guest)
    first = system.host_read(NAME, 4 * MIB, timeout=300)  # guest -> host is flowing

    stats = system.migrate(None, "live", qemu=destination)
    print(f"live migration {source_type} -> {destination} under 2 x 64 MiB: {stats}")
    assert system.guest.machine.spec.qemu == destination
    assert system.guest.machine.machine_type == source_type

    rest = system.host_read(NAME, to_host.length - first.length, timeout=600)
    sent = system.agent.wait_ticket(sending, timeout=600)
    received = system.agent.wait_ticket(receiving, timeout=600)
    assert received["bytes"] == to_guest.length, f"host->guest: {received}"
    assert received["sha256"] == sha256_of(to_guest), "host->guest bytes differ (order?)"
    assert first.length + rest.length == to_host.length, "guest->host bytes lost"
    assert sent["bytes"] == to_host.length  # the guest wrote it all (the host checks what)
    assert first.sha256 == sha256_of(to_host, 0, first.length)
    assert rest.sha256 == sha256_of(to_host, first.length)
