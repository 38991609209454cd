"""What the command lines say about themselves, and the README's options table (subprocess
for `python -m ...`, pytester for pytest's own --help)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from harness.images.kernel import KERNEL_SPEC_FORMS

ROOT = Path(__file__).resolve().parents[3]


def _help(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", *args, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())  # argparse wraps to the terminal width


def test_run_help_says_arguments_go_on_to_pytest():
    text = _help("harness", "run")
    assert text.startswith("usage: python -m harness run [PYTEST ARGS ...]")
    assert "Every argument after `run` (other than -h/--help) is passed on to pytest" in text
    assert "--hil-backend=model" in text and "pytest --help" in text
    assert "passed on to pytest" in _help("harness")


def test_images_build_help_lists_every_kernel_spec_form():
    text = _help("harness.images", "build")
    assert " ".join(KERNEL_SPEC_FORMS.split()) in text
    for form in (
        "Debian package name",
        "debian:SUITE/PACKAGE",
        "FILE.deb",
        "VMLINUZ[:MODULES_DIR]",
    ):
        assert form in text


def test_readme_options_table_lists_every_plugin_option(pytester):
    """Every --hil-* option of `pytest --help` has a row, and every row is an option."""
    result = pytester.runpytest("--help")
    offered = set(re.findall(r"^\s+(--hil-[a-z-]+)", result.stdout.str(), re.MULTILINE))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## pytest options", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(--hil-[a-z-]+)`", section, re.MULTILINE))
    assert len(offered) >= 8
    assert documented == offered
