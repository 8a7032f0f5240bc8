"""Train a SuperPoint-family teacher from nothing, as the SuperPoint paper does.

Three stages, each on the shared engine (checkpoints, resume, progress, TensorBoard):

1. ``shapes``: MagicPoint, the detector alone, on procedurally drawn synthetic shapes whose
   corners are known exactly (cell-wise 65-bin cross-entropy).
2. ``adapt``: homographic adaptation. For each real photo, the detector's heatmaps over many
   random warps are warped back and averaged; NMS + threshold on the average give pseudo
   ground-truth points. Cached per photo, so an interrupted run continues where it stopped.
3. ``joint``: detector + descriptor on warped pairs of the photos: detector loss on the pseudo
   labels of both views, descriptor loss on cell correspondences, weighted by
   ``descriptor_weight``: the paper's hinge loss (margins 1 / 0.2, lambda_d 250) or a dense
   InfoNCE loss (``descriptor_loss: infonce``) that learns in far fewer steps; optionally a
   sparse InfoNCE on descriptors sampled at the key points (``keypoint_descriptor_weight``) and
   R2D2's heatmap-consistency loss (``consistency_weight``) for sharper localisation.

The paper iterates stages 2-3: ``adapt.labeller`` labels the photos with a trained SuperPoint
instead of MagicPoint, and ``joint.init`` starts the joint stage from it (also the way to
fine-tune a teacher on your own photos).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from detkd.config import ConfigError, save_config
from detkd.data.augment import PhotometricConfig
from detkd.data.images import BUILTIN_TRAIN_PHOTOS, builtin_photo, read_image, scan_images
from detkd.data.keypoint_pairs import PseudoLabelPairStream, resize_longer_side
from detkd.data.synthetic_shapes import SyntheticShapesDataset
from detkd.engine import Task, TrainConfig, Trainer
from detkd.tasks.run_folder import absolute_paths, claim_run_folder
from detkd.tasks.teacher_checks import check_adapt_stage, check_joint_stage, check_shapes_stage
from detkd.geometry.homography import HomographyConfig, sample_homography, warp_image
from detkd.losses.superpoint import (
    descriptor_hinge_loss,
    descriptor_infonce_loss,
    detector_loss,
    heatmap_consistency_loss,
    keypoint_descriptor_loss,
    keypoint_map_to_cell_labels,
    soft_cell_targets,
    valid_mask_to_cells,
)
from detkd.models.keypoint_ops import CELL, detect_keypoints
from detkd.models.superpoint import SuperPoint, create_model
from detkd.models.weights import load_keypoint_model, save_keypoint_model

log = logging.getLogger(__name__)

_TRAIN_DEFAULTS = {
    "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4, "lr_decay": 0.9, "lr_decay_every": 1000,
    "warmup_steps": 100, "grad_clip": 1.0, "ema_decay": 0.0, "checkpoint_every": 250, "log_every": 10, "num_workers": 0,
    "seed": 0, "accelerator": "auto", "devices": 1, "num_nodes": 1, "strategy": "auto",
    "precision": "32-true", "progress": True,
}

#: Dotted keys of files and folders, written absolute into the run's ``config.yaml``.
TEACHER_PATH_KEYS = ("adapt.labeller", "adapt.images", "adapt.extra_images", "joint.init")

#: Every option of ``detkd keypoints train-teacher`` (``detkd config keypoints-teacher`` prints it).
DEFAULT_TEACHER_CONFIG: dict[str, Any] = {
    "model": {"variant": "superpoint", "batch_norm": True},
    "shapes": {
        "height": 120, "width": 160,  # synthetic image size, pixels
        "homography_probability": 0.8,  # share of samples warped (labels move with the pixels)
        "train": {**_TRAIN_DEFAULTS, "steps": 3000},
    },
    "adapt": {
        "labeller": None,  # model file that labels the photos; null: this run's MagicPoint (shapes stage)
        "images": None,  # folder of photos; null: scikit-image's training photos
        "extra_images": [],  # more folders (e.g. tiles of an aerial orthophoto)
        "longer_side": 320,  # photos are resized to this before adaptation and joint training
        "num_warps": 64,  # random homographies per photo (the identity is always one of them)
        "warps_per_batch": 16,
        "threshold": 0.015,  # on the aggregated heatmap
        "nms_radius": 4,
        "subpixel_radius": 0,  # refine each label on the aggregated heatmap (soft-argmax, pixels); 0: whole pixels (paper)
        "seed": 0,
    },
    "joint": {
        "init": None,  # model file to start from; null: this run's MagicPoint (shapes stage)
        "height": 160, "width": 224,  # training view size (multiples of 8)
        "descriptor_loss": "hinge",  # hinge (the paper's) or infonce (dense contrastive, trains faster)
        "descriptor_weight": 1e-4,  # weight of the descriptor loss beside the detector losses (paper: 1e-4)
        "temperature": 0.1,  # infonce and key-point descriptor loss: softmax temperature on cosine similarities
        "positive_margin": 1.0, "negative_margin": 0.2, "lambda_d": 250.0,
        "correspondence_radius": 7.5,  # pixels; 7.5 pairs a cell with its own warped cell only
        "keypoint_descriptor_weight": 0.0,  # sparse InfoNCE at the pseudo-label points beside the cell loss; 0: off
        "keypoint_ignore_radius": 3.0,  # pixels: key points this close are not each other's negatives
        "consistency_weight": 0.0,  # R2D2 heatmap-consistency loss beside the detector losses; 0: off (paper)
        "consistency_patch": 8,  # pixels, patch side of that loss
        "soft_labels": False,  # detector targets keep the labels' sub-pixel positions (bilinear); false: rounded (paper)
        "train": {**_TRAIN_DEFAULTS, "batch_size": 4, "steps": 3000},
    },
    "check": {  # what each stage ends with (detkd.tasks.teacher_checks); 0 switches a check off
        "shapes_images": 100,  # held-out synthetic scenes for the detector's precision / recall
        "pairs_per_image": 4,  # held-out photo pairs per photo for the teacher's table
        "height": 240, "width": 320,  # size of those pairs
    },
}


def _train_config(section: dict[str, Any], steps: int | None) -> TrainConfig:
    values = dict(section)
    if steps is not None:
        values["steps"] = steps
    return TrainConfig.from_dict(values)


# ----------------------------------------------------------------------------- stage 1
class MagicPointTask(Task):
    """The detector head learns the corners of synthetic shapes."""

    def __init__(self, model: SuperPoint, data: SyntheticShapesDataset) -> None:
        super().__init__()
        self.model, self.data = model, data

    def trainable(self) -> nn.Module:
        return self.model

    def train_dataset(self) -> SyntheticShapesDataset:
        return self.data

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model.detector(self.model.backbone(batch["image"]))
        labels = keypoint_map_to_cell_labels(batch["keypoint_map"], batch["valid_mask"])
        loss = detector_loss(logits, labels, valid_mask_to_cells(batch["valid_mask"]))
        return {"loss": loss, "detector": loss.detach()}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"model_conf": dict(self.model.conf)}


# ----------------------------------------------------------------------------- stage 2
@torch.no_grad()
def homographic_adaptation(
    model: SuperPoint, image: torch.Tensor, num_warps: int, rng: np.random.Generator,
    warps_per_batch: int = 16, homography: HomographyConfig | None = None,
) -> torch.Tensor:
    """Heatmap of ``image`` averaged over random warps (SuperPoint's homographic adaptation).

    Args:
        image: ``(1, H, W)`` grey in ``[0, 1]``, ``H`` and ``W`` multiples of 8.
        num_warps: warps in total; the first is the identity.

    Returns:
        ``(H, W)`` aggregated heatmap: the mean, over the warps that see a pixel, of the
        heatmap warped back onto the image.
    """
    if image.dim() != 3 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, H, W), got {tuple(image.shape)}")
    _, h, w = image.shape
    cfg = homography or HomographyConfig(allow_outside=True, perspective=0.15, rotation_deg=30.0, scale=(0.7, 1.4))
    homs = [torch.eye(3, dtype=torch.float64)] + [sample_homography(h, w, rng, cfg) for _ in range(num_warps - 1)]
    total = torch.zeros(h, w)
    counts = torch.zeros(h, w)
    ones = torch.ones(1, 1, h, w)
    for start in range(0, num_warps, warps_per_batch):
        batch_h = torch.stack(homs[start : start + warps_per_batch]).float()
        n = len(batch_h)
        warped = warp_image(image[None].expand(n, 1, h, w), batch_h)
        heat = model(warped)["heatmap"][:, None]
        inverse = torch.linalg.inv(batch_h)
        # Count only pixels the warped view really saw, away from its edges.
        seen = warp_image(ones.expand(n, 1, h, w), batch_h)
        seen = -F.max_pool2d(-seen, kernel_size=7, stride=1, padding=3)
        total += (warp_image(heat * seen, inverse)[:, 0]).sum(0)
        counts += (warp_image(seen, inverse)[:, 0]).sum(0)
    return total / counts.clamp_min(1e-6)


def _photo_sources(cfg: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """(name, grey photo) for the adaptation stage: a folder and extra folders, or scikit-image's."""
    folders = ([cfg["images"]] if cfg["images"] else []) + list(cfg["extra_images"] or [])
    photos: list[tuple[str, np.ndarray]] = []
    if not cfg["images"]:
        photos += [(f"skimage-{name}", builtin_photo(name)) for name in BUILTIN_TRAIN_PHOTOS]
    for folder in folders:
        scan = scan_images(folder)
        print(f"photos in {folder}: {scan.summary()}")
        for path in scan.paths:
            photos.append((f"{Path(folder).name}-{path.stem}", read_image(path)))
    return photos


def run_adaptation(model: SuperPoint, cfg: dict[str, Any], cache_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pseudo-label every photo; results are cached in ``cache_dir`` (one ``.npz`` per photo).

    The cache key holds the photo's pixels, the detector's weights and the options, so a
    changed photo or detector is never silently reused.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    weights_digest = hashlib.sha1()
    for tensor in model.state_dict().values():
        weights_digest.update(tensor.detach().cpu().numpy().tobytes())
    options = json.dumps(
        {k: cfg[k] for k in ("longer_side", "num_warps", "threshold", "nms_radius", "subpixel_radius", "seed")}
    )
    images, points = [], []
    model.eval()
    photos = _photo_sources(cfg)
    for index, (name, photo) in enumerate(tqdm(photos, desc="homographic adaptation", unit="photo")):
        image = resize_longer_side(photo, cfg["longer_side"])
        h, w = (image.shape[0] // CELL) * CELL, (image.shape[1] // CELL) * CELL
        image = np.ascontiguousarray(image[:h, :w])
        key = hashlib.sha1(image.tobytes() + weights_digest.digest() + options.encode()).hexdigest()[:16]
        path = cache_dir / f"{name}-{key}.npz"
        if path.exists():
            pts = np.load(path)["points"]
        else:
            rng = np.random.default_rng([cfg["seed"], index])
            heat = homographic_adaptation(model, torch.from_numpy(image)[None], cfg["num_warps"], rng, cfg["warps_per_batch"])
            kpts, _ = detect_keypoints(
                heat[None], nms_radius=cfg["nms_radius"], threshold=cfg["threshold"], border=4,
                subpixel_radius=int(cfg["subpixel_radius"]),
            )
            pts = kpts[0].numpy().astype(np.float32)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, points=pts)
            tmp.replace(path)
        images.append(image)
        points.append(pts)
    counts = [len(p) for p in points]
    print(f"pseudo labels: {len(points)} photos, {np.mean(counts):.0f} points per photo on average "
          f"(min {min(counts)}, max {max(counts)})")
    return images, points


# ----------------------------------------------------------------------------- stage 3
class JointSuperPointTask(Task):
    """Detector on both views' pseudo labels + descriptor hinge loss between the views."""

    def __init__(self, model: SuperPoint, data: PseudoLabelPairStream, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.data = model, data
        self.descriptor_weight = cfg["descriptor_weight"]
        self.consistency_weight = float(cfg["consistency_weight"])
        self.keypoint_descriptor_weight = float(cfg["keypoint_descriptor_weight"])
        self.keypoint_options = {"temperature": cfg["temperature"], "ignore_radius": cfg["keypoint_ignore_radius"]}
        self.consistency_patch = int(cfg["consistency_patch"])
        self.soft_labels = bool(cfg["soft_labels"])
        if cfg["descriptor_loss"] == "hinge":
            self.descriptor_loss = descriptor_hinge_loss
            self.descriptor_options = {
                k: cfg[k] for k in ("positive_margin", "negative_margin", "lambda_d", "correspondence_radius")
            }
        elif cfg["descriptor_loss"] == "infonce":
            self.descriptor_loss = descriptor_infonce_loss
            self.descriptor_options = {k: cfg[k] for k in ("temperature", "correspondence_radius")}
        else:
            raise ConfigError(f"joint.descriptor_loss must be 'hinge' or 'infonce', got {cfg['descriptor_loss']!r}")

    def trainable(self) -> nn.Module:
        return self.model

    def train_dataset(self) -> PseudoLabelPairStream:
        return self.data

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        both = self.model(torch.cat([batch["image0"], batch["image1"]]))
        n = batch["image0"].shape[0]
        det = []
        for view, sl in ((0, slice(0, n)), (1, slice(n, 2 * n))):
            mask = batch[f"valid_mask{view}"]
            if self.soft_labels:
                labels = soft_cell_targets(batch[f"soft_keypoint_map{view}"], mask)
            else:
                labels = keypoint_map_to_cell_labels(batch[f"keypoint_map{view}"], mask)
            det.append(detector_loss(both["logits"][sl], labels, valid_mask_to_cells(mask)))
        desc = self.descriptor_loss(
            both["descriptors"][:n], both["descriptors"][n:], batch["homography"],
            valid_mask_to_cells(batch["valid_mask1"]), **self.descriptor_options,
        )
        loss = det[0] + det[1] + self.descriptor_weight * desc
        out = {"detector": (det[0] + det[1]).detach(), "descriptor": desc.detach()}
        if self.keypoint_descriptor_weight > 0:
            sparse = keypoint_descriptor_loss(
                both["descriptors"][:n], both["descriptors"][n:], batch["keypoint_map0"], batch["homography"],
                batch["valid_mask1"], **self.keypoint_options,
            )
            loss = loss + self.keypoint_descriptor_weight * sparse
            out["keypoint_descriptor"] = sparse.detach()
        if self.consistency_weight > 0:
            consistency = heatmap_consistency_loss(
                both["heatmap"][:n], both["heatmap"][n:], batch["homography"], batch["valid_mask1"],
                patch_size=self.consistency_patch,
            )
            loss = loss + self.consistency_weight * consistency
            out["consistency"] = consistency.detach()
        return {"loss": loss, **out}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"model_conf": dict(self.model.conf)}


# ----------------------------------------------------------------------------- driver
STAGES = ("shapes", "adapt", "joint")


def _model_file(configured: str | Path | None, option: str, magicpoint_path: Path) -> Path:
    """The model file named by ``option`` in the config, or this run's MagicPoint when unset."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{option}: model file '{path}' does not exist; fix the path or set it to null")
        return path
    if not magicpoint_path.exists():
        raise FileNotFoundError(
            f"{option} is null, so this run's MagicPoint is used, but '{magicpoint_path}' does not exist: "
            "run --stage shapes first or set " + option + " to a model file"
        )
    return magicpoint_path


def run_teacher_training(
    config: dict[str, Any], out_dir: str | Path, stages: tuple[str, ...] = STAGES,
    resume: bool = False, steps: dict[str, int] | None = None,
) -> Path:
    """Run the given stages in order; each reads the previous stage's model from ``out_dir``.

    Layout: ``out_dir/shapes/magicpoint.pt``, ``out_dir/adapt/*.npz``,
    ``out_dir/joint/superpoint.pt`` (the teacher), each stage with its own checkpoints and logs.

    Returns:
        Path of what the last stage wrote: a model file (shapes, joint) or the adapt folder.
    """
    out = Path(out_dir)
    config = copy.deepcopy(config)
    steps = steps or {}
    claim_run_folder(out)
    for stage_folder in ("shapes", "joint"):  # refused before config.yaml is rewritten
        Trainer(TrainConfig(), out / stage_folder).refuse_existing_run(resume)
    save_config(absolute_paths(config, TEACHER_PATH_KEYS), out / "config.yaml")  # repeatable from any folder
    magicpoint_path = out / "shapes" / "magicpoint.pt"
    teacher_path = out / "joint" / "superpoint.pt"
    last = magicpoint_path

    if "shapes" in stages:
        cfg = config["shapes"]
        torch.manual_seed(cfg["train"]["seed"])  # the initial weights follow the config, not the process
        model = create_model(config["model"]["variant"], batch_norm=config["model"]["batch_norm"])
        data = SyntheticShapesDataset(
            height=cfg["height"], width=cfg["width"], seed=cfg["train"]["seed"],
            homography_probability=cfg["homography_probability"], photometric=PhotometricConfig(),
        )
        train_cfg = _train_config(cfg["train"], steps.get("shapes"))
        print(f"stage shapes: MagicPoint on synthetic shapes, {train_cfg.steps} steps x {train_cfg.batch_size}")
        result = Trainer(train_cfg, out / "shapes").fit(MagicPointTask(model, data), resume=resume)
        save_keypoint_model(model.eval(), magicpoint_path, meta={"stage": "shapes", "steps": result.step})
        last = magicpoint_path
        check_shapes_stage(model, cfg, config["check"], out / "shapes")

    if "adapt" in stages or "joint" in stages:
        labeller = _model_file(config["adapt"]["labeller"], "adapt.labeller", magicpoint_path)
        detector = load_keypoint_model(labeller)
        print(f"stage adapt: homographic adaptation of the photos with {labeller} (cached)")
        images, points = run_adaptation(detector, config["adapt"], out / "adapt")
        last = out / "adapt"
        check_adapt_stage(images, points, out / "adapt")

    if "joint" in stages:
        cfg = config["joint"]
        init = _model_file(cfg["init"], "joint.init", magicpoint_path)
        print(f"stage joint: starting from {init}")
        model = load_keypoint_model(init).train()
        data = PseudoLabelPairStream(
            images, points, height=cfg["height"], width=cfg["width"], seed=cfg["train"]["seed"],
            photometric=PhotometricConfig(), soft_labels=bool(cfg["soft_labels"]),
        )
        train_cfg = _train_config(cfg["train"], steps.get("joint"))
        print(f"stage joint: SuperPoint on warped photo pairs, {train_cfg.steps} steps x {train_cfg.batch_size} pairs")
        result = Trainer(train_cfg, out / "joint").fit(JointSuperPointTask(model, data, cfg), resume=resume)
        save_keypoint_model(model.eval(), teacher_path, meta={"stage": "joint", "steps": result.step,
                                                               "photos": len(images)})
        last = teacher_path
        check_joint_stage(model, config["check"], out / "joint")
    return last
