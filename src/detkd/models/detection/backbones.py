"""Backbones with a feature pyramid, P3..P7 (strides 8..128), for every detector family.

All backbones here end in torchvision's :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`
with :class:`~torchvision.ops.feature_pyramid_network.LastLevelP6P7` on top of P5 (as torchvision's
RetinaNet v1 and FCOS do), so every family and every backbone yields the same five levels:

==========  ======  =================================
level       stride  key in the backbone's output dict
==========  ======  =================================
P3          8       ``"0"``
P4          16      ``"1"``
P5          32      ``"2"``
P6          64      ``"p6"``
P7          128     ``"p7"``
==========  ======  =================================

The FPN width (``fpn_channels``) is free; torchvision's ``_resnet_fpn_extractor`` and
``mobilenet_backbone`` fix it at 256, so the same wiring is done here with ``BackboneWithFPN``
directly. Nothing is pretrained: BatchNorm layers are ordinary, trainable ``nn.BatchNorm2d``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation

#: Strides of the FPN levels P3..P7, finest first (pixels per feature cell).
FPN_STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)
#: Keys of those levels in the backbone's output dict.
FPN_LEVEL_NAMES: tuple[str, ...] = ("0", "1", "2", "p6", "p7")

RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50")
BACKBONES = (*RESNET_BACKBONES, "mobilenet_v3_large", "tiny")

# MobileNetV3-Large ``features``: the last block at stride 8 (40 ch), at stride 16 (112 ch) and
# the final 1x1 conv at stride 32 (960 ch). torchvision's mobilenet_backbone can only return the
# *first* block of a stage (after its down-sampling), which at stride 16 is the 80-channel block.
_MOBILENET_V3_RETURN_LAYERS = {"6": "0", "12": "1", "16": "2"}


class TinyBackbone(nn.Sequential):
    """A small plain CNN for CPU tests and benchmarks: a stem and four stages, each halving the size.

    ``stem`` (stride 2) -> ``stage1`` (4) -> ``stage2`` (8, C3) -> ``stage3`` (16, C4) -> ``stage4`` (32, C5).
    Each stage is a strided 3x3 conv-BN-ReLU followed by a 3x3 conv-BN-ReLU.

    Args:
        widths: output channels of ``(stem, stage1, stage2, stage3, stage4)``.
    """

    def __init__(self, widths: Sequence[int] = (16, 24, 32, 48, 64)) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"TinyBackbone needs 5 positive widths (stem, stage1..stage4), got {widths}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem"] = Conv2dNormActivation(3, widths[0], kernel_size=3, stride=2)
        for i in range(1, 5):
            layers[f"stage{i}"] = nn.Sequential(
                Conv2dNormActivation(widths[i - 1], widths[i], kernel_size=3, stride=2),
                Conv2dNormActivation(widths[i], widths[i], kernel_size=3, stride=1),
            )
        super().__init__(layers)
        self.widths = widths


def build_fpn_backbone(name: str, fpn_channels: int, tiny_widths: Sequence[int] | None = None) -> BackboneWithFPN:
    """A backbone with an FPN of width ``fpn_channels`` returning P3..P7 (see module doc).

    Args:
        name: one of :data:`BACKBONES`.
        fpn_channels: channels of every FPN level.
        tiny_widths: the 5 widths of :class:`TinyBackbone` (only for ``name == "tiny"``).

    Returns:
        A module mapping ``(B, 3, H, W)`` to an ordered dict ``{"0": P3, "1": P4, "2": P5,
        "p6": P6, "p7": P7}``, each ``(B, fpn_channels, H / stride, W / stride)``, with an
        ``out_channels`` attribute.
    """
    if name in RESNET_BACKBONES:
        body: nn.Module = getattr(resnet, name)(weights=None, norm_layer=nn.BatchNorm2d)
        return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
    elif name == "mobilenet_v3_large":
        body = mobilenet_v3_large(weights=None).features
        return_layers = dict(_MOBILENET_V3_RETURN_LAYERS)
    elif name == "tiny":
        body = TinyBackbone(tiny_widths or (16, 24, 32, 48, 64))
        return_layers = {"stage2": "0", "stage3": "1", "stage4": "2"}
    else:
        raise ValueError(f"Unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    in_channels = _returned_channels(body, return_layers)
    return BackboneWithFPN(
        body,
        return_layers=return_layers,
        in_channels_list=in_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
    )


def _returned_channels(body: nn.Module, return_layers: dict[str, str]) -> list[int]:
    """Channels of the layers in ``return_layers``, read from one small probe forward pass."""
    from torchvision.models._utils import IntermediateLayerGetter

    getter = IntermediateLayerGetter(body, return_layers=return_layers)
    was_training = body.training
    body.eval()
    with torch.no_grad():
        out = getter(torch.zeros(1, 3, 64, 64))
    body.train(was_training)
    return [int(out[key].shape[1]) for key in sorted(out, key=lambda k: int(k))]
