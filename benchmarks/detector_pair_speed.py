"""How much faster is each detector student than its teacher? ``detkd bench`` at several sizes, one file.

For each image side, every model (the first is the reference, the teacher) is exported to ONNX (checked
against PyTorch) and timed in PyTorch and ONNX Runtime, interleaved, on one real photo: the graph a user
deploys (network + post-processing). PyTorch runs each detector's inference copy (BatchNorm folded,
channels-last), as ``Predictor`` does. Peak memory is not measured (a fresh process per model would
dominate the run); use ``detkd bench`` for it.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/detector_pair_speed.py \\
        teacher=benchmarks/teachers/shapes256_fcos_small_fpn_8000.pt tiny=RUN/model.pt nano=RUN/model.pt \\
        --sizes 256 512 --threads 1     # writes benchmarks/results/detector_pair_speed.{md,json}

A model may also be an untrained candidate, ``NAME=untrained:VARIANT[:KEY=VALUE,...]`` (a registered
detector, ``detkd detect models``, with options of ``--student-option``'s kind and the teacher's classes),
to choose a pair by speed before training it; its latency is the structure's (a two-stage detector's
proposal count is capped by ``rpn_post_nms_top_n_test`` whatever its weights), its detections meaningless:

    python benchmarks/detector_pair_speed.py teacher=benchmarks/teachers/shapes256_fasterrcnn_small_fpn_8000_own_anchors.pt \
        nano=untrained:fasterrcnn_nano_fpn:rpn_post_nms_top_n_test=50,representation_size=128 --tag candidates
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from detkd.export.bench import benchmark
from detkd.export.records import write_table_files
from detkd.models.detection import create_detector, load_detector, save_detector

UNTRAINED = "untrained:"


def untrained_options(text: str) -> tuple[str, dict]:
    """``VARIANT[:KEY=VALUE,...]`` -> (variant, options with YAML values), e.g. ``fasterrcnn_nano_fpn:head_convs=1``."""
    variant, _, tail = text.partition(":")
    options = {}
    # a comma starts a new option only before KEY=, so that list values keep theirs: tiny_widths=[8,16,24,32,48]
    for item in filter(None, (part.strip() for part in re.split(r",(?=\s*\w+\s*=)", tail))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"untrained:{text}: options are KEY=VALUE separated by commas, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return variant, options


def materialise(specs: list[str], work: Path) -> list[str]:
    """``NAME=PATH`` specs with every ``NAME=untrained:...`` written as a randomly initialised detector file in
    ``work`` (seed 0, the first model's classes); the first spec (the teacher) must be a file."""
    first = specs[0].partition("=")[2]
    if first.startswith(UNTRAINED):
        raise SystemExit("the first model is the teacher: give it as a trained file, NAME=PATH")
    reference = None
    out = []
    for spec in specs:
        name, _, path = spec.partition("=")
        if path.startswith(UNTRAINED):
            if reference is None:
                reference = load_detector(first)
            variant, options = untrained_options(path[len(UNTRAINED):])
            torch.manual_seed(0)
            detector = create_detector(variant, reference.num_classes, reference.class_names, **options)
            path = str(save_detector(detector, work / f"untrained_{len(out)}.pt"))
        out.append(f"{name}={path}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="NAME=PATH", help="detector files or run folders; the first is "
                        "the teacher (the speed-ups are its median over each model's); PATH untrained:VARIANT[:K=V,...] "
                        "times an untrained candidate")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square image sides [256 512]")
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes [1]")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model and runtime [30]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    parser.add_argument("--tag", default="", help="results file name: detector_pair_speed[_TAG].md/.json")
    args = parser.parse_args()
    started = time.time()
    lines = ["# Detector pairs: how much faster is each student than its teacher?", "",
             f"Command: `OMP_WAIT_POLICY=PASSIVE python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`",
             "",
             "Latency = the exported graph's computation (network + post-processing) on a real photo, every model "
             "interleaved with the others in each runtime; the ONNX files were checked against PyTorch first. "
             "PyTorch runs each detector's inference copy (BatchNorm folded into the convs, channels-last memory: "
             "`detkd.models.detection.inference_copy`, what `Predictor` runs)."]
    payload = {"command": sys.argv, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="detkd-pair-speed-") as work:
        models = materialise(args.models, Path(work))
        for size in args.sizes:
            report = benchmark(models, size, size, threads=args.threads, repeats=args.repeats, memory=False,
                               gpu=False, spinning=False, work_dir=Path(work) / str(size))
            lines += ["", f"## {size}x{size}", "", report.table().rstrip(), "",
                      f"{report.conditions()} Measured {report.environment['date']}."]
            payload["sizes"][size] = report.to_dict()
    lines += ["", f"Run time: {time.time() - started:.0f} s."]
    text = "\n".join(lines)
    print(text)
    stem = "detector_pair_speed" + (f"_{args.tag}" if args.tag else "")
    print(f"\nwrote {write_table_files(args.out, stem, text, payload)}")


if __name__ == "__main__":
    main()
