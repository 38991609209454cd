"""Kernel regression runs: per-kernel items, behaviour switches, the comparison table, xdist.

Model-mode runs (pytester, fake bzImages) prove the plumbing in seconds; the real-guest tests
boot the Debian 13 kernel with the Debian 12 userland and run scenarios on two xdist workers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.images.builder import default_cache_dir
from harness.model import Behaviour
from harness.plugin.fixtures import GuestPool
from harness.plugin.kernels import (
    Comparison,
    KernelResult,
    Observation,
    behaviour_for,
    kernel_id,
    release_tuple,
    switched,
)
from tests.scenario_files import one_port_scenario, write_scenarios
from tests.unit.images.conftest import fake_bzimage

ROOT = Path(__file__).resolve().parents[2]
TRIXIE = "debian:trixie/linux-image-cloud-amd64"
#: Read at import: the pytester fixture points HOME at its own directory during a test.
REAL_CACHE = default_cache_dir()
VTERMNO_REUSE = """\
name: vtermno reuse
steps:
  - hotplug: {name: c1, console: true}
  - hotplug: {name: c2, console: true}
  - unplug: c1
  - hotplug: {name: c3, console: true}
"""
PLAIN = one_port_scenario(
    "plain", "host_open: org.example.data", "check: {port: org.example.data, host_connected: true}"
)


@pytest.fixture
def two_fake_kernels(pytester) -> list[str]:
    write_scenarios(pytester, vtermno_reuse=VTERMNO_REUSE, plain=PLAIN)
    old = fake_bzimage(pytester.path / "vmlinuz-6.1.0-old", "6.1.0-old")
    new = fake_bzimage(pytester.path / "vmlinuz-6.12.0-new", "6.12.0-new")
    return [f"--hil-kernel={old}", f"--hil-kernel={new}"]


# ------------------------------------------------------------------ pure parts


def test_behaviour_follows_the_release():
    assert behaviour_for("6.1.0-56-cloud-amd64") == Behaviour()
    assert behaviour_for("6.12.117+deb13-cloud-amd64").console_vtermno_reuse is True
    assert behaviour_for("6.2.0") == Behaviour(console_vtermno_reuse=True)
    assert behaviour_for("file-bzImage") == Behaviour()
    assert behaviour_for(None) == Behaviour()
    assert switched(behaviour_for("7.0")) == {"console_vtermno_reuse": True}
    assert release_tuple("10.3-rc1") == (10, 3)


def test_kernel_ids_are_the_spec_with_paths_shortened():
    assert kernel_id(None) == "recipe"
    assert kernel_id(TRIXIE) == TRIXIE
    assert kernel_id("linux-image-cloud-amd64") == "linux-image-cloud-amd64"
    assert kernel_id("/k/vmlinuz-6.9") == "vmlinuz-6.9"
    assert kernel_id("/k/vmlinuz:/k/lib/modules/6.9/") == "vmlinuz:6.9"


def test_comparison_marks_outcome_and_observation_differences():
    table = Comparison()
    seen = [Observation("step 1 (hotplug c)", {"c guest.console_vtermno": "3"})]
    other = [Observation("step 1 (hotplug c)", {"c guest.console_vtermno": "1"})]
    table.add("same", "a", KernelResult("passed", "6.1.0"))
    table.add("same", "b", KernelResult("passed", "6.12.0"))
    table.add("outcome", "a", KernelResult("passed"))
    table.add("outcome", "b", KernelResult("failed"))
    table.add("observed", "a", KernelResult("passed", None, seen))
    table.add("observed", "b", KernelResult("passed", None, other))
    rows = {row[0]: row for row in table.rows()}
    assert rows["test"][1:3] == ["a (6.1.0)", "b (6.12.0)"]
    assert rows["same"][-1] == ""
    assert rows["outcome"][-1] == "RESULT DIFFERS"
    assert rows["observed"][-1] == "observed: step 1 (hotplug c): c guest.console_vtermno 3 vs 1"
    assert "RESULT DIFFERS" in table.render()


# ------------------------------------------------------------------ model mode (pytester)


def test_several_kernels_run_each_scenario_per_kernel_and_show_the_table(
    pytester, two_fake_kernels
):
    result = pytester.runpytest("--hil-backend=model", *two_fake_kernels, "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*vtermno_reuse.yaml::vtermno_reuse[[]vmlinuz-6.1.0-old[]] PASSED*",
            "*vtermno_reuse.yaml::vtermno_reuse[[]vmlinuz-6.12.0-new[]] PASSED*",
            "*hil: results per kernel*",
            "test*vmlinuz-6.1.0-old (6.1.0-old)*vmlinuz-6.12.0-new (6.12.0-new)*differs",
            "plain*passed*passed",
            "vtermno_reuse*passed*passed*observed: step 4 (hotplug c3): "
            "c3 guest.console_vtermno 3 vs 1",
            "1 of 2 tests differ between kernels*",
        ]
    )


def test_default_behaviour_option_uses_the_defaults_for_every_kernel(pytester, two_fake_kernels):
    result = pytester.runpytest("--hil-backend=model", "--hil-behaviour=default", *two_fake_kernels)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["0 of 2 tests differ between kernels*"])


def test_one_kernel_keeps_plain_ids_and_prints_no_table(pytester, two_fake_kernels):
    result = pytester.runpytest("--hil-backend=model", two_fake_kernels[1], "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*vtermno_reuse.yaml::vtermno_reuse PASSED*"])
    assert "results per kernel" not in result.stdout.str()


def test_the_table_survives_xdist_workers(pytester, two_fake_kernels):
    """Reports carry kernel, release and observations from the workers to the controller."""
    result = pytester.runpytest_subprocess("--hil-backend=model", *two_fake_kernels, "-n", "2")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["vtermno_reuse*passed*passed*observed: step 4 (hotplug c3)*3 vs 1"]
    )


def test_allure_environment_names_the_kernels(pytester, two_fake_kernels, tmp_path):
    out = tmp_path / "allure"
    result = pytester.runpytest("--hil-backend=model", *two_fake_kernels, f"--alluredir={out}")
    result.assert_outcomes(passed=4)
    text = (out / "environment.properties").read_text()
    assert "hil_kernel_specs = " in text and "vmlinuz-6.12.0-new" in text
    assert "hil_backend = model" in text


# ------------------------------------------------------------------ real guests


@pytest.mark.qemu
def test_debian13_kernel_boots_with_the_debian12_userland(
    hil_images, hil_settings, hil_accel, tmp_path
):
    """6.12 from trixie (modules .ko.xz under usr/lib/modules; virtio_console built in)."""
    image = hil_images.get(TRIXIE)
    assert image.kernel_version.startswith("6.12.")
    pool = GuestPool(hil_settings, image, hil_accel, tmp_path)  # KVM or TCG: once per run
    try:
        guest = pool.create("trixie")
        assert guest.kernel_release == image.kernel_version
        assert guest.run("uname -r").output.strip() == image.kernel_version
        # the IDA behind console vtermno reuse (v6.2+), visible with CONFIG_KALLSYMS_ALL
        assert "vtermno_ida" in guest.run("grep -w vtermno_ida /proc/kallsyms").output
    finally:
        pool.shutdown_all()


@pytest.mark.qemu
def test_xdist_workers_share_one_image_build_and_never_collide(pytester, tmp_path, monkeypatch):
    """Two workers, four real guests at once, a cold image cache: one build, all pass."""
    cache = tmp_path / "cache"
    cache.mkdir()
    real = REAL_CACHE
    for shared in ("debs", "kernels"):  # downloads are not what this test is about
        (cache / shared).symlink_to(real / shared)
    shutil.copytree(real / "resolved", cache / "resolved")
    write_scenarios(pytester, **{f"plain{index}": PLAIN for index in range(4)})
    monkeypatch.setenv("HIL_CACHE_DIR", str(cache))  # runpytest_subprocess inherits it
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--hil-accel=tcg")
    result.assert_outcomes(passed=4)
    assert len(list((cache / "images").iterdir())) == 1
    assert len(list((cache / "userland").iterdir())) == 1
    assert not list(cache.rglob("*.partial"))
