"""Side-by-side detection plots: hits, false alarms and misses on hand-computed boxes, the layout, and
``detkd detect evaluate --plot`` with several models."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from detkd.evaluation import detection_plots
from detkd.evaluation.detection_plots import (
    FALSE_ALARM_COLOUR,
    HIT_COLOUR,
    MISS_COLOUR,
    box_iou,
    comparison_layout,
    draw_model_comparison,
    match_detections,
    plot_model_comparison,
)


def pred(boxes, scores, labels) -> dict:
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels, int)}


def test_box_iou_by_hand():
    a = [[0, 0, 10, 10]]
    b = [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 40], [5, 5, 5, 5]]
    # identical; 9x10 overlap over 100 + 100 - 90; disjoint; empty box (union 100, no overlap)
    assert box_iou(a, b)[0] == pytest.approx([1.0, 90 / 110, 0.0, 0.0])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


def test_match_detections_hand_computed():
    gt_boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [0, 20, 10, 30]]  # A, B (class 0); C (class 1)
    gt_labels = [0, 0, 1]
    boxes = [[0, 0, 10, 10],    # p0 0.90: IoU 1 with A                         -> hit A
             [1, 0, 11, 10],    # p1 0.80: IoU 0.82 with A, but A is taken      -> false alarm (duplicate)
             [20, 20, 30, 35],  # p2 0.70: IoU 100/150 = 0.67 with B, taken by p4 -> false alarm
             [0, 20, 10, 30],   # p3 0.60: exactly on C, but class 0             -> false alarm (wrong class)
             [20, 20, 30, 40]]  # p4 0.95: IoU 100/200 = 0.5 with B, matched first -> hit B (>= 0.5)
    scores = [0.9, 0.8, 0.7, 0.6, 0.95]
    labels = [0, 0, 0, 0, 0]
    match = match_detections(boxes, scores, labels, gt_boxes, gt_labels)
    assert match.hit.tolist() == [True, False, False, False, True]
    assert match.false_alarm.tolist() == [False, True, True, True, False]
    assert match.matched.tolist() == [0, -1, -1, -1, 1]
    assert match.missed.tolist() == [False, False, True]  # C: only a wrong-class box on it
    assert match.counts == (2, 3, 1)
    assert detection_plots.panel_counts_text(match) == "2 hits / 3 false alarms / 1 miss"
    # just under the threshold, p4 no longer counts and p2 (the next best) takes B
    strict = match_detections(boxes, scores, labels, gt_boxes, gt_labels, iou_threshold=0.51)
    assert strict.hit.tolist() == [True, False, True, False, False] and strict.counts == (2, 3, 1)


def test_match_detections_picks_the_best_free_box_and_respects_ignored_boxes():
    gt_boxes = [[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]]
    gt_labels = [0, 0, 0]
    ignore = [False, False, True]
    # p0 lies between A and B (IoU 90/110 with each): the first best, A; p1 is exactly on B; p2 lies on the
    # ignored box: neither hit nor false alarm
    boxes = [[1, 0, 11, 10], [2, 0, 12, 10], [50, 50, 60, 60]]
    match = match_detections(boxes, [0.9, 0.8, 0.7], [0, 0, 0], gt_boxes, gt_labels, ignore)
    assert match.matched.tolist() == [0, 1, -1]
    assert match.on_ignored.tolist() == [False, False, True]
    assert match.missed.tolist() == [False, False, False]  # the ignored box is never a miss
    assert match.counts == (2, 0, 0)
    empty = match_detections(np.zeros((0, 4)), [], [], gt_boxes, gt_labels, ignore)
    assert empty.counts == (0, 0, 2)
    alone = match_detections(boxes, [0.9, 0.8, 0.7], [0, 0, 0], np.zeros((0, 4)), [])
    assert alone.counts == (0, 3, 0)
    with pytest.raises(ValueError, match="2 scores"):
        match_detections(boxes, [0.9, 0.8], [0, 0, 0], gt_boxes, gt_labels)


def test_layout_draws_large_images_near_native_size_and_caps_the_figure():
    one = comparison_layout([(1035, 1249)], columns=1, header=1.0)
    assert one.panel_width == pytest.approx(12.49) and one.row_heights[0] == pytest.approx(10.35)
    three = comparison_layout([(1035, 1249)], columns=3, header=1.0)
    assert three.width == pytest.approx(detection_plots.MAX_FIGURE_WIDTH_IN)  # 3 x 11.83 in: near native, capped
    assert 11.5 < three.panel_width < 12.49
    small = comparison_layout([(128, 128), (64, 128)], columns=2, header=1.0)
    assert small.panel_width == detection_plots.MIN_PANEL_WIDTH_IN and small.row_heights == (4.0, 2.0)
    many = comparison_layout([(1035, 1249)] * 20, columns=3, header=1.0)
    assert many.height == pytest.approx(detection_plots.MAX_FIGURE_HEIGHT_IN)
    left, bottom, width, height = many.panel_box(19, 2)
    assert 0 < bottom < 0.02 and left + width < 1 and height > 0


def rgb(colour: str) -> tuple[float, ...]:
    return tuple(int(colour[k:k + 2], 16) / 255 for k in (1, 3, 5))


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts]


def test_comparison_figure_has_a_column_per_model_and_a_row_per_image(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.random((40, 60, 3)).astype(np.float32), (rng.random((50, 50)) * 255).astype(np.uint8)]
    truths = [{"boxes": [[5, 5, 20, 20], [30, 10, 50, 30]], "labels": [0, 1]},
              {"boxes": [[10, 10, 30, 30]], "labels": [0], "ignore": [True]}]
    predictions = {
        "teacher": [pred([[5, 5, 20, 20], [30, 10, 50, 30], [0, 30, 10, 40]], [0.9, 0.8, 0.2], [0, 1, 0]), None],
        "student": [pred([[5, 5, 20, 21], [40, 0, 60, 10]], [0.7, 0.4], [0, 1]), pred([[10, 10, 30, 30]], [0.5], [0])],
    }
    fig = draw_model_comparison(images, truths, predictions, ["a", "b"], score_threshold=0.3,
                                row_names=["one.png", "two.png"], title="t")
    assert len(fig.axes) == 4  # 2 rows x 2 models
    texts = _texts(fig)
    assert "teacher" in texts and "student" in texts
    assert any(t.startswith("one.png") and "2 ground-truth boxes" in t for t in texts)
    assert any(t.startswith("two.png") and "0 ground-truth boxes" in t for t in texts)  # its only box is ignored
    titles = [ax.get_title() for ax in fig.axes]  # row by row, models in order
    assert titles == ["2 hits / 0 false alarms / 0 misses", "1 hit / 1 false alarm / 1 miss",
                      "0 hits / 0 false alarms / 0 misses", "0 hits / 0 false alarms / 0 misses"]
    gids = [[p.get_gid() for p in ax.patches] for ax in fig.axes]
    assert sorted(gids[0]) == ["hit", "hit"]  # the 0.2 box is under the threshold: not drawn
    assert sorted(gids[1]) == ["false-alarm", "hit", "miss"]
    assert gids[3] == ["ignored", "ignored-detection"]
    colours = {p.get_gid(): p.get_edgecolor() for p in fig.axes[1].patches}
    assert colours["hit"][:3] == pytest.approx(rgb(HIT_COLOUR))
    assert colours["false-alarm"][:3] == pytest.approx(rgb(FALSE_ALARM_COLOUR))
    assert colours["miss"][:3] == pytest.approx(rgb(MISS_COLOUR))
    assert [p.get_linestyle() for p in fig.axes[1].patches if p.get_gid() == "miss"] == ["--"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[1:] == ["false alarm", "missed ground truth", "ignored ground truth"]
    path = plot_model_comparison(images, truths, predictions, tmp_path / "cmp", ["a", "b"], row_names=["1", "2"])
    assert path.suffix == ".png" and imread(path).shape[1] == round(100 * fig.get_figwidth())
    with pytest.raises(ValueError, match="'student' has 1 predictions for 2 images"):
        draw_model_comparison(images, truths, {"student": predictions["student"][:1]})


def test_labels_sit_on_their_boxes_without_covering_each_other_or_leaving_the_image():
    """Two detections on one box (scores 0.9 and 0.6), one at the right edge, one touching the top edge."""
    image = np.zeros((256, 256, 3), np.float32)
    truth = {"boxes": [[100, 100, 150, 150], [226, 120, 256, 150], [20, 0, 60, 40]], "labels": [0, 1, 0]}
    detections = pred([[100, 100, 150, 150], [100, 100, 150, 150], [226, 120, 256, 150], [20, 0, 60, 40]],
                      [0.9, 0.6, 0.8, 0.7], [0, 1, 1, 0])
    fig = draw_model_comparison([image], [truth], {"m": [detections]}, ["circle", "rectangle"])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    patches = {t.get_text(): t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts}
    assert set(patches) == {"circle 0.90", "rectangle 0.60", "rectangle 0.80", "circle 0.70"}
    corner = ax.transData.transform((99.5, 99.5))  # the box's top-left corner, display pixels (y up)
    best = patches["circle 0.90"]  # placed first: just above the corner
    assert best.x0 == pytest.approx(corner[0], abs=0.5) and best.y0 == pytest.approx(corner[1], abs=0.5)
    second = patches["rectangle 0.60"]  # the same place is taken: the next one, under the box's top edge
    assert not best.overlaps(second) and second.y1 == pytest.approx(corner[1], abs=0.5)
    axes = ax.get_window_extent(renderer)
    assert patches["rectangle 0.80"].x1 <= axes.x1 + 0.5  # shifted left, not cut by the image's right edge
    top = patches["circle 0.70"]  # its box touches the image's top: the label goes inside, under the edge
    assert top.y1 <= axes.y1 + 0.5 and top.y1 == pytest.approx(ax.transData.transform((19.5, -0.5))[1], abs=0.5)


@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_plot_draws_every_model_with_the_plot_threshold(tmp_path, monkeypatch):
    from detkd.cli.main import main
    from detkd.data.detection import write_synthetic_dataset
    from detkd.models.detection import create_detector, save_detector

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", num_train=1, num_val=2, size=128, seed=0)
    names = ["circle", "triangle", "rectangle", "star", "cross"]
    for name in ("teacher", "student"):
        save_detector(create_detector("retinanet_tiny_fpn", 5, class_names=names), tmp_path / f"{name}.pt")
    drawn = []
    original = detection_plots.plot_model_comparison
    monkeypatch.setattr(detection_plots, "plot_model_comparison",
                        lambda *args, **kwargs: drawn.append((args, kwargs)) or original(*args, **kwargs))
    plot = tmp_path / "cmp.png"
    result = CliRunner().invoke(main, [
        "detect", "evaluate", "--data", str(data_yaml), "--size", "128", "--plot-images", "2", "--plot", str(plot),
        "--plot-threshold", "0.01", "--model", f"teacher={tmp_path / 'teacher.pt'}",
        "--model", f"student={tmp_path / 'student.pt'}", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert plot.exists() and (tmp_path / "eval" / "detections.png").exists()
    assert (tmp_path / "eval" / "detections_teacher.png").exists()
    (images, records, predictions, path), kwargs = next((a, k) for a, k in drawn if a[3] == plot)
    assert list(predictions) == ["teacher (retinanet_tiny_fpn)", "student (retinanet_tiny_fpn)"]
    assert len(images) == 2 and kwargs["row_names"] == [r.name for r in records]
    assert kwargs["score_threshold"] == 0.01
    assert imread(plot).shape[1] > 2 * 100 * detection_plots.MIN_PANEL_WIDTH_IN  # two columns
    per_model = [a for a, _ in drawn if a[3] != plot]
    assert sorted(len(a[2]) for a in per_model) == [1, 1]  # --out: one column per file, as training runs write
