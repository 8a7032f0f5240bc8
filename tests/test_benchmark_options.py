"""Options of the key-point benchmark scripts that name a student's structure."""

from __future__ import annotations

import pytest

from conftest import load_benchmark_script

learning_curve = load_benchmark_script("learning_curve")
student_speed = load_benchmark_script("student_speed")


def test_learning_curve_student_options_are_yaml_values_of_structural_keys():
    parsed = learning_curve.parse_student_options(["head_channels=64", "channels=[8, 16, 32, 48]", "encoder=fast"])
    assert parsed == {"head_channels": 64, "channels": [8, 16, 32, 48], "encoder": "fast"}
    assert learning_curve.parse_student_options([]) == {}
    for bad in ("lr=0.1", "head_channels", "head_channels="):
        with pytest.raises(SystemExit, match="--student-option takes KEY=VALUE"):
            learning_curve.parse_student_options([bad])


def test_student_speed_variant_specs():
    assert student_speed.parse_variant("fast-s") == ("fast-s", {})
    assert student_speed.parse_variant("fast-s:head_channels=64,descriptor_dim=128") == \
        ("fast-s", {"head_channels": 64, "descriptor_dim": 128})
    with pytest.raises(SystemExit, match="unknown variant 'fast-xl'"):
        student_speed.parse_variant("fast-xl")
    with pytest.raises(SystemExit, match="'nms_radius=2' in 'fast-s:nms_radius=2' is not KEY=VALUE"):
        student_speed.parse_variant("fast-s:nms_radius=2")
    model = student_speed.superpoint_family(["fast-s:head_channels=64,descriptor_dim=128"])[
        "fast-s:head_channels=64,descriptor_dim=128"]
    assert model.conf["head_channels"] == 64 and model.conf["descriptor_dim"] == 128
    assert model.conf["channels"] == (8, 16, 32, 32) and model.conf["max_keypoints"] == 1000
