"""Measure detkd's self-trained SuperPoint teacher beside SIFT and ORB, on the same held-out pairs.

A teacher worse than SIFT is not a teacher: this benchmark puts the teacher, OpenCV SIFT and
OpenCV ORB (:class:`detkd.evaluation.classical.OpenCVFeatures`) through the same pairs, the same
key-point budget, the same matcher (mutual nearest neighbours) and the same metrics
(:func:`detkd.evaluation.keypoints.evaluate_keypoint_models`), and says plainly whether the
teacher beats SIFT on repeatability and on homography accuracy at 3 px.

Data (nothing here was used to train the teacher):

* ``photos``: scikit-image's held-out photos (``detkd.data.images.BUILTIN_HELDOUT_PHOTOS``,
  through :func:`detkd.data.pairs.builtin_heldout_pairs`);
* ``trees``: the held-out tiles of the real aerial orthophoto in ``../shared/data/trees``
  (DeepForest sample). The tiles are cut by ``benchmarks/tree_tiles.py`` (``write_tiles``) into
  a temporary folder and only its ``heldout/`` part (the spatially separate right-hand block)
  is used.

Every image gives ``--pairs-per-image`` pairs: the image resized and centre-cropped to
``--size``, and a second view warped by a seeded random homography with a random illumination
change (:func:`detkd.data.pairs.synthetic_pairs`, ``seed=--seed``). Results are reported for
each set and for all pairs together (mean over pairs).

MagicPoint check: precision and recall of corners at 2 px on held-out synthetic shapes
(``SyntheticShapesDataset(height=120, width=160, seed=10000)``, a seed never used in training;
clean scenes), detections from the model's own heatmap threshold / NMS / border
(:func:`detkd.evaluation.corners.synthetic_shapes_precision_recall`); for ``--magicpoint`` if
given, and for the teacher.

``--split validation`` runs the same comparison on pairs cut from the teacher's *training*
images (scikit-image's training photos and the training block of tree tiles, 2 pairs each by
default): that is where teacher settings and checkpoints are chosen, so that the held-out pairs
judge a choice without having made it. It writes ``keypoint_teacher_validation.*``.

When the teacher's ``input_scale`` is not 1 (it runs on the image resized by that factor), the
tables also show it at native scale (``teacher x1``), so that the gain of the resize is in view.

Writes ``OUT/keypoint_teacher.md`` and ``OUT/keypoint_teacher.json`` (``--quick`` writes
``keypoint_teacher_quick.*`` instead, so a smoke test never overwrites real results).

    python benchmarks/keypoint_teacher.py --magicpoint RUN/shapes/magicpoint.pt
    python benchmarks/keypoint_teacher.py --split validation --input-scale 1   # choose settings here
    python benchmarks/keypoint_teacher.py --quick --teacher /tmp/rand_teacher.pt   # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import torch

from detkd.data.images import BUILTIN_HELDOUT_PHOTOS, BUILTIN_TRAIN_PHOTOS
from detkd.data.pairs import ImagePair, builtin_heldout_pairs, synthetic_pairs_from_folder
from detkd.evaluation.classical import OpenCVFeatures
from detkd.evaluation.corners import CORNER_DISTANCE, CornerCounts, synthetic_shapes_precision_recall
from detkd.evaluation.keypoints import (
    KeypointEvaluation,
    WithExtractOptions,
    evaluate_keypoint_models,
    format_metrics_table,
    summarise,
)
from detkd.models.pretrained import default_keypoint_teacher_path
from detkd.models.keypoint_ops import check_input_scale
from detkd.models.superpoint import SuperPoint, count_parameters
from detkd.models.weights import load_keypoint_model, read_keypoint_model_meta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keypoint_teacher_verdict import paired_comparison, paired_lines, verdict, verdict_lines  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent

#: Columns of the pair tables (metric keys of detkd.evaluation.keypoints).
COLUMNS = [
    "repeatability", "localization_error", "mma@3",
    "homography_accuracy@1", "homography_accuracy@3", "homography_accuracy@5",
    "true_match_homography_accuracy@3", "matching_score", "num_keypoints",
]
SHAPES_SEED = 10_000  # never a training seed (teacher training uses seed 0)
SHAPES_SIZE = (120, 160)
#: Per split: the scikit-image photos, the tree-tile folder written by tree_tiles.py, and the
#: default pairs per image (the validation split has 3x more images).
SPLITS = {
    "heldout": {"photos": BUILTIN_HELDOUT_PHOTOS, "photos_name": "BUILTIN_HELDOUT_PHOTOS", "tiles": "heldout",
                "pairs_per_image": 10},
    "validation": {"photos": BUILTIN_TRAIN_PHOTOS, "photos_name": "BUILTIN_TRAIN_PHOTOS", "tiles": "train",
                   "pairs_per_image": 2},
}
NATIVE = "teacher x1"  # the teacher at input_scale 1, shown when its own input_scale is not 1


QUICK = {"size": (120, 160), "pairs_per_image": 1, "max_keypoints": 150, "photos": 2, "tiles": 2,
         "shape_images": 8}
FULL = {"size": (240, 320), "pairs_per_image": None, "max_keypoints": 500, "photos": None, "tiles": None,
        "shape_images": 200}


# ---------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/keypoint_teacher.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", type=Path, default=None,
                        help="SuperPoint checkpoint to judge (default: detkd's shipped teacher, "
                             "detkd.models.pretrained.DEFAULT_KEYPOINT_TEACHER)")
    parser.add_argument("--magicpoint", type=Path, default=None,
                        help="optional stage-1 detector (e.g. RUN/shapes/magicpoint.pt) for the synthetic-shapes check")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "results",
                        help="folder for keypoint_teacher.md / .json (default: benchmarks/results)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="heldout",
                        help="heldout (default): the images never trained on, the result to report; validation: "
                             "pairs of the teacher's training images, for choosing settings and checkpoints")
    parser.add_argument("--pairs-per-image", type=int, default=None,
                        help="pairs per image (default 10 held out, 2 validation; --quick: "
                             f"{QUICK['pairs_per_image']})")
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                        help=f"pair image size in pixels (default {FULL['size'][0]} {FULL['size'][1]}; "
                             f"--quick: {QUICK['size'][0]} {QUICK['size'][1]})")
    parser.add_argument("--max-keypoints", type=int, default=None,
                        help=f"key points per image for every model (default {FULL['max_keypoints']}; --quick: {QUICK['max_keypoints']})")
    parser.add_argument("--shape-images", type=int, default=None,
                        help=f"synthetic-shapes images for precision/recall (default {FULL['shape_images']}; --quick: {QUICK['shape_images']})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair homographies and illumination changes")
    parser.add_argument("--trees", type=Path, default=REPO.parent / "shared" / "data" / "trees",
                        help="folder with the orthophoto PNG that benchmarks/tree_tiles.py cuts (default ../shared/data/trees)")
    parser.add_argument("--tile", type=int, default=480, help="tree tile side in pixels, as for teacher training (default 480)")
    parser.add_argument("--threads", type=int, default=None, help="torch / OpenCV CPU threads (default: library defaults)")
    parser.add_argument("--device", default="cpu", help="torch device for the teacher (default cpu)")
    parser.add_argument("--subpixel-radius", type=int, default=None,
                        help="override the networks' sub-pixel refinement radius (0: whole pixels; "
                             "default: each model's own, 2 px for detkd's models)")
    parser.add_argument("--input-scale", type=float, default=None,
                        help="override the teacher's input_scale (the network sees the image resized by this "
                             "factor; default: the teacher's own)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK['photos']} photos + {QUICK['tiles']} tiles, 1 pair each, "
                             f"{QUICK['size'][0]}x{QUICK['size'][1]}, {QUICK['shape_images']} shapes; writes keypoint_teacher_quick.*")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("pairs_per_image", "max_keypoints", "shape_images"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.pairs_per_image is None:
        args.pairs_per_image = SPLITS[args.split]["pairs_per_image"]
    args.size = tuple(args.size) if args.size else preset["size"]
    args.max_photos, args.max_tiles = preset["photos"], preset["tiles"]
    if args.pairs_per_image < 1 or args.max_keypoints < 1 or args.shape_images < 0:
        parser.error("--pairs-per-image and --max-keypoints must be >= 1, --shape-images >= 0")
    if args.input_scale is not None:
        try:
            check_input_scale(args.input_scale)
        except ValueError as err:
            parser.error(f"--input-scale: {err}")
    if min(args.size) < 32:
        parser.error(f"--size must be at least 32 32, got {args.size}")
    return args


# ---------------------------------------------------------------------------- data
def _load_tree_tiles_module() -> Any:
    path = BENCHMARKS / "tree_tiles.py"
    spec = importlib.util.spec_from_file_location("detkd_benchmarks_tree_tiles", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_pair_sets(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, list[ImagePair]], dict[str, Any]]:
    """The ``photos`` and ``trees`` pair sets of ``args.split`` and a description of exactly what is in them."""
    split = SPLITS[args.split]
    pair_options = {"pairs_per_image": args.pairs_per_image, "size": args.size, "seed": args.seed}
    photos = list(split["photos"])[: args.max_photos]
    photo_pairs = builtin_heldout_pairs(photos, **pair_options)

    if not args.trees.is_dir() or not any(args.trees.glob("*.png")):
        raise FileNotFoundError(
            f"No orthophoto PNG in '{args.trees}' (the tree tiles come from ../shared/data/trees through "
            "benchmarks/tree_tiles.py); pass --trees FOLDER"
        )
    counts = _load_tree_tiles_module().write_tiles(args.trees, workdir, args.tile)
    tile_folder = workdir / split["tiles"]
    tiles = sorted(tile_folder.glob("*.png"))
    if not tiles:
        raise ValueError(f"benchmarks/tree_tiles.py cut no {split['tiles']} tile from '{args.trees}' (tile {args.tile} px)")
    if args.max_tiles is not None:
        for extra in tiles[args.max_tiles:]:
            extra.unlink()
        tiles = tiles[: args.max_tiles]
    tree_pairs = synthetic_pairs_from_folder(tile_folder, **pair_options)

    identity = {name: sum(is_identity(p.homography) for p in pairs)
                for name, pairs in (("photos", photo_pairs), ("trees", tree_pairs))}
    data = {
        "identity_pairs": identity,
        "pairs": {
            "generator": "detkd.data.pairs.synthetic_pairs (resize + centre-crop, seeded random homography "
                         "with HomographyConfig() defaults, IlluminationConfig() defaults)",
            "pairs_per_image": args.pairs_per_image, "size_hw": list(args.size), "seed": args.seed,
        },
        "split": args.split,
        "photos": {"source": f"scikit-image {args.split} photos (detkd.data.images.{split['photos_name']})",
                   "images": photos, "num_pairs": len(photo_pairs)},
        "trees": {"source": f"{_show(args.trees)} cut by benchmarks/tree_tiles.py write_tiles(tile={args.tile}); "
                            f"{split['tiles']}/ only",
                  "tiles_written": counts, "images": [p.stem for p in tiles], "num_pairs": len(tree_pairs)},
    }
    return {"photos": photo_pairs, "trees": tree_pairs}, data


# ---------------------------------------------------------------------------- models
def describe_model(path: Path, model: SuperPoint) -> dict[str, Any]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        meta = read_keypoint_model_meta(path)
    except Exception as err:  # noqa: BLE001 - the description must not stop the benchmark
        meta = {"unreadable": str(err)}
    conf = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.conf.items()}
    return {"path": str(path), "sha256": digest, "parameters": count_parameters(model), "conf": conf, "meta": meta}


def is_identity(homography: torch.Tensor) -> bool:
    """Whether a pair's homography is exactly the identity.

    Such a pair only tests the illumination change. :func:`detkd.geometry.homography.sample_homography`
    no longer produces them (it shrinks a view to fit instead of falling back to the identity);
    this guard keeps the report honest should a pair set contain one.
    """
    return bool(torch.equal(homography, torch.eye(3, dtype=homography.dtype)))


def evaluate_sets(
    models: dict[str, Any], sets: dict[str, list[ImagePair]], max_keypoints: int, device: str
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, KeypointEvaluation], dict[str, int]]:
    """Summaries per set, for all pairs together (``"combined"``: mean over every pair) and for
    the pairs with a real warp only (``"warped"``: identity homographies left out)."""
    results: dict[str, KeypointEvaluation] = {}
    summaries: dict[str, dict[str, dict[str, float]]] = {}
    sizes: dict[str, int] = {}
    for name, pairs in sets.items():
        print(f"evaluating {len(pairs)} {name} pairs ...", flush=True)
        results[name] = evaluate_keypoint_models(models, pairs, max_keypoints=max_keypoints, device=device)
        summaries[name] = results[name].summary
        sizes[name] = len(pairs)
    records = [r for result in results.values() for r in result.per_pair]
    summaries["combined"] = {m: summarise([r for r in records if r["model"] == m]) for m in models}
    sizes["combined"] = sum(len(p) for p in sets.values())
    identity = {(name, p.name) for name, pairs in sets.items() for p in pairs if is_identity(p.homography)}
    warped = [r for name, result in results.items() for r in result.per_pair if (name, r["pair"]) not in identity]
    sizes["warped"] = sizes["combined"] - len(identity)
    if warped:
        summaries["warped"] = {m: summarise([r for r in warped if r["model"] == m]) for m in models}
    return summaries, results, sizes


def shapes_table(rows: dict[str, CornerCounts], confs: dict[str, dict[str, Any]]) -> str:
    header = ["model", "images", "labels", "detections", f"precision@{CORNER_DISTANCE:g}px",
              f"recall@{CORNER_DISTANCE:g}px", "recall, labels off the border", "threshold", "NMS", "border"]
    body = []
    for name, c in rows.items():
        conf = confs[name]
        body.append([name, str(c.images), str(c.labels), str(c.detections), _fmt(c.precision), _fmt(c.recall),
                     _fmt(c.recall_inside), f"{conf['detection_threshold']:g}", str(conf["nms_radius"]),
                     str(conf["remove_borders"])])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]) + " |"
    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def _show(path: Path) -> str:
    """``path`` relative to the repository when it can be (``../shared/data/trees``)."""
    try:
        return os.path.relpath(path.resolve(), REPO)
    except ValueError:  # another drive
        return str(path)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _plain_json(value: Any) -> Any:
    """NaN / inf -> None (strict JSON), tuples -> lists, paths -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "opencv": cv2.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    started = time.perf_counter()
    command = "python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")

    teacher_path = args.teacher if args.teacher is not None else default_keypoint_teacher_path()
    if not teacher_path.is_file():
        raise FileNotFoundError(f"--teacher '{teacher_path}' does not exist")
    teacher = load_keypoint_model(teacher_path, map_location=args.device)
    if args.subpixel_radius is not None:
        teacher.conf["subpixel_radius"] = args.subpixel_radius
    if args.input_scale is not None:
        teacher.conf["input_scale"] = args.input_scale
    model_info = {"teacher": describe_model(teacher_path, teacher)}
    magicpoint = None
    if args.magicpoint is not None:
        if not args.magicpoint.is_file():
            raise FileNotFoundError(f"--magicpoint '{args.magicpoint}' does not exist")
        magicpoint = load_keypoint_model(args.magicpoint, map_location=args.device)
        if args.subpixel_radius is not None:
            magicpoint.conf["subpixel_radius"] = args.subpixel_radius
        model_info["MagicPoint"] = describe_model(args.magicpoint, magicpoint)
    models: dict[str, Any] = {"teacher": teacher}
    if float(teacher.conf["input_scale"]) != 1:
        models[NATIVE] = WithExtractOptions(teacher, input_scale=1.0)
    models.update({"SIFT": OpenCVFeatures("sift", args.max_keypoints), "ORB": OpenCVFeatures("orb", args.max_keypoints)})
    model_info["SIFT"] = {"opencv": repr(models["SIFT"]), "descriptor": "128 floats, L2-normalised"}
    model_info["ORB"] = {"opencv": repr(models["ORB"]), "descriptor": "256 bits as 0/1 floats (L2^2 = Hamming)"}

    with tempfile.TemporaryDirectory(prefix="detkd_tree_tiles_") as workdir:
        sets, data = build_pair_sets(args, Path(workdir))
        summaries, results, sizes = evaluate_sets(models, sets, args.max_keypoints, args.device)
    verdicts = {name: verdict(summary) for name, summary in summaries.items()}
    paired = paired_comparison([{**r, "set": name} for name, result in results.items() for r in result.per_pair])

    shape_rows: dict[str, CornerCounts] = {}
    shape_models = {"MagicPoint": magicpoint, "teacher": teacher} if magicpoint is not None else {"teacher": teacher}
    if args.shape_images > 0:
        for name, model in shape_models.items():
            print(f"synthetic shapes: {name} on {args.shape_images} images ...", flush=True)
            shape_rows[name] = synthetic_shapes_precision_recall(
                model, num_images=args.shape_images, seed=SHAPES_SEED, height=SHAPES_SIZE[0], width=SHAPES_SIZE[1],
            )
    data["synthetic_shapes"] = {
        "dataset": f"SyntheticShapesDataset(height={SHAPES_SIZE[0]}, width={SHAPES_SIZE[1]}, seed={SHAPES_SEED}) "
                   "items 0..N-1, no warp, no photometric change",
        "num_images": args.shape_images, "correct_within_px": CORNER_DISTANCE,
    }
    elapsed = time.perf_counter() - started

    # ------------------------------------------------------------------ report
    tables = {name: format_metrics_table(summary, columns=COLUMNS, relative_to_first=()) for name, summary in summaries.items()}
    lines = [
        "# Key-point teacher against classical baselines" + (" (QUICK SMOKE TEST: not a result)" if args.quick else "")
        + (" - validation pairs (training images)" if args.split == "validation" else ""),
        "",
        f"- Command: `{command}`",
        f"- Date: {date}; wall time {elapsed:.0f} s",
        f"- Machine: {machine()['cpu_count']} CPUs ({machine()['processor']}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), OpenCV {cv2.__version__}, Python {platform.python_version()}, "
        f"{platform.platform()}",
        f"- Code: git {_git_commit() or 'unknown'}",
        f"- Teacher: `{teacher_path}` (sha256 {model_info['teacher']['sha256'][:16]}, "
        f"{model_info['teacher']['parameters']:,} parameters, meta {model_info['teacher']['meta']}, "
        f"sub-pixel refinement radius {teacher.conf['subpixel_radius']} px, input scale "
        f"{float(teacher.conf['input_scale']):g}" + (f"; `{NATIVE}` is the same network at input scale 1" if NATIVE in models else "")
        + ")",
    ]
    if magicpoint is not None:
        info = model_info["MagicPoint"]
        lines.append(f"- MagicPoint: `{args.magicpoint}` (sha256 {info['sha256'][:16]}, meta {info['meta']})")
    lines += [
        f"- Baselines: {models['SIFT']!r} and {models['ORB']!r}; every model gets at most "
        f"{args.max_keypoints} key points per image (fewer when its own detector stops earlier) and the "
        "same mutual-nearest-neighbour matcher (Euclidean; ORB bits as 0/1 floats, so Hamming).",
        "",
        *([
            "## Data (all held out from teacher training)",
            "",
            f"- photos: scikit-image held-out photos {data['photos']['images']} -> {sizes['photos']} pairs",
            f"- trees: held-out tiles of `{_show(args.trees)}` (real aerial orthophoto, DeepForest sample), cut by "
            f"`benchmarks/tree_tiles.py` (`write_tiles`, tile {args.tile} px, `heldout/` = spatially separate "
            f"right-hand block): {len(data['trees']['images'])} tiles {data['trees']['images']} -> {sizes['trees']} pairs",
        ] if args.split == "heldout" else [
            "## Data: VALIDATION pairs of the teacher's training images (for choosing settings; not a result)",
            "",
            f"- photos: scikit-image training photos {data['photos']['images']} -> {sizes['photos']} pairs",
            f"- trees: training tiles of `{_show(args.trees)}` (`benchmarks/tree_tiles.py`, `train/` = left three "
            f"quarters): {len(data['trees']['images'])} tiles -> {sizes['trees']} pairs",
        ]),
        f"- pairs: {args.pairs_per_image} per image, {args.size[0]}x{args.size[1]} px, "
        f"`detkd.data.pairs.synthetic_pairs` seed {args.seed} (random homography with `HomographyConfig()` "
        "defaults + illumination change with `IlluminationConfig()` defaults)",
        f"- synthetic shapes: {data['synthetic_shapes']['dataset']}, {args.shape_images} images",
    ]
    num_identity = sizes["combined"] - sizes["warped"]
    if num_identity:
        lines.append(
            f"- **{num_identity} of {sizes['combined']} pairs have the identity homography** (photos "
            f"{data['identity_pairs']['photos']}, trees {data['identity_pairs']['trees']}): "
            "these pairs test the illumination change only." + (" The last pair table leaves them out." if sizes["warped"] else "")
        )
        print(f"WARNING: {num_identity} of {sizes['combined']} pairs have the identity homography "
              "(they test illumination only)", file=sys.stderr)
    lines.append("")
    titles = {"photos": "photos", "trees": "trees", "combined": "all pairs",
              "warped": "all pairs with a real warp (identity homographies left out)"}
    for name in ("photos", "trees", "combined", "warped"):
        if name in tables:
            lines += [f"## Pairs: {titles[name]} ({sizes[name]} pairs)", "", tables[name], ""]
    lines += ["## Does the teacher beat SIFT?", "", *verdict_lines(verdicts, sizes), *paired_lines(paired), ""]
    if shape_rows:
        lines += [
            f"## Corners of synthetic shapes (correct within {CORNER_DISTANCE:g} px)", "",
            shapes_table(shape_rows, {n: shape_models[n].conf for n in shape_rows}), "",
            "Precision = correct detections / detections; recall = labelled corners with a detection "
            f"within {CORNER_DISTANCE:g} px / labelled corners (summed over images). Detections use each "
            "model's own threshold, NMS radius and border; the last recall column leaves out corners "
            "inside that border, which the model can never report.", "",
        ]
    lines += [
        "Columns: Rep. = repeatability (3 px), Loc. err = mean distance of repeated points (px), MMA@3 = "
        "share of matches within 3 px, HA@k = share of pairs whose RANSAC homography moves the image "
        "corners by at most k px on average, M. score = correct matches / key points in the shared "
        "view, #kpts = mean key points per image.",
        "",
    ]
    report = "\n".join(lines)
    print()
    print(report)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "keypoint_teacher" + ("_validation" if args.split == "validation" else "") + ("_quick" if args.quick else "")
    md_path, json_path = args.out / f"{stem}.md", args.out / f"{stem}.json"
    md_path.write_text(report + "\n")
    payload = {
        "quick": args.quick, "command": command, "date": date, "wall_time_s": elapsed, "machine": machine(),
        "git": _git_commit(), "max_keypoints": args.max_keypoints, "models": model_info, "data": data,
        "summary": summaries, "num_pairs": sizes, "verdict": verdicts, "paired": paired,
        "synthetic_shapes": {name: c.as_dict() for name, c in shape_rows.items()},
        "per_pair": {name: result.per_pair for name, result in results.items()},
    }
    json_path.write_text(json.dumps(_plain_json(payload), indent=1, allow_nan=False) + "\n")
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
