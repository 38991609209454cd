"""The wire check on real QEMU streams: what 7.2 and 10.0 wrote vs what the model saves.

fixtures/wire/qemu-*-file-migration.bin are the virtio-serial sections (harness.machine.wire
.excerpt) of real `file` migration streams, each written by that QEMU as the source of
scenarios/cross_qemu/file_migration.yaml at its migrate step (7.2: Debian 12's 7.2.22 source,
10.0: Debian 13's 10.0.13 source, captured with --hil-qemu / --hil-qemu-destination). The
model runs the same scenario up to that step; its saved state must equal the stream's, field
by field, and a field planted wrong in the model's state must be caught.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.machine.wire import (
    DeviceState,
    StreamScanner,
    WireError,
    read_sections,
    read_stream_file,
)
from harness.scenario.runner import RunnerOptions, ScenarioFailure, run_scenario
from harness.scenario.schema import Scenario, load_scenario
from harness.scenario.wire_check import SavedState, model_saved_state
from tests.unit.scenario.fake_system import FakeSystem, run_fake

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = ROOT / "scenarios/cross_qemu/file_migration.yaml"
STREAMS = sorted((ROOT / "fixtures/wire").glob("qemu-*-file-migration.bin"))
#: The harness's command line: virtio-net at 02.0, the boot controller next, then hotplugs.
SLOTS = {"03.0": "vser0", "04.0": "vser1"}


def _until_migrate(scenario: Scenario) -> Scenario:
    index = next(i for i, step in enumerate(scenario.steps) if step.kind == "migrate")
    return replace(scenario, steps=scenario.steps[:index])


def _model_state() -> SavedState:
    runner = run_scenario(_until_migrate(load_scenario(SCENARIO)))
    return model_saved_state(runner.model)


def _wire_state(stream: Path) -> SavedState:
    return SavedState({SLOTS[s.pci_addr]: s.state for s in read_sections(stream.read_bytes())})


def test_streams_of_both_versions_are_there():
    assert [p.name for p in STREAMS] == [
        "qemu-10.0-file-migration.bin",
        "qemu-7.2-file-migration.bin",
    ]


@pytest.mark.parametrize("stream", STREAMS, ids=lambda p: p.name.split("-file")[0])
def test_real_stream_equals_the_model_saved_state_field_by_field(stream):
    wire = _wire_state(stream)
    assert sorted(wire.controllers) == ["vser0", "vser1"]
    assert _model_state().differences(wire) == []


@pytest.mark.parametrize("stream", STREAMS, ids=lambda p: p.name.split("-file")[0])
def test_a_wrong_field_planted_in_the_model_state_is_caught(stream):
    model = _model_state()
    vser1 = model.controllers["vser1"]
    planted = replace(vser1.ports[0], host_connected=1 - vser1.ports[0].host_connected)
    wrong = SavedState({**model.controllers, "vser1": replace(vser1, ports=(planted,))})
    (difference,) = wrong.differences(_wire_state(stream))
    assert (difference.port, difference.field) == ("vser1", "port[0] (id 3).host_connected")
    wrong_map = SavedState(
        {**model.controllers, "vser0": replace(model.controllers["vser0"], ports_map=(0xF,))}
    )
    assert [d.field for d in wrong_map.differences(_wire_state(stream))] == ["ports_map[0]"]


@pytest.mark.parametrize("stream", STREAMS, ids=lambda p: p.name.split("-file")[0])
def test_elem_popped_of_a_streamed_port_is_timing_and_left_out(stream):
    """A stream's port may hold a popped element at the save or not (how far the host had
    drained): left out for streamed ports only; every other field is still compared."""
    model = _model_state()
    vser1 = model.controllers["vser1"]
    port = vser1.ports[0]
    held = replace(port, elem_popped=1 - bool(port.elem_popped))
    other = SavedState({**model.controllers, "vser1": replace(vser1, ports=(held,))})
    wire = _wire_state(stream)
    field = f"port[0] (id {port.id}).elem_popped"
    assert [d.field for d in other.differences(wire)] == [field]
    assert other.differences(wire, frozenset({("vser1", port.id)})) == []
    assert [d.field for d in other.differences(wire, frozenset({("vser0", port.id)}))] == [field]


class _WrongWire(FakeSystem):
    """Migrates like the model but reports a stream whose vser0 max_nr_ports is off by one."""

    def migrate(self, destination, mode="live", qemu=None):  # type: ignore[no-untyped-def]
        saved = model_saved_state(self.model)
        self.replay("migrate")
        vser0: DeviceState = saved.controllers["vser0"]
        wire = {**saved.controllers, "vser0": replace(vser0, max_nr_ports=vser0.max_nr_ports + 1)}
        return type("Stats", (), {"wire": wire})()


def test_a_stream_that_differs_fails_the_migrate_step_with_a_table():
    with pytest.raises(ScenarioFailure) as failure:
        run_fake(load_scenario(SCENARIO), _WrongWire(), RunnerOptions(settle_timeout=0.1))
    text = str(failure.value)
    assert "(migrate)" in text and "differs from the model's saved state" in text
    assert "vser0  max_nr_ports  31        32" in text


def test_a_stream_without_virtio_serial_is_an_error(tmp_path):
    stream = tmp_path / "migration.state"
    stream.write_bytes(b"QEVM\x00\x00\x00\x03" + b"\x00" * 64 + b'"0000:00:03.0/virtio-console"')
    with pytest.raises(WireError, match="no virtio-console section"):
        read_stream_file(stream)


@pytest.mark.parametrize("stream", STREAMS, ids=lambda p: p.name.split("-file")[0])
@pytest.mark.parametrize("piece", [1, 13, 4096, 1 << 20])
def test_a_stream_fed_in_pieces_gives_the_same_sections_at_stream_offsets(stream, piece):
    """How the relay reads a live migration: pieces of any size, a name or a header split
    across two of them, the section name also in text that is not a section (the stream's
    JSON description quotes it)."""
    sections = stream.read_bytes()
    ram = bytes(range(256)) * 300
    data = ram + sections + b'{"name": "0000:00:03.0/virtio-console"}' + ram
    scanner = StreamScanner()
    for at in range(0, len(data), piece):
        scanner.feed(data[at : at + piece])
    expected = read_sections(sections)
    found = scanner.sections()
    assert [(s.idstr, s.state) for s in found] == [(s.idstr, s.state) for s in expected]
    assert [(s.start, s.end) for s in found] == [
        (len(ram) + s.start, len(ram) + s.end) for s in expected
    ]
    assert scanner.total == len(data)


def test_a_controller_the_guest_has_not_probed_is_read_from_its_queue_count():
    """QEMU saves its cached copy of the config (vdev->config), which stays zero until the
    guest reads it: a file migration right after hotplug_controller carried a section whose
    config said max_nr_ports 0, and the parser, which found the device part through that
    field, reported the section absent (the planted-mutant hunt's finding;
    scenarios/migration/hotplugged_controller_file.yaml).  Here: the 7.2 stream with vser1's
    saved config zeroed as it was in that stream (12 zero bytes before 18 queues)."""
    stream = STREAMS[1].read_bytes()
    config = stream.index(bytes([0, 0, 0, 12, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 18]))
    assert config > stream.index(b"0000:00:04.0/virtio-console")  # vser1's (max_ports 8)
    unprobed = stream[: config + 4] + bytes(12) + stream[config + 16 :]
    assert len(unprobed) == len(stream)
    assert _wire_state(STREAMS[1]).controllers == {
        SLOTS[s.pci_addr]: s.state for s in read_sections(unprobed)
    }
