"""What the inference copy buys detectors in eager PyTorch: BatchNorm folded, then channels-last memory.

For each detector file (the first is the reference, e.g. the teacher) and each image side, three ways
of running the same weights are timed, all interleaved (round-robin) in one run on one real photo:

* ``as trained``: the model as training leaves it, in eval mode (BatchNorm layers, NCHW);
* ``BatchNorm folded``: :func:`detkd.models.detection.fold_batch_norms` on a copy;
* ``folded + channels-last``: :func:`detkd.models.detection.inference_copy`, what ``Predictor`` and
  ``detkd bench`` run since 2026-12-06.

Each runs the post-processed graph of ``detkd export`` (forward, score threshold, top-k, NMS, padded
to 100 detections). The table gives median ms, each way's speed-up over ``as trained`` and the
reference's time over each model's (the pair's speed ratio) for each way, and checks that the three
ways find the same detections.

    python benchmarks/detector_inference_speed.py teacher=benchmarks/teachers/shapes256_fcos_small_fpn_8000.pt \\
        nano=runs/det_nano8k_s0/shapes/baseline/model.pt --sizes 256 512 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from detkd.export.detection import DetectionPostprocess, compare_detections
from detkd.export.onnx import photo_batch
from detkd.export.records import environment, machine_line, write_table_files
from detkd.export.timing import interleaved_latency
from detkd.models.detection import count_parameters, fold_batch_norms, inference_copy, load_detector

WAYS = ("as trained", "BatchNorm folded", "folded + channels-last")


def prepared_ways(path: Path) -> dict[str, DetectionPostprocess]:
    """The post-processed graph of one detector file, three ways (:data:`WAYS`)."""
    detector = load_detector(path).eval()
    folded = copy.deepcopy(detector)
    fold_batch_norms(folded)
    modules = (detector, folded, inference_copy(detector))
    return {way: DetectionPostprocess(module).eval() for way, module in zip(WAYS, modules)}


def same_detections(outputs: list[tuple[torch.Tensor, ...]], image: torch.Tensor, post: DetectionPostprocess,
                    tolerance: float = 1e-4) -> str:
    """How the other ways' detections compare with the first way's, by the export parity rule
    (:func:`detkd.export.detection.compare_detections`: same label and box IoU >= 0.99; a detection
    found by one way only is a near-tie when its score is within ``tolerance`` of a decision)."""
    reference = [t.numpy() for t in outputs[0]]
    agreement, near, unexplained, worst_score, worst_box = 1.0, 0, 0, 0.0, 0.0
    for other in outputs[1:]:
        parity = compare_detections(reference, [t.numpy() for t in other], image, tolerance, post)
        agreement = min(agreement, parity.agreement)
        near, unexplained = near + parity.near_ties, unexplained + parity.unexplained
        worst_score, worst_box = max(worst_score, parity.errors["scores"]), max(worst_box, parity.errors["boxes"])
    text = f"{agreement:.0%} same detections"
    if near or unexplained:
        text += f" ({near} near-tie(s) within {tolerance:g}, {unexplained} unexplained)"
    return text + f"; scores within {worst_score:.1e}, boxes within {worst_box:.1e} of the image side"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="NAME=PATH",
                        help="detector files; the first is the reference of the speed ratios (e.g. the teacher)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square image sides [256 512]")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads [1]")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per way and model [30]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    parser.add_argument("--tag", default="", help="results file name: detector_inference_speed[_TAG].md/.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    files = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        if not path:
            parser.error(f"'{spec}': give each model as NAME=PATH")
        files[name] = Path(path)
    graphs = {name: prepared_ways(path) for name, path in files.items()}
    reference = next(iter(files))
    lines = [
        "# Detectors in eager PyTorch: BatchNorm folded and channels-last (the inference copy)",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`",
        "",
        f"Post-processed graph (forward, threshold 0.05, top-k, NMS, 100 detections) on a real photo, batch 1, "
        f"{args.threads} thread(s); median of {args.repeats} runs after 3 warm-up runs, every way of every model "
        f"interleaved round-robin in one run. Pair ratio = {reference}'s median / the model's, the same way.",
    ]
    payload: dict[str, Any] = {"command": sys.argv, "threads": args.threads, "repeats": args.repeats,
                               "models": {n: str(p) for n, p in files.items()}, "sizes": {}}
    for size in args.sizes:
        image = photo_batch(["coffee"], 3, size, size)
        runners = {(name, way): (lambda g=graph: g(image)) for name, ways in graphs.items() for way, graph in ways.items()}
        with torch.inference_mode():
            checks = {name: same_detections([graph(image) for graph in ways.values()], image, ways[WAYS[0]])
                      for name, ways in graphs.items()}
            stats = interleaved_latency({f"{n}|{w}": run for (n, w), run in runners.items()}, args.repeats, warmup=3)
        median = {key: s.median_ms for key, s in stats.items()}
        lines += ["", f"## {size}x{size}", "",
                  "| model | params | " + " | ".join(f"{w} ms" for w in WAYS)
                  + " | speed-up of the inference copy | " + " | ".join(f"pair ratio, {w}" for w in WAYS)
                  + " | the three ways agree |",
                  "|---|---:|" + "---:|" * (2 * len(WAYS) + 1) + "---|"]
        for name, ways in graphs.items():
            ms = [median[f"{name}|{w}"] for w in WAYS]
            ratios = [median[f"{reference}|{w}"] / median[f"{name}|{w}"] for w in WAYS]
            params = count_parameters(ways[WAYS[0]].adapter)
            lines.append(f"| {name} | {params:,} | " + " | ".join(f"{v:.1f}" for v in ms)
                         + f" | {ms[0] / ms[-1]:.2f}x | " + " | ".join(f"{r:.2f}x" for r in ratios)
                         + f" | {checks[name]} |")
        payload["sizes"][size] = {"median_ms": median, "checks": checks}
    env = environment(gpu=False)
    lines += ["", machine_line(env, time.time() - started)]
    text = "\n".join(lines)
    print(text)
    stem = "detector_inference_speed" + (f"_{args.tag}" if args.tag else "")
    print(f"\nwrote {write_table_files(args.out, stem, text, {**payload, 'environment': env})}")


if __name__ == "__main__":
    main()
