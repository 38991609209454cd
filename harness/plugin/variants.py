"""What an item runs on besides its test: a kernel and a QEMU (the run's comparison axes).

Several `--hil-kernel` and/or several `--hil-qemu` values make every guest-booting test and
every scenario run once per combination; the test id carries the axes that vary (kernel id
first, then QEMU id, joined by "-" as pytest joins parameter ids), and the end-of-run table
has one column per combination. Pure functions, unit-tested without pytest objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from harness.images.qemu_pkg import DEFAULT_QEMU
from harness.plugin.kernels import kernel_id


def qemu_id(spec: str | None) -> str:
    """The test-id part naming a QEMU: the spec as typed, a path shortened to its name."""
    if spec is None:
        return DEFAULT_QEMU
    if spec.startswith("debian:") or "/" not in spec:
        return spec
    return spec.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Variant:
    """One combination: `kernel` None is the recipe's, `qemu` None the default binary."""

    kernel: str | None
    qemu: str | None
    label: str | None  # the test-id part; None when nothing varies in this run


#: A run that compares nothing: the recipe's kernel, the default QEMU.
NO_VARIANT = Variant(None, None, None)


def variants(kernels: Sequence[str], qemus: Sequence[str]) -> list[Variant]:
    """Every combination, kernel-major (the order pytest's stacked parametrization gives)."""
    kernel_axis: list[str | None] = list(kernels) or [None]
    qemu_axis: list[str | None] = list(qemus) or [None]
    out = []
    for kernel, qemu in itertools.product(kernel_axis, qemu_axis):
        parts = []
        if len(kernel_axis) > 1:
            parts.append(kernel_id(kernel))
        if len(qemu_axis) > 1:
            parts.append(qemu_id(qemu))
        out.append(Variant(kernel, qemu, "-".join(parts) or None))
    return out


def axes(kernels: Sequence[str], qemus: Sequence[str]) -> str | None:
    """What the comparison table compares ("kernels", "QEMUs", both), None: nothing varies."""
    named = [what for what, values in (("kernels", kernels), ("QEMUs", qemus)) if len(values) > 1]
    return " and ".join(named) or None
