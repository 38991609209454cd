"""QemuSystem's host ends: the chardev sockets the harness connects to (host open/close,
write, read, stall)."""

from __future__ import annotations

from harness.backend.endpoint import HostEndpoint, Received
from harness.backend.system_base import (
    RealFailure,
    SystemBase,
)
from harness.machine.errors import ReadTimeout
from harness.model.payload import Payload


class HostSide(SystemBase):
    """Host-side operations (the real counterparts of the model's host_* operations)."""

    def _host_end(self, port: str, connected: bool = True) -> HostEndpoint:
        """The endpoint, failing as a host socket would when it is (not) connected (the
        model's ENOTCONN / EISCONN; found by exploration: close was silently accepted)."""
        entry = self._ports.get(port)
        if entry is not None and entry.endpoint is None:  # backend: none, as the model says
            raise RealFailure("ENOTCONN" if connected else "ECONNREFUSED", f"{port}: no chardev")
        endpoint = self._endpoint(port)
        if connected and not endpoint.connected:
            raise RealFailure("ENOTCONN", f"host end of {port} is not connected")
        if not connected and endpoint.connected:
            raise RealFailure("EISCONN", f"host end of {port} is already connected")
        return endpoint

    def host_open(self, port: str) -> None:
        self._host_end(port, connected=False).connect()

    def host_close(self, port: str) -> None:
        self._host_end(port).close()

    def host_write(self, port: str, payload: Payload) -> None:
        self._host_end(port).write(payload)

    def host_read(self, port: str, length: int, timeout: float) -> Received:
        """Nothing at all arriving in time is the host's EAGAIN (its socket is non-blocking in
        spirit: the harness never waits on the guest unbounded).  An unplugged port's host
        end still gives what it received before the unplug (ENODEV once that is read)."""
        kept = self._unplugged_ends.get(port)
        endpoint = kept if kept is not None and kept.buffered_in else self._host_end(port)
        try:
            return endpoint.read(length, timeout)
        except ReadTimeout as error:
            if error.received == 0 and endpoint.buffered_in == 0:
                raise RealFailure("EAGAIN", str(error)) from None
            raise

    def host_stall(self, port: str, stalled: bool) -> None:
        self._host_end(port).stall(stalled)
