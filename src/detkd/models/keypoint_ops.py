"""The SuperPoint family's tensor operations around the network: input handling (grey, scale),
the flat-region gate, heatmap, NMS, key-point selection, sub-pixel refinement and descriptor
sampling. :class:`detkd.models.superpoint.SuperPoint` runs them in ``forward`` and ``extract``;
distillation, evaluation and export call them directly.

Key points are ``(x, y)`` pixel coordinates, the centre of the top-left pixel being ``(0, 0)``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F

CELL = 8  # pixels per cell side; every encoder downsamples by 8 (three 2x2 poolings or stride-2 convs)


def to_grey(image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB -> ``(B, 1, H, W)`` luminance (ITU-R 601); grey passes through."""
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must be (B, 1, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    if image.shape[1] == 3:
        weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        image = (image * weights).sum(1, keepdim=True)
    return image


def check_input_scale(scale: Any) -> float:
    """``input_scale`` as a float; an error naming the option unless it is a number in ``[0.25, 4]``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.25 <= float(scale) <= 4:
        raise ValueError(f"input_scale must be a number between 0.25 and 4 (1: the image as it is), got {scale!r}")
    return float(scale)


def input_size_multiple(scale: float) -> int | None:
    """The side multiple (pixels) that stays a whole number of 8-pixel cells once resized by ``scale``.

    ``scale = p / q`` in lowest terms with ``q`` 1, 2, 4 or 8 (whole factors, halves, quarters,
    eighths: exact in binary, so every runtime computes the same size) gives ``8 q``: 8 for 2,
    16 for 1.5, 32 for 1.25. Any other factor gives ``None``.
    """
    fraction = Fraction(float(scale)).limit_denominator(CELL)
    if float(fraction) != float(scale) or fraction.denominator not in (1, 2, 4, 8):
        return None
    return CELL * fraction.denominator


def scale_input(image: torch.Tensor, scale: float) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resize ``(B, C, H, W)`` images by ``scale`` (bilinear, pixel centres aligned).

    Returns:
        The ``(B, C, round(s H), round(s W))`` images (the input itself when ``scale`` is 1) and
        the exact per-axis factors ``(new W / W, new H / H)`` for :func:`unscale_keypoints`.
    """
    if scale == 1:
        return image, (1.0, 1.0)
    h, w = image.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    return resized, (size[1] / w, size[0] / h)


def unscale_keypoints(keypoints: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """``(..., 2)`` pixels (x, y) of an image resized by ``(scale_x, scale_y)`` -> pixels of the
    original (pixel centres aligned: ``x = (x' + 0.5) / s - 0.5``)."""
    if scale_x == 1 and scale_y == 1:
        return keypoints
    factors = keypoints.new_tensor([scale_x, scale_y])
    return (keypoints + 0.5) / factors - 0.5


#: How far below the "no key point" bin a flat pixel's bin is pushed: its probability becomes at most e^-20.
FLAT_LOGIT_MARGIN = 20.0


def flatness(image: torch.Tensor, radius: int, threshold: float) -> torch.Tensor:
    """``(B, 1, H, W)`` in ``[0, 1]``: how flat each pixel's ``(2r+1)^2`` neighbourhood is.

    With ``spread`` the neighbourhood's range (maximum minus minimum intensity, exact in every
    runtime): 1 where ``spread <= threshold / 2``, 0 where ``spread >= threshold``, linear in
    between, so that outputs change continuously with the pixels (an exported graph and
    PyTorch agree near the threshold).
    """
    highest = window_max(image, radius)
    lowest = -window_max(-image, radius)
    return (2 - 2 * (highest - lowest) / threshold).clamp(0, 1)


def window_max(values: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum of each ``(2r+1)^2`` window of ``(B, C, H, W)`` values (stride 1, edges padded with -inf).

    Equal to ``F.max_pool2d(values, 2r+1, stride=1, padding=r)``. In eager PyTorch it is taken
    along rows, then along columns (:func:`sliding_max`): on a CPU, PyTorch's stride-1 max-pooling
    of few-channel full-resolution maps is 20x slower (240 ms against 10 ms for a 5x5 window on
    480x640, one thread). Traced for ONNX export it is the max-pooling itself, which ONNX Runtime
    runs fast.
    """
    if radius <= 0:
        return values
    size = 2 * radius + 1
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return F.max_pool2d(values, size, stride=1, padding=radius)
    rows = sliding_max(F.pad(values, (radius, radius, 0, 0), value=float("-inf")), size, dim=-1)
    return sliding_max(F.pad(rows, (0, 0, radius, radius), value=float("-inf")), size, dim=-2)


def sliding_max(values: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Maxima of the windows of ``size`` consecutive values along ``dim`` (no padding: ``L`` -> ``L - size + 1``).

    Windows double in width (maxima of 2, 4, 8, ... values), and the last step covers ``size`` with
    two overlapping windows of the widest width, so it takes about ``log2(size) + 1`` element-wise
    maxima instead of ``size - 1`` (4 against 8 for the 9-pixel window of the NMS).
    """
    length = values.shape[dim] - size + 1
    out, width = values, 1
    while 2 * width <= size:
        out = torch.maximum(out.narrow(dim, 0, out.shape[dim] - width), out.narrow(dim, width, out.shape[dim] - width))
        width *= 2
    if width == size:
        return out.narrow(dim, 0, length)
    # windows [i, i + width) and [i + size - width, i + size) cover [i, i + size), since size < 2 * width
    return torch.maximum(out.narrow(dim, 0, length), out.narrow(dim, size - width, length))


def suppress_flat_regions(logits: torch.Tensor, image: torch.Tensor, threshold: float, radius: int) -> torch.Tensor:
    """Cell logits in which no pixel of a flat region can be a key point.

    A key point needs texture: on a constant patch (black borders, letterboxing, the fill of a
    warp) a network's output is its biases alone, and the shipped teacher, trained on photos,
    fires everywhere on pure black. Each pixel bin is lowered towards at most the "no key
    point" bin minus :data:`FLAT_LOGIT_MARGIN`, in proportion to the pixel's :func:`flatness`:
    ``bin - f * relu(bin - (dustbin - margin))``. The heatmap, the cell distribution (so a
    distillation target) and every exported graph agree.

    Args:
        logits: ``(B, 65, H/8, W/8)``; image: ``(B, 1, H, W)`` grey in ``[0, 1]``.
        threshold: intensity range (in ``[0, 1]``) of a pixel's neighbourhood below which it starts to
            count as flat; ``<= 0`` returns ``logits``.
        radius: half-width of the window, in pixels.
    """
    if threshold <= 0:
        return logits
    flat = F.pixel_unshuffle(flatness(image, radius, threshold).to(logits.dtype), CELL)  # (B, 64, Hc, Wc)
    points, dustbin = logits[:, :-1], logits[:, -1:]
    points = points - flat * F.relu(points - (dustbin - FLAT_LOGIT_MARGIN))
    return torch.cat([points, dustbin], dim=1)


def logits_to_heatmap(logits: torch.Tensor) -> torch.Tensor:
    """Cell logits ``(B, 65, Hc, Wc)`` -> full-resolution probabilities ``(B, 8*Hc, 8*Wc)``.

    Softmax over the 65 bins, drop the dustbin, then depth-to-space (bin ``8*r + c`` is
    pixel ``(row r, column c)`` of the cell, as in SuperPoint).
    """
    probs = logits.softmax(dim=1)[:, :-1]
    return F.pixel_shuffle(probs, CELL)[:, 0]


def nms_mask(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Local maxima of ``(B, H, W)`` scores within a ``(2r+1)^2`` window (max-pool NMS).

    The window maximum is :func:`window_max`: the same values as one square max-pooling, at a
    fraction of its cost on a CPU.
    """
    if radius <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores == window_max(scores[:, None], radius)[:, 0]


def detect_keypoints(
    heatmap: torch.Tensor,
    nms_radius: int = 4,
    threshold: float = 0.015,
    border: int = 4,
    max_keypoints: int = -1,
    subpixel_radius: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Key points from a heatmap: NMS, threshold, border removal, top-k, sub-pixel refinement.

    Args:
        heatmap: ``(B, H, W)`` probabilities.
        nms_radius: suppression radius in pixels (0 disables NMS).
        threshold: minimum heatmap value.
        border: pixels to drop along each edge.
        max_keypoints: keep the best ``k`` per image (``-1``: all).
        subpixel_radius: move each kept pixel by :func:`subpixel_offsets` with this radius
            (``0``: whole pixels). Selection and scores do not change.

    Returns:
        ``keypoints`` list of ``(N_b, 2)`` float (x, y) pixels, sorted by decreasing score,
        and ``scores`` list of ``(N_b,)``.
    """
    if heatmap.dim() != 3:
        raise ValueError(f"heatmap must be (B, H, W), got {tuple(heatmap.shape)}")
    b, h, w = heatmap.shape
    keep = nms_mask(heatmap, nms_radius) & (heatmap > threshold)
    if border > 0:
        inner = torch.zeros_like(keep)
        inner[:, border : h - border, border : w - border] = True
        keep &= inner
    keypoints, scores = [], []
    for i in range(b):
        ys, xs = torch.nonzero(keep[i], as_tuple=True)
        s = heatmap[i, ys, xs]
        order = torch.argsort(s, descending=True)
        if max_keypoints >= 0:
            order = order[:max_keypoints]
        ys, xs = ys[order], xs[order]
        points = torch.stack([xs, ys], dim=-1).to(heatmap.dtype)
        if subpixel_radius > 0:
            points = points + subpixel_offsets_at(heatmap[i], xs, ys, subpixel_radius)
        keypoints.append(points)
        scores.append(s[order])
    return keypoints, scores


def subpixel_offsets(heatmap: torch.Tensor, radius: int) -> torch.Tensor:
    """Soft-argmax offset of every pixel's ``(2r+1)^2`` neighbourhood, weighted by the heatmap.

    For pixel ``p`` the offset is ``sum_d h(p + d) d / sum_d h(p + d)`` over ``d`` in
    ``[-r, r]^2``: the heatmap's centre of mass around ``p`` (outside the image counts as 0).
    Dense (three small convolutions) so that the same code serves eager use and ONNX graphs.
    Whole-pixel peaks are only as precise as the heatmap's own grid; the centre of mass
    recovers the part of a corner's position that the network spreads over neighbours.

    Args:
        heatmap: ``(B, H, W)`` non-negative scores.
        radius: ``r`` in pixels, ``>= 1``.

    Returns:
        ``(B, 2, H, W)`` offsets (dx, dy) in pixels, each within ``[-r, r]``.
    """
    if heatmap.dim() != 3:
        raise ValueError(f"heatmap must be (B, H, W), got {tuple(heatmap.shape)}")
    if radius < 1:
        raise ValueError(f"subpixel radius must be >= 1 pixel, got {radius}")
    d = torch.arange(-radius, radius + 1, dtype=heatmap.dtype, device=heatmap.device)
    size = 2 * radius + 1
    ones = torch.ones(size, size, dtype=heatmap.dtype, device=heatmap.device)
    kernels = torch.stack([ones, ones * d[None, :], ones * d[:, None]])[:, None]  # mass, x-moment, y-moment
    moments = F.conv2d(heatmap[:, None], kernels, padding=radius)
    return moments[:, 1:] / moments[:, :1].clamp_min(torch.finfo(heatmap.dtype).tiny)


def subpixel_offsets_at(heatmap: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`subpixel_offsets` at given pixels only: the same centre of mass, from their windows alone.

    The dense version convolves the whole heatmap (7 ms of a 38 ms extract at 480x640 on one
    CPU thread); key points are a few thousand pixels at most, so eager extraction gathers
    their ``(2r+1)^2`` windows instead. Exported graphs keep the dense one.

    Args:
        heatmap: ``(H, W)`` non-negative scores of one image.
        xs, ys: ``(N,)`` integer pixel columns and rows.
        radius: ``r >= 1`` pixels.

    Returns:
        ``(N, 2)`` offsets (dx, dy) in pixels, equal to ``subpixel_offsets(heatmap[None], r)[0, :, ys, xs].T``.
    """
    if radius < 1:
        raise ValueError(f"subpixel radius must be >= 1 pixel, got {radius}")
    d = torch.arange(-radius, radius + 1, device=heatmap.device)
    padded = F.pad(heatmap, (radius, radius, radius, radius))  # outside the image counts as 0
    rows = (ys[:, None, None] + radius + d[None, :, None]).expand(-1, d.numel(), d.numel())
    cols = (xs[:, None, None] + radius + d[None, None, :]).expand(-1, d.numel(), d.numel())
    windows = padded[rows, cols]  # (N, 2r+1, 2r+1), window[k, i, j] = h(y + d_i, x + d_j)
    mass = windows.sum(dim=(1, 2))
    d = d.to(heatmap.dtype)
    moments = torch.stack([(windows * d[None, None, :]).sum(dim=(1, 2)), (windows * d[None, :, None]).sum(dim=(1, 2))], -1)
    return moments / mass.clamp_min(torch.finfo(heatmap.dtype).tiny)[:, None]


def sample_descriptors(keypoints: torch.Tensor, descriptors: torch.Tensor, stride: int = CELL) -> torch.Tensor:
    """Bilinearly sample dense descriptors at key points and L2-normalise them.

    Cell ``(i, j)`` of the ``(Hc, Wc)`` map describes the ``s x s`` block (``s = stride``, 8 for
    SuperPoint) whose centre is pixel ``(s j + (s - 1) / 2, s i + (s - 1) / 2)``; sampling
    interpolates between those centres (a corner outside the map contributes zero).

    Args:
        keypoints: ``(B, N, 2)`` pixels (x, y).
        descriptors: ``(B, D, Hc, Wc)``.
        stride: pixels per cell of the map.

    Returns:
        ``(B, N, D)`` unit descriptors.
    """
    b, d, hc, wc = descriptors.shape
    if keypoints.shape[0] != b or keypoints.shape[-1] != 2:
        raise ValueError(
            f"keypoints {tuple(keypoints.shape)} do not fit descriptors {tuple(descriptors.shape)}"
        )
    cell = (keypoints - (stride / 2 - 0.5)) / stride  # pixel -> cell-centre coordinates
    scale = keypoints.new_tensor([max(wc - 1, 1), max(hc - 1, 1)])
    grid = (cell / scale * 2 - 1)[:, None]  # (B, 1, N, 2)
    sampled = F.grid_sample(descriptors, grid.to(descriptors.dtype), mode="bilinear", align_corners=True)
    return F.normalize(sampled[:, :, 0].transpose(1, 2), p=2, dim=-1)


def sample_map(keypoints: torch.Tensor, values: torch.Tensor, stride: int, padding_mode: str = "border") -> torch.Tensor:
    """Bilinear reading of a map of cells at key points, not normalised (traceable with dynamic sizes).

    Cell ``(i, j)`` of ``values`` ``(B, C, Hc, Wc)`` holds the value at pixel ``(s j + (s - 1) / 2,
    s i + (s - 1) / 2)`` with ``s = stride``; between those centres values are interpolated, beyond the
    outer centres ``padding_mode`` decides (``"border"``: the outer cells' values, ``"zeros"``: fading to 0).

    Args:
        keypoints: ``(B, N, 2)`` pixels (x, y).
        values: ``(B, C, Hc, Wc)``, ``Hc, Wc >= 2``.

    Returns:
        ``(B, N, C)``.
    """
    hc, wc = values.shape[-2:]
    cell = (keypoints - (stride / 2 - 0.5)) / stride
    grid = torch.stack([cell[..., 0] / (wc - 1) * 2 - 1, cell[..., 1] / (hc - 1) * 2 - 1], dim=-1)[:, None]
    sampled = F.grid_sample(values, grid.to(values.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return sampled[:, :, 0].transpose(1, 2)
