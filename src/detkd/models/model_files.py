"""Helpers shared by detkd's key-point and detector model files: plain metadata, key reports."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPORT_LIMIT = 10  # keys listed per category in an error message




def key_listing(items: list[str]) -> str:
    """The first few ``items`` joined by commas, and how many more there are."""
    shown = ", ".join(items[:REPORT_LIMIT])
    more = len(items) - REPORT_LIMIT
    return shown + (f", ... (+{more} more)" if more > 0 else "")


def key_report_lines(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """The lines of a weights-mismatch report: missing and unexpected keys, one line per shape mismatch."""
    lines = []
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {key_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {key_listing(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}):")
        lines.extend(f"    {m}" for m in mismatched[:REPORT_LIMIT])
        if len(mismatched) > REPORT_LIMIT:
            lines.append(f"    ... (+{len(mismatched) - REPORT_LIMIT} more)")
    return lines


def plain_metadata(value: Any, where: str, saver: str, tuples_as_lists: bool = False) -> Any:
    """``value`` as types ``torch.load(weights_only=True)`` accepts; a TypeError naming ``where`` otherwise.

    Args:
        value: what a model file stores beside its weights (config, metadata).
        where: its name in messages (``"meta"``; nested entries extend it).
        saver: the function saving it, for messages.
        tuples_as_lists: store tuples as lists (otherwise they stay tuples).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain_metadata(v, f"{where}.{k}", saver, tuples_as_lists) for k, v in value.items()}
    if isinstance(value, tuple) and not tuples_as_lists:
        return tuple(plain_metadata(v, f"{where}[{i}]", saver, tuples_as_lists) for i, v in enumerate(value))
    if isinstance(value, (list, tuple)):
        return [plain_metadata(v, f"{where}[{i}]", saver, tuples_as_lists) for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.tolist()
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(
        f"{saver}: {where} holds a {type(value).__name__}; use plain values "
        "(str, int, float, bool, None, lists and dicts of them)"
    )
