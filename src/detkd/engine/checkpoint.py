"""Atomic checkpoint files: a crash or kill mid-write never leaves a broken file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "detkd.checkpoint"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so readers see the old or the new file,
    never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint written by :class:`detkd.engine.Trainer`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable detkd training checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a broken file
        raise ValueError(f"Cannot read checkpoint '{path}' ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"'{path}' is not a detkd training checkpoint (expected format '{CHECKPOINT_FORMAT}')"
        )
    return state
