"""Homographies between images: sampling, warping points and images, corner error.

Conventions used everywhere in detkd:

* points are ``(x, y)`` in **pixels**; the centre of the top-left pixel is ``(0, 0)``
  and the image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``;
* a homography ``H`` (3x3) maps image A to image B: ``p_B ~ H @ [x_A, y_A, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.geometry as KG
import numpy as np
import torch


@dataclass
class HomographyConfig:
    """How strong random homographies are.

    The sample is built as perspective o rotation o scale o translation around the
    image centre; every magnitude is relative to the image size (or in degrees).
    """

    perspective: float = 0.1  # max corner displacement for the projective part, fraction of size
    scale: tuple[float, float] = (0.8, 1.25)  # isotropic zoom range
    rotation_deg: float = 25.0  # max absolute in-plane rotation
    translation: float = 0.1  # max shift, fraction of the image size
    allow_outside: bool = False  # if False, the view is shrunk to lie inside the image (no black borders)


def _corners(height: int, width: int) -> np.ndarray:
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)


def sample_homography(
    height: int,
    width: int,
    rng: np.random.Generator,
    config: HomographyConfig | None = None,
) -> torch.Tensor:
    """Draw a random homography that maps an image of ``height x width`` to a view of it.

    Args:
        height, width: image size in pixels.
        rng: NumPy generator; the same seed gives the same homography.
        config: magnitudes; :class:`HomographyConfig` defaults if ``None``.

    Returns:
        ``(3, 3)`` float64 tensor ``H`` mapping source pixels to target pixels.
        With ``allow_outside=False`` every target pixel comes from inside the source: a draw
        whose view would leave the image is shrunk about its centre until it fits.
    """
    cfg = config or HomographyConfig()
    src = _corners(height, width)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    size = np.array([width, height], np.float64)
    # Where do the target image's corners lie in the source? Relative to the centre first.
    angle = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    zoom = rng.uniform(*cfg.scale)
    pts = ((src - centre) / zoom) @ rot.T
    pts = pts + rng.uniform(-cfg.perspective, cfg.perspective, size=(4, 2)) * size
    shift_range = cfg.translation * size
    if cfg.allow_outside:
        shift = rng.uniform(-shift_range, shift_range)
    else:
        # Shrink the view about its centre until it fits, then shift it within the slack left,
        # so every draw is a real warp whose view lies wholly inside the source.
        half = (size - 1) / 2
        extent = np.abs(pts).max(axis=0)
        pts = pts * min(1.0, float(np.min(half / np.maximum(extent, 1e-9))))
        low = np.maximum(-shift_range, -half - pts.min(axis=0))
        high = np.minimum(shift_range, half - pts.max(axis=0))
        shift = rng.uniform(np.minimum(low, high), np.maximum(low, high))
    dst = pts + centre + shift
    # `dst` are source-image positions of the target corners: the target->source map.
    h_target_to_source = KG.get_perspective_transform(
        torch.from_numpy(src)[None], torch.from_numpy(dst)[None]
    )[0]
    return torch.linalg.inv(h_target_to_source)


def warp_points(points: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """Map points through a homography.

    Args:
        points: ``(..., N, 2)`` pixel coordinates ``(x, y)``.
        homography: ``(3, 3)`` or ``(..., 3, 3)`` matching the batch dims of ``points``.

    Returns:
        ``(..., N, 2)`` mapped points, same dtype as ``points``.
    """
    if points.shape[-1] != 2:
        raise ValueError(f"points must be (..., N, 2), got {tuple(points.shape)}")
    hom = homography.to(points.dtype)
    if hom.dim() == 2:
        hom = hom.expand(*points.shape[:-2], 3, 3) if points.dim() > 2 else hom
    if points.dim() == 2:
        return KG.transform_points(hom[None], points[None])[0]
    return KG.transform_points(hom, points)


def warp_image(
    image: torch.Tensor, homography: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Warp images so that pixel ``p`` of the source lands at ``H p`` in the output.

    Args:
        image: ``(B, C, H, W)`` float tensor.
        homography: ``(B, 3, 3)`` or ``(3, 3)`` source->target map in pixels.
        size: output ``(height, width)``; the input size if ``None``.

    Returns:
        ``(B, C, H', W')`` warped images; pixels with no source are 0.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
    hom = homography.to(image.dtype)
    if hom.dim() == 2:
        hom = hom.expand(image.shape[0], 3, 3)
    out_size = size or (image.shape[-2], image.shape[-1])
    return KG.warp_perspective(image, hom, out_size, mode="bilinear", align_corners=True)


def points_inside(points: torch.Tensor, height: int, width: int, border: float = 0.0) -> torch.Tensor:
    """Mask of points that lie inside an image of ``height x width``.

    Args:
        points: ``(..., 2)`` pixel coordinates.
        border: margin in pixels to stay away from the edge.

    Returns:
        ``(...)`` bool tensor.
    """
    x, y = points[..., 0], points[..., 1]
    return (
        (x >= border - 0.5)
        & (y >= border - 0.5)
        & (x <= width - 0.5 - border)
        & (y <= height - 0.5 - border)
    )


def corner_error(
    estimated: torch.Tensor, true: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Mean distance between the four image corners mapped by two homographies.

    This is the HPatches homography-estimation error (DeTone et al. 2018).

    Args:
        estimated, true: ``(3, 3)`` or ``(B, 3, 3)`` homographies from image A to image B.
        height, width: size of image A in pixels.

    Returns:
        ``()`` or ``(B,)`` mean corner error in pixels.
    """
    corners = torch.tensor(_corners(height, width), dtype=torch.float64)
    est = warp_points(corners, estimated.to(torch.float64)) if estimated.dim() == 2 else \
        warp_points(corners.expand(estimated.shape[0], 4, 2), estimated.to(torch.float64))
    ref = warp_points(corners, true.to(torch.float64)) if true.dim() == 2 else \
        warp_points(corners.expand(true.shape[0], 4, 2), true.to(torch.float64))
    return (est - ref).norm(dim=-1).mean(dim=-1)
