"""The harness's loggers: one per layer under "hil" (hil.images, hil.machine, hil.guest,
hil.backend, hil.scenario, hil.plugin), and how a command-line tool shows them.

Under pytest the plugin sets their level (harness.plugin.logs) and pytest shows them; the
`python -m` tools print their INFO lines with `print_progress`, without turning on other
libraries' logging.
"""

from __future__ import annotations

import logging
import sys

ROOT_LOGGER = "hil"


def print_progress(prefix: str = "[%(name)s]") -> None:
    """Print INFO and above of the hil loggers to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix} %(message)s"))
    logger = logging.getLogger(ROOT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
