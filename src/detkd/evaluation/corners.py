"""Corner-detection precision and recall on synthetic shapes (how MagicPoint is judged).

A detection is correct when a labelled corner lies within ``distance`` pixels of it;
a label is found when a detection lies within ``distance`` pixels of it (both may be shared:
two detections next to one corner are both correct, one detection between two corners finds
both). Counts are summed over all images before dividing (micro average), so images
without corners (``ellipses``, ``background``) count through their false detections only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from detkd.data.synthetic_shapes import SyntheticShapesDataset
from detkd.models.keypoint_ops import detect_keypoints
from detkd.models.superpoint import SuperPoint

#: Pixels: a detection this close to a labelled corner is correct.
CORNER_DISTANCE = 2.0


@dataclass
class CornerCounts:
    """Summed counts; :attr:`precision` and :attr:`recall` are derived from them."""

    detections: int = 0
    correct_detections: int = 0
    labels: int = 0
    found_labels: int = 0
    labels_inside: int = 0  # labels at least ``border`` px from every edge
    found_labels_inside: int = 0
    images: int = 0

    def __iadd__(self, other: CornerCounts) -> CornerCounts:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)
        return self

    @property
    def precision(self) -> float:
        """Correct detections / detections (NaN without detections)."""
        return self.correct_detections / self.detections if self.detections else float("nan")

    @property
    def recall(self) -> float:
        """Labels found / labels (NaN without labels)."""
        return self.found_labels / self.labels if self.labels else float("nan")

    @property
    def recall_inside(self) -> float:
        """Recall over the labels outside the border the detector removes."""
        return self.found_labels_inside / self.labels_inside if self.labels_inside else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall,
                "recall_inside": self.recall_inside}


def count_corner_matches(
    detections: torch.Tensor,
    labels: torch.Tensor,
    distance: float = CORNER_DISTANCE,
    image_size: tuple[int, int] | None = None,
    border: int = 0,
) -> CornerCounts:
    """Counts for one image.

    Args:
        detections: ``(N, 2)`` pixels (x, y). labels: ``(M, 2)`` pixels (x, y).
        distance: pixels (inclusive).
        image_size: ``(height, width)``; with ``border``, labels with
            ``border <= x <= W - 1 - border`` and the same for ``y`` are also counted "inside".

    Returns:
        :class:`CornerCounts` of this image (``images = 1``).
    """
    if detections.dim() != 2 or detections.shape[-1] != 2 or labels.dim() != 2 or labels.shape[-1] != 2:
        raise ValueError(f"detections and labels must be (N, 2), got {tuple(detections.shape)} and {tuple(labels.shape)}")
    detections, labels = detections.double(), labels.double()
    if len(detections) and len(labels):
        close = torch.cdist(detections, labels) <= distance  # (N, M)
        correct, found = close.any(dim=1), close.any(dim=0)
    else:
        correct = torch.zeros(len(detections), dtype=torch.bool)
        found = torch.zeros(len(labels), dtype=torch.bool)
    inside = torch.ones(len(labels), dtype=torch.bool)
    if image_size is not None and border > 0 and len(labels):
        h, w = image_size
        x, y = labels[:, 0], labels[:, 1]
        inside = (x >= border) & (x <= w - 1 - border) & (y >= border) & (y <= h - 1 - border)
    return CornerCounts(
        detections=len(detections),
        correct_detections=int(correct.sum()),
        labels=len(labels),
        found_labels=int(found.sum()),
        labels_inside=int(inside.sum()),
        found_labels_inside=int((found & inside).sum()),
        images=1,
    )


@torch.no_grad()
def synthetic_shapes_precision_recall(
    model: SuperPoint,
    num_images: int = 200,
    seed: int = 10_000,
    height: int = 120,
    width: int = 160,
    distance: float = CORNER_DISTANCE,
    batch_size: int = 16,
) -> CornerCounts:
    """Precision / recall of a SuperPoint-family detector on held-out synthetic shapes.

    Images are items ``0 .. num_images - 1`` of ``SyntheticShapesDataset(height=..., width=...,
    seed=seed)`` (no warp, no photometric change: the clean scenes with exact corners). Pick a
    ``seed`` the model was not trained on. Detections come from the model's heatmap with its
    own post-processing (``detection_threshold``, ``nms_radius``, ``remove_borders``,
    ``max_keypoints`` of ``model.conf``), on whole pixels of the network's own resolution
    (``input_scale`` and ``subpixel_radius`` do not apply: this judges the heatmap itself).

    Returns:
        Summed :class:`CornerCounts`; ``labels_inside`` excludes corners within the model's
        ``remove_borders`` of an edge, which it can never report.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
    data = SyntheticShapesDataset(height=height, width=width, seed=seed)
    conf = model.conf
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = CornerCounts()
    try:
        for start in range(0, num_images, batch_size):
            items = [data[k] for k in range(start, min(start + batch_size, num_images))]
            images = torch.stack([item["image"] for item in items]).to(device)
            heatmap = model(images)["heatmap"]
            keypoints, _ = detect_keypoints(
                heatmap, nms_radius=conf["nms_radius"], threshold=conf["detection_threshold"],
                border=conf["remove_borders"], max_keypoints=conf["max_keypoints"],
            )
            for item, detections in zip(items, keypoints):
                labels = item["keypoints"][: int(item["num_keypoints"])]
                total += count_corner_matches(detections.cpu(), labels, distance, (height, width), conf["remove_borders"])
    finally:
        model.train(was_training)
    return total
