"""Detections (and ground truth) drawn over images, on a bare Agg figure (no pyplot, no display).

Boxes are ``xyxy`` pixels in the continuous frame where the image spans ``[0, W] x [0, H]``
(as in :mod:`detkd.data.detection`); they are drawn on pixel edges, so a box ``(0, 0, 1, 1)``
outlines exactly the top-left pixel.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from detkd.viz.canvas import ArrayLike, as_image, figure_for, save_figure, show, title_height_in, to_numpy
from detkd.viz.labels import LabelPlacer

GROUND_TRUTH_COLOUR = "#ffffff"
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
                 "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000")


def _targets(value: Any, what: str, with_scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``boxes (N, 4)``, ``labels (N,)``, ``scores (N,)`` (or ``None``) of a dict / record."""
    if value is None:
        return np.zeros((0, 4)), np.zeros(0, np.int64), None
    get = (lambda key: getattr(value, key, None)) if not isinstance(value, Mapping) else value.get
    boxes = to_numpy(get("boxes")).astype(np.float64).reshape(-1, 4) if get("boxes") is not None else None
    labels = to_numpy(get("labels")).astype(np.int64).reshape(-1) if get("labels") is not None else None
    if boxes is None or labels is None or len(boxes) != len(labels):
        raise ValueError(f"{what} needs 'boxes' (N, 4) and 'labels' (N,) of the same length")
    scores = None
    if with_scores:
        if get("scores") is None:
            raise ValueError(f"{what} needs 'scores' (N,)")
        scores = to_numpy(get("scores")).astype(np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{what}: {len(boxes)} boxes but {len(scores)} scores")
    return boxes, labels, scores


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)


def draw_detections_on(
    ax: Any,
    image: ArrayLike,
    predictions: Mapping[str, Any] | None,
    ground_truth: Any = None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.3,
    max_detections: int = 100,
) -> int:
    """Draw on ``ax``: the image, ground truth (white, dashed) and predictions above ``score_threshold``
    (coloured by class, labelled ``name score``). Returns how many predictions were drawn."""
    img = as_image(image, "image")
    show(ax, img)
    gt_boxes, gt_labels, _ = _targets(ground_truth, "ground_truth", with_scores=False)
    for (x1, y1, x2, y2), label in zip(gt_boxes, gt_labels):
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=GROUND_TRUTH_COLOUR,
                               linestyle="--", linewidth=1.0, gid="ground-truth"))
    boxes, labels, scores = _targets(predictions, "predictions", with_scores=True)
    order = np.argsort(-scores)[:max_detections] if scores is not None else []
    placer = LabelPlacer(ax, img.shape[1], img.shape[0])
    drawn = 0
    for i in order:  # highest score first: its label gets the first choice of place
        if scores[i] < score_threshold:
            continue
        x1, y1, x2, y2 = boxes[i]
        colour = CLASS_COLOURS[int(labels[i]) % len(CLASS_COLOURS)]
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5,
                               gid="detection"))
        placer.place(boxes[i], f"{_class_name(int(labels[i]), class_names)} {scores[i]:.2f}", colour)
        drawn += 1
    return drawn


def draw_detections(
    image: ArrayLike,
    predictions: Mapping[str, Any] | None,
    ground_truth: Any = None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.3,
    max_detections: int = 100,
    title: str = "",
) -> Figure:
    """The figure of :func:`plot_detections`."""
    img = as_image(image, "image")
    height, width = img.shape[:2]
    fig = figure_for(width, height, title_lines=1)
    ax = fig.add_axes((0, 0, 1, 1 - title_height_in(1) / fig.get_figheight()))
    drawn = draw_detections_on(ax, img, predictions, ground_truth, class_names, score_threshold, max_detections)
    gt_count = len(_targets(ground_truth, "ground_truth", False)[0])
    counts = f"{drawn} detections (score >= {score_threshold:g})" + (f", {gt_count} ground truth" if ground_truth is not None else "")
    fig.suptitle(f"{title}: {counts}" if title else counts, fontsize=10, y=0.995, va="top")
    return fig


def plot_detections(
    image: ArrayLike,
    predictions: Mapping[str, Any] | None,
    path: str | Path,
    ground_truth: Any = None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.3,
    max_detections: int = 100,
    title: str = "",
) -> Path:
    """Save detections over an image; returns the written path.

    Args:
        image: ``(H, W, 3)`` / ``(3, H, W)`` / grey, uint8 or float in ``[0, 1]``.
        predictions: ``{"boxes": (N, 4) xyxy px, "scores": (N,), "labels": (N,)}`` or ``None``.
        path: output file (``.png`` added when there is no suffix).
        ground_truth: ``{"boxes", "labels"}`` or a :class:`~detkd.data.detection.DetectionRecord`, drawn dashed white.
        class_names: names of the labels (default: the label numbers).
        score_threshold: predictions below it are not drawn.
        max_detections: at most this many predictions (highest scores) are drawn.
    """
    fig = draw_detections(image, predictions, ground_truth, class_names, score_threshold, max_detections, title)
    return save_figure(fig, path)


def plot_detection_grid(
    images: Sequence[ArrayLike],
    predictions: Sequence[Mapping[str, Any] | None],
    path: str | Path,
    ground_truths: Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.3,
    columns: int = 3,
    title: str = "",
) -> Path:
    """Several images with their detections in one figure (``columns`` per row, 4 inches each)."""
    if len(images) != len(predictions) or (ground_truths is not None and len(ground_truths) != len(images)):
        raise ValueError("images, predictions (and ground_truths) need one entry per image")
    if not images:
        raise ValueError("plot_detection_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    fig = Figure(figsize=(4 * columns, 4 * rows + (0.4 if title else 0)), dpi=100)
    FigureCanvasAgg(fig)
    for i, image in enumerate(images):
        ax = fig.add_subplot(rows, columns, i + 1)
        gt = ground_truths[i] if ground_truths is not None else None
        drawn = draw_detections_on(ax, image, predictions[i], gt, class_names, score_threshold)
        ax.set_title(f"{drawn} detections" + (f", {len(_targets(gt, 'ground_truth', False)[0])} gt" if gt is not None else ""),
                     fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
