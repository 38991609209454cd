"""Every step kind, defined once: its arguments, its model operation, its real operation, its docs.

The schema validates a step from its ``StepKind`` (keys, types, ranges, shorthand, required
keys, which key names a port or a controller), the runner predicts with ``model`` and acts with
``real``, the README's step table is ``steps_table()``, and the unit tests' fake system replays
``model``.  Adding a step kind is one ``register(StepKind(...))`` call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from harness.model import (
    BACKENDS,
    DEFAULT_MAX_PORTS,
    Behaviour,
    MachineDecl,
    Outcome,
    Payload,
    VirtioSerialModel,
    build_model,
    migrate,
)
from harness.model.errors import UINT32_MAX
from harness.model.migration import clone_configuration
from harness.scenario.wire_check import SavedState, model_saved_state

if TYPE_CHECKING:
    from harness.scenario.system import RealSystem

#: Largest ``size:`` payload: far beyond what an emulated guest moves in a test, far below
#: what the seeded generator and the agent's 64-bit counters could overflow on.
MAX_PAYLOAD = 1 << 30
MIGRATION_MODES = ("live", "paused", "file")
DEFAULT_MIGRATION_MODE = MIGRATION_MODES[0]


def migration_mode(args: dict[str, Any]) -> str:
    """A migrate step's mode, its default filled in (a step may leave it out)."""
    return str(args.get("mode", DEFAULT_MIGRATION_MODE))


@dataclass(frozen=True)
class Destination:
    """A migration's destination: `machine` None is the source's configuration, `qemu` None
    the run's destination QEMU (--hil-qemu-destination), else the source's QEMU."""

    machine: MachineDecl | None = None
    qemu: str | None = None


# ------------------------------------------------------------------ the step itself
@dataclass(frozen=True)
class Step:
    """One step; ``args`` is normalised (scalar shorthand expanded, defaults filled in)."""

    index: int
    kind: str
    args: dict[str, Any]
    expect_error: str | None
    path: str
    line: int
    column: int

    @property
    def target(self) -> str | None:
        """The port or controller the step is about (for messages)."""
        for key in ("port", "name", "id", "controller"):
            if isinstance(self.args.get(key), str):
                return str(self.args[key])
        return None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind


def payload_seed(scenario_name: str, index: int) -> int:
    """Deterministic seed for ``size:`` payloads: reruns and the guest agent agree on bytes.

    Kept below 2**63 because migration packs seeds as a signed 64-bit integer.
    """
    digest = hashlib.sha256(f"{scenario_name}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


#: The switches of a migration's destination QEMU, given the step's `destination: {qemu:}`
#: (None: the run's destination QEMU); None back when the destination runs the source's QEMU.
DestinationBehaviour = Callable[[str | None], Behaviour | None]


def same_qemu(_qemu: str | None) -> Behaviour | None:
    """No destination QEMU known (model-only runs, fakes): every hop stays on the source's."""
    return None


@dataclass
class StepCall:
    """One step being run: what both operations of a kind get.

    ``model`` may be replaced by the model operation (a migration continues on a new model);
    ``read_size`` and ``timeout`` are for the real operation, chosen from the prediction.
    """

    step: Step
    model: VirtioSerialModel
    scenario: str = ""
    read_size: int = 65536
    timeout: float = 60.0
    streams: Any = None  # the runner's StreamBook (harness.scenario.streams)
    destination_behaviour: DestinationBehaviour = same_qemu

    @property
    def args(self) -> dict[str, Any]:
        return self.step.args

    @property
    def port(self) -> str:
        return str(self.args.get("port", ""))

    def payload(self) -> Payload:
        """``data:`` as literal bytes, ``size:`` as the seeded payload of this step."""
        if "data" in self.args:
            return Payload.literal(self.args["data"].encode())
        return Payload.generated(payload_seed(self.scenario, self.step.index), self.args["size"])


# ------------------------------------------------------------------ argument types
ArgType = Literal["str", "int", "bool", "mask", "sigio", "machine", "destination"]


@dataclass(frozen=True)
class Arg:
    """One key of a step: its YAML type, the range an int must lie in, allowed strings."""

    type: ArgType
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False  # ``null`` is a value (poll: null = "not open")
    why: str = ""  # the hint when a value is out of range


@dataclass(frozen=True)
class Problem:
    """A combination the types cannot see; ``key`` None points at the whole step."""

    message: str  # "{kind}" stands for the step kind
    hint: str = ""
    key: str | None = None
    at_key: bool = False  # point at the key itself rather than its value
    candidates: tuple[str, ...] = ()  # what the key may have meant (a did-you-mean hint)


PORT = Arg("str")
NAME = Arg("str")
BOOL = Arg("bool")
NR = Arg("int", 0, UINT32_MAX, why="nr is QEMU's uint32 port id; QEMU judges ids >= max_ports")
MAX_PORTS = Arg(
    "int", 0, UINT32_MAX, why="max_ports is QEMU's uint32 property; QEMU refuses 0 and > 511"
)
SIZE = Arg("int", 0, MAX_PAYLOAD, why=f"size is a byte count from 0 to {MAX_PAYLOAD}")
MAX_BYTES = Arg("int", 1, MAX_PAYLOAD, why=f"max_bytes is a byte count from 1 to {MAX_PAYLOAD}")
BACKEND = Arg("str", choices=BACKENDS, why="backend is socket or none")
COUNTER = Arg("int", 0, 2**64 - 1, why="debugfs counters are unsigned 64-bit")

ModelOp = Callable[[StepCall], Outcome]
RealOp = Callable[["RealSystem", StepCall], object]
Validator = Callable[[Mapping[str, Any]], Problem | None]


@dataclass(frozen=True)
class StepKind:
    """Everything about one step kind; see the module docstring for who uses which field."""

    name: str
    keys: Mapping[str, Arg]
    model: ModelOp
    real: RealOp
    arguments: str  # README: the arguments column
    does: str  # README: what runs for real
    shorthand: str | None = None  # ``- kind: VALUE`` means ``- kind: {shorthand: VALUE}``
    required: tuple[str, ...] = ()
    refers: Mapping[str, Literal["port", "controller"]] = field(default_factory=dict)
    validate: Validator | None = None
    #: A guest operation the model may predict blocks: how to start it in the background.
    background: RealOp | None = None
    #: Ports and controllers a step makes nameable by later steps.
    provides: Callable[[Mapping[str, Any]], tuple[Iterable[str], Iterable[str]]] | None = None
    #: Defaults that depend on the machine (hotplug's controller: the first one).
    defaults: Callable[[Mapping[str, Any], MachineDecl], dict[str, Any]] | None = None
    asserts: bool = False  # a ``check``: compare the author's fields after the step
    compares_count: bool = False  # the real return value (bytes written) must match
    #: Exploration draws it rarely (``explore.RARE_ODDS``): it takes seconds on a real guest
    #: where other steps take milliseconds (a boot, a migration), or it undoes what most
    #: steps need (a controller unplug takes every port with it), or it is a fault (a
    #: driver reload, a dropped SSH) that tells little about ports when it comes every step.
    rare: bool = False


STEPS: dict[str, StepKind] = {}


def register(kind: StepKind) -> StepKind:
    """Add a step kind; schema, runner, docs and fakes pick it up from here."""
    if kind.name in STEPS:
        raise ValueError(f"step kind {kind.name!r} is already registered")
    STEPS[kind.name] = kind
    return kind


# ------------------------------------------------------------------ check fields
CHECK_PORT_FIELDS: dict[str, Arg] = {
    "exists": BOOL,
    "nr": NR,
    "controller": NAME,
    "is_console": BOOL,
    "guest_connected": BOOL,
    "host_connected": BOOL,
    "throttled": BOOL,
    "poll": Arg("mask", nullable=True),
    "sigio": Arg("sigio"),
    "bytes_sent": COUNTER,
    "bytes_received": COUNTER,
    "bytes_discarded": COUNTER,
    "console_vtermno": COUNTER,
}
CHECK_CONTROLLER_FIELDS: dict[str, Arg] = {
    "exists": BOOL,
    "max_ports": MAX_PORTS,
    "multiport": BOOL,
}


def _check_shape(args: Mapping[str, Any]) -> Problem | None:
    """A port check compares port fields (``controller`` among them); else a controller check."""
    if "port" not in args and "controller" not in args:
        return Problem(
            "check needs port: (a port check) or controller: (a controller check)",
            "name the port or the controller the check is about",
        )
    target = "port" if "port" in args else "controller"
    allowed = CHECK_PORT_FIELDS if target == "port" else CHECK_CONTROLLER_FIELDS
    for key in args:
        if key != target and key not in allowed:
            return Problem(
                f"{key!r} is not a field of a {target} check",
                key=key,
                at_key=True,
                candidates=tuple(allowed),
            )
    if set(args) == {target}:
        return Problem("check asserts nothing", "add a field such as exists: true")
    return None


# ------------------------------------------------------------------ validators
def _one_payload(args: Mapping[str, Any]) -> Problem | None:
    if ("data" in args) == ("size" in args):
        return Problem(
            "{kind} needs exactly one of data: and size:",
            "data: is literal text, size: a seeded random payload",
        )
    return None


# ------------------------------------------------------------------ model-side helpers
def _model_migrate(call: StepCall) -> Outcome:
    """Build the destination as the harness would start it, then load into it."""
    source = call.model
    target = _destination(call.args)
    decl = target.machine
    saved = model_saved_state(source)  # what the wire must carry (checked on every migration)
    if decl is None:
        dest = clone_configuration(source)
    else:
        dest = build_model(decl, source.behaviour)  # the same kernel; QEMU: run_on below
        for name in dest.ports:
            port = source.ports.get(name)
            if port is not None and port.host_attached:
                dest.host_open(name)
    # The destination QEMU's switches (a cross-version hop), else the QEMU's it runs on now.
    dest.run_on(source.behaviour, call.destination_behaviour(target.qemu) or source.qemu_behaviour)
    migrate(source, dest)
    call.model = dest
    return Outcome(saved)


def _model_hotplug(call: StepCall) -> Outcome:
    args = call.args
    nr = call.model.hotplug(
        args["name"],
        controller=args["controller"],
        nr=args.get("nr"),
        console=args.get("console", False),
        backend=args.get("backend", "socket"),
    )
    return Outcome(nr)


def _first_controller(args: Mapping[str, Any], machine: MachineDecl) -> dict[str, Any]:
    """hotplug without controller: goes to the first controller, as a port declaration does."""
    return {"controller": machine.controllers[0].id, **args}


def _destination(args: Mapping[str, Any]) -> Destination:
    found = args.get("destination")
    if isinstance(found, MachineDecl):  # the Python API may pass a bare machine
        return Destination(found)
    return found if isinstance(found, Destination) else Destination()


def _real_migrate(real: RealSystem, call: StepCall) -> SavedState | None:
    """The real migration; `qemu=` only when the step names one (other RealSystems need not
    know about QEMUs). Returns the virtio-serial state the stream carried, when the system
    read it (a file migration on QEMU), for the runner to compare with the model's."""
    target = _destination(call.args)
    mode = migration_mode(call.args)
    if target.qemu is None:
        stats = real.migrate(target.machine, mode)
    else:
        stats = real.migrate(target.machine, mode, qemu=target.qemu)
    wire = getattr(stats, "wire", None)  # MigrationStats of a QemuSystem; fakes return None
    return SavedState(wire) if wire is not None else None


def _migrated(args: Mapping[str, Any]) -> tuple[Iterable[str], Iterable[str]]:
    dest = _destination(args).machine
    if dest is None:
        return (), ()
    return (p.name for p in dest.ports), (c.id for c in dest.controllers)


def port_kind(
    name: str,
    model: ModelOp,
    real: RealOp,
    does: str,
    *,
    keys: Mapping[str, Arg] | None = None,
    arguments: str = "port",
    shorthand: str | None = "port",
    **more: Any,
) -> StepKind:
    """The common shape: a step about one port (``port:`` required, naming a port), by default
    with no other key and given as a bare name or as ``{port: NAME}``."""
    return StepKind(
        name,
        {"port": PORT} if keys is None else keys,
        model,
        real,
        arguments,
        does,
        shorthand=shorthand,
        required=("port",),
        refers={"port": "port"},
        **more,
    )


def _same_named(name: str, does: str) -> StepKind:
    """A port step that is the model's and the real system's method of its own name, called
    with the port alone."""

    def model(call: StepCall) -> Outcome:
        operation: Callable[[str], Outcome] = getattr(call.model, name)
        return operation(call.port)

    def real(system: RealSystem, call: StepCall) -> object:
        operation: Callable[[str], object] = getattr(system, name)
        return operation(call.port)

    return port_kind(name, model, real, does)


_DATA = {"port": PORT, "data": Arg("str"), "size": SIZE}
_READ = {"port": PORT, "expect": Arg("str"), "eof": BOOL, "max_bytes": MAX_BYTES}

for _kind in (
    _same_named("host_open", "connect the chardev socket"),
    _same_named("host_close", "disconnect the chardev socket"),
    port_kind(
        "host_write",
        lambda c: c.model.host_write(c.port, c.payload()),
        lambda r, c: r.host_write(c.port, c.payload()),
        "queue bytes on the socket (never blocks)",
        keys=_DATA,
        arguments="port, `data:` text **or** `size:` bytes",
        shorthand=None,
        validate=_one_payload,
    ),
    port_kind(
        "host_read",
        lambda c: c.model.host_read(c.port, c.args.get("max_bytes")),
        lambda r, c: r.host_read(c.port, c.read_size, c.timeout),
        "read what the model says QEMU delivered; length + SHA-256 compared",
        keys={"port": PORT, "expect": Arg("str"), "max_bytes": MAX_BYTES},
        arguments="port, `expect:`, `max_bytes:`",
    ),
    port_kind(
        "host_stall",
        lambda c: c.model.set_host_backpressure(c.port, True),
        lambda r, c: r.host_stall(c.port, True),
        "stop reading the socket (a busy host): QEMU throttles the port once it is full",
    ),
    port_kind(
        "host_resume",
        lambda c: c.model.set_host_backpressure(c.port, False),
        lambda r, c: r.host_stall(c.port, False),
        "read the socket again: the port unthrottles and held guest data flows",
    ),
    port_kind(
        "guest_open",
        lambda c: c.model.guest_open(c.port, c.args.get("nonblocking", False)),
        lambda r, c: r.guest_open(c.port, c.args.get("nonblocking", False)),
        "open `/dev/vportNpM` in the guest",
        keys={"port": PORT, "nonblocking": BOOL},
        arguments="port, `nonblocking:`",
    ),
    _same_named("guest_close", "close the guest fd"),
    _same_named("guest_seek", "lseek on the guest fd (ESPIPE)"),
    port_kind(
        "guest_read",
        lambda c: c.model.guest_read(c.port, c.args.get("max_bytes")),
        lambda r, c: r.guest_read(c.port, c.read_size, c.timeout),
        "read what the model says is deliverable (in the background if it blocks)",
        keys=_READ,
        arguments="port, `expect:`, `eof:`, `max_bytes:`",
        background=lambda r, c: r.start_guest_op("read", c.port, max_bytes=c.args.get("max_bytes")),
    ),
    port_kind(
        "guest_write",
        lambda c: c.model.guest_write(c.port, c.payload()),
        lambda r, c: r.guest_write(c.port, c.payload(), c.timeout),
        "write (32 KiB per call, looped; in the background if it blocks)",
        keys=_DATA,
        arguments="port, `data:` or `size:`",
        shorthand=None,
        validate=_one_payload,
        background=lambda r, c: r.start_guest_op("write", c.port, payload=c.payload()),
        compares_count=True,
    ),
    StepKind(
        "hotplug",
        {"name": NAME, "nr": NR, "console": BOOL, "controller": NAME, "backend": BACKEND},
        _model_hotplug,
        lambda r, c: r.hotplug(
            c.args["name"],
            c.args.get("nr"),
            c.args.get("console", False),
            c.args["controller"],
            c.args.get("backend", "socket"),
        ),
        "`name`, `nr`, `console`, `controller`, `backend`",
        "chardev-add + device_add",
        required=("name",),
        refers={"controller": "controller"},
        provides=lambda a: ((a["name"],), ()),
        defaults=_first_controller,
    ),
    _same_named("unplug", "device_del (waits for DEVICE_DELETED)"),
    StepKind(
        "hotplug_controller",
        {"id": NAME, "max_ports": MAX_PORTS},
        lambda c: c.model.hotplug_controller(
            c.args["id"], c.args.get("max_ports", DEFAULT_MAX_PORTS)
        ),
        lambda r, c: r.hotplug_controller(c.args["id"], c.args.get("max_ports", DEFAULT_MAX_PORTS)),
        f"`id`, `max_ports` (default {DEFAULT_MAX_PORTS})",
        "virtio-serial-pci device_add",
        required=("id",),
        provides=lambda a: ((), (a["id"],)),
    ),
    StepKind(
        "unplug_controller",
        {"id": NAME},
        lambda c: c.model.unplug_controller(c.args["id"]),
        lambda r, c: r.unplug_controller(c.args["id"]),
        "controller id",
        "virtio-serial-pci device_del (its ports go first)",
        shorthand="id",
        required=("id",),
        refers={"id": "controller"},
        rare=True,
    ),
    StepKind(
        "migrate",
        {
            "destination": Arg("destination"),
            "mode": Arg(
                "str", choices=MIGRATION_MODES, why="mode is live (default), paused or file"
            ),
        },
        _model_migrate,
        _real_migrate,
        "`destination:` (a machine mapping, and/or `qemu:` a QEMU spec; omitted = same "
        "configuration on the run's destination QEMU), "
        "`mode:` live (default), paused or file",
        "migration to a new QEMU (see below)",
        provides=_migrated,
        rare=True,
    ),
    StepKind(
        "reboot",
        {},
        lambda c: c.model.reboot(),
        lambda r, c: r.reboot(),
        "none",
        "guest reboot",
        rare=True,
    ),
    StepKind(
        "check",
        {"port": PORT, **CHECK_PORT_FIELDS, **CHECK_CONTROLLER_FIELDS},
        lambda c: Outcome(),
        lambda r, c: None,
        "`port:` + fields, or `controller:` + fields",
        "assert values on the model **and** the real system",
        shorthand="port",
        refers={"port": "port", "controller": "controller"},
        validate=_check_shape,
        asserts=True,
    ),
):
    register(_kind)


# stream and fault steps register themselves (they import this module's names)
import harness.scenario.faults  # noqa: E402
import harness.scenario.streams  # noqa: E402, F401


# ------------------------------------------------------------------ docs
def steps_table() -> str:
    """The README's step table, one row per registered kind."""
    rows = ["| step | arguments | what runs |", "|---|---|---|"]
    rows += [f"| `{k.name}` | {k.arguments} | {k.does} |" for k in STEPS.values()]
    return "\n".join(rows) + "\n"
