"""Shared drawing helpers: images and points as arrays, a figure sized for an image, saving.

Figures are bare :class:`matplotlib.figure.Figure` objects on the Agg canvas: no ``pyplot``, no
global backend, no display. Image and point conventions are those of :mod:`detkd.viz.plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ArrayLike = Any  # numpy array or torch tensor


def title_height_in(lines: int) -> float:
    """Inches kept above the image for ``lines`` lines of a 10-point title."""
    return 0.1 + 0.2 * lines


def to_numpy(value: ArrayLike) -> np.ndarray:
    """``value`` (numpy array or torch tensor, any device) as a numpy array."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def as_image(image: ArrayLike, name: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` float array in ``[0, 1]``."""
    array = to_numpy(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(f"{name} must be (H, W) grey or (H, W, 3) colour, got shape {to_numpy(image).shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if array.size and np.nanmax(array) > 1.0:
        array = array / 255.0
    return np.clip(array, 0.0, 1.0)


def as_points(points: ArrayLike, name: str) -> np.ndarray:
    """``(N, 2)`` float64 ``(x, y)`` pixel coordinates; a ValueError naming ``name`` otherwise."""
    array = to_numpy(points).astype(np.float64)
    if array.size == 0:
        return np.zeros((0, 2))
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be (N, 2) pixel coordinates (x, y), got shape {array.shape}")
    return array


def figure_for(width_px: int, height_px: int, title_lines: int = 1, colorbar: bool = False) -> Figure:
    """A figure whose image area keeps the image aspect, 6 to 16 inches wide."""
    width_in = min(max(width_px / 80.0, 6.0), 16.0)
    image_width_in = width_in * (0.86 if colorbar else 1.0)
    height_in = image_width_in * height_px / max(width_px, 1) + title_height_in(title_lines)
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def show(ax: Any, image: np.ndarray) -> None:
    """Draw ``image`` on ``ax`` pixel for pixel, without axes."""
    height, width = image.shape[:2]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()


def is_number(value: Any) -> bool:
    """An int or float, Python or numpy (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (``.png`` added when ``path`` has no suffix), making folders; the path written."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    return path
