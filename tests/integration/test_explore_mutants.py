"""Issue 12: each planted model mutant is found by exploring the real TCG guest, in at most 10
minutes, and shrunk to a scenario of at most 8 steps (harness.plugin.explore_tests judges both
and that the planted rule explains the finding).

Slow (up to 10 minutes per mutant), so it runs only when asked for, with the option that
plants the mutants: `pytest tests/integration/test_explore_mutants.py --hil-explore-mutant=all`
(or `=NAME`, repeatable). Without it the test reports one skip that says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.images.builder import default_cache_dir
from harness.scenario.mutants import MUTANTS

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

HUNT_SECONDS = 600  # the bound for finding one mutant
FINDING = re.compile(
    r"finding: (\S+) \((\d+) -> (\d+) steps, found after ([\d.]+) s and (\d+) steps, "
    r"written after ([\d.]+) s\)"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    asked = metafunc.config.getoption("--hil-explore-mutant")
    names = sorted(MUTANTS) if "all" in asked else list(dict.fromkeys(asked))
    if names:
        metafunc.parametrize("mutant", names)
        return
    why = "the mutant hunt (minutes per mutant) runs with --hil-explore-mutant=all or =NAME"
    metafunc.parametrize("mutant", [pytest.param("", marks=pytest.mark.skip(reason=why))])


@pytest.mark.timeout(HUNT_SECONDS + 1800 + 60)
def test_exploring_the_real_guest_finds_the_planted_mutant(mutant: str, tmp_path: Path) -> None:
    # A fresh hunt: the example database would replay the last hunt's finding first.
    shutil.rmtree(default_cache_dir() / "explore-db" / f"qemu-default-mutant-{mutant}", True)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "explore",
            str(HUNT_SECONDS),
            f"--hil-explore-mutant={mutant}",
            "--hil-explore-seed=1",
            f"--hil-explore-out={tmp_path}",
            "-q",
            "-s",
        ],
        capture_output=True,
        text=True,
        timeout=HUNT_SECONDS + 1800,  # a bound: shrinking replays on the real guest too
    )
    output = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, output
    found = FINDING.search(run.stdout)
    assert found is not None, output
    print(
        f"{mutant}: found after {found.group(4)} s ({found.group(5)} steps run), "
        f"{found.group(2)} -> {found.group(3)} steps, written after {found.group(6)} s"
    )
    assert Path(found.group(1)).is_file()
