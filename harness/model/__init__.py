"""Pure-Python, I/O-free spec model of virtio-serial (QEMU device + Linux driver view).

Public API (everything is re-exported here; no imports from other harness layers):

Machine - ``VirtioSerialModel(behaviour=Behaviour())``
    hotplug_controller(id, max_ports=31) / unplug_controller(id)        -> Outcome
    hotplug(name, *, controller, nr=None, console=False, backend="socket") -> int (port id)
    unplug(name)                                                         -> Outcome
    host_open(name) / host_close(name)                                   -> Outcome
    host_write(name, payload) -> Outcome(value=int)    (never blocks)
    host_read(name, max_bytes=None) -> Outcome(value=ReadResult)  (EAGAIN when empty)
    guest_open(name, nonblocking=False) / guest_close(name) / guest_seek(name) (ESPIPE)
    guest_write(name, payload) -> Outcome(value=int) or Outcome(pending=Pending)
    guest_read(name, max_bytes=None) -> Outcome(value=ReadResult | EOF) or pending
    poll(name) -> frozenset of {"IN", "OUT", "HUP"}
    set_host_backpressure(name, stalled)                                 -> Outcome
    guest_reset() / reboot()                                             -> Outcome
    boot()   (after the boot devices were added: the driver probes them in PCI order)
    blocked() -> list[Pending];  snapshot() -> Snapshot
    discards: list[Discard];  written / read: bytes per direction (G2H, H2G);
    in_flight(direction), discarded(direction): written == read + in_flight + discarded
Declarations - ``MachineDecl(memory, controllers, ports)``, ``ControllerDecl(id, max_ports)``,
    ``PortDecl(name, controller, nr, console, backend)`` and their defaults (DEFAULT_MEMORY,
    DEFAULT_CONTROLLER, DEFAULT_MAX_PORTS); ``build_model(machine)`` boots one.
Results - ``Outcome(value, pending, completed)``, ``Pending(ticket, op, port)``,
    ``Completion(ticket, op, port, result, error)``, ``ReadResult(slices, eof)`` with
    ``.length`` and ``.sha256()``; ``EOF_RESULT``.
Errors - ``ModelError(text)``: QEMU's message or an errno name; match as a substring.
Data - ``Payload.literal(b) / Payload.generated(seed, length)``, ``Slice``,
    ``payload_bytes(p, start, end)``, ``sha256_of(p, start, end)``, ``slices_sha256``.
Observables - ``Snapshot(controllers, ports)``, ``PortView``, ``QemuPortView``,
    ``GuestPortView``, ``ControllerView``; ``diff(expected, actual) -> [Difference]``,
    ``format_diff``; ``VtermRange`` (a racy console vtermno); ``EITHER`` (a flag the model
    cannot decide, e.g. throttled in a stalled socket's uncertain band); ``parse_vport("vport2p5")
    -> (2, 5)``, ``port_nr_from_vport``.
Control protocol (``harness.model.control``) - ``ControlMessage``, ``encode``, ``decode``,
    event constants, ``DeviceControl`` / ``DriverControl`` / ``handshake`` / ``lost``.
Migration (``harness.model.migration``) - ``save(model, controller=None) -> bytes``,
    ``load(dest, data, controller=None, *, source=None) -> [LoadEvent]``, ``migrate``,
    ``clone_configuration``.
Switches - ``Behaviour`` (frozen): port_name_trailing_nul, load_checks_max_nr_ports,
    console_vtermno_reuse, guest_write_chunk, guest_outvq_buffers, guest_rx_capacity,
    host_socket_sndbuf, control_rx_buffers.  Defaults: Debian 12's QEMU 7.2 and Linux 6.x.
"""

from __future__ import annotations

from harness.model.behaviour import Behaviour
from harness.model.boot import build_model
from harness.model.control import ControlMessage, decode, encode, handshake
from harness.model.declarations import (
    BACKENDS,
    DEFAULT_CONTROLLER,
    DEFAULT_MAX_PORTS,
    DEFAULT_MEMORY,
    Backend,
    ControllerDecl,
    MachineDecl,
    PortDecl,
)
from harness.model.device import (
    EOF_RESULT,
    G2H,
    H2G,
    Completion,
    Discard,
    Outcome,
    Pending,
    ReadResult,
    VirtioSerialModel,
)
from harness.model.either import EITHER, Either, MaybeBool
from harness.model.errors import ModelError
from harness.model.migration import LoadEvent, load, migrate, save
from harness.model.payload import Payload, Slice, payload_bytes, sha256_of, slices_sha256
from harness.model.snapshot import (
    ControllerView,
    Difference,
    GuestPortView,
    PortView,
    QemuPortView,
    Snapshot,
    diff,
    format_diff,
    parse_vport,
    port_nr_from_vport,
)
from harness.model.vterm import VtermRange

__all__ = [
    "BACKENDS",
    "DEFAULT_CONTROLLER",
    "DEFAULT_MAX_PORTS",
    "DEFAULT_MEMORY",
    "EITHER",
    "EOF_RESULT",
    "G2H",
    "H2G",
    "Backend",
    "Behaviour",
    "Completion",
    "ControlMessage",
    "ControllerDecl",
    "ControllerView",
    "Difference",
    "Discard",
    "Either",
    "GuestPortView",
    "LoadEvent",
    "MachineDecl",
    "MaybeBool",
    "ModelError",
    "Outcome",
    "Payload",
    "Pending",
    "PortDecl",
    "PortView",
    "QemuPortView",
    "ReadResult",
    "Slice",
    "Snapshot",
    "VirtioSerialModel",
    "VtermRange",
    "build_model",
    "decode",
    "diff",
    "encode",
    "format_diff",
    "handshake",
    "load",
    "migrate",
    "parse_vport",
    "payload_bytes",
    "port_nr_from_vport",
    "save",
    "sha256_of",
    "slices_sha256",
]
