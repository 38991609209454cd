from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from harness.model import Behaviour, ModelError, VirtioSerialModel


@pytest.fixture
def model() -> VirtioSerialModel:
    m = VirtioSerialModel()
    m.hotplug_controller("vser0")
    return m


@pytest.fixture
def opened(model: VirtioSerialModel) -> VirtioSerialModel:
    """Serial port 'p' (id 1), host connected, guest fd open (blocking)."""
    return plug_open(model, "p", controller="vser0")


def plug_open(
    m: VirtioSerialModel, name: str, controller: str = "c", *, stalled: bool = False
) -> VirtioSerialModel:
    """Hotplug serial port ``name``, connect its host end and open its guest fd (blocking);
    ``stalled``: the host then stops reading, so guest writes pile up in QEMU."""
    m.hotplug(name, controller=controller)
    m.host_open(name)
    m.guest_open(name)
    if stalled:
        m.set_host_backpressure(name, True)
    return m


def open_port(name: str = "p", *, stalled: bool = False, **behaviour: Any) -> VirtioSerialModel:
    """A fresh model (``behaviour``: Behaviour fields) with controller 'c' and ``plug_open``'s
    port ``name``: the setup most data-path tests start from."""
    m = VirtioSerialModel(Behaviour(**behaviour))
    m.hotplug_controller("c")
    return plug_open(m, name, stalled=stalled)


def error_of(call: Callable[..., object], *args: Any, **kw: Any) -> str:
    """The full text (``text (detail)``) of the ModelError that ``call(*args, **kw)`` must raise."""
    with pytest.raises(ModelError) as err:
        call(*args, **kw)
    return str(err.value)


def error_text(excinfo: pytest.ExceptionInfo[ModelError]) -> str:
    return excinfo.value.text


def small_buffers(**kw: int) -> Behaviour:
    return Behaviour(**kw)
