"""Detector adapters: registry, output conventions, losses, matching, post-processing, files."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from detkd.config import ConfigError
from detkd.engine import atomic_save
from detkd.models.detection import (
    FPN_LEVEL_NAMES,
    FPN_STRIDES,
    DetectorOutputs,
    build_fpn_backbone,
    count_parameters,
    create_detector,
    detector_gflops,
    list_detectors,
    load_detector,
    per_location,
    save_detector,
    variant_options,
)
from detkd.models.weights import UnreadableWeightsError, WeightsMismatchError
from detkd.safe_files import with_digest

TINY = {"retinanet": "retinanet_tiny_fpn", "fcos": "fcos_tiny_fpn", "faster_rcnn": "fasterrcnn_tiny_fpn"}
ANCHORS_PER_LOCATION = {"retinanet": 9, "fcos": 1, "faster_rcnn": 3}
LOSS_KEYS = {
    "retinanet": {"classification", "bbox_regression"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
    "faster_rcnn": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
}
NUM_CLASSES = 3


def _detector(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_detector(TINY[family], NUM_CLASSES, **overrides)


def _batch(height: int = 128, width: int = 128, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height, width, generator=generator)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [70.0, 8.0, 120.0, 40.0]]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ][:batch]
    return images, targets


# ---------------------------------------------------------------------- registry
def test_registry_has_every_family_on_every_backbone():
    names = set(list_detectors())
    for family in ("retinanet", "fcos", "fasterrcnn"):
        for backbone in ("resnet18", "resnet34", "resnet50", "mobilenet_v3", "nano", "tiny", "small"):
            assert f"{family}_{backbone}_fpn" in names
    assert list_detectors("fcos") == sorted(n for n in names if n.startswith("fcos_"))


def test_cpu_sized_variants_differ_only_in_the_documented_defaults():
    nano, tiny = variant_options("fcos_nano_fpn"), variant_options("fcos_tiny_fpn")
    assert nano.pop("tiny_widths") == (8, 16, 24, 32, 48) and tiny.pop("tiny_widths") == (16, 24, 32, 48, 64)
    assert nano.pop("head_convs") == 2 and tiny.pop("head_convs") == 4
    assert nano == tiny  # everything else: the FCOS defaults at 32 FPN channels
    # Faster R-CNN on any of the three tiny CNNs keeps the small two-stage settings.
    for backbone in ("nano", "tiny", "small"):
        options = variant_options(f"fasterrcnn_{backbone}_fpn")
        assert options["representation_size"] == 256 and options["rpn_post_nms_top_n_test"] == 100
    assert "head_convs" not in variant_options("retinanet_nano_fpn")
    adapter = create_detector("fcos_nano_fpn", 3)
    assert len(adapter.model.head.classification_head.conv) == 2 * 3  # 2 x (conv, GroupNorm, ReLU)
    assert adapter.model.backbone.body.stem[0].out_channels == 8


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="Unknown detector 'retinanet_resnet99_fpn'.*retinanet_resnet50_fpn"):
        create_detector("retinanet_resnet99_fpn", 3)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['fpn_width'\].*fpn_channels"):
        create_detector("fcos_tiny_fpn", 3, fpn_width=64)
    with pytest.raises(ConfigError, match="fpn_channels must be a multiple of 16"):
        create_detector("fcos_tiny_fpn", 3, fpn_channels=40)
    with pytest.raises(ConfigError, match="num_classes"):
        create_detector("fcos_tiny_fpn", 0)
    with pytest.raises(ValueError, match="2 class names given for a detector with 3 classes"):
        create_detector("fcos_tiny_fpn", 3, class_names=["a", "b"])


def test_overrides_change_the_model_and_are_kept_in_the_config():
    adapter = create_detector("retinanet_tiny_fpn", 2, class_names=["tree", "car"], fpn_channels=64)
    assert adapter.fpn_channels == 64 and adapter.strides == list(FPN_STRIDES)
    assert adapter.config == {
        "name": "retinanet_tiny_fpn", "num_classes": 2, "overrides": {"fpn_channels": 64}, "class_names": ["tree", "car"],
    }
    assert count_parameters(adapter) > count_parameters(create_detector("retinanet_tiny_fpn", 2))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenet_v3_large", "tiny"])
def test_every_backbone_gives_p3_to_p7(backbone):
    torch.manual_seed(0)
    net = build_fpn_backbone(backbone, fpn_channels=32).eval()
    # trained from scratch: ordinary BatchNorm, every parameter trainable
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        levels = net(torch.rand(1, 3, 128, 256))
    assert list(levels) == list(FPN_LEVEL_NAMES)
    assert [tuple(v.shape) for v in levels.values()] == [(1, 32, 128 // s, 256 // s) for s in FPN_STRIDES]


# ---------------------------------------------------------------------- forward conventions
@pytest.mark.parametrize("family", list(TINY))
def test_forward_shapes_follow_the_conventions(family):
    adapter = _detector(family).eval()
    images = torch.rand(2, 3, 128, 256)
    with torch.no_grad():
        out = adapter(images)
    levels = [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)]  # 128x256 at strides 8..128
    a = ANCHORS_PER_LOCATION[family]
    n = a * sum(h * w for h, w in levels)
    k = 1 if family == "faster_rcnn" else NUM_CLASSES
    assert isinstance(out, DetectorOutputs) and out.family == family
    assert out.strides == [8, 16, 32, 64, 128] and out.image_size == (128, 256)
    assert out.level_sizes == levels and out.channels == adapter.fpn_channels == 32
    assert out.anchors_per_location == a and out.anchors.shape == (n, 4)
    assert out.cls_logits.shape == (2, n, k) and out.box_regression.shape == (2, n, 4) and out.boxes.shape == (2, n, 4)
    assert (out.centerness is not None) == (family == "fcos")
    if family == "fcos":
        assert out.centerness.shape == (2, n)
    assert out.losses == {}
    if family == "faster_rcnn":
        proposals = out.extra["proposals"]
        assert len(proposals) == 2 and all(p.shape[1] == 4 for p in proposals)
        total = sum(p.shape[0] for p in proposals)
        assert out.extra["roi_class_logits"].shape == (total, NUM_CLASSES + 1)
        assert out.extra["roi_box_regression"].shape == (total, 4 * (NUM_CLASSES + 1))


def test_anchor_positions_hand_computed():
    """torchvision's anchors: centred on (col * stride, row * stride), ratios outer, sizes inner."""
    images = torch.rand(1, 3, 128, 256)
    retina = _detector("retinanet").eval()
    fcos = _detector("fcos").eval()
    with torch.no_grad():
        r, f = retina(images), fcos(images)
    # RetinaNet anchor 0: ratio h/w 0.5, size 32 -> w = 32 * sqrt(2) = 45.25, h = 22.63, halves rounded.
    assert r.anchors[0].tolist() == [-23.0, -11.0, 23.0, 11.0]
    # anchor 9 is the first of the next column (x = 8); anchor 9 * 32 the first of the next row (y = 8)
    assert r.anchors[9].tolist() == [-15.0, -11.0, 31.0, 11.0]
    assert r.anchors[9 * 32].tolist() == [-23.0, -3.0, 23.0, 19.0]
    # FCOS: one stride-sized square per location; the last is P7 (stride 128), row 0, column 1.
    assert f.anchors[0].tolist() == [-4.0, -4.0, 4.0, 4.0]
    assert f.anchors[1].tolist() == [4.0, -4.0, 12.0, 4.0]
    assert f.anchors[-1].tolist() == [64.0, -64.0, 192.0, 64.0]


@pytest.mark.parametrize("family", list(TINY))
def test_zero_deltas_decode_to_the_anchors(family):
    adapter = _detector(family).eval()
    model = adapter.model
    last = {
        "retinanet": model.head.regression_head.bbox_reg if family == "retinanet" else None,
        "fcos": model.head.regression_head.bbox_reg if family == "fcos" else None,
        "faster_rcnn": model.rpn.head.bbox_pred if family == "faster_rcnn" else None,
    }[family]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        out = adapter(torch.rand(2, 3, 128, 128))
    assert torch.count_nonzero(out.box_regression) == 0
    anchors = out.anchors.expand_as(out.boxes)
    if family == "fcos":  # FCOS deltas are distances to the sides: zero is the point itself
        centres = (anchors[..., :2] + anchors[..., 2:]) / 2
        torch.testing.assert_close(out.boxes, torch.cat([centres, centres], dim=-1))
    else:
        torch.testing.assert_close(out.boxes, anchors)


# ---------------------------------------------------------------------- losses
@pytest.mark.parametrize("family", list(TINY))
def test_losses_with_targets_in_train_and_eval_mode(family):
    adapter = _detector(family)
    images, targets = _batch()
    for mode in (True, False):
        adapter.train(mode)
        out = adapter(images, targets)
        assert set(out.losses) == LOSS_KEYS[family]
        assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.losses["classification" if family != "faster_rcnn" else "loss_classifier"] > 0


@pytest.mark.parametrize("family", list(TINY))
def test_a_few_steps_on_one_image_reduce_the_loss(family):
    adapter = _detector(family).train()
    images, targets = _batch(batch=1)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=2e-3)

    def total_loss(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)  # Faster R-CNN samples anchors and proposals at random
        return sum(adapter(images, targets).losses.values())

    with torch.no_grad():
        before = float(total_loss(123))
    for step in range(15):
        optimizer.zero_grad()
        total_loss(step).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(total_loss(123))
    assert after < 0.8 * before, (before, after)


def test_fcos_loss_uses_the_same_assignment_as_match_anchors():
    adapter = _detector("fcos")
    images, targets = _batch()
    captured = {}
    original = adapter.model.head.compute_loss

    def spy(targets, head_outputs, anchors, matched_idxs):
        captured["matched"] = matched_idxs
        return original(targets, head_outputs, anchors, matched_idxs)

    adapter.model.head.compute_loss = spy
    out = adapter(images, targets)
    for target, matched in zip(targets, captured["matched"]):
        assert torch.equal(adapter.match_anchors(out.anchors, target["boxes"]), matched)
    assert (captured["matched"][0] >= 0).any()


# ---------------------------------------------------------------------- matching
def test_retinanet_matcher_hand_case():
    adapter = _detector("retinanet")
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # = gt 0, IoU 1
            [0.0, 0.0, 10.0, 6.0],  # IoU 0.6 with gt 0 (>= 0.5): matched
            [0.0, 0.0, 10.0, 4.5],  # IoU 0.45: between 0.4 and 0.5, ignored
            [0.0, 0.0, 10.0, 3.0],  # IoU 0.3: background
            [51.0, 50.0, 61.0, 60.0],  # IoU 90/110 = 0.82 with gt 1
            [100.0, 100.0, 110.0, 110.0],  # far: background
        ]
    )
    assert adapter.match_anchors(anchors, gt).tolist() == [0, 0, -2, -1, 1, -1]
    assert adapter.match_anchors(anchors, torch.zeros(0, 4)).tolist() == [-1] * 6


def test_retinanet_low_quality_match_keeps_the_best_anchor_of_a_small_box():
    adapter = _detector("retinanet")
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0]])  # IoU 0.16 and 0.04
    assert adapter.match_anchors(anchors, gt).tolist() == [0, -1]


def test_fcos_matcher_hand_case():
    """Centre sampling radius 1.5 strides, point inside the box, P3 distances below 64 px.

    gt 0 = [2, 2, 30, 30] (centre 16): P3 points with |p - 16| < 12 -> x, y in {8, 16, 24}.
    gt 1 = [0, 0, 60, 60] (centre 30): P3 points x, y in {24, 32, 40} (largest distance <= 40).
    (24, 24) is a candidate of both: the smaller box, gt 0, wins. P4 candidates of gt 1
    ((16|32|48, 16|32|48)) regress at most 44 px, below P4's lower bound 64: unmatched.
    """
    adapter = _detector("fcos").eval()
    with torch.no_grad():
        anchors = adapter(torch.rand(1, 3, 128, 128)).anchors
    gt = torch.tensor([[2.0, 2.0, 30.0, 30.0], [0.0, 0.0, 60.0, 60.0]])
    matched = adapter.match_anchors(anchors, gt)
    expected = torch.full((anchors.shape[0],), -1)
    for x in (8, 16, 24, 32, 40):
        for y in (8, 16, 24, 32, 40):
            index = (y // 8) * 16 + x // 8  # P3 is 16x16, row-major
            if x <= 24 and y <= 24:
                expected[index] = 0
            elif x >= 24 and y >= 24:
                expected[index] = 1
    assert torch.equal(matched, expected)


def test_faster_rcnn_matches_with_the_rpn_matcher():
    adapter = _detector("faster_rcnn")
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 2.0]])  # IoU 1, .5, .2
    assert adapter.match_anchors(anchors, gt).tolist() == [0, -2, -1]  # RPN thresholds 0.7 / 0.3


# ---------------------------------------------------------------------- per-location view
def test_per_location_hand_computed():
    logit = {0.25: -math.log(3), 0.5: 0.0, 0.75: math.log(3), 0.9: math.log(9)}  # sigmoid^-1
    cls = torch.tensor(
        [[[logit[0.25], logit[0.5]], [logit[0.9], logit[0.25]], [logit[0.75], logit[0.5]], [logit[0.25], logit[0.5]]]]
    )  # (1, 4, 2): 2 locations x 2 anchors, 2 classes
    boxes = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    outputs = DetectorOutputs(
        family="retinanet", features=[torch.zeros(1, 8, 1, 2)], strides=[8], image_size=(8, 16),
        anchors_per_location=2, anchors=boxes[0], cls_logits=cls, box_regression=torch.zeros(1, 4, 4), boxes=boxes,
    )
    scores, best_boxes = per_location(outputs)
    # location 0: class maxima (0.9, 0.5), best anchor 1; location 1: (0.75, 0.5), best anchor 0
    torch.testing.assert_close(scores, torch.tensor([[[0.9, 0.5], [0.75, 0.5]]]))
    assert best_boxes.tolist() == [[[4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0]]]

    fcos = DetectorOutputs(
        family="fcos", features=[torch.zeros(1, 8, 1, 1)], strides=[8], image_size=(8, 8), anchors_per_location=1,
        anchors=boxes[0, :1], cls_logits=torch.tensor([[[logit[0.75], logit[0.25]]]]), box_regression=torch.zeros(1, 1, 4),
        boxes=boxes[:, :1], centerness=torch.tensor([[0.0]]),
    )
    scores, _ = per_location(fcos)
    torch.testing.assert_close(scores, torch.tensor([[[math.sqrt(0.75 * 0.5), math.sqrt(0.25 * 0.5)]]]))


# ---------------------------------------------------------------------- post-processing
@pytest.mark.parametrize("family", list(TINY))
def test_postprocess_labels_are_class_indices(family):
    adapter = _detector(family).eval()
    favourite = 2
    with torch.no_grad():  # make class 2 win everywhere
        if family == "faster_rcnn":
            adapter.model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 8.0]))
        else:
            bias = adapter.model.head.classification_head.cls_logits.bias.view(-1, NUM_CLASSES)
            bias.copy_(torch.tensor([-8.0, -8.0, 4.0]))
        detections = adapter.predict(torch.rand(2, 3, 128, 128), score_threshold=0.3, max_detections=7)
    assert len(detections) == 2
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        assert 0 < det["boxes"].shape[0] <= 7
        assert det["labels"].dtype == torch.int64 and det["labels"].tolist() == [favourite] * len(det["labels"])
        assert (det["scores"] > 0.3).all() and (det["scores"][:-1] >= det["scores"][1:]).all()
        assert (det["boxes"][:, 0::2] >= 0).all() and (det["boxes"][:, 0::2] <= 128).all()


def test_faster_rcnn_postprocess_after_a_training_forward():
    adapter = _detector("faster_rcnn").train()
    with torch.no_grad():
        out = adapter(torch.rand(1, 3, 128, 128))
        detections = adapter.postprocess(out, score_threshold=0.0)
    assert "roi_class_logits" not in out.extra
    assert detections[0]["labels"].max() < NUM_CLASSES and detections[0]["labels"].min() >= 0


# ---------------------------------------------------------------------- bad input
def test_image_size_not_a_multiple_of_the_stride_is_a_clear_error():
    adapter = _detector("retinanet")
    with pytest.raises(ValueError, match=r"image size 100x128 \(HxW\) is not a multiple of 128.*e\.g\. to 128x128"):
        adapter(torch.rand(1, 3, 100, 128))
    with pytest.raises(ValueError, match=r"must be a \(B, 3, H, W\) tensor, got \(3, 128, 128\)"):
        adapter(torch.rand(3, 128, 128))
    with pytest.raises(ValueError, match="must be float in"):
        adapter(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))


def test_bad_targets_are_named():
    adapter = _detector("fcos")
    images, targets = _batch()
    flipped = [dict(targets[0], boxes=torch.tensor([[10.0, 20.0, 5.0, 80.0], [0.0, 0.0, 1.0, 1.0]])), targets[1]]
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]\[0\] = \[10.0, 20.0, 5.0, 80.0\] is not a box"):
        adapter(images, flipped)
    wrong_label = [targets[0], {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([3])}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\]\[0\] = 3 is outside 0..2"):
        adapter(images, wrong_label)
    with pytest.raises(ValueError, match="list of 2 dicts"):
        adapter(images, targets[:1])


# ---------------------------------------------------------------------- files
def test_save_load_round_trip_gives_equal_outputs(tmp_path):
    adapter = create_detector("fcos_tiny_fpn", 2, class_names=["tree", "car"], fpn_channels=48).eval()
    path = save_detector(adapter, tmp_path / "model.pt", extra={"map": torch.tensor(0.5), "data": tmp_path})
    loaded = load_detector(path)
    assert loaded.config == adapter.config and loaded.class_names == ["tree", "car"] and not loaded.training
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a, b = adapter(images), loaded(images)
    torch.testing.assert_close(a.cls_logits, b.cls_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=0)
    assert torch.load(path, weights_only=True)["extra"] == {"map": 0.5, "data": str(tmp_path)}


def test_load_a_training_checkpoint_with_a_prefix(tmp_path):
    adapter = _detector("retinanet").eval()
    state = {f"student.{k}": v for k, v in adapter.state_dict().items()}
    state["distill.adapt.weight"] = torch.zeros(4, 4)  # e.g. a distillation adaptation layer
    atomic_save(
        {"format": "detkd.checkpoint", "step": 10, "model": state, "detector_config": adapter.config},
        tmp_path / "checkpoint.pt",
    )
    with pytest.warns(UserWarning, match="under 'student.' and ignoring 1 other tensor"):
        loaded = load_detector(tmp_path / "checkpoint.pt")
    for key, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_mismatched_files_give_clear_errors(tmp_path):
    adapter = _detector("retinanet")
    path = save_detector(adapter, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["num_classes"] = 5  # the config no longer fits the weights
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(UnreadableWeightsError, match=r"edited\.pt.*damaged"):  # the content digest no longer fits
        load_detector(tmp_path / "edited.pt")
    payload = with_digest(payload)  # as if another tool had written a consistent but mismatched file
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(WeightsMismatchError) as err:
        load_detector(tmp_path / "edited.pt")
    text = str(err.value)
    assert "edited.pt" in text and "retinanet_tiny_fpn with 5 classes" in text
    assert "model.head.classification_head.cls_logits.weight: expected [45, 32, 3, 3], found [27, 32, 3, 3]" in text

    del payload["state_dict"]["model.head.regression_head.bbox_reg.bias"]
    payload["config"]["num_classes"] = NUM_CLASSES
    payload["state_dict"]["model.extra.weight"] = torch.zeros(1)
    torch.save(with_digest(payload), tmp_path / "partial.pt")
    with pytest.raises(WeightsMismatchError, match=r"(?s)missing keys \(1\): model.head.regression_head.bbox_reg.bias"
                       r".*unexpected keys \(1\): model.extra.weight"):
        load_detector(tmp_path / "partial.pt")

    torch.save({"conv1a.weight": torch.zeros(1)}, tmp_path / "keypoints.pt")
    with pytest.raises(WeightsMismatchError, match=r"expected a detkd detector file.*found a dict with keys conv1a.weight"):
        load_detector(tmp_path / "keypoints.pt")
    torch.save({"format": "detkd.checkpoint", "model": {"w": torch.zeros(1)}}, tmp_path / "kp_checkpoint.pt")
    with pytest.raises(WeightsMismatchError, match="without 'detector_config'"):
        load_detector(tmp_path / "kp_checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_detector(tmp_path / "nothing.pt")


def test_gflops_count_the_forward_pass():
    small, tiny = create_detector("retinanet_small_fpn", 3), create_detector("retinanet_tiny_fpn", 3)
    assert detector_gflops(small, 128, 128) > detector_gflops(tiny, 128, 128) > 0
    nano = create_detector("fcos_nano_fpn", 3)
    assert detector_gflops(create_detector("fcos_small_fpn", 3), 256, 256) > 4 * detector_gflops(nano, 256, 256)


def test_models_command_explains_every_option_of_a_named_detector():
    from click.testing import CliRunner

    from detkd.cli.main import main
    from detkd.models.detection.registry import OPTION_HELP, _REGISTRY

    assert {option for v in _REGISTRY.values() for option in v.defaults} <= set(OPTION_HELP)  # none unexplained
    result = CliRunner().invoke(main, ["detect", "models", "fcos_nano_fpn"])
    assert result.exit_code == 0, result.output
    assert "fcos_nano_fpn: fcos on nano + FPN P3-P7 (32 channels)" in result.output
    head_convs = next(line for line in result.output.splitlines() if line.strip().startswith("head_convs"))
    assert head_convs.split()[1] == "2" and OPTION_HELP["head_convs"] in head_convs
    unknown = CliRunner().invoke(main, ["detect", "models", "fcos_huge_fpn"])
    assert unknown.exit_code != 0 and "Unknown detector 'fcos_huge_fpn'" in unknown.output
