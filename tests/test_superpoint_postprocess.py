"""Key-point selection and sub-pixel refinement, eager and in the exportable graph, by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detkd.export.keypoints import KeypointPostprocess, topk_keypoints
from detkd.models.keypoint_ops import (
    detect_keypoints,
    input_size_multiple,
    scale_input,
    subpixel_offsets,
    subpixel_offsets_at,
    unscale_keypoints,
)
from detkd.models.superpoint import create_model


def _peak() -> torch.Tensor:
    heatmap = torch.zeros(1, 9, 9)
    heatmap[0, 4, 4] = 0.6
    heatmap[0, 4, 5] = 0.2  # right of the peak
    heatmap[0, 3, 4] = 0.2  # above it
    return heatmap


def test_subpixel_offsets_are_the_heatmap_centre_of_mass():
    offsets = subpixel_offsets(_peak(), radius=1)
    # Around (x=4, y=4): mass 1.0, x-moment 0.2 * (+1), y-moment 0.2 * (-1).
    assert offsets[0, :, 4, 4].tolist() == pytest.approx([0.2, -0.2])
    # Around (x=5, y=4): mass 1.0 (all three values are in its 3x3), x-moment 0.6 * -1 + 0.2 * -1.
    assert offsets[0, :, 4, 5].tolist() == pytest.approx([-0.8, -0.2])
    symmetric = torch.zeros(1, 5, 5)
    symmetric[0, 2, 1:4] = torch.tensor([0.1, 0.5, 0.1])
    assert subpixel_offsets(symmetric, radius=2)[0, :, 2, 2].tolist() == pytest.approx([0.0, 0.0])


def test_subpixel_offsets_at_given_pixels_equal_the_dense_ones_edges_included():
    peak = _peak()[0]
    xs, ys = torch.tensor([4, 5]), torch.tensor([4, 4])
    assert subpixel_offsets_at(peak, xs, ys, 1).tolist() == [pytest.approx([0.2, -0.2]), pytest.approx([-0.8, -0.2])]
    torch.manual_seed(0)
    heatmap = torch.rand(1, 13, 17)
    ys, xs = torch.meshgrid(torch.arange(13), torch.arange(17), indexing="ij")  # every pixel, borders too
    for radius in (1, 2, 3):
        dense = subpixel_offsets(heatmap, radius)[0, :, ys.flatten(), xs.flatten()].T
        torch.testing.assert_close(subpixel_offsets_at(heatmap[0], xs.flatten(), ys.flatten(), radius), dense)
    assert subpixel_offsets_at(heatmap[0], torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2).shape == (0, 2)
    with pytest.raises(ValueError, match="radius"):
        subpixel_offsets_at(heatmap[0], xs.flatten(), ys.flatten(), 0)


def test_subpixel_offsets_checks_its_inputs():
    with pytest.raises(ValueError, match="radius"):
        subpixel_offsets(_peak(), radius=0)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        subpixel_offsets(_peak()[None], radius=1)


def test_detect_keypoints_refines_only_when_asked():
    whole, scores = detect_keypoints(_peak(), nms_radius=1, threshold=0.1, border=0)
    assert whole[0].tolist() == [[4.0, 4.0]] and scores[0].tolist() == pytest.approx([0.6])
    refined, _ = detect_keypoints(_peak(), nms_radius=1, threshold=0.1, border=0, subpixel_radius=1)
    assert refined[0].tolist() == [pytest.approx([4.2, 3.8])]


def test_exportable_selection_gives_the_same_refined_points():
    torch.manual_seed(0)
    heatmap = torch.rand(2, 24, 32) ** 4
    eager, eager_scores = detect_keypoints(heatmap, nms_radius=2, threshold=0.3, border=3, subpixel_radius=2)
    points, scores, valid = topk_keypoints(heatmap, 2, 0.3, 3, k=64, subpixel_radius=2)
    for b in range(2):
        n = int(valid[b].sum())
        assert n == len(eager[b]) and n < 64  # padded to k
        torch.testing.assert_close(points[b, :n], eager[b])
        torch.testing.assert_close(scores[b, :n], eager_scores[b])
        assert points[b, n:].abs().sum() == 0  # padding stays (0, 0)


def test_model_extract_uses_its_subpixel_option():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    image = torch.rand(1, 1, 32, 40)
    refined = model.extract(image, detection_threshold=0.0, max_keypoints=8)["keypoints"][0]
    whole = model.extract(image, detection_threshold=0.0, max_keypoints=8, subpixel_radius=0)["keypoints"][0]
    assert model.conf["subpixel_radius"] == 2
    assert torch.equal(whole, whole.round())
    assert (refined - whole).abs().max() <= 2 and not torch.equal(refined, whole)


# ---------------------------------------------------------------------- input_scale
def test_unscale_keypoints_keeps_pixel_centres_aligned():
    points = torch.tensor([[9.0, 4.0], [-0.5, -0.5], [0.0, 0.0]])
    # x = (x' + 0.5) / s - 0.5: pixel 9 of the 2x image is 4.25 of the original; the image edge stays the edge.
    assert unscale_keypoints(points, 2.0, 2.0).tolist() == [[4.25, 1.75], [-0.5, -0.5], [-0.25, -0.25]]
    assert unscale_keypoints(points, 1.0, 1.0) is points


def test_scale_input_gives_the_size_and_the_exact_factors():
    image = torch.rand(1, 1, 24, 30)
    same, factors = scale_input(image, 1.0)
    assert same is image and factors == (1.0, 1.0)
    bigger, factors = scale_input(image, 1.5)
    assert bigger.shape == (1, 1, 36, 45) and factors == (1.5, 1.5)
    odd, factors = scale_input(torch.rand(1, 1, 5, 7), 1.5)  # 7.5 -> 8 rows, 10.5 -> 10 columns
    assert odd.shape == (1, 1, 8, 10) and factors == (10 / 7, 8 / 5)


def test_extract_at_input_scale_2_is_extract_of_the_upsampled_image_mapped_back():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    image = F.avg_pool2d(torch.rand(1, 1, 34, 42), 3, stride=1)  # 32x40, smooth enough to have peaks
    options = {"detection_threshold": 0.0, "max_keypoints": 12}
    scaled = model.extract(image, input_scale=2, **options)
    upsampled = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
    # NMS radius and border are input pixels: 4 of them are 8 pixels of the 2x image.
    direct = model.extract(upsampled, nms_radius=8, remove_borders=8, **options)
    assert len(scaled["keypoints"][0]) == len(direct["keypoints"][0]) >= 4
    torch.testing.assert_close(scaled["keypoints"][0], (direct["keypoints"][0] + 0.5) / 2 - 0.5)
    torch.testing.assert_close(scaled["descriptors"][0], direct["descriptors"][0])
    assert scaled["keypoints"][0].max() < 40 and scaled["keypoints"][0].min() >= 0


def test_input_scale_finds_a_corner_in_input_pixels():
    from detkd.models.pretrained import default_keypoint_teacher_path
    from detkd.models.weights import load_keypoint_model

    teacher = load_keypoint_model(default_keypoint_teacher_path()).eval()
    image = torch.full((1, 1, 48, 64), 0.2)
    image[..., 16:, 24:] = 0.9  # one corner: the square's top-left pixel is (x=24, y=16)
    for scale in (1.0, 1.5, 2.0):
        points = teacher.extract(image, input_scale=scale, max_keypoints=1)["keypoints"][0]
        # The corner lies between pixels 23 and 24 (x) and 15 and 16 (y): within 1.5 px of (23.5, 15.5).
        assert len(points) == 1 and torch.dist(points[0], torch.tensor([23.5, 15.5])) < 1.5, (scale, points)


def test_input_scale_is_checked_where_it_is_set():
    with pytest.raises(ValueError, match="input_scale"):
        create_model("tiny", input_scale=0)
    with pytest.raises(ValueError, match="input_scale"):
        create_model("tiny", input_scale="2")
    with pytest.raises(ValueError, match="input_scale"):
        create_model("tiny").extract(torch.rand(1, 1, 16, 16), input_scale=8)
    with pytest.raises(ValueError, match="input_scale 1.3 cannot be exported.*halves, quarters"):
        KeypointPostprocess(create_model("tiny", input_scale=1.3))
    with pytest.raises(ValueError, match="input_scale 0.5 cannot be exported.*at least 1"):
        KeypointPostprocess(create_model("tiny", input_scale=0.5))


def test_input_size_multiple_keeps_the_upsampled_image_whole_cells():
    # 1.5 = 3/2: sides of 16k pixels become 24k, whole 8-pixel cells; 1.25 = 5/4 needs 32k -> 40k.
    assert [input_size_multiple(s) for s in (1, 2, 3, 1.5, 1.25, 1.75, 0.5, 1.125)] == [8, 8, 8, 16, 32, 32, 16, 64]
    assert input_size_multiple(1.3) is None and input_size_multiple(4 / 3) is None  # not exact in binary


def test_extract_at_input_scale_1_5_pads_to_16_before_resizing():
    """A 40x56 image is padded to 48x64 (multiples of 16), resized to 72x96 (whole cells), the
    heatmap cropped to the image's 60x84; NMS radius and border are 4 * 1.5 = 6 heatmap pixels."""
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    image = F.avg_pool2d(torch.rand(1, 1, 42, 58), 3, stride=1)  # 40x56
    options = {"detection_threshold": 0.0, "max_keypoints": 12}
    scaled = model.extract(image, input_scale=1.5, **options)
    padded = F.pad(image, (0, 8, 0, 8))
    upsampled = F.interpolate(padded, size=(72, 96), mode="bilinear", align_corners=False)
    heads = model(upsampled)
    points, _ = detect_keypoints(heads["heatmap"][:, :60, :84], nms_radius=6, threshold=0.0, border=6,
                                 max_keypoints=12, subpixel_radius=model.conf["subpixel_radius"])
    assert len(points[0]) == len(scaled["keypoints"][0]) >= 4
    torch.testing.assert_close(scaled["keypoints"][0], (points[0] + 0.5) / 1.5 - 0.5)
