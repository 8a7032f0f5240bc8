"""What every detection distillation loss shares: the base class, channel adapters, input checks.

A detection distiller is an ``nn.Module`` with

    forward(teacher: DetectorOutputs, student: DetectorOutputs, targets: list[dict] | None = None)
        -> dict[str, Tensor]

that returns named, already weighted loss terms, their sum under ``"distill"`` and, where
useful, diagnostics (scalar tensors without gradient that are *not* part of ``"distill"``).
The teacher's outputs are always detached here, whatever the caller did. Learnable adaptation
layers (student width -> teacher width) are submodules, so ``distiller.parameters()`` is what
the optimiser needs besides the student's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkd.config import ConfigError
from detkd.models.detection.outputs import DetectorOutputs

ADAPTERS = ("auto", "identity", "conv1x1", "conv3x3")


def make_adapter(kind: str, student_channels: int, teacher_channels: int) -> nn.Module:
    """A layer that maps student FPN maps ``(B, C_s, H, W)`` to the teacher's width ``C_t``.

    ``kind``: ``"identity"`` (widths must match), ``"conv1x1"``, ``"conv3x3"`` (padding 1, so the
    spatial size is kept) or ``"auto"`` (identity when the widths match, else a 1x1 conv).
    One adapter serves every FPN level, as the detection heads on top of an FPN are shared
    across levels too.
    """
    if kind not in ADAPTERS:
        raise ConfigError(f"Unknown adapter '{kind}'; valid: {', '.join(ADAPTERS)}")
    if kind == "auto":
        kind = "identity" if student_channels == teacher_channels else "conv1x1"
    if kind == "identity":
        if student_channels != teacher_channels:
            raise ValueError(
                f"Student FPN width {student_channels} != teacher FPN width {teacher_channels}: "
                "an identity adapter cannot map them; use adapter='conv1x1' or 'conv3x3' (or 'auto')"
            )
        return nn.Identity()
    size = 1 if kind == "conv1x1" else 3
    return nn.Conv2d(student_channels, teacher_channels, size, padding=size // 2)


class DetectionDistiller(nn.Module):
    """Base class: holds the widths it was built for and checks them at the door."""

    def __init__(self, teacher_channels: int, student_channels: int) -> None:
        super().__init__()
        if teacher_channels < 1 or student_channels < 1:
            raise ValueError(f"Channel widths must be >= 1, got teacher {teacher_channels}, student {student_channels}")
        self.teacher_channels = int(teacher_channels)
        self.student_channels = int(student_channels)

    def check_channels(self, teacher: DetectorOutputs, student: DetectorOutputs) -> None:
        """Raise when the FPN widths differ from the ones this distiller (and its adapter) was built for."""
        for who, outputs, expected in (
            ("teacher", teacher, self.teacher_channels),
            ("student", student, self.student_channels),
        ):
            if outputs.channels != expected:
                raise ValueError(
                    f"{type(self).__name__} was built for a {expected}-channel {who} FPN, but the {who}'s "
                    f"features are {tuple(outputs.features[0].shape)} ({outputs.channels} channels): build the "
                    f"distiller with {who}_channels={outputs.channels}"
                )

    def extra_repr(self) -> str:
        return f"teacher_channels={self.teacher_channels}, student_channels={self.student_channels}"


def check_same_images(teacher: DetectorOutputs, student: DetectorOutputs) -> None:
    """Teacher and student must have seen the same batch (same size, same image size)."""
    t_batch, s_batch = teacher.features[0].shape[0], student.features[0].shape[0]
    if t_batch != s_batch or tuple(teacher.image_size) != tuple(student.image_size):
        raise ValueError(
            f"Teacher outputs are for {t_batch} image(s) of {tuple(teacher.image_size)} pixels, student outputs "
            f"for {s_batch} of {tuple(student.image_size)}: run both models on the same batch"
        )


def check_same_pyramid(teacher: DetectorOutputs, student: DetectorOutputs) -> None:
    """Same number of FPN levels with the same spatial sizes (channels may differ)."""
    check_same_images(teacher, student)
    if len(teacher.features) != len(student.features):
        raise ValueError(
            f"Teacher has {len(teacher.features)} FPN levels (strides {teacher.strides}, sizes {teacher.level_sizes}), "
            f"student {len(student.features)} (strides {student.strides}, sizes {student.level_sizes}): "
            "build both with the same pyramid levels (e.g. the same family's FPN extra blocks)"
        )
    for level, (t_map, s_map) in enumerate(zip(teacher.features, student.features)):
        if t_map.shape[-2:] != s_map.shape[-2:]:
            raise ValueError(
                f"FPN level {level}: teacher map {tuple(t_map.shape)} and student map {tuple(s_map.shape)} differ "
                f"in spatial size (teacher strides {teacher.strides}, student {student.strides}): build both with "
                "the same strides and feed them the same images"
            )


def check_same_grid(teacher: DetectorOutputs, student: DetectorOutputs, why: str) -> None:
    """Same location grid (strides, level sizes, image size) and the same classes."""
    check_same_pyramid(teacher, student)
    if list(teacher.strides) != list(student.strides):
        raise ValueError(
            f"{why} needs teacher and student on one location grid, but the teacher's strides are {teacher.strides} "
            f"and the student's {student.strides}: build both with the same FPN strides"
        )
    if teacher.num_classes != student.num_classes:
        raise ValueError(
            f"{why} compares class scores, but the teacher ({teacher.family}) has {teacher.num_classes} score(s) "
            f"per anchor and the student ({student.family}) {student.num_classes}: use the same class list "
            "(a Faster R-CNN adapter exposes only its 1-class RPN objectness, so pair it with another Faster R-CNN)"
        )


def select_levels(num_levels: int, levels: Sequence[int] | None) -> list[int]:
    """Indices of the FPN levels to distil (all when ``levels`` is None); a clear error when out of range."""
    if levels is None:
        return list(range(num_levels))
    chosen = [int(level) for level in levels]
    bad = [level for level in chosen if not 0 <= level < num_levels]
    if bad or not chosen:
        raise ValueError(
            f"levels={list(levels)} is not a non-empty subset of the {num_levels} FPN levels 0..{num_levels - 1}"
        )
    return chosen


def unit_mean_square(features: Tensor, eps: float = 1e-12) -> Tensor:
    """``(B, C, H, W)`` maps divided by their root mean square over ``(C, H, W)``, per image.

    Every image's map then has mean square 1 (an all-zero map stays zero): one scalar per image
    and FPN level, so the level's overall scale goes and everything else (the relative strength
    of channels and positions, the sign, channel offsets) stays. Used by the hint and by GID's
    feature term, whose squared errors otherwise grow with the square of the activations: a
    trained RetinaNet teacher's FPN has an RMS of about 11 / 8 / 5 / 33 / 73 on P3..P7, so
    unnormalised P6 and P7 made 97% of the hint, which was hundreds to tens of thousands of
    times the detection loss. For two maps ``t``, ``s`` of one level and their normalised
    ``t'``, ``s'``: ``mean((t' - s')^2) / 2 = 1 - cos(t, s)`` (cosine over the flattened map), so
    a level costs between 0 (the same map up to a positive scale) and 2, about 1 for unrelated
    maps, whatever the size of the activations.
    """
    mean_square = features.pow(2).mean(dim=(1, 2, 3), keepdim=True)
    return features * mean_square.clamp_min(eps).rsqrt()  # clamp: no NaN gradient at an all-zero map


def zero_term(student: DetectorOutputs) -> Tensor:
    """A scalar 0 that stays attached to the student's graph (backward works with nothing selected)."""
    return student.features[0].sum() * 0.0


def total(terms: dict[str, Tensor], diagnostics: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``terms`` plus their sum under ``"distill"``; diagnostics added after, detached and not summed."""
    if not terms:
        raise ValueError("No distillation term is switched on (every weight is 0)")
    result = dict(terms)
    result["distill"] = torch.stack(list(terms.values())).sum()
    for name, value in (diagnostics or {}).items():
        result[name] = value.detach()
    return result


def check_targets(targets: list[dict[str, Tensor]] | None, batch: int) -> list[Tensor]:
    """The ``(M_b, 4)`` xyxy ground-truth boxes of each image, checked."""
    if targets is None:
        raise ValueError("Ground-truth boxes were asked for (mask='gt') but no targets were given")
    if len(targets) != batch:
        raise ValueError(f"{len(targets)} target dicts for a batch of {batch} images")
    boxes = []
    for index, target in enumerate(targets):
        if "boxes" not in target:
            raise ValueError(f"targets[{index}] has no 'boxes' entry (keys: {sorted(target)})")
        image_boxes = torch.as_tensor(target["boxes"], dtype=torch.float32)
        if image_boxes.ndim != 2 or image_boxes.shape[-1] != 4:
            raise ValueError(f"targets[{index}]['boxes'] must be (M, 4) xyxy, got {tuple(image_boxes.shape)}")
        boxes.append(image_boxes)
    return boxes
