"""Export to ONNX, checked at once against PyTorch with ONNX Runtime on real photos.

:func:`export_onnx` traces a model's :class:`~detkd.export.graph.ExportGraph` with
``torch.onnx.export`` (the TorchScript exporter: it ships with every torch from 2.4 on, where
the dynamo exporter needs ``onnxscript`` and changed a lot between releases), runs the file in
ONNX Runtime (CPU) and in PyTorch on scikit-image photos, prints the tolerance and the worst
difference per output, and raises :class:`ParityError` when they disagree. The file carries its
description (input, outputs, configuration, parity) in its ONNX metadata under ``"detkd"``,
and the same JSON is written beside it (``model.onnx`` -> ``model.json``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detkd.export.graph import ExportGraph, Parity, merge_parity, plain

SIDECAR_FORMAT = "detkd.onnx"
SIDECAR_VERSION = 1
METADATA_KEY = "detkd"
DEFAULT_OPSET = 17  # GridSample needs 16; ONNX Runtime >= 1.14 runs 17
DEFAULT_TOLERANCE = 1e-4
#: Held-out scikit-image photos used for the parity check (never trained on).
CHECK_PHOTOS = ("coffee", "rocket")


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    sidecar: Path
    parity: Parity
    metadata: dict[str, Any]

    def summary(self) -> str:
        return f"{self.path}: {format_parity(self.parity, self.metadata['parity']['tolerance'])}"


# ---------------------------------------------------------------------- public API
def export_onnx(
    model: nn.Module,
    path: str | Path,
    height: int,
    width: int,
    *,
    dynamic: bool = False,
    raw_heads: bool = False,
    max_keypoints: int | None = None,
    max_detections: int = 100,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    check_photos: Sequence[str] = CHECK_PHOTOS,
    source: str | None = None,
    verbose: bool = True,
) -> ExportResult:
    """Export ``model`` to ONNX at ``height`` x ``width`` and check it against PyTorch.

    Args:
        model: a :class:`~detkd.models.superpoint.SuperPoint`, a detector
            (:class:`~detkd.models.detection.DetectorAdapter`), or an :class:`ExportGraph`.
        path: the ``.onnx`` file to write (folders are created).
        height, width: input size in pixels (multiples of 8 for key points).
        dynamic: batch, height and width become dynamic axes; the check then also runs a
            batch of two at a second size.
        raw_heads: key points: export the dense heads (logits, heatmap, dense descriptors)
            instead of the post-processed key points.
        max_keypoints: key points: fixed number of outputs ``K`` (default: the model's).
        max_detections, score_threshold, nms_iou: detectors: fixed number of outputs, and the
            post-processing's score threshold and class-wise NMS IoU.
        opset: ONNX opset (>= 16).
        tolerance: largest accepted difference per output (see :class:`Parity`).
        check_photos: scikit-image photo names used for the check.
        source: where the model came from, recorded in the metadata.
        verbose: print the parity line.

    Returns:
        :class:`ExportResult`; ``path`` holds the model, ``path.with_suffix('.json')`` its description.

    Raises:
        ValueError: a size the model cannot take.
        ParityError: ONNX Runtime disagrees with PyTorch; the file is kept as
            ``<name>.failed.onnx`` for inspection and no ``.onnx``/``.json`` is left behind.
    """
    graph = model if isinstance(model, ExportGraph) else graph_for(
        model, raw_heads=raw_heads, max_keypoints=max_keypoints, max_detections=max_detections,
        score_threshold=score_threshold, nms_iou=nms_iou)
    check_size(graph, height, width)
    if dynamic and not graph.supports_dynamic:
        raise ValueError(
            f"{graph.task} models export with a fixed size (their anchors are computed for it): drop --dynamic "
            "and export once per input size"
        )
    if opset < 16:
        raise ValueError(f"opset {opset} is too old: descriptor sampling needs GridSample (opset >= 16)")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX output file must end in .onnx, got '{path}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, graph.channels, height, width)
    trace_to_onnx(graph, example, path, dynamic=dynamic, opset=opset)

    photos = photo_batch(check_photos, graph.channels, height, width)
    batches = [photos] if dynamic else list(photos.split(1))
    if dynamic:
        second = (max(graph.min_size, _round_to(height // 2, graph.size_multiple)),
                  max(graph.min_size, _round_to(width // 2 + graph.size_multiple, graph.size_multiple)))
        batches.append(photo_batch(check_photos[:2], graph.channels, *second))
    parity = check_parity(graph, path, batches, tolerance)
    failures = parity_failures(parity, tolerance)
    if verbose:
        print(f"parity ONNX Runtime (CPU) vs PyTorch on {len(check_photos)} photo(s) at {height}x{width}"
              f"{' and a batch at a second size' if dynamic else ''}: {format_parity(parity, tolerance)}")
    if failures:
        failed = path.with_name(path.stem + ".failed.onnx")
        os.replace(path, failed)
        raise ParityError(
            f"ONNX export of {source or type(model).__name__} does not match PyTorch: {'; '.join(failures)}. "
            f"The file is kept as '{failed}' for inspection. Try another --opset, or report this with the file."
        )

    metadata = {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "task": graph.task, "source": source,
        "input": {"name": graph.input_name, "shape": [1 if not dynamic else "batch", graph.channels,
                                                      height if not dynamic else "height",
                                                      width if not dynamic else "width"],
                  "export_size": [height, width], **graph.input_spec},
        "outputs": [{"name": name, "description": graph.output_spec[name]} for name in graph.output_names],
        "raw_heads": raw_heads, "dynamic": dynamic, "opset": opset, "model": graph.config,
        "parity": {"tolerance": tolerance, "photos": list(check_photos),
                   **plain(asdict(parity))},
        "versions": {"torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "onnx": _version("onnx")},
    }
    embed_metadata(path, metadata)
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    return ExportResult(path, sidecar, parity, metadata)


def graph_for(model: Any, raw_heads: bool = False, max_keypoints: int | None = None, max_detections: int = 100,
              score_threshold: float = 0.05, nms_iou: float = 0.5) -> ExportGraph:
    """The :class:`ExportGraph` of a supported model (key-point network or detector adapter)."""
    from detkd.models.superpoint import SuperPoint

    if isinstance(model, SuperPoint):
        from detkd.export.keypoints import keypoint_graph

        return keypoint_graph(model, raw_heads=raw_heads, max_keypoints=max_keypoints)
    from detkd.models.detection import DetectorAdapter

    if isinstance(model, DetectorAdapter):
        from detkd.export.detection import detection_graph

        return detection_graph(model, raw_heads=raw_heads, max_detections=max_detections,
                               score_threshold=score_threshold, nms_iou=nms_iou)
    raise TypeError(
        f"Cannot export a {type(model).__name__}: detkd exports SuperPoint-family key-point models and "
        "detectors built by detkd.models.detection (DetectorAdapter)"
    )


def check_size(graph: ExportGraph, height: int, width: int) -> None:
    """Raise a ValueError naming the fix when ``height`` x ``width`` does not suit ``graph``."""
    for name, value in (("height", height), ("width", width)):
        if value < graph.min_size or value % graph.size_multiple:
            good = max(graph.min_size, _round_to(value, graph.size_multiple))
            raise ValueError(
                f"{graph.task} models take images whose sides are multiples of {graph.size_multiple} pixels "
                f"and at least {graph.min_size}; got {name} {value}. Use e.g. --{name} {good}."
            )


def trace_to_onnx(graph: ExportGraph, example: torch.Tensor, path: Path, *, dynamic: bool, opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript exporter on torch 2.4 ... 2.x."""
    kwargs: dict[str, Any] = {
        "input_names": [graph.input_name],
        "output_names": list(graph.output_names),
        "opset_version": opset,
        "do_constant_folding": True,
    }
    if dynamic:
        axes = {graph.input_name: {0: "batch", 2: "height", 3: "width"}}
        axes.update({name: graph.output_axes.get(name, {}) for name in graph.output_names})
        kwargs["dynamic_axes"] = axes
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the default from torch 2.9 on; it needs onnxscript
    with quiet_export(), torch.no_grad():
        torch.onnx.export(graph.module, (example,), str(path), **kwargs)


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the tracer's and the legacy exporter's expected warnings (size checks become constants)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def ort_session(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
                memory_arena: bool = True, spinning: bool = True) -> Any:
    """An ONNX Runtime session (all graph optimisations, sequential execution).

    Args:
        threads: ``intra_op_num_threads`` (None: ONNX Runtime's choice, all cores).
        providers: execution providers; default CPU only.
        memory_arena: ``enable_cpu_mem_arena`` (off to measure memory per run).
        spinning: worker threads spin while waiting for work (fastest on an idle machine; off
            on a shared one, where spinning threads steal the cores that do the work).
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = memory_arena
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=list(providers or ["CPUExecutionProvider"]))


def check_parity(graph: ExportGraph, path: str | Path, batches: Sequence[torch.Tensor],
                 tolerance: float = DEFAULT_TOLERANCE) -> Parity:
    """Run ``path`` in ONNX Runtime (CPU) and ``graph.module`` in PyTorch on each batch; the worst parity."""
    session = ort_session(path)
    reports = []
    for batch in batches:
        expected = graph.run_torch(batch)
        got = session.run(list(graph.output_names), {graph.input_name: batch.numpy()})
        reports.append(graph.compare(expected, got, batch, tolerance))
    return merge_parity(reports)


def parity_failures(parity: Parity, tolerance: float) -> list[str]:
    """Human-readable reasons why ``parity`` fails (empty when it passes)."""
    failures = [f"{name}: worst difference {value:.2e} > tolerance {tolerance:.0e}"
                for name, value in parity.errors.items() if not value <= tolerance]  # NaN fails too
    if parity.unexplained:
        failures.append(
            f"{parity.unexplained} detection(s) found by one runtime only, not explained by a near-tie "
            f"(detections found by both: {parity.agreement:.1%})"
        )
    return failures


def format_parity(parity: Parity, tolerance: float) -> str:
    """One line: worst difference per output against the tolerance, and the agreement."""
    parts = [f"{name} {value:.2e}{' (relative)' if parity.error_kinds.get(name) == 'rel' else ''}"
             for name, value in parity.errors.items()]
    text = f"worst difference {', '.join(parts)} (tolerance {tolerance:.0e})"
    if parity.agreement is not None:
        text += f"; detections found by both: {parity.agreement:.2%}"
        if parity.near_ties or parity.unexplained:
            text += f" ({parity.near_ties} near-tie(s) within tolerance, {parity.unexplained} unexplained)"
    return text + (" -> OK" if not parity_failures(parity, tolerance) else " -> FAILED")


def photo_batch(names: Sequence[str], channels: int, height: int, width: int) -> torch.Tensor:
    """scikit-image photos resized to ``height`` x ``width``: ``(N, channels, H, W)`` float32 in ``[0, 1]``."""
    from detkd.data.images import builtin_photo

    images = []
    for name in names:
        photo = torch.from_numpy(builtin_photo(name, grey=channels == 1))
        photo = photo[None] if photo.dim() == 2 else photo.permute(2, 0, 1)
        images.append(F.interpolate(photo[None], (height, width), mode="bilinear", antialias=True,
                                    align_corners=False)[0].clamp(0, 1))
    return torch.stack(images).contiguous()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The detkd description of an exported file: its ONNX metadata, else its ``.json`` sidecar.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file carries no detkd description (not exported by detkd).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ONNX file '{path}' does not exist")
    onnx = _import_onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf errors: not an ONNX file
        raise ValueError(f"'{path}' is not a readable ONNX file ({type(err).__name__}: {err})") from err
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        data = json.loads(sidecar.read_text())
        if data.get("format") == SIDECAR_FORMAT:
            return data
    raise ValueError(
        f"'{path}' was not exported by detkd (no '{METADATA_KEY}' metadata and no {sidecar.name}); "
        "export it with 'detkd export', or use onnxruntime directly"
    )


def embed_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` as JSON in the ONNX file's ``metadata_props`` under ``"detkd"``."""
    onnx = _import_onnx()
    proto = onnx.load(str(path))
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise RuntimeError("ONNX Runtime is not installed: pip install 'detkd[export]' (or onnxruntime)") from err
    return onnxruntime


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise RuntimeError("The onnx package is not installed: pip install 'detkd[export]' (or onnx)") from err
    return onnx


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)
