"""The guest's serial console, on a socket the harness owns from before QEMU starts.

A drain thread reads continuously: a console nobody reads fills the socket and stalls the
guest's printk, so the console is always drained into a log (file and memory) that boot waits
and kernel-message scans look at. Shell commands use pexpect on the same socket while holding the
lock that pauses the drain, so their output is read by exactly one reader.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect
from pexpect import fdpexpect

from harness.machine.errors import MachineError, WaitTimeout

_command_ids = itertools.count(1)


@dataclass(frozen=True)
class CommandResult:
    """What a guest command did; shared by every channel (serial, SSH)."""

    command: str
    exit_code: int
    output: str
    stderr: str = ""
    channel: str = "serial"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class _ConsoleLog:
    """pexpect's logfile_read target: every byte read by anyone lands here, in order."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("ab", buffering=0)
        self.buffer = bytearray()
        self.changed = threading.Condition()
        self.first_output_at: float | None = None

    def write(self, data: bytes) -> None:
        with self.changed:
            if self.first_output_at is None and data:
                self.first_output_at = time.monotonic()
            self.buffer += data
            if not self._file.closed:
                self._file.write(data)
            self.changed.notify_all()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self.changed:
            self._file.close()


class Console:
    def __init__(self, name: str, sock: socket.socket, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._sock = sock
        self._log = _ConsoleLog(log_path)
        self._child = fdpexpect.fdspawn(sock.fileno(), timeout=30)
        self._child.logfile_read = self._log
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._eof = False
        self._drain = threading.Thread(
            target=self._drain_forever, name=f"console-{name}", daemon=True
        )
        self._drain.start()

    # -- the log -------------------------------------------------------------------------

    @property
    def first_output_at(self) -> float | None:
        return self._log.first_output_at

    def text(self, since: int = 0) -> str:
        with self._log.changed:
            return self._log.buffer[since:].decode(errors="replace")

    def position(self) -> int:
        with self._log.changed:
            return len(self._log.buffer)

    def wait_for(self, pattern: str, timeout: float, what: str, since: int = 0) -> re.Match[str]:
        """Wait until the log (from byte `since`) matches `pattern`; history counts."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._log.changed:
            while True:
                match = regex.search(self._log.buffer[since:].decode(errors="replace"))
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    reason = (
                        "the console closed (QEMU exited)"
                        if self._eof
                        else f"{timeout:.0f} s passed"
                    )
                    raise WaitTimeout(
                        f"{self.name}: waited for {what} (/{pattern}/) on the serial console, "
                        f"but {reason}; last console lines:\n{self._tail()}"
                    )
                self._log.changed.wait(min(remaining, 0.5))

    def _tail(self, lines: int = 15) -> str:
        return "\n".join(self._log.buffer.decode(errors="replace").splitlines()[-lines:])

    # -- commands ------------------------------------------------------------------------

    def run(self, command: str, timeout: float = 30) -> CommandResult:
        """Run `command` in the console's root shell, framed by markers.

        The markers are sent split by quotes ("__HIL""_B_7") and only the shell's printf joins
        them, so the terminal's echo of our input can never be mistaken for output.
        """
        if "\n" in command:
            raise ValueError("serial commands are single lines; join them with ';'")
        ident = next(_command_ids)
        begin, end = f"__HIL_B_{ident}", f"__HIL_E_{ident}"
        line = (
            f'printf \'%s\\n\' "__HIL""_B_{ident}"; ( {command} ) 2>&1; '
            f'printf \'\\n%s %d\\n\' "__HIL""_E_{ident}" $?'
        )
        pattern = re.compile(rf"{begin}\r?\n(.*?)\r?\n{end} (\d+)\r?\n".encode(), re.DOTALL)
        with self._lock:
            self._child.sendline(line)
            try:
                self._child.expect(pattern, timeout=timeout)
            except pexpect.TIMEOUT:
                raise WaitTimeout(
                    f"{self.name}: serial command did not finish within {timeout:.0f} s: "
                    f"{command!r}"
                ) from None
            except pexpect.EOF:
                raise MachineError(
                    f"{self.name}: console closed while running {command!r}"
                ) from None
            match = self._child.match
        assert match is not None
        output = match.group(1).decode(errors="replace").replace("\r\n", "\n")
        return CommandResult(command, int(match.group(2)), output, channel="serial")

    def send_raw(self, data: str) -> None:
        with self._lock:
            self._child.send(data)

    # -- lifetime ------------------------------------------------------------------------

    def _drain_forever(self) -> None:
        while not self._closed.is_set():
            try:
                readable, _, _ = select.select([self._sock], [], [], 0.2)
            except (OSError, ValueError):
                break
            if not readable:
                continue
            with self._lock:
                try:
                    self._child.read_nonblocking(65536, timeout=0)
                except pexpect.TIMEOUT:
                    continue
                except (pexpect.EOF, OSError):
                    break
        self._eof = True
        with self._log.changed:
            self._log.changed.notify_all()

    def close(self) -> None:
        self._closed.set()
        self._drain.join(timeout=2)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._log.close()
