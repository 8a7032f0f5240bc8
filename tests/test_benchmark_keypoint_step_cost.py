"""benchmarks/keypoint_step_cost.py: two loss settings timed on the same batches from the same student."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import load_benchmark_script

cost = load_benchmark_script("keypoint_step_cost")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loss_settings_are_the_learning_curves_key_value_options_named_by_their_flag(tmp_path, monkeypatch):
    assert cost.parse_loss(["point_descriptor_matching=1", "point_descriptor_relation=0.3"], "--other") == {
        "point_descriptor_matching": 1.0, "point_descriptor_relation": 0.3}
    monkeypatch.setattr(sys, "argv", ["keypoint_step_cost.py", "--quick", "--out", str(tmp_path), "--base", "matching"])
    with pytest.raises(SystemExit, match="--base takes KEY=VALUE with KEY in .*, got 'matching'"):
        cost.main()
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_quick_run_writes_both_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["keypoint_step_cost.py", "--quick", "--out", str(tmp_path),
                                      "--other", "point_descriptor_matching=1"])
    cost.main()
    record = json.loads((tmp_path / "keypoint_step_cost_quick.json").read_text())
    assert record["settings"] == {"base": {}, "other": {"point_descriptor_matching": 1}}
    assert record["median_ms"]["base"] > 0 and record["median_ms"]["other"] > 0
    table = (tmp_path / "keypoint_step_cost_quick.md").read_text()
    assert "| other | point_descriptor_matching=1 |" in table and "Smoke test" in table
