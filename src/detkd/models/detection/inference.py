"""A detector prepared for inference: BatchNorm folded into its convolutions, channels-last memory.

Training keeps BatchNorm as its own layer (its statistics move); in eval mode it is an affine map of
the conv before it and can be folded into that conv's weights (torch's ``fuse_conv_bn_eval``), one
pass over each feature map less. Channels-last (NHWC) memory is what oneDNN's CPU convolutions (and
cuDNN's) run natively; in the default NCHW layout every conv reorders its input and output.
``benchmarks/results/detector_inference_speed.md`` measures what the two buy on one CPU thread.

:func:`inference_copy` leaves the model it is given untouched, so a training run, a checkpoint or a
distillation loss never sees the folded copy. ONNX Runtime folds BatchNorm itself, so exported
graphs gain nothing from it beyond fewer nodes; eager PyTorch (``Predictor``, ``detkd bench``) does.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck

from detkd.models.detection.adapters import DetectorAdapter

# modules whose forward runs their children in registration order: a conv followed by a BatchNorm
# among their children is conv -> BatchNorm in the computation too
_IN_ORDER = (nn.Sequential, IntermediateLayerGetter)
# ResNet blocks call their layers by name: (conv, its BatchNorm)
_NAMED_PAIRS = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv into that conv, in place (eval mode only).

    A folded BatchNorm is replaced by ``nn.Identity`` and its conv gets the weight and bias of
    ``bn(conv(x))`` with the running statistics. Only the orders that the module's forward
    guarantees are folded (sequential containers, ResNet's ``conv1 -> bn1``); any other BatchNorm
    stays as it is.

    Returns:
        how many BatchNorm layers were folded.

    Raises:
        ValueError: ``module`` is in training mode (its BatchNorms normalise with batch statistics).
    """
    if module.training:
        raise ValueError("fold_batch_norms needs a module in eval mode (call .eval() first): "
                         "in training mode BatchNorm uses the batch's statistics, not its running ones")
    folded = 0
    for child in module.children():
        folded += fold_batch_norms(child)
    pairs: list[tuple[str, str]] = []
    if isinstance(module, _IN_ORDER):
        names = [name for name, _ in module.named_children()]
        pairs = list(zip(names, names[1:]))
    for block_type, named in _NAMED_PAIRS.items():
        if isinstance(module, block_type):
            pairs = list(named)
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name), getattr(module, bn_name)
        if _foldable(conv, bn):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return folded


def inference_copy(adapter: DetectorAdapter, channels_last: bool = True) -> DetectorAdapter:
    """An eval-mode copy of ``adapter`` for inference: BatchNorm folded, channels-last weights.

    Its detections equal the original's up to float rounding (about 1e-6 relative); the
    original keeps its mode and weights.

    Args:
        adapter: a detkd detector (any family).
        channels_last: store the conv weights NHWC (the activations follow).

    Returns:
        the prepared copy (a :class:`DetectorAdapter` of the same family and config).
    """
    if not isinstance(adapter, DetectorAdapter):
        raise TypeError(f"inference_copy takes a detkd detector (DetectorAdapter), got {type(adapter).__name__}")
    prepared = copy.deepcopy(adapter).eval()
    fold_batch_norms(prepared)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    return prepared


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == conv.out_channels)
