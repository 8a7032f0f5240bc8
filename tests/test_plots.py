"""The plotting helpers write real PNGs and draw what they are given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from detkd.viz.curves import draw_loss_curves, plot_loss_curves
from detkd.viz.plots import (
    MATCH_GAP_PX,
    count_match_lines,
    draw_accuracy_vs_latency,
    draw_keypoints,
    draw_matches,
    plot_accuracy_vs_latency,
    plot_keypoints,
    plot_matches,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
H, W = 32, 48


def read_png(path: Path) -> np.ndarray:
    """Pixels ``(H, W, C)`` in [0, 1] of a PNG, after checking it is one of plausible size."""
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 2000
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 200 and pixels.shape[1] >= 400
    return pixels


def coloured_fraction(pixels: np.ndarray, channel: int) -> float:
    """Share of pixels where ``channel`` (0 red, 1 green) clearly dominates the other two."""
    rgb = pixels[..., :3]
    others = [c for c in range(3) if c != channel]
    mask = (rgb[..., channel] > rgb[..., others[0]] + 0.3) & (rgb[..., channel] > rgb[..., others[1]] + 0.3)
    return float(mask.mean())


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    image0 = rng.uniform(0.3, 0.7, (H, W)).astype(np.float32)
    image1 = torch.from_numpy(rng.uniform(0.3, 0.7, (1, H - 8, W)).astype(np.float32))  # (1, H, W) tensor
    kpts0 = np.array([[5, 5], [10, 20], [30, 8], [40, 25], [20, 15]], dtype=np.float32)
    kpts1 = torch.tensor([[6.0, 4], [12, 18], [29, 9], [41, 20], [2, 2], [44, 10]])
    matches = np.array([[0, 0], [1, 1], [2, 5], [3, 3]])
    correct = np.array([True, True, False, True])
    return image0, image1, kpts0, kpts1, matches, correct


def test_plot_matches_draws_green_and_red_lines(tmp_path: Path, pair) -> None:
    image0, image1, kpts0, kpts1, matches, correct = pair
    fig = draw_matches(image0, image1, kpts0, kpts1, matches, correct, title="pair 1", threshold_px=3)
    assert count_match_lines(fig) == {"correct": 3, "wrong": 1, "unverified": 0}
    assert "4 matches, 3 correct (3 px)" in fig._suptitle.get_text()

    # the wrong line joins kpts0[2] to kpts1[5], shifted right by the first image and the gap
    wrong = [c for c in fig.axes[0].collections if c.get_gid() == "matches-wrong"][0]
    np.testing.assert_allclose(wrong.get_segments()[0], [[30, 8], [44 + W + MATCH_GAP_PX, 10]])
    dots = [c for c in fig.axes[0].collections if c.get_gid() in ("keypoints0", "keypoints1")]
    assert sorted(len(d.get_offsets()) for d in dots) == [5, 6]

    path = plot_matches(image0, image1, kpts0, kpts1, matches, correct, tmp_path / "matches.png", threshold_px=3)
    pixels = read_png(path)
    assert coloured_fraction(pixels, channel=1) > 0  # green lines were rendered
    assert coloured_fraction(pixels, channel=0) > 0  # and a red one


def test_plot_matches_without_ground_truth(tmp_path: Path, pair) -> None:
    image0, image1, kpts0, kpts1, matches, _ = pair
    fig = draw_matches(image0, image1, kpts0, kpts1, matches, None)
    assert count_match_lines(fig) == {"correct": 0, "wrong": 0, "unverified": 4}
    assert fig._suptitle.get_text() == "4 matches"
    pixels = read_png(plot_matches(image0, image1, kpts0, kpts1, matches, None, tmp_path / "m"))
    assert coloured_fraction(pixels, channel=0) == 0  # no red line without ground truth


def test_plot_matches_with_no_matches(tmp_path: Path, pair) -> None:
    image0, image1, kpts0, kpts1, _, _ = pair
    fig = draw_matches(image0, image1, kpts0, kpts1, np.zeros((0, 2), int), np.zeros(0, bool), threshold_px=3)
    assert count_match_lines(fig) == {"correct": 0, "wrong": 0, "unverified": 0}
    assert "0 matches, 0 correct" in fig._suptitle.get_text()


def test_plot_matches_rejects_bad_input(pair) -> None:
    image0, image1, kpts0, kpts1, matches, correct = pair
    with pytest.raises(ValueError, match="index outside"):
        draw_matches(image0, image1, kpts0, kpts1, np.array([[0, 6]]), None)
    with pytest.raises(ValueError, match="one flag per match"):
        draw_matches(image0, image1, kpts0, kpts1, matches, correct[:2])


def test_plot_keypoints_with_scores(tmp_path: Path) -> None:
    image = np.full((H, W, 3), 200, dtype=np.uint8)
    kpts = np.array([[4.0, 4.0], [20.0, 10.0], [40.0, 28.0]])
    scores = np.array([0.1, 0.5, 0.9])
    fig = draw_keypoints(image, kpts, scores)
    assert len(fig.axes) == 2  # image and colour bar
    dots = [c for c in fig.axes[0].collections if c.get_gid() == "keypoints"][0]
    np.testing.assert_allclose(dots.get_offsets(), kpts)
    np.testing.assert_allclose(dots.get_array(), scores)
    assert fig._suptitle.get_text() == "3 key points"
    read_png(plot_keypoints(image, kpts, tmp_path / "kp.png", scores=scores))
    read_png(plot_keypoints(image[..., 0], kpts, tmp_path / "kp_plain.png"))


def test_plot_loss_curves_from_jsonl(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    lines = [
        json.dumps(
            {"step": s, "loss": 2.0 / s, "heatmap": 1.5 / s, "descriptor": 0.5 / s, "lr": 1e-3, "images_per_s": 50.0}
        )
        for s in range(10, 110, 10)
    ]
    history.write_text("\n".join(lines) + '\n{"step": 110, "lo')  # last line cut by a kill
    with pytest.warns(UserWarning, match="line"):
        fig = draw_loss_curves(history)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [
        "loss (weighted total)", "heatmap (unweighted)", "descriptor (unweighted)"]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), list(range(10, 110, 10)))
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "optimiser step" and "loss" in ax.get_ylabel()

    with pytest.warns(UserWarning):
        read_png(plot_loss_curves(history, tmp_path / "loss.png", title="distillation"))


def test_plot_loss_curves_linear_when_a_term_is_negative(tmp_path: Path) -> None:
    records = [{"step": 1, "loss": 1.0, "reward": -0.5}, {"step": 2, "loss": float("nan"), "reward": -0.2},
               {"step": 3, "loss": 0.5, "reward": 0.1}]
    fig = draw_loss_curves(records)
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    assert list(ax.get_lines()[0].get_xdata()) == [1, 3]  # the NaN step is left out
    read_png(plot_loss_curves(records, tmp_path / "loss_lin.png", title="t"))


def test_plot_accuracy_vs_latency(tmp_path: Path) -> None:
    points = [
        {"name": "superpoint", "latency_ms": 12.0, "accuracy": 0.71, "params": 1_300_865},
        {"name": "half", "latency_ms": 5.0, "accuracy": 0.66, "params": 346_465},
        {"name": "tiny", "latency_ms": 2.5, "accuracy": 0.58, "params": 122_913},
    ]
    fig = draw_accuracy_vs_latency(points, "MMA@3px")
    ax = fig.axes[0]
    scatter = [c for c in ax.collections if c.get_gid() == "models"][0]
    np.testing.assert_allclose(scatter.get_offsets(), [[12, 0.71], [5, 0.66], [2.5, 0.58]])
    sizes = scatter.get_sizes()
    assert sizes[0] > sizes[1] > sizes[2]  # bigger model, bigger marker
    labels = [t.get_text() for t in ax.texts]
    assert labels[0] == "superpoint\n1.3M params" and labels[2] == "tiny\n123k params"
    assert ax.get_ylabel() == "MMA@3px" and "latency (ms" in ax.get_xlabel()
    read_png(plot_accuracy_vs_latency(points, tmp_path / "bench.png", "MMA@3px"))
    with pytest.raises(ValueError, match="latency_ms"):
        draw_accuracy_vs_latency([{"name": "x", "accuracy": 1.0}], "acc")


def test_match_plot_has_a_colour_legend() -> None:
    from detkd.viz.plots import draw_matches

    image = np.zeros((20, 30))
    points = np.array([[1.0, 1.0], [5.0, 5.0]])
    fig = draw_matches(image, image, points, points, np.array([[0, 0], [1, 1]]), np.array([True, False]))
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["key point", "correct match", "wrong match"]


def test_labels_of_models_close_together_take_different_places() -> None:
    from detkd.viz.plots import _label_offsets

    latency = np.array([10.0, 10.2, 10.1, 100.0])
    accuracy = np.array([0.5, 0.5, 0.51, 0.9])
    offsets = _label_offsets(latency, accuracy)
    assert len(set(offsets[:3])) == 3  # three models within 8% of each other: three places
    assert offsets[3] == (6, 6)  # a model on its own keeps the first place


def test_end_labels_that_would_overlap_are_spread_around_their_mean():
    from detkd.viz.curves import spread_positions

    assert spread_positions([0.0, 2.0, 30.0], 10.0) == [-4.0, 6.0, 30.0]
    assert spread_positions([30.0, 0.0, 2.0], 10.0) == [30.0, -4.0, 6.0]  # the order given is kept
    assert spread_positions([0.0, 20.0, 40.0], 10.0) == [0.0, 20.0, 40.0]  # far enough apart: untouched
    # three together (mean 1): 1 - 10, 1, 1 + 10; then a fourth that the spread group now reaches joins it
    assert spread_positions([0.0, 1.0, 2.0], 10.0) == [-9.0, 1.0, 11.0]
    assert spread_positions([0.0, 1.0, 2.0, 14.0], 10.0) == [-10.75, -0.75, 9.25, 19.25]  # mean 4.25
    assert spread_positions([5.0, 5.0], 4.0) == [3.0, 7.0]
    assert spread_positions([], 10.0) == []


def test_validation_plot_keeps_close_end_values_readable(tmp_path):
    from detkd.viz.curves import draw_validation_curves

    runs = {"teacher": [{"step": 500, "map": 9.0}, {"step": 1000, "map": 86.3}],
            "baseline": [{"step": 1000, "map": 16.0}, {"step": 2000, "map": 76.7}],
            "gid": [{"step": 1000, "map": 16.5}, {"step": 2000, "map": 76.3}]}
    fig = draw_validation_curves(runs, ["map"])
    fig.canvas.draw()
    boxes = [text.get_window_extent() for text in fig.axes[0].texts]
    assert [text.get_text() for text in fig.axes[0].texts] == ["86.3", "76.7", "76.3"]
    assert not boxes[1].overlaps(boxes[2])
