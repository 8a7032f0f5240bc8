"""One page that compares distillation runs: HTML (self-contained) and markdown.

Sections: the runs, the metrics table (teacher, then each run's student, with the share of the
teacher's accuracy each keeps), accuracy against latency, loss curves, the figures each run
drew (matches on image pairs for key points), the deployment benchmark when given, and the
configuration of every run. The HTML embeds every image as base64 PNG, so it is one file; the
markdown links the same PNGs from ``<name>_files/`` beside it.

This module gathers the rows (metrics, latency) and draws the figures; :mod:`detkd.report.render`
turns them into the page.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from detkd.models.pretrained import is_shipped_model_name, shipped_model_path
from detkd.models.superpoint import inference_parameter_count
from detkd.report.render import HEADLINE_METRICS, Figure, Page, Row, is_number, slug
from detkd.report.runs import RunFolder, read_runs
from detkd.safe_files import UnreadableFileError

@dataclass
class ReportResult:
    """Files written by :func:`build_report`."""

    html: Path
    markdown: Path
    files: Path
    rows: list[Row] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # latency problems, printed and shown on the page


def build_report(
    runs: Sequence[str | Path],
    out: str | Path,
    *,
    bench_json: str | Path | None = None,
    latency_size: tuple[int, int] | None = None,
    threads: int | None = None,
    repeats: int = 5,
    title: str = "detkd distillation report",
    log: Callable[[str], None] | None = print,
) -> ReportResult:
    """Write ``out`` (HTML), ``out`` with ``.md`` and the folder ``<stem>_files/`` of PNGs.

    Args:
        runs: run folders (see :mod:`detkd.report.runs`).
        bench_json: a ``detkd bench --json`` file; its latencies (ONNX Runtime CPU when
            present, else PyTorch CPU) are used for the rows it holds (matched by resolved model
            file, else by name: :func:`match_bench_row`), and its table is shown. A bench row
            or a report row left unmatched is printed and noted on the page. Without it,
            PyTorch CPU latency is measured here.
        latency_size: ``(H, W)`` of the latency measurement (default: each run's evaluation
            size); sides are padded to what the model takes, as ``extract()`` pads.
        threads: CPU threads for that measurement (default: torch's).
        repeats: timed runs per model.
    """
    say = log or (lambda _: None)
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must be an .html file, got '{out}'")
    folders = read_runs(list(runs))
    files = out.with_name(out.stem + "_files")
    if files.exists():
        shutil.rmtree(files)
    files.mkdir(parents=True)
    rows = comparison_rows(folders)
    bench = json.loads(Path(bench_json).read_text()) if bench_json else None
    if bench is not None and "rows" not in bench and isinstance(bench.get("bench"), dict):
        bench = bench["bench"]  # benchmarks/deploy.py's JSON holds the bench report under "bench"
    latency_note, notes = attach_latency(rows, bench, latency_size, threads, repeats, say)
    figures = draw_figures(rows, folders, files, latency_note)
    page = Page(title, folders, rows, figures, latency_note, bench, notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page.html())
    markdown = out.with_suffix(".md")
    markdown.write_text(page.markdown(files.name))
    return ReportResult(out, markdown, files, rows, figures, notes)


# ---------------------------------------------------------------------- rows
def comparison_rows(runs: Sequence[RunFolder]) -> list[Row]:
    """Teacher first (once per distinct teacher and evaluation), then each run's other models."""
    rows: list[Row] = []
    teachers: dict[str, Row] = {}
    for run in runs:
        teacher = run.metrics.get("teacher")
        for name, metrics in run.metrics.items():
            if name == "teacher":
                key = json.dumps([run.teacher_checkpoint(), run.pairs, metrics], sort_keys=True, default=str)
                if key in teachers:
                    continue
                label = "teacher" if not teachers else f"teacher ({run.name})"
                teachers[key] = row = Row(label, run, name, metrics)
            else:
                label = run.student_label if name == "student" else f"{name} ({run.name})"
                row = Row(label, run, name, metrics, teacher_metrics=teacher)
            rows.append(row)
    rows.sort(key=lambda r: not r.model_name == "teacher")  # stable: teachers first
    return rows


def attach_latency(rows: list[Row], bench: dict[str, Any] | None, size: tuple[int, int] | None,
                   threads: int | None, repeats: int, say: Callable[[str], None]) -> tuple[str, list[str]]:
    """Fill ``params``, ``model_path`` and ``latency_ms`` of the rows.

    Returns:
        How latency was obtained (one sentence), and the problems (a row without latency, a
        bench row that matches no row), each also passed to ``say``.
    """
    models = {id(row): _load_row_model(row) for row in rows}
    for row in rows:
        model = models[id(row)]
        row.params = inference_parameter_count(model) if model is not None else None
        row.model_path = _row_model_path(row)
    if bench:
        return _bench_latency(rows, bench, say)
    from detkd.export.timing import interleaved_latency
    from detkd.export.onnx import graph_for

    runners, sizes, padding = {}, set(), []
    for row in rows:
        model = models[id(row)]
        if model is None:
            continue
        row_size = tuple(size or row.run.eval_size() or (240, 320))
        graph = graph_for(model)
        batch = latency_batch(graph, *row_size)
        padded = tuple(batch.shape[-2:])
        sizes.add(f"{row_size[0]}x{row_size[1]}")
        if padded != row_size:
            padding.append(f"{row.label} padded to {padded[0]}x{padded[1]}")

        def run(module: torch.nn.Module = graph.module, batch: torch.Tensor = batch) -> None:
            with torch.inference_mode():
                module(batch)

        runners[row.label] = run
    if not runners:
        return "latency not measured (no model file found)", []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        used = torch.get_num_threads()
        say(f"measuring PyTorch CPU latency at {', '.join(sorted(sizes))} ({used} thread(s), {repeats} runs per model) ...")
        stats = interleaved_latency(runners, repeats, warmup=1)
    finally:
        torch.set_num_threads(previous)
    for row in rows:
        if row.label in stats:
            row.latency_ms = stats[row.label].median_ms
    padded_text = f"; {', '.join(padding)} with zeros, as extract() pads" if padding else ""
    return (f"PyTorch CPU latency (network and post-processing) at {', '.join(sorted(sizes))} (each run's "
            f"evaluation size unless given{padded_text}), {used} thread(s), median of {repeats} runs, "
            "measured while writing this report"), []


def latency_batch(graph: Any, height: int, width: int) -> torch.Tensor:
    """The photo the latency is measured on: ``(1, C, H', W')`` in ``[0, 1]``.

    ``H x W`` is resized from a real photo, then zero-padded at the bottom and right to the
    sides ``graph`` takes (multiples of ``graph.size_multiple``, at least ``graph.min_size``
    pixels), as :meth:`~detkd.models.superpoint.SuperPoint.extract` pads: an evaluation size
    such as 120x160 for a teacher with ``input_scale`` 1.5 (16-pixel multiples) becomes 128x160.
    """
    from detkd.export.onnx import photo_batch

    batch = photo_batch(["coffee"], graph.channels, height, width)
    multiple = max(1, int(graph.size_multiple))
    new_h = max(-(-height // multiple) * multiple, graph.min_size)
    new_w = max(-(-width // multiple) * multiple, graph.min_size)
    return F.pad(batch, (0, new_w - width, 0, new_h - height))


#: What ``detkd bench`` appends to the name of a model that upsamples its input.
_INPUT_SCALE_SUFFIX = re.compile(r" \(input x[0-9.]+\)$")


def match_bench_row(row: Row, entries: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``detkd bench --json`` row of ``row``'s model, or ``None``.

    First by model file: the bench row's ``path`` (the resolved file ``detkd bench`` read)
    equals ``row.model_path``. Then by name: the bench row's name, without the ``(input xS)``
    that bench appends for an upsampling model, equals the row's label, or (students) its
    run folder's name, as ``detkd bench RUN_FOLDER`` or ``NAME=MODEL`` names it.
    """
    if row.model_path is not None:
        for entry in entries:
            if entry.get("path") and Path(str(entry["path"])).resolve() == row.model_path:
                return entry
    names = {row.label} if row.model_name == "teacher" else {row.label, row.run.name}
    for entry in entries:
        name = str(entry.get("name"))
        if name in names or _INPUT_SCALE_SUFFIX.sub("", name) in names:
            return entry
    return None


def _bench_latency(rows: list[Row], bench: dict[str, Any], say: Callable[[str], None]) -> tuple[str, list[str]]:
    """Latencies of ``rows`` from a ``detkd bench --json`` dict; returns the sentence and the problems."""
    entries = [e for e in bench.get("rows", []) if isinstance(e, dict)]
    runtime = "onnxruntime-cpu" if any("onnxruntime-cpu" in e.get("latency", {}) for e in entries) else "pytorch-cpu"
    notes: list[str] = []
    used: set[int] = set()
    for row in rows:
        entry = match_bench_row(row, entries)
        if entry is None:
            model = str(row.model_path) if row.model_path else "no model file found"
            notes.append(
                f"'{row.label}' ({model}) has no row in the bench file, so its latency is n/a: add its model "
                f"file to 'detkd bench' (rows are matched by model file, else by name: "
                f"'{row.label if row.model_name == 'teacher' else row.run.name}=MODEL')")
            continue
        used.add(id(entry))
        row.bench_row = str(entry.get("name"))
        row.params = row.params or entry.get("params")
        stats = entry.get("latency", {}).get(runtime)
        if isinstance(stats, dict) and is_number(stats.get("median_ms")):
            row.latency_ms = float(stats["median_ms"])
        else:
            notes.append(f"bench row '{row.bench_row}' (matched to '{row.label}') has no {runtime} latency, "
                         "so its latency is n/a: rerun 'detkd bench' with a PyTorch model file, not an .onnx export")
    for entry in entries:
        if id(entry) not in used:
            notes.append(
                f"bench row '{entry.get('name')}' ({entry.get('path') or entry.get('origin') or 'no file'}) matches "
                "no model of this report (neither its model file nor its name), so it is in the benchmark table only")
    for note in notes:
        say(f"note: {note}")
    return (f"{runtime} latency from {bench.get('height')}x{bench.get('width')} benchmark "
            f"({bench.get('threads')} thread(s)); rows are matched by model file, else by name"), notes


def _load_row_model(row: Row) -> torch.nn.Module | None:
    """The row's model: the run's teacher, or its student / trained model file."""
    try:
        if row.run.task == "detection":
            from detkd.models.detection import load_detector

            if row.model_name == "teacher":
                checkpoint = row.run.teacher_checkpoint()
                return load_detector(checkpoint) if checkpoint else None
            return load_detector(row.run.model_file) if row.run.model_file is not None else None
        from detkd.models.weights import load_keypoint_model

        if row.model_name == "teacher":
            from detkd.tasks.keypoints import load_teacher

            return load_teacher(row.run.teacher_checkpoint())[0]
        if row.model_name == "student" and row.run.model_file is not None:
            return load_keypoint_model(row.run.model_file)
    except UnreadableFileError:
        raise  # a hostile, damaged or truncated model file is reported, not skipped
    except (OSError, ValueError):
        return None
    return None


def _row_model_path(row: Row) -> Path | None:
    """The resolved file of the row's model (as :func:`_load_row_model` reads it), or ``None``."""
    if row.model_name == "teacher":
        checkpoint = row.run.teacher_checkpoint()
        if row.run.task == "keypoints" and (checkpoint is None or is_shipped_model_name(str(checkpoint))):
            try:
                return shipped_model_path(str(checkpoint or "default")).resolve()
            except (KeyError, FileNotFoundError):
                return None
        path = Path(checkpoint) if checkpoint else None
        return path.resolve() if path is not None and path.is_file() else None
    if (row.run.task == "detection" or row.model_name == "student") and row.run.model_file is not None:
        return row.run.model_file.resolve()
    return None


# ---------------------------------------------------------------------- figures
def draw_figures(rows: list[Row], runs: Sequence[RunFolder], files: Path, latency_note: str) -> list[Figure]:
    """Scatter(s), loss curves and each run's own figures, as PNGs in ``files``."""
    from detkd.viz.curves import plot_loss_curves
    from detkd.viz.plots import plot_accuracy_vs_latency

    figures = []
    timed = [r for r in rows if r.latency_ms is not None]
    for key, label in HEADLINE_METRICS.items():
        points = [{"name": r.label, "latency_ms": r.latency_ms, "accuracy": r.metrics[key], "params": r.params}
                  for r in timed if is_number(r.metrics.get(key))]
        if points:
            path = plot_accuracy_vs_latency(points, files / f"accuracy_vs_latency_{slug(key)}.png",
                                            accuracy_label=label, title=f"{label} against latency")
            figures.append(Figure(f"{label} against latency", path, latency_note))
    seen: set[str] = set()  # the same teacher figure drawn by several runs is shown once
    for run in runs:
        if run.history is not None:
            path = plot_loss_curves(run.history, files / f"{slug(run.name)}_loss_curves.png",
                                    title=f"{run.name}: training losses")
            figures.append(Figure(f"Loss curves: {run.name}", path, str(run.history)))
        for png in run.figures:
            digest = hashlib.sha256(png.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            copy = files / f"{slug(run.name)}_{png.name}"
            shutil.copyfile(png, copy)
            figures.append(Figure(f"{run.name}: {png.stem.replace('_', ' ')}", copy, str(png)))
    return figures


