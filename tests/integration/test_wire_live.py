"""Issue 16: the wire of live and paused migrations, read on its way through the harness's
relay (harness.machine.relay) and compared with the model's saved state like a file's."""

from __future__ import annotations

from dataclasses import replace

import pytest

import harness.scenario.steps as steps
from harness import VM
from harness.model import VirtioSerialModel
from harness.scenario.runner import ScenarioFailure
from harness.scenario.wire_check import SavedState

pytestmark = pytest.mark.qemu
NAME = "org.wire.live"


def test_a_wrong_field_planted_in_the_model_state_is_caught_on_a_live_migrations_wire(
    hil_vm: VM, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = hil_vm.hotplug(NAME)
    port.host.connect()
    hil_vm.migrate(mode="paused")  # nothing planted: the relay read the stream, it agrees
    stats = hil_vm.real.migrations[-1]  # type: ignore[attr-defined]
    assert stats.mode == "paused" and stats.wire is not None, stats
    first = stats.wire["vser0"].ports[0]
    assert (first.id, first.host_connected) == (port.nr, 1)

    honest = steps.model_saved_state

    def planted(model: VirtioSerialModel) -> SavedState:
        """The model's saved state with vser0's first port's host_connected flipped."""
        saved = honest(model)
        vser0 = saved.controllers["vser0"]
        wrong = replace(vser0.ports[0], host_connected=1 - vser0.ports[0].host_connected)
        ports = (wrong, *vser0.ports[1:])
        return SavedState({**saved.controllers, "vser0": replace(vser0, ports=ports)})

    monkeypatch.setattr(steps, "model_saved_state", planted)
    with pytest.raises(ScenarioFailure) as failure:
        hil_vm.migrate(mode="live")
    text = str(failure.value)
    assert "(migrate)" in text and "differs from the model's saved state" in text, text
    assert f"port[0] (id {port.nr}).host_connected" in text, text
    assert hil_vm.real.migrations[-1].mode == "live"  # type: ignore[attr-defined]
