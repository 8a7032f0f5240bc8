"""Does a student's post-processing hold it back? Detection threshold x NMS radius, on validation pairs.

A student distilled from ALIKED or DISK keeps SuperPoint's post-processing (softmax heatmap,
``detection_threshold`` 0.015, ``nms_radius`` 4) and so may return far fewer key points than its
teacher under the same budget (about 450 of 1000 at 240x320 for ``student-fast-s``, against
ALIKED-n16's 995). This script asks whether another setting would serve it better: it judges the
student at every ``(threshold, radius)`` of a grid, beside its teacher, on the *validation* pairs of
the learning curve (the 6 shared photos kept out of training; no held-out image), with the common
protocol (at most 1000 points, mutual nearest neighbours, RANSAC 3 px). Only post-processing
changes; the network and its weights are the same in every row.

    python benchmarks/keypoint_postprocessing.py --model student-fast-s --teacher aliked-n16 \\
        --teacher-weights .../aliked-n16.pth

Writes ``benchmarks/results/keypoint_postprocessing_{tag}.{md,json}`` (tag: the model's name).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from detkd.data.pairs import synthetic_pairs_from_folder
from detkd.evaluation.keypoints import evaluate_keypoint_models
from detkd.export.records import write_table_files
from detkd.models.keypoint_teachers import load_keypoint_teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import prepare_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("num_keypoints", "localization_error", "mma@3", "homography_accuracy@1", "homography_accuracy@3")
SHARED = ("mma@3", "homography_accuracy@1", "homography_accuracy@3")


def variant(model: torch.nn.Module, threshold: float, radius: int, subpixel_radius: int | None = None) -> torch.nn.Module:
    """A copy of ``model`` whose extract uses ``detection_threshold=threshold``, ``nms_radius=radius`` and, when
    given, ``subpixel_radius`` (pixels each side of a kept maximum for its soft-argmax refinement; 0: whole pixels)."""
    copied = copy.deepcopy(model)
    copied.conf["detection_threshold"] = threshold
    copied.conf["nms_radius"] = radius
    if subpixel_radius is not None:
        copied.conf["subpixel_radius"] = subpixel_radius
    return copied


def row_label(threshold: float, radius: int, default: tuple, subpixel_radius: int | None = None) -> str:
    """``default``: the model's own ``(threshold, radius)``, or ``(threshold, radius, subpixel radius)`` when the
    grid varies the refinement too (then ``subpixel_radius`` is given and named in the label)."""
    setting = (threshold, radius) if subpixel_radius is None else (threshold, radius, subpixel_radius)
    mark = " (its own)" if setting == tuple(default) else ""
    refinement = "" if subpixel_radius is None else f", sub-pixel radius {subpixel_radius}"
    return f"threshold {threshold:g}, NMS radius {radius}{refinement}{mark}"


def write_report(result: dict[str, Any], path: Path) -> str:
    teacher = result["teacher"]
    lines = [
        f"# Post-processing of `{result['model']}` on validation pairs",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; {result['threads']} thread(s); {result['seconds']:.0f} s.  ",
        f"Pairs: {result['pairs']} synthetic validation pairs at {result['size'][0]}x{result['size'][1]} of the "
        f"learning curve's validation photos (seed {result['seed']}); at most 1000 points, mutual nearest "
        "neighbours, RANSAC 3 px; every model at input scale 1. Same network and weights in every student row; only the detection threshold "
        "(on the softmax heatmap), the NMS radius and, where named, the sub-pixel refinement radius change.",
        "",
        "| model | key points | loc. error px | MMA@3 | HA@1 | HA@3 | MMA@3 share | HA@1 share | HA@3 share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, metrics in [(f"teacher: {result['teacher_name']}", teacher), *result["rows"].items()]:
        shares = [f"{100 * metrics[k] / teacher[k]:.0f}%" if teacher[k] > 0 else "n/a" for k in SHARED]
        lines.append(f"| {name} | {metrics['num_keypoints']:.0f} | {metrics['localization_error']:.2f} | "
                     f"{metrics['mma@3']:.3f} | {metrics['homography_accuracy@1']:.3f} | "
                     f"{metrics['homography_accuracy@3']:.3f} | " + " | ".join(shares) + " |")
    lines += ["", f"HA moves in steps of one pair in {result['pairs']} ({100 / result['pairs']:.1f} points)."]
    text = "\n".join(lines) + "\n"
    write_table_files(path.parent, path.name, text, result)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the student: a shipped name or a model file")
    parser.add_argument("--teacher", required=True, help="its teacher: a name (aliked-n16, disk, default) or file")
    parser.add_argument("--teacher-weights", default=None, help="weight file of a named teacher")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.005, 0.015, 0.03, 0.06],
                        help="detection thresholds on the softmax heatmap [0.005 0.015 0.03 0.06]")
    parser.add_argument("--nms-radii", type=int, nargs="+", default=[2, 4], help="NMS radii in pixels [2 4]")
    parser.add_argument("--subpixel-radii", type=int, nargs="+", default=None,
                        help="sub-pixel refinement radii in pixels (soft-argmax window each side of a maximum; "
                             "0: whole pixels) [the model's own, not varied]")
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], help="pair H W [240 320]")
    parser.add_argument("--pairs-per-image", type=int, default=4, help="validation pairs per photo [4]")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the pairs [1234, as evaluate's]")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "learning_curve",
                        help="where the learning curve keeps its validation photos [runs/learning_curve]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default=None, help="file name tag [the model's name]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    _, validation = prepare_images(args.work)
    pairs = synthetic_pairs_from_folder(validation, pairs_per_image=args.pairs_per_image,
                                        size=tuple(args.size), seed=args.seed)
    teacher, teacher_origin = load_keypoint_teacher(args.teacher, args.teacher_weights)
    if "input_scale" in getattr(teacher, "conf", {}):  # as its students see it (the shipped teacher's own is 1.5)
        teacher.conf["input_scale"] = 1.0
    student, _ = load_keypoint_teacher(args.model)
    if not hasattr(student, "conf") or "detection_threshold" not in student.conf:
        parser.error(f"'{args.model}' is not a SuperPoint-family student: it has no detection threshold to vary")
    default = (float(student.conf["detection_threshold"]), int(student.conf["nms_radius"]))
    if args.subpixel_radii is not None:
        default += (int(student.conf["subpixel_radius"]),)
    subpixel_radii = args.subpixel_radii or [None]
    models = {"teacher": teacher, **{row_label(t, r, default, s): variant(student, t, r, s)
                                     for t in args.thresholds for r in args.nms_radii for s in subpixel_radii}}
    evaluation = evaluate_keypoint_models(models, pairs, max_keypoints=1000)

    tag = args.tag or Path(args.model).stem
    result = {
        "model": args.model, "teacher_name": args.teacher, "teacher_origin": teacher_origin, "command": "python benchmarks/keypoint_postprocessing.py "
        + shlex.join(sys.argv[1:]), "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "threads": torch.get_num_threads(), "seconds": time.perf_counter() - started, "pairs": len(pairs),
        "size": list(args.size), "seed": args.seed,
        "teacher": {k: float(evaluation["teacher"][k]) for k in METRICS},
        "rows": {name: {k: float(evaluation[name][k]) for k in METRICS} for name in models if name != "teacher"},
    }
    print(write_report(result, args.out / f"keypoint_postprocessing_{tag}"))


if __name__ == "__main__":
    main()
