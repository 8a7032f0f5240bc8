"""Hostile files: no file runs code when detkd opens it, damaged files are refused, a run folder
belongs to one run (issue: "Safe by default").

The pickle payload is harmless: unpickling it would create a marker file. Every loading point
must refuse the file with a one-line error that names it, and the marker must never appear.
"""

from __future__ import annotations

import json
import os
import time
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from detkd.cache.store import CacheField, TeacherCacheError, TeacherOutputCache
from detkd.cli.main import main
from detkd.engine import NonFiniteLossError, Task, TrainConfig, Trainer
from detkd.engine.checkpoint import CheckpointWriteError, latest_good_checkpoint, load_checkpoint, save_checkpoint
from detkd.models.superpoint import create_model
from detkd.models.weights import UnreadableWeightsError, UnsafeWeightsError, WeightsMismatchError, load_keypoint_model, save_keypoint_model
from detkd.safe_files import (
    DamagedFileError,
    UnreadableFileError,
    UnsafeFileError,
    content_digest,
    safe_torch_load,
    with_digest,
)
from detkd.tasks.run_folder import LOCK_NAME, RunFolderError, claim_run_folder, release_run_folder


class Payload:
    """Unpickling this calls ``subprocess.call(['touch', marker])``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


def write_payload_file(path: Path, marker: Path, wrapped_state: dict | None = None) -> Path:
    """A torch file with real-looking weights beside the payload."""
    obj = {"format": "detkd.keypoints", "version": 1, "state_dict": wrapped_state or {"w": torch.zeros(2)},
           "meta": Payload(marker)}
    torch.save(obj, path)
    return path


@pytest.fixture()
def hostile(tmp_path):
    """A workspace with photos, a good teacher, and a payload file; ``marker`` must never appear."""
    torch.manual_seed(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((64, 96)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    save_keypoint_model(create_model("tiny").eval(), tmp_path / "teacher.pt")
    marker = tmp_path / "MARKER"
    evil = write_payload_file(tmp_path / "evil.pt", marker, create_model("tiny").state_dict())
    return {"root": tmp_path, "photos": photos, "marker": marker, "evil": evil, "teacher": tmp_path / "teacher.pt"}


def test_the_payload_really_runs_code_with_full_unpickling(hostile):
    """The test's own premise: the file is dangerous (so the refusals below mean something)."""
    torch.load(hostile["evil"], weights_only=False)
    assert hostile["marker"].exists()


def cli_loading_points(h: dict) -> dict[str, list[str]]:
    evil, photos, root = str(h["evil"]), str(h["photos"]), h["root"]
    image = str(h["photos"] / "p0.png")
    small = ["--height", "64", "--width", "96"]
    return {
        "distill --teacher": ["keypoints", "distill", "--teacher", evil, "--images", photos, "--eval-images", photos,
                              "--out", str(root / "run"), "--steps", "1", *small],
        "evaluate --model": ["keypoints", "evaluate", "--model", evil, "--images", photos, *small],
        "evaluate --teacher": ["keypoints", "evaluate", "--teacher", evil, "--model", str(h["teacher"]),
                               "--images", photos, *small],
        "match --model": ["keypoints", "match", image, image, "--model", evil],
        "cache-teacher --teacher": ["keypoints", "cache-teacher", "--teacher", evil, "--images", photos,
                                    "--cache", str(root / "cache"), *small],
        "export": ["export", evil, "--height", "64", "--width", "96", "--out", str(root / "m.onnx")],
        "bench": ["bench", evil, "--height", "64", "--width", "96", "--repeats", "1", "--no-memory", "--no-gpu"],
    }


@pytest.mark.parametrize("point", ["distill --teacher", "evaluate --model", "evaluate --teacher", "match --model",
                                   "cache-teacher --teacher", "export", "bench"])
def test_payload_is_refused_at_every_command(hostile, point):
    args = cli_loading_points(hostile)[point]
    result = CliRunner().invoke(main, args)
    assert not hostile["marker"].exists(), f"{point} ran the file's code"
    assert result.exit_code != 0
    assert "evil.pt" in result.output and "Refusing to load" in result.output, result.output
    assert "Traceback" not in result.output


def test_payload_is_refused_by_the_python_loaders(hostile):
    from detkd import Predictor
    from detkd.models.detection import load_detector

    with pytest.raises(UnsafeWeightsError, match="evil.pt"):
        load_keypoint_model(hostile["evil"])
    with pytest.raises(UnsafeWeightsError, match="evil.pt"):
        load_detector(hostile["evil"])
    with pytest.raises(UnsafeFileError, match="evil.pt"):
        Predictor(hostile["evil"])
    with pytest.raises(UnsafeFileError, match=r"evil\.pt.*asks for the global"):
        safe_torch_load(hostile["evil"], "test file")
    assert not hostile["marker"].exists()


@pytest.mark.parametrize("content, begins", [
    (b"<!DOCTYPE html><html>404 Not Found</html>", "<!DOCTYPE html><"),  # a download error page
    (b"garbage\n", "garbage"),  # torch.load reads it as a pickle: 'g' is opcode 103, "Unsupported operand"
    # a hand-written protocol-0 pickle that would call os.system: torch.save never writes one
    (b"(S'touch MARKER'\nios\nsystem\n.", "(S'touch MARKER'"),
])
def test_a_file_torch_save_never_writes_is_named_as_such(tmp_path, monkeypatch, content, begins):
    """Not "unsafe": such a file is no torch file at all, and the message says what it begins with."""
    monkeypatch.chdir(tmp_path)  # where the hand-written pickle's MARKER would appear
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError) as caught:
        safe_torch_load(path, "weights file")
    message = str(caught.value)
    assert not isinstance(caught.value, UnsafeFileError)
    assert "weights.pt" in message and "not a file that torch.save writes" in message and begins in message
    result = CliRunner().invoke(main, ["keypoints", "evaluate", "--model", str(path)])
    assert result.exit_code != 0 and "not a file that torch.save writes" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "MARKER").exists()


def test_payload_as_a_runs_checkpoint_is_never_unpickled(hostile):
    """Pointing --out at a folder whose checkpoints/last.pt is hostile: refused, with and without --resume."""
    out = hostile["root"] / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"format": "detkd.checkpoint", "step": Payload(hostile["marker"])}, out / "checkpoints" / "last.pt")
    for extra in ([], ["--resume"]):
        args = ["keypoints", "distill", "--teacher", str(hostile["teacher"]), "--images", str(hostile["photos"]),
                "--out", str(out), "--steps", "2", "--height", "64", "--width", "96", *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0, result.output
        assert not hostile["marker"].exists()
    assert "no usable checkpoint" in result.output and "Refusing to load" in result.output


def test_payload_in_report_run_folder(hostile):
    run = hostile["root"] / "kp1"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"pairs": "x", "models": {"student": {"MMA@3": 0.5}}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"student": {"variant": "tiny"}, "teacher": {"checkpoint": None}}))
    write_payload_file(run / "student.pt", hostile["marker"])
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(hostile["root"] / "rep" / "r.html")])
    assert not hostile["marker"].exists()
    assert result.exit_code != 0 and "Refusing to load" in result.output, result.output


# ---------------------------------------------------------------------- digests and damaged files
def test_content_digest_by_hand():
    """Same values -> same digest; one flipped bit, a swapped key order or another dtype -> another."""
    a = {"x": torch.tensor([1.0, 2.0]), "n": 3, "s": "t"}
    assert content_digest(a) == content_digest({"x": torch.tensor([1.0, 2.0]), "n": 3, "s": "t"})
    flipped = torch.tensor([1.0, 2.0])
    flipped.view(torch.int32)[0] ^= 1  # the lowest mantissa bit of 1.0
    assert content_digest({**a, "x": flipped}) != content_digest(a)
    assert content_digest({"n": 3, "x": a["x"], "s": "t"}) != content_digest(a)
    assert content_digest({**a, "x": a["x"].double()}) != content_digest(a)
    assert content_digest(with_digest(a)) == content_digest(a)  # the digest entry is left out


def flip_bytes_in_tensor_data(path: Path, count: int = 64) -> None:
    """Flip ``count`` bytes inside the largest stored tensor of a torch zip file."""
    import zipfile

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        name_len = len(info.filename.encode())
        extra_len = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
        start = info.header_offset + 30 + name_len + extra_len  # torch stores entries uncompressed
    for i in range(count):
        raw[start + 4 * i] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_checkpoint_are_found(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": "detkd.checkpoint", "step": 3, "model": {"w": torch.randn(256)}}, path)
    flip_bytes_in_tensor_data(path)
    assert torch.load(path, weights_only=True)["step"] == 3  # torch itself reads it without complaint
    with pytest.raises(DamagedFileError, match="last.pt.*damaged"):
        load_checkpoint(path)


def test_flipped_bytes_in_a_model_file_are_found(tmp_path):
    path = save_keypoint_model(create_model("tiny"), tmp_path / "student.pt")
    flip_bytes_in_tensor_data(path)
    with pytest.raises(UnreadableWeightsError, match="student.pt.*damaged"):
        load_keypoint_model(path)


def test_huge_conf_is_refused_before_anything_is_allocated(tmp_path):
    """A small file whose conf asks for 16384-wide layers: refused by comparing shapes on the meta device."""
    path = save_keypoint_model(create_model("tiny"), tmp_path / "student.pt")
    obj = torch.load(path, weights_only=True)
    obj["conf"]["channels"] = (16384,) * 4
    obj["conf"]["descriptor_dim"] = 10**9
    torch.save(with_digest({k: v for k, v in obj.items()}), path)
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsMismatchError, match="student.pt"):
        load_keypoint_model(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500  # the real model would need 256 GB


# ---------------------------------------------------------------------- the engine
class LinearTask(Task):
    """Mean squared output of a linear layer on random inputs; samples from ``nan_from`` on are NaN."""

    def __init__(self, nan_from: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 1)
        self.nan_from = nan_from

    def trainable(self):
        return self.net

    def train_dataset(self):
        from detkd.engine import StreamDataset

        nan_from = self.nan_from

        class Data(StreamDataset):
            def __getitem__(self, index):
                if nan_from is not None and index >= nan_from:
                    return torch.full((4,), float("nan"))
                return torch.randn(4, generator=torch.Generator().manual_seed(index))

        return Data()

    def forward(self, batch):
        return {"loss": (self.net(batch) ** 2).mean()}


def train(out: Path, steps: int, resume: bool = False, nan_from: int | None = None, **settings) -> Trainer:
    cfg = TrainConfig(steps=steps, batch_size=2, progress=False, accelerator="cpu", log_every=1, **settings)
    trainer = Trainer(cfg, out)
    trainer.fit(LinearTask(nan_from), resume=resume)
    return trainer


@pytest.mark.parametrize("lr", [1e30, 1e38])
@pytest.mark.parametrize("every", [1, 5])
def test_nan_stop_names_only_a_checkpoint_saved_before_the_divergence(tmp_path, lr, every):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as caught:
        train(out, 20, lr=lr, checkpoint_every=every, grad_clip=0, lr_decay=1.0)
    message = str(caught.value)
    good, _ = latest_good_checkpoint(out / "checkpoints" / "last.pt")
    if good is None:
        assert "No checkpoint was saved before the loss diverged" in message
        assert not (out / "checkpoints" / "last.pt").exists()
    else:
        assert f"at step {good.step}" in message and str(out / "checkpoints" / "last.pt") in message
        assert all(torch.isfinite(v).all() for v in good.state["model"].values())


def test_nan_stop_after_good_steps_names_the_checkpoint_before_it_and_resume_works(tmp_path):
    """NaN inputs from step 6 on (batch 2: sample 12), checkpoints every 2 steps.

    The checkpoint of step 6 holds the weights that met the NaN: it is set aside as diverged.pt;
    last.pt is the step-4 checkpoint, and a resumed run (with the data fixed) continues from it.
    """
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"not finite at step 6.*last good checkpoint .*last\.pt' at step 4"):
        train(out, 20, nan_from=12, checkpoint_every=2)
    assert load_checkpoint(out / "checkpoints" / "diverged.pt")["step"] == 6
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4
    train(out, 8, resume=True, checkpoint_every=2)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 8


def test_damaged_last_checkpoint_resumes_from_the_previous_one(tmp_path, caplog):
    out = tmp_path / "run"
    train(out, 4, checkpoint_every=2)
    flip_bytes_in_tensor_data(out / "checkpoints" / "last.pt", count=2)
    # previous.pt is the step-2 checkpoint
    assert load_checkpoint(out / "checkpoints" / "previous.pt")["step"] == 2
    train(out, 6, resume=True, checkpoint_every=2)
    assert "damaged" in caplog.text
    assert (out / "checkpoints" / "damaged.pt").exists()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 6


def test_orphan_temp_files_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    train(out, 2)
    orphan = out / "checkpoints" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"")
    train(out, 3, resume=True)
    assert not orphan.exists()


def test_full_disk_names_the_checkpoint_and_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": "detkd.checkpoint", "step": 1, "model": {}}, path)

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 128 vs 64")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"last\.pt.*disk is full.*is intact"):
        save_checkpoint({"format": "detkd.checkpoint", "step": 2, "model": {}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------- the run folder
def test_a_second_live_run_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        out.mkdir()
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "now"}))
        with pytest.raises(RunFolderError, match=f"in use by another detkd run \\(process {sleeper.pid}"):
            claim_run_folder(out)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = claim_run_folder(out)  # its process is gone: stale
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release_run_folder(out)
    assert not lock.exists()


def test_a_lock_naming_no_process_waits_for_its_writer_then_counts_as_abandoned(tmp_path):
    """An empty lock file may be one another process has just created and not yet filled: refused while
    fresh, taken over once older than UNNAMED_LOCK_STALE_S (an abandoned or old-format lock)."""
    from detkd.safe_files import UNNAMED_LOCK_STALE_S, LockHeld, acquire_lock

    lock = tmp_path / "x.lock"
    lock.write_text("")
    with pytest.raises(LockHeld):
        acquire_lock(lock)
    old = time.time() - UNNAMED_LOCK_STALE_S - 5
    os.utime(lock, (old, old))
    taken = []
    assert acquire_lock(lock, on_takeover=taken.append) is True
    assert taken == [{}] and json.loads(lock.read_text())["pid"] == os.getpid()
    assert acquire_lock(lock, reentrant=True) is False  # this process holds it already
    with pytest.raises(LockHeld, match=f"process {os.getpid()}"):
        acquire_lock(lock)  # not re-entrant: even this process is refused


def test_a_refused_run_changes_nothing_in_the_folder(hostile):
    out = hostile["root"] / "run"
    args = ["keypoints", "distill", "--teacher", str(hostile["teacher"]), "--images", str(hostile["photos"]),
            "--eval-images", str(hostile["photos"]), "--out", str(out), "--steps", "1", "--batch-size", "1",
            "--height", "64", "--width", "96"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    result = CliRunner().invoke(main, [*args[:-6], "--steps", "5", *args[-4:]])
    assert result.exit_code != 0 and "already holds a run" in result.output
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert after == before


def test_out_under_a_regular_file_is_one_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["keypoints", "distill", "--out", str(blocker / "run"), "--steps", "1"])
    assert result.exit_code != 0
    assert "is inside" in result.output and "file.txt" in result.output and "Traceback" not in result.output


def test_unwritable_out_is_one_line(tmp_path, monkeypatch):
    import errno

    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(LOCK_NAME):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(RunFolderError, match="cannot be written.*Read-only"):
        claim_run_folder(tmp_path / "run")


# ---------------------------------------------------------------------- teacher caches
def make_cache(folder: Path) -> TeacherOutputCache:
    cache = TeacherOutputCache(folder, {"teacher": "t"}, [CacheField("x", (3,), "float32")])
    with cache.writer(4, rows_per_shard=4) as writer:
        writer.add([f"k{i}" for i in range(4)], {"x": np.arange(12, dtype=np.float32).reshape(4, 3)})
    return cache


def test_an_edited_cache_shard_is_refused(tmp_path):
    make_cache(tmp_path / "cache")
    shard = tmp_path / "cache" / "shard-00000.x.npy"
    array = np.load(shard)
    array[1, 2] = 99.0
    np.save(shard, array)
    cache = TeacherOutputCache(tmp_path / "cache", {"teacher": "t"}, [CacheField("x", (3,), "float32")])
    with pytest.raises(TeacherCacheError, match=r"shard-00000\.x\.npy.*changed after it was written"):
        cache.read("k1")


def test_swapped_keys_in_a_cache_are_refused(tmp_path):
    make_cache(tmp_path / "cache")
    keys_path = tmp_path / "cache" / "shard-00000.keys.json"
    keys = json.loads(keys_path.read_text())
    keys[0], keys[1] = keys[1], keys[0]
    keys_path.write_text(json.dumps(keys))
    cache = TeacherOutputCache(tmp_path / "cache", {"teacher": "t"}, [CacheField("x", (3,), "float32")])
    with pytest.raises(TeacherCacheError, match="keys.json.*changed after it was written"):
        cache.read("k0")


def test_an_intact_cache_reads_back(tmp_path):
    make_cache(tmp_path / "cache")
    cache = TeacherOutputCache(tmp_path / "cache", {"teacher": "t"}, [CacheField("x", (3,), "float32")])
    np.testing.assert_array_equal(cache.read("k2")["x"], [6.0, 7.0, 8.0])
