"""COCO detection metrics (pycocotools) on hand-computed cases, the tables, and the detection plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detkd.data.detection import DetectionRecord, DetectionSet
from detkd.evaluation.detection import (
    DetectionMetrics,
    evaluate_detections,
    format_detection_table,
    format_per_class_table,
)
from detkd.viz.detections import draw_detections, plot_detection_grid, plot_detections

BLANK = np.zeros((100, 100, 3), np.uint8)


def record(boxes, labels, ignore=None) -> DetectionRecord:
    return DetectionRecord(path=None, image=BLANK, width=100, height=100, boxes=boxes, labels=labels, ignore=ignore)


def pred(boxes, scores, labels) -> dict:
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels, int)}


def test_perfect_predictions_score_one():
    gt = DetectionSet([record([[10, 10, 20, 20], [30, 30, 80, 80]], [0, 1]), record([[0, 0, 99, 99]], [1])], ["a", "b"])
    predictions = [pred(r.boxes, [0.9] * r.num_boxes, r.labels) for r in gt]
    m = evaluate_detections(predictions, gt)
    # small (10x10 = 100 px^2 < 32^2), medium (50x50), large (99x99 > 96^2): one of each, all found
    for value in (m.map, m.ap50, m.ap75, m.ap_small, m.ap_medium, m.ap_large, m.ar100):
        assert value == pytest.approx(1.0)
    assert m.per_class == pytest.approx({"a": 1.0, "b": 1.0})
    assert (m.num_images, m.num_ground_truth, m.num_detections) == (2, 3, 3)


def test_one_of_two_found():
    """Recall reaches 0.5 at precision 1: COCO's 101 recall points 0.00..0.50 score 1, the other 50 score 0."""
    gt = [record([[10, 10, 30, 30], [40, 40, 80, 80]], [0, 0])]  # 20x20 small, 40x40 medium
    m = evaluate_detections([pred([[10, 10, 30, 30]], [0.9], [0])], gt, ["a"])
    assert m.map == pytest.approx(51 / 101) and m.ap50 == pytest.approx(51 / 101)
    assert m.ar100 == pytest.approx(0.5)
    assert m.ap_small == pytest.approx(1.0) and m.ap_medium == pytest.approx(0.0)
    assert math.isnan(m.ap_large)  # no large object: nothing to measure


def test_iou_062_counts_for_ap50_not_ap75():
    """IoU 62/100: a hit at the thresholds 0.50, 0.55, 0.60 (3 of 10), a miss from 0.65 on."""
    m = evaluate_detections([pred([[0, 0, 10, 6.2]], [0.8], [0])], [record([[0, 0, 10, 10]], [0])], ["a"])
    assert m.ap50 == pytest.approx(1.0) and m.ap75 == pytest.approx(0.0)
    assert m.map == pytest.approx(0.3)


def test_ranking_with_a_false_positive():
    """Scores 0.9 hit, 0.8 miss, 0.7 hit over 3 boxes: recall 1/3 @ precision 1, 2/3 @ 2/3 (interpolated).
    Recall points 0.00..0.33 (34) give 1, 0.34..0.66 (33) give 2/3, the rest 0: AP = (34 + 22) / 101."""
    gt = [record([[0, 0, 20, 20], [50, 50, 70, 70]], [0, 0]), record([[10, 10, 30, 30]], [0])]
    predictions = [pred([[0, 0, 20, 20], [80, 80, 95, 95]], [0.9, 0.8], [0, 0]), pred([[10, 10, 30, 30]], [0.7], [0])]
    m = evaluate_detections(predictions, gt, ["a"])
    assert m.ap50 == pytest.approx(56 / 101) and m.map == pytest.approx(56 / 101)


def test_zero_detections_wrong_class_and_ignored_boxes():
    gt = [record([[10, 10, 40, 40]], [0])]
    empty = evaluate_detections([pred(np.zeros((0, 4)), [], [])], gt, ["a", "b"])
    assert empty.map == 0.0 and empty.num_detections == 0
    assert empty.per_class["a"] == 0.0 and math.isnan(empty.per_class["b"])  # class b has no ground truth

    wrong = evaluate_detections([pred([[10, 10, 40, 40]], [0.9], [1])], gt, ["a", "b"])
    assert wrong.map == 0.0  # right box, wrong class: a miss for a, and b has nothing to find

    # an ignored (crowd / difficult) box: a detection on it is neither a hit nor a false positive
    crowd = [record([[10, 10, 40, 40], [60, 60, 90, 90]], [0, 0], ignore=[False, True])]
    both = evaluate_detections([pred([[60, 60, 90, 90], [10, 10, 40, 40]], [0.95, 0.9], [0, 0])], crowd, ["a"])
    assert both.map == pytest.approx(1.0) and both.num_ground_truth == 1
    # without that region the same detection is a false positive ranked first: precision 1/2 at every recall
    plain = [record([[10, 10, 40, 40]], [0])]
    half = evaluate_detections([pred([[60, 60, 90, 90], [10, 10, 40, 40]], [0.95, 0.9], [0, 0])], plain, ["a"])
    assert half.map == pytest.approx(0.5)


def test_tensors_and_bad_input():
    gt = [record([[10, 10, 40, 40]], [0])]
    m = evaluate_detections([{"boxes": torch.tensor([[10.0, 10, 40, 40]]), "scores": torch.tensor([0.5]),
                              "labels": torch.tensor([0])}], gt, ["a"])
    assert m.map == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 predictions for 1 ground-truth images"):
        evaluate_detections([pred([], [], [])] * 2, gt, ["a"])
    with pytest.raises(ValueError, match=r"labels outside 0..0"):
        evaluate_detections([pred([[1, 1, 2, 2]], [0.5], [3])], gt, ["a"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_detections([pred([[1, 1, float("nan"), 2]], [0.5], [0])], gt, ["a"])
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        evaluate_detections([{"boxes": np.zeros((1, 5)), "scores": [0.1], "labels": [0]}], gt, ["a"])


def test_tables():
    m = DetectionMetrics(map=0.3, ap50=1.0, ap75=0.0, ap_small=0.3, ap_medium=float("nan"), ap_large=float("nan"),
                         ar100=0.3, per_class={"a": 0.3, "b": float("nan")})
    table = format_detection_table({"student": m, "teacher": {"map": 0.4567, "ap50": 0.9, "params": 1234567,
                                                              "latency_ms": 12.345}})
    assert table.splitlines() == [
        "| model | mAP | AP50 | AP75 | AP_S | AP_M | AP_L | AR100 | params | latency_ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| student | 30.0 | 100.0 | 0.0 | 30.0 | n/a | n/a | 30.0 | n/a | n/a |",
        "| teacher | 45.7 | 90.0 | n/a | n/a | n/a | n/a | n/a | 1,234,567 | 12.3 |",
    ]
    assert format_per_class_table({"student": m}).splitlines()[2] == "| student | 30.0 | n/a |"
    assert m.as_dict()["ap_medium"] is None  # nan -> null in metrics.json


def test_plot_detections(tmp_path):
    image = np.random.default_rng(0).uniform(0, 1, (3, 64, 80)).astype(np.float32)
    gt = record([[5, 5, 20, 20], [30, 30, 60, 50]], [0, 1])
    predictions = pred([[6, 5, 20, 21], [30, 30, 60, 50], [1, 1, 3, 3]], [0.9, 0.6, 0.1], [0, 1, 0])
    fig = draw_detections(image, predictions, gt, ["a", "b"], score_threshold=0.3)
    gids = [p.get_gid() for p in fig.axes[0].patches]
    assert gids.count("detection") == 2 and gids.count("ground-truth") == 2  # the 0.1 score is not drawn
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["a 0.90", "b 0.60"]
    path = plot_detections(image, predictions, tmp_path / "det", ground_truth=gt, class_names=["a", "b"])
    assert path.suffix == ".png" and path.stat().st_size > 1000
    grid = plot_detection_grid([image, image], [predictions, None], tmp_path / "grid.png", [gt, gt], ["a", "b"])
    assert grid.stat().st_size > 1000
