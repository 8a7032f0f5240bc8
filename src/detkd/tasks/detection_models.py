"""The models of a detection run: building the detector, loading the teacher, and the checks before
distillation (same class list; one batch through teacher, student and distiller).

Importable from :mod:`detkd.tasks.detection` too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from detkd.config import ConfigError
from detkd.data.detection import unpad_targets
from detkd.distill.detection import DetectionDistiller
from detkd.engine import StreamDataset
from detkd.models.detection import DetectorAdapter, count_parameters, create_detector, load_detector
from detkd.models.model_files import key_listing

log = logging.getLogger(__name__)


class IncompatibleModelsError(ValueError):
    """Teacher and student cannot be distilled with the chosen method; the message says why and what to change."""


def build_detector(model_cfg: dict[str, Any], class_names: Sequence[str]) -> DetectorAdapter:
    """A new detector named ``model_cfg['name']`` for ``class_names`` with ``model_cfg['overrides']``."""
    overrides = model_cfg.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"'overrides' must be a mapping of detector options, got {overrides!r}")
    return create_detector(model_cfg["name"], len(class_names), class_names=list(class_names), **overrides)


def initialise_detector(model: DetectorAdapter, init: str | Path) -> str:
    """Start ``model`` from the detector file ``init`` (``model.pt`` of another run, or a training checkpoint):
    every tensor whose name and shape match is copied; the others keep their fresh initialisation (the class
    layer when the file was trained on another class list). Returns what was copied, in words.

    Raises:
        FileNotFoundError: no such file.
        IncompatibleModelsError: the file holds another detector (its name differs), or no tensor fits.
        UnsafeWeightsError / UnreadableWeightsError / WeightsMismatchError: see :func:`load_detector`.
    """
    if not Path(init).is_file():
        raise FileNotFoundError(f"model.init '{init}' is not a file: give a detector file (a run's model.pt), or null")
    source = load_detector(init)
    if source.name != model.name:
        raise IncompatibleModelsError(
            f"model.init '{init}' holds a {source.name}, but the model to train is a {model.name}: weights carry over "
            f"between the same detector only. Set model.name to {source.name}, or leave model.init null.")
    ours, theirs = model.state_dict(), source.state_dict()
    fitting = {k: v for k, v in theirs.items() if k in ours and v.shape == ours[k].shape}
    if all(k.endswith("num_batches_tracked") for k in fitting):
        raise IncompatibleModelsError(
            f"model.init '{init}': none of its tensors fits {describe_detector(model)} (other overrides?)")
    model.load_state_dict(fitting, strict=False)
    fresh = [k for k in ours if k not in fitting]
    classes = f" trained on {', '.join(source.class_names)}" if source.class_names else ""
    kept = f"; {len(fresh)} start fresh ({key_listing(fresh)})" if fresh else ""
    return f"{init}{classes}: {len(fitting)} of {len(ours)} tensors copied{kept}"


def describe_detector(model: DetectorAdapter) -> str:
    """``name (family, parameters, FPN width)`` for printouts and reports."""
    return f"{model.name} ({model.model.__class__.__name__}, {count_parameters(model):,} parameters, {model.fpn_channels}-channel FPN)"


def check_class_lists(teacher: DetectorAdapter, class_names: Sequence[str], teacher_origin: str, data_origin: str) -> None:
    """Raise :class:`IncompatibleModelsError` when the teacher was trained on other classes than the data's."""
    names = list(class_names)
    if teacher.class_names is None:
        if teacher.num_classes != len(names):
            raise IncompatibleModelsError(
                f"The teacher '{teacher_origin}' predicts {teacher.num_classes} classes but {data_origin} lists "
                f"{len(names)} ({', '.join(names)}): teacher and student must share one class list."
            )
        log.warning("The teacher '%s' stores no class names; assuming they are %s", teacher_origin, names)
        return
    if teacher.class_names != names:
        raise IncompatibleModelsError(
            f"The teacher '{teacher_origin}' was trained on classes {teacher.class_names} but {data_origin} lists "
            f"{names}. Distillation compares class scores one by one, so teacher and student need the same class "
            "list in the same order: train the teacher on this data set, or fix 'names' in data.yaml."
        )


def check_compatible(
    teacher: DetectorAdapter,
    student: DetectorAdapter,
    distiller: DetectionDistiller,
    batch: dict[str, torch.Tensor],
    method: str,
) -> list[str]:
    """One forward pass of teacher, student and distiller on ``batch`` (a few images) before training.

    Returns the names of the distiller's loss terms (those with a gradient; the rest are
    diagnostics). Raises :class:`IncompatibleModelsError` naming both models and the reason
    when the method cannot compare them (class lists, FPN levels and strides, families).
    """
    images = batch["image"]
    targets = unpad_targets(batch) if "boxes" in batch else None
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            teacher_outputs = teacher(images)
        outputs = distiller(teacher_outputs, student(images), targets)
    except (ValueError, RuntimeError) as err:
        raise IncompatibleModelsError(
            f"Cannot distil the teacher {describe_detector(teacher)}, strides {teacher.strides}, into the student "
            f"{describe_detector(student)}, strides {student.strides}, with '{method}': {err}"
        ) from err
    finally:
        student.train(was_training)
    return [k for k, v in outputs.items() if k != "distill" and v.requires_grad]


def first_batch(stream: StreamDataset, size: int = 2) -> dict[str, torch.Tensor]:
    """The first ``size`` samples of ``stream`` collated: the batch :func:`check_compatible` tries."""
    return torch.utils.data.default_collate([stream[k] for k in range(size)])


def load_teacher(checkpoint: str | Path | None) -> DetectorAdapter:
    """The teacher detector of ``teacher.checkpoint`` (eval mode)."""
    if not checkpoint:
        raise ConfigError(
            "No teacher given: pass --teacher runs/teacher/model.pt (train one with 'detkd detect train')"
        )
    return load_detector(checkpoint).eval()
