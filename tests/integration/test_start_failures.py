"""Issue 2: bad inputs fail fast with a message naming the cause, never at the test timeout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.images.builder import GuestImage, build_image
from harness.images.errors import ImageBuildError
from harness.machine.errors import MachineError
from harness.machine.qemu import Machine, MachineSpec, Timeouts
from harness.plugin.options import HilSettings

pytestmark = pytest.mark.qemu


def _spec(image: GuestImage, settings: HilSettings, **overrides: object) -> MachineSpec:
    """The configured QEMU (--hil-qemu) with this run's image; TCG, so no KVM probe is needed."""
    fields: dict[str, object] = {
        "kernel": image.kernel,
        "initrd": image.initramfs,
        "cmdline": image.cmdline,
        "accel": "tcg",
        "qemu": settings.qemu,
    }
    fields.update(overrides)
    return MachineSpec(**fields)  # type: ignore[arg-type]


def _start(spec: MachineSpec, workdir: Path, timeouts: Timeouts | None = None) -> None:
    machine = Machine(spec, workdir, "bad", timeouts or Timeouts())
    try:
        machine.start()
        machine.wait_for_first_output()
    finally:
        machine.shutdown()


def test_wrong_kernel_path_is_named_by_the_builder() -> None:
    with pytest.raises(ImageBuildError, match=r"kernel image /no/such/vmlinuz does not exist"):
        build_image(kernel="/no/such/vmlinuz")


def test_wrong_kernel_path_is_named_by_the_machine(
    hil_image: GuestImage, hil_settings: HilSettings, tmp_path: Path
) -> None:
    with pytest.raises(MachineError, match=r"kernel /no/such/vmlinuz does not exist"):
        _start(_spec(hil_image, hil_settings, kernel=Path("/no/such/vmlinuz")), tmp_path)


def test_missing_qemu_binary_is_named(
    hil_image: GuestImage, hil_settings: HilSettings, tmp_path: Path
) -> None:
    with pytest.raises(MachineError, match=r"QEMU binary 'qemu-system-nonexistent' not found"):
        _start(_spec(hil_image, hil_settings, qemu="qemu-system-nonexistent"), tmp_path)


def test_file_that_is_not_a_kernel_is_refused_by_the_builder(tmp_path: Path) -> None:
    junk = tmp_path / "vmlinuz-junk"
    junk.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(ImageBuildError, match=r"not an x86 Linux kernel image"):
        build_image(kernel=str(junk))


def test_non_kernel_with_a_kernel_header_fails_on_console_silence(
    hil_image: GuestImage, hil_settings: HilSettings, tmp_path: Path
) -> None:
    """Past the builder's header check, only the console can tell: QEMU loads the file (the
    header is a real one) and runs it, and nothing is printed.  The wait is bounded by the
    machine's own first-output timeout, which the message names."""
    fake = tmp_path / "vmlinuz-fake"
    real_header = hil_image.kernel.read_bytes()[:0x400]
    fake.write_bytes(real_header + b"\xf4" * (2 * 1024 * 1024))  # hlt, hlt, hlt...
    spec = _spec(hil_image, hil_settings, kernel=fake)
    with pytest.raises(MachineError, match=r"nothing reached the serial console within 10 s"):
        _start(spec, tmp_path, Timeouts(first_console_output=10))


def test_qemu_start_failure_carries_exit_code_and_stderr(
    hil_image: GuestImage, hil_settings: HilSettings, tmp_path: Path
) -> None:
    spec = _spec(hil_image, hil_settings, extra_args=["-device", "no-such-device-model"])
    with pytest.raises(MachineError, match=r"exit code 1.*no-such-device-model"):
        _start(spec, tmp_path)
