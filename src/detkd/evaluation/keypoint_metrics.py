"""Key-point detection and matching metrics for one image pair with a known homography.

Every function here is pure: tensors in, numbers out. Conventions (as in
:mod:`detkd.geometry.homography`):

* key points are ``(N, 2)`` pixel coordinates ``(x, y)``, the centre of the top-left pixel
  being ``(0, 0)``;
* ``H`` is ``(3, 3)`` and maps image 0 to image 1;
* ``shape`` arguments are ``(height, width)`` in pixels;
* ``matches`` is a ``(K, 2)`` long tensor of indices ``(i, j)``: key point ``i`` of image 0
  with key point ``j`` of image 1 (see :mod:`detkd.evaluation.matching`).

Computation runs in float64 on the CPU, whatever the inputs' device and dtype.
Definitions follow SuperPoint (DeTone et al. 2018), D2-Net (Dusmanu et al. 2019) and
GoodPoint (Belikov & Potapov 2022); each docstring states exactly what is computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import cv2
import numpy as np
import torch

from detkd.evaluation.matching import mutual_nearest_neighbours
from detkd.geometry.homography import corner_error, points_inside, warp_points

MMA_THRESHOLDS = tuple(range(1, 11))  # pixels
HOMOGRAPHY_THRESHOLDS = (1, 3, 5)  # pixels
CORRECT_MATCH_THRESHOLD = 3.0  # pixels


# ---------------------------------------------------------------------- input checks
def _points(name: str, points: torch.Tensor) -> torch.Tensor:
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] != 2:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"{name} must be an (N, 2) tensor of (x, y) pixels, got {shape}")
    return points.detach().to("cpu", torch.float64)


def _homography(homography: torch.Tensor, name: str = "H") -> torch.Tensor:
    if not isinstance(homography, torch.Tensor) or homography.shape != (3, 3):
        shape = tuple(homography.shape) if isinstance(homography, torch.Tensor) else type(homography).__name__
        raise ValueError(f"{name} must be a (3, 3) tensor, got {shape}")
    return homography.detach().to("cpu", torch.float64)


def _shape(name: str, shape: Iterable[int]) -> tuple[int, int]:
    values = tuple(int(v) for v in shape)
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"{name} must be (height, width) in pixels, got {tuple(shape)}")
    return values  # type: ignore[return-value]


def _matches(matches: torch.Tensor, num0: int, num1: int) -> torch.Tensor:
    if not isinstance(matches, torch.Tensor) or matches.dim() != 2 or matches.shape[1] != 2:
        shape = tuple(matches.shape) if isinstance(matches, torch.Tensor) else type(matches).__name__
        raise ValueError(f"matches must be a (K, 2) tensor of indices, got {shape}")
    matches = matches.detach().to("cpu", torch.long)
    if len(matches) and (
        matches.min() < 0 or matches[:, 0].max() >= num0 or matches[:, 1].max() >= num1
    ):
        raise ValueError(
            f"match indices out of range for {num0} and {num1} key points "
            f"(max {matches[:, 0].max().item()}, {matches[:, 1].max().item()})"
        )
    return matches


# ---------------------------------------------------------------------- building blocks
def reprojection_errors(
    kpts0: torch.Tensor, kpts1: torch.Tensor, matches: torch.Tensor, H: torch.Tensor
) -> torch.Tensor:
    """Distance in image 1 between ``H kpts0[i]`` and ``kpts1[j]`` for each match ``(i, j)``.

    Returns:
        ``(K,)`` float64 errors in pixels.
    """
    kpts0, kpts1, H = _points("kpts0", kpts0), _points("kpts1", kpts1), _homography(H)
    matches = _matches(matches, len(kpts0), len(kpts1))
    if len(matches) == 0:
        return torch.zeros(0, dtype=torch.float64)
    warped = warp_points(kpts0[matches[:, 0]], H)
    return (warped - kpts1[matches[:, 1]]).norm(dim=-1)


def correct_matches(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    matches: torch.Tensor,
    H: torch.Tensor,
    threshold: float = CORRECT_MATCH_THRESHOLD,
) -> torch.Tensor:
    """``(K,)`` bool mask: the match's reprojection error is ``<= threshold`` pixels."""
    return reprojection_errors(kpts0, kpts1, matches, H) <= threshold


def shared_view_masks(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    H: torch.Tensor,
    shape0: tuple[int, int],
    shape1: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which key points are seen by both images.

    Returns:
        ``(N,)`` mask of ``kpts0`` whose warp by ``H`` lies inside image 1 and ``(M,)`` mask of
        ``kpts1`` whose warp by ``H^-1`` lies inside image 0.
    """
    kpts0, kpts1, H = _points("kpts0", kpts0), _points("kpts1", kpts1), _homography(H)
    (h0, w0), (h1, w1) = _shape("shape0", shape0), _shape("shape1", shape1)
    inside0 = points_inside(warp_points(kpts0, H), h1, w1)
    inside1 = points_inside(warp_points(kpts1, torch.linalg.inv(H)), h0, w0)
    return inside0, inside1


def ground_truth_correspondences(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    H: torch.Tensor,
    threshold: float = CORRECT_MATCH_THRESHOLD,
) -> torch.Tensor:
    """Pairs of detected key points that the homography says correspond.

    ``(i, j)`` is a ground-truth correspondence when ``H kpts0[i]`` and ``kpts1[j]`` are each
    other's nearest neighbour in image 1 (Euclidean pixel distance) and lie within
    ``threshold`` pixels. The pairs are one-to-one.

    Returns:
        ``(G, 2)`` long indices.
    """
    kpts0, kpts1, H = _points("kpts0", kpts0), _points("kpts1", kpts1), _homography(H)
    return mutual_nearest_neighbours(warp_points(kpts0, H), kpts1, max_distance=threshold)


# ---------------------------------------------------------------------- detector metrics
class Repeatability(NamedTuple):
    """Result of :func:`repeatability`."""

    repeatability: float  # share in [0, 1]
    localization_error: float  # pixels; NaN when no point is repeated
    num_repeated: int  # c0 + c1
    num_points: int  # n0 + n1 (points in the shared view)


def repeatability(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    H: torch.Tensor,
    shape0: tuple[int, int],
    shape1: tuple[int, int],
    threshold: float = 3.0,
) -> Repeatability:
    """Detector repeatability and localisation error (SuperPoint / HPatches definition).

    1. Keep the ``n0`` points of image 0 whose warp ``H kpts0`` lies inside image 1 and the
       ``n1`` points of image 1 whose warp ``H^-1 kpts1`` lies inside image 0.
    2. In image 1's frame, a kept point of image 0 is *repeated* when its nearest kept point
       of image 1 is within ``threshold`` pixels (count ``c0``); likewise each kept point of
       image 1 against the warped points of image 0 (count ``c1``).
    3. ``repeatability = (c0 + c1) / (n0 + n1)`` (0 when ``n0 + n1 = 0``);
       ``localization_error`` = mean nearest-neighbour distance over those ``c0 + c1``
       repeated points, in pixels (NaN when none).

    Args:
        kpts0: ``(N, 2)`` key points of image 0. kpts1: ``(M, 2)`` of image 1.
        H: ``(3, 3)`` image 0 -> image 1. shape0, shape1: ``(height, width)``.
        threshold: pixels.
    """
    kpts0, kpts1, H = _points("kpts0", kpts0), _points("kpts1", kpts1), _homography(H)
    inside0, inside1 = shared_view_masks(kpts0, kpts1, H, shape0, shape1)
    warped0 = warp_points(kpts0, H)[inside0]
    visible1 = kpts1[inside1]
    num_points = len(warped0) + len(visible1)
    if len(warped0) == 0 or len(visible1) == 0:
        return Repeatability(0.0, math.nan, 0, num_points)
    distances = torch.cdist(warped0, visible1)
    nearest0 = distances.min(dim=1).values
    nearest1 = distances.min(dim=0).values
    repeated0, repeated1 = nearest0 <= threshold, nearest1 <= threshold
    num_repeated = int(repeated0.sum() + repeated1.sum())
    error_sum = float(nearest0[repeated0].sum() + nearest1[repeated1].sum())
    return Repeatability(
        repeatability=num_repeated / num_points,
        localization_error=error_sum / num_repeated if num_repeated else math.nan,
        num_repeated=num_repeated,
        num_points=num_points,
    )


# ---------------------------------------------------------------------- matching metrics
def matching_accuracy(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    matches: torch.Tensor,
    H: torch.Tensor,
    thresholds: Iterable[float] = MMA_THRESHOLDS,
) -> dict[float, float]:
    """Matching accuracy of one pair, per threshold (D2-Net's MMA before averaging over pairs).

    For each match ``(i, j)`` the reprojection error is ``|H kpts0[i] - kpts1[j]|`` in image 1
    (no shared-view filtering). The accuracy at ``t`` is the share of matches whose error is
    ``<= t`` pixels; a pair without any match scores 0 at every threshold.

    Returns:
        ``{t: share in [0, 1]}`` in the order of ``thresholds``.
    """
    errors = reprojection_errors(kpts0, kpts1, matches, H)
    if len(errors) == 0:
        return {t: 0.0 for t in thresholds}
    return {t: float((errors <= t).double().mean()) for t in thresholds}


def matching_score(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    matches: torch.Tensor,
    H: torch.Tensor,
    shape0: tuple[int, int],
    shape1: tuple[int, int],
    threshold: float = CORRECT_MATCH_THRESHOLD,
) -> float:
    """Share of detected key points that end up correctly matched (SuperPoint / D2-Net).

    ``matching_score = C / ((n0 + n1) / 2)`` where ``n0``, ``n1`` are the key points of each
    image in the shared view (as in :func:`repeatability`, step 1) and ``C`` is the number of
    matches whose two ends are both in the shared view and whose reprojection error is
    ``<= threshold`` pixels. Matches are one-to-one, so the score lies in ``[0, 1]``;
    0 when the shared view holds no key point.
    """
    kpts0, kpts1 = _points("kpts0", kpts0), _points("kpts1", kpts1)
    matches = _matches(matches, len(kpts0), len(kpts1))
    inside0, inside1 = shared_view_masks(kpts0, kpts1, H, shape0, shape1)
    num_shared = (int(inside0.sum()) + int(inside1.sum())) / 2
    if num_shared == 0:
        return 0.0
    correct = correct_matches(kpts0, kpts1, matches, H, threshold)
    correct &= inside0[matches[:, 0]] & inside1[matches[:, 1]]
    return int(correct.sum()) / num_shared


def matching_recall(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    matches: torch.Tensor,
    H: torch.Tensor,
    threshold: float = CORRECT_MATCH_THRESHOLD,
) -> float:
    """Share of the ground-truth correspondences among detected points that the matcher found.

    ``matching_recall = |matches ∩ G| / |G|`` where ``G`` are the ground-truth correspondences
    of :func:`ground_truth_correspondences` (one-to-one pairs of detected points that are
    mutual nearest neighbours after warping by ``H`` and lie within ``threshold`` pixels).
    A predicted match counts only if it is exactly such a pair. 0 when ``G`` is empty.
    """
    kpts0, kpts1 = _points("kpts0", kpts0), _points("kpts1", kpts1)
    matches = _matches(matches, len(kpts0), len(kpts1))
    truth = ground_truth_correspondences(kpts0, kpts1, H, threshold)
    if len(truth) == 0:
        return 0.0
    width = max(len(kpts1), 1)
    found = torch.isin(matches[:, 0] * width + matches[:, 1], truth[:, 0] * width + truth[:, 1])
    return int(found.sum()) / len(truth)


def f1_recall_repeatability(recall: float, repeatability: float) -> float:
    """GoodPoint's F1 score: harmonic mean ``2 r p / (r + p)`` of matching recall ``r`` and
    repeatability ``p`` (both shares in ``[0, 1]``); 0 when both are 0."""
    total = recall + repeatability
    return 0.0 if total == 0 else 2.0 * recall * repeatability / total


# ---------------------------------------------------------------------- homography metrics
def estimate_homography(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    matches: torch.Tensor,
    ransac_threshold: float = 3.0,
    method: int = cv2.RANSAC,
    max_iterations: int = 2000,
    confidence: float = 0.995,
    seed: int = 0,
) -> torch.Tensor | None:
    """Robust homography from matched key points with OpenCV (image 0 -> image 1).

    Deterministic: OpenCV's global RNG is seeded with ``seed`` before the call (RANSAC draws
    from it; the USAC methods seed themselves).

    Args:
        ransac_threshold: maximum reprojection error of an inlier, pixels.
        method: ``cv2.RANSAC`` (SuperPoint's protocol), ``cv2.USAC_MAGSAC``, ...

    Returns:
        ``(3, 3)`` float64 tensor, or ``None`` with fewer than 4 matches or when OpenCV
        finds no model.
    """
    kpts0, kpts1 = _points("kpts0", kpts0), _points("kpts1", kpts1)
    matches = _matches(matches, len(kpts0), len(kpts1))
    if len(matches) < 4:
        return None
    source = kpts0[matches[:, 0]].numpy().astype(np.float64)
    target = kpts1[matches[:, 1]].numpy().astype(np.float64)
    cv2.setRNGSeed(seed)
    homography, _ = cv2.findHomography(
        source, target, method, ransac_threshold, maxIters=max_iterations, confidence=confidence
    )
    if homography is None or homography.shape != (3, 3) or not np.all(np.isfinite(homography)):
        return None
    return torch.from_numpy(homography)


def homography_correctness(
    H_est: torch.Tensor | None,
    H_true: torch.Tensor,
    shape: tuple[int, int],
    thresholds: Iterable[float] = HOMOGRAPHY_THRESHOLDS,
) -> dict[float, bool]:
    """Is the estimated homography correct at each threshold (SuperPoint / HPatches)?

    Correct at ``t`` when the mean distance between the four corners of image 0
    (``shape = (height, width)``) mapped by ``H_est`` and by ``H_true`` is ``<= t`` pixels
    (:func:`detkd.geometry.homography.corner_error`). ``H_est = None`` is never correct.
    Averaged over pairs this gives the homography accuracy.
    """
    H_true = _homography(H_true, "H_true")
    height, width = _shape("shape", shape)
    if H_est is None:
        return {t: False for t in thresholds}
    error = float(corner_error(_homography(H_est, "H_est"), H_true, height, width))
    return {t: bool(math.isfinite(error) and error <= t) for t in thresholds}
