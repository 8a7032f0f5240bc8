"""Checkpoints that detkd trained itself and ships inside the package."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"

#: SuperPoint-family teacher trained by ``detkd keypoints train-teacher`` (see its model card).
DEFAULT_KEYPOINT_TEACHER = ASSETS / "superpoint_detkd.pt"
DEFAULT_KEYPOINT_TEACHER_CARD = ASSETS / "superpoint_detkd.md"


def default_keypoint_teacher_path() -> Path:
    """Path of the shipped key-point teacher.

    Raises:
        FileNotFoundError: this build ships none; the message says how to get a teacher.
    """
    if not DEFAULT_KEYPOINT_TEACHER.exists():
        raise FileNotFoundError(
            "This detkd build ships no default key-point teacher "
            f"(expected '{DEFAULT_KEYPOINT_TEACHER}'). Pass --teacher with a SuperPoint checkpoint "
            "(Magic Leap superpoint_v1.pth, rpautrat superpoint_v6_from_tf.pth or a detkd model), "
            "or train one with 'detkd keypoints train-teacher'."
        )
    return DEFAULT_KEYPOINT_TEACHER
