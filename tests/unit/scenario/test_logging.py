"""Live progress: with pytest's live logging on, every scenario step shows as it runs."""

from __future__ import annotations

import pytest

from tests.scenario_files import one_port_scenario, write_scenarios

SCENARIO = one_port_scenario(
    "two steps", "host_open: org.example.data", "guest_open: org.example.data", "reboot: {}"
)


@pytest.mark.parametrize(
    "live",
    [["-o", "log_cli=true", "--log-cli-level=INFO"], ["-o", "log_cli=true"]],
    ids=["with-level", "log-cli-only"],
)
def test_live_log_shows_one_line_per_step(pytester, live):
    write_scenarios(pytester, two_steps=SCENARIO)
    result = pytester.runpytest("--hil-backend=model", "-p", "no:cacheprovider", *live)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*live log call*",
            "INFO *hil.scenario*two steps: step 1 host_open org.example.data",
            "INFO *hil.scenario*two steps: step 2 guest_open org.example.data",
            "INFO *hil.scenario*two steps: step 3 reboot",
        ]
    )


def test_without_live_logging_the_output_stays_quiet(pytester):
    write_scenarios(pytester, two_steps=SCENARIO)
    result = pytester.runpytest("--hil-backend=model", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "hil.scenario" not in result.stdout.str()
