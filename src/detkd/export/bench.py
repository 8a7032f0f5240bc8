"""Speed and size of several models, measured side by side in one run.

For each model: parameters, GFLOPs (``torch.utils.flop_counter``; one multiply-add = 2 FLOPs),
peak memory of one inference (:mod:`detkd.export.memory` states the method), and latency
(median and 90th percentile of repeated runs after warm-up) in PyTorch and in ONNX Runtime, on
the CPU with a stated number of threads (``torch.set_num_threads`` and ONNX Runtime's
``intra_op_num_threads``) and on the GPU when there is one. Runs are interleaved round-robin
over the models, so that a slow patch of a shared machine hits all of them alike; the first
model is the reference (the teacher) of every ratio.

What is timed is the deployable computation: the network and its post-processing (for key
points :class:`~detkd.export.keypoints.KeypointPostprocess`), the same graph in both runtimes,
on a real photo resized to the benchmark size; each model is exported to ONNX and checked
against PyTorch first (the parity numbers are part of the result).

Key-point teachers of other families (DISK, ALIKED, XFeat: :attr:`ModelSource.exportable` is
false) cannot be exported: their row is timed in PyTorch only, running the family's own
``extract`` (top ``K`` key points, ``K`` as for the exported graphs), interleaved with the other
rows; parameters and GFLOPs count what that ``extract`` runs; ONNX Runtime, CPU peak memory and
parity are ``n/a`` and the table's notes say why (:data:`PYTORCH_ONLY_NOTE`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from detkd.export.keypoints import DEFAULT_MAX_KEYPOINTS
from detkd.export.memory import CPU_METHOD, GPU_METHOD, cpu_peak_mb, gpu_peak_mb
from detkd.export.onnx import export_onnx, format_parity, graph_for, import_onnxruntime, ort_session, photo_batch, read_metadata
from detkd.export.records import environment
from detkd.export.sources import ModelSource, load_model_source
from detkd.export.timing import LatencyStats, interleaved_latency
from detkd.models.superpoint import inference_parameter_count

#: Runtime keys, in table order.
RUNTIMES = ("pytorch-cpu", "onnxruntime-cpu", "pytorch-cuda", "onnxruntime-cuda")
#: The table's note on rows that run in PyTorch only (after the rows' names).
PYTORCH_ONLY_NOTE = "ONNX export of DISK/ALIKED/XFeat is not supported: PyTorch only"


@dataclass
class BenchRow:
    """Everything measured for one model.

    ``path`` is the resolved file the model came from (:attr:`ModelSource.path`; ``None`` for a
    model built by name): ``detkd report --bench`` matches rows to its runs' model files by it,
    whatever the row's display ``name``.
    """

    name: str
    origin: str
    task: str
    params: int | None
    gflops: float | None
    onnx_mb: float | None
    latency: dict[str, LatencyStats] = field(default_factory=dict)
    memory_mb: dict[str, float | None] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    path: str | None = None
    match: LatencyStats | None = None  # matching one pair's features (bench --matcher)
    match_count: int | None = None  # the matches that pair gave


@dataclass
class BenchReport:
    """Rows plus the conditions they were measured under."""

    rows: list[BenchRow]
    height: int
    width: int
    threads: int
    repeats: int
    warmup: int
    memory_method: dict[str, str]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    matcher: str | None = None  # what the match column timed, in words (None: not timed)

    def ratio(self, row: BenchRow, runtime: str, reference_runtime: str | None = None) -> float | None:
        """Latency of the first model (in ``reference_runtime``, default the same) over ``row``'s."""
        ref = self.rows[0].latency.get(reference_runtime or runtime)
        own = row.latency.get(runtime)
        return ref.median_ms / own.median_ms if ref and own and own.median_ms > 0 else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, out in zip(self.rows, data["rows"]):
            out["speedup_vs_first"] = {rt: self.ratio(row, rt) for rt in row.latency}
            out["onnxruntime_cpu_speedup_vs_first_pytorch_cpu"] = self.ratio(row, "onnxruntime-cpu", "pytorch-cpu")
        return data

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """Markdown table: size, cost, latency per runtime with ratios to the first model."""
        runtimes = [rt for rt in RUNTIMES if any(rt in r.latency for r in self.rows)]
        first = self.rows[0]
        head = ["model", "params", "GFLOPs", "ONNX MB"]
        for rt in runtimes:
            head += [f"{rt} median ms", f"{rt} p90 ms", f"{rt} speed-up"]
        if "onnxruntime-cpu" in runtimes and "pytorch-cpu" in runtimes:
            head.append(f"ORT-cpu speed-up vs {first.name} PyTorch-cpu")
        head += [f"peak MB {rt}" for rt in runtimes if any(r.memory_mb.get(rt) is not None for r in self.rows)]
        if self.matcher:
            head += ["match ms", "pair ms (2 extracts + match)"]
        head.append("parity (worst diff)")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            cells = [
                row.name,
                _count(row.params) + (f" ({row.params / first.params:.2f}x)" if row.params and first.params else ""),
                "n/a" if row.gflops is None else f"{row.gflops:.2f}" + (
                    f" ({row.gflops / first.gflops:.2f}x)" if first.gflops else ""),
                "n/a" if row.onnx_mb is None else f"{row.onnx_mb:.1f}",
            ]
            for rt in runtimes:
                stats = row.latency.get(rt)
                ratio = self.ratio(row, rt)
                cells += ["n/a", "n/a", "n/a"] if stats is None else [
                    f"{stats.median_ms:.1f}", f"{stats.p90_ms:.1f}", "n/a" if ratio is None else f"{ratio:.2f}x"]
            if "onnxruntime-cpu" in runtimes and "pytorch-cpu" in runtimes:
                cross = self.ratio(row, "onnxruntime-cpu", "pytorch-cpu")
                cells.append("n/a" if cross is None else f"{cross:.2f}x")
            for rt in runtimes:
                if any(r.memory_mb.get(rt) is not None for r in self.rows):
                    value = row.memory_mb.get(rt)
                    cells.append("n/a" if value is None else f"{value:.1f}")
            if self.matcher:
                extract = row.latency.get("pytorch-cpu")
                cells += ["n/a", "n/a"] if row.match is None else [
                    f"{row.match.median_ms:.1f} ({row.match_count} matches)",
                    "n/a" if extract is None else f"{2 * extract.median_ms + row.match.median_ms:.1f}"]
            cells.append(_parity_cell(row.parity))
            lines.append("| " + " | ".join(cells) + " |")
        if self.notes:
            lines += [""] + [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)

    def conditions(self) -> str:
        """One paragraph: size, threads, repeats, machine, methods."""
        env = self.environment
        return (
            f"Input {self.height}x{self.width} (a real photo), batch 1; CPU: {self.threads} thread(s) "
            f"(torch.set_num_threads, ONNX Runtime intra_op_num_threads; {env.get('cpu_count')} cores seen; "
            f"waiting threads: OMP_WAIT_POLICY {env.get('omp_wait_policy')}, ONNX Runtime spinning "
            f"{'on' if env.get('onnxruntime_spinning', True) else 'off'}; load average at the end "
            f"{_load(env.get('load_average'))}); "
            f"latency = median and 90th percentile of {self.repeats} runs per model after {self.warmup} warm-up "
            f"runs, models interleaved round-robin; speed-up = first model's median / this model's median "
            f"(same runtime). GFLOPs: torch.utils.flop_counter, 1 multiply-add = 2 FLOPs. "
            f"Peak memory (CPU): {self.memory_method.get('cpu', 'not measured')}."
            + (f" GPU: {env['gpu']}; memory: {self.memory_method.get('gpu')}." if env.get("gpu") else " No GPU.")
            + f" torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, {env.get('machine')}."
            + (f" match ms: matching the features of one pair (the photo and a warped copy, each row's own "
               f"points, CPU, PyTorch) with {self.matcher}, rows interleaved; pair ms = 2 x the PyTorch-cpu "
               f"extract + match." if self.matcher else "")
        )


# ---------------------------------------------------------------------- measuring
def benchmark(
    models: Sequence[str | Path | ModelSource],
    height: int,
    width: int,
    *,
    threads: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    memory: bool = True,
    gpu: bool | None = None,
    spinning: bool = True,
    max_keypoints: int | None = None,
    work_dir: str | Path | None = None,
    matcher: str | None = None,
    matcher_weights: Any = None,
    log: Callable[[str], None] | None = print,
) -> BenchReport:
    """Measure ``models`` side by side (see the module doc); the first is the reference.

    Args:
        models: MODEL specs (:func:`detkd.export.sources.load_model_source`) or loaded sources.
        height, width: input size in pixels.
        threads: CPU threads for both runtimes.
        repeats: timed runs per model and runtime.
        warmup: untimed runs before them.
        memory: measure peak memory (CPU: a fresh process per model and runtime, a few seconds each).
        gpu: also measure on CUDA (default: when available).
        spinning: ONNX Runtime's threads spin while waiting. On a machine shared with other jobs
            turn it off, and start the process with ``OMP_WAIT_POLICY=PASSIVE`` so that
            PyTorch's OpenMP threads do not spin either: spinning threads of an oversubscribed
            machine can make small ops orders of magnitude slower.
        max_keypoints: ``K`` of the key-point graphs (default: each model's own, 1024 when it has
            none) and of the teachers' ``extract`` (default 1024).
        work_dir: where the ONNX exports go (default: a temporary folder).
        matcher: also time matching one pair's features of every key-point row with ``"mnn"`` or
            ``"lightglue"`` (:mod:`detkd.export.match_bench`); ``None``: not timed.
        matcher_weights: LightGlue weight files (``--matcher-weights``).
    """
    if not models:
        raise ValueError("benchmark needs at least one model")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    say = log or (lambda _: None)
    sources = [m if isinstance(m, ModelSource) else load_model_source(m) for m in models]
    _unique_names(sources)
    gpu = torch.cuda.is_available() if gpu is None else gpu
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="detkd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        prepared = [_prepare(s, height, width, max_keypoints, work, say) for s in sources]
        cpu_runners: dict[str, dict[str, Callable[[], Any]]] = {"pytorch-cpu": {}, "onnxruntime-cpu": {}}
        for item in prepared:
            batch = photo_batch(["coffee"], item.channels, height, width)
            if item.module is not None:
                cpu_runners["pytorch-cpu"][item.row.name] = _torch_runner(item.module, batch)
            if item.onnx_path is not None:
                session = ort_session(item.onnx_path, threads=threads, spinning=spinning)
                cpu_runners["onnxruntime-cpu"][item.row.name] = _ort_runner(session, batch)
        for runtime, runners in cpu_runners.items():
            say(f"timing {runtime} ({threads} thread(s)): {len(runners)} model(s) x {repeats} runs ...")
            for name, stats in interleaved_latency(runners, repeats, warmup).items():
                _row(prepared, name).latency[runtime] = stats
        matcher_words, match_notes = None, []
        if matcher:
            from detkd.export.match_bench import time_row_matches

            modules = [s.module if s.task == "keypoints" else None for s in sources]
            matcher_words, match_notes = time_row_matches(
                [p.row for p in prepared], modules, matcher, (height, width), _teacher_keypoints(max_keypoints),
                repeats=repeats, warmup=warmup, matcher_weights=matcher_weights, log=say)
        if gpu:
            _gpu_latency(prepared, height, width, repeats, warmup, say)
        if memory:
            say("measuring peak memory (one fresh process per model and runtime) ...")
            for item in prepared:
                if item.model_file is not None:
                    item.row.memory_mb["pytorch-cpu"] = cpu_peak_mb("pytorch", item.model_file, height, width,
                                                                    item.channels, threads, task=item.row.task)
                if item.onnx_path is not None:
                    item.row.memory_mb["onnxruntime-cpu"] = cpu_peak_mb("onnxruntime", item.onnx_path, height,
                                                                        width, item.channels, threads)
    finally:
        torch.set_num_threads(previous_threads)
    methods = {"cpu": CPU_METHOD if memory else "not measured"}
    if gpu:
        methods["gpu"] = GPU_METHOD
    env = {**environment(gpu), "onnxruntime_spinning": spinning}
    pytorch_only = [p.row.name for p in prepared if p.onnx_path is None]
    notes = [f"{', '.join(pytorch_only)}: {PYTORCH_ONLY_NOTE} (the model's own extract, top "
             f"{_teacher_keypoints(max_keypoints)} key points; ONNX Runtime, CPU peak memory and parity n/a)."
             ] if pytorch_only else []
    return BenchReport([p.row for p in prepared], height, width, threads, repeats, warmup, methods, env,
                       notes + match_notes, matcher=matcher_words)


def count_gflops(module: torch.nn.Module, example: torch.Tensor) -> float:
    """GFLOPs of ``module(example)`` (``torch.utils.flop_counter``; a multiply-add is 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(example)
    return counter.get_total_flops() / 1e9


def used_parameters(module: torch.nn.Module, example: torch.Tensor) -> int:
    """Parameters that ``module(example)`` reads (any op, functional ones included): a network's heads
    that the timed computation never runs (XFeat's fine matcher in ``extract``) are not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    read: set[int] = set()

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            read.update(t.data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
            return func(*args, **(kwargs or {}))

    with torch.inference_mode(), Reads():
        module(example)
    used = {id(p): p for p in module.parameters() if p.data_ptr() in read}
    return sum(p.numel() for p in used.values())


# ---------------------------------------------------------------------- helpers
@dataclass
class _Prepared:
    row: BenchRow
    module: torch.nn.Module | None  # what PyTorch times (None: an ONNX file)
    onnx_path: Path | None  # what ONNX Runtime times (None: PyTorch only)
    model_file: Path | None
    channels: int


class TeacherExtract(torch.nn.Module):
    """A key-point teacher's own ``extract`` with a fixed ``max_keypoints``: what bench times for it."""

    def __init__(self, teacher: torch.nn.Module, max_keypoints: int) -> None:
        super().__init__()
        self.teacher = teacher
        self.max_keypoints = max_keypoints

    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        return self.teacher.extract(image, max_keypoints=self.max_keypoints)


def _teacher_keypoints(max_keypoints: int | None) -> int:
    """``K`` of a teacher's ``extract``: as an exported graph's (``max_keypoints``, else 1024)."""
    return max_keypoints if max_keypoints is not None and max_keypoints > 0 else DEFAULT_MAX_KEYPOINTS


def _prepare(source: ModelSource, height: int, width: int, max_keypoints: int | None, work: Path,
             say: Callable[[str], None]) -> _Prepared:
    """Export (and check) a PyTorch model, or open an ONNX file; count parameters and FLOPs.

    A model the exporter does not take (:attr:`ModelSource.exportable`) is timed in PyTorch only.
    """
    if source.is_onnx:
        meta = read_metadata(source.onnx_path)
        if meta.get("raw_heads"):
            raise ValueError(f"'{source.onnx_path}' has raw heads only; bench exports with post-processing")
        size = meta["input"]["export_size"]
        if not meta.get("dynamic") and tuple(size) != (height, width):
            raise ValueError(
                f"'{source.onnx_path}' was exported for {size[0]}x{size[1]}, not {height}x{width}: "
                "bench it at its own size or re-export it (detkd export --height/--width or --dynamic)"
            )
        row = BenchRow(source.name, source.origin, source.task, _onnx_params(source.onnx_path), None,
                       source.onnx_path.stat().st_size / 2**20, parity=meta.get("parity"),
                       path=_path_text(source))
        return _Prepared(row, None, source.onnx_path, None, int(meta["input"]["shape"][1]))
    if not source.exportable:
        module = TeacherExtract(source.module, _teacher_keypoints(max_keypoints)).eval()
        channels = int(source.module.channels)
        say(f"{source.name} ({source.origin}): {PYTORCH_ONLY_NOTE}")
        example = photo_batch(["coffee"], channels, height, width)
        row = BenchRow(source.name, source.origin, source.task, used_parameters(module, example),
                       count_gflops(module, example), None, path=_path_text(source))
        return _Prepared(row, module, None, None, channels)
    graph = graph_for(source.module, max_keypoints=max_keypoints)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name)
    say(f"exporting {source.name} ({source.origin}) to ONNX at {height}x{width} ...")
    result = export_onnx(graph, work / f"{safe}.onnx", height, width, source=source.origin, verbose=False)
    say(f"  {format_parity(result.parity, result.metadata['parity']['tolerance'])}")
    model_file = save_model_file(source.module, work / f"{safe}.pt")
    example = photo_batch(["coffee"], graph.channels, height, width)
    name = source.name
    scale = float(getattr(source.module, "conf", {}).get("input_scale", 1.0))
    if scale != 1:  # the graph upsamples the image (scale^2 the arithmetic): the table says so
        name += f" (input x{scale:g})"
    row = BenchRow(
        name, source.origin, source.task,
        inference_parameter_count(source.module), count_gflops(graph.module, example),
        result.path.stat().st_size / 2**20, parity=result.metadata["parity"], path=_path_text(source),
    )
    return _Prepared(row, graph.module, result.path, model_file, graph.channels)


def save_model_file(module: torch.nn.Module, path: Path) -> Path:
    """Write a key-point model or a detector to its detkd file format."""
    from detkd.models.superpoint import SuperPoint

    if isinstance(module, SuperPoint):
        from detkd.models.weights import save_keypoint_model

        return save_keypoint_model(module, path)
    from detkd.models.detection import save_detector

    return save_detector(module, path)


def _torch_runner(module: torch.nn.Module, batch: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return module(batch)

    return run


def _ort_runner(session: Any, batch: torch.Tensor) -> Callable[[], Any]:
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(batch.numpy())}
    return lambda: session.run(None, feed)


def _gpu_latency(prepared: list[_Prepared], height: int, width: int, repeats: int, warmup: int,
                 say: Callable[[str], None]) -> None:
    runners: dict[str, Callable[[], Any]] = {}
    for item in prepared:
        if item.module is None:
            continue
        module = item.module.to("cuda")
        batch = photo_batch(["coffee"], item.channels, height, width).cuda()

        def run(module: torch.nn.Module = module, batch: torch.Tensor = batch) -> None:
            with torch.inference_mode():
                module(batch)
            torch.cuda.synchronize()

        runners[item.row.name] = run
    say(f"timing pytorch-cuda: {len(runners)} model(s) x {repeats} runs ...")
    for name, stats in interleaved_latency(runners, repeats, warmup).items():
        _row(prepared, name).latency["pytorch-cuda"] = stats
    for name, run in runners.items():
        _row(prepared, name).memory_mb["pytorch-cuda"] = gpu_peak_mb(run)
    for item in prepared:
        if item.module is not None:
            item.module.to("cpu")
    if "CUDAExecutionProvider" in import_onnxruntime().get_available_providers():
        ort_runners = {}
        for item in prepared:
            if item.onnx_path is None:
                continue
            session = ort_session(item.onnx_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            ort_runners[item.row.name] = _ort_runner(session, photo_batch(["coffee"], item.channels, height, width))
        say(f"timing onnxruntime-cuda: {len(ort_runners)} model(s) x {repeats} runs ...")
        for name, stats in interleaved_latency(ort_runners, repeats, warmup).items():
            _row(prepared, name).latency["onnxruntime-cuda"] = stats


def _path_text(source: ModelSource) -> str | None:
    """The source's resolved model file as text (JSON), ``None`` for a model built by name."""
    return None if source.path is None else str(source.path)


def _row(prepared: list[_Prepared], name: str) -> BenchRow:
    return next(p.row for p in prepared if p.row.name == name)


def _unique_names(sources: list[ModelSource]) -> None:
    seen: dict[str, int] = {}
    for source in sources:
        count = seen.get(source.name, 0)
        seen[source.name] = count + 1
        if count:
            source.name = f"{source.name}#{count + 1}"


def _onnx_params(path: Path) -> int | None:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    proto = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).size for t in proto.graph.initializer if t.data_type == 1))


def _load(values: Any) -> str:
    return "n/a" if not values else " / ".join(f"{v:.1f}" for v in values)


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _parity_cell(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "n/a"
    errors = parity.get("errors", {})
    text = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    if parity.get("agreement") is not None:
        text += f"; {parity['agreement']:.0%} same detections"
    return text
