"""The wire, checked: the virtio-serial state in a real migration stream against the model's.

The model saves each controller in QEMU's layout (harness.model.migration.save); a file
migration leaves QEMU's real stream, whose virtio-serial sections harness.machine.wire reads.
Both are read by the same parser and compared field by field: config, every ports_map word,
nr_active_ports and, per port in bus order, id / guest_connected / host_connected /
elem_popped. A difference means the model's idea of what crosses the wire is wrong (or QEMU
changed what it sends), even when the destination happens to load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harness.machine.wire import DeviceState, parse_device_state
from harness.model import VirtioSerialModel
from harness.model.migration import save
from harness.model.snapshot import Difference

_PORT_FIELDS = ("id", "guest_connected", "host_connected", "elem_popped")


@dataclass(frozen=True)
class SavedState:
    """The virtio-serial device state per controller id, as saved (model) or sent (QEMU)."""

    controllers: Mapping[str, DeviceState]

    def differences(
        self, actual: SavedState, streamed: frozenset[tuple[str, int]] = frozenset()
    ) -> list[Difference]:
        """Model (self) vs wire (actual), field by field; [] when they agree.

        ``streamed``: (controller, port id) of ports a stream runs on. Their elem_popped is not
        compared: whether QEMU holds a popped guest element when it saves depends on how far
        the host had drained the stream (timing), as a snapshot's byte counters do."""
        out: list[Difference] = []
        for cid in sorted(set(self.controllers) | set(actual.controllers)):
            mine, theirs = self.controllers.get(cid), actual.controllers.get(cid)
            if mine is None or theirs is None:
                out.append(Difference(cid, "section", _present(mine), _present(theirs)))
                continue
            out += _compare(cid, mine, theirs, streamed)
        return out


def model_saved_state(model: VirtioSerialModel) -> SavedState:
    """What the model says every controller's section holds."""
    return SavedState({cid: parse_device_state(save(model, cid)) for cid in model.controllers})


def _present(state: DeviceState | None) -> str:
    return "absent" if state is None else "present"


def _compare(
    cid: str, model: DeviceState, wire: DeviceState, streamed: frozenset[tuple[str, int]]
) -> list[Difference]:
    out = [
        Difference(cid, name, getattr(model, name), getattr(wire, name))
        for name in ("cols", "rows", "max_nr_ports", "nr_active_ports")
        if getattr(model, name) != getattr(wire, name)
    ]
    words = max(len(model.ports_map), len(wire.ports_map))
    for index in range(words):
        a, b = _at(model.ports_map, index), _at(wire.ports_map, index)
        if a != b:
            out.append(Difference(cid, f"ports_map[{index}]", _hex(a), _hex(b)))
    for index in range(max(len(model.ports), len(wire.ports))):
        if index >= len(model.ports) or index >= len(wire.ports):
            if not (model.truncated or wire.truncated):
                out.append(
                    Difference(
                        cid, f"port[{index}]", _at(model.ports, index), _at(wire.ports, index)
                    )
                )
            break
        mine, theirs = model.ports[index], wire.ports[index]
        for name in _PORT_FIELDS:
            a, b = getattr(mine, name), getattr(theirs, name)
            if name == "elem_popped" and (cid, mine.id) in streamed:
                continue
            if name == "elem_popped":
                a, b = bool(a), bool(b)  # QEMU writes 1, any nonzero means an element follows
            if a != b:
                out.append(Difference(cid, f"port[{index}] (id {mine.id}).{name}", a, b))
    return out


def _at(items: tuple[object, ...], index: int) -> object:
    return items[index] if index < len(items) else "-"


def _hex(value: object) -> object:
    return f"0x{value:08x}" if isinstance(value, int) else value
