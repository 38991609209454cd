"""The --hil-explore options (imported at plugin load: nothing from the harness layers here)."""

from __future__ import annotations

import pytest

DEFAULT_EXPLORE_SECONDS = 60.0
DEFAULT_EXPLORE_EXAMPLES = 100000


def add_explore_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil")
    group.addoption(
        "--hil-explore",
        nargs="?",
        type=float,
        const=DEFAULT_EXPLORE_SECONDS,
        default=None,
        metavar="SECONDS",
        help="instead of the collected tests, explore random step sequences on the model and "
        f"the real guest (or the model alone with --hil-backend=model) for SECONDS (default "
        f"{DEFAULT_EXPLORE_SECONDS:g}) per kernel; a disagreement is shrunk and written as a "
        "scenario file",
    )
    group.addoption(
        "--hil-explore-seed",
        type=int,
        default=0,
        metavar="N",
        help="exploration seed: the same seed, kernel and options explore the same sequences",
    )
    group.addoption(
        "--hil-explore-examples",
        type=int,
        default=DEFAULT_EXPLORE_EXAMPLES,
        metavar="N",
        help="stop exploring after N examples (sequences) even if time is left",
    )
    group.addoption(
        "--hil-explore-out",
        default="explore-findings",
        metavar="DIR",
        help="where findings are written as scenario files (default explore-findings/)",
    )
    group.addoption(
        "--hil-explore-mutant",
        action="append",
        default=[],
        metavar="NAME",
        help="TEST-ONLY: plant this wrong rule in the model (repeatable; 'all' for every one) "
        "and check that exploration finds it and shrinks it to at most 8 steps; with "
        "--hil-backend=model a correct model plays the real system",
    )
