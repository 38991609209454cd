"""Fixtures shipped with the plugin, so an installed plugin has them without a conftest."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.backend.endpoint import HostEndpoint
from harness.backend.system import QemuSystem
from harness.guest.agent_client import AgentClient
from harness.guest.guest import Credentials, Guest
from harness.images.builder import GuestImage, build_image
from harness.images.errors import ImageBuildError
from harness.machine.accel import AccelChoice, choose_accel
from harness.machine.qemu import ControllerSpec, Machine, MachineSpec
from harness.plugin.options import HilSettings

GuestFactory = Callable[..., Guest]
_ACCEL_KEY = pytest.StashKey[AccelChoice]()


@pytest.fixture(scope="session")
def hil_settings(pytestconfig: pytest.Config) -> HilSettings:
    return HilSettings.from_config(pytestconfig)


@pytest.fixture(scope="session")
def hil_image(hil_settings: HilSettings) -> GuestImage:
    """The guest image for this run, built once (cached across runs and xdist workers)."""
    try:
        return build_image(hil_settings.image, hil_settings.kernel)
    except ImageBuildError as error:
        pytest.fail(f"guest image could not be built: {error}", pytrace=False)


@pytest.fixture(scope="session")
def hil_accel(
    pytestconfig: pytest.Config, hil_settings: HilSettings, hil_image: GuestImage
) -> AccelChoice:
    """KVM or TCG, decided once per run by a probe boot; the choice is announced once."""
    choice = choose_accel(
        hil_settings.accel, hil_settings.qemu, hil_image.kernel, hil_image.initramfs
    )  # type: ignore[arg-type]
    pytestconfig.stash[_ACCEL_KEY] = choice
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"hil: {choice.describe()}", yellow=choice.accel == "tcg")
    return choice


def announced_accel(config: pytest.Config) -> AccelChoice | None:
    return config.stash.get(_ACCEL_KEY, None)


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
        self, settings: HilSettings, image: GuestImage, accel: AccelChoice, workdir: Path
    ) -> None:
        self.settings = settings
        self.image = image
        self.accel = accel
        self.workdir = workdir
        self.guests: list[Guest] = []

    def spec(self, **overrides: Any) -> MachineSpec:
        fields: dict[str, Any] = {
            "kernel": self.image.kernel,
            "initrd": self.image.initramfs,
            "cmdline": self.image.cmdline,
            "accel": self.accel.accel,
            "qemu": self.settings.qemu,
            "controllers": [ControllerSpec("vser0")],
        }
        fields.update(overrides)
        return MachineSpec(**fields)

    def create(self, name: str = "guest", boot: bool = True, **overrides: Any) -> Guest:
        machine = Machine(self.spec(**overrides), self.workdir / f"{name}-{len(self.guests)}", name)
        guest = Guest(machine, Credentials(str(self.image.client_key), self.image.host_public_key))
        self.guests.append(guest)
        if boot:
            guest.boot(self.settings.boot_timeout)
        return guest

    def shutdown_all(self) -> None:
        while self.guests:
            self.guests.pop().shutdown()


@pytest.fixture
def hil_guest_factory(
    hil_settings: HilSettings, hil_image: GuestImage, hil_accel: AccelChoice, tmp_path: Path
) -> Iterator[GuestPool]:
    """`hil_guest_factory.create(name, **MachineSpec overrides)` -> booted Guest (shut down
    at teardown)."""
    pool = GuestPool(hil_settings, hil_image, hil_accel, tmp_path)
    yield pool
    pool.shutdown_all()


@pytest.fixture
def hil_guest(hil_guest_factory: GuestPool) -> Guest:
    """A freshly booted guest with one virtio-serial controller (vser0), for this test only."""
    return hil_guest_factory.create()


@pytest.fixture(scope="session")
def hil_session_guest(
    hil_settings: HilSettings,
    hil_image: GuestImage,
    hil_accel: AccelChoice,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Guest]:
    """One guest shared by the whole session (tests must leave it as they found it)."""
    pool = GuestPool(hil_settings, hil_image, hil_accel, tmp_path_factory.mktemp("session-guest"))
    yield pool.create("session")
    pool.shutdown_all()


@pytest.fixture
def hil_system_factory(
    hil_guest_factory: GuestPool, hil_settings: HilSettings
) -> Iterator[Callable[[], QemuSystem]]:
    """`factory() -> QemuSystem` (not started: the scenario runner starts it with its machine)."""
    systems: list[QemuSystem] = []

    def create() -> QemuSystem:
        system = QemuSystem(hil_guest_factory.create, hil_settings.boot_timeout)
        systems.append(system)
        return system

    yield create
    for system in systems:
        system.stop()


@dataclass(frozen=True)
class DefaultMachine:
    memory: int = 512
    controllers: list[ControllerSpec] = field(default_factory=lambda: [ControllerSpec("vser0")])
    ports: list[Any] = field(default_factory=list)


@pytest.fixture
def hil_system(hil_system_factory: Callable[[], QemuSystem]) -> QemuSystem:
    """A started real system: a booted guest with controller vser0, its agent, no ports."""
    system = hil_system_factory()
    system.start(DefaultMachine())
    return system


@dataclass
class PortHandle:
    """A hotplugged port: `host` is its socket endpoint, `guest` the agent speaking for it."""

    name: str
    nr: int | None
    system: QemuSystem

    @property
    def host(self) -> HostEndpoint:
        return self.system._endpoint(self.name)

    @property
    def guest(self) -> AgentClient:
        assert self.system.agent is not None
        return self.system.agent


@pytest.fixture
def make_port(hil_system: QemuSystem) -> Callable[..., PortHandle]:
    """`make_port(name, nr=None, console=False, controller="vser0", backend="socket")`."""

    def make(
        name: str,
        nr: int | None = None,
        console: bool = False,
        controller: str = "vser0",
        backend: str = "socket",
    ) -> PortHandle:
        hil_system.hotplug(name, nr, console, controller, backend)
        return PortHandle(name, nr, hil_system)

    return make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    choice = announced_accel(terminalreporter.config)
    if choice is not None:
        terminalreporter.write_sep("-", f"hil: {choice.describe()}")
