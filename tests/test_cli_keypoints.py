"""The user's commands end to end on tiny data, and what they do with bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from conftest import make_keypoint_workspace
from detkd.cli.main import main
from detkd.models.weights import load_keypoint_model

TINY_EVAL = {"eval": {"pairs_per_image": 1, "height": 64, "width": 96, "max_keypoints": 100},
             "train": {"log_every": 1, "checkpoint_every": 2, "progress": False}}


@pytest.fixture()
def workspace(tmp_path):
    make_keypoint_workspace(tmp_path, [(50 + 10 * i, 70, 3) for i in range(3)])  # colour, smaller than the view
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_EVAL))
    return tmp_path


def distill_args(ws, out, steps=2, extra=()):
    return ["keypoints", "distill", "--config", str(ws / "config.yaml"), "--teacher", str(ws / "teacher.pt"),
            "--images", str(ws / "photos"), "--eval-images", str(ws / "photos"), "--out", str(out),
            "--steps", str(steps), "--batch-size", "2", "--height", "64", "--width", "96", *extra]


def test_distill_writes_student_metrics_plots_and_config(workspace):
    out = workspace / "run"
    result = CliRunner().invoke(main, distill_args(workspace, out))
    assert result.exit_code == 0, result.output
    assert "teacher" in result.output and "student" in result.output and "HA@3" in result.output
    for name in ("student.pt", "config.yaml", "metrics.json", "metrics.md", "history.jsonl",
                 "loss_curves.png", "matches_student.png", "checkpoints/last.pt"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").iterdir())
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["steps"] == 2 and config["student"]["variant"] == "fast-m"
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    assert set(metrics) == {"teacher", "student"} and 0 <= metrics["student"]["repeatability"] <= 1
    student = load_keypoint_model(out / "student.pt")
    assert student.conf["channels"] == (16, 32, 64, 96)  # fast-m, the default student


def test_config_yaml_holds_absolute_paths_and_repeats_the_run_from_another_folder(workspace, monkeypatch):
    monkeypatch.chdir(workspace)  # every path typed relative to the workspace
    relative = ["keypoints", "distill", "--config", "config.yaml", "--teacher", "teacher.pt", "--images", "photos",
                "--eval-images", "photos", "--out", "run", "--steps", "1", "--batch-size", "2",
                "--height", "64", "--width", "96", "--student", "fast-s"]
    first = CliRunner().invoke(main, relative)
    assert first.exit_code == 0, first.output
    config = yaml.safe_load((workspace / "run" / "config.yaml").read_text())
    assert config["teacher"]["checkpoint"] == str(workspace / "teacher.pt")
    assert config["data"]["images"] == config["eval"]["images"] == str(workspace / "photos")
    assert config["teacher"]["weights"] is None and config["student"]["init"] is None
    elsewhere = workspace / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = CliRunner().invoke(main, ["keypoints", "distill", "--config", str(workspace / "run" / "config.yaml"),
                                      "--out", "run2"])
    assert again.exit_code == 0, again.output
    assert (elsewhere / "run2" / "student.pt").exists()


def test_absolute_paths_keep_model_names_as_names():
    from detkd.tasks.keypoints import RUN_PATH_KEYS, is_model_name
    from detkd.tasks.run_folder import absolute_paths

    config = {"teacher": {"checkpoint": "aliked-n16", "weights": "w/aliked-n16.pth"},
              "student": {"init": "student-fast-s"}, "data": {"images": None}}
    resolved = absolute_paths(config, RUN_PATH_KEYS, is_model_name)
    assert resolved["teacher"]["checkpoint"] == "aliked-n16" and resolved["student"]["init"] == "student-fast-s"
    assert resolved["teacher"]["weights"] == str(Path.cwd() / "w" / "aliked-n16.pth")
    assert resolved["data"]["images"] is None
    file_init = absolute_paths({"student": {"init": "runs/a/student.pt"}}, RUN_PATH_KEYS, is_model_name)
    assert file_init["student"]["init"] == str(Path.cwd() / "runs" / "a" / "student.pt")


def test_resume_continues_and_an_existing_run_is_protected(workspace):
    out = workspace / "run"
    runner = CliRunner()
    assert runner.invoke(main, distill_args(workspace, out, steps=2)).exit_code == 0
    again = runner.invoke(main, distill_args(workspace, out, steps=4))
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(main, distill_args(workspace, out, steps=4, extra=["--resume"]))
    assert resumed.exit_code == 0, resumed.output
    steps = [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_keeps_the_runs_student_and_refuses_another_by_name(workspace):
    out = workspace / "run"
    runner = CliRunner()
    first = runner.invoke(main, distill_args(workspace, out, steps=2, extra=["--student", "fast-s"]))
    assert first.exit_code == 0, first.output
    other = runner.invoke(main, distill_args(workspace, out, steps=4, extra=["--resume", "--student", "tiny"]))
    assert other.exit_code == 2
    assert "student.variant: 'fast-s' then, 'tiny' now" in other.output and "size mismatch" not in other.output
    # without --config and --student, --resume reads the run's own config.yaml: still fast-s, no mismatch
    plain = ["keypoints", "distill", "--out", str(out), "--resume", "--steps", "4"]
    resumed = runner.invoke(main, plain)
    assert resumed.exit_code == 0, resumed.output
    assert "settings from" in resumed.output
    assert load_keypoint_model(out / "student.pt").conf["encoder"] == "fast"


def test_a_run_records_the_file_its_student_started_from_and_keeps_it_when_that_file_is_replaced(workspace):
    import hashlib
    import shutil

    runner = CliRunner()
    for name, steps in (("a", 2), ("b", 1)):
        made = runner.invoke(main, distill_args(workspace, workspace / name, steps=steps, extra=["--student", "fast-s"]))
        assert made.exit_code == 0, made.output
    start = workspace / "start.pt"  # stands for a shipped model's file, which shipping a successor replaces
    shutil.copy2(workspace / "a" / "student.pt", start)
    first_digest = hashlib.sha256(start.read_bytes()).hexdigest()
    out = workspace / "fine"
    began = runner.invoke(main, distill_args(workspace, out, steps=1, extra=["--student", "fast-s", "--init", str(start)]))
    assert began.exit_code == 0, began.output
    record = json.loads((out / "student_init.json").read_text())
    assert record["sha256"] == first_digest and record["init"] == str(start)
    assert record["description"].startswith(str(start)) and ", 2 steps from " in record["description"]
    shutil.copy2(workspace / "b" / "student.pt", start)  # the name now holds other weights (1 step)
    resumed = runner.invoke(main, distill_args(workspace, out, steps=2,
                                               extra=["--student", "fast-s", "--init", str(start), "--resume"]))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "student_init.json").read_text()) == record  # the step-0 record, not the file now
    assert f"initial weights from {record['description']} (at step 0;" in resumed.output  # the banner too
    meta = torch.load(out / "student.pt", weights_only=True)["meta"]
    assert meta["init"] == record["description"] and meta["init_sha256"] == first_digest


def test_init_fine_tunes_a_students_weights_and_refuses_another_structure(workspace):
    from detkd.models.superpoint import create_model
    from detkd.models.weights import save_keypoint_model
    from detkd.tasks.keypoints import initialise_student, structure_for_init

    runner = CliRunner()
    first = runner.invoke(main, distill_args(workspace, workspace / "first", steps=2, extra=["--student", "fast-s"]))
    assert first.exit_code == 0, first.output
    trained = workspace / "first" / "student.pt"
    # the weights are copied: a fresh fast-s (other seed) equals the file after initialise_student
    torch.manual_seed(5)
    fresh = create_model("fast-s", descriptor_dim=256, batch_norm=True)
    origin = initialise_student(fresh, trained)
    source = load_keypoint_model(trained).state_dict()
    assert all(torch.equal(value, source[key]) for key, value in fresh.state_dict().items())
    assert origin.startswith(str(trained)) and ", 2 steps from " in origin
    # a run from it says so and records it in the student's file
    second = runner.invoke(main, distill_args(workspace, workspace / "second", steps=1,
                                              extra=["--student", "fast-s", "--init", str(trained)]))
    assert second.exit_code == 0, second.output
    assert f"initial weights from {trained}" in second.output
    meta = torch.load(workspace / "second" / "student.pt", weights_only=True)["meta"]
    assert meta["init"].startswith(str(trained))
    # 0 steps: the initial model evaluated as it is (no loss history, no loss plot)
    as_is = runner.invoke(main, distill_args(workspace, workspace / "as-is", steps=0,
                                             extra=["--student", "fast-s", "--init", str(trained)]))
    assert as_is.exit_code == 0, as_is.output
    assert (workspace / "as-is" / "metrics.json").exists() and not (workspace / "as-is" / "loss_curves.png").exists()
    kept = load_keypoint_model(workspace / "as-is" / "student.pt").state_dict()
    assert all(torch.equal(value, source[key]) for key, value in kept.items())
    # another structure is refused before training, naming both and the keys to set
    other = runner.invoke(main, distill_args(workspace, workspace / "third", steps=1,
                                             extra=["--student", "fast-m", "--init", str(trained)]))
    assert other.exit_code != 0 and "channels [8, 16, 32, 32]" in other.output
    assert "channels [16, 32, 64, 96]" in other.output and "student.variant" in other.output
    assert not (workspace / "third" / "student.pt").exists()
    missing = runner.invoke(main, distill_args(workspace, workspace / "fourth", steps=1,
                                               extra=["--init", str(workspace / "nothing.pt")]))
    assert missing.exit_code != 0 and "nothing.pt' does not exist" in missing.output and "student-fast-s" in missing.output
    # a file of the variant's body with other heads (as the shipped student-fast-s) lends them to the student
    wide = save_keypoint_model(create_model("fast-s", descriptor_dim=256, batch_norm=True, head_channels=64,
                                            descriptor_stride=4), workspace / "wide.pt")
    assert structure_for_init("fast-s", {"head_channels": None, "descriptor_stride": None}, wide) == \
        {"head_channels": 64, "descriptor_stride": 4, "detector_stride": 8, "reparam_branches": False,
         "context_channels": 0}
    assert structure_for_init("fast-s", {"head_channels": 48, "descriptor_stride": None}, wide) == \
        {"head_channels": 48, "descriptor_stride": 4, "detector_stride": 8, "reparam_branches": False,
         "context_channels": 0}  # set in the config: kept (and refused by initialise_student)
    assert structure_for_init("fast-m", {"head_channels": None}, wide) == {"head_channels": None}  # other widths
    tuned = runner.invoke(main, distill_args(workspace, workspace / "fifth", steps=1,
                                             extra=["--student", "fast-s", "--init", str(wide)]))
    assert tuned.exit_code == 0, tuned.output
    conf = load_keypoint_model(workspace / "fifth" / "student.pt").conf
    assert (conf["head_channels"], conf["descriptor_stride"]) == (64, 4)


def test_corrupt_image_is_skipped_and_named(workspace):
    (workspace / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = CliRunner().invoke(main, distill_args(workspace, workspace / "run"))
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output and "1 skipped" in result.output


def test_folder_without_readable_images_is_a_clear_error(workspace):
    empty = workspace / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    args = distill_args(workspace, workspace / "run")
    args[args.index("--images") + 1] = str(empty)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "No images in" in result.output and str(empty) in result.output
    assert "Traceback" not in result.output


def test_teacher_of_the_wrong_architecture_gets_a_key_report(workspace):
    torch.save({"backbone.weight": torch.zeros(3, 3), "head.bias": torch.zeros(2)}, workspace / "wrong.pt")
    args = distill_args(workspace, workspace / "run")
    args[args.index("--teacher") + 1] = str(workspace / "wrong.pt")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "wrong.pt" in result.output and "backbone.weight" in result.output
    assert not (workspace / "run" / "checkpoints").exists()


def test_unknown_config_key_is_rejected_with_its_name(workspace):
    (workspace / "bad.yaml").write_text("train: {stepz: 3}\n")
    args = distill_args(workspace, workspace / "run")
    args[args.index("--config") + 1] = str(workspace / "bad.yaml")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "stepz" in result.output


def test_evaluate_and_match_commands(workspace):
    runner = CliRunner()
    photos = sorted((workspace / "photos").iterdir())
    result = runner.invoke(main, ["keypoints", "evaluate", "--teacher", str(workspace / "teacher.pt"),
                                  "--model", f"mine={workspace / 'teacher.pt'}", "--images", str(workspace / "photos"),
                                  "--pairs-per-image", "1", "--height", "64", "--width", "96",
                                  "--out", str(workspace / "eval")])
    assert result.exit_code == 0, result.output
    rows = json.loads((workspace / "eval" / "metrics.json").read_text())["models"]
    assert rows["teacher"] == rows["mine"]  # the same weights give the same numbers
    plot = workspace / "m.png"
    result = runner.invoke(main, ["keypoints", "match", str(photos[0]), str(photos[0]),
                                  "--model", str(workspace / "teacher.pt"), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "mutual matches" in result.output and plot.exists()


def test_match_on_an_image_too_small_for_points_warns_and_device_is_accepted(workspace):
    tiny = workspace / "tiny.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(tiny)
    result = CliRunner().invoke(main, ["keypoints", "match", str(tiny), str(tiny), "--model",
                                        str(workspace / "teacher.pt"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "0 / 0 key points" in result.output
    assert "no key points in" in result.output and "tiny.png" in result.output and "8x8" in result.output


def test_input_scale_option_of_evaluate_and_match(workspace):
    runner = CliRunner()
    photo = str(sorted((workspace / "photos").iterdir())[0])
    teacher = str(workspace / "teacher.pt")
    args = ["keypoints", "evaluate", "--model", teacher, "--images", str(workspace / "photos"),
            "--pairs-per-image", "1", "--height", "64", "--width", "96"]
    runs = {}
    for scale in ("1", "2"):
        result = runner.invoke(main, [*args, "--input-scale", scale, "--out", str(workspace / f"x{scale}")])
        assert result.exit_code == 0, result.output
        runs[scale] = json.loads((workspace / f"x{scale}" / "metrics.json").read_text())["models"]["teacher"]
    assert runs["1"] != runs["2"]  # the option reaches the network: other points, other numbers
    result = runner.invoke(main, ["keypoints", "match", photo, photo, "--model", teacher, "--input-scale", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["keypoints", "match", photo, photo, "--model", teacher, "--input-scale", "9"])
    assert result.exit_code == 2 and "--input-scale" in result.output and "between 0.25 and 4" in result.output


def test_shipped_config_file_lists_every_default():
    from pathlib import Path

    from detkd.config import load_config_file
    from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG
    from detkd.config import to_plain

    shipped = load_config_file(Path(__file__).parents[1] / "configs" / "keypoints_distill.yaml")
    assert shipped == to_plain(DEFAULT_DISTILL_CONFIG)


def test_evaluate_on_hpatches_splits_illumination_and_viewpoint_and_states_the_size(workspace):
    from test_pairs import make_hpatches

    root = make_hpatches(workspace / "hpatches")
    result = CliRunner().invoke(main, ["keypoints", "evaluate", "--model", str(workspace / "teacher.pt"),
                                       "--hpatches", str(root), "--hpatches-size", "0", "--out", str(workspace / "hp")])
    assert result.exit_code == 0, result.output
    assert "10 pairs, at full size" in result.output
    assert "illumination pairs only (5)" in result.output and "viewpoint pairs only (5)" in result.output
    saved = json.loads((workspace / "hp" / "metrics.json").read_text())
    assert set(saved["by_kind"]) == {"illumination", "viewpoint"}
    result = CliRunner().invoke(main, ["keypoints", "evaluate", "--model", str(workspace / "teacher.pt"),
                                       "--hpatches", str(root), "--hpatches-size", "32"])
    assert "shrunk to a longer side of at most 32 px" in result.output


def test_evaluate_row_names_paths_with_equals_and_run_folders(workspace):
    odd = workspace / "lr=0.1"
    odd.mkdir()
    (odd / "student.pt").write_bytes((workspace / "teacher.pt").read_bytes())
    args = ["keypoints", "evaluate", "--images", str(workspace / "photos"), "--pairs-per-image", "1",
            "--height", "64", "--width", "96", "--out", str(workspace / "ev")]
    result = CliRunner().invoke(main, [*args, "--model", str(odd / "student.pt"), "--model", f"mine={odd}"])
    assert result.exit_code == 0, result.output
    rows = json.loads((workspace / "ev" / "metrics.json").read_text())["models"]
    assert set(rows) == {"student", "mine"} and rows["student"] == rows["mine"]
    twice = CliRunner().invoke(main, [*args, "--model", str(odd / "student.pt"), "--model", str(odd / "student.pt")])
    assert twice.exit_code == 2 and "two rows named 'student'" in twice.output
