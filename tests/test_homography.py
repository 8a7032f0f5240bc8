"""Random homographies and the geometry helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detkd.geometry import corner_error, points_inside, sample_homography, warp_image, warp_points
from detkd.geometry.homography import HomographyConfig


def test_views_inside_the_image_are_always_real_warps():
    rng = np.random.default_rng(0)
    corners = torch.tensor([[0.0, 0.0], [159.0, 0.0], [159.0, 119.0], [0.0, 119.0]], dtype=torch.float64)
    for _ in range(200):
        hom = sample_homography(120, 160, rng)
        in_source = warp_points(corners, torch.linalg.inv(hom))  # target corners seen in the source
        assert points_inside(in_source, 120, 160).all()
        assert corner_error(hom, torch.eye(3, dtype=torch.float64), 120, 160) > 0.5  # never the identity


def test_same_generator_seed_gives_the_same_homography():
    a = sample_homography(60, 80, np.random.default_rng(5), HomographyConfig(allow_outside=True))
    b = sample_homography(60, 80, np.random.default_rng(5), HomographyConfig(allow_outside=True))
    assert torch.equal(a, b)


def test_warp_points_and_corner_error_by_hand():
    shift = torch.tensor([[1.0, 0, 3], [0, 1, -2], [0, 0, 1]], dtype=torch.float64)
    moved = warp_points(torch.tensor([[1.0, 1.0], [0.0, 5.0]], dtype=torch.float64), shift)
    torch.testing.assert_close(moved, torch.tensor([[4.0, -1.0], [3.0, 3.0]], dtype=torch.float64))
    # every corner is off by (3, -2): error sqrt(13)
    assert corner_error(shift, torch.eye(3, dtype=torch.float64), 10, 10).item() == pytest.approx(13 ** 0.5)


def test_warp_image_moves_a_pixel_where_h_says():
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 5, 4] = 1.0  # (x=4, y=5)
    shift = torch.tensor([[1.0, 0, 3], [0, 1, 2], [0, 0, 1]])
    out = warp_image(image, shift)
    assert out[0, 0, 7, 7].item() == pytest.approx(1.0, abs=1e-4)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4)
