"""Drive the spec model and the real system side by side (the model is the oracle).

Superseded by the public API (``hil_vm``: every call is a scenario step, ``check()`` is the
runner's comparison); kept only for tests written against it before the API existed
(test_conformance.py, test_findings.py). New tests use ``hil_vm``; port those, then delete this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.backend.settle import settle
from harness.backend.system import QemuSystem, RealFailure
from harness.model import ModelError, VirtioSerialModel, format_diff
from tests.integration.polling import wait_until

__all__ = ["Twin", "wait_until"]


class Twin:
    def __init__(self, real: QemuSystem, settle_timeout: float = 15) -> None:
        self.real = real
        self.model = VirtioSerialModel()
        self.settle_timeout = settle_timeout
        for controller in real.snapshot().controllers.values():
            self.model.hotplug_controller(controller.id, controller.max_ports)

    def both(
        self, operation: str, *args: Any, model_args: tuple[Any, ...] | None = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        """Apply to the model and the real system; errors must agree (text equal)."""
        model_value, real_value, _ = self._agreed(
            f"{operation}{args}",
            lambda: getattr(self.model, operation)(*(model_args or args), **kwargs),
            lambda: getattr(self.real, operation)(*args, **kwargs),
        )
        return model_value, real_value

    def hotplug(
        self,
        name: str,
        nr: int | None = None,
        console: bool = False,
        controller: str = "vser0",
        backend: str = "socket",
    ) -> str | None:
        """Plug on both; returns the (agreed) error text, or None."""
        return self._agreed(
            f"hotplug {name}",
            lambda: self.model.hotplug(
                name, controller=controller, nr=nr, console=console, backend=backend
            ),
            lambda: self.real.hotplug(name, nr, console, controller, backend),
        )[2]

    @staticmethod
    def _agreed(
        what: str, on_model: Callable[[], Any], on_real: Callable[[], Any]
    ) -> tuple[Any, Any, str | None]:
        """Run both sides; their errors must be the same text (or both absent)."""
        model_value = real_value = model_error = real_error = None
        try:
            model_value = on_model()
        except ModelError as error:
            model_error = error.text
        try:
            real_value = on_real()
        except RealFailure as error:
            real_error = error.text
        assert model_error == real_error, (
            f"{what}: model says {model_error or 'success'}, real system says "
            f"{real_error or 'success'}"
        )
        return model_value, real_value, real_error

    def agree(self, where: str) -> None:
        _, differences = settle(self.model.snapshot(), self.real.snapshot, self.settle_timeout)
        assert not differences, f"after {where}, real != model:\n{format_diff(differences)}"
