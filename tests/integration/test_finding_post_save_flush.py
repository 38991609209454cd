"""Finding (README "QEMU flushes a throttled port after its state was saved"): a live
migration's source QEMU keeps writing a throttled port's guest data to its chardev after the
device state went to the destination, which then sends the same bytes again.

The harness avoids it by not reading the source from the switchover on (HostEndpoint.hold), so
`scenarios/faults/migrate_live_mid_stream.yaml` passes. This test shows QEMU's side through the
machine layer, where nobody holds anything: the host end of a throttled port reads the source
again after `completed`, and exactly the bytes the source wrote from then on arrive a second
time from the destination.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.backend.endpoint import HostEndpoint
from harness.guest.agent_client import AgentClient
from harness.machine.migration import migrate
from harness.machine.ports import PortManager
from harness.machine.qemu import ControllerSpec, PortSpec
from harness.model.payload import Payload
from tests.integration.polling import wait_until

pytestmark = pytest.mark.qemu
NAME = "org.finding.flush"
SEED = 1313
SIZE = 2 * 1024 * 1024  # far more than a unix socket holds (~200 KiB): the port throttles
TIMEOUT = 60.0


def queued_for(endpoint: HostEndpoint) -> int:
    """Bytes waiting in our own socket's receive queue (`ss -xn`: Recv-Q of our inode's row)."""
    rows = subprocess.run(["ss", "-xn"], capture_output=True, text=True, check=True).stdout
    for fields in (line.split() for line in rows.splitlines()[1:]):
        if len(fields) >= 8 and fields[0] == "u_str" and fields[5] == str(endpoint.inode):
            return int(fields[2])
    raise AssertionError(f"no `ss -xn` row for our socket (inode {endpoint.inode})")


def test_source_writes_held_guest_data_after_its_state_was_saved(
    hil_guest_factory: Any, hil_socket_root: Path
) -> None:
    source_path, target_path = hil_socket_root / "src.sock", hil_socket_root / "dst.sock"
    controllers = [ControllerSpec("vser0")]
    source = hil_guest_factory.create(
        "source",
        controllers=controllers,
        ports=[PortSpec(NAME, "vser0", 1, chardev_path=source_path)],
    )
    host = HostEndpoint(NAME, source_path)
    host.connect()
    host.stall()  # a busy host: QEMU throttles the port with guest data held
    agent = AgentClient(source).start()
    agent.open(NAME)
    agent.start_background("send_stream", name=NAME, seed=SEED, length=SIZE)
    wait_until(lambda: PortManager(source.machine).qtree()[1][NAME].throttled, TIMEOUT, "throttle")
    target = hil_guest_factory.create(
        "destination",
        boot=False,
        incoming="defer",
        controllers=controllers,
        ports=[PortSpec(NAME, "vser0", 1, chardev_path=target_path)],
        memory_mib=source.machine.spec.memory_mib,
        machine_type=source.machine.machine_type,
    )
    target.machine.start()
    successor = HostEndpoint(NAME, target_path)
    successor.connect()  # before the load: the destination keeps the host end connected
    payload = Payload.generated(SEED, SIZE)
    try:
        migrate(source.machine, target.machine, "live", target.machine.workdir, lambda: None)
        saved = queued_for(host)  # all the source wrote before its save: we have read nothing
        assert 0 < saved < SIZE
        host.stall(False)  # a host that reads on: the source's socket drains
        wait_until(lambda: host.bytes_received > saved, TIMEOUT, "source bytes after completed")
        agent.disconnect()
        source.shutdown()
        from_source = host.read_checked(payload, TIMEOUT)  # up to the source's EOF
        from_target = successor.read_checked(payload, TIMEOUT, start=saved)
    finally:
        successor.close()
        host.close()
    late = from_source.length - saved
    report = (
        f"source: {saved} bytes queued at completed, {late} written after it "
        f"({from_source.describe()}); destination, from offset {saved}: {from_target.describe()}"
    )
    print(report)
    # up to its EOF, or all of it (the source may flush the whole stream: then no EOF is read)
    assert from_source.mismatch is None and (from_source.eof or from_source.length == SIZE), report
    assert late > 0, report  # QEMU wrote guest data after its state was saved ...
    assert from_target.ok, report  # ... and the destination sends it again from `saved` on
    assert from_source.length + from_target.length == SIZE + late, report
