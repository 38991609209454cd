"""Scenario files for the plugin's own pytester runs, and what those runs leave behind.

Why one module: many tests start a pytest run in a throwaway project that holds a few scenario
files, and read its allure results afterwards; the texts, the folder setup and the attachment
walk were written again in each test file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: The smallest valid scenario: no ports, one reboot.
PLAIN = "name: plain\nsteps:\n  - reboot: {}\n"


def one_port_scenario(name: str, *steps: str, port: str = "org.example.data", nr: int = 3) -> str:
    """A scenario booting with one serial port ``port`` at id ``nr``; each of ``steps`` is one
    step line's YAML (``"host_open: org.example.data"``)."""
    head = f"name: {name}\nmachine:\n  ports:\n    - {{name: {port}, nr: {nr}}}\nsteps:\n"
    return head + "".join(f"  - {step}\n" for step in steps)


def write_scenarios(pytester: pytest.Pytester, folder: str = "scenarios", **files: str) -> Path:
    """Write each ``stem=text`` as ``<folder>/<stem>.yaml`` in the pytester project (the folder
    is created when missing); returns the folder."""
    path = pytester.path / folder
    path.mkdir(exist_ok=True)
    for stem, text in files.items():
        (path / f"{stem}.yaml").write_text(text)
    return path


def attachment_names(node: dict[str, Any]) -> set[str]:
    """Every attachment name of an allure result, its steps' (and theirs) included."""
    names = {a["name"] for a in node.get("attachments", [])}
    for step in node.get("steps", []):
        names |= attachment_names(step)
    return names
