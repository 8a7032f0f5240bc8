"""The two-stage Faster R-CNN family behind the :class:`~detkd.models.detection.adapters.DetectorAdapter` interface."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import box_iou

from detkd.models.detection.adapters import DetectorAdapter, Target, temporary_attributes
from detkd.models.detection.backbones import FPN_LEVEL_NAMES
from detkd.models.detection.outputs import DetectorOutputs


class FasterRCNNAdapter(DetectorAdapter):
    """torchvision :class:`~torchvision.models.detection.FasterRCNN` on P3..P7.

    The dense outputs are the RPN's (3 anchors per location, ``K = 1`` objectness logits,
    :class:`BoxCoder` deltas). ``extra`` holds the two-stage state:

    * ``"proposals"``: list of ``B`` tensors ``(P_i, 4)`` xyxy pixels, the RPN's boxes after its
      NMS and top-n (detached, as torchvision does);
    * ``"proposal_scores"``: list of ``(P_i,)`` objectness probabilities;
    * eval mode only, the RoI head on those proposals: ``"roi_class_logits"`` ``(sum P_i, K + 1)``
      (column 0 is background, column ``k + 1`` is class ``k``) and ``"roi_box_regression"``
      ``(sum P_i, 4 (K + 1))``.

    ``second_stage`` runs the same RoI head on any boxes (GID distils it on its General Instances).

    Losses (when targets are given): ``"loss_objectness"``, ``"loss_rpn_box_reg"`` (RPN, on a random
    sample of 256 anchors per image) and ``"loss_classifier"``, ``"loss_box_reg"`` (RoI head, on a
    random sample of proposals plus the ground-truth boxes).
    """

    family = "faster_rcnn"
    model_type = FasterRCNN

    def _anchor_generator(self) -> nn.Module:
        return self.model.rpn.anchor_generator

    def _run_heads(self, image_list: ImageList, features: list[Tensor], targets: list[Target] | None) -> DetectorOutputs:
        rpn = self.model.rpn
        objectness_maps, delta_maps = rpn.head(features)
        anchors = rpn.anchor_generator(image_list, features)
        per_level = [o[0].numel() for o in objectness_maps]  # A * H_l * W_l
        objectness, deltas = concat_box_prediction_layers(objectness_maps, delta_maps)  # (B*N, 1), (B*N, 4)
        batch = len(anchors)
        decoded = rpn.box_coder.decode(deltas, anchors).view(batch, -1, 4)
        proposals, proposal_scores = rpn.filter_proposals(
            decoded.detach(), objectness.detach(), image_list.image_sizes, per_level
        )
        extra: dict[str, Any] = {"proposals": proposals, "proposal_scores": proposal_scores}
        feature_dict = dict(zip(FPN_LEVEL_NAMES, features))
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses.update(self._rpn_losses(anchors, objectness, deltas, targets))
            losses.update(self._roi_losses(feature_dict, proposals, image_list.image_sizes, targets))
        if not self.training:
            extra["roi_class_logits"], extra["roi_box_regression"] = self._roi_head(
                feature_dict, proposals, image_list.image_sizes
            )
        outputs = self._dense_outputs(
            features,
            image_list.image_sizes[0],
            anchors[0],
            objectness.view(batch, -1, 1),
            deltas.view(batch, -1, 4),
            decoded,
            losses=losses,
            extra=extra,
        )
        outputs.second_stage = lambda boxes: self._roi_head(feature_dict, list(boxes), image_list.image_sizes)
        return outputs

    def _rpn_losses(self, anchors: list[Tensor], objectness: Tensor, deltas: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        rpn = self.model.rpn
        labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = rpn.box_coder.encode(matched_gt_boxes, anchors)
        loss_objectness, loss_box = rpn.compute_loss(objectness, deltas, labels, regression_targets)
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}

    def _roi_losses(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]], targets: list[Target]
    ) -> dict[str, Tensor]:
        roi_heads = self.model.roi_heads
        shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 0 is background there
        sampled, _, labels, regression_targets = roi_heads.select_training_samples(list(proposals), shifted)
        class_logits, box_regression = self._roi_head(features, sampled, image_sizes)
        loss_classifier, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box}

    def _roi_head(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        roi_heads = self.model.roi_heads
        pooled = roi_heads.box_roi_pool(features, proposals, image_sizes)
        return roi_heads.box_predictor(roi_heads.box_head(pooled))

    def postprocess(
        self, outputs: DetectorOutputs, score_threshold: float = 0.05, nms_iou: float = 0.5, max_detections: int = 100
    ) -> list[dict[str, Tensor]]:
        proposals = outputs.extra["proposals"]
        batch = len(proposals)
        image_sizes = [outputs.image_size] * batch
        if "roi_class_logits" in outputs.extra:
            class_logits, box_regression = outputs.extra["roi_class_logits"], outputs.extra["roi_box_regression"]
        else:  # a training-mode forward: run the RoI head on its proposals now
            class_logits, box_regression = self._roi_head(
                dict(zip(FPN_LEVEL_NAMES, outputs.features)), proposals, image_sizes
            )
        with temporary_attributes(
            self.model.roi_heads, score_thresh=score_threshold, nms_thresh=nms_iou, detections_per_img=max_detections
        ):
            boxes, scores, labels = self.model.roi_heads.postprocess_detections(
                class_logits, box_regression, proposals, image_sizes
            )
        return [{"boxes": b, "scores": s, "labels": lab - 1} for b, s, lab in zip(boxes, scores, labels)]

    def postprocess_reference(
        self, outputs: DetectorOutputs, score_threshold: float = 0.05, nms_iou: float = 0.5, max_detections: int = 100
    ) -> list[dict[str, Tensor]]:
        """Faster R-CNN's :meth:`postprocess` is torchvision's own."""
        return self.postprocess(outputs, score_threshold, nms_iou, max_detections)

    def _match(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        return self.model.rpn.proposal_matcher(box_iou(gt_boxes, anchors))
