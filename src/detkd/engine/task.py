"""What a task plugs into the engine, and the dataset shape the engine expects.

A task is an ``nn.Module`` whose ``forward(batch)`` returns a dict of scalar tensors with a
``"loss"`` entry (the rest is logged). It owns its models: the one it exposes through
:meth:`Task.trainable` is optimised and checkpointed; modules registered with
:meth:`Task.freeze` (a teacher) stay in eval mode without gradients, whatever the trainer does.
The engine knows nothing else of a task.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler


class Task(nn.Module):
    """Base class of everything the :class:`~detkd.engine.Trainer` trains."""

    def __init__(self) -> None:
        super().__init__()
        self._frozen: list[str] = []

    # -- what subclasses provide ---------------------------------------------------
    def trainable(self) -> nn.Module:
        """The module whose parameters are optimised and saved (e.g. the student)."""
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        """A :class:`StreamDataset`: item ``k`` exists for every ``k >= 0`` and depends on ``k`` only."""
        raise NotImplementedError

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """One training step's losses; must contain ``"loss"``."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Validation metrics of the model being trained (``train.val_every``); ``{}``: the task has none.

        Called by the trainer on rank 0 in eval mode under ``no_grad``; the training RNG state is
        restored afterwards, so validating changes nothing of the training itself.
        """
        return {}

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra, picklable facts saved with each checkpoint (e.g. the model's config)."""
        return {}

    # -- frozen modules ------------------------------------------------------------
    def freeze(self, name: str) -> None:
        """Freeze submodule ``name``: no gradients, eval mode for good."""
        module = getattr(self, name)
        module.eval()
        for param in module.parameters():
            param.requires_grad_(False)
        self._frozen.append(name)

    def train(self, mode: bool = True) -> "Task":
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self


class StreamDataset(Dataset):
    """An endless, reproducible stream of training samples.

    Sample ``k`` is built from source item ``k % num_items`` (in a per-epoch shuffled
    order) with a random generator seeded by ``(seed, k)``. Any ``k`` can therefore be
    rebuilt exactly, which is what makes resume and multi-process sharding exact.
    Subclasses implement :meth:`num_items` and :meth:`make_sample`.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def num_items(self) -> int:
        raise NotImplementedError

    def make_sample(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        return 2**62  # endless; the trainer decides how many samples it draws

    def reuse_warning(self, samples: int) -> str | None:
        """A warning when a run that draws ``samples`` samples in all (every process together) would
        reuse this stream's finite content too often; the trainer logs it once. ``None``: no concern
        (a stream that draws fresh augmentations for every sample)."""
        return None

    def source_index(self, k: int) -> int:
        n = self.num_items()
        epoch, position = divmod(k, n)
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, epoch, 7919]).permutation(n)
            self._orders = {epoch: order}  # keep one epoch: memory stays flat
        return int(order[position])

    def __getitem__(self, k: int) -> dict[str, Any]:
        if k < 0:
            raise IndexError(k)
        return self.make_sample(self.source_index(k), np.random.default_rng([self.seed, k]))


class StreamSampler(Sampler[int]):
    """Indices of a :class:`~detkd.engine.task.StreamDataset` for steps ``[start, stop)``.

    With ``G = B * world_size`` and ``F = first_sample`` (default ``start * G``), step ``s`` of
    process ``rank`` takes samples ``F + (s - start)*G + rank*B`` ... ``+ B - 1``: every process
    sees different samples, and a step's global batch holds the same samples whatever the
    number of processes. ``first_sample`` lets a resumed run continue the stream where it
    stopped when the global batch changed.
    """

    def __init__(
        self, start: int, stop: int, batch_size: int, rank: int = 0, world_size: int = 1,
        first_sample: int | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.start, self.stop = start, stop
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.first_sample = start * batch_size * world_size if first_sample is None else first_sample

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        for step in range(self.start, self.stop):
            first = self.first_sample + (step - self.start) * global_batch + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.batch_size
