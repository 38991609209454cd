"""Live progress of a run through `logging`: one logger per layer under "hil" (harness.logs).

hil.machine (QEMU command lines, stops, migrations; every QMP command at DEBUG), hil.guest (boot
and ready times), hil.backend, hil.scenario (one line per step: index, kind, target),
hil.plugin and hil.images (downloads, unpacking, cached images). pytest shows them live with
`-o log_cli=true` and attaches them to failure reports ("Captured log").

Why set a level: Python's default (WARNING) would drop the INFO progress lines. The plugin
lets INFO through on "hil" only when the run chose no log level itself; with `--log-level`,
`--log-cli-level` (e.g. DEBUG for QMP) or `log_file_level`, pytest's choice governs.
"""

from __future__ import annotations

import logging

import pytest

from harness.logs import ROOT_LOGGER

PROGRESS_LEVEL = logging.INFO
_LEVEL_SETTINGS = ("log_level", "log_cli_level", "log_file_level")
_SAVED = pytest.StashKey[int]()


def configure(config: pytest.Config) -> None:
    """INFO on "hil" unless a log level was chosen for this run (restored by `unconfigure`)."""
    if any(config.getoption(name) or config.getini(name) for name in _LEVEL_SETTINGS):
        return
    logger = logging.getLogger(ROOT_LOGGER)
    config.stash[_SAVED] = logger.level
    logger.setLevel(PROGRESS_LEVEL)


def unconfigure(config: pytest.Config) -> None:
    if _SAVED in config.stash:
        logging.getLogger(ROOT_LOGGER).setLevel(config.stash[_SAVED])
