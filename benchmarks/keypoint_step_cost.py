"""What a key-point loss option costs per training step: two loss settings timed on the same batches.

A training step is what the trainer does with a cached teacher: the student's forward (describing the
teacher's points), the loss, backward and an AdamW step. The teacher's outputs, points included, are
computed once per batch beforehand, as a teacher cache would hand them over, so the timings are the
student's work only. Each setting gets its own copy of the same initial student and optimiser; the
settings are timed interleaved (round-robin) after warm-up, in one process with one thread count, and
the medians and their ratio are reported. Written for ``loss.point_descriptor_matching``, whose second
view costs a second student pass:

    python benchmarks/keypoint_step_cost.py --threads 1 --other point_descriptor_matching=1
    python benchmarks/keypoint_step_cost.py --quick        # smoke test, seconds (numbers meaningless)

The teacher is ``--teacher`` (default the shipped SuperPoint; only its outputs' shapes and points
matter for the cost, so give the student's real teacher for its descriptor size), the student
``--student`` with ``--student-option``s; batches are views of scikit-image's training photos.
Writes ``benchmarks/results/keypoint_step_cost[_TAG].{md,json}``.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import default_collate

from detkd.config import merge_config
from detkd.data.augment import CropConfig
from detkd.data.images import BUILTIN_TRAIN_PHOTOS, builtin_photo
from detkd.data.keypoint_training import UnlabeledImageStream
from detkd.distill.keypoints import KeypointDistillationLoss, KeypointDistillWeights
from detkd.export.records import environment, machine_line, write_table_files
from detkd.export.timing import interleaved_latency
from detkd.geometry.homography import HomographyConfig
from detkd.models.superpoint import count_parameters
from detkd.tasks.keypoints import (
    DEFAULT_DISTILL_CONFIG,
    KeypointDistillationTask,
    build_student,
    config_section,
    load_teacher,
    point_sampling,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import parse_loss, parse_student_options  # noqa: E402  (the same KEY=VALUE options)


def step_runner(task: KeypointDistillationTask, batches: list[dict[str, torch.Tensor]]) -> Callable[[], None]:
    """One training step per call, cycling through ``batches``."""
    optimiser = torch.optim.AdamW(task.student.parameters(), lr=1e-4)
    task.student.train()
    state = {"k": 0}

    def step() -> None:
        batch = batches[state["k"] % len(batches)]
        state["k"] += 1
        loss = task(batch)["loss"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=None, help="teacher name or file [the shipped SuperPoint]")
    parser.add_argument("--teacher-weights", default=None, help="weight file of a named teacher")
    parser.add_argument("--student", default="fast-s", help="student variant [fast-s]")
    parser.add_argument("--student-option", nargs="*", default=["head_channels=64", "descriptor_stride=4"],
                        metavar="KEY=VALUE", help="structural options [the shipped student-fast-s's]")
    parser.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE", help="loss weights of the first setting")
    parser.add_argument("--other", nargs="*", default=["point_descriptor_matching=1"], metavar="KEY=VALUE",
                        help="loss weights of the second setting [point_descriptor_matching=1]")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny views and few repeats")
    args = parser.parse_args()
    if args.quick:
        args.height, args.width, args.batch_size, args.batches, args.repeats, args.warmup = 64, 96, 2, 1, 2, 1
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    teacher, origin = load_teacher(args.teacher, args.teacher_weights)
    settings = {"base": parse_loss(args.base, "--base"), "other": parse_loss(args.other, "--other")}
    configs = {name: merge_config(DEFAULT_DISTILL_CONFIG, {"loss": weights}) for name, weights in settings.items()}
    points = point_sampling(configs["other"]) or point_sampling(configs["base"])
    if points is None:
        raise SystemExit("neither setting uses points: nothing here differs in cost")
    photos = [builtin_photo(name) for name in BUILTIN_TRAIN_PHOTOS]
    stream = UnlabeledImageStream(photos, CropConfig(height=args.height, width=args.width), None, seed=0)
    batches = []
    for i in range(args.batches):
        images = default_collate([stream[i * args.batch_size + k] for k in range(args.batch_size)])["image"]
        with torch.no_grad():
            outputs = teacher(images, select_points=points)
        batches.append({"image": images, "teacher_logits": outputs["logits"],
                        "teacher_descriptors": outputs["descriptors"], "teacher_points": outputs["points"],
                        "teacher_point_descriptors": outputs["point_descriptors"]})
    torch.manual_seed(0)
    first = build_student(teacher, args.student, **parse_student_options(args.student_option))
    homographies = config_section(HomographyConfig, DEFAULT_DISTILL_CONFIG["data"]["homography"], "data.homography")
    runners = {}
    for name, config in configs.items():
        loss = KeypointDistillationLoss(KeypointDistillWeights.from_dict(config["loss"]))
        task = KeypointDistillationTask(None, copy.deepcopy(first), loss, None, points, homographies)
        runners[name] = step_runner(task, batches)
    stats = interleaved_latency(runners, repeats=args.repeats, warmup=args.warmup)
    base_ms, other_ms = stats["base"].median_ms, stats["other"].median_ms

    env = environment(gpu=False)
    command = f"python benchmarks/keypoint_step_cost.py {shlex.join(sys.argv[1:])}"
    lines = [
        f"# Key-point training step: what a loss option costs ({args.student}, {args.height}x{args.width}, batch "
        f"{args.batch_size}, {args.threads} thread(s))", "",
        f"Command: `{command}`", "",
        "| setting | loss weights set (the others: detkd's defaults) | median ms per step | p90 ms | ratio to base |",
        "|---|---|---:|---:|---:|",
    ]
    for name, ms in (("base", base_ms), ("other", other_ms)):
        changed = ", ".join(f"{k}={v:g}" for k, v in settings[name].items()) or "none"
        lines.append(f"| {name} | {changed} | {ms:.1f} | {stats[name].p90_ms:.1f} | {ms / base_ms:.2f}x |")
    lines += [
        "",
        f"Student {args.student} ({count_parameters(first):,} parameters, options "
        f"{' '.join(args.student_option) or 'none'}); teacher outputs precomputed once ({origin}, "
        f"{points.count(args.height, args.width)} points per view), as a teacher cache gives them; step = student "
        f"forward, loss, backward, AdamW. Medians of {args.repeats} interleaved steps after {args.warmup} warm-up "
        "steps each.",
        "",
        machine_line(env, time.perf_counter() - started),
    ]
    if args.quick:
        lines.insert(2, "**Smoke test (--quick): tiny sizes, numbers meaningless.**\n")
    text = "\n".join(lines)
    print(text)
    stem = "keypoint_step_cost" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    write_table_files(args.out, stem, text, {
        "settings": settings, "median_ms": {"base": base_ms, "other": other_ms}, "ratio": other_ms / base_ms,
        "args": vars(args), "environment": env, "command": command})


if __name__ == "__main__":
    main()
