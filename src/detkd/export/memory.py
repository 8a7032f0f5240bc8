"""Peak memory of one inference, measured in a fresh process.

CPU: ``tracemalloc`` does not see torch's or ONNX Runtime's allocations, and a process's peak
RSS only ever grows, so each model is run in its own interpreter
(``python -m detkd.export.memory``): load, one warm-up inference, reset the kernel's peak-RSS
mark (``/proc/self/clear_refs``), one inference, report ``VmHWM - VmRSS`` measured just before
it. The number is the extra resident memory one inference needs (activations, workspaces),
weights excluded. glibc's mmap threshold is fixed at 64 KiB in that process, so that blocks
freed after the warm-up go back to the system instead of being reused unseen. ONNX Runtime runs without its memory arena there, so that memory it keeps
from the warm-up is not taken for free memory. Linux only; elsewhere the result is ``None``.

GPU: ``torch.cuda.max_memory_allocated`` minus what was allocated before the inference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

CPU_METHOD = ("peak RSS growth of one inference after a warm-up run, fresh process per model and runtime "
              "(Linux VmHWM reset via /proc/self/clear_refs, glibc mmap threshold fixed at 64 KiB; ONNX Runtime "
              "without memory arena); weights excluded")
GPU_METHOD = "torch.cuda.max_memory_allocated during one inference minus memory allocated before it"


def rss_peak_supported() -> bool:
    """True where the kernel's peak-RSS mark can be read and reset (Linux)."""
    try:
        Path("/proc/self/clear_refs").open("w").close()
        return "VmHWM" in Path("/proc/self/status").read_text()
    except OSError:
        return False


def cpu_peak_mb(kind: str, path: str | Path, height: int, width: int, channels: int = 1,
                threads: int = 1, timeout: float = 300.0, task: str = "keypoints") -> float | None:
    """Peak extra MiB of one CPU inference of a model file, in a fresh process.

    Args:
        kind: ``"pytorch"`` (``path`` a detkd model file of ``task`` ``"keypoints"`` or
            ``"detection"``) or ``"onnxruntime"`` (an ``.onnx`` file).
    Returns:
        MiB, or ``None`` where the measurement is not supported or the child failed.
    """
    if not rss_peak_supported():
        return None
    args = json.dumps({"kind": kind, "path": str(path), "height": height, "width": width,
                       "channels": channels, "threads": threads, "task": task})
    # A fixed mmap threshold makes glibc return large blocks to the system when they are freed,
    # so the warm-up run's memory is not silently reused by the measured run.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
    result = subprocess.run([sys.executable, "-m", "detkd.export.memory", args], capture_output=True,
                            text=True, timeout=timeout, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return None
    return json.loads(lines[-1]).get("peak_mb")


def gpu_peak_mb(run: object) -> float:
    """Peak extra MiB of CUDA memory while ``run()`` executes (PyTorch allocations only)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()  # type: ignore[operator]
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _child(spec: dict) -> float:
    """Runs in the fresh process: load, warm up, measure one inference."""
    import numpy as np

    from detkd.export.onnx import photo_batch

    batch = photo_batch(["coffee"], spec["channels"], spec["height"], spec["width"])
    if spec["kind"] == "onnxruntime":
        from detkd.export.onnx import ort_session

        session = ort_session(spec["path"], threads=spec["threads"], memory_arena=False)
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(batch.numpy())}

        def run() -> None:
            session.run(None, feed)
    else:
        torch.set_num_threads(spec["threads"])
        if spec.get("task") == "detection":
            from detkd.export.detection import DetectionPostprocess
            from detkd.models.detection import load_detector
            from detkd.models.detection.inference import inference_copy

            module = DetectionPostprocess(inference_copy(load_detector(spec["path"]))).eval()
        else:
            from detkd.export.keypoints import KeypointPostprocess
            from detkd.models.weights import load_keypoint_model

            module = KeypointPostprocess(load_keypoint_model(spec["path"])).eval()

        def run() -> None:
            with torch.inference_mode():
                module(batch)
    run()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) / 1024


if __name__ == "__main__":
    print(json.dumps({"peak_mb": _child(json.loads(sys.argv[1]))}))
