"""The plugin as another project gets it: built, installed into a fresh venv, used from there.

Why: the plugin once worked only inside its own checkout (recipes and the guest's init files
were missing from the wheel, the default recipe was looked up next to the checkout). Here the
checkout's files (tracked and new, as git sees them) are copied to a temporary directory, built
into an sdist and a wheel built from that sdist (`python -m build`), the wheel is installed into
a fresh venv outside the checkout (dependencies from the package index, through pip's cache),
and `fixtures/userproject/` (scenarios, a Python test, a recipe of its own) runs there with that
venv's pytest: its scenarios on the model, its Python test on one real guest. Nothing of the
checkout is importable there: no PYTHONPATH, the working directory is the copied project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

from harness.images.builder import build_image

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parents[2]
USER_PROJECT = ROOT / "fixtures" / "userproject"
# Environment that would let the fresh venv see the checkout or this run's plugins.
LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")


@dataclass(frozen=True)
class Installed:
    work: Path
    sdist: Path
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _run(argv: list[str | Path], what: str, timeout: float, cwd: Path) -> str:
    """Run a step of the user's workflow; fail naming the step, with its output."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV and "COV_CORE" not in k}
    try:
        result = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{what}: no result within {timeout:.0f} s\n{error.stdout}\n{error.stderr}")
    if result.returncode != 0:
        pytest.fail(f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _copy_checkout(target: Path) -> Path:
    """The files git would commit now (tracked and untracked-not-ignored), links kept."""
    listing = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        "listing the checkout's files",
        60,
        ROOT,
    )
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if not os.path.lexists(source):  # deleted in the worktree, still in the index
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    assert not work.is_relative_to(ROOT)
    source = _copy_checkout(work / "source")
    dist = work / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, source], "python -m build", 600, work)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], "creating the venv", 120, work)
    _run(
        [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", wheel],
        "pip install of the wheel into the fresh venv",
        600,
        work,
    )
    return Installed(work, sdist, wheel, venv)


def _shipped_data() -> set[str]:
    """What the plugin reads at run time besides its modules, as paths inside the package."""
    init = {f"harness/images/init/{p.name}" for p in (ROOT / "harness/images/init").iterdir()}
    recipes = {f"harness/images/recipes/{p.name}" for p in (ROOT / "images").glob("*.yaml")}
    agent = {f"harness/guest/agent/{p.name}" for p in (ROOT / "harness/guest/agent").glob("*.py")}
    return init | recipes | agent | {"harness/py.typed"}


def test_wheel_and_sdist_carry_what_the_plugin_reads(installed: Installed) -> None:
    wheel = set(zipfile.ZipFile(installed.wheel).namelist())
    with tarfile.open(installed.sdist) as sdist:
        top = installed.sdist.name.removesuffix(".tar.gz")
        in_sdist = {name.removeprefix(f"{top}/") for name in sdist.getnames()}
    assert "harness/images/recipes/default.yaml" in _shipped_data()
    assert _shipped_data() - wheel == set()
    assert _shipped_data() - in_sdist == set()
    entry_points = next(n for n in wheel if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(installed.wheel).read(entry_points).decode()
    assert "[pytest11]\nhil = harness.plugin" in text


def test_the_venv_imports_the_installed_plugin(installed: Installed, tmp_path: Path) -> None:
    where = _run(
        [installed.python, "-c", "import harness; print(harness.__file__)"],
        "importing harness in the fresh venv",
        60,
        tmp_path,
    )
    assert Path(where.strip()).is_relative_to(installed.venv)


def test_the_installed_image_builder_reuses_the_checkouts_image(
    installed: Installed, tmp_path: Path
) -> None:
    """Same recipe, init files and agent -> same cache key: no rebuild in the fresh venv."""
    ours = build_image()
    output = _run(
        [installed.python, "-m", "harness.images", "build"],
        "python -m harness.images build in the fresh venv",
        600,
        tmp_path,
    )
    assert Path(output.strip().splitlines()[-1]) == ours.directory


def _user_pytest(
    installed: Installed, name: str, args: list[str], pytestconfig: pytest.Config
) -> dict[str, str]:
    """Run the user project's pytest; the outcome of every test case by id."""
    project = installed.work / f"userproject-{name}"
    if not project.exists():
        shutil.copytree(USER_PROJECT, project)
    junit = project / "junit.xml"
    command = [
        installed.venv / "bin" / "pytest",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        f"--basetemp={project / 'tmp'}",
        f"--hil-accel={pytestconfig.getoption('--hil-accel')}",
        f"--hil-qemu={pytestconfig.getoption('--hil-qemu')}",
        f"--hil-boot-timeout={pytestconfig.getoption('--hil-boot-timeout')}",
    ]
    _run(
        [*command, *args],
        f"the user project's pytest {' '.join(args)}",
        600,
        project,
    )
    outcomes = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        verdicts = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name", "")] = verdicts[0] if verdicts else "passed"
    return outcomes


def test_user_scenarios_run_on_the_model_with_a_recipe_of_their_own(
    installed: Installed, pytestconfig: pytest.Config
) -> None:
    """Model mode; a named kernel makes the plugin read the user's recipe (found by path)."""
    outcomes = _user_pytest(
        installed,
        "model",
        [
            "scenarios",
            "--hil-backend=model",
            "--hil-image=images/ours.yaml",
            "--hil-kernel=linux-image-cloud-amd64",
        ],
        pytestconfig,
    )
    assert outcomes == {"host_to_guest": "passed", "hotplug_ours": "passed"}


def test_user_python_test_boots_a_real_guest(
    installed: Installed, pytestconfig: pytest.Config
) -> None:
    outcomes = _user_pytest(installed, "qemu", ["tests"], pytestconfig)
    assert outcomes == {"test_our_channel_round_trip": "passed"}
