"""YOLO txt detection labels -> :class:`DetectionSet`.

One ``.txt`` per image, one line per object: ``class cx cy w h`` with the centre and size
normalised by the image width and height (``0..1``). Pixels: ``x1 = (cx - w / 2) * W``,
``x2 = (cx + w / 2) * W`` (same for y). The image size comes from the file header; the pixels
are not decoded. An image without a label file holds no objects (the YOLO convention).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from detkd.data.detection.records import (
    AnnotationChecker,
    AnnotationError,
    DetectionSet,
    image_size,
    record_from_boxes,
)
from detkd.data.images import list_images


def default_labels_dir(images_dir: Path) -> Path:
    """``.../images/...`` -> ``.../labels/...`` (the last ``images`` component), else the images folder itself."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir


def read_yolo(
    images_dir: str | Path,
    labels_dir: str | Path | None = None,
    class_names: Sequence[str] = (),
    skip_bad: bool = False,
) -> DetectionSet:
    """Read a folder of images and their YOLO label files.

    Args:
        images_dir: folder of images (searched recursively).
        labels_dir: folder of ``.txt`` files mirroring ``images_dir``'s layout; default: the same path
            with its last ``images`` component replaced by ``labels`` (``data/images/train`` ->
            ``data/labels/train``), or ``images_dir`` itself when there is none.
        class_names: the names of class ids ``0 .. K-1`` (YOLO files hold ids only).
        skip_bad: skip bad lines and images (counted, one warning) instead of raising.

    Raises:
        AnnotationError: a malformed line, a class id outside ``0 .. K-1``, a box outside the image
            (names the label file and the line number).
    """
    images_dir = Path(images_dir)
    if not class_names:
        raise AnnotationError(f"{images_dir}: YOLO labels hold class ids only; give the class names ('names' in data.yaml).")
    if not images_dir.is_dir():
        raise AnnotationError(f"{images_dir}: YOLO images folder does not exist. Check the path in data.yaml.")
    labels_root = Path(labels_dir) if labels_dir is not None else default_labels_dir(images_dir)
    check = AnnotationChecker(images_dir, skip_bad)
    num_classes = len(class_names)
    records = []
    for path in list_images(images_dir):
        label_path = labels_root / path.relative_to(images_dir).with_suffix(".txt")
        try:
            width, height = image_size(path)
        except AnnotationError as err:
            check.fail(path, "image", "image cannot be read", str(err))
            continue
        boxes, labels = [], []
        lines = label_path.read_text().splitlines() if label_path.is_file() else []
        for number, line in enumerate(lines, start=1):
            tokens = line.split()
            if not tokens:
                continue
            entry = f"line {number} '{line.strip()}'"
            if len(tokens) != 5:
                check.fail(label_path, entry, "line is not 'class cx cy w h'",
                           f"Expected 5 values, got {len(tokens)} (polygon/segment labels are not read).")
                continue
            try:
                values = [float(t) for t in tokens]
            except ValueError:
                check.fail(label_path, entry, "line holds a non-number", "Every value must be a number.")
                continue
            cls, cx, cy, w, h = values
            if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
                check.fail(label_path, entry, "class id out of range",
                           f"Class id {tokens[0]} is not in 0..{num_classes - 1} ({num_classes} names in data.yaml).")
                continue
            box = check.box(
                [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height],
                width, height, label_path, entry + f" (image {width} x {height} px)",
            )
            if box is None:
                continue
            boxes.append(box)
            labels.append(int(cls))
        records.append(record_from_boxes(path, width, height, boxes, labels, [False] * len(boxes), path.stem))
    if not records:
        raise AnnotationError(f"{images_dir}: no usable image (every image was skipped).")
    return DetectionSet(records, list(class_names), source=f"YOLO {images_dir}", problems=check.finish())
