"""The FCOS family behind the :class:`~detkd.models.detection.adapters.DetectorAdapter` interface."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import FCOS
from torchvision.models.detection.image_list import ImageList

from detkd.models.detection.adapters import DetectorAdapter, Target
from detkd.models.detection.outputs import DetectorOutputs


class FCOSAdapter(DetectorAdapter):
    """torchvision :class:`~torchvision.models.detection.FCOS`: one "anchor" per location, a
    stride-sized square centred on the location's point; focal loss (``"classification"``),
    GIoU (``"bbox_regression"``) and centre-ness BCE (``"bbox_ctrness"``); centre sampling
    (radius 1.5 strides) with per-level distance ranges as the assignment."""

    family = "fcos"
    model_type = FCOS

    def _run_heads(self, image_list: ImageList, features: list[Tensor], targets: list[Target] | None) -> DetectorOutputs:
        model: FCOS = self.model
        head_outputs = model.head(features)
        anchors = model.anchor_generator(image_list, features)
        losses = {}
        if targets is not None:
            per_level = [f.shape[-2] * f.shape[-1] for f in features]
            losses = model.compute_loss(targets, head_outputs, anchors, per_level)
        deltas = head_outputs["bbox_regression"]
        boxes = model.box_coder.decode(deltas, anchors[0])
        return self._dense_outputs(
            features,
            image_list.image_sizes[0],
            anchors[0],
            head_outputs["cls_logits"],
            deltas,
            boxes,
            centerness=head_outputs["bbox_ctrness"].squeeze(-1),
            losses=losses,
        )

    def _match(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        # torchvision's FCOS.compute_loss does this inline (not callable on its own); same steps.
        radius = self.model.center_sampling_radius
        gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (M, 2)
        anchor_centers = (anchors[:, :2] + anchors[:, 2:]) / 2  # (N, 2)
        anchor_sizes = anchors[:, 2] - anchors[:, 0]  # (N,) = the level's stride
        # centre sampling: the point lies within radius * stride of the box centre (Chebyshev)
        match = (anchor_centers[:, None, :] - gt_centers[None, :, :]).abs().max(dim=2).values < (
            radius * anchor_sizes[:, None]
        )
        x, y = anchor_centers[:, 0:1], anchor_centers[:, 1:2]  # (N, 1)
        x0, y0, x1, y1 = gt_boxes[None, :, 0], gt_boxes[None, :, 1], gt_boxes[None, :, 2], gt_boxes[None, :, 3]
        distances = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # (N, M, 4) l, t, r, b
        match &= distances.min(dim=2).values > 0  # the point lies inside the box
        # each level regresses a range of distances; the finest has no lower and the coarsest no upper bound
        lower = anchor_sizes * 4
        lower[anchor_sizes == min(self._strides)] = 0
        upper = anchor_sizes * 8
        upper[anchor_sizes == max(self._strides)] = float("inf")
        largest = distances.max(dim=2).values
        match &= (largest > lower[:, None]) & (largest < upper[:, None])
        # several candidates: the smallest box wins
        areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        score = match.to(torch.float32) * (1e8 - areas[None, :])
        best, index = score.max(dim=1)
        index[best < 1e-5] = -1
        return index
