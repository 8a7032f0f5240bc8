"""The convolution blocks and encoders of the SuperPoint family (:mod:`detkd.models.superpoint`).

SuperPoint's VGG encoder of :class:`ConvBlock` s (conv -> ReLU -> BatchNorm, rpautrat's order, so that
the public weights load), and the strided :class:`FastEncoder` of the CPU students, of
:class:`ConvBNReLU` (or, trained with RepVGG's branches, :class:`RepConvBNReLU`), and the
:class:`ContextPyramid` that a student may add on top of either. In eval mode every
BatchNorm that follows a conv directly runs folded into that conv (:func:`folded_conv_weights`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def folded_conv_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(C_out, C_in, k, k)`` and bias ``(C_out,)`` of one conv equal to ``bn(conv(x))`` with
    BatchNorm's running statistics (eval mode)."""
    return folded_weights(conv.weight, conv.bias, bn)


def folded_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`folded_conv_weights` for a conv given by its ``weight`` ``(C_out, C_in, k, k)`` and ``bias``
    ``(C_out,)`` (None: none), e.g. a constant kernel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale[:, None, None, None], (bias - bn.running_mean) * scale + bn.bias


def can_fold_batch_norm(module: nn.Module, bn: nn.Module) -> bool:
    """Whether ``module`` may run its conv and BatchNorm as one conv: eval mode, running statistics,
    eager PyTorch (a traced graph keeps both; ONNX Runtime fuses them itself)."""
    return (not module.training and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()))


class ConvBlock(nn.Sequential):
    """conv -> ReLU -> BatchNorm (rpautrat order); BatchNorm is an identity when disabled.

    Without ReLU, in eval mode, conv and BatchNorm run as one conv (:func:`folded_conv_weights`):
    the same values, one pass over the output less (the 256-channel descriptor map).
    """

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, relu: bool = True, batch_norm: bool = False,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.activation = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.activation, nn.Identity) or not can_fold_batch_norm(self, self.bn):
            return super().forward(x)
        weight, bias = folded_conv_weights(self.conv, self.bn)  # type: ignore[arg-type]
        return F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding)


def vgg_encoder(channels: tuple[int, ...], batch_norm: bool = False, bn_eps: float = 1e-3) -> nn.Sequential:
    """SuperPoint's encoder: per width, two 3x3 :class:`ConvBlock` s, then 2x2 max-pooling (not after the last).

    ``(B, 1, H, W)`` -> ``(B, channels[3], H/8, W/8)``. Modules ``{i}.{j}.conv/bn`` (rpautrat's names).
    """
    stages = []
    c_in = 1
    for i, width in enumerate(channels):
        layers: list[nn.Module] = [
            ConvBlock(c_in, width, 3, batch_norm=batch_norm, bn_eps=bn_eps),
            ConvBlock(width, width, 3, batch_norm=batch_norm, bn_eps=bn_eps),
        ]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        stages.append(nn.Sequential(*layers))
        c_in = width
    return nn.Sequential(*stages)


class ConvBNReLU(nn.Sequential):
    """3x3 conv (stride 1 or 2) -> BatchNorm -> ReLU, the order ONNX Runtime fuses into one conv.

    Without BatchNorm the conv has a bias instead. In eval mode eager PyTorch runs conv and
    BatchNorm as one conv too (:func:`folded_conv_weights`).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, batch_norm: bool = True, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps) if batch_norm else nn.Identity()
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not can_fold_batch_norm(self, self.bn):
            return super().forward(x)
        weight, bias = folded_conv_weights(self.conv, self.bn)  # type: ignore[arg-type]
        return F.relu(F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding), inplace=True)


class RepConvBNReLU(nn.Module):
    """:class:`ConvBNReLU` that trains with RepVGG's branches (Ding et al. 2021) and infers as one 3x3 conv.

    Training: ``relu(bn(conv3x3(x)) + bn_1x1(conv1x1(x)) [+ bn_identity(x)])``, the 1x1 conv with the same
    stride, the identity branch (a BatchNorm of the input) only where width and size are kept. Each
    branch is linear in ``x`` in eval mode, so the sum is one 3x3 conv with a bias
    (:meth:`merged_weights`): eval mode, traced graphs and ONNX files run that single conv, the cost of a
    :class:`ConvBNReLU`. The branches add training-time capacity only. Module names ``conv``/``bn`` are
    :class:`ConvBNReLU`'s.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps)
        self.conv_1x1 = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        self.bn_1x1 = nn.BatchNorm2d(c_out, eps=bn_eps)
        self.bn_identity = nn.BatchNorm2d(c_in, eps=bn_eps) if c_in == c_out and stride == 1 else None
        # constant kernels of the merge (not saved): the 3x3 centre tap, and the identity as a 3x3 conv. As
        # buffers, a traced graph holds them as initializers and the ONNX exporter folds the merge into one weight
        centre = torch.zeros(1, 1, 3, 3)
        centre[0, 0, 1, 1] = 1.0
        self.register_buffer("centre_tap", centre, persistent=False)
        if self.bn_identity is not None:
            self.register_buffer("identity_kernel", torch.eye(c_out)[:, :, None, None] * centre, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            y = self.bn(self.conv(x)) + self.bn_1x1(self.conv_1x1(x))
            return F.relu(y + self.bn_identity(x) if self.bn_identity is not None else y)
        weight, bias = self.merged_weights()
        return F.relu(F.conv2d(x, weight, bias, self.conv.stride, padding=1))

    def merged_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(C_out, C_in, 3, 3)`` and bias ``(C_out,)`` of the one conv equal to the branches' sum
        in eval mode (BatchNorm's running statistics)."""
        # products with the constant kernels, no padding or indexing: a traced graph keeps the kernel's shape
        # (the ONNX exporter needs it) and folds the whole merge into one initializer
        weight, bias = folded_conv_weights(self.conv, self.bn)
        weight_1x1, bias_1x1 = folded_conv_weights(self.conv_1x1, self.bn_1x1)
        weight = weight + weight_1x1 * self.centre_tap
        bias = bias + bias_1x1
        if self.bn_identity is not None:  # the identity is a conv with a constant kernel
            weight_identity, bias_identity = folded_weights(self.identity_kernel, None, self.bn_identity)
            weight = weight + weight_identity
            bias = bias + bias_identity
        return weight, bias

    def zero_branches(self) -> None:
        """Make the added branches output zeros (BatchNorm scale and shift 0), so that a block whose 3x3
        conv and BatchNorm come from a trained model without branches starts as that model's block."""
        for bn in (self.bn_1x1, self.bn_identity):
            if bn is not None:
                nn.init.zeros_(bn.weight)
                nn.init.zeros_(bn.bias)


class FastEncoder(nn.Sequential):
    """Strided encoder for CPU students: nothing runs at full resolution.

    ``(B, 1, H, W)`` -> ``(B, c4, H/8, W/8)`` with ``channels = (c1, c2, c3, c4)``:

    * ``stem``: 3x3 stride-2 conv to ``c1`` (``H/2``);
    * ``stage2``, ``stage3``: a 3x3 stride-2 conv to ``c2`` / ``c3`` and a 3x3 conv (``H/4``, ``H/8``);
    * ``stage4``: a 3x3 conv to ``c4`` at ``H/8``; the heads' own 3x3 convs follow.

    Every conv is :class:`ConvBNReLU`, or with ``reparam_branches`` a :class:`RepConvBNReLU` (the same
    conv at inference, trained with 1x1 and identity branches). The first conv sees 1 channel and the
    full-resolution image once, with stride 2: at 480x640 the ``H/2`` level costs ``9 c1`` multiply-adds
    per output pixel, against ``9 c1 (1 + c1)`` per input pixel for a VGG stage.
    """

    def __init__(self, channels: tuple[int, ...], batch_norm: bool = True, bn_eps: float = 1e-3,
                 reparam_branches: bool = False) -> None:
        c1, c2, c3, c4 = channels

        def block(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
            if reparam_branches:
                return RepConvBNReLU(c_in, c_out, stride=stride, bn_eps=bn_eps)
            return ConvBNReLU(c_in, c_out, stride=stride, batch_norm=batch_norm, bn_eps=bn_eps)

        super().__init__(OrderedDict(
            stem=block(1, c1, stride=2),
            stage2=nn.Sequential(block(c1, c2, stride=2), block(c2, c2)),
            stage3=nn.Sequential(block(c2, c3, stride=2), block(c3, c3)),
            stage4=block(c3, c4),
        ))


class ContextPyramid(nn.Module):
    """Context from two coarser levels added to the stride-8 features (a pyramid fusion, as in XFeat and FPN).

    ``(B, C, h, w)`` -> ``(B, C, h, w)``: two stride-2 stages of ``width`` channels (each a 3x3 stride-2
    :class:`ConvBNReLU` and a 3x3 one) give stride-16 and stride-32 maps; the stride-32 map is upsampled
    (bilinear) onto the stride-16 one and added, projected to ``C`` channels by a 1x1 conv (no ReLU) and added,
    upsampled, to the input. A stride-8 cell of the fast encoder (with the head's 3x3 conv) has a receptive
    field of about 70 px; with the pyramid about 250, at the cost of convs on 1/4 and 1/16 of the cells
    (XFeat fuses its stride-16 and stride-32 maps the same way). With :func:`zero_output` on ``project``
    the module is the identity, so that it can be grown onto a trained model.
    """

    def __init__(self, channels: int, width: int, batch_norm: bool = True, bn_eps: float = 1e-3) -> None:
        super().__init__()
        bn = {"batch_norm": batch_norm, "bn_eps": bn_eps}
        self.down16 = nn.Sequential(ConvBNReLU(channels, width, stride=2, **bn), ConvBNReLU(width, width, **bn))
        self.down32 = nn.Sequential(ConvBNReLU(width, width, stride=2, **bn), ConvBNReLU(width, width, **bn))
        self.project = ConvBlock(width, channels, 1, relu=False, **bn)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        s16 = self.down16(features)
        s32 = self.down32(s16)
        s16 = s16 + F.interpolate(s32, size=s16.shape[-2:], mode="bilinear", align_corners=False)
        return features + F.interpolate(self.project(s16), size=features.shape[-2:], mode="bilinear",
                                        align_corners=False)


def zero_output(block: ConvBlock) -> None:
    """Make ``block`` output zeros (its BatchNorm's scale and shift, or else its conv, set to 0), so that a
    branch added to a trained model starts as a no-op and the model's step-0 outputs are the file's."""
    last = block.bn if isinstance(block.bn, nn.BatchNorm2d) else block.conv
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
