"""Ship a distilled student: copy it into ``src/detkd/assets`` with its provenance and write its model card.

The card is built only from recorded files: the run's ``config.yaml`` (teacher, data, schedule,
loss), the learning-curve records of the run (validation pairs, every milestone) and, when given,
the held-out table of ``benchmarks/keypoint_anchors.py`` (``--heldout``, its JSON). Nothing is
typed in by hand, so the card says what the files say.

    python benchmarks/ship_student.py --name student-fast-m --run runs/learning_curve/runs/fast-m \\
        --steps 8000 --curve runs/learning_curve/fast-m.jsonl --heldout benchmarks/results/keypoint_anchors.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from detkd.models.pretrained import SHIPPED_MODELS
from detkd.models.superpoint import inference_parameter_count
from detkd.models.weights import load_keypoint_model, save_keypoint_model
from detkd.tasks.keypoint_students import read_student_start

SHARES = (("mma@3", "MMA@3"), ("homography_accuracy@1", "HA@1"), ("homography_accuracy@3", "HA@3"))


def curve_table(records: list[dict[str, Any]]) -> list[str]:
    lines = ["| steps | " + " | ".join(f"student {label}" for _, label in SHARES) + " | "
             + " | ".join(f"share of teacher {label}" for _, label in SHARES) + " | loc. err (px) |",
             "|---:|" + "---:|" * (2 * len(SHARES) + 1)]
    for r in sorted(records, key=lambda r: r["steps"]):
        s, t = r["models"]["student"], r["models"]["teacher"]
        lines.append(f"| {r['steps']} | " + " | ".join(f"{s[k]:.3f}" for k, _ in SHARES) + " | "
                     + " | ".join(f"{s[k] / t[k]:.0%}" if t[k] else "-" for k, _ in SHARES)
                     + f" | {s['localization_error']:.2f} |")
    t = records[-1]["models"]["teacher"]
    lines += ["", "Teacher on the same pairs: " + ", ".join(f"{label} {t[k]:.3f}" for k, label in SHARES)
              + f", loc. err {t['localization_error']:.2f} px."]
    return lines


def heldout_lines(path: Path, name: str) -> list[str]:
    results = json.loads(path.read_text())
    accuracy = results["accuracy"]
    if not all(name in rows for rows in accuracy.values()):
        return [f"(`{path}` holds no row '{name}': run benchmarks/keypoint_anchors.py after shipping.)"]
    costs = {r["model"]: r for r in results["cost"]}
    cost = costs.get(name, {})
    lines = [f"From `{path}` "
             f"(`python benchmarks/keypoint_anchors.py {' '.join(results.get('argv', []))}`, "
             "held-out synthetic pairs of scikit-image's held-out photos, of the held-out aerial tiles and, where "
             "the table has `more photos`, of the held-out Debian photos; at most 1000 points; matcher: mutual "
             "nearest neighbours, and the teacher's LightGlue where the "
             "table has that row):", "",
             "| pairs | matcher | MMA@3 | HA@1 | HA@3 | repeatability | loc. err (px) |", "|---|---|---:|---:|---:|---:|---:|"]
    for row, matcher in ((name, "mutual NN"), (f"{name} + LightGlue", "LightGlue")):
        for pair_set, rows in accuracy.items():
            if row not in rows:
                continue
            r = rows[row]
            lines.append(f"| {pair_set} | {matcher} | {r['mma@3']:.3f} | {r['homography_accuracy@1']:.3f} | "
                         f"{r['homography_accuracy@3']:.3f} | {r['repeatability']:.3f} | {r['localization_error']:.2f} |")
    if cost:
        xfeat = costs.get("XFeat", {}).get("latency_ms")  # the same run's anchor: a loaded machine slows every row
        beside = f"; XFeat's extract in the same run: {xfeat:.0f} ms" if xfeat else ""
        lines += ["", f"Full extract at the benchmark's latency size, 1000 points: {cost['latency_ms']:.0f} ms "
                      f"(median, PyTorch on the CPU, interleaved with the other models{beside}), "
                      f"{cost['gflops']:.2f} GFLOPs."]
    return lines


def set_nms_radius(student: torch.nn.Module, radius: int | None) -> str:
    """Give ``student``'s extract the NMS ``radius`` (pixels) chosen on validation pairs, in place.

    Returns the model card's line that says so, or ``""`` when ``radius`` is None or the run's own."""
    trained = int(student.conf["nms_radius"])
    if radius is None or radius == trained:
        return ""
    student.conf["nms_radius"] = int(radius)
    return (f"- Post-processing: NMS radius {radius} px, chosen on the validation pairs (the run trained and "
            f"validated with {trained}); the other post-processing settings are the run's.")


def initial_weights_text(init: str | None, run: Path) -> str:
    """Where a fine-tuned student started (``student.init`` of its run).

    The run's ``student_init.json`` (written at its step 0) names the file by its digest then; a run
    started before that record existed falls back to the digest of the file shipped under that name
    *now*, which is right only until a successor is shipped (restore the run's starting file first)."""
    if not init:
        return ""
    record = read_student_start(run)
    if record:
        return (f"fine-tuned from `{record['init']}` as it was when the run started "
                f"(sha256 `{record['sha256'][:16]}...`{', card in git history' if init in SHIPPED_MODELS else ''})")
    shipped = SHIPPED_MODELS.get(init)
    if shipped is None or not shipped.path.exists():
        return f"fine-tuned from `{init}`"
    digest = hashlib.sha256(shipped.path.read_bytes()).hexdigest()
    return f"fine-tuned from `{init}` as shipped before this file (sha256 `{digest[:16]}...`, card in git history)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, choices=[n for n, m in SHIPPED_MODELS.items() if m.role == "student"])
    parser.add_argument("--run", type=Path, required=True, help="the distillation run folder")
    parser.add_argument("--steps", type=int, required=True, help="which milestone: RUN/student_STEPS.pt")
    parser.add_argument("--curve", type=Path, required=True, help="the run's learning-curve records (.jsonl)")
    parser.add_argument("--heldout", type=Path, default=None, help="keypoint_anchors.json with this student's row")
    parser.add_argument("--heldout-row", default=None,
                        help="the student's row in --heldout when it was judged under another name (NAME of "
                             "keypoint_anchors.py --model NAME=FILE) [--name]")
    parser.add_argument("--choice", default="", help="how this milestone was chosen (validation), one sentence")
    parser.add_argument("--nms-radius", type=int, default=None,
                        help="NMS radius in pixels written into the shipped file's post-processing, when one other "
                             "than the run's was chosen on validation pairs (keypoint_postprocessing.py) [the run's]")
    args = parser.parse_args()
    if args.nms_radius is not None and args.nms_radius < 1:
        parser.error(f"--nms-radius must be at least 1 pixel, got {args.nms_radius}")

    shipped = SHIPPED_MODELS[args.name]
    source = args.run / f"student_{args.steps}.pt"
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    records = [json.loads(line) for line in args.curve.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["steps"] <= args.steps]
    student = load_keypoint_model(source).eval()
    post_processing = set_nms_radius(student, args.nms_radius)
    teacher = config["teacher"]["checkpoint"] or "detkd's shipped teacher (default)"
    point_scale = float(config["teacher"].get("point_scale", 1.0))
    start = initial_weights_text(config["student"].get("init"), args.run)  # before the file it may name is replaced
    meta = {"name": args.name, "teacher": str(teacher), "steps": args.steps,
            "student": config["student"]["variant"], "data": str(config["data"]["images"]),
            **({"init": start} if start else {}), **({"teacher_point_scale": point_scale} if point_scale != 1 else {})}
    save_keypoint_model(student, shipped.path, meta=meta)
    digest = hashlib.sha256(shipped.path.read_bytes()).hexdigest()
    train = config["train"]
    conf = student.conf
    lines = [
        f"# detkd's shipped student `{args.name}` (`{shipped.file}`)", "",
        f"`{config['student']['variant']}` student ({conf['encoder']} encoder, widths {list(conf['channels'])}, "
        f"heads {conf['head_channels']}, {conf['descriptor_dim']}-d descriptors, descriptor stride "
        f"{conf['descriptor_stride']}, detector stride {conf['detector_stride']}"
        f"{', a context pyramid of ' + str(conf['context_channels']) + ' channels' if conf['context_channels'] else ''}), "
        f"{inference_parameter_count(student):,} "
        f"parameters, {shipped.path.stat().st_size / 1024:.0f} KB, sha256 `{digest[:16]}...`. "
        f"Use it by name: `detkd.Predictor('{args.name}')`, `detkd keypoints match A B --model {args.name}`, "
        f"`detkd export {args.name} ...`.", "",
        "## How it was made", "",
        f"- Teacher: {teacher}"
        + (f", its per-pixel scores x{point_scale:g} before they became 65-bin cells (`teacher.point_scale`: no cell "
           "divided by its sum, the teacher's ranking kept)." if point_scale != 1 else "."),
        f"- Data: the 58 training images of `benchmarks/learning_curve.py` (28 of the 34 shared photos, "
        "scikit-image's training photos, the training block of aerial tree tiles), no labels; "
        f"{config['teacher_cache']['views_per_image']} fixed augmented views per image "
        f"({config['data']['height']}x{config['data']['width']}), the teacher's outputs cached once.",
        f"- Schedule: {start + ', then ' if start else ''}{args.steps} steps x {train['batch_size']} views, "
        f"AdamW lr {train['lr']}, x{train['lr_decay']} "
        f"every {train['lr_decay_every']} steps, on one CPU thread (2-core machine shared with other jobs)"
        + (f"; the shipped weights are the moving average of the student's (decay {train['ema_decay']})."
           if train.get("ema_decay") else "."),
        f"- Loss weights: {config['loss']}.",
        f"- Command: `{records[-1].get('command', 'python benchmarks/learning_curve.py')}`; this file is "
        f"`student_{args.steps}.pt` of that run, shipped with `python benchmarks/ship_student.py --name {args.name} "
        f"--steps {args.steps} ...`.",
    ]
    if args.choice:
        lines.append(f"- Choice: {args.choice}")
    if post_processing:
        lines.append(post_processing)
    lines += ["", "## Validation (the learning curve; 6 shared photos kept out of training)", "",
              f"{config['eval']['pairs_per_image']} synthetic pairs per validation photo at "
              f"{config['eval']['height']}x{config['eval']['width']}, teacher and student at input scale 1, "
              "1000 points:", "", *curve_table(records), ""]
    lines += ["## Held-out", ""]
    lines += (heldout_lines(args.heldout, args.heldout_row or args.name) if args.heldout
              else ["(not yet judged on held-out pairs)"])
    lines += ["", "Every detkd key-point model suppresses points on flat regions (intensity range below 0.02 "
              "in a 5x5 window): black borders and warp fill give none."]
    shipped.card.write_text("\n".join(lines) + "\n")
    print(f"shipped {source} -> {shipped.path} ({shipped.path.stat().st_size / 1024:.0f} KB); card {shipped.card}")


if __name__ == "__main__":
    main()
