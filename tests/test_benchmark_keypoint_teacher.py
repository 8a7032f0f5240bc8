"""Smoke test of benchmarks/keypoint_teacher.py --quick on a random tiny SuperPoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_benchmark_script
from detkd.models.superpoint import create_model
from detkd.models.weights import save_keypoint_model


def fake_orthophoto(folder: Path) -> Path:
    """A textured 960x1920 stand-in for the aerial orthophoto: its right-hand held-out block
    (x >= 1440) gives two 480-px tiles."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    coarse = rng.random((60, 120))
    texture = np.kron(coarse, np.ones((16, 16))) * 0.7 + rng.random((960, 1920)) * 0.3
    Image.fromarray((texture * 255).astype(np.uint8)).save(folder / "ortho.png")
    return folder


def test_quick_run_writes_markdown_and_json(tmp_path: Path) -> None:
    bench = load_benchmark_script("keypoint_teacher")
    trees = fake_orthophoto(tmp_path / "trees")
    torch.manual_seed(0)
    teacher = save_keypoint_model(create_model("tiny").eval(), tmp_path / "teacher.pt")
    out = tmp_path / "results"
    argv = ["--quick", "--teacher", str(teacher), "--magicpoint", str(teacher), "--pairs-per-image", "2",
            "--shape-images", "2", "--out", str(out), "--threads", "1", "--trees", str(trees)]
    assert bench.main(argv) == 0
    assert not (out / "keypoint_teacher.md").exists()  # --quick never overwrites real results
    report = (out / "keypoint_teacher_quick.md").read_text()
    for needle in ("QUICK SMOKE TEST", "tree_tiles.py", "## Pairs: photos",
                   "## Pairs: trees", "## Pairs: all pairs", "VERDICT", "Pair by pair (8 pairs)", "MagicPoint",
                   "CPUs", "torch"):
        assert needle in report
    data = json.loads((out / "keypoint_teacher_quick.json").read_text())
    assert data["num_pairs"]["photos"] == 4 and data["num_pairs"]["trees"] == 4
    assert set(data["summary"]["combined"]) == {"teacher", "SIFT", "ORB"}
    assert set(data["synthetic_shapes"]) == {"MagicPoint", "teacher"}
    assert isinstance(data["verdict"]["combined"]["beats_both"], bool)
    assert len(data["per_pair"]["photos"]) == 4 * 3  # pairs x models
    assert data["paired"]["pairs"] == 8 and 0 <= data["paired"]["ha3_p"] <= 1


def test_verdict_is_strict() -> None:
    bench = load_benchmark_script("keypoint_teacher_verdict")
    summary = {"teacher": {"repeatability": 0.6, "homography_accuracy@3": 0.5},
               "SIFT": {"repeatability": 0.5, "homography_accuracy@3": 0.5}}
    v = bench.verdict(summary)
    assert v["repeatability"]["beats"] and not v["HA@3"]["beats"] and not v["beats_both"]
    lines = bench.verdict_lines({"combined": v}, {"combined": 10})
    assert any("only ties SIFT on HA@3" in line for line in lines)


def test_validation_split_uses_training_images_and_shows_the_native_scale(tmp_path: Path) -> None:
    bench = load_benchmark_script("keypoint_teacher")
    trees = fake_orthophoto(tmp_path / "trees")
    torch.manual_seed(0)
    teacher = save_keypoint_model(create_model("tiny", input_scale=2).eval(), tmp_path / "teacher.pt")
    out = tmp_path / "results"
    argv = ["--quick", "--split", "validation", "--teacher", str(teacher), "--shape-images", "0",
            "--out", str(out), "--threads", "1", "--trees", str(trees)]
    assert bench.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["keypoint_teacher_validation_quick.json",
                                                    "keypoint_teacher_validation_quick.md"]
    report = (out / "keypoint_teacher_validation_quick.md").read_text()
    assert "VALIDATION pairs of the teacher's training images" in report and "input scale 2" in report
    data = json.loads((out / "keypoint_teacher_validation_quick.json").read_text())
    assert data["data"]["split"] == "validation"
    assert data["data"]["photos"]["images"] == ["astronaut", "camera"]  # BUILTIN_TRAIN_PHOTOS, not held out
    assert all("_x1440" not in name for name in data["data"]["trees"]["images"])  # training block only
    assert list(data["summary"]["combined"]) == ["teacher", "teacher x1", "SIFT", "ORB"]
    # The override puts the teacher back at native scale: then there is no second row.
    assert bench.main([*argv, "--input-scale", "1"]) == 0
    data = json.loads((out / "keypoint_teacher_validation_quick.json").read_text())
    assert list(data["summary"]["combined"]) == ["teacher", "SIFT", "ORB"]


def test_sign_test_and_paired_comparison_by_hand() -> None:
    bench = load_benchmark_script("keypoint_teacher_verdict")
    # 5 wins, 0 losses: P(5-0 or 0-5) = 2 / 2^5 = 0.0625; 2 vs 1: P(split at least 2-1) = 2 * (1 + 3) / 8 -> 1.
    assert bench.sign_test_p(5, 0) == pytest.approx(0.0625)
    assert bench.sign_test_p(2, 1) == 1.0 and bench.sign_test_p(0, 0) == 1.0
    # 10 vs 2: 2 * (C(12,0) + C(12,1) + C(12,2)) / 4096 = 2 * 79 / 4096.
    assert bench.sign_test_p(10, 2) == pytest.approx(158 / 4096)

    def rec(set_name, pair, model, ha3, rep):
        return {"set": set_name, "pair": pair, "model": model, "homography_accuracy@3": ha3, "repeatability": rep}

    records = [
        rec("photos", "a/0", "teacher", 1.0, 0.6), rec("photos", "a/0", "SIFT", 0.0, 0.5),  # teacher only
        rec("photos", "a/1", "teacher", 1.0, 0.4), rec("photos", "a/1", "SIFT", 1.0, 0.5),  # both right
        rec("trees", "a/0", "teacher", 0.0, 0.7), rec("trees", "a/0", "SIFT", 1.0, 0.7),  # SIFT only; same name, other set
        rec("trees", "b/0", "teacher", 1.0, 0.9), rec("trees", "b/0", "SIFT", 0.0, 0.2),  # teacher only
        rec("trees", "b/0", "ORB", 1.0, 0.1),  # other models are ignored
    ]
    paired = bench.paired_comparison(records)
    assert paired == {"pairs": 4, "ha3_teacher_only": 2, "ha3_baseline_only": 1, "ha3_p": 1.0,
                      "rep_teacher_higher": 2, "rep_teacher_lower": 1, "rep_p": 1.0}
    assert "teacher only on 2, for SIFT only on 1" in bench.paired_lines(paired)[0]
