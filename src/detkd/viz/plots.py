"""Figures for reports: matches, key points, loss curves, accuracy against latency.

Everything draws on a bare :class:`matplotlib.figure.Figure` rendered by the Agg canvas: no
``pyplot``, no global backend switch, no display needed, safe in worker processes.

Conventions: images are ``(H, W)`` grey or ``(H, W, 3)`` colour (``(1, H, W)`` / ``(3, H, W)``
tensors are accepted), ``uint8`` in ``[0, 255]`` or float in ``[0, 1]`` (float images whose
maximum exceeds 1 are taken as ``[0, 255]``). Key points are ``(x, y)`` pixel coordinates,
the centre of the top-left pixel being ``(0, 0)`` (as in :mod:`detkd.models.superpoint`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

ArrayLike = Any  # numpy array or torch tensor
History = Union[Sequence[Mapping[str, Any]], str, Path]

#: Colours of match lines and the ``gid`` of each group, as :func:`count_match_lines` reads them.
MATCH_GROUPS = {
    "correct": ("matches-correct", "#1db31d"),  # green
    "wrong": ("matches-wrong", "#e31a1c"),  # red
    "unverified": ("matches-unverified", "#1f9be3"),  # blue: no ground truth given
}
KEYPOINT_COLOUR = "#ffd21f"
MATCH_GAP_PX = 8  # white pixels between the two images of a match figure


def _title_height_in(lines: int) -> float:
    """Inches kept above the image for ``lines`` lines of a 10-point title."""
    return 0.1 + 0.2 * lines

#: History fields that are not loss terms (written by detkd.engine.Trainer and friends).
NON_LOSS_FIELDS = frozenset(
    {"step", "epoch", "lr", "learning_rate", "images_per_s", "data_wait", "time", "seconds", "wall_s"}
)


# ---------------------------------------------------------------------- matches
def draw_matches(
    image0: ArrayLike,
    image1: ArrayLike,
    kpts0: ArrayLike,
    kpts1: ArrayLike,
    matches: ArrayLike,
    correct: ArrayLike | None = None,
    title: str = "",
    threshold_px: float | None = None,
) -> Figure:
    """The figure of :func:`plot_matches`, for inspection or further drawing.

    Args:
        image0, image1: the two images (see module doc); heights may differ.
        kpts0: ``(N, 2)`` key points of ``image0``, pixels (x, y).
        kpts1: ``(M, 2)`` key points of ``image1``, pixels (x, y).
        matches: ``(K, 2)`` integer pairs ``(index in kpts0, index in kpts1)``.
        correct: ``(K,)`` bool, True where the match is right (green), False where wrong
            (red); None draws all matches in blue.
        title: first title line; a second gives the counts.
        threshold_px: the correctness threshold in pixels, shown in the counts.

    Returns:
        A figure with one axes; match lines are :class:`~matplotlib.collections.LineCollection`
        objects whose ``gid`` is in :data:`MATCH_GROUPS` (see :func:`count_match_lines`).
    """
    img0, img1 = _as_image(image0, "image0"), _as_image(image1, "image1")
    p0, p1 = _as_points(kpts0, "kpts0"), _as_points(kpts1, "kpts1")
    pairs = np.asarray(_to_numpy(matches))
    if pairs.size == 0:
        pairs = np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"matches must be (K, 2) index pairs, got shape {pairs.shape}")
    if pairs.dtype.kind not in "iu":
        if not np.all(pairs == np.round(pairs)):
            raise ValueError("matches must hold integer indices")
        pairs = pairs.astype(np.int64)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= len(p0) or pairs[:, 1].max() >= len(p1)):
        raise ValueError(
            f"matches index outside the key points: kpts0 has {len(p0)}, kpts1 has {len(p1)}, "
            f"matches span [{pairs.min()}, {pairs.max()}]"
        )
    is_correct = None
    if correct is not None:
        is_correct = np.asarray(_to_numpy(correct)).astype(bool).reshape(-1)
        if is_correct.shape != (len(pairs),):
            raise ValueError(f"correct must have one flag per match ({len(pairs)}), got {is_correct.shape}")

    canvas, offset_x = _side_by_side(img0, img1)
    height, width = canvas.shape[:2]
    fig = _figure_for(width, height, title_lines=2 if title else 1)
    ax = fig.add_axes((0, 0, 1, 1 - _title_height_in(2 if title else 1) / fig.get_figheight()))
    _show(ax, canvas)

    shifted1 = p1 + np.array([offset_x, 0.0])
    dot_size = 4 if len(p0) + len(p1) < 2000 else 1
    ax.scatter(p0[:, 0], p0[:, 1], s=dot_size, c=KEYPOINT_COLOUR, linewidths=0, zorder=3, gid="keypoints0")
    ax.scatter(shifted1[:, 0], shifted1[:, 1], s=dot_size, c=KEYPOINT_COLOUR, linewidths=0, zorder=3, gid="keypoints1")

    segments = np.stack([p0[pairs[:, 0]], shifted1[pairs[:, 1]]], axis=1) if len(pairs) else np.zeros((0, 2, 2))
    if is_correct is None:
        groups = {"unverified": segments}
    else:  # wrong drawn last, on top, so errors stay visible
        groups = {"correct": segments[is_correct], "wrong": segments[~is_correct]}
    for group, group_segments in groups.items():
        gid, colour = MATCH_GROUPS[group]
        if len(group_segments):
            ax.add_collection(
                LineCollection(group_segments, colors=colour, linewidths=0.8, alpha=0.85, zorder=2, gid=gid)
            )

    from matplotlib.lines import Line2D

    legend = [Line2D([], [], marker="o", linestyle="", markersize=4, color=KEYPOINT_COLOUR, label="key point")]
    legend += [Line2D([], [], color=MATCH_GROUPS[group][1], linewidth=1.5, label=f"{group} match") for group in groups]
    ax.legend(handles=legend, loc="lower right", fontsize=7, framealpha=0.8)
    counts = f"{len(pairs)} matches"
    if is_correct is not None:
        counts += f", {int(is_correct.sum())} correct"
        if threshold_px is not None:
            counts += f" ({threshold_px:g} px)"
    fig.suptitle(f"{title}\n{counts}" if title else counts, fontsize=10, y=0.995, va="top")
    return fig


def count_match_lines(figure: Figure) -> dict[str, int]:
    """Number of match lines drawn per group (``correct``, ``wrong``, ``unverified``)."""
    by_gid = {gid: group for group, (gid, _) in MATCH_GROUPS.items()}
    counts = dict.fromkeys(MATCH_GROUPS, 0)
    for ax in figure.axes:
        for collection in ax.collections:
            group = by_gid.get(collection.get_gid())
            if group is not None and isinstance(collection, LineCollection):
                counts[group] += len(collection.get_segments())
    return counts


def plot_matches(
    image0: ArrayLike,
    image1: ArrayLike,
    kpts0: ArrayLike,
    kpts1: ArrayLike,
    matches: ArrayLike,
    correct: ArrayLike | None,
    path: str | Path,
    title: str = "",
    threshold_px: float | None = None,
) -> Path:
    """Save the two images side by side with key points and match lines (see :func:`draw_matches`).

    Lines are green for correct matches and red for wrong ones; the title gives the counts,
    e.g. ``"124 matches, 97 correct (3 px)"``.

    Returns:
        The path of the written image (``.png`` added when ``path`` has no suffix).
    """
    fig = draw_matches(image0, image1, kpts0, kpts1, matches, correct, title=title, threshold_px=threshold_px)
    return _save(fig, path)


# ---------------------------------------------------------------------- key points
def draw_keypoints(image: ArrayLike, kpts: ArrayLike, scores: ArrayLike | None = None, title: str = "") -> Figure:
    """Key points ``(N, 2)`` (pixels, x y) over ``image``; coloured by ``scores`` ``(N,)`` if given."""
    img = _as_image(image, "image")
    points = _as_points(kpts, "kpts")
    values = None
    if scores is not None:
        values = np.asarray(_to_numpy(scores), dtype=np.float64).reshape(-1)
        if values.shape != (len(points),):
            raise ValueError(f"scores must have one value per key point ({len(points)}), got {values.shape}")
    height, width = img.shape[:2]
    fig = _figure_for(width, height, title_lines=1, colorbar=values is not None)
    right = 0.86 if values is not None else 1.0
    ax = fig.add_axes((0, 0, right, 1 - _title_height_in(1) / fig.get_figheight()))
    _show(ax, img)
    if values is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, c=KEYPOINT_COLOUR, linewidths=0, gid="keypoints")
    else:
        dots = ax.scatter(points[:, 0], points[:, 1], s=6, c=values, cmap="viridis", linewidths=0, gid="keypoints")
        colorbar_ax = fig.add_axes((0.88, 0.08, 0.03, 0.84 - _title_height_in(1) / fig.get_figheight()))
        fig.colorbar(dots, cax=colorbar_ax, label="score")
    counts = f"{len(points)} key points"
    fig.suptitle(f"{title}: {counts}" if title else counts, fontsize=10, y=0.995, va="top")
    return fig


def plot_keypoints(
    image: ArrayLike, kpts: ArrayLike, path: str | Path, scores: ArrayLike | None = None, title: str = ""
) -> Path:
    """Save key points over an image (see :func:`draw_keypoints`); returns the written path."""
    return _save(draw_keypoints(image, kpts, scores, title), path)


# ---------------------------------------------------------------------- training curves
def read_history_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``.jsonl`` history, one JSON object per line.

    Blank lines are skipped; a line that is not JSON (e.g. cut by a kill mid-write) is skipped
    with a warning naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"History file '{path}' does not exist")
    records, bad_lines = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad_lines.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad_lines.append(number)
    if bad_lines:
        warnings.warn(
            f"'{path}': skipped {len(bad_lines)} line(s) that are not JSON objects: {bad_lines[:10]}",
            stacklevel=2,
        )
    return records


def loss_terms(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric fields of the records that are loss terms, ``"loss"`` first, then in order seen."""
    seen: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in NON_LOSS_FIELDS and _is_number(value):
                seen.setdefault(key, None)
    terms = list(seen)
    if "loss" in seen:
        terms.remove("loss")
        terms.insert(0, "loss")
    return terms


def draw_loss_curves(
    history: History, title: str = "Training losses", terms: Sequence[str] | None = None
) -> Figure:
    """One line per loss term against the optimiser step.

    Args:
        history: records ``{"step": int, "loss": float, <term>: float, ...}`` or the path of a
            ``.jsonl`` file of them (e.g. ``history.jsonl`` of a training run). Records without
            ``"step"`` are placed at their index.
        title: axes title.
        terms: fields to draw; default: every numeric field except :data:`NON_LOSS_FIELDS`.
            Non-finite values (a diverged step) are left out of the line.

    Returns:
        A figure with one axes; the y axis is logarithmic when every drawn value is positive.
    """
    records = read_history_records(history) if isinstance(history, (str, Path)) else list(history)
    terms = list(terms) if terms is not None else loss_terms(records)
    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    all_positive, drawn = True, 0
    for term in terms:
        steps, values = [], []
        for index, record in enumerate(records):
            value = record.get(term)
            if _is_number(value) and math.isfinite(value):
                steps.append(record.get("step", index))
                values.append(float(value))
        if not values:
            continue
        all_positive &= min(values) > 0
        total = term == "loss"
        ax.plot(
            steps, values, label="loss (weighted total)" if total else f"{term} (unweighted)",
            linewidth=2.0 if total else 1.2, color="black" if total else None,
            marker="o" if len(values) == 1 else None, markersize=3, zorder=3 if total else 2,
        )
        drawn += 1
    if drawn and all_positive:
        ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss value" + (" (log scale)" if drawn and all_positive else ""))
    ax.set_title(title if drawn else f"{title} (no loss values)")
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_loss_curves(
    history: History, path: str | Path, title: str = "Training losses", terms: Sequence[str] | None = None
) -> Path:
    """Save loss curves (see :func:`draw_loss_curves`); returns the written path."""
    return _save(draw_loss_curves(history, title, terms), path)


def draw_validation_curves(
    runs: Mapping[str, History], metrics: Sequence[str], title: str = "Validation", labels: Mapping[str, str] | None = None,
) -> Figure:
    """Validation metrics against the optimiser step, one panel per metric and one line per run.

    Args:
        runs: run name -> records ``{"step": int, <metric>: float, ...}`` or the path of a
            ``validation.jsonl``; several runs on one figure compare schedules and methods.
        metrics: record fields to draw, one panel each (e.g. ``["map", "ap50"]``).
        title: figure title.
        labels: axis label of each metric (default: the field name).

    Returns:
        A figure; each line is marked at its validation steps, its last value written at its end.
    """
    labels = labels or {}
    fig = Figure(figsize=(5.2 * len(metrics), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    for panel, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), panel + 1)
        for name, history in runs.items():
            records = read_history_records(history) if isinstance(history, (str, Path)) else list(history)
            points = [(r["step"], float(r[metric])) for r in records
                      if _is_number(r.get(metric)) and math.isfinite(r[metric]) and "step" in r]
            if not points:
                continue
            steps, values = zip(*points)
            (line,) = ax.plot(steps, values, marker="o", markersize=3, linewidth=1.5, label=name)
            ax.annotate(f"{values[-1]:.1f}", (steps[-1], values[-1]), textcoords="offset points", xytext=(4, 0),
                        fontsize=7, color=line.get_color(), va="center")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_validation_curves(
    runs: Mapping[str, History], path: str | Path, metrics: Sequence[str], title: str = "Validation",
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Save validation curves (see :func:`draw_validation_curves`); returns the written path."""
    return _save(draw_validation_curves(runs, metrics, title, labels), path)


# ---------------------------------------------------------------------- benchmarks
def draw_accuracy_vs_latency(
    points: Sequence[Mapping[str, Any]], accuracy_label: str, title: str = "Accuracy vs latency"
) -> Figure:
    """Scatter of models: latency (ms, x) against accuracy (y), marker area grows with parameters.

    Args:
        points: one dict per model with ``name`` (str), ``latency_ms`` (float, milliseconds per
            image), ``accuracy`` (float, in the unit of ``accuracy_label``) and ``params`` (int,
            parameter count; may be None).
        accuracy_label: y-axis label, e.g. ``"HPatches MMA@3px"``.
    """
    required = ("name", "latency_ms", "accuracy")
    for index, point in enumerate(points):
        missing = [k for k in required if k not in point]
        if missing:
            raise ValueError(
                f"point {index} ({point.get('name', '?')}) lacks {missing}; "
                f"each needs {list(required) + ['params']}"
            )
    fig = Figure(figsize=(7, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if points:
        latency = np.array([float(p["latency_ms"]) for p in points])
        accuracy = np.array([float(p["accuracy"]) for p in points])
        params = np.array([float(p.get("params") or 0) for p in points])
        largest = params.max() if params.max() > 0 else 1.0
        sizes = 30 + 370 * np.sqrt(params / largest)
        ax.scatter(latency, accuracy, s=sizes, alpha=0.6, edgecolors="black", linewidths=0.8, gid="models")
        for point, x, y, (dx, dy) in zip(points, latency, accuracy, _label_offsets(latency, accuracy)):
            label = str(point["name"]) + (f"\n{_format_count(point['params'])} params" if point.get("params") else "")
            ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                        ha="left" if dx > 0 else "right")
        if latency.min() > 0 and latency.max() / latency.min() > 20:
            ax.set_xscale("log")
        ax.margins(0.15)
    ax.set_xlabel("latency (ms per image, lower is better)")
    ax.set_ylabel(accuracy_label)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def _label_offsets(x: np.ndarray, y: np.ndarray) -> list[tuple[int, int]]:
    """Label offsets (points) that keep the labels of models close in the plot apart.

    Each model whose point lies within 8% of the ranges of an earlier one takes the next of a few
    positions around its marker (right-above, left-below, right-below, left-above).
    """
    positions = [(6, 6), (-6, -22), (6, -22), (-6, 6)]
    span_x = max(float(np.ptp(np.log(x))) if x.min() > 0 else float(np.ptp(x)), 1e-9)
    span_y = max(float(np.ptp(y)), 1e-9)
    coord_x = np.log(x) if x.min() > 0 else x
    offsets: list[tuple[int, int]] = []
    for i in range(len(x)):
        near = sum(1 for j in range(i) if abs(coord_x[i] - coord_x[j]) < 0.08 * span_x
                   and abs(y[i] - y[j]) < 0.08 * span_y)
        offsets.append(positions[near % len(positions)])
    return offsets


def plot_accuracy_vs_latency(
    points: Sequence[Mapping[str, Any]], path: str | Path, accuracy_label: str, title: str = "Accuracy vs latency"
) -> Path:
    """Save the accuracy/latency scatter (see :func:`draw_accuracy_vs_latency`); returns the path."""
    return _save(draw_accuracy_vs_latency(points, accuracy_label, title), path)


# ---------------------------------------------------------------------- helpers
def _to_numpy(value: ArrayLike) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _as_image(image: ArrayLike, name: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` float array in ``[0, 1]``."""
    array = _to_numpy(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(f"{name} must be (H, W) grey or (H, W, 3) colour, got shape {_to_numpy(image).shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if array.size and np.nanmax(array) > 1.0:
        array = array / 255.0
    return np.clip(array, 0.0, 1.0)


def _as_points(points: ArrayLike, name: str) -> np.ndarray:
    array = _to_numpy(points).astype(np.float64)
    if array.size == 0:
        return np.zeros((0, 2))
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be (N, 2) pixel coordinates (x, y), got shape {array.shape}")
    return array


def _side_by_side(img0: np.ndarray, img1: np.ndarray) -> tuple[np.ndarray, float]:
    """One canvas with both images (white padding), and the x offset of the second."""
    colour = img0.ndim == 3 or img1.ndim == 3
    if colour:
        img0 = img0 if img0.ndim == 3 else np.repeat(img0[..., None], 3, axis=-1)
        img1 = img1 if img1.ndim == 3 else np.repeat(img1[..., None], 3, axis=-1)
    height = max(img0.shape[0], img1.shape[0])
    width = img0.shape[1] + MATCH_GAP_PX + img1.shape[1]
    canvas = np.ones((height, width) + ((3,) if colour else ()), dtype=np.float32)
    canvas[: img0.shape[0], : img0.shape[1]] = img0
    offset = img0.shape[1] + MATCH_GAP_PX
    canvas[: img1.shape[0], offset:] = img1
    return canvas, float(offset)


def _figure_for(width_px: int, height_px: int, title_lines: int = 1, colorbar: bool = False) -> Figure:
    """A figure whose image area keeps the image aspect, 6 to 16 inches wide."""
    width_in = min(max(width_px / 80.0, 6.0), 16.0)
    image_width_in = width_in * (0.86 if colorbar else 1.0)
    height_in = image_width_in * height_px / max(width_px, 1) + _title_height_in(title_lines)
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _show(ax: Any, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _format_count(count: Any) -> str:
    count = float(count)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.0f}"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    return path
