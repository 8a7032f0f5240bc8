"""Options and pairs of the scripts that judge models on the learning curve's validation pairs.

``keypoint_swap.py`` and ``keypoint_teacher_readout.py`` take the same pair options (``--images``, at most 8 pairs
per photo at 480x640, seed 1234: the 48 validation pairs of ``learning_curve.py --eval-size 480 640
--pairs-per-image 8``) and write ``benchmarks/results/<stem>_<tag>.{md,json}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from detkd.data.pairs import ImagePair, synthetic_pairs_from_folder


def add_pair_options(parser: argparse.ArgumentParser, stem: str) -> None:
    """``--images --pairs-per-image --size --seed --threads --tag --out`` on ``parser``; ``stem`` names the output."""
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of photos the pairs are made from (validation photos)")
    parser.add_argument("--pairs-per-image", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=1234, help="pair seed (1234: the validation pairs of learning_curve.py)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help=f"output name: {stem}_<tag>.{{md,json}}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")


def pairs_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[ImagePair]:
    """The pairs ``args`` name (sides checked, torch threads set), ``args.pairs_per_image`` per photo."""
    if args.size[0] % 8 or args.size[1] % 8:
        parser.error(f"--size {args.size[0]} {args.size[1]}: both sides must be multiples of 8 (the models' cells)")
    torch.set_num_threads(args.threads)
    return synthetic_pairs_from_folder(args.images, pairs_per_image=args.pairs_per_image, size=tuple(args.size),
                                       seed=args.seed)
