"""What a ``check`` step reads from a snapshot, and the SIGIO prediction built on snapshots.

Both work on ``Snapshot`` only, so the same code judges the model's view and the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from harness.model import Difference, PortView, Snapshot

ABSENT = "<absent>"

#: check field -> how to read it from a PortView (QEMU's view for the connection flags:
#: the full-snapshot comparison already holds the guest's view to the model).
PORT_FIELDS: dict[str, Callable[[PortView], object]] = {
    "nr": lambda v: v.nr,
    "controller": lambda v: v.controller,
    "is_console": lambda v: v.is_console,
    "guest_connected": lambda v: ABSENT if v.qemu is None else v.qemu.guest_connected,
    "host_connected": lambda v: ABSENT if v.qemu is None else v.qemu.host_connected,
    "throttled": lambda v: ABSENT if v.qemu is None else v.qemu.throttled,
    "poll": lambda v: v.poll,
    "bytes_sent": lambda v: v.guest.bytes_sent,
    "bytes_received": lambda v: v.guest.bytes_received,
    "bytes_discarded": lambda v: v.guest.bytes_discarded,
    "console_vtermno": lambda v: v.guest.console_vtermno,
}


def check_differences(
    args: Mapping[str, Any], snapshot: Snapshot, sigio: Mapping[str, list[frozenset[str]]]
) -> list[Difference]:
    """Every field of a ``check`` step whose value differs from ``snapshot``."""
    if "port" in args:
        return _port_differences(args, snapshot, sigio)
    return _controller_differences(args, snapshot)


def _port_differences(
    args: Mapping[str, Any], snapshot: Snapshot, sigio: Mapping[str, list[frozenset[str]]]
) -> list[Difference]:
    port = args["port"]
    view = snapshot.ports.get(port)
    out: list[Difference] = []
    if "exists" in args and args["exists"] != (view is not None):
        out.append(Difference(port, "exists", args["exists"], view is not None))
    for name, expected in args.items():
        if name in ("port", "exists"):
            continue
        if name == "sigio":
            actual: object = _masks(sigio.get(port, []))
            expected = _masks(expected)
        elif view is None:
            actual = ABSENT
        else:
            actual = PORT_FIELDS[name](view)
        if actual != expected:
            out.append(Difference(port, name, expected, actual))
    return out


def _masks(masks: Iterable[frozenset[str]]) -> str:
    """Readable in a diff table: "[{OUT}, {HUP,IN}]"."""
    return "[" + ", ".join("{" + ",".join(sorted(m)) + "}" for m in masks) + "]"


def _controller_differences(args: Mapping[str, Any], snapshot: Snapshot) -> list[Difference]:
    cid = args["controller"]
    view = snapshot.controllers.get(cid)
    label = f"controller:{cid}"
    out: list[Difference] = []
    for name, expected in args.items():
        if name == "controller":
            continue
        if name == "exists":
            actual: object = view is not None
        else:
            actual = ABSENT if view is None else getattr(view, name)
        if actual != expected:
            out.append(Difference(label, name, expected, actual))
    return out


def arrivals(before: Mapping[str, int], after: Mapping[str, int]) -> set[str]:
    """Ports QEMU put data into between two readings of the model's ``delivered()``."""
    return {name for name, count in after.items() if count > before.get(name, 0)}


def sigio_events(
    before: Snapshot, after: Snapshot, arrived: Collection[str]
) -> Iterator[tuple[str, frozenset[str]]]:
    """(port, poll mask at the signal) for each SIGIO the step should raise.

    Linux send_sigio_to_port fires, for a port the guest holds open, on data arrival
    (in_intr: ``arrived``, the ports QEMU put data into, per the model's ``delivered``),
    on PORT_OPEN from the host (handle_control_message) and on unplug (unplug_port, after
    which poll reports HUP only).  The mask is what poll() returns when the signal is
    handled, i.e. the state after the step.  Not on a read that takes a buffer (found by
    exploration on 6.12: the model used bytes_received, which a read moves too).
    """
    for name, old in before.ports.items():
        if old.poll is None:
            continue
        new = after.ports.get(name)
        if new is None:
            yield name, frozenset({"HUP"})
            continue
        if new.poll is None:
            continue
        if name in arrived or new.guest.host_connected != old.guest.host_connected:
            yield name, new.poll
