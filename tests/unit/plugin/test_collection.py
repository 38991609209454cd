"""Which YAML files become scenario items (pytester, model mode: no QEMU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.plugin.scenarios import is_scenario_file, top_level_keys

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = "name: {name}\nsteps:\n  - reboot: {{}}\n"
#: A CI config: `name:` at the top, `steps:` only nested under a job.
WORKFLOW = """\
name: nightly
on: {schedule: [{cron: "17 2 * * *"}]}
jobs:
  kernels:
    runs-on: [self-hosted]
    steps:
      - uses: actions/checkout@v4
"""

#: Google Cloud Build: top-level `steps:` beside keys no scenario has.
CLOUD_BUILD = "steps:\n  - name: gcr.io/x\noptions: {machineType: E2}\ntimeout: 60s\n"


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def cases(pytester: pytest.Pytester) -> Path:
    """A folder not named `scenarios` with scenarios, a broken one and unrelated YAML."""
    root = pytester.path
    _write(root, "cases/first.yaml", SCENARIO.format(name="first"))
    _write(root, "cases/deeper/second.yml", SCENARIO.format(name="second"))
    _write(root, "cases/broken.yaml", "name: broken\nsteps:\n  - reboto: {}\n")
    shutil.copy(ROOT / "images" / "default.yaml", root / "cases" / "recipe.yaml")
    _write(root, "cases/workflow.yml", WORKFLOW)
    _write(root, "cases/.drone.yml", "kind: pipeline\nname: x\nsteps:\n  - name: build\n")
    _write(root, "cases/notes.txt", SCENARIO.format(name="not yaml"))
    return root / "cases"


def test_a_named_folder_collects_its_scenarios_by_their_keys(pytester, cases):
    result = pytester.runpytest("--hil-backend=model", "cases", "--collect-only", "-q")
    ids = sorted(line for line in result.outlines if "::" in line)
    assert ids == [
        "cases/broken.yaml::broken",
        "cases/deeper/second.yml::second",
        "cases/first.yaml::first",
    ]


def test_a_broken_scenario_in_a_named_folder_fails_with_its_line_and_the_others_run(
    pytester, cases
):
    result = pytester.runpytest("--hil-backend=model", "cases", "-rf")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["cases/broken.yaml:3:5: *reboto*"])


def test_nothing_collected_lists_the_yaml_passed_over_and_the_rule(pytester):
    _write(pytester.path, "cases/recipe.yaml", "name: default\nkernel: x\n")
    _write(pytester.path, "cases/cloudbuild.yaml", CLOUD_BUILD)
    result = pytester.runpytest("--hil-backend=model", "cases")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(
        [
            "*hil: YAML files not collected as scenarios*",
            "cases/cloudbuild.yaml: no top-level name:, and keys that are no scenario keys: "
            "options, timeout",
            "cases/recipe.yaml: no top-level steps:",
            "a scenario file has name: and steps: at its top level*",
        ]
    )


def test_a_near_miss_is_named_even_when_other_scenarios_run(pytester, cases):
    _write(pytester.path, "cases/cloudbuild.yaml", CLOUD_BUILD)
    result = pytester.runpytest("--hil-backend=model", "cases")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "cases/cloudbuild.yaml: no top-level name:" in out
    for other in ("recipe.yaml", "workflow.yml", ".drone.yml"):  # not near misses
        assert other not in out


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("name: typo\nstepz:\n  - reboot: {}\n", "2:1: *'stepz'*\n*did you mean 'steps'*"),
        ("nmae: typo\nsteps:\n  - reboot: {}\n", "1:1: *'nmae'*\n*did you mean 'name'*"),
        ("steps:\n  - reboot: {}\n", "1:1: *missing*'name'*"),
    ],
)
def test_a_misspelt_scenario_is_collected_and_says_what_to_fix(pytester, cases, text, error):
    _write(pytester.path, "cases/typo.yaml", text)
    result = pytester.runpytest("--hil-backend=model", "cases")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(f"cases/typo.yaml:{error}".splitlines())


def test_without_a_path_only_scenarios_folders_are_read(pytester, cases):
    _write(pytester.path, "scenarios/shipped.yaml", SCENARIO.format(name="shipped"))
    result = pytester.runpytest("--hil-backend=model", "--collect-only", "-q")
    assert [line for line in result.outlines if "::" in line] == ["scenarios/shipped.yaml::shipped"]


def test_testpaths_count_as_named_folders(pytester, cases):
    pytester.makeini("[pytest]\ntestpaths = cases\n")
    result = pytester.runpytest("--hil-backend=model")
    result.assert_outcomes(passed=2, failed=1)


def test_a_file_named_itself_is_collected_whatever_its_keys(pytester, cases):
    result = pytester.runpytest("--hil-backend=model", "cases/recipe.yaml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["cases/recipe.yaml:*unknown key*"])


def test_top_level_keys_are_those_at_column_zero(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        '# name: in a comment\n"name": quoted\nmachine:\n  steps: nested\n'
        "'steps':\n  - reboot: {}\nurl: http://x\n"
    )
    assert top_level_keys(path) == {"name", "machine", "steps", "url"}
    path.write_bytes(b"name: \xff\nsteps: []\n")  # not UTF-8: still recognised, then reported
    assert top_level_keys(path) == {"name", "steps"}


@pytest.mark.parametrize(
    ("keys", "scenario"),
    [
        ({"name", "steps"}, True),
        ({"name", "steps", "jobs"}, True),  # both scenario keys outweigh an unknown one
        ({"steps"}, True),  # name missing: collected, reported
        ({"name", "stepz", "machine"}, True),
        ({"nmae", "description", "steps"}, True),
        ({"name", "description", "kernel", "modules"}, False),  # image recipe
        ({"name", "on", "jobs"}, False),  # GitHub workflow
        ({"steps", "options", "timeout"}, False),  # Cloud Build
        ({"stages", "build-job"}, False),  # GitLab CI
        ({"name", "description", "marks"}, False),  # no steps at all
        (set(), False),
    ],
)
def test_which_keys_make_a_scenario(keys, scenario):
    assert is_scenario_file("x.yaml", frozenset(keys)) is scenario
    assert is_scenario_file(".x.yaml", frozenset(keys)) is False
