"""Synthetic shapes: reproducible, and the labels sit on the corners that were drawn."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import maximum_filter

from detkd.data.shape_canvas import Canvas, polygon_painter
from detkd.data.synthetic_shapes import SHAPE_KINDS, SyntheticShapesDataset, draw_synthetic_shape, keypoints_to_map
from detkd.geometry.homography import HomographyConfig

H, W = 120, 160
SUBPIX = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)


def subpix_moves(image: np.ndarray, corners: np.ndarray, border: float = 5.0) -> np.ndarray:
    """How far cv2.cornerSubPix (9x9 window) moves each label away from the image border."""
    x, y = corners[:, 0], corners[:, 1]
    keep = (x >= border) & (y >= border) & (x <= image.shape[1] - 1 - border) & (y <= image.shape[0] - 1 - border)
    pts = np.ascontiguousarray(corners[keep], np.float32).reshape(-1, 1, 2)
    if len(pts) == 0:
        return np.zeros(0)
    refined = cv2.cornerSubPix(image.astype(np.float32), pts.copy(), (4, 4), (-1, -1), SUBPIX)
    return np.linalg.norm((refined - pts)[:, 0], axis=1)


def collect(kind: str, n: int, seed: int = 0, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    moves = []
    for i in range(n):
        image, corners = draw_synthetic_shape(np.random.default_rng([seed, i]), H, W, kinds=kind)
        moves.append(subpix_moves(image, corners + np.float32(shift)))
    return np.concatenate(moves)


# ------------------------------------------------------------------------------ generator
def test_every_kind_draws_a_valid_image():
    for i, kind in enumerate(SHAPE_KINDS):
        image, corners, drawn = draw_synthetic_shape(np.random.default_rng(i), 64, 96, kinds=kind, return_kind=True)
        assert drawn == kind
        assert image.shape == (64, 96) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert corners.dtype == np.float32 and corners.ndim == 2 and corners.shape[1] == 2
        assert np.all((corners >= -0.5) & (corners <= np.array([96 - 0.5, 64 - 0.5])))
        if kind in ("ellipses", "background"):
            assert len(corners) == 0
        elif kind == "cube":
            assert len(corners) <= 7


@pytest.mark.parametrize("kind", ["polygon", "multiple_polygons", "checkerboard", "cube", "stripes"])
def test_labels_land_on_drawn_corners(kind):
    moves = collect(kind, n=10)
    assert len(moves) >= 20
    assert np.mean(moves < 1.0) >= 0.9, f"{kind}: only {np.mean(moves < 1.0):.2f} of labels within 1 px"
    assert np.median(moves) < 0.5


def test_corner_check_rejects_labels_that_are_off():
    """The check above has teeth: labels moved by 2 px mostly fail it."""
    moves = collect("polygon", n=10, shift=(1.5, -1.3))
    assert np.mean(moves < 1.0) < 0.5


def test_line_ends_are_corner_responses():
    """Line ends have no sharp vertex; a Shi-Tomasi peak lies within 1.5 px of each label."""
    hits = []
    for i in range(8):
        image, corners = draw_synthetic_shape(np.random.default_rng([5, i]), H, W, kinds="lines")
        resp = cv2.cornerMinEigenVal(image, blockSize=3, ksize=3)
        ys, xs = np.nonzero((resp == maximum_filter(resp, size=3)) & (resp > 1e-4))
        peaks = np.stack([xs, ys], 1)
        for x, y in corners:
            if 3 <= x <= W - 4 and 3 <= y <= H - 4:
                hits.append(np.hypot(peaks[:, 0] - x, peaks[:, 1] - y).min() <= 1.5)
    assert len(hits) >= 10 and np.mean(hits) >= 0.9


def test_drawing_follows_pixel_centre_convention():
    """Box-filtered coverage: drawn area and centroid equal the polygon's, to 1/50 px."""
    bg, colour = 0.2, 0.8
    canvas = Canvas(np.full((40, 50), bg, np.float32))
    poly = np.array([[10.3, 8.7], [37.1, 12.2], [30.6, 31.4], [12.9, 27.55]])
    sid = canvas.new_shape()
    canvas.paint(sid, *polygon_painter(poly, colour))
    cover = (canvas.render().astype(np.float64) - bg) / (colour - bg)
    x = np.roll(poly, -1, axis=0)
    cross = poly[:, 0] * x[:, 1] - x[:, 0] * poly[:, 1]
    area = cross.sum() / 2
    centroid = ((poly + x) * cross[:, None]).sum(0) / (6 * area)
    ys, xs = np.mgrid[0:40, 0:50]
    assert cover.sum() == pytest.approx(abs(area), rel=2e-3)
    assert (cover * xs).sum() / cover.sum() == pytest.approx(centroid[0], abs=0.02)
    assert (cover * ys).sum() / cover.sum() == pytest.approx(centroid[1], abs=0.02)


def test_corners_covered_by_a_later_shape_or_outside_are_removed():
    canvas = Canvas(np.zeros((40, 40), np.float32))
    first = np.array([[5.0, 5.0], [20.0, 5.0], [20.0, 20.0], [5.0, 20.0]])
    second = np.array([[15.0, 15.0], [30.0, 15.0], [30.0, 30.0], [15.0, 30.0]])  # covers (20, 20)
    third = np.array([[30.0, -5.0], [45.0, -5.0], [45.0, 10.0], [30.0, 10.0]])  # 3 corners outside
    for poly, value in ((first, 0.5), (second, 1.0), (third, 0.7)):
        sid = canvas.new_shape()
        canvas.paint(sid, *polygon_painter(poly, value))
        canvas.add_corners(sid, poly)
    kept = {tuple(p) for p in canvas.visible_corners().tolist()}
    assert kept == {(5.0, 5.0), (20.0, 5.0), (5.0, 20.0), *map(tuple, second.tolist()), (30.0, 10.0)}


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        draw_synthetic_shape(np.random.default_rng(0), kinds=["polygons"])
    with pytest.raises(ValueError, match="32x32"):
        draw_synthetic_shape(np.random.default_rng(0), 16, 16)
    with pytest.raises(ValueError, match="option"):
        SyntheticShapesDataset(hight=120)
    with pytest.raises(IndexError):
        SyntheticShapesDataset()[-1]


# ------------------------------------------------------------------------------ dataset
def test_dataset_is_deterministic_per_index():
    a, b = SyntheticShapesDataset(seed=3), SyntheticShapesDataset(seed=3)
    assert len(a) >= 10**9
    for k in (0, 7, 123_456_789_012):
        x, y = a[k], b[k]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["keypoint_map"], y["keypoint_map"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], SyntheticShapesDataset(seed=4)[0]["image"])


def test_sample_layout_and_keypoint_map_at_rounded_corners():
    ds = SyntheticShapesDataset(seed=1, kinds=["checkerboard", "cube"], max_keypoints=128)
    for k in range(3):
        s = ds[k]
        assert s["image"].shape == (1, H, W) and s["image"].dtype == torch.float32
        assert s["keypoint_map"].shape == (H, W) and s["valid_mask"].shape == (H, W)
        assert torch.all(s["valid_mask"] == 1)  # not warped
        n = int(s["num_keypoints"])
        kp = s["keypoints"][:n]
        assert n > 0 and torch.all(s["keypoints"][n:] == 0)
        expected = torch.zeros(H, W)
        cols = torch.floor(kp[:, 0] + 0.5).long().clamp(0, W - 1)
        rows = torch.floor(kp[:, 1] + 0.5).long().clamp(0, H - 1)
        expected[rows, cols] = 1
        assert torch.equal(s["keypoint_map"], expected)
        assert set(s["keypoint_map"].unique().tolist()) <= {0.0, 1.0}


def test_keypoints_to_map_rounding():
    kp = torch.tensor([[0.49, 0.5], [159.4, 119.2], [2.5, 3.49], [-0.6, 5.0]])
    m = keypoints_to_map(kp, H, W)
    assert m.sum() == 3  # the last point is outside the image
    assert m[1, 0] == 1 and m[119, 159] == 1 and m[3, 3] == 1


def test_augmentation_keeps_the_scene_and_moves_labels_with_the_image():
    plain = SyntheticShapesDataset(seed=2, kinds=["polygon", "checkerboard", "cube"])
    warped = SyntheticShapesDataset(
        seed=2, kinds=["polygon", "checkerboard", "cube"], homography_probability=1.0,
        homography=HomographyConfig(allow_outside=True),
    )
    moves, some_invalid = [], False
    for k in range(12):
        p, w = plain[k], warped[k]
        assert p["kind"] == w["kind"]
        assert not torch.equal(w["homography"], torch.eye(3))
        n = int(w["num_keypoints"])
        moves.append(subpix_moves(w["image"][0].numpy(), w["keypoints"][:n].numpy()))
        some_invalid |= bool((w["valid_mask"] == 0).any())
        # the homography maps the plain sample's corners onto the warped ones that stay inside
        from detkd.geometry.homography import points_inside, warp_points

        src = p["keypoints"][: int(p["num_keypoints"])].double()
        mapped = warp_points(src, w["homography"].double()).float()
        mapped = mapped[points_inside(mapped, H, W)]
        assert torch.allclose(mapped, w["keypoints"][:n], atol=1e-3)
    moves = np.concatenate(moves)
    assert len(moves) >= 30
    assert np.mean(moves < 1.0) >= 0.9 and np.median(moves) < 0.5
    assert some_invalid


def test_photometric_augmentation_changes_pixels_not_labels():
    from detkd.data.augment import PhotometricConfig

    plain = SyntheticShapesDataset(seed=5)
    photo = SyntheticShapesDataset(seed=5, photometric=PhotometricConfig(probability=1.0))
    a, b = plain[3], photo[3]
    assert torch.equal(a["keypoint_map"], b["keypoint_map"])
    assert not torch.equal(a["image"], b["image"])
    assert 0 <= b["image"].min() and b["image"].max() <= 1


def test_batches_collate():
    loader = torch.utils.data.DataLoader(SyntheticShapesDataset(seed=0), batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, H, W) and batch["keypoints"].shape == (4, 256, 2)
    assert batch["num_keypoints"].shape == (4,)
