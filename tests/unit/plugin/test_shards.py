"""Shards: a matrix split by pytest-split (--splits N --group K) runs every item exactly once
across the shards, and their allure dirs merge into one per-QEMU table (pytester, model mode:
the shipped scenarios, two QEMU specs, no guest)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def matrix(pytester: pytest.Pytester, tmp_path: Path) -> list[str]:
    """The shipped scenarios on two QEMUs: the default binary and a second name for it."""
    shutil.copytree(ROOT / "scenarios", pytester.path / "scenarios")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("needs qemu-system-x86_64 on PATH to name a second QEMU spec")
    second = tmp_path / "bin" / "qemu-next"
    second.parent.mkdir()
    second.symlink_to(qemu)
    return ["--hil-backend=model", "--hil-qemu=qemu-system-x86_64", f"--hil-qemu={second}"]


def _passed(result: pytest.RunResult) -> list[str]:
    return sorted(
        m[1] for line in result.outlines if (m := re.match(r"PASSED (\S+)", line)) is not None
    )


def test_two_shards_run_the_whole_matrix_once_and_merge_into_one_table(pytester, matrix):
    whole = pytester.runpytest(*matrix, "-rA")
    everything = _passed(whole)
    assert len(everything) == 2 * len(list(Path(pytester.path / "scenarios").rglob("*.yaml")))
    shards = []
    for group in (1, 2):
        result = pytester.runpytest(
            *matrix, "-rA", "--splits=2", f"--group={group}", f"--alluredir=allure{group}"
        )
        shards.append(_passed(result))
        assert result.ret == 0, result.stdout.str()
    assert shards[0] and shards[1], "pytest-split gave one shard nothing"
    assert not set(shards[0]) & set(shards[1]), "an item ran in both shards"
    assert sorted(shards[0] + shards[1]) == everything

    merged = pytester.run(
        sys.executable, "-m", "harness", "table", "allure1", "allure2"
    )  # the harness on PYTHONPATH / installed, as in CI
    text = merged.stdout.str()
    assert merged.ret == 0, text + merged.stderr.str()
    assert "hil: results per QEMU (2 shards)" in text
    header = text.splitlines()[1]
    assert "qemu-system-x86_64" in header and "qemu-next" in header
    tests = {name.split("::")[1].split("[")[0] for name in everything}
    rows = [line.split()[0] for line in text.splitlines()[3:-1]]
    assert sorted(rows) == sorted(tests)  # one row per test, both columns filled
    assert f"0 of {len(tests)} tests differ between QEMUs" in text
    for line in text.splitlines()[3:-1]:
        assert line.split()[1:3] == ["passed", "passed"], line
