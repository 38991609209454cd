"""Python tests with the same oracle as YAML scenarios (README, "Python tests")."""

from __future__ import annotations

import pytest

from harness import VM, ControllerDecl, MachineDecl, OperationError, PortDecl
from harness.plugin.fixtures import VMFactory

pytestmark = pytest.mark.qemu
MIB = 1024 * 1024


def test_echo_throttle_migrate(hil_vm: VM) -> None:
    port = hil_vm.controller("vser0").add_port("org.example.echo", nr=3)
    with port.host.connect() as host, port.guest.open() as guest:
        host.write(b"ping")
        assert guest.read() == b"ping"  # what the model, QEMU and the guest agree on
        hil_vm.check(port, bytes_received=4, poll={"OUT"})  # on the model AND the real system
        with pytest.raises(OperationError, match="EBUSY"):  # predicted, and confirmed for real
            port.guest.open()
        with host.stalled():  # the host stops reading its socket...
            guest.write(size=MIB)  # ...1 MiB of seeded bytes...
            hil_vm.check(port, throttled=True)  # ...so QEMU throttles the port
        assert len(host.read()) == MIB  # length and SHA-256 compared with the model's
        hil_vm.migrate(mode="live")  # a new QEMU; the handles follow the guest
        reply = guest.start_read()  # the model says this read blocks: it runs in the background
        host.write(b"pong")  # the step at which the model says it completes
        assert reply.result == b"pong"
    port.unplug()
    hil_vm.check(port, exists=False)


def test_custom_machine(hil_vm_factory: VMFactory) -> None:
    vm = hil_vm_factory(
        MachineDecl(
            controllers=(ControllerDecl("small", max_ports=2),),
            ports=(PortDecl("org.example.boot", controller="small", nr=1),),
        )
    )
    vm.hotplug("org.example.late", controller="small", expect_error="Out-of-range port id")
    vm.check(vm.controller("small"), max_ports=2, multiport=True)
    vm.reboot()
    vm.check(vm.port("org.example.boot"), nr=1, guest_connected=False)
