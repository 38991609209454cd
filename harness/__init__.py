"""virtio-serial hardware-in-the-loop harness.

Layers, each importing only the ones listed before it:
model (pure spec model) / machine (QEMU, QMP, accel) / guest (agent, SSH, serial) /
backend (host port endpoints) / scenario (YAML, runner, comparison) / plugin (pytest).
``images`` builds guest kernels+initramfs and is used by machine and plugin.
Below all of them: ``harness.errors`` (HarnessError, the root of every harness error) and
``harness.logs`` (the "hil" loggers).

PYTEST_DONT_REWRITE: the harness is a library, not test code. pytest marks a plugin's package
for assertion rewriting; when the package was imported first (``python -m harness``, a pytester
run inside a pytest run) that would warn, and ``-W error`` runs would fail on the warning.
"""

from __future__ import annotations

__version__ = "0.1.0"
