"""What an exporter needs to know about a model: the module to trace, its input and outputs.

Each pillar builds an :class:`ExportGraph` for its models (:func:`detkd.export.keypoints.keypoint_graph`;
detectors get theirs the same way); :mod:`detkd.export.onnx` exports and checks any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class Parity:
    """How far ONNX Runtime's outputs are from PyTorch's on one set of inputs.

    Attributes:
        errors: output name -> worst difference (absolute for values in ``[0, 1]`` or unit
            vectors; relative to the largest reference magnitude for unbounded values such as
            logits and box coordinates, as ``error_kinds`` says).
        error_kinds: output name -> ``"abs"`` or ``"rel"``.
        agreement: fraction of detections (key points, boxes) found by both runtimes
            (intersection over union of the two sets), ``None`` for dense outputs.
        near_ties: detections found by one runtime only whose selection was decided by
            values closer than the tolerance (a score at the threshold, at the k-th best score,
            or equal to a neighbour in NMS): rounding may flip those either way.
        unexplained: detections found by one runtime only for any other reason (a failure).
    """

    errors: dict[str, float]
    error_kinds: dict[str, str] = field(default_factory=dict)
    agreement: float | None = None
    near_ties: int = 0
    unexplained: int = 0


@dataclass
class ExportGraph:
    """A model ready for ``torch.onnx.export``.

    Attributes:
        task: ``"keypoints"`` or ``"detection"``.
        module: eval-mode module on the CPU; ``module(input)`` returns a tuple in the order of
            ``output_names``.
        input_name: name of the single graph input.
        channels: input channels (1 grey, 3 RGB).
        output_names: names of the graph outputs, in order.
        output_axes: per output, its axes that are dynamic with ``--dynamic``
            (``{axis: name}``; the batch axis and image-sized axes).
        input_spec: plain description of the input (layout, colour, range, normalisation)
            written into the sidecar file.
        output_spec: output name -> plain description (shape, unit).
        config: the model's configuration, written into the sidecar file.
        compare: ``(torch outputs, onnx outputs, input batch, tolerance) -> Parity``, outputs
            as numpy arrays in ``output_names`` order.
    """

    task: str
    module: nn.Module
    input_name: str
    channels: int
    output_names: tuple[str, ...]
    output_axes: dict[str, dict[int, str]]
    input_spec: dict[str, Any]
    output_spec: dict[str, str]
    config: dict[str, Any]
    compare: Callable[[Sequence[np.ndarray], Sequence[np.ndarray], torch.Tensor, float], Parity]
    min_size: int = 16  # pixels, smallest side the graph accepts
    size_multiple: int = 8
    supports_dynamic: bool = True  # False: sizes are baked in (e.g. detector anchors)

    def run_torch(self, batch: torch.Tensor) -> list[np.ndarray]:
        """Outputs of the PyTorch module for ``batch`` ``(B, C, H, W)``, as numpy arrays."""
        with torch.inference_mode():
            outputs = self.module(batch)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return [o.detach().cpu().numpy() for o in outputs]


def worst_difference(reference: np.ndarray, other: np.ndarray, relative: bool = False) -> float:
    """Largest ``|reference - other|``; divided by ``max(1, max|reference|)`` when ``relative``."""
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: PyTorch {reference.shape}, ONNX Runtime {other.shape}")
    if reference.size == 0:
        return 0.0
    diff = float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64))))
    if relative:
        diff /= max(1.0, float(np.max(np.abs(reference))))
    return diff


def merge_parity(reports: Sequence[Parity]) -> Parity:
    """The worst of several :class:`Parity` results (largest errors, lowest agreement)."""
    errors: dict[str, float] = {}
    kinds: dict[str, str] = {}
    agreements = [r.agreement for r in reports if r.agreement is not None]
    for report in reports:
        for name, value in report.errors.items():
            errors[name] = max(errors.get(name, 0.0), value)
        kinds.update(report.error_kinds)
    return Parity(errors, kinds, min(agreements) if agreements else None,
                  sum(r.near_ties for r in reports), sum(r.unexplained for r in reports))


def plain(value: Any) -> Any:
    """``value`` with tuples, numpy scalars and paths turned into JSON types."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
