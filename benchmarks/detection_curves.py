"""Validation curves of detector runs, finished or still going: one table and one figure.

Reads each run folder's ``validation.jsonl`` (written by ``train.val_every`` /
``--val-every``) and puts the runs side by side at every validated step, so that runs of one
schedule compare at equal steps even before they end (a run stopped by the end of a session and
resumed in the next shows the steps it has). Each row also says how far the run has got of the
steps its ``config.yaml`` asks for.

    python benchmarks/detection_curves.py teacher=runs/bench/shapes/teacher baseline=runs/bench/shapes/baseline \
        gid=runs/bench/shapes/gid --tag shapes_4000steps --title "fcos_tiny, 4000 steps"
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from detkd.engine import read_history
from detkd.tasks.detection_eval import plot_detection_validation


def read_run(folder: Path) -> dict[str, Any]:
    """``{"curve": [{step, map, ap50}], "steps": planned steps or None}`` of one run folder."""
    path = folder / "validation.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: was the run started with --val-every (train.val_every)?")
    config = folder / "config.yaml"
    planned = yaml.safe_load(config.read_text()).get("train", {}).get("steps") if config.exists() else None
    return {"curve": read_history(path), "steps": planned}


def curve_table(runs: dict[str, dict[str, Any]], metric: str = "map") -> str:
    """Markdown: one row per validated step, one column per run (``-`` where a run has no value)."""
    steps = sorted({int(r["step"]) for run in runs.values() for r in run["curve"]})
    names = list(runs)
    lines = ["| step | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for step in steps:
        cells = []
        for name in names:
            value = next((r[metric] for r in runs[name]["curve"] if int(r["step"]) == step), None)
            cells.append("-" if value is None else f"{value:.1f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    progress = []
    for name, run in runs.items():
        done = max((int(r["step"]) for r in run["curve"]), default=0)
        planned = run["steps"]
        progress.append(f"{name} {done}/{planned if planned else '?'}")
    return "\n".join(lines) + "\n\nValidated so far (step reached / steps planned): " + ", ".join(progress) + "."


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER, one per run")
    parser.add_argument("--tag", required=True, help="output name: detection_curves_<tag>.md / .png")
    parser.add_argument("--title", default="Validation during training", help="figure title")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    args = parser.parse_args(argv)

    runs = {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"'{spec}': give NAME=RUN_FOLDER")
        runs[name] = read_run(Path(folder))
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot_detection_validation({n: r["curve"] for n, r in runs.items()},
                                    args.out / f"detection_curves_{args.tag}.png", args.title)
    text = "\n".join([
        f"# {args.title}", "",
        f"Command: `python benchmarks/detection_curves.py {shlex.join(sys.argv[1:] if argv is None else argv)}`", "",
        "COCO mAP (IoU 0.50:0.95, points) on the validation part at each validated step:", "",
        curve_table(runs, "map"), "", "AP50 (points):", "", curve_table(runs, "ap50"), "",
        f"Figure: `{png.name}`.",
    ])
    print(text)
    (args.out / f"detection_curves_{args.tag}.md").write_text(text + "\n")
    print(f"written: {args.out / f'detection_curves_{args.tag}.md'} and {png}")


if __name__ == "__main__":
    main()
