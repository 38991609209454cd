"""Errors of the machine layer; each names what failed, with QEMU's own words where it has any."""

from __future__ import annotations

from harness.errors import HarnessError


class MachineError(HarnessError):
    """QEMU could not be started, reached or stopped as asked."""


class QmpError(MachineError):
    """QEMU answered a QMP command with an error; `desc` is QEMU's text, verbatim."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP {command} failed: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class WaitTimeout(MachineError):
    """A bounded wait ran out; the message names what was awaited."""


class ReadTimeout(WaitTimeout):
    """A read of `wanted` bytes got only `received` of them in time (0: nothing arrived)."""

    def __init__(self, message: str, received: int, wanted: int) -> None:
        super().__init__(message)
        self.received = received
        self.wanted = wanted
