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
  It stays available to reproduce GoodPoint's objective.

Every term is averaged over its elements; the total is the weighted sum. A weight of 0
switches a term off (it is still reported, without gradient cost).

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


@dataclass
class KeypointDistillWeights:
    """Weights of each term (>= 0; see the module doc for how they differ from GoodPoint's)."""

    heatmap_mse: float = 120.0
    heatmap_gradient_mse: float = 150.0
    cell_kl: float = 1.0
    descriptor_mse: float = 0.0  # = 2/D x descriptor_cosine for unit descriptors: off by default
    descriptor_cosine: float = 1.0
    temperature: float = 1.0  # softens both cell distributions in cell_kl

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"loss.{name} must be a finite number >= 0, got {value!r}: a negative weight would make "
                    "the student move away from the teacher (0 switches a term off)")
        if self.temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {self.temperature}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "KeypointDistillWeights":
        return dataclass_from_dict(cls, values, "loss")


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

    def forward(
        self, teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            teacher, student: dicts with ``logits`` ``(B, 65, Hc, Wc)``, ``heatmap`` ``(B, H, W)``
                and ``descriptors`` ``(B, D, Hc, Wc)`` (L2-normalised), as returned by
                ``SuperPoint.forward`` on the same images.

        Returns:
            ``loss`` (weighted sum, scalar) and every unweighted term by name.
        """
        check_compatible_outputs(teacher, student)
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        t_heat, s_heat = teacher["heatmap"].detach(), student["heatmap"]
        terms["heatmap_mse"] = F.mse_loss(s_heat, t_heat)
        (t_dx, t_dy), (s_dx, s_dy) = heatmap_gradients(t_heat), heatmap_gradients(s_heat)
        terms["heatmap_gradient_mse"] = 0.5 * (F.mse_loss(s_dx, t_dx) + F.mse_loss(s_dy, t_dy))

        temp = w.temperature
        t_prob = (teacher["logits"].detach() / temp).softmax(dim=1)
        s_logprob = (student["logits"] / temp).log_softmax(dim=1)
        kl = (t_prob * (t_prob.clamp_min(1e-12).log() - s_logprob)).sum(dim=1)  # (B, Hc, Wc)
        terms["cell_kl"] = kl.mean() * temp**2

        t_desc, s_desc = teacher["descriptors"].detach(), student["descriptors"]
        terms["descriptor_mse"] = F.mse_loss(s_desc, t_desc)
        terms["descriptor_cosine"] = (1 - (s_desc * t_desc).sum(dim=1)).mean()

        total = sum(getattr(w, name) * value for name, value in terms.items() if getattr(w, name) != 0)
        if not isinstance(total, torch.Tensor):  # every weight is zero
            raise ValueError("All distillation loss weights are 0: nothing to learn")
        return {"loss": total, **{name: value.detach() for name, value in terms.items()}}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.weights).items())


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
    t_dim, s_dim = teacher["descriptors"].shape[1], student["descriptors"].shape[1]
    if teacher["descriptors"].shape != student["descriptors"].shape:
        raise ValueError(
            f"Teacher descriptors are {t_dim}-d and student descriptors {s_dim}-d "
            f"(shapes {tuple(teacher['descriptors'].shape)} vs {tuple(student['descriptors'].shape)}): "
            f"build the student with descriptor_dim={t_dim}"
        )
