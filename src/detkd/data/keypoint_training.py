"""Unlabelled photos as an endless stream of augmented training views for key-point models."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from detkd.data.augment import CropConfig, PhotometricConfig, photometric_augment, random_view
from detkd.data.images import ImageScan, read_image, scan_images
from detkd.engine.task import StreamDataset

log = logging.getLogger(__name__)


class UnlabeledImageStream(StreamDataset):
    """Random views of unlabelled grey images: ``{"image": (1, H, W) float32 in [0, 1]}``.

    Args:
        images: image files, or already decoded ``(H, W)`` float arrays in ``[0, 1]``.
        crop: size and geometry of each view.
        photometric: photometric noise (``None`` disables it).
        seed: sample ``k`` depends on ``(seed, k)`` only.
        cache: keep decoded images in memory (small sets).
    """

    def __init__(
        self,
        images: Sequence[str | Path] | Sequence[np.ndarray],
        crop: CropConfig | None = None,
        photometric: PhotometricConfig | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        super().__init__(seed)
        if len(images) == 0:
            raise ValueError("No training images given")
        self.sources = list(images)
        self.crop = crop or CropConfig()
        self.photometric = photometric
        self.cache = cache
        self._decoded: dict[int, np.ndarray] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs: Any) -> tuple["UnlabeledImageStream", ImageScan]:
        """All readable images under ``folder`` (unreadable ones are skipped, with a warning)."""
        scan = scan_images(folder)
        log.info("Training images in %s: %s", folder, scan.summary())
        return cls(scan.paths, **kwargs), scan

    def num_items(self) -> int:
        return len(self.sources)

    def _image(self, item: int) -> np.ndarray:
        cached = self._decoded.get(item)
        if cached is not None:
            return cached.astype(np.float32) / 255.0 if cached.dtype == np.uint8 else cached
        source = self.sources[item]
        image = source if isinstance(source, np.ndarray) else read_image(source, grey=True)
        if image.ndim != 2:
            raise ValueError(f"Training image {item} must be a grey (H, W) array, got {image.shape}")
        if self.cache:
            self._decoded[item] = compact_pixels(image)
        return image

    def preload(self) -> None:
        """Decode every image now (with ``cache``): forked data-loader workers then share the pixels."""
        if self.cache:
            for item in range(self.num_items()):
                self._image(item)

    def make_sample(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        view = random_view(self._image(item), rng, self.crop)
        if self.photometric is not None:
            view = photometric_augment(view, rng, self.photometric)
        return {"image": torch.from_numpy(view)[None]}


def compact_pixels(image: np.ndarray) -> np.ndarray:
    """``uint8`` codes of an 8-bit image read by :func:`read_image` (``code / 255.0`` gives it back
    bit for bit); any other image unchanged."""
    if image.dtype != np.float32:
        return image
    codes = np.round(image * 255.0).clip(0, 255).astype(np.uint8)
    return codes if np.array_equal(codes.astype(np.float32) / 255.0, image) else image
