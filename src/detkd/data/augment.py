"""Photometric and geometric augmentation of grey images (NumPy / OpenCV, for data workers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from detkd.geometry.homography import HomographyConfig, sample_homography


@dataclass
class PhotometricConfig:
    """Random photometric changes; each is applied with probability ``probability``."""

    probability: float = 0.5
    brightness: float = 0.2  # additive shift, max absolute, in [0, 1] intensity units
    contrast: tuple[float, float] = (0.6, 1.4)  # multiplicative around the mean
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.03  # max std of additive Gaussian noise
    blur_sigma: float = 1.2  # max Gaussian blur sigma, pixels
    shade: float = 0.4  # max darkening of a soft elliptic shadow


def photometric_augment(image: np.ndarray, rng: np.random.Generator, cfg: PhotometricConfig) -> np.ndarray:
    """Apply random brightness, contrast, gamma, shade, blur and noise to a ``(H, W)`` image in [0, 1]."""
    out = image.astype(np.float32, copy=True)
    p = cfg.probability

    def chance() -> bool:
        return bool(rng.random() < p)

    if chance():
        out = out + rng.uniform(-cfg.brightness, cfg.brightness)
    if chance():
        mean = float(out.mean())
        out = (out - mean) * rng.uniform(*cfg.contrast) + mean
    out = np.clip(out, 0.0, 1.0)
    if chance():
        out = out ** rng.uniform(*cfg.gamma)
    if chance() and cfg.shade > 0:
        h, w = out.shape
        mask = np.zeros((h, w), np.float32)
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (int(rng.uniform(w / 8, w / 2)), int(rng.uniform(h / 8, h / 2)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(axes) / 3 + 1)
        out = out * (1 - rng.uniform(0, cfg.shade) * mask)
    if chance() and cfg.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(0.1, cfg.blur_sigma)))
    if chance() and cfg.noise_std > 0:
        out = out + rng.normal(0.0, rng.uniform(0, cfg.noise_std), size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resize_to_cover(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upscale ``image`` (keeping its aspect) just enough to cover ``height x width``; never shrink."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    if scale <= 1.0:
        return image
    size = (max(width, int(np.ceil(w * scale))), max(height, int(np.ceil(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


@dataclass
class CropConfig:
    """Training views: random scale, a crop, then a random homography inside the crop."""

    height: int = 240
    width: int = 320
    scale: tuple[float, float] = (0.5, 1.0)  # zoom of the source before cropping (1: native pixels)
    homography: HomographyConfig = field(default_factory=HomographyConfig)
    homography_probability: float = 0.9


def random_view(image: np.ndarray, rng: np.random.Generator, cfg: CropConfig) -> np.ndarray:
    """A random ``(cfg.height, cfg.width)`` view of a ``(H, W)`` image: zoom, crop, warp.

    Images smaller than the view are upscaled first, never padded with black.
    """
    zoom = rng.uniform(*cfg.scale)
    h, w = image.shape
    if zoom < 1.0 and min(h * zoom, w * zoom) >= 8:
        image = cv2.resize(image, (max(1, round(w * zoom)), max(1, round(h * zoom))), interpolation=cv2.INTER_AREA)
    image = resize_to_cover(image, cfg.height, cfg.width)
    h, w = image.shape
    top = int(rng.integers(0, h - cfg.height + 1))
    left = int(rng.integers(0, w - cfg.width + 1))
    crop = image[top : top + cfg.height, left : left + cfg.width]
    if rng.random() < cfg.homography_probability:
        hom = sample_homography(cfg.height, cfg.width, rng, cfg.homography).numpy()
        crop = cv2.warpPerspective(
            crop, hom, (cfg.width, cfg.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
    return np.ascontiguousarray(crop, dtype=np.float32)
