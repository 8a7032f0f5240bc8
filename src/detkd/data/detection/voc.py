"""Pascal VOC XML detection annotations -> :class:`DetectionSet`.

VOC ``bndbox`` values are 1-based, inclusive pixel indices: ``xmin = 1`` is the first
column and ``xmax = W`` the last. In detkd's continuous convention (image spans ``[0, W]``)
the box is therefore ``(xmin - 1, ymin - 1, xmax, ymax)``: the top-left moves by one pixel,
the bottom-right does not. ``difficult`` objects are kept with ``ignore=True``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from detkd.data.detection.records import (
    AnnotationChecker,
    AnnotationError,
    DetectionRecord,
    DetectionSet,
    record_from_boxes,
)
from detkd.data.images import IMAGE_EXTENSIONS


def voc_xml_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The annotation files of ``source``.

    ``source`` may be a list of ``.xml`` files, a folder of them (its ``Annotations/`` sub-folder
    when it has one, as in VOCdevkit), or a VOC split file (``ImageSets/Main/train.txt``: one id
    per line, annotations in ``Annotations/<id>.xml`` two levels up).
    """
    if not isinstance(source, (str, Path)):
        files = [Path(p) for p in source]
        if not files:
            raise AnnotationError("read_voc: the list of XML files is empty.")
        return files
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".txt":
        root = source.parents[2]
        ids = [line.split()[0] for line in source.read_text().splitlines() if line.strip()]
        return [root / "Annotations" / f"{i}.xml" for i in ids]
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise AnnotationError(f"{source}: VOC annotation folder does not exist. Check the path in data.yaml.")
    folder = source / "Annotations" if (source / "Annotations").is_dir() else source
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise AnnotationError(f"{folder}: no .xml annotation file in this folder.")
    return files


def _find_image(xml_path: Path, filename: str | None, image_root: Path | None) -> Path | None:
    folders = [image_root] if image_root is not None else [xml_path.parent, xml_path.parent.parent / "JPEGImages"]
    for folder in folders:
        if filename and (folder / filename).is_file():
            return folder / filename
        for ext in IMAGE_EXTENSIONS:  # the <filename> tag is often stale: try the XML's own stem
            for candidate in (folder / (xml_path.stem + ext), folder / (xml_path.stem + ext.upper())):
                if candidate.is_file():
                    return candidate
    return None


def _number(node: ET.Element | None, tag: str) -> float | None:
    child = node.find(tag) if node is not None else None
    if child is None or child.text is None:
        return None
    try:
        return float(child.text.strip())
    except ValueError:
        return None


def _declared_size(root: ET.Element) -> tuple[float, float] | None:
    """``(width, height)`` from ``<size>``, or ``None`` when it is missing or not positive (then the file's size is used)."""
    size = root.find("size")
    width, height = _number(size, "width"), _number(size, "height")
    if not width or not height or width <= 0 or height <= 0:
        return None
    return width, height


def _read_one(
    xml_path: Path, image_root: Path | None, class_index: dict[str, int] | None, check: AnnotationChecker,
    class_map: Mapping[str, str] | None = None,
) -> tuple[DetectionRecord, list[str]] | None:
    """One file -> (record with labels still as names' positions or -1 placeholders, its objects' class names).

    An object whose name is a key of ``class_map`` gets the class it maps to.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as err:
        check.fail(xml_path, "XML", f"malformed XML ({err})", "Fix the file or export it again from your labelling tool.")
        return None
    if root.tag != "annotation":
        check.fail(xml_path, f"root element <{root.tag}>", "XML root is not <annotation>",
                   "This is not a Pascal VOC annotation file; remove it from the folder or export it again as VOC XML.")
        return None
    filename = root.findtext("filename")
    path = _find_image(xml_path, filename.strip() if filename else None, image_root)
    if path is None:
        where = image_root or f"{xml_path.parent} or {xml_path.parent.parent / 'JPEGImages'}"
        check.fail(xml_path, f"<filename>{filename}</filename>", "image file does not exist",
                   f"Looked in {where}; fix <filename> or the images folder (data.yaml 'images').")
        return None
    size = check.image(path, xml_path, f"image '{path}'", _declared_size(root))
    if size is None:
        return None
    width, height = size
    boxes, names, ignore = [], [], []
    objects = root.findall("object")
    for i, obj in enumerate(objects):
        name = (obj.findtext("name") or "").strip()
        entry = f"object {i} ('{name}')"
        if not name:
            check.fail(xml_path, f"object {i}", "object without a <name>", "Give every <object> a class <name>.")
            continue
        mapped = (class_map or {}).get(name)
        if mapped is not None:
            name = mapped
        if class_index is not None and name not in class_index:
            check.fail(xml_path, entry, "unknown class name",
                       f"'{name}'{' (from class_map)' if mapped is not None else ''} is not in the class names "
                       f"{sorted(class_index, key=class_index.get)}; add it to 'names' in data.yaml (or map it onto "
                       f"one of them with 'class_map') or fix the label.")
            continue
        bndbox = obj.find("bndbox")
        values = [_number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if any(v is None for v in values):
            check.fail(xml_path, entry, "<bndbox> without numeric xmin/ymin/xmax/ymax",
                       "Every <object> needs a <bndbox> with four numbers.")
            continue
        xmin, ymin, xmax, ymax = values
        box = check.box([xmin - 1.0, ymin - 1.0, xmax, ymax], width, height, xml_path,
                        f"{entry} <bndbox> xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} (1-based)")
        if box is None:
            continue
        difficult = _number(obj, "difficult")
        boxes.append(box)
        names.append(name)
        ignore.append(bool(difficult))
    record = record_from_boxes(path, int(width), int(height), boxes, [0] * len(boxes), ignore, xml_path.stem)
    check.count_boxes(path.name, len(objects), len(boxes))
    return record, names


def read_voc(
    source: str | Path | Sequence[str | Path],
    class_names: Sequence[str] | None = None,
    image_root: str | Path | None = None,
    skip_bad: bool = False,
    class_map: Mapping[str, str] | None = None,
) -> DetectionSet:
    """Read Pascal VOC XML files.

    Coordinates: VOC's 1-based inclusive ``xmin..xmax`` becomes ``x1 = xmin - 1, x2 = xmax``
    (same for y) in detkd's continuous pixel frame, so a box ``xmin=1, xmax=W`` spans the whole
    width ``[0, W]``.

    Args:
        source: a folder of ``.xml`` files (or a VOCdevkit year folder with ``Annotations/``), a
            list of ``.xml`` files, or a split file ``ImageSets/Main/<split>.txt``.
        class_names: label order; an object with another name is an error ("unknown class name").
            Default: the sorted names found in the files.
        image_root: folder holding the images named by ``<filename>``; default: the XML's folder,
            then ``../JPEGImages``. A stale ``<filename>`` falls back to the XML's stem.
        skip_bad: skip bad objects and files (counted, one warning) instead of raising. The warning
            also names the images left without boxes because every object of theirs was skipped.
        class_map: ``{object name: class name}``; objects with a name given here are read as that
            class (several names may map to one). Other objects keep their own name.

    Raises:
        AnnotationError: malformed XML or another root than ``<annotation>``, a missing, empty,
            unreadable or too large image, a ``<size>`` other than the image's, a bad box, an unknown
            class (names the file and the object index).
    """
    files = voc_xml_files(source)
    check = AnnotationChecker(source if isinstance(source, (str, Path)) else f"{len(files)} VOC files", skip_bad)
    root = Path(image_root) if image_root is not None else None
    class_index = {name: k for k, name in enumerate(class_names)} if class_names is not None else None
    read = []
    for xml_path in files:
        if not xml_path.is_file():
            check.fail(xml_path, "file", "annotation file does not exist", "Fix the path or the split list.")
            continue
        result = _read_one(xml_path, root, class_index, check, class_map)
        if result is not None:
            read.append(result)
    if not read:
        raise AnnotationError(f"{source}: no usable VOC annotation file (every file was skipped).")
    names = list(class_names) if class_names is not None else sorted({n for _, found in read for n in found})
    index = {name: k for k, name in enumerate(names)}
    records = []
    for record, found in read:
        record.labels = np.asarray([index[n] for n in found], np.int64)
        records.append(record)
    return DetectionSet(records, names, source=f"VOC {source if isinstance(source, (str, Path)) else files[0].parent}",
                        problems=check.finish())
