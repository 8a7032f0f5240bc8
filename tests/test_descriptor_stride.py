"""Students that read descriptors from stride-4 features too (``descriptor_stride: 4``): model, loss, files, export, CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import distill_small_student
from detkd.distill.keypoints import KeypointDistillationLoss, check_compatible_outputs
from detkd.models.superpoint import create_model
from detkd.models.weights import load_keypoint_model, save_keypoint_model
from detkd.tasks.keypoints import build_student, load_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("variant", ["fast-s", "tiny"])  # the strided encoder and SuperPoint's VGG
def test_stride_4_descriptors_read_both_levels_at_the_point(variant):
    torch.manual_seed(0)
    model = create_model(variant, descriptor_stride=4, descriptor_dim=16)
    model.train()
    model(torch.rand(2, 1, 40, 56))  # BatchNorm statistics that are not the identity
    model.eval()
    image = torch.rand(1, 1, 40, 56)
    heads = model.heads(image)
    assert heads["coarse_descriptors"].shape == (1, 16, 5, 7) and heads["fine_features"].shape[-2:] == (10, 14)
    # by hand at pixel (x 7.5, y 11.5): on the stride-8 grid (centres 8 j + 3.5) half-way between columns 0 and 1
    # of row 1; on the stride-4 grid (centres 4 j + 1.5) at column 1.5, row 2.5: the mean of four cells
    coarse = heads["coarse_descriptors"][0]
    fine = model.descriptor_fine(heads["fine_features"])[0]
    expected = F.normalize((coarse[:, 1, 0] + coarse[:, 1, 1]) / 2 + fine[:, 2:4, 1:3].mean(dim=(1, 2)), dim=0)
    point = torch.tensor([[[7.5, 11.5]]])
    torch.testing.assert_close(model.describe(point, heads)[0, 0], expected)
    # the dense output is the same reading at the 8x8 cell centres, and forward reads points as extract does
    out = model(image, select_points=lambda heatmap: torch.tensor([[[19.5, 11.5], [7.0, 30.25]]]))
    assert out["descriptors"].shape == (1, 16, 5, 7)
    torch.testing.assert_close(out["point_descriptors"][0, 0], out["descriptors"][0, :, 1, 2])
    torch.testing.assert_close(out["point_descriptors"], model.describe(out["points"], heads))
    found = model.extract(torch.rand(1, 1, 45, 61))  # any size
    assert found["descriptors"][0].shape[1] == 16


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


def test_the_loss_reads_a_stride_4_students_own_point_descriptors():
    torch.manual_seed(0)
    teacher = create_model("tiny", descriptor_dim=16).eval()
    student = create_model("fast-s", descriptor_stride=4, descriptor_dim=16)
    image = torch.rand(2, 1, 32, 48)
    points = lambda heatmap: torch.tensor([[[5.0, 6.0], [20.5, 17.0]]]).expand(heatmap.shape[0], -1, -1)  # noqa: E731
    with torch.no_grad():
        t_out = teacher(image, select_points=points)
    s_out = student(image, select_points=points)
    terms = KeypointDistillationLoss()(t_out, s_out)
    cosine = (1 - (s_out["point_descriptors"] * t_out["point_descriptors"]).sum(-1)).mean()
    torch.testing.assert_close(terms["point_descriptor_cosine"], cosine.detach())
    terms["loss"].backward()
    assert student.descriptor_fine.conv.weight.grad.abs().sum() > 0  # the stride-4 projection learns
    elsewhere = {**s_out, "point_descriptors": s_out["point_descriptors"][:, :1]}
    with pytest.raises(ValueError, match="at the teacher's points"):
        check_compatible_outputs(t_out, elsewhere)


def test_the_task_lets_the_student_describe_the_teachers_points():
    from detkd.distill.keypoints import KeypointDistillWeights
    from detkd.tasks.keypoints import KeypointDistillationTask

    torch.manual_seed(0)
    teacher = create_model("tiny", descriptor_dim=16).eval()
    student = create_model("fast-s", descriptor_stride=4, descriptor_dim=16)
    calls = []
    original = student.forward

    def spy(image, select_points=None):
        calls.append(select_points is not None)
        return original(image, select_points=select_points)

    student.forward = spy
    task = KeypointDistillationTask.__new__(KeypointDistillationTask)
    torch.nn.Module.__init__(task)
    task.teacher, task.student = teacher, student
    task.loss = KeypointDistillationLoss(KeypointDistillWeights())
    task.points, task.second_view = None, None
    points = torch.tensor([[[5.0, 6.0], [20.5, 17.0]]])
    outputs = {**teacher(torch.rand(1, 1, 32, 48)), "points": points,
               "point_descriptors": F.normalize(torch.randn(1, 2, 16), dim=-1)}
    task.teacher_outputs = lambda batch: outputs
    terms = task({"image": torch.rand(1, 1, 32, 48)})
    assert calls == [True] and "point_descriptor_cosine" in terms


def test_a_stride_4_student_on_a_flat_image_returns_no_point_and_no_descriptor():
    """No key point (the flat-region gate on a constant image) leaves the sparse projection nothing to read: the
    extract returns ``(0, D)`` descriptors instead of a conv2d error."""
    model = create_model("fast-s", descriptor_stride=4, descriptor_dim=16).eval()
    out = model.extract(torch.full((1, 1, 64, 96), 0.5))
    assert out["keypoints"][0].shape == (0, 2) and out["descriptors"][0].shape == (0, 16)


def test_model_file_round_trip_keeps_the_stride(tmp_path):
    torch.manual_seed(0)
    model = create_model("fast-s", descriptor_stride=4, descriptor_dim=16).eval()
    save_keypoint_model(model, tmp_path / "fine.pt")
    loaded = load_keypoint_model(tmp_path / "fine.pt")
    assert loaded.conf["descriptor_stride"] == 4
    image = torch.rand(1, 1, 32, 40)
    torch.testing.assert_close(loaded(image)["descriptors"], model(image)["descriptors"])


def test_a_stride_4_teacher_needs_a_point_term_and_its_cache_holds_what_its_extract_reads(tmp_path):
    """A teacher assistant: a stride-4 student file as the teacher. Its dense map holds its descriptors at the
    cell centres only, so the run is refused without a point term; with one, the cache keeps the descriptors
    its extract reads at the points, and the cached loss is the online one."""
    import numpy as np

    from detkd.cache.keypoints import CachedTeacherViews, build_keypoint_teacher_cache, open_keypoint_cache
    from detkd.data.augment import CropConfig
    from detkd.data.keypoint_training import UnlabeledImageStream
    from detkd.distill.keypoints import PointSampling
    from detkd.models.keypoint_ops import sample_descriptors
    from detkd.tasks.keypoints import KeypointDistillationTask, check_teacher_points

    torch.manual_seed(0)
    model = create_model("fast-s", descriptor_stride=4, descriptor_dim=16)
    model.train()
    model(torch.rand(2, 1, 40, 56))  # BatchNorm statistics that are not the identity
    save_keypoint_model(model.eval(), tmp_path / "assistant.pt")
    teacher, origin = load_teacher(tmp_path / "assistant.pt")
    points = PointSampling(keypoints=5, grid_stride=16)
    with pytest.raises(ValueError, match="describes at stride 4.*point_descriptor_cosine"):
        check_teacher_points(teacher, origin, None)
    check_teacher_points(teacher, origin, points)
    check_teacher_points(create_model("tiny"), "stride 8", None)  # a stride-8 teacher needs no point term

    images = [np.random.default_rng(i).random((40, 60), dtype=np.float32) for i in range(2)]
    data = UnlabeledImageStream(images, CropConfig(height=32, width=48), None, seed=3)
    build_keypoint_teacher_cache(teacher, data, tmp_path / "cache", views_per_image=1, progress=False, points=points)
    views = CachedTeacherViews(data, open_keypoint_cache(tmp_path / "cache", teacher, data, points=points), 1)
    batch = torch.utils.data.default_collate([views[k] for k in range(2)])
    with torch.no_grad():
        own = teacher(batch["image"], select_points=lambda heatmap: batch["teacher_points"])
    # what its extract reads at the points (both maps; float16 in the cache) ...
    torch.testing.assert_close(batch["teacher_point_descriptors"].float(), own["point_descriptors"], rtol=0, atol=2e-3)
    # ... which its dense map, read between the cell centres, is not
    dense_read = sample_descriptors(batch["teacher_points"], own["descriptors"])
    assert (dense_read - own["point_descriptors"]).abs().max() > 4 * 2e-3
    student = create_model("fast-s", descriptor_stride=4, descriptor_dim=16)
    cached = KeypointDistillationTask(None, student, KeypointDistillationLoss(), views)(batch)
    online = KeypointDistillationTask(teacher, student, KeypointDistillationLoss(), data, points)({"image": batch["image"]})
    for key, value in online.items():  # float16 targets
        torch.testing.assert_close(cached[key], value, rtol=3e-3, atol=1e-4, msg=key)


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
    # a graph exported for any size reads the stride-4 cells of another size correctly
    from detkd.export.keypoints import KeypointPostprocess, compare_postprocessed
    from detkd.export.onnx import ort_session, photo_batch

    dynamic = export_onnx(model, tmp_path / "fine_dynamic.onnx", 64, 80, dynamic=True, max_keypoints=50, verbose=False)
    batch = photo_batch(["coffee", "rocket"], 1, 96, 128)
    got = ort_session(dynamic.path).run(None, {"image": batch.numpy()})
    with torch.no_grad():
        expected = KeypointPostprocess(model, 50)(batch)
    parity = compare_postprocessed([e.numpy() for e in expected], got, batch, 1e-4, post=KeypointPostprocess(model, 50))
    assert parity.unexplained == 0 and parity.errors["descriptors"] < 1e-4


def test_distillation_of_a_stride_4_student_end_to_end(tmp_path):
    result, out = distill_small_student(tmp_path, {"variant": "fast-s", "descriptor_stride": 4}, steps=2)
    assert result.exit_code == 0, result.output
    assert "descriptor_stride 4" in result.output
    assert load_keypoint_model(out / "student.pt").conf["descriptor_stride"] == 4
