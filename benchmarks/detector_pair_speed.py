"""How much faster is each detector student than its teacher? ``detkd bench`` at several sizes, one file.

For each image side, every model (the first is the reference, the teacher) is exported to ONNX (checked
against PyTorch) and timed in PyTorch and ONNX Runtime, interleaved, on one real photo: the graph a user
deploys (network + post-processing). PyTorch runs each detector's inference copy (BatchNorm folded,
channels-last), as ``Predictor`` does. Peak memory is not measured (a fresh process per model would
dominate the run); use ``detkd bench`` for it.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/detector_pair_speed.py \\
        teacher=benchmarks/teachers/shapes256_fcos_small_fpn_8000.pt tiny=RUN/model.pt nano=RUN/model.pt \\
        --sizes 256 512 --threads 1     # writes benchmarks/results/detector_pair_speed.{md,json}
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from detkd.export.bench import benchmark
from detkd.export.records import write_table_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="NAME=PATH", help="detector files or run folders; the first is "
                        "the teacher (the speed-ups are its median over each model's)")
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
        for size in args.sizes:
            report = benchmark(args.models, size, size, threads=args.threads, repeats=args.repeats, memory=False,
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
