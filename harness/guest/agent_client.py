"""Host side of the guest agent (harness/guest/agent/hil_agent.py).

`AgentClient(guest).start()` makes sure the daemon runs in the guest and opens a persistent SSH
exec channel running `hil_agent.py bridge`; `call(op, **args)` sends one JSON-lines request and
returns the reply's result or raises `AgentError(errno, message)`.  A dropped SSH connection is
re-established transparently (the daemon keeps its open fds); `channel="serial"` runs one request
through `hil_agent.py once` on the serial console instead.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import select
import socket
import time
from typing import Any, Literal

import paramiko

from harness.errors import HarnessError
from harness.guest.guest import Guest
from harness.machine.errors import MachineError, WaitTimeout

AGENT_PATH = "/usr/lib/hil/hil_agent.py"
AGENT_COMMAND = f"python3 {AGENT_PATH}"
REPLY_PREFIX = "HILAGENT "
_REPLY_LINE = re.compile(r"HILAGENT ([A-Za-z0-9+/=]+)")
# Ops that may be re-sent after the connection broke while waiting for their reply.
IDEMPOTENT_OPS = frozenset(
    {"ping", "list_ports", "open_ports", "wait_port", "poll", "ticket", "dmesg_problems"}
)

AgentChannel = Literal["ssh", "serial"]
#: How requests reach the daemon: an SSH exec channel running `hil_agent.py bridge`, or the
#: daemon's TCP listener through the QEMU user-net forward (no SSH: milliseconds after a
#: restore; SSH is then only used to start a daemon that is not running yet).
AgentTransport = Literal["ssh", "tcp"]


class AgentError(HarnessError):
    """The agent answered ``ok: false``; `errno` is a name such as "EBUSY"."""

    def __init__(
        self, errno: str, message: str, op: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{op + ': ' if op else ''}{errno}: {message}")
        self.errno = errno
        self.message = message
        self.op = op
        self.details = details or {}


class AgentTimeout(WaitTimeout):
    """No reply to a request in time."""


class AgentConnectionError(MachineError):
    """The connection to the agent broke and the request could not be retried safely."""


def encode_request(ident: int, op: str, args: dict[str, Any]) -> bytes:
    message = {"id": ident, "op": op, "args": args}
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def decode_reply(line: bytes | str) -> dict[str, Any]:
    reply = json.loads(line)
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ValueError(f"not an agent reply: {line!r}")
    return reply


def reply_result(reply: dict[str, Any], op: str = "") -> Any:
    """The result of an ok reply, or AgentError for an error reply."""
    if reply.get("ok"):
        return reply.get("result")
    error = reply.get("error") or {}
    details = {k: v for k, v in error.items() if k not in ("errno", "message")}
    raise AgentError(str(error.get("errno", "EIO")), str(error.get("message", "")), op, details)


def result_object(result: Any, op: str) -> dict[str, Any]:
    """An op's result where the protocol promises a JSON object (a wrong shape is the agent's
    bug, said as such, not a KeyError somewhere later)."""
    if not isinstance(result, dict):
        raise AgentConnectionError(f"agent op {op!r} answered {_short(result)}, not an object")
    return result


def result_list(result: Any, op: str) -> list[Any]:
    """An op's result where the protocol promises a JSON list."""
    if not isinstance(result, list):
        raise AgentConnectionError(f"agent op {op!r} answered {_short(result)}, not a list")
    return result


def parse_serial_reply(output: str) -> dict[str, Any]:
    match = _REPLY_LINE.search(output)
    if match is None:
        raise AgentConnectionError(f"no HILAGENT line in the serial output: {output!r}")
    return decode_reply(base64.b64decode(match.group(1)))


def _short(data: object, limit: int = 400) -> str:
    text = data if isinstance(data, str) else json.dumps(data, default=str)
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


class _SocketChannel:
    """A TCP connection to the daemon with the part of paramiko.Channel's interface that the
    request loop uses, so both transports share it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.closed = False
        self.eof_received = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv_ready(self) -> bool:
        return bool(select.select([self._sock], [], [], 0)[0])

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self.eof_received = self.eof_received or not data
        return data

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv_stderr_ready(self) -> bool:
        return False

    def recv_stderr(self, size: int) -> bytes:
        return b""

    def exit_status_ready(self) -> bool:
        return False

    exit_status = -1  # only read when exit_status_ready()

    def close(self) -> None:
        self.closed = True
        self._sock.close()


class AgentClient:
    def __init__(
        self, guest: Guest, start_timeout: float = 60, transport: AgentTransport = "ssh"
    ) -> None:
        self.guest = guest
        self.start_timeout = start_timeout
        self.transport = transport
        self.log: list[str] = []
        self.reconnects = 0
        self._ids = itertools.count(1)
        self._channel: paramiko.Channel | _SocketChannel | None = None
        self._buffer = b""

    # -- connection ------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {text}")

    def _transport(self) -> paramiko.Transport | None:
        if self.guest.ssh is None:
            return None
        try:
            transport = self.guest.ssh.client.get_transport()
        except MachineError:
            return None
        return transport if transport is not None and transport.is_active() else None

    def start(self) -> AgentClient:
        """Ensure the daemon runs, then open the persistent bridge channel (with transport
        "tcp": connect to a running daemon directly; only if none answers, start it over SSH)."""
        if self.transport == "tcp" and self.open_direct() is not None:
            return self
        if self._transport() is None:
            lazy = self.guest.ssh is None  # never connected (restored guest): not a reconnect
            self._note("ssh not connected yet: connecting" if lazy else "ssh down: reconnecting")
            self.guest.connect_ssh(self.start_timeout)
            self.reconnects += 0 if lazy else 1
        result = self.guest.run(f"{AGENT_COMMAND} ensure", timeout=self.start_timeout)
        if result.exit_code != 0:
            raise AgentConnectionError(
                f"`{AGENT_COMMAND} ensure` failed ({result.exit_code}): "
                f"{result.output}{result.stderr}"
            )
        if self.transport == "tcp":
            if self.open_direct() is None:
                raise AgentConnectionError(
                    "the guest agent runs but does not answer on its TCP forward "
                    f"(host port {self.guest.machine.agent_port})"
                )
            return self
        transport = self._transport()
        assert transport is not None
        channel = transport.open_session(timeout=self.start_timeout)
        channel.exec_command(f"{AGENT_COMMAND} bridge")
        self._channel = channel
        self._buffer = b""
        self._note("bridge channel open")
        return self

    def open_direct(
        self, timeout: float = 5.0, op: str = "ping", args: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Connect to the daemon's TCP listener and send `op` as the probe (the forward
        accepts even when nothing listens in the guest, then closes): the reply, or None."""
        port = self.guest.machine.agent_port
        if port is None:
            return None
        self._drop_channel()
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError:
            return None
        sock.settimeout(None)
        self._channel = _SocketChannel(sock)
        ident = next(self._ids)
        try:
            reply = self._request_ssh(ident, op, args or {}, timeout)
        except (OSError, AgentConnectionError, AgentTimeout) as error:
            self._note(f"tcp transport not answering: {error!r}")
            self._drop_channel()
            return None
        self._note(f"tcp channel open (host port {port})")
        return reply

    def _link_down(self) -> bool:
        """The bridge's carrier is gone: the SSH transport (the TCP channel notices EOF)."""
        return self.transport == "ssh" and self._transport() is None

    def _drop_channel(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self._channel.close()
        self._channel = None
        self._buffer = b""

    def _ready(self) -> paramiko.Channel | _SocketChannel:
        channel = self._channel
        if channel is None or channel.closed or self._link_down():
            self._note("bridge down: restarting ensure + bridge")
            self._drop_channel()
            self.start()
            channel = self._channel
        assert channel is not None
        return channel

    def disconnect(self) -> None:
        """Close the bridge channel (the daemon and its open fds stay)."""
        self._drop_channel()

    # -- requests --------------------------------------------------------------------------

    def call(
        self,
        op: str,
        timeout: float = 30,
        channel: AgentChannel = "ssh",
        args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run `op` in the agent and return its result; AgentError if it failed.

        Op arguments are keyword arguments, or `args=` for names that clash with `timeout`
        and `channel` (the call's own reply timeout and transport)."""
        return reply_result(self.request(op, {**(args or {}), **kwargs}, timeout, channel), op)

    def request(
        self, op: str, args: dict[str, Any], timeout: float = 30, channel: AgentChannel = "ssh"
    ) -> dict[str, Any]:
        """The raw reply dict for one request."""
        ident = next(self._ids)
        if channel == "serial":
            return self._request_serial(ident, op, args, timeout)
        for attempt in (1, 2):
            try:
                return self._request_ssh(ident, op, args, timeout)
            except (OSError, EOFError, paramiko.SSHException, AgentConnectionError) as error:
                self._note(f"!! {op} #{ident}: connection broke ({error!r})")
                self._drop_channel()
                if attempt == 2 or op not in IDEMPOTENT_OPS:
                    raise AgentConnectionError(
                        f"connection to the guest agent broke during {op!r} (#{ident}): {error!r}"
                    ) from error
        raise AssertionError("unreachable")

    def _request_ssh(
        self, ident: int, op: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        channel = self._ready()
        payload = encode_request(ident, op, args)
        self._note(f"-> {_short(payload.decode().strip())}")
        channel.sendall(payload)
        deadline = time.monotonic() + timeout
        while True:
            line = self._readline(channel, deadline, op, ident)
            try:
                reply = decode_reply(line)
            except ValueError:
                self._note(f"<- (garbage) {_short(line.decode(errors='replace'))}")
                continue
            if reply.get("id") != ident:
                self._note(f"<- (stale, dropped) {_short(reply)}")
                continue
            self._note(f"<- {_short(reply)}")
            return reply

    def _readline(
        self, channel: paramiko.Channel | _SocketChannel, deadline: float, op: str, ident: int
    ) -> bytes:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._note(f"!! {op} #{ident}: no reply in time; dropping the bridge")
                # The daemon's connection thread may be stuck in this op: use a new connection.
                self._drop_channel()
                raise AgentTimeout(f"guest agent op {op!r} (#{ident}) got no reply in time")
            if channel.recv_ready():
                data = channel.recv(65536)
            elif channel.closed or channel.eof_received:
                stderr = b""
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                status = channel.exit_status if channel.exit_status_ready() else "?"
                raise AgentConnectionError(
                    f"agent bridge closed (exit {status}): {stderr.decode(errors='replace')[-500:]}"
                )
            else:
                select.select([channel], [], [], min(remaining, 0.2))
                if self._link_down():
                    raise AgentConnectionError("SSH transport went down")
                continue
            if not data:
                raise AgentConnectionError("agent bridge returned EOF")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _request_serial(
        self, ident: int, op: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        payload = encode_request(ident, op, args)
        self._note(f"-> (serial) {_short(payload.decode().strip())}")
        encoded = base64.b64encode(payload).decode()
        result = self.guest.serial.run(f"{AGENT_COMMAND} once {encoded}", timeout)
        reply = parse_serial_reply(result.output)
        self._note(f"<- (serial) {_short(reply)}")
        return reply

    # -- convenience -----------------------------------------------------------------------

    def ping(self, **kw: Any) -> dict[str, Any]:
        return result_object(self.call("ping", **kw), "ping")

    def list_ports(self, **kw: Any) -> list[dict[str, Any]]:
        return result_list(self.call("list_ports", **kw), "list_ports")

    def port_info(self, name: str) -> dict[str, Any]:
        for entry in self.list_ports():
            if name in (entry["name"], entry["dev"]):
                return entry
        raise AgentError("ENOENT", f"no port {name!r} in list_ports", "list_ports")

    def wait_port(self, name: str, timeout: float = 20, gone: bool = False) -> dict[str, Any]:
        """Wait (in the guest, bounded) until port `name` appears (or is gone)."""
        return result_object(
            self.call(
                "wait_port", timeout + 15, args={"name": name, "timeout": timeout, "gone": gone}
            ),
            "wait_port",
        )

    def open(
        self, name: str, nonblocking: bool = False, sigio: bool = False, extra: bool = False
    ) -> dict[str, Any]:
        """Open port `name`; `extra=True` opens another fd (handle "<name>#k")."""
        return result_object(
            self.call("open", name=name, nonblocking=nonblocking, sigio=sigio, extra=extra), "open"
        )

    def close(self, name: str) -> dict[str, Any]:
        """Close the agent's fd for port handle `name` (see disconnect() for the channel)."""
        return result_object(self.call("close", name=name), "close")

    def poll(self, name: str, timeout: float = 0) -> list[str]:
        """Names of the poll events ("IN", "OUT", "HUP", "ERR", "NVAL", "PRI")."""
        return result_list(
            result_object(
                self.call("poll", timeout + 30, args={"name": name, "timeout": timeout}), "poll"
            )["events"],
            "poll",
        )

    def read(
        self, name: str, max_bytes: int = 65536, timeout: float | None = None
    ) -> tuple[bytes, bool]:
        """(data, eof) of one read() call."""
        result = self.call(
            "read",
            (timeout or 0) + 30,
            args={"name": name, "max_bytes": max_bytes, "timeout": timeout},
        )
        return base64.b64decode(result["data"]), bool(result["eof"])

    def write(self, name: str, data: bytes, single: bool = False) -> int:
        result = self.call("write", name=name, data=base64.b64encode(data).decode(), single=single)
        return int(result["written"])

    def seek(self, name: str, offset: int = 0, whence: int = 1) -> int:
        return int(self.call("seek", name=name, offset=offset, whence=whence)["offset"])

    def start_background(self, op: str, **args: Any) -> int:
        return int(self.call("start", args={"op": op, "args": args})["ticket"])

    def ticket(self, ticket: int, wait: float = 0) -> dict[str, Any]:
        return result_object(self.call("ticket", wait + 30, ticket=ticket, wait=wait), "ticket")

    def wait_ticket(self, ticket: int, timeout: float = 30) -> Any:
        """The result of a background op once done (AgentError if it failed)."""
        state = self.ticket(ticket, wait=timeout)
        if not state["done"]:
            raise AgentTimeout(
                f"background {state['op']} (ticket {ticket}) not done in {timeout} s"
            )
        return reply_result(state["reply"], state["op"])

    def sigio(self, name: str) -> list[dict[str, Any]]:
        return result_list(self.call("sigio", name=name), "sigio")

    def send_stream(
        self,
        name: str,
        seed: int,
        length: int,
        chunk: int = 32768,
        timeout: float = 300,
        offset: int = 0,
        sha256: bool = False,
    ) -> dict[str, Any]:
        """Write generated bytes from the guest; the host checks them (`sha256` also hashes
        them in the guest, which is what is slow under TCG)."""
        result = self.call(
            "send_stream",
            timeout,
            name=name,
            seed=seed,
            length=length,
            chunk=chunk,
            offset=offset,
            sha256=sha256,
        )
        return result_object(result, "send_stream")

    def check_stream(
        self,
        name: str,
        seed: int,
        length: int,
        offset: int = 0,
        timeout: float = 30,
        call_timeout: float = 300,
    ) -> dict[str, Any]:
        """Read `length` bytes in the guest and check them against the generated stream:
        `match`, exact `bytes`, and on a mismatch the first bad 4 KiB block's offset."""
        result = self.call(
            "check_stream",
            call_timeout,
            args={
                "name": name,
                "seed": seed,
                "length": length,
                "offset": offset,
                "timeout": timeout,
            },
        )
        return result_object(result, "check_stream")

    def recv_stream(
        self,
        name: str,
        length: int,
        timeout: float = 30,
        slow: float | None = None,
        call_timeout: float = 300,
    ) -> dict[str, Any]:
        return result_object(
            self.call(
                "recv_stream",
                call_timeout,
                args={"name": name, "length": length, "timeout": timeout, "slow": slow},
            ),
            "recv_stream",
        )

    def kmsg(self) -> list[dict[str, Any]]:
        return result_list(self.call("kmsg"), "kmsg")
