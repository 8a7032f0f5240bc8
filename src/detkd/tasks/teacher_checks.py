"""What a person checks at the end of each stage of ``detkd keypoints train-teacher``.

* shapes: precision and recall of the MagicPoint detector on held-out synthetic shapes (exact
  corners, a seed the stage never trains on), and a picture of its detections on a few of them;
* adapt: how dense the pseudo-labels are (printed by the stage) and a picture of them on a photo;
* joint: the teacher's table on held-out photo pairs (scikit-image's held-out photos, seeded
  synthetic homographies), as ``detkd keypoints evaluate`` prints it.

Sizes come from the config's ``check`` section; 0 switches a check off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkd.models.superpoint import SuperPoint

#: Seed of the held-out synthetic shapes; the shapes stage draws its training scenes from seed 0 up.
HELDOUT_SHAPES_SEED = 10_000


def check_shapes_stage(model: SuperPoint, stage_cfg: dict[str, Any], check_cfg: dict[str, Any], folder: Path) -> None:
    """Print precision / recall on held-out shapes; draw the detections on 4 of them (``detections.png``)."""
    from detkd.data.synthetic_shapes import SyntheticShapesDataset
    from detkd.evaluation.corners import CORNER_DISTANCE, synthetic_shapes_precision_recall
    from detkd.viz.plots import plot_keypoints

    count = int(check_cfg["shapes_images"])
    if count <= 0:
        return
    height, width = stage_cfg["height"], stage_cfg["width"]
    counts = synthetic_shapes_precision_recall(model, num_images=count, seed=HELDOUT_SHAPES_SEED,
                                               height=height, width=width)
    print(f"check shapes: on {count} held-out synthetic scenes, precision {counts.precision:.2f}, recall "
          f"{counts.recall:.2f} (corners within {CORNER_DISTANCE:g} px; {counts.detections} detections, {counts.labels} corners)")
    data = SyntheticShapesDataset(height=height, width=width, seed=HELDOUT_SHAPES_SEED)
    scenes = [data[k]["image"] for k in range(min(4, count))]
    mosaic = torch.cat(scenes, dim=-1)  # (1, H, 4W)
    model.eval()
    with torch.inference_mode():
        points = model.extract(mosaic[None].to(next(model.parameters()).device))["keypoints"][0].cpu()
    path = plot_keypoints(mosaic[0].numpy(), points.numpy(), folder / "detections.png",
                          title=f"MagicPoint on held-out shapes: precision {counts.precision:.2f}, "
                                f"recall {counts.recall:.2f}")
    print(f"check shapes: detections drawn in {path}")


def check_adapt_stage(images: list[np.ndarray], points: list[np.ndarray], folder: Path) -> None:
    """Draw the pseudo-labels of the first photo (``pseudo_labels.png``)."""
    from detkd.viz.plots import plot_keypoints

    if not images:
        return
    path = plot_keypoints(images[0], points[0], folder / "pseudo_labels.png",
                          title=f"pseudo-labels: {len(points[0])} points on the first photo, "
                                f"{np.mean([len(p) for p in points]):.0f} per photo on average")
    print(f"check adapt: pseudo-labels drawn in {path}")


def check_joint_stage(model: SuperPoint, check_cfg: dict[str, Any], folder: Path) -> None:
    """The teacher's metrics on held-out photo pairs, printed and written to ``folder`` (metrics.md/json)."""
    from detkd.tasks.keypoint_report import evaluate_and_report

    pairs_per_image = int(check_cfg["pairs_per_image"])
    if pairs_per_image <= 0:
        return
    print("check joint: the teacher on held-out photo pairs")
    evaluate_and_report({"teacher": model.eval()}, {
        "images": None, "hpatches": None, "pairs_per_image": pairs_per_image, "height": check_cfg["height"],
        "width": check_cfg["width"], "max_keypoints": 1000, "seed": 1234, "device": "auto"}, folder)
