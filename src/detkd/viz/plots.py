"""Figures for reports: matches, key points, accuracy against latency (training curves: :mod:`detkd.viz.curves`).

Everything draws on a bare :class:`matplotlib.figure.Figure` rendered by the Agg canvas: no
``pyplot``, no global backend switch, no display needed, safe in worker processes.

Conventions: images are ``(H, W)`` grey or ``(H, W, 3)`` colour (``(1, H, W)`` / ``(3, H, W)``
tensors are accepted), ``uint8`` in ``[0, 255]`` or float in ``[0, 1]`` (float images whose
maximum exceeds 1 are taken as ``[0, 255]``). Key points are ``(x, y)`` pixel coordinates,
the centre of the top-left pixel being ``(0, 0)`` (as in :mod:`detkd.models.superpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from detkd.viz.canvas import ArrayLike, as_image, as_points, figure_for, save_figure, show, title_height_in, to_numpy


#: Colours of match lines and the ``gid`` of each group, as :func:`count_match_lines` reads them.
MATCH_GROUPS = {
    "correct": ("matches-correct", "#1db31d"),  # green
    "wrong": ("matches-wrong", "#e31a1c"),  # red
    "unverified": ("matches-unverified", "#1f9be3"),  # blue: no ground truth given
}
KEYPOINT_COLOUR = "#ffd21f"
MATCH_GAP_PX = 8  # white pixels between the two images of a match figure


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
    img0, img1 = as_image(image0, "image0"), as_image(image1, "image1")
    p0, p1 = as_points(kpts0, "kpts0"), as_points(kpts1, "kpts1")
    pairs = np.asarray(to_numpy(matches))
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
        is_correct = np.asarray(to_numpy(correct)).astype(bool).reshape(-1)
        if is_correct.shape != (len(pairs),):
            raise ValueError(f"correct must have one flag per match ({len(pairs)}), got {is_correct.shape}")

    canvas, offset_x = _side_by_side(img0, img1)
    height, width = canvas.shape[:2]
    fig = figure_for(width, height, title_lines=2 if title else 1)
    ax = fig.add_axes((0, 0, 1, 1 - title_height_in(2 if title else 1) / fig.get_figheight()))
    show(ax, canvas)

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
    return save_figure(fig, path)


# ---------------------------------------------------------------------- key points
def draw_keypoints(image: ArrayLike, kpts: ArrayLike, scores: ArrayLike | None = None, title: str = "") -> Figure:
    """Key points ``(N, 2)`` (pixels, x y) over ``image``; coloured by ``scores`` ``(N,)`` if given."""
    img = as_image(image, "image")
    points = as_points(kpts, "kpts")
    values = None
    if scores is not None:
        values = np.asarray(to_numpy(scores), dtype=np.float64).reshape(-1)
        if values.shape != (len(points),):
            raise ValueError(f"scores must have one value per key point ({len(points)}), got {values.shape}")
    height, width = img.shape[:2]
    fig = figure_for(width, height, title_lines=1, colorbar=values is not None)
    right = 0.86 if values is not None else 1.0
    ax = fig.add_axes((0, 0, right, 1 - title_height_in(1) / fig.get_figheight()))
    show(ax, img)
    if values is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, c=KEYPOINT_COLOUR, linewidths=0, gid="keypoints")
    else:
        dots = ax.scatter(points[:, 0], points[:, 1], s=6, c=values, cmap="viridis", linewidths=0, gid="keypoints")
        colorbar_ax = fig.add_axes((0.88, 0.08, 0.03, 0.84 - title_height_in(1) / fig.get_figheight()))
        fig.colorbar(dots, cax=colorbar_ax, label="score")
    counts = f"{len(points)} key points"
    fig.suptitle(f"{title}: {counts}" if title else counts, fontsize=10, y=0.995, va="top")
    return fig


def plot_keypoints(
    image: ArrayLike, kpts: ArrayLike, path: str | Path, scores: ArrayLike | None = None, title: str = ""
) -> Path:
    """Save key points over an image (see :func:`draw_keypoints`); returns the written path."""
    return save_figure(draw_keypoints(image, kpts, scores, title), path)


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
    return save_figure(draw_accuracy_vs_latency(points, accuracy_label, title), path)




# ---------------------------------------------------------------------- helpers
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


def _format_count(count: Any) -> str:
    count = float(count)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.0f}"
