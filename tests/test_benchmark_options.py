"""Options of the key-point benchmark scripts that name a student's structure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_benchmark_script

learning_curve = load_benchmark_script("learning_curve")
student_speed = load_benchmark_script("student_speed")
extra_photos = load_benchmark_script("extra_photos")


def test_learning_curve_student_options_are_yaml_values_of_structural_keys():
    parsed = learning_curve.parse_student_options(["head_channels=64", "channels=[8, 16, 32, 48]", "encoder=fast"])
    assert parsed == {"head_channels": 64, "channels": [8, 16, 32, 48], "encoder": "fast"}
    assert learning_curve.parse_student_options([]) == {}
    for bad in ("lr=0.1", "head_channels", "head_channels="):
        with pytest.raises(SystemExit, match="--student-option takes KEY=VALUE"):
            learning_curve.parse_student_options([bad])


def test_learning_curve_points_are_whole_numbers_of_the_points_section_and_name_the_cache():
    import argparse

    assert learning_curve.parse_points(["keypoints=1024", "grid_stride=0"]) == {"keypoints": 1024, "grid_stride": 0}
    assert learning_curve.parse_points([]) == {}
    for bad in ("views=3", "keypoints", "keypoints=-1", "keypoints=2.5"):
        with pytest.raises(SystemExit, match="--points takes KEY=N"):
            learning_curve.parse_points([bad])
    args = argparse.Namespace(
        train_size=[480, 640], teacher="aliked-n16", teacher_weights=None, teacher_point_scale=1.0, student="fast-s", init=None,
        student_option={}, views_per_image=16, loss={"point_descriptor_relation": 0.3},
        points={"keypoints": 1024}, batch_size=2, lr=1e-3, progress=False, lr_decay=0.8,
        lr_decay_every=1000, ema_decay=0.0, eval_size=[480, 640], pairs_per_image=8, work=Path("w"))
    config = learning_curve.distill_config(args, Path("t"), Path("v"), steps=10)
    assert config["points"]["keypoints"] == 1024 and config["points"]["grid_stride"] == 16
    assert config["teacher_cache"]["folder"] == str(Path("w") / "teacher_cache_aliked-n16_480x640_v16_points1024-16")
    assert config["teacher"]["point_scale"] == 1.0
    args.teacher_point_scale = 0.25  # other teacher outputs: another cache
    config = learning_curve.distill_config(args, Path("t"), Path("v"), steps=10)
    assert config["teacher"]["point_scale"] == 0.25
    assert config["teacher_cache"]["folder"] == str(Path("w") / "teacher_cache_aliked-n16_480x640_v16_points1024-16_scale0.25")


def test_student_speed_variant_specs():
    assert student_speed.parse_variant("fast-s") == ("fast-s", {})
    assert student_speed.parse_variant("fast-s:head_channels=64,descriptor_dim=128") == \
        ("fast-s", {"head_channels": 64, "descriptor_dim": 128})
    # the commas of a list are not option separators
    assert student_speed.parse_variant("fast-s:channels=[8,16,48,64],head_channels=64") == \
        ("fast-s", {"channels": [8, 16, 48, 64], "head_channels": 64})
    with pytest.raises(SystemExit, match="unknown variant 'fast-xl'"):
        student_speed.parse_variant("fast-xl")
    with pytest.raises(SystemExit, match="'nms_radius=2' in 'fast-s:nms_radius=2' is not KEY=VALUE"):
        student_speed.parse_variant("fast-s:nms_radius=2")
    model = student_speed.superpoint_family(["fast-s:head_channels=64,descriptor_dim=128"])[
        "fast-s:head_channels=64,descriptor_dim=128"]
    assert model.conf["head_channels"] == 64 and model.conf["descriptor_dim"] == 128
    assert model.conf["channels"] == (8, 16, 32, 32) and model.conf["max_keypoints"] == 1000


def test_descriptor_stride_grid_reading_by_hand():
    """benchmarks/descriptor_stride.py: at stride 1 a DISK teacher's grid is its own per-pixel map, read at its
    whole-pixel key points; at stride 8 it is the cell-centre map its students learn from."""
    import torch

    from detkd.models.keypoint_ops import sample_descriptors
    from detkd.models.keypoint_teachers import disk

    descriptor_stride = load_benchmark_script("descriptor_stride")
    torch.manual_seed(0)
    teacher = disk.build("disk").eval()
    image = torch.rand(1, 1, 48, 64)
    own = teacher.extract(image, max_keypoints=50, input_scale=1.0)
    at_1 = descriptor_stride.GridDescriptors(teacher, 1).extract(image, max_keypoints=50)
    torch.testing.assert_close(at_1["keypoints"][0], own["keypoints"][0])
    torch.testing.assert_close(at_1["descriptors"][0], torch.nn.functional.normalize(own["descriptors"][0], dim=-1),
                               rtol=0, atol=1e-5)
    grid_8 = descriptor_stride.GridDescriptors(teacher, 8)
    at_8 = grid_8.extract(image, max_keypoints=50)
    cells = teacher(image)["descriptors"]  # (1, 128, 6, 8) unit descriptors at the cell centres
    torch.testing.assert_close(at_8["descriptors"][0], sample_descriptors(own["keypoints"][0][None], cells)[0],
                               rtol=0, atol=1e-5)
    assert len(grid_8.cosines) == 1 and grid_8.cosines[0] < 1


def test_detection_benchmark_reuses_a_saved_teacher_and_refuses_one_that_does_not_fit(tmp_path, monkeypatch):
    """benchmarks/detection.py --save-teacher then --teacher-checkpoint: the same teacher scores the same on the same
    validation images without training; a file trained for another number of steps is refused with both named."""
    import json

    detection = load_benchmark_script("detection")
    common = ["detection.py", "--quick", "--sets", "shapes", "--runs", "baseline", "--teacher", "fcos_small_fpn",
              "--student", "fcos_tiny_fpn", "--repeats", "1", "--latency-size", "128", "--teacher-steps", "4"]
    teacher_file = tmp_path / "teacher.pt"
    monkeypatch.setattr("sys.argv", common + ["--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1"),
                                              "--save-teacher", str(teacher_file)])
    detection.main()
    monkeypatch.setattr("sys.argv", common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"),
                                              "--teacher-checkpoint", str(teacher_file)])
    detection.main()
    trained, given = (json.loads((tmp_path / o / "detection_quick.json").read_text())["results"]["shapes"]["rows"]["teacher"]
                      for o in ("o1", "o2"))
    assert given["map"] == trained["map"] and given["ap50"] == trained["ap50"]
    assert given["train_s"] == trained["train_s"] and given["checkpoint"] == str(teacher_file)
    assert not (tmp_path / "w2" / "shapes" / "teacher").exists()  # nothing trained

    # averaged students get their own rows and folders, beside the plain ones of the same seed
    monkeypatch.setattr("sys.argv", common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o4"),
                                              "--teacher-checkpoint", str(teacher_file), "--student-ema-decay", "0.9"])
    detection.main()
    rows = json.loads((tmp_path / "o4" / "detection_quick.json").read_text())["results"]["shapes"]["rows"]
    assert sorted(rows) == ["baseline+ema0.9", "teacher"]
    assert (tmp_path / "w2" / "shapes" / "baseline+ema0.9" / "model.pt").exists()
    assert "ema_decay: 0.9" in (tmp_path / "w2" / "shapes" / "baseline+ema0.9" / "config.yaml").read_text()

    monkeypatch.setattr("sys.argv", [a if a != "4" else "5" for a in common] + [
        "--work", str(tmp_path / "w3"), "--out", str(tmp_path / "o3"), "--teacher-checkpoint", str(teacher_file)])
    with pytest.raises(SystemExit, match=r"does not fit this benchmark: its steps 4 \(this benchmark's: 5\)"):
        detection.main()


def test_the_kept_teachers_load_safely_with_the_facts_the_benchmark_checks():
    from detkd.models.detection import count_parameters, load_detector
    from detkd.models.detection.weights import read_detector_extra

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "teachers" / "shapes256_fcos_small_fpn_4000.pt"
    model, extra = load_detector(path), read_detector_extra(path)
    assert model.name == "fcos_small_fpn" and count_parameters(model) == 999_426
    assert list(model.class_names) == ["circle", "triangle", "rectangle", "star", "cross"]
    assert extra["steps"] == 4000 and extra["train_size"] == [256, 256]
    assert extra["training_images"].startswith("1000 image(s), 2942 box(es)")
    assert [round(point["map"], 1) for point in extra["curve"]] == [28.2, 62.4, 73.3, 82.1]

    trees = Path(__file__).resolve().parents[1] / "benchmarks" / "teachers" / "trees256_fcos_small_fpn_3000.pt"
    model, extra = load_detector(trees), read_detector_extra(trees)
    assert model.name == "fcos_small_fpn" and list(model.class_names) == ["Tree"]
    assert extra["steps"] == 3000 and extra["train_size"] == [256, 256]
    assert extra["training_images"].startswith("70 image(s), 395 box(es) (Tree 395) from VOC ../shared/data/trees")


def test_keypoint_postprocessing_varies_only_the_copy_and_reports_shares_by_hand(tmp_path):
    """benchmarks/keypoint_postprocessing.py: each grid row is a copy with its own threshold and radius (the
    student itself keeps its settings), and the shares are the row's metric over the teacher's."""
    from detkd.models.superpoint import SuperPoint

    postprocessing = load_benchmark_script("keypoint_postprocessing")
    student = SuperPoint(channels=(8, 8, 8, 8), head_channels=8, descriptor_dim=16)
    row = postprocessing.variant(student, 0.06, 2)
    assert (row.conf["detection_threshold"], row.conf["nms_radius"]) == (0.06, 2)
    assert (student.conf["detection_threshold"], student.conf["nms_radius"]) == (0.015, 4)
    default = (0.015, 4)
    assert postprocessing.row_label(0.015, 4, default) == "threshold 0.015, NMS radius 4 (its own)"
    assert postprocessing.row_label(0.06, 2, default) == "threshold 0.06, NMS radius 2"
    refined = postprocessing.variant(student, 0.015, 4, 0)
    assert refined.conf["subpixel_radius"] == 0 and student.conf["subpixel_radius"] == 2
    assert postprocessing.row_label(0.015, 4, (0.015, 4, 2), 2) == "threshold 0.015, NMS radius 4, sub-pixel radius 2 (its own)"
    assert postprocessing.row_label(0.015, 4, (0.015, 4, 2), 0) == "threshold 0.015, NMS radius 4, sub-pixel radius 0"

    metrics = dict(num_keypoints=995.0, localization_error=1.19, **{"mma@3": 0.6, "homography_accuracy@1": 0.25,
                                                                     "homography_accuracy@3": 0.5})
    result = {"model": "student-x", "teacher_name": "aliked-n16", "command": "python ...", "date": "today",
              "threads": 1, "seconds": 1.0, "pairs": 24, "size": [240, 320], "seed": 1234, "teacher": metrics,
              "rows": {"threshold 0.06, NMS radius 2": {**metrics, "num_keypoints": 261.0, "mma@3": 0.45,
                                                        "homography_accuracy@1": 0.0}}}
    text = postprocessing.write_report(result, tmp_path / "pp")
    # 0.45 / 0.6 = 75%, 0 / 0.25 = 0%, 0.5 / 0.5 = 100%
    assert "| threshold 0.06, NMS radius 2 | 261 | 1.19 | 0.450 | 0.000 | 0.500 | 75% | 0% | 100% |" in text
    assert "| teacher: aliked-n16 | 995 |" in text and "(4.2 points)" in text
    assert (tmp_path / "pp.json").exists() and (tmp_path / "pp.md").read_text() == text


def test_ship_student_held_out_lines_come_from_the_anchors_file(tmp_path):
    """benchmarks/ship_student.py: the card's held-out rows and latency are the anchors file's, with XFeat's
    latency from the same run beside the student's (a loaded machine slows every row alike)."""
    import json

    ship_student = load_benchmark_script("ship_student")
    row = {"mma@3": 0.5, "homography_accuracy@1": 0.25, "homography_accuracy@3": 0.75, "repeatability": 0.4,
           "localization_error": 1.234}
    anchors = {"argv": ["--threads", "1"], "accuracy": {"photos": {"s": row, "s + LightGlue": {**row, "mma@3": 0.9}}},
               "cost": [{"model": "s", "latency_ms": 20.4, "gflops": 0.61}, {"model": "XFeat", "latency_ms": 51.6}]}
    (tmp_path / "anchors.json").write_text(json.dumps(anchors))
    lines = ship_student.heldout_lines(tmp_path / "anchors.json", "s")
    assert "| photos | mutual NN | 0.500 | 0.250 | 0.750 | 0.400 | 1.23 |" in lines
    assert "| photos | LightGlue | 0.900 | 0.250 | 0.750 | 0.400 | 1.23 |" in lines
    assert lines[-1] == ("Full extract at the benchmark's latency size, 1000 points: 20 ms (median, PyTorch on the CPU, "
                         "interleaved with the other models; XFeat's extract in the same run: 52 ms), 0.61 GFLOPs.")
    assert "holds no row 'other'" in ship_student.heldout_lines(tmp_path / "anchors.json", "other")[0]


def test_ship_student_names_a_fine_tuned_students_start_by_the_digest_of_the_file_it_started_from(tmp_path: Path):
    import hashlib

    from detkd.models.pretrained import SHIPPED_MODELS

    ship_student = load_benchmark_script("ship_student")
    digest = hashlib.sha256(SHIPPED_MODELS["student-fast-s"].path.read_bytes()).hexdigest()
    run = tmp_path / "run"  # a run started before runs recorded their start: the file shipped now
    run.mkdir()
    assert ship_student.initial_weights_text("student-fast-s", run) == (
        f"fine-tuned from `student-fast-s` as shipped before this file (sha256 `{digest[:16]}...`, card in git history)")
    assert ship_student.initial_weights_text("runs/x/student.pt", run) == "fine-tuned from `runs/x/student.pt`"
    assert ship_student.initial_weights_text(None, run) == ""
    # a run's own record of its step 0 wins over the file shipped now
    (run / "student_init.json").write_text(json.dumps({"init": "student-fast-s", "sha256": "ab" * 32}))
    assert ship_student.initial_weights_text("student-fast-s", run) == (
        f"fine-tuned from `student-fast-s` as it was when the run started (sha256 `{'ab' * 8}...`, card in git history)")


def test_learning_curve_extra_images_join_the_training_images_and_never_a_validation_photo(tmp_path: Path):
    train, extra, work = tmp_path / "train", tmp_path / "more", tmp_path / "work"
    train.mkdir()
    extra.mkdir()
    for name in ("a.png", "b.jpg"):
        (train / name).write_bytes(b"x")
    (extra / "c.jpg").write_bytes(b"y")
    (extra / "SOURCES.json").write_text("[]")  # not an image: not linked
    folder = learning_curve.add_extra_images(train, extra, work)
    assert folder == work / f"train_images+{tmp_path.name}-more"
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.jpg", "extra-c.jpg"]
    assert (folder / "extra-c.jpg").resolve() == (extra / "c.jpg").resolve()
    made = (folder / "a.png").lstat().st_mtime_ns
    assert learning_curve.add_extra_images(train, extra, work) == folder  # as wanted already: left alone
    assert (folder / "a.png").lstat().st_mtime_ns == made
    (extra / "d.png").write_bytes(b"w")  # the extra folder grew: the links follow
    assert sorted(p.name for p in learning_curve.add_extra_images(train, extra, work).iterdir()) == [
        "a.png", "b.jpg", "extra-c.jpg", "extra-d.png"]
    (extra / "d.png").unlink()
    (extra / learning_curve.VALIDATION_PHOTOS[0]).write_bytes(b"z")
    with pytest.raises(SystemExit, match="validation photos"):
        learning_curve.add_extra_images(train, extra, work)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="No .jpg or .png"):
        learning_curve.add_extra_images(train, empty, work)


def test_extra_photos_copy_guard_sees_a_resized_brighter_copy_not_another_picture():
    rng = np.random.default_rng(0)
    photo = (rng.random((48, 64)) * 200).astype(np.uint8)
    photo = np.kron(photo, np.ones((4, 4), np.uint8))  # (192, 256), blocky structure
    copy = np.asarray(Image.fromarray(photo).resize((128, 96))) // 2 + 60  # half the size, other brightness
    other = np.ascontiguousarray(photo[::-1, ::-1])
    probe = extra_photos.thumbnail(photo)
    assert np.linalg.norm(probe) == pytest.approx(1.0) and probe.mean() == pytest.approx(0.0, abs=1e-12)
    assert float(probe @ extra_photos.thumbnail(copy)) > extra_photos.DUPLICATE_CORRELATION
    assert float(probe @ extra_photos.thumbnail(other)) < extra_photos.DUPLICATE_CORRELATION


def test_scaled_students_change_the_input_scale_and_nothing_else(tmp_path):
    import torch

    from detkd.models.pretrained import shipped_model_path
    from detkd.models.weights import load_keypoint_model, read_keypoint_model_meta

    scaled_students = load_benchmark_script("scaled_students")
    assert scaled_students.main(["--students", "student-fast-s", "--scales", "1.5", "--out", str(tmp_path)]) == 0
    copy = tmp_path / "student-fast-s-x1.5.pt"
    shipped = load_keypoint_model(shipped_model_path("student-fast-s"))
    scaled = load_keypoint_model(copy)
    assert scaled.conf == {**shipped.conf, "input_scale": 1.5} and shipped.conf["input_scale"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), scaled.state_dict().values()))
    assert "input_scale 1.5" in read_keypoint_model_meta(copy)["note"]


def test_detection_benchmark_refuses_an_unknown_student_option_before_training(tmp_path, monkeypatch, capsys):
    detection = load_benchmark_script("detection")
    monkeypatch.setattr(sys, "argv", ["detection.py", "--quick", "--sets", "shapes", "--student", "fcos_nano_fpn",
                                      "--student-option", "head_conv=1", "--work", str(tmp_path)])
    with pytest.raises(SystemExit):
        detection.main()
    error = capsys.readouterr().err
    assert "head_conv: not an option of fcos_nano_fpn" in error and "head_convs" in error
    assert not any(tmp_path.iterdir())  # nothing was trained


def test_ship_student_writes_the_nms_radius_chosen_on_validation_into_the_shipped_file(tmp_path):
    """benchmarks/ship_student.py --nms-radius: the file keeps the new radius (a Predictor reads it from the conf),
    the card says so, and the run's own radius (or none given) changes nothing and adds no line."""
    from detkd.models.superpoint import SuperPoint
    from detkd.models.weights import load_keypoint_model, save_keypoint_model

    ship_student = load_benchmark_script("ship_student")
    student = SuperPoint(channels=(8, 8, 8, 8), head_channels=8, descriptor_dim=16, nms_radius=4)
    assert ship_student.set_nms_radius(student, None) == "" and student.conf["nms_radius"] == 4
    assert ship_student.set_nms_radius(student, 4) == "" and student.conf["nms_radius"] == 4
    line = ship_student.set_nms_radius(student, 3)
    assert line.startswith("- Post-processing: NMS radius 3 px") and "validated with 4" in line
    save_keypoint_model(student, tmp_path / "s.pt")
    assert load_keypoint_model(tmp_path / "s.pt").conf["nms_radius"] == 3
