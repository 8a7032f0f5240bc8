"""Key-point distillation benchmark: size, cost, CPU speed and accuracy of teacher and students.

For the teacher and each student variant (``fast-s``, ``fast-m`` by default):

* parameters, GFLOPs of one 480x640 forward pass (``torch.utils.flop_counter``; 1 multiply-add
  = 2 FLOPs), CPU latency of the network at 480x640 (median of repeated runs after warm-up,
  teacher and students interleaved in one run so that the ratios are fair);
* after distilling each student from the teacher for ``--steps`` steps with the same settings:
  repeatability, localisation error, MMA@3, homography accuracy @1/3/5 px, matching score and
  F1 on held-out synthetic pairs, teacher and students on the very same pairs.

Held-out pairs: scikit-image's held-out photos and the held-out block of tiles of the real aerial
orthophoto in ``../shared/data/trees`` (via ``benchmarks/tree_tiles.py``); neither was used to
train the teacher or the students.

    python benchmarks/keypoints.py                       # writes benchmarks/results/keypoints.{md,json,png}
                                                         # (8000 steps per student: hours on a CPU; resumable with --runs)
    python benchmarks/keypoints.py --quick --teacher T.pt  # smoke test, seconds
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from detkd.config import merge_config
from detkd.data.pairs import builtin_heldout_pairs, synthetic_pairs_from_folder
from detkd.evaluation.keypoints import WithExtractOptions, evaluate_keypoint_models, format_metrics_table
from detkd.export.records import write_table_files
from detkd.models.pretrained import DEFAULT_KEYPOINT_TEACHER
from detkd.models.keypoint_ops import check_input_scale
from detkd.models.superpoint import SuperPoint, count_parameters
from detkd.models.weights import load_keypoint_model
from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG, run_distillation
from detkd.viz.plots import plot_accuracy_vs_latency

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import prepare_images  # noqa: E402
from tree_tiles import DEFAULT_SOURCE, write_tiles  # noqa: E402


def gflops(model: SuperPoint, height: int, width: int) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(1, 1, height, width))
    return counter.get_total_flops() / 1e9


def cpu_latencies(models: dict[str, SuperPoint], height: int, width: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median forward time in ms per model, measured interleaved (round-robin) in one run."""
    image = torch.rand(1, 1, height, width)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(image)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(image)
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def heldout_pairs(size: tuple[int, int], pairs_per_image: int, tiles_dir: Path,
                  more_photos: Path | None = None) -> dict[str, list]:
    """Synthetic pairs of held-out images by set: ``photos`` (scikit-image's held-out photos), ``aerial``
    (the held-out tree tiles, when the orthophoto is at hand) and, with ``more_photos``, ``more photos``
    (a folder of photos never trained on, e.g. ``benchmarks/extra_photos.py``'s ``test`` split)."""
    common = {"pairs_per_image": pairs_per_image, "size": size, "seed": 1234}
    pairs = {"photos": builtin_heldout_pairs(**common)}
    if DEFAULT_SOURCE.exists():
        write_tiles(DEFAULT_SOURCE, tiles_dir)
        pairs["aerial"] = synthetic_pairs_from_folder(tiles_dir / "heldout", **common)
    else:  # said out loud: a table without its aerial columns is not comparable with one that has them
        print(f"WARNING: no aerial pairs: the orthophoto folder {DEFAULT_SOURCE} does not exist (the shared data sits "
              "beside the repository; a copy of the repository elsewhere needs a link to it)", file=sys.stderr)
    if more_photos is not None:
        pairs["more photos"] = synthetic_pairs_from_folder(more_photos, **common)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=DEFAULT_KEYPOINT_TEACHER, help="teacher weights [shipped teacher]")
    parser.add_argument("--students", nargs="+", default=["fast-s", "fast-m"], help="student variants [fast-s fast-m]")
    parser.add_argument("--steps", type=int, default=8000,
                        help="distillation steps per student [8000: where the learning curve flattens, "
                             "benchmarks/results/learning_curve.md]")
    parser.add_argument("--batch-size", type=int, default=8, help="views per step [8]")
    parser.add_argument("--train-size", type=int, nargs=2, default=[240, 320], help="training view H W [240 320]")
    parser.add_argument("--lr-decay", type=float, default=0.8, help="lr factor every 1000 steps [0.8]")
    parser.add_argument("--views-per-image", type=int, default=24,
                        help="teacher outputs cached per training photo (the teacher runs once per view) [24]")
    parser.add_argument("--eval-size", type=int, nargs=2, default=[240, 320], help="evaluation pair H W [240 320]")
    parser.add_argument("--pairs-per-image", type=int, default=4, help="synthetic pairs per held-out image [4]")
    parser.add_argument("--latency-size", type=int, nargs=2, default=[480, 640], help="latency/GFLOPs input H W")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per model [20]")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    parser.add_argument("--runs", type=Path, default=None, help="keep the distillation runs here [temporary]")
    parser.add_argument("--input-scale", type=float, default=1.0,
                        help="input_scale at which every model is judged [1: the students' training resolution]; "
                             "a teacher with another input_scale of its own also gets a row at that scale")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers meaningless)")
    args = parser.parse_args()
    try:  # checked before the students train, not after
        scale = check_input_scale(args.input_scale)
    except ValueError as error:
        parser.error(f"--input-scale: {error}")
    if args.quick:
        args.steps, args.batch_size, args.train_size, args.eval_size = 2, 2, [64, 96], [64, 96]
        args.pairs_per_image, args.latency_size, args.repeats, args.views_per_image = 1, [120, 160], 2, 1
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    teacher = load_keypoint_model(args.teacher).eval()
    work = Path(tempfile.mkdtemp(prefix="detkd-bench-"))
    runs = args.runs or work / "runs"
    students: dict[str, SuperPoint] = {}
    train_images, _ = prepare_images(runs / "images")  # the learning curve's training photos (none held out here)
    for variant in args.students:
        config = merge_config(DEFAULT_DISTILL_CONFIG, {
            "teacher": {"checkpoint": str(args.teacher)},
            "student": {"variant": variant},
            "data": {"images": str(train_images), "height": args.train_size[0], "width": args.train_size[1]},
            "teacher_cache": {"folder": str(runs / f"teacher_cache_v{args.views_per_image}"),
                              "views_per_image": args.views_per_image},
            "train": {"steps": args.steps, "batch_size": args.batch_size, "accelerator": "cpu",
                      "checkpoint_every": max(min(args.steps // 4, 500), 1), "lr_decay": args.lr_decay},
            "eval": {"height": args.eval_size[0], "width": args.eval_size[1], "pairs_per_image": 1},
        })
        outcome = run_distillation(config, runs / variant, resume=True)
        students[variant] = load_keypoint_model(outcome.student_path).eval()

    models = {"teacher": teacher, **students}
    # Students learn the teacher's dense outputs at the training resolution: judge all at one input scale,
    # and the teacher at its own as well when that differs (its upsampled input is not what students learn).
    judged: dict[str, Any] = {name: WithExtractOptions(model, input_scale=scale) for name, model in models.items()}
    own_scale = float(teacher.conf["input_scale"])
    if own_scale != scale:
        judged[f"teacher x{own_scale:g} (its own)"] = teacher
    pair_sets = heldout_pairs(tuple(args.eval_size), args.pairs_per_image, work / "tiles")
    accuracy = {}
    for set_name, pairs in pair_sets.items():
        accuracy[set_name] = evaluate_keypoint_models(judged, pairs, max_keypoints=1000).summary
    all_pairs = [p for pairs in pair_sets.values() for p in pairs]
    accuracy["all"] = evaluate_keypoint_models(judged, all_pairs, max_keypoints=1000).summary

    h, w = args.latency_size
    latency = cpu_latencies(models, h, w, args.repeats)
    cost_rows = []
    for name, model in models.items():
        cost_rows.append({
            "model": name, "params": count_parameters(model), "gflops": gflops(model, h, w),
            "latency_ms": latency[name], "speedup": latency["teacher"] / latency[name],
        })

    lines = [
        "# Key-point distillation benchmark",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{args.threads} torch CPU threads, torch {torch.__version__}; total time {time.perf_counter() - started:.0f} s.  ",
        f"Teacher: `{args.teacher.name}`. Students distilled for {args.steps} steps x {args.batch_size} views of "
        f"{args.train_size[0]}x{args.train_size[1]} (scikit-image training photos), default loss weights.  ",
        f"Evaluation: seeded synthetic pairs ({args.pairs_per_image} per image, {args.eval_size[0]}x{args.eval_size[1]}) of "
        "held-out images never trained on: " + ", ".join(f"{k} ({len(v)} pairs)" for k, v in pair_sets.items())
        + f"; every model at input scale {scale:g}"
        + (f", and the teacher also at its own {own_scale:g} (latency and GFLOPs are the network at the size "
           f"below; at {own_scale:g} the teacher costs {own_scale ** 2:g}x that)" if own_scale != scale else "") + ".",
        "",
        f"## Size and CPU speed at {h}x{w}",
        "",
        "| model | parameters | GFLOPs | CPU latency (ms, median) | speed-up vs teacher |",
        "|---|---:|---:|---:|---:|",
        *[f"| {r['model']} | {r['params']:,} | {r['gflops']:.2f} | {r['latency_ms']:.1f} | {r['speedup']:.2f}x |" for r in cost_rows],
        "",
    ]
    for set_name, summary in accuracy.items():
        lines += [f"## Accuracy on held-out pairs: {set_name}", "", format_metrics_table(summary), ""]
    if args.quick:
        lines.insert(2, "**Smoke test (--quick): tiny sizes, numbers meaningless.**\n")
    text = "\n".join(lines)
    print(text)

    stem = "keypoints_quick" if args.quick else "keypoints"
    write_table_files(args.out, stem, text, {"cost": cost_rows, "accuracy": accuracy, "args": vars(args)})
    plot_accuracy_vs_latency(
        [{"name": r["model"], "latency_ms": r["latency_ms"], "accuracy": accuracy["all"][r["model"]]["homography_accuracy@3"],
          "params": r["params"]} for r in cost_rows],
        args.out / f"{stem}_accuracy_vs_latency.png", accuracy_label="homography accuracy @3 px (held-out pairs)",
    )
    print(f"written: {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
