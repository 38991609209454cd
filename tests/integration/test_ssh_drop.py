"""After `ssh_drop` every step that needs an SSH command reopens the session by itself.

Found by the 20-minute exploration: `ssh_drop` then `module_reload` (which runs rmmod/insmod
over SSH) failed with "SSH is not connected" instead of reconnecting.
"""

from __future__ import annotations

import pytest

from harness import VM
from harness.errors import NotApplicable

pytestmark = pytest.mark.qemu


def test_module_reload_after_ssh_drop_reconnects(hil_vm: VM) -> None:
    port = hil_vm.hotplug("org.test.drop")
    hil_vm.step("ssh_drop", {})
    try:
        hil_vm.step("module_reload", {})
    except NotApplicable as reason:
        pytest.skip(str(reason))
    hil_vm.step("ssh_drop", {})
    hil_vm.step("module_reload", {})  # twice: the reopened session can be dropped again
    with port.host.open(), port.guest.open():
        port.host.write(b"after reconnect")
        assert port.guest.read(15) == b"after reconnect"
    hil_vm.check(port)
