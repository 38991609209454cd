"""QemuSystem's guest operations: the guest agent opens, reads, writes and polls
/dev/vportNpM, in the foreground or as background tickets."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from harness.backend.endpoint import Received
from harness.backend.system_base import (
    GuestFd,
    SystemBase,
)
from harness.guest.agent_client import AgentClient
from harness.model.payload import Payload

STREAM_THRESHOLD = 256 * 1024  # larger guest transfers go as agent streams (hash only)


class GuestOps(SystemBase):
    """Guest-side operations through the agent (fds per port instance)."""

    def guest_open(self, port: str, nonblocking: bool = False) -> None:
        """A second open goes to the kernel as a second fd, so its answer (EBUSY) is real."""
        _, agent, _ = self._need_guest()
        held = self._fds.get(port, [])
        if self._current_fd(port) is not None:
            self._agent_call(agent.open, port, nonblocking=nonblocking, extra=True)
            return
        opened = self._agent_call(
            agent.open, port, nonblocking=nonblocking, sigio=True, extra=bool(held)
        )
        handle = str(opened["handle"])
        self._fds.setdefault(port, []).append(GuestFd(handle, self._instance(port) or ""))
        self._sigio[handle] = []

    def guest_close(self, port: str) -> None:
        _, agent, _ = self._need_guest()
        handle = self._handle(port)
        held = [f for f in self._fds.get(port, []) if f.handle != handle]
        self._fds[port] = held
        self._agent_call(agent.close, handle)

    def guest_seek(self, port: str) -> None:
        _, agent, _ = self._need_guest()
        self._agent_call(agent.seek, self._handle(port))

    def guest_read(self, port: str, max_bytes: int, timeout: float) -> Received:
        """Read until `max_bytes` arrived (the model says that much is deliverable), or EOF."""
        _, agent, _ = self._need_guest()
        port = self._handle(port)
        if max_bytes > STREAM_THRESHOLD:
            result = self._agent_call(agent.recv_stream, port, max_bytes, timeout=timeout)
            return Received(int(result["bytes"]), result["sha256"], None, False)
        data = bytearray()
        eof = False
        deadline = time.monotonic() + timeout
        while len(data) < max_bytes or max_bytes == 0:
            chunk, eof = self._agent_call(
                agent.read,
                port,
                max_bytes - len(data) or 65536,
                timeout=max(0.1, deadline - time.monotonic()),
            )
            data += chunk
            if eof or not chunk or max_bytes == 0:
                break
        return Received(len(data), hashlib.sha256(data).hexdigest(), bytes(data), eof)

    def guest_write(self, port: str, payload: Payload, timeout: float = 60) -> int:
        _, agent, _ = self._need_guest()
        port = self._handle(port)
        if payload.seed is not None:
            result = self._agent_call(
                agent.send_stream, port, payload.seed, payload.length, timeout=timeout
            )
            return int(result["bytes"])
        return int(self._agent_call(agent.write, port, payload.data or b""))

    def start_guest_op(self, op: str, port: str, **args: Any) -> int:
        _, agent, _ = self._need_guest()
        if op == "open":  # the agent names the fd after the port, as guest_open does
            self._fds.setdefault(port, []).append(GuestFd(port, self._instance(port) or ""))
        else:
            port = self._handle(port)
        if op == "write" and "payload" in args:
            payload: Payload = args.pop("payload")
            if payload.seed is not None:
                return self._start_background(
                    agent, "send_stream", name=port, seed=payload.seed, length=payload.length
                )
            args["data"] = base64.b64encode(payload.data or b"").decode()
        return self._start_background(agent, op, name=port, **args)

    def _start_background(self, agent: AgentClient, op: str, **args: Any) -> int:
        result = self._agent_call(agent.call, "start", args={"op": op, "args": args})
        return int(result["ticket"])

    def guest_op_state(self, handle: int) -> tuple[bool, Any, str | None]:
        _, agent, _ = self._need_guest()
        state = agent.ticket(handle)
        if not state["done"]:
            return False, None, None
        reply = state["reply"]
        if reply.get("ok"):
            return True, _op_result(reply.get("result")), None
        return True, None, reply.get("error", {}).get("errno", "?")

    def sigio(self, port: str) -> list[frozenset[str]]:
        """Every SIGIO mask of this port's fd since it was opened (the agent hands out new ones)."""
        _, agent, _ = self._need_guest()
        handle = self._handle(port)
        fresh = [frozenset(e.get("events", [])) for e in self._agent_call(agent.sigio, handle)]
        self._sigio.setdefault(handle, []).extend(fresh)
        return list(self._sigio[handle])


def _op_result(result: Any) -> Any:
    """A background op's agent reply in the shape its foreground twin returns: bytes written
    for writes, a Received for reads, None for opens."""
    if not isinstance(result, dict):
        return result
    if "written" in result:
        return int(result["written"])
    if "data" in result:
        data = base64.b64decode(result["data"])
        return Received(len(data), hashlib.sha256(data).hexdigest(), data, bool(result.get("eof")))
    if "bytes" in result:
        if "eof" in result:
            return Received(int(result["bytes"]), result["sha256"], None, bool(result["eof"]))
        return int(result["bytes"])
    return None
