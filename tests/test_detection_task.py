"""Detection tasks on the engine: what the losses add up to, what is trained and saved, and the checks before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from detkd.config import ConfigError, load_config_file, merge_config, to_plain
from detkd.data.detection import (
    DetectionSet,
    DetectionStream,
    synthetic_detection_set,
    unpad_targets,
    write_synthetic_dataset,
)
from detkd.distill.detection import create_detection_distiller
from detkd.engine import load_checkpoint
from detkd.models.detection import create_detector, load_detector, save_detector
from detkd.tasks.run_folder import refuse_other_models
from detkd.tasks.detection import (
    DEFAULT_DISTILL_CONFIG,
    DEFAULT_TRAIN_CONFIG,
    DetectionData,
    DetectionDistillTask,
    DetectionTrainTask,
    RUN_PATH_KEYS,
    IncompatibleModelsError,
    read_detection_data,
    run_detection_distillation,
)

CONFIGS = Path(__file__).parents[1] / "configs"
FAST = {"train": {"steps": 1, "batch_size": 2, "log_every": 1, "progress": False, "accelerator": "cpu",
                  "warmup_steps": 0, "precision": "32-true"},
        "data": {"height": 128, "width": 128},
        "eval": {"plot_images": 1}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect_task")
    data_yaml = write_synthetic_dataset(root / "shapes", num_train=6, num_val=3, size=128, seed=0)
    torch.manual_seed(0)
    names = ["circle", "triangle", "rectangle", "star", "cross"]
    save_detector(create_detector("retinanet_tiny_fpn", 5, class_names=names, fpn_channels=48), root / "teacher.pt")
    return root, data_yaml


def batch_of(size: int = 2) -> dict[str, torch.Tensor]:
    stream = DetectionStream(synthetic_detection_set(size, 128, seed=3), 128, 128, seed=0)
    return default_collate([stream[k] for k in range(size)])


def distill_config(workspace, method, **distill):
    root, data_yaml = workspace
    return merge_config(DEFAULT_DISTILL_CONFIG, {
        **FAST, "data": {**FAST["data"], "config": str(data_yaml)},
        "teacher": {"checkpoint": str(root / "teacher.pt")}, "student": {"name": "retinanet_tiny_fpn"},
        "distill": {"method": method, **distill},
    })


def test_shipped_config_files_list_every_default():
    assert load_config_file(CONFIGS / "detect_train.yaml") == to_plain(DEFAULT_TRAIN_CONFIG)
    assert load_config_file(CONFIGS / "detect_distill.yaml") == to_plain(DEFAULT_DISTILL_CONFIG)


def test_train_task_loss_is_the_sum_of_the_family_losses():
    torch.manual_seed(0)
    model = create_detector("fcos_tiny_fpn", 5)
    batch = batch_of()
    out = DetectionTrainTask(model, None).forward(batch)  # type: ignore[arg-type]
    own = model(batch["image"], unpad_targets(batch)).losses
    assert set(out) == {"loss", "classification", "bbox_regression", "bbox_ctrness"}
    # FCOS: focal + GIoU + centre-ness, summed with weight 1 each
    expected = own["classification"] + own["bbox_regression"] + own["bbox_ctrness"]
    assert torch.allclose(out["loss"], expected, rtol=1e-5)


def test_distill_task_adds_weighted_ground_truth_to_distillation_and_trains_student_and_adapter():
    torch.manual_seed(0)
    teacher = create_detector("retinanet_tiny_fpn", 5, fpn_channels=48)
    student = create_detector("retinanet_tiny_fpn", 5)
    distiller = create_detection_distiller("pkd", 48, 32)
    task = DetectionDistillTask(teacher, student, distiller, None, gt_weight=0.5).train()  # type: ignore[arg-type]
    batch = batch_of()
    out = task(batch)

    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    targets = unpad_targets(batch)
    own = student(batch["image"], targets).losses
    with torch.no_grad():
        t_out = teacher(batch["image"])
    pkd = distiller(t_out, student(batch["image"]))["pkd"]
    # loss = 0.5 * (focal + L1) + pkd
    assert torch.allclose(out["gt"], 0.5 * (own["classification"] + own["bbox_regression"]), rtol=1e-5)
    assert torch.allclose(out["distill"], pkd, rtol=1e-5)
    assert torch.allclose(out["loss"], out["gt"] + out["distill"], rtol=1e-6)

    out["loss"].backward()
    trained = {id(p) for p in task.trainable().parameters()}
    assert {id(p) for p in student.parameters()} <= trained
    assert {id(p) for p in distiller.parameters()} <= trained and distiller.adapter.weight.grad is not None
    assert not {id(p) for p in teacher.parameters()} & trained
    assert all(p.grad is None for p in teacher.parameters())


def test_label_free_batches_have_no_ground_truth_term():
    torch.manual_seed(0)
    teacher, student = create_detector("retinanet_tiny_fpn", 5), create_detector("retinanet_tiny_fpn", 5)
    task = DetectionDistillTask(teacher, student, create_detection_distiller("cwd", 32, 32), None)  # type: ignore[arg-type]
    out = task({"image": batch_of()["image"]})
    assert "gt" not in out and torch.equal(out["loss"], out["distill"])


@pytest.mark.parametrize("method, options", [("pkd", {}), ("hint", {"label_free": True})])
def test_distillation_run_writes_student_that_loads_from_file_and_checkpoint(workspace, method, options, tmp_path):
    out = tmp_path / method
    outcome = run_detection_distillation(distill_config(workspace, method, **options), out)
    for name in ("config.yaml", "student.pt", "metrics.json", "metrics.md", "detections.png",
                 "detections_teacher.png", "loss_curves.png", "checkpoints/last.pt"):
        assert (out / name).exists(), name
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    if options.get("label_free"):
        assert "gt" not in history[0] and history[0]["loss"] == pytest.approx(history[0]["distill"])
    else:
        assert history[0]["loss"] == pytest.approx(history[0]["gt"] + history[0]["distill"], rel=1e-5)
    # the checkpoint holds the student and the distiller's 32 -> 48 adapter; load_detector reads either file
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    assert any(k.startswith("distiller.adapter") for k in checkpoint["model"])
    assert checkpoint["class_names"] == ["circle", "triangle", "rectangle", "star", "cross"]
    saved = load_detector(outcome.model_path)
    with pytest.warns(UserWarning, match="distiller"):
        from_checkpoint = load_detector(out / "checkpoints" / "last.pt")
    for key, value in saved.state_dict().items():
        assert torch.equal(value, from_checkpoint.state_dict()[key]), key
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    assert set(metrics) == {"teacher", "student"} and 0.0 <= metrics["student"]["map"] <= 1.0


def test_val_every_records_the_students_validation_curve_ending_at_its_final_metrics(workspace, tmp_path):
    config = distill_config(workspace, "gid")
    config["train"].update(steps=2, val_every=1)
    out = tmp_path / "curve"
    outcome = run_detection_distillation(config, out)
    curve = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [1, 2] and set(curve[0]) == {"step", "map", "ap50"}
    # the last validation is the student's final evaluation (same set, same settings), in points
    final = outcome.report.metrics["student"]
    assert curve[-1]["map"] == pytest.approx(100 * final.map, abs=1e-6)
    assert curve[-1]["ap50"] == pytest.approx(100 * final.ap50, abs=1e-6)
    assert (out / "validation.png").exists()


def test_teacher_with_other_classes_is_refused_before_training(workspace, tmp_path):
    root, _ = workspace
    save_detector(create_detector("retinanet_tiny_fpn", 2, class_names=["tree", "car"]), tmp_path / "other.pt")
    config = distill_config(workspace, "pkd")
    config["teacher"]["checkpoint"] = str(tmp_path / "other.pt")
    with pytest.raises(IncompatibleModelsError, match=r"trained on classes \['tree', 'car'\]"):
        run_detection_distillation(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_gid_across_faster_rcnn_and_retinanet_is_refused_before_training(workspace, tmp_path):
    names = ["circle", "triangle", "rectangle", "star", "cross"]
    save_detector(create_detector("fasterrcnn_tiny_fpn", 5, class_names=names), tmp_path / "frcnn.pt")
    config = distill_config(workspace, "gid")
    config["teacher"]["checkpoint"] = str(tmp_path / "frcnn.pt")
    with pytest.raises(IncompatibleModelsError, match="fasterrcnn_tiny_fpn.*retinanet_tiny_fpn.*'gid'.*1-class RPN"):
        run_detection_distillation(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("teacher_name, student_name", [("fasterrcnn_tiny_fpn", "retinanet_tiny_fpn"),
                                                         ("fasterrcnn_tiny_fpn", "fcos_tiny_fpn"),
                                                         ("retinanet_tiny_fpn", "fasterrcnn_tiny_fpn")])
def test_gid_across_faster_rcnn_and_one_stage_is_refused_on_one_class_data(workspace, tmp_path, teacher_name,
                                                                           student_name):
    # one class: the RPN's 1-class objectness has the shape of a one-stage detector's class scores
    shapes = synthetic_detection_set(2, 128, seed=5)
    for record in shapes.records:
        record.labels = np.zeros_like(record.labels)
    train = DetectionSet(shapes.records, ["shape"], "one-class shapes")
    data = DetectionData(train, None, ["shape"], "train: one-class shapes")
    save_detector(create_detector(teacher_name, 1, class_names=["shape"]), tmp_path / "teacher.pt")
    config = distill_config(workspace, "gid")
    config["teacher"]["checkpoint"] = str(tmp_path / "teacher.pt")
    config["student"]["name"] = student_name
    with pytest.raises(IncompatibleModelsError, match="'gid'.*Faster R-CNN (teacher|student) exposes only its 1-class RPN") as err:
        run_detection_distillation(config, tmp_path / "run", data=data)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_run_config_holds_absolute_data_and_teacher_paths(workspace, tmp_path, monkeypatch):
    root, data_yaml = workspace
    monkeypatch.chdir(root)  # the run is started with paths relative to the data's folder
    config = distill_config(workspace, "pkd")
    config["data"]["config"] = str(data_yaml.relative_to(root))
    config["teacher"]["checkpoint"] = "teacher.pt"
    config["data"]["unlabeled"] = ["shapes/val"]
    config["teacher_cache"]["folder"] = None
    config["train"]["steps"] = 1
    config["eval"]["split"] = "test"  # no test part: no evaluation after the step
    run_detection_distillation(config, tmp_path / "run")
    saved = load_config_file(tmp_path / "run" / "config.yaml")
    assert saved["data"]["config"] == str(data_yaml) and saved["teacher"]["checkpoint"] == str(root / "teacher.pt")
    assert saved["data"]["unlabeled"] == [str(root / "shapes" / "val")] and saved["teacher_cache"]["folder"] is None
    assert saved["student"]["name"] == "retinanet_tiny_fpn" and saved["train"]["steps"] == 1  # the rest as given

    monkeypatch.chdir(tmp_path)  # another folder: the saved config still finds its data and teacher
    assert len(read_detection_data(saved["data"], "val").train) == 6 and Path(saved["teacher"]["checkpoint"]).is_file()
    # resuming from the data's folder with the relative paths is the same run, not "other models"
    monkeypatch.chdir(root)
    refuse_other_models(config, tmp_path / "run", RUN_PATH_KEYS)
    with pytest.raises(ConfigError, match="other models"):
        refuse_other_models({**config, "teacher": {"checkpoint": "other.pt"}}, tmp_path / "run", RUN_PATH_KEYS)


def test_tiling_cuts_each_image_into_tiles(tmp_path):
    data_yaml = write_synthetic_dataset(tmp_path, num_train=2, num_val=1, size=256, seed=0)
    data_cfg = {**DEFAULT_TRAIN_CONFIG["data"], "config": str(data_yaml), "tile_size": 128}
    data = read_detection_data(data_cfg)
    # 256 x 256 images, 128 px tiles without overlap: 2 x 2 tiles each
    assert len(data.train) == 2 * 4 and len(data.val) == 1 * 4  # type: ignore[arg-type]
    assert {(r.width, r.height) for r in data.train.records} == {(128, 128)}
    assert data.train.records[3].window == (128, 128, 256, 256)
