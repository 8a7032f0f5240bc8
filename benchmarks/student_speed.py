"""CPU speed of the key-point students against XFeat and SIFT: the full extract at 480x640.

For the teacher (``superpoint``, the shipped weights), each student variant of
:data:`detkd.models.superpoint.VARIANTS` (random weights with BatchNorm: speed does not depend
on the weights), XFeat and SIFT:

* parameters and GFLOPs of the network at 480x640 (``torch.utils.flop_counter``; a
  multiply-add is 2 FLOPs);
* median latency of the network alone in PyTorch, and of the **full extract** (network, NMS,
  top-1000 key points, descriptor sampling) in PyTorch (``SuperPoint.extract``) and in ONNX
  Runtime (the graph of ``detkd export``: ``detkd.export.export_onnx``, checked against PyTorch);
* XFeat: ``kornia.feature.XFeat`` (its architecture, random weights), ``detectAndCompute`` with
  ``top_k=1000``: kornia's own full extract (network, NMS, reliability, bicubic descriptor
  sampling); its network alone too. Not exported to ONNX here (``n/a``);
* SIFT: OpenCV, 1000 features, on the same image as uint8.

Every model keeps exactly 1000 key points: the SuperPoint family and XFeat run with detection
threshold 0 (every local maximum competes for the top 1000: the post-processing does its
full work, whatever the weights), all at input scale 1. All runners are timed interleaved
(round-robin) in one run, after warm-up, with the same thread count for PyTorch
(``torch.set_num_threads``), ONNX Runtime (intra-op threads) and OpenCV.

    python benchmarks/student_speed.py --threads 1   # writes benchmarks/results/student_speed.{md,json}
    python benchmarks/student_speed.py --quick       # smoke test, seconds (numbers meaningless)
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from detkd.export.bench import count_gflops, used_parameters
from detkd.export.onnx import ParityError, export_onnx, ort_session, photo_batch
from detkd.export.records import environment, machine_line, write_table_files
from detkd.export.timing import interleaved_latency
from detkd.models.pretrained import default_keypoint_teacher_path
from detkd.models.superpoint import VARIANTS, SuperPoint, count_parameters, create_model
from detkd.models.weights import STRUCTURAL_OPTIONS, load_keypoint_model

KEYPOINTS = 1000
SEED = 0


def superpoint_family(variants: list[str]) -> dict[str, SuperPoint]:
    """The shipped teacher as ``superpoint`` and random-weight students, all keeping 1000 points at scale 1."""
    post = {"max_keypoints": KEYPOINTS, "detection_threshold": 0.0, "input_scale": 1.0}
    models = {}
    for name in variants:
        if name == "superpoint":
            models[name] = load_keypoint_model(default_keypoint_teacher_path(), **post).eval()
        else:
            variant, options = parse_variant(name)
            torch.manual_seed(SEED)
            models[name] = create_model(variant, **{"batch_norm": True, **options, **post}).eval()
    return models


def parse_variant(spec: str, option: str = "--variants") -> tuple[str, dict[str, Any]]:
    """``fast-s`` or ``fast-s:head_channels=64,descriptor_dim=128`` -> (variant, structural options; YAML values).

    ``option``: the command-line option that gave ``spec``, named in the errors."""
    variant, _, rest = spec.partition(":")
    if variant not in VARIANTS:
        raise SystemExit(f"{option}: unknown variant '{variant}' in '{spec}'; variants: {', '.join(VARIANTS)}")
    options = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", rest)):  # commas inside [...] belong to a list
        key, _, value = item.partition("=")
        if key not in STRUCTURAL_OPTIONS or not value:
            raise SystemExit(f"{option}: '{item}' in '{spec}' is not KEY=VALUE with KEY in {', '.join(STRUCTURAL_OPTIONS)}")
        options[key] = yaml.safe_load(value)
    return variant, options


def describe(model: SuperPoint) -> str:
    c = model.conf
    context = f", context {c['context_channels']}" if c.get("context_channels") else ""
    return f"{c['encoder']} {'-'.join(map(str, c['channels']))}{context}, heads {c['head_channels']}, D {c['descriptor_dim']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        help="SuperPoint variants, each optionally with structural options: fast-s:head_channels=64 "
                             f"(channels lists as [8,16,32,48]) [{' '.join(VARIANTS)}]")
    parser.add_argument("--tag", default="", help="results file name suffix: student_speed_<tag>.md/.json")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], help="input H W [480 640]")
    parser.add_argument("--threads", type=int, default=1, help="threads of PyTorch, ONNX Runtime and OpenCV [1]")
    parser.add_argument("--repeats", type=int, default=25, help="timed runs per runner, interleaved [25]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first [3]")
    parser.add_argument("--photo", default="coffee", help="scikit-image photo timed [coffee]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and repeats for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats, args.warmup = [64, 96], 2, 1
    height, width = args.size
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    started = time.perf_counter()

    image = photo_batch([args.photo], 1, height, width)  # (1, 1, H, W) float in [0, 1]
    models = superpoint_family(args.variants)
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Callable[[], Any]] = {}
    found: dict[str, Callable[[], int]] = {}
    with tempfile.TemporaryDirectory() as work, torch.inference_mode():
        for name, model in models.items():
            rows[name] = {"model": name, "structure": describe(model), "params": count_parameters(model),
                          "gflops": count_gflops(model, image), "weights": "shipped teacher" if name == "superpoint"
                          else f"random (seed {SEED}), BatchNorm"}
            runners[f"{name}/network"] = lambda m=model: m(image)
            runners[f"{name}/torch"] = lambda m=model: m.extract(image)
            found[f"{name}/torch"] = lambda m=model: len(m.extract(image)["keypoints"][0])
            path = Path(work) / f"{name}.onnx"
            with torch.inference_mode(False):
                try:
                    result = export_onnx(model, path, height, width, max_keypoints=KEYPOINTS, source=name, verbose=False)
                    rows[name]["onnx_parity"] = {k: float(v) for k, v in result.parity.errors.items()}
                except ParityError as err:  # timed all the same, and said so
                    path = path.with_name(path.stem + ".failed.onnx")
                    rows[name]["onnx_parity"] = f"FAILED: {err}"
            session = ort_session(path, threads=args.threads)
            feed = {session.get_inputs()[0].name: image.numpy()}
            runners[f"{name}/ort"] = lambda s=session, f=feed: s.run(None, f)
            found[f"{name}/ort"] = lambda s=session, f=feed: int(s.run(None, f)[3][0])

        from kornia.feature import XFeat

        torch.manual_seed(SEED)
        xfeat = XFeat(top_k=KEYPOINTS, detection_threshold=0.0).eval()
        rows["xfeat"] = {"model": "xfeat", "structure": "kornia.feature.XFeat (detectAndCompute, top_k 1000; params: those extract reads, without the fine matcher)",
                         "params": used_parameters(xfeat.net, image), "gflops": count_gflops(xfeat.net, image),
                         "weights": f"random (seed {SEED})"}
        runners["xfeat/network"] = lambda: xfeat.net(image)
        runners["xfeat/torch"] = lambda: xfeat.detectAndCompute(image)
        found["xfeat/torch"] = lambda: len(xfeat.detectAndCompute(image)[0]["keypoints"])

        sift = cv2.SIFT_create(nfeatures=KEYPOINTS)
        grey = (image[0, 0].numpy() * 255).round().astype(np.uint8)
        rows["sift"] = {"model": "sift", "structure": f"OpenCV {cv2.__version__} SIFT, nfeatures 1000",
                        "params": 0, "gflops": None, "weights": "-"}
        runners["sift/torch"] = lambda: sift.detectAndCompute(grey, None)  # "full extract" column: OpenCV
        found["sift/torch"] = lambda: len(sift.detectAndCompute(grey, None)[0])

        counts = {key: count() for key, count in found.items()}
        latency = interleaved_latency(runners, args.repeats, args.warmup)

    for key, stats in latency.items():
        name, runtime = key.split("/")
        rows[name][f"{runtime}_ms"] = stats.median_ms
        rows[name][f"{runtime}_p90_ms"] = stats.p90_ms
    for key, count in counts.items():
        name, runtime = key.split("/")
        rows[name][f"{runtime}_keypoints"] = count

    xfeat_ms = rows["xfeat"]["torch_ms"]
    lines = [
        f"# Student speed: full extract at {height}x{width}, {args.threads} thread(s), top {KEYPOINTS} key points",
        "",
        f"Command: `python benchmarks/student_speed.py {shlex.join(sys.argv[1:])}`",
        "",
        "| model | encoder, widths | params | GFLOPs | network PyTorch ms | extract PyTorch ms | extract ORT ms "
        "| speed-up vs XFeat extract (PyTorch / ORT) | key points (PyTorch / ORT) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        def ms(key: str) -> str:
            return f"{row[key]:.1f}" if key in row else "n/a"

        speedup = " / ".join(f"{xfeat_ms / row[k]:.1f}x" if k in row else "n/a" for k in ("torch_ms", "ort_ms"))
        flops = "n/a" if row["gflops"] is None else f"{row['gflops']:.2f}"
        lines.append(
            f"| {row['model']} | {row['structure']} | {row['params']:,} | "
            f"{flops} | {ms('network_ms')} | {ms('torch_ms')} | "
            f"{ms('ort_ms')} | {speedup} | "
            f"{row.get('torch_keypoints', 'n/a')} / {row.get('ort_keypoints', 'n/a')} |"
        )
    env = environment(gpu=False)
    lines += [
        "",
        f"Medians of {args.repeats} interleaved runs after {args.warmup} warm-up runs; photo '{args.photo}' resized to "
        f"{height}x{width}, grey. SuperPoint family and XFeat: detection threshold 0, top {KEYPOINTS}, input scale 1; "
        "the teacher has its shipped weights, the students and XFeat random ones (speed does not depend on weights). "
        "XFeat's extract column is kornia's `XFeat.detectAndCompute` (its network + its own post-processing); "
        "SIFT's is OpenCV's `detectAndCompute`. ORT: the graph of `detkd export` (post-processing included), checked "
        "against PyTorch on photos.",
        "",
        machine_line(env, time.perf_counter() - started, onnxruntime=True),
    ]
    if args.quick:
        lines.insert(2, "**Smoke test (--quick): tiny sizes, numbers meaningless.**\n")
    text = "\n".join(lines)
    print(text)
    stem = "student_speed" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    write_table_files(args.out, stem, text, {
        "rows": list(rows.values()), "args": vars(args), "environment": env,
        "command": f"python benchmarks/student_speed.py {shlex.join(sys.argv[1:])}"})


if __name__ == "__main__":
    main()
