"""Label-free key-point distillation loss (after Yashchenko et al. 2020, GoodPoint).

The student learns to reproduce the frozen teacher's dense outputs on the same image.
The loss reads two output dicts of :meth:`detkd.models.superpoint.SuperPoint.forward`
and knows nothing of training:

* ``heatmap_mse``: MSE between full-resolution heatmaps ``(B, H, W)`` (probabilities in [0, 1]);
* ``heatmap_gradient_mse``: MSE between their spatial forward differences, which keeps peaks
  sharp and in place;
* ``cell_kl``: KL divergence from the teacher's 65-bin cell distribution (soft targets,
  temperature ``T``) to the student's, scaled by ``T^2`` as in Hinton et al.;
* ``descriptor_cosine``: mean ``1 - cos`` between the L2-normalised dense descriptors;
* ``descriptor_mse``: GoodPoint's descriptor term, the MSE between the same unit descriptors.
  For unit vectors of ``D`` components it *is* ``2 / D x descriptor_cosine`` (``|a - b|^2 =
  2 - 2 cos``), one signal in two scales, so detkd's default weight for it is 0 and the
  descriptors learn from ``descriptor_cosine`` alone, whose scale does not shrink with ``D``.
  It stays available to reproduce GoodPoint's objective;
* ``point_descriptor_cosine``: mean ``1 - cos`` at sampled points (when the teacher's outputs
  carry ``points`` and ``point_descriptors``): the student's descriptors there as its ``extract``
  reads them (its own ``point_descriptors`` at those points when its outputs carry them, e.g. a
  stride-4 student, else its dense map read bilinearly between cell centres) against the teacher's own descriptors
  at those pixels. The dense term only compares cell centres; a key point rarely sits on one,
  and a teacher such as ALIKED or DISK describes every pixel differently. The points are the
  teacher's strongest local maxima plus a grid between the cell centres
  (:func:`select_training_points`), i.e. where matching will read descriptors;
* ``point_descriptor_relation``: at the same points, how each student descriptor ranks the
  teacher's descriptors of *all* points of its view must follow how the teacher's own descriptor
  ranks them: ``KL(softmax_j(t_i . t_j / tau) || softmax_j(s_i . t_j / tau))`` averaged over the
  points ``i``, with ``tau = point_relation_temperature``. The cosine term alone can be met by a
  student that outputs the teacher's *mean* descriptor everywhere: DISK's unit descriptors have a
  mean of norm about 0.5, so that collapse already scores a cosine of about 0.45, and a fast-s
  distilled from DISK with the cosine terms alone did exactly that (its descriptors had a mean
  pairwise cosine of 0.96 and matched nothing). The relation term is 0 only when every student
  descriptor is as much closer to its own teacher descriptor than to the others as the
  teacher's is, i.e. it asks for what matching needs: telling points apart, in the teacher's space;
* ``point_descriptor_matching`` (off by default; needs a second view): the same scene points seen in a
  second, warped view of each image (``second_view``: the student's descriptors there, at the points
  mapped by the known homography). Each point's descriptor in the first view must pick its own
  descriptor in the second among the view's points, and the other way round: the symmetric
  cross-entropy of ``softmax_j(s_i . s'_j / tau)`` (the dual softmax of LoFTR and XFeat), ``tau =
  point_matching_temperature``. Points that leave the second view and negatives closer than
  :data:`MATCHING_EXCLUSION_PX` to the positive are left out. This term is not distillation: it asks the
  student's own descriptors for what matching needs, with no teacher in it, so a student too small to
  copy the teacher's 128-d space can spend its capacity on what tells points apart across views;
* ``second_view_cell_kl`` (off by default; needs the same second view): ``cell_kl`` in the second view, against
  the teacher's heatmap of the first view warped into it by the known homography
  (:func:`warped_cell_targets`), over the cells the warp covers whole. The detector then learns the
  teacher's points *as they move*: what repeatability measures, and what a student whose points are
  less repeatable than its teacher's lacks (no second teacher pass: the target is the first view's,
  carried by the geometry).

Every term is averaged over its elements; the total is the weighted sum. A weight of 0
switches a term off (it is still reported, without gradient cost), except ``second_view_cell_kl``,
which is not computed at weight 0: its targets cost a warp of every view (about 20 ms per step of
8 views at 240x320 on one CPU thread, 3% of a matching fine-tune's step, for a number nobody asked for).

How this differs from GoodPoint, and why. GoodPoint's public distillation code
(``singnet/image-matching``, ``fem/train_distill.py``, commit 82bba70) scales both maps before
squaring: ``((t * 120 - s * 120) ** 2).mean()`` for the heatmaps, the same with 150 on their
Sobel gradients (``kornia.filters.spatial_gradient``) and with 10 on the descriptor maps, and
sums these three terms only. Its effective weights on plain means are therefore 14,400
(heatmap), 22,500 (gradient) and 100 (descriptors), not 120 / 150 / 10. detkd weights the plain
means 120 / 150 (forward differences for the gradient) and adds ``cell_kl`` (weight 1) and
``descriptor_cosine`` (weight 1), which carry most of its loss: the cell KL gives the student the
teacher's full 65-bin distribution in every cell, including the "no point" bin, which the heatmap
MSE (near 0 almost everywhere) hardly does. Measured side by side (800 steps of ``tiny`` at
120x160, one seed, one thread): detkd's objective kept 62% of the teacher's MMA@3 and 31% of its
HA@3, GoodPoint's 34% and 0%. GoodPoint trained 5 epochs of COCO at batch 24, lr 1.5e-3 with the
same 0.98-per-1000-steps decay that detkd's defaults use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detkd.config import ConfigError, dataclass_from_dict
from detkd.geometry.homography import warp_image
from detkd.models.keypoint_ops import CELL, nms_mask, sample_descriptors
from detkd.models.keypoint_teachers.base import cell_distribution_logits


@dataclass
class KeypointDistillWeights:
    """Weights of each term (>= 0; see the module doc for how they differ from GoodPoint's)."""

    heatmap_mse: float = 120.0
    heatmap_gradient_mse: float = 150.0
    cell_kl: float = 1.0
    descriptor_mse: float = 0.0  # = 2/D x descriptor_cosine for unit descriptors: off by default
    descriptor_cosine: float = 1.0
    point_descriptor_cosine: float = 1.0  # at the teacher's key points plus a grid (needs point outputs)
    point_descriptor_relation: float = 0.3  # ranking of the view's teacher descriptors (needs point outputs)
    point_descriptor_matching: float = 0.0  # the student's own points matched across two views (needs a second view)
    second_view_cell_kl: float = 0.0  # cell_kl in the second view against the teacher's warped heatmap (needs one)
    temperature: float = 1.0  # softens both cell distributions in cell_kl
    point_relation_temperature: float = 0.1  # cosine scale of point_descriptor_relation's softmaxes
    point_matching_temperature: float = 0.1  # cosine scale of point_descriptor_matching's softmaxes

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"loss.{name} must be a finite number >= 0, got {value!r}: a negative weight would make "
                    "the student move away from the teacher (0 switches a term off)")
        for name in ("temperature", "point_relation_temperature", "point_matching_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"loss.{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "KeypointDistillWeights":
        return dataclass_from_dict(cls, values, "loss")


@dataclass
class PointSampling:
    """Where ``point_descriptor_cosine`` compares descriptors (config section ``points``).

    Attributes:
        keypoints: the teacher's strongest local maxima per view (NMS radius ``nms_radius``, at least
            ``border`` pixels from the edges); fewer maxima are topped up with the strongest other pixels.
        grid_stride: plus a grid of pixels ``(s j + s/2, s i + s/2)``, between the cell centres
            (``8 j + 3.5``) for strides that are multiples of 8; 0: no grid.
        nms_radius, border: pixels.
    """

    keypoints: int = 256
    grid_stride: int = 16
    nms_radius: int = 2
    border: int = 4

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"points.{name} must be a whole number >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PointSampling":
        return dataclass_from_dict(cls, values, "points")

    @property
    def active(self) -> bool:
        return self.keypoints > 0 or self.grid_stride > 0

    def count(self, height: int, width: int) -> int:
        """Points per ``height x width`` view."""
        grid = len(range(self.grid_stride // 2, height, self.grid_stride)) * len(
            range(self.grid_stride // 2, width, self.grid_stride)) if self.grid_stride else 0
        return min(self.keypoints, height * width) + grid

    def __call__(self, heatmap: torch.Tensor) -> torch.Tensor:
        return select_training_points(heatmap, self)


def select_training_points(heatmap: torch.Tensor, sampling: PointSampling) -> torch.Tensor:
    """The teacher's strongest key points, then a regular grid: where descriptors are distilled.

    Args:
        heatmap: ``(B, H, W)`` the teacher's key-point probabilities.
        sampling: how many points and which grid.

    Returns:
        ``(B, N, 2)`` pixels (x, y), ``N = sampling.count(H, W)``: first the ``keypoints`` best local
        maxima (above 0) inside the border by decreasing score (then, if there are fewer, the best other
        pixels), then the grid row by row.
    """
    if heatmap.dim() != 3:
        raise ValueError(f"heatmap must be (B, H, W), got {tuple(heatmap.shape)}")
    b, h, w = heatmap.shape
    parts = []
    k = min(sampling.keypoints, h * w)
    if k:
        r, e = sampling.nms_radius, sampling.border
        is_peak = nms_mask(heatmap, r)
        inside = torch.zeros_like(is_peak)
        inside[:, e:h - e, e:w - e] = True
        # heatmap values lie in [0, 1]: peaks (> 0, so not a flat zero area) inside the border rank
        # first, then every other pixel
        rank = heatmap + 2.0 * (is_peak & inside & (heatmap > 0))
        index = rank.flatten(1).topk(k, dim=1).indices  # (B, k)
        parts.append(torch.stack([index % w, index // w], dim=-1).to(heatmap.dtype))
    if sampling.grid_stride:
        s = sampling.grid_stride
        ys = torch.arange(s // 2, h, s, device=heatmap.device, dtype=heatmap.dtype)
        xs = torch.arange(s // 2, w, s, device=heatmap.device, dtype=heatmap.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)
        parts.append(grid.expand(b, -1, -1))
    if not parts:
        raise ValueError("PointSampling selects no points: set points.keypoints or points.grid_stride above 0")
    return torch.cat(parts, dim=1)


def heatmap_gradients(heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of ``(B, H, W)`` heatmaps: ``d/dx`` ``(B, H, W-1)``, ``d/dy`` ``(B, H-1, W)``."""
    return heatmap[:, :, 1:] - heatmap[:, :, :-1], heatmap[:, 1:, :] - heatmap[:, :-1, :]


class KeypointDistillationLoss(nn.Module):
    """Distance between teacher and student SuperPoint outputs; see the module docstring."""

    def __init__(self, weights: KeypointDistillWeights | None = None) -> None:
        super().__init__()
        self.weights = weights or KeypointDistillWeights()
        if self.weights.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.weights.temperature}")

    @property
    def needs_second_view(self) -> bool:
        """Whether :meth:`forward` needs ``second_view`` (``point_descriptor_matching`` or ``second_view_cell_kl`` is on)."""
        return self.weights.point_descriptor_matching > 0 or self.weights.second_view_cell_kl > 0

    def forward(
        self, teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
        second_view: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            teacher, student: dicts with ``logits`` ``(B, 65, Hc, Wc)``, ``heatmap`` ``(B, H, W)``
                and ``descriptors`` ``(B, D, Hc, Wc)`` (L2-normalised), as returned by
                ``SuperPoint.forward`` on the same images; the teacher's may also carry ``points``
                ``(B, N, 2)`` pixels and ``point_descriptors`` ``(B, N, D)`` (unit), for
                ``point_descriptor_cosine`` and ``point_descriptor_relation``.
            second_view: for ``point_descriptor_matching``: the student's ``point_descriptors``
                ``(B, N, D)`` (unit) in a warped copy of each image at the teacher's points mapped into it,
                and ``valid`` ``(B, N)`` bool, the points that land inside that copy; for
                ``second_view_cell_kl``: the student's ``logits`` ``(B, 65, Hc, Wc)`` in that copy and the
                ``homographies`` ``(B, 3, 3)`` (pixels of the first view -> the copy's).

        Returns:
            ``loss`` (weighted sum, scalar) and every unweighted term by name (the point term only
            when the teacher's outputs carry points).
        """
        check_compatible_outputs(teacher, student)
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        t_heat, s_heat = teacher["heatmap"].detach(), student["heatmap"]
        terms["heatmap_mse"] = F.mse_loss(s_heat, t_heat)
        (t_dx, t_dy), (s_dx, s_dy) = heatmap_gradients(t_heat), heatmap_gradients(s_heat)
        terms["heatmap_gradient_mse"] = 0.5 * (F.mse_loss(s_dx, t_dx) + F.mse_loss(s_dy, t_dy))

        temp = w.temperature
        terms["cell_kl"] = cell_kl(teacher["logits"], student["logits"], temp).mean() * temp**2

        t_desc, s_desc = teacher["descriptors"].detach(), student["descriptors"]
        terms["descriptor_mse"] = F.mse_loss(s_desc, t_desc)
        terms["descriptor_cosine"] = (1 - (s_desc * t_desc).sum(dim=1)).mean()
        if "point_descriptors" in teacher:
            if "point_descriptors" in student:  # the student's own reading at the teacher's points
                s_points = student["point_descriptors"]
            else:
                s_points = sample_descriptors(teacher["points"].detach(), s_desc)  # (B, N, D) unit
            t_points = teacher["point_descriptors"].detach()
            terms["point_descriptor_cosine"] = (1 - (s_points * t_points).sum(-1)).mean()
            terms["point_descriptor_relation"] = point_relation_kl(s_points, t_points, w.point_relation_temperature)
            if second_view is not None:
                terms["point_descriptor_matching"] = cross_view_matching_nll(
                    s_points, second_view["point_descriptors"], second_view["valid"], teacher["points"].detach(),
                    w.point_matching_temperature)
        if w.second_view_cell_kl > 0 and second_view is not None and "logits" in second_view:
            target, covered = warped_cell_targets(t_heat, second_view["homographies"])
            terms["second_view_cell_kl"] = masked_cell_kl(target, second_view["logits"], covered, temp)
        if w.point_descriptor_matching > 0 and "point_descriptor_matching" not in terms:
            raise ValueError("loss.point_descriptor_matching > 0 needs the teacher's points (points.keypoints or "
                             "points.grid_stride above 0) and the student's descriptors in a second view of each image")
        if w.second_view_cell_kl > 0 and "second_view_cell_kl" not in terms:
            raise ValueError("loss.second_view_cell_kl > 0 needs the student's logits in a second view of each image "
                             "and its homographies (second_view['logits'], second_view['homographies'])")

        total = sum(getattr(w, name) * value for name, value in terms.items() if getattr(w, name) != 0)
        if not isinstance(total, torch.Tensor):  # every weight is zero
            raise ValueError("All distillation loss weights are 0: nothing to learn")
        return {"loss": total, **{name: value.detach() for name, value in terms.items()}}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.weights).items())


def point_relation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``point_descriptor_relation``: mean over views and points of ``KL(softmax_j(t_i.t_j/tau) || softmax_j(s_i.t_j/tau))``.

    Args:
        student, teacher: ``(B, N, D)`` unit descriptors at the same ``N`` points of each view.
        temperature: ``tau``, in cosine units (0.1: a cosine 0.1 higher weighs e times more).

    Returns:
        A scalar >= 0, 0 when the student's descriptors are the teacher's.
    """
    target = (teacher @ teacher.transpose(1, 2) / temperature).softmax(dim=-1)  # (B, N, N), row i: point i
    log_student = (student @ teacher.transpose(1, 2) / temperature).log_softmax(dim=-1)
    return (target * (target.clamp_min(1e-12).log() - log_student)).sum(dim=-1).mean()


#: ``point_descriptor_matching`` leaves out negatives closer than this to the positive (pixels, first view):
#: a key point and a grid point 1-3 px apart are the same place for descriptors read from stride-4 and
#: stride-8 maps, not a mistake to punish.
MATCHING_EXCLUSION_PX = 4.0


def cross_view_matching_nll(
    first: torch.Tensor, second: torch.Tensor, valid: torch.Tensor, points: torch.Tensor, temperature: float,
    exclusion_px: float = MATCHING_EXCLUSION_PX,
) -> torch.Tensor:
    """``point_descriptor_matching``: symmetric cross-entropy of the dual softmax between two views' descriptors.

    With ``S_ij = f_i . g_j / tau`` over the valid points of a view (and without the negatives ``j != i``
    closer than ``exclusion_px`` to point ``i``), the term is the mean over valid points ``i`` of
    ``-(log softmax_j(S_ij)[i] + log softmax_j(S_ji)[i]) / 2``.

    Args:
        first, second: ``(B, N, D)`` unit descriptors of the same ``N`` scene points in two views.
        valid: ``(B, N)`` bool, points seen in both views.
        points: ``(B, N, 2)`` the points in the first view, pixels (for the exclusion radius).
        temperature: ``tau``, in cosine units.
        exclusion_px: negatives nearer than this to the positive are ignored.

    Returns:
        A scalar >= 0 (0 when no point is valid).
    """
    n = first.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=first.device)
    both_valid = valid[:, :, None] & valid[:, None, :]
    ignore = ((torch.cdist(points, points) < exclusion_px) | ~both_valid) & ~eye  # the diagonal always stays
    logits = (first @ second.transpose(1, 2) / temperature).masked_fill(ignore, float("-inf"))
    rows, columns = logits.log_softmax(dim=2), logits.log_softmax(dim=1)  # first view picks in the second; and back
    nll = -0.5 * (rows.diagonal(dim1=1, dim2=2) + columns.diagonal(dim1=1, dim2=2))
    if not bool(valid.any()):
        return nll.sum() * 0.0  # keeps the graph
    return nll[valid].mean()


#: A cell takes part in ``second_view_cell_kl`` when the warp covers each of its pixels at least this much
#: (bilinear coverage of the first view; 1 inside, 0 in the fill, between on the border's pixels).
COVERED = 0.999


def warped_cell_targets(heatmap: torch.Tensor, homographies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's first-view heatmap carried into the second view, as 65-bin cell targets.

    Args:
        heatmap: ``(B, H, W)`` per-pixel point probabilities of the first view (``H, W`` multiples of 8).
        homographies: ``(B, 3, 3)`` pixels of the first view -> pixels of the second.

    Returns:
        ``logits`` ``(B, 65, H/8, W/8)`` of the warped heatmap's cell distribution
        (:func:`~detkd.models.keypoint_teachers.base.cell_distribution_logits`: a cell that a zoom makes
        sum above 1 is scaled down to 1) and ``covered`` ``(B, H/8, W/8)`` bool, the cells whose every pixel
        the first view covers (:data:`COVERED`).
    """
    if heatmap.dim() != 3 or heatmap.shape[-2] % CELL or heatmap.shape[-1] % CELL:
        raise ValueError(f"heatmap must be (B, H, W) with H, W multiples of {CELL}, got {tuple(heatmap.shape)}")
    stacked = torch.stack([heatmap, torch.ones_like(heatmap)], dim=1)  # the heatmap and its coverage, one warp
    warped = warp_image(stacked, homographies)
    probabilities, coverage = warped[:, :1], warped[:, 1:]
    logits = cell_distribution_logits(F.pixel_unshuffle(probabilities.clamp(0.0, 1.0), CELL))
    covered = -F.max_pool2d(-coverage, kernel_size=CELL)[:, 0] >= COVERED  # the cell's least-covered pixel
    return logits, covered


def cell_kl(target_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(t / T) || softmax(s / T))`` per cell of ``(B, 65, Hc, Wc)`` logits: ``(B, Hc, Wc)``; no gradient
    reaches ``t``. The terms multiply its mean by ``T^2`` (Hinton et al.: the gradients' scale across temperatures)."""
    t_prob = (target_logits.detach() / temperature).softmax(dim=1)
    s_logprob = (student_logits / temperature).log_softmax(dim=1)
    return (t_prob * (t_prob.clamp_min(1e-12).log() - s_logprob)).sum(dim=1)


def masked_cell_kl(target_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """:func:`cell_kl` averaged over the ``(B, Hc, Wc)`` cells where ``mask`` is True, times ``T^2`` (a scalar 0 that
    keeps the graph when no cell is)."""
    kl = cell_kl(target_logits, student_logits, temperature)
    if not bool(mask.any()):
        return kl.sum() * 0.0
    return kl[mask].mean() * temperature**2


def check_compatible_outputs(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> None:
    """Raise a clear error when teacher and student outputs cannot be compared element-wise."""
    for key in ("logits", "heatmap", "descriptors"):
        if key not in teacher or key not in student:
            raise KeyError(f"Distillation needs '{key}' in both teacher and student outputs")
    if teacher["logits"].shape != student["logits"].shape:
        raise ValueError(
            f"Teacher detector logits {tuple(teacher['logits'].shape)} and student "
            f"{tuple(student['logits'].shape)} differ: both must see the same images and use 8x8 cells"
        )
    if ("points" in teacher) != ("point_descriptors" in teacher):
        raise KeyError("The teacher's outputs carry one of 'points' and 'point_descriptors' without the other")
    if "points" in teacher:
        points, described = teacher["points"], teacher["point_descriptors"]
        b, d = teacher["descriptors"].shape[:2]
        if points.dim() != 3 or points.shape[0] != b or points.shape[2] != 2 or described.shape != (b, points.shape[1], d):
            raise ValueError(f"Teacher points {tuple(points.shape)} and point descriptors {tuple(described.shape)} "
                             f"must be (B, N, 2) and (B, N, D) with B={b}, D={d}")
    t_dim, s_dim = teacher["descriptors"].shape[1], student["descriptors"].shape[1]
    if teacher["descriptors"].shape != student["descriptors"].shape:
        raise ValueError(
            f"Teacher descriptors are {t_dim}-d and student descriptors {s_dim}-d "
            f"(shapes {tuple(teacher['descriptors'].shape)} vs {tuple(student['descriptors'].shape)}): "
            f"build the student with descriptor_dim={t_dim}"
        )
    if "point_descriptors" in student and (
        "points" not in teacher or student["point_descriptors"].shape != teacher["point_descriptors"].shape
    ):
        raise ValueError("The student's point_descriptors must be read at the teacher's points (forward with "
                         "select_points returning them)")
