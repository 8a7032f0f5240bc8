"""Is a student's descriptor read-out, or what it reads, what keeps its descriptors from the teacher's?

``keypoint_swap.py`` shows the small students' descriptors hold their MMA@3 back. This probe asks
whether a richer read-out would do better on the same features: the trained student is frozen, and
at each point its sampled features (the stride-8 head's 128-d output, the stride-4 encoder features
and the stride-8 encoder features, concatenated) go through a small MLP whose output is added to the
student's own descriptor (the last layer starts at zero, so training starts from the student). The
MLP learns the teacher's unit descriptors at the cached points (the teacher's strongest key points
plus a grid) of the training views, with the distillation's cosine and relation terms; it is judged
on random views of the validation photos, which neither the student nor the MLP has seen, where the
teacher describes the same kind of points on the fly.

Printed and written per read-out: the mean cosine to the teacher's descriptors, and how often each
point's descriptor is nearest to its own teacher descriptor among all points of the view (top-1).
If the MLP does not beat the student's linear read-out on held-out views, the features read are the
limit (the encoder), not the read-out.

    python benchmarks/descriptor_readout_probe.py --student student-fast-s --teacher aliked-n16 \\
        --teacher-weights $P/aliked-n16.pth
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detkd.config import merge_config
from detkd.data.augment import CropConfig, random_view
from detkd.data.images import read_image, scan_images
from detkd.distill.keypoints import KeypointDistillWeights, point_relation_kl
from detkd.export.records import write_table_files
from detkd.models.keypoint_ops import sample_map
from detkd.models.keypoint_teachers.loader import load_keypoint_teacher
from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG, cached_training_stream, point_sampling, training_stream

ROOT = Path(__file__).resolve().parents[1]


class ResidualReadout(nn.Module):
    """``normalize(student descriptor + MLP(features))``; the last layer starts at zero."""

    def __init__(self, features: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        return F.normalize(descriptors + self.mlp(features), dim=-1)


@torch.no_grad()
def student_features(student: nn.Module, image: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, F)`` sampled features and ``(N, D)`` the student's own unit descriptors at ``points`` ``(N, 2)``
    of one ``(1, 1, H, W)`` image."""
    heads = student.heads(image)
    p = points[None]
    parts = [sample_map(p, heads["coarse_descriptors"], 8), sample_map(p, heads["features"], 8)]
    if heads["fine_features"] is not None:
        parts.append(sample_map(p, heads["fine_features"], 4))
    return torch.cat(parts, -1)[0], student.describe(p, heads)[0]


def scores(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Mean cosine to the teacher and top-1: the share of points whose nearest teacher descriptor is their own."""
    top1 = ((pred @ target.T).argmax(1) == torch.arange(len(target))).float().mean().item()
    return (pred * target).sum(-1).mean().item(), top1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="student-fast-s", help="a shipped student's name or a student file")
    parser.add_argument("--teacher", default="aliked-n16")
    parser.add_argument("--teacher-weights", type=Path)
    parser.add_argument("--cache", type=Path,
                        default=ROOT / "runs/learning_curve/teacher_cache_aliked-n16_240x320_v48_points256-16",
                        help="the teacher cache the student was distilled from (views of learning_curve.py's training photos)")
    parser.add_argument("--train-images", type=Path, default=ROOT / "runs/learning_curve/train_images")
    parser.add_argument("--val-images", type=Path, default=ROOT / "runs/learning_curve/val_images")
    parser.add_argument("--views-per-image", type=int, default=12, help="cached training views used per image")
    parser.add_argument("--val-views", type=int, default=8, help="random views per validation photo")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = merge_config(DEFAULT_DISTILL_CONFIG, {
        "teacher": {"checkpoint": args.teacher, "weights": str(args.teacher_weights) if args.teacher_weights else None},
        "data": {"images": str(args.train_images), "height": 240, "width": 320},
        "teacher_cache": {"folder": str(args.cache), "views_per_image": 48}})
    teacher, _ = load_keypoint_teacher(args.teacher, args.teacher_weights)
    student, student_origin = load_keypoint_teacher(args.student)
    student.eval()
    stream, _ = training_stream(config)
    views = cached_training_stream(config, teacher, stream)
    train = []
    for item in range(views.num_items()):
        for view in range(args.views_per_image):
            cached = views.cache.read(views.view_key(item, view))
            points = torch.from_numpy(cached["points"]).float()
            features, own = student_features(student, views.view(item, view)["image"][None], points)
            train.append((features, own, F.normalize(torch.from_numpy(cached["point_descriptors"]).float(), dim=-1)))

    sampling = point_sampling(config)  # the points the cache holds
    crop = CropConfig(height=240, width=320)
    rng = np.random.default_rng(1234)
    test = []
    for path in scan_images(args.val_images).paths:
        photo = read_image(path, grey=True)
        for _ in range(args.val_views):
            image = torch.from_numpy(random_view(photo, rng, crop))[None, None]
            with torch.no_grad():
                out = teacher(image, select_points=sampling)
            features, own = student_features(student, image, out["points"][0])
            test.append((features, own, out["point_descriptors"][0]))

    def judged(readout) -> dict[str, float]:
        cos, top1 = zip(*[scores(readout(f, o), t) for f, o, t in test])
        return {"cosine": float(np.mean(cos)), "top1": float(np.mean(top1))}

    rows = {"student's own read-out (linear)": judged(lambda f, o: o)}
    weights = KeypointDistillWeights.from_dict(config["loss"])  # the distillation's point terms and weights
    for hidden in args.hidden:
        torch.manual_seed(0)
        head = ResidualReadout(train[0][0].shape[1], hidden, train[0][1].shape[1])
        optimiser = torch.optim.Adam(head.parameters(), 1e-3)
        for _ in range(args.epochs):
            for k in torch.randperm(len(train)).tolist():
                features, own, target = train[k]
                pred = head(features, own)
                loss = (weights.point_descriptor_cosine * (1 - (pred * target).sum(-1)).mean()
                        + weights.point_descriptor_relation * point_relation_kl(pred[None], target[None],
                                                                                weights.point_relation_temperature))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            rows[f"+ MLP read-out, hidden {hidden} ({sum(p.numel() for p in head.parameters()):,} parameters)"] = judged(head)
            fit = [scores(head(f, o), t)[0] for f, o, t in train[:: max(1, len(train) // 200)]]
            rows[f"+ MLP read-out, hidden {hidden}, on its training views"] = {"cosine": float(np.mean(fit)), "top1": float("nan")}

    command = shlex.join(["python", "benchmarks/descriptor_readout_probe.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"# Descriptor read-out probe: {args.student} against {args.teacher}", "",
             f"Command: `{command}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)  ",
             f"Student: {student_origin}, frozen. Training: {len(train)} cached views of {args.train_images}; "
             f"judged on {len(test)} random 240x320 views of {args.val_images} (seed 1234), the teacher's "
             f"{sampling.keypoints} strongest points plus a {sampling.grid_stride}-pixel grid per view.", "",
             "| read-out | cosine to the teacher | top-1 own teacher descriptor |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['cosine']:.4f} | " + ("-" if np.isnan(r["top1"]) else f"{r['top1']:.4f}") + " |"
              for name, r in rows.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    stem = f"descriptor_readout_probe{'_' + args.tag if args.tag else ''}"
    print(f"written: {write_table_files(args.out, stem, text, {'command': command, 'rows': rows})}")


if __name__ == "__main__":
    main()
