"""``data.yaml``: where a detection data set lives, in which format, with which class names.

detkd's own layout::

    format: coco                 # coco | voc | yolo
    names: [circle, triangle]    # class names; label k = names[k] (optional for coco)
    train: {annotations: train.json, images: train}
    val:   {annotations: val.json, images: val}
    unlabeled: [more_photos]     # optional image folders for label-free distillation
    class_map: {Alive: Tree, Dead: Tree}   # optional: read these labels as these classes

``class_map`` reads a data set labelled with other (finer) classes as the classes of ``names``:
each key is a label as the annotation files name it (COCO category name, VOC ``<name>``; for
YOLO, a class id of the label files), each value a class of ``names``, and several keys may map
to one class (``names: [Tree]`` with the map above reads ``Alive`` and ``Dead`` boxes as one
class ``Tree``). Labels that are not keys keep their own name (YOLO: their id). With
``class_map``, ``names`` is required and lists the classes after mapping.

Each split is one source or a list of sources. A source is, per format:

* ``coco``: ``{annotations: file.json, images: folder}``, or just ``file.json`` (images beside it);
* ``voc``: a folder of ``.xml`` files (or VOCdevkit year folder / ``ImageSets/Main/x.txt`` split
  file), or ``{annotations: ..., images: folder}``;
* ``yolo``: an images folder (labels in the matching ``labels`` folder), or
  ``{images: folder, labels: folder}``.

An Ultralytics/YOLO ``data.yaml`` (``path``, ``train``, ``val``, ``test``, ``names`` as a list or
``{id: name}``, ``nc``) loads as it is; ``format`` defaults to ``yolo``. Relative paths are relative
to ``path`` when given, and ``path`` itself (like every path) to the YAML file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from detkd.config import ConfigError, load_config_file
from detkd.data.detection.coco import read_coco
from detkd.data.detection.records import DetectionSet
from detkd.data.detection.voc import read_voc
from detkd.data.detection.yolo import read_yolo

FORMATS = ("coco", "voc", "yolo")
TOP_KEYS = ("format", "path", "names", "nc", "train", "val", "test", "unlabeled", "download", "class_map")
SOURCE_KEYS = {"coco": ("annotations", "images"), "voc": ("annotations", "images"), "yolo": ("images", "labels")}


@dataclass
class DataSource:
    """One annotated source of a split (paths already resolved)."""

    annotations: Path | None = None  # coco: JSON file; voc: XML folder / split file
    images: Path | None = None  # image folder (coco, voc: optional; yolo: required)
    labels: Path | None = None  # yolo label folder (default: derived from ``images``)


@dataclass
class DataConfig:
    """A parsed ``data.yaml``."""

    file: Path
    format: str
    names: list[str] | None
    train: list[DataSource] = field(default_factory=list)
    val: list[DataSource] = field(default_factory=list)
    test: list[DataSource] = field(default_factory=list)
    unlabeled: list[Path] = field(default_factory=list)
    class_map: dict[Any, str] = field(default_factory=dict)  # annotation label (YOLO: file id) -> class of names

    def read(self, split: str, skip_bad: bool = False, class_names: list[str] | None = None) -> DetectionSet:
        """The :class:`DetectionSet` of ``split`` (``train``, ``val`` or ``test``); see :func:`read_split`."""
        return read_split(self, split, skip_bad, class_names)


def _names(value: Any, file: Path) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        keys = sorted(value)
        if keys != list(range(len(keys))):
            raise ConfigError(f"{file}: 'names' as a mapping needs the ids 0..K-1, got {keys}")
        value = [value[k] for k in keys]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{file}: 'names' must be a non-empty list of class names, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{file}: 'names' has duplicates: {value}")
    return list(value)


def _class_map(value: Any, names: list[str] | None, fmt: str, file: Path) -> dict[Any, str]:
    """``class_map`` of data.yaml, checked: every value a class of ``names``; YOLO keys are class ids."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{file}: 'class_map' must be a mapping {{label in the annotations: class in 'names'}}, "
                          f"e.g. {{Alive: Tree, Dead: Tree}}; got {value!r}")
    if names is None:
        raise ConfigError(f"{file}: 'class_map' needs 'names', the classes after mapping (e.g. names: [Tree])")
    mapping: dict[Any, str] = {}
    for key, target in value.items():
        if fmt == "yolo":
            if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
                raise ConfigError(f"{file}: class_map key {key!r}: YOLO label files hold class ids, so the keys of "
                                  f"'class_map' are ids (e.g. {{0: Tree, 1: Tree}})")
            key = int(key)
        elif key is None or str(key) == "":
            raise ConfigError(f"{file}: class_map has an empty key; the keys are labels as the annotations name them")
        else:
            key = str(key)
        if not isinstance(target, str) or target not in names:
            raise ConfigError(f"{file}: class_map.{key}: maps to {target!r}, which is not in 'names' {names}; "
                              "map it onto one of them, or add the class to 'names'")
        mapping[key] = target
    return mapping


def _source(fmt: str, value: Any, root: Path, file: Path, where: str) -> DataSource:
    if isinstance(value, (str, Path)):
        path = root / value
        if fmt == "yolo":
            return DataSource(images=path)
        return DataSource(annotations=path)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{file}: '{where}' must be a path or a mapping, got {value!r}")
    valid = SOURCE_KEYS[fmt]
    for key in value:
        if key not in valid:
            raise ConfigError(f"{file}: unknown key '{key}' in '{where}'; valid keys for format {fmt}: {', '.join(valid)}")
    paths = {key: root / value[key] for key in valid if value.get(key) is not None}
    if fmt == "yolo" and "images" not in paths:
        raise ConfigError(f"{file}: '{where}' needs 'images' (a folder of images)")
    if fmt != "yolo" and "annotations" not in paths:
        raise ConfigError(f"{file}: '{where}' needs 'annotations' (a {'JSON file' if fmt == 'coco' else 'folder of XML files'})")
    return DataSource(**paths)


def load_data_config(path: str | Path) -> DataConfig:
    """Parse a ``data.yaml`` (see the module docstring); nothing is read from the data yet.

    Raises:
        ConfigError: unknown key (named), unknown format, missing ``train``, bad ``names`` or ``nc``,
            a ``class_map`` without ``names`` or mapping onto a class not in ``names`` (the key named).
    """
    file = Path(path)
    raw = load_config_file(file)
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{file}: unknown key '{key}'; valid keys: {', '.join(TOP_KEYS)}")
    fmt = str(raw.get("format", "yolo")).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"{file}: format '{raw.get('format')}' is not one of {', '.join(FORMATS)}")
    root = file.parent / raw["path"] if raw.get("path") else file.parent
    names = _names(raw.get("names"), file)
    if fmt in ("voc", "yolo") and names is None:
        raise ConfigError(f"{file}: format {fmt} needs 'names' (the class names, in label order)")
    if raw.get("nc") is not None and names is not None and int(raw["nc"]) != len(names):
        raise ConfigError(f"{file}: nc is {raw['nc']} but 'names' lists {len(names)} classes")
    if raw.get("train") is None:
        raise ConfigError(f"{file}: 'train' is missing")
    class_map = _class_map(raw.get("class_map"), names, fmt, file)

    def split(key: str) -> list[DataSource]:
        value = raw.get(key)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        return [_source(fmt, v, root, file, key if len(values) == 1 else f"{key}[{i}]") for i, v in enumerate(values)]

    unlabeled = raw.get("unlabeled") or []
    unlabeled = [unlabeled] if isinstance(unlabeled, (str, Path)) else unlabeled
    if not isinstance(unlabeled, list) or not all(isinstance(u, (str, Path)) for u in unlabeled):
        raise ConfigError(f"{file}: 'unlabeled' must be a folder or a list of folders, got {raw.get('unlabeled')!r}")
    return DataConfig(
        file=file, format=fmt, names=names, train=split("train"), val=split("val"), test=split("test"),
        unlabeled=[root / u for u in unlabeled], class_map=class_map,
    )


def _read_source(config: DataConfig, source: DataSource, names: list[str] | None, skip_bad: bool) -> DetectionSet:
    class_map = config.class_map or None
    if config.format == "coco":
        return read_coco(source.annotations, source.images, names, skip_bad, class_map)  # type: ignore[arg-type]
    if config.format == "voc":
        return read_voc(source.annotations, names, source.images, skip_bad, class_map)  # type: ignore[arg-type]
    return read_yolo(source.images, source.labels, names or [], skip_bad, class_map)  # type: ignore[arg-type]


def read_split(
    config: DataConfig, split: str, skip_bad: bool = False, class_names: list[str] | None = None
) -> DetectionSet:
    """Read every source of ``split`` into one :class:`DetectionSet`.

    Class order: ``names`` of the file; else ``class_names`` (pass the training set's names when
    reading ``val`` of a COCO file without ``names``); else the first source's categories, by id.
    Later sources are mapped onto it by name.

    Raises:
        ConfigError: the split is not in the file.
        AnnotationError: bad annotations (see the readers).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got '{split}'")
    sources: list[DataSource] = getattr(config, split)
    if not sources:
        raise ConfigError(f"{config.file}: no '{split}' split")
    names = config.names or class_names
    sets = []
    for source in sources:
        part = _read_source(config, source, names, skip_bad)
        names = part.class_names
        sets.append(part)
    return concat_sets(sets)


def concat_sets(sets: list[DetectionSet]) -> DetectionSet:
    """One set of the records of ``sets`` (which must share their class names)."""
    first = sets[0]
    for other in sets[1:]:
        if other.class_names != first.class_names:
            raise ValueError(f"Cannot join {other.source} ({other.class_names}) with {first.source} ({first.class_names})")
    if len(sets) == 1:
        return first
    return DetectionSet(
        records=[r for s in sets for r in s.records],
        class_names=list(first.class_names),
        source=" + ".join(s.source for s in sets),
        problems=[p for s in sets for p in s.problems],
    )


def class_counts(dataset: DetectionSet) -> np.ndarray:
    """``(K,)`` number of boxes per class (ignored boxes included)."""
    counts = np.zeros(dataset.num_classes, np.int64)
    for record in dataset.records:
        np.add.at(counts, record.labels, 1)
    return counts
