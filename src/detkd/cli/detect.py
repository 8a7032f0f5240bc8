"""``detkd detect train | distill | cache-teacher | evaluate | make-synthetic``: object detectors end to end.

Options given on the command line override the YAML file given with ``--config``, which
overrides the defaults (``detkd config detect-train`` / ``detect-distill`` print them all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

METHODS = ("gid", "hint", "pkd", "cwd")


def _detector_names() -> list[str]:
    from detkd.models.detection import list_detectors

    return list_detectors()


def _max_detections(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    """``--max-detections``: ``auto`` or a positive integer (``None``: not given)."""
    if value is None:
        return None
    from detkd.evaluation.detection import parse_max_detections

    try:
        return parse_max_detections(value, "--max-detections")
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


_MAX_DETECTIONS_HELP = ("Detections kept and scored per image (COCO maxDets): a number, or auto = max(100, 1.5 x the "
                        "most boxes in one evaluated image, rounded up), so that dense scenes are not capped at 100.")


def _devices(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    """``--devices`` as Fabric takes it (:func:`detkd.cli.main.devices_value`, shared with 'keypoints distill')."""
    from detkd.cli.main import devices_value  # main imports this module: imported when called

    return devices_value(value)


def _with(options: list[Callable], func: Callable) -> Callable:
    for option in reversed(options):
        func = option(func)
    return func


#: What the images and their views are: shared by train, distill and cache-teacher.
_DATA_OPTIONS = [
    click.option("--data", "data", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="data.yaml: format (coco | voc | yolo), class names, train/val parts (see "
                      "'detkd detect make-synthetic' for an example). Also: data.config in --config."),
    click.option("--height", type=int, default=None,
                 help="Training view height, pixels (multiple of 128). [default: 512]"),
    click.option("--width", type=int, default=None,
                 help="Training view width, pixels (multiple of 128). [default: 512]"),
    click.option("--tile-size", type=int, default=None,
                 help="Cut large images (orthophotos) into tiles of this many pixels first. [default: off]"),
    click.option("--skip-bad", is_flag=True, default=None,
                 help="Leave out bad annotations (boxes with x2 <= x1, outside the image, NaN, unknown "
                      "classes, missing images), counted and named, instead of stopping at the first."),
]
_DATA_KEYS = {"data": "data.config", "height": "data.height", "width": "data.width", "tile_size": "data.tile_size",
              "skip_bad": "data.skip_bad"}

#: Which images a label-free distillation trains on: shared by distill and cache-teacher.
_LABEL_FREE_OPTIONS = [
    click.option("--label-free/--with-labels", default=None,
                 help="--label-free trains on images without boxes with the distillation losses alone "
                      "(images: --unlabeled, else data.yaml's 'unlabeled', else the train images). "
                      "[default: with labels]"),
    click.option("--unlabeled", multiple=True, type=click.Path(exists=True, file_okay=False),
                 help="Folder of unlabelled images for --label-free (repeatable)."),
]


def _data_options(func: Callable) -> Callable:
    return _with(_DATA_OPTIONS, func)


def _label_free_options(func: Callable) -> Callable:
    return _with(_LABEL_FREE_OPTIONS, func)


def _run_options(func: Callable) -> Callable:
    """Options shared by ``train`` and ``distill`` (data, schedule, size, device)."""
    return _with([
        *_DATA_OPTIONS,
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Output folder: model, metrics, plots, TensorBoard logs, config.yaml."),
        click.option("--steps", type=int, default=None, help="Optimiser steps in total. [default: 3000]"),
        click.option("--batch-size", type=int, default=None, help="Images per step. [default: 8]"),
        click.option("--lr", type=float, default=None, help="AdamW learning rate. [default: 1e-3]"),
        click.option("--val-every", type=int, default=None,
                     help="Validate (mAP, AP50 on the val part) every N steps: validation.jsonl, validation.png "
                          "and TensorBoard's val/ curves show whether longer training still helps. "
                          "[default: 0, only at the end]"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
                     help="Where to train. [default: auto]"),
        click.option("--precision", default=None,
                     help="Fabric precision: auto (bf16-mixed on a bf16 GPU, else 32-true), 32-true, "
                          "bf16-mixed, 16-mixed. [default: auto]"),
        click.option("--devices", default=None, callback=_devices,
                     help="Processes (GPUs) per node: a number, 'auto', or GPU ids like '0,1'. [default: 1]"),
        click.option("--num-nodes", type=int, default=None, help="Machines taking part. [default: 1]"),
        click.option("--strategy", default=None, help="Fabric strategy: auto, ddp, ddp_spawn, ... [default: auto]"),
        click.option("--workers", type=int, default=None, help="Data-loading processes. [default: 0]"),
        click.option("--seed", type=int, default=None, help="Random seed of data and initialisation. [default: 0]"),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
        click.option("--max-detections", default=None, metavar="N|auto", callback=_max_detections,
                     help=_MAX_DETECTIONS_HELP + " [default: auto]"),
    ], func)


_RUN_KEYS = {
    **_DATA_KEYS, "steps": "train.steps", "batch_size": "train.batch_size", "lr": "train.lr",
    "val_every": "train.val_every", "device": "train.accelerator", "precision": "train.precision", "workers": "train.num_workers",
    "seed": "train.seed", "max_detections": "eval.max_detections", "devices": "train.devices",
    "num_nodes": "train.num_nodes", "strategy": "train.strategy",
}


@click.group()
def detect() -> None:
    """Object detectors (RetinaNet, FCOS, Faster R-CNN): train, distil, evaluate.

    \b
      detkd detect make-synthetic data/shapes
      detkd detect train   --model retinanet_resnet18_fpn --data data/shapes/data.yaml --out runs/teacher
      detkd detect distill --teacher runs/teacher/model.pt --student retinanet_tiny_fpn \\
                           --method gid --data data/shapes/data.yaml --out runs/gid
      detkd detect evaluate --model runs/gid/student.pt --data data/shapes/data.yaml --plot gid.png
      # run the teacher once per fixed view, then distil (and distil again) from its stored outputs
      detkd detect cache-teacher --teacher runs/teacher/model.pt --data data/shapes/data.yaml --cache runs/cache
      detkd detect distill --teacher runs/teacher/model.pt --student retinanet_tiny_fpn \\
                           --data data/shapes/data.yaml --teacher-cache runs/cache --out runs/gid_cached
    """


@detect.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config; see 'detkd config detect-train' for every key and default.")
@click.option("--model", default=None, metavar="NAME",
              help="Detector to train, e.g. retinanet_resnet50_fpn, fcos_resnet18_fpn, fasterrcnn_mobilenet_v3_fpn, "
                   "retinanet_tiny_fpn ('detkd detect models' lists them all). [default: retinanet_resnet50_fpn]")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from the weights of this detector file (another run's model.pt of the same --model, e.g. "
                   "one trained on synthetic shapes or another site) instead of random ones; layers of another "
                   "shape (the class layer of another class list) start fresh. [default: none]")
@_run_options
def train(config_file: Path | None, out: Path, resume: bool, **options: Any) -> None:
    """Train a detector (a teacher, or a baseline student) on labelled images, from scratch or from --init.

    The loss is the family's own (RetinaNet: focal + L1; FCOS: focal + GIoU + centre-ness;
    Faster R-CNN: RPN + RoI head). Writes model.pt, and the COCO metrics (mAP, AP50, AP75,
    small/medium/large, per class) of the val part with a plot of detections.
    """
    from detkd.cli.main import resolve_config, run_config_file
    from detkd.tasks.detection import DEFAULT_TRAIN_CONFIG, run_detection_training

    keys = {**_RUN_KEYS, "model": "model.name", "init": "model.init"}
    config = resolve_config(DEFAULT_TRAIN_CONFIG, run_config_file(config_file, out, resume),
                            {keys[k]: v for k, v in options.items()})
    run_detection_training(config, out, resume=resume)


@detect.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config; see 'detkd config detect-distill' for every key and default.")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Teacher: model.pt of 'detkd detect train' (or its checkpoints/last.pt). It must know the "
                   "same classes as the data, in the same order.")
@click.option("--student", default=None, metavar="NAME",
              help="Student detector to build, e.g. retinanet_mobilenet_v3_fpn, fcos_tiny_fpn. "
                   "[default: retinanet_mobilenet_v3_fpn]")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="gid: General Instance Distillation (feature + relation + response on the instances where "
                   "teacher and student disagree); hint: FitNets / fine-grained feature imitation on the FPN; "
                   "pkd: Pearson-correlation feature loss; cwd: channel-wise distillation. [default: gid]")
@click.option("--gt-weight", type=float, default=None,
              help="Weight of the student's own ground-truth loss (0: distillation alone). [default: 1.0]")
@_label_free_options
@click.option("--teacher-cache", type=click.Path(file_okay=False), default=None,
              help="Folder of cached teacher outputs (missing ones are computed first): the teacher runs once per "
                   "fixed view instead of every step, and training uses only those views. See "
                   "'detkd detect cache-teacher'. [default: off]")
@_run_options
def distill(config_file: Path | None, out: Path, resume: bool, unlabeled: tuple[str, ...], **options: Any) -> None:
    """Train a small student detector with a trained teacher's knowledge.

    Teacher and student see the same augmented images; the student learns from the ground
    truth and from the teacher through the chosen method. Teacher and student may be different
    families (RetinaNet teacher, FCOS student) where the method allows it; incompatible pairs are
    refused with the reason before training. At the end both are evaluated on the val part.
    The method's own options (weights, ablations: gid.relation_weight: 0, ...) are in --config.
    """
    from detkd.cli.main import resolve_config, run_config_file
    from detkd.tasks.detection import DEFAULT_DISTILL_CONFIG, run_detection_distillation

    keys = {**_RUN_KEYS, "teacher": "teacher.checkpoint", "student": "student.name", "method": "distill.method",
            "gt_weight": "distill.gt_weight", "label_free": "distill.label_free",
            "teacher_cache": "teacher_cache.folder"}
    overrides = {keys[k]: v for k, v in options.items()}
    overrides["data.unlabeled"] = list(unlabeled) or None
    config = resolve_config(DEFAULT_DISTILL_CONFIG, run_config_file(config_file, out, resume), overrides)
    run_detection_distillation(config, out, resume=resume)


@detect.command("cache-teacher")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The YAML config of the distillation runs that will read the cache (same data and view settings).")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Teacher: model.pt of 'detkd detect train' (RetinaNet or FCOS; Faster R-CNN cannot be cached).")
@click.option("--cache", "cache_folder", type=click.Path(file_okay=False), default=None,
              help="Cache folder (created, or completed if it exists). Default: teacher_cache.folder of --config.")
@click.option("--views-per-image", type=int, default=None,
              help="Fixed augmented views per image; training cycles through them. [default: 4]")
@_data_options
@_label_free_options
@click.option("--batch-size", type=int, default=None, help="Images per teacher forward. [default: 8]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where the teacher runs. [default: auto]")
@click.option("--workers", type=int, default=None, help="Data-loading processes. [default: 0]")
@click.option("--seed", type=int, default=None, help="Seed of the views (train.seed). [default: 0]")
def cache_teacher(config_file: Path | None, unlabeled: tuple[str, ...], **options: Any) -> None:
    """Run the teacher once on fixed augmented views of the training images and store its outputs.

    Each image gets --views-per-image (K) views (zoom, crop, flips, colour jitter), drawn from the
    seed, the view number and the image's content. A later 'detkd detect distill --teacher-cache
    FOLDER' with the same config and teacher trains from the stored outputs instead of running
    the teacher each step; the student then sees exactly the views (and boxes) the teacher saw,
    so augmentation is limited to those K views per image. distill --teacher-cache also builds
    missing entries itself; this command builds once for many students. The cache is bound to
    the teacher's weights, the class list, the image contents and the view settings: other
    ones are refused with each difference named.

    \b
      detkd detect cache-teacher --teacher runs/teacher/model.pt --data data.yaml --cache runs/det_cache
      detkd detect distill --teacher runs/teacher/model.pt --data data.yaml --teacher-cache runs/det_cache --out runs/gid
    """
    from detkd.cli.main import resolve_config
    from detkd.tasks.detection import DEFAULT_DISTILL_CONFIG, check_class_lists, load_teacher
    from detkd.tasks.detection_data import build_teacher_cache, distillation_stream, read_detection_data

    keys = {**_DATA_KEYS, "teacher": "teacher.checkpoint", "cache_folder": "teacher_cache.folder",
            "views_per_image": "teacher_cache.views_per_image", "label_free": "distill.label_free",
            "batch_size": "teacher_cache.batch_size", "device": "train.accelerator", "workers": "train.num_workers",
            "seed": "train.seed"}
    overrides = {keys[k]: v for k, v in options.items()}
    overrides["data.unlabeled"] = list(unlabeled) or None
    config = resolve_config(DEFAULT_DISTILL_CONFIG, config_file, overrides)
    if not config["teacher_cache"]["folder"]:
        raise click.UsageError("Name the cache folder: --cache DIR (or teacher_cache.folder in --config)")
    teacher = load_teacher(config["teacher"]["checkpoint"])
    data = read_detection_data(config["data"], config["eval"]["split"])
    check_class_lists(teacher, data.class_names, str(config["teacher"]["checkpoint"]),
                      str(config["data"]["config"]))
    stream, images_text = distillation_stream(config, data)
    click.echo(f"teacher : {teacher.name} from {config['teacher']['checkpoint']}\nimages  : {images_text}")
    click.echo(build_teacher_cache(config, teacher, stream, data.class_names,
                                   progress=bool(config["train"]["progress"])).summary())


@detect.command()
@click.option("--model", "models", multiple=True, required=True,
              help="Detector to evaluate (repeatable): model.pt / student.pt / a detection checkpoint. "
                   "NAME=PATH sets the table row name.")
@click.option("--data", "data", type=click.Path(exists=True, dir_okay=False), required=True,
              help="data.yaml whose val (or --split) part is evaluated.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True,
              help="Part of data.yaml to evaluate.")
@click.option("--size", type=int, default=None,
              help="Letterbox size of the images, pixels (multiple of 128). Default: the model's training size "
                   "(stored in model.pt), else 512.")
@click.option("--tile-size", type=int, default=None,
              help="Predict each image in overlapping tiles of this many pixels, merge the boxes across tile seams "
                   "and score the whole image against all its boxes. [default: whole images letterboxed]")
@click.option("--tile-overlap", type=float, default=0.25, show_default=True,
              help="With --tile-size: overlap of neighbouring tiles, a fraction of the tile below 1, else pixels. "
                   "Make it larger than the largest object.")
@click.option("--per-tile", is_flag=True,
              help="With --tile-size: score every tile alone against the boxes clipped to it (as the end of "
                   "'detect train' does with data.tile_size) instead of whole images.")
@click.option("--max-detections", default="auto", show_default=True, metavar="N|auto", callback=_max_detections,
              help=_MAX_DETECTIONS_HELP)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images (or tiles) per forward pass.")
@click.option("--score-threshold", type=float, default=0.05, show_default=True,
              help="Detections below this score are dropped before COCO evaluation.")
@click.option("--skip-bad", is_flag=True, help="Leave out bad annotations (counted) instead of stopping.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw every model's detections side by side into this PNG: one row per image (named), one "
                   "column per --model; hits (IoU >= 0.5 with a box of the same class) green, false alarms red, "
                   "missed ground-truth boxes orange dashed, counted above each panel.")
@click.option("--plot-images", type=int, default=6, show_default=True, help="Images in the --plot figure.")
@click.option("--plot-threshold", type=float, default=None,
              help="Score threshold of the boxes drawn (and counted) in --plot and --out's detections*.png; "
                   "boxes scoring below --score-threshold are never drawn. [default: 0.3, eval.plot_score_threshold]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write metrics.json, metrics.md and detection plots here.")
def evaluate(models: tuple[str, ...], data: str, split: str, size: int | None, tile_size: int | None,
             tile_overlap: float, per_tile: bool, max_detections: int | str, batch_size: int, score_threshold: float,
             skip_bad: bool, plot: Path | None, plot_images: int, plot_threshold: float | None,
             out: Path | None) -> None:
    """COCO mAP, AP50, AP75, AP small/medium/large, AR and per-class AP (pycocotools).

    With --tile-size, large images (orthophotos) are predicted in overlapping tiles whose boxes
    are merged into one set per image (objects cut by a seam count once), and scored as whole images.
    """
    from detkd.tasks.detection import DEFAULT_TRAIN_CONFIG, load_teacher, stored_train_size
    from detkd.tasks.detection_data import read_detection_data
    from detkd.tasks.detection_eval import evaluate_and_report

    from detkd.export.sources import split_model_name

    named, origins = {}, {}
    for entry in models:
        name, path = split_model_name(entry)
        name = name or Path(path).stem
        if name in named:
            raise click.UsageError(f"Two --model rows are named '{name}' ({origins[name]}, {path}): name each row, "
                                   f"e.g. --model {name}2={path}")
        named[name], origins[name] = load_teacher(path), path
    first_path = split_model_name(models[0])[1]
    height, width = (size, size) if size else stored_train_size(first_path) or (512, 512)
    tiling = None
    if per_tile and tile_size is None:
        raise click.UsageError("--per-tile needs --tile-size")
    if tile_size is not None:
        from detkd.tasks.detection_predict import WholeImageTiling

        try:
            tiling = WholeImageTiling(tile_size, int(tile_overlap) if float(tile_overlap).is_integer() else tile_overlap)
        except ValueError as err:
            raise click.UsageError(f"--tile-size {tile_size} --tile-overlap {tile_overlap:g}: {err}") from None
    data_cfg = {**DEFAULT_TRAIN_CONFIG["data"], "config": data, "skip_bad": skip_bad}
    if per_tile and tiling is not None:
        data_cfg.update(tile_size=tile_size, tile_overlap=tiling.overlap_px)
        tiling = None
    dataset = read_detection_data(data_cfg, split)
    evaluated = dataset.val
    if evaluated is None:
        raise click.UsageError(f"{data} has no '{split}' part")
    for name, model in named.items():
        if model.num_classes != len(dataset.class_names):
            raise click.UsageError(
                f"Model '{name}' predicts {model.num_classes} classes but {data} lists {len(dataset.class_names)} "
                f"({', '.join(dataset.class_names)})"
            )
    eval_cfg = {**DEFAULT_TRAIN_CONFIG["eval"], "batch_size": batch_size, "score_threshold": score_threshold,
                "plot_images": plot_images, "max_detections": max_detections}
    if plot_threshold is not None:
        eval_cfg["plot_score_threshold"] = plot_threshold
    evaluate_and_report(named, evaluated, eval_cfg, (height, width), out, plot, tiling=tiling)
    if plot is not None:
        click.echo(f"plot written to {plot}")


@detect.command("make-synthetic")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--train", "num_train", type=int, default=400, show_default=True, help="Training images.")
@click.option("--val", "num_val", type=int, default=100, show_default=True, help="Validation images.")
@click.option("--size", type=int, default=128, show_default=True, help="Image side, pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train part (val: seed + 1).")
def make_synthetic(out_dir: Path, num_train: int, num_val: int, size: int, seed: int) -> None:
    """Write the synthetic shapes detection set (5 classes, clutter, exact boxes) as COCO + data.yaml.

    Images go to OUT_DIR/train and OUT_DIR/val, annotations to train.json and val.json; pass
    OUT_DIR/data.yaml to --data.
    """
    from detkd.data.detection import write_synthetic_dataset

    path = write_synthetic_dataset(out_dir, num_train, num_val, size, seed)
    click.echo(f"{num_train} train + {num_val} val images of {size}x{size} written; data file: {path}")


@detect.command("models")
@click.argument("name", required=False)
def models_command(name: str | None) -> None:
    """List the registered detectors with their parameter counts (for 5 classes).

    With NAME, that detector's structure options and their defaults: what `model.overrides` /
    `student.overrides` in a config or the benchmark's --student-option may change.
    """
    from detkd.models.detection import count_parameters, create_detector, get_variant
    from detkd.models.detection.registry import OPTION_HELP

    if name is None:
        for detector in _detector_names():
            variant = get_variant(detector)
            click.echo(f"{detector:32s} {count_parameters(create_detector(detector, 5)):>12,}  {variant.description}")
        return
    variant = get_variant(name)  # an unknown name: a ConfigError listing the registered ones
    click.echo(f"{name}: {variant.description}, {count_parameters(create_detector(name, 5)):,} parameters for 5 classes")
    click.echo("options (default: meaning):")
    for option, default in variant.defaults.items():
        shown = list(default) if isinstance(default, tuple) else default
        click.echo(f"  {option:26s} {str(shown):22s} {OPTION_HELP.get(option, '')}")
