"""Image pairs with a known homography, for key-point evaluation.

Two sources:

* **synthetic pairs**: a photo, resized and cropped to a fixed size, and a second view made by
  warping it with a seeded random homography and changing its illumination
  (:func:`synthetic_pairs`, :func:`synthetic_pairs_from_folder`, :func:`builtin_heldout_pairs`);
* **HPatches** sequences on disk (:func:`hpatches_pairs`, :func:`iter_hpatches_pairs`).

Images are ``(1, H, W)`` float32 tensors in ``[0, 1]``; ``homography`` is ``(3, 3)`` float64 and
maps pixels of ``image0`` to pixels of ``image1`` (centre of the top-left pixel = ``(0, 0)``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from detkd.data.images import (
    BUILTIN_HELDOUT_PHOTOS,
    IMAGE_EXTENSIONS,
    builtin_photo,
    read_image,
    scan_images,
)
from detkd.geometry.homography import HomographyConfig, sample_homography, warp_image

log = logging.getLogger(__name__)

PAIR_KINDS = ("illumination", "viewpoint", "synthetic")

#: Sequences with images over 1600x1200, left out by D2-Net's protocol (and most papers since):
#: 52 illumination + 56 viewpoint sequences remain.
HPATCHES_LARGE_SEQUENCES = (
    "i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
    "v_artisans", "v_astronautis", "v_talent",
)
_HPATCHES_KINDS = {"i": "illumination", "v": "viewpoint"}


@dataclass
class ImagePair:
    """Two views of a planar scene and the homography between them.

    Attributes:
        name: unique, e.g. ``"v_graffiti/1-3"`` or ``"coffee/2"``.
        image0: ``(1, H0, W0)`` float32 in ``[0, 1]``.
        image1: ``(1, H1, W1)`` float32 in ``[0, 1]``.
        homography: ``(3, 3)`` float64, pixels of image 0 -> pixels of image 1.
        kind: ``"illumination"``, ``"viewpoint"`` or ``"synthetic"``.
    """

    name: str
    image0: torch.Tensor
    image1: torch.Tensor
    homography: torch.Tensor
    kind: str

    def __post_init__(self) -> None:
        for label, image in (("image0", self.image0), ("image1", self.image1)):
            if image.dim() != 3 or image.shape[0] != 1:
                raise ValueError(f"ImagePair '{self.name}': {label} must be (1, H, W), got {tuple(image.shape)}")
        if self.homography.shape != (3, 3):
            raise ValueError(
                f"ImagePair '{self.name}': homography must be (3, 3), got {tuple(self.homography.shape)}"
            )
        if self.kind not in PAIR_KINDS:
            raise ValueError(f"ImagePair '{self.name}': kind must be one of {PAIR_KINDS}, got '{self.kind}'")

    @property
    def shape0(self) -> tuple[int, int]:
        """``(height, width)`` of image 0."""
        return int(self.image0.shape[-2]), int(self.image0.shape[-1])

    @property
    def shape1(self) -> tuple[int, int]:
        """``(height, width)`` of image 1."""
        return int(self.image1.shape[-2]), int(self.image1.shape[-1])


# ---------------------------------------------------------------------- image helpers
def to_grey(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` float image -> ``(H, W)`` float32 luminance (ITU-R 601)."""
    if image.ndim == 3 and image.shape[-1] == 3:
        return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W) grey or (H, W, 3) RGB, got {image.shape}")
    return image.astype(np.float32, copy=False)


def resize_and_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale ``image`` (keeping its aspect) to cover ``size = (height, width)``, then centre-crop.

    Returns:
        ``(height, width)`` float32 array.
    """
    height, width = size
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width], dtype=np.float32)


def scale_matrix(scale_x: float, scale_y: float) -> np.ndarray:
    """``(3, 3)`` map from pixels of an image to pixels of the same image resized by
    ``(scale_x, scale_y)``, pixel centres kept aligned: ``x' = s (x + 0.5) - 0.5``."""
    return np.array(
        [[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5], [0.0, 0.0, 1.0]]
    )


def downscale_to_max_size(image: np.ndarray, max_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Shrink ``image`` so that its longer side is at most ``max_size`` pixels.

    Returns:
        The (possibly) resized image and the ``(3, 3)`` float64 map from old to new pixels
        (:func:`scale_matrix` with the exact per-axis ratios; identity when unchanged).
    """
    h, w = image.shape[:2]
    if max_size is None or max(h, w) <= max_size:
        return image, np.eye(3)
    ratio = max_size / max(h, w)
    new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return resized, scale_matrix(new_w / w, new_h / h)


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]


# ---------------------------------------------------------------------- synthetic pairs
@dataclass
class IlluminationConfig:
    """Random illumination change of a synthetic second view (drawn uniformly in the ranges).

    Applied in this order: contrast around the image mean, additive brightness, clip, gamma,
    additive Gaussian noise, clip to ``[0, 1]``.
    """

    brightness: float = 0.15  # max absolute additive change
    contrast: tuple[float, float] = (0.7, 1.3)  # multiplicative, around the mean
    gamma: tuple[float, float] = (0.7, 1.4)  # out = in ** gamma
    noise_std: tuple[float, float] = (0.0, 0.02)  # Gaussian noise standard deviation


def change_illumination(
    image: np.ndarray, rng: np.random.Generator, config: IlluminationConfig | None = None
) -> np.ndarray:
    """Seeded brightness / contrast / gamma / noise change of a ``(H, W)`` image in ``[0, 1]``.

    Returns:
        ``(H, W)`` float32 in ``[0, 1]``.
    """
    cfg = config or IlluminationConfig()
    contrast = rng.uniform(*cfg.contrast)
    brightness = rng.uniform(-cfg.brightness, cfg.brightness)
    gamma = rng.uniform(*cfg.gamma)
    noise_std = rng.uniform(*cfg.noise_std)
    mean = float(image.mean())
    out = np.clip((image - mean) * contrast + mean + brightness, 0.0, 1.0) ** gamma
    out = out + rng.normal(0.0, noise_std, size=image.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _pair_generators(seed: int, image_index: int, pair_index: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for the homography and the illumination of one pair."""
    streams = np.random.SeedSequence([seed, image_index, pair_index]).spawn(2)
    return tuple(np.random.default_rng(stream) for stream in streams)


def synthetic_pairs(
    images: Sequence[tuple[str, np.ndarray]],
    pairs_per_image: int = 5,
    size: tuple[int, int] = (240, 320),
    seed: int = 0,
    homography_config: HomographyConfig | None = None,
    photometric: bool = True,
    illumination_config: IlluminationConfig | None = None,
) -> list[ImagePair]:
    """Pairs made by warping each image with known random homographies.

    Each image is resized and centre-cropped to ``size = (height, width)`` (image 0); image 1
    is image 0 warped by a homography from :func:`detkd.geometry.homography.sample_homography`
    and, if ``photometric``, given a random illumination change. Pair ``k`` of image ``i`` is
    drawn from generators seeded by ``(seed, i, k)`` only: the same arguments always give
    identical pairs, and turning ``photometric`` off leaves the homographies unchanged.

    Args:
        images: ``(name, array)`` with arrays ``(H, W)`` grey or ``(H, W, 3)`` RGB, float in ``[0, 1]``.

    Returns:
        ``len(images) * pairs_per_image`` pairs of kind ``"synthetic"`` named ``"{name}/{k}"``.
    """
    if pairs_per_image < 1:
        raise ValueError(f"pairs_per_image must be >= 1, got {pairs_per_image}")
    height, width = size
    pairs = []
    for image_index, (name, array) in enumerate(images):
        image0 = resize_and_crop(to_grey(np.asarray(array)), (height, width))
        tensor0 = _as_tensor(image0)
        for pair_index in range(pairs_per_image):
            geometry_rng, light_rng = _pair_generators(seed, image_index, pair_index)
            homography = sample_homography(height, width, geometry_rng, homography_config)
            warped = warp_image(tensor0[None].double(), homography)[0, 0].numpy()
            warped = np.clip(warped, 0.0, 1.0)
            if photometric:
                warped = change_illumination(warped, light_rng, illumination_config)
            pairs.append(
                ImagePair(f"{name}/{pair_index}", tensor0, _as_tensor(warped), homography, "synthetic")
            )
    return pairs


def synthetic_pairs_from_folder(folder: str | Path, **kwargs) -> list[ImagePair]:
    """:func:`synthetic_pairs` on every readable image under ``folder`` (unreadable files are
    skipped with a warning). Names are the paths relative to ``folder`` without extension."""
    root = Path(folder)
    scan = scan_images(root)
    log.info("Synthetic pairs from %s: %s", root, scan.summary())
    base = root if root.is_dir() else root.parent
    images = [
        (path.relative_to(base).with_suffix("").as_posix(), read_image(path, grey=True))
        for path in scan.paths
    ]
    return synthetic_pairs(images, **kwargs)


def builtin_heldout_pairs(names: Iterable[str] = BUILTIN_HELDOUT_PHOTOS, **kwargs) -> list[ImagePair]:
    """:func:`synthetic_pairs` on scikit-image's held-out photos (never used for training)."""
    return synthetic_pairs([(name, builtin_photo(name, grey=True)) for name in names], **kwargs)


# ---------------------------------------------------------------------- HPatches
def read_homography_file(path: str | Path) -> np.ndarray:
    """A ``(3, 3)`` float64 homography from a text file of 3 rows of 3 numbers.

    Raises:
        FileNotFoundError / ValueError: missing or malformed file (the message names it).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": checked below
            matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"Malformed homography file '{path}': {err}") from err
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        raise ValueError(
            f"Malformed homography file '{path}': expected 3 rows of 3 numbers, got shape {matrix.shape}"
        )
    return matrix


def _find_image(sequence: Path, index: int) -> Path:
    for extension in (".ppm",) + IMAGE_EXTENSIONS:
        candidate = sequence / f"{index}{extension}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"HPatches sequence '{sequence.name}' has no image {index}.ppm (in {sequence})")


def _hpatches_sequences(root: Path, kinds: Iterable[str], exclude: Iterable[str]) -> list[Path]:
    prefixes = []
    for kind in kinds:
        short = kind[:1].lower()
        if short not in _HPATCHES_KINDS or kind not in (short, _HPATCHES_KINDS[short]):
            raise ValueError(f"HPatches kinds are 'i' / 'illumination' and 'v' / 'viewpoint', got '{kind}'")
        prefixes.append(f"{short}_")
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches folder '{root}' does not exist")
    excluded = set(exclude)
    sequences = sorted(
        path for path in root.iterdir()
        if path.is_dir() and path.name.startswith(tuple(prefixes)) and path.name not in excluded
    )
    if not sequences:
        raise ValueError(
            f"No HPatches sequence ({', '.join(p + '*' for p in prefixes)} folders) in '{root}'"
        )
    return sequences


def iter_hpatches_pairs(
    root: str | Path,
    max_size: int | None = 640,
    kinds: Iterable[str] = ("i", "v"),
    exclude: Iterable[str] = HPATCHES_LARGE_SEQUENCES,
) -> Iterator[ImagePair]:
    """Lazily yield the pairs of :func:`hpatches_pairs`, one sequence in memory at a time."""
    for sequence in _hpatches_sequences(Path(root), kinds, exclude):
        kind = _HPATCHES_KINDS[sequence.name[0]]
        image0, scale0 = downscale_to_max_size(read_image(_find_image(sequence, 1)), max_size)
        tensor0 = _as_tensor(image0)
        for index in range(2, 7):
            h_path = sequence / f"H_1_{index}"
            if not h_path.is_file():
                raise FileNotFoundError(
                    f"HPatches sequence '{sequence.name}' lacks homography file 'H_1_{index}' ({h_path})"
                )
            homography = read_homography_file(h_path)
            image1, scale1 = downscale_to_max_size(read_image(_find_image(sequence, index)), max_size)
            homography = scale1 @ homography @ np.linalg.inv(scale0)
            yield ImagePair(
                f"{sequence.name}/1-{index}", tensor0, _as_tensor(image1), torch.from_numpy(homography), kind
            )


def hpatches_pairs(
    root: str | Path,
    max_size: int | None = 640,
    kinds: Iterable[str] = ("i", "v"),
    exclude: Iterable[str] = HPATCHES_LARGE_SEQUENCES,
) -> list[ImagePair]:
    """The HPatches-sequences pairs ``(1, k)``, ``k = 2..6``, of every sequence under ``root``.

    Layout: ``root/{i,v}_<name>/{1..6}.ppm`` and ``H_1_2`` .. ``H_1_6`` (3x3 text, image 1 ->
    image k). Images are read grey; when ``max_size`` is set, each image is shrunk so its longer
    side is at most ``max_size`` pixels and the homography is adjusted exactly:
    ``H' = S_k H S_1^-1`` with the pixel-centre scale maps of :func:`scale_matrix`.

    Args:
        kinds: ``"i"`` (illumination) and/or ``"v"`` (viewpoint).
        exclude: sequence names to skip; by default the 8 over-sized ones D2-Net drops
            (:data:`HPATCHES_LARGE_SEQUENCES`), pass ``()`` to keep all.

    Raises:
        FileNotFoundError: missing folder, image or homography file (named).
        ValueError: no sequence, or a malformed homography file (named).
    """
    return list(iter_hpatches_pairs(root, max_size=max_size, kinds=kinds, exclude=exclude))
