"""detkd.evaluation.uncertainty: paired bootstrap intervals, against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from detkd.evaluation.uncertainty import paired_ratio_interval


def test_identical_values_give_a_point_interval_at_the_ratio():
    assert paired_ratio_interval([1, 0, 1, 1], [1, 0, 1, 1]) == (1.0, 1.0)
    low, high = paired_ratio_interval([0.5, 1.0], [1.0, 2.0])  # every draw: half of the reference
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_two_items_span_the_two_extreme_draws():
    # student [1, 0] against teacher [1, 1]: a draw of two items has ratio 1 (item 0 twice, p = 1/4),
    # 0 (item 1 twice, p = 1/4) or 1/2 (one each, p = 1/2); a 90% interval reaches both ends
    low, high = paired_ratio_interval([1, 0], [1, 1], level=0.9)
    assert (low, high) == (0.0, 1.0)
    # a 40% interval (30th to 70th percentile) stays on the middle value, half of the mass
    assert paired_ratio_interval([1, 0], [1, 1], level=0.4) == (0.5, 0.5)


def test_draws_without_a_reference_are_left_out_and_the_seed_fixes_the_result():
    # teacher [0, 1]: the draw (item 0, item 0) has denominator 0 and is skipped; item 1 twice gives 0 / 2,
    # one of each 1 / 1
    assert paired_ratio_interval([1, 0], [0, 1], level=0.999) == (0.0, 1.0)
    assert paired_ratio_interval([1, 0, 1], [1, 1, 1], seed=3) == paired_ratio_interval([1, 0, 1], [1, 1, 1], seed=3)
    assert all(math.isnan(v) for v in paired_ratio_interval([1.0], [0.0]))


def test_bad_input_is_refused_with_the_shapes():
    with pytest.raises(ValueError, match="same non-zero length"):
        paired_ratio_interval([1, 0], [1])
    with pytest.raises(ValueError, match="level"):
        paired_ratio_interval([1], [1], level=1.0)
