"""Corner precision / recall (detkd.evaluation.corners), hand-computed."""

from __future__ import annotations

import math

import pytest
import torch

from detkd.evaluation.corners import CornerCounts, count_corner_matches, synthetic_shapes_precision_recall
from detkd.models.superpoint import create_model


def test_counts_by_hand() -> None:
    labels = torch.tensor([[10.0, 10.0], [30.0, 30.0], [50.0, 2.0]])
    detections = torch.tensor([
        [11.0, 11.0],  # 1.41 px from label 0: correct
        [12.0, 10.0],  # exactly 2 px from label 0: correct (inclusive)
        [30.0, 32.5],  # 2.5 px from label 1: wrong
        [70.0, 70.0],  # nothing near: wrong
    ])
    c = count_corner_matches(detections, labels, 2.0, image_size=(60, 80), border=4)
    assert (c.detections, c.correct_detections, c.labels, c.found_labels) == (4, 2, 3, 1)
    assert c.precision == 0.5 and c.recall == pytest.approx(1 / 3)
    # label 2 (y = 2) is inside the 4 px border: inside labels are 0 and 1, one found
    assert (c.labels_inside, c.found_labels_inside) == (2, 1)


def test_empty_sides_and_sums() -> None:
    none = count_corner_matches(torch.zeros(0, 2), torch.tensor([[5.0, 5.0]]))
    assert none.detections == 0 and none.labels == 1 and none.found_labels == 0
    assert math.isnan(none.precision) and none.recall == 0.0
    false = count_corner_matches(torch.tensor([[1.0, 1.0]]), torch.zeros(0, 2))
    total = CornerCounts()
    total += none
    total += false
    assert (total.images, total.detections, total.correct_detections, total.labels) == (2, 1, 0, 1)
    assert total.precision == 0.0 and total.as_dict()["recall"] == 0.0


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="N, 2"):
        count_corner_matches(torch.zeros(3), torch.zeros(0, 2))


def test_runs_on_a_model() -> None:
    torch.manual_seed(0)
    model = create_model("tiny").train()
    counts = synthetic_shapes_precision_recall(model, num_images=3, batch_size=2)
    assert counts.images == 3 and counts.labels > 0
    assert counts.labels_inside <= counts.labels
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="multiples of 8"):
        synthetic_shapes_precision_recall(model, num_images=1, height=100)
