"""Exponential moving average of a model's weights (``train.ema_decay``).

The optimiser follows a noisy path: every step moves the weights by one small batch's gradient.
The average of the recent weights lies nearer the centre of that path and usually generalises
a little better, at no cost in inference; detectors (YOLO, DETR families) and distilled students
are commonly shipped as their EMA. After every optimiser step ``n`` (1, 2, ...)::

    decay_n = min(decay, (1 + n) / (10 + n))
    average = decay_n * average + (1 - decay_n) * weights

The warm-up of ``decay_n`` (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``)
keeps the average from remembering the random start for thousands of steps. Integer buffers
(BatchNorm's ``num_batches_tracked``) are copied, not averaged; floating-point entries are
averaged in float32 whatever the training precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """The moving average of ``module``'s state dict (parameters and buffers).

    Args:
        module: the trained module; the average starts at its current weights.
        decay: the largest ``decay_n``, in ``(0, 1)``: about ``1 / (1 - decay)`` recent steps count
            (0.999: the last thousand or so).

    Raises:
        ValueError: ``decay`` outside ``(0, 1)``.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must lie between 0 and 1 (0 turns averaging off), not {decay}")
        self.decay = float(decay)
        self.updates = 0
        #: The average as a state dict (float32 floating-point entries; ``load_state_dict`` casts them).
        self.weights = {k: self._stored(v) for k, v in module.state_dict().items()}

    @staticmethod
    def _stored(value: torch.Tensor) -> torch.Tensor:
        value = value.detach()
        return value.float().clone() if value.is_floating_point() else value.clone()

    def decay_at(self, update: int) -> float:
        """``decay_n`` of the ``update``-th update (1-based)."""
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold ``module``'s current weights into the average (after an optimiser step)."""
        self.updates += 1
        decay = self.decay_at(self.updates)
        for key, value in module.state_dict().items():
            average = self.weights[key]
            if average.is_floating_point():
                average.lerp_(value.detach().float(), 1.0 - decay)
            else:
                average.copy_(value)

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """Within the block ``module`` holds the averaged weights; its own come back afterwards."""
        own = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.weights)
        try:
            yield
        finally:
            module.load_state_dict(own)

    def progress(self) -> dict[str, Any]:
        """What a checkpoint needs beside the averaged weights to continue the average exactly."""
        return {"decay": self.decay, "updates": self.updates}

    def restore(self, progress: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        """Continue an average from a checkpoint's :meth:`progress` and averaged ``weights``
        (the configured ``decay`` stays: a resumed run may change it)."""
        missing = set(self.weights) - set(weights)
        if missing:
            raise ValueError(f"The saved weight average lacks {sorted(missing)[:3]}: it belongs to another model")
        self.updates = int(progress["updates"])
        self.weights = {k: self._stored(weights[k]) for k in self.weights}
