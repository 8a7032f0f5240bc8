"""Object-detector training and distillation as engine tasks, and the whole jobs a user runs.

* :class:`DetectionTrainTask`: one detector on labelled images, its family's own losses summed
  (teachers, and baseline students).
* :class:`DetectionDistillTask`: a frozen teacher and a student see the same batch; the loss is
  the student's ground-truth loss (weight ``distill.gt_weight``, on by default) plus the
  distiller's ``"distill"`` (:mod:`detkd.distill.detection`). With ``label_free`` the images carry
  no boxes and only the distiller teaches. The student and the distiller's adapters are
  optimised and checkpointed together. With ``teacher_cache.folder`` set, the teacher's outputs
  are computed once per fixed view and come with the batch (:mod:`detkd.cache.detection`); the
  task then has no teacher and the distiller does not know the difference.

:func:`run_detection_training` and :func:`run_detection_distillation` read ``data.yaml``, train
with the shared engine, save the model, evaluate it on the validation split (COCO metrics
through pycocotools, per-class AP) and write the report files beside the resolved config.
Baseline and distilled students read the same ``train`` section, so with one config they get
the same schedule and compare fairly.

The data and training streams (teacher cache included) are :mod:`detkd.tasks.detection_data`,
building and checking the models :mod:`detkd.tasks.detection_models`, prediction, validation and
the report files :mod:`detkd.tasks.detection_eval`; their names are importable from here too.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkd.cache.detection import CachedDetectorViews, cached_teacher_fields, decode_detector_outputs
from detkd.config import ConfigError
from detkd.data.detection import BoxViewConfig, ColourJitterConfig, unpad_targets
from detkd.distill.detection import DETECTION_DISTILLERS, DetectionDistiller, create_detection_distiller
from detkd.engine import StreamDataset, Task, TrainConfig, Trainer
from detkd.engine.distributed import is_launch_rank_zero
from detkd.models.detection import (
    DetectorAdapter,
    DetectorOutputs,
    read_detector_extra,
    save_detector,
)
from detkd.tasks.detection_predict import check_eval_config
from detkd.tasks.run_folder import open_run_folder, rank_zero_say

# Data and evaluation live in their own modules; their names stay importable from here.
from detkd.tasks.detection_data import (  # noqa: F401 - re-exported
    DetectionData,
    build_teacher_cache,
    cache_device,
    cached_training_stream,
    distillation_stream,
    labelled_stream,
    read_detection_data,
    unlabeled_stream,
)
from detkd.tasks.detection_models import (  # noqa: F401 - re-exported
    IncompatibleModelsError,
    build_detector,
    check_class_lists,
    check_compatible,
    describe_detector,
    first_batch,
    initialise_detector,
    load_teacher,
)
from detkd.tasks.detection_eval import (  # noqa: F401 - re-exported
    EvaluationReport,
    Validator,
    detection_validator,
    draw_examples,
    plot_detection_validation,
    eval_size,
    evaluate_and_report,
    predict_set,
)

log = logging.getLogger(__name__)


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a config dataclass (the values a user sees in the YAML file)."""
    defaults = {}
    for f in fields(cls):
        value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        defaults[f.name] = list(value) if isinstance(value, tuple) else value
    return defaults


_DATA_DEFAULTS: dict[str, Any] = {
    "config": None,  # data.yaml: format (coco | voc | yolo), class names, train / val (/ unlabeled) parts
    "skip_bad": False,  # leave out bad annotations (counted and named) instead of stopping
    "unlabeled": None,  # image folders for label_free distillation; null: data.yaml's 'unlabeled', else the train images
    "tile_size": None,  # cut large images (orthophotos) into tiles of this many pixels first; null: whole images
    "tile_overlap": 0,  # pixels shared by neighbouring tiles
    "height": 512,  # training view size, pixels (multiples of 128, the detectors' largest stride)
    "width": 512,
    "view": _dataclass_defaults(BoxViewConfig),  # random zoom / crop / flips; boxes move with the pixels
    "colour": _dataclass_defaults(ColourJitterConfig),  # photometric jitter; probability 0 switches it off
    "max_boxes": 100,  # boxes per image the batches have room for
    "cache": True,  # keep decoded images in memory
}

_TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 3000, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-4, "lr_decay": 0.1,
    "lr_decay_every": 2000, "warmup_steps": 100, "grad_clip": 10.0, "ema_decay": 0.0, "checkpoint_every": 500,
    "val_every": 0, "log_every": 10, "num_workers": 0, "seed": 0, "accelerator": "auto", "devices": 1,
    "num_nodes": 1, "strategy": "auto", "precision": "auto", "progress": True,
    # channels-last (NHWC): 1.08-1.18x faster CPU training steps (benchmarks/results/channels_last_training.md)
    "sync_batchnorm": True, "channels_last": True, "compile": False,
}

_EVAL_DEFAULTS: dict[str, Any] = {
    "split": "val",  # val | test of data.yaml
    "height": None,  # letterbox size of evaluated images, pixels (multiples of 128); null: the training size
    "width": None,
    "batch_size": 8,
    "score_threshold": 0.05,  # detections below are dropped before COCO evaluation
    "nms_iou": 0.5,
    "max_detections": "auto",  # per image (COCO maxDets); auto: max(100, 1.5 x the most boxes in one evaluated image)
    "plot_images": 6,  # validation images drawn into detections.png
    "plot_score_threshold": 0.3,
}

#: Every option of ``detkd detect train``; ``configs/detect_train.yaml`` mirrors it.
DEFAULT_TRAIN_CONFIG: dict[str, Any] = {
    "model": {
        "name": "retinanet_resnet50_fpn",  # a registered detector (detkd.models.detection.list_detectors)
        "overrides": None,  # options of the variant, e.g. {fpn_channels: 128, anchor_size: 16}
        # a detkd detector file (another run's model.pt) of the same detector whose weights start this one, e.g. a
        # model trained on synthetic shapes; tensors of another shape (the class layer of another class list) start fresh
        "init": None,
    },
    "data": copy.deepcopy(_DATA_DEFAULTS),
    "train": dict(_TRAIN_DEFAULTS),
    "eval": dict(_EVAL_DEFAULTS),
}

#: Every option of ``detkd detect distill``; ``configs/detect_distill.yaml`` mirrors it.
DEFAULT_DISTILL_CONFIG: dict[str, Any] = {
    "teacher": {
        "checkpoint": None,  # model.pt of 'detkd detect train', or any detkd detector file / checkpoint
    },
    "student": {
        "name": "retinanet_mobilenet_v3_fpn",  # a registered detector
        "overrides": None,  # options of the variant
    },
    "distill": {
        "method": "gid",  # gid | hint | pkd | cwd; options of each in its own section below
        "gt_weight": 1.0,  # weight of the student's own ground-truth loss; 0: distillation alone
        "label_free": False,  # train on images without boxes, distillation losses only
        **{method: _dataclass_defaults(config_cls) for method, (_, config_cls) in DETECTION_DISTILLERS.items()},
    },
    "data": copy.deepcopy(_DATA_DEFAULTS),
    "teacher_cache": {
        "folder": None,  # teacher outputs stored here, missing ones computed at the start; null: teacher runs every step
        "views_per_image": 4,  # fixed augmented views per image in the cache (the only ones trained on); cycled through
        "batch_size": 8,  # images per teacher forward while the cache is built
    },
    "train": dict(_TRAIN_DEFAULTS),
    "eval": dict(_EVAL_DEFAULTS),
}


#: Paths that a run's config.yaml holds absolute, so that ``--config run/config.yaml`` works from any folder.
RUN_PATH_KEYS = ("data.config", "data.unlabeled", "model.init", "teacher.checkpoint", "teacher_cache.folder")


# ------------------------------------------------------------------------------------ tasks
class DetectionTrainTask(Task):
    """Supervised training of one detector: the sum of its family's own losses.

    Batches are :class:`~detkd.data.detection.DetectionStream` samples collated by the engine:
    ``image (B, 3, H, W)`` in ``[0, 1]``, padded ``boxes (B, M, 4)`` xyxy pixels, ``labels (B, M)``,
    ``num_boxes (B,)``.
    """

    def __init__(self, model: DetectorAdapter, data: StreamDataset, validator: Validator | None = None) -> None:
        super().__init__()
        self.model = model
        self.data = data
        self.validator = validator

    def validate(self) -> dict[str, float]:
        return self.validator(self.model) if self.validator is not None else {}

    def trainable(self) -> nn.Module:
        return self.model

    def train_dataset(self) -> StreamDataset:
        return self.data

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.model(batch["image"], unpad_targets(batch))
        losses = dict(outputs.losses)
        return {"loss": torch.stack(list(losses.values())).sum(), **losses}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"detector_config": self.model.config, "class_names": self.model.class_names}


class DetectionDistillTask(Task):
    """A frozen teacher and a student on the same batch; loss = ``gt_weight`` x ground truth + distillation.

    Args:
        teacher: the teacher detector (frozen here: eval mode, no gradients, run under ``no_grad``);
            ``None`` when ``data`` is a :class:`~detkd.cache.detection.CachedDetectorViews`, whose
            batches carry the teacher's outputs (``teacher_<field>`` keys).
        student: the detector being trained.
        distiller: a :class:`~detkd.distill.detection.DetectionDistiller`; its adapters train
            with the student.
        data: the training stream; samples with ``boxes`` (labelled) or ``image`` only (label-free).
        gt_weight: weight of the student's supervised loss; 0 (or a label-free stream) leaves it out.
        validator: the student's periodic validation (``train.val_every``), e.g. :func:`detection_validator`.

    The logged terms: ``loss``, ``gt`` (weighted sum of the student's own losses), each
    weighted distillation term, their sum ``distill``, and the distiller's diagnostics.
    """

    def __init__(
        self,
        teacher: DetectorAdapter | None,
        student: DetectorAdapter,
        distiller: DetectionDistiller,
        data: StreamDataset,
        gt_weight: float = 1.0,
        validator: Validator | None = None,
    ) -> None:
        super().__init__()
        self.validator = validator
        if gt_weight < 0:
            raise ConfigError(f"distill.gt_weight must be >= 0, got {gt_weight}")
        if teacher is None and not isinstance(data, CachedDetectorViews):
            raise ValueError(
                "DetectionDistillTask needs a teacher, or a CachedDetectorViews stream whose batches carry the "
                "teacher's cached outputs"
            )
        self.teacher = teacher
        # one module holds what is optimised and saved: load_detector finds the student under 'student.'
        self.parts = nn.ModuleDict({"student": student, "distiller": distiller})
        self.data = data
        self.gt_weight = float(gt_weight)
        if teacher is not None:
            self.freeze("teacher")

    @property
    def student(self) -> DetectorAdapter:
        return self.parts["student"]  # type: ignore[return-value]

    @property
    def distiller(self) -> DetectionDistiller:
        return self.parts["distiller"]  # type: ignore[return-value]

    def trainable(self) -> nn.Module:
        return self.parts

    def train_dataset(self) -> StreamDataset:
        return self.data

    def validate(self) -> dict[str, float]:
        return self.validator(self.student) if self.validator is not None else {}

    def teacher_outputs(self, batch: dict[str, torch.Tensor]) -> DetectorOutputs:
        """The teacher's outputs on ``batch["image"]``: decoded from the batch's cached fields, or computed without a graph."""
        cached = cached_teacher_fields(batch)
        if cached:
            if not isinstance(self.data, CachedDetectorViews):
                raise ValueError("The batch carries cached teacher outputs but the task's stream is not a cached one")
            return decode_detector_outputs(cached, self.data.layout)
        if self.teacher is None:
            raise ValueError("This task has no teacher and the batch carries no cached teacher outputs")
        # no_grad, not inference_mode: the distiller keeps these tensors for its backward pass
        with torch.no_grad():
            return self.teacher(batch["image"])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        targets = unpad_targets(batch) if "boxes" in batch else None
        teacher_outputs = self.teacher_outputs(batch)
        use_gt = self.gt_weight > 0 and targets is not None
        student_outputs = self.student(images, targets if use_gt else None)
        terms = self.distiller(teacher_outputs, student_outputs, targets)
        loss = terms["distill"]
        result: dict[str, torch.Tensor] = {}
        if use_gt:
            gt = self.gt_weight * torch.stack(list(student_outputs.losses.values())).sum()
            loss = loss + gt
            result["gt"] = gt
        return {"loss": loss, **result, **terms}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"detector_config": self.student.config, "class_names": self.student.class_names}


# ------------------------------------------------------------------------------------ jobs
@dataclass
class DetectionOutcome:
    """Where a run left its results (``report`` is ``None`` without an evaluation split or off rank 0)."""

    out_dir: Path
    model_path: Path
    report: EvaluationReport | None
    steps: int = 0
    seconds: float = 0.0


def _trainer(train_cfg: TrainConfig, out: Path, resume: bool) -> Trainer:
    """The engine for ``out``; refuses an existing run before its ``config.yaml`` is overwritten."""
    trainer = Trainer(train_cfg, out)
    trainer.refuse_existing_run(resume)
    return trainer


def run_detection_training(
    config: dict[str, Any], out_dir: str | Path, resume: bool = False, data: DetectionData | None = None
) -> DetectionOutcome:
    """Train a detector on labelled images, save ``model.pt``, evaluate it on the validation split.

    Writes into ``out_dir``: ``config.yaml`` (resolved), ``model.pt`` (:func:`save_detector`),
    ``checkpoints/last.pt``, ``history.jsonl``, ``tensorboard/``, ``loss_curves.png``,
    ``metrics.json``, ``metrics.md``, ``detections.png``. ``data`` replaces reading
    ``config['data']['config']`` (sets built in memory, e.g. by a benchmark).
    """
    out = Path(out_dir)
    config = copy.deepcopy(config)
    check_eval_config(config["eval"])
    rank_zero = is_launch_rank_zero()
    say = rank_zero_say(rank_zero)
    data = data or read_detection_data(config["data"], config["eval"]["split"])
    train_cfg = TrainConfig.from_dict(config["train"])
    torch.manual_seed(train_cfg.seed)  # the initial weights depend on the seed alone
    model = build_detector(config["model"], data.class_names)
    stream = labelled_stream(config, data.train)
    trainer = _trainer(train_cfg, out, resume)
    say(f"model   : {describe_detector(model)}")
    if config["model"].get("init") and not (resume and trainer.checkpoint_path.exists()):  # a resume has its weights
        say(f"init    : {initialise_detector(model, config['model']['init'])}")
    say(f"data    : {data.description}")
    open_run_folder(config, train_cfg, out, "images", rank_zero, resume, path_keys=RUN_PATH_KEYS)
    validator = detection_validator(data.val, config["eval"], eval_size(config["eval"], config["data"]))
    result = trainer.fit(DetectionTrainTask(model, stream, validator), resume=resume)
    if not result.is_global_zero:
        return DetectionOutcome(out, out / "model.pt", None, result.step, result.seconds)
    model_path = save_detector(model.eval(), out / "model.pt", extra=_model_extra(config, data, result.step))
    print(f"model saved to {model_path} after {result.step} steps ({result.seconds:.0f} s this session)")
    _plot_losses(result.history, out, f"Training {model.name}", None)
    report = None
    if data.val is not None:
        report = evaluate_and_report({"model": model}, data.val, config["eval"], eval_size(config["eval"], config["data"]), out)
    return DetectionOutcome(out, model_path, report, result.step, result.seconds)


def run_detection_distillation(
    config: dict[str, Any], out_dir: str | Path, resume: bool = False, data: DetectionData | None = None
) -> DetectionOutcome:
    """Distil the teacher into a new student, save ``student.pt``, evaluate both on the validation split.

    Before training, the class lists are compared and one batch goes through teacher, student and
    distiller, so that incompatible models fail with a clear message. With ``teacher_cache.folder``
    set, missing teacher outputs are computed first and training reads them from the cache
    (``teacher_cache.views_per_image`` fixed views per image) instead of running the teacher. Writes the files of
    :func:`run_detection_training` (with ``student.pt`` for ``model.pt``; ``detections.png`` shows
    the student and ``detections_teacher.png`` the teacher).
    """
    out = Path(out_dir)
    config = copy.deepcopy(config)
    check_eval_config(config["eval"])
    rank_zero = is_launch_rank_zero()
    say = rank_zero_say(rank_zero)
    distill_cfg = config["distill"]
    method = distill_cfg["method"]
    if method not in DETECTION_DISTILLERS:
        raise ConfigError(f"Unknown distillation method '{method}'; valid: {', '.join(DETECTION_DISTILLERS)}")
    teacher = load_teacher(config["teacher"]["checkpoint"])
    data = data or read_detection_data(config["data"], config["eval"]["split"])
    data_origin = str(config["data"]["config"] or data.train.source)
    check_class_lists(teacher, data.class_names, str(config["teacher"]["checkpoint"]), data_origin)
    train_cfg = TrainConfig.from_dict(config["train"])
    torch.manual_seed(train_cfg.seed)  # same seed, same initial student as the baseline run
    student = build_detector(config["student"], data.class_names)
    distiller = create_detection_distiller(
        method, teacher.fpn_channels, student.fpn_channels, match_anchors=student.match_anchors,
        **(distill_cfg[method] or {}),
    )
    label_free = bool(distill_cfg["label_free"])
    stream, images_text = distillation_stream(config, data)
    terms = check_compatible(teacher, student, distiller, first_batch(stream), method)
    gt_weight = 0.0 if label_free else float(distill_cfg["gt_weight"])
    trainer = _trainer(train_cfg, out, resume)

    say(f"teacher : {describe_detector(teacher)} from {config['teacher']['checkpoint']}")
    say(f"student : {describe_detector(student)}")
    say(f"method  : {method} ({', '.join(terms)})" + (f" + ground truth x{gt_weight:g}" if gt_weight else ", no ground truth"))
    say(f"data    : {data.description}\nimages  : {images_text}")
    open_run_folder(config, train_cfg, out, "images", rank_zero, resume, path_keys=RUN_PATH_KEYS)
    train_data: StreamDataset = stream
    cached = bool(config["teacher_cache"]["folder"])
    if cached:
        if rank_zero:  # the other processes wait for it when they meet in the trainer
            say(build_teacher_cache(config, teacher, stream, data.class_names, progress=train_cfg.progress).summary())
        train_data = cached_training_stream(config, teacher, stream, data.class_names)
    validator = detection_validator(data.val, config["eval"], eval_size(config["eval"], config["data"]))
    task = DetectionDistillTask(None if cached else teacher, student, distiller, train_data, gt_weight=gt_weight,
                                validator=validator)
    result = trainer.fit(task, resume=resume)
    if not result.is_global_zero:
        return DetectionOutcome(out, out / "student.pt", None, result.step, result.seconds)
    extra = {**_model_extra(config, data, result.step), "teacher": str(config["teacher"]["checkpoint"]), "method": method}
    student_path = save_detector(student.eval(), out / "student.pt", extra=extra)
    print(f"student saved to {student_path} after {result.step} steps ({result.seconds:.0f} s this session)")
    _plot_losses(result.history, out, f"Distilling {teacher.name} into {student.name} ({method})",
                 ["loss", "gt", *terms])
    report = None
    if data.val is not None:
        size = eval_size(config["eval"], config["data"])
        report = evaluate_and_report({"teacher": teacher, "student": student}, data.val, config["eval"], size, out)
    return DetectionOutcome(out, student_path, report, result.step, result.seconds)


def _model_extra(config: dict[str, Any], data: DetectionData, steps: int) -> dict[str, Any]:
    return {
        "steps": steps,
        "data": str(config["data"]["config"] or data.train.source),
        "train_size": [int(config["data"]["height"]), int(config["data"]["width"])],
        **({"init": str(config["model"]["init"])} if config.get("model", {}).get("init") else {}),
    }


def _plot_losses(history: Path, out: Path, title: str, terms: list[str] | None) -> None:
    """``loss_curves.png`` from ``history.jsonl``; ``validation.png`` too when the run validated as it trained."""
    from detkd.viz.curves import loss_terms, plot_loss_curves, read_history_records

    validation = out / "validation.jsonl"
    if validation.exists():
        plot_detection_validation({title: validation}, out / "validation.png", "Validation")
    records = read_history_records(history) if history.exists() else []
    if not records:
        return
    if terms is not None:
        present = set(loss_terms(records))
        terms = [t for t in terms if t in present]
    plot_loss_curves(records, out / "loss_curves.png", title=title, terms=terms)


def stored_train_size(path: str | Path) -> tuple[int, int] | None:
    """The training size recorded in a detector file by these jobs, or ``None``."""
    try:
        size = read_detector_extra(path).get("train_size")
    except Exception:  # noqa: BLE001 - a checkpoint or foreign file: no stored size
        return None
    return (int(size[0]), int(size[1])) if isinstance(size, list) and len(size) == 2 else None
