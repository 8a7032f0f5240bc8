"""benchmarks/detection_report.py: the validation-curve table of the detector benchmark, against hand-computed values."""

from __future__ import annotations

from conftest import load_benchmark_script

report = load_benchmark_script("detection_report")


def test_curve_table_reads_each_fraction_of_the_schedule_and_both_late_gains():
    curve = [{"step": s, "map": m} for s, m in ((2, 10.0), (4, 20.0), (6, 30.0), (7, 34.0), (8, 35.0))]
    lines = report.curve_table({"gid": {"steps": 8, "curve": curve}, "teacher": {"steps": 8, "curve": []}})
    assert lines[3].endswith("| last quarter | last eighth |")
    rows = [line for line in lines if line.startswith("| gid ")]
    # 25/50/75/100% of 8 steps = steps 2/4/6/8; last quarter 35 - 30 (step 6), last eighth 35 - 34 (step 7)
    assert rows == ["| gid | 8 | 10.0 | 20.0 | 30.0 | 35.0 | 35.0 (8) | +5.0 | +1.0 |"]
    assert not any(line.startswith("| teacher ") for line in lines)  # no curve, no row
    one = report.curve_table({"short": {"steps": 8, "curve": [{"step": 8, "map": 5.0}]}})
    assert one[-1] == "| short | 8 | 5.0 | 5.0 | 5.0 | 5.0 | 5.0 (8) | n/a | n/a |"  # one validation: no late gain
