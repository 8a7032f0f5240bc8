"""Key-point distillation loss: every term against a hand-computed value."""

from __future__ import annotations

import math

import pytest
import torch

from detkd.distill.keypoints import KeypointDistillationLoss, KeypointDistillWeights
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
