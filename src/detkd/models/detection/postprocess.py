"""Post-processing of dense (one-stage) detector outputs: torchvision's rule, computed faster.

torchvision's FCOS and RetinaNet keep, on each level, the ``candidates_per_level`` best class scores
above the score threshold, then run a class-wise NMS over all of them and keep the first
``max_detections``. :func:`dense_detections` returns the same detections (up to float rounding
and ties) with fewer operations:

* a level's top-k is taken only where the level has more than ``candidates_per_level`` scores,
  with one threshold test for all levels, and the boxes are gathered from the decoded boxes the
  forward already holds;
* the NMS stops early. Whether greedy NMS keeps a box depends only on the boxes that score higher,
  so NMS over the best-scoring prefix of the candidates makes the same decisions as over all of
  them; once the prefix holds ``max_detections`` kept boxes, the rest cannot enter the output. On
  a busy image (thousands of candidates, all 100 slots filled) this is most of the saving.

In an ONNX export (traced) the prefix loop becomes ONNX ``NonMaxSuppression`` with
``max_output_boxes_per_class = max_detections``, which stops as early in ONNX Runtime.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

#: first prefix of the sorted candidates that the early-stopping NMS looks at, in multiples of
#: ``max_detections`` (on busy photos about one candidate in four or five survives NMS)
PREFIX_FACTOR = 4


def dense_detections(
    scores: Tensor,
    boxes: Tensor,
    per_level: list[int],
    image_size: tuple[int, int],
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    candidates_per_level: int = 1000,
) -> dict[str, Tensor]:
    """The detections of one image from its dense class scores and decoded boxes.

    Args:
        scores: ``(N, K)`` class scores in ``[0, 1]`` (e.g. the class sigmoid), one row per anchor,
            levels finest first as in ``per_level``.
        boxes: ``(N, 4)`` xyxy pixels, each anchor's decoded box.
        per_level: number of anchors on each level; sums to ``N``.
        image_size: ``(height, width)`` to clip the boxes to.
        score_threshold: scores at or below are dropped.
        nms_iou: class-wise NMS drops a box whose IoU with a better box of its class exceeds this.
        max_detections: at most this many detections are returned.
        candidates_per_level: per level, at most this many (anchor, class) scores enter the NMS.

    Returns:
        ``boxes`` ``(D, 4)``, ``scores`` ``(D,)``, ``labels`` ``(D,)`` int64 in ``0 .. K-1``;
        ``D <= max_detections``, sorted by decreasing score.
    """
    num_classes = scores.shape[1]
    candidate_scores, anchor_index, labels = _level_candidates(
        scores, per_level, score_threshold, candidates_per_level, num_classes
    )
    candidate_boxes = clip_boxes_to_image(boxes[anchor_index], image_size)
    keep = early_stopping_nms(candidate_boxes, candidate_scores, labels, nms_iou, max_detections)
    return {"boxes": candidate_boxes[keep], "scores": candidate_scores[keep], "labels": labels[keep]}


def _level_candidates(
    scores: Tensor, per_level: list[int], score_threshold: float, candidates_per_level: int, num_classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per level, the best ``candidates_per_level`` (anchor, class) scores above the threshold.

    Taking a level's top-k and then dropping those under the threshold selects the same set as
    torchvision's threshold-then-top-k. Returns ``scores`` ``(C,)``, ``anchor_index`` ``(C,)``
    and ``labels`` ``(C,)`` (flat indices into ``scores``' rows and columns), levels in order.
    """
    values, flat_index, start = [], [], 0
    for n in per_level:
        level = scores[start:start + n].reshape(-1)
        if level.shape[0] > candidates_per_level:
            top, index = level.topk(candidates_per_level)
            values.append(top)
            flat_index.append(index + start * num_classes)
        else:  # the whole level: no top-k needed
            values.append(level)
            flat_index.append(torch.arange(start * num_classes, (start + n) * num_classes, device=scores.device))
        start += n
    candidate_scores, flat = torch.cat(values), torch.cat(flat_index)
    kept = candidate_scores > score_threshold
    flat = flat[kept]
    return candidate_scores[kept], torch.div(flat, num_classes, rounding_mode="floor"), flat % num_classes


def early_stopping_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float,
                       max_detections: int) -> Tensor:
    """Indices of the first ``max_detections`` boxes that class-wise greedy NMS keeps.

    The same as ``torchvision.ops.batched_nms(...)[:max_detections]``, but NMS runs on the
    best-scoring prefix of the boxes (first ``PREFIX_FACTOR * max_detections``), grown by what the
    kept share predicts until it holds ``max_detections`` kept boxes or all of them.

    Args:
        boxes: ``(C, 4)`` xyxy; scores: ``(C,)``; labels: ``(C,)`` int64 classes.

    Returns:
        ``(D,)`` int64 indices into ``boxes``, by decreasing score; ``D <= max_detections``.
    """
    if torch.jit.is_tracing():
        return _CappedBatchedNMS.apply(boxes, scores, labels, float(iou_threshold), int(max_detections))
    count = int(scores.shape[0])
    prefix = max_detections * PREFIX_FACTOR
    if count <= prefix:
        return batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
    order = scores.argsort(descending=True)
    while True:
        head = order[:prefix]
        keep = batched_nms(boxes[head], scores[head], labels[head], iou_threshold)
        if keep.shape[0] >= max_detections or prefix >= count:
            return head[keep[:max_detections]]
        # about as many more as the kept share so far says are needed, with a margin; at most 4x
        growth = min(4.0, max(1.25, 1.25 * max_detections / max(int(keep.shape[0]), 1)))
        prefix = int(prefix * growth)


class _CappedBatchedNMS(torch.autograd.Function):
    """Class-wise NMS keeping at most ``max_detections``; exported as one ONNX ``NonMaxSuppression``
    over boxes shifted apart by class (torchvision's coordinate trick) whose
    ``max_output_boxes_per_class`` is that cap (torchvision exports ``sys.maxsize``), so that ONNX
    Runtime stops once the cap is reached."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float,  # type: ignore[override]
                max_detections: int) -> Tensor:
        return batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]

    @staticmethod
    def symbolic(g, boxes, scores, labels, iou_threshold: float, max_detections: int):  # type: ignore[no-untyped-def]
        from torch.onnx import symbolic_opset11 as opset11

        def constant(value, dtype):  # type: ignore[no-untyped-def]
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        labels = g.op("Cast", labels, to_i=torch.onnx.TensorProtoDataType.FLOAT)
        shift = g.op("Add", g.op("ReduceMax", boxes, keepdims_i=0), constant(1.0, torch.float32))
        offsets = opset11.unsqueeze(g, g.op("Mul", labels, shift), 1)
        shifted = g.op("Add", boxes, offsets)
        selected = g.op(
            "NonMaxSuppression",
            opset11.unsqueeze(g, shifted, 0),
            opset11.unsqueeze(g, opset11.unsqueeze(g, scores, 0), 0),
            constant([int(max_detections)], torch.int64),
            constant([float(iou_threshold)], torch.float32),
        )
        return opset11.squeeze(g, opset11.select(g, selected, 1, constant([2], torch.int64)), 1)
