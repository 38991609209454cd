"""Wiring for this repository's own test runs only (an installed plugin does not need it)."""

from __future__ import annotations

import os

from hypothesis import settings

pytest_plugins = ["pytester"]

# CI runs must be reproducible: same examples every time, no deadline flakiness under load.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
