"""Fixtures shipped with the plugin, so an installed plugin has them without a conftest."""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from harness.backend.system import QemuSystem
from harness.guest.guest import Credentials, Guest
from harness.images.builder import GuestImage, build_image, kernel_release
from harness.images.errors import ImageBuildError
from harness.machine.accel import AccelChoice, choose_accel
from harness.machine.errors import MachineError
from harness.machine.ports import chardev_socket_sndbuf
from harness.machine.qemu import ControllerSpec, Machine, MachineSpec
from harness.machine.qemu_spec import default_machine_type
from harness.machine.qemu_spec import qemu_version as _qemu_version
from harness.model import Behaviour, MachineDecl
from harness.plugin.faststart import start as start_guest
from harness.plugin.kernels import behaviour_for, kernel_id
from harness.plugin.options import HilSettings
from harness.plugin.qemu_versions import behaviour_for_qemu
from harness.plugin.variants import qemu_id
from harness.scenario.steps import DestinationBehaviour, Step
from harness.scenario.system import RealSystem
from harness.scenario.vm import VM, RunnerOptions

log = logging.getLogger("hil.plugin")

GuestFactory = Callable[..., Guest]
_ACCEL_KEY = pytest.StashKey[AccelChoice]()


@pytest.fixture(scope="session")
def hil_settings(pytestconfig: pytest.Config) -> HilSettings:
    return HilSettings.from_config(pytestconfig)


class ImageSet:
    """Guest images by kernel spec, built at most once per process (and, through the builder's
    cache and file lock, once per machine: xdist workers wait for the first builder)."""

    def __init__(self, settings: HilSettings) -> None:
        self.settings = settings
        self._built: dict[str | None, GuestImage | ImageBuildError] = {}

    def get(self, kernel: str | None) -> GuestImage:
        if kernel not in self._built:
            try:
                self._built[kernel] = build_image(self.settings.image, kernel)
            except ImageBuildError as error:
                self._built[kernel] = error  # remembered: every test of this kernel fails fast
        found = self._built[kernel]
        if isinstance(found, ImageBuildError):
            pytest.fail(f"guest image could not be built: {found}", pytrace=False)
        return found


@pytest.fixture(scope="session")
def hil_images(hil_settings: HilSettings) -> ImageSet:
    """`hil_images.get(kernel_spec)` -> GuestImage (None: the recipe's kernel)."""
    return ImageSet(hil_settings)


@pytest.fixture
def hil_kernel(request: pytest.FixtureRequest, hil_settings: HilSettings) -> str | None:
    """The kernel spec this test runs on: its parameter when several --hil-kernel values were
    given (tests are parametrized per kernel), else the only one (None: the recipe's)."""
    if hasattr(request, "param"):
        return request.param  # type: ignore[no-any-return]
    return getattr(request.node, "hil_kernel", hil_settings.kernel)


@pytest.fixture
def hil_qemu(request: pytest.FixtureRequest, hil_settings: HilSettings) -> str:
    """The QEMU spec this test runs on: its parameter when several --hil-qemu values were
    given (tests are parametrized per QEMU), else the only one (or the default binary)."""
    if hasattr(request, "param"):
        return request.param  # type: ignore[no-any-return]
    return getattr(request.node, "hil_qemu", None) or hil_settings.qemu


@pytest.fixture
def hil_image(hil_images: ImageSet, hil_kernel: str | None) -> GuestImage:
    """The guest image for this test's kernel, built once (cached across runs and workers)."""
    return hil_images.get(hil_kernel)


def _session_accel(config: pytest.Config, settings: HilSettings, image: GuestImage) -> AccelChoice:
    """KVM or TCG, decided once per process by a probe boot of the first image; announced."""
    choice = announced_accel(config)
    if choice is not None:
        return choice
    choice = choose_accel(
        settings.accel,  # type: ignore[arg-type]
        settings.qemu,
        image.kernel,
        image.initramfs,
    )
    config.stash[_ACCEL_KEY] = choice
    log.info("accel: %s", choice.describe())
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"hil: {choice.describe()}", yellow=choice.accel == "tcg")
    return choice


@pytest.fixture
def hil_accel(
    pytestconfig: pytest.Config, hil_settings: HilSettings, hil_image: GuestImage
) -> AccelChoice:
    """KVM or TCG, decided once per run by a probe boot; the choice is announced once."""
    return _session_accel(pytestconfig, hil_settings, hil_image)


def announced_accel(config: pytest.Config) -> AccelChoice | None:
    return config.stash.get(_ACCEL_KEY, None)


def record_run_properties(
    node: pytest.Item,
    settings: HilSettings,
    image: GuestImage,
    accel: AccelChoice,
    qemu: str | None = None,
) -> None:
    """Kernel, QEMU, machine type, accel and recipe as junit properties (xdist carries them
    to the report)."""
    properties = run_properties(settings, image, accel, qemu)
    known = {name for name, _ in node.user_properties}
    node.user_properties.extend((k, v) for k, v in properties.items() if k not in known)


def run_properties(
    settings: HilSettings, image: GuestImage, accel: AccelChoice, qemu: str | None = None
) -> dict[str, str]:
    spec = qemu or settings.qemu
    properties = {
        "hil_kernel": image.kernel_version,
        "hil_kernel_origin": image.kernel_origin,
        "hil_qemu": qemu_version(spec),
        "hil_machine_type": settings.machine_type or machine_type(spec),
        "hil_accel": accel.accel,
        "hil_image": f"{image.recipe} ({image.directory.name})",
    }
    if settings.qemu_destination:
        properties["hil_qemu_destination"] = qemu_version(settings.qemu_destination)
    return properties


@functools.cache
def qemu_version(spec: str) -> str:
    """`QEMU emulator version X` -> "X"; asked once per process (a package spec is fetched
    and unpacked the first time). "unknown (why)" when it cannot be run."""
    try:
        return _qemu_version(spec)
    except MachineError as error:
        return f"unknown ({error})"


@functools.cache
def machine_type(spec: str) -> str:
    """The default (versioned) machine type of a QEMU spec, "unknown (why)" if not runnable."""
    try:
        return default_machine_type(spec)
    except MachineError as error:
        return f"unknown ({error})"


@functools.cache
def model_mode_release(kernel: str, recipe: str) -> str:
    """A kernel's release without building its image, once per process (apt is slow)."""
    return kernel_release(kernel, recipe)


def run_behaviour(config: pytest.Config, release: str | None, qemu: str | None = None) -> Behaviour:
    """The model switches for a kernel release and a QEMU spec (the item's; None: the first
    --hil-qemu) by its `--version`, also in model mode (defaults if it cannot be run), or the
    defaults with --hil-behaviour=default. Scenarios and the Python API both ask here."""
    if config.getoption("--hil-behaviour", "auto") == "default":
        return Behaviour()
    version = qemu_version(qemu or HilSettings.from_config(config).qemu)
    return behaviour_for(release, behaviour_for_qemu(version, host_behaviour()))


@functools.cache
def host_behaviour() -> Behaviour:
    """The switches this host sets: its sockets' send buffer (read once per process)."""
    sndbuf = chardev_socket_sndbuf()
    return Behaviour() if sndbuf is None else Behaviour(host_socket_sndbuf=sndbuf)


def destination_behaviour(config: pytest.Config, release: str | None) -> DestinationBehaviour:
    """The switches a migration's destination runs on, for this kernel: the step's QEMU,
    else --hil-qemu-destination (run_behaviour of that QEMU); None when neither names one
    (the destination runs the QEMU the guest is on, whose switches the model keeps)."""
    run_wide = HilSettings.from_config(config).qemu_destination

    def switches(qemu: str | None) -> Behaviour | None:
        spec = qemu or run_wide
        return None if spec is None else run_behaviour(config, release, spec)

    return switches


@pytest.fixture(scope="session")
def hil_socket_root() -> Iterator[Path]:
    """Short directory for unix sockets (sun_path is limited to 108 bytes; pytest's tmp paths
    can be longer)."""
    root = Path(tempfile.mkdtemp(prefix="hil-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


class GuestPool:
    """Creates guests for one scope and guarantees their shutdown at its end."""

    def __init__(
        self,
        settings: HilSettings,
        image: GuestImage,
        accel: AccelChoice,
        workdir: Path,
        qemu: str | None = None,
    ) -> None:
        self.settings = settings
        self.image = image
        self.accel = accel
        self.workdir = workdir
        self.qemu = qemu or settings.qemu
        self.guests: list[Guest] = []

    def spec(self, **overrides: Any) -> MachineSpec:
        fields: dict[str, Any] = {
            "kernel": self.image.kernel,
            "initrd": self.image.initramfs,
            "cmdline": self.image.cmdline,
            "accel": self.accel.accel,
            "qemu": self.qemu,
            "machine_type": self.settings.machine_type,
            "controllers": [ControllerSpec("vser0")],
        }
        fields.update(overrides)
        return MachineSpec(**fields)

    def create(self, name: str = "guest", boot: bool = True, **overrides: Any) -> Guest:
        machine = Machine(self.spec(**overrides), self.workdir / f"{name}-{len(self.guests)}", name)
        guest = Guest(machine, Credentials.of(self.image))
        self.guests.append(guest)
        if boot:
            start_guest(guest, self.settings, self.image)  # --hil-start: boot or restore
        return guest

    def shutdown_all(self) -> None:
        while self.guests:
            self.guests.pop().shutdown()


@pytest.fixture
def hil_guest_factory(
    request: pytest.FixtureRequest,
    hil_settings: HilSettings,
    hil_image: GuestImage,
    hil_accel: AccelChoice,
    hil_qemu: str,
    tmp_path: Path,
) -> Iterator[GuestPool]:
    """`hil_guest_factory.create(name, **MachineSpec overrides)` -> booted Guest (shut down
    at teardown). Records kernel, QEMU, accel and recipe as the test's junit properties."""
    record_run_properties(request.node, hil_settings, hil_image, hil_accel, hil_qemu)
    pool = GuestPool(hil_settings, hil_image, hil_accel, tmp_path, hil_qemu)
    yield pool
    pool.shutdown_all()


@pytest.fixture
def hil_guest(hil_guest_factory: GuestPool) -> Guest:
    """A freshly booted guest with one virtio-serial controller (vser0), for this test only."""
    return hil_guest_factory.create()


@pytest.fixture(scope="session")
def hil_session_guest(
    pytestconfig: pytest.Config,
    hil_settings: HilSettings,
    hil_images: ImageSet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Guest]:
    """One guest shared by the whole session, on the first --hil-kernel (tests must leave it
    as they found it)."""
    image = hil_images.get(hil_settings.kernel)
    accel = _session_accel(pytestconfig, hil_settings, image)
    pool = GuestPool(hil_settings, image, accel, tmp_path_factory.mktemp("session-guest"))
    yield pool.create("session")
    pool.shutdown_all()


@pytest.fixture
def hil_system_factory(
    hil_guest_factory: GuestPool, hil_settings: HilSettings
) -> Iterator[Callable[[], QemuSystem]]:
    """`factory() -> QemuSystem` (not started: the scenario runner starts it with its machine)."""
    systems: list[QemuSystem] = []

    def create() -> QemuSystem:
        system = QemuSystem(
            hil_guest_factory.create,
            hil_settings.boot_timeout,
            destination_qemu=hil_settings.qemu_destination,
        )
        systems.append(system)
        return system

    yield create
    for system in systems:
        system.stop()


@pytest.fixture
def hil_system(hil_system_factory: Callable[[], QemuSystem]) -> QemuSystem:
    """A started real system: a booted guest with controller vser0, its agent, no ports."""
    system = hil_system_factory()
    system.start(MachineDecl())
    return system


class VMFactory:
    """Creates started machines (``VM``) for one test and stops them at its end.

    Why a factory: most tests want the default machine (``hil_vm``), some need their own
    controllers, boot ports or memory; both must get the same backend choice
    (``--hil-backend``), kernel behaviour switches and settle timeout as a YAML scenario.
    """

    def __init__(self, request: pytest.FixtureRequest, settings: HilSettings) -> None:
        self.request = request
        self.settings = settings
        self.created: list[VM] = []
        self.release: str | None = None  # the kernel release of the last machine created

    def __call__(
        self,
        machine: MachineDecl | None = None,
        *,
        name: str | None = None,
        options: RunnerOptions | None = None,
    ) -> VM:
        """Boot ``machine`` (default: 512 MiB, controller vser0, no ports) and return it.

        ``name`` seeds ``size=`` payloads (default: the test's id, so reruns send the same
        bytes); ``options`` overrides the runner's timeouts (settle: --hil-settle-timeout).
        """
        config = self.request.config
        system: RealSystem | None = None
        if config.getoption("--hil-backend", "qemu") == "qemu":
            system = self.request.getfixturevalue("hil_system_factory")()
        settle = config.getoption("--hil-settle-timeout", 10.0)
        vm = VM(
            machine or MachineDecl(),
            system,
            name=name or f"{self.request.node.nodeid}#{len(self.created)}",
            options=options or RunnerOptions(settle_timeout=settle),
            behaviour=self._behaviour(system is not None),
            step_context=_allure_step,
            destination_behaviour=destination_behaviour(config, self.release),
        )
        self.created.append(vm)
        return vm.start()

    def _behaviour(self, real: bool) -> Behaviour:
        """The model switches for this test's kernel, as scenarios get them: the booted
        image's release, or in model mode the named kernel's (resolved without a build)."""
        config = self.request.config
        qemu: str = self.request.getfixturevalue("hil_qemu")
        self.release = None
        if real:
            image: GuestImage = self.request.getfixturevalue("hil_image")
            self.release = image.kernel_version
            return run_behaviour(config, image.kernel_version, qemu)
        kernel: str | None = self.request.getfixturevalue("hil_kernel")
        if kernel is None:
            return run_behaviour(config, None, qemu)
        try:
            self.release = model_mode_release(kernel, self.settings.image)
        except ImageBuildError as error:
            pytest.fail(f"kernel {kernel}: {error}", pytrace=False)
        return run_behaviour(config, self.release, qemu)

    def finish_all(self) -> None:
        """Judge what is still pending (as at a scenario's end), then stop every machine."""
        try:
            for vm in self.created:
                vm.finish()
        finally:
            while self.created:
                self.created.pop().stop()


def _allure_step(step: Step) -> AbstractContextManager[Any]:
    """Each API call is an allure step (with --alluredir), as a scenario's steps are; allure
    is a dependency, but the fixtures must not need it."""
    try:
        import allure
    except ImportError:  # pragma: no cover
        return nullcontext()
    return allure.step(f"step {step.index}: {step.label}")


@pytest.fixture
def hil_vm_factory(
    request: pytest.FixtureRequest, hil_settings: HilSettings, hil_kernel: str | None
) -> Iterator[VMFactory]:
    """`hil_vm_factory(machine=MachineDecl(...))` -> a started VM (stopped at teardown).

    Asks for ``hil_kernel`` (a spec string, nothing is built) so that several --hil-kernel
    values run the test once per kernel, as they do for scenarios.
    """
    factory = VMFactory(request, hil_settings)
    yield factory
    factory.finish_all()


@pytest.fixture
def hil_vm(hil_vm_factory: VMFactory) -> VM:
    """A started machine with controller vser0 and no ports: the public Python API.

    Every call on it (and on its controllers, ports, host and guest ends) runs as a scenario
    step on the spec model and the real system, with the same three-way comparison.
    """
    return hil_vm_factory()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Several --hil-kernel (--hil-qemu) values: every test that boots a guest runs once per
    kernel (and QEMU)."""
    kernels = metafunc.config.getoption("--hil-kernel")
    if len(kernels) > 1 and "hil_kernel" in metafunc.fixturenames:
        metafunc.parametrize("hil_kernel", kernels, indirect=True, ids=kernel_id)
    qemus = metafunc.config.getoption("--hil-qemu")
    if len(qemus) > 1 and "hil_qemu" in metafunc.fixturenames:
        metafunc.parametrize("hil_qemu", qemus, indirect=True, ids=qemu_id)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    choice = announced_accel(terminalreporter.config)
    if choice is not None:
        terminalreporter.write_sep("-", f"hil: {choice.describe()}")
        settings = HilSettings.from_config(terminalreporter.config)
        for spec in settings.qemus or (settings.qemu,):
            machine = settings.machine_type or machine_type(spec)
            terminalreporter.write_line(
                f"hil: QEMU {spec}: {qemu_version(spec)}, machine type {machine}"
            )
