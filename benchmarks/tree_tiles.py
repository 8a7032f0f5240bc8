"""Cut the real aerial orthophoto of ../shared/data/trees into grey photo tiles.

Reads ``../shared/data/trees/*.png`` (DeepForest sample, see its README). Tiles from the left
three quarters are for training; tiles from the right quarter, a spatially separate block,
are held out for evaluation, so no evaluated pixel was ever trained on.

    python benchmarks/tree_tiles.py --out data/tree_tiles   # writes train/ and heldout/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from detkd.data.images import read_image

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trees"


def write_tiles(source: Path, out: Path, tile: int = 480) -> dict[str, int]:
    counts = {"train": 0, "heldout": 0}
    for path in sorted(source.glob("*.png")):
        image = read_image(path)  # (H, W) grey in [0, 1]
        h, w = image.shape
        split_x = (3 * w // 4) // tile * tile  # training block: x < split_x
        for top in range(0, h - tile + 1, tile):
            for left in range(0, w - tile + 1, tile):
                part = "train" if left + tile <= split_x else "heldout" if left >= split_x else None
                if part is None:
                    continue
                folder = out / part
                folder.mkdir(parents=True, exist_ok=True)
                crop = (image[top : top + tile, left : left + tile] * 255).round().astype(np.uint8)
                Image.fromarray(crop).save(folder / f"{path.stem}_y{top}_x{left}.png")
                counts[part] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the orthophoto PNG")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/train and OUT/heldout")
    parser.add_argument("--tile", type=int, default=480, help="tile side, pixels")
    args = parser.parse_args()
    counts = write_tiles(args.source, args.out, args.tile)
    print(f"{counts['train']} training tiles, {counts['heldout']} held-out tiles in {args.out}")


if __name__ == "__main__":
    main()
