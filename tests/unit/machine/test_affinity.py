"""CPU pinning (harness.machine.affinity): the plan, and the calls on this very process."""

from __future__ import annotations

import os
import threading

import pytest

from harness.machine.affinity import confined, plan, thread_names, vcpu_threads
from harness.machine.errors import MachineError


def test_vcpus_take_the_highest_cores_and_leave_the_rest() -> None:
    assert plan(1, {0, 1}) == ([1], frozenset({0}))
    assert plan(2, {0, 2, 5, 7}) == ([5, 7], frozenset({0, 2}))


@pytest.mark.parametrize(("vcpus", "cores"), [(1, {0}), (2, {0, 1}), (0, {0, 1})])
def test_too_few_cores_is_an_error_that_says_what_to_do(vcpus: int, cores: set[int]) -> None:
    with pytest.raises(MachineError, match="run unpinned"):
        plan(vcpus, cores)


def test_thread_names_lists_this_process_and_finds_no_vcpu_in_it() -> None:
    names = thread_names(os.getpid())
    assert os.getpid() in names
    assert vcpu_threads(os.getpid()) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_confined_moves_every_thread_and_restores_them_after() -> None:
    before = os.sched_getaffinity(0)
    one = frozenset({min(before)})
    seen: list[set[int]] = []
    with confined(one):
        assert os.sched_getaffinity(0) == one
        started = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        started.start()
        started.join(10)
    assert seen == [set(one)]  # a thread started inside inherits the confinement
    assert os.sched_getaffinity(0) == before
