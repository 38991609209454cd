"""What a run reports beyond pass/fail: the per-kernel/QEMU comparison and the run's environment.

Data travels on the test reports (attributes and user_properties), because under pytest-xdist
the items run in workers and only their reports reach the controller, which prints the table
and writes the allure environment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from harness.images.qemu_pkg import DEFAULT_QEMU
from harness.plugin.kernels import Comparison, KernelResult, Observation
from harness.plugin.variants import axes, variants

_RUN = pytest.StashKey["RunReport"]()
#: user_properties that describe the run (set by the guest factory) -> allure environment.
ENVIRONMENT_PROPERTIES = (
    "hil_kernel",
    "hil_qemu",
    "hil_qemu_destination",
    "hil_machine_type",
    "hil_accel",
    "hil_image",
)


def _axes(config: pytest.Config) -> str | None:
    """What this run compares (kernels, QEMUs, both), None when it compares nothing."""
    return axes(config.getoption("--hil-kernel", []), config.getoption("--hil-qemu", []))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Tag each report with its kernel/QEMU label, the test id without it, the kernel release
    and QEMU version it ran (those that vary), and the observations."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    label = _label_of(item)
    if label is None:
        return
    report.hil_kernel_id = label  # type: ignore[attr-defined]
    report.hil_test = item.name.replace(f"[{label}]", "").replace(f"-{label}]", "]")  # type: ignore[attr-defined]
    properties = dict(item.user_properties)
    versions = []
    if len(item.config.getoption("--hil-kernel", [])) > 1:
        versions.append(getattr(item, "hil_release", None) or properties.get("hil_kernel"))
    if len(item.config.getoption("--hil-qemu", [])) > 1:
        versions.append(properties.get("hil_qemu"))
    report.hil_release = ", ".join(str(v).split(" (")[0] for v in versions if v) or None  # type: ignore[attr-defined]
    report.hil_observations = [  # type: ignore[attr-defined]
        [o.step, o.values] for o in getattr(item, "hil_observations", [])
    ]


def _label_of(item: pytest.Item) -> str | None:
    """The kernel/QEMU label an item ran on, when the run compares several of either."""
    if _axes(item.config) is None:
        return None
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    kernel = params.get("hil_kernel", getattr(item, "hil_kernel", None))
    qemu = params.get("hil_qemu", getattr(item, "hil_qemu", None))
    kernels = item.config.getoption("--hil-kernel", [])
    qemus = item.config.getoption("--hil-qemu", [])
    for variant in variants(kernels, qemus):
        if variant.kernel == kernel and variant.qemu == qemu:
            return variant.label
    return None


class RunReport:
    """Registered per config; collects what reports carry where they arrive (the controller
    under xdist): the comparison table and the environment values."""

    def __init__(self) -> None:
        self.comparison = Comparison()
        self.environment: dict[str, set[str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name in ENVIRONMENT_PROPERTIES:
                self.environment.setdefault(name, set()).add(str(value))
        label = getattr(report, "hil_kernel_id", None)
        if label is None or not _decisive(report):
            return
        observations = [Observation(step, values) for step, values in report.hil_observations]
        self.comparison.add(
            report.hil_test, label, KernelResult(_outcome(report), report.hil_release, observations)
        )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RUN] = run = RunReport()
    config.pluginmanager.register(run, "hil-run-report")


def _decisive(report: pytest.TestReport) -> bool:
    """The report that decides the outcome: the call, or a setup that failed or skipped."""
    return report.when == "call" or (report.when == "setup" and not report.passed)


def _outcome(report: pytest.TestReport) -> str:
    if report.when == "setup" and report.failed:
        return "error"
    if hasattr(report, "wasxfail"):
        return "xfail" if report.skipped else "xpass"
    return report.outcome


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    run = terminalreporter.config.stash.get(_RUN, None)
    if run is None or not run.comparison.results:
        return
    compared = _axes(terminalreporter.config) or "kernels"
    title, table, summary = comparison_text(run.comparison, compared)
    terminalreporter.write_sep("=", title)
    terminalreporter.write_line(table)
    terminalreporter.write_line(summary)


def comparison_text(comparison: Comparison, compared: str) -> tuple[str, str, str]:
    """(title, table, summary line) of a comparison; `compared` says of what."""
    per = compared.replace("kernels", "kernel").replace("QEMUs", "QEMU")
    differing = sum(1 for row in comparison.rows()[1:] if row[-1])
    return (
        f"hil: results per {per}",
        comparison.render(),
        f"{differing} of {len(comparison.results)} tests differ between {compared} "
        "(RESULT DIFFERS: outcomes; observed: the first step/field whose settled value differs)",
    )


#: Each run (shard) writes its comparison next to its allure results under this pattern;
#: `python -m harness table DIR...` merges every shard's into one table.
COMPARISON_GLOB = "hil-comparison-*.json"


def write_comparison(directory: Path, config: pytest.Config) -> Path | None:
    run = config.stash.get(_RUN, None)
    compared = _axes(config)
    if run is None or not run.comparison.results or compared is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / COMPARISON_GLOB.replace("*", uuid.uuid4().hex)
    path.write_text(json.dumps({"compared": compared, **run.comparison.to_json()}))
    return path


def merged_table(directories: list[Path]) -> str:
    """One table from every shard's comparison file under `directories`."""
    shards = [
        json.loads(path.read_text())
        for directory in directories
        for path in sorted(directory.glob(COMPARISON_GLOB))
    ]
    if not shards:
        return f"no {COMPARISON_GLOB} under {', '.join(map(str, directories))}"
    compared = shards[0]["compared"]
    title, table, summary = comparison_text(Comparison.merged(shards), compared)
    return f"{title} ({len(shards)} shards)\n{table}\n{summary}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Allure's environment widget: kernels, QEMU, accel, image recipe of this run."""
    config = session.config
    directory = getattr(config.option, "allure_report_dir", None)
    if not directory or hasattr(config, "workerinput"):
        return
    write_allure_environment(Path(directory), environment_lines(config))
    write_comparison(Path(directory), config)


def environment_lines(config: pytest.Config) -> dict[str, str]:
    run = config.stash.get(_RUN, None)
    seen = run.environment if run is not None else {}
    lines = {name: ", ".join(sorted(values)) for name, values in sorted(seen.items())}
    kernels = config.getoption("--hil-kernel", [])
    lines["hil_kernel_specs"] = ", ".join(kernels) or recipe_kernel(config)
    qemus = config.getoption("--hil-qemu", None) or []
    lines["hil_qemu_specs"] = ", ".join(qemus) or f"{DEFAULT_QEMU} (default)"
    backend = str(config.getoption("--hil-backend", "qemu"))
    lines["hil_backend"] = backend
    lines["hil_behaviour"] = str(config.getoption("--hil-behaviour", "auto"))
    if "hil_kernel" not in lines and backend == "model" and not kernels:
        lines["hil_kernel"] = "none (model mode without --hil-kernel: default behaviour)"
    return lines


def recipe_kernel(config: pytest.Config) -> str:
    """The spec the image recipe boots when no --hil-kernel is given, named as such."""
    from harness.images.errors import ImageBuildError
    from harness.images.recipe import find_recipe, load_recipe

    name = str(config.getoption("--hil-image", "default"))
    try:
        kernel = load_recipe(find_recipe(name)).kernel
    except (ImageBuildError, OSError) as error:
        return f"the kernel of recipe {name} (unreadable: {error})"
    return f"{kernel} (recipe {name})"


def write_allure_environment(directory: Path, lines: dict[str, str]) -> None:
    """environment.properties (key = value; allure shows it on the report's overview)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{key} = {_escape(value)}\n" for key, value in lines.items())
    (directory / "environment.properties").write_text(text)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
