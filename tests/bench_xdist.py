"""Wall time of the shipped scenarios with -n 0 and with -n N: prints both and the ratio.

A benchmark, not a test (timings are never asserted): run it on an idle machine,
    .venv/bin/python tests/bench_xdist.py [--workers 2] [-- extra pytest args]
The image is built first so that neither run pays for it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(workers: int, extra: list[str]) -> tuple[float, int]:
    """(seconds, pytest exit code) of one run of scenarios/ with `workers` xdist workers."""
    argv = [sys.executable, "-m", "pytest", "scenarios", "-q", "-p", "no:cacheprovider"]
    argv += ["-n", str(workers), *extra]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr)
    return elapsed, result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from harness.images.builder import build_image

    build_image()
    serial, serial_rc = timed_run(0, args.extra)
    parallel, parallel_rc = timed_run(args.workers, args.extra)
    print(f"-n 0: {serial:.1f} s (exit {serial_rc})")
    print(f"-n {args.workers}: {parallel:.1f} s (exit {parallel_rc})")
    print(f"ratio -n {args.workers} / -n 0: {parallel / serial:.2f}")
    return serial_rc or parallel_rc


if __name__ == "__main__":
    sys.exit(main())
