"""QemuSystem's host ends: the chardev sockets the harness connects to (host open/close,
write, read, stall)."""

from __future__ import annotations

from harness.backend.endpoint import Received
from harness.backend.system_base import (
    RealFailure,
    SystemBase,
)
from harness.machine.errors import ReadTimeout
from harness.model.payload import Payload


class HostSide(SystemBase):
    """Host-side operations (the real counterparts of the model's host_* operations)."""

    def host_open(self, port: str) -> None:
        self._endpoint(port).connect()

    def host_close(self, port: str) -> None:
        self._endpoint(port).close()

    def host_write(self, port: str, payload: Payload) -> None:
        self._endpoint(port).write(payload)

    def host_read(self, port: str, length: int, timeout: float) -> Received:
        """Nothing at all arriving in time is the host's EAGAIN (its socket is non-blocking in
        spirit: the harness never waits on the guest unbounded)."""
        endpoint = self._endpoint(port)
        if not endpoint.connected:
            raise RealFailure("ENOTCONN", f"host end of {port} is not connected")
        try:
            return endpoint.read(length, timeout)
        except ReadTimeout as error:
            if error.received == 0 and endpoint.buffered_in == 0:
                raise RealFailure("EAGAIN", str(error)) from None
            raise

    def host_stall(self, port: str, stalled: bool) -> None:
        self._endpoint(port).stall(stalled)
