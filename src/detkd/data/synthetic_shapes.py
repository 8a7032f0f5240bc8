"""SYNTHETIC SHAPES: procedurally drawn grey images whose corners are known exactly.

This is the data set on which SuperPoint's detector ("MagicPoint") learns what a corner is
before it ever sees a photo (DeTone et al. 2018). Every image is drawn on the fly from a
seed; nothing is read from disk.

Drawing is exact rather than left to a rasteriser's edge rules: each shape is an analytic
region (polygon, capsule, ellipse, or a tiling mapped by a homography) that is sampled at the
centres of a ``SCALE x SCALE`` grid (:mod:`detkd.data.shape_canvas`) of sub-pixels inside every pixel; the image is the mean of
its sub-pixels (box anti-aliasing). A pixel therefore shows the fraction of its area that
the shape covers, and a corner stored at ``(x, y)`` is where the drawn edges meet, under the
detkd convention (centre of the top-left pixel = ``(0, 0)``, pixel ``(i, j)`` spans
``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``). Stored corners are sub-pixel ``float32``.

Kinds of scene (:data:`SHAPE_KINDS`, drawn by :mod:`detkd.data.shape_scenes`) and what counts as a corner:

* ``lines``: 1-5 thick segments with round caps that neither cross nor touch; both end points.
* ``polygon``: one simple polygon of 3-6 vertices; its vertices.
* ``multiple_polygons``: 2-5 small polygons that do not overlap; their vertices.
* ``star``: 3-6 thick rays from a centre; the centre and the ray ends.
* ``checkerboard``: a 2-tone board under a random perspective; every grid vertex
  (inner X-junctions, T-junctions on the rim, L-corners at the ends).
* ``stripes``: parallel stripes of random widths in a perspective quad; where the stripe
  boundaries meet the top and bottom edges of the quad.
* ``cube``: an orthographic view of a cube with its three visible faces in three grey levels;
  the 7 visible vertices (the hidden back vertex is not a corner).
* ``ellipses``: 1-4 non-overlapping ellipses; no corners.
* ``background``: background only; no corners.

Shapes in one scene are placed so that they do not cross (a crossing makes an unlabelled
junction). On top of that, a corner is removed when any shape drawn *after* its own one
comes within :data:`~detkd.data.shape_canvas.OCCLUSION_RADIUS` pixels of it (hidden or disturbed), or when it lies
outside the image. Backgrounds are smoothed noise of random mean and contrast; every shape
differs from the background (and touching shapes from each other) by at least
:data:`~detkd.data.shape_scenes.MIN_CONTRAST` in intensity. The finished image gets a light Gaussian blur and noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from detkd.data.augment import PhotometricConfig, photometric_augment
from detkd.data.shape_canvas import Canvas
from detkd.data.shape_scenes import DRAWERS, random_background
from detkd.engine.task import StreamDataset
from detkd.geometry.homography import HomographyConfig, points_inside, sample_homography, warp_image, warp_points

SHAPE_KINDS: tuple[str, ...] = (
    "lines",
    "polygon",
    "multiple_polygons",
    "star",
    "checkerboard",
    "stripes",
    "cube",
    "ellipses",
    "background",
)

def _normalise_kinds(kinds: Sequence[str] | Mapping[str, float] | str | None) -> tuple[list[str], np.ndarray]:
    if kinds is None:
        names, weights = list(SHAPE_KINDS), np.ones(len(SHAPE_KINDS))
    elif isinstance(kinds, str):
        names, weights = [kinds], np.ones(1)
    elif isinstance(kinds, Mapping):
        names, weights = list(kinds), np.asarray([float(kinds[k]) for k in kinds], np.float64)
    else:
        names, weights = list(kinds), np.ones(len(kinds))
    if not names:
        raise ValueError("kinds is empty; choose from " + ", ".join(SHAPE_KINDS))
    unknown = [k for k in names if k not in DRAWERS]
    if unknown:
        raise ValueError(f"Unknown synthetic shape kind(s) {unknown}; choose from {', '.join(SHAPE_KINDS)}")
    if np.any(weights < 0) or weights.sum() <= 0 or not np.all(np.isfinite(weights)):
        raise ValueError(f"kind weights must be >= 0 with a positive sum, got {dict(zip(names, weights))}")
    return names, weights / weights.sum()


# ============================================================================ public API
def draw_synthetic_shape(
    rng: np.random.Generator,
    height: int = 120,
    width: int = 160,
    kinds: Sequence[str] | Mapping[str, float] | str | None = None,
    blur_sigma: tuple[float, float] = (0.3, 0.9),
    noise_std: tuple[float, float] = (0.0, 0.02),
    return_kind: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, str]:
    """Draw one synthetic scene and its corners.

    Args:
        rng: NumPy generator; the same state gives the same scene.
        height, width: image size in pixels (at least 32 each).
        kinds: which kinds to draw from (see :data:`SHAPE_KINDS`): a name, a list (uniform) or
            ``{name: weight}``; ``None`` = all, uniformly.
        blur_sigma: range of the final Gaussian blur, pixels (``(0, 0)`` disables it).
        noise_std: range of the std of the final additive Gaussian noise.
        return_kind: also return the kind that was drawn.

    Returns:
        ``image``: ``(H, W)`` float32 grey in ``[0, 1]``;
        ``corners``: ``(N, 2)`` float32 sub-pixel ``(x, y)`` pixel coordinates of the visible
        corners (``N`` may be 0); and the kind's name if ``return_kind``.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if int(height) < 32 or int(width) < 32:
        raise ValueError(f"Synthetic shapes need an image of at least 32x32 pixels, got {height}x{width}")
    names, probs = _normalise_kinds(kinds)
    kind = names[int(rng.choice(len(names), p=probs))]
    background = random_background(rng, int(height), int(width))
    canvas = Canvas(background)
    DRAWERS[kind](canvas, rng, float(background.mean()))
    image = canvas.render()
    corners = canvas.visible_corners()
    sigma = rng.uniform(*blur_sigma)
    if sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma))
    std = rng.uniform(*noise_std)
    if std > 0:
        image = image + rng.normal(0.0, std, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    corners = corners.astype(np.float32)
    return (image, corners, kind) if return_kind else (image, corners)


def keypoints_to_map(keypoints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, 2)`` sub-pixel ``(x, y)`` -> ``(H, W)`` float map with 1 at each nearest pixel.

    A point goes to pixel ``(floor(y + 0.5), floor(x + 0.5))`` (halves round up), clamped into
    the image; points outside ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` are ignored.
    """
    if keypoints.dim() != 2 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be (N, 2), got {tuple(keypoints.shape)}")
    out = torch.zeros(height, width, dtype=torch.float32)
    kp = keypoints[points_inside(keypoints, height, width)]
    if len(kp):
        cols = torch.floor(kp[:, 0] + 0.5).long().clamp(0, width - 1)
        rows = torch.floor(kp[:, 1] + 0.5).long().clamp(0, height - 1)
        out[rows, cols] = 1.0
    return out


@dataclass
class SyntheticShapesConfig:
    """What :class:`SyntheticShapesDataset` draws and how it augments it."""

    height: int = 120
    width: int = 160
    kinds: Any = None  # see draw_synthetic_shape
    homography: HomographyConfig | None = None  # warp magnitudes; None: HomographyConfig() defaults
    homography_probability: float = 0.0  # share of samples warped (0: never, 1: always)
    photometric: PhotometricConfig | None = None  # None: no photometric augmentation
    valid_border: int = 2  # pixels eroded from the warped image's valid area
    max_keypoints: int = 256  # length of the padded `keypoints` tensor


class SyntheticShapesDataset(StreamDataset):
    """Endless stream of synthetic shapes with corner labels; item ``k`` depends on ``(seed, k)`` only.

    Each item is a dict:

    * ``image``: ``(1, H, W)`` float32 in ``[0, 1]``;
    * ``keypoint_map``: ``(H, W)`` float32, 1 at the pixel nearest each corner (see
      :func:`keypoints_to_map`), else 0;
    * ``valid_mask``: ``(H, W)`` float32, 1 where the (warped) image has content, eroded by
      ``valid_border`` pixels; all ones for a sample that is not warped;
    * ``keypoints``: ``(max_keypoints, 2)`` float32 sub-pixel ``(x, y)``, zero padded, and
      ``num_keypoints``: ``()`` int64, the number of real rows;
    * ``homography``: ``(3, 3)`` float32 map from the drawn scene to ``image`` (identity when
      not warped); ``kind``: the scene's kind.

    A share ``homography_probability`` of the samples is warped by a random homography
    (:func:`~detkd.geometry.homography.sample_homography` with ``homography``); the corners move
    with the image and those that leave it are dropped. ``photometric`` (if not ``None``) is
    applied after the warp. The scene, the homography and the photometric changes come from
    three separate random streams, so turning augmentation on or off does not change which scene item ``k`` shows.

    Args:
        config: a :class:`SyntheticShapesConfig`; keyword arguments override its fields.
        seed: the stream's seed.
    """

    def __init__(self, config: SyntheticShapesConfig | None = None, seed: int = 0, **overrides: Any) -> None:
        super().__init__(seed)
        cfg = config or SyntheticShapesConfig()
        bad = set(overrides) - set(SyntheticShapesConfig.__dataclass_fields__)
        if bad:
            raise ValueError(
                f"Unknown SyntheticShapesDataset option(s) {sorted(bad)}; "
                f"valid: {sorted(SyntheticShapesConfig.__dataclass_fields__)}"
            )
        cfg = SyntheticShapesConfig(**{**cfg.__dict__, **overrides})
        if cfg.height < 32 or cfg.width < 32:
            raise ValueError(f"height and width must be >= 32, got {cfg.height}x{cfg.width}")
        if cfg.max_keypoints < 1:
            raise ValueError(f"max_keypoints must be >= 1, got {cfg.max_keypoints}")
        if cfg.valid_border < 0:
            raise ValueError(f"valid_border must be >= 0, got {cfg.valid_border}")
        if not 0.0 <= cfg.homography_probability <= 1.0:
            raise ValueError(f"homography_probability must be in [0, 1], got {cfg.homography_probability}")
        _normalise_kinds(cfg.kinds)  # fail now, not in a worker
        self.config = cfg

    def num_items(self) -> int:
        return 1  # nothing to shuffle: every sample is drawn from its own seed

    def make_sample(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.config
        h, w = cfg.height, cfg.width
        seeds = rng.integers(0, 2**63 - 1, size=3)
        scene_rng, geo_rng, photo_rng = (np.random.default_rng(int(s)) for s in seeds)
        image_np, corners_np, kind = draw_synthetic_shape(scene_rng, h, w, cfg.kinds, return_kind=True)
        image = torch.from_numpy(image_np)
        corners = torch.from_numpy(corners_np)
        hom = torch.eye(3, dtype=torch.float64)
        valid = torch.ones(h, w, dtype=torch.float32)
        if geo_rng.random() < cfg.homography_probability:
            hom = sample_homography(h, w, geo_rng, cfg.homography or HomographyConfig())
            image = warp_image(image[None, None], hom)[0, 0].clamp(0, 1)
            ones = warp_image(torch.ones(1, 1, h, w), hom)[0, 0]
            valid_np = (ones > 0.99).numpy().astype(np.uint8)
            if cfg.valid_border > 0:
                r = cfg.valid_border
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
                valid_np = cv2.erode(valid_np, kernel, borderType=cv2.BORDER_REPLICATE)
            valid = torch.from_numpy(valid_np.astype(np.float32))
            if len(corners):
                corners = warp_points(corners.double(), hom).float()
                corners = corners[points_inside(corners, h, w)]
        if cfg.photometric is not None:
            image = torch.from_numpy(photometric_augment(image.numpy(), photo_rng, cfg.photometric))
        n = min(len(corners), cfg.max_keypoints)
        padded = torch.zeros(cfg.max_keypoints, 2, dtype=torch.float32)
        padded[:n] = corners[:n]
        return {
            "image": image[None].float().contiguous(),
            "keypoint_map": keypoints_to_map(corners[:n], h, w),
            "valid_mask": valid,
            "keypoints": padded,
            "num_keypoints": torch.tensor(n, dtype=torch.int64),
            "homography": hom.float(),
            "kind": kind,
        }
