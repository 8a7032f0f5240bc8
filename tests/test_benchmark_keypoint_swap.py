"""benchmarks/keypoint_swap.py: a model's points with another's descriptors; swapped with itself, nothing changes."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark_script
from detkd.models.keypoint_teachers import disk
from detkd.models.superpoint import create_model

swap = load_benchmark_script("keypoint_swap")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 1, 68, 100), 5, stride=1)  # 64x96, smooth enough to have peaks


def test_student_descriptors_at_its_own_points_are_its_extract(image):
    """Teacher half = the student itself: its points, described by its own ``describe``, are its ``extract``."""
    torch.manual_seed(1)
    student = create_model("fast-s", descriptor_stride=4, descriptor_dim=16).eval()
    own = student.extract(image, max_keypoints=50)
    swapped = swap.TeacherPointsStudentDescriptors(student, student).extract(image, max_keypoints=50)
    assert len(own["keypoints"][0]) > 0
    torch.testing.assert_close(swapped["keypoints"][0], own["keypoints"][0])
    torch.testing.assert_close(swapped["descriptors"][0], own["descriptors"][0], atol=1e-5, rtol=1e-4)


def test_teacher_descriptors_at_its_own_points_are_its_extract(image):
    """Student half = the teacher: DISK described at its own key points gives what its ``extract`` gives,
    so the swapped rows measure the other model's points, not a difference in how descriptors are read."""
    torch.manual_seed(2)
    teacher = disk.build("disk").eval()
    own = teacher.extract(image, max_keypoints=50)
    swapped = swap.StudentPointsTeacherDescriptors(teacher, teacher).extract(image, max_keypoints=50)
    assert len(own["keypoints"][0]) > 0
    torch.testing.assert_close(swapped["keypoints"][0], own["keypoints"][0])
    torch.testing.assert_close(swapped["descriptors"][0], own["descriptors"][0], atol=1e-5, rtol=1e-4)
