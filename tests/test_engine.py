"""The shared engine: exact resume, schedule, NaN stop, atomic checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from detkd.engine import (
    ExistingRunError, NonFiniteLossError, StreamDataset, Task, TrainConfig, Trainer,
    atomic_save, load_checkpoint, read_history,
)
from detkd.engine.trainer import StreamSampler, learning_rate_factor


class LineData(StreamDataset):
    def num_items(self) -> int:
        return 5

    def make_sample(self, item, rng):
        x = torch.tensor(rng.normal(size=3), dtype=torch.float32)
        return {"x": x, "y": x.sum(0, keepdim=True) * 2 + item}


class LineTask(Task):
    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.student = nn.Linear(3, 1)
        self.teacher = nn.Sequential(nn.Linear(3, 1), nn.Dropout(0.5))
        self.freeze("teacher")
        self.nan_at, self.calls = nan_at, 0

    def trainable(self):
        return self.student

    def train_dataset(self):
        return LineData(seed=3)

    def forward(self, batch):
        self.calls += 1
        loss = ((self.student(batch["x"]) - batch["y"]) ** 2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "mse": loss.detach()}


def config(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=4, lr=0.05, checkpoint_every=3, log_every=1, progress=False,
                accelerator="cpu", lr_decay=0.5, lr_decay_every=2)
    return TrainConfig(**{**base, **kw})


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    torch.manual_seed(0)
    straight = LineTask()
    Trainer(config(), tmp_path / "a").fit(straight)

    torch.manual_seed(0)
    first_half = LineTask()
    Trainer(config(steps=3), tmp_path / "b").fit(first_half)  # as if killed after step 3
    torch.manual_seed(123)  # a fresh process: other initial weights, restored from the checkpoint
    resumed = LineTask()
    result = Trainer(config(), tmp_path / "b").fit(resumed, resume=True)

    assert result.step == 6
    for p, q in zip(straight.student.parameters(), resumed.student.parameters()):
        torch.testing.assert_close(p, q)
    steps = [r["step"] for r in read_history(tmp_path / "b" / "history.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_frozen_teacher_stays_in_eval_mode_without_gradients(tmp_path):
    task = LineTask()
    Trainer(config(steps=2), tmp_path).fit(task)
    assert not task.teacher.training
    assert all(not p.requires_grad for p in task.teacher.parameters())


def test_existing_run_is_not_overwritten(tmp_path):
    Trainer(config(steps=2), tmp_path).fit(LineTask())
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ExistingRunError, match="--resume"):
        Trainer(config(steps=2), tmp_path).fit(LineTask())
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_nan_loss_stops_with_a_clear_error_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="step 4.*last good checkpoint"):
        Trainer(config(), tmp_path).fit(LineTask(nan_at=5))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 3


def test_learning_rate_schedule_by_hand():
    cfg = TrainConfig(lr_decay=0.5, lr_decay_every=10, warmup_steps=4)
    assert [learning_rate_factor(s, cfg) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert learning_rate_factor(9, cfg) == 1.0
    assert learning_rate_factor(10, cfg) == 0.5
    assert learning_rate_factor(25, cfg) == 0.25


def test_stream_sampler_shards_the_global_batch():
    ranks = [list(StreamSampler(1, 3, batch_size=2, rank=r, world_size=2)) for r in range(2)]
    assert ranks == [[4, 5, 8, 9], [6, 7, 10, 11]]
    assert sorted(ranks[0] + ranks[1]) == list(StreamSampler(2, 6, batch_size=2))


def test_stream_dataset_is_reproducible_and_covers_items_each_epoch():
    data = LineData(seed=3)
    assert torch.equal(data[7]["x"], LineData(seed=3)[7]["x"])
    assert sorted(data.source_index(k) for k in range(5)) == [0, 1, 2, 3, 4]


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": 1}, path)
    with pytest.raises(Exception):
        atomic_save({"bad": lambda: None}, path)  # lambdas cannot be pickled
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_history_records_are_json_lines(tmp_path):
    Trainer(config(steps=2), tmp_path).fit(LineTask())
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["step"] == 2 and {"loss", "mse", "lr", "images_per_s", "data_wait"} <= set(record)
    assert np.isfinite(record["loss"])
