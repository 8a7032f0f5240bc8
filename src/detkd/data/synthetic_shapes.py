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

Kinds of scene (:data:`SHAPE_KINDS`) and what counts as a corner:

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
``min_contrast`` in intensity. The finished image gets a light Gaussian blur and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from detkd.data.augment import PhotometricConfig, photometric_augment
from detkd.data.shape_canvas import (
    Canvas,
    apply_homography,
    capsule_painter,
    contrasting_grey,
    ellipse_painter,
    grid_painter,
    homography_from_points,
    polygon_painter,
    random_polygon,
    random_quad,
    segments_distance,
    vertex_angles,
)
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

MIN_CONTRAST = 0.25  #: minimum intensity difference between a shape and what it is drawn on

# ============================================================================ background
def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smoothed random noise with a random mean and a small, random contrast."""
    size = min(height, width)
    mean = rng.uniform(0.1, 0.9)
    noise = rng.standard_normal((height, width)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=float(rng.uniform(0.02, 0.08) * size))
    noise /= float(noise.std()) + 1e-6
    amplitude = rng.uniform(0.0, 0.06)
    return np.clip(mean + amplitude * noise, 0.0, 1.0).astype(np.float32)


# ============================================================================ shapes
def _paint_polygon(canvas: Canvas, rng: np.random.Generator, poly: np.ndarray, bg: float) -> None:
    """Paint ``poly`` (``(N, 2)`` pixels) as a new shape in a colour that stands out from what it covers."""
    sid = canvas.new_shape()
    bbox, painter = polygon_painter(poly, 0.0)
    colour = contrasting_grey(rng, np.append(canvas.values_under(bbox, painter), bg), MIN_CONTRAST)
    canvas.paint(sid, *polygon_painter(poly, colour))
    canvas.add_corners(sid, poly)


def _separate_discs(target: int, sample: Callable[[], tuple], gap: float = 4.0) -> Iterator[tuple]:
    """Yield up to ``target`` draws of ``sample`` whose discs stay at least ``gap`` px apart.

    ``sample()`` returns ``(centre (2,) pixels, radius pixels, *anything else)``; a draw whose
    disc comes closer than ``gap`` to one already yielded is drawn again, up to ``30 * target``
    draws in all. The caller draws its own random values between two yields.
    """
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(30 * target):
        if len(placed) == target:
            break
        drawn = sample()
        centre, radius = drawn[0], drawn[1]
        if any(np.linalg.norm(centre - c) < radius + r + gap for c, r in placed):
            continue
        placed.append((centre, radius))
        yield drawn


def _draw_polygon(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)
    radius = rng.uniform(0.2, 0.45) * size
    centre = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
    _paint_polygon(canvas, rng, random_polygon(rng, centre, radius), bg)


def _draw_multiple_polygons(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)

    def sample() -> tuple[np.ndarray, float]:
        radius = rng.uniform(0.1, 0.22) * size
        return np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h]), radius

    for centre, radius in _separate_discs(int(rng.integers(2, 6)), sample):
        _paint_polygon(canvas, rng, random_polygon(rng, centre, radius), bg)


def _draw_lines(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)
    placed: list[tuple[np.ndarray, np.ndarray, float]] = []
    target = int(rng.integers(1, 6))
    for _ in range(30 * target):
        if len(placed) == target:
            break
        p0 = np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h])
        length = rng.uniform(0.2, 0.6) * size
        angle = rng.uniform(0, 2 * np.pi)
        p1 = p0 + length * np.array([math.cos(angle), math.sin(angle)])
        thickness = rng.uniform(1.0, max(1.5, 0.03 * size))
        if any(segments_distance(p0, p1, q0, q1) < (thickness + t) / 2 + 4.0 for q0, q1, t in placed):
            continue
        placed.append((p0, p1, thickness))
        sid = canvas.new_shape()
        bbox, painter = capsule_painter(p0, p1, thickness, 0.0)
        colour = contrasting_grey(rng, np.append(canvas.values_under(bbox, painter), bg), MIN_CONTRAST)
        canvas.paint(sid, *capsule_painter(p0, p1, thickness, colour))
        canvas.add_corners(sid, np.stack([p0, p1]))


def _draw_star(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)
    centre = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h])
    n = int(rng.integers(3, 7))
    for _ in range(100):  # rays at least 30 degrees apart
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        gaps = np.diff(np.append(angles, angles[0] + 2 * np.pi))
        if gaps.min() >= np.radians(30):
            break
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.arange(n) * 2 * np.pi / n
    lengths = rng.uniform(0.2, 0.45, n) * size
    ends = centre + lengths[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    thickness = rng.uniform(1.0, max(1.5, 0.025 * size))
    sid = canvas.new_shape()
    colour = contrasting_grey(rng, [bg], MIN_CONTRAST + 0.05)
    for end in ends:
        canvas.paint(sid, *capsule_painter(centre, end, thickness, colour))
    canvas.add_corners(sid, np.vstack([centre[None], ends]))


def _two_tones(rng: np.random.Generator, bg: float) -> tuple[float, float]:
    """Two grey levels that differ from each other and from the background."""
    for _ in range(100):
        a, b = rng.uniform(0, 1, 2)
        if abs(a - b) >= 0.35 and abs(a - bg) >= 0.2 and abs(b - bg) >= 0.2:
            return float(a), float(b)
    far = 0.0 if bg > 0.5 else 1.0  # bg near the middle: one tone on each side
    near = 0.0 if far == 1.0 else 1.0
    return (far, near) if abs(near - bg) >= 0.2 else (far, (bg + far) / 2)


def _draw_checkerboard(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)
    for _ in range(100):
        cols, rows = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        cell = rng.uniform(0.08, 0.16) * size
        centre = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h])
        quad = random_quad(rng, centre, (cols * cell, rows * cell), jitter=0.1)
        src = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], np.float64)
        hom = homography_from_points(src, quad)
        uu, vv = np.meshgrid(np.arange(cols + 1), np.arange(rows + 1))
        grid = np.stack([uu.ravel(), vv.ravel()], 1).astype(np.float64)
        pts = apply_homography(hom, grid).reshape(rows + 1, cols + 1, 2)
        # every cell a reasonable quadrilateral: sides >= 6 px, angles in [35, 145] degrees
        cells = np.stack([pts[:-1, :-1], pts[:-1, 1:], pts[1:, 1:], pts[1:, :-1]], axis=2).reshape(-1, 4, 2)
        sides = np.linalg.norm(np.roll(cells, -1, axis=1) - cells, axis=2)
        angles = np.concatenate([vertex_angles(c) for c in cells])
        if sides.min() >= max(6.0, 0.05 * size) and angles.min() >= 35 and angles.max() <= 145:
            break
    a, b = _two_tones(rng, bg)
    sid = canvas.new_shape()

    def value(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        parity = (np.floor(u).astype(np.int64) + np.floor(v).astype(np.int64)) % 2
        return np.where(parity == 0, a, b).astype(np.float32)

    bbox = [pts[..., 0].min(), pts[..., 1].min(), pts[..., 0].max(), pts[..., 1].max()]
    canvas.paint(sid, bbox, grid_painter(np.linalg.inv(hom), value, cols, rows))
    canvas.add_corners(sid, pts.reshape(-1, 2))


def _draw_stripes(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)
    for _ in range(100):
        k = int(rng.integers(3, 9))
        widths = rng.uniform(0.6, 1.4, k)
        bounds = np.concatenate([[0.0], np.cumsum(widths)])
        bounds /= bounds[-1]
        stripe = rng.uniform(0.07, 0.13) * size
        height = rng.uniform(0.3, 0.8) * size
        centre = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h])
        quad = random_quad(rng, centre, (k * stripe, height), jitter=0.08)
        src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
        hom = homography_from_points(src, quad)
        top = apply_homography(hom, np.stack([bounds, np.zeros_like(bounds)], 1))
        bottom = apply_homography(hom, np.stack([bounds, np.ones_like(bounds)], 1))
        cells = np.stack([top[:-1], top[1:], bottom[1:], bottom[:-1]], axis=1)
        sides = np.linalg.norm(np.roll(cells, -1, axis=1) - cells, axis=2)
        angles = np.concatenate([vertex_angles(c) for c in cells])
        if sides.min() >= max(6.0, 0.05 * size) and angles.min() >= 35 and angles.max() <= 145:
            break
    a, b = _two_tones(rng, bg)
    sid = canvas.new_shape()

    def value(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        index = np.searchsorted(bounds, u, side="right") - 1
        return np.where(index % 2 == 0, a, b).astype(np.float32)

    both = np.vstack([top, bottom])
    bbox = [both[:, 0].min(), both[:, 1].min(), both[:, 0].max(), both[:, 1].max()]
    canvas.paint(sid, bbox, grid_painter(np.linalg.inv(hom), value, 1.0, 1.0))
    canvas.add_corners(sid, both)


def _draw_cube(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)
    # the three faces +x, +y, +z, each as 4 vertices in cyclic order, in cube coordinates
    faces = [
        [(1, -1, -1), (1, 1, -1), (1, 1, 1), (1, -1, 1)],
        [(-1, 1, -1), (1, 1, -1), (1, 1, 1), (-1, 1, 1)],
        [(-1, -1, 1), (1, -1, 1), (1, 1, 1), (-1, 1, 1)],
    ]
    faces_3d = 0.5 * np.asarray(faces, np.float64)  # (3, 4, 3)
    visible = 0.5 * np.array(
        [(1, 1, 1), (1, -1, -1), (1, 1, -1), (1, -1, 1), (-1, 1, -1), (-1, 1, 1), (-1, -1, 1)], np.float64
    )
    for _ in range(100):
        view = rng.uniform(0.35, 1.0, 3)
        view /= np.linalg.norm(view)  # towards the viewer; every +face is seen
        helper = np.array([1.0, 0.0, 0.0]) if abs(view[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        u = np.cross(view, helper)
        u /= np.linalg.norm(u)
        v = np.cross(view, u)
        roll = rng.uniform(-np.pi, np.pi)
        u, v = math.cos(roll) * u + math.sin(roll) * v, -math.sin(roll) * u + math.cos(roll) * v
        edge = rng.uniform(0.3, 0.5) * size
        centre = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h])
        project = lambda p: centre + edge * np.stack([p @ u, p @ v], axis=-1)  # noqa: E731
        quads = project(faces_3d)
        corners = project(visible)
        angles = np.concatenate([vertex_angles(q) for q in quads])
        spread = np.linalg.norm(corners[:, None] - corners[None], axis=-1) + np.eye(len(corners)) * 1e9
        if angles.min() >= 30 and angles.max() <= 150 and spread.min() >= max(6.0, 0.05 * size):
            break
    tones: list[float] = []
    for _ in range(3):
        tones.append(contrasting_grey(rng, [bg, *tones], 0.2))
    sid = canvas.new_shape()
    for quad, tone in zip(quads, tones):
        canvas.paint(sid, *polygon_painter(quad, tone))
    canvas.add_corners(sid, corners)


def _draw_ellipses(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)

    def sample() -> tuple[np.ndarray, float, float]:
        a = rng.uniform(0.06, 0.22) * size  # semi-axes: the disc's radius is the major one
        b = a * rng.uniform(0.4, 1.0)
        return np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h]), a, b

    for centre, a, b in _separate_discs(int(rng.integers(1, 5)), sample):
        angle = rng.uniform(0, np.pi)
        sid = canvas.new_shape()
        colour = contrasting_grey(rng, [bg], MIN_CONTRAST + 0.05)
        canvas.paint(sid, *ellipse_painter(centre, (a, b), angle, colour))


def _draw_nothing(canvas: Canvas, rng: np.random.Generator, bg: float) -> None:
    return None


_DRAWERS: dict[str, Callable[[Canvas, np.random.Generator, float], None]] = {
    "lines": _draw_lines,
    "polygon": _draw_polygon,
    "multiple_polygons": _draw_multiple_polygons,
    "star": _draw_star,
    "checkerboard": _draw_checkerboard,
    "stripes": _draw_stripes,
    "cube": _draw_cube,
    "ellipses": _draw_ellipses,
    "background": _draw_nothing,
}


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
    unknown = [k for k in names if k not in _DRAWERS]
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
    background = _background(rng, int(height), int(width))
    canvas = Canvas(background)
    _DRAWERS[kind](canvas, rng, float(background.mean()))
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
