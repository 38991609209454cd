"""Fixtures shared by the real-guest tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.guest.agent_client import AgentClient
from harness.guest.guest import Guest


@pytest.fixture
def agent(hil_guest: Guest) -> Iterator[AgentClient]:
    """The guest agent of this test's guest, connected over its virtio-serial channel."""
    client = AgentClient(hil_guest).start()
    yield client
    client.disconnect()
