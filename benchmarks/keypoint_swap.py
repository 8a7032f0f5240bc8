"""Which half of a key-point student falls short of its teacher: the detector or the descriptors?

Four rows on the same synthetic pairs, same protocol as every key-point table (at most 1000 points,
mutual nearest neighbours, RANSAC at 3 px):

* ``teacher``: the teacher's own ``extract``;
* ``student``: the student's own ``extract``;
* ``teacher points + student descriptors``: the teacher's key points, described by the student
  (``SuperPoint.describe`` at those pixels): what the student's descriptors lose;
* ``student points + teacher descriptors``: the student's key points, described by the teacher at
  those pixels (``KeypointTeacher.forward(image, select_points)``: ALIKED's deformable head, DISK's
  dense map): what the student's detector loses.

If swapping in the teacher's points lifts the student to the teacher, its detector is the limit;
if swapping in the teacher's descriptors does, its descriptors are. Run it on validation pairs (the
settings of a next run are chosen from it), at the training size and at the held-out size.

    python benchmarks/keypoint_swap.py --student student-fast-s --teacher aliked-n16 \\
        --teacher-weights $P/aliked-n16.pth --images runs/learning_curve/val_images --size 480 640
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from detkd.evaluation.keypoints import evaluate_keypoint_models, format_metrics_table
from detkd.export.records import write_table_files
from detkd.models.keypoint_teachers.base import KeypointTeacher
from detkd.models.keypoint_teachers.loader import load_keypoint_teacher
from detkd.models.superpoint import SuperPoint


sys.path.insert(0, str(Path(__file__).resolve().parent))
from validation_pairs import add_pair_options, pairs_from_args  # noqa: E402


class TeacherPointsStudentDescriptors:
    """``extract`` = the teacher's key points with the student's descriptors at them."""

    def __init__(self, teacher: torch.nn.Module, student: SuperPoint) -> None:
        self.teacher, self.student = teacher, student

    @torch.no_grad()
    def extract(self, image: torch.Tensor, **overrides: Any) -> dict[str, list[torch.Tensor]]:
        found = self.teacher.extract(image, **overrides)
        heads = self.student.heads(image)
        descriptors = [self.student.describe(points[None], {k: v[i:i + 1] if torch.is_tensor(v) else v
                                                            for k, v in heads.items()})[0]
                       for i, points in enumerate(found["keypoints"])]
        return {**found, "descriptors": descriptors}


class StudentPointsTeacherDescriptors:
    """``extract`` = the student's key points with the teacher's descriptors at them."""

    def __init__(self, teacher: KeypointTeacher, student: SuperPoint) -> None:
        self.teacher, self.student = teacher, student

    @torch.no_grad()
    def extract(self, image: torch.Tensor, **overrides: Any) -> dict[str, list[torch.Tensor]]:
        found = self.student.extract(image, **overrides)
        descriptors = []
        for i, points in enumerate(found["keypoints"]):
            out = self.teacher(image[i:i + 1], select_points=lambda heatmap, p=points: p[None].to(heatmap))
            descriptors.append(out["point_descriptors"][0])
        return {**found, "descriptors": descriptors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="a shipped student's name or a student file")
    parser.add_argument("--teacher", required=True, help="a teacher name of detkd.models.keypoint_teachers (aliked-n16, disk, ...)")
    parser.add_argument("--teacher-weights", type=Path, help="the teacher's weight file (offline)")
    add_pair_options(parser, "keypoint_swap")
    args = parser.parse_args(argv)
    pairs = pairs_from_args(parser, args)

    teacher, teacher_origin = load_keypoint_teacher(args.teacher, args.teacher_weights)
    if not isinstance(teacher, KeypointTeacher):
        raise SystemExit(f"--teacher {args.teacher}: describing given points needs a teacher of another family "
                         "(DISK, ALIKED, XFeat)")
    student, student_origin = load_keypoint_teacher(args.student)
    student.eval()
    if student.conf.get("input_scale", 1.0) != 1.0:
        raise SystemExit(f"--student {args.student} runs at input_scale {student.conf['input_scale']}: the swap reads its "
                         "maps of the image as given, so give a student that runs at input_scale 1")
    models = {
        "teacher": teacher,
        "student": student,
        "teacher points + student descriptors": TeacherPointsStudentDescriptors(teacher, student),
        "student points + teacher descriptors": StudentPointsTeacherDescriptors(teacher, student),
    }
    result = evaluate_keypoint_models(models, pairs)
    command = shlex.join(["python", "benchmarks/keypoint_swap.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join([
        f"# Detector or descriptors? {args.student} against {args.teacher}", "",
        f"Command: `{command}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)  ",
        f"Teacher: {teacher_origin}. Student: {student_origin}.  ",
        f"Pairs: {len(pairs)} synthetic pairs at {args.size[0]}x{args.size[1]} of {args.images} (seed {args.seed}); "
        "at most 1000 points, mutual nearest neighbours, RANSAC at 3 px.", "",
        format_metrics_table(result.summary), ""])
    print(text)
    stem = f"keypoint_swap{'_' + args.tag if args.tag else ''}"
    print(f"written: {write_table_files(args.out, stem, text, {'command': command, 'models': result.summary})}")


if __name__ == "__main__":
    main()
