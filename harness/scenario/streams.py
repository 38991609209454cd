"""Background streams as scenario steps: ``host_stream``, ``guest_stream``, ``stream_end``.

A stream flows while the following steps run (faults among them).  The runner keeps one
``StreamBook`` per scenario: the model's view of every stream (``harness.model.streams``: which
faults cut it and where the rest of its bytes may go) and the ports whose byte counters a stream
makes timing-dependent, which the settled-snapshot comparison leaves out for the rest of the
scenario.  ``stream_end`` judges the real accounting against the model and fails with a table
naming the layers when a byte is unexplained.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from harness.model import Outcome
from harness.model import errors as E
from harness.model.device import G2H, H2G
from harness.model.errors import ModelError
from harness.model.snapshot import PortView, Snapshot
from harness.model.streams import StreamModel, chain, judge
from harness.scenario.steps import (
    MAX_PAYLOAD,
    PORT,
    Arg,
    Problem,
    Step,
    StepCall,
    StepKind,
    payload_seed,
    port_kind,
    register,
)

if TYPE_CHECKING:
    from harness.scenario.system import RealSystem

log = logging.getLogger("hil.scenario")
DEFAULT_CHUNK = 32768
STREAM_TIMEOUT = 120.0  # how long stream_end waits for a sized stream to finish
#: What a stream makes timing-dependent on its port (left out of the settled comparison).
BLIND_GUEST = ("bytes_sent", "bytes_received", "bytes_discarded")
#: Steps that would read or write a streamed port's bytes themselves.
DATA_STEPS = frozenset({"host_write", "host_read", "guest_write", "guest_read"})


class StreamReportLike(Protocol):
    """What ``RealSystem.end_stream`` returns (harness.backend.streams.StreamReport)."""

    sent: int | None
    delivered: int | None
    prefix_ok: bool
    writer_error: str | None
    socket: int | None
    driver: int | None
    notes: list[str]


@dataclass
class StreamBook:
    """The streams of one scenario run (model side), and what they make unobservable."""

    active: dict[str, StreamModel] = field(default_factory=dict)
    ended: dict[str, StreamModel] = field(default_factory=dict)  # stream_end: for its real op
    streamed: set[str] = field(default_factory=set)
    paused: bool = False
    reports: list[Any] = field(default_factory=list)  # every real stream_end's report

    def start(self, call: StepCall, direction: str) -> Outcome:
        port = call.port
        model = call.model
        state = model.ports.get(port)
        if state is None:
            raise ModelError(model.missing_port_errno(port), port)
        if port in self.active:
            raise ModelError(E.EBUSY, f"a stream already runs on {port}")
        if not state.host_attached:
            raise ModelError(E.ENOTCONN, f"host end of {port} is not open")
        if state.guest is None or state.guest.fd is None:
            raise ModelError(E.EBADF, f"no open guest fd for {port}")
        seed = payload_seed(call.scenario, call.step.index)
        size = call.args.get("size")
        until = call.args.get("until")
        self.active[port] = StreamModel(port, direction, seed, size, call.step.index, until)
        self.streamed.add(port)
        return Outcome()

    def end(self, call: StepCall) -> StreamModel:
        stream = self.active.get(call.port)
        if stream is None:
            raise ModelError(E.ENOENT, f"no stream runs on {call.port}")
        return stream

    def observe(self, step: Step, succeeded: bool) -> None:
        """After a step's prediction: a fault that happened is applied to every stream."""
        if step.kind in DATA_STEPS and step.args.get("port") in self.active:
            from harness.scenario.runner import ScenarioFailure

            raise ScenarioFailure(
                step,
                f"a stream started at step {self.active[step.args['port']].step} runs on this "
                "port: its bytes would mix with this step's; add a stream_end before it",
            )
        if not succeeded:
            return
        if step.kind == "vm_stop":
            self.paused = True
        elif step.kind == "vm_cont":
            self.paused = False
        if step.kind == "stream_end":
            port = str(step.args.get("port"))
            self.ended[port] = self.active.pop(port)
            return
        for stream in self.active.values():
            stream.fault(step.kind, step.index, step.args.get("port"))

    def due(self, index: int) -> list[str]:
        """Ports whose stream's writer stops before step ``index`` (``until:``)."""
        return [p for p, s in self.active.items() if s.until == index]

    def blind(self, predicted: Snapshot, actual: Snapshot) -> Snapshot:
        """``actual`` with the streamed ports' timing-dependent fields taken from ``predicted``."""
        if not self.streamed:
            return actual
        ports = dict(actual.ports)
        for name in self.streamed:
            want, got = predicted.ports.get(name), ports.get(name)
            if want is None or got is None:
                continue
            ports[name] = _blinded(want, got)
        return replace(actual, ports=ports)


def _blinded(want: PortView, got: PortView) -> PortView:
    guest = got.guest
    if guest.present and want.guest.present:
        guest = replace(guest, **{k: getattr(want.guest, k) for k in BLIND_GUEST})
    qemu = got.qemu
    if qemu is not None and want.qemu is not None:
        qemu = replace(qemu, throttled=want.qemu.throttled)
    return replace(got, guest=guest, qemu=qemu, poll=want.poll)


# ------------------------------------------------------------------ the steps
def _book(call: StepCall) -> StreamBook:
    book = getattr(call, "streams", None)
    if not isinstance(book, StreamBook):
        raise AssertionError("stream steps need the runner's StreamBook (StepCall.streams)")
    return book


def _real_start(real: RealSystem, call: StepCall, direction: str) -> None:
    seed = payload_seed(call.scenario, call.step.index)
    chunk = call.args.get("chunk", DEFAULT_CHUNK)
    real.start_stream(call.port, direction, seed, call.args.get("size"), chunk)


def _real_end(real: RealSystem, call: StepCall) -> StreamReportLike:
    """Measure for real, then judge against the model; a mismatch fails the scenario here."""
    stream = _book(call).ended.pop(call.port)
    stop = stream.size is None or stream.cut is not None
    report: StreamReportLike = real.end_stream(call.port, stop, STREAM_TIMEOUT)
    _book(call).reports.append(report)
    layers = chain(
        stream.direction, report.sent, report.delivered, socket=report.socket, driver=report.driver
    )
    verdict = judge(
        stream, report.sent, report.delivered, report.prefix_ok, layers, report.writer_error
    )
    log.info(
        "stream on %s (step %d, %s): sent %s, delivered %s, discarded %s "
        "(host socket %s, guest driver %s)%s%s",
        call.port,
        stream.step,
        stream.direction,
        report.sent,
        report.delivered,
        verdict.discarded,
        report.socket,
        report.driver,
        f" ({stream.cut.fault} at step {stream.cut.step})" if stream.cut else "",
        "".join(f"; {note}" for note in report.notes),
    )
    if verdict.problems:
        from harness.scenario.runner import ScenarioFailure

        where = f"; first loss {verdict.lost_at}" if verdict.lost_at else ""
        notes = "".join(f"\n{note}" for note in report.notes)
        raise ScenarioFailure(
            call.step,
            f"stream started at step {stream.step} is not accounted for: "
            f"{'; '.join(verdict.problems)}{where}",
            verdict.table() + notes,
        )
    return report


def _stream_shape(args: Mapping[str, Any]) -> Problem | None:
    if "size" in args and "until" in args:
        return Problem(
            "{kind} takes size: or until:, not both",
            "size: a stream of that many bytes; until: N stops the writer before step N",
        )
    return None


_STREAM_KEYS = {
    "port": PORT,
    "size": Arg("int", 1, MAX_PAYLOAD, why=f"size is a byte count from 1 to {MAX_PAYLOAD}"),
    "until": Arg("int", 1, 1 << 20, why="until is the step number before which the writer stops"),
    "chunk": Arg("int", 1, 1 << 20, why="chunk is the bytes per write() call, 1 to 1 MiB"),
}


def _stream_kind(direction: str, name: str, does: str) -> StepKind:
    def model(call: StepCall) -> Outcome:
        return _book(call).start(call, direction)

    def real(system: RealSystem, call: StepCall) -> None:
        _real_start(system, call, direction)

    return port_kind(
        name,
        model,
        real,
        does + "; checked at `stream_end`",
        keys=_STREAM_KEYS,
        arguments="port, `size:` **or** `until:` step (none: until its `stream_end`), `chunk:`",
        validate=_stream_shape,
    )


register(_stream_kind(H2G, "host_stream", "the host sends a seeded stream while later steps run"))
register(
    _stream_kind(G2H, "guest_stream", "the guest agent sends a seeded stream while later steps run")
)

register(
    port_kind(
        "stream_end",
        lambda c: (_book(c).end(c), Outcome())[1],
        _real_end,
        "stop an open-ended stream, drain it, check sent = delivered + discarded (model)",
    )
)
