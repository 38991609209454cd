"""``stream_end``'s accounting of a host->guest stream that a guest close cut mid-chunk.

The racing order of scenarios/faults/guest_close_mid_stream.yaml, made deterministic: QEMU (the
test's peer socket) has read past the writer's first 1 MiB span, into one whose send() is still
under way, when the guest closes and QEMU stops reading.  The guest's side is a stand-in agent
that reports what the peer read (every byte QEMU read reached the reader and the driver).  The
real ``StreamRunner`` and ``HostEndpoint`` measure, and the model judges: every layer must have
passed at least what the one after it did, and nothing may be delivered beyond what was sent.
"""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest

from harness.backend import streams
from harness.backend.endpoint import HostEndpoint
from harness.backend.streams import UNBOUNDED, StreamRunner
from harness.guest.agent_client import AgentClient
from harness.model.device import H2G
from harness.model.payload import Payload, sha256_of
from harness.model.streams import StreamModel, chain, judge
from tests.unit.backend.peer import read_exactly

PORT = "org.test.0"
SEED = 7
DRIVER_BASE = 4096  # the driver's counter before the stream: only its change counts


class ClosedGuest:
    """The guest after guest_close: its reader got ``delivered`` bytes, then its fd closed."""

    def __init__(self) -> None:
        self.delivered = 0

    def call(self, op: str, timeout: float = 30, **kwargs: Any) -> dict[str, Any]:
        if op == "start":
            return {"ticket": 1}
        if op in ("flow_state", "flow_stop"):
            return {"bytes": self.delivered, "done": self.delivered > 0}
        raise AssertionError(f"unexpected agent op {op}")

    def ticket(self, ticket: int, wait: float = 0) -> dict[str, Any]:
        prefix = sha256_of(Payload.generated(SEED, UNBOUNDED), 0, self.delivered)
        result = {"bytes": self.delivered, "sha256": prefix, "eof": False, "error": "EBADF"}
        return {"done": True, "reply": {"ok": True, "result": result}}

    def list_ports(self) -> list[dict[str, Any]]:
        return [{"name": PORT, "bytes_received": DRIVER_BASE + self.delivered}]


def test_cut_mid_chunk_is_accounted_for(
    pair: tuple[HostEndpoint, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, peer = pair
    monkeypatch.setattr(streams, "QUIET", 0.2)  # the reader is done; no need to wait 2 s
    guest = ClosedGuest()
    runner = StreamRunner(lambda: cast(AgentClient, guest), lambda port: endpoint)
    runner.start(PORT, H2G, SEED, None, 32768)
    guest.delivered = read_exactly(peer, (1 << 20) + (1 << 19))  # into the second span
    report = runner.end(PORT, stop=True, timeout=10)

    model = StreamModel(PORT, H2G, SEED, None, 5)
    model.fault("guest_close", 7, PORT)
    layers = chain(H2G, report.sent, report.delivered, socket=report.socket, driver=report.driver)
    verdict = judge(model, report.sent, report.delivered, report.prefix_ok, layers, "EBADF")
    assert verdict.problems == (), verdict.table()
    assert report.delivered == report.driver == guest.delivered
    assert report.socket == guest.delivered  # exact: what the peer read, nothing in flight
    assert report.sent is not None and report.sent >= report.socket
