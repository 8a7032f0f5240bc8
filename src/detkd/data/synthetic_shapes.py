"""SYNTHETIC SHAPES: procedurally drawn grey images whose corners are known exactly.

This is the data set on which SuperPoint's detector ("MagicPoint") learns what a corner is
before it ever sees a photo (DeTone et al. 2018). Every image is drawn on the fly from a
seed; nothing is read from disk.

Drawing is exact rather than left to a rasteriser's edge rules: each shape is an analytic
region (polygon, capsule, ellipse, or a tiling mapped by a homography) that is sampled at the
centres of a ``SCALE x SCALE`` grid of sub-pixels inside every pixel; the image is the mean of
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
comes within :data:`OCCLUSION_RADIUS` pixels of it (hidden or disturbed), or when it lies
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

SCALE = 4  #: sub-pixels per pixel side used for anti-aliased drawing
OCCLUSION_RADIUS = 2.5  #: pixels; a later shape this close to a corner removes it
MIN_CONTRAST = 0.25  #: minimum intensity difference between a shape and what it is drawn on

# A painter: given sub-pixel centres (x, y) in image pixels, returns (inside mask, value(s)).
_Painter = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray | float]"]


# ============================================================================ canvas
class _Canvas:
    """Super-sampled drawing surface that remembers which shape owns each sub-pixel."""

    def __init__(self, background: np.ndarray, scale: int = SCALE) -> None:
        h, w = background.shape
        self.height, self.width, self.scale = h, w, scale
        self.hi = cv2.resize(background.astype(np.float32), (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
        self.owner = np.zeros((h * scale, w * scale), np.int32)  # 0 = background
        # sub-pixel centre -> image pixel coordinate: x = (X - (s - 1) / 2) / s
        self.xs = (np.arange(w * scale, dtype=np.float64) - (scale - 1) / 2) / scale
        self.ys = (np.arange(h * scale, dtype=np.float64) - (scale - 1) / 2) / scale
        self.corners: list[tuple[int, np.ndarray]] = []
        self._next_id = 1

    def new_shape(self) -> int:
        shape_id = self._next_id
        self._next_id += 1
        return shape_id

    def _window(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
        s = self.scale
        c0 = max(int(math.floor(x0 * s + (s - 1) / 2)) - 1, 0)
        c1 = min(int(math.ceil(x1 * s + (s - 1) / 2)) + 2, self.width * s)
        r0 = max(int(math.floor(y0 * s + (s - 1) / 2)) - 1, 0)
        r1 = min(int(math.ceil(y1 * s + (s - 1) / 2)) + 2, self.height * s)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def paint(self, shape_id: int, bbox: Sequence[float], painter: _Painter) -> None:
        """Paint the region ``painter`` describes inside ``bbox = (x0, y0, x1, y1)`` (pixels)."""
        win = self._window(*bbox)
        if win is None:
            return
        rows, cols = win
        x, y = np.meshgrid(self.xs[cols], self.ys[rows])
        mask, value = painter(x, y)
        if not mask.any():
            return
        patch = self.hi[rows, cols]
        patch[mask] = value[mask] if isinstance(value, np.ndarray) else value
        self.owner[rows, cols][mask] = shape_id

    def add_corners(self, shape_id: int, corners: np.ndarray) -> None:
        corners = np.asarray(corners, np.float64).reshape(-1, 2)
        if len(corners):
            self.corners.append((shape_id, corners))

    def values_under(self, bbox: Sequence[float], painter: _Painter) -> np.ndarray:
        """Current values of the sub-pixels that ``painter`` would cover (to choose a contrasting colour)."""
        win = self._window(*bbox)
        if win is None:
            return np.zeros(0, np.float32)
        rows, cols = win
        x, y = np.meshgrid(self.xs[cols], self.ys[rows])
        mask, _ = painter(x, y)
        return self.hi[rows, cols][mask]

    def visible_corners(self, radius: float = OCCLUSION_RADIUS) -> np.ndarray:
        """``(N, 2)`` corners inside the image and not touched by a later shape within ``radius``."""
        kept = []
        s = self.scale
        rad = radius * s
        for shape_id, corners in self.corners:
            for x, y in corners:
                if not (-0.5 <= x <= self.width - 0.5 and -0.5 <= y <= self.height - 0.5):
                    continue
                cx, cy = x * s + (s - 1) / 2, y * s + (s - 1) / 2
                r0, r1 = max(int(cy - rad), 0), min(int(cy + rad) + 2, self.height * s)
                c0, c1 = max(int(cx - rad), 0), min(int(cx + rad) + 2, self.width * s)
                rr, cc = np.mgrid[r0:r1, c0:c1]
                near = (rr - cy) ** 2 + (cc - cx) ** 2 <= rad**2
                if np.any(self.owner[r0:r1, c0:c1][near] > shape_id):
                    continue
                kept.append((x, y))
        return np.asarray(kept, np.float64).reshape(-1, 2)

    def render(self) -> np.ndarray:
        """Box-filter the sub-pixels down to the ``(H, W)`` image."""
        return cv2.resize(self.hi, (self.width, self.height), interpolation=cv2.INTER_AREA)


# ============================================================================ region tests
def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule for points ``(x, y)`` and a simple polygon ``(N, 2)``."""
    inside = np.zeros(x.shape, bool)
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        crosses = (y0 > y) != (y1 > y)
        if y1 == y0:
            continue
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


def _segment_distance(x: np.ndarray, y: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    d = p1 - p0
    length2 = float(d @ d)
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / max(length2, 1e-12), 0.0, 1.0)
    return np.hypot(x - (p0[0] + t * d[0]), y - (p0[1] + t * d[1]))


def _segments_distance(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> float:
    """Shortest distance between two segments (0 when they cross)."""

    def orient(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
        return float((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    if orient(a0, a1, b0) * orient(a0, a1, b1) < 0 and orient(b0, b1, a0) * orient(b0, b1, a1) < 0:
        return 0.0
    dists = [
        _segment_distance(np.array(p[0]), np.array(p[1]), q0, q1)
        for p, (q0, q1) in ((a0, (b0, b1)), (a1, (b0, b1)), (b0, (a0, a1)), (b1, (a0, a1)))
    ]
    return float(min(dists))


def _polygon_painter(poly: np.ndarray, colour: float) -> tuple[list[float], _Painter]:
    bbox = [poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max()]
    return bbox, lambda x, y: (_inside_polygon(x, y, poly), colour)


def _capsule_painter(p0: np.ndarray, p1: np.ndarray, thickness: float, colour: float) -> tuple[list[float], _Painter]:
    r = thickness / 2
    bbox = [min(p0[0], p1[0]) - r, min(p0[1], p1[1]) - r, max(p0[0], p1[0]) + r, max(p0[1], p1[1]) + r]
    return bbox, lambda x, y: (_segment_distance(x, y, p0, p1) <= r, colour)


def _ellipse_painter(centre: np.ndarray, axes: tuple[float, float], angle: float, colour: float):
    a, b = axes
    c, s = math.cos(angle), math.sin(angle)
    r = max(a, b)
    bbox = [centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r]

    def painter(x: np.ndarray, y: np.ndarray):
        dx, dy = x - centre[0], y - centre[1]
        return ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2 <= 1.0, colour

    return bbox, painter


# ============================================================================ helpers
def _colour(rng: np.random.Generator, avoid: Sequence[float] | np.ndarray, min_diff: float) -> float:
    """A grey level in [0, 1] at least ``min_diff`` from every value in ``avoid`` (best effort)."""
    avoid = np.unique(np.round(np.asarray(avoid, np.float64).ravel(), 2))  # at most 101 levels
    if avoid.size == 0:
        return float(rng.uniform(0, 1))
    candidates = rng.uniform(0, 1, 64)
    gaps = np.abs(candidates[:, None] - avoid[None, :]).min(axis=1)
    ok = np.flatnonzero(gaps >= min_diff)
    if len(ok):
        return float(candidates[ok[0]])
    # fall back to the extreme that is furthest from everything
    ends = np.array([0.0, 1.0])
    return float(ends[np.argmax(np.abs(ends[:, None] - avoid[None, :]).min(axis=1))])


def _vertex_angles(poly: np.ndarray) -> np.ndarray:
    """Unsigned angle in degrees at each vertex of a closed polygon, between its two edges."""
    prev = np.roll(poly, 1, axis=0) - poly
    nxt = np.roll(poly, -1, axis=0) - poly
    cos = (prev * nxt).sum(1) / (np.linalg.norm(prev, axis=1) * np.linalg.norm(nxt, axis=1) + 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _polygon_ok(poly: np.ndarray, min_edge: float, min_clearance: float,
                angle_range: tuple[float, float] = (25.0, 155.0)) -> bool:
    angles = _vertex_angles(poly)
    if angles.min() < angle_range[0] or angles.max() > angle_range[1]:
        return False
    edges = np.linalg.norm(np.roll(poly, -1, axis=0) - poly, axis=1)
    if edges.min() < min_edge:
        return False
    n = len(poly)
    for i in range(n):  # vertex far enough from every edge that does not touch it
        for j in range(n):
            if j == i or (j + 1) % n == i:
                continue
            d = _segment_distance(np.array(poly[i, 0]), np.array(poly[i, 1]), poly[j], poly[(j + 1) % n])
            if float(d) < min_clearance:
                return False
    return True


def _random_polygon(rng: np.random.Generator, centre: np.ndarray, radius: float,
                    n_range: tuple[int, int] = (3, 6), tries: int = 100) -> np.ndarray:
    """A simple (star-shaped) polygon around ``centre`` with vertices at ``[0.4, 1] * radius``."""
    min_edge = max(0.25 * radius, 4.0)
    for _ in range(tries):
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.4, 1.0, n)
        poly = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        if _polygon_ok(poly, min_edge=min_edge, min_clearance=4.0):
            return poly
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3  # equilateral fallback
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 homography (float64) that maps four ``src`` points onto four ``dst`` points."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _apply_h(hom: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ hom.T
    return p[:, :2] / p[:, 2:3]


def _random_quad(rng: np.random.Generator, centre: np.ndarray, size: tuple[float, float],
                 jitter: float) -> np.ndarray:
    """Corners (TL, TR, BR, BL) of a rotated ``size = (w, h)`` rectangle with perspective jitter."""
    w, h = size
    base = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    theta = rng.uniform(-np.pi, np.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    base = base @ rot.T
    base = base + rng.uniform(-jitter, jitter, (4, 2)) * np.array([w, h]).mean()
    return centre + base


def _grid_painter(hom_inv: np.ndarray, cell_value: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  u_max: float, v_max: float) -> _Painter:
    """Paint a tiling defined in canonical ``(u, v)`` coordinates, mapped to the image by ``inv(hom_inv)``."""

    def painter(x: np.ndarray, y: np.ndarray):
        pts = np.stack([x.ravel(), y.ravel()], axis=1)
        p = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ hom_inv.T
        z = p[:, 2]
        u = (p[:, 0] / z).reshape(x.shape)
        v = (p[:, 1] / z).reshape(x.shape)
        inside = (u >= 0) & (u < u_max) & (v >= 0) & (v < v_max) & (z.reshape(x.shape) > 0)
        values = np.zeros(x.shape, np.float32)
        values[inside] = cell_value(u[inside], v[inside])
        return inside, values

    return painter


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
def _paint_polygon(canvas: _Canvas, rng: np.random.Generator, poly: np.ndarray, bg: float) -> None:
    """Paint ``poly`` (``(N, 2)`` pixels) as a new shape in a colour that stands out from what it covers."""
    sid = canvas.new_shape()
    bbox, painter = _polygon_painter(poly, 0.0)
    colour = _colour(rng, np.append(canvas.values_under(bbox, painter), bg), MIN_CONTRAST)
    canvas.paint(sid, *_polygon_painter(poly, colour))
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


def _draw_polygon(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)
    radius = rng.uniform(0.2, 0.45) * size
    centre = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
    _paint_polygon(canvas, rng, _random_polygon(rng, centre, radius), bg)


def _draw_multiple_polygons(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)

    def sample() -> tuple[np.ndarray, float]:
        radius = rng.uniform(0.1, 0.22) * size
        return np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h]), radius

    for centre, radius in _separate_discs(int(rng.integers(2, 6)), sample):
        _paint_polygon(canvas, rng, _random_polygon(rng, centre, radius), bg)


def _draw_lines(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
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
        if any(_segments_distance(p0, p1, q0, q1) < (thickness + t) / 2 + 4.0 for q0, q1, t in placed):
            continue
        placed.append((p0, p1, thickness))
        sid = canvas.new_shape()
        bbox, painter = _capsule_painter(p0, p1, thickness, 0.0)
        colour = _colour(rng, np.append(canvas.values_under(bbox, painter), bg), MIN_CONTRAST)
        canvas.paint(sid, *_capsule_painter(p0, p1, thickness, colour))
        canvas.add_corners(sid, np.stack([p0, p1]))


def _draw_star(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
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
    colour = _colour(rng, [bg], MIN_CONTRAST + 0.05)
    for end in ends:
        canvas.paint(sid, *_capsule_painter(centre, end, thickness, colour))
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


def _draw_checkerboard(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)
    for _ in range(100):
        cols, rows = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        cell = rng.uniform(0.08, 0.16) * size
        centre = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h])
        quad = _random_quad(rng, centre, (cols * cell, rows * cell), jitter=0.1)
        src = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows]], np.float64)
        hom = _homography_from_points(src, quad)
        uu, vv = np.meshgrid(np.arange(cols + 1), np.arange(rows + 1))
        grid = np.stack([uu.ravel(), vv.ravel()], 1).astype(np.float64)
        pts = _apply_h(hom, grid).reshape(rows + 1, cols + 1, 2)
        # every cell a reasonable quadrilateral: sides >= 6 px, angles in [35, 145] degrees
        cells = np.stack([pts[:-1, :-1], pts[:-1, 1:], pts[1:, 1:], pts[1:, :-1]], axis=2).reshape(-1, 4, 2)
        sides = np.linalg.norm(np.roll(cells, -1, axis=1) - cells, axis=2)
        angles = np.concatenate([_vertex_angles(c) for c in cells])
        if sides.min() >= max(6.0, 0.05 * size) and angles.min() >= 35 and angles.max() <= 145:
            break
    a, b = _two_tones(rng, bg)
    sid = canvas.new_shape()

    def value(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        parity = (np.floor(u).astype(np.int64) + np.floor(v).astype(np.int64)) % 2
        return np.where(parity == 0, a, b).astype(np.float32)

    bbox = [pts[..., 0].min(), pts[..., 1].min(), pts[..., 0].max(), pts[..., 1].max()]
    canvas.paint(sid, bbox, _grid_painter(np.linalg.inv(hom), value, cols, rows))
    canvas.add_corners(sid, pts.reshape(-1, 2))


def _draw_stripes(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
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
        quad = _random_quad(rng, centre, (k * stripe, height), jitter=0.08)
        src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
        hom = _homography_from_points(src, quad)
        top = _apply_h(hom, np.stack([bounds, np.zeros_like(bounds)], 1))
        bottom = _apply_h(hom, np.stack([bounds, np.ones_like(bounds)], 1))
        cells = np.stack([top[:-1], top[1:], bottom[1:], bottom[:-1]], axis=1)
        sides = np.linalg.norm(np.roll(cells, -1, axis=1) - cells, axis=2)
        angles = np.concatenate([_vertex_angles(c) for c in cells])
        if sides.min() >= max(6.0, 0.05 * size) and angles.min() >= 35 and angles.max() <= 145:
            break
    a, b = _two_tones(rng, bg)
    sid = canvas.new_shape()

    def value(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        index = np.searchsorted(bounds, u, side="right") - 1
        return np.where(index % 2 == 0, a, b).astype(np.float32)

    both = np.vstack([top, bottom])
    bbox = [both[:, 0].min(), both[:, 1].min(), both[:, 0].max(), both[:, 1].max()]
    canvas.paint(sid, bbox, _grid_painter(np.linalg.inv(hom), value, 1.0, 1.0))
    canvas.add_corners(sid, both)


def _draw_cube(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
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
        angles = np.concatenate([_vertex_angles(q) for q in quads])
        spread = np.linalg.norm(corners[:, None] - corners[None], axis=-1) + np.eye(len(corners)) * 1e9
        if angles.min() >= 30 and angles.max() <= 150 and spread.min() >= max(6.0, 0.05 * size):
            break
    tones: list[float] = []
    for _ in range(3):
        tones.append(_colour(rng, [bg, *tones], 0.2))
    sid = canvas.new_shape()
    for quad, tone in zip(quads, tones):
        canvas.paint(sid, *_polygon_painter(quad, tone))
    canvas.add_corners(sid, corners)


def _draw_ellipses(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
    h, w = canvas.height, canvas.width
    size = min(h, w)

    def sample() -> tuple[np.ndarray, float, float]:
        a = rng.uniform(0.06, 0.22) * size  # semi-axes: the disc's radius is the major one
        b = a * rng.uniform(0.4, 1.0)
        return np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h]), a, b

    for centre, a, b in _separate_discs(int(rng.integers(1, 5)), sample):
        angle = rng.uniform(0, np.pi)
        sid = canvas.new_shape()
        colour = _colour(rng, [bg], MIN_CONTRAST + 0.05)
        canvas.paint(sid, *_ellipse_painter(centre, (a, b), angle, colour))


def _draw_nothing(canvas: _Canvas, rng: np.random.Generator, bg: float) -> None:
    return None


_DRAWERS: dict[str, Callable[[_Canvas, np.random.Generator, float], None]] = {
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
    canvas = _Canvas(background)
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
