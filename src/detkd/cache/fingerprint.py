"""Checksums that decide whether cached teacher outputs may be reused.

A cache entry is valid only for the exact teacher weights and the exact image content it
was computed from; these functions turn both into short hex strings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


def module_checksum(module: nn.Module, extra: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (names, dtypes, shapes and values).

    Args:
        module: the model; only its ``state_dict`` counts, not its Python class.
        extra: JSON-able settings that change the outputs but live outside the state dict
            (e.g. a BatchNorm epsilon); hashed too.

    Returns:
        64 hex characters; one changed bit in any weight gives another checksum.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    if extra:
        digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """BLAKE2b (128 bit) of an array's dtype, shape and values: 32 hex characters."""
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def file_digest(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """BLAKE2b (128 bit) of a file's bytes: 32 hex characters. Renaming the file keeps it."""
    digest = hashlib.blake2b(digest_size=16)
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
