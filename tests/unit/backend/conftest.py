"""A host end connected to a real unix socket whose other end the test reads (QEMU's part)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backend.endpoint import HostEndpoint


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[HostEndpoint, socket.socket]]:
    path = tmp_path / "port.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    endpoint = HostEndpoint("org.test.0", path)
    endpoint.connect(timeout=5)
    peer, _ = listener.accept()
    listener.close()
    peer.settimeout(10)
    yield endpoint, peer
    endpoint.close()
    peer.close()
