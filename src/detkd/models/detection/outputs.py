"""The one structure every detector adapter returns and every detection distillation loss reads.

Conventions (all adapters, all families):

* a batch is a float tensor ``(B, 3, H, W)`` in ``[0, 1]``, RGB, already at its training size
  (no resizing inside the model; ``H`` and ``W`` multiples of the largest stride). Normalisation
  with the ImageNet mean/std happens inside the adapter.
* boxes are ``xyxy`` in pixels of that batch tensor; labels are class indices ``0 .. K-1``
  (no background index: an adapter that wraps a model with one, such as Faster R-CNN, shifts).
* dense head outputs are listed per *anchor* in torchvision's order: level (finest first), then
  row, then column, then the anchors of that location. The anchors of the location in row ``i``
  and column ``j`` of a level with stride ``s`` are centred on the point ``(j * s, i * s)``
  (torchvision's ``AnchorGenerator``: the cell's top-left corner, not its middle). FCOS has one
  "anchor" per location: a square of side ``s`` centred on that point (torchvision's FCOS uses
  its size to scale the box deltas and its centre as the point).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class DetectorOutputs:
    """Raw outputs of one detector forward pass on a batch of ``B`` images.

    Attributes:
        family: ``"retinanet"``, ``"fcos"`` or ``"faster_rcnn"``.
        features: FPN maps, finest first, each ``(B, C, H_l, W_l)``; ``C`` is the same on every level.
        strides: pixels per feature cell of each level, e.g. ``[8, 16, 32, 64, 128]``.
        image_size: ``(H, W)`` of the batch tensor, pixels.
        anchors_per_location: anchors at each feature location (RetinaNet 9, FCOS 1, RPN 3).
        anchors: ``(N, 4)`` xyxy pixels, ``N = A * sum_l H_l * W_l``; the same for every image.
        cls_logits: ``(B, N, K)`` logits before the sigmoid. RetinaNet/FCOS: ``K`` object classes.
            Faster R-CNN: the RPN objectness, ``K = 1`` (its class scores live in the RoI head).
        box_regression: ``(B, N, 4)`` deltas in the family's own box coder (see ``boxes``).
        boxes: ``(B, N, 4)`` the deltas decoded against the anchors, xyxy pixels.
        centerness: ``(B, N)`` FCOS centre-ness logits; ``None`` for other families.
        losses: the family's supervised losses (``{"classification": ..., ...}``) when targets
            were given to the forward pass, else empty.
        extra: family-specific state that post-processing needs (e.g. Faster R-CNN proposals).
        second_stage: two-stage detectors only (Faster R-CNN), else ``None``: the second stage
            (the RoI head) run on any boxes over this pass's FPN maps, ``boxes`` a list of ``B``
            tensors ``(K_b, 4)`` xyxy pixels -> ``(class_logits (sum K_b, K + 1), box_regression
            (sum K_b, 4 (K + 1)))``: column 0 is background, column ``k + 1`` class ``k``; deltas in
            the family's box coder, 4 per class column. Gradients flow as through the head.
    """

    family: str
    features: list[Tensor]
    strides: list[int]
    image_size: tuple[int, int]
    anchors_per_location: int
    anchors: Tensor
    cls_logits: Tensor
    box_regression: Tensor
    boxes: Tensor
    centerness: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    second_stage: Callable[[list[Tensor]], tuple[Tensor, Tensor]] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.cls_logits.shape[-1])

    @property
    def level_sizes(self) -> list[tuple[int, int]]:
        return [(int(f.shape[-2]), int(f.shape[-1])) for f in self.features]

    @property
    def channels(self) -> int:
        return int(self.features[0].shape[1])


def per_anchor(outputs: DetectorOutputs) -> tuple[Tensor, Tensor]:
    """Class scores and boxes of every anchor (every predicted instance), no reduction.

    Returns:
        scores: ``(B, N, K)`` class probabilities: the sigmoid of the class logits; FCOS:
            ``sqrt(sigmoid(class) * sigmoid(centre-ness))``, the score its post-processing ranks by.
        boxes: ``(B, N, 4)`` xyxy pixels (``outputs.boxes``).
    """
    probs = outputs.cls_logits.sigmoid()
    if outputs.centerness is not None:
        probs = torch.sqrt(probs * outputs.centerness.sigmoid().unsqueeze(-1))
    return probs, outputs.boxes


def per_location(outputs: DetectorOutputs) -> tuple[Tensor, Tensor]:
    """Collapse the anchors of each feature location into one prediction per location.

    Different families place different numbers of anchors at a location; per location they
    share one grid (same strides, same image size), which is where teacher and student of
    different families are compared. (Where both have the same anchors, compare per anchor,
    :func:`per_anchor`, instead: the maximum over a location's anchors forgets which anchor,
    i.e. which box shape, holds the score.)

    Returns:
        scores: ``(B, L, K)`` class probabilities of :func:`per_anchor`, the maximum over the
            location's anchors (per class).
        boxes: ``(B, L, 4)`` xyxy pixels of the anchor that holds the highest score there.
        ``L = sum_l H_l * W_l``.
    """
    probs, anchor_boxes = per_anchor(outputs)
    batch, n, k = probs.shape
    a = outputs.anchors_per_location
    if n % a:
        raise ValueError(f"{n} anchors is not a multiple of {a} anchors per location")
    probs = probs.reshape(batch, n // a, a, k)
    best_per_anchor, _ = probs.max(dim=3)  # (B, L, A)
    best_anchor = best_per_anchor.argmax(dim=2)  # (B, L)
    boxes = anchor_boxes.reshape(batch, n // a, a, 4)
    index = best_anchor[..., None, None].expand(batch, n // a, 1, 4)
    return probs.max(dim=2).values, boxes.gather(2, index).squeeze(2)
