"""YAML scenario files -> validated dataclasses, with file:line:column for every mistake.

Validation happens at collection time, before anything boots, so a typo costs milliseconds
instead of a guest boot.  PyYAML's ``compose`` keeps the start mark of every node; we walk
the node tree ourselves (instead of ``safe_load``) so that each error can point at the exact
key or value the author has to fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.model import (
    BACKENDS,
    DEFAULT_MEMORY,
    ControllerDecl,
    MachineDecl,
    ModelError,
    PortDecl,
    VirtioSerialModel,
    build_model,
)
from harness.model.boot import plug_declared
from harness.scenario.steps import (
    MAX_PORTS,
    NR,
    STEPS,
    Arg,
    Destination,
    Step,
    payload_seed,
)

__all__ = [
    "ControllerDecl",
    "MachineDecl",
    "PortDecl",
    "Scenario",
    "ScenarioError",
    "Step",
    "build_model",
    "load_scenario",
    "parse_scenario",
    "payload_seed",
]

MASK_BITS = ("IN", "OUT", "HUP")
#: Guest RAM in MiB: the default image does not boot with 64 (observed: reboot loop, TCG);
#: 128 boots it.  Above the ceiling no host has it.
MEMORY = Arg("int", 128, 1 << 20, why="memory is in MiB, from 128 to 1048576")


# ------------------------------------------------------------------ result types
@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    marks: tuple[str, ...]
    machine: MachineDecl
    steps: tuple[Step, ...]
    path: str = ""


class ScenarioError(HarnessError):
    """A validation error pointing at one place in one file."""

    def __init__(self, path: str, line: int, column: int, message: str, hint: str = "") -> None:
        self.path, self.line, self.column = path, line, column
        self.message, self.hint = message, hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.path}:{self.line}:{self.column}: {self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


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


_TYPE_HINTS = {
    "str": "write a name or text (quote it if YAML reads it as something else)",
    "int": "write a whole number without quotes, e.g. 3",
    "bool": "write true or false",
}


def _scalar(ctx: _Ctx, node: yaml.Node, kind: str, what: str) -> Any:
    """Convert a scalar node with YAML 1.1 rules and check its Python type."""
    wanted = {"str": str, "int": int, "bool": bool}[kind]
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.error(node, f"{what} must be {kind}, got {_type_name(node)}", _TYPE_HINTS[kind])
    value = _LOADER.construct_object(node)
    if kind == "str" and not isinstance(value, str):
        hint = f'quote it: "{node.value}"' if node.value else _TYPE_HINTS[kind]
        raise ctx.error(node, f"{what} must be a string, got {_type_name(node)}", hint)
    if not isinstance(value, wanted) or (kind == "int" and isinstance(value, bool)):
        raise ctx.error(node, f"{what} must be {kind}, got {_type_name(node)}", _TYPE_HINTS[kind])
    return value


def _mapping(
    ctx: _Ctx, node: yaml.Node, what: str, known: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """key -> (key node, value node); unknown keys get a did-you-mean hint."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(
            node, f"{what} must be a mapping, got {_type_name(node)}", "write key: value lines"
        )
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = _scalar(ctx, key_node, "str", f"a key of {what}")
        if key in out:
            raise ctx.error(key_node, f"duplicate key {key!r} in {what}", "keep one of them")
        if key not in known:
            raise ctx.error(key_node, f"unknown key {key!r} in {what}", _did_you_mean(key, known))
        out[key] = (key_node, value_node)
    for key in required:
        if key not in out:
            raise ctx.error(
                node, f"{what} is missing required key {key!r}", f"add {key}: to {what}"
            )
    return out


def _did_you_mean(word: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(known)


def _list(ctx: _Ctx, node: yaml.Node, what: str) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.error(
            node, f"{what} must be a list, got {_type_name(node)}", "write [a, b] or '- a' lines"
        )
    return list(node.value)


def _mask(ctx: _Ctx, node: yaml.Node, what: str) -> frozenset[str]:
    bits = [_scalar(ctx, item, "str", f"an entry of {what}") for item in _list(ctx, node, what)]
    for item, bit in zip(_list(ctx, node, what), bits, strict=True):
        if bit not in MASK_BITS:
            raise ctx.error(item, f"{bit!r} is not a poll bit", "use IN, OUT, HUP")
    return frozenset(bits)


def _sigio(ctx: _Ctx, node: yaml.Node, what: str) -> tuple[frozenset[str], ...]:
    return tuple(_mask(ctx, item, f"an entry of {what}") for item in _list(ctx, node, what))


def _int(ctx: _Ctx, node: yaml.Node, arg: Arg, what: str) -> int:
    """An int inside the range its Arg allows (QEMU's uint32 properties, sane byte counts)."""
    value: int = _scalar(ctx, node, "int", what)
    low = arg.low if arg.low is not None else value
    high = arg.high if arg.high is not None else value
    if not low <= value <= high:
        raise ctx.error(node, f"{what} {value} is out of range", arg.why)
    return value


def _value(ctx: _Ctx, node: yaml.Node, arg: Arg, what: str) -> Any:
    """A value of the given Arg type, range and choices."""
    if arg.nullable and _is_null(node):
        return None
    if arg.type == "mask":
        return _mask(ctx, node, what)
    if arg.type == "sigio":
        return _sigio(ctx, node, what)
    if arg.type == "machine":
        return _machine(ctx, node)[0]
    if arg.type == "destination":
        return _destination(ctx, node)
    if arg.type == "int":
        return _int(ctx, node, arg, what)
    value = _scalar(ctx, node, arg.type, what)
    if arg.choices and value not in arg.choices:
        raise ctx.error(node, f"unknown {what} {value!r}", arg.why or f"one of {arg.choices}")
    return value


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")


# ------------------------------------------------------------------ machine
_CONTROLLER_KEYS = ("id", "max_ports")
_PORT_KEYS = ("name", "nr", "console", "controller", "backend")
_MACHINE_KEYS = ("memory", "controllers", "ports")
_BACKEND = Arg("str", choices=BACKENDS, why="backend is socket or none")


def _destination(ctx: _Ctx, node: yaml.Node) -> Destination:
    """A machine mapping plus `qemu:` (a QEMU spec); no machine keys: the same machine."""
    from harness.images.errors import ImageBuildError
    from harness.images.qemu_pkg import QEMU_SPEC_FORMS, parse_qemu_spec

    keys = _mapping(ctx, node, "destination", (*_MACHINE_KEYS, "qemu"))
    qemu = None
    if "qemu" in keys:
        qemu = _scalar(ctx, keys["qemu"][1], "str", "qemu")
        try:
            parse_qemu_spec(qemu)
        except ImageBuildError as error:
            raise ctx.error(keys["qemu"][1], str(error), f"qemu takes {QEMU_SPEC_FORMS}") from None
    rest = [(k, v) for k, v in node.value if k.value != "qemu"]
    if not rest:
        return Destination(None, qemu)
    machine_node = yaml.MappingNode(node.tag, rest, node.start_mark, node.end_mark)
    return Destination(_machine(ctx, machine_node)[0], qemu)


def _controller(ctx: _Ctx, node: yaml.Node) -> ControllerDecl:
    keys = _mapping(ctx, node, "a controller", _CONTROLLER_KEYS, ("id",))
    cid = _scalar(ctx, keys["id"][1], "str", "id")
    if "max_ports" not in keys:
        return ControllerDecl(cid)
    return ControllerDecl(cid, _int(ctx, keys["max_ports"][1], MAX_PORTS, "max_ports"))


def _port(ctx: _Ctx, node: yaml.Node, default_controller: str) -> PortDecl:
    keys = _mapping(ctx, node, "a port", _PORT_KEYS, ("name",))
    name = _scalar(ctx, keys["name"][1], "str", "name")
    nr = _int(ctx, keys["nr"][1], NR, "nr") if "nr" in keys else None
    console = _scalar(ctx, keys["console"][1], "bool", "console") if "console" in keys else False
    controller = default_controller
    if "controller" in keys:
        controller = _scalar(ctx, keys["controller"][1], "str", "controller")
    backend = _value(ctx, keys["backend"][1], _BACKEND, "backend") if "backend" in keys else None
    return PortDecl(name, controller, nr, console, backend or "socket")


def _machine(ctx: _Ctx, node: yaml.Node | None) -> tuple[MachineDecl, dict[str, yaml.Node]]:
    """The machine and, for each port name, the node that declared it (for later errors)."""
    if node is None or _is_null(node):
        return MachineDecl(), {}
    keys = _mapping(ctx, node, "machine", _MACHINE_KEYS)
    memory = DEFAULT_MEMORY
    if "memory" in keys:
        memory = _int(ctx, keys["memory"][1], MEMORY, "memory")
    controllers: tuple[ControllerDecl, ...] = MachineDecl().controllers
    if "controllers" in keys:
        items = _list(ctx, keys["controllers"][1], "controllers")
        controllers = tuple(_controller(ctx, item) for item in items)
        if not controllers:
            raise ctx.error(
                keys["controllers"][1],
                "a machine needs at least one controller",
                "omit controllers: for the default one, or list one",
            )
    ports: list[PortDecl] = []
    nodes: dict[str, yaml.Node] = {}
    for item in _list(ctx, keys["ports"][1], "ports") if "ports" in keys else []:
        port = _port(ctx, item, controllers[0].id)
        ports.append(port)
        nodes[port.name] = item
    machine = MachineDecl(memory, controllers, tuple(ports))
    _check_machine_boots(ctx, node, keys, machine, nodes)
    return machine, nodes


def _check_machine_boots(
    ctx: _Ctx,
    node: yaml.Node,
    keys: dict[str, tuple[yaml.Node, yaml.Node]],
    machine: MachineDecl,
    nodes: dict[str, yaml.Node],
) -> None:
    """QEMU refuses to start such a machine, and no step can expect that: reject it now."""
    model = VirtioSerialModel()
    items = _list(ctx, keys["controllers"][1], "controllers") if "controllers" in keys else []
    for index, ctrl in enumerate(machine.controllers):
        try:
            model.hotplug_controller(ctrl.id, ctrl.max_ports)
        except ModelError as error:
            message = f"QEMU would refuse controller {ctrl.id!r}: {error.text}"
            where = items[index] if index < len(items) else node
            raise ctx.error(where, message, "hotplug_controller it with expect_error") from None
    for port in machine.ports:
        where = nodes.get(port.name, node)
        if port.controller not in model.controllers:
            raise ctx.error(
                where,
                f"port {port.name!r} names unknown controller {port.controller!r}",
                _did_you_mean(port.controller, list(model.controllers)),
            )
        try:
            plug_declared(model, port)
        except ModelError as error:
            message = f"QEMU would refuse to boot with port {port.name!r}: {error.text}"
            hint = "hotplug it in a step with expect_error instead"
            raise ctx.error(where, message, hint) from None


# ------------------------------------------------------------------ steps
def _expect_error(ctx: _Ctx, node: yaml.Node) -> str:
    """A non-empty substring: "" would match every error, which asserts nothing."""
    text: str = _scalar(ctx, node, "str", "expect_error")
    if not text:
        raise ctx.error(
            node,
            'expect_error "" matches any error',
            "give a substring of the expected message, e.g. EBUSY",
        )
    return text


def _step_body(ctx: _Ctx, kind: str, node: yaml.Node) -> tuple[dict[str, Any], str | None]:
    """The step's arguments (shorthand expanded) and an ``expect_error`` given inside them."""
    spec = STEPS[kind]
    if _is_null(node):
        node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
    keys: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    expect = None
    if isinstance(node, yaml.ScalarNode) and spec.shorthand is not None:
        value = _value(ctx, node, spec.keys[spec.shorthand], f"{kind}'s {spec.shorthand}")
        args = {spec.shorthand: value}
    elif isinstance(node, yaml.MappingNode):
        keys = _mapping(ctx, node, kind, (*spec.keys, "expect_error"), spec.required)
        args = {k: _value(ctx, v, spec.keys[k], k) for k, (_, v) in keys.items() if k in spec.keys}
        expect = _expect_error(ctx, keys["expect_error"][1]) if "expect_error" in keys else None
    else:
        shape = f"a {spec.shorthand} name or a mapping" if spec.shorthand else "a mapping"
        raise ctx.error(
            node,
            f"{kind} takes {shape}, got {_type_name(node)}",
            f"e.g. '- {kind}: {{{', '.join(f'{k}: ...' for k in spec.required)}}}'",
        )
    problem = spec.validate(args) if spec.validate else None
    if problem is not None:
        where: yaml.Node = node
        if problem.key is not None and problem.key in keys:
            key_node, value_node = keys[problem.key]
            where = key_node if problem.at_key else value_node
        hint = problem.hint
        if problem.candidates and problem.key is not None:
            hint = _did_you_mean(problem.key, problem.candidates)
        raise ctx.error(where, problem.message.replace("{kind}", kind), hint)
    return args, expect


def _step(ctx: _Ctx, node: yaml.Node, index: int) -> Step:
    """``- kind: body`` plus an optional sibling ``expect_error:``."""
    if not isinstance(node, yaml.MappingNode) or not node.value:
        hint = f"got {_type_name(node)}"
        if isinstance(node, yaml.ScalarNode) and node.value in STEPS:
            hint = f"write '- {node.value}:' (a step is a mapping, even without arguments)"
        raise ctx.error(
            node, f"step {index} must be a one-key mapping such as '- host_open: PORT'", hint
        )
    kinds = []
    expect = None
    for key_node, value_node in node.value:
        key = _scalar(ctx, key_node, "str", "a step kind")
        if key == "expect_error":
            expect = _expect_error(ctx, value_node)
        elif key not in STEPS:
            raise ctx.error(
                key_node, f"unknown step kind {key!r}", _did_you_mean(key, [*STEPS, "expect_error"])
            )
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
        raise ctx.error(node, "expect_error given twice", "keep one of them")
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
        provides = STEPS[step.kind].provides
        if provides is not None:
            ports, controllers = provides(step.args)
            known.ports.update(ports)
            known.controllers.update(controllers)


def _check_one_reference(ctx: _Ctx, step: Step, node: yaml.Node, known: _Known) -> None:
    """A port must always be known; a controller unless the step expects an error."""
    for key, what in STEPS[step.kind].refers.items():
        name = step.args.get(key)
        if name is None:
            continue
        names = known.ports if what == "port" else known.controllers
        if name in names or (what == "controller" and step.expect_error is not None):
            continue
        if what == "port":
            hint = (
                _did_you_mean(name, sorted(names))
                if names
                else "declare it under machine.ports or hotplug it first"
            )
            message = "neither declared under machine.ports nor hotplugged earlier"
        else:
            hint = _did_you_mean(str(name), sorted(names))
            message = "neither declared nor hotplugged earlier"
        raise ctx.error(
            node, f"step {step.index} ({step.kind}) names {what} {name!r}, which is {message}", hint
        )


def _fill_defaults(steps: list[Step], machine: MachineDecl) -> list[Step]:
    """Defaults that depend on the machine (see StepKind.defaults)."""
    out = []
    for step in steps:
        defaults = STEPS[step.kind].defaults
        if defaults is not None:
            args = defaults(step.args, machine)
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
    except yaml.reader.ReaderError as error:  # a control character: no mark, a position
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        raise ScenarioError(
            path,
            line,
            column,
            f"character {chr(error.character)!r} is not allowed in YAML",
            "remove it, or write it as an escape inside double quotes",
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
        raise ctx.error(
            keys["steps"][1], "a scenario needs at least one step", "add one, e.g. '- reboot:'"
        )
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
            raise ctx.error(
                item, f"{mark!r} is not a valid pytest mark name", "use a name such as slow"
            )
        marks.append(mark)
    return tuple(marks)


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate one scenario file."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ScenarioError(
            str(path), 1, 1, f"cannot read: {error}", "check the path and permissions"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ScenarioError(
            str(path),
            line,
            column,
            f"byte 0x{data[error.start]:02x} is not UTF-8",
            "save the file as UTF-8",
        ) from None
    return parse_scenario(text, str(path))
