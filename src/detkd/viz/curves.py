"""Training curves: the loss terms of a run's ``history.jsonl`` and its validation metrics."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detkd.viz.canvas import is_number, save_figure

History = Union[Sequence[Mapping[str, Any]], str, Path]

#: History fields that are not loss terms (written by detkd.engine.Trainer and friends).
NON_LOSS_FIELDS = frozenset(
    {"step", "epoch", "lr", "learning_rate", "images_per_s", "data_wait", "time", "seconds", "wall_s"}
)



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
            if key not in NON_LOSS_FIELDS and is_number(value):
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
            if is_number(value) and math.isfinite(value):
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
    return save_figure(draw_loss_curves(history, title, terms), path)


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
        ends = []  # (step, value, colour) of each line's last point
        for name, history in runs.items():
            records = read_history_records(history) if isinstance(history, (str, Path)) else list(history)
            points = [(r["step"], float(r[metric])) for r in records
                      if is_number(r.get(metric)) and math.isfinite(r[metric]) and "step" in r]
            if not points:
                continue
            steps, values = zip(*points)
            (line,) = ax.plot(steps, values, marker="o", markersize=3, linewidth=1.5, label=name)
            ends.append((steps[-1], values[-1], line.get_color()))
        annotate_line_ends(ax, ends, fig.dpi)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


#: Font size (points) of the values written at the lines' ends, and their least vertical distance (points).
END_LABEL_FONT_SIZE = 7
END_LABEL_GAP = 10.0


def annotate_line_ends(ax: Any, ends: Sequence[tuple[float, float, str]], dpi: float) -> None:
    """Write each line's last value beside its last point, ``ends`` ``[(step, value, colour), ...]``; labels
    that would overlap (lines that end at the same step close together) are moved apart vertically
    (:func:`spread_positions`)."""
    if not ends:
        return
    ax.autoscale_view()  # the data limits that the figure will be drawn with (matplotlib applies them lazily)
    to_points = 72.0 / dpi
    for last_step in sorted({step for step, _, _ in ends}):  # labels at one step share a column of text
        column = [end for end in ends if end[0] == last_step]
        heights = [ax.transData.transform((step, value))[1] * to_points for step, value, _ in column]
        for (step, value, colour), height, placed in zip(column, heights, spread_positions(heights, END_LABEL_GAP)):
            ax.annotate(f"{value:.1f}", (step, value), textcoords="offset points", xytext=(4, placed - height),
                        fontsize=END_LABEL_FONT_SIZE, color=colour, va="center")


def spread_positions(positions: Sequence[float], gap: float) -> list[float]:
    """Positions (one axis, any unit) moved apart so that any two are at least ``gap`` apart, each group of
    labels that crowd together spread evenly around the group's mean; returned in the order given.

    ``[0, 2, 30]`` with gap 10 -> ``[-4, 6, 30]``; positions already ``gap`` apart are returned as they are.
    """
    order = sorted(range(len(positions)), key=lambda i: positions[i])
    groups: list[list[int]] = []  # consecutive indices of `order`, each group spread around its mean
    for i in order:
        groups.append([i])
        while len(groups) > 1:
            low, high = groups[-2], groups[-1]
            if _group_start(low, positions, gap) + gap * len(low) <= _group_start(high, positions, gap):
                break
            groups[-2:] = [low + high]
    placed = [0.0] * len(positions)
    for group in groups:
        start = _group_start(group, positions, gap)
        for rank, i in enumerate(group):
            placed[i] = start + rank * gap
    return placed


def _group_start(group: list[int], positions: Sequence[float], gap: float) -> float:
    mean = sum(positions[i] for i in group) / len(group)
    return mean - gap * (len(group) - 1) / 2


def plot_validation_curves(
    runs: Mapping[str, History], path: str | Path, metrics: Sequence[str], title: str = "Validation",
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Save validation curves (see :func:`draw_validation_curves`); returns the written path."""
    return save_figure(draw_validation_curves(runs, metrics, title, labels), path)
