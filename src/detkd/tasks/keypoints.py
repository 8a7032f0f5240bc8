"""Key-point distillation as an engine task, and the whole job a user runs.

``run_distillation`` = load the teacher, build the student, train with the shared engine,
save ``student.pt``, evaluate teacher and student on the same held-out pairs and write the
results beside the resolved config (:mod:`detkd.tasks.keypoint_report`). The task itself is small: both networks see the same
batch, the loss module compares their outputs. With ``teacher_cache.folder`` set, the
teacher's outputs are computed once per fixed view and read back (:mod:`detkd.cache.keypoints`).
In a multi-process run every process calls ``run_distillation``; only global rank 0 writes
files, builds the cache and evaluates.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkd.cache.keypoints import (
    CacheBuildReport,
    CachedTeacherViews,
    build_keypoint_teacher_cache,
    decode_teacher_outputs,
    open_keypoint_cache,
)
from detkd.config import ConfigError, dataclass_from_dict
from detkd.data.augment import CropConfig, PhotometricConfig
from detkd.data.images import BUILTIN_TRAIN_PHOTOS, builtin_photo
from detkd.data.keypoint_training import UnlabeledImageStream
from detkd.distill.keypoints import KeypointDistillationLoss, KeypointDistillWeights, PointSampling
from detkd.engine import Task, TrainConfig, Trainer
from detkd.engine.distributed import is_launch_rank_zero
from detkd.tasks.run_folder import open_run_folder, rank_zero_say
from detkd.geometry.homography import HomographyConfig, points_inside, sample_homography, warp_image, warp_points
from detkd.models.keypoint_teachers import load_keypoint_teacher
from detkd.models.superpoint import SuperPoint, count_parameters, inference_parameter_count
from detkd.models.weights import save_keypoint_model
from detkd.tasks.keypoint_students import (
    STUDENT_STRUCTURE_KEYS,
    build_student,
    initialise_student,
    read_student_start,
    record_student_start,
    structure_for_init,
    student_description,
)

log = logging.getLogger(__name__)

#: Every option of ``detkd keypoints distill``; ``configs/keypoints_distill.yaml`` mirrors it.
DEFAULT_DISTILL_CONFIG: dict[str, Any] = {
    "teacher": {
        "checkpoint": None,  # null: the shipped teacher; disk | aliked-t16 | aliked-n16 | aliked-n32 | xfeat; or a weight file
        "weights": None,  # weight file of a named teacher; null: kornia's download cache (downloaded when online)
        "point_scale": 1.0,  # DISK/ALIKED: per-pixel scores x this before they become 65-bin cells (0.25: ranking kept)
    },
    "student": {
        "variant": "fast-m",  # fast-s | fast-m | fast-l (strided encoder, fast on a CPU) | superpoint | half | tiny
        "batch_norm": True,  # BatchNorm after each conv (helps small students train)
        # Structural options of the variant, replaced when set (null: the variant's own):
        "encoder": None,  # vgg (SuperPoint's) | fast (strided stem, cheap on a CPU)
        "channels": None,  # encoder widths, 4 numbers, e.g. [8, 16, 32, 32]
        "head_channels": None,  # hidden width of the detector and descriptor heads
        "descriptor_dim": None,  # null: the teacher's (the descriptor losses need the teacher's size)
        "descriptor_stride": None,  # pixels per descriptor cell, 8 or 4 (4: finer descriptors, for DISK teachers)
        # finest stride the detector reads, 8 or 4 (4: a per-pixel offset from stride-4 features, finer localisation);
        # 4 with a stride-8 student.init grows that file: the new branch starts at zero, step 0 is the file's model
        "detector_stride": None,
        # true: each encoder conv trains with RepVGG's 1x1 and identity branches, merged into it for inference (the
        # same speed; fast encoder only); with a student.init without them they start at zero
        "reparam_branches": None,
        # N: a stride-16/32 context pyramid of N channels on the encoder's output (a receptive field of about 250 px
        # instead of 70 for the fast encoder; see ContextPyramid); with a student.init without it, it starts at zero
        "context_channels": None,
        # Initial weights: null = random; a student model file or a shipped student's name (student-fast-s ...) of
        # the same structure = fine-tune it (e.g. a shipped student on your own photos, or at a larger view size)
        "init": None,
    },
    "data": {
        "images": None,  # folder of unlabelled photos; null: scikit-image's training photos
        "height": 240,  # training view size, pixels (multiples of 8)
        "width": 320,
        "scale": [0.5, 1.0],  # random zoom of the photo before cropping
        "homography_probability": 0.9,
        "homography": {"perspective": 0.1, "scale": [0.8, 1.25], "rotation_deg": 25.0, "translation": 0.1},
        "photometric": {
            "probability": 0.5, "brightness": 0.2, "contrast": [0.6, 1.4], "gamma": [0.7, 1.5],
            "noise_std": 0.03, "blur_sigma": 1.2, "shade": 0.4,
        },
        "cache": True,  # keep decoded photos in memory
    },
    "teacher_cache": {
        "folder": None,  # teacher outputs stored here, missing ones computed at the start; null: teacher runs every step
        "views_per_image": 4,  # fixed augmented views per photo in the cache; training cycles through them
        "descriptors": "float16",  # float16 | int8 (half the size, rounding error <= 0.4% per component)
        "batch_size": 16,  # views per teacher forward while the cache is built
    },
    "loss": {
        "heatmap_mse": 120.0, "heatmap_gradient_mse": 150.0, "cell_kl": 1.0,
        "descriptor_mse": 0.0, "descriptor_cosine": 1.0, "temperature": 1.0,  # descriptor_mse = 2/D x cosine: off
        "point_descriptor_cosine": 1.0,  # descriptors at the points below, as extract() reads them; 0: off
        "point_descriptor_relation": 0.3,  # each point's ranking of the view's teacher descriptors; 0: off
        "point_relation_temperature": 0.1,
        # the student's own descriptors matched across a second, warped copy of each view (data.homography's
        # magnitudes; costs a second student pass per step); 0: off
        "point_descriptor_matching": 0.0,
        "point_matching_temperature": 0.1,
        # cell_kl in that second view, against the teacher's heatmap warped into it (the same second pass); 0: off
        "second_view_cell_kl": 0.0,
    },
    "points": {  # where the point_descriptor_* terms compare descriptors
        "keypoints": 256,  # the teacher's strongest local maxima per view
        "grid_stride": 16,  # plus a grid of this stride between the cell centres (0: none)
        "nms_radius": 2,
        "border": 4,
    },
    "train": {
        "steps": 2000, "batch_size": 8, "lr": 1.5e-3, "weight_decay": 1e-4, "lr_decay": 0.8,
        "lr_decay_every": 1000, "warmup_steps": 0, "grad_clip": 1.0, "ema_decay": 0.999, "checkpoint_every": 500,
        "log_every": 10, "num_workers": 0, "seed": 0, "accelerator": "auto", "devices": 1,
        "num_nodes": 1, "strategy": "auto", "precision": "auto", "progress": True,
        "sync_batchnorm": True, "channels_last": False, "compile": False,
    },
    "eval": {
        "images": None,  # held-out photos (synthetic pairs); null: scikit-image's held-out photos
        "hpatches": None,  # an HPatches-format folder instead of synthetic pairs
        "hpatches_size": None,  # longer side HPatches images are shrunk to, px; null: max(height, width); 0: full size
        "pairs_per_image": 4,
        "height": 240,
        "width": 320,
        "max_keypoints": 1000,
        "seed": 1234,
    },
}


class KeypointDistillationTask(Task):
    """Teacher (frozen) and student see the same images; the loss compares their outputs.

    When the data stream reads the teacher's outputs from a cache (batch keys
    ``teacher_logits`` and ``teacher_descriptors``, and ``teacher_points`` with
    ``teacher_point_descriptors`` when it holds points; see :class:`CachedTeacherViews`), the
    teacher does not run and may be ``None``. Otherwise the teacher runs on every batch, and with
    ``points`` it also describes the points they select from its heatmap.

    When the loss needs a second view (``loss.point_descriptor_matching``, ``loss.second_view_cell_kl``), each
    image is also warped by a random homography of ``second_view``'s magnitudes (drawn from torch's generator,
    which a resumed run restores) and the student describes the teacher's points mapped into the warped copy
    and detects in it.
    """

    def __init__(
        self, teacher: nn.Module | None, student: SuperPoint, loss: KeypointDistillationLoss,
        data: UnlabeledImageStream | CachedTeacherViews, points: PointSampling | None = None,
        second_view: HomographyConfig | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.loss = loss
        self.data = data
        self.points = points if points is not None and points.active else None
        if loss.needs_second_view and (second_view is None or self.points is None):
            raise ValueError("loss.point_descriptor_matching or loss.second_view_cell_kl > 0 needs a second view's "
                             "homography magnitudes and the teacher's points (points.keypoints or points.grid_stride "
                             "above 0)")
        self.second_view = second_view if loss.needs_second_view else None
        if teacher is not None:
            self.freeze("teacher")

    def trainable(self) -> nn.Module:
        return self.student

    def train_dataset(self) -> UnlabeledImageStream | CachedTeacherViews:
        return self.data

    def teacher_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The teacher's dense outputs for ``batch["image"]``: from the cache, or computed without a graph."""
        if "teacher_logits" in batch:
            return decode_teacher_outputs(batch["teacher_logits"], batch["teacher_descriptors"],
                                          batch.get("teacher_points"), batch.get("teacher_point_descriptors"))
        if self.teacher is None:
            raise ValueError("This task has no teacher and the batch carries no cached teacher outputs")
        # no_grad, not inference_mode: the loss saves these tensors for its backward pass, which
        # inference tensors forbid; no_grad records no graph either.
        with torch.no_grad():
            return self.teacher(batch["image"], select_points=self.points)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        teacher = self.teacher_outputs(batch)
        if "points" not in teacher:
            return self.loss(teacher, self.student(batch["image"]))
        # the student describes the teacher's points as its extract() would (a stride-4 student reads two maps)
        points = teacher["points"].detach()
        student = self.student(batch["image"], select_points=lambda heatmap: points)
        student.pop("points")
        second = self.second_view_outputs(batch["image"], points) if self.second_view is not None else None
        return self.loss(teacher, student, second)

    def second_view_outputs(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student's outputs in a warped copy of each image ``(B, 1, H, W)``: its descriptors at ``points``
        ``(B, N, 2)`` mapped into the copy (``point_descriptors`` ``(B, N, D)``, ``valid`` ``(B, N)``: inside the copy),
        its ``logits`` ``(B, 65, H/8, W/8)`` and the ``homographies`` ``(B, 3, 3)`` (image pixels -> the copy's)."""
        b, _, h, w = image.shape
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        homographies = torch.stack([sample_homography(h, w, rng, self.second_view) for _ in range(b)])
        homographies = homographies.to(image.device, torch.float32)
        mapped = warp_points(points, homographies)
        valid = points_inside(mapped, h, w, border=float(self.points.border))
        warped = self.student(warp_image(image, homographies), select_points=lambda heatmap: mapped)
        return {"point_descriptors": warped["point_descriptors"], "valid": valid, "logits": warped["logits"],
                "homographies": homographies}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"model_conf": dict(self.student.conf)}


def config_section(cls: type, values: dict[str, Any], what: str) -> Any:
    """Dataclass ``cls`` from a YAML section: YAML lists become the tuples the dataclass uses."""
    return dataclass_from_dict(cls, {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}, what)


def load_teacher(
    checkpoint: str | Path | None, weights: str | Path | None = None, point_scale: float = 1.0
) -> tuple[nn.Module, str]:
    """The teacher model (eval mode) and a description of where it came from.

    ``checkpoint``: None (the shipped teacher), a teacher name (``disk``, ``aliked-n16``, ``xfeat`` ...,
    weights from ``weights`` or kornia's download cache) or a weight file of any family
    (:func:`detkd.models.keypoint_teachers.load_keypoint_teacher`), a distilled student included.
    ``point_scale`` (``teacher.point_scale``): see
    :meth:`~detkd.models.keypoint_teachers.base.KeypointTeacher.set_point_scale`.

    Raises:
        ConfigError: ``point_scale`` other than 1 for a teacher that gives cell logits itself.
    """
    teacher, origin = load_keypoint_teacher(checkpoint, weights)
    if float(point_scale) != 1.0:
        if not hasattr(teacher, "set_point_scale"):
            raise ConfigError(f"teacher.point_scale {point_scale}: '{origin}' gives 65-bin cell logits itself; "
                              "the option is for teachers with per-pixel scores (disk, aliked-*). Leave it at 1.")
        try:
            teacher.set_point_scale(float(point_scale))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        origin += f", point scale {float(point_scale):g}"
    return teacher, origin


def check_teacher_points(teacher: nn.Module, origin: str, points: PointSampling | None) -> None:
    """Refuse a teacher whose descriptors the run would not see.

    A SuperPoint-family model with ``descriptor_stride`` 4 (e.g. ``student-fast-l-mnn``, as a teacher assistant)
    reads each point's descriptor from its stride-8 map and its stride-4 features; its dense map holds that
    descriptor at the cell centres only. The ``point_descriptor_*`` terms read it where its ``extract`` does, so
    such a teacher needs them (``points``: :func:`point_sampling`).

    Raises:
        ValueError: a stride-4 teacher and no point term.
    """
    stride = getattr(teacher, "conf", {}).get("descriptor_stride", 8)
    if stride != 8 and points is None:
        raise ValueError(
            f"Teacher '{origin}' describes at stride {stride}, and this run compares descriptors at the cell centres "
            "only: its descriptors between them would not be learnt. Keep a point term on (loss.point_descriptor_cosine "
            "or loss.point_descriptor_relation above 0, with points.keypoints or points.grid_stride above 0), or use "
            "the model as student.init")


def descriptor_space_meta(teacher: nn.Module) -> dict[str, str]:
    """``{"descriptor_space": NAME}`` when ``teacher``'s descriptors are those of a named teacher family (a model
    distilled from ALIKED or DISK, e.g. a teacher assistant), so that its students find LightGlue weights too."""
    space = getattr(teacher, "descriptor_space", None)
    return {"descriptor_space": space} if isinstance(space, str) else {}


#: Dotted config keys of files and folders, written absolute into the run's ``config.yaml`` so that
#: ``--config out/config.yaml`` repeats the run from any folder; a model's name stays a name.
RUN_PATH_KEYS = ("teacher.checkpoint", "teacher.weights", "student.init", "data.images", "teacher_cache.folder",
                 "eval.images", "eval.hpatches")


def is_model_name(value: str) -> bool:
    """Whether a ``teacher.checkpoint`` / ``student.init`` value names a model (shipped or a teacher family)."""
    from detkd.models.keypoint_teachers.loader import is_teacher_name
    from detkd.models.pretrained import is_shipped_model_name

    return is_teacher_name(value) or is_shipped_model_name(value)


def training_stream(config: dict[str, Any]) -> tuple[UnlabeledImageStream, str]:
    """The training images of ``config['data']`` and a one-line description of them."""
    data = config["data"]
    for key in ("height", "width"):
        if data[key] % 8:
            raise ValueError(f"data.{key} must be a multiple of 8 (SuperPoint cells), got {data[key]}")
    crop = CropConfig(
        height=data["height"], width=data["width"], scale=tuple(data["scale"]),
        homography=config_section(HomographyConfig, data["homography"], "data.homography"),
        homography_probability=data["homography_probability"],
    )
    photometric = config_section(PhotometricConfig, data["photometric"], "data.photometric")
    kwargs = {"crop": crop, "photometric": photometric, "seed": config["train"]["seed"], "cache": data["cache"]}
    if data["images"]:
        stream, scan = UnlabeledImageStream.from_folder(data["images"], **kwargs)
        return stream, f"{data['images']}: {scan.summary()}"
    photos = [builtin_photo(name) for name in BUILTIN_TRAIN_PHOTOS]
    return UnlabeledImageStream(photos, **kwargs), f"scikit-image photos ({len(photos)}, training split)"


def build_device(accelerator: str) -> torch.device:
    """The device of an accelerator setting (auto | cpu | cuda | gpu): a GPU for auto/cuda/gpu when there is one.

    Used for the teacher while a cache is built and for evaluation (OpenCV models stay on the CPU)."""
    return torch.device("cuda" if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available() else "cpu")


def point_sampling(config: dict[str, Any]) -> PointSampling | None:
    """The points of ``config['points']`` when a ``loss.point_descriptor_*`` term uses them, else None."""
    points = PointSampling.from_dict(config["points"])
    weights = KeypointDistillWeights.from_dict(config["loss"])
    used = any(getattr(weights, name) > 0 for name in
               ("point_descriptor_cosine", "point_descriptor_relation", "point_descriptor_matching"))
    return points if used and points.active else None


def build_teacher_cache(
    config: dict[str, Any], teacher: nn.Module, stream: UnlabeledImageStream, progress: bool = True
) -> CacheBuildReport:
    """Compute and store the teacher's outputs for every view of ``config['teacher_cache']`` not yet cached."""
    cache_cfg, train = config["teacher_cache"], config["train"]
    if not cache_cfg["folder"]:
        raise ValueError("teacher_cache.folder is not set: name the folder for the teacher's outputs")
    return build_keypoint_teacher_cache(
        teacher, stream, cache_cfg["folder"], views_per_image=cache_cfg["views_per_image"],
        descriptors=cache_cfg["descriptors"], batch_size=cache_cfg["batch_size"],
        device=build_device(train["accelerator"]), num_workers=train["num_workers"], progress=progress,
        points=point_sampling(config),
    )


def cached_training_stream(
    config: dict[str, Any], teacher: nn.Module, stream: UnlabeledImageStream
) -> CachedTeacherViews:
    """The stream that reads teacher outputs from ``config['teacher_cache']['folder']``."""
    cache_cfg = config["teacher_cache"]
    cache = open_keypoint_cache(cache_cfg["folder"], teacher, stream, cache_cfg["descriptors"],
                                points=point_sampling(config))
    return CachedTeacherViews(stream, cache, cache_cfg["views_per_image"])


@dataclass
class DistillationOutcome:
    """Where a distillation run left its results (``metrics`` is empty in processes other than rank 0)."""

    out_dir: Path
    student_path: Path
    metrics: dict[str, dict[str, float]]
    table: str


def run_distillation(config: dict[str, Any], out_dir: str | Path, resume: bool = False) -> DistillationOutcome:
    """Train a student on the teacher's outputs, then evaluate both and write the report files.

    Writes into ``out_dir``: ``config.yaml`` (resolved), ``student.pt``, ``checkpoints/``,
    ``history.jsonl``, ``tensorboard/``, ``metrics.json``, ``metrics.md``, ``loss_curves.png``,
    ``matches.png``, and with ``student.init`` ``student_init.json`` (the starting file's digest at step 0,
    :func:`~detkd.tasks.keypoint_students.record_student_start`). With ``teacher_cache.folder`` set, missing
    teacher outputs are computed first and training reads them from the cache instead of running the teacher.
    """
    out = Path(out_dir)
    config = copy.deepcopy(config)
    rank_zero = is_launch_rank_zero()
    teacher, origin = load_teacher(config["teacher"]["checkpoint"], config["teacher"]["weights"],
                                   config["teacher"]["point_scale"])
    points = point_sampling(config)
    check_teacher_points(teacher, origin, points)
    train_cfg = TrainConfig.from_dict(config["train"])
    torch.manual_seed(train_cfg.seed)  # torch seeds each process at random: the student's start must not be
    student_cfg = config["student"]
    structure = {k: student_cfg[k] for k in STUDENT_STRUCTURE_KEYS}
    if student_cfg.get("init"):
        structure = structure_for_init(student_cfg["variant"], structure, student_cfg["init"])
    student = build_student(teacher, student_cfg["variant"], student_cfg["batch_norm"], **structure)
    init = initialise_student(student, student_cfg["init"]) if student_cfg.get("init") else None
    stream, data_text = training_stream(config)
    if train_cfg.num_workers > 0:
        stream.preload()  # decode once here; forked workers share the pixels
    loss = KeypointDistillationLoss(KeypointDistillWeights.from_dict(config["loss"]))
    say = rank_zero_say(rank_zero)
    resuming = resume and Trainer(train_cfg, out).has_checkpoint()
    # a resumed run started from the file as it was at step 0 (recorded), not from what the name holds now
    started_from = (read_student_start(out).get("description", init) if resuming else init) if init else None

    say(f"teacher : {origin} ({count_parameters(teacher):,} parameters)")
    trained_only = count_parameters(student) - inference_parameter_count(student)
    say(f"student : {student_description(student, student_cfg['variant'])} ({count_parameters(student):,} parameters"
        + (f", {trained_only:,} of them in branches merged away for inference" if trained_only else "") + ")"
        + (f", initial weights from {started_from}" if started_from else "")
        + (" (at step 0; the checkpoint holds the weights trained since)" if started_from and resuming else ""))
    say(f"images  : {data_text}")
    open_run_folder(config, train_cfg, out, "views", rank_zero, resume, path_keys=RUN_PATH_KEYS, is_name=is_model_name)
    start: dict[str, str] = {}
    if init and rank_zero:  # the file the student started from, as it was at step 0
        start = record_student_start(out, student_cfg["init"], init, resuming=resuming)

    train_data: UnlabeledImageStream | CachedTeacherViews = stream
    if config["teacher_cache"]["folder"]:
        if rank_zero:  # the other processes wait for it when they meet in the trainer
            say(build_teacher_cache(config, teacher, stream, progress=train_cfg.progress).summary())
        train_data = cached_training_stream(config, teacher, stream)
    second_view = config_section(HomographyConfig, config["data"]["homography"], "data.homography")
    task = KeypointDistillationTask(None if config["teacher_cache"]["folder"] else teacher, student, loss, train_data,
                                    points, second_view)  # the task keeps it only when the loss needs it
    result = Trainer(train_cfg, out).fit(task, resume=resume)
    if not result.is_global_zero:
        return DistillationOutcome(out, out / "student.pt", {}, "")
    student_path = save_keypoint_model(
        student.eval(), out / "student.pt",
        meta={"teacher": origin, "steps": result.step, "variant": config["student"]["variant"],
              **({"init": start.get("description", init)} if init else {}),
              **({"init_sha256": start["sha256"]} if start else {}), **descriptor_space_meta(teacher)},
    )
    print(f"student saved to {student_path} after {result.step} steps ({result.seconds:.0f} s this session)")

    from detkd.tasks.keypoint_report import evaluate_and_report, teacher_at_student_scale
    from detkd.viz.curves import plot_loss_curves

    if Path(result.history).exists():  # none after 0 steps (a model given by student.init, evaluated as it is)
        plot_loss_curves(result.history, out / "loss_curves.png", title="Key-point distillation")
    metrics, table = evaluate_and_report(
        {"teacher": teacher_at_student_scale(teacher, student), "student": student},
        {**config["eval"], "device": config["train"]["accelerator"]}, out,  # evaluated where it trained
    )
    return DistillationOutcome(out, student_path, metrics, table)
