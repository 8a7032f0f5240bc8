"""Detection data for the engine: endless augmented training streams and deterministic eval batches.

Training samples have a fixed shape so that PyTorch's default collate batches them::

    {"image": (3, H, W) float32 in [0, 1] RGB,
     "boxes": (max_boxes, 4) float32 xyxy pixels of the image, zero rows after num_boxes,
     "labels": (max_boxes,) int64 class indices, -1 after num_boxes,
     "num_boxes": () int64}

:func:`unpad_targets` turns a collated batch back into torchvision's list of
``{"boxes": (n, 4), "labels": (n,)}`` targets.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from detkd.data.detection.records import DetectionRecord, DetectionSet, ImageCache
from detkd.data.detection.transforms import (
    BoxViewConfig,
    ColourJitterConfig,
    colour_jitter,
    letterbox,
    random_box_view,
)
from detkd.data.images import DataWarning, scan_images
from detkd.engine.task import StreamDataset

log = logging.getLogger(__name__)


def _check_size(height: int, width: int, multiple: int = 128) -> None:
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise ValueError(
            f"Detection input size must be positive multiples of {multiple} (the detectors' largest stride), "
            f"got {height} x {width}"
        )


#: A view that shrinks an image more than this many times (at zoom 1, the letterbox fit) is warned about.
SHRINK_WARNING = 2.0


def shrink_factor(record: DetectionRecord, height: int, width: int) -> float:
    """How many times letterboxing ``record`` into ``height x width`` shrinks it: ``max(h / height, w / width)``.

    Below 1 it is enlarged. A 2299 x 2472 px photo into 256 x 256: ``2472 / 256 = 9.66``.
    """
    return max(record.height / height, record.width / width)


def warn_if_shrunk(
    records: Sequence[DetectionRecord], height: int, width: int, limit: float = SHRINK_WARNING, what: str = "image"
) -> list[tuple[DetectionRecord, float]]:
    """Warn (one :class:`~detkd.data.images.DataWarning`) when views of ``records`` shrink any of them more than ``limit`` times.

    Returns the shrunk records with their factors (see :func:`shrink_factor`), most shrunk first.
    """
    shrunk = sorted(((r, shrink_factor(r, height, width)) for r in records), key=lambda pair: -pair[1])
    shrunk = [(r, f) for r, f in shrunk if f > limit]
    if shrunk:
        worst, factor = shrunk[0]
        warnings.warn(
            f"{len(shrunk)} of {len(records)} {what}(s) are shrunk more than {limit:g}x to fit the {height} x {width} "
            f"view (most: {worst.name}, {worst.width} x {worst.height} px, shrunk {factor:.1f}x); small objects may "
            "vanish. Cut large images into tiles: --tile-size (data.tile_size).",
            DataWarning, stacklevel=3,
        )
    return shrunk


def pad_targets(boxes: np.ndarray, labels: np.ndarray, max_boxes: int) -> dict[str, Tensor]:
    """``(M, 4)`` boxes and ``(M,)`` labels -> fixed-size ``boxes``, ``labels`` (-1 padded), ``num_boxes``."""
    count = len(boxes)
    if count > max_boxes:
        raise ValueError(f"{count} boxes do not fit max_boxes={max_boxes}; raise max_boxes")
    padded_boxes = torch.zeros(max_boxes, 4, dtype=torch.float32)
    padded_labels = torch.full((max_boxes,), -1, dtype=torch.int64)
    padded_boxes[:count] = torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4))
    padded_labels[:count] = torch.from_numpy(np.asarray(labels, np.int64))
    return {"boxes": padded_boxes, "labels": padded_labels, "num_boxes": torch.tensor(count, dtype=torch.int64)}


def unpad_targets(batch: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """A collated batch's padded ``boxes (B, max, 4)`` / ``labels (B, max)`` / ``num_boxes (B,)`` ->
    ``B`` dicts ``{"boxes": (n_b, 4) float32, "labels": (n_b,) int64}`` (torchvision's target format)."""
    boxes, labels, counts = batch["boxes"], batch["labels"], batch["num_boxes"]
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2] or counts.shape != boxes.shape[:1]:
        raise ValueError(
            f"Expected boxes (B, max, 4), labels (B, max), num_boxes (B,), got {tuple(boxes.shape)}, "
            f"{tuple(labels.shape)}, {tuple(counts.shape)}"
        )
    return [{"boxes": boxes[b, : int(n)], "labels": labels[b, : int(n)]} for b, n in enumerate(counts.tolist())]


def collate_detections(samples: Sequence[dict[str, Tensor]]) -> dict[str, Any]:
    """Collate samples into ``{"image": (B, 3, H, W), "targets": [{"boxes", "labels"}, ...]}`` (padding removed).

    Only needed where a DataLoader should hand over torchvision-style targets directly; the
    engine uses the default collate and :func:`unpad_targets`.
    """
    images = torch.stack([s["image"] for s in samples])
    targets = [{"boxes": s["boxes"][: int(s["num_boxes"])], "labels": s["labels"][: int(s["num_boxes"])]} for s in samples]
    return {"image": images, "targets": targets}


class DetectionStream(StreamDataset):
    """Endless stream of augmented training views of a :class:`DetectionSet`; sample ``k`` depends on ``(seed, k)`` only.

    Each sample: a random view (:class:`BoxViewConfig`: zoom around the letterbox fit, crop or
    pad, flips) with colour jitter, in the fixed-shape dict of the module docstring.

    Args:
        dataset: the labelled images (or a list of records).
        height, width: output size, pixels, multiples of 128.
        view: geometric augmentation; ``BoxViewConfig(scale=(1, 1), hflip=0)`` gives plain letterboxed images.
        colour: photometric augmentation; ``None`` disables it.
        max_boxes: rows of the padded ``boxes`` / ``labels``; a record with more boxes is an error here.
        seed: the stream's seed.
        cache: keep decoded images in memory (``uint8``; for sets that fit).
        drop_ignored: leave ``ignore`` boxes (crowd, difficult) out of the targets.
    """

    def __init__(
        self,
        dataset: DetectionSet | Sequence[DetectionRecord],
        height: int,
        width: int,
        view: BoxViewConfig | None = None,
        colour: ColourJitterConfig | None = None,
        max_boxes: int = 100,
        seed: int = 0,
        cache: bool = True,
        drop_ignored: bool = True,
    ) -> None:
        super().__init__(seed)
        _check_size(height, width)
        records = list(dataset.records if isinstance(dataset, DetectionSet) else dataset)
        if not records:
            raise ValueError("A DetectionStream needs at least one image")
        if drop_ignored:
            records = [r.without_ignored() for r in records]
        crowded = max(records, key=lambda r: r.num_boxes)
        if crowded.num_boxes > max_boxes:
            raise ValueError(
                f"{crowded.name} has {crowded.num_boxes} boxes but max_boxes={max_boxes}; "
                f"raise max_boxes to at least {crowded.num_boxes} (or tile the images)"
            )
        self.records = records
        self.height, self.width = height, width
        warn_if_shrunk(records, height, width, what="training image")
        self.view = view or BoxViewConfig()
        self.colour = colour
        self.max_boxes = max_boxes
        self.images = ImageCache(enabled=cache)

    def num_items(self) -> int:
        return len(self.records)

    def _view(self, item: int, rng: np.random.Generator) -> tuple[Tensor, np.ndarray, np.ndarray]:
        record = self.records[item]
        pixels = self.images.pixels(record)
        view, boxes, keep = random_box_view(pixels, record.boxes, rng, self.height, self.width, self.view)
        if self.colour is not None:
            view = colour_jitter(view, rng, self.colour)
        image = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))
        return image, boxes, record.labels[keep]

    def make_sample(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        image, boxes, labels = self._view(item, rng)
        return {"image": image, **pad_targets(boxes, labels, self.max_boxes)}


def unlabeled_records(folders: Sequence[str | Path]) -> list[DetectionRecord]:
    """Records without boxes for every readable image under ``folders``.

    Unreadable, empty, corrupt and too large files are skipped with a one-line warning each
    (:func:`detkd.data.images.scan_images`).
    """
    records = []
    for folder in folders:
        scan = scan_images(folder)
        log.info("Unlabeled images in %s: %s", folder, scan.summary())
        for path in scan.paths:
            width, height = scan.sizes[path]
            records.append(DetectionRecord(path=path, width=width, height=height, image_id=path.stem))
    return records


class UnlabeledDetectionStream(DetectionStream):
    """Augmented views of unlabelled images, for label-free distillation: ``{"image": (3, H, W)}`` only.

    Takes the same arguments as :class:`DetectionStream`, with image folders (or records whose
    boxes are ignored) in place of a labelled set.
    """

    def __init__(self, images: Sequence[str | Path] | Sequence[DetectionRecord] | DetectionSet, height: int, width: int,
                 **kwargs: Any) -> None:
        if isinstance(images, DetectionSet):
            records = images.records
        elif images and all(isinstance(i, DetectionRecord) for i in images):
            records = list(images)  # type: ignore[arg-type]
        else:
            records = unlabeled_records(images)  # type: ignore[arg-type]
        records = [DetectionRecord(path=r.path, width=r.width, height=r.height, window=r.window, image=r.image,
                                   image_id=r.image_id) for r in records]
        super().__init__(records, height, width, **kwargs)

    def make_sample(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        image, _, _ = self._view(item, rng)
        return {"image": image}


@dataclass
class EvalBatch:
    """Letterboxed images of a set and what maps predictions back to the original pixels.

    Attributes:
        images: ``(B, 3, H, W)`` float32 in ``[0, 1]``; each image resized to fit (aspect kept),
            top-left aligned, padded with the ImageNet mean.
        indices: positions of the images in the set.
        scales: ``(B, 2)`` ``(sx, sy)`` eval pixels per original pixel.
        original_sizes: ``(B, 2)`` ``(height, width)`` of the originals, pixels.
    """

    images: Tensor
    indices: list[int]
    scales: Tensor
    original_sizes: Tensor

    def to_original(self, boxes: Tensor, i: int) -> Tensor:
        """``(N, 4)`` xyxy boxes in eval pixels of batch image ``i`` -> original pixels, clipped to the image."""
        sx, sy = self.scales[i].tolist()
        h, w = self.original_sizes[i].tolist()
        out = boxes / boxes.new_tensor([sx, sy, sx, sy])
        return torch.stack([out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], 1)


def iter_eval_batches(
    dataset: DetectionSet | Sequence[DetectionRecord],
    size: int | tuple[int, int],
    batch_size: int = 8,
    cache: ImageCache | None = None,
) -> Iterator[EvalBatch]:
    """Deterministic evaluation batches: every image letterboxed to ``size`` (``int`` or ``(H, W)``, multiples of 128).

    Images are decoded in order, keeping the last two files (pass ``cache`` to keep more). One
    warning names the images shrunk more than 2x (:func:`warn_if_shrunk`).
    Predictions on ``batch.images`` map back with :meth:`EvalBatch.to_original` and can then be
    compared with the records' boxes (e.g. by :func:`detkd.evaluation.detection.evaluate_detections`).
    """
    height, width = (size, size) if isinstance(size, int) else size
    _check_size(height, width)
    records = list(dataset.records if isinstance(dataset, DetectionSet) else dataset)
    warn_if_shrunk(records, height, width, what="evaluated image")
    images = cache or ImageCache(max_files=2)  # tiles of one photo come in a row: decode it once
    for start in range(0, len(records), batch_size):
        chunk = range(start, min(start + batch_size, len(records)))
        views, scales = [], []
        for i in chunk:
            view, scale = letterbox(images.pixels(records[i]), height, width)
            views.append(torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))))
            scales.append(scale)
        yield EvalBatch(
            images=torch.stack(views),
            indices=list(chunk),
            scales=torch.tensor(scales, dtype=torch.float32),
            original_sizes=torch.tensor([[records[i].height, records[i].width] for i in chunk], dtype=torch.int64),
        )
