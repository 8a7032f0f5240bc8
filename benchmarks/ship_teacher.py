"""Copy a teacher trained by ``detkd keypoints train-teacher`` into the package, with its model card.

    python benchmarks/ship_teacher.py RUN_DIR [--hardware "2 CPU cores"] [--results benchmarks/results/keypoint_teacher.md]
        [--config-file configs/keypoints_teacher_cpu.yaml] [--lineage "what the run started from"]
        [--describe /path/to/model.pt="the round-1 teacher (sha256 ...)"] [--input-scale 2]

Reads RUN_DIR/config.yaml, RUN_DIR/{shapes,joint}/history.jsonl and RUN_DIR/joint/superpoint.pt;
writes src/detkd/assets/superpoint_detkd.pt and superpoint_detkd.md (data, stages, steps,
time, hardware, and the benchmark table quoted from --results when it exists).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
from pathlib import Path

import torch
import yaml

from detkd.engine import read_history
from detkd.export.keypoints import KeypointPostprocess
from detkd.models.pretrained import DEFAULT_KEYPOINT_TEACHER, DEFAULT_KEYPOINT_TEACHER_CARD
from detkd.models.keypoint_ops import check_input_scale, input_size_multiple
from detkd.models.superpoint import count_parameters
from detkd.models.weights import load_keypoint_model, read_keypoint_model_meta, save_keypoint_model


def stage_facts(run: Path, stage: str) -> str:
    path = run / stage / "history.jsonl"
    history = read_history(path) if path.exists() else []
    if not history:
        return f"- `{stage}`: not run in this folder (see the lineage below)"
    last = history[-1]
    rate = last.get("images_per_s", float("nan"))
    return (f"- `{stage}`: {int(last['step'])} steps, final loss {last['loss']:.3f} "
            f"(first logged {history[0]['loss']:.3f}), {rate:.1f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="output folder of detkd keypoints train-teacher")
    parser.add_argument("--hardware", default=f"{torch.get_num_threads()} CPU threads ({platform.machine()}), no GPU")
    parser.add_argument("--wall-time", default="unknown", help="total training time, as text")
    parser.add_argument("--command", default="", help="the command that trained it")
    parser.add_argument("--config-file", default="configs/keypoints_teacher_cpu.yaml",
                        help="the repository's copy of RUN_DIR/config.yaml, named on the card")
    parser.add_argument("--lineage", default="",
                        help="for a run that starts from an earlier model (adapt.labeller, joint.init): where that model came from")
    parser.add_argument("--describe", action="append", default=[], metavar="PATH=TEXT",
                        help="name a model file of the run's config (adapt.labeller, joint.init) on the card by TEXT "
                             "instead of its path on the training machine (repeatable)")
    parser.add_argument("--input-scale", type=float, default=None,
                        help="set the shipped file's input_scale (extract() runs the network on the image resized "
                             "by this factor); default: the run's own")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results" / "keypoint_teacher.md")
    args = parser.parse_args()

    source = args.run / "joint" / "superpoint.pt"
    model = load_keypoint_model(source)  # refuses anything that is not a SuperPoint
    DEFAULT_KEYPOINT_TEACHER.parent.mkdir(parents=True, exist_ok=True)
    if args.input_scale is None:
        shutil.copyfile(source, DEFAULT_KEYPOINT_TEACHER)
    else:
        model.conf["input_scale"] = check_input_scale(args.input_scale)
        try:  # the shipped teacher must also run as an ONNX graph and through Predictor
            KeypointPostprocess(model)
        except ValueError as error:
            parser.error(f"--input-scale {args.input_scale:g}: {error}")
        save_keypoint_model(model, DEFAULT_KEYPOINT_TEACHER, meta=read_keypoint_model_meta(source))
    digest = hashlib.sha256(DEFAULT_KEYPOINT_TEACHER.read_bytes()).hexdigest()
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    adapt, joint = config["adapt"], config["joint"]
    if any("=" not in item for item in args.describe):
        parser.error("--describe takes PATH=TEXT, e.g. --describe /work/run.pt='the round-1 teacher'")
    described = dict(item.split("=", 1) for item in args.describe)
    for section, key in ((adapt, "labeller"), (joint, "init")):
        section[key] = described.get(section.get(key), section.get(key))
    card = [
        "# detkd's shipped key-point teacher (`superpoint_detkd.pt`)",
        "",
        f"SuperPoint layout ({', '.join(map(str, model.conf['channels']))} encoder widths, "
        f"{model.conf['head_channels']}-wide heads, {model.conf['descriptor_dim']}-d descriptors, "
        f"BatchNorm={model.conf['batch_norm']}), {count_parameters(model):,} parameters. "
        f"sha256 `{digest[:16]}...`. Trained by detkd itself from nothing: no labels, no downloaded weights.",
        "",
        "## Data",
        "- Stage 1: procedurally drawn synthetic shapes (`detkd.data.synthetic_shapes`), "
        f"{config['shapes']['height']}x{config['shapes']['width']} px.",
        "- Stages 2-3: scikit-image's training photos (`detkd.data.images.BUILTIN_TRAIN_PHOTOS`) "
        "and the training block of tiles of the aerial orthophoto in `../shared/data/trees` "
        "(`benchmarks/tree_tiles.py`, left three quarters of the image), resized to a longer side of "
        f"{adapt['longer_side']} px. The held-out photos and the held-out tree block were never used.",
        "",
        "## Stages and schedule",
        stage_facts(args.run, "shapes"),
        f"- `adapt`: homographic adaptation, {adapt['num_warps']} warps per photo, threshold {adapt['threshold']}, "
        f"NMS radius {adapt['nms_radius']} px, labels by {adapt.get('labeller') or 'the MagicPoint of stage shapes'}.",
        stage_facts(args.run, "joint") + f", started from {joint.get('init') or 'the MagicPoint of stage shapes'}, "
        f"descriptor loss {joint['descriptor_loss']} (weight {joint['descriptor_weight']}), key-point descriptor "
        f"weight {joint.get('keypoint_descriptor_weight', 0.0)}, heatmap-consistency weight {joint.get('consistency_weight', 0.0)}.",
        *([f"- Lineage: {args.lineage}"] if args.lineage else []),
        "",
        f"Key points: heatmap threshold {model.conf['detection_threshold']}, NMS radius {model.conf['nms_radius']} px, "
        f"sub-pixel refinement radius {model.conf['subpixel_radius']} px, input scale {float(model.conf['input_scale']):g}"
        + (" (extract() and the exported graph run the network on the image upsampled by this factor and map the "
           "points back; exported graphs and Predictor take image sides that are multiples of "
           f"{input_size_multiple(float(model.conf['input_scale']))} px and pad others; distillation uses the "
           "network's dense outputs at the training resolution, unaffected)"
           if float(model.conf["input_scale"]) != 1 else "") + ".",
        "",
        f"Config: `{args.config_file}`. Command: `{args.command}`.  ",
        f"Hardware: {args.hardware}. Total training time: {args.wall_time}.",
        "",
        "This is a short schedule (the SuperPoint paper trains each stage for hundreds of thousands of "
        "iterations on a GPU); the teacher is good enough to distil from and to compare against classical "
        "features, not a replacement for Magic Leap's weights.",
        "",
        "## Metrics",
        "",
    ]
    if args.results.exists():
        card.append(f"From `{args.results.name}` (`python benchmarks/keypoint_teacher.py`):\n")
        card.append(args.results.read_text())
    else:
        card.append("Not measured yet: run `python benchmarks/keypoint_teacher.py`.")
    DEFAULT_KEYPOINT_TEACHER_CARD.write_text("\n".join(card) + "\n")
    print(f"shipped {DEFAULT_KEYPOINT_TEACHER} ({DEFAULT_KEYPOINT_TEACHER.stat().st_size / 1e6:.1f} MB) and its card")


if __name__ == "__main__":
    main()
