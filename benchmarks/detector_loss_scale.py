"""Scale of each detection-distillation term next to the student's detection loss, at initialisation.

For a randomly initialised teacher/student pair of the smallest variants of each family
(``<family>_small_fpn`` -> ``<family>_tiny_fpn``) on a few synthetic 128 x 128 scenes
(:func:`detkd.data.detection.synthetic_detection_set`), one forward pass of each model
(teacher in eval mode without targets, student in train mode with the ground truth, as in
``detkd detect distill``) and of every distillation method at its default options gives:

* the student's detection loss (the sum of its family's supervised losses);
* every weighted distillation term (``hint``, ``hint`` with the ground-truth mask, GID's four
  terms, ``pkd``, ``cwd``);
* the RMS of the teacher's and the student's FPN maps per level (P3..P7).

A randomly initialised teacher in eval mode (fresh batch-norm statistics) has tiny FPN
activations (RMS 0.01 on P3 down to 1e-4 on P7), unlike a trained one, so every term is also
measured with the teacher's FPN maps rescaled per level to the RMS of a trained RetinaNet
teacher's, ``11 / 8 / 5 / 33 / 73`` on P3..P7 (``TRAINED_RMS``; the pattern of each map is
kept, only its size changes; class scores, hence GIs, are unchanged).

Nothing is trained, so this takes seconds on a CPU. With ``--before REF`` the same measurement
is also run on the ``src/`` of git revision ``REF`` (extracted to a temporary folder and put
first on ``PYTHONPATH`` of a child process) and both columns are shown.

    python benchmarks/detector_loss_scale.py --before 3986f86
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "retinanet": ("retinanet_small_fpn", "retinanet_tiny_fpn"),
    "fcos": ("fcos_small_fpn", "fcos_tiny_fpn"),
    "faster_rcnn": ("fasterrcnn_small_fpn", "fasterrcnn_tiny_fpn"),
}
#: row name -> (method, options)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "hint": ("hint", {}),
    "hint (mask=gt)": ("hint", {"mask": "gt"}),
    "gid": ("gid", {}),
    "pkd": ("pkd", {}),
    "cwd": ("cwd", {}),
}
#: RMS of a trained RetinaNet teacher's FPN maps, P3..P7 (reported in the hint-scale issue).
TRAINED_RMS = (11.0, 8.0, 5.0, 33.0, 73.0)
CONDITIONS = {"random": "random teacher", "trained_scale": "teacher FPN at trained RMS"}
NOTES = """Reading the tables:

* A randomly initialised teacher in eval mode (fresh batch-norm statistics) has tiny FPN maps, so
  the columns "teacher FPN at trained RMS" rescale each of its levels to the RMS a trained
  RetinaNet teacher has (11 / 8 / 5 / 33 / 73 on P3..P7): the regime where the unnormalised hint
  and GID feature term exploded.
* hint and gid_feature now compare maps scaled to mean square 1 per image and level, so they no
  longer depend on the teacher's activation size (the two "after" columns agree).
* pkd is scale-free already; its new defaults are levels P3..P6 and weight 10 per level for a
  one-stage student, 6 for Faster R-CNN (MMRazor). At initialisation each level costs about 1
  (1 - Pearson correlation of unrelated maps), so pkd starts near 4 x weight.
* The three pairs build the same backbones and FPNs from the same seeds, so their FPN maps and
  the feature-only terms (hint, pkd, cwd) coincide; the families differ in heads and losses.
* cwd (softmax over positions at tau 1) does depend on the teacher's scale; only its default
  levels changed here (P3..P6).
* GIs are now chosen per anchor when teacher and student share anchors (RetinaNet and Faster
  R-CNN pairs here), so gid_relation and the response terms move; FCOS has one anchor per
  location, so its GIs are the same. GID's response is 0 for the random FCOS pair: its boxes are
  smaller than a stride and the FCOS matcher assigns no point to them.

"""
TERMS = ("hint", "gid_feature", "gid_relation", "gid_response_cls", "gid_response_box", "pkd", "cwd")


def measure(num_images: int, size: int, seed: int) -> dict[str, Any]:
    """Detection loss, distillation terms and FPN RMS of every pair with the ``detkd`` found on ``sys.path``."""
    import detkd
    from detkd.data.detection import synthetic_detection_set
    from detkd.distill.detection import create_detection_distiller
    from detkd.models.detection import create_detector

    data = synthetic_detection_set(num_images, size, seed)
    images = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1).float() / 255.0 for r in data.records])
    targets = [
        {"boxes": torch.as_tensor(r.boxes, dtype=torch.float32).reshape(-1, 4),
         "labels": torch.as_tensor(r.labels, dtype=torch.int64)}
        for r in data.records
    ]  # fmt: skip
    num_classes = len(data.class_names)
    result: dict[str, Any] = {"detkd": str(Path(detkd.__file__).resolve().parent), "pairs": {}}
    for family, (teacher_name, student_name) in PAIRS.items():
        torch.manual_seed(seed)
        teacher = create_detector(teacher_name, num_classes).eval()
        torch.manual_seed(seed + 1)
        student = create_detector(student_name, num_classes).train()
        with torch.no_grad():
            t_out = teacher(images)
            torch.manual_seed(seed + 2)  # Faster R-CNN samples proposals and RoIs
            s_out = student(images, targets)
            rms = [float(f.pow(2).mean().sqrt()) for f in t_out.features]
            rescaled = replace(t_out, features=[f * (r / c) for f, r, c in zip(t_out.features, TRAINED_RMS, rms)])
            pair: dict[str, Any] = {
                "teacher": teacher_name,
                "student": student_name,
                "detection": float(sum(v.item() for v in s_out.losses.values())),
                "detection_terms": {k: float(v) for k, v in s_out.losses.items()},
                "teacher_rms": rms,
                "student_rms": [float(f.pow(2).mean().sqrt()) for f in s_out.features],
                "conditions": {},
            }
            for condition, t_condition in (("random", t_out), ("trained_scale", rescaled)):
                methods = pair["conditions"][condition] = {}
                for row, (method, options) in METHODS.items():
                    torch.manual_seed(seed + 3)  # the adapters' initial weights
                    distiller = create_detection_distiller(
                        method, teacher.fpn_channels, student.fpn_channels, match_anchors=student.match_anchors,
                        **options,
                    )
                    out = distiller(t_condition, s_out, targets)
                    methods[row] = {k: float(v) for k, v in out.items()}
        result["pairs"][family] = pair
    return result


def measure_revision(ref: str, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure` on the ``src/`` of git revision ``ref``, in a child process."""
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tmp) / "src"), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, __file__, "--json", "--images", str(args.images), "--size", str(args.size),
                   "--seed", str(args.seed), "--threads", str(args.threads)]  # fmt: skip
        stdout = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        result = json.loads(stdout)
        if not result["detkd"].startswith(str(Path(tmp).resolve())):
            raise RuntimeError(f"The child process imported detkd from {result['detkd']}, not from revision {ref}")
        return result


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(after: dict[str, Any], before: dict[str, Any] | None, before_ref: str | None) -> str:
    """Markdown tables, one per pair: each weighted term before / after, for both teacher conditions."""
    lines = []
    for family, pair in after["pairs"].items():
        old = before["pairs"].get(family) if before else None
        lines.append(f"### {family}: {pair['teacher']} -> {pair['student']}\n")
        rms = " / ".join(f"{v:.2g}" for v in pair["teacher_rms"])
        s_rms = " / ".join(f"{v:.2g}" for v in pair["student_rms"])
        trained = " / ".join(f"{v:g}" for v in TRAINED_RMS)
        lines.append(f"FPN RMS P3..P7: random teacher {rms}; trained-scale teacher {trained}; student {s_rms}\n")
        columns = []
        for condition, label in CONDITIONS.items():
            if old:
                columns.append((f"{label}: before ({before_ref})", old, condition))
            columns.append((f"{label}: after" if old else label, pair, condition))
        head = "| term | " + " | ".join(c[0] for c in columns) + " |"
        lines += [head, "|" + "---|" * (len(columns) + 1)]
        lines.append("| detection loss (student) | " + " | ".join(_fmt(c[1]["detection"]) for c in columns) + " |")
        for row, values in pair["conditions"]["random"].items():
            names = [t for t in TERMS if t in values] + (["gid_instances"] if "gid_instances" in values else [])
            for term in names:
                if term == "gid_instances":
                    label = f"{row}: GIs per image (not a loss)"
                else:
                    label = row if term in (row, row.split(" ")[0]) else f"{row}: {term}"
                cells = [_fmt(c[1]["conditions"][c[2]].get(row, {}).get(term)) for c in columns]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4, help="synthetic scenes in the batch [4]")
    parser.add_argument("--size", type=int, default=128, help="image side, pixels (a multiple of 128) [128]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    parser.add_argument("--before", metavar="REF", help="also measure the src/ of this git revision")
    parser.add_argument("--json", action="store_true", help="print the measurement as JSON and stop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "detector_loss_scale.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.json:
        print(json.dumps(measure(args.images, args.size, args.seed)))
        return
    before = measure_revision(args.before, args) if args.before else None
    after = measure(args.images, args.size, args.seed)
    text = table(after, before, args.before)
    print(text)
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    command = "python benchmarks/detector_loss_scale.py " + shlex.join(sys.argv[1:])
    header = (
        "# Distillation terms next to the detection loss at initialisation\n\n"
        f"Command: `{command.strip()}`  \n"
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; HEAD {commit} ('after': the working tree"
        f"{'; before: ' + args.before if args.before else ''}); "
        f"torch {torch.__version__}, {platform.machine()}, CPU  \n"
        f"Batch: {args.images} synthetic scenes of {args.size} x {args.size} px (seed {args.seed}); random initial "
        "weights; teacher in eval mode, student in train mode with the ground truth; every method at its default "
        "options; weighted terms, one forward pass, no training.\n\n"
        + NOTES
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
