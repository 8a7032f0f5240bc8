"""The data of the detection jobs: the labelled sets of ``data.yaml`` and the training streams.

* :class:`DetectionData` and :func:`read_detection_data`: the train and evaluation sets of a run
  (cut into tiles with ``data.tile_size``).
* :func:`labelled_stream`, :func:`unlabeled_stream` and :func:`distillation_stream`: the augmented
  streams the tasks of :mod:`detkd.tasks.detection` train on.
* :func:`build_teacher_cache` and :func:`cached_training_stream`: the teacher's outputs computed once
  per fixed view and read back with the batch (``teacher_cache``, :mod:`detkd.cache.detection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from detkd.cache.detection import CachedDetectorViews, build_detector_teacher_cache, open_detector_cache
from detkd.cache.store import CacheBuildReport
from detkd.config import ConfigError, dataclass_from_dict
from detkd.data.detection import (
    BoxViewConfig,
    ColourJitterConfig,
    DetectionSet,
    DetectionStream,
    UnlabeledDetectionStream,
    load_data_config,
    tile_records,
    unlabeled_records,
)
from detkd.models.detection import DetectorAdapter


# ------------------------------------------------------------------------------------ data
@dataclass
class DetectionData:
    """The data of a run: labelled train and evaluation sets and where they came from.

    Attributes:
        train: labelled training images (tiles, when ``data.tile_size`` is set).
        val: the evaluation split, or ``None`` when ``data.yaml`` has none.
        class_names: label ``k`` is ``class_names[k]``.
        description: one line per part, for the run's printout and ``metrics.md``.
        unlabeled: image folders for label-free distillation (``data.yaml``'s ``unlabeled``).
    """

    train: DetectionSet
    val: DetectionSet | None
    class_names: list[str]
    description: str
    unlabeled: list[Path] = field(default_factory=list)


def _tiled(dataset: DetectionSet, size: int | None, overlap: int) -> DetectionSet:
    if not size:
        return dataset
    tiles = tile_records(dataset.records, int(size), int(overlap))
    return DetectionSet(tiles, dataset.class_names, f"{dataset.source}, {size} px tiles", list(dataset.problems))


def read_detection_data(data_cfg: dict[str, Any], split: str = "val") -> DetectionData:
    """Read the ``data.yaml`` named in ``data_cfg['config']``: its train part and ``split`` (if present)."""
    if not data_cfg.get("config"):
        raise ConfigError("No data given: pass --data data.yaml (or set data.config in the YAML config)")
    config = load_data_config(data_cfg["config"])
    train = _tiled(config.read("train", data_cfg["skip_bad"]), data_cfg["tile_size"], data_cfg["tile_overlap"])
    val = None
    if getattr(config, split):
        val = config.read(split, data_cfg["skip_bad"], class_names=train.class_names)
        if val.class_names != train.class_names:
            raise ConfigError(
                f"{config.file}: the {split} part lists classes {val.class_names}, the train part {train.class_names}"
            )
        val = _tiled(val, data_cfg["tile_size"], data_cfg["tile_overlap"])
    lines = [f"train: {train.summary()}"] + ([f"{split}: {val.summary()}"] if val is not None else [f"{split}: none"])
    return DetectionData(train, val, list(train.class_names), "\n".join(lines), list(config.unlabeled))


def _size(cfg: dict[str, Any], what: str) -> tuple[int, int]:
    height, width = int(cfg["height"]), int(cfg["width"])
    if height <= 0 or width <= 0 or height % 128 or width % 128:
        raise ConfigError(
            f"{what}.height and {what}.width must be positive multiples of 128 (the detectors' largest stride), "
            f"got {height} x {width}"
        )
    return height, width


def _stream_options(config: dict[str, Any]) -> dict[str, Any]:
    data = config["data"]
    colour = dataclass_from_dict(ColourJitterConfig, _tuples(data["colour"]), "data.colour")
    return {
        "view": dataclass_from_dict(BoxViewConfig, _tuples(data["view"]), "data.view"),
        "colour": colour if colour.probability > 0 else None,
        "max_boxes": int(data["max_boxes"]),
        "seed": int(config["train"]["seed"]),
        "cache": bool(data["cache"]),
    }


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def labelled_stream(config: dict[str, Any], train: DetectionSet) -> DetectionStream:
    """The augmented training stream of ``train`` as ``config['data']`` describes it."""
    height, width = _size(config["data"], "data")
    return DetectionStream(train, height, width, **_stream_options(config))


def unlabeled_stream(config: dict[str, Any], data: DetectionData) -> tuple[UnlabeledDetectionStream, str]:
    """Images without boxes for label-free distillation, and where they came from.

    Source: ``data.unlabeled`` folders, else ``data.yaml``'s ``unlabeled``, else the training
    images with their boxes left out. With ``data.tile_size`` the folders' images are cut into
    tiles as the labelled ones are (:func:`~detkd.data.detection.tile_records`).
    """
    height, width = _size(config["data"], "data")
    folders = config["data"]["unlabeled"] or data.unlabeled
    if isinstance(folders, (str, Path)):
        folders = [folders]
    options = _stream_options(config)
    if folders:
        records, where = unlabeled_records(list(folders)), ", ".join(str(f) for f in folders)
        tile = config["data"]["tile_size"]
        if tile:
            count = len(records)
            records = tile_records(records, int(tile), int(config["data"]["tile_overlap"] or 0))
            where += f" ({count} image(s) cut into {len(records)} tiles of {int(tile)} px)"
        return UnlabeledDetectionStream(records, height, width, **options), f"unlabeled images in {where}"
    return UnlabeledDetectionStream(data.train, height, width, **options), (
        f"the {len(data.train)} training images, boxes not used"
    )


def distillation_stream(config: dict[str, Any], data: DetectionData) -> tuple[DetectionStream, str]:
    """The images a distillation run trains on: labelled, or unlabelled with ``distill.label_free``; and where from."""
    if config["distill"]["label_free"]:
        return unlabeled_stream(config, data)
    return labelled_stream(config, data.train), "labelled training images"


# ------------------------------------------------------------------------------------ teacher cache
def cache_device(accelerator: str) -> torch.device:
    """Where the teacher runs while a cache is built: the GPU if training would use one."""
    return torch.device("cuda" if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available() else "cpu")


def build_teacher_cache(
    config: dict[str, Any], teacher: DetectorAdapter, stream: DetectionStream, class_names: Sequence[str],
    progress: bool = True,
) -> CacheBuildReport:
    """Compute and store the teacher's outputs for every view of ``config['teacher_cache']`` not yet cached."""
    cache_cfg, train = config["teacher_cache"], config["train"]
    if not cache_cfg["folder"]:
        raise ConfigError("teacher_cache.folder is not set: name the folder for the teacher's outputs (--cache)")
    return build_detector_teacher_cache(
        teacher, stream, cache_cfg["folder"], class_names, views_per_image=int(cache_cfg["views_per_image"]),
        batch_size=int(cache_cfg["batch_size"]), device=cache_device(train["accelerator"]),
        num_workers=int(train["num_workers"]), progress=progress,
    )


def cached_training_stream(
    config: dict[str, Any], teacher: DetectorAdapter, stream: DetectionStream, class_names: Sequence[str]
) -> CachedDetectorViews:
    """The stream that reads teacher outputs from ``config['teacher_cache']['folder']``."""
    cache_cfg = config["teacher_cache"]
    cache, layout = open_detector_cache(cache_cfg["folder"], teacher, stream, class_names)
    return CachedDetectorViews(stream, cache, layout, int(cache_cfg["views_per_image"]))
