"""Commands over SSH (paramiko), with the guest's host key pinned from the image build."""

from __future__ import annotations

import base64
import logging
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko

from harness.machine.console import CommandResult
from harness.machine.errors import MachineError, WaitTimeout

_TRANSPORT_LOG = logging.getLogger("paramiko.transport")


@contextmanager
def _quiet_transport() -> Iterator[None]:
    """Refused banners while dropbear starts are expected: keep paramiko's tracebacks of them
    out of logs and failure reports (pytest captures even non-propagating loggers)."""
    level = _TRANSPORT_LOG.level
    _TRANSPORT_LOG.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        _TRANSPORT_LOG.setLevel(level)


class SshChannel:
    def __init__(
        self, port: int, client_key: str, host_public_key: str, host: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.port = port
        self._key = paramiko.ECDSAKey.from_private_key_file(client_key)
        key_type, key_data = host_public_key.split()[:2]
        self._host_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data))
        self._client: paramiko.SSHClient | None = None

    def connect(self, timeout: float) -> None:
        """Retry until the guest's dropbear answers; every attempt is bounded too."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with _quiet_transport():
                    self._client = self._open(min(5.0, max(0.5, deadline - time.monotonic())))
                return
            except (OSError, paramiko.SSHException, EOFError) as error:
                last_error = error
                time.sleep(0.2)  # dropbear not listening yet; nothing to wait on but time
        raise WaitTimeout(
            f"SSH to 127.0.0.1:{self.port} not ready within {timeout:.0f} s "
            f"(last error: {last_error!r})"
        )

    def _open(self, timeout: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.get_host_keys().add(
            f"[{self.host}]:{self.port}", self._host_key.get_name(), self._host_key
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.host,
            self.port,
            username="root",
            pkey=self._key,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(5)
        return client

    @property
    def connected(self) -> bool:
        """Whether a command can be run now: a dropped or timed-out session must be reopened."""
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise MachineError("SSH is not connected: call connect() first")
        return self._client

    def run(self, command: str, timeout: float = 30) -> CommandResult:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise MachineError(f"SSH connection to port {self.port} is closed")
        channel = transport.open_session(timeout=timeout)
        try:
            channel.exec_command(command)
            out, err = self._collect(channel, time.monotonic() + timeout, command)
            code = channel.recv_exit_status()
        finally:
            channel.close()
        return CommandResult(
            command, code, out.decode(errors="replace"), err.decode(errors="replace"), channel="ssh"
        )

    @staticmethod
    def _collect(channel: paramiko.Channel, deadline: float, command: str) -> tuple[bytes, bytes]:
        """Read stdout and stderr until exit status and EOF; select() wakes on stdout data,
        the short cap covers stderr, which does not signal the channel's fd."""
        out, err = bytearray(), bytearray()
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if (
                channel.exit_status_ready()
                and channel.eof_received
                and not (channel.recv_ready() or channel.recv_stderr_ready())
            ):
                return bytes(out), bytes(err)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"SSH command did not finish in time: {command!r}")
            select.select([channel], [], [], min(remaining, 0.05))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
