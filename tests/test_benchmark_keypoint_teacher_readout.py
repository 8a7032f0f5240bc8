"""benchmarks/keypoint_teacher_readout.py: a teacher's own map, read with a student's post-processing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import load_benchmark_script
from detkd.models.keypoint_ops import CELL, detect_keypoints
from detkd.models.keypoint_teachers import disk

readout = load_benchmark_script("keypoint_teacher_readout")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_small_point_scale_reads_the_per_pixel_probabilities_as_they_are():
    """At c = 1/64 no cell is divided by its sum: the points are those of DISK's per-pixel probabilities
    ``softmax over the cell x sigmoid`` themselves, with the threshold scaled by 64."""
    torch.manual_seed(0)
    teacher = disk.build("disk").eval()
    image = F.avg_pool2d(torch.rand(1, 1, 68, 100), 5, stride=1)  # 64x96
    found = readout.TeacherMapReadAsStudent(teacher, 1 / 64, nms_radius=2, threshold=1e-4).extract(image, max_keypoints=40)
    with torch.no_grad():
        heat, _ = teacher.net.heatmap_and_dense_descriptors(image.expand(-1, 3, -1, -1))
    cells = F.pixel_unshuffle(heat, CELL)
    probabilities = F.pixel_shuffle(cells.softmax(dim=1) * cells.sigmoid(), CELL)[:, 0]  # (1, H, W)
    expected, _ = detect_keypoints(probabilities, nms_radius=2, threshold=64e-4, border=4, max_keypoints=40,
                                   subpixel_radius=2)
    assert len(found["keypoints"][0]) == 40
    torch.testing.assert_close(found["keypoints"][0], expected[0], atol=1e-3, rtol=1e-3)
    assert found["descriptors"][0].shape == (40, 128)
    torch.testing.assert_close(found["descriptors"][0].norm(dim=-1), torch.ones(40))
    assert teacher.point_scale == 1.0  # put back: the teacher's own extract shares it in the benchmark


def test_cell_sums_are_the_sums_of_the_per_pixel_probabilities():
    torch.manual_seed(0)
    teacher = disk.build("disk").eval()
    image = F.avg_pool2d(torch.rand(1, 1, 36, 52), 5, stride=1)[0]  # (1, 32, 48)
    sums = readout.cell_sums(teacher.set_point_scale(0.5), [image])
    with torch.no_grad():
        heat, _ = teacher.net.heatmap_and_dense_descriptors(image[None].expand(-1, 3, -1, -1))
    cells = F.pixel_unshuffle(heat, CELL)
    expected = (cells.softmax(dim=1) * cells.sigmoid()).sum(dim=1).flatten()  # 4 x 6 cells
    torch.testing.assert_close(sums, expected, atol=1e-3, rtol=1e-3)
    assert teacher.point_scale == 0.5  # put back


def test_a_readout_row_is_matched_by_its_teachers_lightglue():
    """--matcher lightglue: each row describes its points with the teacher's head, so it keeps the teacher's
    descriptor space and size, and the LightGlue weights that read the teacher read the row."""
    from detkd.evaluation.lightglue import lightglue_kind, lightglue_misfit

    teacher = disk.build("disk").eval()
    row = readout.TeacherMapReadAsStudent(teacher, 0.25, nms_radius=4)
    assert (row.descriptor_space, row.descriptor_dim) == ("disk", 128)
    assert lightglue_misfit(row) is None and lightglue_kind(row) == lightglue_kind(teacher)
