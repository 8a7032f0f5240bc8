"""COCO-style detection metrics through pycocotools (no hand-written AP).

:func:`evaluate_detections` builds the ground-truth and detection ``COCO`` objects in memory and
runs ``COCOeval`` (``iouType="bbox"``): mAP over IoU 0.50:0.05:0.95, AP50, AP75, AP for small
(< 32^2 px area), medium and large (> 96^2 px) objects, AR, and per-class AP, all with at most
``max_detections`` detections per image (COCO's ``params.maxDets[2]``, 100 by default).
:func:`resolve_max_detections` turns the ``auto`` setting into a number that dense scenes (an
aerial photo with hundreds of tree crowns) do not cap: at least 100 and at least 1.5 x the
largest number of boxes in any evaluated image. The summary values are read from COCOeval's
accumulated tables at that ``maxDets`` (its ``summarize`` scores the headline AP at 100 only).

Areas are box areas in the pixels of the original images (COCO itself uses mask areas for its
ground truth; detkd has boxes only). Ground-truth boxes marked ``ignore`` (COCO crowd, VOC
difficult) are passed as COCO crowd regions: a detection on one is neither a hit nor a false
positive. A metric without any ground truth to measure (e.g. AP large when no object is
large) is ``nan`` where COCOeval reports -1.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

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

#: ``max_detections = "auto"``: at least this many detections per image (COCO's own 100) ...
AUTO_MIN_DETECTIONS = 100
#: ... and at least this many times the most boxes in any evaluated image (rounded up).
AUTO_DETECTIONS_PER_BOX = 1.5


def parse_max_detections(value: Any, what: str = "eval.max_detections") -> int | str:
    """``"auto"`` (or ``None``) -> ``"auto"``; a positive integer (or its text) -> that ``int``.

    Raises:
        ValueError: anything else, with the accepted values in the message.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    if isinstance(value, bool):
        raise ValueError(f"{what} must be 'auto' or a positive integer, got {value!r}")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 'auto' or a positive integer, got {value!r}") from None
    if number < 1 or (not isinstance(value, str) and number != value):
        raise ValueError(f"{what} must be 'auto' or a positive integer, got {value!r}")
    return number


@dataclass(frozen=True)
class MaxDetections:
    """The number of detections kept per image (COCO ``maxDets``) and why.

    Attributes:
        value: detections per image, ``>= 1``.
        auto: ``True`` when derived from the data (``"auto"``), ``False`` when set.
        most_boxes: the largest number of ground-truth boxes in one evaluated image (ignored ones included).
    """

    value: int
    auto: bool
    most_boxes: int

    def describe(self) -> str:
        """E.g. ``"at most 419 detections per image (auto: 1.5 x 279 boxes in the most crowded image)"``."""
        if not self.auto:
            why = "set"
        elif self.value == AUTO_MIN_DETECTIONS and self.most_boxes * AUTO_DETECTIONS_PER_BOX <= AUTO_MIN_DETECTIONS:
            why = f"auto: COCO's {AUTO_MIN_DETECTIONS}, the most crowded image has {self.most_boxes} boxes"
        else:
            why = f"auto: {AUTO_DETECTIONS_PER_BOX:g} x {self.most_boxes} boxes in the most crowded image"
        return f"at most {self.value} detections per image ({why})"


def resolve_max_detections(setting: Any, records: DetectionSet | Iterable[DetectionRecord]) -> MaxDetections:
    """Detections per image to keep and score: ``setting`` if it is a number, else derived from ``records``.

    ``"auto"`` (or ``None``) gives ``max(100, ceil(1.5 * B))`` where ``B`` is the largest number of
    ground-truth boxes (ignored ones included) in any of ``records``: 66 boxes -> 100, 67 -> 101,
    279 -> 419. A set number is used as it is, even below the most crowded image's box count.

    Raises:
        ValueError: ``setting`` is neither ``"auto"`` nor a positive integer.
    """
    parsed = parse_max_detections(setting)
    items = records.records if isinstance(records, DetectionSet) else records
    most = max((r.num_boxes for r in items), default=0)
    if parsed != "auto":
        return MaxDetections(int(parsed), False, most)
    return MaxDetections(max(AUTO_MIN_DETECTIONS, math.ceil(most * AUTO_DETECTIONS_PER_BOX)), True, most)


@dataclass
class DetectionMetrics:
    """COCO metrics of one model on one set; AP values in ``[0, 1]`` (``nan``: nothing to measure).

    Attributes:
        map: AP averaged over IoU 0.50:0.95 (COCO's headline "AP").
        ap50, ap75: AP at IoU 0.5 and 0.75.
        ap_small, ap_medium, ap_large: mAP over objects of area < 32^2, 32^2..96^2, > 96^2 pixels.
        ar100: recall averaged over IoU 0.50:0.95 with at most ``max_detections`` detections per
            image (the name is COCO's for the default of 100; tables title it ``AR<max_detections>``).
        per_class: class name -> mAP (0.50:0.95) of that class.
        per_class_ap50: class name -> AP50 of that class.
        num_images, num_ground_truth, num_detections: what was evaluated (ignored boxes not counted).
        max_detections: detections per image that were scored (COCO ``params.maxDets[2]``); every
            AP and AR above uses it.
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
    max_detections: int = 100

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


def _summary_stats(evaluator: COCOeval) -> dict[str, float]:
    """COCOeval's summary metrics at the last ``params.maxDets``, read from its accumulated tables.

    The same means as ``COCOeval.summarize`` (entries of -1, nothing to measure, left out; ``nan``
    when none is left), computed here because ``summarize`` scores its headline AP at a fixed
    100 detections whatever ``params.maxDets`` says (-1 for any other value in pycocotools 2.0).
    """
    params = evaluator.params
    precision = evaluator.eval["precision"]  # (T IoU thresholds, R recall thresholds, K classes, A areas, M maxDets)
    recall = evaluator.eval["recall"]  # (T, K, A, M)
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    last = len(params.maxDets) - 1

    def mean(table: np.ndarray) -> float:
        valid = table[table > -1]
        return float(valid.mean()) if valid.size else float("nan")

    def at_iou(threshold: float) -> np.ndarray:
        return np.flatnonzero(np.isclose(params.iouThrs, threshold))

    return {
        "map": mean(precision[:, :, :, area["all"], last]),
        "ap50": mean(precision[at_iou(0.5), :, :, area["all"], last]),
        "ap75": mean(precision[at_iou(0.75), :, :, area["all"], last]),
        "ap_small": mean(precision[:, :, :, area["small"], last]),
        "ap_medium": mean(precision[:, :, :, area["medium"], last]),
        "ap_large": mean(precision[:, :, :, area["large"], last]),
        "ar100": mean(recall[:, :, area["all"], last]),
    }


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
        max_detections: detections kept per image (the highest scores): COCO's ``params.maxDets``
            become ``[1, 10, max_detections]`` and every reported AP / AR uses the last.

    Raises:
        ValueError: a count or shape mismatch, a label outside ``0 .. K-1``, or a non-finite box or score.
    """
    records = list(ground_truth.records if isinstance(ground_truth, DetectionSet) else ground_truth)
    if isinstance(max_detections, bool) or not isinstance(max_detections, (int, np.integer)) or max_detections < 1:
        raise ValueError(f"max_detections must be a positive integer, got {max_detections!r} "
                         "(resolve 'auto' with resolve_max_detections first)")
    max_detections = int(max_detections)
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
    evaluator.params.maxDets = [1, min(10, max_detections), max_detections]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]
    return DetectionMetrics(
        **_summary_stats(evaluator),
        per_class={name: _class_ap(precision, k) for k, name in enumerate(class_names)},
        per_class_ap50={name: _class_ap(precision, k, 0) for k, name in enumerate(class_names)},
        num_images=len(records),
        num_ground_truth=sum(int((~r.ignore).sum()) for r in records),
        num_detections=len(dt_annotations),
        max_detections=max_detections,
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


def recall_title(max_detections: int) -> str:
    """Column title of :attr:`DetectionMetrics.ar100` for a ``max_detections``: ``"AR100"``, ``"AR419"``."""
    return f"AR{int(max_detections)}"


def format_detection_table(
    rows: Mapping[str, DetectionMetrics | Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    titles: Mapping[str, str] | None = None,
) -> str:
    """A markdown table, one row per model: COCO metrics in AP points (x100, one decimal), other columns as they are.

    Args:
        rows: model name -> :class:`DetectionMetrics` or a dict of values (metric keys of
            :data:`METRIC_TITLES` plus any others, e.g. ``params``, ``latency_ms``).
        columns: keys to show, in order; default: the COCO metrics, then the other keys in
            first-seen order.
        titles: column titles that replace those of :data:`METRIC_TITLES` (e.g.
            ``{"ar100": recall_title(419)}``). Without it, ``ar100`` is titled after the
            ``max_detections`` of the :class:`DetectionMetrics` rows when they all share one.

    Example::

        | model | mAP | AP50 | ... | params |
        |---|---|---|...|---|
        | teacher | 41.3 | 63.0 | ... | 32,000,000 |
    """
    table = {name: (row.summary() if isinstance(row, DetectionMetrics) else dict(row)) for name, row in rows.items()}
    limits = {row.max_detections for row in rows.values() if isinstance(row, DetectionMetrics)}
    names = dict(METRIC_TITLES)
    if len(limits) == 1:
        names["ar100"] = recall_title(limits.pop())
    names.update(titles or {})
    if columns is None:
        extra = [k for row in table.values() for k in row if k not in METRIC_TITLES]
        columns = [k for k in METRIC_TITLES if any(k in row for row in table.values())]
        columns += list(dict.fromkeys(extra))
    header = "| model | " + " | ".join(names.get(c, c) for c in columns) + " |"
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
