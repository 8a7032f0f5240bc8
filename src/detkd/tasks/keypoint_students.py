"""The student of a key-point distillation: its structure from the variant, the config and a starting file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from detkd.models.keypoint_ops import CELL
from detkd.models.superpoint import FINE_STRIDE, SuperPoint, create_model
from detkd.models.superpoint_blocks import RepConvBNReLU, zero_output


#: Keys of the ``student`` config section that replace the variant's structural options when set.
STUDENT_STRUCTURE_KEYS = ("encoder", "channels", "head_channels", "descriptor_dim", "descriptor_stride",
                          "detector_stride", "reparam_branches", "context_channels")


def build_student(teacher: nn.Module, variant: str, batch_norm: bool = True, **structure: Any) -> SuperPoint:
    """A student of the named variant whose descriptors match the teacher's size.

    Args:
        structure: options of :data:`STUDENT_STRUCTURE_KEYS` that replace the variant's
            (``None``: the variant's own), e.g. ``channels=[8, 16, 32, 48]``.

    Raises:
        ValueError: an unknown key, or a ``descriptor_dim`` other than the teacher's.
    """
    unknown = sorted(set(structure) - set(STUDENT_STRUCTURE_KEYS))
    if unknown:
        raise ValueError(f"student option(s) {unknown} unknown; structural options: {list(STUDENT_STRUCTURE_KEYS)}")
    overrides = {k: v for k, v in structure.items() if v is not None}
    dim = overrides.setdefault("descriptor_dim", teacher.conf["descriptor_dim"])
    if dim != teacher.conf["descriptor_dim"]:
        raise ValueError(
            f"student.descriptor_dim {dim} differs from the teacher's {teacher.conf['descriptor_dim']}: the "
            "descriptor losses compare them entry by entry; leave it null to take the teacher's"
        )
    post = {k: teacher.conf[k] for k in ("nms_radius", "detection_threshold", "remove_borders", "max_keypoints")}
    return create_model(variant, batch_norm=batch_norm, **overrides, **post)


def init_file(init: str | Path) -> Path:
    """The model file of ``student.init``: a shipped student's name or a path.

    Raises:
        FileNotFoundError: neither; the message names the shipped models.
    """
    from detkd.models.pretrained import SHIPPED_MODELS, is_shipped_model_name, shipped_model_path

    path = shipped_model_path(str(init)) if is_shipped_model_name(str(init)) else Path(init)
    if not path.exists():
        raise FileNotFoundError(
            f"student.init '{init}' does not exist: give a student model file (a run's student.pt) or a shipped "
            f"model's name ({', '.join(SHIPPED_MODELS)})")
    return path


#: Options layered on a variant's widths that a student started from a file (``student.init``) takes from
#: that file when the config leaves them null, so that ``--student fast-s --init student-fast-s`` fine-tunes
#: the shipped student whatever its heads.
INIT_LAYERED_KEYS = ("head_channels", "descriptor_stride", "detector_stride", "reparam_branches", "context_channels")


def structure_for_init(variant: str, structure: dict[str, Any], init: str | Path) -> dict[str, Any]:
    """``structure`` (the config's :data:`STUDENT_STRUCTURE_KEYS`, ``None`` = the variant's) with the
    :data:`INIT_LAYERED_KEYS` that it leaves null taken from the model file ``init``, when that file has the
    variant's encoder and widths. Anything else is left for :func:`initialise_student` to accept or refuse.

    Raises:
        FileNotFoundError: ``init`` is neither a file nor a shipped model's name (see :func:`init_file`).
    """
    from detkd.models.superpoint import VARIANTS
    from detkd.models.weights import load_keypoint_model

    if variant not in VARIANTS:
        return structure
    source = load_keypoint_model(init_file(init)).conf
    base = {**SuperPoint.default_conf, **VARIANTS[variant]}
    same_body = all(_plain(source[k]) == _plain(structure.get(k) if structure.get(k) is not None else base[k])
                    for k in ("encoder", "channels"))
    if not same_body:
        return structure
    return {**structure, **{k: source[k] for k in INIT_LAYERED_KEYS if structure.get(k) is None}}


def initialise_student(student: SuperPoint, init: str | Path) -> str:
    """Copy the weights of ``init`` (a detkd key-point model file, or a shipped student's name) into
    ``student``, whose structure must be the same; returns where they came from, in words.

    Three differences are accepted, alone or together, each a part that the file lacks and that starts as a
    no-op, so that the student starts as the file's model (:data:`GROWTHS`): a ``detector_stride`` 4 student
    started from a stride-8 file (the stride-4 detector branch keeps its zero output,
    :func:`~detkd.models.superpoint_blocks.zero_output`), a student with ``reparam_branches`` started from a
    file without them (the 1x1 and identity branches start at zero,
    :meth:`~detkd.models.superpoint_blocks.RepConvBNReLU.zero_branches`), and a student with
    ``context_channels`` started from a file without a context pyramid (its projection starts at zero).

    Raises:
        FileNotFoundError: ``init`` is neither a file nor a shipped model's name.
        ValueError: its structure (encoder, widths, descriptor size, BatchNorm) differs from ``student``'s;
            the message names both and the config keys to set.
        UnsafeWeightsError / UnreadableWeightsError / WeightsMismatchError: see :mod:`detkd.models.weights`.
    """
    from detkd.models.weights import STRUCTURAL_OPTIONS, load_keypoint_model, read_keypoint_model_meta

    path = init_file(init)
    source = load_keypoint_model(path)
    differ = {k for k in STRUCTURAL_OPTIONS if _plain(source.conf[k]) != _plain(student.conf[k])}
    growths = {key: growth for key, growth in GROWTHS.items()
               if key in differ and growth.applies(source.conf[key], student.conf[key])}
    if differ - set(growths):
        named = [k for k in STRUCTURAL_OPTIONS if k in differ]
        theirs = ", ".join(f"{k} {_plain(source.conf[k])}" for k in named)
        ours = ", ".join(f"{k} {_plain(student.conf[k])}" for k in named)
        raise ValueError(
            f"student.init '{path}' has {theirs}; the student to train has {ours}. Set student.variant (and "
            "student.channels / head_channels / encoder) to the file's structure, or leave student.init null")
    missing, unexpected = student.load_state_dict(source.state_dict(), strict=not growths)
    added_parts = tuple(part for growth in growths.values() for part in growth.added_keys)
    if unexpected or any(not any(part in key for part in added_parts) for key in missing):
        raise ValueError(f"student.init '{path}': cannot grow it to {', '.join(growths)} (missing {missing}, "
                         f"unexpected {unexpected})")
    for growth in growths.values():
        growth.start_at_zero(student)
    meta = read_keypoint_model_meta(path)
    trained = f", {meta['steps']} steps from {meta['teacher']}" if meta.get("steps") and meta.get("teacher") else ""
    grown = "".join(f" (grown to {growth.said})" for growth in growths.values())
    return f"{path}{trained}{grown}"


#: File in a run folder that says which file the student started from, written when training starts at step 0.
STUDENT_START_FILE = "student_init.json"


def record_student_start(out: str | Path, init: str | Path, description: str, resuming: bool) -> dict[str, str]:
    """Record (or, when ``resuming``, read back) the file a run's student started from: ``out/student_init.json``.

    ``student.init`` may name a shipped model, and shipping a successor replaces that file: from then on the
    name points at other weights than the run started from. The record keeps the file's sha256 and
    description as they were at step 0, so that a resumed run and the model card of a shipped milestone
    name the right start. A run resumed from a folder without the record (started before it existed)
    gets none: ``{}``.

    Returns:
        ``{"init": str, "file": str, "sha256": str (64 hex), "description": str}``, or ``{}`` as said.
    """
    if resuming:
        return read_student_start(out)
    path = init_file(init)
    record = {"init": str(init), "file": str(path.resolve()),
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "description": description}
    (Path(out) / STUDENT_START_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_student_start(out: str | Path) -> dict[str, str]:
    """The record :func:`record_student_start` wrote in the run folder ``out``; ``{}`` without one."""
    record_path = Path(out) / STUDENT_START_FILE
    return json.loads(record_path.read_text()) if record_path.exists() else {}


class Growth(NamedTuple):
    """A structural difference :func:`initialise_student` accepts: the student has parts the file lacks."""

    file_value: Any
    student_value: Any  # None: any value other than file_value
    added_keys: tuple[str, ...]  # fragments of the state-dict keys of the parts the file lacks
    said: str  # what the description of the start says
    start_at_zero: Callable[[SuperPoint], None]  # makes those parts output zeros, after the file's weights are in

    def applies(self, file_value: Any, student_value: Any) -> bool:
        """Whether a file with ``file_value`` grows into a student with ``student_value``."""
        return file_value == self.file_value and (
            student_value == self.student_value if self.student_value is not None else student_value != file_value)


def _zero_rep_branches(student: SuperPoint) -> None:
    for block in student.modules():
        if isinstance(block, RepConvBNReLU):
            block.zero_branches()


#: The accepted differences, by option.
GROWTHS: dict[str, Growth] = {
    "detector_stride": Growth(CELL, FINE_STRIDE, ("detector_fine.",), "detector_stride 4; the new branch starts at zero",
                              lambda student: zero_output(student.detector_fine[-1])),
    "reparam_branches": Growth(False, True, ("_1x1.", "bn_identity."),
                               "reparam_branches; the 1x1 and identity branches start at zero", _zero_rep_branches),
    "context_channels": Growth(0, None, ("context.",), "a context pyramid; its projection starts at zero",
                               lambda student: zero_output(student.context.project)),
}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def student_description(student: SuperPoint, variant: str) -> str:
    """``fast-s`` or, when the config changed its structure, ``fast-s (fast encoder, channels 8-16-32-48, ...)``."""
    default = create_model(variant, batch_norm=student.conf["batch_norm"]).conf
    changed = [k for k in STUDENT_STRUCTURE_KEYS if student.conf[k] != default[k]]
    if not changed:
        return variant
    parts = [f"{k} {'-'.join(map(str, student.conf[k])) if k == 'channels' else student.conf[k]}" for k in changed]
    return f"{variant} with {', '.join(parts)}"
