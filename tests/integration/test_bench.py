"""Issue 11: the short bench CI runs (`python -m harness bench --json` with small sizes): the
command boots its guest, runs every case and prints the table and its JSON line.  No timing is
asserted; the numbers are the machine's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.qemu

KEYS = ("h2g_raw", "h2g_checked", "g2h_raw", "g2h_checked", "rtt_p50_us", "rtt_p99_us")


def test_a_small_bench_prints_its_table_and_json() -> None:
    small = ["--mib", "4", "--repeat", "2", "--round-trips", "10"]
    run = subprocess.run(
        [sys.executable, "-m", "harness", "bench", "--json", *small],
        capture_output=True,
        text=True,
        timeout=600,  # a bound: a hang fails here
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(run.stdout.splitlines()[-1])
    for key in (
        *KEYS,
        "rtt_raw_p50_us",
        "h2g_ratio",
        "g2h_ratio",
        "both_ways_4_ports_checked",
        "both_ways_4_ports_with_call",
        "both_ways_4_ports_raw",
        "both_ways_4_ports_ratio",
        "both_ways_1_port_ratio",
    ):
        assert summary[key] > 0, key
    for label in ("h2g 1 port", "h2g 4 ports", "g2h 1 port", "g2h 4 ports", "both ways 4 ports"):
        assert label in run.stdout
    assert "agent 4 KiB" in run.stdout and "cat 1 B" in run.stdout
    # QEMU named its threads and the vCPU got a core of its own (one core: said, unpinned)
    pinned = len(os.sched_getaffinity(0)) >= 2
    expected = "vCPU thread(s) on core(s)" if pinned else "unpinned (cannot give"
    assert summary["cores"].startswith(expected), summary["cores"]
