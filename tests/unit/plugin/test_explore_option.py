"""--hil-explore replaces the collected tests with explorations (pytester, model mode)."""

from __future__ import annotations

import pytest

PLAIN = "name: plain\nsteps:\n  - reboot: {}\n"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    (pytester.mkdir("scenarios") / "plain.yaml").write_text(PLAIN)
    monkeypatch.setenv("HIL_CACHE_DIR", str(pytester.path / "cache"))  # the example database
    return pytester


def test_explore_runs_one_exploration_instead_of_the_tests(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--hil-backend=model", "--hil-explore=600", "--hil-explore-examples=5", "-q"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*hil exploration*", "explore?model-default?: * examples, * steps *", "  findings: none"]
    )


def test_mutant_hunt_finds_the_planted_rule_and_writes_it(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--hil-backend=model",
        "--hil-explore=600",
        "--hil-explore-mutant=wrong_error_text",
        "--hil-explore-out=found",
        "--hil-explore-seed=1",
        "-q",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["  finding: found/explore-model-default-mutant-*.yaml (*"])
    assert len(list((project.path / "found").glob("*.yaml"))) == 1
    assert list((project.path / "cache" / "explore-db").iterdir())


def test_unknown_mutant_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--hil-backend=model", "--hil-explore=1", "--hil-explore-mutant=x")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*unknown x; known: all, host_close_poll*"])


def test_a_long_exploration_is_not_cut_by_the_run_wide_timeout(project: pytest.Pytester) -> None:
    """Found by the 20-minute runs: pytest-timeout's 600 s (pyproject) killed a 1200 s
    exploration mid-shrink; each exploration item gets its time bound plus shrinking."""
    project.makeconftest(
        "def pytest_collection_finish(session):\n"
        "    for item in session.items:\n"
        "        print('ceiling', item.get_closest_marker('timeout').args[0])\n"
    )
    result = project.runpytest(
        "--hil-backend=model", "--hil-explore=1200", "--collect-only", "-q", "-s"
    )
    result.stdout.fnmatch_lines(["ceiling 3000.0"])
