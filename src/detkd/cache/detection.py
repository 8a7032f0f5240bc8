"""Teacher outputs of one-stage detectors (RetinaNet, FCOS): cache entries, and the cached training stream.

A detector's raw outputs on an image of a fixed size have fixed shapes, so they fit the
generic store (:mod:`detkd.cache.store`) as one entry per image view:

* ``features_<l>`` ``(C, H_l, W_l)`` float16, one field per FPN level (hint, PKD, CWD, GID's
  feature term read them);
* ``cls_logits`` ``(N, K)`` and ``centerness`` ``(N,)`` (FCOS only) float32: GID picks its
  instances by ranking these scores, and float16 rounding changes near-ties and so the picked
  instances (seen on an FCOS teacher: 3% off in the relation loss; float32 matches);
* ``box_regression`` ``(N, 4)`` float16 and ``boxes`` ``(N, 4)`` float32 (decoded boxes in
  pixels; float16 would round them by up to 0.25 px at 512 px).

Size: dense scores dominate for many classes, e.g. RetinaNet with 80 classes at 512x512 has
49,104 anchors: 15.7 MB of scores per image. Storing only GID's top candidates would be far
smaller but ties the cache to one method's settings; not done.

What is the same for every image of that size (family, strides, anchors per location, the
anchors themselves) is kept once, in a :class:`DetectorLayout`. Faster R-CNN is refused: its
RoI-head outputs depend on a variable number of proposals.

Which views are cached, and why only those: a training view is a random zoom / crop / pad /
flip of an image with colour jitter (:class:`~detkd.data.detection.DetectionStream`), and the
teacher sees the final pixels; its outputs cannot follow a new crop or colour change. So the
cache holds the teacher's outputs for ``views_per_image`` (``K``) fixed views of each image,
each drawn with a generator seeded by ``(seed, view number, image content)``, and
:class:`CachedDetectorViews` cycles through them (epoch ``e`` uses view ``e mod K``). A sample
is the view's pixels and its boxes (computed from the record with the same generator, padded as
the stream pads them) plus the cached fields: the geometric augmentation of the student's image
and boxes is exactly the one the teacher saw. **Augmentation is restricted to those K views per
image** instead of a new one per sample. Entries are keyed by the image's content digest (file
bytes or in-memory pixels, and the tile window) and the view number; the folder is bound to the
teacher's checksum (weights and detector options), its family, the class list and every view
setting (size, zoom / flips, colour jitter, seed). Another teacher or other settings is an
error naming each difference, never a silent reuse.

Status: encoding, decoding, building (:func:`build_detector_teacher_cache`, ``detkd detect
cache-teacher``) and training from the cache (``detkd detect distill --teacher-cache``: the
task takes the teacher's outputs from the batch, :func:`cached_teacher_fields`) exist and are
tested (loss equality with the online teacher for GID and PKD, refusal of a changed teacher or
view settings, a damaged folder, Faster R-CNN). ``benchmarks/throughput.py`` measures the
cached path.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from detkd.cache.fingerprint import array_digest, file_digest, module_checksum
from detkd.cache.store import CacheBuildReport, CacheField, TeacherCacheError, TeacherOutputCache
from detkd.cache.views import TEACHER_PREFIX, VIEW_MEMORY_BYTES, CachedViews
from detkd.data.detection.stream import DetectionStream
from detkd.models.detection.outputs import DetectorOutputs

if TYPE_CHECKING:
    from detkd.models.detection import DetectorAdapter

CACHEABLE_FAMILIES = ("retinanet", "fcos")


@dataclass
class DetectorLayout:
    """What every cached image of one size shares: ``anchors`` ``(N, 4)`` xyxy pixels, and the rest."""

    family: str
    strides: list[int]
    image_size: tuple[int, int]
    anchors_per_location: int
    anchors: Tensor
    level_sizes: list[tuple[int, int]]
    channels: int
    num_classes: int

    @classmethod
    def from_outputs(cls, outputs: DetectorOutputs) -> "DetectorLayout":
        if outputs.family not in CACHEABLE_FAMILIES:
            raise ValueError(
                f"Cannot cache '{outputs.family}' teacher outputs: only {', '.join(CACHEABLE_FAMILIES)} have outputs "
                "of a fixed size per image (Faster R-CNN's depend on its proposals); distil online instead"
            )
        return cls(outputs.family, list(outputs.strides), tuple(outputs.image_size), outputs.anchors_per_location,
                   outputs.anchors.detach(), outputs.level_sizes, outputs.channels, outputs.num_classes)

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])


def detector_cache_fields(layout: DetectorLayout) -> list[CacheField]:
    """The arrays stored per image view."""
    fields = [CacheField(f"features_{i}", (layout.channels, h, w), "float16") for i, (h, w) in enumerate(layout.level_sizes)]
    fields += [
        CacheField("cls_logits", (layout.num_anchors, layout.num_classes), "float32"),
        CacheField("box_regression", (layout.num_anchors, 4), "float16"),
        CacheField("boxes", (layout.num_anchors, 4), "float32"),
    ]
    if layout.family == "fcos":
        fields.append(CacheField("centerness", (layout.num_anchors,), "float32"))
    return fields


def encode_detector_outputs(outputs: DetectorOutputs) -> dict[str, np.ndarray]:
    """``(B, ...)`` arrays of every field, ready for :meth:`detkd.cache.store.CacheWriter.add`."""
    layout = DetectorLayout.from_outputs(outputs)

    def half(t: Tensor) -> np.ndarray:
        return t.detach().to(torch.float16).cpu().numpy()

    def single(t: Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    arrays = {f"features_{i}": half(f) for i, f in enumerate(outputs.features)}
    arrays["cls_logits"] = single(outputs.cls_logits)
    arrays["box_regression"] = half(outputs.box_regression)
    arrays["boxes"] = single(outputs.boxes)
    if layout.family == "fcos":
        assert outputs.centerness is not None
        arrays["centerness"] = single(outputs.centerness)
    return arrays


def decode_detector_outputs(arrays: dict[str, Tensor], layout: DetectorLayout) -> DetectorOutputs:
    """Batched cached arrays (``(B, ...)`` tensors, any device) -> :class:`DetectorOutputs` in float32.

    Raises:
        ValueError: a field is missing or its shape does not match ``layout``.
    """
    expected = {f.name: f.shape for f in detector_cache_fields(layout)}
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ValueError(f"Cached detector outputs lack {missing}")
    for name, shape in expected.items():
        if tuple(arrays[name].shape[1:]) != shape:
            raise ValueError(f"Cached '{name}' is {tuple(arrays[name].shape)}, expected (B, {', '.join(map(str, shape))})")
    device = arrays["cls_logits"].device
    return DetectorOutputs(
        family=layout.family,
        features=[arrays[f"features_{i}"].float() for i in range(len(layout.level_sizes))],
        strides=list(layout.strides),
        image_size=tuple(layout.image_size),
        anchors_per_location=layout.anchors_per_location,
        anchors=layout.anchors.to(device),
        cls_logits=arrays["cls_logits"].float(),
        box_regression=arrays["box_regression"].float(),
        boxes=arrays["boxes"].float(),
        centerness=arrays["centerness"].float() if layout.family == "fcos" else None,
    )


def cached_teacher_fields(batch: Mapping[str, Any]) -> dict[str, Tensor]:
    """The cached teacher arrays a batch carries (``teacher_<field>`` keys), by field name; empty if none."""
    return {key[len(TEACHER_PREFIX):]: value for key, value in batch.items() if key.startswith(TEACHER_PREFIX)}


# ------------------------------------------------------------------------------------ cache folders
def detector_checksum(teacher: "DetectorAdapter") -> str:
    """Checksum of the teacher's weights and of the options that shape its outputs (anchor sizes, ...)."""
    config = {k: v for k, v in teacher.config.items() if k != "class_names"}  # classes: in the fingerprint
    return module_checksum(teacher, {"family": teacher.family, "config": config})


def detection_view_settings(stream: DetectionStream) -> dict[str, Any]:
    """Every setting that decides the pixels of a view: size, zoom / crop / flips, colour jitter, seed."""
    return {
        "height": stream.height,
        "width": stream.width,
        "view": asdict(stream.view),
        "colour": asdict(stream.colour) if stream.colour is not None else None,
        "seed": stream.seed,
    }


def check_cacheable(teacher: "DetectorAdapter", folder: str | Path) -> None:
    """Refuse a teacher whose outputs do not have a fixed size per image (Faster R-CNN).

    Raises:
        TeacherCacheError: naming the teacher, the folder and the fix.
    """
    if teacher.family not in CACHEABLE_FAMILIES:
        raise TeacherCacheError(
            f"Cannot cache the outputs of the teacher {teacher.name} in '{folder}': it is a {teacher.family} "
            f"detector, and only {' and '.join(CACHEABLE_FAMILIES)} outputs have a fixed size per image "
            "(Faster R-CNN's depend on its proposals). Distil it online: leave teacher_cache.folder null "
            "(no --teacher-cache)."
        )


def detector_teacher_layout(teacher: "DetectorAdapter", height: int, width: int) -> DetectorLayout:
    """The layout of ``teacher``'s outputs on ``height x width`` images (one forward pass on a blank image)."""
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            outputs = teacher(torch.zeros(1, 3, height, width, device=device))
    finally:
        teacher.train(was_training)
    layout = DetectorLayout.from_outputs(outputs)
    layout.anchors = layout.anchors.cpu().clone()
    return layout


def open_detector_cache(
    folder: str | Path,
    teacher: "DetectorAdapter",
    stream: DetectionStream,
    class_names: Sequence[str],
    create: bool = True,
) -> tuple[TeacherOutputCache, DetectorLayout]:
    """The cache folder for this teacher, class list and view settings, and the layout of its entries.

    Raises:
        TeacherCacheError: a Faster R-CNN teacher; the folder holds a cache of another teacher,
            classes or view settings (each difference named); ``create=False`` and no cache there.
    """
    check_cacheable(teacher, folder)
    layout = detector_teacher_layout(teacher, stream.height, stream.width)
    fingerprint = {
        "kind": "one-stage-detector-outputs",
        "teacher": detector_checksum(teacher),
        "family": teacher.family,
        "classes": [str(name) for name in class_names],
        "views": detection_view_settings(stream),
    }
    return TeacherOutputCache(folder, fingerprint, detector_cache_fields(layout), create=create), layout


def record_digest(record: Any) -> str:
    """Content digest of what a :class:`~detkd.data.detection.DetectionRecord` shows: 32 hex characters.

    The file's bytes (or the in-memory pixels), and the window for a tile; renaming a file keeps it.
    """
    base = array_digest(record.image) if record.image is not None else file_digest(record.path)
    if record.window is None:
        return base
    return hashlib.blake2b(f"{base}|window {tuple(record.window)}".encode(), digest_size=16).hexdigest()


# ------------------------------------------------------------------------------------ cached stream
class CachedDetectorViews(CachedViews):
    """``K`` fixed views per image with the teacher's cached outputs, as an endless stream.

    Sample ``k`` is view ``(k // N) mod K`` of image ``source_index(k)`` (``N`` images, one
    shuffled pass per epoch): the stream's sample for that view (``image`` ``(3, H, W)``
    float32, and for a labelled stream the padded ``boxes`` ``(max_boxes, 4)``, ``labels``,
    ``num_boxes``) plus ``teacher_<field>`` for every cached field (shapes of
    :func:`detector_cache_fields`: ``teacher_features_<l>`` ``(C, H_l, W_l)`` float16,
    ``teacher_cls_logits`` ``(N, K)`` float32, ...).

    Args:
        stream: the training images and view settings (its ``seed`` is used too).
        cache: an opened cache (:func:`open_detector_cache`).
        layout: what the entries share (:func:`open_detector_cache` returns it); the task decodes with it.
        views_per_image: ``K``.
        memory_bytes: views kept in memory once made (:class:`~detkd.cache.views.CachedViews`).
    """

    cache_command = "detkd detect cache-teacher"

    def __init__(
        self, stream: DetectionStream, cache: TeacherOutputCache, layout: DetectorLayout, views_per_image: int,
        memory_bytes: int = VIEW_MEMORY_BYTES,
    ) -> None:
        super().__init__(stream, cache, views_per_image, memory_bytes)
        self.layout = layout

    def content_digest(self, item: int) -> str:
        return record_digest(self.stream.records[item])

    def image_name(self, item: int) -> str:
        """The file (and tile window) of image ``item``, or its id for in-memory images, for messages."""
        record = self.stream.records[item]
        if record.path is None:
            return record.name
        return f"{record.path}" + (f" window {record.window}" if record.window is not None else "")


def build_detector_teacher_cache(
    teacher: "DetectorAdapter",
    stream: DetectionStream,
    folder: str | Path,
    class_names: Sequence[str],
    views_per_image: int = 4,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> CacheBuildReport:
    """Run the teacher on every view the cache lacks and store its outputs; then check the folder.

    Views already cached (same image content, view number, teacher, classes and settings) are
    reused; the teacher runs in eval mode under ``torch.inference_mode`` (no autograd graph).
    One build per folder at a time.

    Raises:
        TeacherCacheError: a Faster R-CNN teacher; the folder holds a cache of another teacher or
            other settings; it is damaged (a truncated shard, missing keys).
    """
    began = time.perf_counter()
    cache, layout = open_detector_cache(folder, teacher, stream, class_names)
    views = CachedDetectorViews(stream, cache, layout, views_per_image)
    return views.fill(teacher, encode_detector_outputs, batch_size, device, num_workers, progress, started=began)


def cached_detector_stream(
    stream: DetectionStream,
    folder: str | Path,
    teacher: "DetectorAdapter",
    class_names: Sequence[str],
    views_per_image: int,
) -> CachedDetectorViews:
    """The training stream that reads the teacher's outputs from ``folder`` (which must exist).

    Raises:
        TeacherCacheError: no cache there, or one of another teacher, classes or view settings.
    """
    cache, layout = open_detector_cache(folder, teacher, stream, class_names, create=False)
    return CachedDetectorViews(stream, cache, layout, views_per_image)
