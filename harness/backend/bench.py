"""`python -m harness bench`: what the verified stream path costs against the raw port.

One guest with four ports.  Each figure is measured in the same run on the same guest and ports:

- raw: busybox `dd` on /dev/vportNpM in the guest, the harness's host endpoint on the host
  (sending generated payloads; draining without hashing or comparing);
- checked: the agent's check_stream (guest compares every byte with the generated stream) and
  send_stream (guest generates), the host endpoint's read_checked (host compares every byte);
- round trip: 1 byte and 4 KiB host -> guest -> host through the agent's echo op, against the
  same through `cat` in the guest (the minimal echo).

Host -> guest throughput is timed in the guest (the host queues everything first, so the reader
never waits for the writer); guest -> host is timed on the host from the first byte to the last.
Several streams one way are timed like one (from the first start to the last end); both ways at
once, on the host from the first byte the guest sent to the last byte either way, and once more
with the agent call and the guest's stream setup included (the one-way rows leave setup out);
its ratio is the total against the single-port raw host -> guest figure, paired the same way.  The
numbers depend on the machine's load: compare the ratios, which come from the same run.  The
guest's vCPU thread runs on a core of its own meanwhile (Bench.pinned; ``--no-pin`` to leave it
to the scheduler), for both paths alike.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import shlex
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from harness.backend.endpoint import Checked, HostEndpoint
from harness.guest.agent_client import AgentClient
from harness.guest.guest import Guest, ImageGuests
from harness.machine.affinity import Pinning, confined
from harness.machine.errors import MachineError
from harness.machine.qemu import ControllerSpec, PortSpec
from harness.model.payload import Payload

MIB = 1 << 20
PORTS = 4
#: raw/checked pairs per throughput case: three ABBA blocks (see balanced_ratio)
DEFAULT_REPEAT = 6
_seeds = itertools.count(1000)

# Times a command in the guest with its own monotonic clock (the agent's clock), so that the
# guest's Python start-up is not counted.  argv: one shell command per stream, run at once.
_TIMED = (
    "import os,sys,time\n"
    "t0=time.monotonic()\n"
    "pids=[os.spawnv(os.P_NOWAIT,'/bin/sh',['sh','-c',c]) for c in sys.argv[1:]]\n"
    "bad=[p for p in pids if os.waitpid(p,0)[1]]\n"
    "print(t0,time.monotonic(),len(bad))\n"
)


class BenchError(MachineError):
    """A benchmark step did not transfer what it should have."""


class BothWays(NamedTuple):
    """One both-ways row: medians over its pairs (see Bench._both_ways_against_raw)."""

    label: str
    total: float  # checked MB/s both ways, first byte the guest sent to the last either way
    raw: float  # single-port raw host -> guest, run in pairs with it
    with_call: float  # the total with the agent call and stream setup included
    ratio: float  # balanced_ratio of total/raw over the pairs


@dataclass
class Results:
    #: label, raw, checked (medians), and the pairs' checked/raw ratio (balanced_ratio)
    rows: list[tuple[str, float, float, float]] = field(default_factory=list)
    totals: list[BothWays] = field(default_factory=list)
    rtt: dict[str, list[float]] = field(default_factory=dict)  # label -> microseconds
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    cores: str = "unpinned"

    def summary(self) -> dict[str, Any]:
        raw = {label: (r, c) for label, r, c, _ in self.rows}
        ratio = {label: q for label, _, _, q in self.rows}
        out: dict[str, Any] = {
            "h2g_raw": raw["h2g 1 port"][0],
            "h2g_checked": raw["h2g 1 port"][1],
            "g2h_raw": raw["g2h 1 port"][0],
            "g2h_checked": raw["g2h 1 port"][1],
            "h2g_raw_4": raw["h2g 4 ports"][0],
            "h2g_checked_4": raw["h2g 4 ports"][1],
            "g2h_raw_4": raw["g2h 4 ports"][0],
            "g2h_checked_4": raw["g2h 4 ports"][1],
            "h2g_ratio": ratio["h2g 1 port"],
            "g2h_ratio": ratio["g2h 1 port"],
            "h2g_ratio_4": ratio["h2g 4 ports"],
            "g2h_ratio_4": ratio["g2h 4 ports"],
            "rtt_p50_us": _pct(self.rtt["agent 1 B"], 50),
            "rtt_p99_us": _pct(self.rtt["agent 1 B"], 99),
            "rtt_raw_p50_us": _pct(self.rtt["cat 1 B"], 50),
            "rtt_raw_p99_us": _pct(self.rtt["cat 1 B"], 99),
            "rtt_4k_p50_us": _pct(self.rtt["agent 4 KiB"], 50),
            "rtt_4k_p99_us": _pct(self.rtt["agent 4 KiB"], 99),
            "rtt_4k_raw_p50_us": _pct(self.rtt["cat 4 KiB"], 50),
            "both_ways_1_port_checked": self.totals[0].total,
            "both_ways_4_ports_checked": self.totals[1].total,
            "both_ways_1_port_with_call": self.totals[0].with_call,
            "both_ways_4_ports_with_call": self.totals[1].with_call,
            "both_ways_1_port_raw": self.totals[0].raw,
            "both_ways_4_ports_raw": self.totals[1].raw,
            "both_ways_1_port_ratio": self.totals[0].ratio,
            "both_ways_4_ports_ratio": self.totals[1].ratio,
            "load": list(self.load),
            "cores": self.cores,
        }
        return {
            k: (round(v, 2) if "ratio" in k else round(v, 1)) if isinstance(v, float) else v
            for k, v in out.items()
        }

    def table(self) -> str:
        lines = [f"{'path (medians)':<22}{'raw MB/s':>10}{'checked MB/s':>14}{'ratio':>8}"]
        for label, raw, checked, ratio in self.rows:
            lines.append(f"{label:<22}{raw:>10.1f}{checked:>14.1f}{ratio:>8.2f}")
        for label, total, reference, with_call, ratio in self.totals:
            lines.append(
                f"{label:<22}{reference:>10.1f}{total:>14.1f}{ratio:>8.2f}  (total both ways "
                f"against single-port raw h2g; {with_call:.1f} with the agent call)"
            )
        lines.append("")
        lines.append(f"{'round trip (us)':<22}{'p50':>10}{'p99':>10}")
        for label, samples in self.rtt.items():
            lines.append(f"{label:<22}{_pct(samples, 50):>10.0f}{_pct(samples, 99):>10.0f}")
        lines.append("")
        lines.append("ratio: pairs run back to back, raw first then checked first in turn; the")
        lines.append(
            "median over those blocks of two of the geometric mean of checked/raw, so that"
        )
        lines.append("the order and the machine's drifting load cancel out")
        lines.append("load average at the end: " + " ".join(f"{x:.2f}" for x in self.load))
        lines.append(f"cores: {self.cores}")
        return "\n".join(lines)


def _pct(samples: list[float], pct: int) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _mbs(nbytes: int, seconds: float) -> float:
    return nbytes / max(seconds, 1e-9) / 1e6


class Bench:
    """A booted guest with PORTS socket ports, its agent and one host endpoint per port."""

    def __init__(self, guest: Guest, agent: AgentClient, endpoints: list[HostEndpoint]) -> None:
        self.guest = guest
        self.agent = agent
        self.endpoints = endpoints
        self.devs = [str(agent.port_info(e.name)["dev"]) for e in endpoints]
        self.say: Callable[[str], None] = lambda text: None

    @contextmanager
    def pinned(self) -> Iterator[Pinning]:
        """The guest's vCPU on a core of its own, QEMU's other threads and this process on
        the rest, for as long as the block runs (why: harness.machine.affinity)."""
        pinning = self.guest.machine.pin_vcpus()
        with confined(pinning.others):
            yield pinning

    # -- helpers -------------------------------------------------------------------------

    def _guest_timed(self, commands: list[str], timeout: float) -> float:
        """Run shell commands at once in the guest; seconds from start to the last exit."""
        argv = " ".join(shlex.quote(c) for c in commands)
        result = self.guest.run(f"python3 -c {shlex.quote(_TIMED)} {argv}", timeout=timeout)
        fields = result.output.split()
        if not result.ok or len(fields) != 3 or fields[2] != "0":
            raise BenchError(f"guest command failed: {commands}: {result}")
        return float(fields[1]) - float(fields[0])

    @contextmanager
    def _opened(self, count: int) -> Iterator[list[str]]:
        names = [e.name for e in self.endpoints[:count]]
        for name in names:
            self.agent.open(name)
        try:
            yield names
        finally:
            for name in names:
                self.agent.close(name)

    # -- throughput ----------------------------------------------------------------------

    def raw_h2g(self, count: int, length: int) -> float:
        for endpoint in self.endpoints[:count]:
            endpoint.write(Payload.generated(next(_seeds), length))
        commands = [
            f"dd if=/dev/{dev} of=/dev/null bs=64k count={length // 65536} iflag=fullblock "
            "2>/dev/null"
            for dev in self.devs[:count]
        ]
        seconds = self._guest_timed(commands, timeout=600)
        for endpoint in self.endpoints[:count]:
            endpoint.wait_sent(30)
        return _mbs(count * length, seconds)

    def raw_g2h(self, count: int, length: int) -> float:
        spans: list[tuple[int, float, float]] = []
        readers = [_thread(_into(spans, e.drain, length, 60)) for e in self.endpoints[:count]]
        commands = [
            f"dd if=/dev/zero of=/dev/{dev} bs=32k count={length // 32768} 2>/dev/null"
            for dev in self.devs[:count]
        ]
        self._guest_timed(commands, timeout=600)
        _join(readers, 120)
        if sorted(n for n, _, _ in spans) != [length] * count:
            raise BenchError(f"raw guest -> host: received {[n for n, _, _ in spans]}")
        return _mbs(count * length, max(s[2] for s in spans) - min(s[1] for s in spans))

    def _streams(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The agent's multiplexed streams op (one guest thread for every stream)."""
        return list(self.agent.call("streams", 600, args={"streams": specs, "timeout": 60}))

    def checked_h2g(self, count: int, length: int) -> float:
        with self._opened(count) as names:
            seeds = [next(_seeds) for _ in names]
            for endpoint, seed in zip(self.endpoints, seeds, strict=False):
                endpoint.write(Payload.generated(seed, length))
            if count == 1:
                results = [self.agent.check_stream(names[0], seeds[0], length, timeout=60)]
            else:
                results = self._streams(
                    [
                        {"name": name, "dir": "check", "seed": seed, "length": length}
                        for name, seed in zip(names, seeds, strict=True)
                    ]
                )
        for result in results:
            if not result["match"]:
                raise BenchError(f"checked host -> guest stream failed: {result}")
        return _mbs(count * length, max(r["t1"] for r in results) - min(r["t0"] for r in results))

    def checked_g2h(self, count: int, length: int) -> float:
        with self._opened(count) as names:
            payloads = [Payload.generated(next(_seeds), length) for _ in names]
            checks: list[Checked] = []
            readers = [
                _thread(_into(checks, e.read_checked, p, 60))
                for e, p in zip(self.endpoints, payloads, strict=False)
            ]
            if count == 1:
                self.agent.send_stream(names[0], _seed(payloads[0]), length)
            else:
                self._streams(
                    [
                        {"name": name, "dir": "send", "seed": _seed(payload), "length": length}
                        for name, payload in zip(names, payloads, strict=True)
                    ]
                )
            _join(readers, 120)
        for check in checks:
            if not check.ok:
                raise BenchError(f"checked guest -> host stream failed: {check.describe()}")
        return _mbs(
            count * length, max(c.last_at for c in checks) - min(c.first_at for c in checks)
        )

    def checked_both_ways(self, count: int, length: int) -> tuple[float, float]:
        """Total MB/s with `count` ports streaming checked data both ways at once, timed on
        the host from the first byte the guest sent to the last byte either way (the agent's
        reply, after its last check); and the same timed from before the agent call, which adds
        the call and the guest's stream setup (the single-direction rows leave setup out)."""
        with self._opened(count) as names:
            called = time.monotonic()
            checks: list[Checked] = []
            readers = []
            specs: list[dict[str, Any]] = []
            for endpoint, name in zip(self.endpoints, names, strict=False):
                out, back = (Payload.generated(next(_seeds), length) for _ in range(2))
                endpoint.write(out)
                readers.append(_thread(_into(checks, endpoint.read_checked, back, 60)))
                specs.append({"name": name, "dir": "check", "seed": _seed(out), "length": length})
                specs.append({"name": name, "dir": "send", "seed": _seed(back), "length": length})
            results = self._streams(specs)
            replied = time.monotonic()
            _join(readers, 120)
        if not all(c.ok for c in checks) or not all(r.get("match", True) for r in results):
            raise BenchError(f"checked streams both ways failed: {results} {checks}")
        ended = max(replied, *(c.last_at for c in checks))
        first = min(c.first_at for c in checks)
        total = 2 * count * length
        return _mbs(total, ended - first), _mbs(total, ended - called)

    # -- round trips ---------------------------------------------------------------------

    def _round_trips(self, endpoint: HostEndpoint, size: int, count: int) -> list[float]:
        message = bytes(range(256)) * (size // 256) or b"x" * size
        samples = []
        for _ in range(count):
            began = time.perf_counter()
            endpoint.write(message)
            got = endpoint.read(size, 10)
            samples.append((time.perf_counter() - began) * 1e6)
            if got.data != message:
                raise BenchError(f"echo returned {got.length} bytes that differ")
        return samples

    def rtt_agent(self, size: int, count: int) -> list[float]:
        endpoint = self.endpoints[0]
        with self._opened(1) as [name]:
            ticket = self.agent.start_background(
                "echo", name=name, size=size, count=count, timeout=30
            )
            samples = self._round_trips(endpoint, size, count)
            self.agent.wait_ticket(ticket, timeout=60)
        return samples

    def rtt_cat(self, size: int, count: int) -> list[float]:
        endpoint = self.endpoints[0]
        dev = self.devs[0]
        started = self.guest.run(
            f"cat <>/dev/{dev} >&0 2>/dev/null & echo $!", timeout=30
        ).output.split()
        if len(started) != 1:
            raise BenchError(f"could not start cat on /dev/{dev}: {started}")
        try:
            _wait(lambda: self.agent.port_info(endpoint.name)["guest_connected"] == 1, 30)
            return self._round_trips(endpoint, size, count)
        finally:
            self.guest.run(f"kill {started[0]}", timeout=30)
            _wait(lambda: self.agent.port_info(endpoint.name)["guest_connected"] == 0, 30)

    # -- all -------------------------------------------------------------------------------

    def _in_pairs(
        self,
        repeat: int,
        first: Callable[[], float],
        second: Callable[[], float],
        say: Callable[[float, float], str],
    ) -> tuple[list[float], list[float]]:
        """``repeat`` pairs run back to back, ``first`` first in pair 2k and ``second`` first in
        pair 2k+1 (the order balanced_ratio cancels); each one's results, and a progress line
        per pair (``say(first's, second's)``)."""
        firsts: list[float] = []
        seconds: list[float] = []
        pair = [(first, firsts), (second, seconds)]
        for index in range(repeat):
            for measure, into in pair[:: -1 if index % 2 else 1]:
                into.append(measure())
            self.say(say(firsts[-1], seconds[-1]))
        return firsts, seconds

    def _both_ways_against_raw(self, count: int, length: int, repeat: int) -> BothWays:
        """Both ways at once on ``count`` ports (``length`` bytes in all), paired with the
        single-port raw host -> guest figure (the lower direction here: raw guest -> host ran
        1.2-2.1x faster in the benches of issue 11's notes) run back to back with it, ABBA,
        like the one-way rows: the total is judged against raw measured under the same load,
        not minutes earlier."""
        label = f"both ways {_ports(count)}"
        with_call: list[float] = []

        def both() -> float:
            total, called = self.checked_both_ways(count, length // (2 * count))
            with_call.append(called)
            return total

        raws, totals = self._in_pairs(
            repeat,
            lambda: self.raw_h2g(1, length),
            both,
            lambda raw, total: (
                f"{label}: {total:.1f} MB/s in total ({with_call[-1]:.1f} with the agent call); "
                f"single-port raw {raw:.1f} MB/s"
            ),
        )
        return BothWays(
            label,
            statistics.median(totals),
            statistics.median(raws),
            statistics.median(with_call),
            _paired_ratio(raws, totals),
        )

    def run(self, length: int, rtt_count: int, repeat: int = DEFAULT_REPEAT) -> Results:
        """Every throughput case ``repeat`` times as a raw/checked pair run back to back, raw
        first in one pair and checked first in the next (the load of a shared machine drifts,
        and the second run of a pair meets what the first left behind): the medians, and the
        pairs' ratio balanced over both orders (balanced_ratio), are reported."""
        results = Results()
        for direction, raw, checked in (
            ("h2g", self.raw_h2g, self.checked_h2g),
            ("g2h", self.raw_g2h, self.checked_g2h),
        ):
            for count in (1, PORTS):
                label = f"{direction} {_ports(count)}"
                per_port = length if count == 1 else length // count
                raws, checks = self._in_pairs(
                    repeat,
                    functools.partial(raw, count, per_port),
                    functools.partial(checked, count, per_port),
                    functools.partial(_one_way_progress, label),
                )
                results.rows.append(
                    (
                        label,
                        statistics.median(raws),
                        statistics.median(checks),
                        _paired_ratio(raws, checks),
                    )
                )
        for count in (1, PORTS):
            results.totals.append(self._both_ways_against_raw(count, length, repeat))
        for size, size_label in ((1, "1 B"), (4096, "4 KiB")):
            self.say(f"round trips, {size_label} ...")
            results.rtt[f"agent {size_label}"] = self.rtt_agent(size, rtt_count)
            results.rtt[f"cat {size_label}"] = self.rtt_cat(size, rtt_count)
        results.load = os.getloadavg()
        return results


def _one_way_progress(label: str, raw: float, checked: float) -> str:
    return f"{label}: raw {raw:.1f} MB/s, checked {checked:.1f} MB/s"


def _ports(count: int) -> str:
    return f"{count} port{'s' if count > 1 else ''}"


def balanced_ratio(ratios: list[float]) -> float:
    """The median over ABBA blocks of the pairs' checked/raw ratios.  Pair 2k runs raw first
    and pair 2k+1 checked first, and whichever runs second in a pair meets what the first left
    behind (measured: up to 20% slower, either way round), so the geometric mean of the two
    cancels the order; the median over blocks drops a block the machine's load disturbed.  An
    odd last pair counts alone."""
    blocks = [math.sqrt(a * b) for a, b in zip(ratios[::2], ratios[1::2], strict=False)]
    if len(ratios) % 2:
        blocks.append(ratios[-1])
    return statistics.median(blocks)


def _paired_ratio(raws: list[float], others: list[float]) -> float:
    """balanced_ratio of each pair's other/raw, for pairs run by Bench._in_pairs."""
    return balanced_ratio([other / raw for raw, other in zip(raws, others, strict=True)])


def _seed(payload: Payload) -> int:
    assert payload.seed is not None
    return payload.seed


def _into(results: list[Any], function: Callable[..., Any], *args: Any) -> Callable[[], None]:
    """A thread target that appends ``function(*args)`` to ``results``."""

    def run() -> None:
        results.append(function(*args))

    return run


def _thread(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
        if thread.is_alive():
            raise BenchError(f"a host reader did not finish within {timeout} s")


def _wait(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"port state did not change within {timeout} s")
        time.sleep(0.05)


@contextmanager
def booted() -> Iterator[Bench]:
    """One fresh guest with PORTS connected socket ports, shut down afterwards."""
    from harness.images.builder import build_image

    guests = ImageGuests.auto(build_image())
    print(f"hil: {guests.choice.describe()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hil-bench-") as workdir:
        root = Path(workdir)
        ports = [
            PortSpec(f"bench.{i}", "vser0", i + 1, False, root / f"{i}.sock", f"bench{i}")
            for i in range(PORTS)
        ]
        guest = guests.guest(root, "bench", controllers=[ControllerSpec("vser0")], ports=ports)
        endpoints = [HostEndpoint(p.name, p.chardev_path) for p in ports if p.chardev_path]
        agent: AgentClient | None = None
        try:
            guest.boot()
            agent = AgentClient(guest).start()
            for endpoint in endpoints:
                agent.wait_port(endpoint.name)
                endpoint.connect()
            yield Bench(guest, agent, endpoints)
        finally:
            for endpoint in endpoints:
                if endpoint.connected:
                    endpoint.close()
            if agent is not None:
                agent.disconnect()
            guest.shutdown()


@contextmanager
def _cores(runner: Bench, pin: bool) -> Iterator[str]:
    """Pinned (see Bench.pinned) unless ``pin`` is off or the machine has too few cores;
    yields how the cores are used, for the output."""
    if not pin:
        yield "unpinned (--no-pin)"
        return
    with ExitStack() as stack:
        try:
            pinning = stack.enter_context(runner.pinned())
        except MachineError as error:
            yield f"unpinned ({error})"
            return
        yield pinning.describe()


def bench(
    mib: int = 128,
    rtt_count: int = 200,
    as_json: bool = False,
    repeat: int = DEFAULT_REPEAT,
    pin: bool = True,
) -> int:
    """Boot one guest, measure, print the table (and a JSON line); 0 on success."""
    print(
        f"{mib} MiB per direction and case; {repeat} raw/checked pairs per case "
        "(throughput: medians; ratio: balanced over both orders, see the footer)",
        flush=True,
    )
    with booted() as runner:
        runner.say = lambda text: print(text, flush=True)
        with _cores(runner, pin) as cores:
            runner.say(f"cores: {cores}")
            results = runner.run(mib * MIB, rtt_count, repeat)
        results.cores = cores
    print(results.table())
    if as_json:
        print(json.dumps(results.summary(), sort_keys=True))
    return 0


__all__ = ["Bench", "BenchError", "Results", "balanced_ratio", "bench", "booted"]
