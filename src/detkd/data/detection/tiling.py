"""Cut large images (orthophotos) into tiles whose records point at crop windows of the source.

A tile record keeps the source file's path and stores its ``window`` in source pixels; its
boxes are in the tile's own frame, clipped to it. A box that keeps less than ``min_visible``
of its area inside a tile is dropped from that tile (or, with ``ignore_partial``, kept as an
``ignore`` region so that a detector is neither asked to find it nor punished for finding it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from detkd.data.detection.records import DetectionRecord, DetectionSet
from detkd.data.detection.voc import read_voc


def crop_record(
    record: DetectionRecord,
    window: tuple[int, int, int, int],
    min_visible: float = 0.5,
    ignore_partial: bool = False,
) -> DetectionRecord:
    """The part of ``record`` inside ``window = (x0, y0, x1, y1)`` (integer pixels of the record's frame).

    Boxes are shifted by ``(-x0, -y0)`` and clipped to ``[0, x1 - x0] x [0, y1 - y0]``; a box
    whose clipped area is below ``min_visible`` times its full area is dropped (or marked
    ``ignore`` when ``ignore_partial`` and some of it is inside).
    """
    x0, y0, x1, y1 = (int(v) for v in window)
    if not (0 <= x0 < x1 <= record.width and 0 <= y0 < y1 <= record.height):
        raise ValueError(f"{record.name}: window {window} is not inside the {record.width} x {record.height} image")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    boxes = record.boxes - np.array([x0, y0, x0, y0], np.float32)
    clipped = np.stack(
        [boxes[:, 0].clip(0, x1 - x0), boxes[:, 1].clip(0, y1 - y0), boxes[:, 2].clip(0, x1 - x0), boxes[:, 3].clip(0, y1 - y0)],
        axis=1,
    ).reshape(-1, 4)
    full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0)
    visible = np.divide(inside, full, out=np.zeros_like(inside), where=full > 0)
    keep = (inside > 0) & (visible >= min_visible)
    ignore = record.ignore.copy()
    if ignore_partial:
        ignore = ignore | ~keep
        keep = inside > 0
    base = record.window or (0, 0, record.width, record.height)
    return replace(
        record,
        width=x1 - x0,
        height=y1 - y0,
        boxes=clipped[keep],
        labels=record.labels[keep],
        ignore=ignore[keep],
        window=(base[0] + x0, base[1] + y0, base[0] + x1, base[1] + y1),
    )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length]`` with at least ``overlap`` shared pixels.

    The last tile ends exactly at ``length`` (it may overlap its neighbour more); a length not
    above ``tile`` gives the single start 0 (the tile is then the whole length).
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"Need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_records(
    records: Sequence[DetectionRecord],
    tile_size: int | tuple[int, int],
    overlap: int = 0,
    min_visible: float = 0.5,
    ignore_partial: bool = False,
) -> list[DetectionRecord]:
    """Cut every record into ``tile_size`` tiles (``int`` or ``(height, width)``, pixels).

    Tiles advance by ``tile - overlap`` pixels; the last tile of a row or column is moved back
    to end at the image edge, so every pixel is covered and no tile reaches outside the image.
    An image (or side) smaller than the tile gives one smaller tile. Tiles without boxes are kept
    (they teach the background).
    """
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    tiles = []
    for record in records:
        for top in tile_starts(record.height, tile_h, overlap):
            for left in tile_starts(record.width, tile_w, overlap):
                window = (left, top, min(left + tile_w, record.width), min(top + tile_h, record.height))
                tiles.append(crop_record(record, window, min_visible, ignore_partial))
    return tiles


def region_split(
    record: DetectionRecord, val_fraction: float = 0.25, min_visible: float = 0.5
) -> tuple[DetectionRecord, DetectionRecord]:
    """Split one image into a left training region and a right validation region (``val_fraction`` of the width).

    The regions share no pixel; a box cut by the border goes to each side where at least
    ``min_visible`` of it lies.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    split_x = int(round(record.width * (1.0 - val_fraction)))
    if not 0 < split_x < record.width:
        raise ValueError(f"{record.name}: {record.width} px is too narrow to split at val_fraction={val_fraction}")
    train = crop_record(record, (0, 0, split_x, record.height), min_visible)
    val = crop_record(record, (split_x, 0, record.width, record.height), min_visible)
    return train, val


def tree_tiles_split(
    root: str | Path,
    tile_size: int = 256,
    overlap: int = 0,
    val_fraction: float = 0.25,
    min_visible: float = 0.5,
    ignore_partial: bool = False,
    skip_bad: bool = False,
) -> tuple[DetectionSet, DetectionSet]:
    """Train / val tiles of the VOC-annotated orthophoto(s) in ``root`` (e.g. ``../shared/data/trees``), split by region.

    Each image is split at ``(1 - val_fraction) * width``: tiles of the left part train, tiles of
    the right part validate, so no validation tile shares a pixel with a training tile (a tile
    overlap, if any, stays within its own part). Boxes cut by the region border or by a tile
    border follow the ``min_visible`` / ``ignore_partial`` rule of :func:`crop_record`.

    Returns:
        ``(train, val)`` :class:`DetectionSet` s of tile records (windows of the source PNG).
    """
    source = read_voc(root, skip_bad=skip_bad)
    train, val = [], []
    for record in source.records:
        left, right = region_split(record, val_fraction, min_visible)
        train += tile_records([left], tile_size, overlap, min_visible, ignore_partial)
        val += tile_records([right], tile_size, overlap, min_visible, ignore_partial)
    describe = f"{source.source}, {tile_size} px tiles, overlap {overlap}, val = right {val_fraction:.0%}"
    return (
        DetectionSet(train, source.class_names, f"{describe} (train: left part)", list(source.problems)),
        DetectionSet(val, source.class_names, f"{describe} (val: right part)", list(source.problems)),
    )
