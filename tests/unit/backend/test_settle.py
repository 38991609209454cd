"""settle(): a snapshot that cannot be read yet is not settled yet, and never a verdict early."""

from __future__ import annotations

import pytest

from harness.backend.settle import settle
from harness.backend.system_observation import ObservationError
from harness.model import VirtioSerialModel, diff


def predicted_and_other() -> tuple[object, object]:
    m = VirtioSerialModel()
    m.hotplug_controller("c")
    before = m.snapshot()
    m.hotplug("a", controller="c")
    return m.snapshot(), before


def test_an_unreadable_port_is_read_again_until_it_settles() -> None:
    predicted, _ = predicted_and_other()
    answers: list[object] = [ObservationError("vport2p0: debugfs read empty"), predicted]

    def read() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    actual, differences = settle(predicted, read, timeout=5, interval=0.01)  # type: ignore[arg-type]
    assert actual is predicted and differences == [] and not answers


def test_an_unreadable_port_at_the_deadline_is_the_error() -> None:
    predicted, _ = predicted_and_other()
    reads = 0

    def read() -> object:
        nonlocal reads
        reads += 1
        raise ObservationError("vport2p0: debugfs read empty")

    with pytest.raises(ObservationError, match="read empty"):
        settle(predicted, read, timeout=0.05, interval=0.01)  # type: ignore[arg-type]
    assert reads >= 2


def test_differences_are_returned_at_the_deadline() -> None:
    predicted, other = predicted_and_other()
    actual, differences = settle(predicted, lambda: other, timeout=0.05, interval=0.01)  # type: ignore[arg-type,return-value]
    assert actual is other and differences == diff(predicted, other)  # type: ignore[arg-type]
