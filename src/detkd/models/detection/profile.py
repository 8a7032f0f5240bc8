"""Size and cost of a detector: parameters and GFLOPs of one forward pass."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from detkd.models.detection.adapters import DetectorAdapter
from detkd.models.superpoint import count_parameters

__all__ = ["count_parameters", "detector_gflops"]


def detector_gflops(adapter: DetectorAdapter, height: int, width: int, batch: int = 1) -> float:
    """GFLOPs (1 multiply-add = 2 FLOPs, ``torch.utils.flop_counter``) of one eval forward pass.

    Counts what :meth:`DetectorAdapter.forward` runs in eval mode without targets: backbone, FPN,
    heads, and for Faster R-CNN the RoI head on the RPN's proposals (whose number depends on the
    weights: an untrained RPN keeps ``rpn_post_nms_top_n_test`` of them). Post-processing (NMS)
    is not counted. The mode of ``adapter`` is restored afterwards.
    """
    device = next(adapter.parameters()).device
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = adapter.training
    adapter.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            adapter(images)
    finally:
        adapter.train(was_training)
    return counter.get_total_flops() / 1e9
