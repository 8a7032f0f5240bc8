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
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from detkd.models.model_files import key_report_lines, plain_metadata
from detkd.models.superpoint import SuperPoint
from detkd.models.superpoint_layouts import (
    MAGICLEAP_TO_DETKD,
    UNKNOWN_FORMAT,
    detect_layout,
    infer_magicleap_conf,
    infer_rpautrat_conf,
    is_tensor_dict,
    magicleap_to_detkd,
    strip_prefix,
    to_file_key,
    unwrap_state_dict,
)
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

#: Options of SuperPoint that fix tensor shapes (the others are post-processing).
STRUCTURAL_OPTIONS = ("channels", "head_channels", "descriptor_dim", "batch_norm", "encoder", "descriptor_stride",
                      "detector_stride", "reparam_branches", "context_channels")

_FORMAT_DESCRIPTIONS = {
    "magicleap": "Magic Leap / LightGlue superpoint_v1 (conv1a ... convDb)",
    "rpautrat": "rpautrat / detkd SuperPoint layout (backbone.{i}.{j}.conv/bn, detector, descriptor)",
    MODEL_FORMAT: "detkd key-point model file",
    CHECKPOINT_FORMAT: "detkd training checkpoint",
    UNKNOWN_FORMAT: "none recognised",
}

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
    tensors = unwrap_state_dict(state)
    if tensors is None:
        return UNKNOWN_FORMAT
    fmt, _ = detect_layout(tensors)
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
        if not is_tensor_dict(state):
            raise WeightsMismatchError(
                f"'{name}' is a detkd key-point model file without a 'state_dict'; it is damaged."
            )
        conf = dict(obj.get("conf") or infer_rpautrat_conf(state))
        return MODEL_FORMAT, dict(state), conf
    if tag == CHECKPOINT_FORMAT:
        inner = obj.get("model")
        tensors = unwrap_state_dict(inner) if inner is not None else None
        if not tensors:
            raise WeightsMismatchError(
                f"'{name}' is a detkd training checkpoint without model weights under 'model'; "
                "it is damaged or was written by an incompatible version."
            )
        layout, prefix = detect_layout(tensors)
        if layout != UNKNOWN_FORMAT:
            tensors = strip_prefix(tensors, prefix, name)
        stored_conf = obj.get("model_conf")
        if isinstance(stored_conf, Mapping) and stored_conf:
            conf = {k: v for k, v in stored_conf.items() if k in SuperPoint.default_conf}
            ignored = sorted(set(stored_conf) - set(SuperPoint.default_conf))
            if ignored:
                warnings.warn(f"'{name}': ignoring model_conf option(s) {ignored} unknown to SuperPoint", stacklevel=3)
        else:
            conf = None
        if layout == "magicleap":
            state = magicleap_to_detkd(tensors)
            return CHECKPOINT_FORMAT, state, conf or infer_magicleap_conf(tensors)
        return CHECKPOINT_FORMAT, tensors, conf or infer_rpautrat_conf(tensors)

    tensors = unwrap_state_dict(obj)
    if not tensors:
        raise WeightsMismatchError(
            _report(name, UNKNOWN_FORMAT, [], [], [], extra=f"it holds no tensors (a {type(obj).__name__})")
        )
    layout, prefix = detect_layout(tensors)
    if layout == UNKNOWN_FORMAT:
        expected = [f"{layer}.{param}" for layer in MAGICLEAP_TO_DETKD for param in ("weight", "bias")]
        raise WeightsMismatchError(
            _report(
                name, UNKNOWN_FORMAT, expected, sorted(tensors), [],
                extra="no key is named like Magic Leap's (conv1a.weight ...) or rpautrat's "
                "(backbone.0.0.conv.weight ...); missing keys below are Magic Leap's",
            )
        )
    tensors = strip_prefix(tensors, prefix, name)
    if layout == "magicleap":
        return layout, magicleap_to_detkd(tensors), infer_magicleap_conf(tensors)
    return layout, tensors, infer_rpautrat_conf(tensors)


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
                [to_file_key(k, fmt) for k in missing],
                [to_file_key(k, fmt) for k in unexpected],
                [(to_file_key(k, fmt), e, f) for k, e, f in mismatched],
                hint=hint,
            )
        )


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


