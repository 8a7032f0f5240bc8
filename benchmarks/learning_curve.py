"""Learning curve of key-point distillation: a student's share of its teacher against steps.

One long distillation run per student, cut at milestones (500, 1000, 2000, ... steps). At each
milestone the run stops, the student is saved and judged against the teacher on the same
*validation* pairs, then the run resumes exactly where it stopped (the engine's resume is
bit-identical), so the curve is one run, not several. Kill it at any time: the next call picks
up at the last checkpoint and skips the milestones already recorded.

Data (no photo that a benchmark holds out is used):

* training: 28 of the 34 photos in ``../shared/data/photos``, scikit-image's training photos,
  and the training block of tree tiles (``benchmarks/tree_tiles.py``); with ``--extra-images``,
  also the photos of that folder (``benchmarks/extra_photos.py``: the 31 of its ``train`` split);
* validation (the curve, and every choice made from it): the other 6 shared photos
  (:data:`VALIDATION_PHOTOS`), synthetic pairs;
* test: scikit-image's held-out photos, the held-out tree tiles and ``extra_photos.py``'s ``test``
  split, judged by ``benchmarks/keypoint_anchors.py``, never here.

The teacher's outputs come from a teacher cache (``--views-per-image`` fixed augmented views
per image, built once and shared by every student), so a step costs only the student.

    python benchmarks/learning_curve.py --student fast-s --milestones 500 1000 2000 4000 8000
    python benchmarks/learning_curve.py --report-only         # tables and plot from what is recorded
    python benchmarks/learning_curve.py --report-only --plot fast-m fast-s --plot-tag mine   # and a plot of two

Writes ``benchmarks/results/learning_curve.{md,json,png}``; runs, cache and images live in
``--work`` (default ``runs/learning_curve``, not tracked).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from detkd.config import merge_config
from detkd.data.images import BUILTIN_TRAIN_PHOTOS, builtin_photo
from detkd.export.records import write_table_files
from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG, STUDENT_STRUCTURE_KEYS, point_sampling, run_distillation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tree_tiles import DEFAULT_SOURCE, write_tiles  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "photos"
#: Shared photos kept out of training: the curve and every setting are judged on these.
VALIDATION_PHOTOS = ("mate-Dune.jpg", "mate-Wood.jpg", "opencv-box_in_scene.jpg", "opencv-left.jpg",
                     "plasma-ColorfulCups.jpg", "plasma-Path.jpg")
SHARES = ("mma@3", "homography_accuracy@1", "homography_accuracy@3")
SHARE_LABELS = {"mma@3": "MMA@3", "homography_accuracy@1": "HA@1", "homography_accuracy@3": "HA@3"}


def prepare_images(work: Path) -> tuple[Path, Path]:
    """``work/train_images`` and ``work/val_images`` (links and PNGs), made once."""
    train, val = work / "train_images", work / "val_images"
    if (work / "images.done").exists():
        return train, val
    for folder in (train, val):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for photo in sorted(SHARED_PHOTOS.glob("*.jpg")):
        (val if photo.name in VALIDATION_PHOTOS else train).joinpath(photo.name).symlink_to(photo)
    for name in BUILTIN_TRAIN_PHOTOS:
        pixels = (builtin_photo(name, grey=True) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(train / f"skimage-{name}.png")
    if DEFAULT_SOURCE.exists():
        tiles = work / "tiles"
        write_tiles(DEFAULT_SOURCE, tiles)
        for tile in sorted((tiles / "train").glob("*.png")):
            (train / f"tree-{tile.name}").symlink_to(tile.resolve())
    (work / "images.done").write_text("")
    return train, val


def add_extra_images(train: Path, extra: Path, work: Path) -> Path:
    """``work/train_images+<extra's folder and name>``: links to every training image and to the images in
    ``extra``.

    The teacher cache is keyed by image content, so the views of the base images are reused."""
    photos = sorted(p for p in extra.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise SystemExit(f"No .jpg or .png images in {extra}")
    leaked = sorted(p.name for p in photos if p.name in VALIDATION_PHOTOS)
    if leaked:
        raise SystemExit(f"{extra} holds validation photos ({', '.join(leaked)}); remove them")
    folder = work / f"train_images+{'-'.join(extra.resolve().parts[-2:])}"
    links = {image.name: image.resolve() for image in sorted(train.iterdir())}
    links.update({f"extra-{photo.name}": photo.resolve() for photo in photos})
    if folder.is_dir() and {p.name: p.resolve() for p in folder.iterdir()} == links:
        return folder  # as wanted already: a second curve started beside a running one leaves it alone
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, target in links.items():
        (folder / name).symlink_to(target)
    return folder


def distill_config(args: argparse.Namespace, train: Path, val: Path, steps: int) -> dict[str, Any]:
    h, w = args.train_size
    teacher = args.teacher or "shipped"
    points = point_sampling(merge_config(DEFAULT_DISTILL_CONFIG, {"loss": dict(args.loss), "points": dict(args.points)}))
    outputs = f"_points{points.keypoints}-{points.grid_stride}" if points else ""  # other teacher outputs, another cache
    if args.teacher_point_scale != 1.0:
        outputs += f"_scale{args.teacher_point_scale:g}"
    return merge_config(DEFAULT_DISTILL_CONFIG, {
        "teacher": {"checkpoint": args.teacher, "weights": args.teacher_weights, "point_scale": args.teacher_point_scale},
        "student": {"variant": args.student, "init": args.init, **args.student_option},
        "data": {"images": str(train), "height": h, "width": w},
        "teacher_cache": {"folder": str(args.work / f"teacher_cache_{teacher}_{h}x{w}_v{args.views_per_image}{outputs}"),
                          "views_per_image": args.views_per_image},
        "loss": dict(args.loss),
        "points": dict(args.points),
        "train": {"steps": steps, "batch_size": args.batch_size, "lr": args.lr, "accelerator": "cpu",
                  "checkpoint_every": 250, "progress": args.progress, "lr_decay": args.lr_decay,
                  "lr_decay_every": args.lr_decay_every, "ema_decay": args.ema_decay},
        "eval": {"images": str(val), "height": args.eval_size[0], "width": args.eval_size[1],
                 "pairs_per_image": args.pairs_per_image, "max_keypoints": 1000},
    })


def record_path(args: argparse.Namespace) -> Path:
    return args.work / f"{args.name}.jsonl"


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_curve(args: argparse.Namespace) -> None:
    train, val = prepare_images(args.work)
    if args.extra_images:
        train = add_extra_images(train, args.extra_images, args.work)
    records = record_path(args)
    done = {r["steps"] for r in read_records(records)}
    run_dir = args.work / "runs" / args.name
    for steps in args.milestones:
        if steps in done:
            continue
        started = time.perf_counter()
        outcome = run_distillation(distill_config(args, train, val, steps), run_dir, resume=True)
        shutil.copy2(outcome.student_path, run_dir / f"student_{steps}.pt")
        record = {"name": args.name, "student": args.student, "steps": steps, "init": args.init,
                  "student_options": args.student_option,
                  "extra_images": str(args.extra_images) if args.extra_images else None,
                  "train_size": list(args.train_size), "eval_size": list(args.eval_size),
                  "seconds": time.perf_counter() - started, "threads": torch.get_num_threads(),
                  "command": "python benchmarks/learning_curve.py " + shlex.join(sys.argv[1:]),
                  "models": outcome.metrics, "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"}
        with records.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"[curve] {args.name}: {steps} steps recorded ({record['seconds']:.0f} s)", flush=True)


def share(record: dict[str, Any], metric: str) -> float:
    teacher = record["models"]["teacher"][metric]
    return record["models"]["student"][metric] / teacher if teacher else float("nan")


def run_loss_weights(run_dir: Path) -> dict[str, float] | None:
    """The loss weights in ``run_dir/config.yaml``; None without it."""
    config = run_dir / "config.yaml"
    if not config.exists():
        return None
    return {k: float(v) for k, v in (yaml.safe_load(config.read_text()).get("loss") or {}).items()}


def write_report(args: argparse.Namespace) -> None:
    """Tables of every recorded curve in ``--work`` and one plot, into ``--out``.

    Curves of earlier sessions that ``--out/learning_curve.json`` holds and ``--work`` does not
    (run folders are not tracked) stay in the table as they were recorded."""
    earlier = args.out / "learning_curve.json"
    curves = json.loads(earlier.read_text()) if earlier.exists() else {}
    for path in sorted(args.work.glob("*.jsonl")):
        rows = sorted(read_records(path), key=lambda r: r["steps"])
        if rows:
            curves[path.stem] = rows
    if not curves:
        print("nothing recorded yet")
        return
    lines = [
        "# Learning curve of key-point distillation (validation pairs)",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} ...` (one call per curve; see each run's config.yaml). "
        f"Validation: synthetic pairs of the {len(VALIDATION_PHOTOS)} shared photos kept out of training "
        f"({', '.join(VALIDATION_PHOTOS)}), at the size in each run's config; teacher and student on the same pairs, "
        "both at input scale 1, 1000 key points. The test images are not used here.",
        "",
    ]
    for name, rows in curves.items():
        loss = rows[-1].get("loss") or run_loss_weights(args.work / "runs" / name)
        if loss:
            rows[-1]["loss"] = loss  # kept in the JSON: run folders are not tracked
        options = rows[0].get("student_options") or {}
        structure = "".join(f", {k} {v}" for k, v in options.items())
        lines += [f"## {name} (student `{rows[0]['student']}`{structure})", "",
                  f"`{rows[-1].get('command', 'python benchmarks/learning_curve.py --student ' + rows[0]['student'])}`", "",
                  "Loss weights (the run's config.yaml; defaults change between versions, so the command alone does "
                  "not fix them): " + (", ".join(f"{k} {v:g}" for k, v in loss.items()) if loss else "not recorded") + "."
                  + (f" Fine-tuned from `{rows[0]['init']}` (step 0: that model, untrained here); training views "
                     f"{'x'.join(map(str, rows[0]['train_size']))}, validation pairs {'x'.join(map(str, rows[0]['eval_size']))} "
                     "(not in the plot: other sizes and a head start)." if rows[0].get("init") else ""),
                  "",
                  "| steps | " + " | ".join(f"student {SHARE_LABELS[m]}" for m in SHARES) + " | "
                  + " | ".join(f"share of teacher {SHARE_LABELS[m]}" for m in SHARES) + " | loc. err (px) | s |",
                  "|---:|" + "---:|" * (2 * len(SHARES) + 2)]
        for r in rows:
            student = r["models"]["student"]
            lines.append(
                f"| {r['steps']} | " + " | ".join(f"{student[m]:.3f}" for m in SHARES) + " | "
                + " | ".join(f"{share(r, m):.0%}" for m in SHARES)
                + f" | {student.get('localization_error', float('nan')):.2f} | {r['seconds']:.0f} |")
        teacher = rows[-1]["models"]["teacher"]
        lines += ["", "teacher: " + ", ".join(f"{SHARE_LABELS[m]} {teacher[m]:.3f}" for m in SHARES)
                  + f", loc. err {teacher.get('localization_error', float('nan')):.2f} px", ""]
    text = "\n".join(lines)
    print(text)
    write_table_files(args.out, "learning_curve", text, curves)
    plot_curves(curves, args.out / "learning_curve.png")
    if args.plot:
        unknown = [name for name in args.plot if name not in curves]
        if unknown:
            raise SystemExit(f"--plot: no recorded curve named {', '.join(unknown)}; recorded: {', '.join(curves)}")
        plot_curves({name: curves[name] for name in args.plot}, args.out / f"learning_curve_{args.plot_tag}.png")


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SHARES), figsize=(4.4 * len(SHARES), 4.0), sharey=True)
    # one colour per curve (tab20: no two curves alike), one marker per student variant
    tab20 = plt.get_cmap("tab20").colors
    colours = [tab20[i] for i in (*range(0, 20, 2), *range(1, 20, 2))]  # the ten strong tones first
    markers = {"fast-s": "o", "fast-m": "s", "fast-l": "^"}
    top = max((100 * share(r, m) for rows in curves.values() for r in rows for m in SHARES
               if np.isfinite(share(r, m))), default=100)
    for ax, metric in zip(axes, SHARES):
        for index, (name, rows) in enumerate(curves.items()):
            points = [(r["steps"], 100 * share(r, metric)) for r in rows if np.isfinite(share(r, metric))]
            if points:
                ax.plot(*zip(*points), marker=markers.get(rows[0]["student"], "D"), markersize=5,
                        color=colours[index % 20], label=name)
        ax.axhline(90, color="grey", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[0], 91, " target 90%", fontsize=7, color="grey", va="bottom")
        ax.set_xscale("symlog", linthresh=500, linscale=0.3)  # log steps, and room for a fine-tune's step 0
        steps = sorted({r["steps"] for rows in curves.values() for r in rows})
        ax.set_xticks(steps, [f"{s / 1000:g}k" if s >= 1000 else str(s) for s in steps])  # 1500 -> 1.5k
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_ylim(-3, max(103, top + 5))  # a student may beat its teacher
        ax.set_title(f"{SHARE_LABELS[metric]}: student / teacher")
        ax.set_xlabel("distillation steps")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("% of the teacher (validation pairs)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) + 3) // 4), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_loss(items: list[str], option: str = "--loss") -> dict[str, float]:
    """``KEY=VALUE`` loss weights (``point_descriptor_relation=0.3``); ``option`` names the flag in errors."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in DEFAULT_DISTILL_CONFIG["loss"] or not value:
            raise SystemExit(f"{option} takes KEY=VALUE with KEY in {sorted(DEFAULT_DISTILL_CONFIG['loss'])}, got '{item}'")
        out[key] = float(value)
    return out


def parse_points(items: list[str]) -> dict[str, int]:
    """``KEY=VALUE`` point sampling (``keypoints=1024``): config section ``points``, part of the cache's name."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in DEFAULT_DISTILL_CONFIG["points"] or not value.isdigit():
            raise SystemExit(f"--points takes KEY=N with KEY in {sorted(DEFAULT_DISTILL_CONFIG['points'])}, got '{item}'")
        out[key] = int(value)
    return out


def parse_student_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` structural options of the student (values in YAML: ``head_channels=64``, ``channels=[8,16,32,48]``)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in STUDENT_STRUCTURE_KEYS or not value:
            raise SystemExit(f"--student-option takes KEY=VALUE with KEY in {list(STUDENT_STRUCTURE_KEYS)}, got '{item}'")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="fast-s", help="student variant [fast-s]")
    parser.add_argument("--teacher", default=None,
                        help="teacher: a name (disk, aliked-n16, ...) or weight file [the shipped SuperPoint]")
    parser.add_argument("--teacher-weights", default=None,
                        help="weight file of a named teacher [kornia's download cache]")
    parser.add_argument("--teacher-point-scale", type=float, default=1.0,
                        help="DISK/ALIKED teachers: per-pixel scores x this before they become cells "
                             "(teacher.point_scale; another teacher cache) [1]")
    parser.add_argument("--name", default=None, help="name of the curve [the student variant, '-from-TEACHER' if named]")
    parser.add_argument("--init", default=None,
                        help="start the student from this model file or shipped student (fine-tuning) [random]")
    parser.add_argument("--milestones", type=int, nargs="+", default=[500, 1000, 2000, 4000, 8000, 12000])
    parser.add_argument("--train-size", type=int, nargs=2, default=[240, 320], help="training view H W [240 320]")
    parser.add_argument("--eval-size", type=int, nargs=2, default=[240, 320], help="validation pair H W [240 320]")
    parser.add_argument("--pairs-per-image", type=int, default=4, help="validation pairs per photo [4]")
    parser.add_argument("--views-per-image", type=int, default=24, help="cached teacher views per image [24]")
    parser.add_argument("--extra-images", type=Path, default=None,
                        help="a folder of more training photos, added to the usual ones (benchmarks/extra_photos.py makes one)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--lr-decay", type=float, default=0.98, help="lr factor every --lr-decay-every steps [0.98]")
    parser.add_argument("--lr-decay-every", type=int, default=1000)
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="judge and save the moving average of the weights (train.ema_decay; detkd's default "
                             "is 0.999) [0: off, as in every curve recorded before 2026-12-06]")
    parser.add_argument("--loss", nargs="*", default=[], help="loss weights KEY=VALUE (see detkd config keypoints-distill)")
    parser.add_argument("--points", nargs="*", default=[], metavar="KEY=N",
                        help="where the point descriptor terms read (config section points): keypoints=1024 for "
                             "views four times the default's area [keypoints=256 grid_stride=16]")
    parser.add_argument("--student-option", nargs="*", default=[], metavar="KEY=VALUE",
                        help="structural options replacing the variant's: head_channels=64, channels=[8,16,32,48], "
                             "encoder=fast [none]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    parser.add_argument("--progress", action="store_true", help="show the training progress bar")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "learning_curve")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--report-only", action="store_true", help="only write the tables and plot")
    parser.add_argument("--plot", nargs="+", default=[], metavar="CURVE",
                        help="also plot only these curves (readable where the full plot holds dozens) [none]")
    parser.add_argument("--plot-tag", default="selected", help="their plot: learning_curve_TAG.png [selected]")
    args = parser.parse_args()
    args.loss = parse_loss(args.loss)
    args.points = parse_points(args.points)
    args.student_option = parse_student_options(args.student_option)
    args.name = args.name or (f"{args.student}-from-{args.teacher}" if args.teacher else args.student)
    args.milestones = sorted(set(args.milestones))
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_curve(args)
    write_report(args)


if __name__ == "__main__":
    main()
