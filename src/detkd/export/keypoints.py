"""Key-point models as graphs that ONNX can express: post-processing with static shapes.

:class:`KeypointPostprocess` wraps a :class:`~detkd.models.superpoint.SuperPoint` and adds,
with operators every ONNX runtime has (Softmax, DepthToSpace, MaxPool, TopK, GridSample):

* the heatmap (softmax over 65 bins, depth-to-space),
* NMS by max-pooling, the detection threshold and border removal,
* a fixed top-``K`` (``K = max_keypoints``): outputs are always ``K`` long, sorted by
  decreasing score; entries past ``num_keypoints`` are padding (zeros),
* bilinear descriptor sampling (``grid_sample``) and L2 normalisation.

Run in PyTorch it gives the same key points as :meth:`SuperPoint.extract` (up to ties in the
score order), so the same module serves the ONNX export, the PyTorch side of the parity check
and the PyTorch backend of :class:`detkd.Predictor`.

:class:`KeypointRawHeads` gives the dense outputs instead (logits, heatmap, dense descriptors)
for users who post-process themselves.

Input of both: ``image`` ``(B, 1, H, W)`` float32 grey in ``[0, 1]``, ``H`` and ``W``
multiples of 8 (at least 16).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detkd.export.graph import ExportGraph, Parity, plain, worst_difference
from detkd.models.keypoint_ops import (
    CELL,
    check_input_scale,
    input_size_multiple,
    sample_map,
    subpixel_offsets,
    unscale_keypoints,
    window_max,
)
from detkd.models.superpoint import SuperPoint

#: Output names of each graph, in order.
POSTPROCESSED_OUTPUTS = ("keypoints", "scores", "descriptors", "num_keypoints")
RAW_OUTPUTS = ("logits", "heatmap", "descriptors")
INPUT_NAME = "image"
DEFAULT_MAX_KEYPOINTS = 1024  # used when the model's own max_keypoints is -1 ("all")


class KeypointPostprocess(nn.Module):
    """SuperPoint with ONNX-expressible post-processing and a fixed number of outputs.

    Args:
        model: the network (its ``conf`` gives ``nms_radius``, ``detection_threshold``,
            ``remove_borders`` and ``max_keypoints``).
        max_keypoints: ``K``, the fixed output length; default the model's ``max_keypoints``
            (or :data:`DEFAULT_MAX_KEYPOINTS` when that is ``-1``).

    Forward: ``image`` ``(B, 1, H, W)`` in ``[0, 1]`` ->

    * ``keypoints`` ``(B, K, 2)`` float32 pixels (x, y) of the input, refined as the model's
      ``subpixel_radius`` says, sorted by decreasing score;
    * ``scores`` ``(B, K)`` heatmap values, ``0`` for padding;
    * ``descriptors`` ``(B, K, D)`` unit vectors, zeros for padding;
    * ``num_keypoints`` ``(B,)`` int64: the first ``num_keypoints[b]`` entries are real.

    A model whose ``input_scale`` is not 1 runs on the image upsampled by that factor inside the
    graph, as :meth:`SuperPoint.extract` does; here the factor must be at least 1 and a whole
    number, a half, a quarter or an eighth (2, 1.5, 1.25, ...), and the image sides multiples of
    :attr:`size_multiple` (8 times the factor's denominator: 16 for 1.5), so that the upsampled
    image is whole cells.
    """

    def __init__(self, model: SuperPoint, max_keypoints: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, SuperPoint):
            raise TypeError(f"KeypointPostprocess wraps a SuperPoint, got {type(model).__name__}")
        self.model = model
        k = model.conf["max_keypoints"] if max_keypoints is None else max_keypoints
        self.max_keypoints = int(k) if k is not None and k > 0 else DEFAULT_MAX_KEYPOINTS
        self.nms_radius = int(model.conf["nms_radius"])
        self.threshold = float(model.conf["detection_threshold"])
        self.border = int(model.conf["remove_borders"])
        self.subpixel_radius = int(model.conf["subpixel_radius"])
        scale = check_input_scale(model.conf["input_scale"])
        multiple = input_size_multiple(scale)
        if multiple is None or scale < 1:
            raise ValueError(
                f"input_scale {scale:g} cannot be exported: exported graphs and Predictor upsample by a factor of "
                "at least 1 in whole numbers, halves, quarters or eighths (1, 1.25, 1.5, 2, ...; SuperPoint.extract "
                "takes any factor); set the model's input_scale to one of those"
            )
        self.input_scale = scale
        self.size_multiple = multiple  # pixels: image sides must be multiples of this
        # NMS radius and border are input pixels; the heatmap is input_scale times finer (rounded as extract() does).
        self.heatmap_nms_radius = round(self.nms_radius * scale)
        self.heatmap_border = round(self.border * scale)

    def heatmap_input(self, image: torch.Tensor) -> torch.Tensor:
        """The ``(B, 1, sH, sW)`` image the network sees (``s = input_scale``)."""
        if self.input_scale == 1:
            return image
        return F.interpolate(image, scale_factor=self.input_scale, mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        heads = self.model.heads(self.heatmap_input(image))
        keypoints, scores, valid = topk_keypoints(
            heads["heatmap"], self.heatmap_nms_radius, self.threshold, self.heatmap_border, self.max_keypoints,
            self.subpixel_radius,
        )
        if heads["fine_features"] is None:
            descriptors = sample_descriptors_traceable(keypoints, F.normalize(heads["coarse_descriptors"], p=2, dim=1))
        else:  # stride 4: the stride-4 projection runs on the key points' features only
            descriptors = self.model.describe(keypoints, heads)
        descriptors = descriptors * valid[..., None]
        if self.input_scale != 1:
            keypoints = unscale_keypoints(keypoints, self.input_scale, self.input_scale) * valid[..., None]
        return keypoints, scores, descriptors, valid.sum(dim=1)


class KeypointRawHeads(nn.Module):
    """SuperPoint's dense outputs only.

    Forward: ``image`` ``(B, 1, H, W)`` in ``[0, 1]`` -> ``logits`` ``(B, 65, H/8, W/8)``,
    ``heatmap`` ``(B, H, W)`` (softmax, dustbin dropped, depth-to-space) and ``descriptors``
    ``(B, D, H/8, W/8)`` L2-normalised dense descriptors.
    """

    def __init__(self, model: SuperPoint) -> None:
        super().__init__()
        if not isinstance(model, SuperPoint):
            raise TypeError(f"KeypointRawHeads wraps a SuperPoint, got {type(model).__name__}")
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(image)
        return out["logits"], out["heatmap"], out["descriptors"]


def topk_keypoints(
    heatmap: torch.Tensor, nms_radius: int, threshold: float, border: int, k: int, subpixel_radius: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best local maxima of a heatmap, padded to exactly ``k``.

    Same selection and refinement as :func:`detkd.models.keypoint_ops.detect_keypoints` (NMS
    by max-pooling, ``> threshold``, ``border`` pixels dropped on each side, sub-pixel
    offsets), written with ops that export to ONNX with dynamic ``H``/``W`` (no
    data-dependent shapes).

    Args:
        heatmap: ``(B, H, W)`` probabilities.

    Returns:
        ``keypoints`` ``(B, k, 2)`` float pixels (x, y), ``scores`` ``(B, k)`` and ``valid``
        ``(B, k)`` bool; padding entries have keypoint ``(0, 0)`` and score ``0``.
    """
    if heatmap.dim() != 3:
        raise ValueError(f"heatmap must be (B, H, W), got {tuple(heatmap.shape)}")
    batch, _, width = heatmap.shape
    keep = heatmap > threshold
    if nms_radius > 0:
        # max-pooling once traced for ONNX (fast in ONNX Runtime), shifted maxima in eager PyTorch (3x faster
        # Predictor for the small students: PyTorch's stride-1 CPU max-pooling of a 480x640 map takes ~30 ms)
        pooled = window_max(heatmap[:, None], nms_radius)[:, 0]
        keep = keep & (heatmap == pooled)
    candidates = torch.where(keep, heatmap, torch.zeros_like(heatmap))
    if border > 0:  # crop then zero-pad: no mask built from the (dynamic) image size
        inner = candidates[:, border:-border, border:-border]
        candidates = F.pad(inner, (border, border, border, border))
    # k zeros appended so that TopK never asks for more entries than an image has.
    flat = F.pad(candidates.reshape(batch, -1), (0, k))
    scores, index = flat.topk(k, dim=1)
    valid = scores > 0
    x = torch.remainder(index, width)
    y = torch.div(index, width, rounding_mode="floor")
    keypoints = torch.stack([x, y], dim=-1).to(heatmap.dtype)
    if subpixel_radius > 0:
        offsets = subpixel_offsets(heatmap, subpixel_radius).flatten(2)  # (B, 2, H*W)
        index = index.clamp(max=offsets.shape[-1] - 1)  # padding slots point past the image
        keypoints = keypoints + torch.gather(offsets, 2, index[:, None].expand(-1, 2, -1)).transpose(1, 2)
    keypoints = keypoints * valid[..., None]
    return keypoints, scores, valid


def sample_descriptors_traceable(keypoints: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
    """:func:`detkd.models.keypoint_ops.sample_descriptors` for graphs with dynamic sizes.

    Cell ``(i, j)`` describes the 8x8 block centred on pixel ``(8j + 3.5, 8i + 3.5)``; the
    map is sampled bilinearly between those centres (``align_corners=True``), then each
    vector is L2-normalised. The cell-grid size enters as graph values, not constants.

    Args:
        keypoints: ``(B, N, 2)`` pixels (x, y).
        descriptors: ``(B, D, Hc, Wc)``, ``Hc, Wc >= 2``.

    Returns:
        ``(B, N, D)`` unit vectors.
    """
    return F.normalize(sample_map(keypoints, descriptors, CELL, padding_mode="zeros"), p=2, dim=-1)


# ---------------------------------------------------------------------- export description
def keypoint_graph(model: SuperPoint, raw_heads: bool = False, max_keypoints: int | None = None) -> ExportGraph:
    """The :class:`ExportGraph` of a key-point model (post-processed, or raw heads)."""
    model = model.eval().cpu()
    dim = model.conf["descriptor_dim"]
    input_spec = {
        "layout": "B,1,H,W", "dtype": "float32", "colour": "grey (ITU-R 601 luminance of RGB)",
        "range": [0.0, 1.0], "normalisation": "pixel / 255; no mean or std",
    }
    config = plain(model.conf)
    size_multiple = CELL
    stride = int(model.conf.get("descriptor_stride", CELL))
    if raw_heads:
        module: nn.Module = KeypointRawHeads(model).eval()
        outputs = RAW_OUTPUTS
        axes = {"logits": {0: "batch", 2: "cells_y", 3: "cells_x"}, "heatmap": {0: "batch", 1: "height", 2: "width"},
                "descriptors": {0: "batch", 2: "cells_y", 3: "cells_x"}}
        spec = {
            "logits": "(B, 65, H/8, W/8) detector scores before softmax; bin 64 is 'no key point'",
            "heatmap": "(B, H, W) key-point probability per pixel (softmax, dustbin dropped, depth-to-space)",
            "descriptors": f"(B, {dim}, H/8, W/8) L2-normalised dense descriptors; cell (i, j) is centred "
                           "on pixel (8j + 3.5, 8i + 3.5)" + (
                               "; key-point descriptors also read stride-4 features: take them from the "
                               "post-processed graph" if stride == 4 else ""),
        }
    else:
        post = KeypointPostprocess(model, max_keypoints).eval()
        module, outputs, k = post, POSTPROCESSED_OUTPUTS, post.max_keypoints
        size_multiple = post.size_multiple  # 8, or more for an input_scale such as 1.5
        axes = {"keypoints": {0: "batch"}, "scores": {0: "batch"}, "descriptors": {0: "batch"},
                "num_keypoints": {0: "batch"}}
        spec = {
            "keypoints": f"(B, {k}, 2) float32 pixels (x, y), centre of the top-left pixel = (0, 0), "
                         + (f"sub-pixel (heatmap centre of mass within {post.subpixel_radius} px), "
                            if post.subpixel_radius else "whole pixels, ")
                         + "sorted by decreasing score; entries past num_keypoints are padding (0, 0)",
            "scores": f"(B, {k}) heatmap value of each key point, 0 for padding",
            "descriptors": f"(B, {k}, {dim}) unit descriptors, zeros for padding",
            "num_keypoints": "(B,) int64 number of real key points per image",
        }
        config = {**config, "max_keypoints": k}
    input_spec["size"] = f"H, W multiples of {size_multiple}, at least {max(2 * CELL, size_multiple)}"
    return ExportGraph(
        task="keypoints", module=module, input_name=INPUT_NAME, channels=1, output_names=outputs,
        output_axes=axes, input_spec=input_spec, output_spec=spec, config=config,
        compare=compare_raw_heads if raw_heads else functools.partial(compare_postprocessed, post=module),
        min_size=max(2 * CELL, size_multiple), size_multiple=size_multiple,
    )


def compare_raw_heads(
    reference: Sequence[np.ndarray], other: Sequence[np.ndarray], batch: torch.Tensor | None = None,
    tolerance: float = 1e-4,
) -> Parity:
    """Parity of the dense outputs: logits relative to their range, heatmap and descriptors absolute."""
    logits, heatmap, descriptors = (worst_difference(r, o, relative=(i == 0))
                                    for i, (r, o) in enumerate(zip(reference, other)))
    return Parity({"logits": logits, "heatmap": heatmap, "descriptors": descriptors},
                  {"logits": "rel", "heatmap": "abs", "descriptors": "abs"})


def compare_postprocessed(
    reference: Sequence[np.ndarray], other: Sequence[np.ndarray], batch: torch.Tensor, tolerance: float,
    post: KeypointPostprocess,
) -> Parity:
    """Parity of post-processed outputs, robust to rounding at the decisions.

    Each image's two sets are matched by the pixel each point was selected at (the local
    maximum of the heatmap nearest to the point; sub-pixel offsets move a point by less than
    the NMS radius); ``agreement`` is their intersection over union, and the position, score
    and descriptor errors are the worst over the points both runtimes found. Positions are
    compared relative to the largest coordinate, as box coordinates are: a sub-pixel offset is a
    ratio of heatmap sums, so rounding of 1e-6 in a faint window moves a point by about 1e-4 px
    (measured: 1.8e-4 px for the shipped teacher at 480x640 on one thread). A point found
    by one runtime only is a *near-tie* when PyTorch's heatmap shows that its selection hung
    on values closer than ``tolerance`` (at the threshold, at the k-th best score, or against
    a neighbour in the NMS window), otherwise it is *unexplained* (a failed export).
    """
    kp_r, sc_r, de_r, n_r = reference
    kp_o, sc_o, de_o, n_o = other
    if kp_r.shape != kp_o.shape:
        raise ValueError(f"keypoints shapes differ: PyTorch {kp_r.shape}, ONNX Runtime {kp_o.shape}")
    point_err, score_err, desc_err, common, union, near, unexplained = 0.0, 0.0, 0.0, 0, 0, 0, 0
    with torch.inference_mode():
        heatmaps = post.model(post.heatmap_input(batch))["heatmap"].numpy()
    s = post.input_scale  # key points are input pixels; the heatmap is s times finer
    for b in range(kp_r.shape[0]):
        ids_r = _pixel_ids((kp_r[b, : int(n_r[b])] + 0.5) * s - 0.5, heatmaps[b], post.subpixel_radius)
        ids_o = _pixel_ids((kp_o[b, : int(n_o[b])] + 0.5) * s - 0.5, heatmaps[b], post.subpixel_radius)
        shared, idx_r, idx_o = np.intersect1d(ids_r, ids_o, assume_unique=True, return_indices=True)
        only = np.setxor1d(ids_r, ids_o, assume_unique=True)
        common += len(shared)
        union += len(shared) + len(only)
        if len(shared):
            point_err = max(point_err, worst_difference(kp_r[b, idx_r], kp_o[b, idx_o], relative=True))
            score_err = max(score_err, worst_difference(sc_r[b, idx_r], sc_o[b, idx_o]))
            desc_err = max(desc_err, worst_difference(de_r[b, idx_r], de_o[b, idx_o]))
        if len(only):
            kth = min(_kth_score(sc_r[b], n_r[b], post.max_keypoints), _kth_score(sc_o[b], n_o[b], post.max_keypoints))
            ties = sum(_near_tie(heatmaps[b], int(i), post, kth, tolerance) for i in only)
            near += ties
            unexplained += len(only) - ties
    agreement = common / union if union else 1.0
    return Parity({"keypoints": point_err, "scores": score_err, "descriptors": desc_err},
                  {"keypoints": "rel", "scores": "abs", "descriptors": "abs"}, agreement, near, unexplained)


def _kth_score(scores: np.ndarray, count: np.ndarray, k: int) -> float:
    """The lowest kept score when all ``k`` slots are used (the top-k boundary), else NaN."""
    return float(scores[k - 1]) if int(count) >= k else float("nan")


def _near_tie(heatmap: np.ndarray, pixel_id: int, post: KeypointPostprocess, kth: float, tolerance: float) -> bool:
    """Whether keeping or dropping this pixel was decided by values within ``tolerance``."""
    y, x = divmod(pixel_id, 1 << 20)
    value = float(heatmap[y, x])
    if abs(value - post.threshold) <= tolerance or abs(value - kth) <= tolerance:
        return True
    r = post.heatmap_nms_radius
    if r > 0:
        window = heatmap[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].astype(np.float64).copy()
        window[min(y, r), min(x, r)] = -np.inf  # the pixel itself
        if abs(value - float(window.max())) <= tolerance:
            return True
    return False


def _pixel_ids(keypoints: np.ndarray, heatmap: np.ndarray, subpixel_radius: int) -> np.ndarray:
    """One integer per key point (``y * 2**20 + x``) for the pixel it was selected at.

    Whole-pixel points are their own pixel. A refined point lies within ``subpixel_radius``
    of its pixel, which is the largest heatmap value in that window around the rounded point
    (it is a local maximum over the larger NMS window).
    """
    rounded = np.rint(keypoints).astype(np.int64)
    if subpixel_radius > 0 and len(rounded):
        r = subpixel_radius
        h, w = heatmap.shape
        padded = np.pad(heatmap, r, constant_values=-np.inf)
        offsets = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="xy"), -1).reshape(-1, 2)
        x = np.clip(rounded[:, :1], 0, w - 1) + offsets[None, :, 0]
        y = np.clip(rounded[:, 1:], 0, h - 1) + offsets[None, :, 1]
        best = padded[y + r, x + r].argmax(axis=1)
        rounded = np.stack([x[np.arange(len(x)), best], y[np.arange(len(y)), best]], -1)
    return rounded[:, 1] * (1 << 20) + rounded[:, 0]
