"""One page that compares distillation runs: HTML (self-contained) and markdown.

Sections: the runs, the metrics table (teacher, then each run's student, with the share of the
teacher's accuracy each keeps), accuracy against latency, loss curves, the figures each run
drew (matches on image pairs for key points), the deployment benchmark when given, and the
configuration of every run. The HTML embeds every image as base64 PNG, so it is one file; the
markdown links the same PNGs from ``<name>_files/`` beside it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from detkd.models.pretrained import is_shipped_model_name, shipped_model_path
from detkd.report.runs import RunFolder, read_runs
from detkd.safe_files import UnreadableFileError

#: Metric columns of the table, in order, with their labels (those present are shown).
METRIC_COLUMNS = {
    "repeatability": "Rep.", "localization_error": "Loc. err (px)", "mma@3": "MMA@3",
    "homography_accuracy@1": "HA@1", "homography_accuracy@3": "HA@3", "homography_accuracy@5": "HA@5",
    "matching_score": "M. score", "f1": "F1", "num_keypoints": "#kpts",
    "map": "mAP", "ap50": "AP50", "ap75": "AP75", "ar100": "AR100",
}
#: Metrics drawn against latency (each present one gets a scatter), and shown as % of the teacher.
HEADLINE_METRICS = {"homography_accuracy@3": "homography accuracy @3 px", "mma@3": "MMA @3 px",
                    "map": "COCO mAP (IoU 0.50:0.95)"}
_LOWER_IS_BETTER = {"localization_error"}


@dataclass
class Row:
    """One model in the comparison.

    ``model_path`` is the row's model file, resolved (``None``: none found); ``bench_row`` the
    name of the ``detkd bench`` row its latency came from (``None``: measured here, or none).
    """

    label: str
    run: RunFolder
    model_name: str
    metrics: dict[str, float]
    params: int | None = None
    latency_ms: float | None = None
    teacher_metrics: dict[str, float] | None = None
    model_path: Path | None = None
    bench_row: str | None = None


@dataclass
class Figure:
    title: str
    path: Path
    caption: str = ""


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
        row.params = sum(p.numel() for p in model.parameters()) if model is not None else None
        row.model_path = _row_model_path(row)
    if bench:
        return _bench_latency(rows, bench, say)
    from detkd.export.bench import interleaved_latency
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
        if isinstance(stats, dict) and _is_number(stats.get("median_ms")):
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
    from detkd.viz.plots import plot_accuracy_vs_latency, plot_loss_curves

    figures = []
    timed = [r for r in rows if r.latency_ms is not None]
    for key, label in HEADLINE_METRICS.items():
        points = [{"name": r.label, "latency_ms": r.latency_ms, "accuracy": r.metrics[key], "params": r.params}
                  for r in timed if _is_number(r.metrics.get(key))]
        if points:
            path = plot_accuracy_vs_latency(points, files / f"accuracy_vs_latency_{_slug(key)}.png",
                                            accuracy_label=label, title=f"{label} against latency")
            figures.append(Figure(f"{label} against latency", path, latency_note))
    seen: set[str] = set()  # the same teacher figure drawn by several runs is shown once
    for run in runs:
        if run.history is not None:
            path = plot_loss_curves(run.history, files / f"{_slug(run.name)}_loss_curves.png",
                                    title=f"{run.name}: training losses")
            figures.append(Figure(f"Loss curves: {run.name}", path, str(run.history)))
        for png in run.figures:
            digest = hashlib.sha256(png.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            copy = files / f"{_slug(run.name)}_{png.name}"
            shutil.copyfile(png, copy)
            figures.append(Figure(f"{run.name}: {png.stem.replace('_', ' ')}", copy, str(png)))
    return figures


# ---------------------------------------------------------------------- rendering
@dataclass
class Page:
    title: str
    runs: Sequence[RunFolder]
    rows: list[Row]
    figures: list[Figure]
    latency_note: str
    bench: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)  # latency problems (unmatched bench or report rows)

    def bench_matches(self) -> dict[str, list[str]]:
        """Bench row name -> labels of the report rows that took its latency."""
        matches: dict[str, list[str]] = {}
        for row in self.rows:
            if row.bench_row is not None:
                matches.setdefault(row.bench_row, []).append(row.label)
        return matches

    def latency_section_note(self) -> str | None:
        """Why the accuracy-against-latency section has no figure; ``None`` when it has one or nothing to draw."""
        if not self.headline() or any("against latency" in f.title for f in self.figures):
            return None
        return "Not drawn: no model of the table has a latency" + (
            " (see the notes under the metrics table)." if self.notes else ".")

    def columns(self) -> list[str]:
        present = set().union(*(r.metrics for r in self.rows)) if self.rows else set()
        return [k for k in METRIC_COLUMNS if k in present]

    def headline(self) -> list[str]:
        present = set().union(*(r.metrics for r in self.rows)) if self.rows else set()
        return [k for k in HEADLINE_METRICS if k in present]

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and cells of the metrics table."""
        cols, heads = self.columns(), self.headline()
        header = ["model", "params", "latency ms", *(METRIC_COLUMNS[c] for c in cols),
                  *(f"{METRIC_COLUMNS[k]} % of teacher" for k in heads), "evaluated on"]
        body = []
        for row in self.rows:
            cells = [row.label, "n/a" if row.params is None else f"{row.params:,}",
                     "n/a" if row.latency_ms is None else f"{row.latency_ms:.1f}"]
            cells += [_format_metric(c, row.metrics.get(c)) for c in cols]
            for key in heads:
                base = (row.teacher_metrics or {}).get(key) if row.model_name != "teacher" else row.metrics.get(key)
                value = row.metrics.get(key)
                ok = _is_number(base) and _is_number(value) and base > 0
                cells.append(f"{100 * value / base:.1f}%" if ok else "n/a")
            cells.append(row.run.pairs or "n/a")
            body.append(cells)
        return header, body

    def run_lines(self) -> list[str]:
        lines = []
        for run in self.runs:
            train = run.config.get("train") or {}
            student = run.config.get("student") or {}
            data = run.config.get("data") or {}
            parts = [f"student {student.get('variant', '?')}", f"{train.get('steps', '?')} steps x "
                     f"{train.get('batch_size', '?')} views of {data.get('height', '?')}x{data.get('width', '?')}",
                     f"teacher {run.teacher_checkpoint() or 'shipped default'}"]
            if run.notes:
                parts.append("; ".join(run.notes))
            lines.append(f"{run.name} ({run.path}): " + ", ".join(parts))
        return lines

    # -------------------------------------------------------------- HTML
    def html(self) -> str:
        e = html.escape
        header, body = self.table()
        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        parts = [
            "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
            f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1>", f"<p class=\"meta\">Written {created} by detkd.</p>",
            "<h2>Runs</h2><ul>", *(f"<li>{e(line)}</li>" for line in self.run_lines()), "</ul>",
            "<h2>Metrics</h2>", _html_table(header, body, "metrics"),
            f"<p class=\"note\">Latency: {e(self.latency_note)}. Percentages compare each student with the "
            "teacher of its own run (same evaluation pairs).</p>",
        ]
        if self.notes:
            parts += ["<ul class=\"warning\">", *(f"<li>{e(note)}</li>" for note in self.notes), "</ul>"]
        if self.latency_section_note():
            parts.append(f"<h2>Accuracy against latency</h2><p class=\"warning\">{e(self.latency_section_note())}</p>")
        sections = [("Accuracy against latency", [f for f in self.figures if "against latency" in f.title]),
                    ("Training", [f for f in self.figures if f.title.startswith("Loss curves")]),
                    ("Figures of the runs", [f for f in self.figures
                                             if "against latency" not in f.title and not f.title.startswith("Loss")])]
        for name, figures in sections:
            if figures:
                parts.append(f"<h2>{e(name)}</h2>")
                parts += [_html_figure(f) for f in figures]
        if self.bench:
            parts += ["<h2>Deployment benchmark</h2>",
                      _html_table(*_bench_table(self.bench, self.bench_matches()), "bench")]
        parts.append("<h2>Configuration</h2>")
        for run in self.runs:
            parts.append(f"<details open><summary>{e(run.name)}: config.yaml</summary>"
                         f"<pre>{e(run.config_text or '(no config.yaml)')}</pre></details>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    # -------------------------------------------------------------- markdown
    def markdown(self, files_dir: str) -> str:
        header, body = self.table()
        lines = [f"# {self.title}", "", "## Runs", "", *(f"* {line}" for line in self.run_lines()), "",
                 "## Metrics", "", _md_table(header, body), "",
                 f"Latency: {self.latency_note}. Percentages compare each student with the teacher of its own run.", ""]
        if self.notes:
            lines += [*(f"* **Note:** {note}" for note in self.notes), ""]
        if self.latency_section_note():
            lines += ["## Accuracy against latency", "", self.latency_section_note(), ""]
        for figure in self.figures:
            lines += [f"### {figure.title}", "", f"![{figure.title}]({files_dir}/{figure.path.name})", ""]
        if self.bench:
            lines += ["## Deployment benchmark", "", _md_table(*_bench_table(self.bench, self.bench_matches())), ""]
        lines += ["## Configuration", ""]
        for run in self.runs:
            lines += [f"### {run.name}", "", "```yaml", (run.config_text or "(no config.yaml)").rstrip(), "```", ""]
        return "\n".join(lines)


def _bench_table(bench: dict[str, Any],
                 matches: dict[str, list[str]] | None = None) -> tuple[list[str], list[list[str]]]:
    """Compact table of a ``detkd bench --json`` file; with ``matches`` (bench name -> report
    labels), a last column names the report row(s) each bench row gave its latency to."""
    rows = [r for r in bench.get("rows", []) if isinstance(r, dict)]
    runtimes = [rt for rt in ("pytorch-cpu", "onnxruntime-cpu", "pytorch-cuda", "onnxruntime-cuda")
                if any(rt in r.get("latency", {}) for r in rows)]
    header = ["model", "params", "GFLOPs", *(f"{rt} median ms" for rt in runtimes),
              *(f"{rt} speed-up" for rt in runtimes)]
    body = []
    for row in rows:
        cells = [str(row.get("name")), "n/a" if row.get("params") is None else f"{row['params']:,}",
                 "n/a" if row.get("gflops") is None else f"{row['gflops']:.2f}"]
        cells += [f"{row['latency'][rt]['median_ms']:.1f}" if rt in row.get("latency", {}) else "n/a" for rt in runtimes]
        speed = row.get("speedup_vs_first", {})
        cells += [f"{speed[rt]:.2f}x" if speed.get(rt) else "n/a" for rt in runtimes]
        if matches is not None:
            cells.append(", ".join(matches.get(str(row.get("name")), [])) or "none (not matched)")
        body.append(cells)
    if matches is not None:
        header.append("report row")
    return header, body


def _html_table(header: list[str], body: list[list[str]], css_class: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return f"<table class=\"{css_class}\"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    e = html.escape
    caption = f"{e(figure.title)}" + (f"<br><span class=\"note\">{e(figure.caption)}</span>" if figure.caption else "")
    return (f"<figure><img alt=\"{e(figure.title)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{caption}</figcaption></figure>")


def _md_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in body)])


def _format_metric(key: str, value: Any) -> str:
    if not _is_number(value):
        return "n/a"
    if key in ("num_keypoints", "num_matches"):
        return f"{value:.0f}"
    if key in _LOWER_IS_BETTER:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th:first-child, td:first-child, td:last-child { text-align: left; }
thead th { background: #f0f3f7; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .note, .meta { color: #555; font-size: .85em; }
.warning { color: #8a4b00; font-size: .9em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .8em; }
"""
