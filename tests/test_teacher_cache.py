"""Teacher-output cache: exact reuse, refusal of other teachers/images/settings, same loss as online."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import DataLoader

from detkd.cache import CacheField, TeacherCacheError, TeacherOutputCache
from detkd.cache.keypoints import (
    CachedTeacherViews,
    build_keypoint_teacher_cache,
    decode_teacher_outputs,
    encode_descriptors,
    open_keypoint_cache,
)
from detkd.data.augment import CropConfig, PhotometricConfig
from detkd.data.keypoint_training import UnlabeledImageStream
from detkd.distill.keypoints import KeypointDistillationLoss
from detkd.models.superpoint import create_model
from detkd.tasks.keypoints import KeypointDistillationTask

H, W = 32, 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_teacher(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("tiny", batch_norm=False).eval()


def photos(n: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((40 + 8 * i, 60), dtype=np.float32) for i in range(n)]


def stream_of(images, photometric=True) -> UnlabeledImageStream:
    return UnlabeledImageStream(images, CropConfig(height=H, width=W), PhotometricConfig() if photometric else None, seed=5)


# ---------------------------------------------------------------- formats, by hand
def test_int8_descriptor_codes_by_hand():
    desc = torch.tensor([0.6, -0.8]).view(1, 2, 1, 1)
    codes = encode_descriptors(desc, "int8")
    assert codes.dtype == np.int8 and codes.ravel().tolist() == [76, -102]  # round(76.2), round(-101.6)
    logits = torch.zeros(1, 65, 1, 1)
    decoded = decode_teacher_outputs(logits, torch.from_numpy(codes))["descriptors"].ravel()
    norm = math.sqrt(76**2 + 102**2)  # 127.20...: the codes are normalised again
    torch.testing.assert_close(decoded, torch.tensor([76 / norm, -102 / norm]))
    assert encode_descriptors(desc, "float16").dtype == np.float16


def test_cached_heatmap_is_the_softmax_of_the_cached_logits():
    logits = torch.zeros(1, 65, 1, 1, dtype=torch.float16)
    logits[0, 5] = math.log(2.0)  # bin 5 = pixel (row 0, column 5) of the cell, twice as likely
    heatmap = decode_teacher_outputs(logits, torch.ones(1, 4, 1, 1))["heatmap"][0]
    assert heatmap.shape == (8, 8)
    assert heatmap[0, 5].item() == pytest.approx(2 / 66, rel=1e-3)  # 65 bins: 64 x 1 + 2
    assert heatmap[3, 3].item() == pytest.approx(1 / 66, rel=1e-3)


def test_store_round_trip_over_shards_and_data_loader_workers(tmp_path):
    fields = [CacheField("a", (2, 3), "float16"), CacheField("n", (1,), "int32")]
    cache = TeacherOutputCache(tmp_path, {"teacher": "x"}, fields)
    values = np.arange(30, dtype=np.float32).reshape(5, 2, 3) / 4  # exact in float16
    with cache.writer(5, rows_per_shard=2) as writer:
        writer.add([f"k{i}" for i in range(5)], {"a": values, "n": np.arange(5).reshape(5, 1)})
    assert [s["rows"] for s in cache.shards()] == [2, 2, 1]
    reopened = TeacherOutputCache(tmp_path, {"teacher": "x"}, fields, create=False)
    assert len(reopened) == 5 and reopened.read("k3")["n"].tolist() == [3]
    np.testing.assert_array_equal(reopened.read("k4")["a"], values[4])

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.from_numpy(reopened.read(f"k{i}")["a"])

    reopened.read("k0")  # memory maps open here must not travel to the workers
    loaded = torch.cat(list(DataLoader(Rows(), batch_size=2, num_workers=2)))
    np.testing.assert_array_equal(loaded.numpy(), values)


def test_a_failed_build_keeps_committed_entries_and_releases_the_lock(tmp_path):
    cache = TeacherOutputCache(tmp_path, {"teacher": "x"}, [CacheField("a", (1,), "float32")])
    with pytest.raises(RuntimeError, match="killed"):
        with cache.writer(4, rows_per_shard=2) as writer:
            writer.add(["k0", "k1", "k2"], {"a": np.ones((3, 1), np.float32)})
            raise RuntimeError("killed")
    again = TeacherOutputCache(tmp_path, {"teacher": "x"}, [CacheField("a", (1,), "float32")])
    assert sorted(again.index) == ["k0", "k1", "k2"]
    assert not (tmp_path / ".writing.lock").exists()



def test_a_killed_writers_lock_is_taken_over_and_a_live_one_refused_by_name(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    from detkd.cache.store import TeacherCacheError

    cache = TeacherOutputCache(tmp_path, {"teacher": "x"}, [CacheField("a", (1,), "float32")])
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)  # a process that has ended: its lock is stale
    (tmp_path / ".writing.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "x"}))
    with pytest.warns(UserWarning, match=f"process {dead}, which no longer runs"):
        with cache.writer(1) as writer:
            writer.add(["k0"], {"a": np.ones((1, 1), np.float32)})
    assert sorted(cache.index) == ["k0"] and not (tmp_path / ".writing.lock").exists()

    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-12-05 01:00:00"}
    (tmp_path / ".writing.lock").write_text(json.dumps(live))
    with pytest.raises(TeacherCacheError, match=f"process {live['pid']} on .*since 2026-12-05 01:00:00"):
        with cache.writer(1):
            pass
    assert (tmp_path / ".writing.lock").exists()  # a live writer's lock is left alone


# ---------------------------------------------------------------- key points
def test_cached_loss_equals_online_loss_on_the_same_batch(tmp_path):
    teacher, data = tiny_teacher(), stream_of(photos())
    report = build_keypoint_teacher_cache(teacher, data, tmp_path, views_per_image=2, batch_size=3, progress=False)
    assert (report.views, report.computed, report.reused) == (4, 4, 0)
    views = CachedTeacherViews(data, open_keypoint_cache(tmp_path, teacher, data), views_per_image=2)
    batch = torch.utils.data.default_collate([views[k] for k in range(4)])  # two epochs: both views of both photos
    assert batch["teacher_logits"].dtype == torch.float16 and batch["image"].shape == (4, 1, H, W)

    torch.manual_seed(1)
    student = create_model("tiny", batch_norm=False)
    cached_task = KeypointDistillationTask(None, student, KeypointDistillationLoss(), views)
    online_task = KeypointDistillationTask(teacher, student, KeypointDistillationLoss(), data)
    cached = cached_task(batch)
    online = online_task({"image": batch["image"]})
    for name, value in online.items():  # float16 targets: about 3 significant digits
        torch.testing.assert_close(cached[name], value, rtol=2e-3, atol=1e-5, msg=name)


def test_views_kept_in_memory_are_the_views_made_again_and_stay_within_their_budget(tmp_path):
    import pickle

    teacher, data = tiny_teacher(), stream_of(photos(3))
    build_keypoint_teacher_cache(teacher, data, tmp_path, views_per_image=2, progress=False)
    cache = open_keypoint_cache(tmp_path, teacher, data)
    view_bytes = 4 * H * W  # one float32 (1, H, W) image per view
    kept = CachedTeacherViews(data, cache, views_per_image=2, memory_bytes=4 * view_bytes)
    made = CachedTeacherViews(data, cache, views_per_image=2, memory_bytes=0)
    from detkd.cache.views import _MissingViews

    builder = CachedTeacherViews(data, cache, views_per_image=2, memory_bytes=4 * view_bytes)
    built = _MissingViews(builder, builder.all_views())[0]["image"]  # what a cache build reads: made, not kept
    assert builder._kept == {}
    assert torch.equal(built, builder.view(*builder.all_views()[0])["image"]) and len(builder._kept) == 1
    calls = []
    make_sample = data.make_sample
    data.make_sample = lambda item, rng: calls.append(item) or make_sample(item, rng)
    for k in range(24):  # four epochs of the six views
        first, again = kept[k], made[k]
        assert first.keys() == again.keys()
        for name in first:
            assert torch.equal(first[name], again[name]), (k, name)
    # made: 24 reads; kept: the first 4 views made once and kept, the other 2 made at each of their 4 showings
    assert len(calls) == 24 + 4 + 2 * 4
    assert kept._kept_bytes == 4 * view_bytes and made._kept_bytes == 0
    first = kept[0]
    first["image"] = None  # each read is a new dict
    assert kept[0]["image"] is not None
    del data.make_sample  # the stream's own method again, which pickles
    assert pickle.loads(pickle.dumps(kept))._kept == {}  # a data-loading process keeps its own
    with pytest.raises(ValueError, match="memory_bytes"):
        CachedTeacherViews(data, cache, views_per_image=2, memory_bytes=-1)


def test_a_cache_that_grows_says_so(tmp_path):
    teacher, data = tiny_teacher(), stream_of(photos())
    first = build_keypoint_teacher_cache(teacher, data, tmp_path, views_per_image=1, progress=False)
    assert "grew" not in first.summary()
    grown = build_keypoint_teacher_cache(teacher, data, tmp_path, views_per_image=3, progress=False)
    assert (grown.views, grown.computed, grown.reused) == (6, 4, 2)
    assert "The cache grew: it held 2 of these views and now holds 3 views per image" in grown.summary()
    again = build_keypoint_teacher_cache(teacher, data, tmp_path, views_per_image=3, progress=False)
    assert "grew" not in again.summary()


def test_few_cached_views_for_a_long_run_are_warned_by_hand():
    from detkd.cache.views import view_reuse_warning

    # The quickstart's 15 photos, 5000 steps of 8: 4 views each are 60 views shown 40000 / 60 = 667 times;
    # 100 showings at most need 40000 / (100 x 15) = 26.7, so 27 views per photo.
    text = view_reuse_warning(num_images=15, views_per_image=4, samples=40_000)
    assert "4 view(s) of each of 15 image(s) (60 in all)" in text and "about 667 times" in text
    assert "at least 27 views per image" in text
    assert view_reuse_warning(15, 64, 40_000) is None  # 42 showings each
    assert view_reuse_warning(2, 3, 600) is None and view_reuse_warning(2, 3, 601) is not None  # the edge: 100


def test_online_teacher_builds_no_autograd_graph():
    task = KeypointDistillationTask(tiny_teacher(), create_model("tiny"), KeypointDistillationLoss(), stream_of(photos()))
    out = task.teacher_outputs({"image": torch.rand(2, 1, H, W)})
    assert all(t.grad_fn is None and not t.requires_grad for t in out.values())


def test_changed_teacher_or_view_settings_are_refused(tmp_path):
    teacher, data = tiny_teacher(), stream_of(photos())
    build_keypoint_teacher_cache(teacher, data, tmp_path, views_per_image=1, progress=False)
    changed = tiny_teacher()
    with torch.no_grad():
        changed.detector[1].conv.bias[0] += 1e-4  # one weight, a tiny step
    with pytest.raises(TeacherCacheError, match="teacher: cache has"):
        open_keypoint_cache(tmp_path, changed, data)
    with pytest.raises(TeacherCacheError, match="views.photometric"):
        open_keypoint_cache(tmp_path, teacher, stream_of(photos(), photometric=False))
    with pytest.raises(TeacherCacheError, match="fields"):
        open_keypoint_cache(tmp_path, teacher, data, descriptors="int8")
    assert len(open_keypoint_cache(tmp_path, teacher, data)) == 2  # the right teacher still reads it


def test_changed_image_is_recomputed_and_renamed_image_reused(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(photos(3)):
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    teacher = tiny_teacher()

    def stream():
        return UnlabeledImageStream.from_folder(folder, crop=CropConfig(height=H, width=W), seed=5)[0]

    first = build_keypoint_teacher_cache(teacher, stream(), tmp_path / "cache", views_per_image=2, progress=False)
    assert first.computed == 6
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(folder / "p1.png")  # new content, same name
    (folder / "p2.png").rename(folder / "renamed.png")  # same content, new name
    data = stream()
    views = CachedTeacherViews(data, open_keypoint_cache(tmp_path / "cache", teacher, data), views_per_image=2)
    changed = [str(data.sources[i].name) for i, _ in views.missing_views()]
    assert changed == ["p1.png", "p1.png"]
    k = next(k for k in range(6) if data.sources[views.source_index(k)].name == "p1.png")
    with pytest.raises(TeacherCacheError, match="p1.png"):
        views[k]
    again = build_keypoint_teacher_cache(teacher, data, tmp_path / "cache", views_per_image=2, progress=False)
    assert (again.computed, again.reused) == (2, 4)


def test_cache_teacher_command_then_distill_from_the_cache(tmp_path, caplog):
    from detkd.cli.main import main
    from detkd.models.weights import save_keypoint_model

    save_keypoint_model(tiny_teacher(), tmp_path / "teacher.pt")
    photos_dir = tmp_path / "photos"
    photos_dir.mkdir()
    for i, image in enumerate(photos(2)):
        Image.fromarray((image * 255).astype(np.uint8)).save(photos_dir / f"p{i}.png")
    common = ["--teacher", str(tmp_path / "teacher.pt"), "--images", str(photos_dir), "--height", str(H),
              "--width", str(W)]
    runner = CliRunner()
    built = runner.invoke(main, ["keypoints", "cache-teacher", *common, "--cache", str(tmp_path / "cache"),
                                 "--views-per-image", "2"])
    assert built.exit_code == 0, built.output
    assert "4 views (0 reused, 4 computed" in built.output

    (tmp_path / "c.yaml").write_text(json.dumps({
        "eval": {"pairs_per_image": 1, "height": 32, "width": 48, "max_keypoints": 50},
        "train": {"log_every": 1, "progress": False}, "teacher_cache": {"views_per_image": 2},
    }))
    caplog.set_level(logging.WARNING)
    run = runner.invoke(main, ["keypoints", "distill", "--config", str(tmp_path / "c.yaml"), *common,
                               "--teacher-cache", str(tmp_path / "cache"), "--eval-images", str(photos_dir),
                               "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2"])
    assert run.exit_code == 0, run.output
    assert "4 views (4 reused, 0 computed" in run.output  # the teacher did not run again
    assert "memorise" not in caplog.text  # 2 steps of 2: each view shown once
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [1, 2] and all(math.isfinite(r["cell_kl"]) for r in history)
    assert (tmp_path / "run" / "student.pt").exists()


def test_decoded_image_cache_keeps_8_bit_photos_as_uint8_and_gives_the_same_views(tmp_path):
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((40, 60)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((rng.random((40, 60)) * 65535).astype(np.uint16)).save(tmp_path / "b.png")  # 16 bit
    crop = CropConfig(height=H, width=W)
    cached = UnlabeledImageStream([tmp_path / "a.png", tmp_path / "b.png"], crop, PhotometricConfig(), cache=True)
    cached.preload()
    assert cached._decoded[0].dtype == np.uint8 and cached._decoded[1].dtype == np.float32
    fresh = UnlabeledImageStream([tmp_path / "a.png", tmp_path / "b.png"], crop, PhotometricConfig(), cache=False)
    for k in range(4):
        assert torch.equal(cached[k]["image"], fresh[k]["image"])


# ---------------------------------------------------------------- detectors
def test_cached_detector_outputs_give_the_same_gid_loss(tmp_path):
    from detkd.cache.detection import (
        DetectorLayout, decode_detector_outputs, detector_cache_fields, encode_detector_outputs,
    )
    from detkd.distill.detection import create_detection_distiller
    from detkd.models.detection import create_detector

    torch.manual_seed(0)
    teacher = create_detector("fcos_tiny_fpn", num_classes=3).eval()  # FCOS: centre-ness too
    student = create_detector("fcos_tiny_fpn", num_classes=3)
    distiller = create_detection_distiller("gid", teacher.fpn_channels, student.fpn_channels,
                                           match_anchors=student.match_anchors)
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        online = teacher(images)
    layout = DetectorLayout.from_outputs(online)
    cache = TeacherOutputCache(tmp_path, {"teacher": "fcos"}, detector_cache_fields(layout))
    with cache.writer(2) as writer:
        writer.add(["img0", "img1"], encode_detector_outputs(online))
    stored = [cache.read(key) for key in ("img0", "img1")]
    batch = {name: torch.stack([torch.from_numpy(s[name]) for s in stored]) for name in stored[0]}
    cached = decode_detector_outputs(batch, layout)

    student_out = student(images)
    expected, got = distiller(online, student_out, None), distiller(cached, student_out, None)
    for name, value in expected.items():  # float16 features: about 3 significant digits
        torch.testing.assert_close(got[name], value, rtol=1e-3, atol=1e-5, msg=name)


def test_faster_rcnn_outputs_are_not_cached():
    from detkd.cache.detection import DetectorLayout
    from detkd.models.detection import DetectorOutputs

    outputs = DetectorOutputs("faster_rcnn", [torch.zeros(1, 4, 2, 2)], [8], (16, 16), 3, torch.zeros(12, 4),
                              torch.zeros(1, 12, 1), torch.zeros(1, 12, 4), torch.zeros(1, 12, 4))
    with pytest.raises(ValueError, match="proposals"):
        DetectorLayout.from_outputs(outputs)
