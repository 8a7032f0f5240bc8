"""Object-detector distillation benchmark: teacher, baseline student and every method, same schedule.

On each data set:

* the teacher (default ``retinanet_small_fpn``) is trained on the labelled training images, or read
  from ``--teacher-checkpoint`` (a teacher an earlier run kept with ``--save-teacher``, e.g. one of
  ``benchmarks/teachers``; its detector, classes, image size, steps and training images are checked);
* the baseline student (default ``retinanet_tiny_fpn``) is trained on the same images with
  its own losses alone, and one student per distillation run (``hint``, ``gid``, GID's
  ablations, ``pkd``, ``cwd``) with ground truth + the method, all with the SAME schedule,
  seed (hence the same initial weights) and data stream; with ``--student-ema-decay``, students
  judged and kept as the moving average of their weights, in rows named ``RUN+ema<decay>``;
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
    python benchmarks/detection.py --sets shapes --teacher fcos_small_fpn --student fcos_tiny_fpn --size 256 \
        --teacher-steps 4000 --shapes-train 1000 --shapes-val 150 --runs baseline hint \
        --teacher-checkpoint benchmarks/teachers/shapes256_fcos_small_fpn_4000.pt
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

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
from detkd.export.records import write_table_files
from detkd.export.timing import interleaved_latency
from detkd.models.detection import count_parameters, detector_gflops, inference_copy, load_detector, variant_options
from detkd.models.detection.weights import read_detector_extra, save_detector
from detkd.tasks.detection import (
    DEFAULT_DISTILL_CONFIG,
    DEFAULT_TRAIN_CONFIG,
    run_detection_distillation,
    run_detection_training,
)
from detkd.tasks.detection_data import DetectionData
from detkd.tasks.detection_eval import eval_size, evaluate_and_report
from detkd.tasks.detection_predict import DEFAULT_TILE_OVERLAP, overlap_pixels, predict_set_tiled

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection_report import plot_curves, report  # noqa: E402

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
    "gid_rpn_only": ("gid", {"second_stage_response": False}),  # two-stage pairs: the RoI heads not distilled
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


def student_run_name(run: str, ema_decay: float) -> str:
    """A student run's row and folder name: ``run``, plus ``+ema<decay>`` when its weights are averaged
    (so that averaged and plain students of one seed sit side by side, each paired with the plain baseline)."""
    return f"{run}+ema{ema_decay:g}" if ema_decay else run


def schedule(args: argparse.Namespace, steps: int, seed: int) -> dict[str, Any]:
    """The ``train`` section: AdamW, linear warm-up, one 10x decay at 3/4 of the steps."""
    return {
        "steps": steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": max(1, steps // 20),
        "lr_decay": 0.1, "lr_decay_every": max(1, (3 * steps) // 4), "checkpoint_every": max(1, steps // 4),
        "log_every": max(1, min(10, steps // 10)), "accelerator": "cpu", "progress": False, "seed": seed,
        "precision": "32-true", "val_every": args.val_every,
        **({} if args.channels_last is None else {"channels_last": args.channels_last}),
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
    """Median ms of forward + post-processing of one ``size``-pixel image per model, interleaved, each
    model as ``Predictor`` runs it (:func:`~detkd.models.detection.inference.inference_copy`)."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    prepared = {name: inference_copy(model) for name, model in models.items()}
    runners = {name: (lambda m=model: m.predict(image)) for name, model in prepared.items()}
    with torch.inference_mode():
        stats = interleaved_latency(runners, repeats, warmup=3)
    return {name: s.median_ms for name, s in stats.items()}


def student_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--student-option`` (the value read as YAML: ``1``, ``[8, 16]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"'{text}': --student-option takes KEY=VALUE, e.g. head_convs=1")
    return key, yaml.safe_load(value)


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


def train_teacher(config: dict[str, Any], data: DetectionData, out: Path) -> tuple[dict[str, Any], Path]:
    """Train (or resume) the teacher in ``out``; its row of the table and its ``model.pt``."""
    began = time.perf_counter()
    outcome = run_detection_training(config, out, resume=True, data=data)
    steps = config["train"]["steps"]
    return {
        "detector": config["model"]["name"], **row(outcome.report.metrics["model"]), "steps": steps,
        "train_s": training_seconds(outcome.out_dir, steps, config["train"]["batch_size"]),
        "wall_s": time.perf_counter() - began, "session_s": outcome.seconds, "curve": validation_curve(outcome.out_dir),
    }, outcome.model_path


def given_teacher(path: Path, config: dict[str, Any], data: DetectionData, out: Path) -> tuple[dict[str, Any], Path]:
    """The row of a teacher trained earlier (``--teacher-checkpoint``, e.g. one of ``benchmarks/teachers``), scored
    here on ``data``'s validation images as a teacher trained here would be; its training time and validation curve
    come from the file. Refuses a file whose detector, classes, training size, steps or training images differ from
    ``config`` and ``data`` (its learning rate and batch are not stored: the teacher's card says them)."""
    model, extra = load_detector(path), read_detector_extra(path)
    train_cfg, data_cfg = config["train"], config["data"]
    facts = {"detector": (model.name, config["model"]["name"]), "classes": (list(model.class_names), list(data.class_names)),
             "training size": (extra.get("train_size"), [data_cfg["height"], data_cfg["width"]]),
             "steps": (extra.get("steps"), train_cfg["steps"]),
             "training images": (extra.get("training_images"), portable_summary(data))}
    wrong = [f"{what} {have} (this benchmark's: {want})" for what, (have, want) in facts.items() if have != want]
    if wrong:
        raise SystemExit(f"--teacher-checkpoint {path} does not fit this benchmark: its {'; its '.join(wrong)}. Pass the "
                         "options it was trained with (benchmarks/teachers/README.md lists them), or leave "
                         "--teacher-checkpoint out to train the teacher here.")
    began = time.perf_counter()
    report = evaluate_and_report({"model": model}, data.val, config["eval"], eval_size(config["eval"], data_cfg), out)
    return {
        "detector": model.name, **row(report.metrics["model"]), "steps": extra["steps"],
        "train_s": float(extra.get("train_s", float("nan"))), "wall_s": time.perf_counter() - began, "session_s": 0.0,
        "curve": list(extra.get("curve", [])), "checkpoint": str(path),
    }, Path(path)


def portable_summary(data: DetectionData) -> str:
    """The training images' summary with the trees folder written as ``../shared/data/trees``, so that a kept
    teacher fits the same data in another checkout."""
    return data.train.summary().replace(str(TREES), "../shared/data/trees")


def save_teacher(path: Path, destination: Path, teacher_row: dict[str, Any], data: DetectionData) -> Path:
    """Write the teacher at ``path`` to ``destination`` with what :func:`given_teacher` checks and reports: its
    training size, steps and images, training time and validation curve."""
    extra = {**read_detector_extra(path), "training_images": portable_summary(data), "train_s": teacher_row["train_s"],
             "curve": teacher_row["curve"], "validation_map": teacher_row["map"], "validation_ap50": teacher_row["ap50"]}
    saved = save_detector(load_detector(path), destination, extra=extra)
    print(f"teacher written to {saved} (use it with --teacher-checkpoint {saved})", flush=True)
    return saved


def run_set(name: str, data: DetectionData, args: argparse.Namespace, work: Path,
            whole: WholeScoring | None = None) -> dict[str, Any]:
    """Teacher, then every student run on one data set; returns the rows and costs (``whole``: also each
    model's metrics on whole images, in every row's ``whole``)."""
    print(f"\n===== {name} =====\n{data.description}", flush=True)
    with_anchors = all("anchor_size" in variant_options(n) for n in (args.teacher, args.student))
    overrides = {"anchor_size": args.anchor_size} if args.anchor_size and with_anchors else None
    student_overrides = {**(overrides or {}), **args.student_option} or None
    teacher_cfg = merge_config(DEFAULT_TRAIN_CONFIG, {
        "model": {"name": args.teacher, "overrides": overrides, "init": str(args.teacher_init) if args.teacher_init else None},
        **common_sections(args, args.teacher_steps, args.seed)})
    if args.teacher_checkpoint:
        teacher_row, teacher_path = given_teacher(args.teacher_checkpoint, teacher_cfg, data, work / name / "teacher_given")
    else:
        teacher_row, teacher_path = train_teacher(teacher_cfg, data, work / name / "teacher")
    if args.save_teacher:
        save_teacher(teacher_path, args.save_teacher, teacher_row, data)
    rows: dict[str, dict[str, Any]] = {"teacher": teacher_row}
    paths = {"teacher": teacher_path}
    for method_run in args.runs:
        spec = STUDENT_RUNS[method_run]
        run = student_run_name(method_run, args.student_ema_decay)
        began = time.perf_counter()
        sections = common_sections(args, args.student_steps, args.student_seed)
        sections["train"]["ema_decay"] = args.student_ema_decay
        folder = work / name / (run if args.student_seed == args.seed else f"{run}_seed{args.student_seed}")
        if spec is None:
            config = merge_config(DEFAULT_TRAIN_CONFIG, {"model": {"name": args.student, "overrides": student_overrides},
                                                         **sections})
            outcome = run_detection_training(config, folder, resume=True, data=data)
            metrics = outcome.report.metrics["model"]
            paths[run] = outcome.model_path
        else:
            method, options = spec
            config = merge_config(DEFAULT_DISTILL_CONFIG, {
                "teacher": {"checkpoint": str(teacher_path)},
                "student": {"name": args.student, "overrides": student_overrides},
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

    teacher = load_detector(teacher_path)
    first = "baseline" if "baseline" in args.runs else args.runs[0]
    student = load_detector(paths[student_run_name(first, args.student_ema_decay)])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["shapes", "trees"], choices=["shapes", "trees"])
    parser.add_argument("--runs", nargs="+", default=list(STUDENT_RUNS), choices=list(STUDENT_RUNS),
                        help="student runs [all]")
    parser.add_argument("--teacher", default="retinanet_small_fpn", help="teacher detector [retinanet_small_fpn]")
    parser.add_argument("--student", default="retinanet_tiny_fpn", help="student detector [retinanet_tiny_fpn]")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="train.channels_last of every run (default: the configs', true since 2026-12-06); "
                             "--no-channels-last repeats a run trained before that default")
    parser.add_argument("--student-option", nargs="+", default=[], metavar="KEY=VALUE", type=student_option,
                        help="the student's structure options (detkd detect models lists them), YAML values, "
                             "e.g. head_convs=1 [none]")
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
    parser.add_argument("--student-ema-decay", type=float, default=0.0,
                        help="students judged and saved as the moving average of their weights (train.ema_decay); "
                             "their rows and folders are named RUN+ema<decay> [0: off]")
    parser.add_argument("--tag", default="", help="results file name suffix: detection_<tag>.md/.json")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model for the latency [30]")
    parser.add_argument("--latency-size", type=int, default=512,
                        help="second, deployment-like image side for GFLOPs and latency [512]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads [1: on a shared CPU a second thread made steps ~15x slower]")
    parser.add_argument("--teacher-checkpoint", type=Path, default=None,
                        help="use this trained teacher (a detector file, e.g. from benchmarks/teachers) instead of "
                             "training one; its detector, classes, size and steps must match the options [train one]")
    parser.add_argument("--teacher-init", type=Path, default=None,
                        help="start the teacher from this detector file (model.init, e.g. the shapes teacher of "
                             "benchmarks/teachers for a trees teacher); the class layer of another class list starts "
                             "fresh [random weights]")
    parser.add_argument("--save-teacher", type=Path, default=None,
                        help="also write the teacher to this file, with its training facts, for --teacher-checkpoint "
                             "(one --sets only) [no]")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the runs here (reruns resume them; use a fresh folder for a new schedule) [temporary]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    parser.add_argument("--quick", action="store_true", help="a few steps on small sets: a smoke test, numbers meaningless")
    if "--quick" in sys.argv:  # smaller defaults; options given explicitly still win
        parser.set_defaults(teacher_steps=4, student_steps=2, batch_size=2, shapes_train=16, shapes_val=8, repeats=3)
    args = parser.parse_args()
    if args.student_seed is None:
        args.student_seed = args.seed
    args.student_option = dict(args.student_option)
    unknown = sorted(set(args.student_option) - set(variant_options(args.student)))
    if unknown:  # before any teacher is trained: a typo found after an hour of training costs the hour
        parser.error(f"--student-option {', '.join(unknown)}: not an option of {args.student}; its options: "
                     f"{', '.join(sorted(variant_options(args.student)))}")
    if (args.teacher_checkpoint or args.save_teacher) and len(args.sets) != 1:
        parser.error("--teacher-checkpoint and --save-teacher hold one data set's teacher: name one in --sets")
    if args.teacher_init and args.teacher_checkpoint:
        parser.error("--teacher-init starts a teacher trained here; --teacher-checkpoint uses one trained before: give one")
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
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`  ",
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
    stem = ("detection_quick" if args.quick else "detection") + (f"_{args.tag}" if args.tag else "")
    write_table_files(args.out, stem, text, {
        "command": f"python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}",
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "git_commit": git_commit(),
        "machine": {"arch": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "device": "cpu only (no GPU used)"},
        "total_wall_s": total, "args": vars(args), "results": results})
    curves = plot_curves(results, args.out / f"{stem}_curves.png")
    if curves is not None:
        print(f"validation curves: {curves}")
    print(f"written: {args.out / (stem + '.md')} and .json (runs in {work})")


if __name__ == "__main__":
    main()
