"""The shared engine: exact resume, schedule, NaN stop, atomic checkpoints."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from detkd.engine import (
    ExistingRunError, NonFiniteLossError, StreamDataset, Task, TrainConfig, Trainer,
    atomic_save, load_checkpoint, read_history,
)
from detkd.engine.settings import learning_rate_factor
from detkd.engine.task import StreamSampler


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


class FewLines(LineData):
    """Five items that a run should not draw more than ten times each."""

    def reuse_warning(self, samples):
        return f"{samples} samples draw each of 5 items {samples / 5:g} times" if samples > 50 else None


class FewLinesTask(LineTask):
    def train_dataset(self):
        return FewLines(seed=3)


def test_the_trainer_logs_the_stream_reuse_warning_for_the_whole_run(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="detkd.engine.trainer"):
        Trainer(config(steps=15), tmp_path / "long").fit(FewLinesTask())  # 15 x 4 = 60 samples
        assert caplog.text.count("60 samples draw each of 5 items 12 times") == 1
        caplog.clear()
        Trainer(config(steps=12), tmp_path / "short").fit(FewLinesTask())  # 48: no warning
        assert "samples draw" not in caplog.text


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


# ------------------------------------------------------------------ speed options
from detkd.engine.acceleration import CompiledWithFallback, resolve_precision, to_channels_last  # noqa: E402
from detkd.engine.distributed import convert_sync_batchnorm, is_launch_rank_zero, revert_sync_batchnorm  # noqa: E402


def test_precision_auto_is_bf16_on_a_bf16_gpu_and_fp32_elsewhere(monkeypatch):
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "cuda") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert resolve_precision("auto", "cuda") == "32-true"
    with pytest.raises(ValueError, match="bf16-mixed"):
        resolve_precision("bf16", "cuda")


def test_failed_compilation_warns_and_training_goes_on_eagerly(tmp_path, monkeypatch):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real_compile(module, backend=failing_backend))
    torch.manual_seed(0)
    compiled = LineTask()
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*without compilation"):
        result = Trainer(config(steps=3, compile=True), tmp_path / "c").fit(compiled)
    torch.manual_seed(0)
    eager = LineTask()
    Trainer(config(steps=3), tmp_path / "e").fit(eager)
    assert result.step == 3
    for p, q in zip(compiled.student.parameters(), eager.student.parameters()):
        torch.testing.assert_close(p, q)


def test_compiled_with_fallback_reraises_errors_of_the_model_itself():
    wrapper = CompiledWithFallback(nn.Linear(3, 1), backend="eager")
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="shapes"):
        wrapper(torch.ones(2, 5))  # the eager retry raises the model's own error, not a compiler's
    assert not wrapper.active


class ImageData(StreamDataset):
    def num_items(self) -> int:
        return 4

    def make_sample(self, item, rng):
        return {"image": torch.tensor(rng.random((2, 8, 8)), dtype=torch.float32)}  # C=1 is both layouts


class ConvTask(Task):
    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Sequential(
            # no bias before BatchNorm: its gradient is 0 up to rounding, which AdamW blows up to +-lr
            nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1),
        )
        self.layouts: list[bool] = []

    def trainable(self):
        return self.student

    def train_dataset(self):
        return ImageData(seed=1)

    def forward(self, batch):
        self.layouts.append(batch["image"].is_contiguous(memory_format=torch.channels_last))
        loss = (self.student(batch["image"]) - batch["image"].mean()).square().mean()
        return {"loss": loss}


def test_channels_last_changes_layout_not_results(tmp_path):
    runs = {}
    for flag in (False, True):
        torch.manual_seed(0)
        runs[flag] = ConvTask()
        Trainer(config(steps=2, channels_last=flag, batch_size=2), tmp_path / str(flag)).fit(runs[flag])
    assert runs[True].layouts == [True, True] and runs[False].layouts == [False, False]
    assert runs[True].student[0].weight.is_contiguous(memory_format=torch.channels_last)
    for p, q in zip(runs[True].student.parameters(), runs[False].student.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    nested = to_channels_last({"a": [torch.rand(2, 3, 4, 5)], "b": torch.rand(3, 4)})
    assert nested["a"][0].is_contiguous(memory_format=torch.channels_last) and nested["b"].is_contiguous()


def test_data_loading_workers_give_the_same_run(tmp_path):
    weights = []
    for workers in (0, 2):
        torch.manual_seed(0)
        task = LineTask()
        Trainer(config(steps=4, num_workers=workers), tmp_path / str(workers)).fit(task)
        weights.append([p.detach().clone() for p in task.student.parameters()])
    for p, q in zip(*weights):
        assert torch.equal(p, q)


def test_sync_batchnorm_conversion_is_undone_with_the_same_parameters():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    weight, mean = model[1].weight, model[2][1].running_mean
    originals = convert_sync_batchnorm(model)
    assert originals == {"1": nn.BatchNorm2d, "2.1": nn.BatchNorm1d}
    assert type(model[1]) is nn.SyncBatchNorm and model[1].weight is weight
    revert_sync_batchnorm(model, originals)
    assert type(model[1]) is nn.BatchNorm2d and type(model[2][1]) is nn.BatchNorm1d
    assert model[1].weight is weight and model[2][1].running_mean is mean


@pytest.mark.parametrize("env, zero", [
    ({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "3"}, False),
    ({"LOCAL_RANK": "1"}, False), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False), ({"SLURM_PROCID": "2"}, False),
])
def test_rank_zero_before_training_comes_from_the_launcher_environment(monkeypatch, env, zero):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_launch_rank_zero() is zero


class ValidatedLineTask(LineTask):
    """LineTask whose validation draws random numbers and records the mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def validate(self):
        self.modes.append(self.student.training)
        torch.rand(5)  # must not shift the training stream
        return {"weight": float(self.student.weight.sum()), "grad_enabled": float(torch.is_grad_enabled())}


def test_validation_runs_every_n_steps_and_at_the_end_without_changing_training(tmp_path):
    torch.manual_seed(0)
    plain = LineTask()
    Trainer(config(steps=7), tmp_path / "plain").fit(plain)
    torch.manual_seed(0)
    validated = ValidatedLineTask()
    Trainer(config(steps=7, val_every=3), tmp_path / "val").fit(validated)

    for p, q in zip(plain.student.parameters(), validated.student.parameters()):
        torch.testing.assert_close(p, q)
    records = read_history(tmp_path / "val" / "validation.jsonl")
    assert [r["step"] for r in records] == [3, 6, 7]  # every 3 steps, and the last one
    assert validated.modes == [False, False, False] and validated.student.training
    assert all(r["grad_enabled"] == 0.0 for r in records)
    assert records[-1]["weight"] == pytest.approx(float(validated.student.weight.detach().sum()))
    assert not (tmp_path / "plain" / "validation.jsonl").exists()  # val_every 0: no file


def seeded_task(seed: int = 0) -> ValidatedLineTask:
    """The same initial weights whatever ran before (alone or in the whole suite)."""
    torch.manual_seed(seed)
    return ValidatedLineTask()


def test_resumed_run_drops_validation_records_past_its_checkpoint(tmp_path):
    Trainer(config(steps=6, val_every=2), tmp_path).fit(seeded_task())
    # as if killed after step 4 with step 6's record written: the checkpoint is at step 3 (checkpoint_every=3)
    Trainer(config(steps=3, val_every=2), tmp_path / "b").fit(seeded_task())
    path = tmp_path / "b" / "validation.jsonl"
    path.write_text(path.read_text() + json.dumps({"step": 4, "weight": 0.0}) + "\n")
    Trainer(config(steps=6, val_every=2), tmp_path / "b").fit(ValidatedLineTask(), resume=True)
    assert [r["step"] for r in read_history(path)] == [2, 3, 4, 6]
    full = read_history(tmp_path / "validation.jsonl")
    assert [r["step"] for r in full] == [2, 4, 6]
    assert read_history(path)[-1]["weight"] == pytest.approx(full[-1]["weight"])


# ---------------------------------------------------------------- moving average of the weights
from detkd.engine.averaging import WeightAverage  # noqa: E402


class OneWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_weight_average_by_hand():
    module = OneWeight()
    average = WeightAverage(module, decay=0.9)
    with torch.no_grad():
        module.w.fill_(1.0)
        module.count.fill_(7)
    average.update(module)  # decay_1 = min(0.9, 2/11) = 2/11
    assert average.weights["w"].item() == pytest.approx(9 / 11)
    assert average.weights["count"].item() == 7  # integers are copied, not averaged
    with torch.no_grad():
        module.w.fill_(2.0)
    average.update(module)  # decay_2 = min(0.9, 3/12) = 0.25
    assert average.weights["w"].item() == pytest.approx(0.25 * 9 / 11 + 0.75 * 2.0)
    assert average.decay_at(1000) == 0.9  # (1001 / 1010) > 0.9: the configured decay from then on
    with average.applied(module):
        assert module.w.item() == pytest.approx(0.25 * 9 / 11 + 1.5)
    assert module.w.item() == 2.0  # its own weights are back


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_weight_average_refuses_a_decay_outside_zero_one(decay):
    with pytest.raises(ValueError, match="ema_decay must lie between 0 and 1"):
        WeightAverage(OneWeight(), decay)


def test_averaged_run_trains_the_same_weights_resumes_exactly_and_ends_on_the_average(tmp_path):
    plain = seeded_task()
    Trainer(config(), tmp_path / "plain").fit(plain)
    straight = seeded_task()
    Trainer(config(ema_decay=0.5, val_every=6), tmp_path / "a").fit(straight)
    first_half = seeded_task()
    Trainer(config(steps=3, ema_decay=0.5), tmp_path / "b").fit(first_half)
    resumed = seeded_task(seed=123)
    Trainer(config(ema_decay=0.5), tmp_path / "b").fit(resumed, resume=True)

    saved = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    again = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    # averaging does not change training: the optimised weights are those of the plain run
    torch.testing.assert_close(saved["online_model"]["weight"], plain.student.weight.detach())
    # the checkpoint's model, the task's module after fit and the validation all see the average
    torch.testing.assert_close(saved["model"]["weight"], straight.student.weight.detach())
    assert not torch.equal(saved["model"]["weight"], saved["online_model"]["weight"])
    last_validation = read_history(tmp_path / "a" / "validation.jsonl")[-1]
    assert last_validation["weight"] == pytest.approx(float(saved["model"]["weight"].sum()))
    # resumed halfway: the same average, the same count of updates
    assert again["weight_average"] == saved["weight_average"] == {"decay": 0.5, "updates": 6}
    for key in ("model", "online_model"):
        for name in saved[key]:
            torch.testing.assert_close(saved[key][name], again[key][name])


def test_averaged_checkpoint_resumed_without_averaging_goes_on_from_the_trained_weights(tmp_path, caplog):
    Trainer(config(steps=3, ema_decay=0.5), tmp_path).fit(seeded_task())
    online = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["online_model"]
    continued = seeded_task(seed=5)
    with caplog.at_level(logging.WARNING, logger="detkd.engine.trainer"):
        Trainer(config(steps=3), tmp_path).fit(continued, resume=True)  # nothing left to train
    assert "the average is dropped" in caplog.text
    torch.testing.assert_close(continued.student.weight.detach(), online["weight"])
