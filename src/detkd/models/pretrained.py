"""Key-point models that detkd trained itself and ships inside the package, by name.

Each shipped model is one ``.pt`` file (a detkd model file, loaded with ``weights_only=True``)
and a model card (``.md``: teacher, data, steps, held-out numbers) in ``detkd/assets``. The
names work wherever a key-point model is accepted: ``detkd.Predictor``, ``keypoints evaluate
--model/--teacher``, ``keypoints match --model``, ``keypoints distill --teacher``, ``export`` and
``bench``. ``detkd keypoints models`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ShippedModel:
    """One model in ``detkd/assets``.

    Attributes:
        name: what a user types (``default``, ``student-fast-m`` ...).
        role: ``teacher`` or ``student``.
        file: the model file's name in ``detkd/assets``.
        summary: one line: architecture, what it was trained from, on what.
    """

    name: str
    role: str
    file: str
    summary: str

    @property
    def path(self) -> Path:
        return ASSETS / self.file

    @property
    def origin(self) -> str:
        """Where the model came from, in words, for banners and table notes."""
        if self.name == "default":
            return f"detkd's shipped teacher ({self.file})"
        return f"detkd's shipped {self.role} '{self.name}' ({self.file})"

    @property
    def card(self) -> Path:
        """The model card beside the file (same stem, ``.md``)."""
        return self.path.with_suffix(".md")


SHIPPED_MODELS: dict[str, ShippedModel] = {
    model.name: model
    for model in (
        ShippedModel("default", "teacher", "superpoint_detkd.pt",
                     "SuperPoint (1.3M parameters) trained from nothing by 'detkd keypoints train-teacher' "
                     "(synthetic shapes, then homographic adaptation on photos)"),
        ShippedModel("student-fast-m", "student", "student_fast_m.pt",
                     "fast-m student (0.32M parameters, stride-2 stem) distilled from the shipped teacher "
                     "on 58 unlabelled photos and aerial tiles"),
        ShippedModel("student-fast-s", "student", "student_fast_s_aliked.pt",
                     "fast-s student (79K parameters: 64-channel heads, 128-d descriptors with a stride-4 term) distilled from ALIKED-n16 "
                     "on 58 unlabelled photos and aerial tiles"),
        ShippedModel("student-fast-s-mnn", "student", "student_fast_s_mnn.pt",
                     "fast-s student with a context pyramid (211K parameters, still over 2x faster than XFeat on a "
                     "CPU) distilled from ALIKED-n16, then fine-tuned with cross-view matching and a heavier detector "
                     "term, then on 480x640 views with the teacher's ranking kept (point scale 0.25): the small "
                     "student for mutual nearest neighbours, 90-97% of ALIKED-n16 on held-out pairs"),
        ShippedModel("student-fast-l-mnn", "student", "student_fast_l_mnn.pt",
                     "fast-l student (0.79M parameters, about ALIKED-n16's size, stride-4 descriptors, a context "
                     "pyramid, 12x faster than ALIKED-n16 on a CPU) distilled from ALIKED-n16, then fine-tuned with "
                     "cross-view matching, then 2000 steps on 480x640 views with the teacher's ranking kept (point "
                     "scale 0.25): 99 / 100 / 94% of ALIKED-n16's MMA@3 / HA@1 / HA@3 on held-out pairs; with "
                     "input_scale 1.5 (5x faster than ALIKED-n16) 98 / 135 / 103%"),
        ShippedModel("student-fast-s-disk", "student", "student_fast_s_disk.pt",
                     "fast-s student (55K parameters, 128-d descriptors with a stride-4 term) distilled from DISK "
                     "on 58 unlabelled photos and aerial tiles, then fine-tuned with cross-view matching (a drop-in "
                     "for DISK's LightGlue, and better with mutual nearest neighbours)"),
    )
}

#: SuperPoint-family teacher trained by ``detkd keypoints train-teacher`` (see its model card).
DEFAULT_KEYPOINT_TEACHER = SHIPPED_MODELS["default"].path
DEFAULT_KEYPOINT_TEACHER_CARD = SHIPPED_MODELS["default"].card


def is_shipped_model_name(spec: object) -> bool:
    """Whether ``spec`` is the name of a model that ships in the package."""
    return isinstance(spec, str) and spec in SHIPPED_MODELS


def shipped_model_path(name: str) -> Path:
    """Path of the shipped model ``name``.

    Raises:
        KeyError: ``name`` is not a shipped model (the message lists them).
        FileNotFoundError: this build lacks the file; the message says how to get a model.
    """
    if name not in SHIPPED_MODELS:
        raise KeyError(f"'{name}' is not a shipped model; shipped: {', '.join(SHIPPED_MODELS)}")
    path = SHIPPED_MODELS[name].path
    if not path.exists():
        raise FileNotFoundError(
            f"This detkd build does not ship the model '{name}' (expected '{path}'). Pass a model file "
            "instead (a SuperPoint checkpoint such as Magic Leap's superpoint_v1.pth, or a detkd model), "
            "train a teacher with 'detkd keypoints train-teacher' or distil a student with 'detkd keypoints distill'."
        )
    return path


def default_keypoint_teacher_path() -> Path:
    """Path of the shipped key-point teacher.

    Raises:
        FileNotFoundError: this build ships none; the message says how to get a teacher.
    """
    return shipped_model_path("default")
