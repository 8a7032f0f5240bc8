"""Checkpoint files that survive kills, full disks and flipped bytes.

* Writes are atomic: a temporary file in the same folder, then a rename, so readers see the old
  or the new file, never half of one. A kill during the write leaves at most a ``.NAME.*.tmp``
  file, which :func:`remove_orphan_temp_files` deletes at the next start.
* Each checkpoint carries a content digest (:func:`detkd.safe_files.content_digest`) that
  :func:`load_checkpoint` checks, and the checkpoint it replaces is kept as ``previous.pt``, so a
  damaged or diverged ``last.pt`` leaves one to go back to (:func:`latest_good_checkpoint`).
* Files are read with ``torch.load(weights_only=True)``: a checkpoint holds only tensors and
  plain containers, and a crafted file cannot run code.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detkd.safe_files import (
    UnreadableFileError,
    remove_orphan_temp_files,
    safe_torch_load,
    verify_digest,
    with_digest,
)

CHECKPOINT_FORMAT = "detkd.checkpoint"
PREVIOUS_NAME = "previous.pt"

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointWriteError", "GoodCheckpoint", "atomic_save", "latest_good_checkpoint",
    "load_checkpoint", "previous_checkpoint_path", "remove_orphan_temp_files", "save_checkpoint",
    "weights_are_finite",
]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only folder); the one before it is intact."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so readers see the old or the new file,
    never half of one.

    Raises:
        CheckpointWriteError: the disk is full or the folder cannot be written; ``path`` is untouched.
    """
    path = Path(path)
    tmp = _write_temporary(obj, path)
    os.replace(tmp, path)
    return path


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` with its content digest to ``path``; the file it replaces becomes ``previous.pt``.

    A kill at any moment leaves ``path`` or ``previous.pt`` (or both) whole.
    """
    path = Path(path)
    tmp = _write_temporary(with_digest(dict(state)), path)
    if path.exists():
        os.replace(path, previous_checkpoint_path(path))
    os.replace(tmp, path)
    return path


def previous_checkpoint_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint that ``path`` replaced."""
    return Path(path).with_name(PREVIOUS_NAME)


def _write_temporary(obj: Any, path: Path) -> Path:
    """``obj`` saved to a ``.NAME.*.tmp`` file beside ``path``, flushed to disk."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):
            raise _write_error(path, err) from None
        raise
    return Path(tmp)


def _write_error(path: Path, err: BaseException) -> CheckpointWriteError:
    """One line naming the file, the cause and what is still safe."""
    kept = f"'{path}' is intact" if path.exists() else "no earlier checkpoint was there"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC or "unexpected pos" in str(err) or "No space" in str(err):
        cause = "the disk is full"
        fix = "free some space and resume with --resume"
    elif isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = "the folder is not writable"
        fix = "choose an --out folder you can write to"
    else:
        cause = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}"
        fix = "check the folder and resume with --resume"
    return CheckpointWriteError(f"Could not write checkpoint '{path}': {cause}; {kept}. Fix: {fix}.")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a training checkpoint written by :class:`detkd.engine.Trainer`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable detkd training checkpoint, holds Python objects
            (:class:`~detkd.safe_files.UnsafeFileError`) or fails its digest
            (:class:`~detkd.safe_files.DamagedFileError`).
    """
    path = Path(path)
    state = safe_torch_load(path, "Checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UnreadableFileError(
            f"'{path}' is not a detkd training checkpoint (expected format '{CHECKPOINT_FORMAT}')"
        )
    verify_digest(state, path, "Checkpoint")
    return state


def weights_are_finite(state: Mapping[str, Any]) -> bool:
    """Whether every floating-point tensor of the checkpoint's ``"model"`` is finite."""
    model = state.get("model")
    if not isinstance(model, Mapping):
        return False
    return all(
        bool(torch.isfinite(value).all())
        for value in model.values()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    )


@dataclass
class GoodCheckpoint:
    """A checkpoint that loads, matches its digest and holds finite weights."""

    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def latest_good_checkpoint(
    path: str | Path, before_step: int | None = None, map_location: str | torch.device = "cpu"
) -> tuple[GoodCheckpoint | None, list[str]]:
    """The newest of ``path`` and its ``previous.pt`` that is usable, and why the others are not.

    Args:
        path: ``checkpoints/last.pt``.
        before_step: only checkpoints saved at a step below this count (the step whose loss
            was not finite: the weights of that step and later produced it).

    Returns:
        ``(checkpoint or None, one line per checkpoint that was passed over)``.
    """
    passed_over: list[str] = []
    found: list[GoodCheckpoint] = []
    for candidate in (Path(path), previous_checkpoint_path(path)):
        if not candidate.exists():
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except ValueError as err:
            passed_over.append(str(err))
            continue
        step = int(state.get("step", -1))
        if before_step is not None and step >= before_step:
            passed_over.append(f"'{candidate}' (step {step}) holds the weights that gave the non-finite loss")
        elif not weights_are_finite(state):
            passed_over.append(f"'{candidate}' (step {step}) holds non-finite weights")
        else:
            found.append(GoodCheckpoint(candidate, state))
    best = max(found, key=lambda good: good.step, default=None)
    return best, passed_over
