"""The report page's model: its rows and figures, and how they render as HTML and markdown."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from detkd.report.runs import RunFolder

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
            cells += [format_metric(c, row.metrics.get(c)) for c in cols]
            for key in heads:
                base = (row.teacher_metrics or {}).get(key) if row.model_name != "teacher" else row.metrics.get(key)
                value = row.metrics.get(key)
                ok = is_number(base) and is_number(value) and base > 0
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


def format_metric(key: str, value: Any) -> str:
    if not is_number(value):
        return "n/a"
    if key in ("num_keypoints", "num_matches"):
        return f"{value:.0f}"
    if key in _LOWER_IS_BETTER:
        return f"{value:.2f}"
    return f"{value:.3f}"


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def slug(text: str) -> str:
    """``text`` safe as a file name: anything but letters, digits and ``-_.`` becomes ``_``."""
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
