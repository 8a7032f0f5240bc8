"""Throughput of distillation: what the teacher costs, and what the teacher cache gives back.

For each pillar, on the same batches (same batch size, same resolution, one run):

* (a) ``student only``: student forward + loss + backward + AdamW step, no teacher forward. The
  loss is the pillar's distillation loss against a *constant* target (the teacher's outputs on
  the first batch, computed once and kept on the device), so the student's work is exactly
  that of (b) and (c);
* (b) ``online``: the teacher runs on every batch (no autograd graph), then as (a);
* (c) ``cached``: the teacher's outputs come with the batch from the teacher-output cache
  (float16 arrays, decoded on the device), then as (a).

Step times exclude data loading, which is measured on its own: milliseconds to build one
batch in one process (views for (a)/(b); views + cache read for (c)). Modes are interleaved
round-robin over ``--repeats`` rounds and medians are reported (ratios: the median of the
per-round ratios), because other jobs share the CPU. GFLOPs per step (forward, loss, backward;
``torch.utils.flop_counter``) say what the ratios would be if time followed arithmetic. Peak memory is the growth of the process's peak resident set during a
mode's steps on CPU (Linux ``/proc/self/clear_refs``; measured in a child process with glibc's
``MALLOC_MMAP_THRESHOLD_`` fixed so that freed tensors leave the resident set, 1 thread, 2
steps per mode), ``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/throughput.py                          # CPU, writes benchmarks/results/throughput.{md,json}
    python benchmarks/throughput.py --device cuda --batch-size 32 --height 240 --width 320
    python benchmarks/throughput.py --quick                  # smoke test, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import default_collate

MODES = ("student_only", "online", "cached")
MODE_LABELS = {"student_only": "(a) student only", "online": "(b) online teacher", "cached": "(c) cached teacher"}


@dataclass
class Case:
    """One pillar's three training steps on shared batches; ``losses[mode](student, batch)`` -> scalar."""

    name: str
    description: str
    student: nn.Module
    batches: list[dict[str, torch.Tensor]]  # with the cached targets; online/student-only ignore them
    losses: dict[str, Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]]
    data_ms: dict[str, float]  # ms to build one batch, per mode
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- key points
def keypoint_case(args: argparse.Namespace, device: torch.device, workdir: Path) -> Case:
    from detkd.cache.keypoints import CachedTeacherViews, build_keypoint_teacher_cache, open_keypoint_cache
    from detkd.data.augment import CropConfig, PhotometricConfig
    from detkd.data.images import BUILTIN_TRAIN_PHOTOS, builtin_photo
    from detkd.data.keypoint_training import UnlabeledImageStream
    from detkd.distill.keypoints import KeypointDistillationLoss
    from detkd.models.superpoint import count_parameters
    from detkd.tasks.keypoints import KeypointDistillationTask, build_student, load_teacher

    teacher, origin = load_teacher(args.teacher)
    torch.manual_seed(0)
    student = build_student(teacher, args.student, batch_norm=True)
    photos = [builtin_photo(name) for name in BUILTIN_TRAIN_PHOTOS]
    stream = UnlabeledImageStream(photos, CropConfig(height=args.height, width=args.width), PhotometricConfig(), seed=0)
    build_keypoint_teacher_cache(teacher, stream, workdir / "kp_cache", views_per_image=1,
                                 batch_size=args.batch_size, device=device, progress=False)
    views = CachedTeacherViews(stream, open_keypoint_cache(workdir / "kp_cache", teacher, stream), views_per_image=1)
    n = args.batch_size
    batches = [default_collate([views[k] for k in range(i * n, (i + 1) * n)]) for i in range(args.batches)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    loss = KeypointDistillationLoss()
    teacher = teacher.to(device).eval()
    online = KeypointDistillationTask(teacher, student, loss, stream)
    cached = KeypointDistillationTask(None, student, loss, views)
    with torch.no_grad():
        constant = {k: v.detach() for k, v in teacher(batches[0]["image"]).items()}

    def student_only(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss(constant, model(batch["image"]))["loss"]

    def with_online_teacher(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss(online.teacher_outputs({"image": batch["image"]}), model(batch["image"]))["loss"]

    def with_cached_teacher(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss(cached.teacher_outputs(batch), model(batch["image"]))["loss"]

    data_ms = {
        "student_only": batch_build_ms(lambda k: stream[k], n, args.data_repeats),
        "cached": batch_build_ms(lambda k: views[k], n, args.data_repeats),
    }
    data_ms["online"] = data_ms["student_only"]
    description = (f"teacher {origin} ({count_parameters(teacher):,} params) -> student {args.student} "
                   f"({count_parameters(student):,} params), loss KeypointDistillationLoss (GoodPoint weights)")
    return Case("keypoints", description, student, batches,
                {"student_only": student_only, "online": with_online_teacher, "cached": with_cached_teacher}, data_ms)


def batch_build_ms(sample: Callable[[int], dict[str, Any]], batch_size: int, repeats: int) -> float:
    """Median ms to build and collate one batch in this process with 1 torch thread (as a worker does).

    32 untimed samples first (every photo of the built-in set): per-process one-off costs
    (opening memory maps, the content digest of each photo, computed once per photo and
    process) are not per-batch costs.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a data-loader worker; 2 OpenMP threads on a busy CPU stall in torch.stack
    try:
        default_collate([sample(900 + i) for i in range(max(batch_size, 32))])
        times = []
        for r in range(repeats):
            began = time.perf_counter()
            default_collate([sample(1000 + r * batch_size + i) for i in range(batch_size)])
            times.append(time.perf_counter() - began)
    finally:
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times)


# ----------------------------------------------------------------------------- detectors
def detection_case(args: argparse.Namespace, device: torch.device, workdir: Path) -> Case | str:
    """GID distillation of a RetinaNet teacher into a smaller RetinaNet on synthetic shapes.

    (c) is the path of ``detkd detect distill --teacher-cache``: the teacher's outputs are built
    into a cache (:func:`~detkd.cache.detection.build_detector_teacher_cache`), the batches come
    from :class:`~detkd.cache.detection.CachedDetectorViews`, and the task has no teacher. (a)
    gives the task a stand-in teacher that returns the first batch's outputs (a constant
    target). Returns the reason instead when the pillar is missing.
    """
    try:
        from detkd.cache.detection import build_detector_teacher_cache, cached_detector_stream
        from detkd.data.detection import DetectionStream, synthetic_detection_set
        from detkd.distill.detection import create_detection_distiller
        from detkd.models.detection import count_parameters
        from detkd.tasks.detection import DetectionDistillTask, build_detector
    except ImportError as err:
        return f"not measured: detector distillation is not in this checkout ({err})"

    n, size = args.batch_size, args.det_size
    data = synthetic_detection_set(n * args.batches, size, seed=0)
    stream = DetectionStream(data, size, size, seed=0)
    torch.manual_seed(0)
    teacher = build_detector({"name": args.det_teacher, "overrides": None}, data.class_names).to(device).eval()
    student = build_detector({"name": args.det_student, "overrides": None}, data.class_names)
    distiller = create_detection_distiller("gid", teacher.fpn_channels, student.fpn_channels,
                                           match_anchors=student.match_anchors)
    build_detector_teacher_cache(teacher, stream, workdir / "det_cache", data.class_names, views_per_image=1,
                                 batch_size=n, device=device, progress=False)
    views = cached_detector_stream(stream, workdir / "det_cache", teacher, data.class_names, views_per_image=1)
    # one epoch of the cached stream: every image once, with its cached outputs; (a) and (b) drop those
    batches = [default_collate([views[k] for k in range(i * n, (i + 1) * n)]) for i in range(args.batches)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def without_cache(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if not k.startswith("teacher_")}

    with torch.no_grad():
        first = teacher(without_cache(batches[0])["image"])

    class ConstantTeacher(nn.Module):
        """(a)'s teacher: the first batch's outputs, computed once."""

        def forward(self, images: torch.Tensor) -> Any:
            return first

    def step_with(teacher_module: nn.Module | None, data_source: Any, keep_cache: bool
                  ) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
        tasks: dict[int, DetectionDistillTask] = {}

        def loss(parts: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            task = tasks.get(id(parts))
            if task is None:
                task = tasks[id(parts)] = DetectionDistillTask(
                    teacher_module, parts["student"], parts["distiller"], data_source, gt_weight=1.0)
            return task(batch if keep_cache else without_cache(batch))["loss"]

        return loss

    data_ms = {
        "student_only": batch_build_ms(lambda k: stream[k], n, args.data_repeats),
        "cached": batch_build_ms(lambda k: views[k], n, args.data_repeats),
    }
    data_ms["online"] = data_ms["student_only"]
    description = (f"teacher {args.det_teacher} ({count_parameters(teacher):,} params) -> student {args.det_student} "
                   f"({count_parameters(student):,} params), GID + ground truth, synthetic shapes {size}x{size}, "
                   f"{len(data.class_names)} classes, {views.cache.nbytes_per_entry() / 2**20:.2f} MB cached per image")
    parts = nn.ModuleDict({"student": student, "distiller": distiller})
    return Case("detection", description, parts, batches, {
        "student_only": step_with(ConstantTeacher(), stream, keep_cache=False),
        "online": step_with(teacher, stream, keep_cache=False),
        "cached": step_with(None, views, keep_cache=True),
    }, data_ms)


# ----------------------------------------------------------------------------- timing
class PeakMemory:
    """Growth of peak memory during a block: CUDA allocator peak, or the process's peak RSS (Linux)."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.available = enabled and (device.type == "cuda" or _can_reset_peak_rss())

    def __enter__(self) -> "PeakMemory":
        if not self.available:
            return self
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.available:
            Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.available:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.available:
            self.peak = _status_kb("VmHWM") * 1024 - self.base


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def run_steps(case: Case, mode: str, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
              device: torch.device, autocast: torch.dtype | None) -> float:
    """Mean seconds per training step over ``steps`` steps (batches cycled)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for step in range(steps):
        batch = case.batches[step % len(case.batches)]
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = case.losses[mode](model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / steps


def measure(case: Case, args: argparse.Namespace, device: torch.device, autocast: torch.dtype | None) -> dict[str, Any]:
    """Interleaved rounds of every mode; each mode trains its own copy of the student."""
    models = {mode: copy.deepcopy(case.student).to(device).train() for mode in MODES}
    optimizers = {mode: torch.optim.AdamW(models[mode].parameters(), lr=1e-4) for mode in MODES}
    for mode in MODES:  # warm-up: allocator, kernels, lazy inits
        run_steps(case, mode, models[mode], optimizers[mode], args.warmup, device, autocast)
    rounds: dict[str, list[float]] = {mode: [] for mode in MODES}
    peaks: dict[str, int] = {mode: 0 for mode in MODES}
    for r in range(args.repeats):
        order = MODES[r % 3:] + MODES[: r % 3]  # rotate, so no mode always runs first
        for mode in order:
            with PeakMemory(device, enabled=device.type == "cuda") as memory:
                rounds[mode].append(run_steps(case, mode, models[mode], optimizers[mode], args.steps, device, autocast))
            if memory.available:
                peaks[mode] = max(peaks[mode], int(memory.peak))
    batch = case.batches[0]["image"].shape[0]
    rows = {}
    for mode in MODES:
        step_s = statistics.median(rounds[mode])
        # Ratios are taken round by round (the modes of a round ran back to back, under the same
        # load from other jobs), then the median over rounds.
        ratios = [t / a for t, a in zip(rounds[mode], rounds["student_only"])]
        rows[mode] = {
            "step_ms": 1000 * step_s,
            "step_ms_rounds": [1000 * t for t in rounds[mode]],
            "images_per_s": batch / step_s,
            "ratio_to_student_only": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "gflops_per_step": step_gflops(case, mode, models[mode], device, autocast),
            "peak_memory_mb": peaks[mode] / 2**20 if device.type == "cuda" else None,  # CPU: memory_probe
            "data_ms_per_batch": case.data_ms[mode],
        }
    return rows


def step_gflops(case: Case, mode: str, model: nn.Module, device: torch.device, autocast: torch.dtype | None) -> float:
    """GFLOPs of one training step (forward, loss and backward; 1 multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        case.losses[mode](model, case.batches[0]).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


MEMORY_MARK = "PEAK-MEMORY-MB "


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """(Child process) peak-RSS growth of each mode over 2 steps after 1 warm-up step; printed as JSON."""
    torch.set_num_threads(1)
    device = torch.device("cpu")
    peaks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pillars.split(","):
            case = CASES[name](args, device, Path(tmp))
            if isinstance(case, str):
                continue
            peaks[name] = {}
            for mode in MODES:
                model = copy.deepcopy(case.student).train()
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
                run_steps(case, mode, model, optimizer, 1, device, None)  # optimizer state exists from here on
                with PeakMemory(device) as memory:
                    run_steps(case, mode, model, optimizer, 2, device, None)
                peaks[name][mode] = memory.peak / 2**20 if memory.available else None
                del model, optimizer
    print(MEMORY_MARK + json.dumps(peaks), flush=True)
    return peaks


def cpu_peak_memory(argv: list[str]) -> dict[str, Any]:
    """Peak memory per pillar and mode, measured in a child process with glibc's mmap threshold fixed.

    glibc raises that threshold after frees and keeps freed tensors in its heap, so a mode run
    after another would show no growth; with a fixed 128 KB threshold freed blocks leave the
    resident set. That costs page faults, so timings are taken in this process, not there.
    """
    import subprocess

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--memory-only"],
                          env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MEMORY_MARK):
            return json.loads(line[len(MEMORY_MARK):])
    print(f"memory probe failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return {}


# ----------------------------------------------------------------------------- report
def format_table(rows: dict[str, Any]) -> str:
    lines = ["| mode | step (ms) | images/s | step / (a) [range over rounds] | GFLOPs / step | FLOPs / (a) | "
             "peak memory (MB) | data (ms/batch, 1 process) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in MODES:
        row = rows[mode]
        low, high = row["ratio_range"]
        ratio = "1.00" if mode == "student_only" else f"{row['ratio_to_student_only']:.2f} [{low:.2f}-{high:.2f}]"
        flop_ratio = row["gflops_per_step"] / rows["student_only"]["gflops_per_step"]
        peak = f"{row['peak_memory_mb']:.0f}" if row["peak_memory_mb"] is not None else "n/a"
        lines.append(f"| {MODE_LABELS[mode]} | {row['step_ms']:.1f} | {row['images_per_s']:.1f} | {ratio} | "
                     f"{row['gflops_per_step']:.2f} | {flop_ratio:.2f} | {peak} | {row['data_ms_per_batch']:.1f} |")
    return "\n".join(lines)


CASES: dict[str, Callable[[argparse.Namespace, torch.device, Path], Case | str]] = {
    "keypoints": keypoint_case, "detection": detection_case,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="auto", help="auto (bf16 autocast on a bf16 GPU, else fp32), 32-true, bf16-mixed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--teacher", default=None, help="key-point teacher weights; default: the shipped teacher")
    parser.add_argument("--student", default="tiny", choices=["tiny", "half", "superpoint"])
    parser.add_argument("--det-teacher", default="retinanet_small_fpn", help="teacher detector (random weights)")
    parser.add_argument("--det-student", default="retinanet_tiny_fpn", help="student detector")
    parser.add_argument("--det-size", type=int, default=128, help="detector view size, pixels (multiple of 128)")
    parser.add_argument("--pillars", default="keypoints,detection", help="which pillars to measure")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches cycled through")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--data-repeats", type=int, default=9)
    parser.add_argument("--threads", default="2", help="torch CPU threads; a list such as 1,2 measures each")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "throughput")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (smoke test; nothing written)")
    parser.add_argument("--note", default="", help="a sentence for the report (e.g. why some rows are not measured)")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_only:
        return memory_probe(args)
    if args.quick:
        args.batch_size, args.height, args.width, args.steps, args.repeats, args.warmup = 2, 32, 48, 1, 2, 1
        args.batches, args.data_repeats, args.det_size = 1, 1, 128

    from detkd.engine.acceleration import resolve_precision

    threads = [int(t) for t in str(args.threads).split(",")]
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device.type)
    autocast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "precision": precision,
        "batch_size": args.batch_size, "height": args.height, "width": args.width, "det_size": args.det_size,
        "steps_per_round": args.steps, "rounds": args.repeats, "note": args.note,
        "runs": [],
    }
    peaks = cpu_peak_memory(sys.argv[1:] if argv is None else list(argv)) if device.type == "cpu" and not args.quick else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pillars.split(","):
            torch.set_num_threads(threads[0])
            case = CASES[name](args, device, Path(tmp))
            for count in threads:
                torch.set_num_threads(count)
                entry: dict[str, Any] = {"pillar": name, "threads": count if device.type == "cpu" else None}
                if isinstance(case, str):
                    entry["status"] = case
                    print(f"\n## {name}\n{case}")
                else:
                    rows = measure(case, args, device, autocast)
                    for mode in MODES:
                        rows[mode]["peak_memory_mb"] = rows[mode]["peak_memory_mb"] or peaks.get(name, {}).get(mode)
                    entry.update(status="measured", description=case.description, modes=rows, notes=case.notes)
                    print(f"\n## {name}, {count} thread(s): {case.description}\n{format_table(rows)}")
                results["runs"].append(entry)
                if isinstance(case, str):
                    break
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    if not args.quick:
        write_report(results, args.out)
    return results


def write_report(results: dict[str, Any], out: Path) -> None:
    from detkd.export.records import write_table_files

    lines = [
        "# Distillation throughput",
        "",
        f"Produced by `{results.get('command', 'python benchmarks/throughput.py')}` on {results['date']}: {results['device']} "
        f"({results['machine']}), precision {results['precision']}, batch {results['batch_size']} "
        f"(key points {results['height']}x{results['width']}, detectors {results['det_size']}x{results['det_size']}), "
        f"{results['steps_per_round']} steps per mode and round, "
        f"{results['rounds']} interleaved rounds, medians. Load average before/after: "
        f"{', '.join(f'{x:.1f}' for x in results['load_average']['before'])} / "
        f"{', '.join(f'{x:.1f}' for x in results['load_average']['after'])} (other jobs shared the CPU).",
        "",
        "(a) student forward + distillation loss against a constant target + backward + AdamW step, no teacher; "
        "(b) the same with the teacher run on every batch (no autograd graph); (c) the same with the teacher's "
        "outputs read from the teacher-output cache. Step times exclude data loading; the last column is the "
        "time to build one batch in one process with one torch thread, as a data-loader worker (views; for (c) views + cache read). Peak memory: growth of "
        "the peak resident set during 2 steps per mode in a child process whose freed tensors leave the resident set (CPU), or of the CUDA allocator's peak (GPU).",
    ]
    if results.get("note"):
        lines += ["", results["note"]]
    for run in results["runs"]:
        threads = f", {run['threads']} torch thread(s)" if run["threads"] else ""
        lines += ["", f"## {run['pillar']}{threads}", ""]
        if run["status"] != "measured":
            lines.append(run["status"])
            continue
        lines += [run["description"], "", format_table(run["modes"])]
        lines += [""] + [f"* {note}" for note in run["notes"]] if run["notes"] else []
    written = write_table_files(out.parent, out.stem, "\n".join(lines), results)
    print(f"\nwritten: {written}, {written.with_suffix('.json')}")


if __name__ == "__main__":
    main()
