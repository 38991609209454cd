"""Allure shows a scenario as its YAML says (title, description, marks) and the run's
environment with real values (pytester, model mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.images.recipe import find_recipe, load_recipe
from tests.scenario_files import write_scenarios
from tests.unit.images.conftest import fake_bzimage

TITLED = """\
name: "host data {waits} for the guest"
description: why this case matters
marks: [slow]
steps:
  - reboot: {}
"""
BARE = "name: bare\nsteps:\n  - reboot: {}\n"


def _results(directory: Path) -> dict[str, dict]:
    reports = [json.loads(p.read_text()) for p in directory.glob("*-result.json")]
    return {report["fullName"].rsplit("#", 1)[-1]: report for report in reports}


def _environment(directory: Path) -> dict[str, str]:
    lines = (directory / "environment.properties").read_text().splitlines()
    return dict(line.split(" = ", 1) for line in lines)


@pytest.fixture
def scenarios(pytester: pytest.Pytester) -> None:
    write_scenarios(pytester, titled=TITLED, bare=BARE)


def test_title_description_and_tags_come_from_the_yaml(pytester, scenarios):
    out = pytester.path / "allure"
    result = pytester.runpytest("--hil-backend=model", f"--alluredir={out}")
    result.assert_outcomes(passed=2)
    reports = _results(out)
    titled, bare = reports["titled"], reports["bare"]
    assert titled["name"] == "host data {waits} for the guest"
    assert titled["description"] == "why this case matters"
    assert {"name": "tag", "value": "slow"} in titled["labels"]
    assert bare["name"] == "bare"
    assert "description" not in bare or not bare["description"]
    assert not [label for label in bare["labels"] if label["name"] == "tag"]
    text = "".join(p.read_text() for p in out.glob("*-result.json"))
    assert "Signature carrier" not in text


def test_each_kernel_gets_its_own_title(pytester, scenarios):
    out = pytester.path / "allure"
    old = fake_bzimage(pytester.path / "vmlinuz-old", "6.1.0-old")
    new = fake_bzimage(pytester.path / "vmlinuz-new", "6.12.0-new")
    result = pytester.runpytest(
        "--hil-backend=model", f"--hil-kernel={old}", f"--hil-kernel={new}", f"--alluredir={out}"
    )
    result.assert_outcomes(passed=4)
    names = sorted(json.loads(p.read_text())["name"] for p in out.glob("*-result.json"))
    assert names == [
        "bare [vmlinuz-new]",
        "bare [vmlinuz-old]",
        "host data {waits} for the guest [vmlinuz-new]",
        "host data {waits} for the guest [vmlinuz-old]",
    ]
    environment = _environment(out)
    assert environment["hil_kernel"] == "6.1.0-old, 6.12.0-new"
    assert environment["hil_kernel_specs"] == f"{old}, {new}"


def test_environment_without_a_kernel_names_the_recipe_kernel(pytester, scenarios):
    out = pytester.path / "allure"
    pytester.runpytest("--hil-backend=model", f"--alluredir={out}").assert_outcomes(passed=2)
    environment = _environment(out)
    recipe_kernel = load_recipe(find_recipe("default")).kernel
    assert environment["hil_kernel_specs"] == f"{recipe_kernel} (recipe default)"
    assert environment["hil_backend"] == "model"
    assert environment["hil_behaviour"] == "auto"
    assert environment["hil_kernel"].startswith("none (model mode")
    assert "recipe's" not in (out / "environment.properties").read_text()


def test_environment_in_model_mode_names_the_release_of_the_kernel(pytester, scenarios):
    out = pytester.path / "allure"
    kernel = fake_bzimage(pytester.path / "vmlinuz-one", "6.9.0-envtest")
    result = pytester.runpytest(
        "--hil-backend=model", f"--hil-kernel={kernel}", f"--alluredir={out}"
    )
    result.assert_outcomes(passed=2)
    environment = _environment(out)
    assert environment["hil_kernel"] == "6.9.0-envtest"
    assert environment["hil_kernel_specs"] == str(kernel)
