"""Command-line options and the settings object fixtures read them through."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness.guest.faststart import START_MODES
from harness.images.errors import ImageBuildError
from harness.images.kernel import KERNEL_SPEC_FORMS, parse_kernel_spec
from harness.images.qemu_pkg import DEFAULT_QEMU, QEMU_SPEC_FORMS, parse_qemu_spec
from harness.images.recipe import DEFAULT_RECIPE
from harness.machine.snapshot_cache import DEFAULT_CAP_BYTES

ACCEL_CHOICES = ("auto", "kvm", "tcg")
BACKEND_CHOICES = ("model", "qemu")
BEHAVIOUR_CHOICES = ("auto", "default")
DEFAULT_STATE_CACHE_MIB = DEFAULT_CAP_BYTES // 2**20


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "virtio-serial hardware-in-the-loop harness")
    group.addoption(
        "--hil-accel",
        choices=ACCEL_CHOICES,
        default="auto",
        help="auto: use KVM if a probe boot shows it works, else TCG (announced); kvm/tcg force it",
    )
    group.addoption(
        "--hil-kernel",
        action="append",
        default=[],
        metavar="KERNEL",
        help=f"kernel under test: {KERNEL_SPEC_FORMS}; repeat it to run every scenario (and "
        "guest test) once per kernel with a comparison table at the end (default: the image "
        "recipe's kernel)",
    )
    group.addoption(
        "--hil-behaviour",
        choices=BEHAVIOUR_CHOICES,
        default="auto",
        help="auto: the model's kernel-dependent switches follow each kernel's release; "
        "default: the defaults for every kernel (shows what a kernel change breaks)",
    )
    group.addoption(
        "--hil-image",
        default=DEFAULT_RECIPE,
        metavar="RECIPE",
        help="guest image recipe: the path of your own recipe YAML, else the name of a recipe "
        "shipped with the harness",
    )
    group.addoption(
        "--hil-qemu",
        action="append",
        default=[],
        metavar="QEMU",
        help=f"QEMU under test: {QEMU_SPEC_FORMS}; repeat it to run every scenario (and guest "
        f"test) once per QEMU with a comparison table at the end (default: {DEFAULT_QEMU})",
    )
    group.addoption(
        "--hil-qemu-destination",
        default=None,
        metavar="QEMU",
        help="the QEMU every migration moves the guest to (same forms as --hil-qemu; a "
        "migrate step's destination: {qemu: ...} overrides it); scenarios marked "
        "cross_qemu run only when it is given (default: the source's QEMU)",
    )
    group.addoption(
        "--hil-machine-type",
        default=None,
        metavar="TYPE",
        help="QEMU machine type, e.g. pc-i440fx-7.2 (default: the versioned type `pc` stands "
        "for on the source QEMU; a migration destination always takes the source's type)",
    )
    group.addoption(
        "--hil-settle-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a scenario step may take to settle on the predicted snapshot",
    )
    group.addoption(
        "--hil-backend",
        choices=BACKEND_CHOICES,
        default="qemu",
        help="scenarios: qemu runs every step on a real guest and the model; model runs the "
        "model alone (milliseconds, no QEMU) to lint and preview scenarios",
    )
    group.addoption(
        "--hil-boot-timeout",
        type=float,
        default=120,
        metavar="SECONDS",
        help="how long a guest may take from start to SSH-ready",
    )
    group.addoption(
        "--hil-start",
        choices=START_MODES,
        default="snapshot",
        help="snapshot: the first guest of a kind boots and its ready state is saved; later "
        "ones start from it (cached across runs); boot: every guest boots",
    )
    group.addoption(
        "--hil-state-cache-mib",
        type=int,
        default=DEFAULT_STATE_CACHE_MIB,
        metavar="MIB",
        help="size cap of the saved guest states (least recently used go first)",
    )
    group.addoption(
        "--hil-state-dir",
        default=None,
        metavar="DIR",
        help="where saved guest states live (default: states/ in the image cache)",
    )


def check_qemu_specs(config: pytest.Config) -> None:
    """Refuse a --hil-qemu / --hil-qemu-destination of the wrong shape (or a missing path)
    once, at start, as a usage error (a package is fetched when first used)."""
    given = [("--hil-qemu", s) for s in config.getoption("--hil-qemu", None) or []]
    destination = config.getoption("--hil-qemu-destination", None)
    given += [("--hil-qemu-destination", destination)] if destination else []
    for option, spec in given:
        try:
            parse_qemu_spec(spec)
        except ImageBuildError as error:
            raise pytest.UsageError(
                f"{option}={spec}: {error}\n  {option} takes {QEMU_SPEC_FORMS}"
            ) from None


def check_kernel_specs(config: pytest.Config) -> None:
    """Refuse a --hil-kernel that names no kernel once, at start, as a usage error.

    Why: found later, the same error would fail every item separately (or, in model mode, a
    file that is no kernel would pass under a made-up release).
    """
    for spec in config.getoption("--hil-kernel", None) or []:
        try:
            parse_kernel_spec(spec)
        except ImageBuildError as error:
            raise pytest.UsageError(
                f"--hil-kernel={spec}: {error}\n  --hil-kernel takes {KERNEL_SPEC_FORMS}"
            ) from None


@dataclass(frozen=True)
class HilSettings:
    accel: str
    kernels: tuple[str, ...]
    image: str
    qemus: tuple[str, ...]
    boot_timeout: float
    qemu_destination: str | None = None
    machine_type: str | None = None
    start: str = "snapshot"
    state_cache_mib: int = DEFAULT_STATE_CACHE_MIB
    state_dir: str | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> HilSettings:
        return cls(
            accel=config.getoption("--hil-accel"),
            kernels=tuple(config.getoption("--hil-kernel")),
            image=config.getoption("--hil-image"),
            qemus=tuple(config.getoption("--hil-qemu")),
            boot_timeout=config.getoption("--hil-boot-timeout"),
            qemu_destination=config.getoption("--hil-qemu-destination"),
            machine_type=config.getoption("--hil-machine-type"),
            start=config.getoption("--hil-start"),
            state_cache_mib=config.getoption("--hil-state-cache-mib"),
            state_dir=config.getoption("--hil-state-dir"),
        )

    @property
    def kernel(self) -> str | None:
        return self.kernels[0] if self.kernels else None

    @property
    def qemu(self) -> str:
        """The first QEMU under test (the default binary when none is named)."""
        return self.qemus[0] if self.qemus else DEFAULT_QEMU
