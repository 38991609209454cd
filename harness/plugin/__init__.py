"""pytest plugin entry point (registered under pytest11 as ``hil``): options, fixtures, hooks."""

from __future__ import annotations

import pytest

from harness.plugin.fixtures import (
    announced_accel,
    hil_accel,
    hil_guest,
    hil_guest_factory,
    hil_image,
    hil_session_guest,
    hil_settings,
    hil_socket_root,
    hil_system,
    hil_system_factory,
    make_port,
)
from harness.plugin.options import add_options

pytest_plugins = ["harness.plugin.scenarios"]  # YAML scenario collection and running

__all__ = [
    "hil_accel", "hil_guest", "hil_guest_factory", "hil_image", "hil_session_guest",
    "hil_settings", "hil_socket_root", "hil_system", "hil_system_factory", "make_port",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qemu: boots a real QEMU guest")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    choice = announced_accel(terminalreporter.config)
    if choice is not None:
        terminalreporter.write_sep("-", f"hil: {choice.describe()}")
