"""Two CPU processes (gloo) distil like one process with the same global batch.

DDP averages the gradients of the processes. Every distillation term is a mean over equally
many elements per image, so the mean of two processes' losses over 2 images each equals the
loss over the 4 images in one process, and so do the gradients: the runs differ only by the
order of floating-point sums (all-reduce vs one sum). The students here have no BatchNorm:
with BatchNorm each process would normalise with the statistics of its own 2 images (torch's
SyncBatchNorm, which the trainer switches on for GPUs, does not run on CPU), which changes
the outputs themselves, not just their rounding.
"""

from __future__ import annotations

import json
import logging
import multiprocessing

import numpy as np
import pytest
import torch
import torch.distributed as dist

from detkd.data.augment import CropConfig
from detkd.data.keypoint_training import UnlabeledImageStream
from detkd.distill.keypoints import KeypointDistillationLoss
from detkd.engine import TrainConfig, Trainer, load_checkpoint, read_history
from detkd.models.superpoint import create_model
from detkd.tasks.keypoints import KeypointDistillationTask

pytestmark = [
    pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="the test starts its processes with fork"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]


class IndexedStream(UnlabeledImageStream):
    """Views that carry their stream index, so that a process can report what it consumed; the trainer's
    questions about reuse are appended to ``reuse_log``."""

    reuse_log = None

    def __getitem__(self, k: int):
        return {**super().__getitem__(k), "index": torch.tensor(k)}

    def reuse_warning(self, samples: int):
        with self.reuse_log.open("a") as handle:
            handle.write(f"{samples}\n")
        return None


class MarkedTask(KeypointDistillationTask):
    """Appends ``{"rank", "indices", "loss"}`` of every step to ``markers/rank<r>.jsonl``."""

    def __init__(self, *args, markers, **kwargs):
        super().__init__(*args, **kwargs)
        self.markers = markers

    def forward(self, batch):
        losses = super().forward(batch)
        rank = dist.get_rank() if dist.is_initialized() else 0
        self.markers.mkdir(parents=True, exist_ok=True)
        with (self.markers / f"rank{rank}.jsonl").open("a") as handle:
            record = {"rank": rank, "indices": batch["index"].tolist(), "loss": float(losses["loss"].detach())}
            handle.write(json.dumps(record) + "\n")
        return losses


def make_task(markers) -> MarkedTask:
    rng = np.random.default_rng(0)
    photos = [rng.random((48, 64), dtype=np.float32) for _ in range(3)]
    data = IndexedStream(photos, CropConfig(height=32, width=48), seed=2)
    data.reuse_log = markers.parent / f"{markers.name}_reuse.txt"
    torch.manual_seed(0)
    teacher = create_model("tiny", batch_norm=False).eval()
    student = create_model("tiny", batch_norm=False)
    return MarkedTask(teacher, student, KeypointDistillationLoss(), data, markers=markers)


def config(**kw) -> TrainConfig:
    base = dict(steps=3, batch_size=4, lr=1e-3, log_every=1, checkpoint_every=100, progress=False, accelerator="cpu")
    return TrainConfig(**{**base, **kw})


def markers_of(folder, rank):
    return [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        # Measured: at most 2e-7 apart after 3 steps that move weights by up to 3e-3 (lr 1e-3);
        # AdamW's division by the root of the squared gradients can blow summation-order noise
        # up for near-zero gradients, hence 10x headroom.
        torch.testing.assert_close(p, q, rtol=1e-5, atol=2e-6, msg=name)


def test_two_processes_match_one_process_and_resume_with_one(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MASTER_PORT", raising=False)  # the launcher sets it; leave none behind
    two = make_task(tmp_path / "markers2")
    result = Trainer(config(batch_size=2, devices=2, strategy="ddp_fork"), tmp_path / "two").fit(two)
    one = make_task(tmp_path / "markers1")
    Trainer(config(), tmp_path / "one").fit(one)

    # Both processes took part, each with its own half of every global batch.
    assert [m["indices"] for m in markers_of(tmp_path / "markers2", 0)] == [[0, 1], [4, 5], [8, 9]]
    assert [m["indices"] for m in markers_of(tmp_path / "markers2", 1)] == [[2, 3], [6, 7], [10, 11]]
    assert [m["indices"] for m in markers_of(tmp_path / "markers1", 0)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert (result.world_size, result.samples_seen, result.step) == (2, 12, 3)
    # The stream was asked once (by rank 0) about the samples of the whole run, every process's together.
    assert (tmp_path / "markers2_reuse.txt").read_text().split() == ["12"]
    assert (tmp_path / "markers1_reuse.txt").read_text().split() == ["12"]

    # Logged losses are the mean over the processes, written once (by rank 0) per step.
    history = read_history(tmp_path / "two" / "history.jsonl")
    assert [r["step"] for r in history] == [1, 2, 3]
    per_rank = zip(markers_of(tmp_path / "markers2", 0), markers_of(tmp_path / "markers2", 1))
    for record, (m0, m1) in zip(history, per_rank):
        assert record["loss"] == pytest.approx((m0["loss"] + m1["loss"]) / 2, rel=1e-6)
    for record, single in zip(history, read_history(tmp_path / "one" / "history.jsonl")):
        assert record["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1

    # The parent got the trained weights back from the processes, equal to one process's.
    assert_same_weights(two.student, one.student)
    assert load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["world_size"] == 2

    # Resume the 2-process run in 1 process (global batch kept at 4): it continues the same
    # samples and ends where the 1-process run ends.
    Trainer(config(steps=5), tmp_path / "one").fit(one, resume=True)
    resumed = make_task(tmp_path / "markers_resumed")
    with caplog.at_level(logging.WARNING):
        Trainer(config(steps=5), tmp_path / "two").fit(resumed, resume=True)
    assert "global batch" not in caplog.text
    assert [m["indices"] for m in markers_of(tmp_path / "markers_resumed", 0)] == [[12, 13, 14, 15], [16, 17, 18, 19]]
    assert_same_weights(resumed.student, one.student)


def test_resume_with_another_global_batch_continues_the_stream_and_says_so(tmp_path, caplog):
    Trainer(config(steps=2), tmp_path).fit(make_task(tmp_path / "m1"))
    task = make_task(tmp_path / "m2")
    with caplog.at_level(logging.WARNING):
        result = Trainer(config(steps=3, batch_size=2), tmp_path).fit(task, resume=True)
    assert "global batch of 2" in caplog.text and "batch_size=4" in caplog.text
    assert [m["indices"] for m in markers_of(tmp_path / "m2", 0)] == [[8, 9]]  # no sample seen twice
    assert result.samples_seen == 10
