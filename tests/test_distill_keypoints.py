"""Key-point distillation loss: every term against a hand-computed value."""

from __future__ import annotations

import math

import pytest
import torch

from detkd.config import ConfigError
from detkd.distill.keypoints import (
    KeypointDistillationLoss,
    KeypointDistillWeights,
    PointSampling,
    cross_view_matching_nll,
    masked_cell_kl,
    point_relation_kl,
    select_training_points,
    warped_cell_targets,
)
from detkd.models.superpoint import create_model


def outputs(heatmap, logits, descriptors):
    return {
        "heatmap": torch.tensor(heatmap, dtype=torch.float32)[None],
        "logits": torch.tensor(logits, dtype=torch.float32).view(1, -1, 1, 1),
        "descriptors": torch.tensor(descriptors, dtype=torch.float32).view(1, -1, 1, 1),
    }


TEACHER = outputs([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0], [1.0, 0.0])
STUDENT = outputs([[1.0, 0.0], [0.0, 0.0]], [math.log(3.0), 0.0], [0.0, 1.0])


def test_each_term_by_hand():
    terms = KeypointDistillationLoss()(TEACHER, STUDENT)
    # heatmap: one pixel off by 1 out of 4 -> 1/4
    assert terms["heatmap_mse"].item() == pytest.approx(0.25)
    # d/dx of the student: [[-1], [0]] -> 1/2; d/dy: [[-1, 0]] -> 1/2; mean of both -> 1/2
    assert terms["heatmap_gradient_mse"].item() == pytest.approx(0.5)
    # p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    assert terms["cell_kl"].item() == pytest.approx(0.5 * math.log(4 / 3))
    # orthogonal unit descriptors: MSE = (1 + 1) / 2, 1 - cos = 1
    assert terms["descriptor_mse"].item() == pytest.approx(1.0)
    assert terms["descriptor_cosine"].item() == pytest.approx(1.0)
    expected = 120 * 0.25 + 150 * 0.5 + 0.5 * math.log(4 / 3) + 0 * 1.0 + 1.0  # descriptor_mse off by default
    assert terms["loss"].item() == pytest.approx(expected)


def test_descriptor_mse_is_two_over_d_times_the_cosine_term_for_unit_descriptors():
    """Why descriptor_mse is off by default: |a - b|^2 = 2 - 2 cos for unit vectors, mean over D components."""
    generator = torch.Generator().manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(2, 16, 3, 4, generator=generator), dim=1)
    student = torch.nn.functional.normalize(torch.randn(2, 16, 3, 4, generator=generator), dim=1)
    heat, logits = torch.zeros(2, 24, 32), torch.zeros(2, 65, 3, 4)
    terms = KeypointDistillationLoss()({"heatmap": heat, "logits": logits, "descriptors": teacher},
                                       {"heatmap": heat, "logits": logits, "descriptors": student})
    assert terms["descriptor_mse"].item() == pytest.approx(2 / 16 * terms["descriptor_cosine"].item(), rel=1e-5)


@pytest.mark.parametrize("bad", [{"heatmap_mse": -1.0}, {"cell_kl": float("nan")}, {"temperature": 0.0},
                                 {"descriptor_cosine": float("inf")}])
def test_negative_or_non_finite_weights_are_refused_by_name(bad):
    from detkd.config import ConfigError

    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"loss.{key}"):
        KeypointDistillWeights(**bad)


def test_temperature_softens_and_scales_by_t_squared():
    terms = KeypointDistillationLoss(KeypointDistillWeights(temperature=2.0))(TEACHER, STUDENT)
    q0 = math.sqrt(3) / (math.sqrt(3) + 1)  # softmax([ln 3 / 2, 0])
    expected = 4 * 0.5 * (math.log(0.5 / q0) + math.log(0.5 / (1 - q0)))
    assert terms["cell_kl"].item() == pytest.approx(expected)


def test_zero_weight_switches_a_term_off():
    weights = KeypointDistillWeights(heatmap_mse=0, heatmap_gradient_mse=0, cell_kl=0, descriptor_mse=0)
    terms = KeypointDistillationLoss(weights)(TEACHER, STUDENT)
    assert terms["loss"].item() == pytest.approx(1.0)  # descriptor_cosine alone
    assert terms["heatmap_mse"].item() == pytest.approx(0.25)  # still reported


def test_identical_networks_give_zero_loss_and_gradients_reach_the_student_only():
    torch.manual_seed(0)
    teacher, student = create_model("tiny").eval(), create_model("tiny")
    student.load_state_dict(teacher.state_dict())
    image = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        t_out = teacher(image)
    terms = KeypointDistillationLoss()(t_out, student(image))
    assert terms["loss"].item() == pytest.approx(0.0, abs=1e-6)

    other = create_model("tiny")
    loss = KeypointDistillationLoss()(t_out, other(image))["loss"]
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is not None for p in other.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_mismatched_descriptor_size_is_a_clear_error():
    teacher = create_model("tiny").eval()
    student = create_model("tiny", descriptor_dim=128)
    image = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="descriptor_dim=256"):
        KeypointDistillationLoss()(teacher(image), student(image))


def test_unknown_weight_is_rejected():
    with pytest.raises(ValueError, match="Unknown loss option"):
        KeypointDistillWeights.from_dict({"heatmap": 1.0})


# ---------------------------------------------------------------- descriptors at sampled points
def test_point_descriptor_cosine_by_hand():
    """Student cells (D=2) [1, 0] and [0, 1] with centres at x = 3.5 and 11.5 (one row, y = 3.5)."""
    student = {"heatmap": torch.zeros(1, 8, 16), "logits": torch.zeros(1, 65, 1, 2),
               "descriptors": torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)}
    teacher = {**student, "points": torch.tensor([[[7.5, 3.5], [3.5, 3.5]]]),
               "point_descriptors": torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])}
    terms = KeypointDistillationLoss(KeypointDistillWeights(point_descriptor_relation=0.0))(teacher, student)
    # x = 7.5 is midway: the student reads (1/2, 1/2) -> unit (1, 1)/sqrt 2, cos 1/sqrt 2 with (1, 0);
    # x = 3.5 is the first centre: (1, 0) against (0, 1), cos 0
    expected = ((1 - 1 / math.sqrt(2)) + 1.0) / 2
    assert terms["point_descriptor_cosine"].item() == pytest.approx(expected)
    assert terms["descriptor_cosine"].item() == pytest.approx(0.0)  # the cells themselves agree
    assert terms["loss"].item() == pytest.approx(expected)  # weight 1 by default; every other weighted term is 0
    assert "point_descriptor_cosine" not in KeypointDistillationLoss()(student, student)  # no points, no term


def test_point_descriptor_relation_by_hand():
    """Same cells and points as above, tau = 0.5: teacher (1, 0), (0, 1); the student reads (1, 1)/sqrt 2, (1, 0)."""
    student = {"heatmap": torch.zeros(1, 8, 16), "logits": torch.zeros(1, 65, 1, 2),
               "descriptors": torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)}
    teacher = {**student, "points": torch.tensor([[[7.5, 3.5], [3.5, 3.5]]]),
               "point_descriptors": torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])}
    weights = KeypointDistillWeights(point_descriptor_cosine=0.0, point_descriptor_relation=1.0,
                                     point_relation_temperature=0.5)
    terms = KeypointDistillationLoss(weights)(teacher, student)
    # teacher rows: cosines (1, 0) / 0.5 -> softmax (a, b), a = e^2 / (1 + e^2), b = 1 - a; and (b, a)
    a = math.exp(2) / (1 + math.exp(2))
    b = 1 - a
    # student row 1: cosines (1/sqrt 2, 1/sqrt 2) -> (1/2, 1/2); row 2: cosines (1, 0) -> (a, b)
    first = a * math.log(a / 0.5) + b * math.log(b / 0.5)
    second = b * math.log(b / a) + a * math.log(a / b)
    expected = (first + second) / 2
    assert terms["point_descriptor_relation"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)  # the only weighted term that is not 0
    same = {**teacher, "descriptors": torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)}
    at_teacher = {**teacher, "points": torch.tensor([[[3.5, 3.5], [11.5, 3.5]]])}  # on the cell centres
    assert KeypointDistillationLoss(weights)(at_teacher, same)["point_descriptor_relation"].item() == pytest.approx(0, abs=1e-6)
    with pytest.raises(ConfigError, match="point_relation_temperature"):
        KeypointDistillWeights(point_relation_temperature=0.0)


def test_a_collapsed_student_meets_the_cosine_term_halfway_but_not_the_relation_term():
    """Why the relation term exists: a student giving the teacher's mean descriptor at every point."""
    teacher_desc = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.2, 1.0], [1.0, 1.0]]), dim=-1)[None]
    mean = torch.nn.functional.normalize(teacher_desc.mean(dim=1), dim=-1)
    collapsed = mean[:, None].expand_as(teacher_desc)
    assert (collapsed * teacher_desc).sum(-1).mean().item() > 0.85  # the cosine term sees little wrong (1 - cos < 0.15)
    assert point_relation_kl(collapsed, teacher_desc, 0.1).item() > 0.5  # the relation term does
    assert point_relation_kl(teacher_desc, teacher_desc, 0.1).item() == pytest.approx(0, abs=1e-6)


def test_points_without_their_descriptors_are_a_clear_error():
    teacher = {**TEACHER, "points": torch.zeros(1, 3, 2)}
    with pytest.raises(KeyError, match="point_descriptors"):
        KeypointDistillationLoss()(teacher, STUDENT)
    teacher["point_descriptors"] = torch.zeros(1, 3, 5)
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        KeypointDistillationLoss()(teacher, STUDENT)


def test_training_points_are_the_strongest_peaks_inside_the_border_then_the_grid():
    heatmap = torch.zeros(1, 16, 16)
    heatmap[0, 1, 1] = 0.9  # strongest, but within the 4-pixel border
    heatmap[0, 6, 9] = 0.5  # (x 9, y 6)
    heatmap[0, 10, 5] = 0.7  # (x 5, y 10)
    heatmap[0, 10, 6] = 0.6  # beside the 0.7: not a local maximum
    sampling = PointSampling(keypoints=3, grid_stride=8, nms_radius=2, border=4)
    points = select_training_points(heatmap, sampling)
    assert sampling.count(16, 16) == points.shape[1] == 3 + 4
    # the two peaks inside by score, then the best other pixel (the 0.9 in the border), then the grid
    assert points[0].tolist() == [[5, 10], [9, 6], [1, 1], [4, 4], [12, 4], [4, 12], [12, 12]]
    assert select_training_points(heatmap, PointSampling(keypoints=0, grid_stride=16)).tolist() == [[[8, 8]]]
    with pytest.raises(ValueError, match="no points"):
        select_training_points(heatmap, PointSampling(keypoints=0, grid_stride=0))


def test_point_sampling_settings_are_checked_by_name():
    from detkd.config import ConfigError

    with pytest.raises(ConfigError, match="points.keypoints"):
        PointSampling.from_dict({"keypoints": -1})
    with pytest.raises(ConfigError, match="points.grid_stride"):
        PointSampling.from_dict({"grid_stride": 2.5})
    with pytest.raises(ValueError, match="Unknown"):
        PointSampling.from_dict({"grid": 8})


def test_a_superpoint_teacher_describes_points_as_its_extract_does():
    torch.manual_seed(0)
    teacher = create_model("tiny").eval()
    image = torch.rand(1, 1, 32, 48)
    found = teacher.extract(image, max_keypoints=20, detection_threshold=0.0)
    with torch.no_grad():
        out = teacher(image, select_points=lambda heatmap: found["keypoints"][0][None])
    torch.testing.assert_close(out["point_descriptors"][0], found["descriptors"][0])


def test_cross_view_matching_by_hand():
    """tau = 1, two points far apart; first view (1, 0), (0, 1)."""
    first = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    points = torch.tensor([[[10.0, 10.0], [30.0, 10.0]]])
    both = torch.tensor([[True, True]])
    # the same descriptors in the second view: every row and column is softmax(1, 0) at its own entry
    same = cross_view_matching_nll(first, first, both, points, temperature=1.0)
    assert same.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # second view (1, 0), (1, 0): S = [[1, 1], [0, 0]]; rows give log 2 twice; column 0 picks row 0 of (1, 0),
    # column 1 picks row 1 of (1, 0)
    collapsed = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    expected = (2 * math.log(2) + math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 4
    assert cross_view_matching_nll(first, collapsed, both, points, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # a point that left the second view is neither a positive nor a negative: one point alone, nothing to tell apart
    one = torch.tensor([[True, False]])
    assert cross_view_matching_nll(first, collapsed, one, points, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    # two points within the exclusion radius are not each other's negatives
    near = torch.tensor([[[10.0, 10.0], [12.0, 10.0]]])
    assert cross_view_matching_nll(first, collapsed, both, near, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    nothing = cross_view_matching_nll(first, collapsed, torch.zeros(1, 2, dtype=torch.bool), points, 1.0)
    assert nothing.item() == 0.0


def test_the_matching_term_is_weighted_in_and_needs_a_second_view():
    teacher = {"heatmap": torch.zeros(1, 8, 16), "logits": torch.zeros(1, 65, 1, 2),
               "descriptors": torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2),
               "points": torch.tensor([[[3.5, 3.5], [11.5, 3.5]]]),
               "point_descriptors": torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])}
    weights = KeypointDistillWeights(point_descriptor_cosine=0.0, point_descriptor_relation=0.0,
                                     point_descriptor_matching=2.0, point_matching_temperature=1.0)
    loss = KeypointDistillationLoss(weights)
    assert loss.needs_second_view and not KeypointDistillationLoss().needs_second_view
    second = {"point_descriptors": teacher["point_descriptors"], "valid": torch.tensor([[True, True]])}
    terms = loss(teacher, teacher, second)
    assert terms["point_descriptor_matching"].item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(2 * math.log(1 + math.exp(-1)), rel=1e-6)
    with pytest.raises(ValueError, match="point_descriptor_matching"):
        loss(teacher, teacher)
    with pytest.raises(ConfigError, match="point_matching_temperature"):
        KeypointDistillWeights(point_matching_temperature=0.0)


def test_masked_cell_kl_by_hand():
    """Teacher uniform over the 65 bins; the student's bin 0 has logit log 2, the rest 0, in cell 0 only."""
    target = torch.zeros(1, 65, 1, 2)
    student = torch.zeros(1, 65, 1, 2)
    student[0, 0, 0, 0] = math.log(2.0)
    cell0 = torch.tensor([[[True, False]]])
    # KL(u || s) = sum_k u_k log(u_k / s_k), s_0 = 2/66, s_k = 1/66
    expected = math.log(66 / 65) - math.log(2.0) / 65
    assert masked_cell_kl(target, student, cell0, 1.0).item() == pytest.approx(expected, abs=1e-6)  # float32
    assert masked_cell_kl(target, student, ~cell0, 1.0).item() == pytest.approx(0.0, abs=1e-7)  # equal cell
    both = torch.ones(1, 1, 2, dtype=torch.bool)
    assert masked_cell_kl(target, student, both, 1.0).item() == pytest.approx(expected / 2, abs=1e-6)
    # T = 2: logits halved (s_0 = sqrt 2 / (64 + sqrt 2)), times T^2
    expected_t2 = 4 * (math.log((64 + math.sqrt(2)) / 65) - math.log(math.sqrt(2)) / 65)
    assert masked_cell_kl(target, student, cell0, 2.0).item() == pytest.approx(expected_t2, abs=4e-6)
    student.requires_grad_(True)
    none = masked_cell_kl(target, student, torch.zeros(1, 1, 2, dtype=torch.bool), 1.0)
    assert none.item() == 0.0 and none.requires_grad


def test_warped_cell_targets_by_hand():
    """A point of probability 0.9 at pixel (x 3, y 2) of a 16x24 heatmap, moved 8 px to the right."""
    from detkd.models.keypoint_teachers.base import cell_distribution_logits

    heatmap = torch.zeros(1, 16, 24)
    heatmap[0, 2, 3] = 0.9
    identity = torch.eye(3)[None]
    logits, covered = warped_cell_targets(heatmap, identity)
    assert covered.all() and logits.shape == (1, 65, 2, 3)
    unshuffled = torch.nn.functional.pixel_unshuffle(heatmap[:, None], 8)
    torch.testing.assert_close(logits, cell_distribution_logits(unshuffled), atol=1e-5, rtol=1e-5)

    shift = torch.tensor([[[1.0, 0.0, 8.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    logits, covered = warped_cell_targets(heatmap, shift)
    assert covered.tolist() == [[[False, True, True], [False, True, True]]]  # column 0 has no source
    probabilities = logits.exp()  # floor 1e-6 where a bin is empty
    assert probabilities[0, 2 * 8 + 3, 0, 1].item() == pytest.approx(0.9, rel=1e-5)  # row 2, column 3 of cell (0, 1)
    assert probabilities[0, 64, 0, 1].item() == pytest.approx(0.1, rel=1e-4)  # "no point"
    assert probabilities[0, 64, 1, 2].item() == pytest.approx(1.0, rel=1e-5)  # an empty cell: no point
    # a 2x zoom makes a cell's 8x8 pixels hold more than probability 1: scaled down to 1, "no point" 0
    dense = torch.full((1, 16, 24), 0.05)
    zoom = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]])
    logits, covered = warped_cell_targets(dense, zoom)
    assert covered.all()  # every pixel of the 16x24 output comes from the first view
    probabilities = logits.exp()
    assert probabilities[0, :64].sum(0).min().item() == pytest.approx(64 * 0.05 / max(1.0, 64 * 0.05), rel=1e-4)
    with pytest.raises(ValueError, match="multiples of 8"):
        warped_cell_targets(torch.zeros(1, 12, 16), identity)


def test_the_second_view_cell_term_is_weighted_in_and_needs_a_second_view():
    heatmap = torch.zeros(1, 8, 16)
    heatmap[0, 2, 3] = 0.9
    teacher = {"heatmap": heatmap, "logits": torch.zeros(1, 65, 1, 2), "descriptors": torch.ones(1, 2, 1, 2) / 2**0.5}
    weights = KeypointDistillWeights(heatmap_mse=0.0, heatmap_gradient_mse=0.0, cell_kl=0.0, descriptor_cosine=0.0,
                                     point_descriptor_cosine=0.0, point_descriptor_relation=0.0,
                                     second_view_cell_kl=3.0)
    loss = KeypointDistillationLoss(weights)
    assert loss.needs_second_view
    student_logits = torch.zeros(1, 65, 1, 2)
    second = {"logits": student_logits, "homographies": torch.eye(3)[None]}
    terms = loss(teacher, teacher, second)
    target, covered = warped_cell_targets(heatmap, torch.eye(3)[None])
    expected = masked_cell_kl(target, student_logits, covered, 1.0).item()
    assert expected > 0.1
    assert terms["second_view_cell_kl"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(3 * expected, rel=1e-6)
    with pytest.raises(ValueError, match="second_view_cell_kl"):
        loss(teacher, teacher)
    # at weight 0 its warp is not paid for, second view or not
    off = KeypointDistillationLoss(KeypointDistillWeights(point_descriptor_cosine=0.0, point_descriptor_relation=0.0))
    assert "second_view_cell_kl" not in off(teacher, teacher, second)
