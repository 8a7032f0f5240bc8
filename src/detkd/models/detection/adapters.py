"""Adapters: one interface over torchvision's RetinaNet, FCOS and Faster R-CNN.

An adapter wraps the torchvision model (``adapter.model``) and runs its parts itself —
backbone, head, anchor generator, the family's own ``compute_loss`` and
``postprocess_detections`` — so that one forward pass returns everything distillation needs
in a :class:`~detkd.models.detection.outputs.DetectorOutputs` (conventions in that module):

* no resizing: torchvision's ``GeneralizedRCNNTransform`` is bypassed except for its
  ``normalize`` (ImageNet mean/std); ``H`` and ``W`` must be multiples of the largest stride;
* labels ``0 .. K-1`` in targets and predictions (Faster R-CNN shifts by one inside);
* losses are computed whenever targets are given, in training and in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import box_iou

from detkd.models.detection.backbones import FPN_LEVEL_NAMES
from detkd.models.detection.outputs import DetectorOutputs

Target = dict[str, Tensor]


class DetectorAdapter(nn.Module):
    """Base class: a torchvision detector behind the detkd detector interface.

    Args:
        model: the torchvision detector (RetinaNet, FCOS or FasterRCNN) built for this family.
        num_classes: ``K``, object classes (no background).
        strides: stride of each FPN level, finest first.
        config: ``{"name", "num_classes", "overrides"}`` (+ ``"class_names"``), enough for
            :func:`~detkd.models.detection.registry.create_detector_from_config` to rebuild it.
        class_names: optional names of the ``K`` classes.
    """

    family: ClassVar[str] = ""
    model_type: ClassVar[type[nn.Module]] = nn.Module

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        strides: Sequence[int],
        config: dict[str, Any],
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, self.model_type):
            raise TypeError(f"{type(self).__name__} wraps a {self.model_type.__name__}, got {type(model).__name__}")
        self.model = model
        self._num_classes = int(num_classes)
        self._strides = [int(s) for s in strides]
        self._config = dict(config)
        self.class_names = class_names

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def strides(self) -> list[int]:
        return list(self._strides)

    @property
    def fpn_channels(self) -> int:
        return int(self.model.backbone.out_channels)

    @property
    def name(self) -> str:
        return str(self._config["name"])

    @property
    def config(self) -> dict[str, Any]:
        """``{"name", "num_classes", "overrides", "class_names"}``: plain values, enough to rebuild."""
        return {
            "name": self._config["name"],
            "num_classes": self._num_classes,
            "overrides": dict(self._config.get("overrides", {})),
            "class_names": list(self._class_names) if self._class_names is not None else None,
        }

    @property
    def class_names(self) -> list[str] | None:
        return list(self._class_names) if self._class_names is not None else None

    @class_names.setter
    def class_names(self, names: Sequence[str] | None) -> None:
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != self._num_classes:
                raise ValueError(
                    f"{len(names)} class names given for a detector with {self._num_classes} classes: {names}"
                )
        self._class_names = names

    @property
    def anchors_per_location(self) -> int:
        return int(self._anchor_generator().num_anchors_per_location()[0])

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, targets: list[Target] | None = None) -> DetectorOutputs:
        """Run the detector on a batch.

        Args:
            images: ``(B, 3, H, W)`` float RGB in ``[0, 1]``; ``H``, ``W`` multiples of the largest stride.
            targets: optional, one dict per image: ``boxes`` ``(M, 4)`` xyxy pixels (float) and
                ``labels`` ``(M,)`` int64 in ``0 .. K-1``; ``M`` may be 0.

        Returns:
            :class:`DetectorOutputs`; ``losses`` holds the family's supervised losses when
            ``targets`` is given (training or eval mode).
        """
        self._check_images(images)
        if targets is not None:
            targets = self._check_targets(targets, images)
        height, width = int(images.shape[-2]), int(images.shape[-1])
        normalised = self.model.transform.normalize(images)
        image_list = ImageList(normalised, [(height, width)] * int(images.shape[0]))
        features = list(self.model.backbone(normalised).values())
        self._check_levels(features, (height, width))
        return self._run_heads(image_list, features, targets)

    def _run_heads(
        self, image_list: ImageList, features: list[Tensor], targets: list[Target] | None
    ) -> DetectorOutputs:
        raise NotImplementedError

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Eval-mode forward and :meth:`postprocess`; the module's mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            return self.postprocess(self(images), score_threshold, nms_iou, max_detections)
        finally:
            self.train(was_training)

    def postprocess(
        self,
        outputs: DetectorOutputs,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Detections per image with torchvision's ``postprocess_detections`` of this family.

        Scores are those of torchvision: sigmoid of the class logit (FCOS: geometric mean with
        the centre-ness sigmoid), per-level top ``topk_candidates`` before a class-wise NMS.

        Returns:
            One dict per image: ``boxes`` ``(D, 4)`` xyxy pixels clipped to the image,
            ``scores`` ``(D,)``, ``labels`` ``(D,)`` int64 in ``0 .. K-1``; ``D <= max_detections``,
            sorted by decreasing score.
        """
        head_outputs = {"cls_logits": outputs.cls_logits, "bbox_regression": outputs.box_regression}
        if outputs.centerness is not None:
            head_outputs["bbox_ctrness"] = outputs.centerness.unsqueeze(-1)
        per_level = self._split_per_level(outputs)
        split = {key: list(value.split(per_level, dim=1)) for key, value in head_outputs.items()}
        batch = outputs.cls_logits.shape[0]
        anchors = [list(outputs.anchors.split(per_level))] * batch
        with _attributes(
            self.model, score_thresh=score_threshold, nms_thresh=nms_iou, detections_per_img=max_detections
        ):
            return self.model.postprocess_detections(split, anchors, [outputs.image_size] * batch)

    def match_anchors(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        """The ground-truth box each anchor is assigned to by this family's own matcher.

        Args:
            anchors: ``(N, 4)`` xyxy pixels (e.g. ``DetectorOutputs.anchors``).
            gt_boxes: ``(M, 4)`` xyxy pixels.

        Returns:
            ``(N,)`` int64: index into ``gt_boxes``, ``-1`` background, ``-2`` ignored
            (between the IoU thresholds; torchvision ``Matcher`` conventions).
        """
        anchors, gt_boxes = _check_box_tensor(anchors, "anchors"), _check_box_tensor(gt_boxes, "gt_boxes")
        if gt_boxes.shape[0] == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
        return self._match(anchors, gt_boxes.to(anchors))

    def _match(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        raise NotImplementedError

    def _anchor_generator(self) -> nn.Module:
        return self.model.anchor_generator

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"{self.name}: images must be a (B, 3, H, W) tensor, got {shape}")
        if not images.is_floating_point():
            raise ValueError(
                f"{self.name}: images must be float in [0, 1], got {images.dtype}; divide uint8 images by 255"
            )
        height, width = int(images.shape[-2]), int(images.shape[-1])
        largest = max(self._strides)
        if height % largest or width % largest:
            fit_h, fit_w = (-(-height // largest)) * largest, (-(-width // largest)) * largest
            raise ValueError(
                f"{self.name}: image size {height}x{width} (HxW) is not a multiple of {largest}, the largest "
                f"stride of its feature pyramid (strides {self._strides}); pad or resize the batch, "
                f"e.g. to {fit_h}x{fit_w}"
            )

    def _check_targets(self, targets: list[Target], images: Tensor) -> list[Target]:
        """Validate targets (shapes, dtypes, finite boxes with positive size, labels in range)."""
        batch = int(images.shape[0])
        if not isinstance(targets, (list, tuple)) or len(targets) != batch:
            found = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
            raise ValueError(f"{self.name}: targets must be a list of {batch} dicts (one per image), got {found}")
        checked = []
        for i, target in enumerate(targets):
            if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
                raise ValueError(f"{self.name}: targets[{i}] must be a dict with 'boxes' and 'labels'")
            boxes, labels = target["boxes"], target["labels"]
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
                shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
                raise ValueError(f"{self.name}: targets[{i}]['boxes'] must be an (M, 4) xyxy tensor, got {shape}")
            if not isinstance(labels, Tensor) or labels.shape != (boxes.shape[0],):
                shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
                raise ValueError(
                    f"{self.name}: targets[{i}]['labels'] must have shape ({boxes.shape[0]},) like its boxes, got {shape}"
                )
            if labels.is_floating_point() or labels.dtype == torch.bool:
                raise ValueError(f"{self.name}: targets[{i}]['labels'] must be integer class indices, got {labels.dtype}")
            boxes = boxes.to(device=images.device, dtype=images.dtype)
            labels = labels.to(device=images.device, dtype=torch.int64)
            bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                j = int(bad.nonzero()[0])
                raise ValueError(
                    f"{self.name}: targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} is not a box "
                    "(needs finite x1 < x2 and y1 < y2, xyxy pixels)"
                )
            out_of_range = (labels < 0) | (labels >= self._num_classes)
            if out_of_range.any():
                j = int(out_of_range.nonzero()[0])
                raise ValueError(
                    f"{self.name}: targets[{i}]['labels'][{j}] = {int(labels[j])} is outside 0..{self._num_classes - 1}"
                )
            checked.append({"boxes": boxes, "labels": labels})
        return checked

    def _check_levels(self, features: list[Tensor], image_size: tuple[int, int]) -> None:
        if len(features) != len(self._strides):
            raise RuntimeError(f"{self.name}: backbone returned {len(features)} levels, expected {len(self._strides)}")
        for level, (feature, stride) in enumerate(zip(features, self._strides)):
            expected = (image_size[0] // stride, image_size[1] // stride)
            if tuple(feature.shape[-2:]) != expected:
                raise RuntimeError(
                    f"{self.name}: level {level} is {tuple(feature.shape[-2:])}, expected {expected} at stride {stride}"
                )

    # ------------------------------------------------------------------ helpers for subclasses
    def _dense_outputs(
        self,
        features: list[Tensor],
        image_size: tuple[int, int],
        anchors: Tensor,
        cls_logits: Tensor,
        box_regression: Tensor,
        boxes: Tensor,
        **kwargs: Any,
    ) -> DetectorOutputs:
        return DetectorOutputs(
            family=self.family,
            features=features,
            strides=self.strides,
            image_size=image_size,
            anchors_per_location=self.anchors_per_location,
            anchors=anchors,
            cls_logits=cls_logits,
            box_regression=box_regression,
            boxes=boxes,
            **kwargs,
        )

    def _split_per_level(self, outputs: DetectorOutputs) -> list[int]:
        """Number of anchors on each level, finest first."""
        a = outputs.anchors_per_location
        return [a * h * w for h, w in outputs.level_sizes]


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
        with _attributes(
            self.model.roi_heads, score_thresh=score_threshold, nms_thresh=nms_iou, detections_per_img=max_detections
        ):
            boxes, scores, labels = self.model.roi_heads.postprocess_detections(
                class_logits, box_regression, proposals, image_sizes
            )
        return [{"boxes": b, "scores": s, "labels": lab - 1} for b, s, lab in zip(boxes, scores, labels)]

    def _match(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        return self.model.rpn.proposal_matcher(box_iou(gt_boxes, anchors))


ADAPTERS: dict[str, type[DetectorAdapter]] = {
    RetinaNetAdapter.family: RetinaNetAdapter,
    FCOSAdapter.family: FCOSAdapter,
    FasterRCNNAdapter.family: FasterRCNNAdapter,
}


# ---------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _attributes(obj: object, **values: Any) -> Iterator[None]:
    """Set attributes of ``obj`` for the duration of a ``with`` block (torchvision reads its
    post-processing thresholds from attributes)."""
    old = {key: getattr(obj, key) for key in values}
    try:
        for key, value in values.items():
            setattr(obj, key, value)
        yield
    finally:
        for key, value in old.items():
            setattr(obj, key, value)


def _check_box_tensor(boxes: Tensor, what: str) -> Tensor:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{what} must be an (N, 4) xyxy tensor, got {shape}")
    return boxes if boxes.is_floating_point() else boxes.float()
