"""The third cost of a two-image key-point pipeline: matching one pair's features.

A pipeline that registers two images runs the extractor twice and the matcher once. ``detkd
bench`` times the extract; with ``--matcher`` it also times the match of one pair, the photo it
extracts from and a warped copy of it (a seeded homography: :func:`detkd.data.pairs.synthetic_pairs`),
for every key-point row, models interleaved round-robin. Each row is matched with its own points
and descriptors (at most ``K`` of each, as extracted), so a student with cheaper features also
gets a cheaper match:

* ``mnn``: mutual nearest neighbours on the descriptors (what ``detkd keypoints evaluate`` uses);
* ``lightglue``: kornia's LightGlue with the weights of the row's descriptor space
  (:mod:`detkd.evaluation.lightglue`: DISK, ALIKED-n16/n32 and students distilled from them).
  Rows LightGlue cannot read get ``n/a`` with the reason, instead of failing the whole table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from detkd.data.images import builtin_photo
from detkd.data.pairs import ImagePair, synthetic_pairs
from detkd.evaluation.keypoints import extract_features
from detkd.evaluation.lightglue import MATCHER_NAMES, build_matchers, lightglue_misfit
from detkd.evaluation.matching import mutual_nearest_neighbours
from detkd.export.timing import LatencyStats, interleaved_latency

if TYPE_CHECKING:
    from detkd.export.bench import BenchRow

#: The photo ``detkd bench`` extracts from (``detkd.export.onnx.photo_batch``).
BENCH_PHOTO = "coffee"


@dataclass
class MatchTiming:
    """Matching latency per row, and the rows left out with the reason.

    Attributes:
        matcher: the matcher in words (which weights, for LightGlue).
        latency: row name -> latency of matching one pair's features.
        skipped: row name -> why it has no match time (an ONNX file, a detector, no LightGlue).
        matches: row name -> matches found in the timed pair (a sanity check beside the time).
    """

    matcher: str
    latency: dict[str, LatencyStats]
    skipped: dict[str, str]
    matches: dict[str, int]


def bench_pair(height: int, width: int, seed: int = 0) -> ImagePair:
    """The bench photo at ``height`` x ``width`` (grey) and a warped, re-lit copy: one seeded pair."""
    return synthetic_pairs([(BENCH_PHOTO, builtin_photo(BENCH_PHOTO, grey=True))], pairs_per_image=1,
                           size=(height, width), seed=seed)[0]


def matching_latency(
    models: Mapping[str, Any],
    matcher: str,
    pair: ImagePair,
    max_keypoints: int,
    *,
    repeats: int = 20,
    warmup: int = 3,
    matcher_weights: Any = None,
) -> MatchTiming:
    """Median time to match ``pair``'s features, per model, interleaved.

    Args:
        models: row name -> key-point model with ``extract(image, max_keypoints=K)`` (a SuperPoint
            student or teacher, or a DISK / ALIKED / XFeat teacher); ``None`` for a row that has no
            PyTorch model to extract with (left out: ``skipped``).
        matcher: ``"mnn"`` or ``"lightglue"``.
        pair: the two images (``(1, H, W)`` each).
        max_keypoints: ``K``, the most points each image keeps.
        repeats, warmup: timed and untimed matches per row.
        matcher_weights: ``--matcher-weights`` (see :func:`detkd.evaluation.lightglue.build_matchers`).

    Raises:
        ValueError: an unknown ``matcher``.
        LightGlueUnavailable: ``lightglue`` and no weight file for a row that needs one.
    """
    if matcher not in MATCHER_NAMES:
        raise ValueError(f"Unknown matcher '{matcher}'; matchers: {', '.join(MATCHER_NAMES)}")
    skipped = {name: "no PyTorch model to extract with (an ONNX file or a detector)"
               for name, model in models.items() if model is None}
    usable = {name: model for name, model in models.items() if model is not None}
    if matcher == "lightglue":
        for name, model in list(usable.items()):
            reason = lightglue_misfit(model, name)
            if reason is not None:
                skipped[name] = reason
                del usable[name]
    networks, words = build_matchers(usable, matcher, matcher_weights) if usable else ({}, f"{matcher} (no row fits)")
    runners: dict[str, Callable[[], Any]] = {}
    found: dict[str, int] = {}
    for name, model in usable.items():
        with torch.inference_mode():
            kpts0, desc0 = extract_features(model, pair.image0, max_keypoints, "cpu")
            kpts1, desc1 = extract_features(model, pair.image1, max_keypoints, "cpu")
        runners[name] = match_runner(networks.get(name), kpts0, desc0, kpts1, desc1, pair)
        found[name] = int(len(runners[name]()))
    latency = interleaved_latency(runners, repeats, warmup) if runners else {}
    return MatchTiming(words, latency, skipped, found)


def time_row_matches(
    rows: Sequence[BenchRow],
    modules: Sequence[Any],
    matcher: str,
    size: tuple[int, int],
    max_keypoints: int,
    *,
    repeats: int,
    warmup: int,
    matcher_weights: Any = None,
    log: Callable[[str], None] | None = None,
) -> tuple[str, list[str]]:
    """``detkd bench --matcher``: set ``row.match`` and ``row.match_count`` of every row whose module
    (``modules[i]`` for ``rows[i]``; None: no key-point model in PyTorch) can be matched.

    Returns:
        The matcher in words (for the table's conditions) and a note per row left without a time.
    """
    if log:
        log(f"timing the match of one pair ({matcher}, {max_keypoints} points at most) ...")
    timing = matching_latency({row.name: module for row, module in zip(rows, modules)}, matcher, bench_pair(*size),
                              max_keypoints, repeats=repeats, warmup=warmup, matcher_weights=matcher_weights)
    for row in rows:
        if row.name in timing.latency:
            row.match, row.match_count = timing.latency[row.name], timing.matches[row.name]
    notes = [f"match ms n/a for {name}: {why}" for name, why in timing.skipped.items()]
    return f"{timing.matcher}, {max_keypoints} points at most", notes


def match_runner(matcher: Any, kpts0: torch.Tensor, desc0: torch.Tensor, kpts1: torch.Tensor, desc1: torch.Tensor,
                 pair: ImagePair) -> Callable[[], torch.Tensor]:
    """A call that matches the features ``(N, 2)``, ``(N, D)`` of ``pair.image0`` with those of ``pair.image1``:
    ``matcher(kpts0, desc0, kpts1, desc1, shape0=, shape1=)`` (a LightGlue matcher), or mutual nearest
    neighbours when ``matcher`` is None. Returns the ``(K, 2)`` matches."""
    def run() -> torch.Tensor:
        with torch.inference_mode():
            if matcher is None:
                return mutual_nearest_neighbours(desc0, desc1)
            return matcher(kpts0, desc0, kpts1, desc1, shape0=pair.shape0, shape1=pair.shape1)

    return run
