"""Issue 4: every port operation for real, read back from QEMU and the guest, held to the model."""

from __future__ import annotations

import time

import pytest

from harness.backend.system import QemuSystem, RealFailure
from harness.model import Payload
from harness.model.payload import sha256_of
from tests.integration.twin import Twin, wait_until

pytestmark = pytest.mark.qemu
MIB = 1024 * 1024
NAME = "org.hil.data"


@pytest.fixture
def twin(hil_system: QemuSystem) -> Twin:
    return Twin(hil_system)


def _agent(twin: Twin):
    assert twin.real.agent is not None
    return twin.real.agent


def test_host_and_guest_open_close_are_seen_across(twin: Twin) -> None:
    twin.hotplug(NAME)
    twin.agree("hotplug")
    twin.both("host_open", NAME)
    twin.agree("host open")
    assert _agent(twin).port_info(NAME)["host_connected"] == 1  # debugfs, in the guest

    twin.both("guest_open", NAME)
    twin.agree("guest open")  # includes poll: OUT, no HUP, and qtree "guest on"
    twin.both("host_close", NAME)
    twin.agree("host close")  # poll now has HUP (and IN: EOF is readable)
    assert "HUP" in _agent(twin).poll(NAME)
    twin.both("guest_close", NAME)
    twin.agree("guest close")  # qtree "guest off"

    assert twin.real.ports is not None
    spec = twin.real._ports[NAME].spec
    # QEMU rate-limits VSERPORT_CHANGE to one per second per id: the close may come later.
    twin.real.ports.qmp.wait_event(
        "VSERPORT_CHANGE",
        5,
        where=lambda e: e.data == {"id": spec.device_id, "open": False},
        what=f"(open false) for {spec.device_id}",
    )
    events = [e.data["open"] for e in twin.real.ports.port_events(spec)]
    assert events == [True, False], f"VSERPORT_CHANGE open flags in order: {events}"


def test_data_waits_for_the_other_side(twin: Twin) -> None:
    """Guest writes block while the host is closed; host data waits until the guest opens."""
    twin.hotplug(NAME)
    twin.both("host_open", NAME)
    twin.both("host_write", NAME, Payload.literal(b"early"))
    twin.both("guest_open", NAME)
    read = twin.real.guest_read(NAME, 5, timeout=10)
    assert read.data == b"early"
    assert twin.model.guest_read(NAME).value.length == 5
    twin.agree("host data delivered after guest open")

    twin.both("host_close", NAME)
    twin.both("guest_close", NAME)
    twin.both("guest_open", NAME, nonblocking=True)
    twin.both("guest_write", NAME, Payload.literal(b"x"))  # both must say EAGAIN
    twin.both("guest_close", NAME)

    twin.both("guest_open", NAME)
    model_write = twin.model.guest_write(NAME, Payload.literal(b"late"))
    assert model_write.pending is not None, "the model must predict a blocked write"
    ticket = twin.real.start_guest_op("write", NAME, payload=Payload.literal(b"late"))
    for _ in range(3):  # still blocked while the host stays away
        assert not twin.real.guest_op_state(ticket)[0]
        _agent(twin).ping()
    completion = twin.model.host_open(NAME).completed
    twin.real.host_open(NAME)
    assert [c.op for c in completion] == ["guest_write"]
    wait_until(
        lambda: twin.real.guest_op_state(ticket)[0],
        20,
        "the blocked guest write to complete after host open",
    )
    assert twin.real.host_read(NAME, 4, timeout=10).data == b"late"
    twin.model.host_read(NAME)
    twin.agree("blocked write completed")


def test_64_mib_each_way_without_loss(twin: Twin) -> None:
    twin.hotplug(NAME)
    twin.both("host_open", NAME)
    twin.both("guest_open", NAME)
    to_guest = Payload.generated(101, 64 * MIB)
    twin.real.host_write(NAME, to_guest)
    received = _agent(twin).recv_stream(NAME, to_guest.length, timeout=120)
    assert (received["bytes"], received["sha256"]) == (to_guest.length, sha256_of(to_guest))

    to_host = Payload.generated(202, 64 * MIB)
    ticket = twin.real.start_guest_op("write", NAME, payload=to_host)
    got = twin.real.host_read(NAME, to_host.length, timeout=300)
    assert (got.length, got.sha256) == (to_host.length, sha256_of(to_host))
    _agent(twin).wait_ticket(ticket, timeout=60)

    twin.model.host_write(NAME, to_guest)
    twin.model.guest_read(NAME)
    twin.model.guest_write(NAME, to_host)
    twin.model.host_read(NAME)
    twin.agree("64 MiB each way")


def test_slow_host_reader_throttles_the_port_and_loses_nothing(twin: Twin) -> None:
    twin.hotplug(NAME)
    twin.both("host_open", NAME)
    twin.both("guest_open", NAME)
    endpoint = twin.real._endpoint(NAME)
    endpoint.stall(True)
    payload = Payload.generated(303, 64 * MIB)
    ticket = twin.real.start_guest_op("write", NAME, payload=payload)
    assert twin.real.ports is not None
    wait_until(
        lambda: twin.real.ports.qtree()[1][NAME].throttled,
        60,  # type: ignore[union-attr]
        "qtree to show throttle on with a stalled reader",
    )
    endpoint.stall(False)
    got = twin.real.host_read(NAME, payload.length, timeout=300)
    assert (got.length, got.sha256) == (payload.length, sha256_of(payload))
    _agent(twin).wait_ticket(ticket, timeout=60)
    assert not twin.real.ports.qtree()[1][NAME].throttled
    twin.model.guest_write(NAME, payload)
    twin.model.host_read(NAME)
    twin.agree("throttled transfer")


def test_unplug_while_the_guest_holds_the_port_open(twin: Twin) -> None:
    twin.hotplug(NAME)
    twin.both("host_open", NAME)
    twin.both("guest_open", NAME)
    agent = _agent(twin)
    twin.real.ports.remove_port(twin.real._ports[NAME].spec)  # type: ignore[union-attr]
    twin.model.unplug(NAME)
    with pytest.raises(Exception, match="ENODEV"):
        agent.read(NAME, 16, timeout=2)
    with pytest.raises(Exception, match="ENODEV"):
        agent.write(NAME, b"x")
    assert set(agent.poll(NAME)) & {"IN", "OUT", "HUP"} == {"HUP"}
    assert twin.model.poll(NAME) == frozenset({"HUP"})


@pytest.mark.parametrize(
    ("case", "nr", "expected"),
    [
        (
            "nr 0 for a serial port",
            0,
            "Port number 0 on virtio-serial devices reserved for virtconsole devices",
        ),
        ("out of range", 31, "Out-of-range port id specified, max. allowed: 30"),
    ],
)
def test_hotplug_errors_are_qemus_own_text(twin: Twin, case: str, nr: int, expected: str) -> None:
    error = twin.hotplug(f"org.hil.{case.replace(' ', '-')}", nr=nr)
    assert error is not None and expected in error, f"{case}: {error!r}"
    twin.agree(case)


def test_duplicate_name_and_one_port_too_many(twin: Twin) -> None:
    twin.both("hotplug_controller", "vser1", 2, model_args=("vser1", 2))
    twin.hotplug("org.hil.one", controller="vser1")
    error = twin.hotplug("org.hil.one", controller="vser0")
    assert error is not None and "A port already exists by name org.hil.one" in error
    error = twin.hotplug("org.hil.two", controller="vser1")
    assert error is not None, "a third port on a max_ports=2 controller must be refused"
    twin.agree("refused hotplugs")


def test_hotplug_churn_keeps_guest_and_qemu_in_step(twin: Twin) -> None:
    real = twin.real
    assert real.ports is not None and real.agent is not None
    names = [f"org.hil.churn{i}" for i in range(30)]

    def guest_matches_qemu(round_name: str) -> None:
        qemu = set(real.ports.qtree()[1])  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while True:
            guest = {p["name"] for p in real.agent.list_ports() if p.get("name")}  # type: ignore[union-attr]
            if guest == qemu:
                return
            assert time.monotonic() < deadline, f"{round_name}: guest {sorted(guest ^ qemu)} differ"
            time.sleep(0.2)

    for name in names:
        twin.hotplug(name)
    guest_matches_qemu("30 added")
    for name in names[:25]:
        twin.both("unplug", name)
    guest_matches_qemu("25 removed")
    for name in names[:5]:
        twin.hotplug(name)
    guest_matches_qemu("5 re-added")
    twin.agree("churn setup")
    for round_number in range(50):
        twin.both("unplug", names[0])
        twin.hotplug(names[0])
        guest_matches_qemu(f"round {round_number}")
    twin.agree("50 remove/re-add rounds")
    problems = [m for m in real.agent.kmsg() if "WARNING" in str(m) or "BUG" in str(m)]
    assert not problems, problems
    assert not real.console_problems()


def test_unknown_port_operations_fail_clearly(hil_system: QemuSystem) -> None:
    with pytest.raises(RealFailure, match="ENOENT"):
        hil_system.host_open("org.never.declared")
