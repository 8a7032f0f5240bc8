"""Several models' detections side by side, every box coloured by what it is: hit, false alarm or miss.

One row per image (named by its file), one column per model (titled by the model's name). In each
panel the detections with a score at or above the plot threshold are matched to the ground truth
by :func:`match_detections` (IoU >= 0.5 with a box of the same class, greedy by score, as COCO
matches at AP50), then drawn: hits green, false alarms red, missed ground-truth boxes orange
dashed, and the panel's title counts them. Ground-truth boxes marked ``ignore`` (COCO crowd, VOC
difficult) are drawn grey and dotted; a detection on one is neither a hit nor a false alarm.

The figure is sized from the images so that a large image is drawn near its native resolution
(one image pixel per figure pixel at :data:`DPI`), within :data:`MAX_FIGURE_WIDTH_IN` x
:data:`MAX_FIGURE_HEIGHT_IN` inches; small images are enlarged to :data:`MIN_PANEL_WIDTH_IN`.

Boxes are ``xyxy`` pixels in the continuous frame where the image spans ``[0, W] x [0, H]`` (as in
:mod:`detkd.data.detection`), drawn on pixel edges. Drawing uses a bare Agg figure (no pyplot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from detkd.viz.canvas import ArrayLike, as_image, save_figure, to_numpy
from detkd.viz.labels import LabelPlacer

HIT_IOU = 0.5  # a detection is a hit at IoU >= this with an unmatched ground-truth box of its class
HIT_COLOUR = "#1db31d"  # green
FALSE_ALARM_COLOUR = "#e31a1c"  # red
MISS_COLOUR = "#ff8c00"  # orange (dashed)
IGNORED_COLOUR = "#a0a0a0"  # grey (dotted): ignored ground truth and the detections on it

DPI = 100
MIN_PANEL_WIDTH_IN = 4.0
MAX_PANEL_WIDTH_IN = 16.0
MAX_FIGURE_WIDTH_IN = 36.0
MAX_FIGURE_HEIGHT_IN = 72.0
MAX_LABELLED_BOXES = 30  # panels with more boxes draw them without score / class labels

# strips of the layout, inches
_MARGIN_IN = 0.1
_COLUMN_GAP_IN = 0.15
_TITLE_IN = 0.35
_LEGEND_ROW_IN = 0.22
_COLUMN_TITLE_IN = 0.3
_ROW_NAME_IN = 0.28
_PANEL_TITLE_IN = 0.22
_ROW_GAP_IN = 0.12
_ROW_STRIPS_IN = _ROW_NAME_IN + _PANEL_TITLE_IN + _ROW_GAP_IN  # above and below each row's images


# ---------------------------------------------------------------------- matching
@dataclass(frozen=True)
class BoxMatch:
    """Which detections of one image are hits or false alarms, and which ground-truth boxes were missed.

    Attributes:
        hit: ``(N,)`` bool over the detections; ``True`` where it matched a ground-truth box.
        false_alarm: ``(N,)`` bool; ``True`` where it matched none (and lies on no ignored box).
        matched: ``(N,)`` int64 index of the ground-truth box each detection matched, ``-1`` if none.
        missed: ``(M,)`` bool over the ground truth; ``True`` for a box no detection matched
            (ignored boxes are never missed).
    """

    hit: np.ndarray
    false_alarm: np.ndarray
    matched: np.ndarray
    missed: np.ndarray

    @property
    def on_ignored(self) -> np.ndarray:
        """``(N,)`` bool: detections on an ignored ground-truth box (neither hit nor false alarm)."""
        return ~self.hit & ~self.false_alarm

    @property
    def counts(self) -> tuple[int, int, int]:
        """``(hits, false alarms, misses)``."""
        return int(self.hit.sum()), int(self.false_alarm.sum()), int(self.missed.sum())


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a (N, 4)`` with every box of ``b (M, 4)`` (``xyxy``): ``(N, M)`` float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(
    boxes: ArrayLike,
    scores: ArrayLike,
    labels: ArrayLike,
    gt_boxes: ArrayLike,
    gt_labels: ArrayLike,
    gt_ignore: ArrayLike | None = None,
    iou_threshold: float = HIT_IOU,
) -> BoxMatch:
    """Greedy matching of one image's detections to its ground truth, highest score first.

    Each detection, in order of falling score (ties: in the given order), takes the unmatched
    ground-truth box of its class with the highest IoU, if that IoU is at least ``iou_threshold``:
    a hit. Otherwise it is a false alarm, unless it overlaps an ignored box of its class by at least
    ``iou_threshold`` (then it is neither). Ground-truth boxes left unmatched are misses, ignored ones
    excepted.

    Args:
        boxes: ``(N, 4)`` detections, ``xyxy`` pixels.
        scores: ``(N,)`` their scores.
        labels: ``(N,)`` their class indices.
        gt_boxes: ``(M, 4)`` ground truth, ``xyxy`` pixels.
        gt_labels: ``(M,)`` its class indices.
        gt_ignore: ``(M,)`` bool, ``True`` for boxes to be neither found nor punished; default none.
        iou_threshold: the least IoU of a hit.

    Returns:
        A :class:`BoxMatch`.
    """
    boxes = to_numpy(boxes).astype(np.float64).reshape(-1, 4)
    scores = to_numpy(scores).astype(np.float64).reshape(-1)
    labels = to_numpy(labels).astype(np.int64).reshape(-1)
    gt_boxes = to_numpy(gt_boxes).astype(np.float64).reshape(-1, 4)
    gt_labels = to_numpy(gt_labels).astype(np.int64).reshape(-1)
    ignore = np.zeros(len(gt_boxes), bool) if gt_ignore is None else to_numpy(gt_ignore).astype(bool).reshape(-1)
    if not len(boxes) == len(scores) == len(labels) or not len(gt_boxes) == len(gt_labels) == len(ignore):
        raise ValueError(f"match_detections: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels; "
                         f"{len(gt_boxes)} ground-truth boxes, {len(gt_labels)} labels, {len(ignore)} ignore flags")
    iou = box_iou(boxes, gt_boxes)
    iou[labels[:, None] != gt_labels[None, :]] = -1.0  # another class never matches
    hit = np.zeros(len(boxes), bool)
    false_alarm = np.zeros(len(boxes), bool)
    matched = np.full(len(boxes), -1, np.int64)
    taken = np.zeros(len(gt_boxes), bool)
    for i in np.argsort(-scores, kind="stable"):
        free = np.where(taken | ignore, -1.0, iou[i])
        best = int(np.argmax(free)) if len(free) else -1
        if best >= 0 and free[best] >= iou_threshold:
            hit[i], matched[i], taken[best] = True, best, True
        elif not np.any(ignore & (iou[i] >= iou_threshold)):
            false_alarm[i] = True
    return BoxMatch(hit=hit, false_alarm=false_alarm, matched=matched, missed=~taken & ~ignore)


# ---------------------------------------------------------------------- inputs
def detections_above(
    prediction: Mapping[str, Any] | None, score_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``boxes (N, 4)``, ``scores (N,)``, ``labels (N,)`` of the detections scoring at least ``score_threshold``.

    ``prediction`` is ``{"boxes", "scores", "labels"}`` (tensors or arrays) or ``None`` (no detections).
    """
    if prediction is None:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    boxes = to_numpy(prediction["boxes"]).astype(np.float64).reshape(-1, 4)
    scores = to_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
    labels = to_numpy(prediction["labels"]).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"a prediction has {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
    keep = scores >= score_threshold
    return boxes[keep], scores[keep], labels[keep]


def ground_truth_of(value: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``boxes (M, 4)``, ``labels (M,)``, ``ignore (M,)`` of a :class:`~detkd.data.detection.DetectionRecord`
    or a ``{"boxes", "labels"[, "ignore"]}`` mapping; ``None`` is no ground truth."""
    if value is None:
        return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool)
    get = value.get if isinstance(value, Mapping) else (lambda key: getattr(value, key, None))
    boxes = to_numpy(get("boxes")).astype(np.float64).reshape(-1, 4)
    labels = to_numpy(get("labels")).astype(np.int64).reshape(-1)
    ignore = get("ignore")
    ignore = np.zeros(len(boxes), bool) if ignore is None else to_numpy(ignore).astype(bool).reshape(-1)
    return boxes, labels, ignore


# ---------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ComparisonLayout:
    """Where the parts of a comparison figure go, in inches.

    Attributes:
        columns: panels per row (one per model).
        panel_width: width of every panel's image area.
        row_heights: ``(R,)`` height of each row's image area.
        header: height above the first row (title, legend, column titles).
    """

    columns: int
    panel_width: float
    row_heights: tuple[float, ...]
    header: float

    @property
    def width(self) -> float:
        return 2 * _MARGIN_IN + self.columns * self.panel_width + (self.columns - 1) * _COLUMN_GAP_IN

    @property
    def height(self) -> float:
        return self.header + sum(self.row_heights) + len(self.row_heights) * _ROW_STRIPS_IN + _MARGIN_IN

    def row_top(self, row: int) -> float:
        """Inches from the top of the figure to the top of row ``row`` (its name strip)."""
        return self.header + sum(self.row_heights[:row]) + row * _ROW_STRIPS_IN

    def panel_box(self, row: int, column: int) -> tuple[float, float, float, float]:
        """``(left, bottom, width, height)`` in figure fractions of the image area of one panel."""
        left = _MARGIN_IN + column * (self.panel_width + _COLUMN_GAP_IN)
        top = self.row_top(row) + _ROW_NAME_IN + _PANEL_TITLE_IN
        bottom = self.height - top - self.row_heights[row]
        width, height = self.width, self.height
        return left / width, bottom / height, self.panel_width / width, self.row_heights[row] / height

    def column_centre(self, column: int) -> float:
        """Figure fraction ``x`` of the middle of column ``column``."""
        return (_MARGIN_IN + column * (self.panel_width + _COLUMN_GAP_IN) + self.panel_width / 2) / self.width


def comparison_layout(image_sizes: Sequence[tuple[int, int]], columns: int, header: float) -> ComparisonLayout:
    """Panel and row sizes for images of ``image_sizes`` (``(H, W)`` pixels each, one per row) in ``columns``.

    Panels are as wide as the widest image at :data:`DPI` (native resolution), at least
    :data:`MIN_PANEL_WIDTH_IN` and at most :data:`MAX_PANEL_WIDTH_IN` or the share of one column in
    :data:`MAX_FIGURE_WIDTH_IN`. Each row keeps its image's aspect (and is at most
    :data:`MAX_PANEL_WIDTH_IN` high); everything shrinks together when the figure would be taller
    than :data:`MAX_FIGURE_HEIGHT_IN`.
    """
    if not image_sizes or columns < 1:
        raise ValueError("comparison_layout needs at least one image and one column")
    widest = max(w for _, w in image_sizes)
    room = (MAX_FIGURE_WIDTH_IN - 2 * _MARGIN_IN - (columns - 1) * _COLUMN_GAP_IN) / columns
    panel = min(max(widest / DPI, MIN_PANEL_WIDTH_IN), MAX_PANEL_WIDTH_IN, room)
    rows = [min(panel * h / max(w, 1), MAX_PANEL_WIDTH_IN) for h, w in image_sizes]
    fixed = header + len(rows) * _ROW_STRIPS_IN + _MARGIN_IN
    scale = min(1.0, max(MAX_FIGURE_HEIGHT_IN - fixed, 1.0) / sum(rows))
    return ComparisonLayout(columns, panel * scale, tuple(r * scale for r in rows), header)


# ---------------------------------------------------------------------- drawing
def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def panel_counts_text(match: BoxMatch) -> str:
    """``"2 hits / 3 false alarms / 1 miss"`` of one panel."""
    hits, false_alarms, misses = match.counts
    return f"{_plural(hits, 'hit')} / {_plural(false_alarms, 'false alarm')} / {_plural(misses, 'miss', 'misses')}"


def _box(ax: Any, box: np.ndarray, colour: str, gid: str, linestyle: str = "-", linewidth: float = 1.5) -> None:
    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linestyle=linestyle,
                           linewidth=linewidth, gid=gid))


def draw_panel(
    ax: Any,
    image: ArrayLike,
    detections: tuple[np.ndarray, np.ndarray, np.ndarray],
    ground_truth: tuple[np.ndarray, np.ndarray, np.ndarray],
    class_names: Sequence[str] | None = None,
) -> BoxMatch:
    """Draw one image with one model's detections on ``ax``, coloured by :func:`match_detections`.

    Args:
        ax: a matplotlib axes.
        image: ``(H, W, 3)`` / ``(3, H, W)`` / grey, uint8 or float in ``[0, 1]``.
        detections: ``boxes (N, 4)``, ``scores (N,)``, ``labels (N,)`` to draw (already thresholded).
        ground_truth: ``boxes (M, 4)``, ``labels (M,)``, ``ignore (M,)``.
        class_names: names of the labels; with more than one class the labels name the class.

    Returns:
        The panel's :class:`BoxMatch`. Patches carry the ``gid`` ``hit``, ``false-alarm``,
        ``ignored-detection``, ``miss`` or ``ignored``; matched ground-truth boxes are not drawn.
    """
    img = as_image(image, "image")
    height, width = img.shape[:2]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="antialiased")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    boxes, scores, labels = detections
    gt_boxes, gt_labels, gt_ignore = ground_truth
    match = match_detections(boxes, scores, labels, gt_boxes, gt_labels, gt_ignore)
    several = class_names is not None and len(class_names) > 1
    labelled = len(boxes) + int(match.missed.sum()) <= MAX_LABELLED_BOXES

    def name(label: int) -> str:
        return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)

    for k in np.flatnonzero(gt_ignore):
        _box(ax, gt_boxes[k], IGNORED_COLOUR, "ignored", linestyle=":", linewidth=1.2)
    for k in np.flatnonzero(match.missed):
        _box(ax, gt_boxes[k], MISS_COLOUR, "miss", linestyle="--")
    detection_labels = []  # (box, text, colour) in drawing order: lowest score first
    for i in np.argsort(scores, kind="stable"):  # highest score drawn last, on top
        colour, gid = ((HIT_COLOUR, "hit") if match.hit[i] else (FALSE_ALARM_COLOUR, "false-alarm")
                       if match.false_alarm[i] else (IGNORED_COLOUR, "ignored-detection"))
        _box(ax, boxes[i], colour, gid)
        if labelled:
            text = f"{name(int(labels[i]))} {scores[i]:.2f}" if several else f"{scores[i]:.2f}"
            detection_labels.append((boxes[i], text, colour))
    if labelled:  # most important first: detections by decreasing score, then the misses' classes
        placer = LabelPlacer(ax, width, height)
        for box, text, colour in reversed(detection_labels):
            placer.place(box, text, colour)
        for k in np.flatnonzero(match.missed) if several else ():
            placer.place(gt_boxes[k], name(int(gt_labels[k])), MISS_COLOUR)
    return match


def legend_entries(with_ignored: bool) -> list[tuple[Line2D, str]]:
    """The legend's ``(handle, text)`` pairs: hit, false alarm, miss (and ignored ground truth)."""
    entries = [(Line2D([], [], color=HIT_COLOUR, linewidth=2), f"hit (IoU \u2265 {HIT_IOU:g}, same class)"),
               (Line2D([], [], color=FALSE_ALARM_COLOUR, linewidth=2), "false alarm"),
               (Line2D([], [], color=MISS_COLOUR, linewidth=2, linestyle="--"), "missed ground truth")]
    if with_ignored:
        entries.append((Line2D([], [], color=IGNORED_COLOUR, linewidth=1.5, linestyle=":"), "ignored ground truth"))
    return entries


def _legend_columns(entries: Sequence[tuple[Line2D, str]], width_in: float) -> int:
    """Legend entries that fit side by side in ``width_in`` inches (8-point text, about 0.07 in a letter)."""
    widest = max(0.6 + 0.07 * len(text) for _, text in entries)
    return max(1, min(len(entries), int((width_in - 2 * _MARGIN_IN) // widest)))


def draw_model_comparison(
    images: Sequence[ArrayLike],
    ground_truths: Sequence[Any],
    predictions: Mapping[str, Sequence[Mapping[str, Any] | None]],
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.3,
    row_names: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """The figure of :func:`plot_model_comparison`."""
    if not images:
        raise ValueError("draw_model_comparison needs at least one image")
    if not predictions:
        raise ValueError("draw_model_comparison needs at least one model")
    if len(ground_truths) != len(images) or (row_names is not None and len(row_names) != len(images)):
        raise ValueError("images, ground_truths (and row_names) need one entry per image")
    for column, per_image in predictions.items():
        if len(per_image) != len(images):
            raise ValueError(f"model '{column}' has {len(per_image)} predictions for {len(images)} images")
    pixels = [as_image(image, "image") for image in images]
    truths = [ground_truth_of(gt) for gt in ground_truths]
    entries = legend_entries(with_ignored=any(ignore.any() for _, _, ignore in truths))
    columns = len(predictions)
    sizes = [(int(p.shape[0]), int(p.shape[1])) for p in pixels]
    above_legend = _TITLE_IN if title else _MARGIN_IN
    # the legend's rows depend on the width, which shrinks as the header grows (tall figures): take the
    # width under the tallest legend (one entry a row), which the final figure is at least as wide as
    narrowest = comparison_layout(sizes, columns, above_legend + len(entries) * _LEGEND_ROW_IN + _COLUMN_TITLE_IN)
    legend_columns = _legend_columns(entries, narrowest.width)
    header = above_legend + math.ceil(len(entries) / legend_columns) * _LEGEND_ROW_IN + _COLUMN_TITLE_IN
    layout = comparison_layout(sizes, columns, header)
    fig = Figure(figsize=(layout.width, layout.height), dpi=DPI)
    FigureCanvasAgg(fig)
    top = above_legend / layout.height
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / layout.height, va="top")
    fig.legend([h for h, _ in entries], [t for _, t in entries], loc="upper center", bbox_to_anchor=(0.5, 1 - top),
               ncol=legend_columns, fontsize=8, frameon=False, handlelength=2.5, borderaxespad=0.0, borderpad=0.1)
    for column, name in enumerate(predictions):
        fig.text(layout.column_centre(column), 1 - (header - 0.05) / layout.height, name, fontsize=11,
                 fontweight="bold", ha="center", va="bottom")
    for row, (image, truth) in enumerate(zip(pixels, truths)):
        row_name = row_names[row] if row_names is not None else f"image {row + 1}"
        boxes = _plural(int((~truth[2]).sum()), "ground-truth box", "ground-truth boxes")  # ignored ones aside
        fig.text(_MARGIN_IN / layout.width, 1 - (layout.row_top(row) + _ROW_NAME_IN - 0.04) / layout.height,
                 f"{row_name}  ({image.shape[1]}x{image.shape[0]} px, {boxes})", fontsize=9, ha="left", va="bottom")
        for column, per_image in enumerate(predictions.values()):
            ax = fig.add_axes(layout.panel_box(row, column))
            match = draw_panel(ax, image, detections_above(per_image[row], score_threshold), truth, class_names)
            ax.set_title(panel_counts_text(match), fontsize=8, pad=2)
    return fig


def plot_model_comparison(
    images: Sequence[ArrayLike],
    ground_truths: Sequence[Any],
    predictions: Mapping[str, Sequence[Mapping[str, Any] | None]],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.3,
    row_names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Save every model's detections side by side on the same images; returns the written path.

    Args:
        images: ``R`` images, each ``(H, W, 3)`` / ``(3, H, W)`` / grey, uint8 or float in ``[0, 1]``.
        ground_truths: ``R`` :class:`~detkd.data.detection.DetectionRecord` (or ``{"boxes", "labels"[, "ignore"]}``).
        predictions: column title (model name) -> ``R`` predictions ``{"boxes": (N, 4) xyxy px,
            "scores": (N,), "labels": (N,)}`` (or ``None``), one column each in this order.
        path: output file (``.png`` added when there is no suffix).
        class_names: names of the labels (default: the label numbers).
        score_threshold: detections scoring below it are neither drawn nor counted.
        row_names: ``R`` names of the images (their files), written above each row.
        title: figure title (none when empty).
    """
    fig = draw_model_comparison(images, ground_truths, predictions, class_names, score_threshold, row_names, title)
    return save_figure(fig, path)
