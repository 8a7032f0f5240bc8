"""Every model in detkd/assets: present, carded, small, working, and usable by name everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from detkd import Predictor
from detkd.cli.main import main
from detkd.data.images import builtin_photo
from detkd.export.sources import load_model_source
from detkd.models.keypoint_teachers import load_keypoint_teacher
from detkd.models.pretrained import SHIPPED_MODELS, shipped_model_path
from detkd.models.weights import load_keypoint_model

NAMES = list(SHIPPED_MODELS)
STUDENTS = [name for name, model in SHIPPED_MODELS.items() if model.role == "student"]


def test_there_is_a_teacher_and_at_least_two_students():
    assert SHIPPED_MODELS["default"].role == "teacher"
    assert len(STUDENTS) >= 2


@pytest.mark.parametrize("name", NAMES)
def test_each_shipped_model_has_its_file_and_a_model_card_with_held_out_numbers(name):
    model = SHIPPED_MODELS[name]
    assert shipped_model_path(name) == model.path and model.path.exists()
    card = model.card.read_text()
    assert "held-out" in card.lower() and "MMA@3" in card and "HA@3" in card


@pytest.mark.parametrize("name", STUDENTS)
def test_student_files_hold_their_weights_and_little_else_and_students_are_smaller_than_the_teacher(name):
    """float32 weights and a small header: a 79K-parameter student is a few hundred KB; every student is smaller
    than the shipped teacher (the teacher-sized student-fast-l-mnn, about ALIKED-n16's size, is 0.6 of it)."""
    student = load_keypoint_model(SHIPPED_MODELS[name].path)
    stored = sum(v.numel() for v in student.state_dict().values() if v.is_floating_point())
    assert SHIPPED_MODELS[name].path.stat().st_size < 4 * stored + 32_000
    teacher = load_keypoint_model(SHIPPED_MODELS["default"].path)
    assert sum(p.numel() for p in student.parameters()) < 0.65 * sum(p.numel() for p in teacher.parameters())
    if sum(p.numel() for p in student.parameters()) < 100_000:
        assert SHIPPED_MODELS[name].path.stat().st_size < 400_000


@pytest.mark.parametrize("name", NAMES)
def test_each_shipped_model_finds_matchable_points_on_a_photo(name):
    net = load_keypoint_model(SHIPPED_MODELS[name].path).eval()
    photo = torch.from_numpy(np.ascontiguousarray(builtin_photo("camera")))[None, None]
    out = net.extract(photo, max_keypoints=300)
    assert 100 <= len(out["keypoints"][0]) <= 300
    torch.testing.assert_close(out["descriptors"][0].norm(dim=-1), torch.ones(len(out["keypoints"][0])))


@pytest.mark.parametrize("name", NAMES)
def test_names_resolve_as_teacher_as_model_source_and_in_the_predictor(name):
    teacher, origin = load_keypoint_teacher(name)
    assert SHIPPED_MODELS[name].file in origin
    source = load_model_source(name)
    assert source.task == "keypoints" and source.module is not None
    reference = load_keypoint_model(SHIPPED_MODELS[name].path)
    for model in (teacher, source.module):
        assert torch.equal(next(iter(model.state_dict().values())), next(iter(reference.state_dict().values())))
    result = Predictor(name)(np.zeros((64, 96), np.uint8))
    assert len(result["keypoints"]) == 0  # a black image: no key points


def test_models_command_lists_every_shipped_model_with_its_size():
    result = CliRunner().invoke(main, ["keypoints", "models"])
    assert result.exit_code == 0, result.output
    for name in NAMES:
        line = next(line for line in result.output.splitlines() if line.strip().startswith(name + " "))
        assert "KB" in line and "not in this build" not in line


def test_match_accepts_a_student_by_name(tmp_path):
    image = (builtin_photo("camera")[:256, :256] * 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(tmp_path / "b.png")
    result = CliRunner().invoke(main, ["keypoints", "match", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                                       "--model", STUDENTS[0]])
    assert result.exit_code == 0, result.output
    assert "RANSAC inliers" in result.output


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="student-fast-m"):
        load_keypoint_teacher("student-huge")
