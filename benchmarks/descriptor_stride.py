"""How much of a teacher's matching survives when its descriptors are read from a coarser grid?

Every detkd student describes its key points by bilinear interpolation of a descriptor map at
stride 8 (SuperPoint's head). A teacher such as DISK (a descriptor per pixel) or ALIKED (a
deformable head at each key point) describes at full resolution. This script measures the
ceiling that the stride alone puts on a student, whatever its capacity: the teacher keeps its own
key points, and its descriptors are replaced by those of its *own* descriptors at the centres of
a stride-``s`` grid, interpolated bilinearly at each key point as a student's are
(:func:`detkd.models.keypoint_ops.sample_descriptors`). A student that copied the teacher's
descriptors perfectly at its grid points could do no better than the stride-8 row.

Pairs: the validation pairs of ``benchmarks/learning_curve.py`` (synthetic homographies of the
6 shared photos kept out of training, 240x320, seed 1234): a diagnosis, so no held-out pair is
spent on it. Mutual nearest neighbours, 1000 points, one thread.

    python benchmarks/descriptor_stride.py --teacher aliked-n16=PATH/aliked-n16.pth --teacher disk=PATH/disk-depth-save.pth

Writes ``benchmarks/results/descriptor_stride.{md,json}``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from detkd.config import merge_config
from detkd.evaluation.keypoints import WithExtractOptions, evaluate_keypoint_models
from detkd.export.records import write_table_files
from detkd.models.keypoint_ops import sample_descriptors
from detkd.models.keypoint_teachers import load_keypoint_teacher
from detkd.models.keypoint_teachers.base import KeypointTeacher, as_channels, cell_centres, pad_to_multiple
from detkd.tasks.keypoint_report import evaluation_pairs
from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import prepare_images  # noqa: E402

METRICS = {"mma@3": "MMA@3", "homography_accuracy@1": "HA@1", "homography_accuracy@3": "HA@3"}


class GridDescriptors:
    """A teacher's own key points, described from a stride-``stride`` grid of its own descriptors.

    ``cosines`` collects, per image, the mean cosine between the grid-read descriptors and the
    teacher's own ones at the same key points.
    """

    def __init__(self, teacher: KeypointTeacher, stride: int) -> None:
        self.module, self.stride, self.cosines = teacher, stride, []

    @torch.no_grad()
    def extract(self, image: torch.Tensor, **overrides: Any) -> dict[str, list[torch.Tensor]]:
        teacher, s = self.module, self.stride
        out = teacher.extract(image, **{**overrides, "input_scale": 1.0})
        height, width = image.shape[-2:]
        _, _, describe = teacher.dense(pad_to_multiple(as_channels(image, teacher.channels), teacher.multiple))
        centres = cell_centres(height, width, image.device, stride=s)  # (Hs * Ws, 2)
        grid = describe(centres.expand(image.shape[0], -1, -1))  # (B, Hs * Ws, D)
        grid = F.normalize(grid, dim=-1).transpose(1, 2).reshape(image.shape[0], -1, height // s, width // s)
        descriptors = []
        for index, (points, own) in enumerate(zip(out["keypoints"], out["descriptors"])):
            read = sample_descriptors(points[None], grid[index : index + 1], stride=s)[0]
            if len(points):
                self.cosines.append(float((read * F.normalize(own, dim=-1)).sum(-1).mean()))
            descriptors.append(read)
        out["descriptors"] = descriptors
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", action="append", required=True, metavar="NAME=WEIGHTS",
                        help="a teacher name (aliked-n16, disk, ...) and its weight file; repeat for several")
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 4, 8], help="grid strides [2 4 8]")
    parser.add_argument("--work", type=Path, default=Path("runs/learning_curve"),
                        help="learning_curve.py's work folder (its validation photos) [runs/learning_curve]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, val = prepare_images(args.work)
    eval_cfg = merge_config(DEFAULT_DISTILL_CONFIG["eval"], {"images": str(val)})
    pairs, where = evaluation_pairs(eval_cfg)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for spec in args.teacher:
        name, _, weights = spec.partition("=")
        teacher, origin = load_keypoint_teacher(name, weights or None)
        readers = {f"grid stride {s}": GridDescriptors(teacher, s) for s in args.strides}
        models = {"own descriptors": WithExtractOptions(teacher, input_scale=1.0), **readers}
        evaluation = evaluate_keypoint_models(models, pairs, max_keypoints=eval_cfg["max_keypoints"])
        rows = {}
        for row in models:
            cosines = readers[row].cosines if row in readers else [1.0]  # the own descriptors: cosine 1
            rows[row] = {**{k: evaluation[row][k] for k in METRICS}, "cosine": sum(cosines) / max(len(cosines), 1)}
        results[name] = {"origin": origin, "rows": rows}
        print(f"[stride] {name} done ({time.perf_counter() - started:.0f} s)", flush=True)
    write(args, results, where, time.perf_counter() - started)


def write(args: argparse.Namespace, results: dict[str, Any], where: str, seconds: float) -> None:
    lines = [
        "# Descriptor stride: the ceiling that a stride-s descriptor grid puts on a student",
        "",
        f"Command: `python benchmarks/descriptor_stride.py {shlex.join(sys.argv[1:])}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch threads {args.threads}; CPU; {seconds / 60:.1f} min.  ",
        f"Pairs: {where}; the teacher's own key points (1000, input scale 1), mutual nearest neighbours.  ",
        "Each 'grid stride s' row keeps the teacher's key points and reads its descriptors from the teacher's own",
        "descriptors at the centres of an s x s grid, interpolated bilinearly as a student's stride-8 head is read.",
        "'cosine': mean cosine between those descriptors and the teacher's own at the same points.",
        "",
    ]
    for name, result in results.items():
        rows = result["rows"]
        own = rows["own descriptors"]
        lines += [f"## {name} ({result['origin']})", "",
                  "| descriptors | " + " | ".join(METRICS.values()) + " | " +
                  " | ".join(f"{label} % of own" for label in METRICS.values()) + " | cosine |",
                  "|---|" + "---:|" * (2 * len(METRICS) + 1)]
        for row, values in rows.items():
            shares = [f"{100 * values[k] / own[k]:.0f}%" if own[k] else "n/a" for k in METRICS]
            lines.append(f"| {row} | " + " | ".join(f"{values[k]:.3f}" for k in METRICS) + " | "
                         + " | ".join(shares) + f" | {values['cosine']:.2f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    write_table_files(args.out, "descriptor_stride", text, results)


if __name__ == "__main__":
    main()
