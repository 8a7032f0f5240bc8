"""Label-free key-point distillation loss (Yashchenko et al. 2020, GoodPoint).

The student learns to reproduce the frozen teacher's dense outputs on the same image.
The loss reads two output dicts of :meth:`detkd.models.superpoint.SuperPoint.forward`
and knows nothing of training:

* ``heatmap_mse``: MSE between full-resolution heatmaps (GoodPoint weight 120);
* ``heatmap_gradient_mse``: MSE between their spatial gradients (GoodPoint weight 150),
  which keeps peaks sharp and in place;
* ``cell_kl``: KL divergence from the teacher's 65-bin cell distribution (soft targets,
  temperature ``T``) to the student's, scaled by ``T^2`` as in Hinton et al.;
* ``descriptor_mse``: MSE between L2-normalised dense descriptors (GoodPoint weight 10);
* ``descriptor_cosine``: mean ``1 - cos`` between them.

Every term is averaged over its elements; the total is the weighted sum. A weight of 0
switches a term off (it is still reported, without gradient cost).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detkd.config import dataclass_from_dict


@dataclass
class KeypointDistillWeights:
    """Weights of each term; the defaults follow GoodPoint where it gives one."""

    heatmap_mse: float = 120.0
    heatmap_gradient_mse: float = 150.0
    cell_kl: float = 1.0
    descriptor_mse: float = 10.0
    descriptor_cosine: float = 1.0
    temperature: float = 1.0  # softens both cell distributions in cell_kl

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
