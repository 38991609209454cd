"""Schema: valid files become dataclasses; each mistake is one error at its file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.scenario.schema import (
    MachineDecl,
    ScenarioError,
    load_scenario,
    parse_scenario,
    payload_seed,
)

ROOT = Path(__file__).resolve().parents[3]
MALFORMED = sorted((ROOT / "fixtures" / "malformed").glob("*.yaml"))


def test_full_example_parses():
    scenario = parse_scenario(
        "name: n\nmarks: [slow]\nmachine:\n  ports:\n    - {name: p, nr: 3}\n"
        "steps:\n  - host_open: p\n  - guest_open: {port: p, nonblocking: true}\n"
        "  - hotplug: {name: q, nr: 0}\n    expect_error: reserved\n"
        "  - check: {port: p, poll: [IN, HUP]}\n",
        "f.yaml",
    )
    assert scenario.marks == ("slow",)
    assert scenario.machine.ports[0].nr == 3
    assert [s.kind for s in scenario.steps] == ["host_open", "guest_open", "hotplug", "check"]
    assert scenario.steps[1].args == {"port": "p", "nonblocking": True}
    assert scenario.steps[2].expect_error == "reserved"
    assert scenario.steps[2].args["controller"] == "vser0"
    assert (scenario.steps[0].line, scenario.steps[0].column) == (7, 5)
    assert scenario.steps[3].args["poll"] == frozenset({"IN", "HUP"})


def test_machine_defaults():
    scenario = parse_scenario("name: n\nsteps:\n  - reboot: {}\n")
    assert scenario.machine == MachineDecl()
    assert scenario.machine.controllers[0].max_ports == 31


def test_expect_error_inside_the_mapping():
    scenario = parse_scenario(
        "name: n\nmachine: {ports: [{name: p}]}\nsteps:\n"
        "  - guest_open: {port: p, expect_error: EBUSY}\n"
    )
    assert scenario.steps[0].expect_error == "EBUSY"


def test_seeds_are_deterministic_and_distinct():
    assert payload_seed("a", 1) == payload_seed("a", 1)
    assert payload_seed("a", 1) != payload_seed("a", 2)
    assert 0 <= payload_seed("b", 9) < 2**63


def test_error_renders_with_hint():
    error = ScenarioError("f.yaml", 3, 5, "bad", "fix it")
    assert str(error) == "f.yaml:3:5: bad\n  hint: fix it"


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("name: n\nsteps:\n  - host_opn: p\n", (3, 5), "did you mean 'host_open'"),
        ("name: n\nstepz: []\n", (2, 1), "did you mean 'steps'"),
        ("name: n\nsteps:\n  - reboot: {}\n    hotplug: {name: x}\n", (3, 5), "exactly one"),
        ("name: n\nsteps:\n  - hotplug: {name: x, nr: one}\n", (3, 28), "nr must be int"),
        ("name: n\nsteps:\n  - hotplug: {name: x, nr: 0}\n", None, None),
        (
            "name: n\nmachine: {ports: [{name: p, nr: 0}]}\nsteps: [reboot: {}]\n",
            (2, 19),
            "refuse to boot",
        ),
        (
            "name: n\nmachine: {ports: [{name: p}, {name: p}]}\nsteps: [reboot: {}]\n",
            (2, 30),
            "already exists by name",
        ),
        ("name: n\nsteps:\n  - guest_read: {port: p}\n", (3, 5), "names port 'p'"),
        ("name: n\nsteps: []\n", (2, 8), "at least one step"),
        ("", (1, 1), "empty file"),
        ("name: n\nsteps:\n  - unplug_controller: vserX\n", (3, 5), "controller 'vserX'"),
    ],
)
def test_mistakes_point_at_the_node(text, where, words):
    if where is None:  # a step the author marks as expected to fail is not a validation error
        parse_scenario(text)
        return
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "f.yaml")
    assert (info.value.line, info.value.column) == where
    assert words in str(info.value)


def test_a_port_unplugged_earlier_may_still_be_named():
    parse_scenario(
        "name: n\nsteps:\n  - hotplug: {name: x}\n  - unplug: x\n"
        "  - guest_open: x\n    expect_error: ENXIO\n"
    )


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_each_malformed_fixture_is_one_clear_error(path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    text = info.value.render()
    assert text.startswith(f"{path}:{info.value.line}:")
    assert info.value.line >= 1


def test_there_are_ten_malformed_fixtures():
    assert len(MALFORMED) == 10
