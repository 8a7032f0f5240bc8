"""Detector teacher-output cache in the detection task: same loss as online, refusals, the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch.utils.data import default_collate

from detkd.cache import TeacherCacheError, TeacherOutputCache
from detkd.cache.detection import (
    build_detector_teacher_cache,
    cached_detector_stream,
    detector_cache_fields,
    open_detector_cache,
)
from detkd.data.detection import (
    SYNTHETIC_CLASSES,
    BoxViewConfig,
    DetectionRecord,
    DetectionStream,
    synthetic_detection_set,
    write_synthetic_dataset,
)
from detkd.distill.detection import create_detection_distiller
from detkd.models.detection import create_detector, save_detector
from detkd.tasks.detection import DetectionDistillTask

SIZE = 128
CLASSES = list(SYNTHETIC_CLASSES)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_teacher(name: str = "fcos_tiny_fpn", seed: int = 0):
    torch.manual_seed(seed)
    return create_detector(name, len(CLASSES), class_names=CLASSES, fpn_channels=48).eval()


def stream_of(images: int = 2, view: BoxViewConfig | None = None) -> DetectionStream:
    return DetectionStream(synthetic_detection_set(images, SIZE, seed=3), SIZE, SIZE, view=view, seed=5)


def online_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if not k.startswith("teacher_")}


# ---------------------------------------------------------------- what a cached sample holds, by hand
def test_cached_sample_is_the_view_the_teacher_saw_with_its_boxes(tmp_path):
    """Zoom 1 and a certain left-right flip: the view is the image mirrored, box (10, 20, 50, 60) -> (78, 20, 118, 60)."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    record = DetectionRecord(None, SIZE, SIZE, boxes=[[10, 20, 50, 60]], labels=[2], image=pixels, image_id="a")
    stream = DetectionStream([record], SIZE, SIZE, view=BoxViewConfig(scale=(1.0, 1.0), hflip=1.0), max_boxes=3)
    teacher = tiny_teacher("retinanet_tiny_fpn")
    build_detector_teacher_cache(teacher, stream, tmp_path, CLASSES, views_per_image=1, progress=False)
    sample = cached_detector_stream(stream, tmp_path, teacher, CLASSES, views_per_image=1)[0]

    mirrored = torch.from_numpy(pixels[:, ::-1].astype(np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(sample["image"], mirrored)
    assert sample["boxes"].tolist() == [[78.0, 20.0, 118.0, 60.0], [0.0] * 4, [0.0] * 4]  # 128 - 50, 128 - 10
    assert sample["labels"].tolist() == [2, -1, -1] and int(sample["num_boxes"]) == 1
    with torch.no_grad():
        online = teacher(mirrored[None])
    assert sample["teacher_cls_logits"].dtype == torch.float32  # stored exactly
    torch.testing.assert_close(sample["teacher_cls_logits"], online.cls_logits[0])
    torch.testing.assert_close(sample["teacher_boxes"], online.boxes[0])
    # float16 features: relative rounding <= 2^-11 (0.05%)
    torch.testing.assert_close(sample["teacher_features_0"].float(), online.features[0][0], rtol=5e-4, atol=1e-5)


# ---------------------------------------------------------------- (a) cached loss == online loss
@pytest.mark.parametrize("method", ["gid", "pkd"])
def test_cached_loss_equals_online_loss_on_the_same_batch(tmp_path, method):
    teacher, stream = tiny_teacher(), stream_of()
    report = build_detector_teacher_cache(teacher, stream, tmp_path, CLASSES, views_per_image=2, batch_size=3,
                                          progress=False)
    assert (report.views, report.computed, report.reused) == (4, 4, 0)
    views = cached_detector_stream(stream, tmp_path, teacher, CLASSES, views_per_image=2)
    batch = default_collate([views[k] for k in range(4)])  # two epochs: both views of both images
    assert batch["teacher_features_0"].dtype == torch.float16 and batch["image"].shape == (4, 3, SIZE, SIZE)
    assert "boxes" in batch and "teacher_centerness" in batch  # FCOS teacher: centre-ness is cached too

    torch.manual_seed(1)
    student = create_detector("fcos_tiny_fpn", len(CLASSES), class_names=CLASSES, fpn_channels=32)
    distiller = create_detection_distiller(method, teacher.fpn_channels, student.fpn_channels,
                                           match_anchors=student.match_anchors)
    cached = DetectionDistillTask(None, student, distiller, views)(batch)
    online = DetectionDistillTask(teacher, student, distiller, stream)(online_batch(batch))
    assert set(cached) == set(online) and {"loss", "gt", "distill"} <= set(online)
    torch.testing.assert_close(cached["gt"], online["gt"], rtol=0, atol=0)  # the same images and boxes
    # The distillation terms read float16 features (relative rounding <= 2^-11 each) and float32
    # scores/boxes, so they agree to about 3 significant digits, as the store's own test shows.
    for name, value in online.items():
        torch.testing.assert_close(cached[name], value, rtol=1e-3, atol=1e-5, msg=name)


def test_task_without_teacher_needs_a_cached_stream():
    student = create_detector("fcos_tiny_fpn", len(CLASSES), fpn_channels=32)
    distiller = create_detection_distiller("pkd", 48, 32)
    with pytest.raises(ValueError, match="CachedDetectorViews"):
        DetectionDistillTask(None, student, distiller, stream_of())


# ---------------------------------------------------------------- (b) nothing stale is reused
def test_changed_teacher_classes_or_view_settings_are_refused(tmp_path):
    teacher, stream = tiny_teacher(), stream_of()
    build_detector_teacher_cache(teacher, stream, tmp_path, CLASSES, views_per_image=1, progress=False)
    changed = tiny_teacher()
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-4  # one weight, a tiny step
    with pytest.raises(TeacherCacheError, match="teacher: cache has") as err:
        open_detector_cache(tmp_path, changed, stream, CLASSES)
    assert str(tmp_path) in str(err.value) and "Use another cache folder" in str(err.value)
    with pytest.raises(TeacherCacheError, match="views.view.hflip"):
        open_detector_cache(tmp_path, teacher, stream_of(view=BoxViewConfig(hflip=0.0)), CLASSES)
    with pytest.raises(TeacherCacheError, match=r"classes\[0\]"):
        open_detector_cache(tmp_path, teacher, stream, ["dog", *CLASSES[1:]])
    with pytest.raises(TeacherCacheError, match="views.height"):
        open_detector_cache(tmp_path, teacher, DetectionStream(stream.records, 2 * SIZE, SIZE, seed=5), CLASSES)
    cache, _ = open_detector_cache(tmp_path, teacher, stream, CLASSES)
    assert len(cache) == 2  # the right teacher still reads it


def test_changed_image_is_named_and_then_added(tmp_path):
    teacher, stream = tiny_teacher(), stream_of()
    build_detector_teacher_cache(teacher, stream, tmp_path, CLASSES, views_per_image=1, progress=False)
    records = list(stream.records)
    records[1] = DetectionRecord(None, SIZE, SIZE, image=255 - records[1].image, image_id="edited")
    edited = DetectionStream(records, SIZE, SIZE, seed=5)
    views = cached_detector_stream(edited, tmp_path, teacher, CLASSES, views_per_image=1)
    assert views.missing_views() == [(1, 0)]
    k = next(k for k in range(2) if views.source_index(k) == 1)
    with pytest.raises(TeacherCacheError, match="image edited.*detkd detect cache-teacher"):
        views[k]
    again = build_detector_teacher_cache(teacher, edited, tmp_path, CLASSES, views_per_image=1, progress=False)
    assert (again.computed, again.reused) == (1, 1)


def test_truncated_shard_is_named_with_the_fix(tmp_path):
    teacher, stream = tiny_teacher("retinanet_tiny_fpn"), stream_of()
    build_detector_teacher_cache(teacher, stream, tmp_path, CLASSES, views_per_image=1, progress=False)
    shard = tmp_path / "shard-00000.boxes.npy"
    shard.write_bytes(shard.read_bytes()[:-100])  # a copy cut short
    cache, layout = open_detector_cache(tmp_path, teacher, stream, CLASSES)
    assert [f.name for f in detector_cache_fields(layout)] == [f.name for f in cache.fields]
    with pytest.raises(TeacherCacheError, match=r"shard-00000\.boxes\.npy.*delete the folder"):
        cache.verify()
    with pytest.raises(TeacherCacheError, match="boxes.npy"):
        build_detector_teacher_cache(teacher, stream, tmp_path, CLASSES, views_per_image=1, progress=False)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(TeacherCacheError, match="manifest"):
        TeacherOutputCache(tmp_path, {}, cache.fields)


# ---------------------------------------------------------------- (d) Faster R-CNN
def test_faster_rcnn_teacher_is_refused_with_the_folder_and_the_fix(tmp_path):
    teacher = tiny_teacher("fasterrcnn_tiny_fpn")
    with pytest.raises(TeacherCacheError, match="faster_rcnn.*cache'.*teacher_cache.folder null") as err:
        build_detector_teacher_cache(teacher, stream_of(), tmp_path / "cache", CLASSES, progress=False)
    assert "fasterrcnn_tiny_fpn" in str(err.value)
    assert not (tmp_path / "cache").exists()  # nothing written


# ---------------------------------------------------------------- (c) the commands end to end
def test_cache_teacher_command_then_distill_from_the_cache_and_resume(tmp_path):
    from detkd.cli.main import main

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", num_train=4, num_val=2, size=SIZE, seed=0)
    torch.manual_seed(0)
    save_detector(create_detector("retinanet_tiny_fpn", len(CLASSES), class_names=CLASSES, fpn_channels=32),
                  tmp_path / "teacher.pt")
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump({
        "train": {"log_every": 1, "progress": False, "accelerator": "cpu", "warmup_steps": 0,
                  "precision": "32-true"},
        "eval": {"plot_images": 1}, "teacher_cache": {"views_per_image": 2},
    }))
    common = ["--config", str(tmp_path / "fast.yaml"), "--teacher", str(tmp_path / "teacher.pt"),
              "--data", str(data_yaml), "--height", str(SIZE), "--width", str(SIZE)]
    runner = CliRunner()
    built = runner.invoke(main, ["detect", "cache-teacher", *common, "--cache", str(tmp_path / "cache")])
    assert built.exit_code == 0, built.output
    assert "8 views (0 reused, 8 computed" in built.output  # 4 images x 2 views

    def distill(steps, *extra):
        return runner.invoke(main, ["detect", "distill", *common, "--student", "retinanet_tiny_fpn", "--method", "gid",
                                    "--teacher-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                                    "--steps", str(steps), "--batch-size", "2", *extra])

    run = distill(2)
    assert run.exit_code == 0, run.output
    assert "8 views (8 reused, 0 computed" in run.output  # the teacher did not run again
    resumed = distill(3, "--resume")
    assert resumed.exit_code == 0, resumed.output
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["distill"]) for r in history)
    assert (tmp_path / "run" / "student.pt").exists() and (tmp_path / "run" / "metrics.json").exists()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["teacher_cache"] == {"folder": str(tmp_path / "cache"), "views_per_image": 2, "batch_size": 8}
