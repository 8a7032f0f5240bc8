"""How sure a benchmark's comparison is: bootstrap intervals over the items it was measured on.

A share such as "the student keeps 98% of its teacher's HA@3" is a ratio of two means over the same
image pairs. With 40 pairs one pair moves HA@3 by 2.5 points, so the share alone does not say whether
98% differs from 100%. :func:`paired_ratio_interval` resamples the pairs (the same pairs for both
models: the comparison is paired) and reads the interval off the resampled ratios.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_ratio_interval(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(numerator) / mean(denominator)``, items resampled in pairs.

    Args:
        numerator: ``(N,)`` one value per item, e.g. a student's HA@3 (0 or 1) on each of N image pairs.
        denominator: ``(N,)`` the same items' values of the reference, e.g. its teacher's.
        resamples: bootstrap draws, each N items with replacement (the same indices for both sequences).
        level: coverage of the interval, in ``(0, 1)``.
        seed: of the NumPy generator, so that a table is reproducible.

    Returns:
        ``(low, high)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the resampled
        ratios; draws whose denominator sums to 0 are left out (NaN when every draw does).

    Raises:
        ValueError: sequences of different or zero length, or ``level`` outside ``(0, 1)``.
    """
    top = np.asarray(numerator, dtype=np.float64)
    bottom = np.asarray(denominator, dtype=np.float64)
    if top.ndim != 1 or top.shape != bottom.shape or top.size == 0:
        raise ValueError(f"numerator and denominator must be 1-D and of the same non-zero length, got "
                         f"{top.shape} and {bottom.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, top.size, size=(resamples, top.size))
    sums_bottom = bottom[draws].sum(axis=1)
    usable = sums_bottom != 0
    if not usable.any():
        return float("nan"), float("nan")
    ratios = top[draws].sum(axis=1)[usable] / sums_bottom[usable]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)
