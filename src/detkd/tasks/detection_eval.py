"""Evaluation of detectors on a labelled set: predictions, COCO metrics, report files and example plots.

* :func:`predict_set`: a detector's boxes on every image of a set, letterboxed (tiled prediction of
  large images is :mod:`detkd.tasks.detection_predict`).
* :func:`detection_validator`: the periodic validation (mAP, AP50) of ``train.val_every``.
* :func:`evaluate_and_report`: COCO metrics (pycocotools, per-class AP) of several models, the
  printed tables and ``metrics.json`` / ``metrics.md`` / ``detections.png``
  (:func:`draw_examples`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from detkd.data.detection import DetectionSet, iter_eval_batches, load_record_image
from detkd.evaluation.detection import (
    DetectionMetrics,
    evaluate_detections,
    format_detection_table,
    format_per_class_table,
    recall_title,
)
from detkd.models.detection import DetectorAdapter, count_parameters
from detkd.tasks.detection_data import _size
from detkd.tasks.detection_predict import WholeImageTiling, resolve_eval_config


# ------------------------------------------------------------------------------------ evaluation
#: A periodic validation: metrics (name -> value) of a detector, e.g. ``{"map": 41.2, "ap50": 63.0}``.
Validator = Callable[[DetectorAdapter], dict[str, float]]


@torch.no_grad()
def predict_set(
    model: DetectorAdapter, dataset: DetectionSet, eval_cfg: dict[str, Any], size: tuple[int, int]
) -> list[dict[str, torch.Tensor]]:
    """Detections of ``model`` on every image of ``dataset`` (letterboxed to ``size``), in original pixels.

    At most ``eval.max_detections`` per image (``auto`` resolved from ``dataset``).
    """
    device = next(model.parameters()).device
    predictions = []
    eval_cfg, _ = resolve_eval_config(eval_cfg, dataset)
    for batch in iter_eval_batches(dataset, size, int(eval_cfg["batch_size"])):
        detections = model.predict(
            batch.images.to(device), eval_cfg["score_threshold"], eval_cfg["nms_iou"], int(eval_cfg["max_detections"])
        )
        for i, det in enumerate(detections):
            det = {k: v.cpu() for k, v in det.items()}
            predictions.append({"boxes": batch.to_original(det["boxes"], i), "scores": det["scores"], "labels": det["labels"]})
    return predictions


def detection_validator(dataset: DetectionSet | None, eval_cfg: dict[str, Any], size: tuple[int, int]) -> Validator | None:
    """COCO mAP and AP50 (points) of a detector on ``dataset``, for ``train.val_every``; ``None`` without a set."""
    if dataset is None:
        return None
    _, limit = resolve_eval_config(eval_cfg, dataset)

    def validate(model: DetectorAdapter) -> dict[str, float]:
        metrics = evaluate_detections(predict_set(model, dataset, eval_cfg, size), dataset, max_detections=limit.value)
        return {"map": 100 * metrics.map, "ap50": 100 * metrics.ap50}

    return validate


def plot_detection_validation(runs: dict[str, Any], path: Path, title: str) -> Path:
    """mAP and AP50 of :func:`detection_validator` records against the step, one line per run.

    Args:
        runs: run name -> ``validation.jsonl`` path or its records.
    """
    from detkd.viz.curves import plot_validation_curves

    return plot_validation_curves(runs, path, ["map", "ap50"], title=title,
                                  labels={"map": "mAP (IoU 0.50:0.95), points", "ap50": "AP50, points"})


def eval_size(eval_cfg: dict[str, Any], data_cfg: dict[str, Any]) -> tuple[int, int]:
    """``(H, W)`` of evaluated images: ``eval.height/width``, or the training size when they are null."""
    merged = {"height": eval_cfg["height"] or data_cfg["height"], "width": eval_cfg["width"] or data_cfg["width"]}
    return _size(merged, "eval")


@dataclass
class EvaluationReport:
    """COCO metrics of several models on one set, and the tables printed for them."""

    metrics: dict[str, DetectionMetrics]
    table: str
    per_class_table: str
    description: str


def evaluate_and_report(
    models: dict[str, DetectorAdapter],
    dataset: DetectionSet,
    eval_cfg: dict[str, Any],
    size: tuple[int, int],
    out: str | Path | None = None,
    plot: str | Path | None = None,
    tiling: WholeImageTiling | None = None,
) -> EvaluationReport:
    """Evaluate ``models`` on ``dataset``; print the tables and, with ``out``, write the report files.

    Each image is letterboxed to ``size``, or, with ``tiling``, predicted in overlapping tiles
    (each letterboxed to ``size``) merged into whole-image boxes (:mod:`detkd.tasks.detection_predict`).
    ``eval.max_detections`` (``auto``: from the most crowded image of ``dataset``) is kept per
    image and is COCO's ``maxDets``; the description, the tables and ``metrics.json`` state it.

    Writes into ``out``: ``metrics.json`` (every metric, per-class AP, parameters), ``metrics.md``
    (the tables) and ``detections.png`` of the last model (``detections_<name>.png`` for the
    others) on the first ``eval.plot_images`` images. ``plot`` writes every model side by side
    there (:func:`draw_examples`, one column per model).
    """
    eval_cfg, limit = resolve_eval_config(eval_cfg, dataset)
    how = tiling.describe(size) if tiling is not None else f"letterboxed to {size[0]}x{size[1]}"
    description = f"{dataset.source}: {len(dataset)} image(s), {dataset.num_boxes} box(es), {how}; {limit.describe()}"
    print(f"evaluating on {description}")
    metrics, predictions = {}, {}
    for name, model in models.items():
        predictions[name] = (tiling.predict(model, dataset, eval_cfg, size) if tiling is not None
                             else predict_set(model, dataset, eval_cfg, size))
        metrics[name] = evaluate_detections(predictions[name], dataset, max_detections=limit.value)
    rows = {name: {**m.summary(), "parameters": count_parameters(models[name])} for name, m in metrics.items()}
    table = format_detection_table(rows, titles={"ar100": recall_title(limit.value)})
    per_class = format_per_class_table(metrics)
    print(table)
    print(f"\nper-class AP (IoU 0.50:0.95):\n{per_class}")
    names = list(models)
    plots: dict[str, Path] = {}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "data": description,
            "max_detections": limit.value,
            "max_detections_rule": limit.describe(),
            "models": {n: {**metrics[n].as_dict(), "parameters": count_parameters(models[n]), "detector": models[n].name}
                       for n in names},
        }
        (out / "metrics.json").write_text(json.dumps(payload, indent=2))
        (out / "metrics.md").write_text(
            f"Evaluated on {description}.\n\n{table}\n\nPer-class AP (IoU 0.50:0.95, points):\n\n{per_class}\n"
        )
        plots = {n: out / ("detections.png" if n == names[-1] else f"detections_{n}.png") for n in names}
    columns = {n: f"{n} ({models[n].name})" for n in names}
    for name, path in plots.items():
        draw_examples(dataset, {columns[name]: predictions[name]}, path, eval_cfg)
    if plot is not None:
        draw_examples(dataset, {columns[n]: predictions[n] for n in names}, Path(plot), eval_cfg)
    return EvaluationReport(metrics, table, per_class, description)


def draw_examples(
    dataset: DetectionSet, predictions: dict[str, list[dict[str, torch.Tensor]]], path: Path, eval_cfg: dict[str, Any]
) -> Path:
    """The first ``eval.plot_images`` images (rows) with each model's detections (columns, titled by the keys
    of ``predictions``) scoring at least ``eval.plot_score_threshold``: hits green, false alarms red,
    missed ground-truth boxes orange dashed (:mod:`detkd.evaluation.detection_plots`)."""
    from detkd.evaluation.detection_plots import plot_model_comparison

    count = max(1, min(int(eval_cfg["plot_images"]), len(dataset)))
    records = dataset.records[:count]
    threshold = float(eval_cfg["plot_score_threshold"])
    return plot_model_comparison(
        [load_record_image(r) for r in records], records, {k: v[:count] for k, v in predictions.items()}, path,
        class_names=dataset.class_names, score_threshold=threshold, row_names=[r.name for r in records],
        title=f"Detections scoring \u2265 {threshold:g} on {count} of {len(dataset)} image(s)",
    )
