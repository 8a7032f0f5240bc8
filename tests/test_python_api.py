"""detkd.keypoints: the jobs of the command line as documented functions."""

from __future__ import annotations

import numpy as np
import pytest

import detkd.keypoints as kp
from conftest import make_keypoint_workspace
from detkd.data.images import builtin_photo

TINY = {"eval.pairs_per_image": 1, "eval.height": 64, "eval.width": 96, "eval.max_keypoints": 100,
        "train.progress": False, "train.batch_size": 2, "train.checkpoint_every": 2}


@pytest.fixture()
def workspace(tmp_path):
    return make_keypoint_workspace(tmp_path, [(70, 100)] * 2)


def test_distill_then_evaluate_then_resume(workspace):
    out = workspace / "run"
    outcome = kp.distill(out, teacher=workspace / "teacher.pt", student="fast-s", images=workspace / "photos",
                         steps=2, height=64, width=96, eval_images=workspace / "photos", overrides=TINY)
    assert outcome.student_path == out / "student.pt" and outcome.student_path.exists()
    assert set(outcome.metrics) == {"teacher", "student"} and "HA@3" in outcome.table
    rows = kp.evaluate({"mine": out, "again": kp.load(out / "student.pt"), "sift": "sift"},
                       images=workspace / "photos", pairs_per_image=1, height=64, width=96, max_keypoints=100)
    assert rows["mine"] == rows["again"] == outcome.metrics["student"]  # same model, same pairs, same numbers
    assert set(rows) == {"mine", "again", "sift"}
    resumed = kp.distill(out, steps=4, resume=True)  # the run's own config.yaml: same student, 2 more steps
    assert kp.load(resumed.student_path).conf["encoder"] == "fast"


def test_match_finds_a_known_shift():
    image = builtin_photo("camera")[100:300, 100:340]
    shifted = np.zeros_like(image)
    shifted[:, 8:] = image[:, :-8]  # 8 pixels to the right
    result = kp.match(image, shifted, "default", max_keypoints=300, device="cpu")
    assert result["homography"] is not None and result["inliers"].sum() > 30
    np.testing.assert_allclose(result["homography"][0, 2], 8.0, atol=1.0)
    assert result["matches"].shape[1] == 2


def test_models_lists_shipped_models_families_and_opencv():
    names = kp.models()
    assert {"default", "student-fast-m", "aliked-n16", "sift"} <= set(names)


def test_load_names_a_run_folder_without_a_student(tmp_path):
    with pytest.raises(FileNotFoundError, match="no student.pt"):
        kp.load(tmp_path)
