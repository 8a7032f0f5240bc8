"""What a benchmark run records beside its tables: the machine and versions it ran on, one line saying so,
and the ``.md`` / ``.json`` pair of its results (the tables a person reads and what scripts read)."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from detkd.export.onnx import import_onnxruntime


def environment(gpu: bool) -> dict[str, Any]:
    """Versions and machine of this run."""
    ort = import_onnxruntime()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (active spinning)"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def machine_line(env: dict[str, Any], seconds: float, onnxruntime: bool = False) -> str:
    """One line for a results file: versions, machine, CPUs, load average at the end, date and run time (s).

    ``env``: :func:`environment`'s dict; ``onnxruntime``: also name its version."""
    versions = f"torch {env['torch']}" + (f", onnxruntime {env['onnxruntime']}" if onnxruntime else "")
    load = ", ".join(f"{v:.2f}" for v in env["load_average"]) if env["load_average"] else "n/a"
    return (f"{versions}, {env['machine']}, {env['cpu_count']} CPUs, load average at the end {load}; "
            f"{env['date']}; {seconds:.0f} s.")


def write_table_files(out_dir: str | Path, stem: str, text: str, payload: dict[str, Any]) -> Path:
    """Write a benchmark's results beside each other: ``STEM.md`` (``text``, the tables a person reads) and
    ``STEM.json`` (``payload``, what scripts read; values JSON cannot hold are written as strings).

    Returns the ``.md`` path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text.rstrip("\n") + "\n")
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out / f"{stem}.md"
