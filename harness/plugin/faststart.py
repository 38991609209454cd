"""`--hil-start`: which guests start from a saved state, and the line each guest start prints.

The mechanics are in harness/guest/faststart.py (start or restore) and
harness/machine/snapshot_cache.py (the keyed on-disk states); this module only chooses.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest

from harness.guest.faststart import StartReport, start_guest
from harness.guest.guest import Guest
from harness.images.builder import GuestImage, default_cache_dir
from harness.machine.snapshot_cache import StateCache
from harness.plugin.options import HilSettings

LOG = logging.getLogger("hil.plugin")
_config: list[pytest.Config] = []  # the running session's config (for the terminal lines)


def pytest_configure(config: pytest.Config) -> None:
    _config[:] = [config]


def pytest_unconfigure(config: pytest.Config) -> None:
    _config[:] = []


def state_cache(settings: HilSettings) -> StateCache | None:
    """The saved states to use (None: --hil-start=boot)."""
    if settings.start != "snapshot":
        return None
    root = Path(settings.state_dir) if settings.state_dir else default_cache_dir() / "states"
    return StateCache(root, settings.state_cache_mib * 2**20)


def start(guest: Guest, settings: HilSettings, image: GuestImage) -> StartReport:
    """Boot or restore `guest` as --hil-start says, and print one line saying which."""
    extra = {"image": image.directory.name, "recipe": image.recipe}
    report = start_guest(guest, state_cache(settings), settings.boot_timeout, extra)
    announce(report.describe(guest.machine.name), report.warning)
    return report


def announce(line: str, warning: str | None = None) -> None:
    """On the terminal (where there is one: not on xdist workers) and in the log."""
    if warning is not None:
        LOG.warning("%s", warning)
    LOG.info("%s", line)
    plugins = _config[0].pluginmanager if _config else None
    reporter = plugins.get_plugin("terminalreporter") if plugins else None
    if reporter is None or plugins is None:
        return
    capture = plugins.get_plugin("capturemanager")
    # Written past output capturing, as pytest's live logging does, so it shows as it happens.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if not reporter.currentfspath:  # a captured write_line reset it: still mid-line here
            reporter.write("\n")
        if warning is not None:
            reporter.write_line(f"WARNING {warning}", yellow=True)
        reporter.write_line(line)
