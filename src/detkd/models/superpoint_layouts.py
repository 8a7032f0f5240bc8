"""The public SuperPoint weight layouts: recognise them from key names, unwrap containers, rename, infer widths.

Two layouts are known (see :mod:`detkd.models.weights` for the files that use them):
``"magicleap"`` (``conv1a ... convDb``, no BatchNorm) and ``"rpautrat"`` (detkd's own
``backbone.{i}.{j}.conv/bn``, ``detector``, ``descriptor``). A state dict is searched for the
layout with the most matching keys, under whatever prefix (``module.``, ``student.`` ...) they share.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from detkd.models.superpoint import VARIANTS

UNKNOWN_FORMAT = "unknown"

#: Containers whose value is the state dict, in order of preference.
STATE_DICT_CONTAINER_KEYS = ("model_state_dict", "state_dict", "model", "net", "weights", "params")

#: Magic Leap layer name -> detkd module path.
MAGICLEAP_TO_DETKD: dict[str, str] = {
    **{f"conv{i + 1}{ab}": f"backbone.{i}.{j}.conv" for i in range(4) for j, ab in enumerate("ab")},
    "convPa": "detector.0.conv",
    "convPb": "detector.1.conv",
    "convDa": "descriptor.0.conv",
    "convDb": "descriptor.1.conv",
}

_MAGICLEAP_KEY = re.compile(r"(?:^|\.)(conv[1-4][ab]|conv[PD][ab])\.(weight|bias)$")
_RPAUTRAT_KEY = re.compile(
    r"(?:^|\.)((?:backbone\.\d+\.\d+|detector\.\d+|descriptor\.\d+)\.(?:conv|bn)\.[a-z_]+)$"
)
_FORMAT_PATTERNS = {"magicleap": _MAGICLEAP_KEY, "rpautrat": _RPAUTRAT_KEY}


def is_tensor_dict(obj: Any) -> bool:
    """Whether ``obj`` is a mapping holding at least one tensor."""
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, depth: int = 0) -> dict[str, torch.Tensor] | None:
    """The flat ``{key: tensor}`` dict inside ``obj`` (containers opened), or None."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping) or depth > 3:
        return None
    for key in STATE_DICT_CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, (Mapping, nn.Module)):
            found = unwrap_state_dict(inner, depth + 1)
            if found:
                return found
    if is_tensor_dict(obj):
        return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    nested = [v for v in obj.values() if isinstance(v, Mapping) and is_tensor_dict(v)]
    if len(nested) == 1:
        return unwrap_state_dict(nested[0], depth + 1)
    return None


def detect_layout(tensors: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """``(format, prefix)`` of a flat state dict: the layout with most matching keys."""
    best_fmt, best_count, best_prefix = UNKNOWN_FORMAT, 0, ""
    for fmt, pattern in _FORMAT_PATTERNS.items():
        prefixes: Counter[str] = Counter()
        for key in tensors:
            match = pattern.search(key)
            if match:
                prefixes[key[: match.start(1)]] += 1
        if prefixes:
            # Most keys under one prefix; on a tie prefer the student of a distillation
            # checkpoint, then the shortest prefix.
            prefix, count = max(
                prefixes.items(), key=lambda item: (item[1], item[0].startswith("student."), -len(item[0]))
            )
            if count > best_count:
                best_fmt, best_count, best_prefix = fmt, count, prefix
    return best_fmt, best_prefix


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str, name: str) -> dict[str, torch.Tensor]:
    if not prefix:
        return dict(tensors)
    inside = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    outside = [k for k in tensors if not k.startswith(prefix)]
    if outside:
        warnings.warn(
            f"'{name}': using the SuperPoint weights under '{prefix}' and ignoring {len(outside)} other "
            f"tensor(s) ({', '.join(outside[:3])}{' ...' if len(outside) > 3 else ''})",
            UserWarning,
            stacklevel=4,
        )
    return inside


# ---------------------------------------------------------------------- layouts
# Key names used while the state dict is in detkd names but came from a Magic Leap file, so
# that reports speak the file's language.
_DETKD_TO_MAGICLEAP = {v: k for k, v in MAGICLEAP_TO_DETKD.items()}


def magicleap_to_detkd(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``conv1a.weight`` -> ``backbone.0.0.conv.weight`` etc.; unknown keys keep a marker."""
    renamed = {}
    for key, value in tensors.items():
        layer, _, param = key.rpartition(".")
        target = MAGICLEAP_TO_DETKD.get(layer)
        renamed[f"{target}.{param}" if target else f"{_UNMAPPED}{key}"] = value
    return renamed


_UNMAPPED = "<unmapped>"  # marks a key of a Magic Leap file with no detkd counterpart


def to_file_key(key: str, fmt: str) -> str:
    """A detkd key as it is named in a file of format ``fmt``."""
    if key.startswith(_UNMAPPED):
        return key[len(_UNMAPPED):]
    if fmt == "magicleap":
        layer, _, param = key.rpartition(".")
        if layer in _DETKD_TO_MAGICLEAP:
            return f"{_DETKD_TO_MAGICLEAP[layer]}.{param}"
    return key


def _first_dim(tensors: Mapping[str, torch.Tensor], candidates: list[tuple[str, int]], default: int) -> int:
    """Size of the first present ``(key, dim)`` among candidates, else ``default``."""
    for key, dim in candidates:
        value = tensors.get(key)
        if isinstance(value, torch.Tensor) and value.dim() > dim:
            return int(value.shape[dim])
    return default


def _infer_widths(tensors: Mapping[str, torch.Tensor], name_of: Any) -> dict[str, Any]:
    """Widths from shapes; ``name_of(block, index)`` names a conv layer (without ``.weight``).

    ``block`` is 0..3 for the encoder, ``"P"``/``"D"`` for the detector/descriptor heads.
    """
    default = VARIANTS["superpoint"]
    channels = []
    for i in range(4):
        a, b = name_of(i, 0), name_of(i, 1)
        nxt = [(f"{name_of(i + 1, 0)}.weight", 1)] if i < 3 else [(f"{name_of('P', 0)}.weight", 1)]
        channels.append(
            _first_dim(
                tensors,
                [(f"{a}.weight", 0), (f"{a}.bias", 0), (f"{b}.weight", 1), (f"{b}.weight", 0), (f"{b}.bias", 0), *nxt],
                default["channels"][i],
            )
        )
    head = _first_dim(
        tensors,
        [(f"{name_of('P', 0)}.weight", 0), (f"{name_of('P', 0)}.bias", 0), (f"{name_of('P', 1)}.weight", 1),
         (f"{name_of('D', 0)}.weight", 0), (f"{name_of('D', 1)}.weight", 1)],
        default["head_channels"],
    )
    descriptor_dim = _first_dim(
        tensors, [(f"{name_of('D', 1)}.weight", 0), (f"{name_of('D', 1)}.bias", 0)], default["descriptor_dim"]
    )
    return {"channels": tuple(channels), "head_channels": head, "descriptor_dim": descriptor_dim}


def infer_magicleap_conf(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    def name_of(block: Any, index: int) -> str:
        return f"conv{block + 1 if isinstance(block, int) else block}{'ab'[index]}"

    return {**_infer_widths(tensors, name_of), "batch_norm": False}


def infer_rpautrat_conf(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    def name_of(block: Any, index: int) -> str:
        if isinstance(block, int):
            return f"backbone.{block}.{index}.conv"
        return f"{'detector' if block == 'P' else 'descriptor'}.{index}.conv"

    batch_norm = any(".bn." in key for key in tensors)
    return {**_infer_widths(tensors, name_of), "batch_norm": batch_norm}
