"""A migration to another QEMU: the destination model runs on the destination's switches.

QEMU's code switches (e.g. load_checks_max_nr_ports) are the destination's from the load on.
Queue sizes are not code: virtio_save writes each virtqueue's vring.num, virtio_load takes
it, and the guest's rings and posted buffers live in guest RAM, so a migrated device keeps
the source's sizes until the guest resets it (reboot, driver reload); virtio_reset then sets
the destination's own (vring.num_default): 1024 on QEMU 10.0.13, 32 / 128 on 7.2.
"""

from __future__ import annotations

from dataclasses import replace

from harness.model import Behaviour, VirtioSerialModel, migrate
from harness.model.behaviour import QUEUE_SIZE_SWITCHES, migrated
from harness.model.migration import clone_configuration

QEMU_7_2 = Behaviour()
QEMU_10_0_13 = Behaviour(
    control_rx_buffers=1024,
    guest_outvq_buffers=1024,
    guest_rx_capacity=1024 * 4096,
    load_checks_max_nr_ports=True,  # stands in for a code switch of the destination
)
PORTS = [f"p{nr:02}" for nr in range(1, 25)]


def _machine(behaviour: Behaviour) -> VirtioSerialModel:
    """24 host-connected ports: a reboot on 7.2's 32 control buffers loses PORT_OPEN 1 for
    ports 8-24 (README Findings), on 10.0.13's 1024 none."""
    model = VirtioSerialModel(behaviour)
    model.hotplug_controller("vser0", 31)
    for nr, name in enumerate(PORTS, 1):
        model.hotplug(name, controller="vser0", nr=nr)
    model.boot()
    for name in PORTS:
        model.host_open(name)
    return model


def _hop(source: VirtioSerialModel, qemu: Behaviour) -> VirtioSerialModel:
    dest = clone_configuration(source)
    dest.run_on(source.behaviour, qemu)
    migrate(source, dest)
    return dest


def _guest_sees_host_open(model: VirtioSerialModel) -> list[str]:
    return [n for n in PORTS if (g := model.ports[n].guest) is not None and g.host_connected]


def test_migrated_takes_the_destinations_code_and_the_sources_queue_sizes() -> None:
    after = migrated(QEMU_7_2, QEMU_10_0_13)
    assert after.load_checks_max_nr_ports is True
    assert {name: getattr(after, name) for name in QUEUE_SIZE_SWITCHES} == {
        "control_rx_buffers": 32,
        "guest_outvq_buffers": 128,
        "guest_rx_capacity": 128 * 4096,
    }


def test_after_an_upgrade_hop_the_next_reboot_runs_on_the_destinations_queues() -> None:
    source = _machine(QEMU_7_2)
    source.reboot()
    assert _guest_sees_host_open(source) == PORTS[:7]  # 7.2: PORT_OPEN lost from port 8
    dest = _hop(source, QEMU_10_0_13)
    assert dest.behaviour == migrated(QEMU_7_2, QEMU_10_0_13)
    assert dest.reset_behaviour == QEMU_10_0_13 and dest.qemu_behaviour == QEMU_10_0_13
    assert _guest_sees_host_open(dest) == PORTS[:7]  # the guest's view crossed as it was
    dest.reboot()
    assert dest.behaviour == QEMU_10_0_13 and dest.reset_behaviour is None
    assert _guest_sees_host_open(dest) == PORTS  # 1024 fresh buffers: nothing lost


def test_a_downgrade_hop_loses_on_the_reboot_after_it() -> None:
    source = _machine(QEMU_10_0_13)
    source.reboot()
    assert _guest_sees_host_open(source) == PORTS
    dest = _hop(source, QEMU_7_2)
    assert dest.behaviour.control_rx_buffers == 1024  # the rings the guest has
    dest.reboot()
    assert _guest_sees_host_open(dest) == PORTS[:7]


def test_a_second_hop_on_the_same_qemu_keeps_what_the_next_reset_brings() -> None:
    """The run's destination QEMU again (or none named): the device still has 7.2's rings."""
    dest = _hop(_machine(QEMU_7_2), QEMU_10_0_13)
    again = _hop(dest, dest.qemu_behaviour)
    assert again.behaviour == dest.behaviour and again.reset_behaviour == QEMU_10_0_13


def test_a_hop_to_the_same_switches_changes_nothing() -> None:
    source = _machine(replace(QEMU_7_2, guest_write_chunk=4096))
    dest = _hop(source, source.behaviour)
    assert dest.behaviour == source.behaviour and dest.reset_behaviour is None
