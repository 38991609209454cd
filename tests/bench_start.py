"""Wall time of the shipped scenarios with --hil-start=boot and --hil-start=snapshot, and the
time from QEMU start to guest ready per mode (median, p95), from the per-guest lines.

A benchmark, not a test (timings are never asserted): run it on an idle machine,
    .venv/bin/python tests/bench_start.py [--state-dir DIR] [-- extra pytest args]
Three runs: boot; snapshot on a cold state cache (the first guest of each kind boots and
saves); snapshot again (every guest restores, as in a nightly run with last night's states).
The state cache is a fresh temporary directory unless --state-dir is given. The image is built
first so that no run pays for it. Ready: boot = SSH answers; restore = the guest agent answers.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_START_LINE = re.compile(r"^hil: \S+: (boot|restore) ([0-9.]+) s", re.MULTILINE)


def timed_run(start: str, state_dir: Path, extra: list[str]) -> tuple[float, int, list[tuple]]:
    """(seconds, pytest exit code, [(mode, seconds)] per guest) of one run of scenarios/."""
    argv = [sys.executable, "-m", "pytest", "scenarios", "-q", "-p", "no:cacheprovider"]
    argv += [f"--hil-start={start}", f"--hil-state-dir={state_dir}", *extra]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    lines = result.stdout.strip().splitlines()
    print(f"  {start}: {lines[-1] if lines else result.stderr.strip()[-500:]}", flush=True)
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):
            print(f"    {line}", flush=True)
    guests = [(mode, float(seconds)) for mode, seconds in _START_LINE.findall(result.stdout)]
    return elapsed, result.returncode, guests


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def describe(label: str, wall: float, code: int, guests: list[tuple]) -> None:
    print(f"{label}: {wall:.1f} s (exit {code})")
    for mode in ("boot", "restore"):
        times = [seconds for m, seconds in guests if m == mode]
        if times:
            median, p95 = statistics.median(times), percentile(times, 0.95)
            print(f"  {mode} x{len(times)}: start-to-ready median {median:.2f} s, p95 {p95:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("extra", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from harness.images.builder import build_image

    build_image()
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="hil-bench-states-"))
    print(f"load average before: {os.getloadavg()}; states: {state_dir}", flush=True)
    boot = timed_run("boot", state_dir, args.extra)
    cold = timed_run("snapshot", state_dir, args.extra)
    warm = timed_run("snapshot", state_dir, args.extra)
    print(f"load average after: {os.getloadavg()}")
    describe("--hil-start=boot", *boot)
    describe("--hil-start=snapshot, cold state cache", *cold)
    describe("--hil-start=snapshot, warm state cache", *warm)
    print(f"ratio boot / snapshot (cold): {boot[0] / cold[0]:.2f}")
    print(f"ratio boot / snapshot (warm): {boot[0] / warm[0]:.2f}")
    return boot[1] or cold[1] or warm[1]


if __name__ == "__main__":
    sys.exit(main())
