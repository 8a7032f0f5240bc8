"""Deploying models: ONNX export checked against PyTorch, speed/size benchmarks.

* :func:`export_onnx` (:mod:`.onnx`): a key-point model or a detector with its post-processing
  (or its raw heads) to ONNX, run at once in ONNX Runtime and PyTorch on real photos;
  :class:`ParityError` when they disagree. The graphs themselves: :mod:`.keypoints`,
  :mod:`.detection`.
* :func:`benchmark` (:mod:`.bench`): parameters, GFLOPs, peak memory and latency of several
  models in PyTorch and ONNX Runtime, measured side by side.
* :func:`load_model_source` (:mod:`.sources`): what ``MODEL`` on the command line means.
"""

from detkd.export.bench import BenchReport, benchmark
from detkd.export.onnx import ExportResult, ParityError, export_onnx, read_metadata
from detkd.export.sources import ModelSource, load_model_source

__all__ = [
    "BenchReport", "ExportResult", "ModelSource", "ParityError", "benchmark", "export_onnx",
    "load_model_source", "read_metadata",
]
