"""Findings in the system under test, reproduced on the real guest and predicted by the model.

QEMU drops a control message when the guest's control receive queue has no free buffer
(hw/char/virtio-serial-bus.c send_control_msg; README "Findings").  The model knows the queue
size per QEMU version (Behaviour.control_rx_buffers, plugin/qemu_versions.py); these tests
check that this size is the one the running QEMU reports and that the guest lost exactly the
messages the model says it lost.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest

from harness import ControllerDecl, MachineDecl, PortDecl, RunnerOptions
from harness.backend.endpoint import HostEndpoint
from harness.backend.system import QemuSystem
from harness.guest.agent_client import AgentClient
from harness.guest.guest import Guest
from harness.machine.qemu import ControllerSpec, PortSpec
from harness.model import Behaviour, Snapshot, VirtioSerialModel
from harness.plugin.fixtures import VMFactory, qemu_version
from harness.plugin.qemu_versions import behaviour_for_qemu, qemu_version_tuple
from tests.integration.polling import wait_until

PORTS = 24  # the reproducer: 24 serial ports, every host end connected
CONTROL_RX_QUEUE = 2  # virtio-serial queues: 0/1 port 0, 2/3 control rx/tx, then per port
PORT1_RX, PORT1_TX = 4, 5


# ------------------------------------------------------------------ the version mapping
def test_queue_size_follows_the_qemu_version() -> None:
    assert behaviour_for_qemu("7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)") == Behaviour()
    debian13 = behaviour_for_qemu("10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)")
    assert debian13 == Behaviour(
        control_rx_buffers=1024, guest_outvq_buffers=1024, guest_rx_capacity=1024 * 4096
    )
    assert behaviour_for_qemu("10.0.12").control_rx_buffers == 32  # before the stable change
    assert behaviour_for_qemu("10.1.0").control_rx_buffers == 32  # outside the observed range
    assert behaviour_for_qemu("unknown (qemu: not found)") == Behaviour()
    assert behaviour_for_qemu(None) == Behaviour()
    assert qemu_version_tuple("9.2") == (9, 2, 0)


# ------------------------------------------------------------------ helpers
def names() -> list[str]:
    return [f"org.finding.p{i:02d}" for i in range(1, PORTS + 1)]


def predicted_lost(behaviour: Behaviour) -> set[str]:
    """The model's guest after the driver probes with every host end connected."""
    model = VirtioSerialModel(behaviour)
    model.hotplug_controller("vser0")
    for nr, name in enumerate(names(), start=1):
        model.hotplug(name, controller="vser0", nr=nr)
        model.host_open(name)
    model.guest_reset()  # the driver (re)probes: DEVICE_READY and the whole handshake
    return {name for name, view in model.snapshot().ports.items() if not view.guest.host_connected}


def closed_form(buffers: int) -> set[str]:
    """From the sources: 24 PORT_ADDs leave `buffers - 24` free; each port the guest adds costs
    PORT_NAME + PORT_OPEN and gives one buffer back, so port k finds `buffers - 24 - (k - 1)`
    and PORT_OPEN is dropped from k = buffers - 24 on."""
    return {name for k, name in enumerate(names(), start=1) if k >= buffers - PORTS}


def queue_size(guest: Guest, queue: int = CONTROL_RX_QUEUE) -> int:
    """QEMU's own word on a queue's size (HMP info virtio-queue-status)."""
    path = "/machine/peripheral/vser0/virtio-backend"
    assert guest.machine.qmp is not None, "guest not started"
    text = guest.machine.qmp.hmp(f"info virtio-queue-status {path} {queue}")
    match = re.search(r"^\s*num:\s*(\d+)", text, re.MULTILINE)
    assert match, f"no queue size in {text!r}"
    return int(match[1])


def check_queue_sizes(guest: Guest, behaviour: Behaviour) -> None:
    """The model's queue-derived switches for this QEMU are the sizes it really has."""
    assert queue_size(guest) == behaviour.control_rx_buffers
    assert queue_size(guest, PORT1_TX) == behaviour.guest_outvq_buffers
    assert queue_size(guest, PORT1_RX) * 4096 == behaviour.guest_rx_capacity  # PAGE_SIZE each


def guest_host_closed(entries: list[dict[str, Any]]) -> set[str] | None:
    """Ports the guest believes host-closed; None until all PORTS have their names."""
    ours = {e["name"]: e for e in entries if str(e.get("name", "")).startswith("org.finding.")}
    if len(ours) < PORTS:
        return None
    return {name for name, e in ours.items() if int(e["host_connected"]) == 0}


def guest_host_closed_in(snapshot: Snapshot) -> set[str]:
    """Ports whose guest end believes the host closed, from a (model or real) snapshot."""
    return {name for name in names() if not snapshot.ports[name].guest.host_connected}


def settle(read: Any, expected: set[str], timeout: float = 60) -> set[str]:
    """Wait until the guest shows `expected` lost (the handshake runs in a workqueue), then
    read again after another agent round trip: a loss is permanent, a late message is not."""
    what = f"guest host_connected 0 on exactly {sorted(expected)}"
    with contextlib.suppress(AssertionError):  # the caller compares, naming the real set
        wait_until(lambda: guest_host_closed(read()) == expected, timeout, what)
    return guest_host_closed(read()) or set()


@pytest.fixture
def model_behaviour(hil_settings: Any) -> Behaviour:
    return behaviour_for_qemu(qemu_version(hil_settings.qemu))


# ------------------------------------------------------------------ the real guest
@pytest.mark.qemu
def test_reboot_loses_exactly_the_port_opens_the_model_predicts(
    hil_vm_factory: VMFactory, model_behaviour: Behaviour
) -> None:
    """Through the public API: every host open and the reboot are steps, so the real guest's
    host_connected must settle on the model's after each; the lost set is then asserted by
    name on the real snapshot, read once more (a loss is permanent, a late message is not)."""
    ports = tuple(PortDecl(name, "vser0", nr) for nr, name in enumerate(names(), start=1))
    machine = MachineDecl(controllers=(ControllerDecl("vser0"),), ports=ports)
    vm = hil_vm_factory(machine, options=RunnerOptions(settle_timeout=60))
    system = vm.real
    assert isinstance(system, QemuSystem) and system.guest is not None
    check_queue_sizes(system.guest, model_behaviour)
    for name in names():
        vm.port(name).host.open()  # one PORT_OPEN each, after boot: nothing lost yet
    assert guest_host_closed_in(vm.snapshot()) == set()

    vm.reboot()

    expected = predicted_lost(model_behaviour)
    assert expected == closed_form(model_behaviour.control_rx_buffers)
    assert guest_host_closed_in(vm.snapshot()) == expected, "the VM's model predicts otherwise"
    real = system.snapshot()
    lost = guest_host_closed_in(real)
    assert lost == expected, f"real {sorted(lost)} vs model {sorted(expected)}"
    qemu_views = [real.ports[name].qemu for name in names()]
    assert all(q is not None and q.host_connected for q in qemu_views)  # QEMU: host on


@pytest.mark.qemu
def test_first_boot_with_host_ends_already_connected(
    hil_guest_factory: Any, hil_settings: Any, model_behaviour: Behaviour, hil_socket_root: Any
) -> None:
    """What libvirt does: the host ends are connected before the guest driver probes.  The
    scenario layer cannot express this (host_open is a step, after boot), so the machine
    layer: start QEMU, connect every socket at once (the guest kernel needs seconds to load
    virtio_console), then wait for the boot."""
    paths = [hil_socket_root / f"fb{nr}.sock" for nr in range(1, PORTS + 1)]
    specs = [
        PortSpec(name, "vser0", nr, chardev_path=path)
        for nr, (name, path) in enumerate(zip(names(), paths, strict=True), start=1)
    ]
    guest = hil_guest_factory.create(
        "firstboot", boot=False, controllers=[ControllerSpec("vser0")], ports=specs
    )
    guest.machine.start()
    hosts = [HostEndpoint(name, path) for name, path in zip(names(), paths, strict=True)]
    for host in hosts:
        host.connect()
    try:
        guest.wait_ready(hil_settings.boot_timeout)
        check_queue_sizes(guest, model_behaviour)
        agent = AgentClient(guest).start()
        expected = predicted_lost(model_behaviour)
        lost = settle(agent.list_ports, expected)
        assert lost == expected, f"real {sorted(lost)} vs model {sorted(expected)}"
        agent.disconnect()
    finally:
        for host in hosts:
            host.close()
