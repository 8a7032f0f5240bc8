"""The evaluation that ends a key-point run, or a ``detkd keypoints evaluate``: pairs, table and files.

* :func:`evaluation_pairs`: the pairs with known homographies that ``eval`` settings name (HPatches, a folder of
  photos, or scikit-image's held-out photos);
* :func:`evaluate_and_report`: several models on the same pairs, the table printed, ``metrics.json``,
  ``metrics.md`` and one match plot per model written;
* :func:`teacher_at_student_scale`: the teacher as a teacher-vs-student table judges it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from detkd.models.superpoint import SuperPoint
from detkd.tasks.keypoints import build_device


def evaluation_pairs(eval_cfg: dict[str, Any]) -> tuple[list[Any], str]:
    """Image pairs with known homographies for ``eval_cfg`` and a description of them."""
    from detkd.data.pairs import builtin_heldout_pairs, hpatches_pairs, synthetic_pairs_from_folder

    size = (eval_cfg["height"], eval_cfg["width"])
    if eval_cfg.get("hpatches"):
        limit = eval_cfg.get("hpatches_size")
        limit = max(size) if limit is None else (None if limit <= 0 else int(limit))
        pairs = hpatches_pairs(eval_cfg["hpatches"], max_size=limit)
        where = "at full size" if limit is None else f"shrunk to a longer side of at most {limit} px"
        return pairs, f"HPatches at {eval_cfg['hpatches']} ({len(pairs)} pairs, {where})"
    common = {"pairs_per_image": eval_cfg["pairs_per_image"], "size": size, "seed": eval_cfg["seed"]}
    if eval_cfg.get("images"):
        pairs = synthetic_pairs_from_folder(eval_cfg["images"], **common)
        return pairs, f"synthetic pairs of {eval_cfg['images']} ({len(pairs)} pairs, seed {eval_cfg['seed']})"
    pairs = builtin_heldout_pairs(**common)
    return pairs, f"synthetic pairs of scikit-image held-out photos ({len(pairs)} pairs, seed {eval_cfg['seed']})"


def teacher_at_student_scale(teacher: nn.Module, student: SuperPoint) -> Any:
    """The teacher as the teacher-vs-student table judges it: at the student's ``input_scale``.

    The student learns the teacher's dense outputs at the training resolution; a teacher that
    extracts on an upsampled image (``input_scale`` 2) would otherwise mix the gain of the
    resolution into the share of the teacher that the student keeps.
    """
    from detkd.evaluation.keypoints import WithExtractOptions

    scale = float(student.conf["input_scale"])
    if float(teacher.conf["input_scale"]) == scale:
        return teacher
    print(f"teacher evaluated at the student's input_scale {scale:g} (its own: {float(teacher.conf['input_scale']):g})")
    return WithExtractOptions(teacher, input_scale=scale)


def evaluate_and_report(
    models: dict[str, Any], eval_cfg: dict[str, Any], out: str | Path | None,
    matchers: Mapping[str, Any] | None = None, matcher_text: str | None = None,
) -> tuple[dict[str, dict[str, float]], str]:
    """Evaluate ``models`` on the same pairs; print the table and, with ``out``, write the files.

    ``matchers``: row name -> matcher (others: mutual nearest neighbours), described by ``matcher_text``.
    """
    from detkd.evaluation.keypoints import evaluate_keypoint_models, format_metrics_table

    pairs, pairs_text = evaluation_pairs(eval_cfg)
    if matcher_text:
        pairs_text += f"; matcher: {matcher_text}"
    print(f"evaluating on {pairs_text}")
    device = build_device(eval_cfg.get("device") or "cpu")
    evaluation = evaluate_keypoint_models(models, pairs, max_keypoints=eval_cfg["max_keypoints"], device=device,
                                          matchers=matchers)
    table = format_metrics_table(evaluation.summary)
    kinds = sorted({record["kind"] for record in evaluation.per_pair})
    by_kind = {kind: evaluation.summary_for(kind) for kind in kinds} if len(kinds) > 1 else {}
    for kind, rows in by_kind.items():  # HPatches: illumination and viewpoint apart, as reported in the field
        count = len({r["pair"] for r in evaluation.per_pair if r["kind"] == kind})
        table += f"\n\n{kind} pairs only ({count}):\n\n" + format_metrics_table(rows)
    print(table)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"pairs": pairs_text, "models": evaluation.summary,
                                                      "by_kind": by_kind}, indent=2))
        (out / "metrics.md").write_text(f"Evaluated on {pairs_text}.\n\n{table}\n")
        draw_example_matches(evaluation, out)
    return evaluation.summary, table


def draw_example_matches(evaluation: Any, out: Path) -> None:
    """One PNG per model of the matches on the first evaluation pair."""
    from detkd.viz.plots import plot_matches

    for name, example in evaluation.examples.items():
        plot_matches(
            example.image0, example.image1, example.keypoints0, example.keypoints1, example.matches,
            example.correct, out / f"matches_{name}.png", title=f"{name}: {example.pair_name}",
        )
