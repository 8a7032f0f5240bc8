"""Warped training pairs: key points follow the pixels into both views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detkd.data.keypoint_pairs import PseudoLabelPairStream, keypoint_map, keypoint_splat_map, warped_valid_mask
from detkd.geometry import warp_points


def dots_photo(rng: np.random.Generator, size=(96, 128), count=25):
    photo = np.zeros(size, np.float32)
    points = np.stack([rng.uniform(10, size[1] - 10, count), rng.uniform(10, size[0] - 10, count)], 1)
    for x, y in np.round(points).astype(int):
        photo[y - 1 : y + 2, x - 1 : x + 2] = 0.5
        photo[y, x] = 1.0
    return photo, np.round(points).astype(np.float32)


def test_keypoint_map_by_hand():
    out = keypoint_map(np.array([[1.4, 0.6], [2.5001, 1.0], [9.0, 9.0]]), 3, 4)
    expected = np.zeros((3, 4), np.float32)
    expected[1, 1] = expected[1, 3] = 1.0  # (1.4, 0.6) -> col 1 row 1; (2.5001, 1) -> col 3; (9, 9) outside
    np.testing.assert_array_equal(out, expected)


def test_keypoint_splat_map_by_hand():
    out = keypoint_splat_map(np.array([[2.25, 0.5], [0.0, 2.0], [3.5, 2.0], [-0.5, 1.0]]), 3, 4)
    expected = np.zeros((3, 4), np.float32)
    # (2.25, 0.5): (1-a)(1-b) = 0.75 * 0.5 on col 2 row 0, a(1-b) = 0.25 * 0.5 on col 3 row 0, the same on row 1
    expected[0, 2] = expected[1, 2] = 0.375
    expected[0, 3] = expected[1, 3] = 0.125
    expected[2, 0] = 1.0  # (0, 2): a pixel centre, as keypoint_map
    expected[2, 3] = 0.5  # (3.5, 2): the other half falls off the right edge
    expected[1, 0] += 0.5  # (-0.5, 1): half off the left edge
    np.testing.assert_allclose(out, expected, atol=1e-6)
    whole = np.array([[1.0, 1.0], [3.0, 0.0]])
    np.testing.assert_array_equal(keypoint_splat_map(whole, 3, 4), keypoint_map(whole, 3, 4))
    assert keypoint_splat_map(np.array([[1.0, 1.0], [1.5, 1.0]]), 3, 4)[1, 1] == 1.0  # 1 + 0.5, capped
    assert keypoint_splat_map(np.zeros((0, 2)), 3, 4).sum() == 0


def test_valid_mask_by_hand():
    assert warped_valid_mask(np.eye(3), 16, 24, erode=2).min() == 1.0  # image edges are real pixels
    shift = np.array([[1.0, 0, 5], [0, 1, 0], [0, 0, 1]])  # view = source moved 5 px right
    mask = warped_valid_mask(shift, 16, 24, erode=2)
    assert mask[:, :7].max() == 0.0  # 5 empty columns + 2 eroded
    assert mask[:, 7:].min() == 1.0


def test_points_land_on_their_dots_in_both_views_and_h_relates_them():
    rng = np.random.default_rng(0)
    photo, points = dots_photo(rng)
    stream = PseudoLabelPairStream([photo], [points], height=64, width=96, zoom=(1.0, 1.0), seed=3)
    for k in range(4):
        sample = stream[k]
        for view in (0, 1):
            image = sample[f"image{view}"][0]
            rows, cols = torch.nonzero(sample[f"keypoint_map{view}"] > 0, as_tuple=True)
            assert len(rows) > 3
            # every labelled pixel sits on (or next to) the bright centre of a dot
            assert (image[rows, cols] > 0.45).float().mean() > 0.95
        # warping view-0 labels by H lands on view-1 labels (within rounding)
        rows0, cols0 = torch.nonzero(sample["keypoint_map0"] > 0, as_tuple=True)
        pts0 = torch.stack([cols0, rows0], 1).float()
        moved = warp_points(pts0, sample["homography"].double()).float()
        rows1, cols1 = torch.nonzero(sample["keypoint_map1"] > 0, as_tuple=True)
        pts1 = torch.stack([cols1, rows1], 1).float()
        inside = (moved[:, 0] > 1) & (moved[:, 1] > 1) & (moved[:, 0] < 94) & (moved[:, 1] < 62)
        cols_m, rows_m = moved[:, 0].round().long().clamp(0, 95), moved[:, 1].round().long().clamp(0, 63)
        inside &= sample["valid_mask1"][rows_m, cols_m] > 0  # labels are dropped where view 1 has no pixels
        distance = torch.cdist(moved[inside], pts1).min(dim=1).values
        assert len(distance) > 3 and (distance <= 1.5).float().mean() >= 0.9


def test_same_k_same_sample():
    rng = np.random.default_rng(1)
    photo, points = dots_photo(rng)
    a = PseudoLabelPairStream([photo], [points], height=64, width=96, seed=5)[7]
    b = PseudoLabelPairStream([photo], [points], height=64, width=96, seed=5)[7]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_soft_maps_keep_the_sub_pixel_position_in_both_views():
    photo = np.zeros((64, 96), np.float32)
    point = np.array([[45.3, 30.7]], np.float32)  # near the middle; the view is the whole photo (zoom 1)
    options = dict(height=64, width=96, zoom=(1.0, 1.0), seed=2)
    sample = PseudoLabelPairStream([photo], [point], soft_labels=True, **options).make_sample(0, np.random.default_rng(4))
    hard_only = PseudoLabelPairStream([photo], [point], **options).make_sample(0, np.random.default_rng(4))
    assert "soft_keypoint_map0" not in hard_only
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    centres = []
    for view in (0, 1):
        soft = sample[f"soft_keypoint_map{view}"]
        assert soft.sum().item() == pytest.approx(1.0, abs=1e-5)  # the point is inside both views here
        centres.append(torch.stack([(soft * xs).sum(), (soft * ys).sum()]))
        # the hard map is the same point, rounded
        hard = torch.nonzero(sample[f"keypoint_map{view}"])[0].flip(0).float()
        assert (hard - centres[-1]).abs().max() <= 0.5 + 1e-4
    moved = warp_points(centres[0][None], sample["homography"])[0]
    torch.testing.assert_close(moved, centres[1], atol=0.05, rtol=0)  # bilinear splat is exact for centroids
