"""Real background streams: a seeded byte stream on one port, flowing while other steps run.

``host_stream`` (host -> guest): the host endpoint sends the generated stream, the guest agent
receives it with a ``flow`` op (stoppable, never stuck in the kernel) and reports its count and
SHA-256.  ``guest_stream`` (guest -> host): the agent sends, a consumer thread here takes what
arrives and compares every byte with the generator at its offset.

``end()`` stops the writer where needed, lets the reader drain, and reports what each layer
passed (writer, host socket, guest driver counters, reader), so the scenario layer can judge
``sent = delivered + discarded`` against the model (``harness.model.streams``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.backend.endpoint import HostEndpoint, unread_by_peer
from harness.guest.agent_client import AgentClient, AgentError
from harness.machine.errors import MachineError
from harness.model.device import G2H, H2G
from harness.model.payload import Payload, iter_chunks, sha256_of

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("hil.backend")
UNBOUNDED = 1 << 40  # an `until` stream's length: never reached
QUIET = 2.0  # a reader with nothing new for this long has drained what will come
_ids = itertools.count(1)


@dataclass(frozen=True)
class Residue:
    """Bytes a host stream sent that still wait in the host socket at its end: QEMU reads
    nothing for a port whose guest end is closed, so they stay there (the stream's report
    counts them as discarded, as the model predicts for a guest close) and the port's next
    reader gets them first, before its own stream (a check of what a guest close keeps)."""

    seed: int
    offset: int  # the stream offset of its first byte
    length: int


def residue_sha256(segments: list[Residue]) -> str:
    digest = hashlib.sha256()
    for segment in segments:
        payload = Payload.generated(segment.seed, UNBOUNDED)
        for chunk in iter_chunks(payload, segment.offset, segment.offset + segment.length):
            digest.update(chunk)
    return digest.hexdigest()


def split_residue(segments: list[Residue], count: int) -> tuple[list[Residue], list[Residue]]:
    """The first ``count`` bytes of ``segments`` and the rest."""
    taken: list[Residue] = []
    left: list[Residue] = []
    for segment in segments:
        take = max(0, min(segment.length, count))
        count -= take
        if take:
            taken.append(Residue(segment.seed, segment.offset, take))
        if take < segment.length:
            left.append(Residue(segment.seed, segment.offset + take, segment.length - take))
    return taken, left


@dataclass
class StreamReport:
    """What the real system measured for one stream (None: not measurable, e.g. lost)."""

    sent: int | None
    delivered: int | None
    prefix_ok: bool
    writer_error: str | None = None
    socket: int | None = None  # bytes that passed the host socket
    driver: int | None = None  # guest debugfs counter change
    notes: list[str] = field(default_factory=list)


class _Consumer(threading.Thread):
    """Takes what the host end receives and checks it against the stream, byte for byte."""

    def __init__(self, endpoint: HostEndpoint, seed: int) -> None:
        super().__init__(daemon=True, name=f"stream-{endpoint.name}")
        self.endpoint, self.seed = endpoint, seed
        self.count = 0
        self.mismatch: int | None = None
        self.last_data = time.monotonic()
        self._stop_flag = threading.Event()

    def run(self) -> None:
        while not self._stop_flag.is_set():
            data = self.endpoint.take(1 << 16, 0.2)
            if not data:
                continue
            if self.mismatch is None:
                want = b"".join(
                    iter_chunks(
                        Payload.generated(self.seed, UNBOUNDED), self.count, self.count + len(data)
                    )
                )
                if want != data:
                    bad = next(i for i, (a, b) in enumerate(zip(want, data, strict=True)) if a != b)
                    self.mismatch = self.count + bad
            self.count += len(data)
            self.last_data = time.monotonic()

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(timeout=5)


@dataclass
class RealStream:
    port: str
    direction: str
    seed: int
    size: int | None
    flow: str
    ticket: int
    endpoint: HostEndpoint
    sent_before: int
    driver_before: int | None
    consumer: _Consumer | None = None
    progress: int | None = None  # the guest end's count just before a reset, if one came
    residue: list[Residue] = field(default_factory=list)  # earlier bytes read first (Residue)


class StreamRunner:
    """The streams of one real system; it asks the system for its agent and host ends."""

    def __init__(
        self,
        agent: Callable[[], AgentClient],
        endpoint: Callable[[str], HostEndpoint],
    ) -> None:
        self._agent, self._endpoint = agent, endpoint
        self.streams: dict[str, RealStream] = {}
        #: per port: the host connection (HostEndpoint.connections) and what waits in it
        self.residues: dict[str, tuple[HostEndpoint, int, list[Residue]]] = {}

    def _counter(self, port: str, direction: str) -> int | None:
        """The guest driver's count of the stream's direction (debugfs), None if absent."""
        try:
            entries = self._agent().list_ports()
        except (AgentError, MachineError):
            return None
        for entry in entries:
            if entry.get("name") == port:
                # bytes_received counts every buffer the driver took, discarded ones included
                key = "bytes_sent" if direction == G2H else "bytes_received"
                return int(entry.get(key) or 0)
        return None

    def start(self, port: str, direction: str, seed: int, size: int | None, chunk: int) -> str:
        """Start the reader first, then the writer; returns the stream's handle."""
        endpoint = self._endpoint(port)
        agent = self._agent()
        flow = f"{port}#{next(_ids)}"
        length = -1 if size is None else size
        driver = self._counter(port, direction)
        if direction == H2G:
            residue = self._residue(port, endpoint)
            args: dict[str, Any] = {"name": port, "flow": flow, "direction": "in", "chunk": chunk}
            if residue:
                args["skip"] = sum(segment.length for segment in residue)
            ticket = _start_flow(agent, {**args, "length": length})
            with endpoint.hold_sending() as sent:  # an exact baseline: no send() half done
                # bytes still queued before ours (an earlier stream's begun chunk, part of
                # its residue) go first: the stream's own count starts after them
                before = sent + endpoint.pending_out
                endpoint.write(Payload.generated(seed, UNBOUNDED if size is None else size))
            stream = RealStream(port, direction, seed, size, flow, ticket, endpoint, before, driver)
            stream.residue = residue
        else:
            consumer = _Consumer(endpoint, seed)
            consumer.start()
            args = {"name": port, "flow": flow, "direction": "out", "seed": seed, "chunk": chunk}
            ticket = _start_flow(agent, {**args, "length": length})
            stream = RealStream(
                port,
                direction,
                seed,
                size,
                flow,
                ticket,
                endpoint,
                endpoint.bytes_received,
                driver,
                consumer,
            )
        self.streams[port] = stream
        return port

    def _residue(self, port: str, endpoint: HostEndpoint) -> list[Residue]:
        """What an earlier stream left waiting on this host connection (none once the host end
        reconnected: a closed socket's queue is gone with it)."""
        kept = self.residues.pop(port, None)
        if kept is None or kept[0] is not endpoint or kept[1] != endpoint.connections:
            return []
        return kept[2]

    def note_progress(self) -> None:
        """Before the guest resets: what each guest end had counted (kept for the report)."""
        for stream in self.streams.values():
            try:
                stream.progress = int(self._agent().call("flow_state", flow=stream.flow)["bytes"])
            except (AgentError, MachineError):
                stream.progress = None

    def stop_writer(self, port: str) -> None:
        """``until:``: the writer stops now, the reader goes on until ``stream_end``."""
        stream = self.streams[port]
        if stream.direction == H2G:
            stream.endpoint.drop_pending()
        else:
            self._agent().call("flow_stop", flow=stream.flow)

    def end(self, port: str, stop: bool, timeout: float) -> StreamReport:
        """Stop the writer if asked (an `until` stream, or one a fault cut), drain, measure."""
        stream = self.streams.pop(port)
        if stream.direction == H2G:
            return self._end_h2g(stream, stop, timeout)
        return self._end_g2h(stream, stop, timeout)

    def _flow_result(self, stream: RealStream, stop: bool, timeout: float) -> dict[str, Any] | None:
        """The agent's result for the flow; None when the agent lost it (the guest rebooted)."""
        agent = self._agent()
        try:
            if stop:
                agent.call("flow_stop", flow=stream.flow)
            state = agent.ticket(stream.ticket, wait=timeout)
        except AgentError as error:  # logged: the report only says the count is missing
            log.warning("flow %s: no result from the agent: %s", stream.flow, error)
            return None
        if not state["done"]:
            agent.call("flow_stop", flow=stream.flow)
            state = agent.ticket(stream.ticket, wait=5)
        reply = state.get("reply") or {}
        if not reply.get("ok"):
            log.warning("flow %s: the agent's flow op failed: %s", stream.flow, reply)
            return None
        result: dict[str, Any] = reply["result"]
        return result

    def _end_h2g(self, stream: RealStream, stop: bool, timeout: float) -> StreamReport:
        endpoint = stream.endpoint
        notes = []
        if stop and endpoint.connected:
            dropped = endpoint.drop_pending()
            if stream.size is not None:  # an open-ended stream has no "rest" to speak of
                notes.append(f"host writer stopped ({dropped} queued bytes never sent)")
        sent = endpoint.bytes_sent - stream.sent_before
        self._wait_reader(stream, sent, timeout)
        # Downstream first: the reader's final count, then the driver's, then the socket and
        # the writer together while the sender is held (no send() half done), so no layer can
        # count a byte that the one before it had not passed yet when it was measured.
        result = self._flow_result(stream, True, timeout)
        driver = self._counter(stream.port, H2G)
        unread, waiting = None, 0
        with endpoint.hold_sending() as total:
            sent = max(0, total - stream.sent_before)  # (< 0: an earlier chunk still queued)
            if endpoint.connected and endpoint.inode is not None:
                unread = unread_by_peer({endpoint.inode}).get(endpoint.inode, 0)
                endpoint.drop_pending()
                waiting = endpoint.pending_out  # a begun chunk: it still goes, after the rest
        if result is None:
            notes.append(
                f"the guest end's count was lost with the agent ({stream.progress} bytes "
                "received just before the reset)"
            )
            return StreamReport(sent, None, False, None, None, None, notes)
        delivered = int(result["bytes"])
        prefix = sha256_of(Payload.generated(stream.seed, UNBOUNDED), 0, delivered)
        skipped = int(result.get("skipped", 0))
        residue_ok = self._check_residue(stream, result, notes)
        if unread is not None:
            self._keep_residue(stream, sent, unread, waiting, notes)
        driver_delta = _delta(stream.driver_before, driver)
        return StreamReport(
            sent,
            delivered,
            prefix == result["sha256"] and residue_ok,
            result.get("error"),
            None if unread is None else sent - unread,
            # earlier bytes read first may have reached the driver before the stream began:
            # its counter is not this stream's alone then
            None if skipped else driver_delta,
            notes,
        )

    @staticmethod
    def _check_residue(stream: RealStream, result: dict[str, Any], notes: list[str]) -> bool:
        """The earlier bytes the flow read first (``skip``) are those that were left waiting."""
        if not stream.residue:
            return True
        skipped = int(result.get("skipped", 0))
        taken, left = split_residue(stream.residue, skipped)
        stream.residue = left
        ok = residue_sha256(taken) == result.get("skip_sha256")
        notes.append(
            f"read first the {skipped} bytes an earlier stream left in the host socket: "
            + ("as that stream sent them" if ok else "NOT the bytes that stream sent")
        )
        return ok

    def _keep_residue(
        self, stream: RealStream, sent: int, unread: int, waiting: int, notes: list[str]
    ) -> None:
        """Bytes still in the host socket (and a begun chunk) wait for the port's next reader."""
        endpoint = stream.endpoint
        earlier = sum(segment.length for segment in stream.residue)  # still ahead in the queue
        own = max(0, unread - earlier)
        segments = list(stream.residue)
        if own + waiting:
            segments.append(Residue(stream.seed, sent - own, own + waiting))
            notes.append(
                f"{own + waiting} bytes stay queued for the port (host socket: QEMU reads none "
                "while the guest end is closed); the port's next host stream reads them first"
            )
        if segments:
            self.residues[stream.port] = (endpoint, endpoint.connections, segments)

    def _wait_reader(self, stream: RealStream, sent: int, timeout: float) -> None:
        """Until the guest reader has what was sent, or nothing new arrived for QUIET s."""
        agent = self._agent()
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            try:
                state = agent.call("flow_state", flow=stream.flow)
            except AgentError:
                return
            got = int(state["bytes"])
            caught_up = state["done"] or got >= stream.endpoint.bytes_sent - stream.sent_before
            if caught_up and (stream.endpoint.pending_out == 0 or not stream.endpoint.connected):
                return
            if got != last:
                last, since = got, time.monotonic()
            elif time.monotonic() - since > QUIET:
                return
            time.sleep(0.1)

    def _end_g2h(self, stream: RealStream, stop: bool, timeout: float) -> StreamReport:
        consumer = stream.consumer
        assert consumer is not None
        result = self._flow_result(stream, stop, timeout)
        sent = None if result is None else int(result["bytes"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sent is not None and consumer.count >= sent:
                break
            if time.monotonic() - consumer.last_data > QUIET:
                break
            time.sleep(0.05)
        consumer.stop()
        driver = self._counter(stream.port, G2H)
        notes = []
        if result is None:
            notes.append(
                f"the guest writer's count was lost with the agent ({stream.progress} bytes "
                "written just before the reset)"
            )
        if consumer.mismatch is not None:
            notes.append(f"first wrong byte at offset {consumer.mismatch}")
            notes += [f"host end: {line}" for line in stream.endpoint.migration_log]
        socket_bytes = stream.endpoint.bytes_received - stream.sent_before
        return StreamReport(
            sent,
            consumer.count,
            consumer.mismatch is None,
            None if result is None else result.get("error"),
            socket_bytes if socket_bytes >= 0 else None,
            _delta(stream.driver_before, driver),
            notes,
        )

    def stop_all(self) -> None:
        """Teardown: end consumers so no thread outlives the system."""
        for stream in self.streams.values():
            if stream.consumer is not None:
                stream.consumer.stop()
        self.streams.clear()


def _start_flow(agent: AgentClient, args: dict[str, Any]) -> int:
    return int(agent.call("start", args={"op": "flow", "args": args})["ticket"])


def _delta(before: int | None, after: int | None) -> int | None:
    """A debugfs counter's change; None when unknown or reset (the driver was reloaded)."""
    if before is None or after is None or after < before:
        return None
    return after - before
