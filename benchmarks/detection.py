"""Object-detector distillation benchmark: teacher, baseline student and every method, same schedule.

On each data set:

* the teacher (default ``retinanet_small_fpn``) is trained on the labelled training images;
* the baseline student (default ``retinanet_tiny_fpn``) is trained on the same images with
  its own losses alone, and one student per distillation run (``hint``, ``gid``, GID's
  ablations, ``pkd``, ``cwd``) with ground truth + the method, all with the SAME schedule,
  seed (hence the same initial weights) and data stream;
* every model is evaluated on the held-out images with COCO metrics (pycocotools): mAP
  (IoU 0.50:0.95) and AP50; "gap closed" is ``(student - baseline) / (teacher - baseline)`` in mAP;
* parameters, GFLOPs and CPU latency (forward + post-processing of one image, median of
  ``--repeats`` runs, teacher and student interleaved in this process) give the cost side;
  training time per run is reported too (a distillation step also runs the teacher).

Data sets:

* ``shapes``: the synthetic shapes detection set (:mod:`detkd.data.detection.synthetic`;
  5 classes with clutter; training and validation images drawn with different seeds);
* ``trees``: the real aerial orthophoto of ``../shared/data/trees`` (DeepForest sample, one
  class), cut into tiles; the left three quarters train, the spatially separate right quarter
  validates (:func:`detkd.data.detection.tree_tiles_split`). The validation curves use its tiles;
  the final judgement also scores the right quarter *whole*: predicted in overlapping tiles,
  merged across the seams, every tree counted once (:func:`detkd.tasks.detection_predict.predict_set_tiled`),
  COCO's ``maxDets`` set from the block's tree count. Tiles scored alone count a tree cut by a
  tile border twice and clip it.

    python benchmarks/detection.py --quick                 # smoke test: a few steps, numbers meaningless
    python benchmarks/detection.py --teacher-steps 600 --student-steps 300 --work runs/bench_det
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from detkd.config import merge_config
from detkd.data.detection import (
    DetectionSet,
    SyntheticDetectionConfig,
    read_voc,
    region_split,
    synthetic_detection_set,
    tree_tiles_split,
)
from detkd.engine import read_history
from detkd.evaluation.detection import DetectionMetrics, MaxDetections, evaluate_detections, resolve_max_detections
from detkd.export.bench import interleaved_latency
from detkd.models.detection import count_parameters, detector_gflops, load_detector, variant_options
from detkd.tasks.detection import (
    DEFAULT_DISTILL_CONFIG,
    DEFAULT_TRAIN_CONFIG,
    run_detection_distillation,
    run_detection_training,
)
from detkd.tasks.detection_data import DetectionData
from detkd.tasks.detection_eval import plot_detection_validation
from detkd.tasks.detection_predict import DEFAULT_TILE_OVERLAP, overlap_pixels, predict_set_tiled

TREES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trees"
MIN_GAP = 1.0  # mAP points; below this the teacher is not measurably better and "gap closed" is undefined

#: Student runs: name -> (method, method options); ``None``: the baseline (ground truth only).
STUDENT_RUNS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "baseline": None,
    "hint": ("hint", {}),
    "gid": ("gid", {}),
    "gid_label_free": ("gid", {"label_free": True}),  # no ground-truth loss: GID's losses alone on the same images
    "gid_feature": ("gid", {"relation_weight": 0.0, "response_cls_weight": 0.0, "response_box_weight": 0.0}),
    "gid_relation": ("gid", {"feature_weight": 0.0, "response_cls_weight": 0.0, "response_box_weight": 0.0}),
    "gid_response": ("gid", {"feature_weight": 0.0, "relation_weight": 0.0}),
    "gid_feature_response": ("gid", {"relation_weight": 0.0}),
    "pkd": ("pkd", {}),
    "cwd": ("cwd", {}),
}


#: The benchmark's synthetic scenes: the default mix with fewer, larger objects and less clutter, so that
#: detectors trained from scratch for a few hundred CPU steps learn something (the default set is harder).
BENCH_SHAPES = SyntheticDetectionConfig(objects=(1, 5), size=(0.12, 0.7), distractors=(1, 4), occluders=(0, 1))


def shapes_data(num_train: int, num_val: int, size: int) -> DetectionData:
    train = synthetic_detection_set(num_train, size, seed=0, config=BENCH_SHAPES)
    val = synthetic_detection_set(num_val, size, seed=1, config=BENCH_SHAPES)
    text = f"train: {train.summary()}\nval: {val.summary()}"
    return DetectionData(train, val, list(train.class_names), text)


def trees_data(tile: int, whole_block: DetectionSet) -> DetectionData:
    train, val = tree_tiles_split(TREES, tile_size=tile)
    text = f"train: {train.summary()}\nval: {val.summary()}\nscored whole: {whole_block.summary()}"
    return DetectionData(train, val, list(train.class_names), text)


def trees_whole_block() -> DetectionSet:
    """The validation region of the orthophoto (its right quarter, the region :func:`tree_tiles_split` tiles) as one image."""
    if not TREES.exists():
        raise FileNotFoundError(f"{TREES} is missing: the trees set reads the orthophoto in ../shared/data/trees")
    source = read_voc(TREES)
    blocks = [region_split(record)[1] for record in source.records]
    return DetectionSet(blocks, source.class_names, f"{source.source}, right 25% of each image, whole")


@dataclass
class WholeScoring:
    """Score models on whole images predicted in overlapping ``tile``-pixel tiles, each letterboxed to ``size``."""

    dataset: DetectionSet
    tile: int
    size: int
    eval_cfg: dict[str, Any]

    @property
    def limit(self) -> MaxDetections:
        return resolve_max_detections(self.eval_cfg["max_detections"], self.dataset.records)

    def __call__(self, model_path: Path) -> dict[str, float]:
        model = load_detector(model_path)
        predictions = predict_set_tiled(model, self.dataset, self.tile, DEFAULT_TILE_OVERLAP, (self.size, self.size),
                                        self.eval_cfg)
        return row(evaluate_detections(predictions, self.dataset, max_detections=self.limit.value))

    def describe(self) -> str:
        return (f"{self.dataset.summary()}; predicted in {self.tile} px tiles overlapping by "
                f"{overlap_pixels(DEFAULT_TILE_OVERLAP, self.tile)} px, each letterboxed to {self.size}x{self.size}, "
                f"merged across the seams (NMS IoU {self.eval_cfg['nms_iou']}); {self.limit.describe()}")


def schedule(args: argparse.Namespace, steps: int, seed: int) -> dict[str, Any]:
    """The ``train`` section: AdamW, linear warm-up, one 10x decay at 3/4 of the steps."""
    return {
        "steps": steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": max(1, steps // 20),
        "lr_decay": 0.1, "lr_decay_every": max(1, (3 * steps) // 4), "checkpoint_every": max(1, steps // 4),
        "log_every": max(1, min(10, steps // 10)), "accelerator": "cpu", "progress": False, "seed": seed,
        "precision": "32-true", "val_every": args.val_every,
    }


#: The ``eval`` section of every run, and of the whole-image scoring.
EVAL_SECTION = {"plot_images": 6, "batch_size": 16, "score_threshold": 0.05, "nms_iou": 0.5, "max_detections": "auto"}


def common_sections(args: argparse.Namespace, steps: int, seed: int) -> dict[str, Any]:
    return {
        "data": {"height": args.size, "width": args.size},
        "train": schedule(args, steps, seed),
        "eval": dict(EVAL_SECTION),
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_latency(models: dict[str, Any], size: int, repeats: int) -> dict[str, float]:
    """Median ms of forward + post-processing of one ``size``-pixel image per model, interleaved."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    runners = {name: (lambda m=model: m.predict(image)) for name, model in models.items()}
    with torch.inference_mode():
        stats = interleaved_latency(runners, repeats, warmup=3)
    return {name: s.median_ms for name, s in stats.items()}


def training_seconds(out: Path, steps: int, batch_size: int) -> float:
    """Training time of a run from its history (samples / images-per-second of the last record), so that
    a run finished earlier and only resumed here still reports what its training took."""
    records = read_history(out / "history.jsonl")
    rate = records[-1].get("images_per_s") if records else None
    return steps * batch_size / rate if rate else float("nan")


def row(metrics: DetectionMetrics) -> dict[str, float]:
    return {"map": 100 * metrics.map, "ap50": 100 * metrics.ap50, "ap75": 100 * metrics.ap75}


def validation_curve(out: Path) -> list[dict[str, float]]:
    """The run's ``validation.jsonl`` records (``step``, ``map``, ``ap50`` in points); empty without ``--val-every``."""
    path = out / "validation.jsonl"
    return read_history(path) if path.exists() else []


def run_set(name: str, data: DetectionData, args: argparse.Namespace, work: Path,
            whole: WholeScoring | None = None) -> dict[str, Any]:
    """Teacher, then every student run on one data set; returns the rows and costs (``whole``: also each
    model's metrics on whole images, in every row's ``whole``)."""
    print(f"\n===== {name} =====\n{data.description}", flush=True)
    with_anchors = all("anchor_size" in variant_options(n) for n in (args.teacher, args.student))
    overrides = {"anchor_size": args.anchor_size} if args.anchor_size and with_anchors else None
    teacher_cfg = merge_config(DEFAULT_TRAIN_CONFIG, {
        "model": {"name": args.teacher, "overrides": overrides}, **common_sections(args, args.teacher_steps, args.seed)})
    began = time.perf_counter()
    teacher_out = run_detection_training(teacher_cfg, work / name / "teacher", resume=True, data=data)
    rows: dict[str, dict[str, Any]] = {"teacher": {
        "detector": args.teacher, **row(teacher_out.report.metrics["model"]), "steps": args.teacher_steps,
        "train_s": training_seconds(teacher_out.out_dir, args.teacher_steps, args.batch_size),
        "wall_s": time.perf_counter() - began, "session_s": teacher_out.seconds,
        "curve": validation_curve(teacher_out.out_dir),
    }}
    paths = {"teacher": teacher_out.model_path}
    for run in args.runs:
        spec = STUDENT_RUNS[run]
        began = time.perf_counter()
        sections = common_sections(args, args.student_steps, args.student_seed)
        folder = work / name / (run if args.student_seed == args.seed else f"{run}_seed{args.student_seed}")
        if spec is None:
            config = merge_config(DEFAULT_TRAIN_CONFIG, {"model": {"name": args.student, "overrides": overrides}, **sections})
            outcome = run_detection_training(config, folder, resume=True, data=data)
            metrics = outcome.report.metrics["model"]
            paths[run] = outcome.model_path
        else:
            method, options = spec
            config = merge_config(DEFAULT_DISTILL_CONFIG, {
                "teacher": {"checkpoint": str(teacher_out.model_path)},
                "student": {"name": args.student, "overrides": overrides},
                "distill": {"method": method, "label_free": bool(options.get("label_free", False)),
                            method: {k: v for k, v in options.items() if k != "label_free"}}, **sections})
            outcome = run_detection_distillation(config, folder, resume=True, data=data)
            metrics = outcome.report.metrics["student"]
            paths[run] = outcome.model_path
        rows[run] = {"detector": args.student, "method": method if spec else "ground truth only", **row(metrics),
                     "options": options if spec else {}, "steps": args.student_steps,
                     "train_s": training_seconds(outcome.out_dir, args.student_steps, args.batch_size),
                     "session_s": outcome.seconds, "curve": validation_curve(outcome.out_dir),
                     "wall_s": time.perf_counter() - began}
        print(f"[{name}] {run}: mAP {rows[run]['map']:.1f}, AP50 {rows[run]['ap50']:.1f} "
              f"({rows[run]['train_s']:.0f} s training)", flush=True)
    for values in rows.values():  # False: finished by an earlier invocation with this --work, only evaluated here
        values["trained_here"] = bool(values["session_s"] >= 0.5 * values["train_s"])
    if whole is not None:
        print(f"[{name}] scoring whole images: {whole.describe()}", flush=True)
        for run, values in rows.items():
            values["whole"] = whole(paths[run])
            print(f"[{name}] {run} whole: mAP {values['whole']['map']:.1f}, AP50 {values['whole']['ap50']:.1f}", flush=True)
    teacher_map = rows["teacher"]["map"]
    if "baseline" in rows:
        base = rows["baseline"]["map"]
        for run, values in rows.items():
            if run != "teacher":
                values["delta_map"] = values["map"] - base
                gap = teacher_map - base
                values["gap_closed"] = (values["map"] - base) / gap if gap >= MIN_GAP else None

    teacher = load_detector(teacher_out.model_path)
    first = "baseline" if "baseline" in rows else args.runs[0]
    suffix = "" if args.student_seed == args.seed else f"_seed{args.student_seed}"
    student_path = work / name / f"{first}{suffix}" / ("model.pt" if first == "baseline" else "student.pt")
    student = load_detector(student_path)
    pair = {"teacher": teacher, "student": student}
    latency = {size: cpu_latency(pair, size, args.repeats) for size in (args.size, args.latency_size)}
    cost: dict[str, Any] = {
        who: {"detector": model.name, "parameters": count_parameters(model),
              "gflops": {size: detector_gflops(model, size, size) for size in latency},
              "latency_ms": {size: latency[size][who] for size in latency}}
        for who, model in pair.items()
    }
    cost["latency_ratio"] = {size: latency[size]["teacher"] / latency[size]["student"] for size in latency}
    return {"description": data.description, "rows": rows, "cost": cost,
            "whole": whole.describe() if whole is not None else None}


def curve_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Validation mAP at a quarter, half, three quarters and all of each run's steps (flat at the end = converged)."""
    curves = {run: r["curve"] for run, r in rows.items() if r.get("curve")}
    if not curves:
        return []
    lines = ["", "Validation mAP along each run's schedule (`--val-every`; the last column is the final evaluation's "
                 "set, so it equals the table above); 'last quarter' = mAP gained over the final 25% of the steps:", "",
             "| run | steps | 25% | 50% | 75% | 100% | best (step) | last quarter |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run, curve in curves.items():
        steps = rows[run]["steps"]
        at = {int(r["step"]): r["map"] for r in curve}

        def near(fraction: float) -> float:
            return at[min(at, key=lambda k: abs(k - fraction * steps))]

        best_step = max(at, key=lambda k: at[k])
        cells = " | ".join(f"{near(f):.1f}" for f in (0.25, 0.5, 0.75, 1.0))
        lines.append(f"| {run} | {steps} | {cells} | {at[best_step]:.1f} ({best_step}) | {near(1.0) - near(0.75):+.1f} |")
    return lines


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Every run's validation mAP and AP50 against its steps, one figure per data set."""
    written = None
    for name, result in results.items():
        runs = {run: r["curve"] for run, r in result["rows"].items() if r.get("curve")}
        if runs:
            target = path if len(results) == 1 else path.with_name(f"{path.stem}_{name}{path.suffix}")
            written = plot_detection_validation(runs, target, f"{name}: validation during training")
    return written


def target_lines(name: str, rows: dict[str, dict[str, Any]], cost: dict[str, Any]) -> list[str]:
    """This invocation (one student seed) against the detector issue's targets, which are on the mean of
    three seeds (``benchmarks/detection_seeds.py`` gives that): gid +3 mAP over the baseline on shapes,
    +2 AP50 on trees, gid within 5% of its teacher's mAP or above it, students 4x faster than teachers."""
    scored = {run: r.get("whole") or r for run, r in rows.items()}  # trees: the block scored whole, when scored
    base, teacher = scored["baseline"], scored["teacher"]
    lines = []
    for run, r in scored.items():
        if run in ("teacher", "baseline"):
            continue
        gain_map, gain_ap50 = r["map"] - base["map"], r["ap50"] - base["ap50"]
        needed = ("AP50", gain_ap50, 2.0) if name == "trees" else ("mAP", gain_map, 3.0)
        share = r["map"] / teacher["map"] if teacher["map"] > 0 else float("nan")
        lines.append(
            f"- {name}{' (scored whole)' if 'whole' in rows[run] else ''} / {run}: {gain_map:+.1f} mAP, {gain_ap50:+.1f} AP50 over the baseline "
            f"(target +{needed[2]:g} {needed[0]}: {'met' if needed[1] >= needed[2] else 'missed'} on this seed); "
            f"{100 * share:.0f}% of the teacher's mAP (target >= 95%: {'met' if share >= 0.95 else 'missed'})"
        )
    ratio = max(cost["latency_ratio"].values())
    lines.append(f"- {name}: the student is {ratio:.2f}x faster than its teacher at best (target >= 4x: "
                 f"{'met' if ratio >= 4 else 'missed'})")
    return lines


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if isinstance(value, float) else str(value)


def report(results: dict[str, Any], args: argparse.Namespace, header: list[str]) -> str:
    lines = ["# Object-detector distillation benchmark", "", *header, ""]
    verdict = []
    for name, result in results.items():
        rows, cost = result["rows"], result["cost"]
        lines += [f"## {name}", "", result["description"].replace("\n", "  \n"), "",
                  "| run | detector | method | mAP | AP50 | AP75 | mAP vs baseline | gap closed | train s | s/step |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for run, r in rows.items():
            gap = r.get("gap_closed")
            lines.append(
                f"| {run}{'' if r['trained_here'] else ' *'} | {r['detector']} | {r.get('method', 'supervised')} | {r['map']:.1f} | {r['ap50']:.1f} | "
                f"{r['ap75']:.1f} | {fmt(r.get('delta_map'))} | {'n/a' if gap is None else f'{100 * gap:.0f}%'} | "
                f"{r['train_s']:.0f} | {r['train_s'] / max(r['steps'], 1):.2f} |"
            )
        if result.get("whole"):
            base = rows["baseline"]["whole"] if "baseline" in rows else None
            lines += ["", f"Held-out block scored whole: {result['whole']}.", "",
                      "| run | mAP | AP50 | AP75 | mAP vs baseline | AP50 vs baseline |", "|---|---:|---:|---:|---:|---:|"]
            for run, r in rows.items():
                w = r["whole"]
                deltas = ("n/a", "n/a") if base is None or run == "teacher" else (
                    fmt(w["map"] - base["map"]), fmt(w["ap50"] - base["ap50"]))
                lines.append(f"| {run} | {w['map']:.1f} | {w['ap50']:.1f} | {w['ap75']:.1f} | {deltas[0]} | {deltas[1]} |")
        lines += curve_table(rows)
        t, s = cost["teacher"], cost["student"]
        sizes = list(cost["latency_ratio"])
        if not all(r["trained_here"] for r in rows.values()):
            lines += ["", "\\* trained by an earlier invocation with the same arguments and --work (resumed here, "
                          "nothing left to train); its time was measured then."]
        lines += ["", "| model | detector | parameters | " + " | ".join(
                      f"GFLOPs @{n} | CPU ms @{n} | speed-up @{n}" for n in sizes) + " |",
                  "|---|---|---:|" + "---:|" * (3 * len(sizes))]
        for who, c in (("teacher", t), ("student", s)):
            cells = " | ".join(f"{c['gflops'][n]:.3f} | {c['latency_ms'][n]:.1f} | "
                               f"{t['latency_ms'][n] / c['latency_ms'][n]:.2f}x" for n in sizes)
            lines.append(f"| {who} | {c['detector']} | {c['parameters']:,} | {cells} |")
        lines += ["", f"CPU latency: forward + post-processing of one NxN image, median of {args.repeats} runs, teacher and "
                      f"student interleaved, {args.threads} torch thread(s). The student has "
                      f"{s['parameters'] / t['parameters']:.0%} of the teacher's parameters.", ""]
        if "baseline" in rows:
            verdict += target_lines(name, rows, cost)
    if verdict:
        lines += ["## Against the issue's targets", "", *verdict, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["shapes", "trees"], choices=["shapes", "trees"])
    parser.add_argument("--runs", nargs="+", default=list(STUDENT_RUNS), choices=list(STUDENT_RUNS),
                        help="student runs [all]")
    parser.add_argument("--teacher", default="retinanet_small_fpn", help="teacher detector [retinanet_small_fpn]")
    parser.add_argument("--student", default="retinanet_tiny_fpn", help="student detector [retinanet_tiny_fpn]")
    parser.add_argument("--anchor-size", type=int, default=16,
                        help="anchor_size of teacher and student when both have anchors (pixels at P3; 0: the variant's) [16]")
    parser.add_argument("--teacher-steps", type=int, default=600, help="teacher training steps [600]")
    parser.add_argument("--student-steps", type=int, default=300, help="steps of every student run [300]")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step [8]")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate [2e-3]")
    parser.add_argument("--val-every", type=int, default=0,
                        help="validate every run every N steps: the validation curves (does longer training still "
                             "help?) go into <results>_curves.png and the tables [0: final evaluation only]")
    parser.add_argument("--size", type=int, default=128, help="training / evaluation / latency image side [128]")
    parser.add_argument("--shapes-train", type=int, default=400, help="synthetic training images [400]")
    parser.add_argument("--shapes-val", type=int, default=100, help="synthetic validation images [100]")
    parser.add_argument("--tree-tile", type=int, default=128, help="tree tile side, pixels [128]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the teacher (and of the students by default) [0]")
    parser.add_argument("--student-seed", type=int, default=None,
                        help="seed of the student runs (initial weights, data order); another value than --seed "
                             "reuses the teacher and writes the students to <run>_seed<N> [--seed]")
    parser.add_argument("--tag", default="", help="results file name suffix: detection_<tag>.md/.json")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model for the latency [30]")
    parser.add_argument("--latency-size", type=int, default=512,
                        help="second, deployment-like image side for GFLOPs and latency [512]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads [1: on a shared CPU a second thread made steps ~15x slower]")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the runs here (reruns resume them; use a fresh folder for a new schedule) [temporary]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    parser.add_argument("--quick", action="store_true", help="a few steps on small sets: a smoke test, numbers meaningless")
    if "--quick" in sys.argv:  # smaller defaults; options given explicitly still win
        parser.set_defaults(teacher_steps=4, student_steps=2, batch_size=2, shapes_train=16, shapes_val=8, repeats=3)
    args = parser.parse_args()
    if args.student_seed is None:
        args.student_seed = args.seed
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="detkd-bench-det-"))
    started = time.perf_counter()

    results = {}
    for name in args.sets:
        if name == "shapes":
            data, whole = shapes_data(args.shapes_train, args.shapes_val, args.size), None
        else:
            block = trees_whole_block()
            data = trees_data(args.tree_tile, block)
            whole = WholeScoring(block, args.tree_tile, args.size, dict(EVAL_SECTION))
        results[name] = run_set(name, data, args, work, whole)
    total = time.perf_counter() - started

    uses_anchors = all("anchor_size" in variant_options(n) for n in (args.teacher, args.student))
    anchors = (f"anchor_size {args.anchor_size} for both" if uses_anchors and args.anchor_size
               else "the variants' own anchors (FCOS has no anchor_size)" if not uses_anchors else "default anchors")
    header = [
        f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; git commit {git_commit()}; machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, torch threads: {args.threads}, "
        f"torch {torch.__version__}; total wall time {total / 60:.1f} min.  ",
        "Where it ran: everything (training, evaluation, latency) on the CPU; no GPU was used.  ",
        f"Schedule (teacher and every student alike, except the teacher's step count): AdamW lr {args.lr:g}, "
        f"batch {args.batch_size}, {args.size}x{args.size} views, warm-up 5% of the steps, lr x0.1 at 75%, seed "
        f"{args.seed} (students: {args.student_seed}); teacher {args.teacher} {args.teacher_steps} steps, students {args.student} "
        f"{args.student_steps} steps each (same initial weights and data stream); {anchors}. Methods use their default weights (GID paper weights, "
        "hint 1.0 unmasked and GID feature 0.005, both on maps divided by their own RMS per level and image, PKD 10 one-stage / 6 Faster R-CNN on P3-P6, CWD 5 with tau 1 on P3-P6) plus the ground-truth loss x1 (not for gid_label_free: "
        "GID's losses alone).  ",
        f"Data: `shapes` = synthetic shapes (in memory, 5 classes, {replace(BENCH_SHAPES, height=args.size, width=args.size)}); `trees` = the orthophoto in ../shared/data/trees "
        "(read from there), cut into tiles, spatially separate train/val regions.  ",
        "mAP and AP are COCO metrics (pycocotools) in points; 'gap closed' = (student - baseline) / "
        "(teacher - baseline) in mAP.",
    ]
    if args.quick:
        header.insert(0, "**Smoke test (--quick): a few steps, numbers meaningless.**\n")
    text = report(results, args, header)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = ("detection_quick" if args.quick else "detection") + (f"_{args.tag}" if args.tag else "")
    (args.out / f"{stem}.md").write_text(text + "\n")
    payload = {"command": f"python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}",
               "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "git_commit": git_commit(),
               "machine": {"arch": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                           "torch": torch.__version__, "device": "cpu only (no GPU used)"},
               "total_wall_s": total, "args": vars(args), "results": results}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str))
    curves = plot_curves(results, args.out / f"{stem}_curves.png")
    if curves is not None:
        print(f"validation curves: {curves}")
    print(f"written: {args.out / (stem + '.md')} and .json (runs in {work})")


if __name__ == "__main__":
    main()
