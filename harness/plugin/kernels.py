"""Kernels under test as the plugin sees them: ids, behaviour switches, and the comparison.

Pure functions (no pytest objects) so the per-kernel logic is unit-tested without booting:
which model switches a kernel release gets, how a scenario's observations are recorded, and
how results of several kernels become one table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from harness.model import Behaviour, Snapshot

#: Test id used when no --hil-kernel is given (the recipe's kernel).
RECIPE_KERNEL = "recipe"


@dataclass(frozen=True)
class KernelChange:
    """A driver change our steps can observe: from `since` (major, minor) on, the model's
    `switch` takes `value`. `evidence` says where the change comes from."""

    since: tuple[int, int]
    switch: str
    value: object
    evidence: str


#: Oldest first. Each entry is a Behaviour field whose right value depends on the kernel.
KERNEL_CHANGES: tuple[KernelChange, ...] = (
    KernelChange(
        (6, 2),
        "console_vtermno_reuse",
        True,
        "virtio_console: Introduce an ID allocator for virtual console numbers (Cedric Le "
        "Goater, v3 posted 2022-11-22, so after 6.1's merge window: the 6.2 threshold is "
        "inferred, not bisected): ida_alloc_min(&vtermno_ida, 1) at console init, ida_free "
        "on unplug. Observed: Debian 12's 6.1 counts (pdrvdata.next_vtermno), Debian 13's "
        "6.12 reuses (vtermno_ida in /proc/kallsyms; scenario port_id_allocation)",
    ),
)


def release_tuple(release: str | None) -> tuple[int, int] | None:
    """(major, minor) of a `uname -r` string, None when it does not start like one."""
    match = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(match[1]), int(match[2])) if match else None


def behaviour_for(release: str | None, base: Behaviour | None = None) -> Behaviour:
    """The model switches for a kernel release; an unknown release keeps the defaults."""
    version = release_tuple(release)
    changes = [c for c in KERNEL_CHANGES if version is not None and version >= c.since]
    return with_switches(base, ((c.switch, c.value) for c in changes))


def with_switches(base: Behaviour | None, switches: Iterable[tuple[str, object]]) -> Behaviour:
    """``base`` (default: the defaults) with each (switch, value) set, later ones winning."""
    behaviour = base or Behaviour()
    values: dict[str, Any] = dict(switches)
    return replace(behaviour, **values) if values else behaviour


def switched(behaviour: Behaviour) -> dict[str, object]:
    """Switches that differ from the defaults (what a kernel changed in the model)."""
    default = Behaviour()
    return {
        f.name: getattr(behaviour, f.name)
        for f in fields(Behaviour)
        if getattr(behaviour, f.name) != getattr(default, f.name)
    }


def kernel_id(spec: str | None) -> str:
    """The test-id part naming a kernel: the spec as typed (a path shortened to its name)."""
    if spec is None:
        return RECIPE_KERNEL
    if spec.startswith("debian:") or "/" not in spec:
        return spec
    head, sep, modules = spec.partition(":")
    name = head.rstrip("/").rsplit("/", 1)[-1]
    return f"{name}:{modules.rstrip('/').rsplit('/', 1)[-1]}" if sep else name


# ------------------------------------------------------------------ observations


def flatten(snapshot: Snapshot) -> dict[str, str]:
    """`"<port> <dotted field>" -> repr(value)` for every value of a snapshot."""
    out: dict[str, str] = {}
    for kind, items in (("controller:", snapshot.controllers), ("", snapshot.ports)):
        for key, view in items.items():
            for path, value in _walk(view, ""):
                out[f"{kind}{key} {path}"] = _show(value)
    return out


def _walk(value: object, prefix: str) -> Iterable[tuple[str, object]]:
    if is_dataclass(value) and not isinstance(value, type):
        for item in fields(value):
            yield from _walk(getattr(value, item.name), f"{prefix}{item.name}.")
    else:
        yield prefix.rstrip("."), value


def _show(value: object) -> str:
    if isinstance(value, frozenset):
        return "{" + ",".join(sorted(value)) + "}"
    return repr(value)


@dataclass(frozen=True)
class Observation:
    """What one step left on the system (the settled snapshot, equal to the prediction)."""

    step: str
    values: dict[str, str]


def first_difference(
    left: Sequence[Observation], right: Sequence[Observation]
) -> tuple[str, str, str, str] | None:
    """(step, field, left value, right value) of the first step both reached that differs."""
    for a, b in zip(left, right, strict=False):
        for key in sorted(set(a.values) | set(b.values)):
            if a.values.get(key) != b.values.get(key):
                return a.step, key, a.values.get(key, "-"), b.values.get(key, "-")
    return None


# ------------------------------------------------------------------ the summary table


@dataclass
class KernelResult:
    """One item's outcome on one kernel, as reports carry it across xdist workers."""

    outcome: str
    release: str | None = None
    observations: list[Observation] = field(default_factory=list)


@dataclass
class Comparison:
    """Results per test (id without the kernel part) and per kernel id, in run order."""

    kernels: list[str] = field(default_factory=list)
    releases: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict[str, KernelResult]] = field(default_factory=dict)

    def add(self, test: str, kernel: str, result: KernelResult) -> None:
        if kernel not in self.kernels:
            self.kernels.append(kernel)
        if result.release:
            self.releases[kernel] = result.release
        self.results.setdefault(test, {})[kernel] = result

    def to_json(self) -> dict[str, object]:
        """What a shard writes next to its allure results (see `merged`)."""
        return {
            "kernels": self.kernels,
            "releases": self.releases,
            "results": {
                test: {
                    label: [r.outcome, r.release, [[o.step, o.values] for o in r.observations]]
                    for label, r in by_label.items()
                }
                for test, by_label in self.results.items()
            },
        }

    @classmethod
    def merged(cls, shards: Iterable[Mapping[str, Any]]) -> Comparison:
        """One comparison from several shards' `to_json` (columns in first-seen order)."""
        out = cls()
        for shard in shards:
            for label in shard["kernels"]:
                if label not in out.kernels:
                    out.kernels.append(label)
            for test, by_label in shard["results"].items():
                for label, (outcome, release, observations) in by_label.items():
                    found = [Observation(step, values) for step, values in observations]
                    out.add(test, label, KernelResult(outcome, release, found))
            out.releases.update(shard["releases"])
        out.results = {test: out.results[test] for test in sorted(out.results)}
        return out

    def rows(self) -> list[list[str]]:
        header = ["test", *(self._label(k) for k in self.kernels), "differs"]
        rows = [header]
        for test, by_kernel in self.results.items():
            outcomes = [by_kernel[k].outcome if k in by_kernel else "-" for k in self.kernels]
            rows.append([test, *outcomes, self._verdict(by_kernel)])
        return rows

    def render(self) -> str:
        rows = self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)

    def _label(self, kernel: str) -> str:
        release = self.releases.get(kernel)
        return f"{kernel} ({release})" if release and release != kernel else kernel

    def _verdict(self, by_kernel: Mapping[str, KernelResult]) -> str:
        present = [k for k in self.kernels if k in by_kernel]
        outcomes = {by_kernel[k].outcome for k in present}
        if len(outcomes) > 1:
            return "RESULT DIFFERS"
        first = by_kernel[present[0]]
        for other in present[1:]:
            found = first_difference(first.observations, by_kernel[other].observations)
            if found is not None:
                step, key, a, b = found
                where = f" ({present[0]} vs {other})" if len(present) > 2 else ""
                return f"observed: {step}: {key} {a} vs {b}{where}"
        return ""
