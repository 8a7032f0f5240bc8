"""Key-point selection and sub-pixel refinement, eager and in the exportable graph, by hand."""

from __future__ import annotations

import pytest
import torch

from detkd.export.keypoints import topk_keypoints
from detkd.models.superpoint import create_model, detect_keypoints, subpixel_offsets


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
