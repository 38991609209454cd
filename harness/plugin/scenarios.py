"""Collect YAML scenarios as pytest items and run them on the model and (optionally) QEMU.

One item per file (id = file stem).  A file that fails validation becomes an item that fails
with the clean ``path:line:column: message`` text instead of a collection error, because a
collection error would stop pytest from running the other, valid, files.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from harness.scenario.runner import RunnerOptions, ScenarioFailure, ScenarioRunner
from harness.scenario.schema import Scenario, ScenarioError, Step, load_scenario
from harness.scenario.system import RealSystem

FACTORY_FIXTURE = "hil_system_factory"
SCENARIO_SUFFIXES = (".yaml", ".yml")

try:  # allure is a dependency, but the runner must not need it
    import allure
except ImportError:  # pragma: no cover
    allure = None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in SCENARIO_SUFFIXES:
        return None
    if _under_scenarios_dir(parent.config, file_path) or _named_explicitly(
        parent.config, file_path
    ):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def _under_scenarios_dir(config: pytest.Config, path: Path) -> bool:
    try:
        parts = path.relative_to(config.rootpath).parts
    except ValueError:
        parts = path.parts
    return "scenarios" in parts[:-1]


def _named_explicitly(config: pytest.Config, path: Path) -> bool:
    base = config.invocation_params.dir
    for arg in config.invocation_params.args:
        candidate = Path(str(arg).split("::", 1)[0])
        if not candidate.is_absolute():
            candidate = base / candidate
        if candidate.resolve() == path.resolve():
            return True
    return False


def _display_path(config: pytest.Config, path: Path) -> str:
    try:
        return str(path.relative_to(config.invocation_params.dir))
    except ValueError:
        return str(path)


class ScenarioFile(pytest.File):
    def collect(self) -> list[pytest.Item]:
        try:
            scenario = load_scenario(
                _display_path(self.config, self.path) if self.path.exists() else self.path
            )
        except ScenarioError as error:
            return [InvalidScenario.from_parent(self, name=self.path.stem, error=error)]
        return [ScenarioItem.build(self, scenario)]


class InvalidScenario(pytest.Item):
    """Fails with the validation error: reported per file, the other files still run."""

    def __init__(self, *, error: ScenarioError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise self.error

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: str | None = None
    ) -> str:
        return self.error.render()

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.error.line - 1, f"invalid scenario {self.name}"


class FactoryUnavailable(Exception):
    """qemu mode without the backend's fixture: say how to proceed instead of a traceback."""


def _needs_nothing() -> None:
    """Signature carrier: model mode requests no fixtures, so nothing boots."""


def _needs_factory(hil_system_factory: Callable[[], RealSystem]) -> None:
    """Signature carrier: qemu mode gets the backend's factory through pytest's fixtures."""


class ScenarioItem(pytest.Function):
    """A Function item so pytest resolves fixtures (the system factory) the usual way."""

    scenario: Scenario
    backend: str

    @classmethod
    def build(cls, parent: ScenarioFile, scenario: Scenario) -> ScenarioItem:
        backend = parent.config.getoption("--hil-backend", "qemu")
        available = _factory_available(parent)
        carrier = _needs_factory if backend == "qemu" and available else _needs_nothing
        item = cls.from_parent(parent, name=parent.path.stem, callobj=carrier)
        item.scenario, item.backend = scenario, backend
        for mark in scenario.marks:
            item.add_marker(mark)
        if backend == "qemu":
            item.add_marker("qemu")
        return item

    def runtest(self) -> None:
        real = None
        if self.backend == "qemu":
            factory = self.funcargs.get(FACTORY_FIXTURE)
            if factory is None:
                raise FactoryUnavailable(
                    f"{FACTORY_FIXTURE} fixture not available: the QEMU backend is not "
                    "installed in this run; use --hil-backend=model to run on the model alone"
                )
            real = factory()
        options = RunnerOptions(settle_timeout=self.config.getoption("--hil-settle-timeout"))
        runner = ScenarioRunner(self.scenario, real, options)
        runner.step_context = _allure_step
        try:
            runner.run()
        except ScenarioFailure as failure:
            _attach_failure(failure, real)
            raise
        except BaseException:
            _attach_artifacts(real)
            raise
        finally:
            if real is not None:
                real.stop()

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: str | None = None
    ) -> str | Any:
        if excinfo.errisinstance((ScenarioFailure, FactoryUnavailable)):
            return f"{self.scenario.path}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"scenario {self.name}"


def _factory_available(node: pytest.Collector) -> bool:
    """Whether any plugin or conftest visible from ``node`` defines the factory fixture."""
    manager = node.session._fixturemanager
    return bool(manager.getfixturedefs(FACTORY_FIXTURE, node))


def _allure_step(step: Step) -> AbstractContextManager[Any]:
    if allure is None:
        return nullcontext()
    return allure.step(f"step {step.index}: {step.label}")


def _attach(text: str, name: str) -> None:
    if allure is not None and text:
        allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)


def _attach_failure(failure: ScenarioFailure, real: RealSystem | None) -> None:
    """The diff always (model mode too); logs and console excerpts when a real system ran."""
    _attach(f"{failure}", "diff")
    if failure.console:
        _attach("\n".join(failure.console), "console problems")
    _attach_artifacts(real)


def _attach_artifacts(real: RealSystem | None) -> None:
    if real is None:
        return
    try:
        artifacts = real.artifacts()
    except Exception as error:  # the failure report matters more than a missing log
        _attach(f"artifacts() failed: {error!r}", "artifacts error")
        return
    for name, text in artifacts.items():
        _attach(text, name)
