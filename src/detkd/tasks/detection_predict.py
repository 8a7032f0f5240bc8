"""Prediction of large (dense) images: overlapping tiles, merged back into one set of whole-image boxes.

A detector trained on tiles of an orthophoto cannot see the whole photo at once: letterboxed to
its input size, a 2299 x 2472 px photo shrinks 4-10x and small tree crowns vanish. Scoring each
tile alone instead counts every object cut by a tile border twice, once per side (377 trees
became 501 clipped boxes). :func:`predict_tiled` runs the detector on overlapping tiles and
returns one set of boxes in the pixels of the whole image:

1. The image is cut into ``tile_size`` tiles that advance by ``tile - overlap`` pixels, the last
   one of each row / column moved back to end at the image edge
   (:func:`detkd.data.detection.tiling.tile_starts`, as for training tiles).
2. Each tile is letterboxed to the detector's input size and predicted; its boxes are mapped back
   to image pixels and clipped to the tile.
3. Seams: a box that touches an inner border of its tile (within ``edge_px``) shows a cut object.
   It is dropped when a box of the same class from another tile, not cut itself, covers at least
   ``min_cover`` of its area: the neighbouring tile holds the object whole.
4. A class-wise NMS at ``iou_threshold`` merges what remains (an object inside the overlap is
   found whole by both tiles).

An object larger than the overlap is cut in every tile that shows it and may come back in
pieces; choose an overlap above the largest object (25 % of a 512 px tile is 128 px).

:func:`predict_set_tiled` does this for every image of a set, and :class:`WholeImageTiling`
is what ``detkd detect evaluate --tile-size`` hands to the evaluation so that COCO metrics are
computed on whole images against their whole lists of boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_area

from detkd.data.detection.records import DetectionRecord, DetectionSet, ImageCache
from detkd.data.detection.tiling import tile_starts
from detkd.data.detection.transforms import letterbox
from detkd.config import ConfigError
from detkd.evaluation.detection import MaxDetections, parse_max_detections, resolve_max_detections

#: Default overlap of neighbouring tiles: a quarter of the tile side.
DEFAULT_TILE_OVERLAP = 0.25


class TilePredictor(Protocol):
    """What :func:`predict_tiled` needs of a detector (a :class:`~detkd.models.detection.DetectorAdapter` is one).

    ``predict(images (B, 3, H, W) float32 in [0, 1], score_threshold, nms_iou, max_detections)``
    returns one dict per image with ``boxes`` ``(D, 4)`` xyxy pixels of the input, ``scores``
    ``(D,)`` and ``labels`` ``(D,)`` int64.
    """

    def predict(self, images: Tensor, score_threshold: float, nms_iou: float,
                max_detections: int) -> list[dict[str, Tensor]]: ...


def overlap_pixels(overlap: float | int, tile: int) -> int:
    """Overlap of neighbouring tiles in pixels: ``overlap`` in ``[0, 1)`` is a fraction of ``tile``, else pixels.

    ``overlap_pixels(0.25, 512) == 128``; ``overlap_pixels(100, 512) == 100``.

    Raises:
        ValueError: a negative overlap, a pixel count that is not whole, or one not below ``tile``.
    """
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.integer, np.floating)):
        raise ValueError(f"Tile overlap must be a fraction in [0, 1) or pixels, got {overlap!r}")
    value = float(overlap)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Tile overlap must be a fraction in [0, 1) or a number of pixels >= 0, got {overlap!r}")
    if value < 1:
        pixels = int(round(value * tile))
    elif value.is_integer():
        pixels = int(value)
    else:
        raise ValueError(f"Tile overlap above 1 is pixels and must be whole, got {overlap!r}")
    if pixels >= tile:
        raise ValueError(f"Tile overlap {pixels} px must be smaller than the tile ({tile} px)")
    return pixels


def tile_windows(height: int, width: int, tile_size: int | tuple[int, int], overlap: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` integer pixel windows of the tiles of a ``height x width`` image, row by row.

    ``tile_size`` is ``int`` or ``(tile_h, tile_w)``; ``overlap`` in pixels. A side not above the
    tile gives one window spanning that whole side.
    """
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    return [
        (left, top, min(left + tile_w, width), min(top + tile_h, height))
        for top in tile_starts(height, tile_h, min(overlap, tile_h - 1))
        for left in tile_starts(width, tile_w, min(overlap, tile_w - 1))
    ]


def cut_by_tile_border(
    boxes: Tensor, windows: Tensor, image_size: tuple[int, int], edge_px: float = 2.0
) -> Tensor:
    """Which boxes touch an inner border of their tile (a border that is not the image's own edge).

    Args:
        boxes: ``(N, 4)`` xyxy pixels of the whole image.
        windows: ``(N, 4)`` ``(x0, y0, x1, y1)`` pixels: the window of the tile each box came from.
        image_size: ``(height, width)`` of the whole image, pixels.
        edge_px: a box side within this many pixels of a tile border touches it.

    Returns:
        ``(N,)`` bool.
    """
    height, width = image_size
    x0, y0, x1, y1 = windows.unbind(1)
    return (
        ((x0 > 0) & (boxes[:, 0] <= x0 + edge_px))
        | ((y0 > 0) & (boxes[:, 1] <= y0 + edge_px))
        | ((x1 < width) & (boxes[:, 2] >= x1 - edge_px))
        | ((y1 < height) & (boxes[:, 3] >= y1 - edge_px))
    )


def merge_tile_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    tiles: Tensor,
    windows: Tensor,
    image_size: tuple[int, int],
    iou_threshold: float = 0.5,
    edge_px: float = 2.0,
    min_cover: float = 0.6,
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge the detections of overlapping tiles into one set for the whole image (steps 3 and 4 of the module docstring).

    Args:
        boxes: ``(N, 4)`` xyxy pixels of the whole image, each inside its tile's window.
        scores: ``(N,)``.
        labels: ``(N,)`` int64 class indices.
        tiles: ``(N,)`` int64: the tile each detection came from.
        windows: ``(N, 4)`` the window ``(x0, y0, x1, y1)`` of that tile, pixels.
        image_size: ``(height, width)`` pixels.
        iou_threshold: class-wise NMS threshold of the last step.
        edge_px: how close (pixels) to an inner tile border a box side must come to count as cut.
        min_cover: a cut box is dropped when a whole box of its class from another tile covers at
            least this fraction of its area (intersection / area of the cut box).

    Returns:
        ``boxes (M, 4)``, ``scores (M,)``, ``labels (M,)`` sorted by decreasing score.
    """
    if not 0.0 < min_cover <= 1.0:
        raise ValueError(f"min_cover must be in (0, 1], got {min_cover}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if len(boxes) == 0:
        return boxes.reshape(0, 4), scores.reshape(0), labels.reshape(0)
    cut = cut_by_tile_border(boxes, windows, image_size, edge_px)
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    whole = torch.nonzero(~cut).flatten()
    if cut.any() and len(whole):
        cut_index = torch.nonzero(cut).flatten()
        a, b = boxes[cut_index], boxes[whole]
        left_top = torch.maximum(a[:, None, :2], b[None, :, :2])
        right_bottom = torch.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (right_bottom - left_top).clamp(min=0).prod(-1)  # (C, W) px^2
        cover = inter / box_area(a).clamp(min=1e-6)[:, None]
        held = (
            (cover >= min_cover)
            & (labels[cut_index][:, None] == labels[whole][None, :])
            & (tiles[cut_index][:, None] != tiles[whole][None, :])
        )
        keep[cut_index[held.any(1)]] = False
    index = torch.nonzero(keep).flatten()
    kept = index[batched_nms(boxes[index].float(), scores[index].float(), labels[index], iou_threshold)]
    order = kept[torch.argsort(scores[kept], descending=True, stable=True)]
    return boxes[order], scores[order], labels[order]


def _device(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        parameter = next(model.parameters(), None)
        if parameter is not None:
            return parameter.device
    return torch.device("cpu")


def _default_input_size(tile_h: int, tile_w: int, multiple: int = 128) -> tuple[int, int]:
    return (max(multiple, math.ceil(tile_h / multiple) * multiple), max(multiple, math.ceil(tile_w / multiple) * multiple))


@torch.no_grad()
def predict_tiled(
    model: TilePredictor,
    image: Tensor | np.ndarray,
    tile_size: int | tuple[int, int],
    overlap: float | int = DEFAULT_TILE_OVERLAP,
    iou_threshold: float = 0.5,
    *,
    input_size: tuple[int, int] | None = None,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    max_detections: int | None = 100,
    batch_size: int = 8,
    edge_px: float = 2.0,
    min_cover: float = 0.6,
) -> tuple[Tensor, Tensor, Tensor]:
    """Detections of ``model`` on a large ``image``, predicted in overlapping tiles and merged (see the module docstring).

    Args:
        model: a detector with ``predict`` (:class:`TilePredictor`), e.g. a ``DetectorAdapter``.
        image: ``(3, H, W)`` float32 RGB in ``[0, 1]`` (a tensor, or an ``(H, W, 3)`` array in ``[0, 1]``).
        tile_size: tile side in pixels of ``image`` (``int`` or ``(tile_h, tile_w)``).
        overlap: pixels shared by neighbouring tiles; a value in ``[0, 1)`` is a fraction of the tile
            side (default: 25 %).
        iou_threshold: class-wise NMS threshold that merges duplicates across tiles.
        input_size: ``(H, W)`` each tile is letterboxed to before the model sees it (the model's
            input size: multiples of 128 for the detkd detectors); default: the tile rounded up
            to a multiple of 128.
        score_threshold, nms_iou: the model's own post-processing, per tile.
        max_detections: at most this many detections per tile and in the result (highest
            scores); ``None``: no limit on the result, 100 per tile.
        batch_size: tiles per forward pass.
        edge_px, min_cover: the seam rule of :func:`merge_tile_detections`.

    Returns:
        ``boxes (N, 4)`` float32 xyxy pixels of ``image``, ``scores (N,)`` float32 and
        ``labels (N,)`` int64, sorted by decreasing score, on the CPU.

    Raises:
        ValueError: a malformed image, tile size or overlap.
    """
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
        pixels = image.detach().float().cpu().permute(1, 2, 0).contiguous().numpy()
    else:
        pixels = np.asarray(image, np.float32)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"An image array must be (H, W, 3), got {pixels.shape}")
    height, width = pixels.shape[:2]
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else (int(tile_size[0]), int(tile_size[1]))
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile_size must be >= 1 pixel, got {tile_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_detections is not None and max_detections < 1:
        raise ValueError(f"max_detections must be >= 1 or None, got {max_detections}")
    overlap_px = overlap_pixels(overlap, min(tile_h, tile_w))
    in_h, in_w = input_size or _default_input_size(min(tile_h, height), min(tile_w, width))
    windows = tile_windows(height, width, (tile_h, tile_w), overlap_px)
    device = _device(model)
    per_tile = int(max_detections) if max_detections is not None else 100

    found: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        views, scales = [], []
        for x0, y0, x1, y1 in chunk:
            view, scale = letterbox(pixels[y0:y1, x0:x1], in_h, in_w)
            views.append(torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))))
            scales.append(scale)
        detections = model.predict(torch.stack(views).to(device), score_threshold, nms_iou, per_tile)
        for offset, (det, (sx, sy), window) in enumerate(zip(detections, scales, chunk)):
            x0, y0, x1, y1 = window
            boxes = det["boxes"].detach().float().cpu().reshape(-1, 4) / torch.tensor([sx, sy, sx, sy])
            boxes = boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
            boxes = torch.stack([boxes[:, 0].clamp(x0, x1), boxes[:, 1].clamp(y0, y1),
                                 boxes[:, 2].clamp(x0, x1), boxes[:, 3].clamp(y0, y1)], 1)
            tile = torch.full((len(boxes),), start + offset, dtype=torch.int64)
            found.append((boxes, det["scores"].detach().float().cpu().reshape(-1),
                          det["labels"].detach().cpu().to(torch.int64).reshape(-1), tile))
    boxes = torch.cat([f[0] for f in found]) if found else torch.zeros(0, 4)
    scores = torch.cat([f[1] for f in found]) if found else torch.zeros(0)
    labels = torch.cat([f[2] for f in found]) if found else torch.zeros(0, dtype=torch.int64)
    tiles = torch.cat([f[3] for f in found]) if found else torch.zeros(0, dtype=torch.int64)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # clipping to the tile can empty a box
    boxes, scores, labels, tiles = boxes[valid], scores[valid], labels[valid], tiles[valid]
    window_table = torch.tensor(windows, dtype=torch.float32).reshape(-1, 4)
    boxes, scores, labels = merge_tile_detections(
        boxes, scores, labels, tiles, window_table[tiles], (height, width), iou_threshold, edge_px, min_cover
    )
    if max_detections is not None:
        boxes, scores, labels = boxes[:max_detections], scores[:max_detections], labels[:max_detections]
    return boxes, scores, labels


def predict_set_tiled(
    model: TilePredictor,
    dataset: DetectionSet | Sequence[DetectionRecord],
    tile_size: int,
    overlap: float | int = DEFAULT_TILE_OVERLAP,
    input_size: tuple[int, int] | None = None,
    eval_cfg: dict[str, Any] | None = None,
) -> list[dict[str, Tensor]]:
    """:func:`predict_tiled` on every image of ``dataset``: one ``{"boxes", "scores", "labels"}`` per image, in image pixels.

    ``eval_cfg`` gives ``score_threshold``, ``nms_iou`` (also the merge threshold across tiles),
    ``batch_size`` (tiles per forward) and ``max_detections`` (a number, or ``auto``: resolved
    from ``dataset`` by :func:`~detkd.evaluation.detection.resolve_max_detections`).
    """
    cfg = {"score_threshold": 0.05, "nms_iou": 0.5, "batch_size": 8, "max_detections": "auto", **(eval_cfg or {})}
    records = list(dataset.records if isinstance(dataset, DetectionSet) else dataset)
    limit = resolve_max_detections(cfg["max_detections"], records).value
    images = ImageCache(max_files=1)
    predictions = []
    for record in records:
        pixels = images.pixels(record).astype(np.float32) / 255.0
        boxes, scores, labels = predict_tiled(
            model, pixels, tile_size, overlap, float(cfg["nms_iou"]), input_size=input_size,
            score_threshold=float(cfg["score_threshold"]), nms_iou=float(cfg["nms_iou"]), max_detections=limit,
            batch_size=int(cfg["batch_size"]),
        )
        predictions.append({"boxes": boxes, "scores": scores, "labels": labels})
    return predictions


@dataclass(frozen=True)
class WholeImageTiling:
    """Evaluate whole images, each predicted in overlapping tiles (``detkd detect evaluate --tile-size``).

    Attributes:
        tile_size: tile side, pixels of the original images.
        overlap: pixels shared by neighbouring tiles, or a fraction of the tile in ``[0, 1)``.
    """

    tile_size: int
    overlap: float | int = DEFAULT_TILE_OVERLAP

    def __post_init__(self) -> None:
        if isinstance(self.tile_size, bool) or not isinstance(self.tile_size, int) or self.tile_size < 1:
            raise ValueError(f"tile_size must be a positive number of pixels, got {self.tile_size!r}")
        overlap_pixels(self.overlap, self.tile_size)  # refuse a bad overlap now, not after loading the images

    @property
    def overlap_px(self) -> int:
        return overlap_pixels(self.overlap, self.tile_size)

    def describe(self, size: tuple[int, int]) -> str:
        """E.g. ``"whole images predicted in 512 px tiles overlapping by 128 px, each letterboxed to 512x512"``."""
        return (f"whole images predicted in {self.tile_size} px tiles overlapping by {self.overlap_px} px, "
                f"each letterboxed to {size[0]}x{size[1]}, merged across seams")

    def predict(self, model: TilePredictor, dataset: DetectionSet, eval_cfg: dict[str, Any],
                size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Whole-image detections of ``model`` on every image of ``dataset`` (:func:`predict_set_tiled`)."""
        return predict_set_tiled(model, dataset, self.tile_size, self.overlap, size, eval_cfg)


def resolve_eval_config(eval_cfg: dict[str, Any], dataset: DetectionSet) -> tuple[dict[str, Any], MaxDetections]:
    """A copy of ``eval_cfg`` whose ``max_detections`` is a number (``auto`` resolved from ``dataset``), and how it was set."""
    limit = resolve_max_detections(eval_cfg.get("max_detections", "auto"), dataset)
    return {**eval_cfg, "max_detections": limit.value}, limit


def check_eval_config(eval_cfg: dict[str, Any]) -> None:
    """Refuse a bad ``eval.max_detections`` before a run trains, not at its final evaluation.

    Raises:
        ConfigError: ``eval.max_detections`` is neither ``auto`` nor a positive integer.
    """
    try:
        parse_max_detections(eval_cfg.get("max_detections", "auto"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
