"""The CPU students (encoder "fast"): shapes, stated sizes, model files, configs, distillation, ONNX."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import detkd.models.superpoint as superpoint
import detkd.models.superpoint_blocks as superpoint_blocks
from detkd.models.keypoint_ops import sample_descriptors
from conftest import distill_small_student
from detkd.cli.main import main
from detkd.config import merge_config
from detkd.models.superpoint import VARIANTS, SuperPoint, count_parameters, create_model, variant_parameter_counts
from detkd.models.weights import load_keypoint_model, save_keypoint_model
from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG, build_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = [name for name, conf in VARIANTS.items() if conf.get("encoder") == "fast"]


def test_there_are_fast_variants_and_the_default_stays_vgg():
    assert FAST == ["fast-s", "fast-m", "fast-l"]
    assert SuperPoint.default_conf["encoder"] == "vgg"
    assert all("encoder" not in VARIANTS[name] for name in ("superpoint", "half", "tiny"))


@pytest.mark.parametrize("name", FAST)
def test_output_shapes_at_an_odd_number_of_cells(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    image = torch.rand(2, 1, 72, 104)  # 9 x 13 cells
    out = model(image)
    dim, c4 = VARIANTS[name]["descriptor_dim"], VARIANTS[name]["channels"][-1]
    assert out["logits"].shape == (2, 65, 9, 13)
    assert out["heatmap"].shape == (2, 72, 104)
    assert out["descriptors"].shape == (2, dim, 9, 13)
    assert out["features"].shape == (2, c4, 9, 13)
    torch.testing.assert_close(out["descriptors"].norm(dim=1), torch.ones(2, 9, 13))
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.rand(1, 1, 70, 104))
    points = model.extract(torch.rand(1, 1, 70, 101), max_keypoints=50)  # any size: extract pads
    assert points["descriptors"][0].shape[1] == dim and len(points["keypoints"][0]) <= 50


def test_parameter_counts_in_the_variants_comments_are_exact():
    source = Path(superpoint.__file__).read_text()
    block = source[source.index("VARIANTS: dict"):]
    block = block[: block.index("\n}\n")]
    stated = {}
    comment = None
    for line in block.splitlines():
        found = re.search(r"#.*?([\d,]+) parameters\s*$", line)
        if found:
            comment = int(found.group(1).replace(",", ""))
        key = re.match(r'\s*"([\w-]+)": \{', line)
        if key:
            stated[key.group(1)] = comment
    counts = variant_parameter_counts()
    assert stated == counts
    assert all(count_parameters(create_model(name)) == counts[name] for name in FAST)


def test_fast_encoder_has_its_own_module_names_and_nothing_at_full_resolution():
    model = create_model("fast-s")
    keys = list(model.state_dict())
    assert keys[0] == "backbone.stem.conv.weight"
    assert not any(re.match(r"backbone\.\d+\.\d+\.", k) for k in keys)  # never read as a VGG encoder
    assert model.backbone.stem.conv.stride == (2, 2)
    vgg = create_model("tiny")
    assert list(vgg.state_dict())[0] == "backbone.0.0.conv.weight"  # VGG names unchanged
    with pytest.raises(ValueError, match="encoder must be one of"):
        SuperPoint(encoder="resnet")


@pytest.mark.parametrize("name", ["fast-s", "fast-m"])
def test_model_file_round_trip_is_bit_identical(name, tmp_path):
    torch.manual_seed(1)
    model = create_model(name, descriptor_dim=128, max_keypoints=300)
    model.train()
    model(torch.rand(2, 1, 32, 48))  # non-trivial BatchNorm statistics
    model.eval()
    loaded = load_keypoint_model(save_keypoint_model(model, tmp_path / "m.pt"))
    assert loaded.conf == model.conf and loaded.conf["encoder"] == "fast"
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    image = torch.rand(1, 1, 48, 64)
    assert torch.equal(loaded(image)["logits"], model(image)["logits"])


def test_config_student_section_overrides_the_variants_structure():
    teacher = create_model("tiny")
    config = merge_config(DEFAULT_DISTILL_CONFIG, {"student": {"variant": "fast-s", "channels": [8, 16, 24, 40],
                                                                "head_channels": 48}})
    student_cfg = config["student"]
    student = build_student(teacher, student_cfg["variant"], student_cfg["batch_norm"],
                            encoder=student_cfg["encoder"], channels=student_cfg["channels"],
                            head_channels=student_cfg["head_channels"], descriptor_dim=student_cfg["descriptor_dim"])
    assert student.conf["encoder"] == "fast" and student.conf["channels"] == (8, 16, 24, 40)
    assert student.conf["head_channels"] == 48 and student.conf["descriptor_dim"] == 256
    assert student.backbone.stage4.conv.out_channels == 40 and student.detector[0].conv.out_channels == 48
    vgg_fast = build_student(teacher, "tiny", True, encoder="fast")
    assert isinstance(vgg_fast.backbone, superpoint.FastEncoder)
    with pytest.raises(ValueError, match="teacher's 256"):
        build_student(teacher, "fast-s", True, descriptor_dim=128)


def test_distillation_of_a_fast_student_end_to_end(tmp_path):
    result, out = distill_small_student(tmp_path, {"variant": "fast-s", "channels": [8, 16, 32, 24]}, steps=3)
    assert result.exit_code == 0, result.output
    assert "fast-s with channels 8-16-32-24" in result.output
    student = load_keypoint_model(out / "student.pt")
    assert student.conf["encoder"] == "fast" and student.conf["channels"] == (8, 16, 32, 24)
    assert isinstance(student.backbone, superpoint.FastEncoder)
    checkpoint = load_keypoint_model(out / "checkpoints" / "last.pt")  # the trainer's checkpoint loads too
    assert checkpoint.conf["encoder"] == "fast"


def test_student_help_lists_every_variant_with_its_parameters():
    result = CliRunner().invoke(main, ["keypoints", "distill", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name, count in variant_parameter_counts().items():
        shown = f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.0f}K"
        assert f"{name} {shown}" in text


def test_onnx_export_of_the_smallest_fast_student_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from detkd.export.onnx import export_onnx

    smallest = min(FAST, key=lambda name: variant_parameter_counts()[name])
    torch.manual_seed(0)
    model = create_model(smallest, max_keypoints=64)
    model.train()
    model(torch.rand(2, 1, 64, 80))
    model.eval()
    result = export_onnx(model, tmp_path / "fast.onnx", 64, 80, verbose=False)
    assert result.path.exists()
    assert all(value <= 1e-4 for value in result.parity.errors.values()), result.parity.errors
    raw = export_onnx(model, tmp_path / "fast_raw.onnx", 64, 80, raw_heads=True, verbose=False)
    assert all(value <= 1e-4 for value in raw.parity.errors.values()), raw.parity.errors


@pytest.mark.parametrize("name", ["fast-s", "fast-m"])
def test_eval_mode_folds_batch_norm_into_the_convs_without_changing_outputs(name):
    torch.manual_seed(0)
    model = create_model(name)
    for module in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    image = torch.rand(1, 1, 48, 64)
    with torch.no_grad():
        folded = model(image)
        calls = []
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o: calls.append(m) if isinstance(m, torch.nn.BatchNorm2d) else None)
        model(image)
        hook.remove()
        folded_bn_calls = len(calls)
        superpoint_can_fold = superpoint_blocks.can_fold_batch_norm
        try:
            superpoint_blocks.can_fold_batch_norm = lambda module, bn: False  # the plain conv -> BatchNorm path
            plain = model(image)
        finally:
            superpoint_blocks.can_fold_batch_norm = superpoint_can_fold
    for key in ("logits", "descriptors", "features"):
        torch.testing.assert_close(folded[key], plain[key], rtol=1e-4, atol=1e-5)
    # only the heads' first blocks (conv -> ReLU -> BatchNorm: not foldable into their own conv) still run BatchNorm
    assert folded_bn_calls == 2
    assert model.train()(image)["logits"].requires_grad  # training mode: BatchNorm with batch statistics, as before


def test_sampled_descriptors_interpolate_between_cell_centres():
    descriptors = torch.randn(1, 8, 3, 4)
    # pixel (8*2 + 3.5, 8*1 + 3.5) is the centre of cell (row 1, column 2): that cell's descriptor
    centre = sample_descriptors(torch.tensor([[[19.5, 11.5]]]), descriptors)[0, 0]
    torch.testing.assert_close(centre, torch.nn.functional.normalize(descriptors[0, :, 1, 2], dim=0))
    # half-way between the centres of cells (1, 2) and (1, 3): their mean, normalised
    between = sample_descriptors(torch.tensor([[[23.5, 11.5]]]), descriptors)[0, 0]
    torch.testing.assert_close(between, torch.nn.functional.normalize(descriptors[0, :, 1, 2:4].mean(-1), dim=0))


def test_sampled_descriptors_at_another_stride_read_that_grid():
    # a stride-4 map whose descriptor at cell (i, j) is (1 + j, 1): the centre of cell (0, j) is pixel (4 j + 1.5, 1.5)
    columns = torch.arange(5.0)
    descriptors = torch.stack([1 + columns.expand(2, 5), torch.ones(2, 5)])[None]  # (1, 2, 2, 5)
    # x = 7.5 lies half-way between the centres of columns 1 (5.5) and 2 (9.5): (1 + 1.5, 1) = (2.5, 1)
    sampled = sample_descriptors(torch.tensor([[[7.5, 1.5]]]), descriptors, stride=4)[0, 0]
    torch.testing.assert_close(sampled, torch.tensor([2.5, 1.0]) / 7.25 ** 0.5)
