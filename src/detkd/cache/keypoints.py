"""Teacher-output cache for key-point distillation: fixed augmented views, the teacher run once.

What is cached, and why only that: a training view is zoom -> crop -> homography ->
photometric noise of a photo, and the teacher sees the final pixels. Its outputs cannot be
carried through a new photometric change (the network is not linear), and warping cached
logits with a new homography would only approximate what the teacher says on the warped
image (it is not equivariant; 65-bin cells do not warp). So the cache holds the teacher's
outputs for ``views_per_image`` fixed views of each photo, each view drawn with a generator
seeded by ``(seed, view number, image content)``; training cycles through them (epoch ``e``
uses view ``e mod K``). The targets are then *exactly* what the online teacher gives on those
views, up to fp16 rounding; the price is that augmentation diversity is ``K`` views per photo
instead of a fresh one per sample. Everything after the view (batching, the student) is unchanged.

Stored per view (``H x W`` view, cells of 8 pixels): ``logits`` ``(65, H/8, W/8)`` float16 and
``descriptors`` ``(D, H/8, W/8)`` float16 or int8 (``round(127 x value)``; the teacher's
descriptors are unit vectors, so every component lies in ``[-1, 1]``); with a point sampling
(:class:`~detkd.distill.keypoints.PointSampling`), also ``points`` ``(N, 2)`` float32 pixels and
``point_descriptors`` ``(N, D)`` in the descriptors' encoding. The heatmap is not
stored: it is the softmax of the logits, recomputed on the device. Entries are keyed by the
image's content digest and view number; the cache folder is bound to the teacher's checksum
and every view setting (size, zoom, homography, photometric noise, seed), see
:mod:`detkd.cache.store`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detkd.cache.fingerprint import array_digest, file_digest, module_checksum
from detkd.cache.store import CacheBuildReport, CacheField, TeacherOutputCache
from detkd.cache.views import VIEW_MEMORY_BYTES, CachedViews
from detkd.data.keypoint_training import UnlabeledImageStream
from detkd.distill.keypoints import PointSampling
from detkd.models.keypoint_ops import CELL, logits_to_heatmap
from detkd.models.superpoint import SuperPoint

DESCRIPTOR_ENCODINGS = ("float16", "int8")
INT8_SCALE = 127.0  # int8 code of a descriptor component: round(127 * value)
#: Settings of the teacher that change its dense outputs but are not in its state dict.
_OUTPUT_CONF_KEYS = ("channels", "head_channels", "descriptor_dim", "batch_norm", "bn_eps", "encoder", "flat_threshold",
                     "flat_radius")


def keypoint_cache_fields(
    height: int, width: int, descriptor_dim: int, descriptors: str = "float16", points: PointSampling | None = None,
) -> list[CacheField]:
    """The arrays stored per view of ``height x width`` pixels (multiples of 8)."""
    if descriptors not in DESCRIPTOR_ENCODINGS:
        raise ValueError(f"descriptors must be one of {DESCRIPTOR_ENCODINGS}, got '{descriptors}'")
    if height % CELL or width % CELL:
        raise ValueError(f"View size must be a multiple of {CELL}, got {height}x{width}")
    cells = (height // CELL, width // CELL)
    fields = [
        CacheField("logits", (CELL * CELL + 1, *cells), "float16"),
        CacheField("descriptors", (descriptor_dim, *cells), descriptors),
    ]
    if points is not None and points.active:
        count = points.count(height, width)
        fields += [CacheField("points", (count, 2), "float32"),
                   CacheField("point_descriptors", (count, descriptor_dim), descriptors)]
    return fields


def encode_descriptors(descriptors: torch.Tensor, encoding: str) -> np.ndarray:
    """Unit descriptors (any shape) -> the stored array (float16, or int8 codes ``round(127 x)``)."""
    if encoding == "int8":
        return (descriptors.float() * INT8_SCALE).round().clamp(-127, 127).to(torch.int8).cpu().numpy()
    if encoding == "float16":
        return descriptors.to(torch.float16).cpu().numpy()
    raise ValueError(f"descriptors must be one of {DESCRIPTOR_ENCODINGS}, got '{encoding}'")


def decode_descriptors(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Stored descriptors (float16/float32, or int8 codes) -> float32, L2-normalised again along ``dim``."""
    values = codes.float() / INT8_SCALE if codes.dtype == torch.int8 else codes.float()
    return F.normalize(values, p=2, dim=dim)


def decode_teacher_outputs(
    logits: torch.Tensor, descriptors: torch.Tensor,
    points: torch.Tensor | None = None, point_descriptors: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Cached arrays -> the dict of :meth:`SuperPoint.forward` that the distillation loss reads.

    Args:
        logits: ``(B, 65, Hc, Wc)`` float16 (or float32).
        descriptors: ``(B, D, Hc, Wc)`` float16/float32, or int8 codes.
        points, point_descriptors: optional, ``(B, N, 2)`` pixels and ``(B, N, D)`` codes as ``descriptors``.

    Returns:
        ``logits`` float32, ``heatmap`` ``(B, 8 Hc, 8 Wc)`` float32 (softmax of the logits) and
        ``descriptors`` float32, L2-normalised again after the rounding; with points, also
        ``points`` float32 and ``point_descriptors`` float32 unit vectors.
    """
    if logits.dim() != 4 or logits.shape[1] != CELL * CELL + 1:
        raise ValueError(f"Cached logits must be (B, 65, Hc, Wc), got {tuple(logits.shape)}")
    if descriptors.dim() != 4 or descriptors.shape[0] != logits.shape[0] or descriptors.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"Cached descriptors {tuple(descriptors.shape)} do not match logits {tuple(logits.shape)}: "
            "expected (B, D, Hc, Wc) with the same B, Hc, Wc"
        )
    logits = logits.float()
    out = {"logits": logits, "heatmap": logits_to_heatmap(logits), "descriptors": decode_descriptors(descriptors, 1)}
    if (points is None) != (point_descriptors is None):
        raise ValueError("Cached points and point descriptors come together: got one without the other")
    if points is not None and point_descriptors is not None:
        if points.dim() != 3 or points.shape[-1] != 2 or point_descriptors.shape[:2] != points.shape[:2]:
            raise ValueError(f"Cached points {tuple(points.shape)} and point descriptors "
                             f"{tuple(point_descriptors.shape)} must be (B, N, 2) and (B, N, D)")
        out["points"] = points.float()
        out["point_descriptors"] = decode_descriptors(point_descriptors, -1)
    return out


def teacher_checksum(teacher: nn.Module) -> str:
    """Checksum of the teacher's weights and the settings that shape its dense outputs.

    A teacher of another family (:mod:`detkd.models.keypoint_teachers`) adds its ``family`` name
    (``disk``, ``aliked-n16`` ...), so two families never share a cache; a SuperPoint's checksum is unchanged.
    A ``point_scale`` other than 1 (:meth:`~detkd.models.keypoint_teachers.base.KeypointTeacher.set_point_scale`)
    is part of it too.
    """
    settings = {k: teacher.conf.get(k) for k in _OUTPUT_CONF_KEYS}
    if "family" in teacher.conf:
        settings["family"] = teacher.conf["family"]
    if getattr(teacher, "point_scale", 1.0) != 1.0:  # absent at 1, so that caches built before it stay valid
        settings["point_scale"] = float(teacher.point_scale)
    return module_checksum(teacher, settings)


def view_settings(stream: UnlabeledImageStream) -> dict[str, Any]:
    """Every setting that decides the pixels of a view (and so the teacher's outputs)."""
    return {
        "crop": asdict(stream.crop),
        "photometric": asdict(stream.photometric) if stream.photometric is not None else None,
        "seed": stream.seed,
    }


def open_keypoint_cache(
    folder: str | Path, teacher: SuperPoint, stream: UnlabeledImageStream, descriptors: str = "float16",
    create: bool = True, points: PointSampling | None = None,
) -> TeacherOutputCache:
    """The cache folder for this teacher, these view settings and this point sampling (an error if it holds others).

    Without an active point sampling the fingerprint is what it was before points existed, so
    such caches stay readable."""
    fingerprint: dict[str, Any] = {
        "kind": "superpoint-dense-outputs",
        "teacher": teacher_checksum(teacher),
        "views": view_settings(stream),
    }
    if points is not None and points.active:
        fingerprint["points"] = asdict(points)
    fields = keypoint_cache_fields(stream.crop.height, stream.crop.width, teacher.conf["descriptor_dim"], descriptors,
                                   points)
    return TeacherOutputCache(folder, fingerprint, fields, create=create)


class CachedTeacherViews(CachedViews):
    """``K`` fixed views per image with the teacher's cached outputs, as an endless stream.

    Sample ``k`` is view ``(k // N) mod K`` of image ``source_index(k)`` (``N`` images, one
    shuffled pass per epoch): ``{"image": (1, H, W) float32, "teacher_logits": (65, H/8, W/8)
    float16, "teacher_descriptors": (D, H/8, W/8) float16 | int8}``, plus ``teacher_points``
    ``(N, 2)`` and ``teacher_point_descriptors`` ``(N, D)`` when the cache holds points.

    Args:
        stream: the training images and view settings (its ``seed`` is used too).
        cache: an opened cache (:func:`open_keypoint_cache`).
        views_per_image: ``K``.
        memory_bytes: views kept in memory once made (:class:`~detkd.cache.views.CachedViews`).
    """

    cache_command = "detkd keypoints cache-teacher"

    def __init__(self, stream: UnlabeledImageStream, cache: TeacherOutputCache, views_per_image: int,
                 memory_bytes: int = VIEW_MEMORY_BYTES) -> None:
        super().__init__(stream, cache, views_per_image, memory_bytes)

    def content_digest(self, item: int) -> str:
        """Content digest of image ``item`` (its file's bytes, or the array's values)."""
        source = self.stream.sources[item]
        return array_digest(source) if isinstance(source, np.ndarray) else file_digest(source)

    def image_name(self, item: int) -> str:
        source = self.stream.sources[item]
        return f"array #{item}" if isinstance(source, np.ndarray) else str(source)


def build_keypoint_teacher_cache(
    teacher: SuperPoint,
    stream: UnlabeledImageStream,
    folder: str | Path,
    views_per_image: int = 4,
    descriptors: str = "float16",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    points: PointSampling | None = None,
) -> CacheBuildReport:
    """Run the teacher on every view the cache lacks and store its outputs.

    Views already cached (same image content, view number, teacher and settings) are reused;
    the teacher runs in inference mode (no autograd graph). One build per folder at a time.
    With an active ``points`` sampling, the teacher's descriptors at those points are stored too.

    Raises:
        TeacherCacheError: the folder holds a cache of another teacher or other view settings.
    """
    began = time.perf_counter()
    views = CachedTeacherViews(stream, open_keypoint_cache(folder, teacher, stream, descriptors, points=points),
                               views_per_image)
    with_points = points is not None and points.active

    def encode(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        arrays = {"logits": out["logits"].to(torch.float16).cpu().numpy(),
                  "descriptors": encode_descriptors(out["descriptors"], descriptors)}
        if with_points:
            arrays["points"] = out["points"].float().cpu().numpy()
            arrays["point_descriptors"] = encode_descriptors(out["point_descriptors"], descriptors)
        return arrays

    return views.fill(teacher, encode, batch_size, device, num_workers, progress, started=began,
                      forward_options={"select_points": points} if with_points else None)


def cached_teacher_stream(
    stream: UnlabeledImageStream, folder: str | Path, teacher: SuperPoint, views_per_image: int,
    descriptors: str = "float16", points: PointSampling | None = None,
) -> CachedTeacherViews:
    """The training stream that reads the teacher's outputs from ``folder`` (which must exist).

    Raises:
        TeacherCacheError: no cache there, or one of another teacher or other view settings.
    """
    return CachedTeacherViews(stream, open_keypoint_cache(folder, teacher, stream, descriptors, create=False, points=points),
                              views_per_image)
