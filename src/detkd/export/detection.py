"""Object detectors as ONNX graphs: post-processing inside, outputs padded to static shapes.

:class:`DetectionPostprocess` wraps a :class:`~detkd.models.detection.DetectorAdapter` and runs
the family's own torchvision post-processing (score threshold, per-level top-k, box decoding,
class-wise NMS through ``torchvision.ops.batched_nms``, which exports as ONNX
NonMaxSuppression; Faster R-CNN's proposals and RoIAlign export through torchvision's own ONNX
paths). Detections are padded to a fixed ``max_detections`` so that every output has a static
shape; ``num_detections`` says how many are real.

Input: ``images`` ``(B, 3, H, W)`` float32 RGB in ``[0, 1]`` (the ImageNet normalisation is
inside the graph), ``H`` and ``W`` multiples of the largest stride (128 for P3..P7). The
anchors are computed for the export size, so detector exports have a fixed size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detkd.export.graph import ExportGraph, Parity, plain, worst_difference

POSTPROCESSED_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
INPUT_NAME = "images"
BOX_MATCH_IOU = 0.99  # a detection of both runtimes: same label and nearly the same box


class DetectionPostprocess(nn.Module):
    """Detector + its post-processing, padded to ``max_detections``.

    Forward: ``images`` ``(B, 3, H, W)`` in ``[0, 1]`` ->

    * ``boxes`` ``(B, M, 4)`` float32 xyxy pixels, sorted by decreasing score, zeros for padding;
    * ``scores`` ``(B, M)``, 0 for padding;
    * ``labels`` ``(B, M)`` int64 class indices ``0 .. K-1``, ``-1`` for padding;
    * ``num_detections`` ``(B,)`` int64.
    """

    def __init__(self, adapter: nn.Module, score_threshold: float = 0.05, nms_iou: float = 0.5,
                 max_detections: int = 100) -> None:
        super().__init__()
        self.adapter = adapter
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        detections = self.adapter.postprocess(self.adapter(images), self.score_threshold, self.nms_iou,
                                              self.max_detections)
        m = self.max_detections
        boxes, scores, labels = [], [], []
        for d in detections:
            missing = m - d["scores"].shape[0]  # a graph value, not a constant, when traced
            boxes.append(F.pad(d["boxes"], (0, 0, 0, missing)))
            scores.append(F.pad(d["scores"], (0, missing)))
            labels.append(F.pad(d["labels"], (0, missing), value=-1))
        labels_out = torch.stack(labels)
        return torch.stack(boxes), torch.stack(scores), labels_out, (labels_out >= 0).sum(dim=1)


class DetectionRawHeads(nn.Module):
    """The dense head outputs of a detector (see :class:`~detkd.models.detection.DetectorOutputs`):
    ``cls_logits`` ``(B, N, K)``, ``box_regression`` ``(B, N, 4)``, ``boxes`` ``(B, N, 4)`` decoded
    against the anchors (xyxy pixels) and, for FCOS, ``centerness`` ``(B, N)``. For Faster R-CNN
    these are the RPN's outputs (``K = 1`` objectness)."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.adapter(images)
        dense = (out.cls_logits, out.box_regression, out.boxes)
        return dense + ((out.centerness,) if out.centerness is not None else ())


def detection_graph(adapter: nn.Module, raw_heads: bool = False, max_detections: int = 100,
                    score_threshold: float = 0.05, nms_iou: float = 0.5) -> ExportGraph:
    """The :class:`ExportGraph` of a detector adapter (post-processed, or raw heads).

    The graph runs :func:`~detkd.models.detection.inference.inference_copy` of ``adapter`` (BatchNorm
    folded, channels-last): what eager PyTorch times in ``detkd bench`` and runs in ``Predictor``.
    """
    from detkd.models.detection.inference import inference_copy

    adapter = inference_copy(adapter).cpu()
    k = adapter.num_classes
    input_spec = {
        "layout": "B,3,H,W", "dtype": "float32", "colour": "RGB", "range": [0.0, 1.0],
        "normalisation": "pixel / 255; the ImageNet mean/std normalisation is inside the graph",
        "size": f"H, W multiples of {max(adapter.strides)} (the largest stride); anchors fixed at the export size",
    }
    config = {**plain(adapter.config), "family": adapter.family, "strides": adapter.strides}
    if raw_heads:
        module: nn.Module = DetectionRawHeads(adapter).eval()
        outputs = ("cls_logits", "box_regression", "boxes") + (("centerness",) if adapter.family == "fcos" else ())
        spec = {
            "cls_logits": f"(B, N, {k if adapter.family != 'faster_rcnn' else 1}) logits before the sigmoid, "
                          "one row per anchor (level finest first, then row, column, anchor)",
            "box_regression": "(B, N, 4) box deltas in the family's box coder",
            "boxes": "(B, N, 4) the deltas decoded against the anchors, xyxy pixels",
            "centerness": "(B, N) FCOS centre-ness logits",
        }
        compare = compare_dense
    else:
        module = DetectionPostprocess(adapter, score_threshold, nms_iou, max_detections).eval()
        outputs = POSTPROCESSED_OUTPUTS
        spec = {
            "boxes": f"(B, {max_detections}, 4) float32 xyxy pixels, sorted by decreasing score; zeros for padding",
            "scores": f"(B, {max_detections}) detection scores, 0 for padding",
            "labels": f"(B, {max_detections}) int64 class index 0..{k - 1}, -1 for padding",
            "num_detections": "(B,) int64 number of real detections per image",
        }
        config = {**config, "score_threshold": score_threshold, "nms_iou": nms_iou, "max_detections": max_detections}
        compare = functools.partial(compare_detections, post=module)
    return ExportGraph(
        task="detection", module=module, input_name=INPUT_NAME, channels=3, output_names=outputs,
        output_axes={name: {0: "batch"} for name in outputs}, input_spec=input_spec,
        output_spec={name: spec[name] for name in outputs}, config=config, compare=compare,
        min_size=max(adapter.strides), size_multiple=max(adapter.strides), supports_dynamic=False,
    )


def compare_dense(reference: Sequence[np.ndarray], other: Sequence[np.ndarray], batch: torch.Tensor | None = None,
                  tolerance: float = 1e-4) -> Parity:
    """Dense detector outputs, each relative to its largest magnitude (logits and pixels are unbounded)."""
    names = ("cls_logits", "box_regression", "boxes", "centerness")
    errors = {name: worst_difference(r, o, relative=True) for name, r, o in zip(names, reference, other)}
    return Parity(errors, dict.fromkeys(errors, "rel"))


def compare_detections(reference: Sequence[np.ndarray], other: Sequence[np.ndarray], batch: torch.Tensor,
                       tolerance: float, post: DetectionPostprocess) -> Parity:
    """Parity of post-processed detections, robust to rounding at the decisions.

    A detection of one runtime is matched to one of the other with the same label and a box
    IoU of at least 0.99; ``agreement`` is matched over all distinct detections, and the score
    (absolute) and box (relative to the image size) errors are the worst over matched pairs.
    An unmatched detection is a *near-tie* when its score lies within ``tolerance`` of the
    score threshold, of the last kept score (when all ``max_detections`` slots are used) or of
    another detection's score with the same label (NMS and top-k order may then swap them).
    """
    boxes_r, scores_r, labels_r, n_r = reference
    boxes_o, scores_o, labels_o, n_o = other
    size = float(max(batch.shape[-2:]))
    score_err, box_err, matched_total, distinct, near, unexplained = 0.0, 0.0, 0, 0, 0, 0
    for b in range(boxes_r.shape[0]):
        ref = (boxes_r[b, : int(n_r[b])], scores_r[b, : int(n_r[b])], labels_r[b, : int(n_r[b])])
        oth = (boxes_o[b, : int(n_o[b])], scores_o[b, : int(n_o[b])], labels_o[b, : int(n_o[b])])
        pairs = _match_boxes(ref, oth)
        for i, j in pairs:
            score_err = max(score_err, abs(float(ref[1][i]) - float(oth[1][j])))
            box_err = max(box_err, float(np.abs(ref[0][i] - oth[0][j]).max()) / size)
        matched_total += len(pairs)
        distinct += len(ref[1]) + len(oth[1]) - len(pairs)
        lone = [(ref, i) for i in set(range(len(ref[1]))) - {i for i, _ in pairs}]
        lone += [(oth, j) for j in set(range(len(oth[1]))) - {j for _, j in pairs}]
        for dets, index in lone:
            if _detection_near_tie(dets, index, ref, oth, post, tolerance):
                near += 1
            else:
                unexplained += 1
    agreement = matched_total / distinct if distinct else 1.0
    return Parity({"scores": score_err, "boxes": box_err}, {"scores": "abs", "boxes": "rel"},
                  agreement, near, unexplained)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes ``(N, 4)`` x ``(M, 4)``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _match_boxes(ref: tuple, oth: tuple) -> list[tuple[int, int]]:
    """Greedy one-to-one matching in score order: same label, IoU >= :data:`BOX_MATCH_IOU`."""
    if not len(ref[1]) or not len(oth[1]):
        return []
    iou = _box_iou(ref[0].astype(np.float64), oth[0].astype(np.float64))
    iou[ref[2][:, None] != oth[2][None, :]] = 0.0
    pairs, used = [], set()
    for i in np.argsort(-ref[1], kind="stable"):
        candidates = [j for j in np.argsort(-iou[i], kind="stable") if j not in used and iou[i, j] >= BOX_MATCH_IOU]
        if candidates:
            used.add(candidates[0])
            pairs.append((int(i), int(candidates[0])))
    return pairs


def _detection_near_tie(dets: tuple, index: int, ref: tuple, oth: tuple, post: DetectionPostprocess,
                        tolerance: float) -> bool:
    score, label = float(dets[1][index]), int(dets[2][index])
    if abs(score - post.score_threshold) <= tolerance:
        return True
    for side in (ref, oth):
        if len(side[1]) >= post.max_detections and abs(score - float(side[1][-1])) <= tolerance:
            return True
        same = (side[2] == label) & (np.abs(side[1] - score) <= tolerance)
        if side is dets:
            same[index] = False
        if same.any():
            return True
    return False
