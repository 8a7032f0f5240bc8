"""General Instance Selection of GID (Dai et al., CVPR 2021, arXiv 2103.02340).

General instances (GIs) are the places where teacher and student disagree most, found without
ground truth (:func:`find_general_instances`), per predicted instance as in the paper wherever
that is possible:

* teacher and student with the same anchors (same family, same anchor layout, e.g. RetinaNet
  -> RetinaNet; FCOS -> FCOS; Faster R-CNN RPN -> RPN): per *anchor* (:func:`per_anchor`),
  GI score = ``max_k |p_teacher[k] - p_student[k]|`` over the classes ``k`` of that anchor;
* different anchors (another family or another anchor layout): per anchor does not pair up,
  so per *location* of the grid both share (:func:`per_location`: each model's maximum over
  the location's anchors, per class), same formula. This loses which anchor holds a score:
  a teacher sure of anchor 0 and a student equally sure of anchor 1 at one location score 0
  there, where per anchor they score the full difference;
* GI box = the box of whichever model has the higher (max-over-classes) score at that anchor
  (location), clipped to the image; ties go to the teacher;
* NMS at IoU 0.3 over the candidates scoring above ``min_score`` (strictly), then the top
  ``K = 10`` per image. For speed only the ``pre_nms_top_n`` best candidates enter NMS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, clip_boxes_to_image, nms

from detkd.models.detection.outputs import DetectorOutputs, per_anchor, per_location


@dataclass
class GeneralInstances:
    """GIs of a batch, one entry per image: ``boxes`` ``(K_b, 4)`` xyxy pixels, ``scores`` ``(K_b,)``,
    ``locations`` ``(K_b,)`` indices of the candidates they came from; best score first.
    ``per_anchor``: the candidates were anchors (``locations`` index ``N`` anchors; teacher and
    student share anchors) rather than locations of the per-location grid (``L`` entries)."""

    boxes: list[Tensor]
    scores: list[Tensor]
    locations: list[Tensor]
    per_anchor: bool = False

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.boxes)


@torch.no_grad()
def select_general_instances(
    teacher_scores: Tensor,
    teacher_boxes: Tensor,
    student_scores: Tensor,
    student_boxes: Tensor,
    image_size: tuple[int, int],
    num_instances: int = 10,
    nms_iou: float = 0.3,
    min_score: float = 0.0,
    pre_nms_top_n: int = 1000,
) -> GeneralInstances:
    """General Instance Selection over ``L`` candidates that teacher and student share.

    The candidates are anchors when both have the same anchors, else locations of the shared
    grid (:func:`find_general_instances` chooses); this function does not care which.

    Args:
        teacher_scores, student_scores: ``(B, L, K)`` class probabilities per candidate.
        teacher_boxes, student_boxes: ``(B, L, 4)`` xyxy pixels per candidate.
        image_size: ``(H, W)`` pixels; boxes are clipped to it, empty boxes dropped.
    """
    if teacher_scores.shape != student_scores.shape or teacher_boxes.shape != student_boxes.shape:
        raise ValueError(
            f"GI selection needs scores and boxes on one grid: teacher {tuple(teacher_scores.shape)}/"
            f"{tuple(teacher_boxes.shape)}, student {tuple(student_scores.shape)}/{tuple(student_boxes.shape)}"
        )
    gi_scores = (teacher_scores - student_scores).abs().amax(dim=-1)  # (B, L)
    teacher_higher = teacher_scores.amax(dim=-1) >= student_scores.amax(dim=-1)
    boxes = torch.where(teacher_higher[..., None], teacher_boxes, student_boxes)
    boxes = clip_boxes_to_image(boxes.float(), tuple(image_size))
    non_empty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    result = GeneralInstances([], [], [])
    for image in range(gi_scores.shape[0]):
        candidates = torch.nonzero((gi_scores[image] > min_score) & non_empty[image]).squeeze(1)
        scores = gi_scores[image, candidates].float()
        if len(candidates) > pre_nms_top_n:
            scores, order = scores.topk(pre_nms_top_n)
            candidates = candidates[order]
        keep = nms(boxes[image, candidates], scores, nms_iou)[:num_instances]
        result.boxes.append(boxes[image, candidates[keep]])
        result.scores.append(scores[keep])
        result.locations.append(candidates[keep])
    return result


def pool_instances(
    features: list[Tensor],
    boxes: list[Tensor],
    image_size: tuple[int, int],
    roi_size: int = 10,
    sampling_ratio: int = 2,
    canonical_scale: int = 224,
    canonical_level: int = 4,
) -> Tensor:
    """RoIAlign of every box on the FPN level its size maps to (torchvision ``MultiScaleRoIAlign``).

    Args:
        features: FPN maps, finest first, ``(B, C, H_l, W_l)``; the scale of each level is
            inferred from its size relative to ``image_size``.
        boxes: per image ``(K_b, 4)`` xyxy pixels.

    Returns:
        ``(sum_b K_b, C, roi_size, roi_size)``, image 0's boxes first.
    """
    pooler = MultiScaleRoIAlign(
        [str(level) for level in range(len(features))],
        roi_size,
        sampling_ratio,
        canonical_scale=canonical_scale,
        canonical_level=canonical_level,
    )
    maps = {str(level): f.float() for level, f in enumerate(features)}
    return pooler(maps, [b.float() for b in boxes], [tuple(image_size)] * len(boxes))


def location_strides(outputs: DetectorOutputs) -> Tensor:
    """``(L,)`` stride (pixels) of the level of every per-location entry."""
    return torch.cat(
        [
            torch.full((h * w,), float(stride), device=outputs.cls_logits.device)
            for (h, w), stride in zip(outputs.level_sizes, outputs.strides)
        ]
    )


def per_location_max_logits(outputs: DetectorOutputs) -> Tensor:
    """``(B, L, K)`` maximum class logit over the anchors of each location."""
    batch, n, k = outputs.cls_logits.shape
    a = outputs.anchors_per_location
    return outputs.cls_logits.reshape(batch, n // a, a, k).amax(dim=2)


def check_class_scores(teacher: DetectorOutputs, student: DetectorOutputs) -> None:
    """Raise when only one of the two is a Faster R-CNN: its dense outputs are the 1-class RPN objectness,
    not class scores, so GI scores and the response loss would compare objectness with a class score
    (with one class the shapes agree, so :func:`check_same_grid` lets the pair through)."""
    frcnn = [who for who, o in (("teacher", teacher), ("student", student)) if o.family == "faster_rcnn"]
    if len(frcnn) == 1:
        other = student if frcnn[0] == "teacher" else teacher
        raise ValueError(
            f"GID compares per-location class scores, but the Faster R-CNN {frcnn[0]} exposes only its 1-class RPN "
            f"objectness (its class scores live in the RoI head), not the {other.family} class scores: distil a "
            "Faster R-CNN into a Faster R-CNN with gid, or use hint, pkd or cwd (feature methods) across families"
        )


def same_anchors(teacher: DetectorOutputs, student: DetectorOutputs) -> bool:
    """Whether per-anchor outputs are comparable: same family (box coder) and the same anchors."""
    return (
        teacher.family == student.family
        and teacher.anchors_per_location == student.anchors_per_location
        and teacher.anchors.shape == student.anchors.shape
        and torch.allclose(teacher.anchors.to(student.anchors), student.anchors)
    )


@torch.no_grad()
def find_general_instances(
    teacher: DetectorOutputs,
    student: DetectorOutputs,
    num_instances: int = 10,
    nms_iou: float = 0.3,
    min_score: float = 0.0,
    pre_nms_top_n: int = 1000,
) -> GeneralInstances:
    """GIs of a batch: per anchor when teacher and student share anchors (:func:`same_anchors`;
    the paper's per-instance rule), else per location of the shared grid. The result's
    ``per_anchor`` says which was used."""
    shared = same_anchors(teacher, student)
    predictions = per_anchor if shared else per_location
    instances = select_general_instances(
        *predictions(teacher), *predictions(student), teacher.image_size,
        num_instances, nms_iou, min_score, pre_nms_top_n,
    )  # fmt: skip
    instances.per_anchor = shared
    return instances
