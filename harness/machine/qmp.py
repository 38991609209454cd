"""A synchronous face on qemu.qmp's asyncio client, with every event kept in order.

qemu.qmp is asyncio-only; tests are synchronous. One event loop runs in a daemon thread per
machine; each call crosses into it with a timeout. Unlike a polled sync QMP (labgrid's), no event
is ever dropped: a listener task appends every event to `events` the moment it arrives, and
waiters block on a condition over that list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import EventListener, QMPClient, QMPError
from qemu.qmp.qmp_client import ExecuteError

from harness.machine.errors import MachineError, QmpError, WaitTimeout

T = TypeVar("T")
log = logging.getLogger("hil.machine")


@dataclass(frozen=True)
class QmpEvent:
    name: str
    data: dict[str, Any]
    timestamp: float  # QEMU's own timestamp (seconds)
    index: int  # position in the machine's event list: the order QEMU sent them


class Transcript:
    """Append-only JSON-lines record of QMP commands, replies and events."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = path.open("a", buffering=1)

    def record(self, kind: str, payload: object) -> None:
        line = json.dumps({"t": round(time.time(), 6), "kind": kind, "msg": payload}, default=str)
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


class QmpSession:
    """QMP over an already-connected socket (one end of a socketpair given to QEMU)."""

    def __init__(self, name: str, transcript: Transcript) -> None:
        self.name = name
        self.transcript = transcript
        self.events: list[QmpEvent] = []
        self._events_changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{name}", daemon=True
        )
        self._thread.start()
        self._client = QMPClient(name)
        self._listener = EventListener()
        self._pump_task: asyncio.Task[None] | None = None

    def connect(self, sock: socket.socket, timeout: float) -> dict[str, Any]:
        """Negotiate capabilities; raises if QEMU closes the socket (it failed to start)."""
        self._client.register_listener(self._listener)
        self._call(self._client.connect(sock), timeout, "the QMP greeting")
        self._pump_task = self._call(self._start_pump(), timeout, "the QMP event pump")
        greeting = self._client.greeting
        fields: dict[str, Any] = greeting._asdict() if greeting is not None else {}
        version = fields["QMP"]["version"] if greeting is not None else {}
        self.transcript.record("greeting", version)
        return dict(version)

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30
    ) -> Any:
        self.transcript.record("command", {"execute": command, "arguments": arguments or {}})
        log.debug("%s: QMP %s %s", self.name, command, arguments or {})
        try:
            reply = self._call(
                self._client.execute(command, arguments), timeout, f"the reply to QMP {command}"
            )
        except ExecuteError as error:
            desc = str(error)
            self.transcript.record("error", {"execute": command, "desc": desc})
            raise QmpError(command, error.error_class, desc) from None
        self.transcript.record("return", {"execute": command, "return": reply})
        return reply

    def hmp(self, command_line: str, timeout: float = 30) -> str:
        return str(self.execute("human-monitor-command", {"command-line": command_line}, timeout))

    def wait_event(
        self,
        name: str,
        timeout: float,
        where: Callable[[QmpEvent], bool] = lambda _e: True,
        after: int = 0,
        what: str = "",
    ) -> QmpEvent:
        """First event `name` at index >= `after` matching `where`; already-received ones count."""
        deadline = time.monotonic() + timeout
        with self._events_changed:
            while True:
                for event in self.events[after:]:
                    if event.name == name and where(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"{self.name}: no QMP event {name}{' ' + what if what else ''} within "
                        f"{timeout:.0f} s (seen since #{after}: "
                        f"{[e.name for e in self.events[after:]][-10:]})"
                    )
                self._events_changed.wait(remaining)

    def close(self, timeout: float = 5) -> None:
        """Idempotent: a machine may be shut down by the test and again by its fixture."""
        if not self._thread.is_alive():
            return
        if self._client.runstate is not None:
            with contextlib.suppress(MachineError, OSError):
                self._call(self._client.disconnect(), timeout, "QMP disconnect")
        if self._pump_task is not None:
            self._call(self._stop_pump(), timeout, "the QMP event pump to stop")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()  # its selector and self-pipe: fds that would leak per machine

    async def _start_pump(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._pump_events())

    async def _stop_pump(self) -> None:
        assert self._pump_task is not None
        self._pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump_task

    async def _pump_events(self) -> None:
        async for message in self._listener:
            raw: dict[str, Any] = dict(message)
            stamp = raw.get("timestamp", {})
            seconds = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
            with self._events_changed:
                event = QmpEvent(raw["event"], raw.get("data", {}), seconds, len(self.events))
                self.events.append(event)
                self._events_changed.notify_all()
            self.transcript.record("event", raw)

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise WaitTimeout(f"{self.name}: no {what} within {timeout:.0f} s") from None
        except ExecuteError:
            raise
        except (ConnectionError, EOFError, QMPError) as error:
            raise MachineError(
                f"{self.name}: QMP connection lost while waiting for {what}: {error}"
            ) from error
