"""YAML scenario files -> validated dataclasses, with file:line:column for every mistake.

Validation happens at collection time, before anything boots, so a typo costs milliseconds
instead of a guest boot.  PyYAML's ``compose`` keeps the start mark of every node; we walk
the node tree ourselves (instead of ``safe_load``) so that each error can point at the exact
key or value the author has to fix.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.model import ModelError, VirtioSerialModel

MASK_BITS = ("IN", "OUT", "HUP")
BACKENDS = ("socket", "none")
DEFAULT_MEMORY = 512
DEFAULT_CONTROLLER = "vser0"
DEFAULT_MAX_PORTS = 31


# ------------------------------------------------------------------ result types
@dataclass(frozen=True)
class ControllerDecl:
    id: str
    max_ports: int = DEFAULT_MAX_PORTS


@dataclass(frozen=True)
class PortDecl:
    name: str
    controller: str
    nr: int | None = None
    console: bool = False
    backend: str = "socket"


@dataclass(frozen=True)
class MachineDecl:
    memory: int = DEFAULT_MEMORY
    controllers: tuple[ControllerDecl, ...] = (ControllerDecl(DEFAULT_CONTROLLER),)
    ports: tuple[PortDecl, ...] = ()


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
                return self.args[key]
        return None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    marks: tuple[str, ...]
    machine: MachineDecl
    steps: tuple[Step, ...]
    path: str = ""


class ScenarioError(Exception):
    """A validation error pointing at one place in one file."""

    def __init__(self, path: str, line: int, column: int, message: str, hint: str = "") -> None:
        self.path, self.line, self.column = path, line, column
        self.message, self.hint = message, hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.path}:{self.line}:{self.column}: {self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


def payload_seed(scenario_name: str, index: int) -> int:
    """Deterministic seed for ``size:`` payloads: reruns and the guest agent agree on bytes.

    Kept below 2**63 because migration packs seeds as a signed 64-bit integer.
    """
    digest = hashlib.sha256(f"{scenario_name}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ------------------------------------------------------------------ node helpers
_LOADER = yaml.SafeLoader("")


class _Ctx:
    """The file being validated: turns a node into an error at its position."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: yaml.Node, message: str, hint: str = "") -> ScenarioError:
        mark = node.start_mark
        return ScenarioError(self.path, mark.line + 1, mark.column + 1, message, hint)


def _type_name(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.tag.rsplit(':', 1)[-1]} {node.value!r}"


def _scalar(ctx: _Ctx, node: yaml.Node, kind: str, what: str) -> Any:
    """Convert a scalar node with YAML 1.1 rules and check its Python type."""
    wanted = {"str": str, "int": int, "bool": bool}[kind]
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.error(node, f"{what} must be {kind}, got {_type_name(node)}")
    value = _LOADER.construct_object(node)
    if kind == "str" and not isinstance(value, str):
        hint = f'quote it: "{node.value}"' if node.value else ""
        raise ctx.error(node, f"{what} must be a string, got {_type_name(node)}", hint)
    if kind != "str" and (not isinstance(value, wanted) or (kind == "int" and value is True)):
        raise ctx.error(node, f"{what} must be {kind}, got {_type_name(node)}")
    if kind == "int" and isinstance(value, bool):
        raise ctx.error(node, f"{what} must be int, got {_type_name(node)}")
    return value


def _mapping(
    ctx: _Ctx, node: yaml.Node, what: str, known: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """key -> (key node, value node); unknown keys get a did-you-mean hint."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, f"{what} must be a mapping, got {_type_name(node)}")
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = _scalar(ctx, key_node, "str", f"a key of {what}")
        if key in out:
            raise ctx.error(key_node, f"duplicate key {key!r} in {what}")
        if key not in known:
            raise ctx.error(key_node, f"unknown key {key!r} in {what}", _did_you_mean(key, known))
        out[key] = (key_node, value_node)
    for key in required:
        if key not in out:
            raise ctx.error(node, f"{what} is missing required key {key!r}")
    return out


def _did_you_mean(word: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(known)


def _list(ctx: _Ctx, node: yaml.Node, what: str) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(node, f"{what} must be a list, got {_type_name(node)}")
    return list(node.value)


def _mask(ctx: _Ctx, node: yaml.Node, what: str) -> frozenset[str]:
    bits = [_scalar(ctx, item, "str", f"an entry of {what}") for item in _list(ctx, node, what)]
    for item, bit in zip(_list(ctx, node, what), bits, strict=True):
        if bit not in MASK_BITS:
            raise ctx.error(item, f"{bit!r} is not a poll bit", "use IN, OUT, HUP")
    return frozenset(bits)


def _sigio(ctx: _Ctx, node: yaml.Node, what: str) -> tuple[frozenset[str], ...]:
    return tuple(_mask(ctx, item, f"an entry of {what}") for item in _list(ctx, node, what))


# ------------------------------------------------------------------ machine
_CONTROLLER_KEYS = ("id", "max_ports")
_PORT_KEYS = ("name", "nr", "console", "controller", "backend")
_MACHINE_KEYS = ("memory", "controllers", "ports")


def _controller(ctx: _Ctx, node: yaml.Node) -> ControllerDecl:
    keys = _mapping(ctx, node, "a controller", _CONTROLLER_KEYS, ("id",))
    cid = _scalar(ctx, keys["id"][1], "str", "id")
    max_ports = DEFAULT_MAX_PORTS
    if "max_ports" in keys:
        max_ports = _scalar(ctx, keys["max_ports"][1], "int", "max_ports")
    return ControllerDecl(cid, max_ports)


def _backend(ctx: _Ctx, node: yaml.Node) -> str:
    value = _scalar(ctx, node, "str", "backend")
    if value not in BACKENDS:
        raise ctx.error(node, f"unknown backend {value!r}", "backend is socket or none")
    return value


def _port(ctx: _Ctx, node: yaml.Node, default_controller: str) -> PortDecl:
    keys = _mapping(ctx, node, "a port", _PORT_KEYS, ("name",))
    name = _scalar(ctx, keys["name"][1], "str", "name")
    nr = _scalar(ctx, keys["nr"][1], "int", "nr") if "nr" in keys else None
    console = _scalar(ctx, keys["console"][1], "bool", "console") if "console" in keys else False
    controller = default_controller
    if "controller" in keys:
        controller = _scalar(ctx, keys["controller"][1], "str", "controller")
    backend = _backend(ctx, keys["backend"][1]) if "backend" in keys else "socket"
    return PortDecl(name, controller, nr, console, backend)


def _machine(ctx: _Ctx, node: yaml.Node | None) -> tuple[MachineDecl, dict[str, yaml.Node]]:
    """The machine and, for each port name, the node that declared it (for later errors)."""
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        return MachineDecl(), {}
    keys = _mapping(ctx, node, "machine", _MACHINE_KEYS)
    memory = _scalar(ctx, keys["memory"][1], "int", "memory") if "memory" in keys else 512
    controllers: tuple[ControllerDecl, ...] = MachineDecl().controllers
    if "controllers" in keys:
        items = _list(ctx, keys["controllers"][1], "controllers")
        controllers = tuple(_controller(ctx, item) for item in items)
        if not controllers:
            raise ctx.error(keys["controllers"][1], "a machine needs at least one controller")
    ports: list[PortDecl] = []
    nodes: dict[str, yaml.Node] = {}
    for item in _list(ctx, keys["ports"][1], "ports") if "ports" in keys else []:
        port = _port(ctx, item, controllers[0].id)
        ports.append(port)
        nodes[port.name] = item
    machine = MachineDecl(memory, controllers, tuple(ports))
    _check_machine_boots(ctx, node, machine, nodes)
    return machine, nodes


def build_model(machine: MachineDecl) -> VirtioSerialModel:
    """The model of a freshly booted machine (raises ModelError if QEMU would refuse it)."""
    model = VirtioSerialModel()
    for ctrl in machine.controllers:
        model.add_controller(ctrl.id, ctrl.max_ports)
    for port in machine.ports:
        model.add_port(
            port.name,
            controller=port.controller,
            nr=port.nr,
            console=port.console,
            backend=port.backend,  # type: ignore[arg-type]
        )
    model.boot()  # the guest driver probes the controllers only now, in PCI slot order
    return model


def _check_machine_boots(
    ctx: _Ctx, node: yaml.Node, machine: MachineDecl, nodes: dict[str, yaml.Node]
) -> None:
    """QEMU refuses to start such a machine, and no step can expect that: reject it now."""
    model = VirtioSerialModel()
    for ctrl in machine.controllers:
        try:
            model.add_controller(ctrl.id, ctrl.max_ports)
        except ModelError as error:
            message = f"QEMU would refuse controller {ctrl.id!r}: {error.text}"
            raise ctx.error(node, message) from None
    for port in machine.ports:
        where = nodes.get(port.name, node)
        if port.controller not in model.controllers:
            raise ctx.error(
                where,
                f"port {port.name!r} names unknown controller {port.controller!r}",
                _did_you_mean(port.controller, list(model.controllers)),
            )
        try:
            model.add_port(
                port.name,
                controller=port.controller,
                nr=port.nr,
                console=port.console,
                backend=port.backend,
            )  # type: ignore[arg-type]
        except ModelError as error:
            message = f"QEMU would refuse to boot with port {port.name!r}: {error.text}"
            hint = "hotplug it in a step with expect_error instead"
            raise ctx.error(where, message, hint) from None


# ------------------------------------------------------------------ steps
@dataclass(frozen=True)
class StepSpec:
    """What one step kind accepts: a scalar shorthand key, typed keys, required keys."""

    shorthand: str | None
    keys: dict[str, str]
    required: tuple[str, ...] = ()
    refers: str | None = None  # "port" or "controller": the key that must name a known one


_PORT_ONLY = StepSpec("port", {"port": "str"}, ("port",), "port")
_DATA = {"port": "str", "data": "str", "size": "int"}
_READ = {"port": "str", "expect": "str", "eof": "bool", "max_bytes": "int"}
CHECK_PORT_FIELDS = {
    "exists": "bool",
    "nr": "int",
    "controller": "str",
    "is_console": "bool",
    "guest_connected": "bool",
    "host_connected": "bool",
    "throttled": "bool",
    "poll": "mask",
    "sigio": "sigio",
    "bytes_sent": "int",
    "bytes_received": "int",
    "bytes_discarded": "int",
    "console_vtermno": "int",
}
CHECK_CONTROLLER_FIELDS = {"exists": "bool", "max_ports": "int", "multiport": "bool"}

STEP_SPECS: dict[str, StepSpec] = {
    "host_open": _PORT_ONLY,
    "host_close": _PORT_ONLY,
    "host_write": StepSpec(None, _DATA, ("port",), "port"),
    "host_read": StepSpec("port", _READ, ("port",), "port"),
    "guest_open": StepSpec("port", {"port": "str", "nonblocking": "bool"}, ("port",), "port"),
    "guest_close": _PORT_ONLY,
    "guest_read": StepSpec("port", _READ, ("port",), "port"),
    "guest_write": StepSpec(None, _DATA, ("port",), "port"),
    "guest_seek": _PORT_ONLY,
    "hotplug": StepSpec(
        None,
        {"name": "str", "nr": "int", "console": "bool", "controller": "str", "backend": "str"},
        ("name",),
        "controller",
    ),
    "unplug": StepSpec("port", {"port": "str"}, ("port",), "port"),
    "hotplug_controller": StepSpec(None, {"id": "str", "max_ports": "int"}, ("id",)),
    "unplug_controller": StepSpec("id", {"id": "str"}, ("id",), "controller"),
    "migrate": StepSpec(None, {"destination": "machine", "mode": "str"}),
    "reboot": StepSpec(None, {}),
    "check": StepSpec(
        "port", {"port": "str", **CHECK_PORT_FIELDS, "max_ports": "int", "multiport": "bool"}
    ),
}
STEP_KINDS = tuple(STEP_SPECS)
MIGRATION_MODES = ("live", "paused", "file")


def _value(ctx: _Ctx, node: yaml.Node, kind: str, what: str) -> Any:
    if kind == "mask":
        return _mask(ctx, node, what)
    if kind == "sigio":
        return _sigio(ctx, node, what)
    if kind == "machine":
        return _machine(ctx, node)[0]
    return _scalar(ctx, node, kind, what)


def _step_body(ctx: _Ctx, kind: str, node: yaml.Node) -> tuple[dict[str, Any], str | None]:
    """The step's arguments (shorthand expanded) and an ``expect_error`` given inside them."""
    spec = STEP_SPECS[kind]
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
    if isinstance(node, yaml.ScalarNode) and spec.shorthand is not None:
        return {spec.shorthand: _scalar(ctx, node, "str", f"{kind}'s {spec.shorthand}")}, None
    if not isinstance(node, yaml.MappingNode):
        shape = f"a {spec.shorthand} name or a mapping" if spec.shorthand else "a mapping"
        raise ctx.error(node, f"{kind} takes {shape}, got {_type_name(node)}")
    known = (*spec.keys, "expect_error")
    keys = _mapping(ctx, node, kind, known, spec.required)
    args = {k: _value(ctx, v, spec.keys[k], k) for k, (_, v) in keys.items() if k in spec.keys}
    expect = None
    if "expect_error" in keys:
        expect = _scalar(ctx, keys["expect_error"][1], "str", "expect_error")
    _check_step_shape(ctx, kind, node, keys, args)
    return args, expect


def _check_step_shape(
    ctx: _Ctx,
    kind: str,
    node: yaml.Node,
    keys: dict[str, tuple[yaml.Node, yaml.Node]],
    args: dict[str, Any],
) -> None:
    """Combinations a type check cannot see."""
    if kind == "migrate" and args.get("mode", "live") not in MIGRATION_MODES:
        raise ctx.error(
            keys["mode"][1],
            f"unknown migration mode {args['mode']!r}",
            "mode is live (default), paused or file",
        )
    if kind in ("host_write", "guest_write"):
        if ("data" in args) == ("size" in args):
            raise ctx.error(
                node,
                f"{kind} needs exactly one of data: and size:",
                "data: is literal text, size: a seeded random payload",
            )
        if args.get("size", 0) < 0:
            raise ctx.error(keys["size"][1], "size must not be negative")
    if kind == "hotplug" and "backend" in args and args["backend"] not in BACKENDS:
        raise ctx.error(
            keys["backend"][1], f"unknown backend {args['backend']!r}", "backend is socket or none"
        )
    if kind == "check":
        _check_check_shape(ctx, node, keys, args)


def _check_check_shape(
    ctx: _Ctx,
    node: yaml.Node,
    keys: dict[str, tuple[yaml.Node, yaml.Node]],
    args: dict[str, Any],
) -> None:
    if "port" not in args and "controller" not in args:
        raise ctx.error(
            node, "check needs port: (a port check) or controller: (a controller check)"
        )
    allowed = CHECK_PORT_FIELDS if "port" in args else CHECK_CONTROLLER_FIELDS
    for key, (key_node, _) in keys.items():
        if key not in (*allowed, "port", "controller", "expect_error"):
            what = "port" if "port" in args else "controller"
            raise ctx.error(
                key_node,
                f"{key!r} is not a field of a {what} check",
                _did_you_mean(key, list(allowed)),
            )
    if len(args) == 1 + ("port" in args and "controller" in args):
        raise ctx.error(node, "check asserts nothing", "add a field such as exists: true")


def _step(ctx: _Ctx, node: yaml.Node, index: int) -> Step:
    """``- kind: body`` plus an optional sibling ``expect_error:``."""
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise ctx.error(
            node,
            f"step {index} must be a one-key mapping such as '- host_open: PORT'",
            f"got {_type_name(node)}",
        )
    kinds = []
    expect = None
    for key_node, value_node in node.value:
        key = _scalar(ctx, key_node, "str", "a step kind")
        if key == "expect_error":
            expect = _scalar(ctx, value_node, "str", "expect_error")
        elif key not in STEP_SPECS:
            raise ctx.error(key_node, f"unknown step kind {key!r}", _did_you_mean(key, STEP_KINDS))
        else:
            kinds.append((key, key_node, value_node))
    if len(kinds) != 1:
        raise ctx.error(
            node,
            f"step {index} must have exactly one kind, got {len(kinds)}",
            "split it into one step per list entry",
        )
    kind, key_node, value_node = kinds[0]
    args, inner = _step_body(ctx, kind, value_node)
    if inner is not None and expect is not None:
        raise ctx.error(node, "expect_error given twice")
    mark = key_node.start_mark
    return Step(index, kind, args, inner or expect, ctx.path, mark.line + 1, mark.column + 1)


# ------------------------------------------------------------------ references
@dataclass
class _Known:
    """Ports and controllers a step may name: declared at boot or plugged by an earlier step."""

    ports: set[str] = field(default_factory=set)
    controllers: set[str] = field(default_factory=set)


def _check_references(ctx: _Ctx, steps: list[Step], nodes: list[yaml.Node], known: _Known) -> None:
    """Naming a port that never existed is a typo, not a test: no scenario could mean it."""
    for step, node in zip(steps, nodes, strict=True):
        _check_one_reference(ctx, step, node, known)
        if step.kind == "hotplug":
            known.ports.add(step.args["name"])
        elif step.kind == "hotplug_controller":
            known.controllers.add(step.args["id"])
        elif step.kind == "migrate" and step.args.get("destination") is not None:
            dest: MachineDecl = step.args["destination"]
            known.ports.update(p.name for p in dest.ports)
            known.controllers.update(c.id for c in dest.controllers)


def _check_one_reference(ctx: _Ctx, step: Step, node: yaml.Node, known: _Known) -> None:
    port = step.args.get("port")
    if port is not None and port not in known.ports:
        raise ctx.error(
            node,
            f"step {step.index} ({step.kind}) names port {port!r}, which is "
            "neither declared under machine.ports nor hotplugged earlier",
            _did_you_mean(port, sorted(known.ports))
            if known.ports
            else "declare it under machine.ports or hotplug it first",
        )
    controller = step.args.get("controller", step.args.get("id"))
    if step.kind == "hotplug" and controller is None:
        return
    names_controller = step.kind in ("hotplug", "unplug_controller") or (
        step.kind == "check" and not port
    )
    if names_controller and controller not in known.controllers and step.expect_error is None:
        raise ctx.error(
            node,
            f"step {step.index} ({step.kind}) names controller "
            f"{controller!r}, which is neither declared nor hotplugged earlier",
            _did_you_mean(str(controller), sorted(known.controllers)),
        )


def _fill_defaults(steps: list[Step], machine: MachineDecl) -> list[Step]:
    """hotplug without controller: goes to the first controller, as a port declaration does."""
    out = []
    for step in steps:
        if step.kind == "hotplug" and "controller" not in step.args:
            args = {**step.args, "controller": machine.controllers[0].id}
            step = Step(
                step.index, step.kind, args, step.expect_error, step.path, step.line, step.column
            )
        out.append(step)
    return out


# ------------------------------------------------------------------ top level
_TOP_KEYS = ("name", "description", "marks", "machine", "steps")


def parse_scenario(text: str, path: str = "<string>") -> Scenario:
    """Validate ``text``; raise ScenarioError at the first mistake."""
    ctx = _Ctx(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ScenarioError(
            path, line, column, f"not valid YAML: {error.problem}", "check indentation and quoting"
        ) from None
    if root is None:
        raise ScenarioError(path, 1, 1, "empty file", "a scenario needs name: and steps:")
    keys = _mapping(ctx, root, "the scenario", _TOP_KEYS, ("name", "steps"))
    name = _scalar(ctx, keys["name"][1], "str", "name")
    description = ""
    if "description" in keys:
        description = _scalar(ctx, keys["description"][1], "str", "description")
    marks = _marks(ctx, keys["marks"][1]) if "marks" in keys else ()
    machine, _ = _machine(ctx, keys["machine"][1] if "machine" in keys else None)
    step_nodes = _list(ctx, keys["steps"][1], "steps")
    if not step_nodes:
        raise ctx.error(keys["steps"][1], "a scenario needs at least one step")
    steps = [_step(ctx, node, index) for index, node in enumerate(step_nodes, start=1)]
    known = _Known({p.name for p in machine.ports}, {c.id for c in machine.controllers})
    _check_references(ctx, steps, step_nodes, known)
    steps = _fill_defaults(steps, machine)
    return Scenario(name, description, marks, machine, tuple(steps), path)


def _marks(ctx: _Ctx, node: yaml.Node) -> tuple[str, ...]:
    marks = []
    for item in _list(ctx, node, "marks"):
        mark = _scalar(ctx, item, "str", "a mark")
        if not mark.isidentifier():
            raise ctx.error(item, f"{mark!r} is not a valid pytest mark name")
        marks.append(mark)
    return tuple(marks)


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate one scenario file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(str(path), 1, 1, f"cannot read: {error}") from None
    return parse_scenario(text, str(path))
