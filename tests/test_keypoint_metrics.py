"""Key-point metrics on hand-built cases whose answers are worked out in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from detkd.evaluation.keypoint_metrics import (
    estimate_homography,
    f1_recall_repeatability,
    ground_truth_correspondences,
    homography_correctness,
    matching_accuracy,
    matching_recall,
    matching_score,
    repeatability,
)
from detkd.evaluation.matching import (
    mutual_nearest_neighbours,
    mutual_nearest_neighbours_with_distances,
)
from detkd.geometry.homography import warp_points

SHAPE = (64, 96)  # height, width of both images


def translation(dx: float, dy: float) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def points(*xy: tuple[float, float]) -> torch.Tensor:
    return torch.tensor(xy, dtype=torch.float64)


# ---------------------------------------------------------------------- matching
def test_mutual_nearest_neighbours_finds_mutual_pairs_only():
    desc0 = torch.eye(4)[:3]  # e0, e1, e2
    # image 1: e1, e0, a vector close to e0 too, and e3 (nobody's neighbour)
    near_e0 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.3, 0.0, 0.0]]), dim=-1)
    desc1 = torch.cat([torch.eye(4)[[1, 0]], near_e0, torch.eye(4)[[3]]])
    matches, distances = mutual_nearest_neighbours_with_distances(desc0, desc1)
    # e0 <-> e0 (row 1), e1 <-> e1 (row 0); the near-e0 row and e2 have no mutual partner
    assert matches.tolist() == [[0, 1], [1, 0]]
    assert matches.dtype == torch.long
    assert torch.allclose(distances, torch.zeros(2))


def test_mutual_nearest_neighbours_max_distance_and_empty():
    desc0 = torch.eye(3)
    desc1 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), dim=-1)
    # distance of e1 to (0, 1, 1)/sqrt2 = sqrt(2 - sqrt2) = 0.765
    assert mutual_nearest_neighbours(desc0, desc1).tolist() == [[0, 0], [1, 1]]
    assert mutual_nearest_neighbours(desc0, desc1, max_distance=0.5).tolist() == [[0, 0]]
    for a, b in [(torch.zeros(0, 3), desc1), (desc0, torch.zeros(0, 3)), (torch.zeros(0, 3),) * 2]:
        empty = mutual_nearest_neighbours(a, b)
        assert empty.shape == (0, 2) and empty.dtype == torch.long


def test_mutual_nearest_neighbours_rejects_bad_shapes():
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        mutual_nearest_neighbours(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        mutual_nearest_neighbours(torch.zeros(3), torch.zeros(2, 3))


# ---------------------------------------------------------------------- repeatability
def test_repeatability_two_of_three_with_out_of_view_points():
    H = translation(5, 0)
    # image 0: three points, plus (93, 5) which lands at (98, 5), outside image 1 (x <= 95.5)
    kpts0 = points((10, 10), (20, 20), (30, 30), (93, 5))
    # image 1: (15,10) exact, (25,21) 1 px off, (60,40) an outlier, (2,30) maps to (-3,30): outside
    kpts1 = points((15, 10), (25, 21), (60, 40), (2, 30))
    result = repeatability(kpts0, kpts1, H, SHAPE, SHAPE, threshold=3)
    # n0 = n1 = 3; warped (35,30) and (60,40) have no neighbour within 3 px -> c0 = c1 = 2
    assert result.num_points == 6 and result.num_repeated == 4
    assert result.repeatability == pytest.approx(2 / 3)
    assert result.localization_error == pytest.approx((0 + 1 + 0 + 1) / 4)
    # a tighter threshold keeps only the exact pair: (1 + 1) / 6, error 0
    tight = repeatability(kpts0, kpts1, H, SHAPE, SHAPE, threshold=0.5)
    assert tight.repeatability == pytest.approx(1 / 3) and tight.localization_error == 0.0


def test_repeatability_without_points():
    none = torch.zeros(0, 2)
    result = repeatability(none, points((1, 1)), torch.eye(3), SHAPE, SHAPE)
    assert result.repeatability == 0.0 and math.isnan(result.localization_error)
    assert result.num_points == 1
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        repeatability(torch.zeros(3, 3), none, torch.eye(3), SHAPE, SHAPE)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        repeatability(none, none, torch.eye(2), SHAPE, SHAPE)


# ---------------------------------------------------------------------- matching accuracy
def test_matching_accuracy_per_threshold():
    H = translation(5, 0)
    kpts0 = points((10, 10), (20, 20), (30, 30), (40, 40))
    # reprojection errors: 0, 0.5, 2, 20
    kpts1 = points((15, 10), (25.5, 20), (35, 32), (45, 60))
    matches = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]])
    mma = matching_accuracy(kpts0, kpts1, matches, H)
    assert list(mma) == list(range(1, 11))
    assert mma[1] == 0.5 and mma[2] == 0.75 and mma[10] == 0.75
    assert matching_accuracy(kpts0, kpts1, matches, H, thresholds=(20,)) == {20: 1.0}
    assert matching_accuracy(kpts0, kpts1, torch.zeros(0, 2, dtype=torch.long), H, (1, 3)) == {1: 0.0, 3: 0.0}
    with pytest.raises(ValueError, match="out of range"):
        matching_accuracy(kpts0, kpts1, torch.tensor([[0, 4]]), H)


# ---------------------------------------------------------------------- matching score / recall / F1
def test_matching_score_counts_correct_matches_in_the_shared_view():
    H = translation(5, 0)
    kpts0 = points((10, 10), (20, 20), (30, 30), (93, 5))  # (93,5) -> (98,5): outside image 1
    kpts1 = points((15, 10), (25, 21), (60, 40), (2, 30), (95, 5))  # (2,30) outside image 0
    # errors: 0, 1, 26.9, and 3 for (3,4) -- within 3 px but kpts0[3] is not in the shared view
    matches = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 4]])
    # shared view: n0 = 3, n1 = 4 -> 2 correct / 3.5
    assert matching_score(kpts0, kpts1, matches, H, SHAPE, SHAPE) == pytest.approx(4 / 7)
    assert matching_score(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.long),
                          H, SHAPE, SHAPE) == 0.0


def test_matching_recall_and_f1():
    H = torch.eye(3, dtype=torch.float64)
    kpts0 = points((10, 10), (20, 20), (30, 30), (50, 50))
    kpts1 = points((10, 10), (21, 20), (30, 32), (80, 50))
    # ground truth within 3 px: (0,0) d=0, (1,1) d=1, (2,2) d=2; (50,50) has nobody near
    assert ground_truth_correspondences(kpts0, kpts1, H).tolist() == [[0, 0], [1, 1], [2, 2]]
    matches = torch.tensor([[0, 0], [1, 2], [2, 1], [3, 3]])  # only (0,0) is a true pair
    recall = matching_recall(kpts0, kpts1, matches, H)
    assert recall == pytest.approx(1 / 3)
    assert f1_recall_repeatability(recall, 2 / 3) == pytest.approx(4 / 9)  # 2 * 2/9 / 1
    assert f1_recall_repeatability(0.0, 0.0) == 0.0
    assert f1_recall_repeatability(1.0, 1.0) == 1.0
    assert matching_recall(kpts0, points((90, 60)), torch.zeros(0, 2, dtype=torch.long), H) == 0.0


# ---------------------------------------------------------------------- homography
def test_homography_correctness_thresholds():
    H_true = translation(5, 0)
    # every corner off by exactly 2 px -> mean corner error 2
    result = homography_correctness(translation(7, 0), H_true, SHAPE)
    assert result == {1: False, 3: True, 5: True}
    assert homography_correctness(None, H_true, SHAPE) == {1: False, 3: False, 5: False}
    assert homography_correctness(H_true, H_true, SHAPE, thresholds=(0.5,)) == {0.5: True}


def test_estimate_homography_recovers_truth_despite_outliers_and_is_deterministic():
    generator = torch.Generator().manual_seed(0)
    H_true = torch.tensor([[0.9, 0.1, 4.0], [-0.05, 1.1, -3.0], [1e-4, 2e-4, 1.0]], dtype=torch.float64)
    kpts0 = torch.rand(40, 2, generator=generator, dtype=torch.float64) * torch.tensor([95.0, 63.0])
    kpts1 = warp_points(kpts0, H_true)
    kpts1[:10] += 20 + 10 * torch.rand(10, 2, generator=generator, dtype=torch.float64)  # outliers
    matches = torch.arange(40)[:, None].repeat(1, 2)
    H_est = estimate_homography(kpts0, kpts1, matches, ransac_threshold=1.0)
    assert H_est is not None and H_est.dtype == torch.float64
    assert homography_correctness(H_est, H_true, SHAPE, thresholds=(0.01,)) == {0.01: True}
    again = estimate_homography(kpts0, kpts1, matches, ransac_threshold=1.0)
    assert torch.equal(H_est, again)
    assert estimate_homography(kpts0, kpts1, matches[:3]) is None
