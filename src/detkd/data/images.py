"""Reading images from folders, robustly, and the photos that ship with scikit-image.

Every reader returns ``float32`` arrays in ``[0, 1]``: grey ``(H, W)`` or colour ``(H, W, 3)``.
A file that cannot be decoded raises :class:`ImageReadError` naming the file; folder-level
helpers skip such files with a one-line :class:`DataWarning` and count them instead of stopping
a long run.

Every file is checked from its header before any pixel is decoded (:func:`check_image_file`):
missing, empty (0 bytes), not an image, or more than :data:`MAX_IMAGE_PIXELS` pixels.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Most pixels (width x height) of an image file detkd decodes: 100 megapixels, e.g. 10000 x 10000
#: (about 1.2 GB once decoded as float RGB). A larger file is refused from its header, before any
#: pixel is decoded (readers with ``skip_bad`` and folder scans skip it with a warning). Raise it
#: with the environment variable ``DETKD_MAX_IMAGE_PIXELS`` (e.g. ``DETKD_MAX_IMAGE_PIXELS=400000000``)
#: or by setting ``detkd.data.images.MAX_IMAGE_PIXELS``; it takes the place of Pillow's own
#: decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) for the files detkd reads.
MAX_IMAGE_PIXELS = 100_000_000
MAX_IMAGE_PIXELS_ENV = "DETKD_MAX_IMAGE_PIXELS"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")

#: scikit-image's bundled photos (no download), split once so that held-out photos are never
#: trained on. The stereo motorcycle pair is held out whole: its two views overlap.
BUILTIN_TRAIN_PHOTOS = (
    "astronaut", "camera", "chelsea", "coins", "moon", "page", "text", "horse",
    "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel", "retina", "cell",
)
BUILTIN_HELDOUT_PHOTOS = ("coffee", "rocket", "clock", "motorcycle_left", "motorcycle_right")


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file, the reason and the fix.

    Attributes:
        path: the file.
        reason: short and generic ("image file is empty (0 bytes)"), for counting skipped files.
        fix: what to do about it.
    """

    def __init__(self, path: str | Path, reason: str, fix: str = "Replace or remove the file.") -> None:
        self.path, self.reason, self.fix = Path(path), reason, fix
        super().__init__(f"Cannot read image '{path}': {reason}. {fix}")


class ImageTooLargeError(ImageReadError):
    """An image file whose header declares more pixels than the limit (checked before decoding)."""


class DataWarning(UserWarning):
    """A bad input file or entry that was skipped; printed as one line, without a source line."""


def _format_data_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning):  # noqa: ANN001
    """``DataWarning: <message>`` for data warnings (they are about the user's files, not about
    a line of detkd); every other warning keeps Python's format."""
    if isinstance(category, type) and issubclass(category, DataWarning):
        return f"DataWarning: {message}\n"
    return _default(message, category, filename, lineno, line)


if not getattr(warnings.formatwarning, "_detkd", False):
    _format_data_warning._detkd = True  # type: ignore[attr-defined]
    warnings.formatwarning = _format_data_warning


def max_image_pixels() -> int:
    """The pixel limit in force: ``$DETKD_MAX_IMAGE_PIXELS`` when set, else :data:`MAX_IMAGE_PIXELS`.

    Raises:
        ValueError: the environment variable is not a positive whole number.
    """
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV}={text!r} is not a positive number of pixels (e.g. 400000000)")
    return value


_PIL_LIMIT_LOCK = threading.Lock()


@contextmanager
def _open_without_pillow_limit(path: Path) -> Iterator[Image.Image]:
    """``Image.open(path)`` with Pillow's decompression-bomb check off: detkd checks its own limit.

    Pillow checks its limit only inside ``Image.open`` (a header read), so the switch is short.
    """
    with _PIL_LIMIT_LOCK:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    with img:
        yield img


def image_file_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` in pixels of an image file, from its header only (nothing is decoded).

    Raises:
        ImageReadError: the file is missing, empty (0 bytes), not an image, or 0 pixels wide or high.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "image file does not exist", "Fix the path or add the file.")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "image file is empty (0 bytes)", "Replace or remove the file.")
    try:
        with _open_without_pillow_limit(path) as img:
            width, height = int(img.size[0]), int(img.size[1])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"not a readable image ({err})", "Replace or remove the file.") from err
    if width < 1 or height < 1:
        raise ImageReadError(path, f"image has no pixels ({width} x {height})", "Replace or remove the file.")
    return width, height


def check_pixel_count(path: str | Path, width: int, height: int, max_pixels: int | None = None) -> None:
    """Refuse an image of more than ``max_pixels`` pixels (default: :func:`max_image_pixels`).

    Raises:
        ImageTooLargeError: names the file, its size, the limit and how to raise it.
    """
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if width * height > limit:
        raise ImageTooLargeError(
            path,
            f"image is too large ({width} x {height} = {width * height / 1e6:.1f} megapixels, "
            f"above the limit of {limit / 1e6:g} megapixels)",
            f"Downscale or tile it, or raise the limit: set {MAX_IMAGE_PIXELS_ENV}={width * height} "
            f"(or detkd.data.images.MAX_IMAGE_PIXELS).",
        )


def check_image_file(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """Check an image file from its header before anything is decoded; ``(width, height)`` in pixels.

    Args:
        path: the image file.
        max_pixels: most pixels allowed (default: :func:`max_image_pixels`).

    Raises:
        ImageReadError: missing, empty (0 bytes) or not an image (:func:`image_file_size`).
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    width, height = image_file_size(path)
    check_pixel_count(path, width, height, max_pixels)
    return width, height


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


def read_image(path: str | Path, grey: bool = True, max_pixels: int | None = None) -> np.ndarray:
    """Decode one image file (its header is checked first, see :func:`check_image_file`).

    Args:
        path: image file (any format Pillow reads, 8 or 16 bit).
        grey: return ``(H, W)`` luminance; else ``(H, W, 3)`` RGB.
        max_pixels: most pixels allowed (default: :func:`max_image_pixels`).

    Returns:
        ``float32`` array in ``[0, 1]``.

    Raises:
        ImageReadError: missing, truncated, corrupt or empty file.
        ImageTooLargeError: more than ``max_pixels`` pixels (nothing is decoded).
    """
    path = Path(path)
    check_image_file(path, max_pixels)
    try:
        with _open_without_pillow_limit(path) as img:
            img.load()
            array = _to_float(img, grey)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"the pixels cannot be decoded ({err})") from err
    if array.size == 0 or min(array.shape[:2]) < 1:
        raise ImageReadError(path, f"image is empty ({array.shape})")
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
    """Result of reading a folder: the readable images, their sizes and the files that were skipped.

    Attributes:
        paths: the readable image files.
        sizes: ``(width, height)`` in pixels of each of ``paths``.
        skipped: ``(file, reason)`` of each file left out.
    """

    paths: list[Path] = field(default_factory=list)
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.paths)} readable image(s)"
        if self.skipped:
            text += f", {len(self.skipped)} skipped: " + ", ".join(p.name for p, _ in self.skipped[:5])
            text += " ..." if len(self.skipped) > 5 else ""
        return text


def _check_decodes(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a file whose header passes :func:`check_image_file` and whose pixels decode.

    Raises:
        ImageReadError: any problem, naming the file.
    """
    size = check_image_file(path)
    try:
        with _open_without_pillow_limit(path) as img:
            img.verify()  # cheap structure check
        with _open_without_pillow_limit(path) as img:
            img.load()  # catches truncated data that verify() lets through
    except Exception as err:  # noqa: BLE001 - any decoder failure means "skip this file"
        raise ImageReadError(path, f"the pixels cannot be decoded ({type(err).__name__}: {err})") from err
    return size


def scan_images(folder: str | Path) -> ImageScan:
    """Check that every image under ``folder`` decodes; bad files are skipped with a one-line warning each.

    Bad: unreadable, empty, truncated or corrupt, or more than :func:`max_image_pixels` pixels
    (refused from the header, before decoding).

    Raises:
        ValueError: the folder holds no readable image at all.
    """
    scan = ImageScan()
    for path in list_images(folder):
        try:
            scan.sizes[path] = _check_decodes(path)
        except ImageReadError as err:
            warnings.warn(f"Skipping image '{path}': {err.reason}. {err.fix}", DataWarning, stacklevel=2)
            scan.skipped.append((path, err.reason))
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
