"""benchmarks/keypoint_anchors.py: the students' share table, against hand-computed values."""

from __future__ import annotations

from conftest import load_benchmark_script

anchors = load_benchmark_script("keypoint_anchors")

KEYS = ("mma@3", "homography_accuracy@1", "homography_accuracy@3")
TEACHER = {("a", "p0"): (0.8, 1, 1), ("a", "p1"): (0.6, 0, 1), ("b", "q0"): (0.5, 1, 1), ("b", "q1"): (0.5, 1, 0)}
HALF_MMA_NO_HA1 = {pair: (mma / 2, 0, ha3) for pair, (mma, _, ha3) in TEACHER.items()}


def records(model: str, values: dict) -> list[dict]:
    return [{"set": s, "pair": p, "model": model, **dict(zip(KEYS, v))} for (s, p), v in values.items()]


def means(values: dict, set_name: str) -> dict[str, float]:
    rows = [v for (s, _), v in values.items() if s == set_name]
    return {key: sum(r[i] for r in rows) / len(rows) for i, key in enumerate(KEYS)}


def test_shares_over_all_pairs_with_paired_bootstrap_intervals():
    models = {"teacher": TEACHER, "twin": TEACHER, "student": HALF_MMA_NO_HA1}
    accuracy = {s: {m: means(v, s) for m, v in models.items()} for s in ("a", "b")}
    per_pair = [r for m, v in models.items() for r in records(m, v)]
    lines = anchors.student_shares(accuracy, {"a": 2, "b": 2}, {"twin": "teacher", "student": "teacher"},
                                   {"student": 0.5}, per_pair)
    assert "MMA@3 share (95% interval)" in lines[0]
    # teacher over the 4 pairs: MMA@3 (0.8 + 0.6 + 0.5 + 0.5) / 4 = 0.6, HA@1 3/4, HA@3 3/4
    assert lines[2] == ("| twin | teacher | 0.600 / 0.600 | 0.750 / 0.750 | 0.750 / 0.750 | 100% (100%-100%) | "
                        "100% (100%-100%) | 100% (100%-100%) | - |")
    # half the MMA@3 on every pair: every resample's ratio is 1/2; no HA@1 at all: 0 in every resample
    assert lines[3] == ("| student | teacher | 0.300 / 0.600 | 0.000 / 0.750 | 0.750 / 0.750 | 50% (50%-50%) | "
                        "0% (0%-0%) | 100% (100%-100%) | 0.50 |")


def test_without_per_pair_records_the_shares_come_without_intervals():
    accuracy = {"a": {"teacher": means(TEACHER, "a"), "student": means(HALF_MMA_NO_HA1, "a")}}
    lines = anchors.student_shares(accuracy, {"a": 2}, {"student": "teacher"})
    assert "interval" not in lines[0]
    assert lines[2] == "| student | teacher | 0.350 / 0.700 | 0.000 / 0.500 | 1.000 / 1.000 | 50% | 0% | 100% | - |"
