"""Issue 2: bad inputs fail fast with a message naming the cause, never at the test timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.images.builder import GuestImage, build_image
from harness.images.errors import ImageBuildError
from harness.machine.errors import MachineError
from harness.machine.qemu import Machine, MachineSpec, Timeouts

pytestmark = pytest.mark.qemu


def _spec(image: GuestImage, qemu: str, **overrides: object) -> MachineSpec:
    """The test's image on the test's QEMU (hil_qemu: each --hil-qemu in turn)."""
    fields: dict[str, object] = {
        "kernel": image.kernel,
        "initrd": image.initramfs,
        "cmdline": image.cmdline,
        "accel": "tcg",
        "qemu": qemu,
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
    hil_image: GuestImage, hil_qemu: str, tmp_path: Path
) -> None:
    with pytest.raises(MachineError, match=r"kernel /no/such/vmlinuz does not exist"):
        _start(_spec(hil_image, hil_qemu, kernel=Path("/no/such/vmlinuz")), tmp_path)


def test_missing_qemu_binary_is_named(hil_image: GuestImage, hil_qemu: str, tmp_path: Path) -> None:
    with pytest.raises(MachineError, match=r"QEMU binary 'qemu-system-nonexistent' not found"):
        _start(_spec(hil_image, hil_qemu, qemu="qemu-system-nonexistent"), tmp_path)


def test_file_that_is_not_a_kernel_is_refused_by_the_builder(tmp_path: Path) -> None:
    junk = tmp_path / "vmlinuz-junk"
    junk.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(ImageBuildError, match=r"not an x86 Linux kernel image"):
        build_image(kernel=str(junk))


def test_non_kernel_with_a_kernel_header_fails_on_console_silence(
    hil_image: GuestImage, hil_qemu: str, tmp_path: Path
) -> None:
    """Past the builder's header check, only the console can tell: nothing is printed."""
    fake = tmp_path / "vmlinuz-fake"
    real_header = hil_image.kernel.read_bytes()[:0x400]
    fake.write_bytes(real_header + b"\xf4" * (2 * 1024 * 1024))  # hlt, hlt, hlt...
    started = time.monotonic()
    with pytest.raises(MachineError) as failure:
        _start(_spec(hil_image, hil_qemu, kernel=fake), tmp_path, Timeouts(first_console_output=10))
    elapsed = time.monotonic() - started
    message = str(failure.value)
    assert "nothing reached the serial console" in message or "QEMU failed to start" in message
    assert elapsed < 60, f"failing took {elapsed:.0f} s: the silence was not noticed"


def test_qemu_start_failure_carries_exit_code_and_stderr(
    hil_image: GuestImage, hil_qemu: str, tmp_path: Path
) -> None:
    spec = _spec(hil_image, hil_qemu, extra_args=["-device", "no-such-device-model"])
    with pytest.raises(MachineError, match=r"exit code 1.*no-such-device-model"):
        _start(spec, tmp_path)
