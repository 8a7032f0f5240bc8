"""Named detector variants (timm-style): ``create_detector(name, num_classes, **overrides)``.

Every variant is a torchvision family (RetinaNet, FCOS, Faster R-CNN) on a backbone from
:mod:`detkd.models.detection.backbones`, with the FPN levels P3..P7 (strides 8..128) for all
families, so that a teacher and a student of different families share one location grid.
Nothing is pretrained (``weights=None``, ``weights_backbone=None`` everywhere).

Families and their torchvision defaults kept here:

* ``retinanet``: 9 anchors per location (sizes ``anchor_size * 2**(level + octave/3)``, ratios
  0.5/1/2), IoU matcher 0.5/0.4 with low-quality matches, focal + L1 losses. The head convs
  use GroupNorm with 16 groups (torchvision's RetinaNet v2 uses 32; v1 none) because nothing
  is pretrained.
* ``fcos``: one point per location, centre sampling radius 1.5, focal + GIoU + centre-ness;
  GroupNorm with 16 groups in the head (torchvision: 32) so that 32-channel students work.
* ``faster_rcnn``: RPN with 3 anchors per location (sizes ``anchor_size * 2**level``, ratios
  0.5/1/2) on P3..P7, RoIAlign 7x7 on P3..P6 (torchvision uses P2..P5 at strides 4..32;
  here the pyramid starts at P3 like the single-stage families), two-layer MLP box head.

Backbones: ``resnet18|34|50`` (C3-C5), ``mobilenet_v3`` (MobileNetV3-Large), and for CPU tests
and benchmarks ``nano`` (:class:`~detkd.models.detection.backbones.TinyBackbone` widths
8-16-24-32-48, FPN 32 channels; the nano FCOS has 2 convs per head branch instead of 4: a student
with 7x fewer GFLOPs than ``fcos_small_fpn``), ``tiny`` (widths 16-24-32-48-64, FPN 32: a student) and
``small`` (widths 24-48-64-96-128, FPN 64: a CPU teacher). The CPU-sized Faster R-CNNs keep fewer
proposals (300 train / 100 test) and a 256-wide box head.

Overrides (keyword arguments of :func:`create_detector`; each variant lists its own in
:func:`variant_options`): ``fpn_channels`` (a multiple of 16, >= 32: the head GroupNorms use 16 groups),
``tiny_widths`` (``*_nano_fpn`` / ``*_tiny_fpn`` / ``*_small_fpn`` only), ``anchor_size``, ``fg_iou_thresh``,
``bg_iou_thresh``, ``topk_candidates``, ``center_sampling_radius``, ``head_convs`` (FCOS),
``rpn_*`` / ``box_*`` sizes and ``representation_size`` (Faster R-CNN).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign

from detkd.config import ConfigError
from detkd.models.detection.adapters import DetectorAdapter
from detkd.models.detection.backbones import FPN_LEVEL_NAMES, FPN_STRIDES, build_fpn_backbone
from detkd.models.detection.faster_rcnn import FasterRCNNAdapter
from detkd.models.detection.fcos import FCOSAdapter
from detkd.models.detection.retinanet import RetinaNetAdapter

#: Family name -> its adapter class; a new family is one adapter file and one entry here.
ADAPTERS: dict[str, type[DetectorAdapter]] = {
    RetinaNetAdapter.family: RetinaNetAdapter,
    FCOSAdapter.family: FCOSAdapter,
    FasterRCNNAdapter.family: FasterRCNNAdapter,
}
FAMILIES = tuple(ADAPTERS)

#: Normalisation of the RetinaNet and FCOS head convs (nothing is pretrained, so normalise).
_HEAD_NORM = partial(nn.GroupNorm, 16)

#: Options of each family, with torchvision's defaults (sizes in pixels).
_FAMILY_OPTIONS: dict[str, dict[str, Any]] = {
    "retinanet": {
        "fpn_channels": 256,
        "anchor_size": 32,
        "fg_iou_thresh": 0.5,
        "bg_iou_thresh": 0.4,
        "topk_candidates": 1000,
    },
    "fcos": {
        "fpn_channels": 256,
        "head_convs": 4,
        "center_sampling_radius": 1.5,
        "topk_candidates": 1000,
    },
    "faster_rcnn": {
        "fpn_channels": 256,
        "anchor_size": 32,
        "rpn_pre_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 1000,
        "rpn_post_nms_top_n_train": 2000,
        "rpn_post_nms_top_n_test": 1000,
        "rpn_batch_size_per_image": 256,
        "box_batch_size_per_image": 512,
        "representation_size": 1024,
    },
}

#: What each option means, for ``detkd detect models NAME`` (units in brackets).
OPTION_HELP: dict[str, str] = {
    "fpn_channels": "channels of every FPN level and of the heads (a multiple of 16, >= 32)",
    "tiny_widths": "channels of the tiny CNN backbone: stem, stage 1..4 (nano / tiny / small variants)",
    "anchor_size": "anchor side at P3 [pixels]; doubles per level",
    "fg_iou_thresh": "IoU from which an anchor is foreground",
    "bg_iou_thresh": "IoU below which an anchor is background",
    "topk_candidates": "candidates per level kept before NMS at inference",
    "center_sampling_radius": "FCOS: locations within this many strides of a box centre are positives",
    "head_convs": "FCOS: 3x3 convs per head branch (classification, regression)",
    "rpn_pre_nms_top_n_train": "RPN proposals per level before NMS, training",
    "rpn_pre_nms_top_n_test": "RPN proposals per level before NMS, inference",
    "rpn_post_nms_top_n_train": "RPN proposals per image after NMS, training",
    "rpn_post_nms_top_n_test": "RPN proposals per image after NMS, inference (the RoI head's work)",
    "rpn_batch_size_per_image": "anchors sampled per image for the RPN loss",
    "box_batch_size_per_image": "proposals sampled per image for the RoI-head loss",
    "representation_size": "width of the RoI head's two-layer MLP",
}

#: Smaller two-stage settings for the CPU-sized variants (few objects in 128-256 px images).
_SMALL_FASTER_RCNN = {
    "rpn_pre_nms_top_n_train": 600,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_train": 300,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 128,
    "representation_size": 256,
}

NANO_WIDTHS = (8, 16, 24, 32, 48)
TINY_WIDTHS = (16, 24, 32, 48, 64)
SMALL_WIDTHS = (24, 48, 64, 96, 128)

#: Backbone name -> (name in variant names, extra defaults).
_BACKBONE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet18": ("resnet18", {}),
    "resnet34": ("resnet34", {}),
    "resnet50": ("resnet50", {}),
    "mobilenet_v3_large": ("mobilenet_v3", {}),
    "nano": ("nano", {"fpn_channels": 32, "tiny_widths": NANO_WIDTHS}),
    "tiny": ("tiny", {"fpn_channels": 32, "tiny_widths": TINY_WIDTHS}),
    "small": ("small", {"fpn_channels": 64, "tiny_widths": SMALL_WIDTHS}),
}
#: Backbones built by :class:`~detkd.models.detection.backbones.TinyBackbone` (``tiny_widths``).
_TINY_CNN_BACKBONES = ("nano", "tiny", "small")
#: Defaults of one family on one backbone that differ from the family's (CPU-sized variants).
_VARIANT_TWEAKS: dict[tuple[str, str], dict[str, Any]] = {
    **{("faster_rcnn", backbone): _SMALL_FASTER_RCNN for backbone in _TINY_CNN_BACKBONES},
    # At 32 FPN channels the head's 4 convs per branch cost more than the nano backbone itself.
    ("fcos", "nano"): {"head_convs": 2},
}
_FAMILY_PREFIX = {"retinanet": "retinanet", "fcos": "fcos", "faster_rcnn": "fasterrcnn"}


@dataclass(frozen=True)
class DetectorVariant:
    """One registered name: a family on a backbone with default options."""

    name: str
    family: str
    backbone: str  # a name build_fpn_backbone knows, or "nano" / "small" (the tiny CNN, other widths)
    defaults: Mapping[str, Any]

    @property
    def description(self) -> str:
        width = self.defaults["fpn_channels"]
        return f"{self.family} on {self.backbone} + FPN P3-P7 ({width} channels)"


def _build_registry() -> dict[str, DetectorVariant]:
    registry = {}
    for family, options in _FAMILY_OPTIONS.items():
        for backbone, (short, extra) in _BACKBONE_VARIANTS.items():
            defaults = {**options, **extra, **_VARIANT_TWEAKS.get((family, backbone), {})}
            name = f"{_FAMILY_PREFIX[family]}_{short}_fpn"
            registry[name] = DetectorVariant(name, family, backbone, defaults)
    return registry


_REGISTRY: dict[str, DetectorVariant] = _build_registry()


# ---------------------------------------------------------------------- public API
def list_detectors(family: str | None = None) -> list[str]:
    """Registered variant names, sorted; only those of ``family`` when given."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Unknown detector family '{family}'; choose one of {', '.join(FAMILIES)}")
    return sorted(name for name, v in _REGISTRY.items() if family is None or v.family == family)


def get_variant(name: str) -> DetectorVariant:
    """The registered variant ``name``; a :class:`ConfigError` listing the names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"Unknown detector '{name}'; registered detectors: {', '.join(list_detectors())}"
        ) from None


def variant_options(name: str) -> dict[str, Any]:
    """The options of variant ``name`` with their defaults (what ``**overrides`` may change)."""
    return dict(get_variant(name).defaults)


def create_detector(
    name: str, num_classes: int, class_names: Sequence[str] | None = None, **overrides: Any
) -> DetectorAdapter:
    """Build the registered detector ``name`` with ``num_classes`` classes, randomly initialised.

    Args:
        name: a name from :func:`list_detectors`, e.g. ``"retinanet_resnet50_fpn"``.
        num_classes: ``K`` object classes (no background class; labels are ``0 .. K-1``).
        class_names: optional ``K`` names, stored with the model.
        overrides: options of the variant to change (see :func:`variant_options`), e.g.
            ``fpn_channels=128``.

    Raises:
        ConfigError: unknown name, unknown override, or a value that cannot work.
    """
    variant = get_variant(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    unknown = sorted(set(overrides) - set(variant.defaults))
    if unknown:
        raise ConfigError(
            f"{name}: unknown option(s) {unknown}; options of this detector: {', '.join(sorted(variant.defaults))}"
        )
    options = {**variant.defaults, **overrides}
    _check_options(name, options)
    model = _BUILDERS[variant.family](variant, num_classes, options)
    config = {"name": name, "num_classes": num_classes, "overrides": _plain_overrides(overrides)}
    return ADAPTERS[variant.family](model, num_classes, FPN_STRIDES, config, class_names=class_names)


def create_detector_from_config(config: Mapping[str, Any]) -> DetectorAdapter:
    """Rebuild a detector from ``adapter.config`` (``name``, ``num_classes``, ``overrides``, ``class_names``)."""
    if not isinstance(config, Mapping) or "name" not in config or "num_classes" not in config:
        raise ConfigError(f"A detector config needs 'name' and 'num_classes', got {config!r}")
    overrides = dict(config.get("overrides") or {})
    return create_detector(config["name"], int(config["num_classes"]), class_names=config.get("class_names"), **overrides)


# ---------------------------------------------------------------------- builders
def _check_options(name: str, options: Mapping[str, Any]) -> None:
    channels = options["fpn_channels"]
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 32 or channels % 16:
        raise ConfigError(
            f"{name}: fpn_channels must be a multiple of 16 and at least 32 (the heads' GroupNorm uses 16 groups), "
            f"got {channels!r}"
        )
    if "tiny_widths" in options:
        widths = options["tiny_widths"]
        if not isinstance(widths, Sequence) or len(widths) != 5 or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ConfigError(f"{name}: tiny_widths must be 5 positive integers (stem, stage1..stage4), got {widths!r}")
    if "anchor_size" in options and not (isinstance(options["anchor_size"], (int, float)) and options["anchor_size"] > 0):
        raise ConfigError(f"{name}: anchor_size must be a positive number of pixels, got {options['anchor_size']!r}")
    if "head_convs" in options and not (isinstance(options["head_convs"], int) and options["head_convs"] >= 1):
        raise ConfigError(f"{name}: head_convs must be an integer >= 1, got {options['head_convs']!r}")


def _plain_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


def _backbone(variant: DetectorVariant, options: Mapping[str, Any]) -> nn.Module:
    kind = "tiny" if variant.backbone in _TINY_CNN_BACKBONES else variant.backbone
    return build_fpn_backbone(kind, options["fpn_channels"], options.get("tiny_widths"))


def _build_retinanet(variant: DetectorVariant, num_classes: int, options: Mapping[str, Any]) -> RetinaNet:
    base = options["anchor_size"]
    sizes = tuple(
        tuple(int(base * 2**level * 2 ** (octave / 3)) for octave in range(3)) for level in range(len(FPN_STRIDES))
    )
    anchor_generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    backbone = _backbone(variant, options)
    head = RetinaNetHead(
        backbone.out_channels,
        anchor_generator.num_anchors_per_location()[0],
        num_classes,
        norm_layer=_HEAD_NORM,
    )
    return RetinaNet(
        backbone,
        num_classes,
        anchor_generator=anchor_generator,
        head=head,
        fg_iou_thresh=options["fg_iou_thresh"],
        bg_iou_thresh=options["bg_iou_thresh"],
        topk_candidates=options["topk_candidates"],
    )


def _build_fcos(variant: DetectorVariant, num_classes: int, options: Mapping[str, Any]) -> FCOS:
    # FCOS's "anchors" are squares of one stride, one per location (torchvision's default).
    anchor_generator = AnchorGenerator(tuple((s,) for s in FPN_STRIDES), ((1.0,),) * len(FPN_STRIDES))
    backbone = _backbone(variant, options)
    channels, convs = backbone.out_channels, options["head_convs"]
    # torchvision's FCOS sub-heads use GroupNorm(32), which needs a multiple of 32 channels and
    # normalises single values on a 1x1 P7 of a 32-channel FPN; they are rebuilt with the 16
    # groups of the RetinaNet head (num_convs=0 first so that no GroupNorm(32) is created).
    head = FCOSHead(channels, 1, num_classes, num_convs=0)
    head.classification_head = FCOSClassificationHead(channels, 1, num_classes, convs, norm_layer=_HEAD_NORM)
    head.regression_head = FCOSRegressionHead(channels, 1, convs, norm_layer=_HEAD_NORM)
    return FCOS(
        backbone,
        num_classes,
        anchor_generator=anchor_generator,
        head=head,
        center_sampling_radius=options["center_sampling_radius"],
        topk_candidates=options["topk_candidates"],
    )


def _build_faster_rcnn(variant: DetectorVariant, num_classes: int, options: Mapping[str, Any]) -> FasterRCNN:
    base = options["anchor_size"]
    sizes = tuple((int(base * 2**level),) for level in range(len(FPN_STRIDES)))
    anchor_generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    backbone = _backbone(variant, options)
    roi_pool = MultiScaleRoIAlign(featmap_names=list(FPN_LEVEL_NAMES[:4]), output_size=7, sampling_ratio=2)
    representation = options["representation_size"]
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchor_generator,
        rpn_pre_nms_top_n_train=options["rpn_pre_nms_top_n_train"],
        rpn_pre_nms_top_n_test=options["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_train=options["rpn_post_nms_top_n_train"],
        rpn_post_nms_top_n_test=options["rpn_post_nms_top_n_test"],
        rpn_batch_size_per_image=options["rpn_batch_size_per_image"],
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes + 1),  # + background
        box_batch_size_per_image=options["box_batch_size_per_image"],
    )


_BUILDERS = {"retinanet": _build_retinanet, "fcos": _build_fcos, "faster_rcnn": _build_faster_rcnn}
