"""The adapter interface: one over torchvision's RetinaNet, FCOS and Faster R-CNN (one file per family:
:mod:`~detkd.models.detection.retinanet`, :mod:`~detkd.models.detection.fcos`,
:mod:`~detkd.models.detection.faster_rcnn`).

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
from torchvision.models.detection.image_list import ImageList

from detkd.models.detection.outputs import DetectorOutputs, per_anchor
from detkd.models.detection.postprocess import dense_detections

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
        """Detections per image by the rule of torchvision's ``postprocess_detections`` of this family.

        Scores are those of torchvision (:func:`~detkd.models.detection.outputs.per_anchor`: the class
        sigmoid; FCOS: its geometric mean with the centre-ness sigmoid); per level the top
        ``topk_candidates`` above ``score_threshold`` enter a class-wise NMS. Computed by
        :func:`~detkd.models.detection.postprocess.dense_detections`, which gives torchvision's
        detections (up to rounding and ties) with fewer top-k calls and an NMS that stops early.

        Returns:
            One dict per image: ``boxes`` ``(D, 4)`` xyxy pixels clipped to the image,
            ``scores`` ``(D,)``, ``labels`` ``(D,)`` int64 in ``0 .. K-1``; ``D <= max_detections``,
            sorted by decreasing score.
        """
        scores, boxes = per_anchor(outputs)
        per_level = self._split_per_level(outputs)
        return [
            dense_detections(scores[b], boxes[b], per_level, outputs.image_size, score_threshold, nms_iou,
                             max_detections, candidates_per_level=int(self.model.topk_candidates))
            for b in range(scores.shape[0])
        ]

    def postprocess_reference(
        self,
        outputs: DetectorOutputs,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
    ) -> list[dict[str, Tensor]]:
        """:meth:`postprocess` as torchvision computes it (its ``postprocess_detections``, level by
        level, NMS over all candidates): the reference that tests and benchmarks compare with."""
        head_outputs = {"cls_logits": outputs.cls_logits, "bbox_regression": outputs.box_regression}
        if outputs.centerness is not None:
            head_outputs["bbox_ctrness"] = outputs.centerness.unsqueeze(-1)
        per_level = self._split_per_level(outputs)
        split = {key: list(value.split(per_level, dim=1)) for key, value in head_outputs.items()}
        batch = outputs.cls_logits.shape[0]
        anchors = [list(outputs.anchors.split(per_level))] * batch
        with temporary_attributes(
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


@contextlib.contextmanager
def temporary_attributes(obj: object, **values: Any) -> Iterator[None]:
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
