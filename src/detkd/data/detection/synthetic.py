"""Synthetic shapes for object detection: procedural, seeded, with exact boxes.

Five classes (:data:`SYNTHETIC_CLASSES`): ``circle`` (ellipses of axis ratio 0.7-1),
``triangle``, ``rectangle`` (aspect 0.35-1), ``star`` (5 points) and ``cross`` (a plus sign),
each rotated at random, filled with a solid colour, a gradient, stripes or speckle. Sizes are
drawn log-uniformly between ``size[0]`` and ``size[1]`` of the shorter image side. Measured on
100 default scenes (about 4.5 objects each), by box area in COCO's terms: at 256 px 35% small
(< 32^2 px), 50% medium, 15% large (> 96^2 px); at 128 px 71% small, 29% medium, none large.

Scenes are drawn on smoothed colour noise, with clutter that is *not* an object: thick
poly-lines and irregular blobs (some with speckle texture), some under the objects and some
lines over them. Objects may occlude one another and leave the image, but every labelled
object keeps at least ``min_visible`` of its area visible (placements that would break this
are redrawn or dropped).

Exact labels: every shape is rasterised at ``supersample`` x the resolution into an owner
map; a box is the extent of the object's *visible* sub-pixels (``xyxy`` pixels, continuous
frame: the image spans ``[0, W] x [0, H]``), so it is exact to ``1 / supersample`` pixel
before the final light blur. The image is the area average of the sub-pixels, plus noise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from detkd.data.detection.coco import detection_set_to_coco
from detkd.data.detection.records import DetectionRecord, DetectionSet
from detkd.data.detection.stream import pad_targets
from detkd.engine.task import StreamDataset

SYNTHETIC_CLASSES: tuple[str, ...] = ("circle", "triangle", "rectangle", "star", "cross")
_SET_SALT = 104729  # keeps synthetic_detection_set images apart from SyntheticDetectionStream scenes
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel polygon vertices


@dataclass
class SyntheticDetectionConfig:
    """What a synthetic detection scene holds."""

    height: int = 128
    width: int = 128
    objects: tuple[int, int] = (1, 8)  # labelled objects per image (fewer when placement fails)
    size: tuple[float, float] = (0.07, 0.8)  # object extent / shorter image side, log-uniform
    distractors: tuple[int, int] = (2, 7)  # clutter (lines, blobs) under the objects
    occluders: tuple[int, int] = (0, 2)  # thin lines drawn over the objects
    min_visible: float = 0.6  # share of each labelled object's area that stays visible
    min_contrast: float = 0.2  # mean |RGB difference| between an object and what it covers
    noise_std: tuple[float, float] = (0.01, 0.05)  # range of the final Gaussian noise std
    blur_sigma: tuple[float, float] = (0.0, 0.7)  # range of the final Gaussian blur, pixels
    supersample: int = 4


@dataclass
class SyntheticScene:
    """One drawn scene.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        boxes: ``(M, 4)`` float32 xyxy pixels of the visible part of each object.
        labels: ``(M,)`` int64 indices into :data:`SYNTHETIC_CLASSES`.
        coverage: ``(M, H, W)`` float32 share of each pixel covered by the object's visible part.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    coverage: np.ndarray


# ----------------------------------------------------------------------------- shapes
def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _outline(kind: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """``(N, 2)`` polygon of a class shape around the origin, extent about ``2 * radius``."""
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t), rng.uniform(0.7, 1.0) * np.sin(t)], 1)
    elif kind == "triangle":
        angles = np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        pts = np.stack([np.cos(angles), np.sin(angles)], 1)
    elif kind == "rectangle":
        aspect = rng.uniform(0.35, 1.0)
        pts = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], float)
    elif kind == "star":
        inner = rng.uniform(0.38, 0.5)
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif kind == "cross":
        a = rng.uniform(0.22, 0.36)  # half arm width
        pts = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a],
                        [-1, -a], [-a, -a]], float)
    else:
        raise ValueError(f"Unknown synthetic class '{kind}'")
    return _rotate(pts, rng.uniform(0, 2 * np.pi)) * radius


def _blob_outline(radius: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular closed outline (clearly not a circle): harmonics 2..5 of amplitude 0.15-0.35."""
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 6):
        r += rng.uniform(0.15, 0.35) / (k - 1) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return np.stack([r * np.cos(t), r * np.sin(t)], 1) * radius / r.max()


# ----------------------------------------------------------------------------- painting
class _Region:
    """Sub-pixels of one shape: a window of the canvas and the shape's mask inside it."""

    def __init__(self, rows: slice, cols: slice, mask: np.ndarray) -> None:
        self.rows, self.cols, self.mask = rows, cols, mask

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


class _Scene:
    """Super-sampled RGB canvas with an owner map (0 background, -1 clutter, k > 0 object k)."""

    def __init__(self, rng: np.random.Generator, cfg: SyntheticDetectionConfig) -> None:
        self.s = cfg.supersample
        self.h, self.w = cfg.height * self.s, cfg.width * self.s
        self.rng = rng
        self.hi = self._background(cfg)
        self.owner = np.zeros((self.h, self.w), np.int32)
        self.full_area: dict[int, float] = {}  # sub-pixels of each object, as drawn in full
        self.visible_area: dict[int, int] = {}  # its sub-pixels still visible
        self.windows: dict[int, tuple[slice, slice]] = {}  # where its sub-pixels are

    def _background(self, cfg: SyntheticDetectionConfig) -> np.ndarray:
        rng = self.rng
        small = (max(2, cfg.width // int(rng.integers(6, 24))), max(2, cfg.height // int(rng.integers(6, 24))))
        noise = rng.standard_normal((small[1], small[0], 3)).astype(np.float32)
        image = cv2.resize(noise, (cfg.width, cfg.height), interpolation=cv2.INTER_CUBIC)
        image = rng.uniform(0.1, 0.9, 3).astype(np.float32) + rng.uniform(0.03, 0.15) * image
        if rng.random() < 0.5:  # a linear shading across the scene
            gx, gy = np.meshgrid(np.linspace(-1, 1, cfg.width, dtype=np.float32),
                                 np.linspace(-1, 1, cfg.height, dtype=np.float32))
            angle = rng.uniform(0, 2 * np.pi)
            image += (rng.uniform(0.05, 0.25) * (gx * math.cos(angle) + gy * math.sin(angle)))[..., None]
        image = cv2.resize(np.clip(image, 0.0, 1.0), (self.w, self.h), interpolation=cv2.INTER_LINEAR)
        return image

    def _region(self, points: np.ndarray, margin: float, draw) -> _Region:
        """Rasterise ``draw(canvas, fixed_point_pts)`` inside the window around ``points`` (+ ``margin`` px)."""
        s = self.s
        x0 = int(np.clip(math.floor((points[:, 0].min() - margin) * s) - 1, 0, self.w))
        x1 = int(np.clip(math.ceil((points[:, 0].max() + margin) * s) + 2, 0, self.w))
        y0 = int(np.clip(math.floor((points[:, 1].min() - margin) * s) - 1, 0, self.h))
        y1 = int(np.clip(math.ceil((points[:, 1].max() + margin) * s) + 2, 0, self.h))
        local = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
        if local.size:
            # sub-pixel centre coordinates of the window, in cv2's fixed point
            pts = np.round((points * s - 0.5 - (x0, y0)) * (1 << _SHIFT)).astype(np.int32)
            draw(local, pts)
        return _Region(slice(y0, y1), slice(x0, x1), local.astype(bool))

    def polygon(self, polygon: np.ndarray) -> _Region:
        """Sub-pixels inside ``polygon`` (image pixels, continuous frame)."""
        return self._region(polygon, 0.0, lambda out, pts: cv2.fillPoly(out, [pts], 1, cv2.LINE_8, _SHIFT))

    def polyline(self, points: np.ndarray, thickness: float) -> _Region:
        width = max(1, int(round(thickness * self.s)))
        return self._region(
            points, thickness, lambda out, pts: cv2.polylines(out, [pts], False, 1, width, cv2.LINE_8, _SHIFT)
        )

    def texture(self, region: _Region, colour: np.ndarray) -> np.ndarray:
        """Values for the region's sub-pixels: solid, gradient, stripes or speckle around ``colour``."""
        rng = self.rng
        rows, cols = np.nonzero(region.mask)
        kind = rng.choice(["solid", "gradient", "stripes", "speckle"], p=[0.4, 0.25, 0.2, 0.15])
        values = np.broadcast_to(colour, (len(rows), 3)).astype(np.float32)
        if kind == "gradient" or kind == "stripes":
            angle = rng.uniform(0, 2 * np.pi)
            along = (cols * math.cos(angle) + rows * math.sin(angle)) / self.s  # image pixels
            other = np.clip(colour + rng.uniform(-0.3, 0.3, 3), 0, 1).astype(np.float32)
            if kind == "gradient":
                t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
            else:
                t = (np.floor(along / rng.uniform(2.0, 6.0)) % 2).astype(np.float32)
            values = values + t[:, None].astype(np.float32) * (other - colour)
        elif kind == "speckle":
            values = values + rng.normal(0, rng.uniform(0.05, 0.15), (len(rows), 3)).astype(np.float32)
        return np.clip(values, 0.0, 1.0)

    def colour_for(self, region: _Region, min_contrast: float) -> np.ndarray:
        """A colour whose mean |RGB difference| from what the region covers is at least ``min_contrast`` (best of 16)."""
        under = self.hi[region.rows, region.cols][region.mask].mean(axis=0)
        candidates = self.rng.uniform(0, 1, (16, 3)).astype(np.float32)
        diff = np.abs(candidates - under).mean(axis=1)
        good = np.flatnonzero(diff >= min_contrast)
        return candidates[good[0]] if len(good) else candidates[int(np.argmax(diff))]

    def _hidden(self, region: _Region) -> np.ndarray:
        """Sub-pixels of each object that ``region`` would cover, indexed by object id."""
        under = self.owner[region.rows, region.cols][region.mask]
        return np.bincount(under[under > 0], minlength=len(self.full_area) + 2)

    def paint(self, region: _Region, owner: int, colour: np.ndarray) -> None:
        for k, n in enumerate(self._hidden(region)):
            if n and k in self.visible_area:
                self.visible_area[k] -= int(n)
        self.hi[region.rows, region.cols][region.mask] = self.texture(region, colour)
        self.owner[region.rows, region.cols][region.mask] = owner

    def visible_ok(self, region: _Region, min_visible: float) -> bool:
        """Would every object keep ``min_visible`` of its area with ``region`` painted over it?"""
        hidden = self._hidden(region)
        return all(self.visible_area[k] - hidden[k] >= min_visible * area for k, area in self.full_area.items())


def _place_object(scene: _Scene, kind: int, cfg: SyntheticDetectionConfig, object_id: int) -> bool:
    rng = scene.rng
    side = min(cfg.height, cfg.width)
    for _ in range(20):
        radius = 0.5 * side * math.exp(rng.uniform(math.log(cfg.size[0]), math.log(cfg.size[1])))
        centre = np.array([rng.uniform(0, cfg.width), rng.uniform(0, cfg.height)])
        polygon = _outline(SYNTHETIC_CLASSES[kind], radius, rng) + centre
        x = polygon[:, 0]
        y = polygon[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) * scene.s**2  # sub-pixels
        region = scene.polygon(polygon)
        if region.area < cfg.min_visible * area or not scene.visible_ok(region, cfg.min_visible):
            continue
        scene.paint(region, object_id, scene.colour_for(region, cfg.min_contrast))
        scene.full_area[object_id] = area
        scene.visible_area[object_id] = region.area
        scene.windows[object_id] = (region.rows, region.cols)
        return True
    return False


def _random_polyline(rng: np.random.Generator, cfg: SyntheticDetectionConfig) -> np.ndarray:
    start = rng.uniform(0, 1, 2) * (cfg.width, cfg.height)
    steps = rng.normal(0, 0.35 * min(cfg.width, cfg.height), (int(rng.integers(1, 4)), 2))
    return np.concatenate([start[None], start + np.cumsum(steps, 0)])


def _draw_clutter(scene: _Scene, cfg: SyntheticDetectionConfig) -> None:
    rng = scene.rng
    for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
        if rng.random() < 0.5:
            region = scene.polyline(_random_polyline(rng, cfg), rng.uniform(1.0, 4.0))
        else:
            radius = 0.5 * min(cfg.height, cfg.width) * rng.uniform(0.06, 0.4)
            centre = rng.uniform(0, 1, 2) * (cfg.width, cfg.height)
            region = scene.polygon(_blob_outline(radius, rng) + centre)
        if region.area:
            scene.paint(region, -1, scene.colour_for(region, cfg.min_contrast / 2))


def _draw_occluders(scene: _Scene, cfg: SyntheticDetectionConfig) -> None:
    rng = scene.rng
    for _ in range(int(rng.integers(cfg.occluders[0], cfg.occluders[1] + 1))):
        region = scene.polyline(_random_polyline(rng, cfg), rng.uniform(0.7, 2.5))
        if region.area and scene.visible_ok(region, cfg.min_visible):
            scene.paint(region, -1, scene.colour_for(region, cfg.min_contrast))


def draw_detection_scene(rng: np.random.Generator, cfg: SyntheticDetectionConfig | None = None) -> SyntheticScene:
    """Draw one synthetic detection scene (see the module docstring); the same ``rng`` state gives the same scene."""
    cfg = cfg or SyntheticDetectionConfig()
    if min(cfg.height, cfg.width) < 32:
        raise ValueError(f"Synthetic detection scenes need at least 32 x 32 pixels, got {cfg.height} x {cfg.width}")
    scene = _Scene(rng, cfg)
    _draw_clutter(scene, cfg)
    ids, kinds = [], []
    for _ in range(int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))):
        kind = int(rng.integers(len(SYNTHETIC_CLASSES)))
        if _place_object(scene, kind, cfg, len(ids) + 1):
            ids.append(len(ids) + 1)
            kinds.append(kind)
    _draw_occluders(scene, cfg)

    s = scene.s
    image = cv2.resize(scene.hi, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
    sigma = rng.uniform(*cfg.blur_sigma)
    if sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma))
    image = image + rng.normal(0, rng.uniform(*cfg.noise_std), image.shape).astype(np.float32)
    boxes, coverage = [], []
    for k in ids:
        win_rows, win_cols = scene.windows[k]
        own = np.zeros((scene.h, scene.w), np.float32)
        own[win_rows, win_cols] = scene.owner[win_rows, win_cols] == k
        rows, cols = np.nonzero(own[win_rows, win_cols])
        rows, cols = rows + win_rows.start, cols + win_cols.start
        boxes.append([cols.min() / s, rows.min() / s, (cols.max() + 1) / s, (rows.max() + 1) / s])
        coverage.append(cv2.resize(own, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA))
    return SyntheticScene(
        image=(np.clip(image, 0, 1) * 255).round().astype(np.uint8),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(kinds, np.int64),
        coverage=np.asarray(coverage, np.float32).reshape(-1, cfg.height, cfg.width),
    )


# ----------------------------------------------------------------------------- sets and streams
def _config(size: int | tuple[int, int], config: SyntheticDetectionConfig | None) -> SyntheticDetectionConfig:
    height, width = (size, size) if isinstance(size, int) else size
    return replace(config or SyntheticDetectionConfig(), height=int(height), width=int(width))


def synthetic_detection_set(
    num_images: int, size: int | tuple[int, int] = 128, seed: int = 0, config: SyntheticDetectionConfig | None = None
) -> DetectionSet:
    """``num_images`` synthetic scenes held in memory as a :class:`DetectionSet` (records with ``image`` pixels).

    Image ``i`` depends on ``(seed, i)`` only, so a larger set extends a smaller one; use different
    seeds for training and validation sets. ``size`` is ``int`` or ``(height, width)``.
    """
    cfg = _config(size, config)
    records = []
    for i in range(num_images):
        scene = draw_detection_scene(np.random.default_rng([seed, i, _SET_SALT]), cfg)
        records.append(DetectionRecord(path=None, width=cfg.width, height=cfg.height, boxes=scene.boxes,
                                       labels=scene.labels, image=scene.image, image_id=i))
    return DetectionSet(records, list(SYNTHETIC_CLASSES), source=f"synthetic shapes, seed {seed}, {cfg.height}x{cfg.width}")


def write_synthetic_coco(
    folder: str | Path, num_images: int, size: int | tuple[int, int] = 128, seed: int = 0, name: str = "train",
    config: SyntheticDetectionConfig | None = None,
) -> Path:
    """Write a synthetic set as ``folder/<name>/000000.png ...`` and ``folder/<name>.json`` (COCO); returns the JSON path."""
    folder = Path(folder)
    images = folder / name
    images.mkdir(parents=True, exist_ok=True)
    dataset = synthetic_detection_set(num_images, size, seed, config)
    for record in dataset.records:
        record.path = images / f"{int(record.image_id):06d}.png"
        Image.fromarray(record.image).save(record.path)
    coco = detection_set_to_coco(dataset, image_root=images)
    json_path = folder / f"{name}.json"
    json_path.write_text(json.dumps(coco))
    return json_path


def write_synthetic_dataset(
    folder: str | Path, num_train: int, num_val: int, size: int | tuple[int, int] = 128, seed: int = 0,
    config: SyntheticDetectionConfig | None = None,
) -> Path:
    """Write train (``seed``) and val (``seed + 1``) synthetic COCO sets and their ``data.yaml``; returns the YAML path."""
    folder = Path(folder)
    write_synthetic_coco(folder, num_train, size, seed, "train", config)
    write_synthetic_coco(folder, num_val, size, seed + 1, "val", config)
    names = ", ".join(SYNTHETIC_CLASSES)
    text = (
        "# detkd synthetic shapes detection set (detkd.data.detection.write_synthetic_dataset)\n"
        f"format: coco\nnames: [{names}]\n"
        "train: {annotations: train.json, images: train}\n"
        "val: {annotations: val.json, images: val}\n"
    )
    path = folder / "data.yaml"
    path.write_text(text)
    return path


class SyntheticDetectionStream(StreamDataset):
    """Endless stream of fresh synthetic scenes, in :class:`~detkd.data.detection.DetectionStream`'s sample format.

    Sample ``k`` is a new scene drawn from ``(seed, k)``, flipped left-right with probability
    ``hflip``; no other augmentation (every scene is new).
    """

    def __init__(
        self, size: int | tuple[int, int] = 128, seed: int = 0, config: SyntheticDetectionConfig | None = None,
        max_boxes: int = 100, hflip: float = 0.5,
    ) -> None:
        super().__init__(seed)
        self.config = _config(size, config)
        if self.config.height % 128 or self.config.width % 128:
            raise ValueError(f"Stream size must be multiples of 128, got {self.config.height} x {self.config.width}")
        if self.config.objects[1] > max_boxes:
            raise ValueError(f"objects up to {self.config.objects[1]} do not fit max_boxes={max_boxes}")
        self.max_boxes = max_boxes
        self.hflip = hflip
        self.class_names = list(SYNTHETIC_CLASSES)

    def num_items(self) -> int:
        return 1  # nothing to shuffle: every sample is its own scene

    def make_sample(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        import torch

        scene = draw_detection_scene(rng, self.config)
        image, boxes = scene.image.astype(np.float32) / 255.0, scene.boxes
        if rng.random() < self.hflip:
            image = image[:, ::-1]
            boxes = np.stack([self.config.width - boxes[:, 2], boxes[:, 1], self.config.width - boxes[:, 0], boxes[:, 3]], 1)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": tensor, **pad_targets(boxes.reshape(-1, 4), scene.labels, self.max_boxes)}
