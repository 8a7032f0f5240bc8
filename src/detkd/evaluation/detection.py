"""COCO-style detection metrics through pycocotools (no hand-written AP).

:func:`evaluate_detections` builds the ground-truth and detection ``COCO`` objects in memory and
runs ``COCOeval`` (``iouType="bbox"``): mAP over IoU 0.50:0.05:0.95, AP50, AP75, AP for small
(< 32^2 px area), medium and large (> 96^2 px) objects, AR with 100 detections per image, and
per-class AP. Areas are box areas in the pixels of the original images (COCO itself uses mask
areas for its ground truth; detkd has boxes only). Ground-truth boxes marked ``ignore`` (COCO
crowd, VOC difficult) are passed as COCO crowd regions: a detection on one is neither a hit nor
a false positive. A metric without any ground truth to measure (e.g. AP large when no object is
large) is ``nan`` where COCOeval reports -1.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkd.data.detection.records import DetectionRecord, DetectionSet

#: Scalar metrics, in table order, with their column titles.
METRIC_TITLES = {
    "map": "mAP",
    "ap50": "AP50",
    "ap75": "AP75",
    "ap_small": "AP_S",
    "ap_medium": "AP_M",
    "ap_large": "AP_L",
    "ar100": "AR100",
}


@dataclass
class DetectionMetrics:
    """COCO metrics of one model on one set; AP values in ``[0, 1]`` (``nan``: nothing to measure).

    Attributes:
        map: AP averaged over IoU 0.50:0.95 (COCO's headline "AP").
        ap50, ap75: AP at IoU 0.5 and 0.75.
        ap_small, ap_medium, ap_large: mAP over objects of area < 32^2, 32^2..96^2, > 96^2 pixels.
        ar100: recall averaged over IoU 0.50:0.95 with at most 100 detections per image.
        per_class: class name -> mAP (0.50:0.95) of that class.
        per_class_ap50: class name -> AP50 of that class.
        num_images, num_ground_truth, num_detections: what was evaluated (ignored boxes not counted).
    """

    map: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar100: float
    per_class: dict[str, float] = field(default_factory=dict)
    per_class_ap50: dict[str, float] = field(default_factory=dict)
    num_images: int = 0
    num_ground_truth: int = 0
    num_detections: int = 0

    def summary(self) -> dict[str, float]:
        """The scalar metrics, keyed as in :data:`METRIC_TITLES`."""
        return {key: getattr(self, key) for key in METRIC_TITLES}

    def as_dict(self) -> dict[str, Any]:
        """Everything, for ``metrics.json`` (``nan`` kept as ``None`` so that the JSON stays standard)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean(asdict(self))


def _numpy(value: Any, dtype: type, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=dtype)
    if array.size == 0:
        return array.reshape((0,) + shape_tail)
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise ValueError(f"{what} must have shape (N{', ' + ', '.join(map(str, shape_tail)) if shape_tail else ''}), "
                         f"got {array.shape}")
    return array


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _class_ap(precision: np.ndarray, k: int, iou_index: int | None = None) -> float:
    """Mean of COCOeval's precision table for class ``k`` (area all, max dets last), -1 entries left out."""
    table = precision[:, :, k, 0, -1] if iou_index is None else precision[iou_index, :, k, 0, -1]
    valid = table[table > -1]
    return float(valid.mean()) if valid.size else float("nan")


def evaluate_detections(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: DetectionSet | Sequence[DetectionRecord],
    class_names: Sequence[str] | None = None,
    max_detections: int = 100,
) -> DetectionMetrics:
    """COCO metrics of ``predictions`` against ``ground_truth`` (see the module docstring).

    Args:
        predictions: one dict per image, in the order of ``ground_truth``, with ``boxes`` ``(N, 4)``
            xyxy pixels of the *original* image, ``scores`` ``(N,)`` and ``labels`` ``(N,)`` class
            indices ``0 .. K-1`` (tensors or arrays; ``N`` may be 0).
        ground_truth: the labelled images.
        class_names: ``K`` names; default: the set's own.
        max_detections: detections kept per image (the highest scores), as COCO's ``maxDets``.

    Raises:
        ValueError: a count or shape mismatch, a label outside ``0 .. K-1``, or a non-finite box or score.
    """
    records = list(ground_truth.records if isinstance(ground_truth, DetectionSet) else ground_truth)
    if class_names is None:
        if not isinstance(ground_truth, DetectionSet):
            raise ValueError("class_names is needed when ground_truth is a list of records")
        class_names = ground_truth.class_names
    num_classes = len(class_names)
    if len(predictions) != len(records):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} ground-truth images; give one per image")

    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    images = [{"id": i + 1, "width": r.width, "height": r.height} for i, r in enumerate(records)]
    gt_annotations: list[dict] = []
    for i, record in enumerate(records):
        if record.num_boxes and (record.labels.min() < 0 or record.labels.max() >= num_classes):
            raise ValueError(f"Ground truth {record.name}: labels {record.labels.tolist()} outside 0..{num_classes - 1}")
        for box, label, ignore in zip(_xywh(record.boxes).tolist(), record.labels.tolist(), record.ignore.tolist()):
            gt_annotations.append({
                "id": len(gt_annotations) + 1, "image_id": i + 1, "category_id": label + 1, "bbox": box,
                "area": box[2] * box[3], "iscrowd": int(ignore),
            })
    dt_annotations: list[dict] = []
    for i, pred in enumerate(predictions):
        missing = {"boxes", "scores", "labels"} - set(pred)
        if missing:
            raise ValueError(f"Prediction {i} lacks {sorted(missing)}; give boxes, scores and labels")
        boxes = _numpy(pred["boxes"], np.float64, (4,), f"Prediction {i} boxes")
        scores = _numpy(pred["scores"], np.float64, (), f"Prediction {i} scores")
        labels = _numpy(pred["labels"], np.int64, (), f"Prediction {i} labels")
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"Prediction {i}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"Prediction {i} has a NaN or infinite box or score")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"Prediction {i}: labels outside 0..{num_classes - 1}: {sorted(set(labels.tolist()))}")
        for box, score, label in zip(_xywh(boxes).tolist(), scores.tolist(), labels.tolist()):
            dt_annotations.append({
                "id": len(dt_annotations) + 1, "image_id": i + 1, "category_id": label + 1, "bbox": box,
                "area": box[2] * box[3], "score": score, "iscrowd": 0,
            })

    evaluator = COCOeval(_coco(images, gt_annotations, categories), _coco(images, dt_annotations, categories), "bbox")
    evaluator.params.maxDets = [1, 10, max_detections]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float("nan") if s < 0 else float(s) for s in evaluator.stats]
    precision = evaluator.eval["precision"]
    return DetectionMetrics(
        map=stats[0], ap50=stats[1], ap75=stats[2], ap_small=stats[3], ap_medium=stats[4], ap_large=stats[5],
        ar100=stats[8],
        per_class={name: _class_ap(precision, k) for k, name in enumerate(class_names)},
        per_class_ap50={name: _class_ap(precision, k, 0) for k, name in enumerate(class_names)},
        num_images=len(records),
        num_ground_truth=sum(int((~r.ignore).sum()) for r in records),
        num_detections=len(dt_annotations),
    )


def _cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if key in METRIC_TITLES or key.startswith("ap_") or key.startswith("AP "):
        return f"{100.0 * float(value):.1f}"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3g}"
    return str(value)


def format_detection_table(
    rows: Mapping[str, DetectionMetrics | Mapping[str, Any]], columns: Sequence[str] | None = None
) -> str:
    """A markdown table, one row per model: COCO metrics in AP points (x100, one decimal), other columns as they are.

    Args:
        rows: model name -> :class:`DetectionMetrics` or a dict of values (metric keys of
            :data:`METRIC_TITLES` plus any others, e.g. ``params``, ``latency_ms``).
        columns: keys to show, in order; default: the COCO metrics, then the other keys in
            first-seen order.

    Example::

        | model | mAP | AP50 | ... | params |
        |---|---|---|...|---|
        | teacher | 41.3 | 63.0 | ... | 32,000,000 |
    """
    table = {name: (row.summary() if isinstance(row, DetectionMetrics) else dict(row)) for name, row in rows.items()}
    if columns is None:
        extra = [k for row in table.values() for k in row if k not in METRIC_TITLES]
        columns = [k for k in METRIC_TITLES if any(k in row for row in table.values())]
        columns += list(dict.fromkeys(extra))
    header = "| model | " + " | ".join(METRIC_TITLES.get(c, c) for c in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def format_per_class_table(rows: Mapping[str, DetectionMetrics], iou: str = "0.50:0.95") -> str:
    """A markdown table of per-class AP (points, one decimal), one row per model; ``iou`` is ``"0.50:0.95"`` or ``"0.50"``."""
    if iou not in ("0.50:0.95", "0.50"):
        raise ValueError(f"iou must be '0.50:0.95' or '0.50', got '{iou}'")
    per_model = {name: (m.per_class if iou == "0.50:0.95" else m.per_class_ap50) for name, m in rows.items()}
    classes = list(dict.fromkeys(c for values in per_model.values() for c in values))
    lines = ["| model | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for name, values in per_model.items():
        lines.append(f"| {name} | " + " | ".join(_cell("map", values.get(c)) for c in classes) + " |")
    return "\n".join(lines)
