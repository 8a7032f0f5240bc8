"""The one training loop of detkd, shared by every task.

Devices, precision and multi-process training come from Lightning Fabric. The loop adds what
every detkd run needs: reproducible data streams, AdamW with a step-wise exponential schedule,
gradient clipping, an optional moving average of the weights (``ema_decay``, see
:mod:`detkd.engine.averaging`), a stop on a non-finite loss (the last good checkpoint stays),
atomic checkpoints, exact resume, a progress bar with images/s and data-wait share, TensorBoard
scalars and a ``history.jsonl`` that plots and reports read. With ``val_every`` the task's
:meth:`~detkd.engine.task.Task.validate` runs every that many steps (and at the last one) on
rank 0; its metrics go to ``validation.jsonl`` and TensorBoard's ``val/`` scalars, so a run
shows its validation curve (whether longer training still helps) as it trains.

Multi-process runs (``devices``/``num_nodes`` > 1): every process draws its own share of each
step's global batch (``batch_size x world_size`` samples, see :class:`~detkd.engine.task.StreamSampler`); logged
losses are averaged over all processes; only global rank 0 writes the history, TensorBoard
and checkpoints. A checkpoint records how many samples were consumed, so a run can resume
with another number of processes and continue the same sample stream.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from detkd.engine.acceleration import CompiledWithFallback, resolve_precision, to_channels_last
from detkd.engine.averaging import WeightAverage
from detkd.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    latest_good_checkpoint,
    load_checkpoint,
    previous_checkpoint_path,
    remove_orphan_temp_files,
    save_checkpoint,
)
from detkd.engine.distributed import (
    convert_sync_batchnorm,
    launched_by_fabric_cli,
    revert_sync_batchnorm,
    sync_batchnorm_supported,
)
from detkd.engine.settings import (
    ExistingRunError,
    NoUsableCheckpointError,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
    learning_rate_factor,
)
from detkd.engine.task import StreamDataset, StreamSampler, Task

log = logging.getLogger(__name__)


class Trainer:
    """Runs a :class:`~detkd.engine.task.Task` for ``config.steps`` steps and writes into ``out_dir``.

    Layout of ``out_dir``: ``checkpoints/last.pt``, ``history.jsonl``, ``tensorboard/``.
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / "checkpoints" / "last.pt"
        self.history_path = self.out_dir / "history.jsonl"
        self.validation_path = self.out_dir / "validation.jsonl"

    def fit(self, task: Task, resume: bool = False) -> TrainResult:
        """Train ``task``; with ``resume`` continue from ``checkpoints/last.pt`` exactly.

        Every process of a multi-process run calls ``fit`` (torchrun, ``fabric run`` and
        Fabric's ``ddp`` launcher run the whole program once per process); each gets a result,
        with ``is_global_zero`` set in one of them. With ``ddp_spawn``/``ddp_fork`` the training
        runs in child processes and ``task.trainable()`` gets their final weights here.
        """
        from lightning.fabric import Fabric

        cfg = self.config
        settings: dict[str, Any] = {
            "accelerator": cfg.accelerator, "devices": cfg.devices, "num_nodes": cfg.num_nodes,
            "strategy": cfg.strategy, "precision": resolve_precision(cfg.precision, cfg.accelerator),
        }
        if launched_by_fabric_cli():
            # The flags of `fabric run` (LT_<NAME> variables) decide; the config fills in what they leave open.
            settings = {k: v for k, v in settings.items() if f"LT_{k.upper()}" not in os.environ}
        fabric = Fabric(**settings)
        if launched_by_fabric_cli():  # `fabric run` started the processes; launching again is an error
            result = self._fit_in_process(fabric, task, resume)
        else:
            result = fabric.launch(self._fit_in_process, task, resume)
        if result.process_id != os.getpid():
            task.trainable().load_state_dict(load_checkpoint(result.checkpoint)["model"])
        return result

    def _fit_in_process(self, fabric: Any, task: Task, resume: bool) -> TrainResult:
        cfg = self.config
        fabric.seed_everything(cfg.seed, verbose=False)
        world_size = fabric.world_size
        start_step, state, damaged = self._starting_state(resume, fabric.is_global_zero)
        model = task.trainable()
        if state is not None:
            model.load_state_dict(state.get("online_model", state["model"]))
        average = self._weight_average(model, state, fabric.is_global_zero)
        first_sample = self._first_sample(state, start_step, world_size, warn=fabric.is_global_zero)
        dataset = task.train_dataset()
        if fabric.is_global_zero and isinstance(dataset, StreamDataset):
            # Here, not in the task: only the trainer knows how many processes share the run.
            reuse = dataset.reuse_warning(cfg.steps * cfg.batch_size * world_size)
            if reuse:
                log.warning(reuse)
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
        synced_batchnorm = self._sync_batchnorm(fabric, task)
        if cfg.channels_last:
            task.to(memory_format=torch.channels_last)
        wrapped_task, optimizer = fabric.setup(task, optimizer)
        forward = CompiledWithFallback(wrapped_task) if cfg.compile else wrapped_task

        loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=StreamSampler(
                start_step, cfg.steps, cfg.batch_size, fabric.global_rank, world_size, first_sample
            ),
            num_workers=cfg.num_workers,
            pin_memory=fabric.device.type == "cuda",
            persistent_workers=False,
        )
        loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
        global_batch = cfg.batch_size * world_size

        writer = None
        # Every process has read the checkpoint before rank 0 may replace it.
        fabric.barrier()
        if fabric.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if damaged:
                if self.checkpoint_path.exists():
                    self._set_aside(self.checkpoint_path, "damaged")
                os.replace(previous_checkpoint_path(self.checkpoint_path), self.checkpoint_path)
            self._truncate_history(self.history_path, start_step)
            self._truncate_history(self.validation_path, start_step)
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

        def samples_seen() -> int:
            return first_sample + (step - start_step) * global_batch

        try:
            tick = time.perf_counter()
            for batch in loader:
                fetched = time.perf_counter()
                wait_time += fetched - tick
                if cfg.channels_last:
                    batch = to_channels_last(batch)
                losses = forward(batch)
                loss = losses["loss"]
                if not self._all_finite(fabric, loss):
                    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                    raise self._divergence(
                        f"Loss is not finite at step {step} ({terms} in process {fabric.global_rank} of {world_size})",
                        step, fabric, scheduler,
                    )
                fabric.backward(loss)
                if cfg.grad_clip > 0:
                    fabric.clip_gradients(wrapped_task, optimizer, max_norm=cfg.grad_clip, error_if_nonfinite=False)
                try:
                    optimizer.step()
                except RuntimeError as err:
                    if "overflow" not in str(err):
                        raise
                    # The loss of this step was finite: the checkpoint of this step is still good.
                    raise self._divergence(
                        f"The optimiser's update overflowed at step {step} ({str(err).splitlines()[0]})",
                        step + 1, fabric, scheduler,
                    ) from None
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if average is not None:
                    average.update(model)
                step += 1
                seen += global_batch
                tick = time.perf_counter()
                compute_time += tick - fetched

                if step % cfg.log_every == 0 or step == cfg.steps:
                    last = {k: float(fabric.all_reduce(v.detach(), reduce_op="mean")) for k, v in losses.items()}
                    images_per_s = seen / max(wait_time + compute_time, 1e-9)
                    wait_share = wait_time / max(wait_time + compute_time, 1e-9)
                    if world_size > 1:
                        wait_share = float(fabric.all_reduce(
                            torch.tensor(wait_share, device=fabric.device), reduce_op="mean"
                        ))
                    record = {"step": step, **last, "lr": scheduler.get_last_lr()[0],
                              "images_per_s": images_per_s, "data_wait": wait_share}
                    if fabric.is_global_zero:
                        self._log(writer, record)
                    bar.set_postfix(loss=f"{last['loss']:.4g}", img_s=f"{images_per_s:.1f}", wait=f"{wait_share:.0%}")
                bar.update(1)
                if cfg.val_every > 0 and (step % cfg.val_every == 0 or step == cfg.steps):
                    self._validate(fabric, task, writer, step, bar, average)
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self._save(fabric, task, optimizer, scheduler, step, samples_seen(), average)
        except KeyboardInterrupt:
            bar.close()  # the message goes on its own line, not after the bar
            if step > start_step:
                self._save(fabric, task, optimizer, scheduler, step, samples_seen(), average)
                log.warning("Interrupted at step %d; checkpoint written, continue with --resume", step)
            raise
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            revert_sync_batchnorm(task.trainable(), synced_batchnorm)
        self._save(fabric, task, optimizer, scheduler, step, samples_seen(), average)
        if average is not None:  # what the task saves and evaluates after fit is the average
            model.load_state_dict(average.weights)
        return TrainResult(
            step, self.checkpoint_path, self.history_path, time.perf_counter() - began, last,
            is_global_zero=fabric.is_global_zero, world_size=world_size, samples_seen=samples_seen(),
        )

    # ------------------------------------------------------------------ helpers
    def has_checkpoint(self) -> bool:
        """Whether ``out_dir`` holds a checkpoint (``last.pt``, or the ``previous.pt`` kept beside it) to resume."""
        return self.checkpoint_path.exists() or previous_checkpoint_path(self.checkpoint_path).exists()

    def _starting_state(self, resume: bool, is_global_zero: bool = True) -> tuple[int, dict[str, Any] | None, bool]:
        """``(first step, checkpoint to resume or None, whether last.pt is damaged and previous.pt is used)``."""
        if is_global_zero:
            for orphan in remove_orphan_temp_files(self.checkpoint_path.parent):
                log.info("Removed '%s', left by a write that was interrupted", orphan)
        if not self.has_checkpoint():
            if resume:
                log.warning("No checkpoint at '%s': starting from step 0", self.checkpoint_path)
            return 0, None, False
        self.refuse_existing_run(resume)
        good, passed_over = latest_good_checkpoint(self.checkpoint_path)
        if good is None:
            raise NoUsableCheckpointError(
                f"Cannot resume the run in '{self.out_dir}': no usable checkpoint ({'; '.join(passed_over)}). "
                "Start anew in another --out folder."
            )
        if is_global_zero:
            for reason in passed_over:
                log.warning("Not resuming from %s", reason)
        state = good.state
        saved = state.get("config", {})
        for key in ("lr", "seed"):
            if key in saved and saved[key] != getattr(self.config, key):
                kept = " (the optimiser and schedule resume as saved, so the run keeps the checkpoint's lr)" if key == "lr" else ""
                log.warning("Resuming with %s=%s (checkpoint used %s)%s", key, getattr(self.config, key), saved[key], kept)
        if state["step"] >= self.config.steps:
            log.warning("Checkpoint is at step %d >= steps=%d: nothing left to train", state["step"], self.config.steps)
        return good.step, state, good.path != self.checkpoint_path

    def refuse_existing_run(self, resume: bool) -> None:
        """Raise :class:`ExistingRunError` if ``out_dir`` holds checkpoints and ``resume`` is off."""
        if self.has_checkpoint() and not resume:
            raise ExistingRunError(
                f"'{self.out_dir}' already holds a run ({self._describe_checkpoint()}). "
                "Pass --resume to continue it, or choose another --out folder."
            )

    def _describe_checkpoint(self) -> str:
        """``checkpoint at step N`` without trusting the file more than a safe load does."""
        try:
            return f"checkpoint at step {load_checkpoint(self.checkpoint_path).get('step', '?')}"
        except (OSError, ValueError):
            return f"checkpoints in '{self.checkpoint_path.parent}'"

    def _divergence(self, what: str, first_bad_step: int, fabric: Any, scheduler: Any) -> NonFiniteLossError:
        """The error that stops a diverged run; on rank zero, only a good checkpoint is left as ``last.pt``."""
        where = self._after_divergence(first_bad_step) if fabric.is_global_zero else "See process 0 for the checkpoint"
        return NonFiniteLossError(
            f"{what}. {where}. Try a lower learning rate (now {scheduler.get_last_lr()[0]:.3g}), gradient "
            "clipping, or check the input images and teacher for NaN values."
        )

    def _after_divergence(self, step: int) -> str:
        """Keep only a checkpoint saved before the non-finite loss at ``step`` as ``last.pt``; say which.

        The checkpoints at ``step`` and later hold the weights that produced the non-finite loss:
        they are set aside as ``diverged.pt`` so that ``--resume`` cannot pick them up.
        """
        good, _ = latest_good_checkpoint(self.checkpoint_path, before_step=step)
        if self.checkpoint_path.exists() and (good is None or good.path != self.checkpoint_path):
            self._set_aside(self.checkpoint_path, "diverged")
        if good is None:
            previous = previous_checkpoint_path(self.checkpoint_path)
            if previous.exists():
                self._set_aside(previous, "diverged-previous")
            return "No checkpoint was saved before the loss diverged, so there is nothing to resume: start anew"
        if good.path != self.checkpoint_path:
            os.replace(good.path, self.checkpoint_path)
        return (
            f"The last good checkpoint is '{self.checkpoint_path}' at step {good.step}, saved before the "
            "divergence with finite weights (resume with --resume)"
        )

    @staticmethod
    def _set_aside(path: Path, label: str) -> None:
        """Rename a checkpoint that must not be resumed to ``<label>.pt`` beside it (kept for inspection)."""
        target = path.with_name(f"{label}.pt")
        os.replace(path, target)
        log.warning("Set '%s' aside as '%s'", path, target)

    def _first_sample(self, state: dict[str, Any] | None, start_step: int, world_size: int, warn: bool) -> int:
        """Index of the first sample this session draws: where the checkpointed run stopped."""
        global_batch = self.config.batch_size * world_size
        if state is None:
            return 0
        saved = state.get("config", {})
        saved_world = int(state.get("world_size", 1))  # checkpoints before multi-process support: 1
        saved_global = int(saved.get("batch_size", self.config.batch_size)) * saved_world
        seen = int(state.get("samples_seen", start_step * saved_global))
        if warn and saved_global != global_batch:
            log.warning(
                "Resuming with a global batch of %d (batch_size %d x %d processes); the checkpoint used %d "
                "(%d x %d). The sample stream continues at sample %d, but each step now takes %s images and the "
                "learning-rate schedule counts steps. To continue the same run, pass batch_size=%s.",
                global_batch, self.config.batch_size, world_size, saved_global, saved_global // saved_world,
                saved_world, seen, "more" if global_batch > saved_global else "fewer",
                f"{saved_global // world_size}" if saved_global % world_size == 0
                else f"{saved_global}/{world_size} (not a whole number: choose a process count that divides it)",
            )
        return seen

    def _sync_batchnorm(self, fabric: Any, task: Task) -> dict[str, type[torch.nn.Module]]:
        """Convert the trainable module's BatchNorm to SyncBatchNorm where that is possible.

        Returns what :func:`revert_sync_batchnorm` needs to give the module its classes back.
        """
        has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in task.trainable().modules())
        if fabric.world_size == 1 or not self.config.sync_batchnorm or not has_batchnorm:
            return {}
        if not sync_batchnorm_supported(fabric.device):
            if fabric.is_global_zero:
                log.warning(
                    "BatchNorm statistics are per process on %s (torch's SyncBatchNorm needs a GPU): "
                    "%d processes x batch %d normalise over %d images each, not over the global batch of %d",
                    fabric.device.type, fabric.world_size, self.config.batch_size, self.config.batch_size,
                    fabric.world_size * self.config.batch_size,
                )
            return {}
        return convert_sync_batchnorm(task.trainable())

    @staticmethod
    def _all_finite(fabric: Any, loss: torch.Tensor) -> bool:
        """Whether the loss is finite in every process (all stop together, none waits forever)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if fabric.world_size > 1:
            bad = fabric.all_reduce(bad, reduce_op="sum")
        return not bool(bad)

    def _weight_average(self, model: torch.nn.Module, state: dict[str, Any] | None, is_global_zero: bool
                        ) -> WeightAverage | None:
        """The moving average of the weights that ``train.ema_decay`` asks for, continued from ``state``."""
        saved = state is not None and "online_model" in state
        if self.config.ema_decay <= 0:
            if saved and is_global_zero:
                log.warning("The checkpoint holds a weight average but train.ema_decay is 0: training goes on "
                            "from its trained weights and the average is dropped")
            return None
        average = WeightAverage(model, self.config.ema_decay)
        if saved:
            average.restore(state["weight_average"], state["model"])
        elif state is not None and is_global_zero:
            log.warning("The checkpoint has no weight average (train.ema_decay was 0): the average starts at "
                        "its step %d", state["step"])
        return average

    def _save(
        self, fabric: Any, task: Task, optimizer: Any, scheduler: Any, step: int, samples_seen: int,
        average: WeightAverage | None = None,
    ) -> None:
        """Write ``last.pt``. Its ``model`` is what the run has made for use: the weight average when
        there is one (then the optimised weights follow under ``online_model``), so every reader of
        a checkpoint (``--model``, ``--init``, ``load_detector``) gets the average without knowing of it."""
        if fabric.is_global_zero:
            trained = task.trainable().state_dict()
            weights = ({"model": average.weights, "online_model": trained,
                        "weight_average": average.progress()} if average is not None else {"model": trained})
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": step,
                    "samples_seen": samples_seen,
                    "world_size": fabric.world_size,
                    **weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "config": asdict(self.config),
                    **task.checkpoint_extra(),
                },
                self.checkpoint_path,
            )
        fabric.barrier()

    def _validate(self, fabric: Any, task: Task, writer: Any, step: int, bar: Any,
                  average: WeightAverage | None = None) -> None:
        """Run ``task.validate()`` on rank 0 (eval mode, no gradients, training RNG untouched; on the
        weight average when there is one) and record it."""
        if fabric.is_global_zero:
            rng = torch.get_rng_state()
            task.eval()
            try:
                with torch.no_grad(), (average.applied(task.trainable()) if average is not None else nullcontext()):
                    metrics = task.validate()
            finally:
                task.train()
                torch.set_rng_state(rng)
            if metrics:
                record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
                for key, value in metrics.items():
                    writer.add_scalar(f"val/{key}", float(value), step)
                with self.validation_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                bar.write(f"validation at step {step}: " + ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items()))
        fabric.barrier()

    @staticmethod
    def _truncate_history(path: Path, start_step: int) -> None:
        """Drop records of ``path`` past the resumed step so the file has no duplicate steps."""
        if not path.exists():
            return
        if start_step == 0:
            path.unlink()
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= start_step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill mid-write
        path.write_text("".join(f"{line}\n" for line in kept))

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
