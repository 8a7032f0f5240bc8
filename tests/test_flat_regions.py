"""No key points on constant regions: black borders, letterboxing and the fill of a warp."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detkd.data.images import builtin_photo
from detkd.geometry.homography import warp_image
from detkd.models.pretrained import DEFAULT_KEYPOINT_TEACHER, SHIPPED_MODELS
from detkd.models.keypoint_ops import FLAT_LOGIT_MARGIN, flatness, suppress_flat_regions
from detkd.models.superpoint import create_model
from detkd.models.weights import load_keypoint_model


def test_flatness_by_hand():
    """A 1x7 image with one step of 0.1 at column 3; radius 1 -> windows of 3x3 (shrunk at the border).

    Threshold 0.04: flat (1) where the window's range <= 0.02, 0 where >= 0.04, linear between.
    Columns 2 and 3 see the step (range 0.1 -> 0); columns 0, 1, 4, 5, 6 do not (range 0 -> 1).
    A step of 0.03 gives 2 - 2 * 0.03 / 0.04 = 0.5 next to it.
    """
    image = torch.tensor([[0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3]]).view(1, 1, 1, 7)
    assert flatness(image, 1, 0.04).flatten().tolist() == [1, 1, 0, 0, 1, 1, 1]
    soft = torch.tensor([[0.2, 0.2, 0.2, 0.23, 0.23]]).view(1, 1, 1, 5)
    torch.testing.assert_close(flatness(soft, 1, 0.04).flatten(), torch.tensor([1, 1, 0.5, 0.5, 1.0]))


def test_suppression_by_hand():
    """One cell, all pixels flat: every pixel bin ends at most MARGIN below the dustbin; textured pixels untouched."""
    logits = torch.zeros(1, 65, 1, 1)
    logits[0, 5] = 7.0  # a confident "point" at pixel (0, 5) of the cell
    flat = torch.zeros(1, 1, 8, 8)  # constant image: all flat
    out = suppress_flat_regions(logits, flat, threshold=0.02, radius=2)
    assert out[0, 64, 0, 0] == 0  # the dustbin is kept
    assert torch.all(out[0, :64] <= -FLAT_LOGIT_MARGIN)
    probability = out.softmax(1)[0, :64].max().item()
    assert probability < math.exp(-FLAT_LOGIT_MARGIN)
    textured = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(suppress_flat_regions(logits, textured, 0.02, 2), logits)  # texture everywhere: untouched
    assert torch.equal(suppress_flat_regions(logits, flat, 0.0, 2), logits)  # threshold 0: off


def shipped_models():
    shipped = {name: load_keypoint_model(model.path).eval() for name, model in SHIPPED_MODELS.items()}
    return {**shipped, "random fast-s": create_model("fast-s").eval(), "random tiny": create_model("tiny").eval()}


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_images_give_no_key_points(value):
    image = torch.full((1, 1, 96, 128), value)
    for name, model in shipped_models().items():
        assert model.extract(image)["keypoints"][0].shape[0] == 0, name


def test_a_warped_photo_gives_no_key_point_inside_its_fill():
    """A photo rotated and shrunk: its black fill gets no point farther than the window from the photo."""
    photo = torch.from_numpy(builtin_photo("camera"))[None, None]
    photo = F.interpolate(photo, size=(120, 160), mode="bilinear", align_corners=False)
    angle = math.radians(20)
    c, s = math.cos(angle) * 0.7, math.sin(angle) * 0.7
    homography = torch.tensor([[c, -s, 40.0], [s, c, 5.0], [0.0, 0.0, 1.0]])
    warped = warp_image(photo, homography)
    valid = warp_image(torch.ones_like(photo), homography) > 0.999
    # pixels farther than the flat window (radius 2) plus one from any valid pixel
    near_valid = F.max_pool2d(valid.float(), 7, stride=1, padding=3)[0, 0] > 0
    for name, model in shipped_models().items():
        if name != "teacher":
            continue  # random students have no trained detector; the gate is the same code
        points = model.extract(warped)["keypoints"][0].round().long()
        inside_fill = ~near_valid[points[:, 1], points[:, 0]]
        assert points.shape[0] > 20, "the photo part must still have key points"
        assert int(inside_fill.sum()) == 0, f"{name}: {int(inside_fill.sum())} key points inside the fill"


def test_ungated_teacher_fires_on_black_so_the_gate_is_what_helps():
    teacher = load_keypoint_model(DEFAULT_KEYPOINT_TEACHER, flat_threshold=0.0).eval()
    assert teacher.extract(torch.zeros(1, 1, 96, 128))["keypoints"][0].shape[0] > 50


@pytest.mark.parametrize("shape, radius", [((2, 1, 37, 53), 2), ((1, 3, 16, 9), 4), ((1, 1, 5, 5), 3), ((1, 1, 4, 4), 0),
                                          ((1, 2, 3, 70), 1), ((1, 1, 20, 30), 5), ((1, 1, 1, 1), 6)])
def test_window_max_equals_max_pooling(shape, radius):
    """The shifted-maxima window (eager) and max-pooling (traced for ONNX) give the same values."""
    from detkd.models.keypoint_ops import window_max

    values = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    expected = F.max_pool2d(values, 2 * radius + 1, stride=1, padding=radius) if radius else values
    assert torch.equal(window_max(values, radius), expected)


def test_sliding_max_by_hand():
    """Windows of 3, 1, 4 (doubling plus one overlapping step), 8 (doubling alone) along a row."""
    from detkd.models.keypoint_ops import sliding_max

    row = torch.tensor([3.0, 1, 4, 1, 5, 9, 2, 6])
    assert sliding_max(row, 3, dim=0).tolist() == [4, 4, 5, 9, 9, 9]
    assert sliding_max(row, 1, dim=0).tolist() == row.tolist()
    assert sliding_max(row, 4, dim=0).tolist() == [4, 5, 9, 9, 9]
    assert sliding_max(row, 8, dim=0).tolist() == [9]
    assert sliding_max(row[None].repeat(2, 1), 3, dim=1).tolist() == [[4, 4, 5, 9, 9, 9]] * 2
