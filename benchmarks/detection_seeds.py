"""Did distillation help? The detection benchmark's runs over several student seeds, side by side.

Reads the ``.json`` files that ``benchmarks/detection.py`` wrote for the same settings and
different ``--student-seed`` (the teacher is usually the same one, trained once; where seeds have
different teachers, the table says so and each run's share is taken against its own seed's teacher),
and per data set prints

* each run's mAP and AP50 as mean +- sample standard deviation over the seeds;
* its gain over the baseline, paired by seed (student and baseline of one seed share the initial
  weights and the data stream), as mean +- standard deviation, with the smallest per-seed gain
  (in mAP; the AP50 gain beside it);
* a verdict: "yes" when every seed gained and the mean gain exceeds the baseline's own seed
  spread, "no" when the mean gain is not positive, "unclear" otherwise;
* the share of the teacher's mAP each run keeps, and how much the last quarter of each schedule
  still added (from ``--val-every`` curves: a run still climbing has not converged);
* for a data set scored whole as well (``trees``: the held-out block predicted in tiles and merged),
  the same table on those whole-image metrics, which are the ones its targets are judged on.

    python benchmarks/detection_seeds.py benchmarks/results/detection_s256_seed*.json --tag s256
    python benchmarks/detection_seeds.py FILES... --baseline baseline+ema0.999 --tag mine   # gains over another run

Files of the same seed may hold different methods (``--runs baseline pkd`` in one, ``--runs baseline
gid`` in another): their runs are merged per seed, and a run in both (the baseline) must have the
same mAP in both. A file whose teacher differs from the seed's (a teacher retrained with the same
settings, the first one lost) adds its distilled runs with their own teacher, named in a note. A run
trained on some of the seeds only (at least two) is summarised over those, paired with their
baselines, and the table's notes name its seeds. ``FILE.json:RUN,RUN`` takes only those runs from a file (its
teacher row too only when named): e.g. a seed's baseline from a file whose ``gid`` came from an older teacher.

    python benchmarks/detection_seeds.py new_gid_seed0.json old_seed0.json:baseline --tag mine
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; 0 for one value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def map_at(curve: Sequence[dict[str, float]], steps: int, fraction: float) -> float:
    """mAP of the validation nearest ``fraction * steps`` in a ``--val-every`` curve (``[{"step", "map"}, ...]``)."""
    at = {int(r["step"]): float(r["map"]) for r in curve}
    return at[min(at, key=lambda k: abs(k - fraction * steps))]


def late_gain(curve: Sequence[dict[str, float]], steps: int, fraction: float = 0.25) -> float | None:
    """mAP of the last validation minus the one nearest ``(1 - fraction) * steps``; ``None`` without a curve.

    ``fraction`` 0.25 (the last quarter) spans the default lr drop at 75% of the steps and so includes the jump
    it gives; 0.125 (the last eighth) starts after it: near 0 there, the curve has flattened within its schedule.
    """
    if len(curve) < 2:
        return None
    last = max(curve, key=lambda r: int(r["step"]))
    return float(last["map"]) - map_at(curve, steps, 1 - fraction)


def verdict(gains: Sequence[float], baseline_spread: float) -> str:
    """``yes`` / ``no`` / ``unclear`` for paired per-seed gains (see the module docstring)."""
    mean = statistics.fmean(gains)
    if mean <= 0:
        return "no"
    if min(gains) > 0 and mean > baseline_spread:
        return "yes"
    return "unclear"


def summarise(runs_by_seed: dict[int, dict[str, dict[str, Any]]], baseline: str = "baseline") -> list[dict[str, Any]]:
    """One summary per run name present in at least two seeds (or in the only one):
    ``runs_by_seed[seed][run] = {"map", "ap50", "steps", "curve"}``. A run missing from some seeds is
    summarised over the seeds it has (``seeds`` lists them), its gains paired with the baseline of
    those seeds.

    Returns dicts with ``run``, ``seeds``, ``map``/``ap50`` (mean, std), ``gain`` (mean, std) and
    ``min_gain`` over paired seeds (``None`` for the teacher and the baseline), ``verdict``,
    ``teacher_share`` (mean over seeds of mAP / that seed's teacher mAP), ``last_quarter`` and ``last_eighth``
    (mean :func:`late_gain` over the final 25% / 12.5% of the steps, or ``None``).
    """
    all_seeds = sorted(runs_by_seed)
    names = list(dict.fromkeys(run for seed in all_seeds for run in runs_by_seed[seed]))
    seeds_of = {run: [s for s in all_seeds if run in runs_by_seed[s]] for run in names}
    enough = min(2, len(all_seeds))
    baseline_seeds = seeds_of.get(baseline, [])
    baseline_spread = mean_std([runs_by_seed[s][baseline]["map"] for s in baseline_seeds])[1] if baseline_seeds else 0.0
    summaries = []
    for run in (name for name in names if len(seeds_of[name]) >= enough):
        seeds = seeds_of[run]
        rows = [runs_by_seed[s][run] for s in seeds]
        summary: dict[str, Any] = {
            "run": run, "seeds": seeds, "map": mean_std([r["map"] for r in rows]), "ap50": mean_std([r["ap50"] for r in rows]),
            "gain": None, "min_gain": None, "gain_ap50": None, "verdict": "",
        }
        paired = [s for s in seeds if s in baseline_seeds]
        if run not in ("teacher", baseline) and paired:
            gains = [runs_by_seed[s][run]["map"] - runs_by_seed[s][baseline]["map"] for s in paired]
            gains_ap50 = [runs_by_seed[s][run]["ap50"] - runs_by_seed[s][baseline]["ap50"] for s in paired]
            summary.update(gain=mean_std(gains), min_gain=min(gains), gain_ap50=mean_std(gains_ap50),
                           verdict=verdict(gains, baseline_spread))
        teacher_maps = {s: own_teacher_map(runs_by_seed[s], run) for s in seeds}
        shares = [runs_by_seed[s][run]["map"] / t for s, t in teacher_maps.items() if t]
        summary["teacher_share"] = statistics.fmean(shares) if shares else None
        for key, fraction in (("last_quarter", 0.25), ("last_eighth", 0.125)):
            late = [late_gain(r.get("curve") or [], int(r["steps"]), fraction) for r in rows]
            late = [gain for gain in late if gain is not None]
            summary[key] = statistics.fmean(late) if late else None
        summaries.append(summary)
    return summaries


def learns_from_labels(run: str, row: dict[str, Any]) -> bool:
    """Whether a student run learns from labels alone (the baseline, averaged or not): no teacher of its own."""
    return row.get("method") == "ground truth only" or run == "baseline" or run.startswith("baseline+")


def own_teacher_map(rows: dict[str, dict[str, Any]], run: str) -> float | None:
    """The mAP of the teacher ``run`` was distilled from: its own (``teacher_map``, set when its file's teacher
    is not the seed's teacher row), else the seed's teacher row; ``None`` without a teacher."""
    row = rows[run]
    if row.get("teacher_map") is not None:
        return float(row["teacher_map"])
    return float(rows["teacher"]["map"]) if "teacher" in rows else None


def teacher_note(runs_by_seed: dict[int, dict[str, dict[str, Any]]]) -> str | None:
    """A line naming each seed's teacher mAP when the seeds' teachers differ (e.g. one retrained); else ``None``."""
    maps = {seed: rows["teacher"]["map"] for seed, rows in sorted(runs_by_seed.items()) if "teacher" in rows}
    if len(maps) < 2 or max(maps.values()) - min(maps.values()) <= 1e-6:
        return None
    listed = ", ".join(f"seed {seed}: {value:.1f}" for seed, value in maps.items())
    return (f"The seeds' teachers differ (teacher mAP {listed}): the teacher row is their mean, each run's share "
            "is taken against its own seed's teacher, and the gains stay paired within a seed.")


def table(summaries: list[dict[str, Any]], baseline: str = "baseline") -> str:
    lines = [f"| run | seeds | mAP | AP50 | mAP gain over {baseline} (paired) | smallest gain | AP50 gain | helped? | of teacher's mAP | last quarter of schedule | last eighth |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for s in summaries:
        gain = "n/a" if s["gain"] is None else f"{s['gain'][0]:+.1f} ± {s['gain'][1]:.1f}"
        gain_ap50 = "n/a" if s.get("gain_ap50") is None else f"{s['gain_ap50'][0]:+.1f} ± {s['gain_ap50'][1]:.1f}"
        smallest = "n/a" if s["min_gain"] is None else f"{s['min_gain']:+.1f}"
        share = "n/a" if s["teacher_share"] is None else f"{100 * s['teacher_share']:.0f}%"
        quarter, eighth = ("n/a" if s.get(key) is None else f"{s[key]:+.1f}" for key in ("last_quarter", "last_eighth"))
        lines.append(f"| {s['run']} | {len(s['seeds'])} | {s['map'][0]:.1f} ± {s['map'][1]:.1f} | "
                     f"{s['ap50'][0]:.1f} ± {s['ap50'][1]:.1f} | {gain} | {smallest} | {gain_ap50} | {s['verdict'] or 'n/a'} | {share} | {quarter} | {eighth} |")
    return "\n".join(lines)


def parse_source(text: str) -> tuple[Path, set[str] | None]:
    """``FILE.json`` -> (path, ``None``: every run); ``FILE.json:RUN,RUN`` -> (path, those run names)."""
    head, sep, tail = text.rpartition(":")
    if sep and head.endswith(".json") and tail and "/" not in tail:
        return Path(head), {run.strip() for run in tail.split(",") if run.strip()}
    return Path(text), None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", metavar="FILE.json[:RUN,...]",
                        help="detection benchmark .json files of one teacher and schedule: one per student seed, or "
                             "several per seed with other methods (a run in two files of a seed must agree); "
                             ":RUN,RUN takes only those runs from a file")
    parser.add_argument("--baseline", default="baseline",
                        help="the run every gain is paired with, e.g. baseline+ema0.999 to compare averaged students "
                             "with the averaged baseline [baseline]")
    parser.add_argument("--tag", default="", help="output name: detection_seeds_<tag>.md")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    args = parser.parse_args(argv)

    by_set: dict[str, dict[int, dict[str, Any]]] = {}
    whole_description: dict[str, str] = {}
    commands: list[str] = []
    teacher_notes: list[str] = []
    for source in args.results:
        path, wanted = parse_source(source)
        payload = json.loads(path.read_text())
        seed = int(payload["args"]["student_seed"])
        taken = "" if wanted is None else f", runs {', '.join(sorted(wanted))} only"
        commands.append(f"`{payload['command']}` ({payload['date']}, commit {payload['git_commit']}{taken})")
        for name, result in payload["results"].items():
            if wanted is not None:
                missing = wanted - set(result["rows"])
                if missing:
                    raise SystemExit(f"{path}: no run {', '.join(sorted(missing))} in '{name}' (runs: "
                                     f"{', '.join(result['rows'])})")
                result = {**result, "rows": {run: row for run, row in result["rows"].items() if run in wanted}}
            rows = by_set.setdefault(name, {}).setdefault(seed, {})
            file_teacher = result["rows"].get("teacher")
            other_teacher = ("teacher" in rows and file_teacher is not None
                             and abs(rows["teacher"]["map"] - file_teacher["map"]) > 1e-6)
            for run, row in result["rows"].items():  # files of one seed with other methods add their runs
                if run == "teacher" and other_teacher:  # its distilled runs keep it as their own teacher
                    distilled = [r for r, v in result["rows"].items() if r != "teacher" and not learns_from_labels(r, v)]
                    if distilled:  # runs from labels alone do not depend on it
                        teacher_notes.append(
                            f"{name}, seed {seed}: {', '.join(distilled)} distilled from another teacher of the same "
                            f"settings ({row['map']:.1f} mAP; the seed's teacher row: {rows['teacher']['map']:.1f}) "
                            f"({path.name}); its share is taken against that teacher. The baseline learns from "
                            "labels alone, so the gain stays paired with it.")
                    continue
                if run in rows and abs(rows[run]["map"] - row["map"]) > 1e-6:
                    raise SystemExit(
                        f"{path}: run '{run}' of '{name}', student seed {seed}, is also in an earlier file with "
                        f"another mAP ({rows[run]['map']:.4f} vs {row['map']:.4f}): pass files of one teacher and "
                        "schedule, one model per run and seed")
                if other_teacher and not learns_from_labels(run, row):
                    row = {**row, "teacher_map": file_teacher["map"],
                           "teacher_whole_map": (file_teacher.get("whole") or {}).get("map")}
                rows.setdefault(run, row)
            if result.get("whole"):
                whole_description[name] = result["whole"]
    lines = ["# Detector distillation over student seeds: did it help?", "",
             f"Command: `python benchmarks/detection_seeds.py {shlex.join(sys.argv[1:] if argv is None else argv)}`  ",
             "From:  ", *[f"- {c}" for c in commands], "",
             "Mean ± sample standard deviation over the seeds, in COCO points (pycocotools, held-out val part). "
             "Gains are paired by seed (same initial student, same data stream). helped? = yes when every seed "
             "gained and the mean gain exceeds the baseline's seed spread; unclear when the mean gain is positive "
             "but not both; no otherwise. 'last quarter' = validation mAP gained over the final 25% of the "
             "steps, which includes the jump of the lr drop at 75%; 'last eighth' = over the final 12.5%, after "
             "it (near 0: the curve has flattened within its schedule; whether a longer schedule helps is "
             "another run's question).", ""]
    for name, runs_by_seed in by_set.items():
        if not any(args.baseline in rows for rows in runs_by_seed.values()):
            raise SystemExit(f"--baseline {args.baseline}: no such run in '{name}' (runs: "
                             f"{', '.join(sorted({r for rows in runs_by_seed.values() for r in rows}))})")
        summaries = summarise(runs_by_seed, args.baseline)
        lines += [f"## {name}", "", table(summaries, args.baseline), ""]
        note = teacher_note(runs_by_seed)
        if note:
            lines += [note, ""]
        for note in (n for n in teacher_notes if n.startswith(f"{name}, ")):
            lines += [note, ""]
        partial = [f"{s['run']} (seeds {', '.join(map(str, s['seeds']))})" for s in summaries
                   if len(s["seeds"]) < len(runs_by_seed)]
        if partial:
            lines += [f"Not run on every seed, summarised over the seeds it has and paired with their baselines: "
                      f"{'; '.join(partial)}.", ""]
        if all("whole" in row for rows in runs_by_seed.values() for row in rows.values()):
            whole = {seed: {run: {**row["whole"], "steps": row["steps"], "teacher_map": row.get("teacher_whole_map")}
                            for run, row in rows.items()}
                     for seed, rows in runs_by_seed.items()}
            lines += [f"### {name}, held-out block scored whole", "", f"{whole_description.get(name, '')}", "",
                      table(summarise(whole, args.baseline), args.baseline), ""]
        elif any("whole" in row for rows in runs_by_seed.values() for row in rows.values()):
            lines += [f"({name}: some seeds were not scored whole; rerun their detection.py command to add it.)", ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"detection_seeds{'_' + args.tag if args.tag else ''}.md"
    path.write_text(text + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
