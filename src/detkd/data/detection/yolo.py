"""YOLO txt detection labels -> :class:`DetectionSet`.

One ``.txt`` per image, one line per object: ``class cx cy w h`` with the centre and size
normalised by the image width and height (``0..1``). Pixels: ``x1 = (cx - w / 2) * W``,
``x2 = (cx + w / 2) * W`` (same for y). The image size comes from the file header; the pixels
are not decoded. An image without a label file holds no objects (the YOLO convention); a label
file without an image is counted and reported (its boxes are not used).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from detkd.data.detection.records import (
    AnnotationChecker,
    AnnotationError,
    DetectionSet,
    record_from_boxes,
)
from detkd.data.images import list_images

#: Text files a labelling tool may leave among the label files that belong to no image.
NOT_LABEL_FILES = ("classes.txt",)


def default_labels_dir(images_dir: Path) -> Path:
    """``.../images/...`` -> ``.../labels/...`` (the last ``images`` component), else the images folder itself."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir


def _label_lines(label_path: Path, check: AnnotationChecker) -> list[str] | None:
    """The lines of a label file (``[]`` when there is none), or ``None`` when it is not text and ``skip_bad`` is set."""
    if not label_path.is_file():
        return []
    try:
        return label_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        check.fail(label_path, "file", "label file is not UTF-8 text",
                   f"Byte {err.start} cannot be decoded ({err.reason}); a YOLO label file holds text lines "
                   f"'class cx cy w h'. Replace or remove it.")
    except OSError as err:
        check.fail(label_path, "file", "label file cannot be read", f"{err}. Fix its permissions or remove it.")
    return None


def _parse_labels(
    lines: list[str], label_path: Path, width: int, height: int, num_classes: int, check: AnnotationChecker,
    id_map: Mapping[int, int] | None = None,
) -> tuple[list[np.ndarray], list[int], int]:
    """``class cx cy w h`` lines of a ``width x height`` pixel image -> ``xyxy`` pixel boxes, class ids (bad lines
    checked; a file id in ``id_map`` becomes the label it maps to) and the number of box lines."""
    boxes, labels = [], []
    id_map = id_map or {}
    annotated = 0
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        entry = f"line {number} '{line.strip()}'"
        annotated += 1
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
        mapped = id_map.get(int(cls)) if math.isfinite(cls) and cls == int(cls) else None
        if mapped is None and (not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes):
            check.fail(label_path, entry, "class id out of range",
                       f"Class id {tokens[0]} is not in 0..{num_classes - 1} ({num_classes} names in data.yaml)"
                       + (f" nor a key of class_map ({sorted(id_map)})." if id_map else "."))
            continue
        box = check.box(
            [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height],
            width, height, label_path, entry + f" (image {width} x {height} px)",
        )
        if box is None:
            continue
        boxes.append(box)
        labels.append(int(cls) if mapped is None else mapped)
    return boxes, labels, annotated


def _count_orphan_labels(labels_root: Path, used: set[Path], images_dir: Path, check: AnnotationChecker) -> None:
    """Count each ``.txt`` label file under ``labels_root`` that no image of ``images_dir`` uses."""
    if not labels_root.is_dir():
        return
    for label_path in sorted(labels_root.rglob("*.txt")):
        if label_path not in used and label_path.name not in NOT_LABEL_FILES:
            check.skip(label_path, "file", "label file without an image",
                       f"No image named '{label_path.stem}.*' in {images_dir / label_path.parent.relative_to(labels_root)}; "
                       f"its boxes are not used. Add the image or remove the label file.")


def read_yolo(
    images_dir: str | Path,
    labels_dir: str | Path | None = None,
    class_names: Sequence[str] = (),
    skip_bad: bool = False,
    class_map: Mapping[int, str] | None = None,
) -> DetectionSet:
    """Read a folder of images and their YOLO label files.

    Every image is checked from its header (missing, empty, not an image, too large); a label
    file without an image is counted in ``problems`` and the summary warning, never an error.

    Args:
        images_dir: folder of images (searched recursively).
        labels_dir: folder of ``.txt`` files mirroring ``images_dir``'s layout; default: the same path
            with its last ``images`` component replaced by ``labels`` (``data/images/train`` ->
            ``data/labels/train``), or ``images_dir`` itself when there is none.
        class_names: the names of class ids ``0 .. K-1`` (YOLO files hold ids only).
        skip_bad: skip bad lines and images (counted, one warning) instead of raising. The warning
            also names the images left without boxes because every line of theirs was skipped.
        class_map: ``{class id in the label files: class name}``; lines of an id given here are read
            as that class of ``class_names`` (several ids may map to one). Other ids keep their label.

    Raises:
        AnnotationError: a bad image, a label file that is not text, a malformed line, a class id
            outside ``0 .. K-1``, a box outside the image (names the file and the line number).
    """
    images_dir = Path(images_dir)
    if not class_names:
        raise AnnotationError(f"{images_dir}: YOLO labels hold class ids only; give the class names ('names' in data.yaml).")
    if not images_dir.is_dir():
        raise AnnotationError(f"{images_dir}: YOLO images folder does not exist. Check the path in data.yaml.")
    labels_root = Path(labels_dir) if labels_dir is not None else default_labels_dir(images_dir)
    check = AnnotationChecker(images_dir, skip_bad)
    id_map = {}
    for file_id, name in (class_map or {}).items():
        if name not in class_names:
            raise AnnotationError(f"{images_dir}: class_map maps id {file_id} to '{name}', which is not in the class "
                                  f"names {list(class_names)}.")
        id_map[int(file_id)] = list(class_names).index(name)
    records, used_labels = [], set()
    for path in list_images(images_dir):
        label_path = labels_root / path.relative_to(images_dir).with_suffix(".txt")
        used_labels.add(label_path)
        size = check.image(path, path, "image")
        lines = _label_lines(label_path, check) if size is not None else None
        if size is None or lines is None:
            continue
        width, height = size
        boxes, labels, annotated = _parse_labels(lines, label_path, width, height, len(class_names), check, id_map)
        check.count_boxes(path.name, annotated, len(boxes))
        records.append(record_from_boxes(path, width, height, boxes, labels, [False] * len(boxes), path.stem))
    _count_orphan_labels(labels_root, used_labels, images_dir, check)
    if not records:
        raise AnnotationError(f"{images_dir}: no usable image (every image was skipped).")
    return DetectionSet(records, list(class_names), source=f"YOLO {images_dir}", problems=check.finish())
