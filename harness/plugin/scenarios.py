"""Collect YAML scenarios as pytest items and run them on the model and (optionally) QEMU.

One item per file (id = file stem), or one per file and kernel when several --hil-kernel
values are given (id = ``stem[kernel]``).  A file that fails validation becomes an item that
fails with the clean ``path:line:column: message`` text instead of a collection error, because
a collection error would stop pytest from running the other, valid, files.

Each item runs the model with its kernel's behaviour switches (``kernels.behaviour_for``) and
records what every step left on the system, so kernels can be compared step by step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.images.errors import ImageBuildError
from harness.model import Behaviour, VirtioSerialModel
from harness.plugin.kernels import Observation, behaviour_for, flatten, kernel_id
from harness.plugin.qemu_versions import behaviour_for_qemu
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
        kernels: list[str] = self.config.getoption("--hil-kernel", [])
        if len(kernels) <= 1:
            return [ScenarioItem.build(self, scenario, kernels[0] if kernels else None)]
        return [ScenarioItem.build(self, scenario, kernel, kernel_id(kernel)) for kernel in kernels]


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


@dataclass
class _KernelRunner(ScenarioRunner):
    """The runner with a kernel's behaviour switches in every model it builds (the boot model
    and a migration's destination), so the runner itself need not know about kernels.

    The switches are set just after the model's boot-time ports were added; the kernel-
    dependent switches (kernels.KERNEL_CHANGES) only matter after boot (console vtermnos of
    boot-time consoles are 1, 2, ... either way).
    """

    behaviour: Behaviour = field(default_factory=Behaviour)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "model" and isinstance(value, VirtioSerialModel):
            value.behaviour = self.behaviour
        super().__setattr__(name, value)


class ScenarioItem(pytest.Function):
    """A Function item so pytest resolves fixtures (the system factory) the usual way."""

    scenario: Scenario
    backend: str
    hil_kernel: str | None
    hil_kernel_id: str | None
    hil_release: str | None
    hil_observations: list[Observation]

    @classmethod
    def build(
        cls,
        parent: ScenarioFile,
        scenario: Scenario,
        kernel: str | None = None,
        kernel_label: str | None = None,
    ) -> ScenarioItem:
        backend = parent.config.getoption("--hil-backend", "qemu")
        available = _factory_available(parent)
        carrier = _needs_factory if backend == "qemu" and available else _needs_nothing
        name = parent.path.stem if kernel_label is None else f"{parent.path.stem}[{kernel_label}]"
        item = cls.from_parent(parent, name=name, callobj=carrier)
        item.scenario, item.backend = scenario, backend
        item.hil_kernel, item.hil_kernel_id = kernel, kernel_label
        item.hil_release, item.hil_observations = None, []
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
        runner = _KernelRunner(self.scenario, real, options, behaviour=self._behaviour())
        runner.step_context = self._observing(runner)
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

    def _behaviour(self) -> Behaviour:
        """The switches for this item's kernel and for the QEMU named by --hil-qemu (its
        `--version`, also in model mode; defaults if it cannot be run), or the defaults
        with --hil-behaviour=default."""
        self.hil_release = self._release()
        if self.config.getoption("--hil-behaviour", "auto") == "default":
            return Behaviour()
        from harness.plugin.fixtures import qemu_version

        qemu = qemu_version(self.config.getoption("--hil-qemu", "qemu-system-x86_64"))
        return behaviour_for(self.hil_release, behaviour_for_qemu(qemu))

    def _release(self) -> str | None:
        """The kernel release: from the booted image, or (model mode, kernel named) resolved
        without a build; None in model mode without --hil-kernel (defaults, no apt)."""
        image = self.funcargs.get("hil_image")  # set up with the backend's factory
        if image is not None:
            return str(image.kernel_version)
        if self.hil_kernel is None:
            return None
        try:
            return _model_mode_release(self.config, self.hil_kernel)
        except ImageBuildError as error:
            pytest.fail(f"kernel {self.hil_kernel}: {error}", pytrace=False)

    def _observing(self, runner: ScenarioRunner) -> Callable[[Step], AbstractContextManager[Any]]:
        """Allure step + the settled snapshot after each step (what the real system showed:
        a step only completes once the real snapshot equals this prediction)."""

        @contextmanager
        def context(step: Step) -> Iterator[None]:
            with _allure_step(step):
                yield
            label = f"step {step.index} ({step.label})"
            self.hil_observations.append(Observation(label, flatten(runner.model.snapshot())))

        return context

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: str | None = None
    ) -> str | Any:
        if excinfo.errisinstance((ScenarioFailure, FactoryUnavailable)):
            return f"{self.scenario.path}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"scenario {self.name}"


_RELEASES = pytest.StashKey[dict[str, str]]()


def _model_mode_release(config: pytest.Config, kernel: str) -> str:
    """Resolved once per process (apt resolution and the kernel package, both cached)."""
    from harness.images.builder import kernel_release

    releases = config.stash.setdefault(_RELEASES, {})
    if kernel not in releases:
        releases[kernel] = kernel_release(kernel, config.getoption("--hil-image", None))
    return releases[kernel]


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
