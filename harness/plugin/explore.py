"""--hil-explore: replace the collected tests with one exploration per kernel (and mutant).

The explorations are the test functions of ``harness.plugin.explore_tests``, collected as a
module so pytest's own machinery parametrizes them (``--hil-kernel`` repeated: one item per
kernel; ``--hil-explore-mutant``: one per mutant) and xdist spreads the items over workers:
each worker explores its own kernels, with the seed, so runs are reproducible either way.
Summaries travel in the reports' user_properties, so the controller prints them under xdist.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SUMMARY_KEY = "hil_explore"


def exploring(config: pytest.Config) -> bool:
    return config.getoption("--hil-explore", None) is not None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not exploring(config):
        return
    from harness.plugin import explore_tests

    module = pytest.Module.from_parent(session, path=Path(explore_tests.__file__))
    collected = [node for node in module.collect() if isinstance(node, pytest.Item)]
    ceiling = explore_timeout(float(config.getoption("--hil-explore")))
    for item in collected:  # the run-wide pytest-timeout (600 s) would cut a longer run
        item.add_marker(pytest.mark.timeout(ceiling))
    items[:] = collected


#: Shrinking replays examples on the real system after the time bound: this much more at most
SHRINK_ALLOWANCE = 1800.0


def explore_timeout(seconds: float) -> float:
    """pytest-timeout's ceiling for one exploration item: its time bound plus shrinking."""
    return seconds + SHRINK_ALLOWANCE


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hil_explore_mutant" not in metafunc.fixturenames:
        return
    from harness.scenario.mutants import MUTANTS

    names: list[str] = []
    for name in metafunc.config.getoption("--hil-explore-mutant"):
        names += list(MUTANTS) if name == "all" else [name]
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        raise pytest.UsageError(
            f"--hil-explore-mutant: unknown {', '.join(unknown)}; known: all, {', '.join(MUTANTS)}"
        )
    params: list[str | None] = list(dict.fromkeys(names)) or [None]
    ids = [n or "explore" for n in params]
    metafunc.parametrize("hil_explore_mutant", params, ids=ids)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for key, value in report.user_properties:
        if key == SUMMARY_KEY:
            _SUMMARIES.append(str(value))


#: Summaries reported in this process (the controller's, under xdist).
_SUMMARIES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    summaries, _SUMMARIES[:] = list(_SUMMARIES), []
    if summaries:
        terminalreporter.write_sep("-", "hil exploration")
        for text in summaries:
            terminalreporter.write_line(text)
