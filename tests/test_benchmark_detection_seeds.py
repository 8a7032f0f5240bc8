"""benchmarks/detection_seeds.py: the seed summary of the detector benchmark, against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_benchmark_script

seeds_script = load_benchmark_script("detection_seeds")

MAPS = {  # seed -> run -> mAP
    0: {"teacher": 60.0, "baseline": 40.0, "gid": 45.0, "pkd": 41.0, "cwd": 39.0},
    1: {"teacher": 60.0, "baseline": 42.0, "gid": 46.0, "pkd": 41.0, "cwd": 41.0},
    2: {"teacher": 60.0, "baseline": 44.0, "gid": 50.0, "pkd": 45.0, "cwd": 43.0},
}


def rows(seed: int) -> dict[str, dict]:
    curve = [{"step": 25, "map": 10.0}, {"step": 50, "map": 20.0}, {"step": 75, "map": 30.0}, {"step": 88, "map": 32.5},
             {"step": 100, "map": 33.0}]
    return {run: {"map": value, "ap50": value + 10, "steps": 100, "curve": curve if run == "gid" else []}
            for run, value in MAPS[seed].items()}


def test_summary_by_hand():
    summaries = {s["run"]: s for s in seeds_script.summarise({seed: rows(seed) for seed in MAPS})}
    assert summaries["baseline"]["map"] == pytest.approx((42.0, 2.0))  # (40+42+44)/3; sqrt((4+0+4)/2)
    assert summaries["baseline"]["gain"] is None and summaries["teacher"]["verdict"] == ""
    gid = summaries["gid"]  # paired gains 5, 4, 6
    assert gid["gain"] == pytest.approx((5.0, 1.0)) and gid["min_gain"] == 4.0
    assert gid["verdict"] == "yes"  # every seed gained, 5 > the baseline's spread 2
    assert gid["teacher_share"] == pytest.approx(47.0 / 60.0)
    assert gid["ap50"][0] == pytest.approx(57.0)
    assert gid["last_quarter"] == pytest.approx(3.0)  # 33 at step 100 - 30 at step 75
    assert gid["last_eighth"] == pytest.approx(0.5)  # 33 at step 100 - 32.5 at step 88 (nearest 87.5)
    assert summaries["pkd"]["gain"][0] == pytest.approx(1.0 / 3.0)  # gains 1, -1, 1
    assert summaries["pkd"]["verdict"] == "unclear"
    assert summaries["cwd"]["verdict"] == "no"  # gains -1, -1, -1
    assert summaries["cwd"]["last_quarter"] is None and summaries["cwd"]["last_eighth"] is None


def test_a_run_missing_from_a_seed_is_summarised_over_the_seeds_it_has():
    by_seed = {seed: rows(seed) for seed in MAPS}
    del by_seed[0]["gid"]  # gid run on seeds 1 and 2 only
    by_seed[2]["hint"] = {"map": 47.0, "ap50": 57.0, "steps": 100}  # one seed of three: left out
    summaries = {s["run"]: s for s in seeds_script.summarise(by_seed)}
    gid = summaries["gid"]
    assert gid["seeds"] == [1, 2] and summaries["baseline"]["seeds"] == [0, 1, 2]
    assert gid["map"] == pytest.approx((48.0, 8 ** 0.5))  # 46, 50
    assert gid["gain"] == pytest.approx((5.0, 2 ** 0.5))  # paired gains 4, 6
    assert gid["verdict"] == "yes"  # both gained, 5 > the baseline's spread 2 (over its three seeds)
    assert gid["teacher_share"] == pytest.approx(48.0 / 60.0)
    assert "hint" not in summaries


def test_seeds_with_different_teachers_are_said_and_shares_taken_per_seed(tmp_path):
    two = {0: {"teacher": {"map": 80.0, "ap50": 90.0, "steps": 10}, "baseline": {"map": 60.0, "ap50": 70.0, "steps": 10}},
           1: {"teacher": {"map": 60.0, "ap50": 70.0, "steps": 10}, "baseline": {"map": 60.0, "ap50": 70.0, "steps": 10}}}
    baseline = {s["run"]: s for s in seeds_script.summarise(two)}["baseline"]
    assert baseline["teacher_share"] == pytest.approx((60 / 80 + 60 / 60) / 2)  # 0.875, not 60 / 70 = 0.857
    assert seeds_script.teacher_note(two) == ("The seeds' teachers differ (teacher mAP seed 0: 80.0, seed 1: 60.0): "
                                              "the teacher row is their mean, each run's share is taken against its "
                                              "own seed's teacher, and the gains stay paired within a seed.")
    assert seeds_script.teacher_note({seed: rows(seed) for seed in MAPS}) is None  # one teacher


def write_seed_file(path, seed: int, runs: dict[str, dict]) -> str:
    payload = {"command": f"python benchmarks/detection.py --student-seed {seed}", "date": "2026-12-04 00:00 UTC",
               "git_commit": "abc", "args": {"student_seed": seed}, "results": {"shapes": {"rows": runs}}}
    path.write_text(json.dumps(payload))
    return str(path)


def test_script_writes_the_table_and_merges_methods_of_one_seed(tmp_path):
    files = [write_seed_file(tmp_path / f"seed{seed}.json", seed, rows(seed)) for seed in MAPS]
    seeds_script.main([*files, "--tag", "t", "--out", str(tmp_path)])
    text = (tmp_path / "detection_seeds_t.md").read_text()
    gid_row = "| gid | 3 | 47.0 ± 2.6 | 57.0 ± 2.6 | +5.0 ± 1.0 | +4.0 | +5.0 ± 1.0 | yes | 78% | +3.0 |"
    assert gid_row in text and "scored whole" not in text
    # one file per method and seed (each with its own copy of teacher and baseline): the same table
    split = []
    for seed in MAPS:
        for method in ("gid", "pkd", "cwd"):
            runs = {run: row for run, row in rows(seed).items() if run in ("teacher", "baseline", method)}
            split.append(write_seed_file(tmp_path / f"{method}_seed{seed}.json", seed, runs))
    seeds_script.main([*split, "--tag", "split", "--out", str(tmp_path)])
    merged = (tmp_path / "detection_seeds_split.md").read_text()
    assert gid_row in merged
    assert [line for line in merged.splitlines() if line.startswith("| ")] == \
        [line for line in text.splitlines() if line.startswith("| ")]
    # a baseline that differs between two files of one seed is another model: refused
    other = {run: {**row, "map": row["map"] + 1.0} for run, row in rows(0).items()}
    clash = write_seed_file(tmp_path / "clash.json", 0, other)
    with pytest.raises(SystemExit, match="run 'baseline' of 'shapes', student seed 0, is also in an earlier file"):
        seeds_script.main([files[0], clash, "--out", str(tmp_path)])


def test_a_seed_file_with_another_teacher_keeps_it_for_its_runs(tmp_path):
    """Seed 0's gid comes from a retrained teacher (50 mAP, not 60): its share is 45 / 50, its gain still
    paired with seed 0's baseline; the teacher row keeps the seed's first teacher."""
    files = [write_seed_file(tmp_path / f"seed{seed}.json", seed,
                             {run: row for run, row in rows(seed).items() if seed or run != "gid"}) for seed in MAPS]
    retrained = {"teacher": {**rows(0)["teacher"], "map": 50.0}, "gid": rows(0)["gid"]}
    files.append(write_seed_file(tmp_path / "gid_seed0.json", 0, retrained))
    seeds_script.main([*files, "--tag", "t", "--out", str(tmp_path)])
    text = (tmp_path / "detection_seeds_t.md").read_text()
    # gid shares 45/50, 46/60, 50/60 -> mean 0.8333; gains 5, 4, 6 as before; teacher row 60 +- 0
    assert "| gid | 3 | 47.0 ± 2.6 | 57.0 ± 2.6 | +5.0 ± 1.0 | +4.0 | +5.0 ± 1.0 | yes | 83% | +3.0 |" in text
    assert "| teacher | 3 | 60.0 ± 0.0 |" in text
    assert ("shapes, seed 0: gid distilled from another teacher of the same settings (50.0 mAP; the seed's teacher "
            "row: 60.0) (gid_seed0.json)") in text

    # scored whole too (whole mAP = mAP / 2): the whole table takes the retrained teacher's whole mAP (25) for gid
    def whole(runs: dict[str, dict]) -> dict[str, dict]:
        return {run: {**row, "whole": {"map": row["map"] / 2, "ap50": row["map"], "ap75": 0.0}} for run, row in runs.items()}

    files = [write_seed_file(tmp_path / f"w{seed}.json", seed,
                             whole({run: row for run, row in rows(seed).items() if seed or run != "gid"})) for seed in MAPS]
    files.append(write_seed_file(tmp_path / "w_gid_seed0.json", 0, whole(retrained)))
    seeds_script.main([*files, "--tag", "w", "--out", str(tmp_path)])
    whole_table = (tmp_path / "detection_seeds_w.md").read_text().split("scored whole")[1]
    # gid whole shares 22.5/25, 23/30, 25/30 -> 0.8333
    assert "| gid | 3 | 23.5 ± 1.3 | 47.0 ± 2.6 | +2.5 ± 0.5 | +2.0 | +5.0 ± 1.0 | yes | 83% | n/a |" in whole_table


def test_runs_taken_from_a_file_by_name(tmp_path):
    """``FILE:baseline``: seed 0's baseline from a file whose gid (and teacher) are another's; gid from a new file."""
    old = write_seed_file(tmp_path / "old.json", 0, {**rows(0), "gid": {**rows(0)["gid"], "map": 30.0}})
    new = write_seed_file(tmp_path / "new.json", 0, {"teacher": rows(0)["teacher"], "gid": rows(0)["gid"]})
    seeds_script.main([new, f"{old}:baseline", "--tag", "sel", "--out", str(tmp_path)])
    text = (tmp_path / "detection_seeds_sel.md").read_text()
    assert "| gid | 1 | 45.0 ± 0.0 | 55.0 ± 0.0 | +5.0 ± 0.0 | +5.0 |" in text  # 45 - 40, not 30 - 40
    assert "runs baseline only" in text and "pkd" not in text.split("From:")[1].split("## ")[1]
    assert seeds_script.parse_source("a/b.json:baseline, gid") == (Path("a/b.json"), {"baseline", "gid"})
    assert seeds_script.parse_source("c:/x/b.json") == (Path("c:/x/b.json"), None)
    with pytest.raises(SystemExit, match="no run hint in 'shapes'"):
        seeds_script.main([f"{old}:hint", "--out", str(tmp_path)])


def test_a_set_scored_whole_gets_its_own_table(tmp_path):
    """trees: every row also carries ``whole`` metrics (here mAP / 2 and AP50 = mAP), summarised the same way."""
    files = []
    for seed in MAPS:
        with_whole = {run: {**r, "whole": {"map": r["map"] / 2, "ap50": r["map"], "ap75": 0.0}}
                      for run, r in rows(seed).items()}
        payload = {"command": "c", "date": "d", "git_commit": "abc", "args": {"student_seed": seed},
                   "results": {"trees": {"rows": with_whole, "whole": "1 image(s), whole"}}}
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps(payload))
    seeds_script.main([*map(str, files), "--tag", "w", "--out", str(tmp_path)])
    text = (tmp_path / "detection_seeds_w.md").read_text()
    assert "### trees, held-out block scored whole" in text and "1 image(s), whole" in text
    # gid whole mAP 22.5, 23, 25 (sd sqrt(3.5 / 2) = 1.32); baseline 20, 21, 22: gains 2.5, 2, 3; AP50 gains 5, 4, 6
    assert "| gid | 3 | 23.5 ± 1.3 | 47.0 ± 2.6 | +2.5 ± 0.5 | +2.0 | +5.0 ± 1.0 | yes | 78% | n/a |" in text


def test_detection_curves_puts_runs_side_by_side_at_each_step(tmp_path):
    curves = load_benchmark_script("detection_curves")
    for name, records, steps in (("a", [(500, 10.0), (1000, 20.5)], 1000), ("b", [(500, 12.25)], 4000)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "validation.jsonl").write_text("".join(json.dumps({"step": s, "map": m, "ap50": 2 * m}) + "\n"
                                                         for s, m in records))
        (folder / "config.yaml").write_text(f"train:\n  steps: {steps}\n")
    curves.main([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--tag", "t", "--out", str(tmp_path)])
    text = (tmp_path / "detection_curves_t.md").read_text()
    assert "| 500 | 10.0 | 12.2 |" in text and "| 1000 | 20.5 | - |" in text  # b has not got there yet
    assert "| 1000 | 41.0 | - |" in text  # the AP50 table
    assert "a 1000/1000, b 500/4000" in text
    assert (tmp_path / "detection_curves_t.png").exists()
    with pytest.raises(SystemExit, match="--val-every"):
        curves.main([f"c={tmp_path}", "--tag", "x", "--out", str(tmp_path)])


def test_gains_over_another_run_with_baseline_option(tmp_path):
    """--baseline pkd: every gain is paired with pkd's (gid: 45-41, 46-41, 50-45 = 4, 5, 5)."""
    summaries = {s["run"]: s for s in seeds_script.summarise({seed: rows(seed) for seed in MAPS}, baseline="pkd")}
    assert summaries["gid"]["gain"][0] == pytest.approx(14.0 / 3.0) and summaries["gid"]["min_gain"] == 4.0
    assert summaries["pkd"]["gain"] is None and summaries["baseline"]["gain"][0] == pytest.approx(-1.0 / 3.0)
    files = [write_seed_file(tmp_path / f"seed{seed}.json", seed, rows(seed)) for seed in MAPS]
    seeds_script.main([*files, "--baseline", "pkd", "--tag", "p", "--out", str(tmp_path)])
    assert "| run | seeds | mAP | AP50 | mAP gain over pkd (paired) |" in (tmp_path / "detection_seeds_p.md").read_text()
    with pytest.raises(SystemExit, match="--baseline nothing: no such run"):
        seeds_script.main([*files, "--baseline", "nothing", "--out", str(tmp_path)])
