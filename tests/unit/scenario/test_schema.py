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
    assert text.startswith(f"{path}:{info.value.line}:{info.value.column}: ")
    assert info.value.line >= 1
    assert info.value.hint, "every mistake comes with what to do about it"


#: fixture -> (the offending text, where the error must point; words of the message)
POINTS_AT = {
    "11_max_ports_negative": (b"-1", "max_ports -1 is out of range"),
    "12_hotplug_controller_absurd_max_ports": (b"9999", "out of range"),
    "13_size_overflow": (b"9999", "size 99999999999999999999 is out of range"),
    "14_nr_negative": (b"-3", "nr -3 is out of range"),
    "15_memory_absurd": (b"9999", "memory"),
    "16_expect_error_empty": (b'""', 'expect_error "" matches any error'),
    "17_expect_error_empty_migrate": (b'""', 'expect_error "" matches any error'),
    "18_reboot_bare_word": (b"reboot", "one-key mapping"),
    "19_expect_eror_typo": (b"expect_eror", "did you mean 'expect_error'"),
    "20_not_utf8": (b"\xe9", "byte 0xe9 is not UTF-8"),
    "21_host_read_eof": (b"eof:", "unknown key 'eof' in host_read"),
    "22_max_ports_zero_at_boot": (b"{id: vser1", "Maximum number of serial ports not specified"),
    "23_max_bytes_zero": (b"0}", "max_bytes 0 is out of range"),
}


@pytest.mark.parametrize("stem", sorted(POINTS_AT))
def test_new_malformed_fixtures_point_at_the_offending_text(stem):
    path = ROOT / "fixtures" / "malformed" / f"{stem}.yaml"
    token, words = POINTS_AT[stem]
    data = path.read_bytes()
    offset = data.index(token)
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert (info.value.line, info.value.column) == (line, column), info.value.render()
    assert words in str(info.value)


def test_reboot_bare_word_hint_shows_the_colon():
    with pytest.raises(ScenarioError) as info:
        load_scenario(ROOT / "fixtures" / "malformed" / "18_reboot_bare_word.yaml")
    assert "- reboot:" in info.value.hint


def test_a_control_character_is_reported_at_its_line():
    with pytest.raises(ScenarioError) as info:
        parse_scenario("name: n\nsteps:\n  - reboot:\n  - check: {port: p\x07}\n", "f.yaml")
    assert (info.value.line, info.value.column) == (4, 20)
    assert "not allowed in YAML" in info.value.message


@pytest.mark.parametrize(
    "step",
    [
        "hotplug: {name: x, expect_error: ''}",
        "reboot: {}\n    expect_error: ''",
        "migrate: {}\n    expect_error: ''",
    ],
)
def test_empty_expect_error_is_rejected_everywhere(step):
    with pytest.raises(ScenarioError, match='expect_error "" matches any error'):
        parse_scenario(f"name: n\nsteps:\n  - {step}\n")


@pytest.mark.parametrize(
    ("machine", "words"),
    [
        ("{controllers: [{id: vser0, max_ports: -1}]}", "max_ports -1 is out of range"),
        ("{controllers: [{id: vser0, max_ports: 4294967296}]}", "out of range"),
        ("{memory: 0}", "memory 0 is out of range"),
        ("{memory: -512}", "memory -512 is out of range"),
        ("{ports: [{name: p, nr: -1}]}", "nr -1 is out of range"),
        ("{ports: [{name: p, nr: 4294967296}]}", "nr 4294967296 is out of range"),
        ("{controllers: [{id: vser0, max_ports: 512}]}", "maximum ports supported: 511"),
    ],
)
def test_absurd_numbers_are_validation_errors(machine, words):
    with pytest.raises(ScenarioError, match=words):
        parse_scenario(f"name: n\nmachine: {machine}\nsteps: [reboot: {{}}]\n", "f.yaml")


def test_qemu_judges_what_its_properties_accept():
    """0 and 512 are uint32s: QEMU refuses them at realize, and a step may expect that."""
    parse_scenario(
        "name: n\nsteps:\n"
        "  - hotplug_controller: {id: a, max_ports: 0}\n    expect_error: not specified\n"
        "  - hotplug_controller: {id: b, max_ports: 512}\n    expect_error: supported\n"
        "  - hotplug: {name: x, nr: 4294967294}\n    expect_error: Out-of-range\n"
    )


def test_check_compares_a_ports_controller():
    scenario = parse_scenario(
        "name: n\nmachine: {ports: [{name: b2}]}\nsteps:\n"
        "  - check: {port: b2, controller: vser0}\n"
    )
    assert scenario.steps[0].args == {"port": "b2", "controller": "vser0"}


@pytest.mark.parametrize("check", ["{port: b2}", "b2", "{controller: vser0}"])
def test_a_check_of_nothing_is_rejected(check):
    with pytest.raises(ScenarioError, match="check asserts nothing"):
        parse_scenario(f"name: n\nmachine: {{ports: [{{name: b2}}]}}\nsteps:\n  - check: {check}\n")


def test_check_poll_null_means_not_open():
    scenario = parse_scenario(
        "name: n\nmachine: {ports: [{name: p}]}\nsteps:\n  - check: {port: p, poll: null}\n"
    )
    assert scenario.steps[0].args == {"port": "p", "poll": None}


def test_host_read_takes_no_eof():
    with pytest.raises(ScenarioError, match="unknown key 'eof' in host_read"):
        parse_scenario(
            "name: n\nmachine: {ports: [{name: p}]}\nsteps:\n  - host_read: {port: p, eof: true}\n"
        )
