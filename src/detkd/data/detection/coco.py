"""COCO JSON detection annotations -> :class:`DetectionSet`.

COCO boxes are ``[x, y, width, height]`` in continuous pixel coordinates with the image
spanning ``[0, W] x [0, H]``; they become ``xyxy`` as ``(x, y, x + width, y + height)``, no
shift. ``iscrowd`` boxes are kept with ``ignore=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from detkd.data.detection.records import (
    AnnotationChecker,
    AnnotationError,
    DetectionSet,
    record_from_boxes,
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_json(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise AnnotationError(f"{json_path}: COCO annotation file does not exist. Check the path in data.yaml.")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(
            f"{json_path}: not valid JSON ({err}). Fix the file or export it again from your labelling tool."
        ) from err
    if not isinstance(data, dict):
        raise AnnotationError(f"{json_path}: a COCO file holds a JSON object at the top, got {type(data).__name__}.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(
                f"{json_path}: the '{key}' list is missing. A COCO detection file needs 'images', "
                f"'annotations' and 'categories' lists."
            )
    return data


def _category_labels(
    json_path: Path, categories: list[Any], class_names: Sequence[str] | None, class_map: Mapping[str, str] | None = None
) -> tuple[dict[int, int | None], list[str], dict[int, str]]:
    """category id -> label (``None`` for a category outside ``class_names``), the class names, id -> name.

    A category named in ``class_map`` takes the label of the class it maps to.
    """
    names_by_id: dict[int, str] = {}
    id_by_name: dict[str, int] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise AnnotationError(f"{json_path}: categories[{i}]: needs an integer 'id' and a 'name', got {cat!r}.")
        if cat["id"] in names_by_id:
            raise AnnotationError(f"{json_path}: categories[{i}]: category id {cat['id']} appears twice.")
        if cat["name"] in id_by_name:
            raise AnnotationError(
                f"{json_path}: categories[{i}]: category name '{cat['name']}' appears twice (ids "
                f"{id_by_name[cat['name']]} and {cat['id']}), so its label is ambiguous. Give every category a "
                f"unique name, or merge the two (one category, its id in the annotations of both)."
            )
        names_by_id[cat["id"]] = cat["name"]
        id_by_name[cat["name"]] = cat["id"]
    mapping = dict(class_map or {})
    if class_names is None:  # categories by id; mapped ones merge into the first of their class
        class_names = list(dict.fromkeys(mapping.get(names_by_id[c], names_by_id[c]) for c in sorted(names_by_id)))
    index = {name: k for k, name in enumerate(class_names)}
    return {cid: index.get(mapping.get(name, name)) for cid, name in names_by_id.items()}, list(class_names), names_by_id


def read_coco(
    json_path: str | Path,
    image_root: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    skip_bad: bool = False,
    class_map: Mapping[str, str] | None = None,
) -> DetectionSet:
    """Read a COCO detection JSON file.

    Args:
        json_path: the annotation file (``instances_*.json`` layout: ``images``, ``annotations``,
            ``categories``).
        image_root: folder that each image's ``file_name`` is relative to; default: the JSON's folder.
        class_names: the class list to map category *names* onto (label = position in the list);
            an annotation whose category is not in it is an error ("unknown class name"). Default:
            all categories, ordered by id.
        skip_bad: skip bad annotations and images (counted, one warning) instead of raising. The
            warning also names the images left without boxes because every box of theirs was skipped.
        class_map: ``{category name: class name}``; the annotations of a category named here are read
            as that class (several categories may map to one). Other categories keep their own name.

    Returns:
        A :class:`DetectionSet`; images without annotations are kept (they hold no objects).

    Raises:
        AnnotationError: malformed JSON; a missing, empty, unreadable or too large image file, or
            one whose size is not the declared ``width`` / ``height``; a duplicate image or annotation
            id; a bad box or category; a category id or name that appears twice (message names the
            file and the image or annotation id).
    """
    json_path = Path(json_path)
    root = Path(image_root) if image_root is not None else json_path.parent
    data = _load_json(json_path)
    check = AnnotationChecker(json_path, skip_bad)
    label_of, names, names_by_id = _category_labels(json_path, data["categories"], class_names, class_map)

    images: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            check.fail(json_path, f"images[{i}]", "image entry without 'id' or 'file_name'",
                       f"Got {img!r}; every image needs an 'id' and a 'file_name'.")
            continue
        entry = f"image id {img['id']} ('{img['file_name']}')"
        if img["id"] in images:
            check.fail(json_path, entry, "duplicate image id", "Give every image a unique 'id'.")
            continue
        path = root / img["file_name"]
        if not path.is_file():
            check.fail(json_path, entry, "image file does not exist",
                       f"Looked for '{path}'; fix 'file_name' or the images folder (image_root / data.yaml 'images').")
            continue
        width, height = img.get("width"), img.get("height")
        declared = (width, height) if _is_number(width) and _is_number(height) and width > 0 and height > 0 else None
        size = check.image(path, json_path, entry, declared)
        if size is None:
            continue
        width, height = size
        images[img["id"]] = {"path": path, "width": width, "height": height, "boxes": [], "labels": [], "ignore": [],
                             "annotated": 0}

    seen_ids: set[Any] = set()
    for i, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        entry = f"annotation id {ann_id} (annotations[{i}])"
        if not isinstance(ann, dict) or "image_id" not in ann:
            check.fail(json_path, entry, "annotation without 'image_id'", f"Got {ann!r}.")
            continue
        if isinstance(ann.get("id"), (int, str)):
            if ann["id"] in seen_ids:
                check.fail(json_path, entry, "duplicate annotation id",
                           "Give every annotation a unique 'id' (evaluation tools match annotations by id).")
                continue
            seen_ids.add(ann["id"])
        image = images.get(ann["image_id"])
        if image is None:
            if not any(isinstance(img, dict) and img.get("id") == ann["image_id"] for img in data["images"]):
                check.fail(json_path, entry, "annotation of an unknown image",
                           f"image_id {ann['image_id']} is not in 'images'; fix the id or add the image.")
            continue  # its image was skipped already (and counted)
        image["annotated"] += 1
        entry += f" of image '{Path(image['path']).name}'"
        category = ann.get("category_id")
        if category not in label_of:
            check.fail(json_path, entry, "unknown category id",
                       f"category_id {category!r} is not in 'categories' (ids: {sorted(names_by_id)}).")
            continue
        label = label_of[category]
        if label is None:
            mapped = (class_map or {}).get(names_by_id[category])
            check.fail(json_path, entry, "unknown class name",
                       f"Category '{names_by_id[category]}'{f' (mapped to {mapped!r})' if mapped else ''} is not in "
                       f"the class names {list(names)}; add it to 'names' in data.yaml (or map it onto one of them "
                       f"with 'class_map') or remove the annotation.")
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            check.fail(json_path, entry, "bbox is not [x, y, width, height]", f"Got bbox={bbox!r}.")
            continue
        x, y, w, h = (float(v) for v in bbox)
        box = check.box([x, y, x + w, y + h], image["width"], image["height"], json_path, entry + f" bbox {list(bbox)} (xywh)")
        if box is None:
            continue
        image["boxes"].append(box)
        image["labels"].append(label)
        image["ignore"].append(bool(ann.get("iscrowd", 0)))

    records = [
        record_from_boxes(img["path"], img["width"], img["height"], img["boxes"], img["labels"], img["ignore"], image_id)
        for image_id, img in images.items()
    ]
    for img in images.values():
        check.count_boxes(Path(img["path"]).name, img["annotated"], len(img["boxes"]))
    if not records:
        raise AnnotationError(f"{json_path}: no usable image (the 'images' list is empty or every image was skipped).")
    problems = check.finish()
    return DetectionSet(records, names, source=f"COCO {json_path}", problems=problems)


def detection_set_to_coco(dataset: DetectionSet, image_root: str | Path | None = None) -> dict[str, Any]:
    """The COCO JSON dict of a set whose records are whole image files (``file_name`` relative to ``image_root``).

    Boxes become ``[x, y, w, h]``; ``area`` is the box area; ``ignore`` boxes get ``iscrowd: 1``.
    """
    root = Path(image_root) if image_root is not None else None
    images, annotations = [], []
    for image_id, record in enumerate(dataset.records, start=1):
        if record.path is None or record.window is not None:
            raise ValueError(f"{record.name}: only whole image files can be written as COCO (write tiles to files first)")
        name = str(record.path.relative_to(root)) if root is not None else record.path.name
        images.append({"id": image_id, "file_name": name, "width": record.width, "height": record.height})
        for box, label, ignore in zip(record.boxes.tolist(), record.labels.tolist(), record.ignore.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(ignore),
            })
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(dataset.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
