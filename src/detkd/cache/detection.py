"""Teacher outputs of one-stage detectors (RetinaNet, FCOS) as fixed-size cache entries.

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

Status: the encoding, decoding and a loss-equality test exist, and
``benchmarks/throughput.py`` measures training from these entries; the detection task does
not read a cache yet (its stream and ``detect distill`` have no cache switch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from detkd.cache.store import CacheField
from detkd.models.detection.outputs import DetectorOutputs

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
