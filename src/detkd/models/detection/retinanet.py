"""The RetinaNet family behind the :class:`~detkd.models.detection.adapters.DetectorAdapter` interface."""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from detkd.models.detection.adapters import DetectorAdapter, Target
from detkd.models.detection.outputs import DetectorOutputs


class RetinaNetAdapter(DetectorAdapter):
    """torchvision :class:`~torchvision.models.detection.RetinaNet`: 9 anchors per location,
    sigmoid focal loss (``"classification"``) and L1 on :class:`BoxCoder` deltas (``"bbox_regression"``);
    IoU matcher with thresholds 0.5 / 0.4 and low-quality matches."""

    family = "retinanet"
    model_type = RetinaNet

    def _run_heads(self, image_list: ImageList, features: list[Tensor], targets: list[Target] | None) -> DetectorOutputs:
        model: RetinaNet = self.model
        head_outputs = model.head(features)
        anchors = model.anchor_generator(image_list, features)
        losses = model.compute_loss(targets, head_outputs, anchors) if targets is not None else {}
        deltas = head_outputs["bbox_regression"]
        batch, n = deltas.shape[:2]
        boxes = model.box_coder.decode_single(deltas.reshape(-1, 4), anchors[0].repeat(batch, 1)).reshape(batch, n, 4)
        return self._dense_outputs(
            features, image_list.image_sizes[0], anchors[0], head_outputs["cls_logits"], deltas, boxes, losses=losses
        )

    def _match(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        return self.model.proposal_matcher(box_iou(gt_boxes, anchors))
