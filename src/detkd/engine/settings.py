"""What a training run is told and what it gives back: settings, the learning-rate schedule, results and errors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detkd.config import dataclass_from_dict


@dataclass
class TrainConfig:
    """Optimisation and run settings; every field is a key of the ``train:`` YAML section."""

    steps: int = 2000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 8  # images per process per step (global batch: batch_size x devices x num_nodes)
    lr: float = 1.5e-3  # AdamW learning rate (GoodPoint)
    weight_decay: float = 1e-4
    lr_decay: float = 0.98  # multiply the learning rate by this ...
    lr_decay_every: int = 1000  # ... every this many steps (GoodPoint: 0.98 / 1000)
    warmup_steps: int = 0  # linear warm-up from 0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.0  # keep a moving average of the weights (0.999: about the last 1000 steps) and use it as the model; 0: off
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    val_every: int = 0  # steps between validations of the task (validation.jsonl); 0: none during training
    log_every: int = 10  # steps between logged scalars
    num_workers: int = 0  # data-loading processes per training process
    seed: int = 0
    accelerator: str = "auto"  # cpu, cuda, mps, auto
    devices: int | str = 1  # processes/GPUs per node
    num_nodes: int = 1
    strategy: str = "auto"  # Fabric strategy: auto, ddp, ddp_spawn, ddp_fork, ...
    precision: str = "32-true"  # Fabric precision: 32-true, bf16-mixed, 16-mixed; auto: bf16-mixed on a bf16 GPU, else 32-true
    progress: bool = True  # show a progress bar
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch when processes > 1 (GPU only)
    channels_last: bool = False  # NHWC layout for models and 4-d batch tensors (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the task's forward; on failure warn and train eagerly

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, values, "train")


@dataclass
class TrainResult:
    """What a finished :meth:`Trainer.fit` returns."""

    step: int
    checkpoint: Path
    history: Path
    seconds: float
    last_losses: dict[str, float] = field(default_factory=dict)  # averaged over processes
    is_global_zero: bool = True  # False in the other processes of a multi-process run
    world_size: int = 1
    samples_seen: int = 0  # training samples consumed since step 0, over all processes
    process_id: int = field(default_factory=os.getpid, repr=False)  # the process that trained


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


class ExistingRunError(FileExistsError):
    """The output folder already holds a run and ``resume`` was not asked for."""


class NoUsableCheckpointError(ValueError):
    """``resume`` was asked for, but every checkpoint of the run is damaged."""


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at ``step``: linear warm-up, then step-wise exponential decay."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return config.lr_decay ** (step // max(config.lr_decay_every, 1))
