"""Reading images from folders, robustly, and the photos that ship with scikit-image.

Every reader returns ``float32`` arrays in ``[0, 1]``: grey ``(H, W)`` or colour ``(H, W, 3)``.
A file that cannot be decoded raises :class:`ImageReadError` naming the file; folder-level
helpers skip such files with a warning and count them instead of stopping a long run.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")

#: scikit-image's bundled photos (no download), split once so that held-out photos are never
#: trained on. The stereo motorcycle pair is held out whole: its two views overlap.
BUILTIN_TRAIN_PHOTOS = (
    "astronaut", "camera", "chelsea", "coins", "moon", "page", "text", "horse",
    "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel", "retina", "cell",
)
BUILTIN_HELDOUT_PHOTOS = ("coffee", "rocket", "clock", "motorcycle_left", "motorcycle_right")


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """All image files under ``folder`` (by extension), sorted.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it holds no file with an image extension.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"Image folder '{root}' does not exist")
    if root.is_file():
        if root.suffix.lower() in IMAGE_EXTENSIONS:
            return [root]
        raise ValueError(f"'{root}' is not an image (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    pattern = "**/*" if recursive else "*"
    paths = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(
            f"No images in '{root}' (looked for {', '.join(IMAGE_EXTENSIONS)}"
            f"{' in sub-folders too' if recursive else ''})"
        )
    return paths


def read_image(path: str | Path, grey: bool = True) -> np.ndarray:
    """Decode one image file.

    Args:
        path: image file (any format Pillow reads, 8 or 16 bit).
        grey: return ``(H, W)`` luminance; else ``(H, W, 3)`` RGB.

    Returns:
        ``float32`` array in ``[0, 1]``.

    Raises:
        ImageReadError: missing, truncated, corrupt or empty file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            array = _to_float(img, grey)
    except FileNotFoundError as err:
        raise ImageReadError(f"Image '{path}' does not exist") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"Cannot read image '{path}': {err}. Replace or remove the file.") from err
    if array.size == 0 or min(array.shape[:2]) < 1:
        raise ImageReadError(f"Image '{path}' is empty ({array.shape})")
    return array


def _to_float(img: Image.Image, grey: bool) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float32)
        array = array / max(float(array.max()), 1.0) if img.mode == "I" else array / 65535.0
        return array if grey else np.repeat(array[..., None], 3, axis=-1)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float32)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
        return array if grey else np.repeat(array[..., None], 3, axis=-1)
    converted = img.convert("L" if grey else "RGB")
    return np.asarray(converted, dtype=np.float32) / 255.0


@dataclass
class ImageScan:
    """Result of reading a folder: the readable images and the files that were skipped."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.paths)} readable image(s)"
        if self.skipped:
            text += f", {len(self.skipped)} skipped: " + ", ".join(p.name for p, _ in self.skipped[:5])
            text += " ..." if len(self.skipped) > 5 else ""
        return text


def scan_images(folder: str | Path) -> ImageScan:
    """Check that every image under ``folder`` decodes; unreadable files are skipped with a warning.

    Raises:
        ValueError: the folder holds no readable image at all.
    """
    scan = ImageScan()
    for path in list_images(folder):
        try:
            with Image.open(path) as img:
                img.verify()  # cheap header + structure check
            with Image.open(path) as img:
                img.load()  # catches truncated data that verify() lets through
        except Exception as err:  # noqa: BLE001 - any decoder failure means "skip this file"
            reason = f"{type(err).__name__}: {err}"
            warnings.warn(f"Skipping unreadable image '{path}': {reason}", stacklevel=2)
            scan.skipped.append((path, reason))
            continue
        scan.paths.append(path)
    if not scan.paths:
        raise ValueError(
            f"No readable image in '{folder}': all {len(scan.skipped)} file(s) failed to decode "
            f"(first: {scan.skipped[0][0]}: {scan.skipped[0][1]})"
        )
    return scan


def builtin_photo(name: str, grey: bool = True) -> np.ndarray:
    """One of scikit-image's bundled photos as ``float32`` in ``[0, 1]``.

    ``motorcycle_left`` / ``motorcycle_right`` are the two views of ``stereo_motorcycle``.
    """
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb

    if name in ("motorcycle_left", "motorcycle_right"):
        image = skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"scikit-image has no photo '{name}'")
        image = loader()
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.float32)
    elif image.dtype.kind in "ui":
        image = image.astype(np.float32) / np.iinfo(image.dtype).max
    image = image.astype(np.float32)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image).astype(np.float32)
    if grey and image.ndim == 3:
        image = rgb2gray(image).astype(np.float32)
    if not grey and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.clip(image, 0.0, 1.0)


def write_builtin_photos(folder: str | Path, split: str = "train") -> list[Path]:
    """Write scikit-image's photos of one split (``train`` / ``heldout``) as PNG files.

    Returns the written paths; existing files are kept (the photos never change).
    """
    names = {"train": BUILTIN_TRAIN_PHOTOS, "heldout": BUILTIN_HELDOUT_PHOTOS}.get(split)
    if names is None:
        raise ValueError(f"split must be 'train' or 'heldout', got '{split}'")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = out / f"{name}.png"
        if not path.exists():
            Image.fromarray((builtin_photo(name) * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths
