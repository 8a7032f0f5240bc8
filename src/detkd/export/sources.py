"""Turn what a user types as MODEL into a model: a shipped model, a variant name, a file or a run folder.

* a shipped model (:data:`detkd.models.pretrained.SHIPPED_MODELS`): ``default`` (the key-point
  teacher), ``student-fast-s`` ... (``detkd keypoints models`` lists them);
* a key-point variant (``superpoint``, ``tiny``, ``fast-s`` ...): that variant with random weights (seeded;
  enough to measure speed and size, meaningless for accuracy);
* a detector name of :func:`detkd.models.detection.list_detectors` (e.g. ``retinanet_tiny_fpn``),
  random weights, :data:`DETECTOR_CLASSES` classes (``NAME:K`` for ``K`` classes);
* a key-point teacher name of :data:`~detkd.models.keypoint_teachers.TEACHER_NAMES` (``disk``,
  ``aliked-t16``, ``aliked-n16``, ``aliked-n32``, ``xfeat``): kornia's network with the published
  weights from kornia's download cache (:func:`~detkd.models.keypoint_teachers.load_keypoint_teacher`;
  offline, one line names the file and the folder). These run in PyTorch only
  (:attr:`ModelSource.exportable`);
* a ``.pt`` / ``.pth`` file: a detkd key-point model file or checkpoint, SuperPoint weights in
  any format :func:`detkd.models.weights.load_keypoint_model` reads, or a detkd detector file
  or detection checkpoint (:func:`detkd.models.detection.load_detector`), or the weight file of
  a key-point teacher family above, recognised from its keys;
* a run folder: its ``student.pt``;
* an ``.onnx`` file exported by detkd (only ONNX Runtime can run it).

``NAME=MODEL`` gives the model a display name (:func:`split_model_name`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from detkd.models.pretrained import SHIPPED_MODELS, is_shipped_model_name, shipped_model_path
from detkd.models.superpoint import VARIANTS, create_model

RANDOM_INIT_SEED = 0
DETECTOR_CLASSES = 80  # classes of a detector built by name (COCO's count): speed barely depends on it


@dataclass
class ModelSource:
    """A model named on the command line.

    Attributes:
        name: display name (table row).
        origin: where it came from, in words.
        task: ``"keypoints"`` or ``"detection"``.
        module: the PyTorch model in eval mode on the CPU; ``None`` for an ONNX file.
        onnx_path: the ONNX file when the source is one.
        path: the file the model was read from, resolved (absolute, symlinks followed): the
            shipped file, a run folder's ``student.pt``, the ``.pt``/``.onnx`` file; ``None``
            for a model built by name with random weights. ``detkd report`` matches bench rows
            to its runs by this path.
    """

    name: str
    origin: str
    task: str
    module: nn.Module | None = None
    onnx_path: Path | None = None
    path: Path | None = None

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None

    @property
    def exportable(self) -> bool:
        """Whether detkd's ONNX exporter takes the module: not an ONNX file, and not a key-point
        teacher of another family (:class:`~detkd.models.keypoint_teachers.KeypointTeacher`: DISK,
        ALIKED, XFeat), whose own ``extract`` runs in PyTorch only."""
        from detkd.models.keypoint_teachers.base import KeypointTeacher

        return self.module is not None and not isinstance(self.module, KeypointTeacher)


def split_model_name(spec: str | Path) -> tuple[str | None, str]:
    """``NAME=MODEL`` -> ``(NAME, MODEL)``; ``(None, spec)`` when ``spec`` names no row.

    Split at the first ``=``, unless ``spec`` is an existing path or what comes before the ``=``
    holds a path separator (``runs/lr=0.1/student.pt`` is a path, not a name). An empty name
    (``=MODEL``) gives ``(None, MODEL)``.
    """
    text = str(spec)
    if "=" not in text or Path(text).exists():
        return None, text
    name, model = text.split("=", 1)
    if "/" in name or "\\" in name:
        return None, text
    return name or None, model


def load_model_source(spec: str | Path, name: str | None = None) -> ModelSource:
    """Resolve one MODEL argument (see the module doc).

    Raises:
        FileNotFoundError: a path that does not exist, or a run folder without ``student.pt``.
        ValueError: a name that is neither ``default``, a variant nor a path.
        TeacherWeightsUnavailable: a teacher name whose weights are not in kornia's cache, offline.
    """
    text = str(spec)
    if name is None:
        name, text = split_model_name(text)
    if is_shipped_model_name(text):
        path = shipped_model_path(text)
        role = SHIPPED_MODELS[text].role
        return ModelSource(name or ("teacher" if text == "default" else text),
                           f"detkd's shipped key-point {role} ({path.name})", "keypoints",
                           _keypoint_model(path), path=path.resolve())
    if text in VARIANTS:
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_INIT_SEED)
            model = create_model(text, batch_norm=True).eval()
        return ModelSource(name or text, f"'{text}' variant, random weights (seed {RANDOM_INIT_SEED}, BatchNorm)",
                           "keypoints", model)
    detector = _detector_by_name(text, name)
    if detector is not None:
        return detector
    from detkd.models.keypoint_teachers import loader

    if loader.is_teacher_name(text):
        try:
            weights = loader.fetch_weights(text)
        except loader.TeacherWeightsUnavailable as err:  # here the file is given as a MODEL, not with a flag
            message = str(err).replace("--teacher-weights FILE", f"MODEL {text}=FILE")
            raise loader.TeacherWeightsUnavailable(message) from None
        teacher, origin = loader.load_keypoint_teacher(text, weights=weights)
        return ModelSource(name or text, origin, "keypoints", teacher, path=weights.resolve())
    path = Path(text)
    if not path.exists():
        if path.suffix or "/" in text:
            raise FileNotFoundError(f"Model file '{path}' does not exist")
        raise ValueError(
            f"Unknown model '{text}': give a shipped model ({', '.join(SHIPPED_MODELS)}; 'default' is the "
            f"key-point teacher), a variant "
            f"({', '.join(VARIANTS)}), a key-point teacher ({', '.join(loader.TEACHER_NAMES)}), a detector name "
            "(detkd.models.detection.list_detectors(), e.g. "
            "retinanet_tiny_fpn), a .pt/.pth model file, a run folder or an .onnx export"
        )
    if path.is_dir():
        student = path / "student.pt"
        if not student.exists():
            raise FileNotFoundError(f"Run folder '{path}' has no student.pt; pass the model file itself")
        return _from_file(student, name or path.name)
    if path.suffix.lower() == ".onnx":
        from detkd.export.onnx import read_metadata

        task = read_metadata(path).get("task", "keypoints")
        return ModelSource(name or path.stem, f"ONNX file {path}", task, None, path, path=path.resolve())
    return _from_file(path, name or path.stem)


def _detector_by_name(text: str, name: str | None) -> ModelSource | None:
    """A randomly initialised detector for ``NAME`` or ``NAME:K``; None if ``text`` names none."""
    from detkd.models.detection import create_detector, list_detectors

    variant, _, classes = text.partition(":")
    if variant not in list_detectors():
        return None
    if classes and not classes.isdigit():
        raise ValueError(f"'{text}': the number of classes after ':' must be an integer, e.g. {variant}:20")
    k = int(classes) if classes else DETECTOR_CLASSES
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        adapter = create_detector(variant, k).eval()
    return ModelSource(name or variant, f"detector '{variant}' ({k} classes), random weights (seed {RANDOM_INIT_SEED})",
                       "detection", adapter)


def _from_file(path: Path, name: str) -> ModelSource:
    """A key-point model or a detector, told apart by the file's ``format`` entry; a key-point
    teacher of another family by its keys."""
    if _is_detector_file(path):
        from detkd.models.detection import load_detector

        return ModelSource(name, f"{path}", "detection", load_detector(path).eval(), path=path.resolve())
    if _is_teacher_file(path):
        from detkd.models.keypoint_teachers import load_keypoint_teacher

        teacher, origin = load_keypoint_teacher(str(path))
        return ModelSource(name, origin, "keypoints", teacher, path=path.resolve())
    return ModelSource(name, f"{path}", "keypoints", _keypoint_model(path), path=path.resolve())


def _keypoint_model(path: Path) -> nn.Module:
    """A detkd key-point model file in eval mode, with the ``descriptor_space`` its file names (a student
    distilled from DISK or ALIKED keeps its teacher's descriptors: ``--matcher lightglue`` reads that)."""
    from detkd.models.keypoint_teachers.loader import with_descriptor_space
    from detkd.models.weights import load_keypoint_model

    return with_descriptor_space(load_keypoint_model(path).eval(), path)


def _is_detector_file(path: Path) -> bool:
    from detkd.models.detection.weights import DETECTOR_FORMAT

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable files get the key-point loader's clear error
        return False
    if not isinstance(obj, dict):
        return False
    return obj.get("format") == DETECTOR_FORMAT or "detector_config" in obj


def _is_teacher_file(path: Path) -> bool:
    """Whether ``path`` holds DISK, ALIKED or XFeat weights (recognised from their keys)."""
    from detkd.models.keypoint_teachers.loader import FAMILIES, read_state

    try:
        state = read_state(path)
    except Exception:  # noqa: BLE001 - unreadable files get the key-point loader's clear error
        return False
    return any(family.recognise(state) for family in FAMILIES)
