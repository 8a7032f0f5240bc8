"""Turn what a user types as MODEL into a model: ``default``, a variant name, a file or a run folder.

* ``default``: the key-point teacher that ships with detkd;
* ``superpoint`` / ``half`` / ``tiny``: that key-point variant with random weights (seeded;
  enough to measure speed and size, meaningless for accuracy);
* a ``.pt`` / ``.pth`` file: a detkd model file or checkpoint, or SuperPoint weights in any
  format :func:`detkd.models.weights.load_keypoint_model` reads;
* a run folder: its ``student.pt``;
* an ``.onnx`` file exported by detkd (only ONNX Runtime can run it).

``NAME=MODEL`` gives the model a display name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from detkd.models.superpoint import VARIANTS, create_model

RANDOM_INIT_SEED = 0


@dataclass
class ModelSource:
    """A model named on the command line.

    Attributes:
        name: display name (table row).
        origin: where it came from, in words.
        task: ``"keypoints"`` (``"detection"`` once detectors are exported).
        module: the PyTorch model in eval mode on the CPU; ``None`` for an ONNX file.
        onnx_path: the ONNX file when the source is one.
    """

    name: str
    origin: str
    task: str
    module: nn.Module | None = None
    onnx_path: Path | None = None

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None


def load_model_source(spec: str | Path, name: str | None = None) -> ModelSource:
    """Resolve one MODEL argument (see the module doc).

    Raises:
        FileNotFoundError: a path that does not exist, or a run folder without ``student.pt``.
        ValueError: a name that is neither ``default``, a variant nor a path.
    """
    text = str(spec)
    if name is None and "=" in text and not Path(text).exists():
        name, text = text.split("=", 1)
    if text == "default":
        from detkd.models.pretrained import default_keypoint_teacher_path
        from detkd.models.weights import load_keypoint_model

        path = default_keypoint_teacher_path()
        return ModelSource(name or "teacher", f"detkd's shipped key-point teacher ({path.name})", "keypoints",
                           load_keypoint_model(path).eval())
    if text in VARIANTS:
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_INIT_SEED)
            model = create_model(text, batch_norm=True).eval()
        return ModelSource(name or text, f"'{text}' variant, random weights (seed {RANDOM_INIT_SEED}, BatchNorm)",
                           "keypoints", model)
    path = Path(text)
    if not path.exists():
        if path.suffix or "/" in text:
            raise FileNotFoundError(f"Model file '{path}' does not exist")
        raise ValueError(
            f"Unknown model '{text}': give 'default' (the shipped key-point teacher), a variant "
            f"({', '.join(VARIANTS)}), a .pt/.pth model file, a run folder or an .onnx export"
        )
    if path.is_dir():
        student = path / "student.pt"
        if not student.exists():
            raise FileNotFoundError(f"Run folder '{path}' has no student.pt; pass the model file itself")
        return _from_file(student, name or path.name)
    if path.suffix.lower() == ".onnx":
        from detkd.export.onnx import read_metadata

        task = read_metadata(path).get("task", "keypoints")
        return ModelSource(name or path.stem, f"ONNX file {path}", task, None, path)
    return _from_file(path, name or path.stem)


def _from_file(path: Path, name: str) -> ModelSource:
    from detkd.models.weights import load_keypoint_model

    return ModelSource(name, f"{path}", "keypoints", load_keypoint_model(path).eval())
