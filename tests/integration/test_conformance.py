"""Issue 15 oracle gaps 12, 15, 17, 18 on the real guest, held to the model.

Items 13 and 16 (and 12 and 17 again) are shipped scenarios: scenarios/conformance/*.yaml
and scenarios/migration/max_ports_change.yaml.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness.backend.settle import settle
from harness.backend.system import ObservationError, QemuSystem, guest_port_view
from harness.guest import agent_client
from harness.model import Payload, format_diff
from harness.model.snapshot import guest_only_key
from harness.scenario.schema import ControllerDecl, MachineDecl, PortDecl, build_model
from tests.integration.twin import Twin, wait_until

pytestmark = pytest.mark.qemu
NAME = "org.hil.conf"
SETTLE = 30


def _machine(max_ports: int) -> MachineDecl:
    """One controller of this size: two consoles where there is room, and a serial port at
    the last id (past the first ports_map word for 33 and 64)."""
    ports = [PortDecl("con.a", "vser0", console=True)] if max_ports > 1 else []
    if max_ports > 1:
        ports.append(PortDecl("con.b", "vser0", console=True))
    if max_ports > 2:
        ports.append(PortDecl("ser.top", "vser0", nr=max_ports - 1))
    return MachineDecl(512, (ControllerDecl("vser0", max_ports),), tuple(ports))


def _agree(model_snapshot: object, system: QemuSystem, where: str) -> None:
    _, differences = settle(model_snapshot, system.snapshot, SETTLE)  # type: ignore[arg-type]
    assert not differences, f"{where}: real != model\n{format_diff(differences)}"


@pytest.mark.parametrize("max_ports", [1, 2, 31, 32, 33, 64])
def test_controller_sizes_and_their_consoles(hil_system_factory, max_ports: int) -> None:
    """Item 12: boot, console hotplug and reboot on each size agree with the model."""
    machine = _machine(max_ports)
    model = build_model(machine)
    system = hil_system_factory()
    system.start(machine)
    _agree(model.snapshot(), system, f"boot with max_ports {max_ports}")
    real = system.snapshot()
    if max_ports == 1:  # Linux's probe made port 0 a console with no QEMU port there
        probe = real.ports[guest_only_key("vser0", 0)]
        assert probe.qemu is None and probe.guest.is_console
        assert probe.guest.console_vtermno == 1 and probe.guest.name is None
    else:
        assert real.ports["con.b"].guest.console_vtermno == 2  # no probe console before it

    twin = Twin(system)
    twin.model = model
    error = twin.hotplug("con.hot", console=True)
    assert (error is None) == (max_ports != 2), error  # size 2: ids 0 and 1 are taken
    _agree(model.snapshot(), system, "console hotplug")
    if max_ports == 1:
        hot = system.snapshot().ports["con.hot"]
        assert hot.qemu is not None and not hot.qemu.guest_connected  # no DRIVER_OK since
    twin.both("reboot")
    _agree(model.snapshot(), system, "reboot")
    if max_ports == 1:
        hot = system.snapshot().ports["con.hot"]
        assert hot.qemu is not None and hot.qemu.guest_connected  # set_status at DRIVER_OK


def test_reboot_keeps_throttled_and_drops_the_held_element(hil_system: QemuSystem) -> None:
    """Item 15: QEMU's guest_reset detaches the held element and clears guest_connected, but
    `throttled` stays until the host reads again (chr_write_unblocked)."""
    twin = Twin(hil_system)
    twin.hotplug(NAME)
    twin.both("host_open", NAME)
    twin.both("guest_open", NAME)
    twin.model.set_host_backpressure(NAME, True)
    hil_system.host_stall(NAME, True)
    payload = Payload.generated(1515, 8 * 1024 * 1024)
    assert twin.model.guest_write(NAME, payload).pending is not None
    hil_system.start_guest_op("write", NAME, payload=payload)
    assert hil_system.ports is not None
    wait_until(lambda: hil_system.ports.qtree()[1][NAME].throttled, 60, "qtree throttle on")  # type: ignore[union-attr]

    twin.both("reboot")
    qemu = twin.model.snapshot().ports[NAME].qemu
    assert qemu is not None and qemu.throttled and not qemu.guest_connected
    after = hil_system.ports.qtree()[1][NAME]  # type: ignore[union-attr]
    assert after.throttled and not after.guest_connected and after.host_connected
    twin.agree("reboot with a stalled host reader")

    twin.model.set_host_backpressure(NAME, False)
    hil_system.host_stall(NAME, False)
    wait_until(lambda: not hil_system.ports.qtree()[1][NAME].throttled, 30, "throttle off")  # type: ignore[union-attr]
    twin.agree("host reads again")


def test_open_after_unplug_fails_enoent_in_the_kernel(hil_system: QemuSystem) -> None:
    """Item 17: the kernel's own answer (not the agent's lookup by name): devtmpfs removed
    /dev/vportNpM, so open() fails ENOENT before virtio_console is reached."""
    twin = Twin(hil_system)
    twin.hotplug(NAME)
    assert hil_system.agent is not None and hil_system.guest is not None
    dev = hil_system.agent.port_info(NAME)["dev"]
    twin.both("remove_port", NAME, model_args=(NAME,))
    script = (
        f"import os\ntry:\n os.open('/dev/{dev}', os.O_RDWR)\n print('opened')\n"
        "except OSError as e:\n print('errno', e.errno)"
    )
    out = hil_system.guest.run(f'python3 -c "{script}"').output.strip()
    assert out == "errno 2", f"open(/dev/{dev}) after unplug: {out}"
    twin.both("guest_open", NAME)  # model and agent both ENOENT (asserted equal)


def test_a_missing_debugfs_field_is_an_error_not_zero(hil_system: QemuSystem) -> None:
    """Item 18: with debugfs unmounted in the guest every field is missing; the snapshot
    must fail naming the field and the port, not report zeros."""
    twin = Twin(hil_system)
    twin.hotplug(NAME)
    twin.agree("before")
    assert hil_system.guest is not None
    assert hil_system.guest.run("umount /sys/kernel/debug").exit_code == 0
    try:
        with pytest.raises(ObservationError, match=r"port vport\d+p1 \(name 'org.hil.conf'\)"):
            hil_system.snapshot()
    finally:
        hil_system.guest.run("mount -t debugfs debugfs /sys/kernel/debug")
    twin.agree("debugfs back")


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
