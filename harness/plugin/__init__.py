"""pytest plugin entry point (registered under pytest11 as ``hil``).

Only options are defined at import time; fixtures and scenario collection are registered in
pytest_configure. Why: entry-point plugins are imported before pytest-cov starts measuring, so
importing the harness layers here would hide the model's module-level lines from coverage.
"""

from __future__ import annotations

import pytest

from harness.plugin import logs
from harness.plugin.explore_options import add_explore_options
from harness.plugin.options import add_options, check_kernel_specs, check_qemu_specs

#: Marks the plugin gives items (qemu) or documents for scenarios (slow): registered here so
#: they neither warn nor break --strict-markers in a project that does not list them.
MARKERS = (
    "qemu: boots a real QEMU guest",
    "slow: long-running case (large payloads, many loops)",
    "cross_qemu: migrates to another QEMU; runs only with --hil-qemu-destination",
)
#: Imported here, in this order, so each is loaded first as a plugin (pytest's assertion
#: rewriter warns about a plugin module another module imported before): fixtures imports
#: faststart.
_LAYERS = (
    "harness.plugin.faststart",
    "harness.plugin.fixtures",
    "harness.plugin.scenarios",
    "harness.plugin.report",
    "harness.plugin.explore",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    add_explore_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    check_kernel_specs(config)
    check_qemu_specs(config)
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    from harness.plugin.qemu_versions import QEMU_BUGS  # here: see the module docstring

    for bug in QEMU_BUGS:
        config.addinivalue_line("markers", f"{bug.mark}: a known QEMU bug (README Findings)")
    logs.configure(config)
    for name in _LAYERS:
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.import_plugin(name)


def pytest_unconfigure(config: pytest.Config) -> None:
    logs.unconfigure(config)
