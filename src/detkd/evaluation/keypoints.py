"""Evaluate key-point models (teacher and students) on image pairs with known homographies.

For every pair and model: detect and describe both images (``model.extract``), match with
mutual nearest neighbours (or the model's own :data:`Matcher`, e.g. LightGlue from
:mod:`detkd.evaluation.lightglue`), then compute the metrics of :mod:`detkd.evaluation.keypoint_metrics`
and average them over the pairs. :func:`format_metrics_table` prints the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from detkd.data.pairs import ImagePair
from detkd.evaluation import keypoint_metrics as km
from detkd.evaluation.matching import mutual_nearest_neighbours
from detkd.geometry.homography import corner_error

CORRECT_THRESHOLD = km.CORRECT_MATCH_THRESHOLD  # pixels: repeatability, matching score, recall
MMA_KEYS = tuple(f"mma@{t}" for t in km.MMA_THRESHOLDS)
HOMOGRAPHY_KEYS = tuple(f"homography_accuracy@{t}" for t in km.HOMOGRAPHY_THRESHOLDS)
#: HA@3 when RANSAC is given the true correspondences among the detected points instead of the
#: descriptor matches: how far the detector's localisation alone lets the homography be right.
TRUE_MATCH_HOMOGRAPHY_KEY = "true_match_homography_accuracy@3"
#: Keys of every summary, in this order.
METRIC_KEYS = (
    "repeatability", "localization_error", *MMA_KEYS, *HOMOGRAPHY_KEYS, TRUE_MATCH_HOMOGRAPHY_KEY,
    "matching_score", "matching_recall", "f1", "num_keypoints", "num_matches",
)


class KeypointExtractor(Protocol):
    """Anything with SuperPoint's ``extract``: ``(B, 1, H, W)`` images -> lists per image of
    ``keypoints`` ``(N, 2)`` pixels (x, y) and ``descriptors`` ``(N, D)``."""

    def extract(self, image: torch.Tensor, **overrides: Any) -> dict[str, list[torch.Tensor]]: ...


#: A matcher: ``(keypoints0 (N, 2), descriptors0 (N, D), keypoints1 (M, 2), descriptors1 (M, D),
#: shape0=(H0, W0), shape1=(H1, W1))`` -> ``(K, 2)`` long indices ``(i, j)``; the image shapes come as
#: keywords (LightGlue normalises key points by them). The default is mutual nearest neighbours.
Matcher = Callable[..., torch.Tensor]


class WithExtractOptions:
    """A model whose ``extract`` always gets some options, e.g. ``input_scale=1`` to judge a
    teacher at the resolution its student runs at. Evaluation puts the wrapped model in eval mode
    through :attr:`module`."""

    def __init__(self, model: KeypointExtractor, **options: Any) -> None:
        self.module, self.options = model, options

    def extract(self, image: torch.Tensor, **overrides: Any) -> dict[str, list[torch.Tensor]]:
        return self.module.extract(image, **{**overrides, **self.options})


@dataclass
class MatchExample:
    """What a plot needs to draw one pair's matches for one model (tensors on the CPU)."""

    pair_name: str
    image0: torch.Tensor  # (1, H0, W0) float in [0, 1] (the pair's tensor, not a copy)
    image1: torch.Tensor  # (1, H1, W1)
    keypoints0: torch.Tensor  # (N, 2) pixels (x, y) in image 0
    keypoints1: torch.Tensor  # (M, 2) pixels in image 1
    matches: torch.Tensor  # (K, 2) long indices (i, j)
    correct: torch.Tensor  # (K,) bool: reprojection error <= 3 px
    homography_estimate: torch.Tensor | None  # (3, 3) float64, None when RANSAC failed


@dataclass
class KeypointEvaluation(Mapping):
    """Results of :func:`evaluate_keypoint_models`; reads like ``summary`` (``result[model][key]``).

    Attributes:
        summary: model -> metric -> mean over pairs (keys :data:`METRIC_KEYS`).
        per_pair: one record per (pair, model): ``model``, ``pair``, ``kind``, every metric of
            :data:`METRIC_KEYS` for that pair and its ``corner_error`` (pixels, NaN without H).
        examples: model -> :class:`MatchExample` of the first pair.
    """

    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    per_pair: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, MatchExample] = field(default_factory=dict)

    def __getitem__(self, model: str) -> dict[str, float]:
        return self.summary[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self.summary)

    def __len__(self) -> int:
        return len(self.summary)

    def summary_for(self, kind: str) -> dict[str, dict[str, float]]:
        """Summary over the pairs of one kind only (``"illumination"``, ``"viewpoint"``, ...)."""
        records = [r for r in self.per_pair if r["kind"] == kind]
        if not records:
            raise ValueError(f"No pair of kind '{kind}' (kinds: {sorted({r['kind'] for r in self.per_pair})})")
        return {model: summarise([r for r in records if r["model"] == model]) for model in self.summary}


# ---------------------------------------------------------------------- one pair
def extract_features(
    model: KeypointExtractor, image: torch.Tensor, max_keypoints: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key points ``(N, 2)`` and descriptors ``(N, D)`` of one ``(1, H, W)`` image, on the CPU."""
    output = model.extract(image[None].to(device), max_keypoints=max_keypoints)
    return output["keypoints"][0].detach().cpu(), output["descriptors"][0].detach().cpu()


def pair_features(
    models: Mapping[str, KeypointExtractor], pair: ImagePair, max_keypoints: int, device: str | torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each row's ``(keypoints0, descriptors0, keypoints1, descriptors1)`` of ``pair`` (see :func:`extract_features`).

    One model object under several names (the same points before two matchers: ``NAME`` and
    ``NAME + LightGlue``) extracts each image once; its rows share the tensors.
    """
    by_model: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for model in models.values():
        if id(model) not in by_model:
            by_model[id(model)] = (*extract_features(model, pair.image0, max_keypoints, device),
                                   *extract_features(model, pair.image1, max_keypoints, device))
    return {name: by_model[id(model)] for name, model in models.items()}


def evaluate_pair(
    pair: ImagePair,
    keypoints0: torch.Tensor,
    keypoints1: torch.Tensor,
    descriptors0: torch.Tensor,
    descriptors1: torch.Tensor,
    matcher: Matcher | None = None,
) -> tuple[dict[str, float], MatchExample]:
    """Match one pair's features and compute every metric.

    Args:
        keypoints0, keypoints1: ``(N, 2)`` / ``(M, 2)`` pixels. descriptors0, descriptors1:
            ``(N, D)`` / ``(M, D)``.
        matcher: see :data:`Matcher` (default: mutual nearest neighbours).

    Returns:
        The pair's metrics (:data:`METRIC_KEYS` plus ``corner_error``) and its :class:`MatchExample`.
    """
    H, shape0, shape1 = pair.homography, pair.shape0, pair.shape1
    if matcher is None:
        matches = mutual_nearest_neighbours(descriptors0, descriptors1)
    else:
        matches = matcher(keypoints0, descriptors0, keypoints1, descriptors1, shape0=shape0, shape1=shape1)
    rep = km.repeatability(keypoints0, keypoints1, H, shape0, shape1, CORRECT_THRESHOLD)
    mma = km.matching_accuracy(keypoints0, keypoints1, matches, H, km.MMA_THRESHOLDS)
    H_est = km.estimate_homography(keypoints0, keypoints1, matches, ransac_threshold=CORRECT_THRESHOLD)
    correct_H = km.homography_correctness(H_est, H, shape0, km.HOMOGRAPHY_THRESHOLDS)
    true_matches = km.ground_truth_correspondences(keypoints0, keypoints1, H, CORRECT_THRESHOLD)
    H_true_matches = km.estimate_homography(keypoints0, keypoints1, true_matches, ransac_threshold=CORRECT_THRESHOLD)
    (true_match_correct,) = km.homography_correctness(H_true_matches, H, shape0, (CORRECT_THRESHOLD,)).values()
    recall = km.matching_recall(keypoints0, keypoints1, matches, H, CORRECT_THRESHOLD)
    metrics = {
        "repeatability": rep.repeatability,
        "localization_error": rep.localization_error,
        **{f"mma@{t}": value for t, value in mma.items()},
        **{f"homography_accuracy@{t}": float(ok) for t, ok in correct_H.items()},
        TRUE_MATCH_HOMOGRAPHY_KEY: float(true_match_correct),
        "matching_score": km.matching_score(keypoints0, keypoints1, matches, H, shape0, shape1, CORRECT_THRESHOLD),
        "matching_recall": recall,
        "f1": km.f1_recall_repeatability(recall, rep.repeatability),
        "num_keypoints": (len(keypoints0) + len(keypoints1)) / 2,
        "num_matches": float(len(matches)),
        "corner_error": math.nan if H_est is None else float(corner_error(H_est, H, *shape0)),
    }
    example = MatchExample(
        pair_name=pair.name,
        image0=pair.image0,
        image1=pair.image1,
        keypoints0=keypoints0,
        keypoints1=keypoints1,
        matches=matches,
        correct=km.correct_matches(keypoints0, keypoints1, matches, H, CORRECT_THRESHOLD),
        homography_estimate=H_est,
    )
    return metrics, example


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of each metric over per-pair records.

    ``localization_error`` averages only the pairs where it is defined (NaN if none);
    ``f1`` is recomputed from the mean matching recall and mean repeatability, so the
    summary is consistent with itself (GoodPoint reports it this way).
    """
    if not records:
        raise ValueError("No per-pair record to summarise")
    summary = {}
    for key in METRIC_KEYS:
        values = torch.tensor([float(r[key]) for r in records], dtype=torch.float64)
        summary[key] = float(values.nanmean()) if key == "localization_error" else float(values.mean())
    summary["f1"] = km.f1_recall_repeatability(summary["matching_recall"], summary["repeatability"])
    return summary


# ---------------------------------------------------------------------- runner
def evaluate_keypoint_models(
    models: Mapping[str, KeypointExtractor],
    pairs: Iterable[ImagePair],
    *,
    max_keypoints: int = 1000,
    device: str | torch.device = "cpu",
    progress: bool = True,
    matchers: Mapping[str, Matcher] | None = None,
) -> KeypointEvaluation:
    """Evaluate several key-point models on the same pairs.

    Each model is put in eval mode (its training mode is restored afterwards) and, if it is an
    ``nn.Module``, moved to ``device``. Pairs are read once, in order (a generator such as
    :func:`detkd.data.pairs.iter_hpatches_pairs` works), and every model sees every pair (one model
    object under several names extracts each image once: :func:`pair_features`).

    Args:
        models: name -> model with ``extract(images (B, 1, H, W), max_keypoints=...)``; the
            first one is the reference (teacher) in :func:`format_metrics_table`.
        pairs: :class:`~detkd.data.pairs.ImagePair` objects.
        max_keypoints: per image, passed to ``extract``.
        matchers: model name -> its :data:`Matcher` (models not named: mutual nearest neighbours).

    Returns:
        :class:`KeypointEvaluation`; ``result[name]`` is the model's summary with keys
        :data:`METRIC_KEYS`: shares in ``[0, 1]`` except ``localization_error`` (pixels),
        ``num_keypoints`` (mean per image) and ``num_matches`` (mean per pair).
    """
    if not models:
        raise ValueError("No model to evaluate")
    total = len(pairs) * len(models) if isinstance(pairs, Sized) else None
    result = KeypointEvaluation()
    training = {name: _prepare(model, device) for name, model in models.items()}
    try:
        with torch.no_grad(), tqdm(total=total, desc="key-point eval", disable=not progress) as bar:
            for pair in pairs:
                features = pair_features(models, pair, max_keypoints, device)
                for name in models:
                    kpts0, desc0, kpts1, desc1 = features[name]
                    metrics, example = evaluate_pair(pair, kpts0, kpts1, desc0, desc1, (matchers or {}).get(name))
                    result.per_pair.append({"model": name, "pair": pair.name, "kind": pair.kind, **metrics})
                    result.examples.setdefault(name, example)
                    bar.update()
    finally:
        for name, was_training in training.items():
            if was_training:
                _unwrapped(models[name]).train()
    if not result.per_pair:
        raise ValueError("No image pair to evaluate on")
    result.summary = {
        name: summarise([r for r in result.per_pair if r["model"] == name]) for name in models
    }
    return result


@torch.no_grad()
def descriptor_agreement(
    student: torch.nn.Module, teacher: KeypointExtractor, images: Iterable[torch.Tensor], max_keypoints: int = 1000,
) -> float:
    """Mean cosine between a student's descriptors and its teacher's, at the teacher's key points.

    What a matcher trained on the teacher's descriptors (LightGlue) meets when the student replaces
    the teacher: 1 is the teacher's own descriptor space, 0 unrelated vectors. The student's
    descriptors are read as its ``extract`` reads them (bilinear between cell centres), at input scale 1.

    Args:
        student: a SuperPoint-family model (``forward(image, select_points=...)``).
        teacher: any model with ``extract``.
        images: ``(1 | 3, H, W)`` in ``[0, 1]``, any size.
        max_keypoints: the teacher's key points per image.

    Returns:
        The mean over every key point of every image (``nan`` when the teacher finds none).
    """
    cosines = []
    for image in images:
        found = teacher.extract(image[None], max_keypoints=max_keypoints)
        keypoints, descriptors = found["keypoints"][0], found["descriptors"][0]
        if len(keypoints) == 0:
            continue
        h, w = image.shape[-2:]
        padded = torch.nn.functional.pad(image[None], (0, (-w) % 8, 0, (-h) % 8))  # whole cells, as extract pads
        out = student(padded, select_points=lambda heatmap: keypoints[None].to(heatmap.dtype))
        cosines.append((out["point_descriptors"][0] * descriptors).sum(dim=-1))
    return torch.cat(cosines).mean().item() if cosines else math.nan


def _unwrapped(model: KeypointExtractor) -> KeypointExtractor:
    """The model itself, under a :class:`WithExtractOptions`."""
    return model.module if isinstance(model, WithExtractOptions) else model


def _prepare(model: KeypointExtractor, device: str | torch.device) -> bool:
    """Eval mode on ``device``; returns whether the model was training."""
    model = _unwrapped(model)
    if not isinstance(model, torch.nn.Module):
        return False
    was_training = model.training
    model.to(device).eval()
    return was_training


# ---------------------------------------------------------------------- table
#: Column labels of :func:`format_metrics_table`, and its default columns (in this order).
COLUMN_LABELS = {
    "repeatability": "Rep.",
    "localization_error": "Loc. err (px)",
    "mma@3": "MMA@3",
    "homography_accuracy@1": "HA@1",
    "homography_accuracy@3": "HA@3",
    "homography_accuracy@5": "HA@5",
    TRUE_MATCH_HOMOGRAPHY_KEY: "HA@3 true matches",
    "matching_score": "M. score",
    "f1": "F1",
    "num_keypoints": "#kpts",
}
_COUNT_KEYS = ("num_keypoints", "num_matches")


def _format_value(key: str, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if key in _COUNT_KEYS:
        return f"{value:.0f}"
    if key == "localization_error" or key == "corner_error":
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_metrics_table(
    results: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] | None = None,
    relative_to_first: Sequence[str] = ("mma@3", "homography_accuracy@3"),
) -> str:
    """Markdown table, one row per model in the order given (the teacher first).

    Args:
        results: a :class:`KeypointEvaluation` or model -> metric -> value.
        columns: metric keys to show (default: the keys of :data:`COLUMN_LABELS`).
        relative_to_first: metrics also shown as a percentage of the first row's value
            (e.g. how much of the teacher's MMA@3 a student keeps); only with 2+ rows.

    Returns:
        The table as text, columns padded to line up.
    """
    if not results:
        raise ValueError("No results to format")
    columns = list(columns or COLUMN_LABELS)
    known = set().union(*(set(metrics) for metrics in results.values()))
    missing = [key for key in [*columns, *relative_to_first] if key not in known]
    if missing:
        raise ValueError(f"Unknown metric(s) {missing}; available: {sorted(known)}")
    names = list(results)
    reference = names[0]
    relative = list(relative_to_first) if len(names) > 1 else []
    header = ["model", *(COLUMN_LABELS.get(key, key) for key in columns)]
    header += [f"{COLUMN_LABELS.get(key, key)} % of {reference}" for key in relative]
    rows = []
    for name in names:
        metrics = results[name]
        row = [name, *(_format_value(key, metrics.get(key)) for key in columns)]
        for key in relative:
            base, value = results[reference].get(key), metrics.get(key)
            ok = base is not None and value is not None and base > 0 and not math.isnan(value)
            row.append(f"{100 * value / base:.1f}%" if ok else "n/a")
        rows.append(row)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
