"""General Instance Distillation, GID (Dai et al., CVPR 2021, arXiv 2103.02340): the losses.

General instances (GIs) are the places where teacher and student disagree most, found without
ground truth (:mod:`~detkd.distill.detection.general_instances` selects them).

Three losses read the GIs (each is switched off by a weight of 0):

* ``gid_feature``: every GI box is pooled (RoIAlign ``10 x 10``, sampling ratio 2) from the FPN
  level that its size maps to, in the teacher's maps and in the student's maps after the
  adapter; ``sum (t' - a(s)')^2 / (N * 10 * 10)`` (summed over channels and the 10 x 10 cells)
  with ``N`` the number of GIs in the batch. Weight 0.005, the paper's. ``'`` is not in the
  paper: before pooling, each image's map of each level, the teacher's and the adapted
  student's, is divided by its root mean square over ``(C, H, W)``
  (:func:`~detkd.distill.detection.common.unit_mean_square`), the normalisation of the hint.
  Why: the raw term grows with the square of the teacher's activations, which a trained FPN
  has at RMS 5-73 (RetinaNet teacher, P3..P7, largest on the coarse levels that big boxes
  pool from), so with weight 0.005 it started at 15-130x the detection loss. Normalised, a
  GI costs ``C`` times a dimensionless mean squared error (``C`` the teacher's FPN width), which
  is about 2 for unrelated maps, so the weighted term starts near ``0.005 * 2 * C`` (0.6 at 64
  channels, 2.6 at 256), the size of the detection loss, and falls as the student's features
  line up. The level rule is torchvision's ``LevelMapper`` (inside ``MultiScaleRoIAlign``):
  ``level = floor(canonical_level + log2(sqrt(w * h) / canonical_scale))`` with ``level =
  log2(stride)``, clamped to the levels present. With the defaults (224, 4) a 224-px box pools
  from stride 16 on every family; RetinaNet/FCOS (strides 8..128) pool boxes under 224 px from
  stride 8, Faster R-CNN (strides 4..64) boxes under 112 px from stride 4.
* ``gid_relation``: per image with at least 3 GIs, the pairwise Euclidean distances between the
  flattened GI RoI features, each matrix divided by its mean off-diagonal distance; smooth-L1
  between the teacher's and the student's matrices, summed and divided by ``K^2 - K``; averaged
  over those images. Weight 40. The student's *raw* RoI features are used (distances do not
  need equal widths, so the adapter is not involved).
* ``gid_response_cls`` and ``gid_response_box``: the GI boxes are matched to the student's anchors
  by the student's own matcher (``match_anchors(anchors (N, 4), boxes (M, 4)) -> (N,)`` long:
  box index, -1 background, -2 ignore). On the matched anchors (index >= 0): binary cross
  entropy of the student's class logits against ``sigmoid`` of the teacher's, summed over
  classes, and L1 between the box deltas, summed over the 4 coordinates; both divided by the
  number of matched anchors. Weights 0.1 and 0.1; no temperature.
  When teacher and student have different anchors (another family, or another number or
  placement of anchors) their deltas and per-anchor logits mean different things, so the
  response is taken on the per-location grid instead: a location is matched when any of its
  student anchors is; BCE between the per-location maximum (over that location's anchors)
  class logits, and L1 between the per-location boxes (:func:`per_location`, xyxy pixels)
  divided by the stride of the location's level. FCOS centre-ness is not distilled.
* ``gid_response_roi_cls`` and ``gid_response_roi_box``: two-stage pairs (Faster R-CNN -> Faster
  R-CNN) only. Their dense outputs are the RPN's, so the terms above select GIs by objectness
  and distil the RPN; the classes and boxes a user gets come from the RoI head. So both RoI heads
  also run on the GI boxes as proposals (:attr:`DetectorOutputs.second_stage`, over each model's
  own FPN maps): the KL divergence from the teacher's ``K + 1``-way softmax (background
  included) to the student's, and the L1 between their box deltas for the teacher's most likely
  object class, each summed over classes / the 4 coordinates and divided by the number of GIs.
  Same weights as the response terms (0.1 each), since they are the same kind of knowledge at
  the stage that makes the detections. ``second_stage_response: false`` leaves them out (the RPN
  alone is distilled, as before these terms existed: the ablation of ``benchmarks/detection.py
  --runs gid_rpn_only``).

Diagnostics (not in ``"distill"``): ``gid_instances`` (mean GIs per image) and, with the response
on, ``gid_matched`` (matched anchors or locations in the batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.config import ConfigError, dataclass_from_dict
from detkd.distill.detection.common import (
    ADAPTERS,
    DetectionDistiller,
    check_same_grid,
    make_adapter,
    total,
    unit_mean_square,
    zero_term,
)
from detkd.distill.detection.general_instances import (
    GeneralInstances,
    check_class_scores,
    find_general_instances,
    location_strides,
    per_location_max_logits,
    pool_instances,
)
from detkd.models.detection.outputs import DetectorOutputs, per_location

Matcher = Callable[[Tensor, Tensor], Tensor]


@dataclass
class GIDConfig:
    """Options of :class:`GeneralInstanceDistillation`; defaults follow the GID paper."""

    num_instances: int = 10  # K, GIs kept per image
    nms_iou: float = 0.3
    min_score: float = 0.0  # a location must have a GI score > min_score
    pre_nms_top_n: int = 1000  # best locations per image that enter NMS
    feature_weight: float = 0.005
    relation_weight: float = 40.0
    response_cls_weight: float = 0.1
    response_box_weight: float = 0.1
    roi_size: int = 10
    sampling_ratio: int = 2
    canonical_scale: int = 224
    canonical_level: int = 4
    adapter: str = "auto"  # student -> teacher width for the feature loss; see make_adapter
    second_stage_response: bool = True  # two-stage pairs: also distil the RoI heads (False: the RPN only)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GIDConfig":
        return dataclass_from_dict(cls, values, "gid distillation")

    def __post_init__(self) -> None:
        weights = (self.feature_weight, self.relation_weight, self.response_cls_weight, self.response_box_weight)
        if any(w < 0 for w in weights):
            raise ConfigError(f"gid weights must be >= 0, got {weights}")
        if not any(weights):
            raise ConfigError("gid: every weight is 0, nothing would be distilled")
        if self.num_instances < 1 or self.pre_nms_top_n < self.num_instances:
            raise ConfigError(
                f"gid: need 1 <= num_instances <= pre_nms_top_n, got {self.num_instances} and {self.pre_nms_top_n}"
            )
        if not 0 < self.nms_iou <= 1:
            raise ConfigError(f"gid: nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.roi_size < 1 or self.sampling_ratio < 0:
            raise ConfigError(
                f"gid: roi_size must be >= 1 and sampling_ratio >= 0, got {self.roi_size}, {self.sampling_ratio}"
            )
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"gid: unknown adapter '{self.adapter}'; valid: {', '.join(ADAPTERS)}")

    @property
    def response_on(self) -> bool:
        return self.response_cls_weight > 0 or self.response_box_weight > 0


def normalised_distances(features: Tensor) -> Tensor:
    """``(K, K)`` Euclidean distances between the rows of ``features`` ``(K, D)``, divided by
    their mean off-diagonal value (``K >= 2``)."""
    k = features.shape[0]
    distances = torch.cdist(features[None], features[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
    mean = distances.sum() / (k * k - k)
    return distances / mean.clamp_min(1e-12)


def relation_loss(teacher_features: Tensor, student_features: Tensor) -> Tensor:
    """Smooth-L1 between normalised distance matrices of ``K`` GI features, summed / ``(K^2 - K)``.

    Args:
        teacher_features: ``(K, D_t)``; student_features: ``(K, D_s)`` (widths may differ).
    """
    k = teacher_features.shape[0]
    if student_features.shape[0] != k or k < 2:
        raise ValueError(f"relation_loss needs the same K >= 2 instances, got {k} and {student_features.shape[0]}")
    t = normalised_distances(teacher_features)
    s = normalised_distances(student_features)
    return F.smooth_l1_loss(s, t, reduction="sum") / (k * k - k)


class GeneralInstanceDistillation(DetectionDistiller):
    """GID feature, relation and response losses on General Instances; see the module docstring.

    Args:
        teacher_channels, student_channels: FPN widths; an adapter maps the student's to the
            teacher's for the feature loss (``config.adapter``).
        config: :class:`GIDConfig` (paper defaults when None).
        match_anchors: the student's matcher, ``(anchors (N, 4), boxes (M, 4)) -> (N,)`` long;
            required while a response weight is above 0.
    """

    def __init__(
        self,
        teacher_channels: int,
        student_channels: int,
        config: GIDConfig | None = None,
        match_anchors: Matcher | None = None,
    ) -> None:
        super().__init__(teacher_channels, student_channels)
        self.config = config or GIDConfig()
        if self.config.response_on and match_anchors is None:
            raise ValueError(
                "GID's response loss matches GIs to the student's anchors with the student's own matcher: "
                "pass match_anchors=<student adapter>.match_anchors, or set both response weights to 0"
            )
        self.match_anchors = match_anchors
        # only the feature loss reads adapted maps; without it an adapter would be a parameter
        # that never gets a gradient (which DistributedDataParallel refuses by default)
        if self.config.feature_weight > 0:
            self.adapter = make_adapter(self.config.adapter, student_channels, teacher_channels)
        else:
            self.adapter = nn.Identity()

    def forward(
        self,
        teacher: DetectorOutputs,
        student: DetectorOutputs,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """Returns the weighted terms that are on, their sum ``"distill"`` and diagnostics.

        ``targets`` is not used: GIs are chosen from the predictions alone (label-free).
        """
        check_same_grid(teacher, student, "GID")
        check_class_scores(teacher, student)
        self.check_channels(teacher, student)
        cfg = self.config
        instances = find_general_instances(
            teacher, student, cfg.num_instances, cfg.nms_iou, cfg.min_score, cfg.pre_nms_top_n
        )
        batch = len(instances.boxes)
        terms: dict[str, Tensor] = {}
        diagnostics = {"gid_instances": torch.tensor(instances.count / batch, device=student.cls_logits.device)}

        if cfg.feature_weight > 0 or cfg.relation_weight > 0:
            pool = dict(
                boxes=instances.boxes, image_size=teacher.image_size, roi_size=cfg.roi_size,
                sampling_ratio=cfg.sampling_ratio, canonical_scale=cfg.canonical_scale,
                canonical_level=cfg.canonical_level,
            )  # fmt: skip
            if cfg.feature_weight > 0:
                terms["gid_feature"] = cfg.feature_weight * self._feature_loss(teacher, student, pool)
            if cfg.relation_weight > 0:
                t_rois = pool_instances([f.detach() for f in teacher.features], **pool)
                s_rois = pool_instances(student.features, **pool)
                terms["gid_relation"] = cfg.relation_weight * self._relation_loss(t_rois, s_rois, instances, student)

        if cfg.response_on:
            if instances.per_anchor:  # same anchors
                cls_loss, box_loss, matched = self._anchor_response(teacher, student, instances)
            else:
                t_boxes = per_location(teacher)[1].detach()
                s_boxes = per_location(student)[1]
                cls_loss, box_loss, matched = self._location_response(teacher, student, instances, t_boxes, s_boxes)
            diagnostics["gid_matched"] = matched
            if cfg.response_cls_weight > 0:
                terms["gid_response_cls"] = cfg.response_cls_weight * cls_loss
            if cfg.response_box_weight > 0:
                terms["gid_response_box"] = cfg.response_box_weight * box_loss
            two_stage = teacher.second_stage is not None and student.second_stage is not None
            if cfg.second_stage_response and two_stage:
                roi_cls, roi_box = self._second_stage_response(teacher, student, instances)
                if cfg.response_cls_weight > 0:
                    terms["gid_response_roi_cls"] = cfg.response_cls_weight * roi_cls
                if cfg.response_box_weight > 0:
                    terms["gid_response_roi_box"] = cfg.response_box_weight * roi_box
        return total(terms, diagnostics)

    # -- the three kinds of knowledge ----------------------------------------------------
    def _feature_loss(self, teacher: DetectorOutputs, student: DetectorOutputs, pool: dict[str, Any]) -> Tensor:
        """The paper's ``sum (t - a(s))^2 / (N * 10 * 10)`` on maps of unit mean square per image and level."""
        if not any(len(b) for b in pool["boxes"]):  # keep the adapter in the graph, with a zero gradient
            return sum((p.sum() * 0.0 for p in self.adapter.parameters()), zero_term(student))
        t_rois = pool_instances([unit_mean_square(f.detach().float()) for f in teacher.features], **pool)
        s_rois = pool_instances([unit_mean_square(self.adapter(f).float()) for f in student.features], **pool)
        return (t_rois - s_rois).pow(2).sum() / (t_rois.shape[0] * t_rois.shape[-2] * t_rois.shape[-1])

    def _relation_loss(
        self, t_rois: Tensor, s_rois: Tensor, instances: GeneralInstances, student: DetectorOutputs
    ) -> Tensor:
        losses = []
        start = 0
        for boxes in instances.boxes:
            k = len(boxes)
            if k >= 3:
                losses.append(relation_loss(t_rois[start : start + k].flatten(1), s_rois[start : start + k].flatten(1)))
            start += k
        return torch.stack(losses).mean() if losses else zero_term(student)

    def _match(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """``(N,)`` bool: anchors the student's matcher assigns to one of ``boxes``."""
        if len(boxes) == 0:
            return torch.zeros(anchors.shape[0], dtype=torch.bool, device=anchors.device)
        assert self.match_anchors is not None
        matches = self.match_anchors(anchors, boxes.to(anchors))
        if not isinstance(matches, Tensor) or matches.shape != (anchors.shape[0],) or matches.is_floating_point():
            got = tuple(matches.shape) if isinstance(matches, Tensor) else type(matches).__name__
            raise ValueError(
                f"match_anchors must return an integer tensor ({anchors.shape[0]},) of box indices "
                f"(-1 background, -2 ignore), got {got}"
            )
        return matches >= 0

    def _anchor_response(
        self, teacher: DetectorOutputs, student: DetectorOutputs, instances: GeneralInstances
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-anchor response: teacher and student share anchors and box coder."""
        mask = torch.stack([self._match(student.anchors, boxes) for boxes in instances.boxes])  # (B, N)
        count = mask.sum()
        if count == 0:
            zero = zero_term(student)
            return zero, zero, count.float()
        t_logits = teacher.cls_logits.detach()[mask].float()
        s_logits = student.cls_logits[mask].float()
        cls_loss = F.binary_cross_entropy_with_logits(s_logits, t_logits.sigmoid(), reduction="sum") / count
        t_deltas = teacher.box_regression.detach()[mask].float()
        box_loss = F.l1_loss(student.box_regression[mask].float(), t_deltas, reduction="sum") / count
        return cls_loss, box_loss, count.float()

    def _location_response(
        self,
        teacher: DetectorOutputs,
        student: DetectorOutputs,
        instances: GeneralInstances,
        t_boxes: Tensor,
        s_boxes: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-location response: different anchors, compared on the shared location grid."""
        a = student.anchors_per_location
        mask = torch.stack(
            [self._match(student.anchors, boxes).reshape(-1, a).any(dim=1) for boxes in instances.boxes]
        )  # (B, L)
        count = mask.sum()
        if count == 0:
            zero = zero_term(student)
            return zero, zero, count.float()
        t_logits = per_location_max_logits(teacher).detach()[mask].float()
        s_logits = per_location_max_logits(student)[mask].float()
        cls_loss = F.binary_cross_entropy_with_logits(s_logits, t_logits.sigmoid(), reduction="sum") / count
        strides = location_strides(student).expand(mask.shape)[mask][:, None]
        box_loss = F.l1_loss(s_boxes[mask].float() / strides, t_boxes[mask].float() / strides, reduction="sum") / count
        return cls_loss, box_loss, count.float()

    def _second_stage_response(
        self, teacher: DetectorOutputs, student: DetectorOutputs, instances: GeneralInstances
    ) -> tuple[Tensor, Tensor]:
        """Both RoI heads on the GI boxes: KL of the ``K + 1``-way softmaxes, L1 of the teacher's top class's deltas."""
        count = instances.count
        if count == 0:
            zero = zero_term(student)
            return zero, zero
        assert teacher.second_stage is not None and student.second_stage is not None
        boxes = [b.detach() for b in instances.boxes]
        with torch.no_grad():
            t_cls, t_reg = teacher.second_stage(boxes)
        s_cls, s_reg = student.second_stage(boxes)
        if t_cls.shape != s_cls.shape or t_reg.shape != s_reg.shape:
            raise ValueError(f"GID's RoI response needs the same classes in both second stages: teacher "
                             f"{tuple(t_cls.shape)}/{tuple(t_reg.shape)}, student {tuple(s_cls.shape)}/{tuple(s_reg.shape)}")
        t_prob = t_cls.detach().float().softmax(dim=-1)
        cls_loss = (t_prob * (t_prob.clamp_min(1e-12).log() - s_cls.float().log_softmax(dim=-1))).sum() / count
        columns = t_cls.shape[1]
        top_class = t_cls[:, 1:].argmax(dim=1) + 1  # (G,) the teacher's most likely object class (column)
        rows = torch.arange(count, device=top_class.device)
        t_deltas = t_reg.detach().float().view(count, columns, 4)[rows, top_class]
        s_deltas = s_reg.float().view(count, columns, 4)[rows, top_class]
        return cls_loss, F.l1_loss(s_deltas, t_deltas, reduction="sum") / count

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.config}"
