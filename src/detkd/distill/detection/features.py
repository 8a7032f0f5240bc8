"""Feature-map distillation for detectors: FitNets hint / fine-grained imitation, PKD and CWD.

All three read the FPN maps of :class:`DetectorOutputs` (CWD can read the dense class logits
instead), level by level, finest first. Each level's loss is computed on its own and the
levels are summed (as MMRazor attaches one loss per FPN level), except the masked hint, which
is normalised once by the number of masked locations over all levels, as in Wang et al. 2019.

* :class:`FeatureHint` (``hint``) -- FitNets (Romero et al. 2015) on the FPN, also the
  backbone/feature-extractor distillation of Zhang et al. 2020 for Faster R-CNN:
  ``0.5 * mean((t' - r(s)')^2)`` per level, ``r`` a 3x3 conv from the student's width to the
  teacher's, every level (P3..P7) by default. ``'`` is a per-level normalisation that the papers
  do not have: each image's map of one level, the teacher's and the adapted student's, is
  divided by its root mean square over ``(C, H, W)`` (:func:`unit_mean_square`), so a level
  costs ``1 - cos(t, r(s))`` (cosine over the flattened map), between 0 and 2. Why: the raw
  squared error grows with the square of the activations, and a trained teacher's FPN grows
  towards the coarse levels (RMS 11 / 8 / 5 / 33 / 73 on P3..P7 for a RetinaNet teacher):
  unnormalised, P6 and P7 made 97% of the hint, and the default weight gave 334-784 against an
  FCOS detection loss of about 2 and 2.6k-60k against 1-1.9 for Faster R-CNN, so the hint
  drowned the detection loss. Normalised, every level weighs the same, the value no longer
  depends on the teacher's activation scale, and with the default weight 1.0 the hint starts
  at about 1 per level (unrelated maps), about 5 over P3..P7, next to a detection loss of about
  3 for the small CPU students (``benchmarks/results/detector_loss_scale.md``), and falls as
  the student's maps line up. A positive scale factor on a map costs nothing (the adapter
  ``r`` could absorb one anyway). With a near-object mask (fine-grained
  feature imitation, Wang et al., CVPR 2019): ``sum((t' - r(s)')^2 * mask) / (2 * N_mask)`` over
  all levels (``'`` the same normalisation, over the whole map), with ``N_mask`` the number of
  masked locations; default weight 0.01. A location is masked when one
  of its anchors has an IoU with some box above ``mask_factor`` (0.5) times that box's best anchor
  IoU. The boxes are the ground truth (``mask="gt"``), the teacher's confident detections
  (``mask="teacher"``, label-free: per-location score >= ``teacher_score_threshold``, then NMS
  0.5) or the ground truth when targets are given and the teacher's detections otherwise
  (``mask="auto"``). The anchors are the student's (RetinaNet, RPN); an FCOS student has one
  stride-sized square per location, which would confine the mask to the one level whose stride
  fits the box, so for FCOS (and for anchors without area) RetinaNet-style anchors are generated
  on the same grid (sizes 4, 5.04 and 6.35 strides, aspect ratios 0.5, 1, 2).
* :class:`PKD` (``pkd``, Cao et al. 2022) -- each map normalised per image and channel over its
  spatial positions to zero mean and unit (population) variance, then ``MSE / 2`` per level.
  MMRazor normalises over batch and positions together; per image keeps the loss independent
  of the batch's composition. The population variance keeps a 1x1 level (P7 on small images)
  defined: it normalises to zeros and adds nothing. Defaults as MMRazor's reference configs,
  which attach the loss to the first four FPN outputs only: levels ``[0, 1, 2, 3]`` (P3..P6
  of the P3..P7 pyramids here; P7 left out), weight 10 per level for a one-stage student
  (RetinaNet, FCOS: ``pkd_fpn_retina_x101_retina_r50_2x_coco``, also used for the FCOS teacher)
  and 6 for a Faster R-CNN student (``pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco``);
  ``weight: null`` picks by the student's family, a number overrides it.
* :class:`ChannelWiseDistillation` (``cwd``, Shu et al., ICCV 2021) -- per channel, a softmax
  over the spatial positions at temperature ``tau``; ``tau^2 * KL(teacher || student)`` summed
  over positions and averaged over channels and images, per level. On FPN features (default)
  or on the dense class-logit maps (``source="logits"``: ``A * K`` channels when both have the
  same anchors per location, else the per-location maximum over anchors, ``K`` channels).
  Defaults ``tau = 1``, weight 5 per level, levels ``[0, 1, 2, 3]`` (P3..P6, P7 left out), as
  the CWD authors' RetinaNet config (mmdetection-distiller
  ``cwd_retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco``: ``neck.fpn_convs.0..3``).

FPN widths that differ need an adapter (``"auto"``: a 1x1 conv then; PKD and CWD use none when
the widths agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou, nms

from detkd.config import ConfigError, dataclass_from_dict
from detkd.distill.detection.common import (
    ADAPTERS,
    DetectionDistiller,
    check_same_pyramid,
    check_targets,
    make_adapter,
    select_levels,
    total,
    unit_mean_square,
)
from detkd.models.detection.outputs import DetectorOutputs, per_location

MASKS = ("none", "gt", "teacher", "auto")


def _check_common(name: str, weight: float, adapter: str, levels: Sequence[int] | None) -> None:
    if weight < 0:
        raise ConfigError(f"{name}: weight must be >= 0, got {weight}")
    if weight == 0:
        raise ConfigError(f"{name}: weight 0 switches the only term off; leave the method out instead")
    if adapter not in ADAPTERS:
        raise ConfigError(f"{name}: unknown adapter '{adapter}'; valid: {', '.join(ADAPTERS)}")
    if levels is not None and (not len(levels) or any(int(level) < 0 for level in levels)):
        raise ConfigError(f"{name}: levels must be a non-empty list of FPN level indices (0 = finest), got {levels}")


# -- FitNets hint / fine-grained feature imitation ------------------------------------------
@dataclass
class HintConfig:
    """Options of :class:`FeatureHint`."""

    weight: float | None = None  # None: 1.0 without a mask, 0.01 with one (Wang et al. 2019)
    levels: list[int] | None = None  # FPN level indices (0 = finest); None = all (P3..P7)
    adapter: str = "conv3x3"
    mask: str = "none"  # "none", "gt", "teacher" or "auto"; see the module docstring
    mask_factor: float = 0.5
    teacher_score_threshold: float = 0.5  # mask="teacher": per-location score a detection needs

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "HintConfig":
        return dataclass_from_dict(cls, values, "hint distillation")

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ConfigError(f"hint: unknown mask '{self.mask}'; valid: {', '.join(MASKS)}")
        if self.weight is None:
            self.weight = 1.0 if self.mask == "none" else 0.01
        _check_common("hint", self.weight, self.adapter, self.levels)
        if not 0 < self.mask_factor <= 1:
            raise ConfigError(f"hint: mask_factor must be in (0, 1], got {self.mask_factor}")


def retinanet_style_anchors(outputs: DetectorOutputs) -> tuple[Tensor, int]:
    """Box anchors on the grid of ``outputs`` (torchvision ``AnchorGenerator``): ``(N, 4)`` xyxy
    pixels, 9 per location (sizes ``4 * stride * 2^(i/3)``, ratios 0.5, 1, 2), and that 9."""
    sizes = tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in outputs.strides)
    generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    height, width = outputs.image_size
    images = ImageList(outputs.features[0].new_empty((1, 0, height, width)), [(height, width)])
    return generator(images, [f[:1] for f in outputs.features])[0], 9


def near_object_mask(
    anchors: Tensor,
    anchors_per_location: int,
    level_sizes: Sequence[tuple[int, int]],
    boxes: Tensor,
    factor: float = 0.5,
) -> list[Tensor]:
    """Fine-grained imitation mask of one image (Wang et al. 2019).

    Args:
        anchors: ``(N, 4)`` xyxy pixels in the order of :mod:`detkd.models.detection.outputs`.
        boxes: ``(M, 4)`` xyxy pixels of the objects.
        factor: an anchor counts when its IoU with a box is > ``factor`` times that box's best
            anchor IoU (and > 0).

    Returns:
        one bool map ``(H_l, W_l)`` per level: locations with at least one such anchor.
    """
    num_locations = sum(h * w for h, w in level_sizes)
    if anchors.shape[0] != num_locations * anchors_per_location:
        raise ValueError(
            f"{anchors.shape[0]} anchors do not fit {anchors_per_location} per location on levels {list(level_sizes)}"
        )
    if len(boxes) == 0:
        near = torch.zeros(num_locations, dtype=torch.bool, device=anchors.device)
    else:
        iou = box_iou(anchors.float(), boxes.to(anchors.device).float())  # (N, M)
        best = iou.amax(dim=0, keepdim=True)
        near = ((iou > factor * best) & (iou > 0)).any(dim=1).reshape(num_locations, anchors_per_location).any(dim=1)
    return [m.reshape(h, w) for m, (h, w) in zip(near.split([h * w for h, w in level_sizes]), level_sizes)]


@torch.no_grad()
def teacher_detections(teacher: DetectorOutputs, score_threshold: float, nms_iou: float = 0.5) -> list[Tensor]:
    """Per image ``(M_b, 4)`` boxes of the teacher's per-location detections scoring >= the threshold, after NMS."""
    scores, boxes = per_location(teacher)
    best = scores.amax(dim=-1)
    detections = []
    for image in range(best.shape[0]):
        keep = best[image] >= score_threshold
        image_boxes, image_scores = boxes[image, keep].float(), best[image, keep].float()
        detections.append(image_boxes[nms(image_boxes, image_scores, nms_iou)])
    return detections


class FeatureHint(DetectionDistiller):
    """FitNets hint on FPN levels, optionally restricted to near-object locations; see the module docstring.

    Every level's teacher map and adapted student map are normalised to mean square 1 per image
    (:func:`~detkd.distill.detection.common.unit_mean_square`) before the squared error, so each
    level contributes at most 2 (unmasked) whatever the size of its activations.

    The term is returned as ``"hint"`` and, with a mask, the masked location count as ``"hint_locations"``.
    """

    def __init__(self, teacher_channels: int, student_channels: int, config: HintConfig | None = None) -> None:
        super().__init__(teacher_channels, student_channels)
        self.config = config or HintConfig()
        self.adapter = make_adapter(self.config.adapter, student_channels, teacher_channels)

    def forward(
        self,
        teacher: DetectorOutputs,
        student: DetectorOutputs,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """``targets``: per image ``{"boxes": (M, 4) xyxy pixels, ...}``; read only by ``mask="gt"``/``"auto"``."""
        check_same_pyramid(teacher, student)
        self.check_channels(teacher, student)
        cfg = self.config
        levels = select_levels(len(teacher.features), cfg.levels)
        differences = [
            (
                unit_mean_square(teacher.features[level].detach().float())
                - unit_mean_square(self.adapter(student.features[level]).float())
            ).pow(2)
            for level in levels
        ]  # each (B, C, H_l, W_l), dimensionless
        if cfg.mask == "none":
            loss = sum(0.5 * d.mean() for d in differences)
            return total({"hint": cfg.weight * loss})
        masks = self._masks(teacher, student, targets)  # per level (B, H_l, W_l)
        chosen = [masks[level] for level in levels]
        count = sum(m.sum() for m in chosen)
        if count == 0:  # nothing near an object: 0, still connected to the student and the adapter
            loss = sum(d.sum() for d in differences) * 0.0
        else:
            loss = sum((d * m[:, None]).sum() for d, m in zip(differences, chosen)) / (2 * count)
        return total({"hint": cfg.weight * loss}, {"hint_locations": count.float()})

    def _masks(
        self, teacher: DetectorOutputs, student: DetectorOutputs, targets: list[dict[str, Tensor]] | None
    ) -> list[Tensor]:
        batch = teacher.features[0].shape[0]
        use_gt = self.config.mask == "gt" or (self.config.mask == "auto" and targets is not None)
        if use_gt:
            boxes = check_targets(targets, batch)
        else:
            boxes = teacher_detections(teacher, self.config.teacher_score_threshold)
        anchors, per_loc = student.anchors, student.anchors_per_location
        if student.family == "fcos" or not bool(((anchors[:, 2:] - anchors[:, :2]) > 0).all()):
            anchors, per_loc = retinanet_style_anchors(student)
        per_image = [
            near_object_mask(anchors, per_loc, student.level_sizes, image_boxes, self.config.mask_factor)
            for image_boxes in boxes
        ]
        return [torch.stack(level_masks) for level_masks in zip(*per_image)]


# -- PKD -------------------------------------------------------------------------------------
#: PKD's default levels: the four finest, P3..P6 (MMRazor's configs distil ``fpn0..fpn3``).
PKD_LEVELS = (0, 1, 2, 3)
#: PKD's default weight per level by the student's family (MMRazor's reference configs).
PKD_WEIGHTS = {"retinanet": 10.0, "fcos": 10.0, "faster_rcnn": 6.0}


@dataclass
class PKDConfig:
    """Options of :class:`PKD`."""

    weight: float | None = None  # None: by the student's family, PKD_WEIGHTS (10 one-stage, 6 Faster R-CNN)
    levels: list[int] | None = field(default_factory=lambda: list(PKD_LEVELS))  # None = all levels
    adapter: str = "auto"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PKDConfig":
        return dataclass_from_dict(cls, values, "pkd distillation")

    def __post_init__(self) -> None:
        _check_common("pkd", 1.0 if self.weight is None else self.weight, self.adapter, self.levels)


def normalise_per_channel(features: Tensor, eps: float = 1e-6) -> Tensor:
    """``(B, C, H, W)`` maps with zero mean and unit population variance per image and channel."""
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = features.std(dim=(2, 3), keepdim=True, correction=0)
    return (features - mean) / (std + eps)


def pkd_level_loss(teacher: Tensor, student: Tensor) -> Tensor:
    """``MSE(norm(student), norm(teacher)) / 2`` of one level, maps ``(B, C, H, W)`` of one shape."""
    return 0.5 * F.mse_loss(normalise_per_channel(student.float()), normalise_per_channel(teacher.float()))


class PKD(DetectionDistiller):
    """Pearson-correlation feature distillation on FPN levels (``"pkd"``); see the module docstring.

    With ``config.weight`` None the weight is looked up per forward pass from the student's
    family in :data:`PKD_WEIGHTS` (10 for RetinaNet and FCOS, 6 for Faster R-CNN).
    """

    def __init__(self, teacher_channels: int, student_channels: int, config: PKDConfig | None = None) -> None:
        super().__init__(teacher_channels, student_channels)
        self.config = config or PKDConfig()
        self.adapter = make_adapter(self.config.adapter, student_channels, teacher_channels)

    def forward(
        self,
        teacher: DetectorOutputs,
        student: DetectorOutputs,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """``targets`` is not used."""
        check_same_pyramid(teacher, student)
        self.check_channels(teacher, student)
        levels = select_levels(len(teacher.features), self.config.levels)
        loss = sum(
            pkd_level_loss(teacher.features[level].detach(), self.adapter(student.features[level])) for level in levels
        )
        return total({"pkd": self.weight_for(student.family) * loss})

    def weight_for(self, family: str) -> float:
        """The weight in use for a student of ``family``: ``config.weight``, else :data:`PKD_WEIGHTS`."""
        if self.config.weight is not None:
            return float(self.config.weight)
        if family not in PKD_WEIGHTS:
            raise ValueError(f"pkd: no default weight for a '{family}' student; set pkd.weight")
        return PKD_WEIGHTS[family]


# -- CWD -------------------------------------------------------------------------------------
#: CWD's default levels: the four finest, P3..P6 (the authors' RetinaNet config distils fpn_convs 0..3).
CWD_LEVELS = (0, 1, 2, 3)


@dataclass
class CWDConfig:
    """Options of :class:`ChannelWiseDistillation`."""

    weight: float = 5.0
    tau: float = 1.0
    source: str = "features"  # or "logits": the dense class-logit maps
    levels: list[int] | None = field(default_factory=lambda: list(CWD_LEVELS))  # None = all levels
    adapter: str = "auto"  # features only

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CWDConfig":
        return dataclass_from_dict(cls, values, "cwd distillation")

    def __post_init__(self) -> None:
        _check_common("cwd", self.weight, self.adapter, self.levels)
        if self.tau <= 0:
            raise ConfigError(f"cwd: tau must be > 0, got {self.tau}")
        if self.source not in ("features", "logits"):
            raise ConfigError(f"cwd: source must be 'features' or 'logits', got '{self.source}'")


def channel_wise_kl(teacher: Tensor, student: Tensor, tau: float = 1.0) -> Tensor:
    """``tau^2 * KL(softmax(t / tau) || softmax(s / tau))`` over the ``H * W`` positions of each
    channel, averaged over images and channels. Maps ``(B, C, H, W)`` of one shape."""
    t = teacher.float().flatten(2) / tau
    s = student.float().flatten(2) / tau
    t_log = t.log_softmax(dim=-1)
    kl = (t_log.exp() * (t_log - s.log_softmax(dim=-1))).sum(dim=-1)  # (B, C)
    return kl.mean() * tau**2


def dense_logit_maps(outputs: DetectorOutputs, max_over_anchors: bool) -> list[Tensor]:
    """Class logits as maps, one per level: ``(B, A * K, H_l, W_l)`` (anchor-major channels), or
    ``(B, K, H_l, W_l)`` with the maximum over each location's anchors."""
    batch, _, k = outputs.cls_logits.shape
    a = outputs.anchors_per_location
    sizes = outputs.level_sizes
    maps = []
    for logits, (h, w) in zip(outputs.cls_logits.split([a * h * w for h, w in sizes], dim=1), sizes):
        grid = logits.reshape(batch, h, w, a, k)
        grid = grid.amax(dim=3) if max_over_anchors else grid.reshape(batch, h, w, a * k)
        maps.append(grid.permute(0, 3, 1, 2))
    return maps


class ChannelWiseDistillation(DetectionDistiller):
    """Channel-wise distillation (``"cwd"``) on FPN features or dense class logits; see the module docstring."""

    def __init__(self, teacher_channels: int, student_channels: int, config: CWDConfig | None = None) -> None:
        super().__init__(teacher_channels, student_channels)
        self.config = config or CWDConfig()
        if self.config.source == "features":
            self.adapter = make_adapter(self.config.adapter, student_channels, teacher_channels)
        else:
            self.adapter = nn.Identity()  # logits have one channel per class (and anchor) in both

    def forward(
        self,
        teacher: DetectorOutputs,
        student: DetectorOutputs,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """``targets`` is not used."""
        check_same_pyramid(teacher, student)
        cfg = self.config
        if cfg.source == "features":
            self.check_channels(teacher, student)
            t_maps = [f.detach() for f in teacher.features]
            s_maps = [self.adapter(f) for f in student.features]
        else:
            if teacher.num_classes != student.num_classes:
                raise ValueError(
                    f"cwd on logits compares class channels, but the teacher has {teacher.num_classes} classes and "
                    f"the student {student.num_classes}: use the same class list, or source='features'"
                )
            mixed = teacher.anchors_per_location != student.anchors_per_location
            t_maps = [m.detach() for m in dense_logit_maps(teacher, max_over_anchors=mixed)]
            s_maps = dense_logit_maps(student, max_over_anchors=mixed)
        levels = select_levels(len(t_maps), cfg.levels)
        loss = sum(channel_wise_kl(t_maps[level], s_maps[level], cfg.tau) for level in levels)
        return total({"cwd": cfg.weight * loss})
