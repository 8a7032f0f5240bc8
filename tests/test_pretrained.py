"""The teacher that ships inside the package loads and detects."""

from __future__ import annotations

import numpy as np
import torch

from detkd.data.images import builtin_photo
from detkd.models.pretrained import DEFAULT_KEYPOINT_TEACHER_CARD, default_keypoint_teacher_path
from detkd.models.superpoint import count_parameters
from detkd.models.weights import load_keypoint_model


def test_shipped_teacher_is_a_full_superpoint_that_finds_points_on_a_photo():
    teacher = load_keypoint_model(default_keypoint_teacher_path())
    assert teacher.conf["channels"] == (64, 64, 128, 128) and teacher.conf["descriptor_dim"] == 256
    assert count_parameters(teacher) > 1_300_000
    photo = builtin_photo("camera")  # 512x512
    out = teacher.extract(torch.from_numpy(np.ascontiguousarray(photo))[None, None], max_keypoints=200)
    keypoints, descriptors = out["keypoints"][0], out["descriptors"][0]
    assert 20 <= len(keypoints) <= 200
    torch.testing.assert_close(descriptors.norm(dim=-1), torch.ones(len(keypoints)))
    assert DEFAULT_KEYPOINT_TEACHER_CARD.exists()
