"""Hostile input: bad data files give one named error (or, with skip_bad, a counted skip), never a raw
traceback, and detkd.Predictor refuses invalid images before it allocates anything."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from detkd import Predictor
from detkd.data.detection import (
    AnnotationError,
    DetectionSet,
    iter_eval_batches,
    read_coco,
    read_voc,
    read_yolo,
    unlabeled_records,
)
from detkd.data.images import DataWarning, ImageTooLargeError, read_image, scan_images

GOOD_SIZE = (40, 30)  # (width, height) of the good images, pixels
BOX = (2, 3, 12, 13)  # xyxy pixels of the one object of every image


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png_bytes(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 2 x 2 PNG whose header declares ``width x height`` pixels (opening it reads the header only)."""
    data = bytearray(png_bytes(2, 2))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature (8) + length + "IHDR"
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC over "IHDR" + its 13 data bytes
    return bytes(data)


BAD_IMAGES = {
    "bomb": bomb_png_bytes(),
    "not_an_image": b"this is a text file, not a png",
    "empty": b"",
    "other_size": png_bytes(50, 30),  # the annotation says 40 x 30
}
REASONS = {
    "bomb": "image is too large",
    "not_an_image": "not a readable image",
    "empty": "image file is empty (0 bytes)",
    "other_size": "declared image size differs from the image file",
}


# ----------------------------------------------------------------------------- writers
def write_voc(root: Path, files: dict[str, bytes]) -> Callable[[bool], DetectionSet]:
    for name, data in files.items():
        (root / name).write_bytes(data)
        x1, y1, x2, y2 = BOX
        (root / Path(name).with_suffix(".xml")).write_text(
            f"<annotation><filename>{name}</filename><size><width>{GOOD_SIZE[0]}</width>"
            f"<height>{GOOD_SIZE[1]}</height></size><object><name>dot</name><bndbox><xmin>{x1 + 1}</xmin>"
            f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>"
        )
    return lambda skip_bad: read_voc(root, skip_bad=skip_bad)


def write_coco(root: Path, files: dict[str, bytes]) -> Callable[[bool], DetectionSet]:
    images, annotations = [], []
    for image_id, (name, data) in enumerate(files.items(), start=1):
        (root / name).write_bytes(data)
        images.append({"id": image_id, "file_name": name, "width": GOOD_SIZE[0], "height": GOOD_SIZE[1]})
        x1, y1, x2, y2 = BOX
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]})
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "dot"}]}))
    return lambda skip_bad: read_coco(path, skip_bad=skip_bad)


def write_yolo(root: Path, files: dict[str, bytes]) -> Callable[[bool], DetectionSet]:
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
        (root / "labels" / Path(name).with_suffix(".txt")).write_text("0 0.5 0.5 0.25 0.25\n")
    return lambda skip_bad: read_yolo(root / "images", class_names=["dot"], skip_bad=skip_bad)


WRITERS = {"voc": write_voc, "coco": write_coco, "yolo": write_yolo}


def read_skipping(read: Callable[[bool], DetectionSet], count: int) -> DetectionSet:
    """``read(skip_bad=True)``, checking the one summary warning and that ``count`` entries were counted."""
    with pytest.warns(DataWarning, match=rf"Skipped {count} bad annotation entr"):
        data = read(True)
    assert len(data.problems) == count
    return data


# ----------------------------------------------------------------------------- A1 + A4: bad image files
BAD_IMAGE_CASES = [(fmt, kind) for fmt in WRITERS for kind in BAD_IMAGES
                   if not (fmt == "yolo" and kind == "other_size")]  # YOLO labels declare no image size


@pytest.mark.parametrize("fmt, kind", BAD_IMAGE_CASES)
def test_bad_image_file_is_named_or_skipped_and_counted(tmp_path, fmt, kind):
    read = WRITERS[fmt](tmp_path, {"good.png": png_bytes(*GOOD_SIZE), "bad.png": BAD_IMAGES[kind]})
    with pytest.raises(AnnotationError) as err:
        read(False)
    message = str(err.value)
    assert "bad.png" in message and REASONS[kind] in message and "\n" not in message
    assert "--skip-bad" in message
    if kind == "bomb":  # the limit and how to raise it
        assert "20000 x 20000" in message and "DETKD_MAX_IMAGE_PIXELS" in message

    data = read_skipping(read, 1)
    assert [r.path.name for r in data.records] == ["good.png"]
    assert "bad.png" in data.problems[0] and REASONS[kind] in data.problems[0]
    batch = next(iter_eval_batches(data, 128))  # the run goes on: what is left decodes
    assert batch.images.shape == (1, 3, 128, 128)


def test_pixel_limit_is_detkds_own_and_can_be_changed(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(*GOOD_SIZE))  # 1200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would warn, or refuse above 200 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert read_image(path, grey=False).shape == (GOOD_SIZE[1], GOOD_SIZE[0], 3)
    monkeypatch.setenv("DETKD_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match=r"photo\.png.*40 x 30.*above the limit of 0\.001 megapixels"):
        read_image(path)
    monkeypatch.setenv("DETKD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="DETKD_MAX_IMAGE_PIXELS='lots' is not a positive number"):
        read_image(path)


# ----------------------------------------------------------------------------- A2: YOLO label files
def test_binary_yolo_label_file_is_named_or_skipped_and_counted(tmp_path):
    read = write_yolo(tmp_path, {"a.png": png_bytes(*GOOD_SIZE), "b.png": png_bytes(*GOOD_SIZE, seed=1)})
    (tmp_path / "labels" / "b.txt").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(AnnotationError, match=r"b\.txt: file: label file is not UTF-8 text"):
        read(False)
    data = read_skipping(read, 1)
    assert [r.path.name for r in data.records] == ["a.png"] and "b.txt" in data.problems[0]


def test_yolo_label_file_without_image_is_a_counted_warning(tmp_path):
    read = write_yolo(tmp_path, {"a.png": png_bytes(*GOOD_SIZE)})
    (tmp_path / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "labels" / "classes.txt").write_text("dot\n")  # labelImg's class list: not a label file
    for skip_bad in (False, True):
        with pytest.warns(DataWarning, match=r"Skipped 1 bad.*ghost\.txt: file: label file without an image"):
            data = read(skip_bad)
        assert len(data) == 1 and len(data.problems) == 1


# ----------------------------------------------------------------------------- A3: structure
def test_voc_file_whose_root_is_not_annotation(tmp_path):
    read = write_voc(tmp_path, {"a.png": png_bytes(*GOOD_SIZE)})
    (tmp_path / "b.xml").write_text("<html><body>exported by mistake</body></html>")
    with pytest.raises(AnnotationError, match=r"b\.xml: root element <html>: XML root is not <annotation>"):
        read(False)
    assert len(read_skipping(read, 1)) == 1


def test_coco_duplicate_annotation_ids(tmp_path):
    write_coco(tmp_path, {"a.png": png_bytes(*GOOD_SIZE)})
    path = tmp_path / "ann.json"
    data = json.loads(path.read_text())
    data["annotations"].append({**data["annotations"][0], "bbox": [20, 5, 5, 5]})  # same id 1
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"ann\.json: annotation id 1 \(annotations\[1\]\).*duplicate annotation id"):
        read_coco(path)
    with pytest.warns(DataWarning, match="Skipped 1 bad"):
        kept = read_coco(path, skip_bad=True)
    assert kept.records[0].num_boxes == 1 and "duplicate annotation id" in kept.problems[0]


def test_coco_duplicate_category_names(tmp_path):
    write_coco(tmp_path, {"a.png": png_bytes(*GOOD_SIZE)})
    path = tmp_path / "ann.json"
    data = json.loads(path.read_text())
    data["categories"].append({"id": 2, "name": "dot"})
    path.write_text(json.dumps(data))
    for skip_bad in (False, True):  # the label of 'dot' is ambiguous: nothing to skip
        with pytest.raises(AnnotationError, match=r"ann\.json: categories\[1\]: category name 'dot' appears twice"):
            read_coco(path, skip_bad=skip_bad)


# ----------------------------------------------------------------------------- A5: folders of photos
def test_photo_folder_skips_corrupt_and_bomb_photos_with_one_line_warnings(tmp_path):
    (tmp_path / "good.png").write_bytes(png_bytes(*GOOD_SIZE))
    full = png_bytes(64, 64, seed=2)
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    (tmp_path / "bomb.png").write_bytes(bomb_png_bytes())
    with pytest.warns(DataWarning) as caught:
        scan = scan_images(tmp_path)
    assert scan.paths == [tmp_path / "good.png"] and scan.sizes[tmp_path / "good.png"] == GOOD_SIZE
    assert sorted(p.name for p, _ in scan.skipped) == ["bomb.png", "truncated.png"]
    lines = {Path(str(w.message).split("'")[1]).name: warnings.formatwarning(
        str(w.message), w.category, w.filename, w.lineno) for w in caught}
    assert set(lines) == {"bomb.png", "truncated.png"} and "too large" in lines["bomb.png"]
    for text in lines.values():  # one clean line: no "file.py:12: UserWarning" and no source line
        assert text.startswith("DataWarning: Skipping image '") and text.count("\n") == 1

    with pytest.warns(DataWarning) as caught:  # detection's unlabelled images go through the same scan
        assert [r.path.name for r in unlabeled_records([tmp_path])] == ["good.png"]
    assert len(caught) == 2 and "bomb.png" in str(caught[0].message)


# ----------------------------------------------------------------------------- B: Predictor
@pytest.fixture(scope="module")
def predictor():
    return Predictor("default")


@pytest.mark.parametrize("image", [
    np.full((32, 32), np.nan, np.float32),
    np.where(np.eye(32, dtype=bool)[..., None], np.inf, 0.5).repeat(3, axis=-1),
    torch.full((1, 32, 32), float("nan")),
], ids=["nan-grey", "inf-colour", "nan-tensor"])
def test_predictor_refuses_nan_and_infinite_pixels(predictor, image):
    with pytest.raises(ValueError, match="NaN or infinite pixel value"):
        predictor(image)


def test_predictor_refuses_huge_images_before_allocating(predictor, tmp_path):
    huge = np.broadcast_to(np.zeros((1, 1), np.uint8), (10_000, 10_000))  # 100 megapixels, no memory
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"10000 x 10000 pixels .* limit of 40 megapixels.*max_pixels=100000000"):
            predictor(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # bytes: nothing was converted

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png_bytes())
    with pytest.raises(ValueError, match=r"bomb\.png' of 20000 x 20000 pixels"):
        predictor(bomb)


def test_predictor_pixel_limit_is_changeable():
    small = Predictor("default", max_pixels=32 * 32)
    assert set(small(np.zeros((32, 32), np.uint8))) == {"keypoints", "scores", "descriptors"}
    with pytest.raises(ValueError, match=r"max_pixels=1056"):
        small(np.zeros((32, 33), np.uint8))
    with pytest.raises(ValueError, match="max_pixels must be a positive"):
        Predictor("default", max_pixels=0)
