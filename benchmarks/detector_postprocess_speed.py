"""What one-stage detectors spend after the network: torchvision's post-processing against detkd's.

A detector's time is network + post-processing, and the post-processing (scores above the threshold,
per-level top-k, class-wise NMS) costs a small student about as much as its teacher, so it holds the
pair's speed ratio down. For each detector file and image side, on one real photo, this times in
eager PyTorch, interleaved (round-robin) in one run:

* ``network``: the inference copy's forward (BatchNorm folded, channels-last; what ``Predictor`` runs);
* ``torchvision``: ``postprocess_detections`` of torchvision's FCOS / RetinaNet on those outputs
  (what detkd ran before 2026-12-06; :meth:`DetectorAdapter.postprocess_reference`);
* ``detkd``: :meth:`DetectorAdapter.postprocess` (:mod:`detkd.models.detection.postprocess`: top-k only
  where a level needs it, NMS that stops at ``max_detections``).

It checks that both post-processings return the same detections, and gives each model's whole time
both ways and the first model's (the teacher's) whole time over each model's: the pair's ratio.

    python benchmarks/detector_postprocess_speed.py teacher=benchmarks/teachers/shapes256_fcos_small_fpn_8000.pt \\
        nano=RUN/model.pt --sizes 256 512 --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from detkd.export.onnx import photo_batch
from detkd.export.records import environment, machine_line, write_table_files
from detkd.export.timing import interleaved_latency
from detkd.models.detection import inference_copy, load_detector, per_anchor


def same_detections(first: list[dict[str, torch.Tensor]], second: list[dict[str, torch.Tensor]]) -> bool:
    """Equal labels, scores within 1e-6 and boxes within 1e-4 px, in the same order."""
    return all(
        a["labels"].shape == b["labels"].shape and torch.equal(a["labels"], b["labels"])
        and torch.allclose(a["scores"], b["scores"], atol=1e-6) and torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
        for a, b in zip(first, second)
    )


def measure(models: dict[str, Path], size: int, repeats: int, photo: str) -> list[dict]:
    """One row per model: candidates, the three medians (ms) and whether the detections agree."""
    image = photo_batch([photo], 3, size, size)
    runners, rows = {}, []
    for name, path in models.items():
        detector = inference_copy(load_detector(path))
        with torch.no_grad():
            outputs = detector(image)
            fast, reference = detector.postprocess(outputs), detector.postprocess_reference(outputs)
            scores, _ = per_anchor(outputs)
        rows.append({"model": name, "size": size, "above_threshold": int((scores > 0.05).sum()),
                     "detections": int(fast[0]["scores"].shape[0]), "same": same_detections(fast, reference)})

        def network(detector=detector):
            with torch.no_grad():
                detector(image)

        def post_reference(detector=detector, outputs=outputs):
            with torch.no_grad():
                detector.postprocess_reference(outputs)

        def post_fast(detector=detector, outputs=outputs):
            with torch.no_grad():
                detector.postprocess(outputs)

        runners.update({(name, "network"): network, (name, "torchvision"): post_reference,
                        (name, "detkd"): post_fast})
    stats = interleaved_latency(runners, repeats=repeats, warmup=3)
    for row in rows:
        for way in ("network", "torchvision", "detkd"):
            row[way] = stats[(row["model"], way)].median_ms
    return rows


def table(rows: list[dict]) -> str:
    teacher = rows[0]
    whole = {way: teacher["network"] + teacher[way] for way in ("torchvision", "detkd")}
    lines = ["| model | scores above 0.05 | detections | network ms | post-processing ms: torchvision | detkd | "
             "saved | whole ms: torchvision | detkd | teacher / model: torchvision | detkd | same detections |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        before, after = r["network"] + r["torchvision"], r["network"] + r["detkd"]
        lines.append(
            f"| {r['model']} | {r['above_threshold']} | {r['detections']} | {r['network']:.1f} | {r['torchvision']:.2f} | "
            f"{r['detkd']:.2f} | {r['torchvision'] / r['detkd']:.1f}x | {before:.1f} | {after:.1f} | "
            f"{whole['torchvision'] / before:.2f}x | {whole['detkd'] / after:.2f}x | {'yes' if r['same'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="NAME=PATH",
                        help="one-stage detector files (FCOS, RetinaNet); the first is the teacher of the ratios")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square image sides [256 512]")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads [1]")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs of each of the 3 ways per model [50]")
    parser.add_argument("--photo", default="coffee", help="scikit-image photo, as detkd bench uses [coffee]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    parser.add_argument("--tag", default="", help="results file name: detector_postprocess_speed[_TAG].md/.json")
    args = parser.parse_args()
    models = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"models are NAME=PATH, got {item!r}")
        if not Path(path).is_file():
            parser.error(f"{name}: no file {path}")
        models[name] = Path(path)
    torch.set_num_threads(args.threads)
    started = time.time()
    lines = ["# Detector post-processing: torchvision's against detkd's", "",
             f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`", "",
             f"Eager PyTorch, {args.threads} thread(s), batch 1, the scikit-image photo `{args.photo}` resized to "
             "each size; median ms of "
             f"{args.repeats} runs, all ways and models interleaved (round-robin). `network`: the inference copy's "
             "forward; post-processing on its outputs: score threshold 0.05, top 1000 per level, class-wise NMS "
             "at IoU 0.5, 100 detections. `same detections`: both post-processings return equal labels, scores "
             "(1e-6) and boxes (1e-4 px) in the same order."]
    payload = {"command": sys.argv, "sizes": {}}
    for size in args.sizes:
        rows = measure(models, size, args.repeats, args.photo)
        lines += ["", f"## {size}x{size}", "", table(rows)]
        payload["sizes"][size] = rows
    lines += ["", machine_line(environment(gpu=False), time.time() - started)]
    text = "\n".join(lines)
    print(text)
    stem = "detector_postprocess_speed" + (f"_{args.tag}" if args.tag else "")
    print(f"\nwrote {write_table_files(args.out, stem, text, payload)}")


if __name__ == "__main__":
    main()
