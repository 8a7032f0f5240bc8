"""Save and load detectors: detkd's detector file and detkd training checkpoints.

Formats read by :func:`load_detector`:

``"detkd.detector"``
    What :func:`save_detector` writes: ``{"format": "detkd.detector", "version": 1, "config":
    adapter.config, "class_names": [...] | None, "state_dict": <adapter.state_dict()>, "extra": {...}}``.
``"detkd.checkpoint"``
    A training checkpoint of :class:`detkd.engine.Trainer` written by a detection task, whose
    ``checkpoint_extra()`` put ``{"detector_config": adapter.config}`` beside the weights
    under ``"model"``. The detector's keys may sit under a prefix (``student.`` when the
    trainable module holds the student and, say, adaptation layers); the prefix with most
    matching keys is used and other keys are ignored with a warning.

Both are plain containers and tensors, loaded with ``torch.load(weights_only=True)``. Anything
else, or weights that do not fit the stored configuration, raises
:class:`~detkd.models.weights.WeightsMismatchError` naming the file, what was expected and
what was found (missing, unexpected and wrong-shape keys).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from detkd.config import ConfigError
from detkd.engine.checkpoint import CHECKPOINT_FORMAT, atomic_save
from detkd.models.detection.adapters import DetectorAdapter
from detkd.models.detection.registry import create_detector_from_config
from detkd.models.model_files import key_listing, key_report_lines, plain_metadata
from detkd.models.weights import UnreadableWeightsError, UnsafeWeightsError, WeightsMismatchError
from detkd.safe_files import UnreadableFileError, UnsafeFileError, safe_torch_load, verify_digest, with_digest

DETECTOR_FORMAT = "detkd.detector"
DETECTOR_FORMAT_VERSION = 1


def save_detector(adapter: DetectorAdapter, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``adapter`` to ``path`` atomically as a ``"detkd.detector"`` file (see module doc).

    Args:
        adapter: the detector.
        path: destination; parent folders are created.
        extra: plain facts to keep with the model (str, int, float, bool, None, lists/dicts of
            them; tensors, numpy values and paths are converted), e.g. metrics or the data file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(adapter, DetectorAdapter):
        raise TypeError(f"save_detector expects a DetectorAdapter, got {type(adapter).__name__}")
    payload = with_digest({
        "format": DETECTOR_FORMAT,
        "version": DETECTOR_FORMAT_VERSION,
        "config": adapter.config,
        "class_names": adapter.class_names,
        "state_dict": {k: v.detach().cpu().clone() for k, v in adapter.state_dict().items()},
        "extra": plain_metadata(dict(extra or {}), "extra", "save_detector", tuples_as_lists=True),
    })
    return atomic_save(payload, path)


def read_detector_extra(path: str | Path) -> dict[str, Any]:
    """The ``extra`` dict stored by :func:`save_detector` (empty for a training checkpoint)."""
    obj = _read(Path(path), "cpu")
    return dict(obj.get("extra") or {}) if isinstance(obj, Mapping) else {}


def load_detector(path: str | Path, map_location: str | torch.device = "cpu") -> DetectorAdapter:
    """Rebuild the detector stored in ``path`` (a detector file or a detection training checkpoint).

    Returns:
        The adapter in eval mode, on ``map_location``.

    Raises:
        FileNotFoundError: no such file.
        UnreadableWeightsError: not a torch file.
        WeightsMismatchError: not a detector file / detection checkpoint, or its weights do
            not fit its configuration; the message lists missing, unexpected and wrong-shape keys.
    """
    path = Path(path)
    obj = _read(path, map_location)
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if fmt == DETECTOR_FORMAT:
        version = obj.get("version", DETECTOR_FORMAT_VERSION)
        if not isinstance(version, int) or version > DETECTOR_FORMAT_VERSION:
            raise WeightsMismatchError(
                f"'{path}' is a detkd detector file of version {version}, newer than this detkd reads "
                f"(version {DETECTOR_FORMAT_VERSION}). Upgrade detkd to load it."
            )
        config, state = obj.get("config"), obj.get("state_dict")
        if not isinstance(config, Mapping) or not _is_tensor_dict(state):
            raise WeightsMismatchError(f"'{path}' is a detkd detector file without 'config' or 'state_dict'; it is damaged.")
        config = {**config, "class_names": obj.get("class_names", config.get("class_names"))}
    elif fmt == CHECKPOINT_FORMAT:
        config, state = obj.get("detector_config"), obj.get("model")
        if not isinstance(config, Mapping):
            raise WeightsMismatchError(
                f"'{path}' is a detkd training checkpoint without 'detector_config': it was not written by a "
                "detection task (a key-point checkpoint?). Expected a detector file (save_detector) or a "
                "checkpoint of 'detkd detect train/distill'."
            )
        if not _is_tensor_dict(state):
            raise WeightsMismatchError(f"'{path}' is a detkd training checkpoint without weights under 'model'; it is damaged.")
    else:
        raise WeightsMismatchError(_not_a_detector(path, obj))

    try:
        # Built on the meta device first: a config asking for huge layers allocates nothing
        # before its shapes are compared with the file's tensors.
        with torch.device("meta"):
            skeleton = create_detector_from_config(config)
        expected = skeleton.state_dict()
        state = _strip_prefix(dict(state), set(expected), path)
        _check_state(skeleton, expected, state, path, fmt)
        adapter = create_detector_from_config(config)
    except (ConfigError, TypeError, ValueError, OverflowError, RuntimeError) as err:
        if isinstance(err, WeightsMismatchError):
            raise
        raise WeightsMismatchError(f"'{path}' (format {fmt}) holds a detector config that cannot be built: {err}") from err
    adapter.load_state_dict(state, strict=False)  # every expected key is present (checked)
    return adapter.to(map_location).eval()


# ---------------------------------------------------------------------- reading
def _read(path: Path, map_location: Any) -> Any:
    """The object in ``path`` (:func:`safe_torch_load`), its content digest checked where it has one."""
    try:
        obj = safe_torch_load(path, "Detector file", map_location)
        verify_digest(obj, path, "Detector file")
    except UnsafeFileError as err:
        raise UnsafeWeightsError(str(err)) from None
    except UnreadableFileError as err:
        raise UnreadableWeightsError(str(err)) from None
    return obj


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _not_a_detector(path: Path, obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in obj]
        found = f"a dict with keys {key_listing(keys)}" + (f" (format '{obj['format']}')" if "format" in obj else "")
    else:
        found = f"a {type(obj).__name__}"
    return (
        f"Cannot load a detector from '{path}': expected a detkd detector file (format '{DETECTOR_FORMAT}', "
        f"written by save_detector) or a detection training checkpoint (format '{CHECKPOINT_FORMAT}' with "
        f"'detector_config'); found {found}.\n"
        "Fix: for a plain state dict, build the model with create_detector(name, num_classes) and call "
        "load_state_dict on it; otherwise pass a model.pt / student.pt written by detkd."
    )


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str], path: Path) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under the prefix that holds most ``expected`` keys, prefix removed."""
    prefixes: Counter[str] = Counter()
    for key in state:
        for i in [0] + [j + 1 for j, c in enumerate(key) if c == "."]:
            if key[i:] in expected:
                prefixes[key[:i]] += 1
                break
    if not prefixes:
        return state
    prefix, _ = max(prefixes.items(), key=lambda item: (item[1], item[0].startswith("student."), -len(item[0])))
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    outside = [k for k in state if not k.startswith(prefix)]
    if outside:
        warnings.warn(
            f"'{path}': using the detector weights under '{prefix}' and ignoring {len(outside)} other tensor(s) "
            f"({key_listing(outside)})",
            UserWarning,
            stacklevel=3,
        )
    return inside


def _check_state(
    adapter: DetectorAdapter, expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: Path, fmt: str
) -> None:
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: expected {list(expected[k].shape)}, found {list(state[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [
        f"Cannot load detector weights from '{path}' (format {fmt}): they do not fit "
        f"{adapter.name} with {adapter.num_classes} classes and overrides {adapter.config['overrides']} "
        "(the configuration stored in the file)"
    ]
    lines += key_report_lines(missing, unexpected, mismatched)
    lines.append(
        "Fix: the file's configuration and weights disagree (edited or damaged file, or weights of another "
        "model saved under this config); re-save the model with detkd.models.detection.save_detector."
    )
    raise WeightsMismatchError("\n".join(lines))
