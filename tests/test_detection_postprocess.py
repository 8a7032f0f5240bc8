"""Post-processing of one-stage detectors: torchvision's rule, with a vectorised top-k and an early-stopping NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from detkd.models.detection import create_detector
from detkd.models.detection.postprocess import PREFIX_FACTOR, dense_detections, early_stopping_nms


def _crowded_boxes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Many jittered copies of a few objects: NMS keeps a small share, as on a busy photo."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(count // 8 + 1, 2, generator=g) * 200
    pick = torch.randint(0, centres.shape[0], (count,), generator=g)
    xy = centres[pick] + torch.randn(count, 2, generator=g) * 3
    size = 20 + torch.rand(count, 2, generator=g) * 10
    boxes = torch.cat([xy, xy + size], dim=1)
    return boxes, torch.rand(count, generator=g), torch.randint(0, 3, (count,), generator=g)


@pytest.mark.parametrize("count", [0, 1, 50, 399, 401, 3000])
@pytest.mark.parametrize("max_detections", [1, 10, 100])
def test_early_stopping_nms_is_torchvisions_nms_cut(count: int, max_detections: int) -> None:
    boxes, scores, labels = _crowded_boxes(count, seed=count + max_detections)
    expected = batched_nms(boxes, scores, labels, 0.5)[:max_detections]
    got = early_stopping_nms(boxes, scores, labels, 0.5, max_detections)
    assert torch.equal(got, expected)


def test_early_stopping_nms_grows_its_prefix_when_too_few_survive() -> None:
    # 1000 near-identical boxes of one class, then 150 far-apart ones with lower scores: the first
    # prefix (PREFIX_FACTOR * 100 = 400) keeps one box, so the prefix has to reach the separate boxes
    same = torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(1000, 1)
    apart = torch.stack([torch.tensor([x, 300.0, x + 5, 305.0]) for x in range(0, 1500, 10)])
    boxes = torch.cat([same, apart])
    scores = torch.cat([torch.linspace(1.0, 0.9, 1000), torch.linspace(0.8, 0.1, 150)])
    labels = torch.zeros(1150, dtype=torch.int64)
    assert 100 * PREFIX_FACTOR < 1000
    got = early_stopping_nms(boxes, scores, labels, 0.5, 100)
    assert got.tolist() == [0] + list(range(1000, 1099))


def test_dense_detections_by_hand() -> None:
    # two levels: level 0 has 3 anchors, level 1 has 2; K = 2 classes
    scores = torch.tensor([
        [0.90, 0.10],  # a0: class 0 best
        [0.80, 0.70],  # a1: overlaps a0 (class 0 suppressed by a0), class 1 kept
        [0.03, 0.04],  # a2: under the threshold
        [0.60, 0.00],  # a3 (level 1)
        [0.50, 0.00],  # a4 (level 1), the level's second
    ])
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 10.0, 11.0],  # IoU with a0 = 100 / 110 > 0.5
        [20.0, 20.0, 30.0, 30.0],
        [40.0, 40.0, 70.0, 70.0],  # clipped to the 64x60 image: x2 -> 60, y2 -> 64
        [0.0, 40.0, 5.0, 45.0],
    ])
    # one candidate per level: a0/class 0 (0.9) and a3/class 0 (0.6); a3's box is clipped
    out = dense_detections(scores, boxes, per_level=[3, 2], image_size=(64, 60), score_threshold=0.05,
                           nms_iou=0.5, max_detections=10, candidates_per_level=1)
    assert out["labels"].tolist() == [0, 0]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.6])
    assert out["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 64.0]]
    # two per level: level 0 adds a1/class 0 (0.8), which a0 suppresses (a1/class 1, 0.7, is only
    # the level's third); level 1 adds a4 (0.5), apart from a3
    out = dense_detections(scores, boxes, per_level=[3, 2], image_size=(64, 60), candidates_per_level=2,
                           max_detections=10)
    assert out["labels"].tolist() == [0, 0, 0]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.6, 0.5])
    # three per level: a1/class 1 enters and is kept (NMS is class-wise)
    out = dense_detections(scores, boxes, per_level=[3, 2], image_size=(64, 60), candidates_per_level=3,
                           max_detections=10)
    assert out["labels"].tolist() == [0, 1, 0, 0]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5])
    # the score threshold and max_detections
    out = dense_detections(scores, boxes, per_level=[3, 2], image_size=(64, 60), score_threshold=0.65,
                           candidates_per_level=3, max_detections=10)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7])
    out = dense_detections(scores, boxes, per_level=[3, 2], image_size=(64, 60), candidates_per_level=3,
                           max_detections=2)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7])


def test_dense_detections_empty() -> None:
    out = dense_detections(torch.zeros(5, 2), torch.zeros(5, 4), [3, 2], (64, 64))
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)


@pytest.mark.parametrize("variant", ["fcos_tiny_fpn", "retinanet_tiny_fpn"])
def test_adapter_postprocess_matches_torchvision(variant: str) -> None:
    torch.manual_seed(0)
    model = create_detector(variant, num_classes=3).eval()
    # a busy output: push the class logits up so that thousands of scores pass the threshold
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 128, 256))
    outputs.cls_logits = torch.randn_like(outputs.cls_logits) * 2
    if outputs.centerness is not None:
        outputs.centerness = torch.randn_like(outputs.centerness)
    for max_detections in (5, 100):
        expected = model.postprocess_reference(outputs, max_detections=max_detections)
        got = model.postprocess(outputs, max_detections=max_detections)
        for e, d in zip(expected, got):
            assert e["scores"].shape[0] > 0
            assert torch.equal(e["labels"], d["labels"])
            np.testing.assert_allclose(d["scores"].numpy(), e["scores"].numpy(), rtol=1e-6)
            np.testing.assert_allclose(d["boxes"].numpy(), e["boxes"].numpy(), atol=1e-4)


def test_exported_nms_stops_at_max_detections(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from detkd.export.onnx import ort_session, trace_to_onnx
    from detkd.export.detection import detection_graph

    torch.manual_seed(0)
    model = create_detector("fcos_tiny_fpn", num_classes=2).eval()
    graph = detection_graph(model, max_detections=7)
    images = torch.rand(1, 3, 128, 128)
    path = tmp_path / "fcos.onnx"
    trace_to_onnx(graph, images, path, dynamic=False, opset=17)
    proto = onnx.load(str(path))
    constants = {node.output[0]: node for node in proto.graph.node if node.op_type == "Constant"}
    nms = [node for node in proto.graph.node if node.op_type == "NonMaxSuppression"]
    assert len(nms) == 1
    cap = onnx.numpy_helper.to_array(constants[nms[0].input[2]].attribute[0].t)
    assert cap.tolist() == [7]
    expected = graph.run_torch(images)
    got = ort_session(path).run(list(graph.output_names), {graph.input_name: images.numpy()})
    assert int(got[3][0]) == int(expected[3][0])
    np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
