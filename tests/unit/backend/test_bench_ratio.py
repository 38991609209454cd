"""The bench's ratio: pairs run raw first and checked first in turn, balanced over both."""

from __future__ import annotations

import math

import pytest

from harness.backend.bench import balanced_ratio


def test_an_order_effect_cancels_within_a_block() -> None:
    # checked/raw is 0.9 but the second run of a pair is 10% slower: raw-first pairs read
    # 0.9 * 0.9, checked-first pairs 0.9 / 0.9
    ratios = [0.81, 1.0, 0.81, 1.0, 0.81, 1.0]
    assert balanced_ratio(ratios) == pytest.approx(0.9)
    assert sorted(ratios)[len(ratios) // 2] == 1.0  # a plain median would take one order


def test_the_median_over_blocks_drops_a_disturbed_block() -> None:
    assert balanced_ratio([0.9, 0.9, 0.3, 0.3, 0.92, 0.92]) == pytest.approx(0.9)


def test_an_odd_last_pair_counts_alone() -> None:
    assert balanced_ratio([0.64, 1.0, 0.5]) == pytest.approx((0.8 + 0.5) / 2)
    assert balanced_ratio([0.7]) == 0.7
    assert math.isclose(balanced_ratio([0.25, 1.0]), 0.5)
