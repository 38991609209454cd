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

The public Python API (``from harness import VM, OperationError, MachineDecl, ...``) lives in
``harness.scenario.vm``; it is re-exported here lazily, because the pytest plugin imports this
package before pytest-cov starts measuring, and an eager import would hide the model's
module-level lines from coverage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: The one list of the public API's names; ``harness.scenario.vm`` defines or re-exports each.
__all__ = [
    "VM",
    "BackgroundOp",
    "Controller",
    "ControllerDecl",
    "GuestEnd",
    "HostEnd",
    "MachineDecl",
    "OperationBlocks",
    "OperationError",
    "Port",
    "PortDecl",
    "RunnerOptions",
    "ScenarioFailure",
    "__version__",
]
#: Public names of the Python API, resolved on first use (see the module docstring).
_API = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from harness.scenario.vm import (
        VM,
        BackgroundOp,
        Controller,
        ControllerDecl,
        GuestEnd,
        HostEnd,
        MachineDecl,
        OperationBlocks,
        OperationError,
        Port,
        PortDecl,
        RunnerOptions,
        ScenarioFailure,
    )


def __getattr__(name: str) -> object:
    if name in _API:
        from harness.scenario import vm

        return getattr(vm, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
