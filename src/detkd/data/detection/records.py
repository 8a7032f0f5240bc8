"""One record type for a labelled image, the set that holds them, and annotation checks.

Box convention (all of :mod:`detkd.data.detection`): ``xyxy`` float pixels, continuous
coordinates in which the image spans ``[0, W] x [0, H]`` and pixel column ``j`` covers
``[j, j + 1)`` (the COCO / torchvision convention). A box around the single top-left pixel is
``(0, 0, 1, 1)``. Labels are class indices ``0 .. K-1`` into ``DetectionSet.class_names``.

Every reader checks every annotation with :class:`AnnotationChecker`: a bad entry raises an
:class:`AnnotationError` whose message names the file, the entry, the reason and the fix; with
``skip_bad=True`` the entry (or the whole image, when the image itself is unusable) is left
out, counted, and one summary warning says how many were skipped and why.

Every image file is checked from its header when the annotations are read
(:meth:`AnnotationChecker.image`): missing, empty (0 bytes), not an image, more than
:data:`detkd.data.images.MAX_IMAGE_PIXELS` pixels, or another size than the annotation declares.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from detkd.data.images import DataWarning, ImageReadError, check_image_file, read_image

#: Boxes may overshoot the image by this many pixels; they are clipped. Larger overshoots are errors.
EDGE_TOLERANCE_PX = 1.0


class AnnotationError(ValueError):
    """A bad annotation or image entry; the message names the file, the entry, the reason and the fix."""


@dataclass
class DetectionRecord:
    """One labelled image (or a crop window of one).

    Attributes:
        path: the image file; ``None`` for an image held in memory (``image``).
        width, height: size in pixels of what this record shows (the window, when there is one).
        boxes: ``(M, 4)`` float32 ``xyxy`` pixels in this record's own frame (``[0, width] x [0, height]``).
        labels: ``(M,)`` int64 class indices ``0 .. K-1``.
        ignore: ``(M,)`` bool; ``True`` for boxes that are neither to be found nor to be punished
            (COCO ``iscrowd``, VOC ``difficult``). Evaluation treats them as COCO crowd regions.
        window: ``(x0, y0, x1, y1)`` integer pixel window of the source image this record shows,
            or ``None`` for the whole image (tiles set it).
        image: ``(H, W, 3)`` uint8 RGB pixels for in-memory images (synthetic sets), else ``None``.
        image_id: the source's own id for the image (COCO id, file stem, ...), for messages.
    """

    path: Path | None
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore: np.ndarray | None = None
    window: tuple[int, int, int, int] | None = None
    image: np.ndarray | None = None
    image_id: str | int | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{self.name}: {len(self.boxes)} boxes but {len(self.labels)} labels")
        if self.ignore is None:
            self.ignore = np.zeros(len(self.boxes), bool)
        self.ignore = np.asarray(self.ignore, bool).reshape(-1)
        if len(self.ignore) != len(self.boxes):
            raise ValueError(f"{self.name}: {len(self.boxes)} boxes but {len(self.ignore)} ignore flags")
        if self.path is None and self.image is None:
            raise ValueError("A DetectionRecord needs a path or in-memory image pixels")
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def name(self) -> str:
        """A short human name: file (and window) or image id."""
        base = self.path.name if self.path is not None else f"image {self.image_id}"
        if self.window is not None:
            base += "[x{}:{}, y{}:{}]".format(self.window[0], self.window[2], self.window[1], self.window[3])
        return base

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    def without_ignored(self) -> "DetectionRecord":
        """The same record with the ``ignore`` boxes left out."""
        keep = ~self.ignore
        return replace(self, boxes=self.boxes[keep], labels=self.labels[keep], ignore=self.ignore[keep])


@dataclass
class DetectionSet:
    """Labelled images, their class names, and where they came from.

    Attributes:
        records: one :class:`DetectionRecord` per image (or tile).
        class_names: ``K`` names; label ``k`` is ``class_names[k]``.
        source: a description of the origin (file and format), for reports.
        problems: one line per entry skipped with ``skip_bad=True`` (empty when all was well).
    """

    records: list[DetectionRecord]
    class_names: list[str]
    source: str = ""
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DetectionRecord:
        return self.records[index]

    def __iter__(self) -> Iterator[DetectionRecord]:
        return iter(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_boxes(self) -> int:
        return sum(r.num_boxes for r in self.records)

    def summary(self) -> str:
        """One line: images, boxes per class, skipped entries."""
        counts = Counter(int(label) for r in self.records for label in r.labels)
        per_class = ", ".join(f"{name} {counts.get(k, 0)}" for k, name in enumerate(self.class_names))
        text = f"{len(self.records)} image(s), {self.num_boxes} box(es) ({per_class}) from {self.source}"
        if self.problems:
            text += f"; {len(self.problems)} bad entr(y/ies) skipped"
        return text


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header only (the pixels are not decoded).

    Raises:
        AnnotationError: the file is missing, empty, not an image or too large
            (see :func:`detkd.data.images.check_image_file`).
    """
    try:
        return check_image_file(path)
    except ImageReadError as err:
        raise AnnotationError(f"{err.path}: {err.reason}. {err.fix}") from err


class AnnotationChecker:
    """Checks annotation entries; raises on the first bad one, or skips and counts with ``skip_bad``.

    Args:
        source: what is being read (a file or folder), used in the summary warning.
        skip_bad: skip bad entries instead of raising.
        tolerance: pixels a box may lie outside the image before it is an error (it is clipped).
    """

    def __init__(self, source: str | Path, skip_bad: bool = False, tolerance: float = EDGE_TOLERANCE_PX) -> None:
        self.source = str(source)
        self.skip_bad = skip_bad
        self.tolerance = tolerance
        self.problems: list[str] = []
        self.reasons: Counter[str] = Counter()
        self.emptied: list[str] = []  # images that had boxes, all of them skipped

    def fail(self, file: str | Path, entry: str, reason: str, fix: str) -> None:
        """Report a bad entry: raise :class:`AnnotationError`, or record it when skipping.

        ``reason`` should be short and generic (it is counted in the summary); details go in ``entry``.
        """
        if not self.skip_bad:
            raise AnnotationError(f"{file}: {entry}: {reason}. {fix} (or pass skip_bad=True / --skip-bad to skip bad entries)")
        self.skip(file, entry, reason, fix)

    def skip(self, file: str | Path, entry: str, reason: str, fix: str) -> None:
        """Count an entry that is left out, with or without ``skip_bad`` (for what is never fatal)."""
        self.problems.append(f"{file}: {entry}: {reason}. {fix}")
        self.reasons[reason.split(" (")[0]] += 1

    def image(
        self, path: Path, file: str | Path, entry: str, declared: tuple[float, float] | None = None
    ) -> tuple[int, int] | None:
        """Check an image file from its header (:func:`detkd.data.images.check_image_file`).

        Args:
            path: the image file.
            file, entry: the annotation file and the entry that names the image, for the message.
            declared: ``(width, height)`` in pixels the annotation gives, compared with the file's.

        Returns:
            ``(width, height)`` in pixels, or ``None`` when the image is bad and ``skip_bad`` is set.
        """
        try:
            width, height = check_image_file(path)
        except ImageReadError as err:
            self.fail(file, entry, err.reason, err.fix)
            return None
        if declared is not None and (float(declared[0]), float(declared[1])) != (width, height):
            self.fail(
                file, entry, "declared image size differs from the image file",
                f"The annotation says {declared[0]:g} x {declared[1]:g} pixels but '{path}' is {width} x {height}; "
                f"fix the size in the annotation (boxes must be in the pixels of the stored image) or the image.",
            )
            return None
        return width, height

    def box(
        self, values: Sequence[float], width: float, height: float, file: str | Path, entry: str
    ) -> np.ndarray | None:
        """Check one ``xyxy`` pixel box against a ``width x height`` image.

        Returns the box (overshoots up to ``tolerance`` clipped to the image), or ``None`` when it
        is bad and ``skip_bad`` is set.
        """
        x1, y1, x2, y2 = (float(v) for v in values)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            self.fail(file, entry, "box has a NaN or infinite coordinate", f"Got {values!r}; give finite pixel coordinates.")
            return None
        if x2 <= x1 or y2 <= y1:
            self.fail(
                file, entry, "box has no area (x2 <= x1 or y2 <= y1)",
                f"Got x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g} (pixels); check the corner order and the box format.",
            )
            return None
        tol = self.tolerance
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            self.fail(
                file, entry, "box lies outside the image",
                f"Box x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g} but the image is {width:g} x {height:g} pixels "
                f"(more than {tol:g} px beyond the edge); check the image size and the box format.",
            )
            return None
        box = np.array([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)], np.float32)
        if box[2] <= box[0] or box[3] <= box[1]:
            self.fail(
                file, entry, "box has no area inside the image",
                f"Box x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g} lies on the edge of the {width:g} x {height:g} image.",
            )
            return None
        return box

    def count_boxes(self, image: str, annotated: int, kept: int) -> None:
        """Note an image that had ``annotated`` boxes of which ``kept`` are left; none left is reported by :meth:`finish`."""
        if annotated > 0 and kept == 0:
            self.emptied.append(image)

    def finish(self) -> list[str]:
        """Warn once about everything skipped (and the images left without boxes); return the problem lines."""
        if self.problems:
            why = ", ".join(f"{n} x {reason}" for reason, n in self.reasons.most_common())
            warnings.warn(
                f"Skipped {len(self.problems)} bad annotation entr(y/ies) in {self.source}: {why}. "
                f"{self.emptied_text()}First: {self.problems[0]}",
                DataWarning,
                stacklevel=3,
            )
        return list(self.problems)

    def emptied_text(self, shown: int = 3) -> str:
        """The sentence about images whose every box was skipped (they would train as background), or ``''``."""
        if not self.emptied:
            return ""
        names = ", ".join(self.emptied[:shown])
        more = f" and {len(self.emptied) - shown} more" if len(self.emptied) > shown else ""
        return (
            f"{len(self.emptied)} image(s) left without boxes, every box of theirs skipped ({names}{more}): they stay "
            "in the set as background (no objects); fix their annotations (or the class names) if they hold objects. "
        )


def record_from_boxes(
    path: Path | None, width: int, height: int, boxes: list[np.ndarray], labels: list[int],
    ignore: list[bool], image_id: str | int | None = None,
) -> DetectionRecord:
    """Assemble a record from per-box lists (empty lists give an image without objects)."""
    return DetectionRecord(
        path=path,
        width=int(width),
        height=int(height),
        boxes=np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
        labels=np.asarray(labels, np.int64),
        ignore=np.asarray(ignore, bool),
        image_id=image_id,
    )


class ImageCache:
    """Decoded pixels of records, kept as ``uint8`` per source file so tiles of one photo decode it once.

    Args:
        enabled: keep decoded files in memory; ``False`` decodes on every call.
        max_files: keep at most this many files, dropping the least recently used (``None``: all,
            for sets that fit in memory; 1 or 2 suffice for reading the tiles of one photo in order).
    """

    def __init__(self, enabled: bool = True, max_files: int | None = None) -> None:
        self.enabled = enabled
        self.max_files = max_files
        self._files: dict[Path, np.ndarray] = {}

    def _decode(self, path: Path) -> np.ndarray:
        if path in self._files:
            self._files[path] = self._files.pop(path)  # most recently used goes last
            return self._files[path]
        try:
            pixels = (read_image(path, grey=False) * 255.0).round().astype(np.uint8)
        except ImageReadError as err:
            raise AnnotationError(str(err)) from err
        if self.enabled and self.max_files != 0:
            self._files[path] = pixels
            if self.max_files is not None and len(self._files) > self.max_files:
                del self._files[next(iter(self._files))]
        return pixels

    def pixels(self, record: DetectionRecord) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB pixels of what ``record`` shows.

        Raises:
            AnnotationError: the file cannot be decoded, or its size disagrees with the annotation.
        """
        full = record.image if record.image is not None else self._decode(record.path)  # type: ignore[arg-type]
        if full.ndim == 2:
            full = np.repeat(full[..., None], 3, axis=-1)
        if record.window is None:
            view = full
        else:
            x0, y0, x1, y1 = record.window
            if x1 > full.shape[1] or y1 > full.shape[0]:
                raise AnnotationError(
                    f"{record.path}: window {record.window} lies outside the {full.shape[1]} x {full.shape[0]} image"
                )
            view = full[y0:y1, x0:x1]
        if view.shape[:2] != (record.height, record.width):
            raise AnnotationError(
                f"{record.path or record.name}: the image is {view.shape[1]} x {view.shape[0]} pixels but its "
                f"annotation says {record.width} x {record.height}. Fix width/height in the annotation file "
                f"(boxes must be in the pixels of the stored image)."
            )
        return view


def load_record_image(record: DetectionRecord) -> np.ndarray:
    """``(H, W, 3)`` float32 RGB in ``[0, 1]`` of one record (its window, for tiles)."""
    return ImageCache(enabled=False).pixels(record).astype(np.float32) / 255.0
