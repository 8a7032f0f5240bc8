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
descriptors are unit vectors, so every component lies in ``[-1, 1]``). The heatmap is not
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
from detkd.cache.views import CachedViews
from detkd.data.keypoint_training import UnlabeledImageStream
from detkd.models.superpoint import CELL, SuperPoint, logits_to_heatmap

DESCRIPTOR_ENCODINGS = ("float16", "int8")
INT8_SCALE = 127.0  # int8 code of a descriptor component: round(127 * value)
#: Settings of the teacher that change its dense outputs but are not in its state dict.
_OUTPUT_CONF_KEYS = ("channels", "head_channels", "descriptor_dim", "batch_norm", "bn_eps", "encoder", "flat_threshold",
                     "flat_radius")


def keypoint_cache_fields(height: int, width: int, descriptor_dim: int, descriptors: str = "float16") -> list[CacheField]:
    """The arrays stored per view of ``height x width`` pixels (multiples of 8)."""
    if descriptors not in DESCRIPTOR_ENCODINGS:
        raise ValueError(f"descriptors must be one of {DESCRIPTOR_ENCODINGS}, got '{descriptors}'")
    if height % CELL or width % CELL:
        raise ValueError(f"View size must be a multiple of {CELL}, got {height}x{width}")
    cells = (height // CELL, width // CELL)
    return [
        CacheField("logits", (CELL * CELL + 1, *cells), "float16"),
        CacheField("descriptors", (descriptor_dim, *cells), descriptors),
    ]


def encode_descriptors(descriptors: torch.Tensor, encoding: str) -> np.ndarray:
    """``(B, D, Hc, Wc)`` unit descriptors -> the stored array (float16, or int8 codes ``round(127 x)``)."""
    if encoding == "int8":
        return (descriptors.float() * INT8_SCALE).round().clamp(-127, 127).to(torch.int8).cpu().numpy()
    if encoding == "float16":
        return descriptors.to(torch.float16).cpu().numpy()
    raise ValueError(f"descriptors must be one of {DESCRIPTOR_ENCODINGS}, got '{encoding}'")


def decode_teacher_outputs(logits: torch.Tensor, descriptors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cached arrays -> the dict of :meth:`SuperPoint.forward` that the distillation loss reads.

    Args:
        logits: ``(B, 65, Hc, Wc)`` float16 (or float32).
        descriptors: ``(B, D, Hc, Wc)`` float16/float32, or int8 codes.

    Returns:
        ``logits`` float32, ``heatmap`` ``(B, 8 Hc, 8 Wc)`` float32 (softmax of the logits) and
        ``descriptors`` float32, L2-normalised again after the rounding.
    """
    if logits.dim() != 4 or logits.shape[1] != CELL * CELL + 1:
        raise ValueError(f"Cached logits must be (B, 65, Hc, Wc), got {tuple(logits.shape)}")
    if descriptors.dim() != 4 or descriptors.shape[0] != logits.shape[0] or descriptors.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"Cached descriptors {tuple(descriptors.shape)} do not match logits {tuple(logits.shape)}: "
            "expected (B, D, Hc, Wc) with the same B, Hc, Wc"
        )
    logits = logits.float()
    desc = descriptors.float() / INT8_SCALE if descriptors.dtype == torch.int8 else descriptors.float()
    return {"logits": logits, "heatmap": logits_to_heatmap(logits), "descriptors": F.normalize(desc, p=2, dim=1)}


def teacher_checksum(teacher: nn.Module) -> str:
    """Checksum of the teacher's weights and the settings that shape its dense outputs.

    A teacher of another family (:mod:`detkd.models.keypoint_teachers`) adds its ``family`` name
    (``disk``, ``aliked-n16`` ...), so two families never share a cache; a SuperPoint's checksum is unchanged.
    """
    settings = {k: teacher.conf.get(k) for k in _OUTPUT_CONF_KEYS}
    if "family" in teacher.conf:
        settings["family"] = teacher.conf["family"]
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
    create: bool = True,
) -> TeacherOutputCache:
    """The cache folder for this teacher and these view settings (an error if it holds others)."""
    fingerprint = {
        "kind": "superpoint-dense-outputs",
        "teacher": teacher_checksum(teacher),
        "views": view_settings(stream),
    }
    fields = keypoint_cache_fields(stream.crop.height, stream.crop.width, teacher.conf["descriptor_dim"], descriptors)
    return TeacherOutputCache(folder, fingerprint, fields, create=create)


class CachedTeacherViews(CachedViews):
    """``K`` fixed views per image with the teacher's cached outputs, as an endless stream.

    Sample ``k`` is view ``(k // N) mod K`` of image ``source_index(k)`` (``N`` images, one
    shuffled pass per epoch): ``{"image": (1, H, W) float32, "teacher_logits": (65, H/8, W/8)
    float16, "teacher_descriptors": (D, H/8, W/8) float16 | int8}``.

    Args:
        stream: the training images and view settings (its ``seed`` is used too).
        cache: an opened cache (:func:`open_keypoint_cache`).
        views_per_image: ``K``.
    """

    cache_command = "detkd keypoints cache-teacher"

    def __init__(self, stream: UnlabeledImageStream, cache: TeacherOutputCache, views_per_image: int) -> None:
        super().__init__(stream, cache, views_per_image)

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
) -> CacheBuildReport:
    """Run the teacher on every view the cache lacks and store its outputs.

    Views already cached (same image content, view number, teacher and settings) are reused;
    the teacher runs in inference mode (no autograd graph). One build per folder at a time.

    Raises:
        TeacherCacheError: the folder holds a cache of another teacher or other view settings.
    """
    began = time.perf_counter()
    views = CachedTeacherViews(stream, open_keypoint_cache(folder, teacher, stream, descriptors), views_per_image)

    def encode(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {"logits": out["logits"].to(torch.float16).cpu().numpy(),
                "descriptors": encode_descriptors(out["descriptors"], descriptors)}

    return views.fill(teacher, encode, batch_size, device, num_workers, progress, started=began)


def cached_teacher_stream(
    stream: UnlabeledImageStream, folder: str | Path, teacher: SuperPoint, views_per_image: int,
    descriptors: str = "float16",
) -> CachedTeacherViews:
    """The training stream that reads the teacher's outputs from ``folder`` (which must exist).

    Raises:
        TeacherCacheError: no cache there, or one of another teacher or other view settings.
    """
    return CachedTeacherViews(stream, open_keypoint_cache(folder, teacher, stream, descriptors, create=False),
                              views_per_image)
