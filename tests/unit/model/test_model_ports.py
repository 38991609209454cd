"""Port and controller hotplug: id allocation and QEMU's realize errors.

Seed = /work/shared/spec/seed/000_fa181747a16bb2fa.txt (2010 hw/virtio-serial-bus.c); the
texts are today's error_setg messages (the seed had error_report with the same wording).
"""

from __future__ import annotations

import pytest

from harness.model import ModelError, VirtioSerialModel


def test_first_console_without_nr_gets_id_0(model):
    # seed 726-741: plugging_port0 = is_console && !find_port_by_id(0)
    assert model.hotplug("con", controller="vser0", console=True) == 0


def test_second_console_without_nr_gets_lowest_free_id(model):
    model.hotplug("con", controller="vser0", console=True)
    assert model.hotplug("con2", controller="vser0", console=True) == 1


def test_serial_port_without_nr_never_gets_reserved_0(model):
    # seed 870: bit 0 is marked at init, so find_free_port_id (668-681) starts at 1
    assert model.hotplug("a", controller="vser0") == 1
    assert model.hotplug("b", controller="vser0") == 2


def test_explicit_nr_is_used_and_gaps_are_filled_lowest_first(model):
    assert model.hotplug("a", controller="vser0", nr=7) == 7
    assert model.hotplug("b", controller="vser0") == 1


def test_duplicate_id(model):
    # seed 732-735
    model.hotplug("a", controller="vser0", nr=3)
    with pytest.raises(ModelError) as err:
        model.hotplug("b", controller="vser0", nr=3)
    assert err.value.text == "virtio-serial-bus: A port already exists at id 3"


def test_duplicate_name_across_controllers(model):
    # today's find_port_by_name walks every virtio-serial device (not in the seed)
    model.hotplug_controller("vser1")
    model.hotplug("org.x", controller="vser0")
    with pytest.raises(ModelError) as err:
        model.hotplug("org.x", controller="vser1")
    assert "A port already exists by name org.x" in str(err.value)


def test_duplicate_id_is_checked_before_duplicate_name(model):
    model.hotplug("a", controller="vser0", nr=2)
    with pytest.raises(ModelError, match="at id 2"):
        model.hotplug("a", controller="vser0", nr=2)


def test_out_of_range_nr(model):
    # seed 750-753: max. allowed = max_nr_ports - 1
    with pytest.raises(ModelError) as err:
        model.hotplug("a", controller="vser0", nr=31)
    assert err.value.text == "virtio-serial-bus: Out-of-range port id specified, max. allowed: 30"


def test_full_31_port_controller_reports_out_of_range_not_max_reached(model):
    # with 31 ports, word 0 = 0x7fffffff: ffs(~map) finds bit 31 -> id 31 -> range check
    for i in range(1, 31):
        model.hotplug(f"p{i}", controller="vser0")
    model.hotplug("con", controller="vser0", console=True)
    with pytest.raises(ModelError, match=r"max. allowed: 30"):
        model.hotplug("extra", controller="vser0")


def test_full_32_port_controller_reports_maximum_reached():
    # every bit of the only word set: find_free_port_id returns BAD_ID (seed 681, 743-746)
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=32)
    for i in range(1, 32):
        m.hotplug(f"p{i}", controller="c")
    with pytest.raises(ModelError) as err:
        m.hotplug("extra", controller="c")
    assert err.value.text == "virtio-serial-bus: Maximum port limit for this device reached"


def test_nr_0_for_serial_port_is_refused(model):
    # virtio-console.c virtconsole_realize (after the bus checks)
    with pytest.raises(ModelError) as err:
        model.hotplug("a", controller="vser0", nr=0)
    assert err.value.text.startswith("Port number 0 on virtio-serial devices reserved")


def test_nr_0_for_serial_port_when_0_taken_reports_duplicate(model):
    model.hotplug("con", controller="vser0", console=True)
    with pytest.raises(ModelError, match="already exists at id 0"):
        model.hotplug("a", controller="vser0", nr=0)


def test_unknown_controller(model):
    with pytest.raises(ModelError, match=r"Bus 'nope\.0' not found"):
        model.hotplug("a", controller="nope")


def test_remove_port_frees_its_bit_but_0_stays_reserved(model):
    # today's remove_port keeps bit 0 ("ensure a virtconsole device unplug retains the
    # reservation"); the seed (line 706) cleared it unconditionally
    model.hotplug("con", controller="vser0", console=True)
    model.hotplug("a", controller="vser0")
    model.unplug("con")
    model.unplug("a")
    assert model.controllers["vser0"].ports_map == [0b1]
    assert model.hotplug("b", controller="vser0") == 1
    assert model.hotplug("con", controller="vser0", console=True) == 0


def test_remove_unknown_port(model):
    with pytest.raises(ModelError, match="Device 'x' not found"):
        model.unplug("x")


def test_name_free_again_after_remove(model):
    model.hotplug("a", controller="vser0")
    model.unplug("a")
    assert model.hotplug("a", controller="vser0", nr=4) == 4


def test_controller_errors():
    m = VirtioSerialModel()
    with pytest.raises(ModelError, match=r"^Maximum number of serial ports not specified$"):
        m.hotplug_controller("c", max_ports=0)
    # VIRTIO_QUEUE_MAX (1024) / 2 - 1 (seed 817-822 with today's queue max)
    with pytest.raises(ModelError, match=r"^maximum ports supported: 511$"):
        m.hotplug_controller("c", max_ports=512)
    m.hotplug_controller("c", max_ports=511)
    with pytest.raises(ModelError, match="Duplicate device ID 'c'"):
        m.hotplug_controller("c")
    for absurd in (-1, 2**32, 99999999999999999999):  # not a uint32: refused, never a crash
        with pytest.raises(ModelError, match=r"^Parameter 'max_ports' expects uint32_t$"):
            m.hotplug_controller("d", max_ports=absurd)
    with pytest.raises(ModelError, match="Device 'd' not found"):
        m.unplug_controller("d")


def test_nr_is_a_uint32_whose_all_ones_means_not_given(model):
    for absurd in (-1, 2**32):
        with pytest.raises(ModelError, match=r"^Parameter 'nr' expects uint32_t$"):
            model.hotplug("x", controller="vser0", nr=absurd)
    assert model.hotplug("x", controller="vser0", nr=2**32 - 1) == 1  # the first free id


def test_multiport_only_when_max_ports_above_1():
    # seed 470-471
    m = VirtioSerialModel()
    m.hotplug_controller("one", max_ports=1)
    m.hotplug_controller("two", max_ports=2)
    snap = m.snapshot()
    assert not snap.controllers["one"].multiport
    assert snap.controllers["two"].multiport


def test_single_port_controller_takes_only_a_console_at_0():
    m = VirtioSerialModel()
    m.hotplug_controller("one", max_ports=1)
    with pytest.raises(ModelError, match=r"max. allowed: 0"):
        m.hotplug("a", controller="one")
    assert m.hotplug("con", controller="one", console=True) == 0
    view = m.snapshot().ports["con"]
    # no control messages without MULTIPORT: no name, no host state; QEMU's set_status marks
    # port 0 open only at DRIVER_OK, so a console plugged after boot stays "guest off"
    assert view.guest.name is None and view.guest.is_console and view.guest.console_vtermno == 1
    assert not view.qemu.guest_connected and not view.guest.host_connected
    m.reboot()
    assert m.snapshot().ports["con"].qemu.guest_connected
    with pytest.raises(ModelError, match="ENXIO"):
        m.guest_open("con")


def test_remove_controller_unplugs_its_ports(opened):
    blocked = opened.guest_read("p").pending
    out = opened.unplug_controller("vser0")
    assert [c.ticket for c in out.completed] == [blocked.ticket]
    assert out.completed[0].error.text == "ENODEV"
    assert opened.snapshot().ports == {}
    opened.hotplug_controller("vser0")
    assert opened.hotplug("p", controller="vser0") == 1


# ------------------------------------------- ids past the first 32-bit map word
def test_64_ports_fill_both_words_in_order_then_report_the_limit():
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=64)
    got = [m.hotplug(f"p{i}", controller="c") for i in range(1, 64)]
    assert got == list(range(1, 64))  # 31, 32, 33 and 63 included, each exactly once
    assert m.controllers["c"].ports_map == [0xFFFFFFFF, 0xFFFFFFFF]
    with pytest.raises(ModelError) as err:
        m.hotplug("extra", controller="c")
    assert err.value.text == "virtio-serial-bus: Maximum port limit for this device reached"


def test_ids_freed_in_the_second_word_are_reused_lowest_first():
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=64)
    for i in range(1, 64):
        m.hotplug(f"p{i}", controller="c")
    for nr in (63, 33, 32):
        m.unplug(f"p{nr}")
    assert m.controllers["c"].ports_map == [0xFFFFFFFF, 0x7FFFFFFC]
    assert [m.hotplug(f"q{i}", controller="c") for i in range(3)] == [32, 33, 63]
    m.unplug("p31")
    m.unplug("q1")  # id 33
    assert m.hotplug("r", controller="c") == 31  # the first word is scanned first
    assert m.hotplug("s", controller="c") == 33


def test_33_ports_allocate_id_32_and_then_run_out_of_range():
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=33)
    got = [m.hotplug(f"p{i}", controller="c") for i in range(1, 33)]
    assert got[-2:] == [31, 32]
    assert m.controllers["c"].ports_map == [0xFFFFFFFF, 0x1]
    # the second word still has free bits above max_ports: QEMU finds 33, then the range check
    with pytest.raises(ModelError) as err:
        m.hotplug("extra", controller="c")
    assert err.value.text == "virtio-serial-bus: Out-of-range port id specified, max. allowed: 32"
    m.unplug("p32")
    assert m.hotplug("again", controller="c") == 32


@pytest.mark.parametrize(("max_ports", "nr", "second_word"), [(40, 33, 1 << 1), (64, 63, 1 << 31)])
def test_explicit_id_in_the_second_word_sets_only_its_bit(max_ports, nr, second_word):
    """The map spans words: id 0 (reserved) in the first, only ``nr``'s bit in the second."""
    m = VirtioSerialModel()
    m.hotplug_controller("c", max_ports=max_ports)
    assert m.hotplug("hi", controller="c", nr=nr) == nr
    assert m.controllers["c"].ports_map == [1, second_word]
    assert m.hotplug("next", controller="c") == 1
    with pytest.raises(ModelError) as err:
        m.hotplug("dup", controller="c", nr=nr)
    assert err.value.text == f"virtio-serial-bus: A port already exists at id {nr}"
