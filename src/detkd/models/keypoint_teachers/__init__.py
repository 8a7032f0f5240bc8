"""Key-point teachers of other families behind SuperPoint's interface: DISK, ALIKED, XFeat.

One small adapter file per family (:mod:`.disk`, :mod:`.aliked`, :mod:`.xfeat`) implements
:class:`~detkd.models.keypoint_teachers.base.KeypointTeacher`; :func:`load_keypoint_teacher`
turns ``--teacher`` into a model.
"""

from detkd.models.keypoint_teachers.base import (
    KeypointTeacher,
    cell_distribution_logits,
    descriptors_at_cell_centres,
)
from detkd.models.keypoint_teachers.loader import (
    TEACHER_NAMES,
    TeacherWeightsUnavailable,
    fetch_weights,
    is_teacher_name,
    load_keypoint_teacher,
)

__all__ = [
    "KeypointTeacher", "TEACHER_NAMES", "TeacherWeightsUnavailable", "cell_distribution_logits",
    "descriptors_at_cell_centres", "fetch_weights", "is_teacher_name", "load_keypoint_teacher",
]
