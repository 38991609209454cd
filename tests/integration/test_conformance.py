"""Issue 15 oracle gaps 12, 15, 17, 18 on the real guest, held to the model.

Written against the public Python API (``hil_vm`` / ``hil_vm_factory``): every call is a
scenario step, so the model's prediction and the real snapshot must agree after each one;
``vm.real`` (the ``QemuSystem``) serves only observations the API does not cover (the kernel's
own open() answer, debugfs unmounted). Items 13 and 16 (and 12, 15 and 17 again) are shipped
scenarios: scenarios/conformance/*.yaml and scenarios/migration/max_ports_change.yaml.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness import VM, OperationError, RunnerOptions
from harness.backend.system import ObservationError, QemuSystem, guest_port_view
from harness.guest import agent_client
from harness.model.snapshot import guest_only_key
from harness.plugin.fixtures import VMFactory
from harness.scenario.schema import ControllerDecl, MachineDecl, PortDecl

pytestmark = pytest.mark.qemu
NAME = "org.hil.conf"
MIB = 1024 * 1024
SETTLE = RunnerOptions(settle_timeout=30)


def _machine(max_ports: int) -> MachineDecl:
    """One controller of this size: two consoles where there is room, and a serial port at
    the last id (past the first ports_map word for 33 and 64)."""
    ports = [PortDecl("con.a", "vser0", console=True)] if max_ports > 1 else []
    if max_ports > 1:
        ports.append(PortDecl("con.b", "vser0", console=True))
    if max_ports > 2:
        ports.append(PortDecl("ser.top", "vser0", nr=max_ports - 1))
    return MachineDecl(512, (ControllerDecl("vser0", max_ports),), tuple(ports))


def _real(vm: VM) -> QemuSystem:
    system = vm.real
    assert isinstance(system, QemuSystem), f"a QEMU system, not {type(system).__name__}"
    return system


@pytest.mark.parametrize("max_ports", [1, 2, 31, 32, 33, 64])
def test_controller_sizes_and_their_consoles(hil_vm_factory: VMFactory, max_ports: int) -> None:
    """Item 12: boot, console hotplug and reboot on each size agree with the model."""
    vm = hil_vm_factory(_machine(max_ports), options=SETTLE)
    booted = vm.snapshot()  # the model's, which the real snapshot has settled on
    if max_ports == 1:  # Linux's probe made port 0 a console with no QEMU port there
        probe = booted.ports[guest_only_key("vser0", 0)]
        assert probe.qemu is None and probe.guest.is_console
        assert probe.guest.console_vtermno == 1 and probe.guest.name is None
    else:
        vm.check(vm.port("con.b"), console_vtermno=2)  # no probe console before it

    if max_ports == 2:  # ids 0 and 1 are taken: the model and QEMU refuse alike
        with pytest.raises(OperationError, match="Out-of-range port id"):
            vm.hotplug("con.hot", console=True)
    else:
        hot = vm.hotplug("con.hot", console=True)
        if max_ports == 1:
            vm.check(hot, guest_connected=False)  # no DRIVER_OK since
    vm.reboot()
    if max_ports == 1:
        vm.check(vm.port("con.hot"), guest_connected=True)  # set_status at DRIVER_OK


def test_reboot_keeps_throttled_and_drops_the_held_element(hil_vm_factory: VMFactory) -> None:
    """Item 15: QEMU's guest_reset detaches the held element and clears guest_connected, but
    `throttled` stays until the host reads again (chr_write_unblocked)."""
    vm = hil_vm_factory(options=SETTLE)
    port = vm.hotplug(NAME)
    port.host.open()
    port.guest.open()
    port.host.stall()
    # a write that completes in the guest (the model says so): a blocked one would have to
    # end KILLED at the reboot, which QemuSystem cannot follow across the new agent
    port.guest.write(size=MIB)  # QEMU's socket write goes short: it holds an element
    vm.check(port, throttled=True, bytes_sent=MIB)
    vm.reboot()
    vm.check(port, throttled=True, guest_connected=False, host_connected=True)
    port.host.resume()
    vm.check(port, throttled=False)


def test_open_after_unplug_fails_enoent_in_the_kernel(hil_vm: VM) -> None:
    """Item 17: the kernel's own answer (not the agent's lookup by name): devtmpfs removed
    /dev/vportNpM, so open() fails ENOENT before virtio_console is reached."""
    port = hil_vm.hotplug(NAME)
    system = _real(hil_vm)
    assert system.agent is not None and system.guest is not None
    dev = system.agent.port_info(NAME)["dev"]
    port.unplug()
    script = (
        f"import os\ntry:\n os.open('/dev/{dev}', os.O_RDWR)\n print('opened')\n"
        "except OSError as e:\n print('errno', e.errno)"
    )
    out = system.guest.run(f'python3 -c "{script}"').output.strip()
    assert out == "errno 2", f"open(/dev/{dev}) after unplug: {out}"
    with pytest.raises(OperationError, match="ENOENT"):  # the model and the agent agree
        port.guest.open()


def test_a_missing_debugfs_field_is_an_error_not_zero(hil_vm: VM) -> None:
    """Item 18: with debugfs unmounted in the guest every field is missing; the snapshot
    must fail naming the field and the port, not report zeros."""
    hil_vm.hotplug(NAME)
    hil_vm.check()
    system = _real(hil_vm)
    assert system.guest is not None
    assert system.guest.run("umount /sys/kernel/debug").exit_code == 0
    try:
        with pytest.raises(ObservationError, match=r"port vport\d+p1 \(name 'org.hil.conf'\)"):
            system.snapshot()
    finally:
        system.guest.run("mount -t debugfs debugfs /sys/kernel/debug")
    hil_vm.check()


def test_guest_port_view_names_the_missing_field() -> None:
    entry = {"dev": "vport1p3", "name": "x", "debugfs": True, "guest_connected": 0}
    with pytest.raises(ObservationError, match=r"vport1p3.*'host_connected' missing"):
        guest_port_view(entry)
    full = dict.fromkeys(
        ["guest_connected", "host_connected", "console_vtermno", "bytes_sent"], 0
    ) | {"bytes_received": 0, "bytes_discarded": 0, "is_console": ""}
    with pytest.raises(ObservationError, match="'is_console' is ''"):
        guest_port_view({**entry, **full})
    assert guest_port_view({**entry, **full, "is_console": "yes"}).is_console


def test_the_agent_ties_a_port_to_its_controllers_pci_address(tmp_path: Path) -> None:
    """Item 12: the guest port -> controller link the real snapshot relies on."""
    spec = importlib.util.spec_from_file_location(
        "hil_agent_pci", Path(agent_client.__file__).parent / "agent" / "hil_agent.py"
    )
    assert spec is not None and spec.loader is not None
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    real = tmp_path / "devices/pci0000:00/0000:00:1f.2/virtio3/virtio-ports/vport3p1"
    real.mkdir(parents=True)
    (tmp_path / "vport3p1").symlink_to(real)
    assert agent.pci_slot(str(tmp_path / "vport3p1")) == "1f.2"
    assert agent.pci_slot(str(tmp_path)) is None
