"""``detkd detect ...`` end to end on a tiny synthetic set: train, distil (GID), evaluate, resume, bad input."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from detkd.cli.main import main
from detkd.models.detection import create_detector, load_detector, save_detector
from detkd.tasks.detection import DEFAULT_TRAIN_CONFIG

FAST = {"train": {"log_every": 1, "progress": False, "accelerator": "cpu", "warmup_steps": 0, "precision": "32-true"},
        "eval": {"plot_images": 2}}
SIZE = ["--height", "128", "--width", "128", "--batch-size", "2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic set written by the CLI and a teacher trained on it for 2 steps by the CLI."""
    root = tmp_path_factory.mktemp("detect_cli")
    runner = CliRunner()
    made = runner.invoke(main, ["detect", "make-synthetic", str(root / "shapes"), "--train", "6", "--val", "3"])
    assert made.exit_code == 0, made.output
    (root / "fast.yaml").write_text(yaml.safe_dump(FAST))
    result = runner.invoke(main, ["detect", "train", "--config", str(root / "fast.yaml"), "--model", "retinanet_tiny_fpn",
                                  "--data", str(root / "shapes" / "data.yaml"), "--out", str(root / "teacher"),
                                  "--steps", "2", *SIZE])
    return root, result


def distill_args(root, out, steps, *extra):
    return ["detect", "distill", "--config", str(root / "fast.yaml"), "--teacher", str(root / "teacher" / "model.pt"),
            "--student", "fcos_tiny_fpn", "--method", "gid", "--data", str(root / "shapes" / "data.yaml"),
            "--out", str(out), "--steps", str(steps), *SIZE, *extra]


def test_make_synthetic_writes_coco_and_data_yaml(trained):
    root, _ = trained
    data = yaml.safe_load((root / "shapes" / "data.yaml").read_text())
    assert data["format"] == "coco" and data["names"] == ["circle", "triangle", "rectangle", "star", "cross"]
    train = json.loads((root / "shapes" / "train.json").read_text())
    assert len(train["images"]) == 6 and len(list((root / "shapes" / "train").glob("*.png"))) == 6


def test_train_writes_model_metrics_and_plots(trained):
    root, result = trained
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and "per-class AP" in result.output
    for name in ("model.pt", "config.yaml", "metrics.json", "metrics.md", "detections.png", "loss_curves.png",
                 "history.jsonl", "checkpoints/last.pt"):
        assert (root / "teacher" / name).exists(), name
    config = yaml.safe_load((root / "teacher" / "config.yaml").read_text())
    assert config["model"]["name"] == "retinanet_tiny_fpn" and config["train"]["steps"] == 2
    assert config["data"]["height"] == 128 and config["train"]["log_every"] == 1  # from --height and --config
    model = load_detector(root / "teacher" / "model.pt")
    assert model.class_names == ["circle", "triangle", "rectangle", "star", "cross"]


def test_gid_distillation_across_families_then_resume_and_evaluate(trained):
    root, _ = trained
    runner = CliRunner()
    out = root / "gid"
    result = runner.invoke(main, distill_args(root, out, 2))
    assert result.exit_code == 0, result.output
    assert "gid_feature, gid_relation, gid_response_cls, gid_response_box" in result.output
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert {"gt", "gid_feature", "gid_relation", "gid_response_cls", "gid_response_box", "gid_instances"} <= set(history[0])
    student = load_detector(out / "student.pt")
    assert student.name == "fcos_tiny_fpn"
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    assert metrics["teacher"]["detector"] == "retinanet_tiny_fpn" and metrics["student"]["detector"] == "fcos_tiny_fpn"

    again = runner.invoke(main, distill_args(root, out, 3))
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(main, distill_args(root, out, 3, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    steps = [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    plot = root / "eval" / "gid.png"
    evaluated = runner.invoke(main, ["detect", "evaluate", "--model", f"gid={out / 'student.pt'}",
                                     "--data", str(root / "shapes" / "data.yaml"), "--plot", str(plot),
                                     "--out", str(root / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert "| gid |" in evaluated.output and "letterboxed to 128x128" in evaluated.output  # size stored in student.pt
    assert plot.exists() and (root / "eval" / "metrics.json").exists()


def test_teacher_with_other_classes_is_one_clear_line(trained, tmp_path):
    root, _ = trained
    save_detector(create_detector("retinanet_tiny_fpn", 1, class_names=["tree"]), tmp_path / "trees.pt")
    args = distill_args(root, tmp_path / "run", 1)
    args[args.index("--teacher") + 1] = str(tmp_path / "trees.pt")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "error: The teacher" in result.output and "['tree']" in result.output and "Traceback" not in result.output


def test_data_yaml_without_train_part_is_named(tmp_path):
    (tmp_path / "data.yaml").write_text("format: coco\nval: val.json\n")
    result = CliRunner().invoke(main, ["detect", "train", "--data", str(tmp_path / "data.yaml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "'train' is missing" in result.output and "data.yaml" in result.output


@pytest.mark.parametrize("command, runner", [("train", "run_detection_training"),
                                             ("distill", "run_detection_distillation")])
def test_train_and_distill_take_devices_num_nodes_and_strategy(tmp_path, monkeypatch, command, runner):
    import detkd.tasks.detection as detection

    seen = []
    monkeypatch.setattr(detection, runner, lambda config, out, resume=False: seen.append(config["train"]))
    base = ["detect", command, "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, [*base, "--devices", "0,1", "--num-nodes", "2", "--strategy", "ddp"])
    assert result.exit_code == 0, result.output
    assert (seen[-1]["devices"], seen[-1]["num_nodes"], seen[-1]["strategy"]) == ("0,1", 2, "ddp")
    assert CliRunner().invoke(main, [*base, "--devices", "4"]).exit_code == 0
    assert seen[-1]["devices"] == 4  # a count is an int for Fabric, as 'keypoints distill --devices' gives it
    assert CliRunner().invoke(main, base).exit_code == 0
    assert (seen[-1]["devices"], seen[-1]["num_nodes"], seen[-1]["strategy"]) == (1, 1, "auto")  # the defaults
    assert "GPU ids like '0,1'" in CliRunner().invoke(main, ["detect", command, "--help"]).output


def test_evaluate_rows_named_by_name_equals_path_and_paths_with_equals_signs(tmp_path):
    from detkd.data.detection import write_synthetic_dataset

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", num_train=1, num_val=1, size=128, seed=0)
    names = ["circle", "triangle", "rectangle", "star", "cross"]
    for folder in ("lr=0.1", "other"):
        (tmp_path / folder).mkdir()
        save_detector(create_detector("retinanet_tiny_fpn", 5, class_names=names), tmp_path / folder / "model.pt")
    args = ["detect", "evaluate", "--data", str(data_yaml), "--size", "128", "--plot-images", "1"]
    in_lr = str(tmp_path / "lr=0.1" / "model.pt")  # an '=' in the path is not a NAME=PATH
    result = CliRunner().invoke(main, [*args, "--model", in_lr, "--model", f"fast={in_lr}"])
    assert result.exit_code == 0, result.output
    assert "| model " in result.output and "| fast " in result.output
    twice = CliRunner().invoke(main, [*args, "--model", in_lr, "--model", str(tmp_path / "other" / "model.pt")])
    assert twice.exit_code == 2 and "Two --model rows are named 'model'" in twice.output  # not one row silently lost


def test_config_command_prints_the_train_defaults():
    result = CliRunner().invoke(main, ["config", "detect-train"])
    assert result.exit_code == 0 and yaml.safe_load(result.output) == yaml.safe_load(yaml.safe_dump(DEFAULT_TRAIN_CONFIG))
