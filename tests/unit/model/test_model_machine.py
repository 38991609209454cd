"""Random operation sequences against the model's invariants (hypothesis)."""

from __future__ import annotations

import contextlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from harness.model import G2H, H2G, Behaviour, ModelError, Payload, VirtioSerialModel
from harness.model.migration import clone_configuration, migrate

NAMES = ["a", "b", "c", "con"]


class ModelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = VirtioSerialModel(
            Behaviour(
                guest_outvq_buffers=3,
                guest_write_chunk=5,
                guest_rx_capacity=16,
                host_socket_buffer=4,
            )
        )
        self.model.hotplug_controller("c0", max_ports=4)

    def attempt(self, op, *args, **kw) -> None:
        with contextlib.suppress(ModelError):
            op(*args, **kw)

    @rule(name=st.sampled_from(NAMES), nr=st.one_of(st.none(), st.integers(0, 4)))
    def add_port(self, name, nr):
        self.attempt(self.model.hotplug, name, controller="c0", nr=nr, console=name == "con")

    @rule(name=st.sampled_from(NAMES))
    def remove_port(self, name):
        self.attempt(self.model.unplug, name)

    @rule(name=st.sampled_from(NAMES), up=st.booleans())
    def host(self, name, up):
        self.attempt(self.model.host_open if up else self.model.host_close, name)

    @rule(name=st.sampled_from(NAMES), up=st.booleans(), nb=st.booleans())
    def guest(self, name, up, nb):
        if up:
            self.attempt(self.model.guest_open, name, nonblocking=nb)
        else:
            self.attempt(self.model.guest_close, name)

    @rule(name=st.sampled_from(NAMES), size=st.integers(1, 12), seed=st.integers(0, 3))
    def host_write(self, name, size, seed):
        self.attempt(self.model.host_write, name, Payload.generated(seed, size))

    @rule(name=st.sampled_from(NAMES), size=st.integers(1, 12))
    def guest_write(self, name, size):
        self.attempt(self.model.guest_write, name, bytes(range(size)))

    @rule(name=st.sampled_from(NAMES), limit=st.one_of(st.none(), st.integers(1, 8)))
    def reads(self, name, limit):
        self.attempt(self.model.guest_read, name, limit)
        self.attempt(self.model.host_read, name, limit)

    @rule(name=st.sampled_from(NAMES), stalled=st.booleans())
    def backpressure(self, name, stalled):
        self.attempt(self.model.set_host_backpressure, name, stalled)

    @rule()
    def reset(self):
        self.model.guest_reset()

    @rule()
    def save_then_load_reproduces_state(self):
        dest = clone_configuration(self.model)
        migrate(self.model, dest)
        assert dest.snapshot() == self.model.snapshot()
        assert dest.blocked() == self.model.blocked()
        for direction in (G2H, H2G):
            assert dest.in_flight(direction) == self.model.in_flight(direction)

    @invariant()
    def bitmap_bit_set_iff_port_holds_id(self):
        ctrl = self.model.controllers["c0"]
        ids = {self.model.ports[n].nr for n in ctrl.ports}
        for nr in range(ctrl.max_ports):
            bit = bool(ctrl.ports_map[nr // 32] >> (nr % 32) & 1)
            assert bit == (nr in ids or nr == 0)

    @invariant()
    def no_byte_created_duplicated_or_lost(self):
        m = self.model
        for direction in (G2H, H2G):
            assert m.written[direction] == (
                m.read[direction] + m.in_flight(direction) + m.discarded(direction)
            )

    @invariant()
    def poll_consistent_with_connected_flags(self):
        for name, view in self.model.snapshot().ports.items():
            if view.poll is None:
                continue
            assert view.guest.guest_connected and view.qemu.guest_connected
            assert ("HUP" in view.poll) == (not view.guest.host_connected)
            assert ("OUT" in view.poll) <= view.guest.host_connected
            assert view.guest.host_connected == view.qemu.host_connected, name


ModelMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None, derandomize=True
)
TestModelMachine = ModelMachine.TestCase
