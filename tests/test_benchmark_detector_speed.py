"""The detector speed scripts: the detection check by hand, and each end to end on two tiny detectors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from conftest import load_benchmark_script
from detkd.models.detection import create_detector, load_detector, save_detector

inference_speed = load_benchmark_script("detector_inference_speed")
pair_speed = load_benchmark_script("detector_pair_speed")
channels_last = load_benchmark_script("channels_last_training")
postprocess_speed = load_benchmark_script("detector_postprocess_speed")


def _detections(boxes, scores, labels):
    return (torch.tensor([boxes], dtype=torch.float32), torch.tensor([scores]), torch.tensor([labels]),
            torch.tensor([sum(label >= 0 for label in labels)]))


def test_same_detections_matches_boxes_and_explains_near_ties():
    """Two detections, a third way finds them in the other order (same scores: a near-tie is no
    concern, order is not compared). A fourth has one box 0.5 px wider (IoU 100/105 < 0.99: unmatched)
    and scored 0.7 instead of 0.6: neither lone detection is within 1e-4 of a decision (threshold,
    last kept score, a same-label score): two unexplained. Had both kept 0.6, the two lone boxes
    could be an NMS swap: near-ties."""
    from detkd.export.detection import DetectionPostprocess

    post = DetectionPostprocess(nn.Identity(), score_threshold=0.05, max_detections=3)
    image = torch.zeros(1, 3, 100, 100)
    first = _detections([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 0, 0]], [0.9, 0.6, 0.0], [1, 0, -1])
    swapped = _detections([[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 0, 0]], [0.6, 0.9, 0.0], [0, 1, -1])
    assert inference_speed.same_detections([first, swapped], image, post) == \
        "100% same detections; scores within 0.0e+00, boxes within 0.0e+00 of the image side"
    wider = _detections([[0, 0, 10, 10], [50, 50, 60.5, 60], [0, 0, 0, 0]], [0.9, 0.7, 0.0], [1, 0, -1])
    # matched 1 of 3 distinct detections (two unmatched: the reference's and the other way's)
    assert inference_speed.same_detections([first, wider], image, post).startswith(
        "33% same detections (0 near-tie(s) within 0.0001, 2 unexplained)")
    tie = _detections([[0, 0, 10, 10], [50, 50, 60.5, 60], [0, 0, 0, 0]], [0.9, 0.6, 0.0], [1, 0, -1])
    assert inference_speed.same_detections([first, tie], image, post).startswith(
        "33% same detections (2 near-tie(s) within 0.0001, 0 unexplained)")


@pytest.fixture(scope="module")
def two_detectors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detectors")
    torch.manual_seed(0)
    return [f"{name}={save_detector(create_detector(variant, 2).eval(), folder / f'{name}.pt')}"
            for name, variant in (("teacher", "fcos_small_fpn"), ("student", "fcos_nano_fpn"))]


def test_inference_speed_script_writes_one_row_per_model(two_detectors, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["detector_inference_speed.py", *two_detectors, "--sizes", "128",
                                      "--repeats", "1", "--out", str(tmp_path)])
    inference_speed.main()
    text = (tmp_path / "detector_inference_speed.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| teacher", "| student"))]
    # untrained detectors score many boxes alike: near-ties, but nothing unexplained
    assert len(rows) == 2 and all("same detections" in row and "unexplained" not in row.replace(" 0 unexplained", "")
                                  for row in rows)
    assert "| 1.00x | 1.00x | 1.00x |" in rows[0]  # the reference's pair ratios
    payload = json.loads((tmp_path / "detector_inference_speed.json").read_text())
    assert set(payload["sizes"]["128"]["median_ms"]) == {f"{n}|{w}" for n in ("teacher", "student")
                                                          for w in inference_speed.WAYS}


def test_pair_speed_script_benches_every_size(two_detectors, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["detector_pair_speed.py", *two_detectors, "--sizes", "128",
                                      "--repeats", "1", "--out", str(tmp_path)])
    pair_speed.main()
    text = (tmp_path / "detector_pair_speed.md").read_text()
    assert "## 128x128" in text and "| teacher |" in text and "| student |" in text
    payload = json.loads((tmp_path / "detector_pair_speed.json").read_text())
    rows = payload["sizes"]["128"]["rows"]
    assert [r["name"] for r in rows] == ["teacher", "student"]


def test_pair_speed_untrained_candidates_take_the_teachers_classes_and_options(two_detectors, tmp_path):
    assert pair_speed.untrained_options("fcos_nano_fpn:head_convs=1, fpn_channels=16") == \
        ("fcos_nano_fpn", {"head_convs": 1, "fpn_channels": 16})
    assert pair_speed.untrained_options("fcos_nano_fpn") == ("fcos_nano_fpn", {})
    assert pair_speed.untrained_options("fcos_nano_fpn:tiny_widths=[8, 8,16,16,32],head_convs=1") == \
        ("fcos_nano_fpn", {"tiny_widths": [8, 8, 16, 16, 32], "head_convs": 1})  # a list keeps its commas
    specs = pair_speed.materialise([two_detectors[0], "light=untrained:fcos_nano_fpn:head_convs=1"], tmp_path)
    assert specs[0] == two_detectors[0] and specs[1].startswith("light=")
    candidate = load_detector(specs[1].partition("=")[2])
    assert candidate.num_classes == 2 and candidate.config["overrides"] == {"head_convs": 1}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        pair_speed.untrained_options("fcos_nano_fpn:head_convs")
    with pytest.raises(SystemExit, match="the first model is the teacher"):
        pair_speed.materialise(["t=untrained:fcos_nano_fpn"], tmp_path)


def test_postprocess_speed_script_times_both_ways_and_checks_they_agree(two_detectors, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["detector_postprocess_speed.py", *two_detectors, "--sizes", "128",
                                      "--repeats", "1", "--out", str(tmp_path)])
    postprocess_speed.main()
    text = (tmp_path / "detector_postprocess_speed.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| teacher", "| student"))]
    assert len(rows) == 2 and all(row.endswith("| yes |") for row in rows)
    assert "| 1.00x | 1.00x | yes |" in rows[0]  # the reference's own pair ratios
    payload = json.loads((tmp_path / "detector_postprocess_speed.json").read_text())
    row = payload["sizes"]["128"][1]
    assert row["model"] == "student" and row["network"] > 0 and row["torchvision"] > 0 and row["detkd"] > 0


def test_postprocess_speed_same_detections_by_hand():
    one = [{"labels": torch.tensor([1, 0]), "scores": torch.tensor([0.9, 0.5]),
            "boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])}]
    assert postprocess_speed.same_detections(one, [dict(one[0])])
    moved = [{**one[0], "boxes": one[0]["boxes"] + torch.tensor([0.0, 0, 0, 0.01])}]
    assert not postprocess_speed.same_detections(one, moved)
    fewer = [{key: value[:1] for key, value in one[0].items()}]
    assert not postprocess_speed.same_detections(one, fewer)


@pytest.mark.parametrize("build, name", [("detector_step", "fcos_nano_fpn"), ("keypoint_step", "fast-s:head_channels=16")])
def test_both_layouts_train_the_same_model_on_the_same_batch(build, name):
    """The timed steps differ in memory layout only: same weights, batch and losses, step after step."""
    plain = getattr(channels_last, build)(name, torch.contiguous_format)
    nhwc = getattr(channels_last, build)(name, torch.channels_last)
    for _ in range(2):
        assert nhwc() == pytest.approx(plain(), rel=1e-4)
