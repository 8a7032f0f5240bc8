"""Detection distillation losses on tiny hand-made DetectorOutputs with hand-computed answers.

The grid used everywhere: one 32 x 32 image, two FPN levels with strides 8 and 16 (4 x 4 and
2 x 2 locations, L = 20), 2 classes. Location ``i`` of level 0 is row ``i // 4``, column ``i % 4``;
level 1 starts at location 16. Anchors are the cells themselves unless a test says otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detkd.config import ConfigError
from detkd.distill.detection import (
    PKD,
    ChannelWiseDistillation,
    CWDConfig,
    FeatureHint,
    GeneralInstanceDistillation,
    GIDConfig,
    HintConfig,
    PKDConfig,
    create_detection_distiller,
    find_general_instances,
    near_object_mask,
    relation_loss,
    select_general_instances,
)
from detkd.distill.detection.features import (
    channel_wise_kl,
    dense_logit_maps,
    normalise_per_channel,
    retinanet_style_anchors,
)
from detkd.models.detection.outputs import DetectorOutputs, per_location

IMAGE = (32, 32)
STRIDES = [8, 16]
SIZES = [(4, 4), (2, 2)]
L = 20
LN3 = math.log(3.0)


def cell_boxes() -> torch.Tensor:
    """(L, 4) the xyxy pixel box of every feature cell, level 0 then level 1."""
    boxes = []
    for (h, w), s in zip(SIZES, STRIDES):
        for y in range(h):
            for x in range(w):
                boxes.append([x * s, y * s, (x + 1) * s, (y + 1) * s])
    return torch.tensor(boxes, dtype=torch.float32)


def make_outputs(
    logits: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    features: list[torch.Tensor] | None = None,
    channels: int = 2,
    family: str = "retinanet",
    per_loc: int = 1,
    deltas: torch.Tensor | None = None,
    anchors: torch.Tensor | None = None,
    image_size: tuple[int, int] = IMAGE,
    strides: list[int] | None = None,
) -> DetectorOutputs:
    """DetectorOutputs for one image; ``logits`` ``(N, 2)``, ``boxes``/``deltas`` ``(N, 4)``, ``N = per_loc * L``."""
    n = per_loc * L
    if anchors is None:
        anchors = cell_boxes().repeat_interleave(per_loc, dim=0)
    if features is None:
        features = [torch.zeros(1, channels, h, w) for h, w in SIZES]
    logits = torch.zeros(n, 2) if logits is None else logits
    boxes = anchors.clone() if boxes is None else boxes
    deltas = torch.zeros(n, 4) if deltas is None else deltas
    return DetectorOutputs(
        family=family,
        features=features,
        strides=strides or STRIDES,
        image_size=image_size,
        anchors_per_location=per_loc,
        anchors=anchors,
        cls_logits=logits[None],
        box_regression=deltas[None],
        boxes=boxes[None],
    )


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def constant_maps(values: list[float], channels: int = 2, requires_grad: bool = False) -> list[torch.Tensor]:
    return [torch.full((1, channels, h, w), v, requires_grad=requires_grad) for v, (h, w) in zip(values, SIZES)]


def channel_maps(values: list[list[float]], requires_grad: bool = False) -> list[torch.Tensor]:
    """One map per level of SIZES, channel ``c`` of level ``l`` constant ``values[l][c]``."""
    maps = [torch.tensor(v).view(1, -1, 1, 1).expand(1, len(v), h, w).clone() for v, (h, w) in zip(values, SIZES)]
    return [m.requires_grad_(requires_grad) for m in maps]


def identity_conv(conv: nn.Conv2d) -> None:
    """Turn a square conv (1x1 or 3x3, padding k // 2) into the identity."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        k = conv.kernel_size[0] // 2
        for c in range(conv.out_channels):
            conv.weight[c, c, k, k] = 1.0


# -- General Instance Selection ----------------------------------------------------------
def selection_pair() -> tuple[DetectorOutputs, DetectorOutputs]:
    """Student scores 0.1 everywhere. The teacher differs at:
    loc 5: [0.9, 0.1] (GI score 0.8), teacher box [8, 8, 24, 24];
    loc 6: [0.1, 0.8] (0.7), box [9, 8, 25, 24]: IoU 240/272 = 0.88 with loc 5's box -> NMS removes it;
    loc 0: [0.5, 0.1] (0.4), box [-4, -4, 8, 8] -> clipped to [0, 0, 8, 8].
    The student differs at loc 17: [0.1, 0.7] (0.6), student box [16, 0, 32, 16]; its teacher box
    [0, 0, 4, 4] must not be taken (the student scores higher there)."""
    t_logits = torch.full((L, 2), logit(0.1))
    s_logits = torch.full((L, 2), logit(0.1))
    t_boxes, s_boxes = cell_boxes(), cell_boxes()
    t_logits[5, 0] = logit(0.9)
    t_boxes[5] = torch.tensor([8.0, 8, 24, 24])
    t_logits[6, 1] = logit(0.8)
    t_boxes[6] = torch.tensor([9.0, 8, 25, 24])
    t_logits[0, 0] = logit(0.5)
    t_boxes[0] = torch.tensor([-4.0, -4, 8, 8])
    s_logits[17, 1] = logit(0.7)
    s_boxes[17] = torch.tensor([16.0, 0, 32, 16])
    t_boxes[17] = torch.tensor([0.0, 0, 4, 4])
    return make_outputs(t_logits, t_boxes), make_outputs(s_logits, s_boxes)


def select(teacher: DetectorOutputs, student: DetectorOutputs, **options):
    return select_general_instances(*per_location(teacher), *per_location(student), IMAGE, **options)


def test_gi_selection_scores_boxes_nms_and_top_k():
    teacher, student = selection_pair()
    gis = select(teacher, student, num_instances=10)
    assert gis.locations[0].tolist() == [5, 17, 0]  # 6 suppressed by 5 (IoU 0.88 > 0.3)
    assert torch.allclose(gis.scores[0], torch.tensor([0.8, 0.6, 0.4]), atol=1e-6)
    expected_boxes = torch.tensor([[8.0, 8, 24, 24], [16, 0, 32, 16], [0, 0, 8, 8]])
    assert torch.equal(gis.boxes[0], expected_boxes)

    assert select(teacher, student, num_instances=2).locations[0].tolist() == [5, 17]
    assert select(teacher, student, min_score=0.5).locations[0].tolist() == [5, 17]
    # without NMS (IoU threshold 1) the duplicate at loc 6 comes back
    assert select(teacher, student, nms_iou=1.0).locations[0].tolist() == [5, 6, 17, 0]


def test_gid_reports_number_of_instances():
    teacher, student = selection_pair()
    gid = GeneralInstanceDistillation(2, 2, GIDConfig(relation_weight=0, response_cls_weight=0, response_box_weight=0))
    out = gid(teacher, student)
    assert out["gid_instances"].item() == 3
    assert set(out) == {"gid_feature", "distill", "gid_instances"}


def test_gi_score_is_per_anchor_when_teacher_and_student_share_anchors():
    """Two anchors per location, the same for both. At location 5 the teacher is sure (0.95) of
    class 0 on anchor 10, the student equally sure on anchor 11; every other score is 0.05. Per
    anchor (the paper's per-instance rule): |0.95 - 0.05| = 0.9 on both anchors, one GI after NMS
    (both anchors are the cell [8, 8, 16, 16]). The per-location maximum would see 0.95 in both
    models there and score 0: no GI at all. With anchors that differ (shifted by 1 px) per anchor
    does not pair up, and the per-location rule is used."""
    t_logits = torch.full((2 * L, 2), logit(0.05))
    s_logits = torch.full((2 * L, 2), logit(0.05))
    t_logits[10, 0] = logit(0.95)
    s_logits[11, 0] = logit(0.95)
    teacher, student = make_outputs(t_logits, per_loc=2), make_outputs(s_logits, per_loc=2)
    gid = GeneralInstanceDistillation(2, 2, GIDConfig(relation_weight=0, response_cls_weight=0, response_box_weight=0))
    assert gid(teacher, student)["gid_instances"].item() == 1
    gis = find_general_instances(teacher, student)
    assert gis.scores[0].tolist() == pytest.approx([0.9], abs=1e-5)
    assert gis.locations[0].tolist() in ([10], [11])
    assert torch.equal(gis.boxes[0], torch.tensor([[8.0, 8, 16, 16]]))
    assert gis.per_anchor

    shifted = make_outputs(s_logits, per_loc=2, anchors=cell_boxes().repeat_interleave(2, dim=0) + 1.0)
    gis = find_general_instances(teacher, shifted)
    assert not gis.per_anchor and gis.count == 0
    assert gid(teacher, shifted)["gid_instances"].item() == 0


# -- feature loss -------------------------------------------------------------------------
def test_gid_feature_loss_pools_from_the_mapped_level():
    """Teacher channels are [1, 0] on level 0 (stride 8) and [3, 3] on level 1 (stride 16), the
    student's [1, 1] on both. Each map is scaled to mean square 1 first: teacher [sqrt 2, 0] and
    [1, 1], student [1, 1]. With canonical_scale 16 and level 4, the 16 x 16 GI box [8, 8, 24, 24]
    pools from floor(4 + log2(16/16)) = 4 = log2(16) (level 1: no difference) and the 8 x 8 box
    [0, 0, 8, 8] from level 0: (sqrt 2 - 1)^2 + 1 = 4 - 2 sqrt 2 per cell, x 100 cells,
    / (K=2 * 10 * 10) = 2 - sqrt 2, x 0.005. (Unnormalised: (1 x 100 + 8 x 100) / 200 = 4.5.)"""
    t_logits, s_logits = torch.zeros(L, 2), torch.zeros(L, 2)
    t_logits[5, 0], t_logits[0, 0] = 2.0, 1.0  # two GIs, loc 5 first
    t_boxes = cell_boxes()
    t_boxes[5] = torch.tensor([8.0, 8, 24, 24])
    teacher = make_outputs(t_logits, t_boxes, features=channel_maps([[1.0, 0.0], [3.0, 3.0]]))
    student = make_outputs(s_logits, features=channel_maps([[1.0, 1.0], [1.0, 1.0]]))
    options = dict(relation_weight=0, response_cls_weight=0, response_box_weight=0, canonical_scale=16)
    out = GeneralInstanceDistillation(2, 2, GIDConfig(**options))(teacher, student)
    assert out["gid_feature"].item() == pytest.approx(0.005 * (2 - math.sqrt(2)), rel=1e-5)
    assert out["distill"].item() == pytest.approx(0.005 * (2 - math.sqrt(2)), rel=1e-5)
    # the size of the activations does not matter: teacher x 1000 on level 0, student x 0.01
    teacher.features = [teacher.features[0] * 1000, teacher.features[1]]
    student.features = [student.features[0] * 0.01, student.features[1]]
    out = GeneralInstanceDistillation(2, 2, GIDConfig(**options))(teacher, student)
    assert out["gid_feature"].item() == pytest.approx(0.005 * (2 - math.sqrt(2)), rel=1e-5)
    # torchvision's default mapping (224 px -> level 4) sends both small boxes to level 0: 2 x (4 - 2 sqrt 2) / 2
    options.pop("canonical_scale")
    out = GeneralInstanceDistillation(2, 2, GIDConfig(**options))(teacher, student)
    assert out["gid_feature"].item() == pytest.approx(0.005 * (4 - 2 * math.sqrt(2)), rel=1e-5)


def test_gid_feature_loss_goes_through_the_adapter():
    """A 1x1 adapter that doubles the student's 1.5 on level 0 matches a teacher of 3 exactly.
    With a bias [1, 0, 0] it gives [4, 3, 3]: scaled to mean square 1 (/ sqrt(34/3)) against the
    teacher's [1, 1, 1], sum_c (a_c / r - 1)^2 = 34/3 / r^2 - 2 * 10 / r + 3 = 6 - 20 sqrt(3/34)
    per cell, x 100 cells / (1 GI x 100). (Unnormalised: 1.)"""
    t_logits = torch.zeros(L, 2)
    t_logits[0, 0] = 2.0
    teacher = make_outputs(t_logits, features=constant_maps([3.0, 3.0], channels=3))
    student = make_outputs(features=constant_maps([1.5, 1.5], channels=2))
    gid = GeneralInstanceDistillation(3, 2, GIDConfig(relation_weight=0, response_cls_weight=0, response_box_weight=0))
    assert isinstance(gid.adapter, nn.Conv2d) and gid.adapter.kernel_size == (1, 1)
    with torch.no_grad():
        gid.adapter.weight.zero_()
        gid.adapter.bias.zero_()
        gid.adapter.weight[:, 0, 0, 0] = 2.0
    assert gid(teacher, student)["gid_feature"].item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        gid.adapter.bias[0] = 1.0
    expected = 6 - 20 * math.sqrt(3 / 34)  # 0.0591
    assert gid(teacher, student)["gid_feature"].item() == pytest.approx(0.005 * expected, rel=1e-4)


# -- relation loss ------------------------------------------------------------------------
def test_relation_loss_on_three_hand_placed_vectors():
    """Teacher points (0,0), (3,0), (0,4): distances 3, 4, 5, mean 4 -> 0.75, 1, 1.25.
    Student points (0,0), (1,0), (0,1): distances 1, 1, sqrt 2, mean m = (2 + sqrt 2) / 3.
    Every difference is below 1, so smooth-L1 = d^2 / 2, each pair counted twice, / (9 - 3)."""
    teacher = torch.tensor([[0.0, 0], [3, 0], [0, 4]])
    student = torch.tensor([[0.0, 0], [1, 0], [0, 1]])
    m = (2 + math.sqrt(2)) / 3
    d = [1 / m - 0.75, 1 / m - 1.0, math.sqrt(2) / m - 1.25]  # pairs (0,1), (0,2), (1,2)
    expected = 2 * sum(0.5 * x**2 for x in d) / 6
    assert relation_loss(teacher, student).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.005222, abs=1e-6)  # d = 0.1287, -0.1213, -0.0074
    # scale-free: a scaled copy of the teacher costs nothing, whatever its width
    assert relation_loss(teacher, 7 * torch.cat([teacher, torch.zeros(3, 5)], 1)).item() == pytest.approx(0, abs=1e-7)


def test_gid_relation_needs_three_instances():
    teacher, student = selection_pair()  # 3 GIs with 10 allowed, 2 with 2
    torch.manual_seed(0)
    teacher.features = [torch.randn(1, 2, h, w) for h, w in SIZES]
    student.features = [torch.randn(1, 2, h, w) for h, w in SIZES]
    config = dict(feature_weight=0, response_cls_weight=0, response_box_weight=0)
    assert GeneralInstanceDistillation(2, 2, GIDConfig(**config))(teacher, student)["gid_relation"].item() > 0
    out = GeneralInstanceDistillation(2, 2, GIDConfig(num_instances=2, **config))(teacher, student)
    assert out["gid_relation"].item() == 0.0


# -- response loss ------------------------------------------------------------------------
BCE_HAND = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) + math.log(2)
"""BCE of student logits [ln 3, 0] (p = 0.75, 0.5) against targets sigmoid([0, ln 3]) = [0.5, 0.75]:
class 0: -(0.5 ln 0.75 + 0.5 ln 0.25); class 1: -(0.75 ln 0.5 + 0.25 ln 0.5) = ln 2."""


class RecordingMatcher:
    """Matches anchor ``hit`` to box 0 and marks anchor ``ignore`` as ignored (-2); records the boxes."""

    def __init__(self, hit: int, ignore: int, num_anchors: int) -> None:
        self.hit, self.ignore, self.num_anchors = hit, ignore, num_anchors
        self.seen: list[torch.Tensor] = []

    def __call__(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        assert anchors.shape == (self.num_anchors, 4)
        self.seen.append(boxes)
        matches = torch.full((self.num_anchors,), -1, dtype=torch.long)
        matches[self.hit], matches[self.ignore] = 0, -2
        return matches


def test_gid_response_on_a_hand_matched_anchor():
    """Same family and anchors. The only disagreement is at anchor 9: one GI, the teacher's box
    there (max scores tie at 0.75, the teacher wins ties). The matcher assigns anchor 9 and ignores
    anchor 3, whose deltas differ wildly but must not count. L1 of deltas: |1-0| + |0-0.5| = 1.5."""
    t_logits, s_logits = torch.zeros(L, 2), torch.zeros(L, 2)
    t_logits[9] = torch.tensor([0.0, LN3])
    s_logits[9] = torch.tensor([LN3, 0.0])
    t_deltas, s_deltas = torch.zeros(L, 4), torch.zeros(L, 4)
    t_deltas[9], s_deltas[9] = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 0, 0.5, 0])
    t_deltas[3] = 5.0
    teacher = make_outputs(t_logits, deltas=t_deltas)
    student = make_outputs(s_logits, deltas=s_deltas)
    matcher = RecordingMatcher(hit=9, ignore=3, num_anchors=L)
    gid = GeneralInstanceDistillation(2, 2, GIDConfig(feature_weight=0, relation_weight=0), match_anchors=matcher)
    out = gid(teacher, student)
    assert torch.equal(matcher.seen[0], cell_boxes()[9:10])
    assert out["gid_response_cls"].item() == pytest.approx(0.1 * BCE_HAND, rel=1e-5)
    assert out["gid_response_box"].item() == pytest.approx(0.1 * 1.5, rel=1e-6)
    assert out["gid_matched"].item() == 1
    assert out["distill"].item() == pytest.approx(0.1 * BCE_HAND + 0.15, rel=1e-5)
    gid = GeneralInstanceDistillation(
        2, 2, GIDConfig(feature_weight=0, relation_weight=0, response_box_weight=1.0), match_anchors=matcher
    )
    assert gid(teacher, student)["gid_response_box"].item() == pytest.approx(1.5)


def test_gid_response_across_families_uses_the_location_grid():
    """FCOS-like teacher (1 point per location) vs a 2-anchor student. The matcher hits anchor 19
    (location 9, second anchor). Student logits at location 9: anchors 18 [ln 3, -5] and 19 [0, 0],
    per-location max [ln 3, 0]; teacher [0, ln 3]: the same BCE as above. Per-location boxes:
    teacher [8, 16, 16, 24]; student: anchor 18 scores higher (0.75), its box [10, 16, 16, 28].
    L1 / stride 8: (2 + 0 + 0 + 4) / 8 = 0.75."""
    t_logits = torch.zeros(L, 2)
    t_logits[9] = torch.tensor([0.0, LN3])
    t_boxes = cell_boxes()
    t_boxes[9] = torch.tensor([8.0, 16, 16, 24])
    teacher = make_outputs(t_logits, t_boxes, family="fcos", anchors=torch.zeros(L, 4) + 1.0)
    s_logits = torch.zeros(2 * L, 2)
    s_logits[18] = torch.tensor([LN3, -5.0])
    s_boxes = cell_boxes().repeat_interleave(2, dim=0)
    s_boxes[18] = torch.tensor([10.0, 16, 16, 28])
    student = make_outputs(s_logits, s_boxes, per_loc=2)
    matcher = RecordingMatcher(hit=19, ignore=0, num_anchors=2 * L)
    gid = GeneralInstanceDistillation(2, 2, GIDConfig(feature_weight=0, relation_weight=0), match_anchors=matcher)
    out = gid(teacher, student)
    assert torch.equal(matcher.seen[0], t_boxes[9:10])
    assert out["gid_matched"].item() == 1
    assert out["gid_response_cls"].item() == pytest.approx(0.1 * BCE_HAND, rel=1e-5)
    assert out["gid_response_box"].item() == pytest.approx(0.1 * 0.75, rel=1e-6)


def test_gid_refuses_different_location_grids():
    teacher = make_outputs()
    student = make_outputs(
        features=[torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4)],
        strides=[4, 8],
        anchors=torch.zeros(80, 4),
        logits=torch.zeros(80, 2),
        boxes=torch.zeros(80, 4),
        deltas=torch.zeros(80, 4),
    )
    gid = GeneralInstanceDistillation(2, 2, GIDConfig(response_cls_weight=0, response_box_weight=0))
    with pytest.raises(ValueError, match=r"strides \[8, 16\].*\[4, 8\]"):
        gid(teacher, student)
    with pytest.raises(ValueError, match="384, 384.*run both models on the same batch"):
        gid(teacher, make_outputs(image_size=(384, 384)))
    three_classes = make_outputs(logits=torch.zeros(L, 3))
    with pytest.raises(ValueError, match="2 score.*3"):
        gid(make_outputs(), three_classes)


def test_gid_parts_switch_off_and_need_a_matcher():
    teacher, student = selection_pair()
    matcher = RecordingMatcher(hit=5, ignore=0, num_anchors=L)
    full = GeneralInstanceDistillation(2, 2, match_anchors=matcher)(teacher, student)
    assert {"gid_feature", "gid_relation", "gid_response_cls", "gid_response_box"} <= set(full)
    parts = ["gid_feature", "gid_relation", "gid_response_cls", "gid_response_box"]
    assert full["distill"].item() == pytest.approx(sum(full[p].item() for p in parts))
    for off in ("feature", "relation", "response_cls", "response_box"):
        out = GeneralInstanceDistillation(2, 2, GIDConfig(**{f"{off}_weight": 0.0}), match_anchors=matcher)(
            teacher, student
        )
        assert f"gid_{off}" not in out and "distill" in out
    with pytest.raises(ValueError, match="match_anchors"):
        GeneralInstanceDistillation(2, 2)
    with pytest.raises(ConfigError, match="every weight is 0"):
        GIDConfig(feature_weight=0, relation_weight=0, response_cls_weight=0, response_box_weight=0)


def test_gid_gradients_reach_student_and_adapter_not_teacher():
    torch.manual_seed(0)
    teacher, student = selection_pair()
    teacher.features = [torch.randn(1, 3, h, w, requires_grad=True) for h, w in SIZES]
    teacher.cls_logits.requires_grad_(True)
    student.features = [torch.randn(1, 2, h, w, requires_grad=True) for h, w in SIZES]
    student.cls_logits.requires_grad_(True)
    student.box_regression.requires_grad_(True)
    student.box_regression.data.normal_()
    matcher = RecordingMatcher(hit=5, ignore=0, num_anchors=L)
    gid = GeneralInstanceDistillation(3, 2, GIDConfig(canonical_scale=16), match_anchors=matcher)
    out = gid(teacher, student)  # the 16-px GI boxes pool from level 1, the 8-px one from level 0
    out["distill"].backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student.features)
    assert student.cls_logits.grad.abs().sum() > 0 and student.box_regression.grad.abs().sum() > 0
    assert gid.adapter.weight.grad.abs().sum() > 0
    assert all(f.grad is None for f in teacher.features) and teacher.cls_logits.grad is None


# -- hint -----------------------------------------------------------------------------------
def hint_pair(requires_grad: bool = False) -> tuple[DetectorOutputs, DetectorOutputs]:
    """Teacher channels [3, 4] (level 0) and [2, 0] (level 1); student [4, 3] and [0, 1]."""
    teacher = make_outputs(features=channel_maps([[3.0, 4.0], [2.0, 0.0]]))
    student = make_outputs(features=channel_maps([[4.0, 3.0], [0.0, 1.0]], requires_grad))
    return teacher, student


def test_hint_with_identity_adapter_equals_hand_value():
    """Each map scaled to mean square 1, so a level costs 1 - cos(t, s): level 0
    1 - (12 + 12) / 25 = 0.04, level 1 1 - 0 = 1. (Unnormalised: 0.5 * 1 + 0.5 * (4 + 1) / 2 = 1.75.)"""
    teacher, student = hint_pair()
    hint = FeatureHint(2, 2)
    assert hint.config.weight == 1.0
    assert isinstance(hint.adapter, nn.Conv2d) and hint.adapter.kernel_size == (3, 3)
    identity_conv(hint.adapter)
    assert hint(teacher, student)["hint"].item() == pytest.approx(1.04, rel=1e-5)
    only_coarse = FeatureHint(2, 2, HintConfig(levels=[1]))
    identity_conv(only_coarse.adapter)
    assert only_coarse(teacher, student)["distill"].item() == pytest.approx(1.0, rel=1e-5)


def test_hint_levels_weigh_the_same_whatever_their_activation_size():
    """A coarse level 100x larger (as a trained teacher's P6/P7) adds as much as before, not 10^4 as
    much; a 1000x smaller student changes nothing either."""
    teacher, student = hint_pair()
    hint = FeatureHint(2, 2)
    identity_conv(hint.adapter)
    teacher.features = [teacher.features[0], teacher.features[1] * 100]
    student.features = [student.features[0] / 1000, student.features[1] / 1000]
    assert hint(teacher, student)["hint"].item() == pytest.approx(1.04, rel=1e-5)


def test_near_object_mask_by_hand():
    """Box [0, 0, 16, 8]: cells (0,0) and (0,1) of level 0 have IoU 64/128 = 0.5, cell (0,0) of
    level 1 128/256 = 0.5, all others 0; best 0.5, threshold 0.25 -> exactly those three."""
    masks = near_object_mask(cell_boxes(), 1, SIZES, torch.tensor([[0.0, 0, 16, 8]]))
    expected0 = torch.zeros(4, 4, dtype=torch.bool)
    expected0[0, 0] = expected0[0, 1] = True
    expected1 = torch.zeros(2, 2, dtype=torch.bool)
    expected1[0, 0] = True
    assert torch.equal(masks[0], expected0) and torch.equal(masks[1], expected1)
    assert not any(m.any() for m in near_object_mask(cell_boxes(), 1, SIZES, torch.zeros(0, 4)))


def test_masked_hint_with_ground_truth_and_teacher_boxes():
    """Maps scaled to mean square 1 over the whole level first: level 0 [3, 4] and [4, 3] / sqrt 12.5,
    level 1 [sqrt 2, 0] and [0, sqrt 2]. On the three masked locations: level 0 (1 + 1) / 12.5 x 2
    locations = 0.32, level 1 (2 + 2) x 1 = 4; (0.32 + 4) / (2 * 3) = 0.72, x 0.01.
    (Unnormalised: (2 x 2 + 5) / 6 = 1.5.)"""
    teacher, student = hint_pair()
    targets = [{"boxes": torch.tensor([[0.0, 0, 16, 8]]), "labels": torch.tensor([0])}]
    hint = FeatureHint(2, 2, HintConfig(mask="gt"))
    identity_conv(hint.adapter)
    out = hint(teacher, student, targets)
    assert out["hint"].item() == pytest.approx(0.01 * 0.72, rel=1e-5)
    assert out["hint_locations"].item() == 3
    with pytest.raises(ValueError, match="no targets"):
        hint(teacher, student)

    # label-free: the teacher's one confident detection (loc 0, score 0.9) has the same box
    t_logits = torch.full((L, 2), -5.0)
    t_logits[0, 1] = logit(0.9)
    t_boxes = cell_boxes()
    t_boxes[0] = torch.tensor([0.0, 0, 16, 8])
    teacher = make_outputs(t_logits, t_boxes, features=teacher.features)
    auto = FeatureHint(2, 2, HintConfig(mask="auto"))
    identity_conv(auto.adapter)
    assert auto(teacher, student)["hint"].item() == pytest.approx(0.01 * 0.72, rel=1e-5)


def test_hint_mask_for_point_anchors_uses_generated_anchors():
    """An FCOS student (point or stride-sized anchors) gets 9 RetinaNet-style anchors per location.
    A box equal to one generated anchor has IoU 1 with it, so its location is masked."""
    student = make_outputs(family="fcos", anchors=cell_boxes()[:, :2].repeat(1, 2) + 4)
    anchors, per_loc = retinanet_style_anchors(student)
    assert anchors.shape == (9 * L, 4) and per_loc == 9
    box = anchors[9 * 5 + 3]  # location 5 (centre (8, 8)), ratio 1 and size 32 (ratio-major order)
    assert torch.allclose(box, torch.tensor([-8.0, -8, 24, 24]))
    teacher = make_outputs(features=constant_maps([2.0, 0.0]))
    student.features = constant_maps([1.0, 3.0])
    hint = FeatureHint(2, 2, HintConfig(mask="gt"))
    out = hint(teacher, student, [{"boxes": box[None]}])
    masks = near_object_mask(anchors, 9, SIZES, box[None])
    assert masks[0][1, 1]
    assert out["hint_locations"].item() == sum(int(m.sum()) for m in masks)


# -- PKD ------------------------------------------------------------------------------------
def test_pkd_is_zero_for_maps_equal_up_to_a_positive_affine_map():
    torch.manual_seed(0)
    t_maps = [torch.randn(2, 2, h, w) for h, w in SIZES]
    scale = torch.tensor([3.0, 0.5]).view(1, 2, 1, 1)
    s_maps = [m * scale + torch.tensor([1.0, -2.0]).view(1, 2, 1, 1) for m in t_maps]
    teacher, student = make_outputs(features=t_maps), make_outputs(features=s_maps)
    assert PKD(2, 2, PKDConfig(levels=[0, 1]))(teacher, student)["pkd"].item() == pytest.approx(0.0, abs=1e-8)


def five_levels(maps: list[torch.Tensor], family: str = "retinanet") -> DetectorOutputs:
    """Outputs with five FPN levels P3..P7 (only the features are real; PKD and CWD read nothing else)."""
    return make_outputs(features=maps, family=family, strides=[8, 16, 32, 64, 128])


def test_pkd_of_negated_maps_by_hand():
    """norm(-t) = -norm(t) and mean(norm(t)^2) = 1 (population variance): MSE = 4, / 2 = 2 per
    level. Defaults: levels P3..P6 (4 of the 5), weight 10 for a RetinaNet or FCOS student -> 80,
    6 for Faster R-CNN -> 48. (Before: every level, weight 6 -> 60.)"""
    torch.manual_seed(1)
    t_maps = [torch.randn(1, 2, 2, 2) for _ in range(5)]
    teacher = five_levels(t_maps)
    for family, expected in (("retinanet", 80.0), ("fcos", 80.0), ("faster_rcnn", 48.0)):
        student = five_levels([-m for m in t_maps], family)
        assert PKD(2, 2)(teacher, student)["pkd"].item() == pytest.approx(expected, rel=1e-4)
    assert PKDConfig().levels == [0, 1, 2, 3] and PKDConfig().weight is None
    student = five_levels([-m for m in t_maps])
    every_level = PKD(2, 2, PKDConfig(weight=6.0, levels=None))(teacher, student)["pkd"].item()
    assert every_level == pytest.approx(60.0, rel=1e-4)
    assert PKD(2, 2, PKDConfig(weight=1.0, levels=[0]))(teacher, student)["pkd"].item() == pytest.approx(2.0, rel=1e-4)
    # a 1 x 1 map has no spatial variation: it normalises to 0 instead of NaN
    assert torch.equal(normalise_per_channel(torch.randn(1, 3, 1, 1)), torch.zeros(1, 3, 1, 1))


# -- CWD ------------------------------------------------------------------------------------
def test_channel_wise_kl_by_hand():
    """Channel 0 identical (KL 0); channel 1 teacher [0, ln 3] -> [1/4, 3/4], student uniform:
    KL = 1/4 ln(1/2) + 3/4 ln(3/2); averaged over the 2 channels."""
    teacher = torch.tensor([[[[1.0, 2.0]], [[0.0, LN3]]]])  # (1, 2, 1, 2)
    student = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert channel_wise_kl(teacher, student).item() == pytest.approx(kl / 2, rel=1e-5)
    # tau = 2: teacher [0, ln 3 / 2] -> p = [1, sqrt 3] / (1 + sqrt 3), student uniform, x tau^2
    p = [1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))]
    kl2 = sum(q * math.log(2 * q) for q in p)
    assert channel_wise_kl(teacher, student, tau=2.0).item() == pytest.approx(4 * kl2 / 2, rel=1e-5)


def test_cwd_on_features_and_logits():
    torch.manual_seed(0)
    maps = [torch.randn(1, 2, h, w) for h, w in SIZES]
    two = CWDConfig(levels=[0, 1])
    same = ChannelWiseDistillation(2, 2, two)(make_outputs(features=maps), make_outputs(features=maps))
    assert same["cwd"].item() == pytest.approx(0.0, abs=1e-6)
    # one level of 1 x 2 positions: weight 5 x the hand KL above
    teacher = make_outputs(features=[torch.tensor([[[[1.0, 2.0]], [[0.0, LN3]]]])])
    student = make_outputs(features=[torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]])])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert ChannelWiseDistillation(2, 2, CWDConfig(levels=[0]))(teacher, student)["cwd"].item() == pytest.approx(
        5 * kl / 2, rel=1e-5
    )

    logits = torch.randn(L, 2)
    cwd = ChannelWiseDistillation(256, 128, CWDConfig(source="logits", levels=[0, 1]))
    assert cwd(make_outputs(logits), make_outputs(logits, channels=3))["cwd"].item() == pytest.approx(0, abs=1e-6)


def test_cwd_default_levels_are_p3_to_p6():
    """Five levels: P3..P5 identical, P6 the hand example above (weight 5 x KL / 2), P7 different
    (random). The default levels [0, 1, 2, 3] leave P7 out: exactly 5 x KL / 2."""
    torch.manual_seed(2)
    shared = [torch.randn(1, 2, 2, 2) for _ in range(3)]
    t_p6 = torch.tensor([[[[1.0, 2.0]], [[0.0, LN3]]]])
    s_p6 = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]])
    teacher = five_levels([*shared, t_p6, torch.randn(1, 2, 1, 2)])
    student = five_levels([*shared, s_p6, torch.randn(1, 2, 1, 2)])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert ChannelWiseDistillation(2, 2)(teacher, student)["cwd"].item() == pytest.approx(5 * kl / 2, rel=1e-5)
    assert CWDConfig().levels == [0, 1, 2, 3]
    every_level = ChannelWiseDistillation(2, 2, CWDConfig(levels=None))(teacher, student)["cwd"].item()
    assert every_level > 5 * kl / 2 + 1e-3


def test_dense_logit_maps_layout():
    """Anchor n = 2 * location + a; location 6 is level 0 row 1 column 2; channel = a * K + class."""
    logits = torch.arange(2 * L * 2, dtype=torch.float32).reshape(2 * L, 2)
    outputs = make_outputs(logits, per_loc=2)
    maps = dense_logit_maps(outputs, max_over_anchors=False)
    assert [tuple(m.shape) for m in maps] == [(1, 4, 4, 4), (1, 4, 2, 2)]
    assert maps[0][0, 3, 1, 2] == logits[13, 1]
    assert maps[1][0, 0, 1, 0] == logits[2 * 18, 0]
    maxed = dense_logit_maps(outputs, max_over_anchors=True)
    assert maxed[0][0, 1, 1, 2] == logits[13, 1]  # the second anchor holds the larger values


# -- errors, factory, gradients -------------------------------------------------------------
def test_clear_errors_for_shapes_that_do_not_line_up():
    with pytest.raises(ValueError, match=r"width 2 != teacher FPN width 4.*conv1x1"):
        PKD(4, 2, PKDConfig(adapter="identity"))
    teacher, student = hint_pair()
    with pytest.raises(ValueError, match="student_channels=2"):
        PKD(2, 3)(teacher, student)
    one_level = make_outputs(features=[torch.zeros(1, 2, 4, 4)])
    with pytest.raises(ValueError, match="Teacher has 2 FPN levels.*student 1"):
        PKD(2, 2)(teacher, one_level)
    bigger = make_outputs(features=[torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 3, 3)])
    with pytest.raises(ValueError, match=r"level 1: teacher map \(1, 2, 2, 2\) and student map \(1, 2, 3, 3\)"):
        ChannelWiseDistillation(2, 2)(teacher, bigger)
    with pytest.raises(ValueError, match="levels=\\[5\\]"):
        FeatureHint(2, 2, HintConfig(levels=[5]))(teacher, student)
    with pytest.raises(ValueError, match="teacher has 2 classes and the student 3"):
        ChannelWiseDistillation(2, 2, CWDConfig(source="logits"))(teacher, make_outputs(logits=torch.zeros(L, 3)))


def test_factory_builds_each_method_and_rejects_unknown_options():
    matcher = RecordingMatcher(hit=0, ignore=1, num_anchors=L)
    gid = create_detection_distiller("gid", 4, 2, match_anchors=matcher, relation_weight=0)
    assert isinstance(gid, GeneralInstanceDistillation) and gid.config.relation_weight == 0
    assert len(list(gid.parameters())) == 2  # the 1x1 adapter's weight and bias
    no_feature = create_detection_distiller("gid", 4, 2, match_anchors=matcher, feature_weight=0)
    assert not list(no_feature.parameters())  # no adapter that would never get a gradient
    assert isinstance(create_detection_distiller("hint", 4, 2, mask="gt"), FeatureHint)
    assert create_detection_distiller("hint", 4, 2, mask="gt").config.weight == 0.01
    assert create_detection_distiller("hint", 4, 2).config.weight == 1.0
    assert isinstance(create_detection_distiller("pkd", 2, 2).adapter, nn.Identity)
    assert isinstance(create_detection_distiller("cwd", 4, 2).adapter, nn.Conv2d)
    with pytest.raises(ConfigError, match="valid: gid, hint, pkd, cwd"):
        create_detection_distiller("fgd", 2, 2)
    with pytest.raises(ConfigError, match="tua"):
        create_detection_distiller("cwd", 2, 2, tua=2.0)


@pytest.mark.parametrize("method", ["hint", "pkd", "cwd"])
def test_feature_methods_send_gradients_to_student_and_adapter_only(method):
    torch.manual_seed(0)
    teacher = make_outputs(features=[torch.randn(1, 4, h, w, requires_grad=True) for h, w in SIZES])
    student = make_outputs(features=[torch.randn(1, 2, h, w, requires_grad=True) for h, w in SIZES])
    options = {} if method == "hint" else {"levels": [0, 1]}  # the fixture has 2 levels
    distiller = create_detection_distiller(method, 4, 2, **options)
    distiller(teacher, student)["distill"].backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student.features)
    assert distiller.adapter.weight.grad.abs().sum() > 0
    assert all(f.grad is None for f in teacher.features)


def test_nothing_selected_gives_zero_still_connected_to_student_and_adapter():
    """Identical predictions: no GI (every score is 0, not > min_score), every GID term 0; a
    mask with no object: hint 0. Backward still reaches the student and the adapters."""
    student = make_outputs(features=[torch.randn(1, 2, h, w, requires_grad=True) for h, w in SIZES])
    teacher = make_outputs(channels=3)
    gid = GeneralInstanceDistillation(3, 2, match_anchors=RecordingMatcher(hit=0, ignore=1, num_anchors=L))
    out = gid(teacher, student)
    assert out["gid_instances"].item() == 0 and out["distill"].item() == 0
    out["distill"].backward()
    assert student.features[0].grad is not None and gid.adapter.weight.grad is not None
    hint = FeatureHint(3, 2, HintConfig(mask="gt"))
    out = hint(teacher, student, [{"boxes": torch.zeros(0, 4)}])
    assert out["hint"].item() == 0 and out["hint_locations"].item() == 0
    out["distill"].backward()
    assert hint.adapter.weight.grad is not None


def test_gid_distils_a_two_stage_pairs_roi_head_on_the_general_instances():
    """Both models have a second stage (fakes): one GI (anchor 9, as above) goes to both RoI heads.
    Teacher RoI logits (0, ln 3, 0) -> softmax (1/5, 3/5, 1/5); student (0, 0, 0) -> 1/3 each:
    KL = 2/5 ln(3/5) + 3/5 ln(9/5). The teacher's top object class is column 1, where the deltas
    are (1, 0, 0, 0) and (0, 0, 0.5, 0): L1 1.5; the other columns (9s) must not count."""
    t_logits, s_logits = torch.zeros(L, 2), torch.zeros(L, 2)
    t_logits[9] = torch.tensor([0.0, LN3])
    s_logits[9] = torch.tensor([LN3, 0.0])
    teacher, student = make_outputs(t_logits, family="faster_rcnn"), make_outputs(s_logits, family="faster_rcnn")
    seen = []
    t_reg = torch.full((1, 3, 4), 9.0)
    t_reg[0, 1] = torch.tensor([1.0, 0, 0, 0])
    s_reg = torch.zeros(1, 3, 4)
    s_reg[0, 1] = torch.tensor([0.0, 0, 0.5, 0])
    s_cls = torch.zeros(1, 3, requires_grad=True)
    teacher.second_stage = lambda boxes: (seen.append(boxes) or torch.tensor([[0.0, LN3, 0.0]]), t_reg.view(1, 12))
    student.second_stage = lambda boxes: (s_cls, s_reg.view(1, 12))
    gid = GeneralInstanceDistillation(2, 2, GIDConfig(feature_weight=0, relation_weight=0),
                                      match_anchors=RecordingMatcher(hit=9, ignore=3, num_anchors=L))
    out = gid(teacher, student)
    assert torch.equal(seen[0][0], cell_boxes()[9:10])  # the GI box, as the proposal
    kl = 0.4 * math.log(0.6) + 0.6 * math.log(1.8)
    assert out["gid_response_roi_cls"].item() == pytest.approx(0.1 * kl, rel=1e-5)
    assert out["gid_response_roi_box"].item() == pytest.approx(0.1 * 1.5, rel=1e-6)
    out["distill"].backward()
    assert s_cls.grad is not None and s_cls.grad.abs().sum() > 0
    plain = make_outputs(s_logits, family="faster_rcnn")  # a pair without a second stage: no RoI terms
    assert "gid_response_roi_cls" not in gid(make_outputs(t_logits, family="faster_rcnn"), plain)
    rpn_only = GeneralInstanceDistillation(2, 2, GIDConfig(feature_weight=0, relation_weight=0, second_stage_response=False),
                                           match_anchors=RecordingMatcher(hit=9, ignore=3, num_anchors=L))
    out = rpn_only(teacher, student)  # switched off: the same dense response, no RoI terms, the heads not run
    assert "gid_response_roi_cls" not in out and "gid_response_roi_box" not in out and len(seen) == 1
    assert out["gid_response_cls"].item() == pytest.approx(gid(teacher, student)["gid_response_cls"].item())


def test_faster_rcnn_second_stage_is_its_roi_head_and_gid_trains_it():
    from detkd.models.detection import create_detector

    torch.manual_seed(0)
    teacher, student = create_detector("fasterrcnn_tiny_fpn", 2).eval(), create_detector("fasterrcnn_tiny_fpn", 2)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_out = teacher(images)
    cls, reg = t_out.second_stage(t_out.extra["proposals"])  # eval mode: the head already ran on these
    assert torch.allclose(cls, t_out.extra["roi_class_logits"]) and torch.allclose(reg, t_out.extra["roi_box_regression"])
    assert cls.shape[1] == 3 and reg.shape[1] == 12
    assert create_detector("fcos_tiny_fpn", 2)(images).second_stage is None
    s_out = student(images)
    gid = create_detection_distiller("gid", t_out.channels, s_out.channels, match_anchors=student.match_anchors)
    out = gid(t_out, s_out)
    assert out["gid_response_roi_cls"].item() > 0 and math.isfinite(out["gid_response_roi_box"].item())
    out["distill"].backward()
    head = student.model.roi_heads.box_predictor.cls_score.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
