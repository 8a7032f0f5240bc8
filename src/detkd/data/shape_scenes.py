"""The kinds of scene of :mod:`detkd.data.synthetic_shapes`: one drawer per kind, and the background.

Each drawer paints analytic regions on a :class:`~detkd.data.shape_canvas.Canvas` and registers
the corners that its kind defines (see the module doc of :mod:`detkd.data.synthetic_shapes`);
:data:`DRAWERS` maps a kind's name to its drawer.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import cv2
import numpy as np

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

MIN_CONTRAST = 0.25  #: minimum intensity difference between a shape and what it is drawn on


# ============================================================================ background
def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
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


def _cells_well_shaped(cells: np.ndarray, size: int) -> bool:
    """Whether every ``(N, 4, 2)`` quadrilateral of a tiling is reasonable: sides at least
    ``max(6, 0.05 * size)`` px, angles in [35, 145] degrees."""
    sides = np.linalg.norm(np.roll(cells, -1, axis=1) - cells, axis=2)
    angles = np.concatenate([vertex_angles(c) for c in cells])
    return bool(sides.min() >= max(6.0, 0.05 * size) and angles.min() >= 35 and angles.max() <= 145)


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
        cells = np.stack([pts[:-1, :-1], pts[:-1, 1:], pts[1:, 1:], pts[1:, :-1]], axis=2).reshape(-1, 4, 2)
        if _cells_well_shaped(cells, size):
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
        if _cells_well_shaped(cells, size):
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


DRAWERS: dict[str, Callable[[Canvas, np.random.Generator, float], None]] = {
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
