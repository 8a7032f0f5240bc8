"""The teacher pipeline end to end on tiny images: shapes -> adapt -> joint, then the paper's
second round (labels from the trained teacher, joint stage started from it)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from detkd.config import load_config_file, merge_config, set_dotted
from detkd.models.weights import load_keypoint_model
from detkd.tasks.keypoint_teacher import DEFAULT_TEACHER_CONFIG, run_teacher_training

TINY_TRAIN = {"steps": 2, "batch_size": 1, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1,
              "progress": False, "accelerator": "cpu"}


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        # Blocky texture: corners everywhere, so the detector has something to fire on.
        blocks = rng.integers(0, 256, (8, 10), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((8, 8), np.uint8))).save(folder / f"photo{k}.png")
    return folder


def tiny_config(photos: Path, **joint: object) -> dict:
    overrides = {
        "model.variant": "tiny",
        "shapes.height": 32, "shapes.width": 32,
        "adapt.images": str(photos), "adapt.longer_side": 80, "adapt.num_warps": 2, "adapt.warps_per_batch": 2,
        "adapt.threshold": 0.0,  # an untrained detector: keep its strongest peaks
        "joint.height": 48, "joint.width": 48, "joint.descriptor_loss": "infonce", "joint.descriptor_weight": 1.0,
        **{f"{stage}.train.{key}": value for stage in ("shapes", "joint") for key, value in TINY_TRAIN.items()},
        **{f"joint.{key}": value for key, value in joint.items()},
        "check.shapes_images": 4, "check.pairs_per_image": 1, "check.height": 48, "check.width": 64,
    }
    config = copy.deepcopy(DEFAULT_TEACHER_CONFIG)
    for dotted, value in overrides.items():
        set_dotted(config, dotted, value)
    return config


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "joint" / "history.jsonl").read_text().splitlines()]


def labels(run: Path) -> list[np.ndarray]:
    return [np.load(path)["points"] for path in sorted((run / "adapt").glob("*.npz"))]


def test_all_stages_then_a_second_round_from_the_teacher(photos: Path, tmp_path: Path, one_torch_thread):
    first = tmp_path / "round1"
    teacher = run_teacher_training(tiny_config(photos, consistency_weight=1.0, keypoint_descriptor_weight=1.0), first)
    assert teacher == first / "joint" / "superpoint.pt"
    assert load_keypoint_model(teacher).conf["channels"] == (32, 32, 32, 32)
    logged = history(first)
    assert logged[-1]["step"] == 2 and "consistency" in logged[-1]
    assert 0.0 <= logged[-1]["consistency"] <= 1.0
    assert logged[-1]["keypoint_descriptor"] >= 0.0
    assert len(list((first / "adapt").glob("*.npz"))) == 2
    # each stage ends with what a person checks: a picture or a held-out metric
    for made in ("shapes/detections.png", "adapt/pseudo_labels.png", "joint/metrics.md", "joint/metrics.json"):
        assert (first / made).exists(), made
    assert "teacher" in json.loads((first / "joint" / "metrics.json").read_text())["models"]

    assert all(np.array_equal(p, np.round(p)) for p in labels(first))  # default: whole-pixel labels (paper)

    # Round 2 has no shapes stage of its own: labeller and init name the round-1 teacher.
    # It also keeps the labels' sub-pixel positions, in the cache and in the detector targets.
    config = tiny_config(photos, init=str(teacher), soft_labels=True)
    config["adapt"]["labeller"] = str(teacher)
    config["adapt"]["subpixel_radius"] = 2
    second = tmp_path / "round2"
    run_teacher_training(config, second, stages=("adapt", "joint"))
    assert {"consistency", "keypoint_descriptor"}.isdisjoint(history(second)[-1])  # weight 0 (default): not computed
    assert np.isfinite(history(second)[-1]["detector"])
    assert any(not np.array_equal(p, np.round(p)) for p in labels(second))
    # The labels are keyed by the labeller's weights: none of round 1's cache files is reused.
    first_keys = {p.name for p in (first / "adapt").glob("*.npz")}
    second_keys = {p.name for p in (second / "adapt").glob("*.npz")}
    assert len(second_keys) == 2 and not first_keys & second_keys
    # adapt alone writes pseudo-labels, no model: it returns the folder, not a model path
    config["adapt"]["labeller"] = str(teacher)
    assert run_teacher_training(config, tmp_path / "round3", stages=("adapt",)) == tmp_path / "round3" / "adapt"


def test_missing_model_files_are_named(photos: Path, tmp_path: Path):
    config = tiny_config(photos, init=str(tmp_path / "nowhere.pt"))
    with pytest.raises(FileNotFoundError, match="adapt.labeller is null.*--stage shapes"):
        run_teacher_training(config, tmp_path / "run", stages=("adapt", "joint"))
    config["adapt"]["labeller"] = str(tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match="adapt.labeller: model file .*nowhere.pt"):
        run_teacher_training(config, tmp_path / "run", stages=("adapt", "joint"))


def test_config_yaml_holds_absolute_paths(photos: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(photos, init="nowhere.pt")
    config["adapt"]["labeller"] = "nowhere.pt"  # relative, refused after config.yaml is written
    config["adapt"]["extra_images"] = ["tiles"]
    with pytest.raises(FileNotFoundError):
        run_teacher_training(config, "run", stages=("adapt", "joint"))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["adapt"]["labeller"] == saved["joint"]["init"] == str(tmp_path / "nowhere.pt")
    assert saved["adapt"]["extra_images"] == [str(tmp_path / "tiles")]


@pytest.mark.parametrize(
    "name", ["keypoints_teacher_cpu.yaml", "keypoints_teacher_cpu_round2.yaml", "keypoints_teacher_cpu_round3.yaml"]
)
def test_shipped_teacher_configs_use_only_known_keys(name: str):
    path = Path(__file__).parents[1] / "configs" / name
    config = merge_config(DEFAULT_TEACHER_CONFIG, load_config_file(path), str(path))
    assert config["joint"]["descriptor_loss"] == "infonce"
    if "round2" in name:  # the second round starts from the first round's teacher
        assert config["adapt"]["labeller"] == config["joint"]["init"] == "runs/teacher/joint/superpoint.pt"
        assert config["joint"]["consistency_weight"] > 0
    if "round3" in name:  # round 2's labels, round 2's teacher as the start, plus the key-point descriptor loss
        assert config["adapt"]["labeller"] == "runs/teacher/joint/superpoint.pt"
        assert config["joint"]["init"] == "runs/teacher_round2/joint/superpoint.pt"
        assert config["joint"]["keypoint_descriptor_weight"] > 0 and config["joint"]["consistency_weight"] > 0
