"""Does the self-trained teacher beat SIFT? The verdict of ``benchmarks/keypoint_teacher.py``.

The verdict is strict (above, not level with, SIFT) on the two numbers of :data:`VERDICT_KEYS`, over all pairs
together; :func:`paired_comparison` counts the pairs that only one of the two gets right and gives the
two-sided sign test's p-value of that split, so that a difference of a few pairs is read as what it is.
"""

from __future__ import annotations

import math
from typing import Any

#: The two numbers on which the teacher must beat SIFT.
VERDICT_KEYS = {"repeatability": "repeatability", "homography_accuracy@3": "HA@3"}


def verdict(summary: dict[str, dict[str, float]], teacher: str = "teacher", baseline: str = "SIFT") -> dict[str, Any]:
    """Whether ``teacher`` is strictly above ``baseline`` on each of :data:`VERDICT_KEYS`."""
    out: dict[str, Any] = {}
    for key, label in VERDICT_KEYS.items():
        t, b = summary[teacher][key], summary[baseline][key]
        out[label] = {"teacher": t, baseline: b, "beats": bool(t > b)}
    out["beats_both"] = all(v["beats"] for k, v in out.items() if k in VERDICT_KEYS.values())
    return out


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven between ``wins`` and
    ``losses`` if either side were equally likely to win each untied pair (ties are left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(
    records: list[dict[str, Any]], teacher: str = "teacher", baseline: str = "SIFT"
) -> dict[str, Any]:
    """``teacher`` against ``baseline`` pair by pair (the pairs are the same for both).

    Args:
        records: per-pair records with ``set`` (the pair set), ``pair``, ``model``,
            ``homography_accuracy@3`` (0 or 1) and ``repeatability``.

    Returns:
        ``pairs``; for HA@3 the pairs that only the teacher gets right (``ha3_teacher_only``),
        only the baseline (``ha3_baseline_only``) and the sign-test p-value of that split; for
        repeatability the pairs where the teacher is higher / lower and its p-value.
    """
    by_pair: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for record in records:
        by_pair.setdefault((record["set"], record["pair"]), {})[record["model"]] = record
    both = [models for models in by_pair.values() if teacher in models and baseline in models]
    ha_t = sum(1 for m in both if m[teacher]["homography_accuracy@3"] > m[baseline]["homography_accuracy@3"])
    ha_b = sum(1 for m in both if m[teacher]["homography_accuracy@3"] < m[baseline]["homography_accuracy@3"])
    rep_t = sum(1 for m in both if m[teacher]["repeatability"] > m[baseline]["repeatability"])
    rep_b = sum(1 for m in both if m[teacher]["repeatability"] < m[baseline]["repeatability"])
    return {
        "pairs": len(both), "ha3_teacher_only": ha_t, "ha3_baseline_only": ha_b, "ha3_p": sign_test_p(ha_t, ha_b),
        "rep_teacher_higher": rep_t, "rep_teacher_lower": rep_b, "rep_p": sign_test_p(rep_t, rep_b),
    }


def paired_lines(paired: dict[str, Any], baseline: str = "SIFT") -> list[str]:
    """Markdown bullet lines for :func:`paired_comparison`."""
    return [
        f"- Pair by pair ({paired['pairs']} pairs): HA@3 right for the teacher only on {paired['ha3_teacher_only']}, "
        f"for {baseline} only on {paired['ha3_baseline_only']} (two-sided sign test p = {paired['ha3_p']:.2f}); "
        f"repeatability higher on {paired['rep_teacher_higher']}, lower on {paired['rep_teacher_lower']} "
        f"(p = {paired['rep_p']:.2g}). A p-value well above 0.05 means the difference could be chance.",
    ]


SET_LABELS = {"photos": "photos", "trees": "trees", "combined": "all pairs", "warped": "warped pairs only"}


def verdict_lines(verdicts: dict[str, dict[str, Any]], sizes: dict[str, int]) -> list[str]:
    """Markdown bullet lines: per set, then the headline verdict over all pairs."""
    lines = []
    for name, v in verdicts.items():
        parts = []
        for label in VERDICT_KEYS.values():
            item = v[label]
            parts.append(f"{label}: {'YES' if item['beats'] else 'NO'} ({item['teacher']:.3f} vs SIFT {item['SIFT']:.3f})")
        lines.append(f"- {SET_LABELS.get(name, name)} ({sizes[name]} pairs): teacher beats SIFT on " + "; ".join(parts))
    combined = verdicts["combined"]  # the headline is over every pair
    if combined["beats_both"]:
        lines.append("- **VERDICT (all pairs): the teacher beats SIFT on both repeatability and HA@3.**")
    else:
        below = [k for k in VERDICT_KEYS.values() if combined[k]["teacher"] < combined[k]["SIFT"]]
        ties = [k for k in VERDICT_KEYS.values() if combined[k]["teacher"] == combined[k]["SIFT"]]
        what = "; ".join(part for part in (
            f"below SIFT on {' and '.join(below)}" if below else "",
            f"only ties SIFT on {' and '.join(ties)}" if ties else "") if part)
        lines.append(f"- **VERDICT (all pairs): the teacher does NOT beat SIFT ({what}). "
                     "A teacher worse than SIFT is not a teacher.**")
    lines.append(f"- HA@k is a share of pairs: with {sizes['combined']} pairs one pair moves it by "
                 f"{1 / max(sizes['combined'], 1):.3f}.")
    lines.append("- 'HA@3 true matches': HA@3 when RANSAC is given the true correspondences among a model's "
                 "detected points (mutual nearest within 3 px under the true homography) instead of its descriptor "
                 "matches; the ceiling that the detector's localisation alone allows. HA@3 well below it: the "
                 "descriptors limit; HA@3 near it: the key points do.")
    return lines
