"""Object-detector distillation losses: ``gid``, ``hint``, ``pkd`` and ``cwd``.

Each is an ``nn.Module`` (a :class:`DetectionDistiller`) with
``forward(teacher: DetectorOutputs, student: DetectorOutputs, targets=None) -> dict[str, Tensor]``:
weighted terms, their sum ``"distill"`` (add the ground-truth loss to it) and diagnostics.
Its parameters (channel adapters) are trained with the student.

    distiller = create_detection_distiller("gid", teacher_channels=256, student_channels=128,
                                           match_anchors=student_adapter.match_anchors, relation_weight=0)
"""

from __future__ import annotations

from typing import Any

from detkd.config import ConfigError, dataclass_from_dict
from detkd.distill.detection.common import DetectionDistiller, make_adapter
from detkd.distill.detection.features import (
    PKD,
    ChannelWiseDistillation,
    CWDConfig,
    FeatureHint,
    HintConfig,
    PKDConfig,
    near_object_mask,
)
from detkd.distill.detection.general_instances import (
    GeneralInstances,
    find_general_instances,
    select_general_instances,
)
from detkd.distill.detection.gid import GeneralInstanceDistillation, GIDConfig, Matcher, relation_loss

#: method name -> (loss module, its config dataclass)
DETECTION_DISTILLERS: dict[str, tuple[type[DetectionDistiller], type]] = {
    "gid": (GeneralInstanceDistillation, GIDConfig),
    "hint": (FeatureHint, HintConfig),
    "pkd": (PKD, PKDConfig),
    "cwd": (ChannelWiseDistillation, CWDConfig),
}


def create_detection_distiller(
    method: str,
    teacher_channels: int,
    student_channels: int,
    match_anchors: Matcher | None = None,
    **options: Any,
) -> DetectionDistiller:
    """Build the loss module of ``method`` from config options.

    Args:
        method: ``"gid"``, ``"hint"``, ``"pkd"`` or ``"cwd"``.
        teacher_channels, student_channels: FPN widths (``DetectorOutputs.channels``).
        match_anchors: the student's matcher; used by ``gid`` only (its response loss).
        options: fields of the method's config dataclass (:class:`GIDConfig`, :class:`HintConfig`,
            :class:`PKDConfig`, :class:`CWDConfig`); an unknown one raises :class:`ConfigError`.
    """
    if method not in DETECTION_DISTILLERS:
        raise ConfigError(f"Unknown detection distillation method '{method}'; valid: {', '.join(DETECTION_DISTILLERS)}")
    module_cls, config_cls = DETECTION_DISTILLERS[method]
    config = dataclass_from_dict(config_cls, options, f"'{method}' distillation")
    if method == "gid":
        return GeneralInstanceDistillation(teacher_channels, student_channels, config, match_anchors=match_anchors)
    return module_cls(teacher_channels, student_channels, config)  # type: ignore[call-arg]


__all__ = [
    "DETECTION_DISTILLERS",
    "PKD",
    "CWDConfig",
    "ChannelWiseDistillation",
    "DetectionDistiller",
    "FeatureHint",
    "GIDConfig",
    "GeneralInstanceDistillation",
    "GeneralInstances",
    "HintConfig",
    "Matcher",
    "PKDConfig",
    "create_detection_distiller",
    "find_general_instances",
    "make_adapter",
    "near_object_mask",
    "relation_loss",
    "select_general_instances",
]
