"""Exact drawing for the synthetic shapes: a super-sampled canvas, analytic regions and the geometry
that places them (:mod:`detkd.data.synthetic_shapes` draws its scenes with these).

Each shape is an analytic region (polygon, capsule, ellipse, or a tiling mapped by a homography)
sampled at the centres of a ``SCALE x SCALE`` grid of sub-pixels inside every pixel; the image is
the mean of its sub-pixels (box anti-aliasing). Coordinates follow the detkd convention: centre of
the top-left pixel = ``(0, 0)``, pixel ``(i, j)`` spans ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np

SCALE = 4  #: sub-pixels per pixel side used for anti-aliased drawing
OCCLUSION_RADIUS = 2.5  #: pixels; a later shape this close to a corner removes it

# A painter: given sub-pixel centres (x, y) in image pixels, returns (inside mask, value(s)).
Painter = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray | float]"]


# ============================================================================ canvas
class Canvas:
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

    def paint(self, shape_id: int, bbox: Sequence[float], painter: Painter) -> None:
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

    def values_under(self, bbox: Sequence[float], painter: Painter) -> np.ndarray:
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
def inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
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


def segment_distance(x: np.ndarray, y: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    d = p1 - p0
    length2 = float(d @ d)
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / max(length2, 1e-12), 0.0, 1.0)
    return np.hypot(x - (p0[0] + t * d[0]), y - (p0[1] + t * d[1]))


def segments_distance(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> float:
    """Shortest distance between two segments (0 when they cross)."""

    def orient(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
        return float((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    if orient(a0, a1, b0) * orient(a0, a1, b1) < 0 and orient(b0, b1, a0) * orient(b0, b1, a1) < 0:
        return 0.0
    dists = [
        segment_distance(np.array(p[0]), np.array(p[1]), q0, q1)
        for p, (q0, q1) in ((a0, (b0, b1)), (a1, (b0, b1)), (b0, (a0, a1)), (b1, (a0, a1)))
    ]
    return float(min(dists))


def polygon_painter(poly: np.ndarray, colour: float) -> tuple[list[float], Painter]:
    bbox = [poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max()]
    return bbox, lambda x, y: (inside_polygon(x, y, poly), colour)


def capsule_painter(p0: np.ndarray, p1: np.ndarray, thickness: float, colour: float) -> tuple[list[float], Painter]:
    r = thickness / 2
    bbox = [min(p0[0], p1[0]) - r, min(p0[1], p1[1]) - r, max(p0[0], p1[0]) + r, max(p0[1], p1[1]) + r]
    return bbox, lambda x, y: (segment_distance(x, y, p0, p1) <= r, colour)


def ellipse_painter(centre: np.ndarray, axes: tuple[float, float], angle: float, colour: float):
    a, b = axes
    c, s = math.cos(angle), math.sin(angle)
    r = max(a, b)
    bbox = [centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r]

    def painter(x: np.ndarray, y: np.ndarray):
        dx, dy = x - centre[0], y - centre[1]
        return ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2 <= 1.0, colour

    return bbox, painter


# ============================================================================ helpers
def contrasting_grey(rng: np.random.Generator, avoid: Sequence[float] | np.ndarray, min_diff: float) -> float:
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


def vertex_angles(poly: np.ndarray) -> np.ndarray:
    """Unsigned angle in degrees at each vertex of a closed polygon, between its two edges."""
    prev = np.roll(poly, 1, axis=0) - poly
    nxt = np.roll(poly, -1, axis=0) - poly
    cos = (prev * nxt).sum(1) / (np.linalg.norm(prev, axis=1) * np.linalg.norm(nxt, axis=1) + 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def polygon_ok(poly: np.ndarray, min_edge: float, min_clearance: float,
                angle_range: tuple[float, float] = (25.0, 155.0)) -> bool:
    angles = vertex_angles(poly)
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
            d = segment_distance(np.array(poly[i, 0]), np.array(poly[i, 1]), poly[j], poly[(j + 1) % n])
            if float(d) < min_clearance:
                return False
    return True


def random_polygon(rng: np.random.Generator, centre: np.ndarray, radius: float,
                    n_range: tuple[int, int] = (3, 6), tries: int = 100) -> np.ndarray:
    """A simple (star-shaped) polygon around ``centre`` with vertices at ``[0.4, 1] * radius``."""
    min_edge = max(0.25 * radius, 4.0)
    for _ in range(tries):
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.4, 1.0, n)
        poly = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        if polygon_ok(poly, min_edge=min_edge, min_clearance=4.0):
            return poly
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3  # equilateral fallback
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 homography (float64) that maps four ``src`` points onto four ``dst`` points."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(hom: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ hom.T
    return p[:, :2] / p[:, 2:3]


def random_quad(rng: np.random.Generator, centre: np.ndarray, size: tuple[float, float],
                 jitter: float) -> np.ndarray:
    """Corners (TL, TR, BR, BL) of a rotated ``size = (w, h)`` rectangle with perspective jitter."""
    w, h = size
    base = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    theta = rng.uniform(-np.pi, np.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    base = base @ rot.T
    base = base + rng.uniform(-jitter, jitter, (4, 2)) * np.array([w, h]).mean()
    return centre + base


def grid_painter(hom_inv: np.ndarray, cell_value: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  u_max: float, v_max: float) -> Painter:
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
