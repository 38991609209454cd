"""qemu mode with the fixtures plugin blocked: the scenario says how to proceed (pytester)."""

from __future__ import annotations

import pytest

PLAIN = "name: plain\nsteps:\n  - reboot: {}\n"


def test_blocked_fixtures_plugin_says_use_model_mode(pytester: pytest.Pytester) -> None:
    (pytester.mkdir("scenarios") / "plain.yaml").write_text(PLAIN)
    result = pytester.runpytest("-p", "no:harness.plugin.fixtures", "-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*hil_system_factory fixture not available*--hil-backend=model*"])
    assert pytester.runpytest("-p", "no:harness.plugin.fixtures", "--hil-backend=model").ret == 0
