"""One error root for the harness, and errors told apart by type, never by their text."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import socket

import pytest

import harness
from harness.backend.endpoint import HostEndpoint
from harness.backend.system import RealFailure
from harness.errors import HarnessError, OperationFailed
from harness.machine.errors import MachineError, ReadTimeout
from harness.model import ModelError
from harness.scenario.runner import ScenarioFailure, failure_text
from harness.scenario.system import StepFailure


def _harness_exception_types() -> list[type[BaseException]]:
    """Every exception class defined in a harness module (the guest agent is not one: it runs
    inside the guest with the standard library only, and its errors arrive as replies)."""
    found = []
    for module_info in pkgutil.walk_packages(harness.__path__, "harness."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_there_are_error_types_to_check():
    names = {t.__name__ for t in _harness_exception_types()}
    assert {"ModelError", "ImageBuildError", "QmpError", "RealFailure", "ScenarioError"} <= names


@pytest.mark.parametrize("error_type", _harness_exception_types(), ids=lambda t: t.__qualname__)
def test_every_harness_error_derives_from_the_root(error_type):
    assert issubclass(error_type, HarnessError)


def test_model_real_and_step_failures_share_the_operation_failed_text():
    for error_type in (ModelError, RealFailure, StepFailure):
        error = error_type("EBUSY", "second open")
        assert isinstance(error, OperationFailed)
        assert (error.text, error.detail, str(error)) == (
            "EBUSY",
            "second open",
            "EBUSY (second open)",
        )
        assert failure_text(error) == "EBUSY"


def test_an_error_without_device_text_is_not_a_step_outcome():
    assert failure_text(MachineError("QMP connection lost")) is None


def test_a_scenario_failure_is_a_harness_error_and_a_failed_assertion():
    assert issubclass(ScenarioFailure, HarnessError)
    assert issubclass(ScenarioFailure, AssertionError)


def test_a_read_that_got_nothing_says_so_by_attribute(tmp_path):
    path = tmp_path / "port.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        endpoint = HostEndpoint("org.example.quiet", path)
        endpoint.connect(timeout=5)
        peer, _ = server.accept()
        try:
            with pytest.raises(ReadTimeout) as info:
                endpoint.read(4, timeout=0.2)
            assert (info.value.received, info.value.wanted) == (0, 4)
            peer.sendall(b"ab")
            with pytest.raises(ReadTimeout) as info:
                endpoint.read(4, timeout=2)
            assert (info.value.received, info.value.wanted) == (2, 4)
        finally:
            endpoint.close()
            peer.close()
