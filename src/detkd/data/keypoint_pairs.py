"""Warped training pairs of photos with pseudo-label key points (SuperPoint joint training).

Each sample is two views of one photo: view 0 = a random zoom and crop, view 1 = view 0
through a random homography ``H``; the photo's key points (from homographic adaptation) are
moved into both views. Points ``(x, y)`` in pixels, ``H`` maps view 0 to view 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch

from detkd.data.augment import PhotometricConfig, photometric_augment, resize_to_cover
from detkd.engine.task import StreamDataset
from detkd.geometry.homography import HomographyConfig, sample_homography


def keypoint_map(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` float32 map with 1 at each point rounded to its pixel (points outside are dropped)."""
    out = np.zeros((height, width), np.float32)
    if len(points):
        cols = np.round(points[:, 0]).astype(int)
        rows = np.round(points[:, 1]).astype(int)
        keep = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
        out[rows[keep], cols[keep]] = 1.0
    return out


def keypoint_splat_map(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` float32 map: each sub-pixel point spread bilinearly over its 4 nearest pixels.

    A point at ``(x, y)`` with ``x = i + a``, ``y = j + b`` (``0 <= a, b < 1``) puts
    ``(1-a)(1-b)`` on pixel ``(i, j)``, ``a(1-b)`` on ``(i+1, j)``, ``(1-a)b`` on ``(i, j+1)`` and
    ``ab`` on ``(i+1, j+1)``; a point on a pixel centre is a single 1, as in :func:`keypoint_map`.
    Weights falling outside the map are dropped; overlapping points add up, capped at 1.
    """
    out = np.zeros((height, width), np.float32)
    if not len(points):
        return out
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    ax, ay = x - x0, y - y0
    for dx, dy, weight in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)), (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
        cols, rows = x0 + dx, y0 + dy
        keep = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & (weight > 0)
        np.add.at(out, (rows[keep], cols[keep]), weight[keep].astype(np.float32))
    return np.minimum(out, 1.0)


def warped_valid_mask(homography: np.ndarray, height: int, width: int, erode: int = 3) -> np.ndarray:
    """``(H, W)`` float32 mask of view pixels that come from inside the source view."""
    ones = np.ones((height, width), np.float32)
    mask = cv2.warpPerspective(ones, homography, (width, height), flags=cv2.INTER_NEAREST, borderValue=0.0)
    if erode > 0:
        mask = cv2.erode(mask, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8))
    return mask


class PseudoLabelPairStream(StreamDataset):
    """Endless pairs of warped views with their pseudo-label key points.

    Args:
        images: ``(H, W)`` float32 photos in ``[0, 1]``.
        points: per photo, ``(N, 2)`` key points in that photo's pixels.
        height, width: view size (multiples of 8).
        zoom: random scale of the photo before cropping.
        homography: how strong the view-0 -> view-1 warp is.
        photometric: independent photometric noise on each view (``None``: off).
        soft_labels: also give ``soft_keypoint_map0/1`` (:func:`keypoint_splat_map`), which keep
            the points' sub-pixel positions that ``keypoint_map0/1`` round away.

    Samples: ``image0``, ``image1`` ``(1, H, W)``; ``keypoint_map0/1`` ``(H, W)``;
    ``valid_mask0/1`` ``(H, W)``; ``homography`` ``(3, 3)`` float32 view 0 -> view 1; with
    ``soft_labels``, ``soft_keypoint_map0/1`` ``(H, W)``.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        points: Sequence[np.ndarray],
        height: int = 240,
        width: int = 320,
        zoom: tuple[float, float] = (0.8, 1.2),
        homography: HomographyConfig | None = None,
        photometric: PhotometricConfig | None = None,
        seed: int = 0,
        soft_labels: bool = False,
    ) -> None:
        super().__init__(seed)
        if len(images) != len(points) or not images:
            raise ValueError(f"Need one point set per image, got {len(images)} images and {len(points)} point sets")
        if height % 8 or width % 8:
            raise ValueError(f"View size must be a multiple of 8, got {height}x{width}")
        self.images, self.points = list(images), list(points)
        self.height, self.width, self.zoom = height, width, zoom
        self.homography = homography or HomographyConfig(allow_outside=True)
        self.photometric = photometric
        self.soft_labels = soft_labels

    def num_items(self) -> int:
        return len(self.images)

    def make_sample(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        h, w = self.height, self.width
        photo, pts = self.images[item], self.points[item].astype(np.float64)
        zoom = rng.uniform(*self.zoom)
        ph, pw = photo.shape
        zoom = max(zoom, h / ph, w / pw)  # the view must fit inside the zoomed photo
        left = rng.uniform(0, pw * zoom - w)
        top = rng.uniform(0, ph * zoom - h)
        # photo pixel centre p -> view pixel centre: zoom*(p + 0.5) - 0.5 - offset
        to_view0 = np.array([[zoom, 0, 0.5 * zoom - 0.5 - left], [0, zoom, 0.5 * zoom - 0.5 - top], [0, 0, 1]])
        hom = sample_homography(h, w, rng, self.homography).numpy()
        views, maps, soft_maps, masks = [], [], [], []
        for transform, valid in ((to_view0, np.ones((h, w), np.float32)), (hom @ to_view0, warped_valid_mask(hom, h, w))):
            view = cv2.warpPerspective(photo, transform, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
            if self.photometric is not None:
                view = photometric_augment(view, rng, self.photometric)
            moved = cv2.perspectiveTransform(pts[None], transform)[0] if len(pts) else pts
            views.append(torch.from_numpy(view * valid)[None])
            maps.append(torch.from_numpy(keypoint_map(moved, h, w) * valid))
            if self.soft_labels:
                soft_maps.append(torch.from_numpy(keypoint_splat_map(moved, h, w) * valid))
            masks.append(torch.from_numpy(valid))
        sample = {
            "image0": views[0], "image1": views[1],
            "keypoint_map0": maps[0], "keypoint_map1": maps[1],
            "valid_mask0": masks[0], "valid_mask1": masks[1],
            "homography": torch.from_numpy(hom.astype(np.float32)),
        }
        if self.soft_labels:
            sample["soft_keypoint_map0"], sample["soft_keypoint_map1"] = soft_maps
        return sample


def resize_longer_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the longer side is ``size`` pixels (up or down), keeping the aspect."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    out = cv2.resize(image, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    return resize_to_cover(out, 8, 8)
