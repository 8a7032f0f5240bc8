"""The context pyramid of key-point students (``context_channels``): stride-16/32 context on stride-8 features."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_same_outputs_in_both_modes

from detkd.models.superpoint import create_model
from detkd.models.superpoint_blocks import ContextPyramid
from detkd.models.weights import load_keypoint_model, save_keypoint_model
from detkd.tasks.keypoint_students import initialise_student, structure_for_init


def with_running_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` after one training-mode pass (running statistics that are not the identity), in eval mode."""
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 1, 64, 80))
    return model.eval()


def test_pyramid_by_hand():
    # one channel, no BatchNorm, every 3x3 conv zero: down16 ends in relu(bias 2) = 2, down32 in relu(bias 3) = 3,
    # their sum 5 is projected by 0.5 x + 1 = 3.5 and added to every feature
    pyramid = ContextPyramid(1, 1, batch_norm=False).eval()
    for stage, bias in ((pyramid.down16, 2.0), (pyramid.down32, 3.0)):
        for block in stage:
            torch.nn.init.zeros_(block.conv.weight)
            torch.nn.init.zeros_(block.conv.bias)
        stage[1].conv.bias.data.fill_(bias)
    pyramid.project.conv.weight.data.fill_(0.5)
    pyramid.project.conv.bias.data.fill_(1.0)
    features = torch.tensor([[[[1.0, -2.0, 0.0], [4.0, 0.5, 3.0]]]])
    with torch.no_grad():
        torch.testing.assert_close(pyramid(features), features + 3.5)


@pytest.mark.parametrize(("height", "width"), [(64, 80), (120, 168), (8, 8)])
def test_shapes_are_kept_at_odd_cell_counts(height, width):
    model = create_model("fast-s", descriptor_dim=16, context_channels=12).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, height, width))
    assert out["features"].shape == (1, 32, height // 8, width // 8)
    assert out["logits"].shape == (1, 65, height // 8, width // 8)


def test_the_pyramid_widens_what_a_cell_sees():
    # a bright square in the top-left corner: the plain encoder's features 80 px and more to its right do not
    # change (each sees 55 px, +-27), the pyramid's do (each sees about 250 px, +-125)
    torch.manual_seed(0)
    image = torch.full((1, 1, 256, 256), 0.5)
    bright = image.clone()
    bright[..., :16, :16] = 1.0
    changed = {}
    for channels in (0, 16):
        model = with_running_statistics(create_model("fast-s", descriptor_dim=16, context_channels=channels))
        with torch.no_grad():
            delta = (model(bright)["features"] - model(image)["features"]).abs().amax(dim=1)[0]
        changed[channels] = delta[:2, 12:].amax().item()  # cells in its rows from x = 96 px on
    assert changed[0] == 0.0
    assert changed[16] > 0.0


def test_a_plain_student_grown_to_a_pyramid_starts_as_the_file(tmp_path):
    torch.manual_seed(0)
    plain = with_running_statistics(create_model("fast-s", descriptor_dim=16))
    path = save_keypoint_model(plain, tmp_path / "plain.pt")
    grown = create_model("fast-s", descriptor_dim=16, context_channels=24)
    assert "context pyramid" in initialise_student(grown, path)
    assert_same_outputs_in_both_modes(plain, grown, torch.rand(2, 1, 64, 80))
    # a fine-tune of a file with a pyramid keeps it unless the config says otherwise
    pyramid_file = save_keypoint_model(grown.eval(), tmp_path / "pyramid.pt")
    assert structure_for_init("fast-s", {"context_channels": None}, pyramid_file)["context_channels"] == 24
    # dropping it, or changing its width, is refused with the option named
    with pytest.raises(ValueError, match="context_channels 24.*context_channels 0"):
        initialise_student(create_model("fast-s", descriptor_dim=16), pyramid_file)
    with pytest.raises(ValueError, match="context_channels 24.*context_channels 32"):
        initialise_student(create_model("fast-s", descriptor_dim=16, context_channels=32), pyramid_file)


def test_model_file_round_trip_keeps_the_pyramid(tmp_path):
    torch.manual_seed(0)
    model = with_running_statistics(create_model("fast-s", descriptor_dim=16, context_channels=8))
    loaded = load_keypoint_model(save_keypoint_model(model, tmp_path / "ctx.pt"))
    assert loaded.conf["context_channels"] == 8
    image = torch.rand(1, 1, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image)["descriptors"], model(image)["descriptors"])


@pytest.mark.parametrize("bad", [-1, True, 2.5, "64"])
def test_bad_widths_are_refused(bad):
    with pytest.raises(ValueError, match="context_channels must be 0"):
        create_model("fast-s", context_channels=bad)


def test_onnx_export_matches_pytorch_at_a_second_size(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from detkd.export.onnx import export_onnx

    torch.manual_seed(0)
    model = with_running_statistics(create_model("fast-s", descriptor_dim=16, max_keypoints=32, context_channels=8))
    result = export_onnx(model, tmp_path / "ctx.onnx", 64, 80, dynamic=True, verbose=False)
    assert all(value <= 1e-4 for value in result.parity.errors.values()), result.parity.errors
