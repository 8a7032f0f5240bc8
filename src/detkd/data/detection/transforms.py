"""Geometric views and colour jitter for detection: boxes move with the pixels.

Images here are ``(H, W, 3)`` RGB arrays (``uint8`` sources, ``float32`` in ``[0, 1]`` results);
boxes are ``(M, 4)`` ``xyxy`` float pixels in the continuous frame where the image spans
``[0, W] x [0, H]`` (see :mod:`detkd.data.detection.records`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Pad colour: the ImageNet mean, which the detectors' normalisation maps to zero.
PAD_VALUE = (0.485, 0.456, 0.406)


@dataclass
class BoxViewConfig:
    """Random scale, placement and flips of a training view.

    ``scale`` is the zoom relative to the letterbox fit (1.0: the whole image just fits the
    output, as at evaluation); it is drawn log-uniformly. Above 1 the view is a random crop,
    below 1 the image sits at a random place on a padded canvas.
    """

    scale: tuple[float, float] = (0.5, 1.5)
    hflip: float = 0.5  # probability of a left-right flip
    vflip: float = 0.0  # probability of an up-down flip (aerial images: 0.5)
    min_visible: float = 0.3  # a box keeping less of its area inside the view is dropped
    min_size: float = 2.0  # pixels: a box narrower or lower than this in the view is dropped


@dataclass
class ColourJitterConfig:
    """Random photometric changes; each is applied with probability ``probability``."""

    probability: float = 0.5
    brightness: float = 0.15  # additive shift, max absolute, intensity units of [0, 1]
    contrast: tuple[float, float] = (0.7, 1.3)  # multiplicative, around the mean
    saturation: tuple[float, float] = (0.6, 1.4)  # 0: grey, 1: unchanged
    channel_gain: float = 0.1  # max relative change of each RGB channel (white balance / hue)
    blur_sigma: float = 1.0  # max Gaussian blur sigma, pixels
    noise_std: float = 0.03  # max std of additive Gaussian noise


def _resize(image: np.ndarray, width: int, height: int, scale: float) -> np.ndarray:
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _paste(canvas: np.ndarray, patch: np.ndarray, left: int, top: int) -> None:
    """Write ``patch`` into ``canvas`` with its top-left at ``(left, top)``, clipped to the canvas."""
    h, w = canvas.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + patch.shape[1], w), min(top + patch.shape[0], h)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]


def _canvas(height: int, width: int, dtype: np.dtype) -> np.ndarray:
    pad = np.asarray(PAD_VALUE, np.float32)
    if dtype == np.uint8:
        pad = (pad * 255).round()
    return np.broadcast_to(pad.astype(dtype), (height, width, 3)).copy()


def transform_boxes(
    boxes: np.ndarray, scale_xy: tuple[float, float], shift_xy: tuple[float, float], width: int, height: int,
    min_visible: float = 0.0, min_size: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``X' = X * sx + tx`` (same for y), clipped to ``[0, width] x [0, height]``.

    Returns the kept boxes and the ``(M,)`` bool mask of kept input rows: a box is kept when at
    least ``min_visible`` of its (scaled) area and a side of ``min_size`` pixels remain inside.
    """
    sx, sy = scale_xy
    tx, ty = shift_xy
    moved = boxes.astype(np.float32) * np.array([sx, sy, sx, sy], np.float32) + np.array([tx, ty, tx, ty], np.float32)
    clipped = np.stack(
        [moved[:, 0].clip(0, width), moved[:, 1].clip(0, height), moved[:, 2].clip(0, width), moved[:, 3].clip(0, height)],
        axis=1,
    ).reshape(-1, 4)
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    full = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    visible = np.divide(bw * bh, full, out=np.zeros_like(full), where=full > 0)
    keep = (bw > 0) & (bh > 0) & (visible >= min_visible) & (bw >= min_size) & (bh >= min_size)
    return clipped[keep], keep


def random_box_view(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, height: int, width: int, cfg: BoxViewConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random ``height x width`` view of ``image`` with its boxes.

    Args:
        image: ``(h, w, 3)`` uint8 (or float32) RGB.
        boxes: ``(M, 4)`` xyxy pixels of ``image``.
        rng: the sample's generator.
        height, width: output size, pixels.
        cfg: zoom range, flips and the box-keeping rule.

    Returns:
        ``view``: ``(height, width, 3)`` float32 in ``[0, 1]``; ``boxes``: ``(M', 4)`` xyxy pixels
        of the view; ``keep``: ``(M,)`` bool, which input boxes survived (to select their labels).
    """
    h, w = image.shape[:2]
    fit = min(height / h, width / w)
    lo, hi = cfg.scale
    scale = fit * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    out_w, out_h = w * scale, h * scale
    # view pixel X = source X * scale - offset; offsets range over every placement that keeps
    # the view inside the scaled image (crop), or the image inside the view (pad)
    offset_x = rng.uniform(min(0.0, out_w - width), max(0.0, out_w - width))
    offset_y = rng.uniform(min(0.0, out_h - height), max(0.0, out_h - height))
    # resize only the source pixels that the view shows
    x0 = max(0, int(math.floor(offset_x / scale)))
    y0 = max(0, int(math.floor(offset_y / scale)))
    x1 = min(w, int(math.ceil((offset_x + width) / scale)))
    y1 = min(h, int(math.ceil((offset_y + height) / scale)))
    new_w, new_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    sx, sy = new_w / (x1 - x0), new_h / (y1 - y0)  # exact scales of the resize below
    left, top = int(round(x0 * scale - offset_x)), int(round(y0 * scale - offset_y))
    canvas = _canvas(height, width, image.dtype)
    _paste(canvas, _resize(image[y0:y1, x0:x1], new_w, new_h, scale), left, top)
    view = canvas.astype(np.float32) / 255.0 if image.dtype == np.uint8 else canvas.astype(np.float32)
    out_boxes, keep = transform_boxes(
        boxes, (sx, sy), (left - x0 * sx, top - y0 * sy), width, height, cfg.min_visible, cfg.min_size
    )
    if rng.random() < cfg.hflip:
        view = view[:, ::-1]
        out_boxes = np.stack([width - out_boxes[:, 2], out_boxes[:, 1], width - out_boxes[:, 0], out_boxes[:, 3]], 1)
    if rng.random() < cfg.vflip:
        view = view[::-1]
        out_boxes = np.stack([out_boxes[:, 0], height - out_boxes[:, 3], out_boxes[:, 2], height - out_boxes[:, 1]], 1)
    return np.ascontiguousarray(view), out_boxes.reshape(-1, 4).astype(np.float32), keep


def colour_jitter(image: np.ndarray, rng: np.random.Generator, cfg: ColourJitterConfig) -> np.ndarray:
    """Random brightness, contrast, saturation, channel gains, blur and noise of an ``(H, W, 3)`` float image in [0, 1]."""
    out = image.astype(np.float32, copy=True)

    def chance() -> bool:
        return bool(rng.random() < cfg.probability)

    if chance():
        out += rng.uniform(-cfg.brightness, cfg.brightness)
    if chance():
        mean = float(out.mean())
        out = (out - mean) * rng.uniform(*cfg.contrast) + mean
    if chance():
        grey = out.mean(axis=2, keepdims=True)
        out = grey + (out - grey) * rng.uniform(*cfg.saturation)
    if chance() and cfg.channel_gain > 0:
        out *= (1.0 + rng.uniform(-cfg.channel_gain, cfg.channel_gain, size=3)).astype(np.float32)
    out = np.clip(out, 0.0, 1.0)
    if chance() and cfg.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(0.1, cfg.blur_sigma)))
    if chance() and cfg.noise_std > 0:
        out = out + rng.normal(0.0, rng.uniform(0, cfg.noise_std), size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def letterbox(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize ``image`` to fit ``height x width`` (aspect kept), top-left aligned, pad the rest.

    Returns the ``(height, width, 3)`` float32 view in ``[0, 1]`` and the exact ``(sx, sy)``
    scales (view pixels per source pixel); source boxes map as ``X' = X * sx``, ``Y' = Y * sy``.
    """
    h, w = image.shape[:2]
    scale = min(height / h, width / w)
    new_w, new_h = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    canvas = _canvas(height, width, image.dtype)
    _paste(canvas, _resize(image, new_w, new_h, scale), 0, 0)
    view = canvas.astype(np.float32) / 255.0 if image.dtype == np.uint8 else canvas.astype(np.float32)
    return view, (new_w / w, new_h / h)
