"""Fixtures shared by the plugin's pytester tests."""

from __future__ import annotations

import pytest

from tests.scenario_files import PLAIN, write_scenarios


@pytest.fixture
def two_scenarios(pytester: pytest.Pytester) -> None:
    """scenarios/one.yaml and scenarios/two.yaml: two items that pass in model mode."""
    write_scenarios(pytester, one=PLAIN, two=PLAIN)
