"""Read what a distillation run left in its folder.

A run folder (``detkd keypoints distill --out RUN``, :func:`detkd.tasks.keypoints.run_distillation`;
``detkd detect distill | train``, :mod:`detkd.tasks.detection`) holds ``config.yaml`` (the
resolved config), ``history.jsonl`` (one record per logged step), ``metrics.json``
(``{"pairs" | "data": <what was evaluated>, "models": {name: {metric: value}}}``, teacher
first), ``student.pt`` (a training run: ``model.pt``) and PNG figures (``loss_curves.png``,
``matches_<model>.png`` for key points, ``detections*.png`` for detectors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detkd.config import ConfigError

#: Files that make a folder recognisable as a run (at least one must exist).
RUN_FILES = ("config.yaml", "metrics.json", "history.jsonl")


@dataclass
class RunFolder:
    """One run's files, read.

    Attributes:
        name: the folder's name (unique within a report).
        path: the folder.
        config: the resolved config (``{}`` if missing); ``config_text`` is the file as written.
        metrics: model name -> metric -> value, in the file's order (teacher first).
        pairs: description of the evaluation pairs the metrics were computed on.
        history: path of ``history.jsonl`` or ``None``.
        model_file: ``student.pt`` or ``None``.
        figures: PNG files of the folder (sorted), other than ``loss_curves.png``.
        notes: what is missing, in words.
    """

    name: str
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    config_text: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    pairs: str = ""
    history: Path | None = None
    model_file: Path | None = None
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        """``"detection"`` for detector runs (COCO metrics, or a detection config), else ``"keypoints"``."""
        if any("map" in m for m in self.metrics.values()) or "distill" in self.config or "model" in self.config:
            return "detection"
        return "keypoints"

    @property
    def student_label(self) -> str:
        student = self.config.get("student") or {}
        variant = student.get("variant") or student.get("name")
        return f"{self.name} ({variant})" if variant and variant != self.name else self.name

    def teacher_checkpoint(self) -> str | None:
        return (self.config.get("teacher") or {}).get("checkpoint")

    def eval_size(self) -> tuple[int, int] | None:
        """The evaluation size of the config (detection: the training size when it has none)."""
        for section in (self.config.get("eval") or {}, self.config.get("data") or {}):
            if isinstance(section.get("height"), int) and isinstance(section.get("width"), int):
                return section["height"], section["width"]
        return None


def read_run(path: str | Path) -> RunFolder:
    """Read one run folder.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it holds none of :data:`RUN_FILES` (not a run folder), or ``metrics.json``
            is not the JSON ``run_distillation`` writes.
        ConfigError: ``config.yaml`` is not valid YAML.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Run folder '{path}' does not exist")
    if not any((path / f).exists() for f in RUN_FILES):
        raise ValueError(
            f"'{path}' is not a detkd run folder: it has none of {', '.join(RUN_FILES)}. Pass the --out "
            "folder of 'detkd keypoints distill'."
        )
    run = RunFolder(name=path.resolve().name, path=path)
    config_path = path / "config.yaml"
    if config_path.exists():
        run.config_text = config_path.read_text()
        try:
            run.config = yaml.safe_load(run.config_text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"'{config_path}' is not valid YAML: {err}") from err
        if not isinstance(run.config, dict):
            raise ConfigError(f"'{config_path}' must hold a mapping, got {type(run.config).__name__}")
    else:
        run.notes.append("no config.yaml")
    metrics_path = path / "metrics.json"
    if metrics_path.exists():
        run.metrics, run.pairs = _read_metrics(metrics_path)
    else:
        run.notes.append("no metrics.json (the run has not finished its evaluation)")
    history = path / "history.jsonl"
    run.history = history if history.exists() else None
    if run.history is None:
        run.notes.append("no history.jsonl")
    run.model_file = next((path / n for n in ("student.pt", "model.pt") if (path / n).exists()), None)
    run.figures = sorted(p for p in path.glob("*.png") if p.name != "loss_curves.png")
    return run


def read_runs(paths: list[str | Path]) -> list[RunFolder]:
    """Read several run folders; folders with the same name get their parent's name prefixed."""
    if not paths:
        raise ValueError("No run folder given")
    runs = [read_run(p) for p in paths]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    return runs


def _read_metrics(path: Path) -> tuple[dict[str, dict[str, float]], str]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not valid JSON ({err}); rerun the evaluation") from err
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise ValueError(
            f"'{path}' does not hold {{'models': {{name: {{metric: value}}}}}} as detkd writes it; "
            "rerun 'detkd keypoints evaluate --out' to rewrite it"
        )
    return {str(k): dict(v) for k, v in models.items()}, str(data.get("pairs") or data.get("data") or "")
