"""Classical key-point baselines (OpenCV SIFT and ORB) behind SuperPoint's ``extract`` API.

:class:`OpenCVFeatures` can be passed to
:func:`detkd.evaluation.keypoints.evaluate_keypoint_models` beside SuperPoint teachers and
students, so that all of them are measured on the same pairs with the same matcher (mutual
nearest neighbours by Euclidean descriptor distance) and the same metrics.

Coordinates follow detkd's convention (centre of the top-left pixel = ``(0, 0)``):

* SIFT is created with ``enable_precise_upscale=True``. With OpenCV's default upscale the
  first octave is a bilinear 2x resize that maps pixel ``x`` to ``2x + 0.5``, and every
  ``keypoint.pt`` comes out shifted by ``+0.25`` px in x and y; the precise upscale maps ``x``
  to ``2x`` and the points are unbiased (checked on Gaussian blobs: < 0.03 px).
* ORB reports ``keypoint.pt = s * p`` for a point ``p`` of pyramid level ``l``
  (``s = scaleFactor ** l``), but its levels are resized with pixel centres aligned
  (``p = (x + 0.5) / s - 0.5``), so ``pt`` is ``(s - 1) / 2`` px too small (0.1 px at level 1,
  1.3 px at level 7). :class:`OpenCVFeatures` adds that back.

Descriptors are float tensors:

* SIFT: the 128 OpenCV values, L2-normalised (``root_sift=True``: RootSIFT, i.e. L1-normalised
  then square-rooted, which is also unit L2 norm; Euclidean distance between RootSIFT
  vectors is the Hellinger distance between the SIFT histograms).
* ORB: the 256 bits of OpenCV's 32-byte descriptor unpacked to 0.0 / 1.0 (most significant bit
  of each byte first). For 0/1 vectors the squared Euclidean distance *equals* the Hamming
  distance, so Euclidean mutual nearest neighbours are exactly Hamming mutual nearest
  neighbours (ties broken by the lower index, as OpenCV's brute-force matcher does).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from detkd.models.keypoint_ops import to_grey

FEATURE_KINDS = ("sift", "orb")
#: Descriptor size (floats per key point) of each kind.
DESCRIPTOR_DIMS = {"sift": 128, "orb": 256}
#: ``nfeatures`` given to ORB when every key point is asked for (``max_keypoints < 0``);
#: ORB, unlike SIFT, has no "keep all" value.
ORB_ALL_FEATURES = 100_000


def unpack_binary_descriptors(packed: np.ndarray) -> torch.Tensor:
    """OpenCV binary descriptors ``(N, B)`` uint8 -> ``(N, 8 B)`` float32 bits (0.0 / 1.0).

    Bits are unpacked most significant first. For two such rows, the squared Euclidean
    distance equals the Hamming distance of the packed bytes.
    """
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"binary descriptors must be (N, B) uint8, got {packed.shape} {packed.dtype}")
    return torch.from_numpy(np.unpackbits(packed, axis=1).astype(np.float32))


def image_to_uint8(image: torch.Tensor) -> list[np.ndarray]:
    """``(B, 1, H, W)`` / ``(B, 3, H, W)`` / ``(H, W)`` floats in ``[0, 1]`` -> ``B`` grey
    ``(H, W)`` uint8 arrays (values clipped to ``[0, 1]``, times 255, rounded)."""
    if image.dim() == 2:
        image = image[None, None]
    grey = to_grey(image)[:, 0].detach().float().cpu()
    u8 = (grey.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    return [np.ascontiguousarray(frame) for frame in u8]


class OpenCVFeatures:
    """OpenCV SIFT or ORB with SuperPoint's ``extract`` API (see the module doc).

    Args:
        kind: ``"sift"`` or ``"orb"``.
        max_keypoints: default number of key points per image (``-1``: all; ORB then asks for
            :data:`ORB_ALL_FEATURES`); ``extract(..., max_keypoints=k)`` overrides it.
        root_sift: RootSIFT descriptors instead of L2-normalised SIFT (SIFT only).
        options: more keyword arguments for ``cv2.SIFT_create`` / ``cv2.ORB_create`` (e.g.
            ``contrastThreshold=0.03`` or ``fastThreshold=10``); ``nfeatures`` is set from
            ``max_keypoints``.

    It is not an ``nn.Module``; :meth:`eval`, :meth:`train` and :meth:`to` exist so that code
    written for models may call them, and do nothing.
    """

    training = False

    def __init__(self, kind: str = "sift", max_keypoints: int = 1024, root_sift: bool = False, **options: Any) -> None:
        if kind not in FEATURE_KINDS:
            raise ValueError(f"OpenCVFeatures kind must be one of {FEATURE_KINDS}, got '{kind}'")
        if root_sift and kind != "sift":
            raise ValueError("root_sift applies to kind='sift' only")
        if "nfeatures" in options:
            raise ValueError("pass max_keypoints, not nfeatures (it is set from max_keypoints)")
        if kind == "sift":
            options.setdefault("enable_precise_upscale", True)
        self.kind = kind
        self.max_keypoints = int(max_keypoints)
        self.root_sift = root_sift
        self.options = options
        self.descriptor_dim = DESCRIPTOR_DIMS[kind]
        self._create(self.max_keypoints)  # fail now on a bad option, not at the first image

    def __repr__(self) -> str:
        extra = ", root_sift=True" if self.root_sift else ""
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"OpenCVFeatures(kind={self.kind!r}, max_keypoints={self.max_keypoints}{extra}{opts})"

    # ------------------------------------------------------------------ model-like no-ops
    def eval(self) -> OpenCVFeatures:
        return self

    def train(self, mode: bool = True) -> OpenCVFeatures:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OpenCVFeatures:
        return self

    # ------------------------------------------------------------------ detection
    def _create(self, max_keypoints: int) -> cv2.Feature2D:
        try:
            if self.kind == "sift":
                return cv2.SIFT_create(nfeatures=max(max_keypoints, 0), **self.options)
            nfeatures = max_keypoints if max_keypoints > 0 else ORB_ALL_FEATURES
            return cv2.ORB_create(nfeatures=nfeatures, **self.options)
        except (cv2.error, TypeError) as err:
            raise ValueError(f"Cannot create OpenCV {self.kind.upper()} with options {self.options}: {err}") from err

    def _orb_scale_factor(self, detector: cv2.Feature2D) -> float:
        return float(detector.getScaleFactor())

    def extract(self, image: torch.Tensor, max_keypoints: int | None = None) -> dict[str, list[torch.Tensor]]:
        """Detect and describe key points.

        Args:
            image: ``(B, 1, H, W)`` / ``(B, 3, H, W)`` / ``(H, W)`` float in ``[0, 1]``, any size
                (converted to 8-bit grey for OpenCV).
            max_keypoints: per image, the strongest kept (``-1``: all; ``None``: the default).

        Returns:
            Lists with one entry per image, on ``image``'s device: ``keypoints`` ``(N, 2)``
            float32 pixels (x, y), sorted by decreasing ``scores`` ``(N,)`` (OpenCV's
            ``response``), and ``descriptors`` ``(N, D)`` float32 (D = 128 for SIFT, 256 for ORB).
            ``N <= max_keypoints``; SIFT may report one location twice with two orientations.
        """
        k = self.max_keypoints if max_keypoints is None else int(max_keypoints)
        detector = self._create(k)
        out: dict[str, list[torch.Tensor]] = {"keypoints": [], "scores": [], "descriptors": []}
        for frame in image_to_uint8(image):
            keypoints, descriptors = detector.detectAndCompute(frame, None)
            points, scores, desc = self._convert(detector, keypoints, descriptors)
            order = torch.argsort(scores, descending=True, stable=True)
            if k >= 0:
                order = order[:k]
            out["keypoints"].append(points[order].to(image.device))
            out["scores"].append(scores[order].to(image.device))
            out["descriptors"].append(desc[order].to(image.device))
        return out

    def _convert(
        self, detector: cv2.Feature2D, keypoints: Any, descriptors: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """OpenCV output -> ``(N, 2)`` points, ``(N,)`` scores, ``(N, D)`` float descriptors."""
        n = len(keypoints)
        if n == 0 or descriptors is None:
            return torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, self.descriptor_dim)
        points = np.array([kp.pt for kp in keypoints], dtype=np.float64).reshape(n, 2)
        scores = torch.tensor([kp.response for kp in keypoints], dtype=torch.float32)
        if self.kind == "orb":
            scale_factor = self._orb_scale_factor(detector)
            levels = np.array([kp.octave for kp in keypoints], dtype=np.float64)
            points += ((scale_factor**levels - 1.0) / 2.0)[:, None]
            desc = unpack_binary_descriptors(descriptors)
        else:
            desc = torch.from_numpy(np.asarray(descriptors, dtype=np.float32))
            if self.root_sift:
                desc = torch.sqrt(desc / desc.sum(dim=1, keepdim=True).clamp_min(1e-12))
            desc = torch.nn.functional.normalize(desc, p=2, dim=1)
        return torch.from_numpy(points.astype(np.float32)), scores, desc
