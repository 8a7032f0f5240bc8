"""Training steps in NCHW against channels-last (NHWC) memory, on the CPU: which models gain.

``train.channels_last`` stores the model's weights and every image batch NHWC, the layout oneDNN's CPU
convolutions (and cuDNN's) run natively. For each model, the same weights are copied into both layouts
and one optimisation step (forward with the model's own losses, backward, SGD) on the same batch is
timed, both layouts interleaved (round-robin), median of the runs after warm-up:

* detectors (``detkd.models.detection``): their supervised losses on a batch of 8 images of 256x256
  with 3 random boxes each (the shapes benchmark's size and batch);
* key-point students (``detkd.models.superpoint``): the mean square of every floating output on a
  batch of 16 grey 240x320 views (the learning curve's size and batch), a stand-in for the
  distillation loss, whose cost does not depend on the layout.

    python benchmarks/channels_last_training.py --threads 1   # writes benchmarks/results/channels_last_training.{md,json}
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from detkd.export.records import environment, machine_line, write_table_files
from detkd.export.timing import interleaved_latency
from detkd.models.detection import create_detector
from detkd.models.superpoint import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from student_speed import parse_variant  # noqa: E402  (the same VARIANT:KEY=VALUE,... specs)

DETECTORS = ["fcos_nano_fpn", "fcos_tiny_fpn", "fcos_small_fpn", "retinanet_tiny_fpn", "fasterrcnn_tiny_fpn"]
KEYPOINT_STUDENTS = ["fast-s", "fast-s:head_channels=64,descriptor_stride=4", "fast-l"]


def detector_step(name: str, layout: torch.memory_format) -> Callable[[], float]:
    """One SGD step (returns the loss) of detector ``name`` (5 classes) on a fixed batch, in ``layout``."""
    torch.manual_seed(0)
    model = create_detector(name, 5).train().to(memory_format=layout)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 256, 256, generator=generator).contiguous(memory_format=layout)
    targets = []
    for _ in range(8):
        corner, size = torch.rand(3, 2, generator=generator) * 180, torch.rand(3, 2, generator=generator) * 60 + 10
        targets.append({"boxes": torch.cat([corner, corner + size], 1), "labels": torch.randint(0, 5, (3,), generator=generator)})
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> float:
        loss = sum(model(images, targets).losses.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    return step


def keypoint_step(spec: str, layout: torch.memory_format) -> Callable[[], float]:
    """One SGD step (returns the loss) of key-point student ``VARIANT[:KEY=VALUE,...]`` on a fixed batch, in ``layout``."""
    variant, conf = parse_variant(spec, option="--students")
    torch.manual_seed(0)
    model = create_model(variant, **conf).train().to(memory_format=layout)
    images = torch.rand(16, 1, 240, 320, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=layout)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> float:
        outputs = model(images)
        loss = sum(v.float().pow(2).mean() for v in outputs.values() if torch.is_tensor(v) and v.is_floating_point())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="*", default=DETECTORS, help=f"detector variants [{' '.join(DETECTORS)}]")
    parser.add_argument("--students", nargs="*", default=KEYPOINT_STUDENTS,
                        help=f"key-point students, VARIANT[:KEY=VALUE,...] [{' '.join(KEYPOINT_STUDENTS)}]")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads [1]")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model and layout [10]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    layouts = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}
    lines = ["# Training steps on the CPU: NCHW against channels-last (`train.channels_last`)", "",
             f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`", "",
             f"One optimisation step on a fixed batch, {args.threads} thread(s); median of {args.repeats} steps "
             "after 2 warm-up steps, both layouts of a model interleaved round-robin (models one after the other).", "",
             "| model | batch | NCHW ms | channels-last ms | channels-last speed-up |", "|---|---|---:|---:|---:|"]
    payload: dict[str, Any] = {"command": sys.argv, "threads": args.threads, "rows": {}}
    rows = [(name, "8 x 3x256x256, 3 boxes each", detector_step) for name in args.detectors]
    rows += [(spec, "16 x 1x240x320", keypoint_step) for spec in args.students]
    for name, batch, build in rows:
        runners = {layout: build(name, memory) for layout, memory in layouts.items()}
        stats = interleaved_latency(runners, args.repeats, warmup=2)
        plain, nhwc = stats["NCHW"].median_ms, stats["channels-last"].median_ms
        lines.append(f"| {name} | {batch} | {plain:.0f} | {nhwc:.0f} | {plain / nhwc:.2f}x |")
        payload["rows"][name] = {"nchw_ms": plain, "channels_last_ms": nhwc}
        print(lines[-1], flush=True)
    env = environment(gpu=False)
    lines += ["", machine_line(env, time.time() - started)]
    text = "\n".join(lines)
    print("\n" + text)
    print(f"\nwrote {write_table_files(args.out, 'channels_last_training', text, {**payload, 'environment': env})}")


if __name__ == "__main__":
    main()
