"""Copies of shipped key-point students that run at another input scale, for benchmarks that take model files.

A key-point model's ``input_scale`` (``conf["input_scale"]``) makes its ``extract`` run the network on the
image resized by that factor and map the key points back: finer localisation for s^2 times the compute.
``detkd keypoints evaluate --input-scale`` sets it for every row of a table, ``Predictor(..., input_scale=)``
and ``detkd export --input-scale`` for one model; ``benchmarks/keypoint_anchors.py`` takes model files, so this
script writes the shipped weights again with only that key of their configuration changed
(``OUT/NAME-xS.pt``; the file's meta keeps the shipped card's facts and says what was changed).

    python benchmarks/scaled_students.py --students student-fast-s-mnn student-fast-l-mnn --scales 1.25 1.5 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detkd.models.pretrained import shipped_model_path
from detkd.models.weights import load_keypoint_model, read_keypoint_model_meta, save_keypoint_model

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", nargs="+", default=["student-fast-s-mnn", "student-fast-l-mnn"],
                        help="shipped students (detkd keypoints models) [student-fast-s-mnn student-fast-l-mnn]")
    parser.add_argument("--scales", nargs="+", type=float, default=[1.25, 1.5, 2.0], help="input scales [1.25 1.5 2]")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scaled", help="folder of the copies [runs/scaled]")
    args = parser.parse_args(argv)
    for name in args.students:
        source = shipped_model_path(name)
        meta = read_keypoint_model_meta(source) or {}
        for scale in args.scales:
            model = load_keypoint_model(source, input_scale=scale)
            note = f"{name} with input_scale {scale:g}: the shipped weights, only conf['input_scale'] changed"
            path = save_keypoint_model(model, args.out / f"{name}-x{scale:g}.pt", meta={**meta, "note": note})
            print(f"{path}: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
