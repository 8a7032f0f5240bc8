"""detkd report: one self-contained page from real (tiny) distillation runs."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from detkd.cli.main import main
from detkd.config import merge_config
from detkd.data.images import builtin_photo
from detkd.report import build_report, read_run
from detkd.tasks.keypoints import DEFAULT_DISTILL_CONFIG, run_distillation


pytestmark = pytest.mark.usefixtures("one_torch_thread")


IMG_SRC = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny real runs: the shipped teacher distilled into tiny for 3 steps at 64x80, two seeds."""
    root = tmp_path_factory.mktemp("report")
    photos, heldout = root / "photos", root / "heldout"
    for folder, names in ((photos, ("camera", "astronaut")), (heldout, ("coffee",))):
        folder.mkdir()
        for name in names:
            pixels = (builtin_photo(name) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).resize((120, 96)).save(folder / f"{name}.png")
    folders = []
    for seed in (0, 1):
        config = merge_config(DEFAULT_DISTILL_CONFIG, {
            "student": {"variant": "tiny"},
            "data": {"images": str(photos), "height": 64, "width": 80},
            "train": {"steps": 3, "batch_size": 2, "log_every": 1, "checkpoint_every": 3, "progress": False,
                      "accelerator": "cpu", "seed": seed},
            "eval": {"images": str(heldout), "pairs_per_image": 1, "height": 64, "width": 80, "max_keypoints": 100},
        })
        folders.append(run_distillation(config, root / f"tiny_seed{seed}").out_dir)
    return folders


def test_report_embeds_decodable_pngs_tables_and_configs(runs, tmp_path):
    result = build_report(runs, tmp_path / "report.html", latency_size=(64, 80), threads=1, repeats=2, log=None)
    page = result.html.read_text()
    images = IMG_SRC.findall(page)
    titles = [title for title, _ in images]
    # 2 scatters (HA@3, MMA@3) + 2 loss-curve plots + match plots (the teacher's drawn once: same file)
    assert sum("against latency" in t for t in titles) == 2
    assert sum(t.startswith("Loss curves") for t in titles) == 2
    assert sum("matches student" in t for t in titles) == 2 and sum("matches teacher" in t for t in titles) == 1
    for title, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as png:
            png.verify()
            assert png.format == "PNG" and png.size[0] > 100, title
    assert "src=\"http" not in page and "src=\"file" not in page  # nothing outside the file

    # The metrics table holds the numbers of each run's metrics.json, in the table's format.
    metrics = json.loads((runs[0] / "metrics.json").read_text())["models"]
    first_rows = re.findall(r"<tr><td>(teacher|tiny_seed0 \(tiny\))</td>(.*?)</tr>", page)
    assert [name for name, _ in first_rows] == ["teacher", "tiny_seed0 (tiny)"]
    for name, cells in first_rows:
        values = metrics["teacher" if name == "teacher" else "student"]
        assert f"<td>{values['mma@3']:.3f}</td>" in cells
        assert f"<td>{values['localization_error']:.2f}</td>" in cells
    assert "<td>124,323</td>" in page  # tiny's parameters (with BatchNorm)
    assert page.count("<tr><td>teacher") == 1  # same teacher, same pairs: one row
    assert "steps: 3" in page and "variant: tiny" in page  # each run's config

    markdown = result.markdown.read_text()
    assert "| tiny_seed1 (tiny) |" in markdown and "```yaml" in markdown
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (result.markdown.parent / link).exists(), link


def test_report_uses_latencies_from_a_bench_file(runs, tmp_path):
    bench = {"height": 480, "width": 640, "threads": 2, "rows": [
        {"name": "teacher", "params": 1, "gflops": 52.0, "latency": {"onnxruntime-cpu": {"median_ms": 400.0}},
         "speedup_vs_first": {"onnxruntime-cpu": 1.0}},
        {"name": "tiny_seed0", "params": 1, "gflops": 10.0, "latency": {"onnxruntime-cpu": {"median_ms": 100.0}},
         "speedup_vs_first": {"onnxruntime-cpu": 4.0}}]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    result = build_report(runs[:1], tmp_path / "r.html", bench_json=tmp_path / "bench.json", log=None)
    assert [row.latency_ms for row in result.rows] == [400.0, 100.0]
    page = result.html.read_text()
    assert "onnxruntime-cpu latency from 480x640 benchmark" in page and "<td>4.00x</td>" in page


def test_report_cli_and_bad_folders(runs, tmp_path):
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(main, ["report", str(runs[0]), "--out", str(out), "--latency-size", "32", "48",
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert out.exists() and out.with_suffix(".md").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(main, ["report", str(empty), "--out", str(out)])
    assert bad.exit_code == 2 and "is not a detkd run folder" in bad.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken/metrics.json' is not valid JSON"):
        read_run(broken)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package 'chromium')")
def test_chromium_renders_every_image(runs, tmp_path):
    result = build_report(runs, tmp_path / "report.html", latency_size=(32, 48), threads=1, repeats=1, log=None)
    page = result.html.read_text()
    expected = len(IMG_SRC.findall(page))
    # Count, in the browser, the images that decoded (naturalWidth > 0) once the page has loaded.
    probe = ("<script>window.addEventListener('load', () => { document.title = 'loaded=' + "
             "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length; });</script>")
    checked = tmp_path / "probe.html"
    checked.write_text(page.replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", checked.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert f"<title>loaded={expected}</title>" in dom, dom[:300]
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,2400", f"--screenshot={shot}", result.html.as_uri()],
                   capture_output=True, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200)
    assert (pixels.std(axis=(0, 1)) > 10).all()  # not a blank page: figures and text drawn


def test_report_of_a_detection_run(tmp_path):
    """A real (1-step) detector distillation run: COCO metrics, detections drawn, latency at its size."""
    import torch

    from detkd.data.detection import write_synthetic_dataset
    from detkd.models.detection import create_detector, save_detector
    from detkd.tasks.detection import DEFAULT_DISTILL_CONFIG as DETECT_DISTILL, run_detection_distillation

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", num_train=4, num_val=2, size=128, seed=0)
    torch.manual_seed(0)
    names = ["circle", "triangle", "rectangle", "star", "cross"]
    save_detector(create_detector("retinanet_tiny_fpn", 5, class_names=names), tmp_path / "teacher.pt")
    config = merge_config(DETECT_DISTILL, {
        "teacher": {"checkpoint": str(tmp_path / "teacher.pt")}, "student": {"name": "retinanet_tiny_fpn"},
        "data": {"config": str(data_yaml), "height": 128, "width": 128},
        "train": {"steps": 1, "batch_size": 2, "log_every": 1, "progress": False, "accelerator": "cpu",
                  "warmup_steps": 0, "precision": "32-true"},
        "eval": {"plot_images": 1},
    })
    run = run_detection_distillation(config, tmp_path / "det_run").out_dir
    result = build_report([run], tmp_path / "det.html", threads=1, repeats=1, log=None)
    assert [r.label for r in result.rows] == ["teacher", "det_run (retinanet_tiny_fpn)"]
    assert all(r.latency_ms is not None and r.params for r in result.rows)
    page = result.html.read_text()
    metrics = json.loads((run / "metrics.json").read_text())["models"]
    assert "<th>mAP</th>" in page and f"<td>{metrics['student']['ap50']:.3f}</td>" in page
    titles = [title for title, _ in IMG_SRC.findall(page)]
    assert any("detections" in t for t in titles) and any("against latency" in t for t in titles)


def test_report_matches_real_bench_rows_by_model_file_and_reports_the_rest(runs, tmp_path):
    """Issue 17.1: bench names rows after files ('student', 'teacher (input x1.5)'), report after run
    folders; rows are matched by resolved model file, and a row matched by neither is printed and noted."""
    from detkd.export.bench import benchmark

    student = runs[0] / "student.pt"
    bench = benchmark(["default", str(student), "tiny"], 32, 48, threads=1, repeats=1, warmup=0, memory=False,
                      gpu=False, work_dir=tmp_path / "work", log=None)
    bench_json = bench.write_json(tmp_path / "bench.json")
    out = tmp_path / "r.html"
    cli = CliRunner().invoke(main, ["report", str(runs[0]), "--bench", str(bench_json), "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    # The random 'tiny' row is no model of the report: said on the terminal, not dropped silently.
    assert "bench row 'tiny'" in cli.output and "matches no model of this report" in cli.output

    result = build_report(runs[:1], out, bench_json=bench_json, log=None)
    teacher, tiny_seed0 = result.rows
    rows = json.loads(bench_json.read_text())["rows"]
    latency = {r["name"]: r["latency"]["onnxruntime-cpu"]["median_ms"] for r in rows}
    assert teacher.bench_row.startswith("teacher (input x") and teacher.latency_ms == latency[teacher.bench_row]
    assert tiny_seed0.bench_row == "student" and tiny_seed0.latency_ms == latency["student"]
    assert len(result.notes) == 1 and "bench row 'tiny'" in result.notes[0]
    page = out.read_text()
    assert "<h2>Accuracy against latency</h2>" in page and page.count("against latency\" src=") == 2
    assert "<th>report row</th>" in page and "<td>tiny_seed0 (tiny)</td></tr>" in page
    assert "matches no model of this report" in page and "matches no model" in result.markdown.read_text()
    assert [r.name for r in bench.rows][1] == "student" and bench.rows[1].path == str(student.resolve())
    assert bench.rows[2].path is None  # built by name: no file


def test_report_notes_unmatched_report_rows_and_missing_scatter(runs, tmp_path):
    """A report row without bench row, and a bench row without report row, are printed and on the page;
    with no latency at all the accuracy-against-latency section says why it is empty."""
    only_teacher = {"height": 64, "width": 80, "threads": 1, "rows": [  # an older bench file: no paths
        {"name": "teacher (input x1.5)", "params": 1, "latency": {"onnxruntime-cpu": {"median_ms": 50.0}}}]}
    (tmp_path / "teacher.json").write_text(json.dumps(only_teacher))
    said: list[str] = []
    result = build_report(runs[:1], tmp_path / "a.html", bench_json=tmp_path / "teacher.json", log=said.append)
    assert [r.latency_ms for r in result.rows] == [50.0, None]  # the name without ' (input x1.5)' matches
    assert len(result.notes) == 1 and "'tiny_seed0 (tiny)'" in result.notes[0] and "has no row in the bench file" \
        in result.notes[0]
    assert any(line.startswith("note: 'tiny_seed0 (tiny)'") for line in said)
    assert "has no row in the bench file" in (tmp_path / "a.html").read_text()

    unrelated = {"height": 64, "width": 80, "threads": 1, "rows": [
        {"name": "other", "path": "/nowhere/other.pt", "latency": {"onnxruntime-cpu": {"median_ms": 5.0}}}]}
    (tmp_path / "other.json").write_text(json.dumps(unrelated))
    result = build_report(runs[:1], tmp_path / "b.html", bench_json=tmp_path / "other.json", log=None)
    assert all(r.latency_ms is None for r in result.rows) and len(result.notes) == 3
    page = result.html.read_text()
    assert ("<h2>Accuracy against latency</h2><p class=\"warning\">Not drawn: no model of the table has a latency"
            in page)
    assert "bench row &#x27;other&#x27; (/nowhere/other.pt) matches no model" in page
    assert "<td>none (not matched)</td>" in page


def test_report_latency_pads_sizes_the_model_does_not_take(runs, tmp_path):
    """Issue 17.2: a run evaluated at 120x160 with the shipped teacher (input_scale 1.5 -> 180x240, not
    whole 8-pixel cells): the latency input is padded as extract() pads, instead of failing."""
    from detkd.export.onnx import graph_for
    from detkd.tasks.keypoints import load_teacher

    run = tmp_path / "eval120"
    shutil.copytree(runs[0], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"].update(height=120, width=160)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert read_run(run).eval_size() == (120, 160)
    result = build_report([run], tmp_path / "r.html", threads=1, repeats=1, log=None)
    assert all(r.latency_ms is not None for r in result.rows)
    assert "at 120x160" in result.html.read_text() and "teacher padded to 128x160" in result.html.read_text()

    from detkd.report.page import latency_batch

    graph = graph_for(load_teacher(None)[0])
    assert graph.size_multiple == 16 and tuple(latency_batch(graph, 120, 160).shape) == (1, 1, 128, 160)
