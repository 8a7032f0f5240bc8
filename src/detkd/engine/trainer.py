"""The one training loop of detkd, shared by every task.

Devices, precision and multi-process training come from Lightning Fabric. The loop adds what
every detkd run needs: reproducible data streams, AdamW with a step-wise exponential schedule,
gradient clipping, a stop on a non-finite loss (the last good checkpoint stays), atomic
checkpoints, exact resume, a progress bar with images/s and data-wait share, TensorBoard
scalars and a ``history.jsonl`` that plots and reports read.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from detkd.config import dataclass_from_dict
from detkd.engine.checkpoint import CHECKPOINT_FORMAT, atomic_save, load_checkpoint
from detkd.engine.task import Task

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation and run settings; every field is a key of the ``train:`` YAML section."""

    steps: int = 2000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 8  # images per process per step
    lr: float = 1.5e-3  # AdamW learning rate (GoodPoint)
    weight_decay: float = 1e-4
    lr_decay: float = 0.98  # multiply the learning rate by this ...
    lr_decay_every: int = 1000  # ... every this many steps (GoodPoint: 0.98 / 1000)
    warmup_steps: int = 0  # linear warm-up from 0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    log_every: int = 10  # steps between logged scalars
    num_workers: int = 0  # data-loading processes per training process
    seed: int = 0
    accelerator: str = "auto"  # cpu, cuda, mps, auto
    devices: int | str = 1  # processes/GPUs per node
    num_nodes: int = 1
    strategy: str = "auto"  # Fabric strategy: auto, ddp, ...
    precision: str = "32-true"  # Fabric precision: 32-true, bf16-mixed, 16-mixed
    progress: bool = True  # show a progress bar

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
    last_losses: dict[str, float] = field(default_factory=dict)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


class ExistingRunError(FileExistsError):
    """The output folder already holds a run and ``resume`` was not asked for."""


class StreamSampler(Sampler[int]):
    """Indices of a :class:`~detkd.engine.task.StreamDataset` for steps ``[start, stop)``.

    Step ``s`` of process ``rank`` takes samples ``s*G + rank*B ... s*G + rank*B + B - 1`` with
    ``G = B * world_size``: every process sees different samples, and the global batch of a
    step is the same whatever the number of processes.
    """

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start, self.stop = start, stop
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        for step in range(self.start, self.stop):
            first = step * global_batch + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.batch_size


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at ``step``: linear warm-up, then step-wise exponential decay."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return config.lr_decay ** (step // max(config.lr_decay_every, 1))


class Trainer:
    """Runs a :class:`~detkd.engine.task.Task` for ``config.steps`` steps and writes into ``out_dir``.

    Layout of ``out_dir``: ``checkpoints/last.pt``, ``history.jsonl``, ``tensorboard/``.
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / "checkpoints" / "last.pt"
        self.history_path = self.out_dir / "history.jsonl"

    def fit(self, task: Task, resume: bool = False) -> TrainResult:
        """Train ``task``; with ``resume`` continue from ``checkpoints/last.pt`` exactly."""
        from lightning.fabric import Fabric

        cfg = self.config
        fabric = Fabric(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=cfg.strategy,
            precision=cfg.precision,
        )
        fabric.launch()
        fabric.seed_everything(cfg.seed, verbose=False)

        start_step, state = self._starting_state(resume)
        model = task.trainable()
        if state is not None:
            model.load_state_dict(state["model"])
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("The task's trainable module has no parameter that requires a gradient")
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: learning_rate_factor(step, cfg)
        )
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
        wrapped_task, optimizer = fabric.setup(task, optimizer)

        loader = DataLoader(
            task.train_dataset(),
            batch_size=cfg.batch_size,
            sampler=StreamSampler(start_step, cfg.steps, cfg.batch_size, fabric.global_rank, fabric.world_size),
            num_workers=cfg.num_workers,
            pin_memory=fabric.device.type == "cuda",
            persistent_workers=False,
        )
        loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)

        writer = None
        if fabric.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_history(start_step)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=start_step)

        wrapped_task.train()
        step = start_step
        last: dict[str, float] = {}
        began = time.perf_counter()
        wait_time, compute_time, seen = 0.0, 0.0, 0
        bar = tqdm(
            total=cfg.steps, initial=start_step, desc="train", unit="step",
            disable=not (cfg.progress and fabric.is_global_zero), dynamic_ncols=True,
        )
        try:
            tick = time.perf_counter()
            for batch in loader:
                fetched = time.perf_counter()
                wait_time += fetched - tick
                losses = wrapped_task(batch)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                    raise NonFiniteLossError(
                        f"Loss is not finite at step {step} ({terms}). The last good checkpoint is "
                        f"'{self.checkpoint_path}' (resume with --resume). Try a lower learning rate "
                        f"(now {scheduler.get_last_lr()[0]:.3g}), gradient clipping, or check the input "
                        "images and teacher for NaN values."
                    )
                fabric.backward(loss)
                if cfg.grad_clip > 0:
                    fabric.clip_gradients(wrapped_task, optimizer, max_norm=cfg.grad_clip, error_if_nonfinite=False)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                seen += cfg.batch_size * fabric.world_size
                tick = time.perf_counter()
                compute_time += tick - fetched

                if step % cfg.log_every == 0 or step == cfg.steps:
                    last = {k: float(fabric.all_reduce(v.detach(), reduce_op="mean")) for k, v in losses.items()}
                    images_per_s = seen / max(wait_time + compute_time, 1e-9)
                    wait_share = wait_time / max(wait_time + compute_time, 1e-9)
                    record = {"step": step, **last, "lr": scheduler.get_last_lr()[0],
                              "images_per_s": images_per_s, "data_wait": wait_share}
                    if fabric.is_global_zero:
                        self._log(writer, record)
                    bar.set_postfix(loss=f"{last['loss']:.4g}", img_s=f"{images_per_s:.1f}", wait=f"{wait_share:.0%}")
                bar.update(1)
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self._save(fabric, task, optimizer, scheduler, step)
        except KeyboardInterrupt:
            if step > start_step:
                self._save(fabric, task, optimizer, scheduler, step)
                log.warning("Interrupted at step %d; checkpoint written, continue with --resume", step)
            raise
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        self._save(fabric, task, optimizer, scheduler, step)
        return TrainResult(step, self.checkpoint_path, self.history_path, time.perf_counter() - began, last)

    # ------------------------------------------------------------------ helpers
    def _starting_state(self, resume: bool) -> tuple[int, dict[str, Any] | None]:
        if not self.checkpoint_path.exists():
            if resume:
                log.warning("No checkpoint at '%s': starting from step 0", self.checkpoint_path)
            return 0, None
        if not resume:
            step = load_checkpoint(self.checkpoint_path).get("step", "?")
            raise ExistingRunError(
                f"'{self.out_dir}' already holds a run (checkpoint at step {step}). "
                "Pass --resume to continue it, or choose another --out folder."
            )
        state = load_checkpoint(self.checkpoint_path)
        saved = state.get("config", {})
        for key in ("batch_size", "lr", "seed"):
            if key in saved and saved[key] != getattr(self.config, key):
                log.warning("Resuming with %s=%s (checkpoint used %s)", key, getattr(self.config, key), saved[key])
        if state["step"] >= self.config.steps:
            log.warning("Checkpoint is at step %d >= steps=%d: nothing left to train", state["step"], self.config.steps)
        return int(state["step"]), state

    def _save(self, fabric: Any, task: Task, optimizer: Any, scheduler: Any, step: int) -> None:
        if fabric.is_global_zero:
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": step,
                    "model": task.trainable().state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "config": asdict(self.config),
                    **task.checkpoint_extra(),
                },
                self.checkpoint_path,
            )
        fabric.barrier()

    def _truncate_history(self, start_step: int) -> None:
        """Drop records past the resumed step so the history has no duplicate steps."""
        if not self.history_path.exists():
            return
        if start_step == 0:
            self.history_path.unlink()
            return
        kept = []
        for line in self.history_path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= start_step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill mid-write
        self.history_path.write_text("".join(f"{line}\n" for line in kept))

    def _log(self, writer: Any, record: dict[str, float]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and math.isfinite(value):
                writer.add_scalar(f"train/{key}", value, step)
        with self.history_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Records of a run's ``history.jsonl`` (lines cut by a kill are skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
