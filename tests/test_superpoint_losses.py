"""SuperPoint training losses against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detkd.losses import (
    cell_correspondences,
    descriptor_hinge_loss,
    descriptor_infonce_loss,
    detector_loss,
    heatmap_consistency_loss,
    keypoint_descriptor_loss,
    keypoint_map_to_cell_labels,
    soft_cell_targets,
    valid_mask_to_cells,
)
from detkd.models.keypoint_ops import logits_to_heatmap


# ------------------------------------------------------------------------------ labels
def test_single_point_goes_to_its_bin():
    kmap = torch.zeros(1, 16, 16)
    kmap[0, 10, 3] = 1  # x = 3, y = 10 -> cell (row 1, col 0), inside it row 2, col 3
    labels = keypoint_map_to_cell_labels(kmap)
    assert labels.dtype == torch.long and labels.shape == (1, 2, 2)
    assert labels.tolist() == [[[64, 64], [19, 64]]]


def test_labels_agree_with_the_models_heatmap_layout():
    torch.manual_seed(0)
    kmap = torch.zeros(2, 24, 32)
    ys, xs = torch.randint(0, 24, (2, 5)), torch.randint(0, 32, (2, 5))
    for b in range(2):
        kmap[b, ys[b], xs[b]] = 1
    cells_with_one = F.pixel_unshuffle(kmap[:, None], 8).sum(1) <= 1
    labels = keypoint_map_to_cell_labels(kmap)
    heat = logits_to_heatmap(F.one_hot(labels, 65).permute(0, 3, 1, 2).float() * 50)
    back = (heat > 0.5).float()
    keep = cells_with_one.repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert torch.equal(back[keep], kmap[keep])


def test_several_points_in_a_cell_first_or_random():
    kmap = torch.zeros(1, 8, 8)
    kmap[0, 1, 6] = 1  # bin 14
    kmap[0, 5, 2] = 1  # bin 42
    assert keypoint_map_to_cell_labels(kmap).item() == 14  # deterministic: first (lowest) bin
    picks = {
        keypoint_map_to_cell_labels(kmap, generator=torch.Generator().manual_seed(s)).item() for s in range(20)
    }
    assert picks == {14, 42}
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(keypoint_map_to_cell_labels(kmap, generator=g1), keypoint_map_to_cell_labels(kmap, generator=g2))


def test_points_on_invalid_pixels_are_ignored():
    kmap = torch.zeros(1, 8, 16)
    kmap[0, 2, 2] = 1
    kmap[0, 2, 10] = 1
    valid = torch.ones(1, 8, 16)
    valid[0, :, 8:] = 0
    assert keypoint_map_to_cell_labels(kmap, valid).tolist() == [[[18, 64]]]
    valid[0, 7, 0] = 0
    assert valid_mask_to_cells(valid).tolist() == [[[False, False]]]
    assert valid_mask_to_cells(torch.ones(1, 8, 16)).tolist() == [[[True, True]]]


def test_label_shapes_are_checked():
    with pytest.raises(ValueError, match="multiples of 8"):
        keypoint_map_to_cell_labels(torch.zeros(1, 12, 16))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        keypoint_map_to_cell_labels(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="match"):
        keypoint_map_to_cell_labels(torch.zeros(1, 16, 16), torch.ones(1, 8, 16))


def test_soft_targets_by_hand():
    soft = torch.zeros(1, 8, 16)
    soft[0, 0, 7] = soft[0, 0, 8] = 0.5  # a point at x = 7.5, y = 0: half in each cell
    soft[0, 3, 2] = 0.25  # and a quarter of another one in cell 0 (its other pixels fell outside)
    targets = soft_cell_targets(soft)
    assert targets.shape == (1, 65, 1, 2)
    assert targets[0, 7, 0, 0] == 0.5 and targets[0, 26, 0, 0] == 0.25 and targets[0, 64, 0, 0] == 0.25
    assert targets[0, 0, 0, 1] == 0.5 and targets[0, 64, 0, 1] == 0.5
    torch.testing.assert_close(targets.sum(1), torch.ones(1, 1, 2))
    crowded = torch.zeros(1, 8, 8)
    crowded[0, 1, 1] = crowded[0, 5, 5] = 1.0  # two whole points: half each, no dustbin
    t = soft_cell_targets(crowded)
    assert t[0, 9, 0, 0] == 0.5 and t[0, 45, 0, 0] == 0.5 and t[0, 64, 0, 0] == 0.0
    valid = torch.ones(1, 8, 16)
    valid[0, :, 8:] = 0
    assert soft_cell_targets(soft, valid)[0, 64, 0, 1] == 1.0  # the invalid half drops out


def test_soft_targets_of_whole_pixels_are_the_hard_labels():
    kmap = torch.zeros(2, 16, 24)
    kmap[0, 3, 5] = kmap[1, 10, 20] = kmap[1, 0, 0] = 1.0
    one_hot = F.one_hot(keypoint_map_to_cell_labels(kmap), 65).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(soft_cell_targets(kmap), one_hot)
    logits = torch.randn(2, 65, 2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        detector_loss(logits, soft_cell_targets(kmap)), detector_loss(logits, keypoint_map_to_cell_labels(kmap))
    )
    with pytest.raises(ValueError, match="multiples of 8"):
        soft_cell_targets(torch.zeros(1, 12, 16))
    with pytest.raises(ValueError, match="valid_mask"):
        soft_cell_targets(torch.zeros(1, 16, 16), torch.ones(1, 8, 16))


# ------------------------------------------------------------------------------ detector
def test_detector_loss_of_uniform_logits_is_log65():
    labels = torch.randint(0, 65, (2, 3, 4))
    loss = detector_loss(torch.zeros(2, 65, 3, 4), labels)
    assert loss.item() == pytest.approx(math.log(65), abs=1e-6)


def test_detector_loss_averages_over_valid_cells_only():
    logits = torch.zeros(1, 65, 1, 2)
    logits[0, 7, 0, 0] = 10.0  # cell 0 confidently right, cell 1 uniform
    labels = torch.tensor([[[7, 64]]])
    good = math.log(1 + 64 * math.exp(-10.0))  # -log(e^10 / (e^10 + 64))
    assert detector_loss(logits, labels).item() == pytest.approx((good + math.log(65)) / 2, abs=1e-5)
    assert detector_loss(logits, labels, torch.tensor([[[True, False]]])).item() == pytest.approx(good, abs=1e-5)  # float32 rounding
    none = detector_loss(logits.requires_grad_(), labels, torch.zeros(1, 1, 2, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="labels"):
        detector_loss(torch.zeros(1, 65, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="65"):
        detector_loss(torch.zeros(1, 64, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="soft labels"):
        detector_loss(torch.zeros(1, 65, 2, 2), torch.zeros(1, 65, 2, 3))


def test_detector_loss_with_soft_targets_by_hand():
    target = torch.zeros(1, 65, 1, 1)
    target[0, 7] = target[0, 64] = 0.5  # half a point on pixel 7, half nothing
    assert detector_loss(torch.zeros(1, 65, 1, 1), target).item() == pytest.approx(math.log(65), abs=1e-6)
    logits = torch.zeros(1, 65, 1, 1)
    logits[0, 7] = logits[0, 64] = 10.0
    # -0.5 log p7 - 0.5 log p64 with p7 = p64 = e^10 / (2 e^10 + 63)
    expected = -math.log(math.exp(10.0) / (2 * math.exp(10.0) + 63))
    assert detector_loss(logits, target).item() == pytest.approx(expected, abs=1e-5)


# ------------------------------------------------------------------------------ descriptor
def _two_cells() -> tuple[torch.Tensor, torch.Tensor]:
    # view 0: a0 = (2, 0) -> (1, 0) after normalisation, b0 = (0, 1)
    # view 1: a1 = (0.6, 0.8), b1 = (3, 0) -> (1, 0)
    desc0 = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    desc1 = torch.tensor([[0.6, 0.8], [3.0, 0.0]]).T.reshape(1, 2, 1, 2)
    return desc0, desc1
    # dot products: a0.a1 = 0.6, a0.b1 = 1, b0.a1 = 0.8, b0.b1 = 0


def test_hinge_loss_identity_only_same_cell():
    d0, d1 = _two_cells()
    eye = torch.eye(3)[None]
    # radius 7.5: s = identity. positives: 250*(1-0.6)=100 and 250*(1-0)=250;
    # negatives: max(0, 1-0.2)=0.8 and max(0, 0.8-0.2)=0.6 -> (100+250+0.8+0.6)/4 = 87.85
    loss = descriptor_hinge_loss(d0, d1, eye, correspondence_radius=7.5)
    assert loss.item() == pytest.approx(87.85, rel=1e-6)


def test_hinge_loss_identity_paper_radius_takes_neighbours():
    d0, d1 = _two_cells()
    # radius 8: the neighbouring centre is exactly 8 px away, so all 4 pairs are positive:
    # 250 * ((1-0.6) + (1-1) + (1-0.8) + (1-0)) / 4 = 100
    assert cell_correspondences(torch.eye(3)[None], 1, 2, 8.0).all()
    assert descriptor_hinge_loss(d0, d1, torch.eye(3)[None]).item() == pytest.approx(100.0, rel=1e-6)


def test_hinge_loss_translation_and_valid_mask():
    d0, d1 = _two_cells()
    shift = torch.tensor([[[1.0, 0, 8], [0, 1, 0], [0, 0, 1]]])  # view 0 moved 8 px right
    # a0's centre (3.5, 3.5) -> (11.5, 3.5) = b1's centre; b0 -> (19.5, 3.5), 8 px from b1
    s = cell_correspondences(shift, 1, 2, 7.5)[0]
    assert s.tolist() == [[False, True], [False, False]]
    # a0-a1 neg 0.6-0.2=0.4; a0-b1 pos 250*(1-1)=0; b0-a1 neg 0.8-0.2=0.6; b0-b1 neg max(0,-0.2)=0
    assert descriptor_hinge_loss(d0, d1, shift, correspondence_radius=7.5).item() == pytest.approx(0.25, rel=1e-6)
    # only view-1 cell a1 valid: pairs (a0, a1) = 0.4 and (b0, a1) = 0.6 -> mean 0.5
    valid = torch.tensor([[[1.0, 0.0]]])
    loss = descriptor_hinge_loss(d0, d1, shift, valid, correspondence_radius=7.5)
    assert loss.item() == pytest.approx(0.5, rel=1e-6)


def test_hinge_loss_margins_batch_and_gradients():
    d0, d1 = _two_cells()
    # other margins, shared (3, 3) homography, batch of two identical pairs
    loss = descriptor_hinge_loss(
        d0.repeat(2, 1, 1, 1), d1.repeat(2, 1, 1, 1), torch.eye(3),
        positive_margin=0.9, negative_margin=0.5, lambda_d=10.0, correspondence_radius=7.5,
    )
    # positives 10*(0.9-0.6)=3 and 10*0.9=9; negatives max(0, 1-0.5)=0.5, max(0, 0.8-0.5)=0.3
    assert loss.item() == pytest.approx((3 + 9 + 0.5 + 0.3) / 4, rel=1e-6)
    x = torch.randn(1, 8, 2, 3, requires_grad=True)
    descriptor_hinge_loss(x, torch.randn(1, 8, 2, 3), torch.eye(3)[None]).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="same shape"):
        descriptor_hinge_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3), torch.eye(3))
    with pytest.raises(ValueError, match="homography"):
        descriptor_hinge_loss(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), torch.eye(3).repeat(3, 1, 1))


def test_descriptor_infonce_loss_hand_computed():
    # Two cells per view (1x2 grid), identity: cell i corresponds to cell i only (radius 7.5).
    # Orthogonal descriptors: dot(i, i) = 1, dot(i, j) = 0. With T = 0.5 each row's softmax is
    # [e^2, 1] / (e^2 + 1), so every direction's loss is -log(e^2 / (e^2 + 1)) = log(1 + e^-2).
    d0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    loss = descriptor_infonce_loss(d0, d0.clone(), torch.eye(3), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # Swapped descriptors in view 1: the right cell has dot 0 and the wrong one dot 1:
    # -log(1 / (1 + e^2)) = log(1 + e^2).
    swapped = d0.flip(-1)
    loss = descriptor_infonce_loss(d0, swapped, torch.eye(3), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)


def test_descriptor_infonce_loss_masks_invalid_cells():
    # View-1 cell 1 invalid: only cell 0 takes part, and the softmax runs over cell 0 alone in
    # both directions, so the loss is log(1) = 0 whatever the descriptors are.
    d0 = torch.randn(1, 4, 1, 2)
    valid = torch.tensor([[[1.0, 0.0]]])
    loss = descriptor_infonce_loss(d0, torch.randn(1, 4, 1, 2), torch.eye(3), valid, temperature=0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        descriptor_infonce_loss(d0, d0, torch.eye(3), temperature=0.0)


# -------------------------------------------------------------- key-point descriptor loss
def _two_region_descriptors() -> torch.Tensor:
    """(1, 2, 2, 4) cells for a 16x32 image: columns 0-1 hold [1, 0], columns 2-3 hold [0, 1]."""
    desc = torch.zeros(1, 2, 2, 4)
    desc[0, 0, :, :2] = 1.0
    desc[0, 1, :, 2:] = 1.0
    return desc


def _points(*xy: tuple[int, int]) -> torch.Tensor:
    keypoints = torch.zeros(1, 16, 32)
    for x, y in xy:
        keypoints[0, y, x] = 1.0
    return keypoints


def test_keypoint_descriptor_loss_hand_computed():
    # Pixel x = 4 samples between cell columns 0 and 1 ((4 - 3.5) / 8 = 0.06): descriptor [1, 0];
    # x = 27 between columns 2 and 3: [0, 1]. Identity: each point's positive has dot 1, its
    # negative dot 0, so with T = 0.5 both directions give -log(e^2 / (e^2 + 1)) = log(1 + e^-2).
    desc = _two_region_descriptors()
    points = _points((4, 4), (27, 4))
    expected = math.log(1 + math.exp(-2))
    loss = keypoint_descriptor_loss(desc, desc.clone(), points, torch.eye(3), temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Swapped regions in view 1: the positive has dot 0 and the negative dot 1: log(1 + e^2).
    loss = keypoint_descriptor_loss(desc, desc.flip(1), points, torch.eye(3), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-5)
    # Moved 2 px right, both points stay in their regions (x = 29 samples past the last cell
    # centre, where zero padding only shrinks the vector that normalisation restores).
    shift = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss = keypoint_descriptor_loss(desc, desc.clone(), points, shift, temperature=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_keypoint_descriptor_loss_drops_unseen_points_and_ignores_near_ones():
    desc = _two_region_descriptors()
    points = _points((4, 4), (27, 4))
    # 6 px right: x = 27 leaves the 32-px view; one point is left, so nothing to contrast: 0.
    shift = torch.tensor([[1.0, 0.0, 6.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert keypoint_descriptor_loss(desc, desc.clone(), points, shift).item() == 0.0
    # The same for a point that view 1 did not see (valid mask 0 where it lands).
    valid = torch.ones(1, 16, 32)
    valid[0, 4, 4] = 0.0
    assert keypoint_descriptor_loss(desc, desc.clone(), points, torch.eye(3), valid).item() == 0.0
    # Two points 2 px apart in one region have the same descriptor. Within ignore_radius they are
    # not each other's negatives (each softmax has one entry: loss 0); with radius 1 each is a
    # coin toss between two equal logits: log 2.
    near = _points((4, 4), (6, 4))
    assert keypoint_descriptor_loss(desc, desc.clone(), near, torch.eye(3), ignore_radius=3.0).item() == pytest.approx(
        0.0, abs=1e-6
    )
    loss = keypoint_descriptor_loss(desc, desc.clone(), near, torch.eye(3), ignore_radius=1.0)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)


def test_keypoint_descriptor_loss_gradients_and_shape_errors():
    desc0 = torch.randn(2, 8, 2, 4, requires_grad=True)
    points = _points((4, 4), (27, 4), (12, 11)).expand(2, -1, -1)
    loss = keypoint_descriptor_loss(desc0, torch.randn(2, 8, 2, 4), points, torch.eye(3), max_points=2)
    loss.backward()
    assert torch.isfinite(desc0.grad).all() and desc0.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="keypoint_map0"):
        keypoint_descriptor_loss(desc0, desc0, torch.zeros(2, 8, 8), torch.eye(3))
    with pytest.raises(ValueError, match="temperature"):
        keypoint_descriptor_loss(desc0, desc0, points, torch.eye(3), temperature=-1.0)


# --------------------------------------------------------------------- heatmap consistency
def _peaks(*points: tuple[int, int, float], size: int = 16) -> torch.Tensor:
    heat = torch.zeros(1, size, size)
    for row, col, value in points:
        heat[0, row, col] = value
    return heat


def test_heatmap_consistency_hand_computed():
    # 16x16 maps, 8x8 patches at stride 4: origins 0, 4, 8 per axis, 9 patches.
    view0 = _peaks((5, 5, 1.0), (12, 3, 0.5))
    assert heatmap_consistency_loss(view0, view0.clone(), torch.eye(3)).item() == pytest.approx(0.0, abs=1e-6)
    # The first peak moves one pixel right in view 1 (identity homography): the 4 patches that
    # hold pixels (5, 5) and (5, 6) have cosine 0 and weight (1 + 1) / 2 = 1; the one patch that
    # holds (12, 3) has cosine 1 and weight 0.5; the rest hold no heat (weight 0).
    # loss = (4 * 1 * (1 - 0) + 0.5 * (1 - 1)) / (4 + 0.5) = 8 / 9.
    view1 = _peaks((5, 6, 1.0), (12, 3, 0.5))
    assert heatmap_consistency_loss(view0, view1, torch.eye(3)).item() == pytest.approx(8 / 9, rel=1e-6)
    # If view 1 really is view 0 moved one pixel right, the warped-back maps agree: loss 0.
    shift = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    moved = _peaks((5, 6, 1.0), (12, 4, 0.5))
    assert heatmap_consistency_loss(view0, moved, shift).item() == pytest.approx(0.0, abs=1e-6)


def test_heatmap_consistency_ignores_unseen_patches_and_has_finite_gradients():
    view0 = _peaks((5, 5, 1.0))
    view1 = _peaks((5, 6, 1.0))
    # View 1 saw only its right half: every patch holding the peaks reaches into the unseen half.
    seen = torch.zeros(1, 16, 16)
    seen[..., 9:] = 1.0
    assert heatmap_consistency_loss(view0, view1, torch.eye(3), seen).item() == 0.0
    empty = torch.zeros(1, 16, 16, requires_grad=True)
    loss = heatmap_consistency_loss(empty, torch.zeros(1, 16, 16), torch.eye(3))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(empty.grad).all()
    with pytest.raises(ValueError, match="one size"):
        heatmap_consistency_loss(view0, torch.zeros(1, 8, 8), torch.eye(3))
    with pytest.raises(ValueError, match="valid_mask1"):
        heatmap_consistency_loss(view0, view1, torch.eye(3), torch.ones(1, 8, 8))
