"""Load SuperPoint weights in every public format, and save/load detkd's own model file.

Formats, recognised from the keys (:func:`keypoint_state_dict_format` names them):

``"magicleap"``
    Magic Leap's ``superpoint_v1.pth`` (also shipped by LightGlue / glue-factory): a plain
    state dict ``conv1a ... conv4b, convPa, convPb, convDa, convDb`` (``.weight``/``.bias``),
    no BatchNorm. ``conv{i}{a,b}`` map to ``backbone.{i-1}.{0,1}.conv``, ``convP{a,b}`` to
    ``detector.{0,1}.conv`` and ``convD{a,b}`` to ``descriptor.{0,1}.conv``.
``"rpautrat"``
    rpautrat/SuperPoint's ``superpoint_v6_from_tf.pth``: the layout of
    :class:`~detkd.models.superpoint.SuperPoint` itself (``backbone.{i}.{j}.conv/bn``,
    ``detector.{0,1}``, ``descriptor.{0,1}``), with BatchNorm (eps 1e-3). A plain
    ``state_dict()`` of a detkd SuperPoint, with or without BatchNorm, is this format too.
``"detkd.keypoints"``
    The file :func:`save_keypoint_model` writes:
    ``{"format": "detkd.keypoints", "version": 1, "conf": ..., "state_dict": ..., "meta": ...}``.
``"detkd.checkpoint"``
    A training checkpoint of :class:`detkd.engine.Trainer`: the student's state dict under
    ``"model"`` and, when the task saved it, its configuration under ``"model_conf"``.

Containers such as ``{"model_state_dict": ...}`` or ``{"state_dict": ...}`` are opened, and a
leading prefix on the keys (``module.``, ``model.``, ``net.``, ``extractor.`` ...) is removed;
keys outside that prefix (e.g. a matcher saved with the extractor) are ignored with a warning.
For ``magicleap`` and ``rpautrat`` the widths (``channels``, ``head_channels``,
``descriptor_dim``, ``batch_norm``) are read from the tensor shapes, so narrower
user-trained networks load too.

Anything that fits no format, or fits one with wrong shapes, raises
:class:`WeightsMismatchError` with a report of missing keys, unexpected keys and shape
mismatches, in the file's own key names.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkd.models.superpoint import VARIANTS, SuperPoint
from detkd.safe_files import (
    DamagedFileError,
    UnreadableFileError,
    UnsafeFileError,
    safe_torch_load,
    verify_digest,
    with_digest,
)

MODEL_FORMAT = "detkd.keypoints"
MODEL_FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "detkd.checkpoint"  # written by detkd.engine (same string)
UNKNOWN_FORMAT = "unknown"

#: Options of SuperPoint that fix tensor shapes (the others are post-processing).
STRUCTURAL_OPTIONS = ("channels", "head_channels", "descriptor_dim", "batch_norm", "encoder")

#: Containers whose value is the state dict, in order of preference.
_STATE_DICT_CONTAINER_KEYS = ("model_state_dict", "state_dict", "model", "net", "weights", "params")

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

_FORMAT_DESCRIPTIONS = {
    "magicleap": "Magic Leap / LightGlue superpoint_v1 (conv1a ... convDb)",
    "rpautrat": "rpautrat / detkd SuperPoint layout (backbone.{i}.{j}.conv/bn, detector, descriptor)",
    MODEL_FORMAT: "detkd key-point model file",
    CHECKPOINT_FORMAT: "detkd training checkpoint",
    UNKNOWN_FORMAT: "none recognised",
}

_REPORT_LIMIT = 10  # keys listed per category in an error message


class WeightsError(ValueError):
    """Base class: a weights file cannot be turned into a SuperPoint."""


class UnreadableWeightsError(WeightsError, UnreadableFileError):
    """The file is not a torch file (truncated, corrupt, damaged, or something else entirely)."""


class UnsafeWeightsError(UnreadableWeightsError, UnsafeFileError):
    """The file holds Python objects beyond tensors and plain containers; it is not loaded."""


class WeightsMismatchError(WeightsError):
    """The weights fit no known format, or fit one with missing/extra/wrong-shaped tensors."""


# ---------------------------------------------------------------------- public API
def load_keypoint_model(
    source: str | Path | Mapping[str, Any], *, map_location: str | torch.device = "cpu", **conf_overrides: Any
) -> SuperPoint:
    """Build a :class:`SuperPoint` from weights in any supported format (see module doc).

    Args:
        source: path of a ``.pth``/``.pt`` file, or an already loaded object (state dict,
            detkd model file or checkpoint dict).
        map_location: where tensors are loaded (``torch.load``'s argument).
        conf_overrides: SuperPoint options that replace the stored or inferred ones, e.g.
            ``max_keypoints=512`` or ``detection_threshold=0.005``. Overriding a structural
            option (``channels`` ...) only works if the tensors have those shapes.

    Returns:
        The model, in eval mode, on ``map_location``'s device.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UnreadableWeightsError: the file is not a torch file.
        WeightsMismatchError: no format fits, or the tensors do not fit the model.
    """
    name = _source_name(source)
    obj = _read(source, map_location)
    fmt, state, conf = _interpret(obj, name)
    conf = {**conf, **conf_overrides}
    overridden = sorted(set(conf_overrides) & set(STRUCTURAL_OPTIONS))
    try:
        # The shapes that the stored conf asks for are checked against the file's tensors on the
        # meta device first: a conf asking for huge widths allocates nothing before it is refused.
        with torch.device("meta"):
            skeleton = SuperPoint(**conf)
        _check_keys_and_shapes(skeleton, state, fmt, name, overridden)
        model = SuperPoint(**conf)
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:
        if isinstance(err, WeightsMismatchError):
            raise
        raise WeightsMismatchError(f"Cannot build a SuperPoint for '{name}' (format {fmt}): {err}") from err
    _load_checked(model, state, fmt, name, overridden=overridden)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


def save_keypoint_model(model: SuperPoint, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a detkd key-point model file, atomically.

    The file is ``{"format": "detkd.keypoints", "version": 1, "conf": model.conf,
    "state_dict": <CPU tensors>, "meta": meta}``; it is written to ``<path>.tmp`` in the same
    folder, then renamed over ``path``, so readers never see half a file. ``meta`` must hold
    plain values (str, int, float, bool, None, lists/tuples/dicts of them; numpy scalars and
    paths are converted) so that the file loads with ``torch.load(weights_only=True)``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(model, SuperPoint):
        raise TypeError(f"save_keypoint_model expects a SuperPoint, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = with_digest({
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "conf": plain_metadata(dict(model.conf), "conf", "save_keypoint_model"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": plain_metadata(dict(meta or {}), "meta", "save_keypoint_model"),
    })
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def keypoint_state_dict_format(state: Any) -> str:
    """Name of the format of a loaded object (or of a file, given its path).

    Returns:
        ``"magicleap"``, ``"rpautrat"``, ``"detkd.keypoints"``, ``"detkd.checkpoint"`` or
        ``"unknown"`` (see the module doc).
    """
    if isinstance(state, (str, Path)):
        state = _read(state, "cpu")
    if isinstance(state, Mapping):
        tag = state.get("format")
        if tag in (MODEL_FORMAT, CHECKPOINT_FORMAT):
            return tag
    tensors = _unwrap_state_dict(state)
    if tensors is None:
        return UNKNOWN_FORMAT
    fmt, _ = _detect_layout(tensors)
    return fmt


def read_keypoint_model_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` dict of a file written by :func:`save_keypoint_model` (``{}`` for others)."""
    obj = _read(path, "cpu")
    if isinstance(obj, Mapping) and obj.get("format") == MODEL_FORMAT:
        return dict(obj.get("meta") or {})
    return {}


# ---------------------------------------------------------------------- reading
def _source_name(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<in-memory {type(source).__name__}>"


def _read(source: Any, map_location: Any) -> Any:
    """The object in ``source``: a path is loaded with :func:`safe_torch_load`, anything else is returned.

    A detkd model file or checkpoint that carries a content digest is checked against it.
    """
    if not isinstance(source, (str, Path)):
        return source
    path = Path(source)
    try:
        obj = safe_torch_load(path, "SuperPoint weights file", map_location)
    except UnsafeFileError as err:
        raise UnsafeWeightsError(str(err)) from None
    except UnreadableFileError as err:
        raise UnreadableWeightsError(str(err)) from None
    if isinstance(obj, Mapping) and obj.get("format") in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        try:
            verify_digest(obj, path, "SuperPoint weights file")
        except DamagedFileError as err:
            raise UnreadableWeightsError(str(err)) from None
    return obj


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap_state_dict(obj: Any, depth: int = 0) -> dict[str, torch.Tensor] | None:
    """The flat ``{key: tensor}`` dict inside ``obj`` (containers opened), or None."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping) or depth > 3:
        return None
    for key in _STATE_DICT_CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, (Mapping, nn.Module)):
            found = _unwrap_state_dict(inner, depth + 1)
            if found:
                return found
    if _is_tensor_dict(obj):
        return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    nested = [v for v in obj.values() if isinstance(v, Mapping) and _is_tensor_dict(v)]
    if len(nested) == 1:
        return _unwrap_state_dict(nested[0], depth + 1)
    return None


def _detect_layout(tensors: Mapping[str, torch.Tensor]) -> tuple[str, str]:
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


def _interpret(obj: Any, name: str) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """``(format, state dict in detkd names, SuperPoint conf)`` of a loaded object."""
    tag = obj.get("format") if isinstance(obj, Mapping) else None
    if tag == MODEL_FORMAT:
        version = obj.get("version", MODEL_FORMAT_VERSION)
        if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
            raise WeightsMismatchError(
                f"'{name}' is a detkd key-point model file of version {version}, newer than this "
                f"detkd reads (version {MODEL_FORMAT_VERSION}). Upgrade detkd to load it."
            )
        state = obj.get("state_dict")
        if not _is_tensor_dict(state):
            raise WeightsMismatchError(
                f"'{name}' is a detkd key-point model file without a 'state_dict'; it is damaged."
            )
        conf = dict(obj.get("conf") or _infer_rpautrat_conf(state))
        return MODEL_FORMAT, dict(state), conf
    if tag == CHECKPOINT_FORMAT:
        inner = obj.get("model")
        tensors = _unwrap_state_dict(inner) if inner is not None else None
        if not tensors:
            raise WeightsMismatchError(
                f"'{name}' is a detkd training checkpoint without model weights under 'model'; "
                "it is damaged or was written by an incompatible version."
            )
        layout, prefix = _detect_layout(tensors)
        if layout != UNKNOWN_FORMAT:
            tensors = _strip_prefix(tensors, prefix, name)
        stored_conf = obj.get("model_conf")
        if isinstance(stored_conf, Mapping) and stored_conf:
            conf = {k: v for k, v in stored_conf.items() if k in SuperPoint.default_conf}
            ignored = sorted(set(stored_conf) - set(SuperPoint.default_conf))
            if ignored:
                warnings.warn(f"'{name}': ignoring model_conf option(s) {ignored} unknown to SuperPoint", stacklevel=3)
        else:
            conf = None
        if layout == "magicleap":
            state = _magicleap_to_detkd(tensors)
            return CHECKPOINT_FORMAT, state, conf or _infer_magicleap_conf(tensors)
        return CHECKPOINT_FORMAT, tensors, conf or _infer_rpautrat_conf(tensors)

    tensors = _unwrap_state_dict(obj)
    if not tensors:
        raise WeightsMismatchError(
            _report(name, UNKNOWN_FORMAT, [], [], [], extra=f"it holds no tensors (a {type(obj).__name__})")
        )
    layout, prefix = _detect_layout(tensors)
    if layout == UNKNOWN_FORMAT:
        expected = [f"{layer}.{param}" for layer in MAGICLEAP_TO_DETKD for param in ("weight", "bias")]
        raise WeightsMismatchError(
            _report(
                name, UNKNOWN_FORMAT, expected, sorted(tensors), [],
                extra="no key is named like Magic Leap's (conv1a.weight ...) or rpautrat's "
                "(backbone.0.0.conv.weight ...); missing keys below are Magic Leap's",
            )
        )
    tensors = _strip_prefix(tensors, prefix, name)
    if layout == "magicleap":
        return layout, _magicleap_to_detkd(tensors), _infer_magicleap_conf(tensors)
    return layout, tensors, _infer_rpautrat_conf(tensors)


def _strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str, name: str) -> dict[str, torch.Tensor]:
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


def _magicleap_to_detkd(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``conv1a.weight`` -> ``backbone.0.0.conv.weight`` etc.; unknown keys keep a marker."""
    renamed = {}
    for key, value in tensors.items():
        layer, _, param = key.rpartition(".")
        target = MAGICLEAP_TO_DETKD.get(layer)
        renamed[f"{target}.{param}" if target else f"{_UNMAPPED}{key}"] = value
    return renamed


_UNMAPPED = "<unmapped>"  # marks a key of a Magic Leap file with no detkd counterpart


def _to_file_key(key: str, fmt: str) -> str:
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


def _infer_magicleap_conf(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    def name_of(block: Any, index: int) -> str:
        return f"conv{block + 1 if isinstance(block, int) else block}{'ab'[index]}"

    return {**_infer_widths(tensors, name_of), "batch_norm": False}


def _infer_rpautrat_conf(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    def name_of(block: Any, index: int) -> str:
        if isinstance(block, int):
            return f"backbone.{block}.{index}.conv"
        return f"{'detector' if block == 'P' else 'descriptor'}.{index}.conv"

    batch_norm = any(".bn." in key for key in tensors)
    return {**_infer_widths(tensors, name_of), "batch_norm": batch_norm}


# ---------------------------------------------------------------------- checked loading
def _load_checked(
    model: SuperPoint, state: Mapping[str, torch.Tensor], fmt: str, name: str, overridden: list[str]
) -> None:
    """Copy ``state`` into ``model`` after checking keys and shapes; report every problem."""
    _check_keys_and_shapes(model, state, fmt, name, overridden)
    model.load_state_dict({k: v for k, v in state.items()}, strict=False)


def _check_keys_and_shapes(
    model: SuperPoint, state: Mapping[str, torch.Tensor], fmt: str, name: str, overridden: list[str]
) -> None:
    """Raise :class:`WeightsMismatchError` with every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    # num_batches_tracked only counts training steps: files without it load fine.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(state[k].shape))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        hint = None
        if overridden:
            hint = f"the override(s) {overridden} change the model's shapes; drop them to use the file's own widths"
        elif fmt in (MODEL_FORMAT, CHECKPOINT_FORMAT) and mismatched and not (missing or unexpected):
            hint = (
                "the configuration stored in the file does not match its weights; the file is "
                "inconsistent: re-save the model with detkd.models.weights.save_keypoint_model"
            )
        raise WeightsMismatchError(
            _report(
                name,
                fmt,
                [_to_file_key(k, fmt) for k in missing],
                [_to_file_key(k, fmt) for k in unexpected],
                [(_to_file_key(k, fmt), e, f) for k, e, f in mismatched],
                hint=hint,
            )
        )


def key_listing(items: list[str]) -> str:
    """The first few ``items`` joined by commas, and how many more there are."""
    shown = ", ".join(items[:_REPORT_LIMIT])
    more = len(items) - _REPORT_LIMIT
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
        lines.extend(f"    {m}" for m in mismatched[:_REPORT_LIMIT])
        if len(mismatched) > _REPORT_LIMIT:
            lines.append(f"    ... (+{len(mismatched) - _REPORT_LIMIT} more)")
    return lines


def _report(
    name: str,
    fmt: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    hint: str | None = None,
    extra: str | None = None,
) -> str:
    """The text of a :class:`WeightsMismatchError`."""
    lines = [
        f"Cannot load SuperPoint weights from '{name}' (format tried: {fmt}, {_FORMAT_DESCRIPTIONS.get(fmt, fmt)})"
        + (f": {extra}" if extra else "")
    ]
    lines += key_report_lines(
        missing, unexpected, [f"{k}: expected {list(e)}, found {list(f)}" for k, e, f in mismatched]
    )
    if hint is None:
        hint = (
            "is this a SuperPoint checkpoint? Pass (to --teacher or --model) Magic Leap's "
            "superpoint_v1.pth, rpautrat's superpoint_v6_from_tf.pth, or a detkd student.pt / "
            "training checkpoint; a student without weights is chosen by variant instead "
            "(--student superpoint|half|tiny)"
        )
        if fmt != UNKNOWN_FORMAT:
            hint = (
                f"the keys look like {fmt} but the tensors do not fit one SuperPoint (a modified "
                "network, or a partial or damaged file?); " + hint
            )
    lines.append(f"Fix: {hint}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------- saving helpers
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
