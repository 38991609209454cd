from __future__ import annotations

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
    model.hotplug("p", controller="vser0")
    model.host_open("p")
    model.guest_open("p")
    return model


def error_text(excinfo: pytest.ExceptionInfo[ModelError]) -> str:
    return excinfo.value.text


def small_buffers(**kw: int) -> Behaviour:
    return Behaviour(**kw)
