"""``detkd bench --matcher``: the match of one pair beside the extract (issue 18, item 5).

Random networks only: what is checked is which rows get a time, that the time is of the match the
row's own features give (counted by hand with the same matcher), and the table's pair column.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from detkd.cli.main import main
from detkd.evaluation.keypoints import extract_features
from detkd.evaluation.matching import mutual_nearest_neighbours
from detkd.export.bench import BenchReport, BenchRow, LatencyStats, benchmark
from detkd.export.match_bench import bench_pair, matching_latency
from detkd.export.sources import ModelSource, load_model_source
from detkd.models.superpoint import create_model
from detkd.models.weights import save_keypoint_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def student(dim: int = 256, space: str | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("fast-s", descriptor_dim=dim).eval()
    model.descriptor_space = space
    return model


def test_the_pair_is_the_bench_photo_and_a_seeded_warp_of_it():
    pair, again = bench_pair(64, 80), bench_pair(64, 80)
    assert pair.image0.shape == pair.image1.shape == (1, 64, 80)
    assert torch.equal(pair.image1, again.image1) and not torch.equal(pair.image0, pair.image1)
    assert not torch.allclose(pair.homography, torch.eye(3, dtype=pair.homography.dtype))


def test_mutual_nearest_neighbour_rows_time_the_match_of_their_own_features():
    pair = bench_pair(64, 80)
    model = student()
    timing = matching_latency({"s": model, "onnx": None}, "mnn", pair, 50, repeats=3, warmup=1)
    kpts0, desc0 = extract_features(model, pair.image0, 50, "cpu")
    kpts1, desc1 = extract_features(model, pair.image1, 50, "cpu")
    assert len(kpts0) <= 50 and len(kpts1) <= 50
    assert timing.matches == {"s": len(mutual_nearest_neighbours(desc0, desc1))}
    assert timing.latency["s"].runs == 3 and timing.latency["s"].median_ms > 0
    assert timing.matcher == "mutual nearest neighbours"
    assert set(timing.skipped) == {"onnx"} and "no PyTorch model" in timing.skipped["onnx"]
    with pytest.raises(ValueError, match="Unknown matcher 'flann'"):
        matching_latency({"s": model}, "flann", pair, 50)


def test_lightglue_times_the_rows_it_reads_and_names_why_not_for_the_others(random_aliked_lightglue):
    pair = bench_pair(64, 96)
    models = {"from-aliked": student(128, "aliked-n16"), "superpoint-like": student(256, None)}
    timing = matching_latency(models, "lightglue", pair, 40, repeats=2, warmup=0, matcher_weights=str(random_aliked_lightglue))
    assert set(timing.latency) == {"from-aliked"} and timing.latency["from-aliked"].runs == 2
    assert timing.matcher.startswith("LightGlue (aliked: ") and str(random_aliked_lightglue) in timing.matcher
    assert "cannot match 'superpoint-like'" in timing.skipped["superpoint-like"]
    assert "no DISK or ALIKED teacher" in timing.skipped["superpoint-like"]
    # no row fits: nothing is loaded, so no weights are needed
    none_fit = matching_latency({"sp": student()}, "lightglue", pair, 40, repeats=1, warmup=0)
    assert none_fit.latency == {} and none_fit.matcher == "lightglue (no row fits)"


def test_table_adds_match_and_pair_columns_by_hand():
    def row(name, extract_ms, match_ms, count):
        return BenchRow(name, name, "keypoints", 10, 1.0, None, latency={"pytorch-cpu": LatencyStats(extract_ms, extract_ms, 3)},
                        match=None if match_ms is None else LatencyStats(match_ms, match_ms, 3), match_count=count)
    report = BenchReport([row("teacher", 300.0, 800.0, 412), row("student", 20.0, 150.0, 380), row("other", 15.0, None, None)],
                         240, 320, 1, 3, 1, {"cpu": "test"}, {"cpu_count": 2}, matcher="LightGlue (aliked: f.pth)")
    table = report.table()
    assert "| match ms | pair ms (2 extracts + match) |" in table
    teacher = next(line for line in table.splitlines() if line.startswith("| teacher"))
    student_line = next(line for line in table.splitlines() if line.startswith("| student"))
    other = next(line for line in table.splitlines() if line.startswith("| other"))
    assert "| 800.0 (412 matches) | 1400.0 |" in teacher  # 2 x 300 + 800
    assert "| 150.0 (380 matches) | 190.0 |" in student_line  # 2 x 20 + 150
    assert "| n/a | n/a |" in other
    assert "with LightGlue (aliked: f.pth)" in report.conditions()
    plain = BenchReport(report.rows, 240, 320, 1, 3, 1, {"cpu": "test"}, {"cpu_count": 2})
    assert "match ms" not in plain.table() and "match ms" not in plain.conditions()


def test_benchmark_times_the_match_of_key_point_rows_only(tmp_path):
    rows = [ModelSource("student", "random", "keypoints", student()), load_model_source("fcos_tiny_fpn")]
    report = benchmark(rows, 128, 128, threads=1, repeats=2, warmup=0, memory=False, gpu=False, max_keypoints=30,
                       work_dir=tmp_path, matcher="mnn", log=None)
    keypoints, detector = report.rows
    assert keypoints.match.runs == 2 and keypoints.match_count is not None and keypoints.match_count <= 30
    assert detector.match is None and any("match ms n/a for fcos_tiny_fpn" in note for note in report.notes)
    assert report.matcher == "mutual nearest neighbours, 30 points at most"
    assert report.to_dict()["rows"][0]["match"]["runs"] == 2


def test_a_students_file_gives_bench_its_teachers_descriptor_space(tmp_path):
    path = save_keypoint_model(student(128), tmp_path / "student.pt", meta={"teacher": "aliked-n16 (x.pth)", "steps": 1})
    assert load_model_source(str(path)).module.descriptor_space == "aliked-n16"
    assert load_model_source("student-fast-s").module.descriptor_space == "aliked-n16"
    assert load_model_source("student-fast-s-disk").module.descriptor_space == "disk"


def test_cli_bench_matcher_weights_go_with_lightglue():
    result = CliRunner().invoke(main, ["bench", "fast-s", "--matcher", "mnn", "--matcher-weights", "x.pth"])
    assert result.exit_code != 0 and "--matcher-weights goes with --matcher lightglue" in result.output
    ok = CliRunner().invoke(main, ["bench", "fast-s", "--height", "64", "--width", "64", "--threads", "1",
                                   "--repeats", "1", "--warmup", "0", "--no-memory", "--matcher", "mnn"])
    assert ok.exit_code == 0, ok.output
    assert "match ms" in ok.output and "matches)" in ok.output
