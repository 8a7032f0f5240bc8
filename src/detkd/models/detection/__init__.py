"""Object detectors for distillation: torchvision families behind one adapter interface.

``create_detector(name, num_classes)`` builds a registered variant (``list_detectors()``); its
forward pass returns :class:`DetectorOutputs` (conventions in :mod:`.outputs`).
"""

from detkd.models.detection.adapters import DetectorAdapter
from detkd.models.detection.faster_rcnn import FasterRCNNAdapter
from detkd.models.detection.fcos import FCOSAdapter
from detkd.models.detection.retinanet import RetinaNetAdapter
from detkd.models.detection.inference import fold_batch_norms, inference_copy
from detkd.models.detection.backbones import FPN_LEVEL_NAMES, FPN_STRIDES, TinyBackbone, build_fpn_backbone
from detkd.models.detection.outputs import DetectorOutputs, per_anchor, per_location
from detkd.models.detection.profile import count_parameters, detector_gflops
from detkd.models.detection.registry import (
    FAMILIES,
    DetectorVariant,
    create_detector,
    create_detector_from_config,
    get_variant,
    list_detectors,
    variant_options,
)
from detkd.models.detection.weights import DETECTOR_FORMAT, load_detector, read_detector_extra, save_detector

__all__ = [
    "DETECTOR_FORMAT",
    "FAMILIES",
    "FPN_LEVEL_NAMES",
    "FPN_STRIDES",
    "DetectorAdapter",
    "DetectorOutputs",
    "DetectorVariant",
    "FCOSAdapter",
    "FasterRCNNAdapter",
    "RetinaNetAdapter",
    "TinyBackbone",
    "build_fpn_backbone",
    "count_parameters",
    "create_detector",
    "create_detector_from_config",
    "detector_gflops",
    "fold_batch_norms",
    "get_variant",
    "inference_copy",
    "list_detectors",
    "load_detector",
    "per_anchor",
    "per_location",
    "read_detector_extra",
    "save_detector",
    "variant_options",
]
