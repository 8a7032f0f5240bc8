"""The tables and plots of ``benchmarks/detection.py``: results per data set, validation curves, costs, targets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detkd.tasks.detection_eval import plot_detection_validation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection_seeds import late_gain, map_at  # noqa: E402


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


def curve_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Validation mAP at a quarter, half, three quarters and all of each run's steps (flat at the end = converged)."""
    curves = {run: r["curve"] for run, r in rows.items() if r.get("curve")}
    if not curves:
        return []
    lines = ["", "Validation mAP along each run's schedule (`--val-every`; the last column is the final evaluation's "
                 "set, so it equals the table above); 'last quarter' = mAP gained over the final 25% of the steps (it "
                 "includes the jump of the lr drop at 75%), 'last eighth' = over the final 12.5%, after it:", "",
             "| run | steps | 25% | 50% | 75% | 100% | best (step) | last quarter | last eighth |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run, curve in curves.items():
        steps = rows[run]["steps"]
        best = max(curve, key=lambda r: r["map"])
        cells = " | ".join(f"{map_at(curve, steps, f):.1f}" for f in (0.25, 0.5, 0.75, 1.0))
        lines.append(f"| {run} | {steps} | {cells} | {best['map']:.1f} ({int(best['step'])}) | "
                     f"{_signed(late_gain(curve, steps, 0.25))} | {_signed(late_gain(curve, steps, 0.125))} |")
    return lines


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Every run's validation mAP and AP50 against its steps, one figure per data set."""
    written = None
    for name, result in results.items():
        runs = {run: r["curve"] for run, r in result["rows"].items() if r.get("curve")}
        if runs:
            target = path if len(results) == 1 else path.with_name(f"{path.stem}_{name}{path.suffix}")
            written = plot_detection_validation(runs, target, f"{name}: validation during training")
    return written


def target_lines(name: str, rows: dict[str, dict[str, Any]], cost: dict[str, Any]) -> list[str]:
    """This invocation (one student seed) against the detector issue's targets, which are on the mean of
    three seeds (``benchmarks/detection_seeds.py`` gives that): gid +3 mAP over the baseline on shapes,
    +2 AP50 on trees, gid within 5% of its teacher's mAP or above it, students 4x faster than teachers."""
    scored = {run: r.get("whole") or r for run, r in rows.items()}  # trees: the block scored whole, when scored
    base, teacher = scored["baseline"], scored["teacher"]
    lines = []
    for run, r in scored.items():
        if run in ("teacher", "baseline"):
            continue
        gain_map, gain_ap50 = r["map"] - base["map"], r["ap50"] - base["ap50"]
        needed = ("AP50", gain_ap50, 2.0) if name == "trees" else ("mAP", gain_map, 3.0)
        share = r["map"] / teacher["map"] if teacher["map"] > 0 else float("nan")
        lines.append(
            f"- {name}{' (scored whole)' if 'whole' in rows[run] else ''} / {run}: {gain_map:+.1f} mAP, {gain_ap50:+.1f} AP50 over the baseline "
            f"(target +{needed[2]:g} {needed[0]}: {'met' if needed[1] >= needed[2] else 'missed'} on this seed); "
            f"{100 * share:.0f}% of the teacher's mAP (target >= 95%: {'met' if share >= 0.95 else 'missed'})"
        )
    ratio = max(cost["latency_ratio"].values())
    lines.append(f"- {name}: the student is {ratio:.2f}x faster than its teacher at best (target >= 4x: "
                 f"{'met' if ratio >= 4 else 'missed'})")
    return lines


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if isinstance(value, float) else str(value)


def report(results: dict[str, Any], args: argparse.Namespace, header: list[str]) -> str:
    lines = ["# Object-detector distillation benchmark", "", *header, ""]
    verdict = []
    for name, result in results.items():
        rows, cost = result["rows"], result["cost"]
        lines += [f"## {name}", "", result["description"].replace("\n", "  \n"), "",
                  "| run | detector | method | mAP | AP50 | AP75 | mAP vs baseline | gap closed | train s | s/step |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for run, r in rows.items():
            gap = r.get("gap_closed")
            lines.append(
                f"| {run}{'' if r['trained_here'] else ' *'} | {r['detector']} | {r.get('method', 'supervised')} | {r['map']:.1f} | {r['ap50']:.1f} | "
                f"{r['ap75']:.1f} | {fmt(r.get('delta_map'))} | {'n/a' if gap is None else f'{100 * gap:.0f}%'} | "
                f"{r['train_s']:.0f} | {r['train_s'] / max(r['steps'], 1):.2f} |"
            )
        if result.get("whole"):
            base = rows["baseline"]["whole"] if "baseline" in rows else None
            lines += ["", f"Held-out block scored whole: {result['whole']}.", "",
                      "| run | mAP | AP50 | AP75 | mAP vs baseline | AP50 vs baseline |", "|---|---:|---:|---:|---:|---:|"]
            for run, r in rows.items():
                w = r["whole"]
                deltas = ("n/a", "n/a") if base is None or run == "teacher" else (
                    fmt(w["map"] - base["map"]), fmt(w["ap50"] - base["ap50"]))
                lines.append(f"| {run} | {w['map']:.1f} | {w['ap50']:.1f} | {w['ap75']:.1f} | {deltas[0]} | {deltas[1]} |")
        lines += curve_table(rows)
        t, s = cost["teacher"], cost["student"]
        sizes = list(cost["latency_ratio"])
        if not all(r["trained_here"] for r in rows.values()):
            lines += ["", "\\* trained by an earlier invocation with the same arguments and --work (resumed here, "
                          "nothing left to train), or read from --teacher-checkpoint; its time was measured then."]
        lines += ["", "| model | detector | parameters | " + " | ".join(
                      f"GFLOPs @{n} | CPU ms @{n} | speed-up @{n}" for n in sizes) + " |",
                  "|---|---|---:|" + "---:|" * (3 * len(sizes))]
        for who, c in (("teacher", t), ("student", s)):
            cells = " | ".join(f"{c['gflops'][n]:.3f} | {c['latency_ms'][n]:.1f} | "
                               f"{t['latency_ms'][n] / c['latency_ms'][n]:.2f}x" for n in sizes)
            lines.append(f"| {who} | {c['detector']} | {c['parameters']:,} | {cells} |")
        lines += ["", f"CPU latency: forward + post-processing of one NxN image, median of {args.repeats} runs, teacher and "
                      f"student interleaved, {args.threads} torch thread(s). The student has "
                      f"{s['parameters'] / t['parameters']:.0%} of the teacher's parameters.", ""]
        if "baseline" in rows:
            verdict += target_lines(name, rows, cost)
    if verdict:
        lines += ["## Against the issue's targets", "", *verdict, ""]
    return "\n".join(lines)
