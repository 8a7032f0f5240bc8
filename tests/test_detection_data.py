"""Detection data: readers (hand-computed pixel boxes), validation errors, data.yaml, tiling,
augmentation that moves boxes with pixels, eval letterboxing, and synthetic shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from detkd.config import ConfigError
from detkd.data.detection import (
    SYNTHETIC_CLASSES,
    AnnotationError,
    BoxViewConfig,
    ColourJitterConfig,
    DetectionRecord,
    DetectionStream,
    ImageCache,
    SyntheticDetectionConfig,
    SyntheticDetectionStream,
    UnlabeledDetectionStream,
    crop_record,
    draw_detection_scene,
    iter_eval_batches,
    load_data_config,
    read_coco,
    read_voc,
    read_yolo,
    synthetic_detection_set,
    tile_records,
    tree_tiles_split,
    unpad_targets,
    write_synthetic_coco,
)
from detkd.data.detection.transforms import PAD_VALUE


def save_png(path: Path, width: int, height: int, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------- COCO
def coco_file(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None, name: str = "ann.json") -> Path:
    save_png(tmp_path / "imgs" / "a.png", 40, 30)
    save_png(tmp_path / "imgs" / "b.png", 20, 20)
    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
    ]
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_read_coco_exact_boxes(tmp_path):
    path = coco_file(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
    ])
    data = read_coco(path, tmp_path / "imgs")
    assert data.class_names == ["cat", "dog"]  # ordered by category id: 3, then 7
    a, b = data.records
    # xywh (2, 3, 10, 5) -> xyxy (2, 3, 12, 8), no shift in COCO's continuous frame
    np.testing.assert_array_equal(a.boxes, [[2, 3, 12, 8], [0, 0, 40, 30]])
    assert a.labels.tolist() == [1, 0] and a.ignore.tolist() == [False, True]
    assert (a.width, a.height) == (40, 30) and a.path == tmp_path / "imgs" / "a.png"
    assert b.num_boxes == 0  # an image without annotations is kept as background
    # mapping onto given class names uses the names, not the ids
    assert read_coco(path, tmp_path / "imgs", class_names=["dog", "cat"]).records[0].labels.tolist() == [0, 1]


def test_coco_clips_small_overshoot_and_reads_missing_size_from_header(tmp_path):
    path = coco_file(tmp_path, [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [-0.5, 25, 40.8, 5.9]}],
                     images=[{"id": 1, "file_name": "a.png"}])
    record = read_coco(path, tmp_path / "imgs").records[0]
    assert (record.width, record.height) == (40, 30)
    np.testing.assert_allclose(record.boxes, [[0, 25, 40, 30]])  # 0.5 / 0.3 / 0.9 px overshoots clipped


@pytest.mark.parametrize(
    "annotation, reason",
    [
        ({"id": 5, "image_id": 1, "category_id": 7, "bbox": [10, 10, 0, 5]}, "x2 <= x1"),
        ({"id": 5, "image_id": 1, "category_id": 7, "bbox": [10, 10, 5, -1]}, "y2 <= y1"),
        ({"id": 5, "image_id": 1, "category_id": 7, "bbox": [30, 10, 15, 5]}, "outside the image"),
        ({"id": 5, "image_id": 1, "category_id": 7, "bbox": [float("nan"), 10, 5, 5]}, "NaN"),
        ({"id": 5, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]}, "unknown category id"),
        ({"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5]}, "bbox is not [x, y, width, height]"),
        ({"id": 5, "image_id": 42, "category_id": 7, "bbox": [1, 1, 5, 5]}, "unknown image"),
    ],
)
def test_coco_errors_name_file_entry_and_reason(tmp_path, annotation, reason):
    path = coco_file(tmp_path, [annotation])
    with pytest.raises(AnnotationError) as err:
        read_coco(path, tmp_path / "imgs")
    message = str(err.value)
    assert "ann.json" in message and "annotation id 5" in message and reason in message and "skip" in message


def test_coco_unknown_class_name_missing_image_and_bad_json(tmp_path):
    path = coco_file(tmp_path, [{"id": 3, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(AnnotationError, match=r"ann\.json: annotation id 3 .*unknown class name.*'cat'"):
        read_coco(path, tmp_path / "imgs", class_names=["dog"])
    missing = coco_file(tmp_path, [], images=[{"id": 1, "file_name": "gone.png", "width": 5, "height": 5}], name="m.json")
    with pytest.raises(AnnotationError, match=r"m\.json: image id 1 \('gone\.png'\): image file does not exist"):
        read_coco(missing, tmp_path / "imgs")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(AnnotationError, match=r"broken\.json: not valid JSON"):
        read_coco(broken)


def test_coco_skip_bad_counts_and_warns(tmp_path):
    path = coco_file(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5]},  # good
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [2, 3, 0, 5]},  # no area
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [2, 3, 100, 5]},  # outside
        {"id": 4, "image_id": 3, "category_id": 7, "bbox": [1, 1, 2, 2]},  # its image is missing (skipped once)
        {"id": 5, "image_id": 2, "category_id": 7, "bbox": [1, 1, 2, 2]},  # good
    ], images=[
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
        {"id": 3, "file_name": "gone.png", "width": 20, "height": 20},
    ])
    with pytest.warns(UserWarning, match=r"Skipped 3 bad annotation entr\(y/ies\) in .*ann\.json") as caught:
        data = read_coco(path, tmp_path / "imgs", skip_bad=True)
    summary = str(caught[0].message)
    assert "1 x image file does not exist" in summary and "1 x box has no area" in summary
    assert "1 x box lies outside the image" in summary
    assert len(data.problems) == 3
    assert [r.num_boxes for r in data.records] == [1, 1]
    np.testing.assert_array_equal(data.records[0].boxes, [[2, 3, 12, 8]])


# ----------------------------------------------------------------------------- VOC
VOC_OBJECT = "<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>" \
             "<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"


def voc_xml(path: Path, filename: str, width: int, height: int, objects: list[tuple]) -> Path:
    body = "".join(VOC_OBJECT.format(name=n, x1=a, y1=b, x2=c, y2=d, difficult=diff) for n, a, b, c, d, diff in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
                    f"<depth>3</depth></size>{body}</annotation>")
    return path


def test_read_voc_converts_one_based_pixels(tmp_path):
    save_png(tmp_path / "a.png", 40, 30)
    voc_xml(tmp_path / "a.xml", "a.png", 40, 30, [("tree", 1, 1, 40, 30, 0), ("bush", 5, 6, 10, 12, 1)])
    data = read_voc(tmp_path)
    assert data.class_names == ["bush", "tree"]
    record = data.records[0]
    # 1-based inclusive (1..40) covers the whole width [0, 40]; (5..10) covers [4, 10]
    np.testing.assert_array_equal(record.boxes, [[0, 0, 40, 30], [4, 5, 10, 12]])
    assert record.labels.tolist() == [1, 0] and record.ignore.tolist() == [False, True]


def test_voc_errors(tmp_path):
    save_png(tmp_path / "a.png", 40, 30)
    voc_xml(tmp_path / "a.xml", "a.png", 40, 30, [("tree", 1, 1, 10, 10, 0), ("dog", 1, 1, 10, 10, 0)])
    with pytest.raises(AnnotationError, match=r"a\.xml: object 1 \('dog'\): unknown class name"):
        read_voc(tmp_path, class_names=["tree"])
    voc_xml(tmp_path / "a.xml", "a.png", 40, 30, [("tree", 10, 1, 5, 10, 0)])
    with pytest.raises(AnnotationError, match=r"a\.xml: object 0 \('tree'\) <bndbox> xmin=10 .*x2 <= x1"):
        read_voc(tmp_path)
    voc_xml(tmp_path / "a.xml", "a.png", 40, 30, [("tree", 1, 1, 60, 10, 0)])
    with pytest.raises(AnnotationError, match=r"a\.xml: object 0 .*outside the image.*40 x 30"):
        read_voc(tmp_path)
    (tmp_path / "a.xml").write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match=r"a\.xml: XML: malformed XML"):
        read_voc(tmp_path)
    voc_xml(tmp_path / "a.xml", "nothere.png", 40, 30, [])
    (tmp_path / "a.png").unlink()
    with pytest.raises(AnnotationError, match=r"a\.xml: <filename>nothere\.png</filename>: image file does not exist"):
        read_voc(tmp_path)


def test_voc_skip_bad(tmp_path):
    save_png(tmp_path / "a.png", 40, 30)
    voc_xml(tmp_path / "a.xml", "a.png", 40, 30, [("tree", 1, 1, 10, 10, 0), ("tree", 1, 1, 99, 10, 0)])
    (tmp_path / "b.xml").write_text("not xml")
    with pytest.warns(UserWarning, match="Skipped 2 bad"):
        data = read_voc(tmp_path, skip_bad=True)
    assert len(data) == 1 and data.records[0].num_boxes == 1 and len(data.problems) == 2


# ----------------------------------------------------------------------------- YOLO
def test_read_yolo_normalised_to_pixels(tmp_path):
    save_png(tmp_path / "images" / "train" / "a.png", 40, 20)
    save_png(tmp_path / "images" / "train" / "b.png", 16, 16)  # no label file: background
    labels = tmp_path / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n\n0 0.1 0.25 0.2 0.5\n")
    data = read_yolo(tmp_path / "images" / "train", class_names=["a", "b"])
    a, b = data.records
    # cx 0.5*40 = 20, w 0.25*40 = 10 -> x 15..25; cy 0.5*20 = 10, h 0.5*20 = 10 -> y 5..15
    np.testing.assert_allclose(a.boxes, [[15, 5, 25, 15], [0, 0, 8, 10]])
    assert a.labels.tolist() == [1, 0] and b.num_boxes == 0


@pytest.mark.parametrize(
    "line, reason",
    [("0 0.5 0.5 0.2", "not 'class cx cy w h'"), ("2 0.5 0.5 0.2 0.2", "class id out of range"),
     ("0 0.5 0.5 x 0.2", "non-number"), ("0 0.9 0.5 0.4 0.2", "outside the image"), ("0 0.5 0.5 0 0.2", "x2 <= x1")],
)
def test_yolo_errors_name_the_line(tmp_path, line, reason):
    save_png(tmp_path / "images" / "a.png", 40, 20)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n" + line + "\n")
    with pytest.raises(AnnotationError) as err:
        read_yolo(tmp_path / "images", class_names=["a", "b"])
    assert "a.txt: line 2" in str(err.value) and reason in str(err.value)
    with pytest.warns(UserWarning, match="Skipped 1 bad"):
        assert read_yolo(tmp_path / "images", class_names=["a", "b"], skip_bad=True).records[0].num_boxes == 1


# ----------------------------------------------------------------------------- data.yaml
def test_data_yaml_formats_and_unknown_keys(tmp_path):
    coco_file(tmp_path, [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5]}])
    (tmp_path / "data.yaml").write_text(
        "format: coco\nnames: [dog, cat]\ntrain: {annotations: ann.json, images: imgs}\nval: ann.json\n"
        "unlabeled: [more]\n")
    config = load_data_config(tmp_path / "data.yaml")
    assert config.format == "coco" and config.unlabeled == [tmp_path / "more"]
    train = config.read("train")
    assert train.class_names == ["dog", "cat"] and train.records[0].labels.tolist() == [0]
    assert config.val[0].annotations == tmp_path / "ann.json" and config.val[0].images is None

    # Ultralytics layout: path + names as {id: name}; format defaults to yolo
    save_png(tmp_path / "ds" / "images" / "val" / "x.png", 10, 10)
    (tmp_path / "ds" / "labels" / "val").mkdir(parents=True)
    (tmp_path / "ds" / "labels" / "val" / "x.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (tmp_path / "y.yaml").write_text("path: ds\ntrain: images/val\nval: images/val\nnames: {0: a, 1: b}\nnc: 2\n")
    val = load_data_config(tmp_path / "y.yaml").read("val")
    np.testing.assert_allclose(val.records[0].boxes, [[4, 4, 6, 6]])
    assert val.class_names == ["a", "b"]

    (tmp_path / "bad.yaml").write_text("format: coco\ntrain: ann.json\nepochs: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'epochs'"):
        load_data_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("format: coco\ntrain: {annotations: ann.json, imgs: x}\n")
    with pytest.raises(ConfigError, match="unknown key 'imgs' in 'train'"):
        load_data_config(tmp_path / "bad2.yaml")
    (tmp_path / "bad3.yaml").write_text("format: voc\ntrain: x\n")
    with pytest.raises(ConfigError, match="needs 'names'"):
        load_data_config(tmp_path / "bad3.yaml")


def test_data_yaml_class_map_reads_several_labels_as_one_class(tmp_path):
    # COCO: categories dog (id 7) and cat (id 3) read as one class 'pet'
    coco_file(tmp_path, [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5]},
                         {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]},
                         {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5]}])
    (tmp_path / "data.yaml").write_text("format: coco\nnames: [pet]\nclass_map: {dog: pet, cat: pet}\n"
                                        "train: {annotations: ann.json, images: imgs}\n")
    train = load_data_config(tmp_path / "data.yaml").read("train")
    assert train.class_names == ["pet"] and [r.labels.tolist() for r in train.records] == [[0, 0], [0]]

    # VOC: Alive and Dead read as Tree; an unmapped name that is in 'names' keeps its class
    save_png(tmp_path / "voc" / "a.png", 40, 30)
    voc_xml(tmp_path / "voc" / "a.xml", "a.png", 40, 30,
            [("Alive", 1, 1, 10, 10, 0), ("Dead", 5, 5, 20, 20, 0), ("Car", 1, 1, 40, 30, 0)])
    (tmp_path / "voc.yaml").write_text("format: voc\nnames: [Car, Tree]\nclass_map: {Alive: Tree, Dead: Tree}\n"
                                       "train: voc\n")
    assert load_data_config(tmp_path / "voc.yaml").read("train").records[0].labels.tolist() == [1, 1, 0]

    # YOLO: the keys are the ids of the label files; ids 0 and 1 -> Tree (label 0)
    save_png(tmp_path / "y" / "images" / "a.png", 10, 10)
    (tmp_path / "y" / "labels").mkdir(parents=True)
    (tmp_path / "y" / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.4 0.4\n")
    (tmp_path / "y.yaml").write_text("path: y\ntrain: images\nnames: [Tree]\nclass_map: {0: Tree, 1: Tree}\n")
    assert load_data_config(tmp_path / "y.yaml").read("train").records[0].labels.tolist() == [0, 0]


@pytest.mark.parametrize("text, message", [
    ("format: coco\nnames: [pet]\nclass_map: {dog: pet, cat: animal}\ntrain: ann.json\n",
     r"m\.yaml: class_map\.cat: maps to 'animal', which is not in 'names' \['pet'\]"),
    ("format: coco\nclass_map: {dog: pet}\ntrain: ann.json\n", r"m\.yaml: 'class_map' needs 'names'"),
    ("format: yolo\nnames: [Tree]\nclass_map: {Alive: Tree}\ntrain: images\n",
     r"m\.yaml: class_map key 'Alive': YOLO label files hold class ids"),
    ("format: coco\nnames: [pet]\nclass_map: [dog, pet]\ntrain: ann.json\n", r"m\.yaml: 'class_map' must be a mapping"),
])
def test_data_yaml_bad_class_map_names_file_and_key(tmp_path, text, message):
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_data_config(tmp_path / "m.yaml")


def test_skip_bad_names_images_left_without_boxes(tmp_path):
    # image a.png holds only a 'cat' box, not in the class names: skipped, so a.png would train as background
    path = coco_file(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]},
                                {"id": 2, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5]}])
    with pytest.warns(UserWarning, match=r"Skipped 1 bad .*1 image\(s\) left without boxes.*\(a\.png\).*background"):
        data = read_coco(path, tmp_path / "imgs", class_names=["dog"], skip_bad=True)
    assert [r.num_boxes for r in data.records] == [0, 1]

    # YOLO: four images whose every line has an unknown class id, one good: three named, "and 1 more"
    for name in "abcde":
        save_png(tmp_path / "y" / "images" / f"{name}.png", 10, 10)
    (tmp_path / "y" / "labels").mkdir(parents=True)
    for name in "abcd":
        (tmp_path / "y" / "labels" / f"{name}.txt").write_text("5 0.5 0.5 0.2 0.2\n")
    (tmp_path / "y" / "labels" / "e.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.warns(UserWarning, match=r"4 image\(s\) left without boxes.*\(a\.png, b\.png, c\.png and 1 more\)"):
        read_yolo(tmp_path / "y" / "images", class_names=["a"], skip_bad=True)


# ----------------------------------------------------------------------------- tiling
def test_tile_records_hand_worked(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    record = DetectionRecord(path=tmp_path / "big.png", width=100, height=60, boxes=[[40, 10, 70, 30]], labels=[0])
    tiles = tile_records([record], 50)
    # x starts 0, 50; y starts 0 and 10 (the last row moved back to end at the edge)
    assert [t.window for t in tiles] == [(0, 0, 50, 50), (50, 0, 100, 50), (0, 10, 50, 60), (50, 10, 100, 60)]
    # box area 600: in the left tiles 10x20 = 200 (1/3 < 0.5: dropped), in the right ones 20x20 = 400 (kept)
    assert [t.num_boxes for t in tiles] == [0, 1, 0, 1]
    np.testing.assert_array_equal(tiles[1].boxes, [[0, 10, 20, 30]])
    np.testing.assert_array_equal(tiles[3].boxes, [[0, 0, 20, 20]])
    np.testing.assert_array_equal(ImageCache().pixels(tiles[3]), pixels[10:60, 50:100])
    # partial boxes as ignore regions instead
    partial = tile_records([record], 50, ignore_partial=True)
    assert partial[0].ignore.tolist() == [True] and partial[1].ignore.tolist() == [False]
    # windows compose: a tile of a crop points into the source
    crop = crop_record(record, (20, 5, 90, 55), min_visible=0.5)
    np.testing.assert_array_equal(crop.boxes, [[20, 5, 50, 25]])
    assert tile_records([crop], 40)[1].window == (50, 5, 90, 45)


def test_tree_tiles_split_keeps_validation_pixels_apart(tmp_path):
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "ortho.png")
    # split at x = 150: one tree fully left, one fully right, one across the border (30 px left, 10 px right)
    voc_xml(tmp_path / "ortho.xml", "ortho.png", 200, 100,
            [("Tree", 11, 11, 30, 30, 0), ("Tree", 171, 61, 190, 80, 0), ("Tree", 121, 41, 160, 60, 0)])
    train, val = tree_tiles_split(tmp_path, tile_size=64, val_fraction=0.25)
    assert all(t.window[2] <= 150 for t in train) and all(t.window[0] >= 150 for t in val)
    # train region 150 x 100: tile x starts 0, 64, 86; y starts 0, 36 -> 6 tiles; val region 50 x 100: 1 x 2 tiles
    assert len(train) == 6 and len(val) == 2
    assert train.class_names == ["Tree"]
    # the border tree keeps 30/40 of its area on the left (kept there), 10/40 on the right (dropped there)
    source_boxes = [b + np.array(t.window[:2] * 2) for t in val for b in t.boxes]
    np.testing.assert_array_equal(np.unique(np.array(source_boxes), axis=0), [[170, 60, 190, 80]])
    left_boxes = {tuple(b + np.array(t.window[:2] * 2)) for t in train for b in t.boxes}
    assert (120.0, 40.0, 150.0, 60.0) in left_boxes and (10.0, 10.0, 30.0, 30.0) in left_boxes


# ----------------------------------------------------------------------------- training streams
def rectangles_record() -> DetectionRecord:
    """A grey 90x70 image with a red and a blue filled rectangle; the boxes are the rectangles."""
    image = np.full((70, 90, 3), 128, np.uint8)
    image[10:30, 5:45] = (255, 0, 0)  # red: x 5..45, y 10..30
    image[40:65, 50:80] = (0, 0, 255)  # blue: x 50..80, y 40..65
    return DetectionRecord(path=None, image=image, width=90, height=70,
                           boxes=[[5, 10, 45, 30], [50, 40, 80, 65]], labels=[0, 1])


def test_augmented_boxes_still_bound_their_rectangles():
    stream = DetectionStream([rectangles_record()], 128, 128, BoxViewConfig(scale=(0.6, 2.5), hflip=0.5, vflip=0.5,
                                                                            min_visible=0.3, min_size=2), seed=3)
    checked = 0
    for k in range(40):
        sample = stream[k]
        image = sample["image"].numpy()
        for box, label in zip(sample["boxes"][: sample["num_boxes"]].numpy(), sample["labels"][: sample["num_boxes"]]):
            channel = 0 if label == 0 else 2
            fill = (image[channel] > 0.75) & (image[1] < 0.25)
            rows, cols = np.nonzero(fill)
            assert len(rows), f"sample {k}: box {box} has no rectangle pixels"
            extent = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            np.testing.assert_allclose(box, extent, atol=1.0, err_msg=f"sample {k}")
            checked += 1
        assert (sample["labels"][sample["num_boxes"]:] == -1).all()
    assert checked > 40  # most views keep both rectangles


def test_stream_is_reproducible_and_batches_with_the_default_collate():
    stream = DetectionStream([rectangles_record()], 128, 256, colour=ColourJitterConfig(probability=1.0), max_boxes=5,
                             seed=1)
    first, again = stream[7], stream[7]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["boxes"], again["boxes"])
    assert not torch.equal(stream[7]["image"], DetectionStream([rectangles_record()], 128, 256, seed=2)[7]["image"])
    batch = next(iter(DataLoader(stream, batch_size=3)))
    assert batch["image"].shape == (3, 3, 128, 256) and batch["boxes"].shape == (3, 5, 4)
    targets = unpad_targets(batch)
    assert [len(t["boxes"]) for t in targets] == batch["num_boxes"].tolist()
    assert all(t["labels"].dtype == torch.int64 and (t["labels"] >= 0).all() for t in targets)
    with pytest.raises(ValueError, match="has 2 boxes but max_boxes=1"):
        DetectionStream([rectangles_record()], 128, 128, max_boxes=1)
    with pytest.raises(ValueError, match="multiples of 128"):
        DetectionStream([rectangles_record()], 100, 128)


def test_unlabeled_stream_reads_folders(tmp_path):
    save_png(tmp_path / "u" / "a.png", 50, 40)
    save_png(tmp_path / "u" / "b.jpg", 30, 60)
    stream = UnlabeledDetectionStream([tmp_path / "u"], 128, 128)
    assert stream.num_items() == 2 and set(stream[0]) == {"image"} and stream[0]["image"].shape == (3, 128, 128)


def test_eval_batches_letterbox_and_map_back():
    record = rectangles_record()  # 90 x 70
    batch = next(iter_eval_batches([record], 128, batch_size=4))
    # scale min(128/70, 128/90) = 1.4222 -> 128 x 100 (round(70 * 1.4222) = 99.6 -> 100)
    np.testing.assert_allclose(batch.scales[0].numpy(), [128 / 90, 100 / 70])
    image = batch.images[0].numpy()
    np.testing.assert_allclose(image[:, 110, 60], PAD_VALUE, atol=1 / 255)  # rows 100..127 are padding
    red = np.nonzero((image[0] > 0.75) & (image[1] < 0.25))
    box = torch.tensor([[red[1].min(), red[0].min(), red[1].max() + 1, red[0].max() + 1]], dtype=torch.float32)
    np.testing.assert_allclose(batch.to_original(box, 0).numpy(), [record.boxes[0]], atol=1.0)


# ----------------------------------------------------------------------------- synthetic shapes
def test_synthetic_boxes_bound_the_drawn_pixels():
    cfg = SyntheticDetectionConfig()
    for i in range(6):
        scene = draw_detection_scene(np.random.default_rng(i), cfg)
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert len(scene.boxes) == len(scene.labels) == len(scene.coverage) >= 1
        for box, cover in zip(scene.boxes, scene.coverage):
            rows, cols = np.nonzero(cover > 0)
            # the box is the extent of the visible sub-pixels: it lies within the covered pixels' extent
            # and reaches into the first and last covered pixel on every side
            assert cols.min() <= box[0] < cols.min() + 1 and cols.max() < box[2] <= cols.max() + 1
            assert rows.min() <= box[1] < rows.min() + 1 and rows.max() < box[3] <= rows.max() + 1


def test_synthetic_shapes_have_their_class_shape():
    """Lone, untruncated objects: a triangle fills at most half its box, an ellipse pi/4 * 0.94..1 of it."""
    cfg = SyntheticDetectionConfig(objects=(1, 1), distractors=(0, 0), occluders=(0, 0), blur_sigma=(0, 0),
                                   noise_std=(0, 0))
    fills: dict[str, list[float]] = {name: [] for name in SYNTHETIC_CLASSES}
    for i in range(100):
        scene = draw_detection_scene(np.random.default_rng([5, i]), cfg)
        box = scene.boxes[0]
        if box[0] < 1 or box[1] < 1 or box[2] > 127 or box[3] > 127:
            continue
        fills[SYNTHETIC_CLASSES[scene.labels[0]]].append(scene.coverage[0].sum() / ((box[2] - box[0]) * (box[3] - box[1])))
    assert all(len(v) >= 3 for v in fills.values()), {k: len(v) for k, v in fills.items()}
    assert max(fills["triangle"]) <= 0.52
    # ellipse of axis ratio q rotated by any angle fills pi*q / (4 * sqrt((1+q^2)/2)^2 ...) >= 0.737 (q = 0.7, 45 deg)
    assert 0.72 <= min(fills["circle"]) and max(fills["circle"]) <= 0.80
    # rectangle with half sides 1 x a rotated by t fills a / ((cos t + a sin t)(sin t + a cos t)) >= 0.384 (a = 0.35, 45 deg)
    assert min(fills["rectangle"]) >= 0.37 and max(fills["star"]) < 0.6


def test_synthetic_set_is_seeded_and_round_trips_through_coco(tmp_path):
    small, large = synthetic_detection_set(2, 128, seed=4), synthetic_detection_set(3, 128, seed=4)
    np.testing.assert_array_equal(small[1].image, large[1].image)  # image i depends on (seed, i) only
    assert not np.array_equal(small[0].image, synthetic_detection_set(1, 128, seed=5)[0].image)
    json_path = write_synthetic_coco(tmp_path, 3, 128, seed=4)
    back = read_coco(json_path, tmp_path / "train")
    assert back.class_names == list(SYNTHETIC_CLASSES)
    for original, read in zip(large, back):
        np.testing.assert_allclose(read.boxes, original.boxes, atol=1e-5)
        assert read.labels.tolist() == original.labels.tolist()
        np.testing.assert_array_equal(np.asarray(Image.open(read.path)), original.image)


def test_synthetic_stream_format():
    stream = SyntheticDetectionStream(128, seed=0, max_boxes=20)
    sample = stream[3]
    assert sample["image"].shape == (3, 128, 128) and sample["boxes"].shape == (20, 4)
    n = int(sample["num_boxes"])
    assert n >= 1 and (sample["labels"][:n] >= 0).all() and (sample["labels"][n:] == -1).all()
    assert torch.equal(stream[3]["image"], sample["image"])
