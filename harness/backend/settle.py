"""Waiting for the real system to agree with a prediction, bounded, then saying how it differs.

Real state lags (a PORT_OPEN crosses the guest's control queue, a byte counter moves when the
driver's buffer is filled), so one snapshot is not a verdict: poll until equal or out of time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness.backend.system_observation import ObservationError
from harness.model.snapshot import Difference, Snapshot, diff


def settle(
    predicted: Snapshot, read_actual: Callable[[], Snapshot], timeout: float, interval: float = 0.2
) -> tuple[Snapshot, list[Difference]]:
    """The first real snapshot equal to `predicted`, or the last one and its differences.

    A snapshot that cannot be read whole (ObservationError: a port hot-plugged a moment ago
    whose debugfs file the driver has not filled in yet; found by exploration on 6.1) is
    not settled yet either; at the deadline that error is the answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            actual = read_actual()
        except ObservationError:
            if time.monotonic() >= deadline:
                raise
        else:
            differences = diff(predicted, actual)
            if not differences or time.monotonic() >= deadline:
                return actual, differences
        time.sleep(interval)  # no event tells us debugfs/qtree changed: poll, bounded
