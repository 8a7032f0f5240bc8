"""Students whose descriptors come at stride 4 (``descriptor_stride: 4``): model, loss, files, export, CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from conftest import make_keypoint_workspace
from detkd.cli.main import main
from detkd.distill.keypoints import KeypointDistillationLoss, check_compatible_outputs, descriptors_at_cells
from detkd.models.keypoint_ops import sample_descriptors
from detkd.models.superpoint import create_model
from detkd.models.weights import load_keypoint_model, save_keypoint_model
from detkd.tasks.keypoints import build_student, load_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("variant", ["fast-s", "tiny"])  # the strided encoder and SuperPoint's VGG
def test_stride_4_descriptors_have_twice_the_rows_and_columns(variant):
    torch.manual_seed(0)
    model = create_model(variant, descriptor_stride=4, descriptor_dim=16).eval()
    out = model(torch.rand(2, 1, 40, 56))
    assert out["logits"].shape == (2, 65, 5, 7)
    assert out["descriptors"].shape == (2, 16, 10, 14)
    torch.testing.assert_close(out["descriptors"].norm(dim=1), torch.ones(2, 10, 14))
    # extract reads the stride-4 map: at the centre of fine cell (row 3, column 5), pixel (21.5, 13.5), its entry
    found = model.extract(torch.rand(1, 1, 40, 56))
    assert found["descriptors"][0].shape[1] == 16
    entry = sample_descriptors(torch.tensor([[[21.5, 13.5]]]), out["descriptors"][:1], stride=4)[0, 0]
    torch.testing.assert_close(entry, out["descriptors"][0, :, 3, 5])


def test_the_fine_projection_reads_the_stride_4_encoder_features_and_learns():
    torch.manual_seed(0)
    model = create_model("fast-s", descriptor_stride=4, descriptor_dim=16)
    assert model.descriptor_fine.conv.in_channels == model.conf["channels"][1]
    out = model(torch.rand(2, 1, 32, 32))
    out["descriptors"][:, 0].sum().backward()
    assert model.descriptor_fine.conv.weight.grad.abs().sum() > 0
    assert model.descriptor[0].conv.weight.grad.abs().sum() > 0  # the stride-8 head still contributes
    plain = create_model("fast-s", descriptor_dim=16)
    assert not hasattr(plain, "descriptor_fine") and plain.conf["descriptor_stride"] == 8
    with pytest.raises(ValueError, match="descriptor_stride must be one of"):
        create_model("fast-s", descriptor_stride=2)


def test_descriptors_at_cells_by_hand():
    # a (1, 2, 2, 4) stride-4 map: the 8x8 cell centres lie half-way between 2x2 blocks of it
    fine = torch.tensor([[[[1.0, 3.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]],
                          [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]]]])
    cells = descriptors_at_cells(fine, (1, 2))
    torch.testing.assert_close(cells[0, :, 0, 0], torch.tensor([1.0, 0.0]))  # block mean (2, 0), normalised
    torch.testing.assert_close(cells[0, :, 0, 1], torch.tensor([0.0, 1.0]))
    same = torch.randn(1, 2, 1, 2)
    assert descriptors_at_cells(same, (1, 2)) is same  # already on the cells


def test_the_loss_takes_a_stride_4_student_and_refuses_other_shapes():
    torch.manual_seed(0)
    teacher = create_model("tiny", descriptor_dim=16).eval()
    student = create_model("fast-s", descriptor_stride=4, descriptor_dim=16)
    image = torch.rand(2, 1, 32, 48)
    points = lambda heatmap: torch.tensor([[[5.0, 6.0], [20.5, 17.0]]]).expand(heatmap.shape[0], -1, -1)  # noqa: E731
    with torch.no_grad():
        t_out = teacher(image, select_points=points)
    s_out = student(image)
    terms = KeypointDistillationLoss()(t_out, s_out)
    expected_points = sample_descriptors(t_out["points"], s_out["descriptors"], stride=4)
    cosine = (1 - (expected_points * t_out["point_descriptors"]).sum(-1)).mean()
    torch.testing.assert_close(terms["point_descriptor_cosine"], cosine.detach())
    dense = descriptors_at_cells(s_out["descriptors"], t_out["descriptors"].shape[-2:])
    torch.testing.assert_close(terms["descriptor_cosine"], (1 - (dense * t_out["descriptors"]).sum(1)).mean().detach())
    terms["loss"].backward()
    odd = {**s_out, "descriptors": F.normalize(torch.randn(2, 16, 16, 24), dim=1)}  # stride 2
    with pytest.raises(ValueError, match="descriptor_stride must be 8 or 4"):
        check_compatible_outputs(t_out, odd)


def test_model_file_round_trip_keeps_the_stride(tmp_path):
    torch.manual_seed(0)
    model = create_model("fast-s", descriptor_stride=4, descriptor_dim=16).eval()
    save_keypoint_model(model, tmp_path / "fine.pt")
    loaded = load_keypoint_model(tmp_path / "fine.pt")
    assert loaded.conf["descriptor_stride"] == 4
    image = torch.rand(1, 1, 32, 40)
    torch.testing.assert_close(loaded(image)["descriptors"], model(image)["descriptors"])
    with pytest.raises(ValueError, match="describes at stride 4"):
        load_teacher(tmp_path / "fine.pt")


def test_student_option_builds_a_stride_4_student():
    teacher = create_model("tiny", descriptor_dim=16)
    student = build_student(teacher, "fast-s", True, descriptor_stride=4)
    assert student.conf["descriptor_stride"] == 4 and student.conf["descriptor_dim"] == 16


def test_onnx_export_of_a_stride_4_student_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from detkd.export.onnx import export_onnx

    torch.manual_seed(0)
    model = create_model("fast-s", descriptor_stride=4, descriptor_dim=32, max_keypoints=64)
    model.train()
    model(torch.rand(2, 1, 64, 80))  # BatchNorm statistics that are not the identity
    model.eval()
    result = export_onnx(model, tmp_path / "fine.onnx", 64, 80, verbose=False)
    assert all(value <= 1e-4 for value in result.parity.errors.values()), result.parity.errors
    raw = export_onnx(model, tmp_path / "fine_raw.onnx", 64, 80, raw_heads=True, verbose=False)
    assert all(value <= 1e-4 for value in raw.parity.errors.values()), raw.parity.errors


def test_distillation_of_a_stride_4_student_end_to_end(tmp_path):
    photos = make_keypoint_workspace(tmp_path, [(70, 90, 3)] * 2) / "photos"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "student": {"variant": "fast-s", "descriptor_stride": 4},
        "eval": {"pairs_per_image": 1, "height": 64, "width": 96, "max_keypoints": 100},
        "train": {"log_every": 1, "checkpoint_every": 2, "progress": False},
    }))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "keypoints", "distill", "--config", str(tmp_path / "config.yaml"), "--teacher", str(tmp_path / "teacher.pt"),
        "--images", str(photos), "--eval-images", str(photos), "--out", str(out), "--steps", "2",
        "--batch-size", "2", "--height", "64", "--width", "96",
    ])
    assert result.exit_code == 0, result.output
    assert "descriptor_stride 4" in result.output
    assert load_keypoint_model(out / "student.pt").conf["descriptor_stride"] == 4
