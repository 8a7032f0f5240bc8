"""Latency of several computations measured side by side: round-robin, after warm-up.

Interleaving the runs (model A, model B, model A, ...) instead of timing one model after the
other makes a slow patch of a shared machine hit every model alike, so that the ratios between
models stay fair even when the absolute times do not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class LatencyStats:
    """Latency of one computation, milliseconds per call."""

    median_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def from_times(cls, times_ms: Sequence[float]) -> LatencyStats:
        values = np.asarray(times_ms, dtype=np.float64)
        return cls(float(np.median(values)), float(np.percentile(values, 90)), len(values))


def interleaved_latency(runners: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, LatencyStats]:
    """Time each runner ``repeats`` times, round-robin, after ``warmup`` untimed calls each."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: LatencyStats.from_times(values) for name, values in times.items()}
