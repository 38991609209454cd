"""Collect YAML scenarios as pytest items and run them on the model and (optionally) QEMU.

One item per file (id = file stem), or one per file and kernel when several --hil-kernel
values are given (id = ``stem[kernel]``).  A file that fails validation becomes an item that
fails with the clean ``path:line:column: message`` text instead of a collection error, because
a collection error would stop pytest from running the other, valid, files.

Each item runs the model with its kernel's behaviour switches (``kernels.behaviour_for``) and
records what every step left on the system, so kernels can be compared step by step.
"""

from __future__ import annotations

import difflib
import re
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import HarnessError, NotApplicable
from harness.images.errors import ImageBuildError
from harness.model import Behaviour
from harness.plugin.kernels import Observation, flatten
from harness.plugin.qemu_versions import QemuBug, known_qemu_bug
from harness.plugin.variants import NO_VARIANT, Variant, variants
from harness.scenario.runner import RunnerOptions, ScenarioFailure, ScenarioRunner
from harness.scenario.schema import Scenario, ScenarioError, Step, load_scenario
from harness.scenario.system import RealSystem

FACTORY_FIXTURE = "hil_system_factory"
FIXTURES_PLUGIN = "harness.plugin.fixtures"  # the module that defines FACTORY_FIXTURE
SCENARIO_SUFFIXES = (".yaml", ".yml")

try:  # allure is a dependency, but the runner must not need it
    import allure
except ImportError:  # pragma: no cover
    allure = None  # type: ignore[assignment]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Which YAML files are scenarios: see `is_scenario_file` (README: Writing scenarios)."""
    if file_path.suffix not in SCENARIO_SUFFIXES:
        return None
    config = parent.config
    if _under_scenarios_dir(config, file_path) or _named_explicitly(config, file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    if _under_named_dir(config, file_path):
        keys = top_level_keys(file_path)
        if is_scenario_file(file_path.name, keys):
            return ScenarioFile.from_parent(parent, path=file_path)
        config.stash.setdefault(_PASSED_OVER, []).append((file_path, keys))
    return None


#: Top-level keys that make a YAML file under a named directory a scenario.
SCENARIO_KEYS = frozenset({"name", "steps"})
#: The keys a scenario's top level may have (the Scenario fields, less where it was read).
_ALL_KEYS = tuple(f.name for f in fields(Scenario) if f.name != "path")
_TOP_LEVEL_KEY = re.compile(
    r"""^(?:"([^"\n]*)"|'([^'\n]*)'|([A-Za-z_][\w.-]*))  # key at column 0: "q", 'q' or plain
    [ \t]*:(?:[ \t]|$)                                   # then the colon of a mapping key""",
    re.VERBOSE,
)
_PASSED_OVER = pytest.StashKey[list[tuple[Path, frozenset[str]]]]()


def top_level_keys(path: Path) -> frozenset[str]:
    """Keys written at column 0 (`key:`) in a YAML file: its top-level mapping's keys.

    Read as text, not parsed: a scenario with a YAML mistake must still be recognised (and
    then fail with its file:line), and unrelated YAML must never fail to load here.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    found = set()
    for line in text.splitlines():
        match = _TOP_LEVEL_KEY.match(line)
        if match:
            found.add(next(group for group in match.groups() if group is not None))
    return frozenset(found)


def is_scenario_file(name: str, keys: frozenset[str]) -> bool:
    """Whether a YAML file under a named directory is a scenario, from its top-level keys.

    Either it has both `name:` and `steps:`, or every key is a scenario key or a misspelling
    of one (`stepz:`, `nmae:`) and one of them is `steps` or spells it: a scenario with a typo
    is collected and then fails with file:line and a did-you-mean, while other YAML is left
    alone: image recipes (no steps), CI configs (steps nested under jobs, or beside keys such
    as `pool:`/`options:`). Hidden files (.drone.yml) never are.
    """
    if name.startswith("."):
        return False
    if keys >= SCENARIO_KEYS:
        return True
    spelled = {key: _spelling_of(key) for key in keys}
    return "steps" in spelled.values() and None not in spelled.values()


def _spelling_of(key: str) -> str | None:
    close = difflib.get_close_matches(key, _ALL_KEYS, n=1, cutoff=0.6)
    return close[0] if close else None


def _under_scenarios_dir(config: pytest.Config, path: Path) -> bool:
    try:
        parts = path.relative_to(config.rootpath).parts
    except ValueError:
        parts = path.parts
    return "scenarios" in parts[:-1]


def _argument_paths(config: pytest.Config) -> list[Path]:
    """The paths given on the command line (or by `testpaths`), resolved; not the implicit
    current directory, so an installed plugin never reads a project's YAML uninvited."""
    if config.args_source == pytest.Config.ArgsSource.INVOCATION_DIR:
        return []
    base = config.invocation_params.dir
    paths = []
    for arg in config.args:
        candidate = Path(str(arg).split("::", 1)[0])
        paths.append((candidate if candidate.is_absolute() else base / candidate).resolve())
    return paths


def _named_explicitly(config: pytest.Config, path: Path) -> bool:
    return path.resolve() in _argument_paths(config)


def _under_named_dir(config: pytest.Config, path: Path) -> bool:
    resolved = path.resolve()
    return any(
        directory.is_dir() and resolved.is_relative_to(directory)
        for directory in _argument_paths(config)
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Say which YAML files were passed over and why: a near miss (`_near_miss`) always,
    every file when nothing was collected at all (`name:` alone is too common in other YAML,
    image recipes included, to be a near miss)."""
    passed_over = config.stash.get(_PASSED_OVER, [])
    nothing = exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED
    shown = [(p, k) for p, k in passed_over if nothing or _near_miss(p, k)]
    if not shown:
        return
    terminalreporter.write_sep("-", "hil: YAML files not collected as scenarios")
    for path, keys in shown:
        terminalreporter.write_line(f"{_display_path(config, path)}: {_why_not(path, keys)}")
    terminalreporter.write_line(
        "a scenario file has name: and steps: at its top level, or only scenario keys "
        "(typos too) with steps: (or lies under a directory named scenarios, or is named "
        "on the command line itself)"
    )


def _near_miss(path: Path, keys: frozenset[str]) -> bool:
    """Not hidden, and `steps:` (or a spelling of it) at the top: perhaps meant as one."""
    return not path.name.startswith(".") and "steps" in map(_spelling_of, keys)


def _why_not(path: Path, keys: frozenset[str]) -> str:
    if path.name.startswith("."):
        return "hidden file"
    if "steps" not in map(_spelling_of, keys):
        return "no top-level steps:"
    others = ", ".join(sorted(key for key in keys if _spelling_of(key) is None))
    return f"no top-level name:, and keys that are no scenario keys: {others}"


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
            marks = self._marks(scenario)
        except ScenarioError as error:
            return [InvalidScenario.from_parent(self, name=self.path.stem, error=error)]
        kernels: list[str] = self.config.getoption("--hil-kernel", [])
        qemus: list[str] = self.config.getoption("--hil-qemu", [])
        return [
            ScenarioItem.build(self, scenario, marks, variant)
            for variant in variants(kernels, qemus)
        ]

    def _marks(self, scenario: Scenario) -> list[pytest.MarkDecorator]:
        """The scenario's marks, judged by pytest's own rules (registered markers,
        --strict-markers) but reported at the mark's file:line: an unknown mark under
        --strict-markers fails this scenario alone, and its warning otherwise names the file."""
        decorators = []
        for index, name in enumerate(scenario.marks):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pytest.PytestUnknownMarkWarning)
                try:
                    decorators.append(getattr(pytest.mark, name))
                except pytest.fail.Exception as failure:
                    raise self._mark_error(scenario, index, str(failure.msg)) from None
            for warning in caught:
                self._warn_at_mark(scenario, index, warning)
        return decorators

    def _mark_error(self, scenario: Scenario, index: int, message: str) -> ScenarioError:
        line, column = _mark_position(self.path, index)
        return ScenarioError(
            scenario.path,
            line,
            column,
            f"mark {scenario.marks[index]!r}: {message}",
            "register it (markers = in pytest.ini / [tool.pytest.ini_options]) or remove it; "
            "the plugin registers " + ", ".join(_registered_by_plugin()),
        )

    def _warn_at_mark(
        self, scenario: Scenario, index: int, warning: warnings.WarningMessage
    ) -> None:
        line, _ = _mark_position(self.path, index)
        try:
            warnings.warn_explicit(warning.message, warning.category, str(self.path), line)
        except Warning as error:  # -W error::...: fail this scenario, not the collection
            raise self._mark_error(scenario, index, str(error)) from None


def _mark_position(path: Path, index: int) -> tuple[int, int]:
    """1-based line and column of entry `index` of the top-level `marks:` list (the file was
    validated already; the schema keeps only the names)."""
    root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    for key, value in root.value if root is not None else ():
        if key.value == "marks":
            mark = value.value[index].start_mark
            return mark.line + 1, mark.column + 1
    return 1, 1


def _registered_by_plugin() -> list[str]:
    from harness.plugin import MARKERS

    return [line.split(":", 1)[0] for line in MARKERS]


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


class FactoryUnavailable(HarnessError):
    """qemu mode without the backend's fixture: say how to proceed instead of a traceback."""


def _presented(
    carrier: Callable[..., None], scenario: Scenario, kernel_label: str | None
) -> Callable[..., None]:
    """A copy of `carrier` per item that reports present as the scenario: its YAML name as
    the title (allure reads `__allure_display_name__`, a format string, hence the doubled
    braces) and its description as the docstring (allure's description), not the carrier's."""
    copy = types.FunctionType(
        carrier.__code__,
        carrier.__globals__,
        carrier.__name__,
        carrier.__defaults__,
        carrier.__closure__,
    )
    copy.__doc__ = scenario.description or None
    title = scenario.name if kernel_label is None else f"{scenario.name} [{kernel_label}]"
    setattr(copy, "__allure_display_name__", title.replace("{", "{{").replace("}", "}}"))  # noqa: B010
    return copy


def _needs_nothing() -> None:
    """Signature carrier: model mode requests no fixtures, so nothing boots."""


def _needs_factory(hil_system_factory: Callable[[], RealSystem]) -> None:
    """Signature carrier: qemu mode gets the backend's factory through pytest's fixtures."""


class ScenarioItem(pytest.Function):
    """A Function item so pytest resolves fixtures (the system factory) the usual way."""

    scenario: Scenario
    backend: str
    hil_kernel: str | None
    hil_qemu: str | None
    hil_kernel_id: str | None
    hil_release: str | None
    hil_observations: list[Observation]

    @classmethod
    def build(
        cls,
        parent: ScenarioFile,
        scenario: Scenario,
        marks: list[pytest.MarkDecorator],
        variant: Variant = NO_VARIANT,
    ) -> ScenarioItem:
        kernel, kernel_label = variant.kernel, variant.label
        backend = parent.config.getoption("--hil-backend", "qemu")
        available = _factory_available(parent)
        carrier = _needs_factory if backend == "qemu" and available else _needs_nothing
        name = parent.path.stem if kernel_label is None else f"{parent.path.stem}[{kernel_label}]"
        item = cls.from_parent(
            parent, name=name, callobj=_presented(carrier, scenario, kernel_label)
        )
        item.scenario, item.backend = scenario, backend
        item.hil_kernel, item.hil_kernel_id = kernel, kernel_label
        item.hil_qemu = variant.qemu
        item.hil_release, item.hil_observations = None, []
        for mark in marks:
            item.add_marker(mark)
        if backend == "qemu":
            item.add_marker("qemu")
        return item

    def runtest(self) -> None:
        real = None
        if self.backend == "qemu":
            factory: Callable[[], RealSystem] | None = self.funcargs.get(FACTORY_FIXTURE)  # type: ignore[assignment]
            if factory is None:
                raise FactoryUnavailable(
                    f"{FACTORY_FIXTURE} fixture not available: the QEMU backend is not "
                    "installed in this run; use --hil-backend=model to run on the model alone"
                )
            real = factory()
        options = RunnerOptions(settle_timeout=self.config.getoption("--hil-settle-timeout"))
        from harness.plugin.fixtures import destination_behaviour

        runner = ScenarioRunner(
            self.scenario,
            real,
            options,
            behaviour=self._behaviour(),
            destination_behaviour=destination_behaviour(self.config, self.hil_release),
        )
        runner.step_context = self._observing(runner)
        try:
            runner.run()
        except ScenarioFailure as failure:
            _attach_failure(failure, real)
            bug = self._known_qemu_bug(failure)
            if bug is not None:
                pytest.xfail(f"known QEMU bug ({bug.mark}): {bug.evidence}; here: {failure}")
            raise
        except NotApplicable as reason:  # e.g. module_reload on a built-in driver
            pytest.skip(str(reason))
        except BaseException:
            _attach_artifacts(real)
            raise
        finally:
            if real is not None:
                real.stop()

    def _known_qemu_bug(self, failure: ScenarioFailure) -> QemuBug | None:
        """The QEMU bug (qemu_versions.QEMU_BUGS) this scenario is marked with, when this
        QEMU has it and the failure came at or after the bug's trigger step: the bug showed,
        not a new failure.  An unmarked scenario counts too when its failure is the guest
        kernel's own report (an oops after a live migration on a QEMU that corrupts guest RAM
        there is that bug's signature); any other failure of it still fails."""
        if self.backend != "qemu":
            return None
        from harness.plugin.fixtures import announced_accel, qemu_version
        from harness.plugin.options import HilSettings

        accel = announced_accel(self.config)
        version = qemu_version(self.hil_qemu or HilSettings.from_config(self.config).qemu)
        marks = [mark.name for mark in self.iter_markers()]
        bug = known_qemu_bug(
            marks,
            version,
            accel.accel if accel else None,
            guest_kernel_reported=bool(failure.console),
        )
        if bug is None:
            return None
        triggers = [s.index for s in self.scenario.steps if bug.triggered_by(s.kind, s.args)]
        return bug if triggers and failure.step.index >= triggers[0] else None

    def _behaviour(self) -> Behaviour:
        """The switches for this item's kernel and for its QEMU (its
        `--version`, also in model mode; defaults if it cannot be run), or the defaults
        with --hil-behaviour=default."""
        self.hil_release = self._release()
        if self.hil_release and "hil_kernel" not in dict(self.user_properties):
            self.user_properties.append(("hil_kernel", self.hil_release))  # model mode
        from harness.plugin.fixtures import run_behaviour

        return run_behaviour(self.config, self.hil_release, self.hil_qemu)

    def _release(self) -> str | None:
        """The kernel release: from the booted image, or (model mode, kernel named) resolved
        without a build; None in model mode without --hil-kernel (defaults, no apt)."""
        image: Any = self.funcargs.get("hil_image")  # set up with the backend's factory
        if image is not None:
            return str(image.kernel_version)
        if self.hil_kernel is None:
            return None
        try:
            from harness.plugin.fixtures import model_mode_release

            return model_mode_release(self.hil_kernel, self.config.getoption("--hil-image"))
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A cross_qemu item needs a second QEMU: without --hil-qemu-destination it is skipped
    with the reason (a skip, never a pass); scenarios in model mode still run (no QEMU)."""
    if config.getoption("--hil-qemu-destination", None):
        return
    skip = pytest.mark.skip(
        reason="cross_qemu: migrates between two QEMUs; give the destination with "
        "--hil-qemu-destination=QEMU (e.g. debian:trixie/qemu-system-x86)"
    )
    for item in items:
        if item.get_closest_marker("cross_qemu") and getattr(item, "backend", "qemu") == "qemu":
            item.add_marker(skip)


def _factory_available(node: pytest.Collector) -> bool:
    """Whether the plugin module that defines the factory fixture is active in this run (a
    run may block it with ``-p no:harness.plugin.fixtures``)."""
    return node.config.pluginmanager.has_plugin(FIXTURES_PLUGIN)


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
