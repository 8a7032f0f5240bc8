"""Dense scenes: detections per image beyond COCO's 100, whole images predicted in overlapping tiles, large unlabelled images.

Every expected number is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import detkd.evaluation.detection as detection_eval
from detkd.cli.main import main
from detkd.config import ConfigError, merge_config
from detkd.data.detection import DetectionRecord, DetectionSet, iter_eval_batches
from detkd.data.images import DataWarning
from detkd.evaluation.detection import (
    DetectionMetrics,
    evaluate_detections,
    format_detection_table,
    parse_max_detections,
    resolve_max_detections,
)
from detkd.models.detection import create_detector, save_detector
from detkd.tasks.detection import DEFAULT_DISTILL_CONFIG, DEFAULT_TRAIN_CONFIG, unlabeled_stream
from detkd.tasks.detection_predict import (
    check_eval_config,
    cut_by_tile_border,
    merge_tile_detections,
    overlap_pixels,
    predict_set_tiled,
    predict_tiled,
    tile_windows,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid_record(count: int, columns: int = 15, step: int = 20, side: int = 10) -> DetectionRecord:
    """``count`` disjoint ``side`` px boxes on a grid of ``step`` px cells, in memory (class 0)."""
    boxes = [[(k % columns) * step, (k // columns) * step, (k % columns) * step + side, (k // columns) * step + side]
             for k in range(count)]
    rows = (count + columns - 1) // columns
    image = np.zeros((max(rows, 1) * step, columns * step, 3), np.uint8)
    return DetectionRecord(path=None, width=columns * step, height=max(rows, 1) * step, boxes=boxes,
                           labels=[0] * count, image=image, image_id="grid")


# ------------------------------------------------------------------------------- max detections
def test_auto_max_detections_is_at_least_100_and_1_5x_the_most_crowded_image():
    def auto(*counts: int) -> int:
        return resolve_max_detections("auto", [grid_record(c) for c in counts]).value

    assert auto(0) == 100  # nothing to see: COCO's 100
    assert auto(66) == 100  # 1.5 x 66 = 99 < 100
    assert auto(67) == 101  # 1.5 x 67 = 100.5 -> 101
    assert auto(3, 279, 10) == 419  # the tree photo: 1.5 x 279 = 418.5 -> 419
    limit = resolve_max_detections(None, [grid_record(279)])
    assert (limit.value, limit.auto, limit.most_boxes) == (419, True, 279)
    assert "419" in limit.describe() and "279" in limit.describe()
    set_limit = resolve_max_detections(50, [grid_record(279)])  # a set number is used as it is
    assert (set_limit.value, set_limit.auto) == (50, False) and "(set)" in set_limit.describe()
    assert parse_max_detections("AUTO") == "auto" and parse_max_detections("7") == 7
    for bad in (0, -3, "0", "many", 2.5, True):
        with pytest.raises(ValueError, match="auto' or a positive integer"):
            parse_max_detections(bad)
    with pytest.raises(ConfigError, match="eval.max_detections"):
        check_eval_config({"max_detections": "lots"})
    assert DEFAULT_TRAIN_CONFIG["eval"]["max_detections"] == "auto"
    assert DEFAULT_DISTILL_CONFIG["eval"]["max_detections"] == "auto"


def test_coco_scores_with_the_same_max_dets_that_was_resolved(monkeypatch):
    record = grid_record(150)  # 150 objects, found perfectly, scores 1.0 > 0.99 > ...
    prediction = {"boxes": record.boxes.copy(), "scores": np.linspace(1.0, 0.5, 150), "labels": np.zeros(150, np.int64)}
    seen: list[list[int]] = []

    class SpyCOCOeval(detection_eval.COCOeval):
        def accumulate(self, p=None) -> None:  # noqa: ANN001 - pycocotools' signature
            seen.append(list(self.params.maxDets))
            super().accumulate(p)

    monkeypatch.setattr(detection_eval, "COCOeval", SpyCOCOeval)

    capped = evaluate_detections([prediction], [record], ["tree"], max_detections=100)
    # the 100 best are all hits: recall 100/150 at every IoU; precision 1 up to that recall, then nothing:
    # recall thresholds 0.00 .. 0.66 (67 of COCO's 101) have precision 1 -> AP = 67/101
    assert capped.ar100 == pytest.approx(100 / 150)
    assert capped.map == pytest.approx(67 / 101)
    assert capped.max_detections == 100 and seen[-1] == [1, 10, 100]

    limit = resolve_max_detections("auto", [record])  # 1.5 x 150 = 225
    full = evaluate_detections([prediction], [record], ["tree"], max_detections=limit.value)
    assert limit.value == 225 and seen[-1] == [1, 10, 225]
    # every AP and AR at the resolved 225 (pycocotools' own summarize would give its headline AP at 100: -1)
    assert full.ar100 == pytest.approx(1.0) and full.map == pytest.approx(1.0) and full.max_detections == 225
    assert full.ap50 == pytest.approx(1.0) and full.ap75 == pytest.approx(1.0) and full.ap_small == pytest.approx(1.0)
    assert full.as_dict()["max_detections"] == 225
    with pytest.raises(ValueError, match="resolve 'auto'"):
        evaluate_detections([prediction], [record], ["tree"], max_detections="auto")  # type: ignore[arg-type]

    # the table names the recall after the limit that was used
    assert "| AR225 |" in format_detection_table({"m": full})
    assert "| AR100 |" in format_detection_table({"m": capped})
    plain = DetectionMetrics(map=0.5, ap50=0.5, ap75=0.5, ap_small=0.5, ap_medium=0.5, ap_large=0.5, ar100=0.5)
    assert "| AR419 |" in format_detection_table({"m": plain.summary()}, titles={"ar100": "AR419"})


# ------------------------------------------------------------------------------- tiled prediction
class BrightBlobDetector:
    """Stub detector: one box around each 4-connected blob of white pixels (all channels > 0.9) of its input.

    It sees exactly what a tile shows, so an object cut by a tile border comes back cut.
    """

    def __init__(self) -> None:
        self.inputs: list[tuple[int, ...]] = []

    def predict(self, images: torch.Tensor, score_threshold: float, nms_iou: float,
                max_detections: int) -> list[dict[str, torch.Tensor]]:
        self.inputs.append(tuple(images.shape))
        out = []
        for image in images:
            mask = (image.min(0).values > 0.9).numpy().astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:count]]
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.full((len(boxes),), 0.9), "labels": torch.zeros(len(boxes), dtype=torch.int64)})
        return out


#: Objects of the seam test, xyxy pixels of a 280 x 160 image.
SEAM_OBJECT = (140, 50, 190, 90)  # straddles x = 160, where the left tile ends
OVERLAP_OBJECT = (125, 100, 155, 130)  # inside the overlap x 120..160: whole in both tiles
LEFT_OBJECT = (20, 20, 60, 60)  # in the left tile only


def seam_image() -> torch.Tensor:
    image = torch.full((3, 160, 280), 0.2)
    for x0, y0, x1, y1 in (SEAM_OBJECT, OVERLAP_OBJECT, LEFT_OBJECT):
        image[:, y0:y1, x0:x1] = 1.0
    return image


def test_tile_windows_and_overlap_by_hand():
    # width 280, tile 160, overlap 40: steps of 120 -> starts 0, 120 (120 + 160 = 280 ends at the edge)
    assert tile_windows(160, 280, 160, 40) == [(0, 0, 160, 160), (120, 0, 280, 160)]
    # width 300, tile 128, no overlap: 0, 128, then 256 + 128 > 300 so the last moves back to 172
    assert [w[0] for w in tile_windows(100, 300, 128, 0)] == [0, 128, 172]
    assert overlap_pixels(0.25, 512) == 128 and overlap_pixels(100, 512) == 100 and overlap_pixels(0, 64) == 0
    for bad in (-0.1, 2.5, 512, float("nan")):
        with pytest.raises(ValueError):
            overlap_pixels(bad, 512)


@pytest.mark.parametrize("input_size", [(160, 160), (128, 128)])  # tiles seen at scale 1 and at scale 0.8
def test_object_straddling_a_seam_comes_back_as_one_whole_box(input_size):
    model = BrightBlobDetector()
    boxes, scores, labels = predict_tiled(model, seam_image(), tile_size=160, overlap=40, iou_threshold=0.5,
                                          input_size=input_size)
    assert model.inputs == [(2, 3, *input_size)]  # both tiles in one batch
    # the left tile sees the seam object cut at x = 160 (140..160), the right tile whole (140..190): the cut
    # one goes; the overlap object is found twice (IoU 1) and merged by NMS; 3 objects, 3 boxes
    got = sorted(tuple(round(v, 3) for v in box) for box in boxes.tolist())
    assert got == sorted([SEAM_OBJECT, OVERLAP_OBJECT, LEFT_OBJECT])
    assert scores.tolist() == pytest.approx([0.9] * 3) and labels.tolist() == [0, 0, 0]


def test_merge_drops_a_cut_box_only_where_another_tile_holds_the_object_whole():
    windows = torch.tensor([[0, 0, 160, 160], [120, 0, 280, 160]], dtype=torch.float32)
    # tile 0 sees the seam object cut (140..160), tile 1 whole (140..190): IoU 20/50 = 0.4, below NMS's 0.5,
    # so only the seam rule removes the cut one (it lies wholly inside the whole box: cover 1.0)
    boxes = torch.tensor([[140, 50, 160, 90], [140, 50, 190, 90]], dtype=torch.float32)
    tiles = torch.tensor([0, 1])
    kept, _, _ = merge_tile_detections(boxes, torch.tensor([0.95, 0.6]), torch.zeros(2, dtype=torch.int64),
                                       tiles, windows[tiles], (160, 280))
    assert kept.tolist() == [[140, 50, 190, 90]]
    # another class holds nothing for it: both stay
    kept, _, _ = merge_tile_detections(boxes, torch.tensor([0.95, 0.6]), torch.tensor([0, 1]),
                                       tiles, windows[tiles], (160, 280))
    assert len(kept) == 2
    # an object cut in both tiles (wider than the 40 px overlap): neither tile holds it whole, both pieces stay
    # (IoU of 100..160 and 120..200 is 40/100 = 0.4): the documented limit, overlap must exceed the objects
    pieces = torch.tensor([[100, 10, 160, 40], [120, 10, 200, 40]], dtype=torch.float32)
    kept, _, _ = merge_tile_detections(pieces, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64),
                                       tiles, windows[tiles], (160, 280))
    assert len(kept) == 2
    # cut = within 2 px of an inner tile border; the image's own edges (x 0 / 280, y 0 / 160) are not seams
    probes = torch.tensor([[250, 10, 280, 40],  # tile 1, at the image's right edge: not cut
                           [0, 0, 30, 160],  # tile 0, at the image's left, top and bottom edges: not cut
                           [130, 10, 158.5, 40],  # tile 0, 1.5 px from its inner right border x = 160: cut
                           [121, 10, 150, 40],  # tile 1, 1 px from its inner left border x = 120: cut
                           [123, 10, 150, 40]], dtype=torch.float32)  # tile 1, 3 px from it: not cut
    assert cut_by_tile_border(probes, windows[[1, 0, 0, 1, 1]], (160, 280)).tolist() == [False, False, True, True, False]


def test_predict_set_tiled_scores_whole_images():
    image = (seam_image().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    record = DetectionRecord(path=None, width=280, height=160, image=image, image_id="seam",
                             boxes=[SEAM_OBJECT, OVERLAP_OBJECT, LEFT_OBJECT], labels=[0, 0, 0])
    dataset = DetectionSet([record], ["tree"], "seam test")
    predictions = predict_set_tiled(BrightBlobDetector(), dataset, tile_size=160, overlap=40, input_size=(160, 160))
    metrics = evaluate_detections(predictions, dataset)
    # one image, 3 objects, 3 exact boxes: perfect; scoring each tile alone would have had 5 boxes
    assert (metrics.num_images, metrics.num_ground_truth, metrics.num_detections) == (1, 3, 3)
    assert metrics.map == pytest.approx(1.0)


# ------------------------------------------------------------------------------- unlabelled images
def test_unlabeled_folders_are_tiled_like_labelled_images_or_warned_about(tmp_path):
    folder = tmp_path / "ortho"
    folder.mkdir()
    cv2.imwrite(str(folder / "ortho.png"), np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    data = SimpleNamespace(unlabeled=[], train=None)
    base = {"data": {"height": 128, "width": 128, "unlabeled": [str(folder)]}, "distill": {"label_free": True}}

    # tiles of 128 px without overlap: x starts 0, 128, 172 (moved back to end at 300), y starts 0, 72 -> 6 tiles
    config = merge_config(DEFAULT_DISTILL_CONFIG, {**base, "data": {**base["data"], "tile_size": 128}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # 128 px tiles in 128 px views: nothing shrunk
        stream, text = unlabeled_stream(config, data)  # type: ignore[arg-type]
    windows = sorted(r.window for r in stream.records)
    assert windows == sorted((x, y, x + 128, y + 128) for x in (0, 128, 172) for y in (0, 72))
    assert "1 image(s) cut into 6 tiles of 128 px" in text
    assert tuple(stream[0]["image"].shape) == (3, 128, 128)

    # without tiling the 300 x 200 photo is shrunk max(200/128, 300/128) = 2.34x into the 128 x 128 view
    config = merge_config(DEFAULT_DISTILL_CONFIG, base)
    with pytest.warns(DataWarning, match=r"shrunk more than 2x .* ortho.png, 300 x 200 px, shrunk 2.3x.*--tile-size"):
        stream, _ = unlabeled_stream(config, data)  # type: ignore[arg-type]
    assert [r.window for r in stream.records] == [None]
    # whole images letterboxed for evaluation are named the same way
    with pytest.warns(DataWarning, match=r"1 of 1 evaluated image\(s\) .* shrunk 2.3x"):
        batch = next(iter_eval_batches(stream.records, 128))
    assert tuple(batch.images.shape) == (1, 3, 128, 128)


# ------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """A 384 x 256 photo with 70 labelled 8 px objects (COCO), and a random tiny detector for it."""
    root = tmp_path_factory.mktemp("crowded")
    (root / "images").mkdir()
    image = np.full((256, 384, 3), 60, np.uint8)
    annotations = []
    for k in range(70):  # 10 per row, 32 px apart
        x, y = 8 + 32 * (k % 10), 8 + 32 * (k // 10)
        image[y : y + 8, x : x + 8] = 230
        annotations.append({"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, 8, 8], "area": 64,
                            "iscrowd": 0})
    cv2.imwrite(str(root / "images" / "photo.png"), image)
    coco = {"images": [{"id": 1, "file_name": "photo.png", "width": 384, "height": 256}],
            "annotations": annotations, "categories": [{"id": 1, "name": "tree"}]}
    (root / "photo.json").write_text(json.dumps(coco))
    (root / "data.yaml").write_text("format: coco\nnames: [tree]\ntrain: {annotations: photo.json, images: images}\n"
                                    "val: {annotations: photo.json, images: images}\n")
    torch.manual_seed(0)
    save_detector(create_detector("retinanet_tiny_fpn", 1, class_names=["tree"]), root / "model.pt")
    return root


def test_evaluate_tiles_whole_images_and_reports_max_detections(crowded):
    out = crowded / "eval"
    result = CliRunner().invoke(main, [
        "detect", "evaluate", "--model", f"tiny={crowded / 'model.pt'}", "--data", str(crowded / "data.yaml"),
        "--size", "128", "--tile-size", "128", "--out", str(out), "--plot-images", "1",
    ])
    assert result.exit_code == 0, result.output
    # auto: 1.5 x 70 = 105; 25 % of 128 px = 32 px of overlap; one whole image is scored, not its tiles
    assert "at most 105 detections per image (auto: 1.5 x 70 boxes" in result.output
    assert "128 px tiles overlapping by 32 px" in result.output and "| AR105 |" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_detections"] == 105
    tiny = metrics["models"]["tiny"]
    assert (tiny["max_detections"], tiny["num_images"], tiny["num_ground_truth"]) == (105, 1, 70)

    result = CliRunner().invoke(main, [
        "detect", "evaluate", "--model", str(crowded / "model.pt"), "--data", str(crowded / "data.yaml"),
        "--size", "128", "--max-detections", "150", "--tile-size", "128", "--per-tile", "--plot-images", "1",
    ])
    assert result.exit_code == 0, result.output
    # per tile (old behaviour): 384 x 256 in 128 px tiles overlapping 32 px: x 0, 96, 192, 256; y 0, 96, 128
    assert "12 image(s)" in result.output and "at most 150 detections per image (set)" in result.output


def test_max_detections_option_of_train_distill_and_evaluate(crowded, monkeypatch):
    import detkd.tasks.detection as tasks

    seen: list[tuple[str, object]] = []
    monkeypatch.setattr(tasks, "run_detection_training",
                        lambda config, out, resume: seen.append(("train", config["eval"]["max_detections"])))
    monkeypatch.setattr(tasks, "run_detection_distillation",
                        lambda config, out, resume: seen.append(("distill", config["eval"]["max_detections"])))
    runner = CliRunner()
    data = ["--data", str(crowded / "data.yaml")]
    assert runner.invoke(main, ["detect", "train", *data, "--out", str(crowded / "t"), "--max-detections", "300"]).exit_code == 0
    assert runner.invoke(main, ["detect", "distill", *data, "--teacher", str(crowded / "model.pt"),
                                "--out", str(crowded / "d"), "--max-detections", "50"]).exit_code == 0
    assert runner.invoke(main, ["detect", "train", *data, "--out", str(crowded / "t2")]).exit_code == 0
    assert seen == [("train", 300), ("distill", 50), ("train", "auto")]
    bad = runner.invoke(main, ["detect", "evaluate", "--model", str(crowded / "model.pt"), *data,
                               "--max-detections", "0"])
    assert bad.exit_code == 2 and "--max-detections must be 'auto' or a positive integer" in bad.output
    for command in ("train", "distill", "evaluate"):
        assert "--max-detections" in runner.invoke(main, ["detect", command, "--help"]).output
