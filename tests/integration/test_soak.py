"""Issue 13: the short soak CI runs (`python -m harness soak --minutes 1`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.soak import COLUMNS

pytestmark = pytest.mark.qemu


def test_a_one_minute_soak_accounts_for_every_byte_and_stays_flat() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "harness", "soak", "--minutes", "1", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=900,  # a bound: a hang fails here
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "soak passed: 0 unexplained bytes" in run.stdout
    header = next(
        line for line in run.stdout.splitlines() if line.split()[:2] == ["round", "minute"]
    )
    assert header.split() == list(COLUMNS)
    assert "streams " in run.stdout and "plot: " in run.stdout
