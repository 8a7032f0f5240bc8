"""ONNX export of key-point models: the in-graph post-processing, the parity check, the files written."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from detkd.cli.main import main
from detkd.export import onnx as onnx_export
from detkd.export.keypoints import (
    KeypointPostprocess,
    compare_postprocessed,
    sample_descriptors_traceable,
    topk_keypoints,
)
from detkd.export.onnx import ParityError, export_onnx, ort_session, parity_failures, photo_batch, read_metadata
from detkd.models.pretrained import default_keypoint_teacher_path
from detkd.models.keypoint_ops import sample_descriptors
from detkd.models.superpoint import create_model
from detkd.models.weights import load_keypoint_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


H, W = 64, 80


@pytest.fixture(scope="module")
def teacher():
    return load_keypoint_model(default_keypoint_teacher_path()).eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny", batch_norm=True).eval()


# ---------------------------------------------------------------------- post-processing by hand
def test_topk_keypoints_hand_case():
    heatmap = torch.zeros(1, 12, 12)
    heatmap[0, 2, 3] = 0.9  # (x=3, y=2): a peak
    heatmap[0, 2, 4] = 0.5  # its neighbour: suppressed by NMS (radius 1)
    heatmap[0, 7, 8] = 0.6  # (x=8, y=7): a peak
    heatmap[0, 5, 0] = 0.8  # on the left edge: removed by the 1-pixel border
    heatmap[0, 9, 6] = 0.01  # below the threshold
    keypoints, scores, valid = topk_keypoints(heatmap, nms_radius=1, threshold=0.05, border=1, k=4)
    assert keypoints[0].tolist() == [[3.0, 2.0], [8.0, 7.0], [0.0, 0.0], [0.0, 0.0]]
    assert torch.allclose(scores[0], torch.tensor([0.9, 0.6, 0.0, 0.0]))
    assert valid[0].tolist() == [True, True, False, False]


def test_topk_keypoints_pads_when_k_exceeds_pixels():
    heatmap = torch.zeros(1, 4, 4)
    heatmap[0, 1, 2] = 0.7
    keypoints, scores, valid = topk_keypoints(heatmap, nms_radius=0, threshold=0.1, border=0, k=20)
    assert keypoints.shape == (1, 20, 2) and valid.sum() == 1 and keypoints[0, 0].tolist() == [2.0, 1.0]


def test_traceable_descriptor_sampling_equals_reference():
    torch.manual_seed(1)
    descriptors = torch.nn.functional.normalize(torch.randn(2, 16, 6, 9), dim=1)
    keypoints = torch.rand(2, 30, 2) * torch.tensor([71.0, 47.0])
    expected = sample_descriptors(keypoints, descriptors)
    assert torch.allclose(sample_descriptors_traceable(keypoints, descriptors), expected, atol=1e-6)
    # A key point on a cell centre takes that cell's vector: pixel (8*2 + 3.5, 8*1 + 3.5) -> cell (1, 2).
    centre = torch.tensor([[[19.5, 11.5]]]).expand(2, 1, 2)
    assert torch.allclose(sample_descriptors_traceable(centre, descriptors)[:, 0], descriptors[:, :, 1, 2], atol=1e-6)


def test_postprocess_module_gives_extract_keypoints(teacher):
    image = photo_batch(["coffee"], 1, H, W)
    keypoints, scores, descriptors, count = KeypointPostprocess(teacher).eval()(image)
    reference = teacher.extract(image)
    n = int(count[0])
    assert n == len(reference["keypoints"][0]) > 5
    assert torch.equal(keypoints[0, :n], reference["keypoints"][0])
    assert torch.allclose(scores[0, :n], reference["scores"][0])
    assert torch.allclose(descriptors[0, :n], reference["descriptors"][0], atol=1e-6)
    assert torch.all(descriptors[0, n:] == 0) and torch.all(scores[0, n:] == 0)


# ---------------------------------------------------------------------- parity verdicts by hand
def _fake_post(heatmap: np.ndarray, k: int = 4, subpixel_radius: int = 0):
    model = lambda batch: {"heatmap": torch.from_numpy(heatmap)[None]}  # noqa: E731
    return SimpleNamespace(model=model, threshold=0.015, nms_radius=1, max_keypoints=k,
                           subpixel_radius=subpixel_radius, input_scale=1, heatmap_nms_radius=1,
                           heatmap_input=lambda batch: batch)


def _outputs(points, scores, k=4, dim=2):
    keypoints = np.zeros((1, k, 2), np.float32)
    values = np.zeros((1, k), np.float32)
    descriptors = np.zeros((1, k, dim), np.float32)
    for i, ((x, y), s) in enumerate(zip(points, scores)):
        keypoints[0, i] = (x, y)
        values[0, i] = s
        descriptors[0, i] = (1.0, 0.0)
    return [keypoints, values, descriptors, np.array([len(points)])]


def test_parity_counts_a_point_at_the_threshold_as_a_near_tie():
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[2, 2] = 0.5
    heatmap[5, 5] = 0.015 + 2e-6  # 2e-6 above the threshold: rounding may drop it
    reference = _outputs([(2, 2), (5, 5)], [0.5, 0.015002])
    other = _outputs([(2, 2)], [0.5])
    parity = compare_postprocessed(reference, other, torch.zeros(1), 1e-4, post=_fake_post(heatmap))
    assert parity.agreement == pytest.approx(0.5)  # 1 common of 2 distinct points
    assert (parity.near_ties, parity.unexplained) == (1, 0)
    assert parity_failures(parity, 1e-4) == []


def test_parity_matches_refined_points_by_the_pixel_they_were_selected_at():
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[2, 2], heatmap[2, 3] = 0.5, 0.45  # refined x = 2 + 0.45 / 0.95 = 2.474
    heatmap[5, 5], heatmap[5, 6] = 0.3, 0.3 - 1e-6  # refined x = 5.5 - 2e-6: rounds to 5 or 6
    reference = _outputs([(2.474, 2), (5.499998, 5)], [0.5, 0.3])
    other = _outputs([(2.474 + 3e-6, 2), (5.500001, 5)], [0.5, 0.3])  # the second rounds to pixel 6
    parity = compare_postprocessed(reference, other, torch.zeros(1), 1e-4,
                                   post=_fake_post(heatmap, subpixel_radius=1))
    assert parity.agreement == 1.0 and (parity.near_ties, parity.unexplained) == (0, 0)
    # positions relative to the largest coordinate (5.499998), as box coordinates are
    assert parity.errors["keypoints"] == pytest.approx(3e-6 / 5.499998, rel=0.1)
    assert parity.error_kinds["keypoints"] == "rel"


def test_sub_pixel_rounding_far_from_the_origin_passes_and_a_moved_point_fails():
    """1.8e-4 px at x = 600 (what the shipped teacher's export showed at 480x640 on one thread) is
    3e-7 of the coordinate: rounding, not a failed export; a point 0.4 px off still fails."""
    heatmap = np.zeros((8, 640), np.float32)
    heatmap[2, 600] = 0.5
    post = _fake_post(heatmap)
    reference = _outputs([(600.0, 2.0)], [0.5])
    rounded = compare_postprocessed(reference, _outputs([(600.0 + 1.8e-4, 2.0)], [0.5]), torch.zeros(1), 1e-4, post=post)
    assert rounded.errors["keypoints"] == pytest.approx(1.8e-4 / 600, rel=0.05)  # float32 steps of 6e-5 px at 600
    assert not parity_failures(rounded, 1e-4)
    moved = compare_postprocessed(reference, _outputs([(600.4, 2.0)], [0.5]), torch.zeros(1), 1e-4, post=post)
    assert moved.errors["keypoints"] == pytest.approx(0.4 / 600, rel=1e-2)
    assert "keypoints" in parity_failures(moved, 1e-4)[0]


def test_parity_fails_on_a_point_that_no_tie_explains():
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[2, 2] = 0.5
    heatmap[5, 5] = 0.3  # a clear peak that one runtime lost
    reference = _outputs([(2, 2), (5, 5)], [0.5, 0.3])
    other = _outputs([(2, 2)], [0.5 + 3e-4])  # and a score 3e-4 off
    parity = compare_postprocessed(reference, other, torch.zeros(1), 1e-4, post=_fake_post(heatmap))
    assert (parity.near_ties, parity.unexplained) == (0, 1)
    assert parity.errors["scores"] == pytest.approx(3e-4, rel=1e-3)
    failures = parity_failures(parity, 1e-4)
    assert len(failures) == 2 and "scores" in failures[0] and "1 detection(s)" in failures[1]


def test_detection_parity_matches_boxes_and_explains_score_ties():
    from detkd.export.detection import compare_detections

    post = SimpleNamespace(score_threshold=0.05, max_detections=3)

    def dets(rows):  # rows of (x1, y1, x2, y2, score, label), padded to 3
        boxes, scores, labels = np.zeros((1, 3, 4), np.float32), np.zeros((1, 3), np.float32), -np.ones((1, 3), np.int64)
        for i, (*box, score, label) in enumerate(rows):
            boxes[0, i], scores[0, i], labels[0, i] = box, score, label
        return [boxes, scores, labels, np.array([len(rows)])]

    reference = dets([(0, 0, 10, 10, 0.9, 1), (20, 20, 40, 40, 0.7, 2), (50, 50, 60, 60, 0.0500004, 0)])
    # Same first box 0.5 px wider on a 100-px image; the second kept; the third lost at the threshold.
    other = dets([(0, 0, 10.5, 10, 0.9003, 1), (20, 20, 40, 40, 0.7, 2)])
    parity = compare_detections(reference, other, torch.zeros(1, 3, 100, 100), 1e-4, post=post)
    # IoU of the first pair is 10*10 / (10.5*10) = 0.952 < 0.99: not the same detection.
    assert parity.agreement == pytest.approx(1 / 4)  # 1 matched of 4 distinct detections
    assert (parity.near_ties, parity.unexplained) == (1, 2)  # the threshold one explained, the box pair not
    close = dets([(0, 0, 10.05, 10, 0.90005, 1), (20, 20, 40, 40, 0.7, 2)])  # IoU 0.995: matched
    parity = compare_detections(reference, close, torch.zeros(1, 3, 100, 100), 1e-4, post=post)
    assert parity.agreement == pytest.approx(2 / 3) and (parity.near_ties, parity.unexplained) == (1, 0)
    assert parity.errors["boxes"] == pytest.approx(0.05 / 100, rel=1e-3)  # relative to the image size
    assert parity.errors["scores"] == pytest.approx(5e-5, rel=1e-2)


# ---------------------------------------------------------------------- exports
def test_export_postprocessed_checks_parity_and_describes_itself(teacher, tmp_path, capsys):
    result = export_onnx(teacher, tmp_path / "teacher.onnx", H, W, source="shipped teacher")
    printed = capsys.readouterr().out
    assert "tolerance 1e-04" in printed and "-> OK" in printed
    sidecar = json.loads((tmp_path / "teacher.json").read_text())
    assert sidecar == read_metadata(tmp_path / "teacher.onnx")  # the same description inside the file
    assert sidecar["input"]["shape"] == [1, 1, H, W] and sidecar["input"]["range"] == [0.0, 1.0]
    assert [o["name"] for o in sidecar["outputs"]] == ["keypoints", "scores", "descriptors", "num_keypoints"]
    assert sidecar["model"]["max_keypoints"] == 1024 and sidecar["model"]["channels"] == [64, 64, 128, 128]
    assert sidecar["parity"]["errors"]["descriptors"] < 1e-4 and sidecar["parity"]["errors"]["scores"] < 1e-4
    assert sidecar["parity"]["unexplained"] == 0 and sidecar["parity"]["agreement"] > 0.9
    # Static shapes: K entries whatever the image.
    session = ort_session(result.path)
    keypoints, scores, descriptors, count = session.run(None, {"image": np.zeros((1, 1, H, W), np.float32)})
    assert keypoints.shape == (1, 1024, 2) and descriptors.shape == (1, 1024, 256) and 0 <= count[0] <= 1024


def test_export_at_input_scale_2_upsamples_inside_the_graph(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", batch_norm=True, input_scale=2).eval()
    result = export_onnx(model, tmp_path / "x2.onnx", H, W, max_keypoints=64, verbose=False)
    assert result.metadata["model"]["input_scale"] == 2
    assert result.metadata["parity"]["unexplained"] == 0 and result.metadata["parity"]["agreement"] > 0.9
    batch = photo_batch(["coffee"], 1, H, W)
    keypoints, _, descriptors, count = ort_session(result.path).run(None, {"image": batch.numpy()})
    reference = model.extract(batch, max_keypoints=64)
    n = int(count[0])
    assert n == len(reference["keypoints"][0]) > 5
    np.testing.assert_allclose(keypoints[0, :n], reference["keypoints"][0].numpy(), atol=1e-3)
    assert keypoints[0, :n, 0].max() < W and keypoints[0, :n, 1].max() < H  # input pixels, not 2x ones


def test_export_at_input_scale_1_5_needs_sides_of_16_pixels(tmp_path):
    """1.5 = 3/2: the graph takes sides that are multiples of 16, so the upsampled image is whole cells."""
    torch.manual_seed(0)
    model = create_model("tiny", batch_norm=True, input_scale=1.5).eval()
    with pytest.raises(ValueError, match="multiples of 16 pixels.*--width 96"):
        export_onnx(model, tmp_path / "bad.onnx", 64, 88, max_keypoints=64, verbose=False)
    result = export_onnx(model, tmp_path / "x1.5.onnx", 64, 96, max_keypoints=64, verbose=False)
    assert result.metadata["input"]["size"].startswith("H, W multiples of 16")
    assert result.metadata["parity"]["unexplained"] == 0 and result.metadata["parity"]["agreement"] > 0.9
    batch = photo_batch(["coffee"], 1, 64, 96)
    keypoints, _, _, count = ort_session(result.path).run(None, {"image": batch.numpy()})
    reference = model.extract(batch, max_keypoints=64)
    n = int(count[0])
    assert n == len(reference["keypoints"][0]) > 5
    # The same points (a random network scores many alike, so the order of ties may differ).
    distances = np.abs(keypoints[0, :n, None] - reference["keypoints"][0].numpy()[None]).max(-1)
    assert distances.min(1).max() < 1e-3 and distances.min(0).max() < 1e-3


def test_dynamic_export_at_input_scale_1_5_runs_at_another_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", batch_norm=True, input_scale=1.5).eval()
    result = export_onnx(model, tmp_path / "x1.5.onnx", H, W, dynamic=True, max_keypoints=50, verbose=False)
    batch = photo_batch(["coffee", "rocket"], 1, 96, 128)  # multiples of 16, not the export size
    got = ort_session(result.path).run(None, {"image": batch.numpy()})
    post = KeypointPostprocess(model, 50)
    with torch.no_grad():
        expected = post(batch)
    parity = compare_postprocessed([e.numpy() for e in expected], got, batch, 1e-4, post=post)
    assert parity.unexplained == 0 and parity.errors["keypoints"] < 1e-3
    assert got[0][..., 0].max() < 128 and got[0][..., 1].max() < 96  # input pixels


def test_dynamic_export_runs_at_another_size_and_batch(tiny, tmp_path):
    result = export_onnx(tiny, tmp_path / "tiny.onnx", H, W, dynamic=True, max_keypoints=50, verbose=False)
    assert result.metadata["input"]["shape"] == ["batch", 1, "height", "width"]
    batch = photo_batch(["coffee", "rocket", "camera"], 1, 96, 128)
    got = ort_session(result.path).run(None, {"image": batch.numpy()})
    with torch.no_grad():
        expected = KeypointPostprocess(tiny, 50)(batch)
    assert got[0].shape == (3, 50, 2)
    parity = compare_postprocessed([e.numpy() for e in expected], got, batch, 1e-4,
                                   post=KeypointPostprocess(tiny, 50))
    assert parity.unexplained == 0 and parity.errors["descriptors"] < 1e-4


def test_raw_heads_export_gives_dense_outputs(tiny, tmp_path):
    result = export_onnx(tiny, tmp_path / "raw.onnx", H, W, raw_heads=True, verbose=False)
    assert set(result.parity.errors) == {"logits", "heatmap", "descriptors"}
    assert all(value < 1e-4 for value in result.parity.errors.values())
    logits, heatmap, descriptors = ort_session(result.path).run(None, {"image": photo_batch(["coffee"], 1, H, W).numpy()})
    assert logits.shape == (1, 65, H // 8, W // 8) and heatmap.shape == (1, H, W)
    assert descriptors.shape == (1, 256, H // 8, W // 8)
    assert np.allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)


def test_failed_parity_is_an_error_and_leaves_no_valid_file(tiny, tmp_path, monkeypatch):
    real_trace = onnx_export.trace_to_onnx

    def trace_a_different_model(graph, example, path, **kwargs):  # what a broken exporter would do
        broken = create_model("tiny", batch_norm=True).eval()
        real_trace(onnx_export.graph_for(broken), example, path, **kwargs)

    monkeypatch.setattr(onnx_export, "trace_to_onnx", trace_a_different_model)
    with pytest.raises(ParityError, match="does not match PyTorch") as err:
        export_onnx(tiny, tmp_path / "bad.onnx", H, W, verbose=False)
    assert "bad.failed.onnx" in str(err.value)
    assert (tmp_path / "bad.failed.onnx").exists()
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.json").exists()


def test_detector_export_refuses_dynamic_and_odd_sizes(tmp_path):
    from detkd.export.sources import load_model_source

    source = load_model_source("retinanet_tiny_fpn:3")
    assert source.task == "detection" and source.module.num_classes == 3
    with pytest.raises(ValueError, match="multiples of 128 .* got height 480. Use e.g. --height 512"):
        export_onnx(source.module, tmp_path / "d.onnx", 480, 640)
    with pytest.raises(ValueError, match="fixed size .* drop --dynamic"):
        export_onnx(source.module, tmp_path / "d.onnx", 128, 128, dynamic=True)


def test_export_rejects_sizes_the_network_cannot_take(tiny, tmp_path):
    with pytest.raises(ValueError, match="multiples of 8 .* got height 60. Use e.g. --height 64"):
        export_onnx(tiny, tmp_path / "x.onnx", 60, W)
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(tiny, tmp_path / "x.pt", H, W)


def test_cli_export_writes_files_and_reports_bad_input(tmp_path):
    runner = CliRunner()
    out = tmp_path / "tiny.onnx"
    result = runner.invoke(main, ["export", "tiny", "--height", "64", "--width", "80", "--out", str(out),
                                  "--max-keypoints", "100"])
    assert result.exit_code == 0, result.output
    assert "-> OK" in result.output and out.exists() and out.with_suffix(".json").exists()
    assert read_metadata(out)["model"]["max_keypoints"] == 100
    bad = runner.invoke(main, ["export", "tiny", "--height", "63", "--width", "80", "--out", str(out)])
    assert bad.exit_code == 2 and "error: " in bad.output and "--height 64" in bad.output
    missing = runner.invoke(main, ["export", str(tmp_path / "nope.pt"), "--height", "64", "--width", "80"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_export_command_input_scale_sets_the_graphs_scale(tmp_path):
    """``detkd export --input-scale 2``: the graph upsamples as the model saved at 2 does; refused for detectors."""
    from detkd.models.weights import save_keypoint_model

    torch.manual_seed(0)
    path = save_keypoint_model(create_model("tiny", batch_norm=True).eval(), tmp_path / "student.pt")
    out = tmp_path / "x2.onnx"
    result = CliRunner().invoke(main, ["export", str(path), "--height", str(H), "--width", str(W),
                                       "--input-scale", "2", "--max-keypoints", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["model"]["input_scale"] == 2
    refused = CliRunner().invoke(main, ["export", "fcos_nano_fpn", "--height", "128", "--width", "128",
                                        "--input-scale", "2", "--out", str(tmp_path / "d.onnx")])
    assert refused.exit_code != 0 and "--input-scale applies to key-point models" in refused.output
