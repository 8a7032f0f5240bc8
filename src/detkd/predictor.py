"""``detkd.Predictor``: run a trained model on images, from PyTorch weights or an ONNX export.

    from detkd import Predictor
    predictor = Predictor("runs/kp1/student.pt")          # or "student.onnx", "default"
    out = predictor("photo.jpg")                          # paths, PIL, numpy, tensors
    out["keypoints"], out["scores"], out["descriptors"]   # (N, 2) px, (N,), (N, D) numpy

Both backends run the same computation (:class:`detkd.export.keypoints.KeypointPostprocess`:
heatmap, max-pool NMS, threshold, border removal, the top ``K``, bilinear descriptor sampling)
and return the same outputs, so an application needs neither the training code nor torch's
autograd: ONNX files only need ``onnxruntime`` and ``numpy`` at run time (this module imports
torch for image handling).

Image sizes: the network works on multiples of 8 pixels; an image is padded with zeros at the
bottom and right (as :meth:`SuperPoint.extract` does) and key points that fall in the padding
or in the border margin of the real image are dropped. A fixed-size ONNX export pads up to its
size; a larger image is an error unless ``resize=True`` (then it is resized to the export size
and key points are mapped back to the original pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detkd.models.superpoint import CELL, SuperPoint

ImageInput = Union[str, Path, np.ndarray, torch.Tensor, Any]  # Any: PIL.Image.Image
_LUMA = (0.299, 0.587, 0.114)


class Predictor:
    """Key points, scores and descriptors of images, from a checkpoint or an ONNX file.

    Args:
        model: a key-point model file (detkd ``student.pt``, checkpoint, SuperPoint weights), a
            run folder, ``"default"`` (the shipped teacher), an ``.onnx`` file exported by
            ``detkd export``, or a :class:`SuperPoint` instance.
        device: ``"cpu"`` or ``"cuda"`` (ONNX on CUDA needs ``onnxruntime-gpu``).
        max_keypoints: most key points per image (PyTorch models only; an ONNX file has its
            own, fixed at export).
        threads: CPU threads of ONNX Runtime (None: its default).
        resize: with a fixed-size ONNX file, resize larger images instead of refusing them.

    Call it with one image (path, PIL image, numpy ``(H, W)`` / ``(H, W, 3)`` uint8 or float in
    ``[0, 1]``, tensor ``(H, W)`` / ``(C, H, W)``) to get one dict, or with a list (or a
    ``(B, C, H, W)`` tensor) to get a list. Each dict holds numpy arrays: ``keypoints``
    ``(N, 2)`` float32 pixels (x, y) of the input image, sorted by decreasing score,
    ``scores`` ``(N,)`` and ``descriptors`` ``(N, D)`` unit vectors.
    """

    def __init__(
        self,
        model: str | Path | nn.Module,
        device: str = "cpu",
        *,
        max_keypoints: int | None = None,
        threads: int | None = None,
        resize: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.resize = resize
        self.session = None
        self.module: nn.Module | None = None
        if isinstance(model, nn.Module):
            network, self.origin = model, f"in-memory {type(model).__name__}"
        else:
            from detkd.export.sources import load_model_source

            source = load_model_source(model)
            network, self.origin = source.module, source.origin
            if source.is_onnx:
                self._open_onnx(source.onnx_path, threads)
                return
        if not isinstance(network, SuperPoint):
            raise TypeError(f"Predictor runs SuperPoint-family key-point models, got {type(network).__name__}")
        from detkd.export.keypoints import KeypointPostprocess

        self.backend = "pytorch"
        self.task = "keypoints"
        self.module = KeypointPostprocess(network, max_keypoints).eval().to(self.device)
        self.border = int(network.conf["remove_borders"])
        self.fixed_size: tuple[int, int] | None = None
        self.max_keypoints = self.module.max_keypoints

    def _open_onnx(self, path: Path | None, threads: int | None) -> None:
        from detkd.export.onnx import ort_session, read_metadata

        meta = read_metadata(path)
        if meta.get("task") != "keypoints":
            raise ValueError(f"'{path}' is a {meta.get('task')} model; Predictor runs key-point models")
        if meta.get("raw_heads"):
            raise ValueError(
                f"'{path}' was exported with --raw-heads (dense outputs only); export it without "
                "--raw-heads for Predictor, or post-process its outputs yourself"
            )
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            from detkd.export.onnx import import_onnxruntime

            if "CUDAExecutionProvider" not in import_onnxruntime().get_available_providers():
                raise RuntimeError("ONNX Runtime has no CUDA provider here: install onnxruntime-gpu or use device='cpu'")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort_session(path, threads=threads, providers=providers)
        self.backend = "onnxruntime"
        self.task = "keypoints"
        self.metadata = meta
        self.border = int(meta["model"]["remove_borders"])
        self.max_keypoints = int(meta["model"]["max_keypoints"])
        self.input_name = meta["input"]["name"]
        self.fixed_size = None if meta.get("dynamic") else tuple(meta["input"]["export_size"])

    # ------------------------------------------------------------------ running
    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        if isinstance(images, (list, tuple)):
            return [self.predict_one(image) for image in images]
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            return [self.predict_one(image) for image in images]
        return self.predict_one(images)

    def predict_one(self, image: ImageInput) -> dict[str, np.ndarray]:
        """Key points of one image (see the class doc)."""
        grey = to_grey_tensor(image)  # (1, H, W) float in [0, 1]
        height, width = grey.shape[-2:]
        target = self._input_size(height, width)
        scale = (1.0, 1.0)
        if target[0] < height or target[1] < width:  # only with resize=True
            grey = F.interpolate(grey[None], target, mode="bilinear", antialias=True, align_corners=False)[0]
            scale = (width / target[1], height / target[0])
            valid_h, valid_w = target
        else:
            valid_h, valid_w = height, width
        padded = F.pad(grey, (0, target[1] - grey.shape[-1], 0, target[0] - grey.shape[-2]))[None]
        keypoints, scores, descriptors, count = self._run(padded)
        n = int(count[0])
        keypoints, scores, descriptors = keypoints[0, :n], scores[0, :n], descriptors[0, :n]
        # Drop what lies in the padding or in the border margin of the real image (extract()
        # removes the border of the unpadded heatmap: border <= x < width - border).
        inside = (keypoints[:, 0] < valid_w - self.border) & (keypoints[:, 1] < valid_h - self.border)
        keypoints = keypoints[inside]
        if scale != (1.0, 1.0):
            keypoints = (keypoints + 0.5) * np.asarray(scale, dtype=np.float32) - 0.5
        return {
            "keypoints": np.ascontiguousarray(keypoints, dtype=np.float32),
            "scores": np.ascontiguousarray(scores[inside], dtype=np.float32),
            "descriptors": np.ascontiguousarray(descriptors[inside], dtype=np.float32),
        }

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the network runs at: padded to multiples of 8, or the fixed export size."""
        if self.fixed_size is None:
            return (max(2 * CELL, -(-height // CELL) * CELL), max(2 * CELL, -(-width // CELL) * CELL))
        fixed_h, fixed_w = self.fixed_size
        if (height > fixed_h or width > fixed_w) and not self.resize:
            raise ValueError(
                f"Image of {height}x{width} pixels is larger than the {fixed_h}x{fixed_w} this ONNX file was "
                "exported for; export with a larger --height/--width or --dynamic, or pass resize=True"
            )
        return fixed_h, fixed_w

    def _run(self, batch: torch.Tensor) -> list[np.ndarray]:
        if self.session is not None:
            return self.session.run(None, {self.input_name: batch.numpy()})
        with torch.inference_mode():
            outputs = self.module(batch.to(self.device))
        return [o.cpu().numpy() for o in outputs]

    def __repr__(self) -> str:
        size = "any size" if self.fixed_size is None else f"{self.fixed_size[0]}x{self.fixed_size[1]}"
        return f"Predictor({self.origin}, backend={self.backend}, {size}, max_keypoints={self.max_keypoints})"


def to_grey_tensor(image: ImageInput) -> torch.Tensor:
    """Any supported image as a ``(1, H, W)`` float32 tensor in ``[0, 1]``.

    8-bit colour becomes grey exactly as :func:`detkd.data.images.read_image` does it
    (Pillow's ``L`` conversion, ITU-R 601), so a path, a PIL image and its pixels as a uint8
    array or tensor give the same input; float colour uses the same weights without rounding.
    """
    if isinstance(image, (str, Path)):
        from detkd.data.images import read_image

        return torch.from_numpy(read_image(image, grey=True))[None]
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("L"))
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3):
            tensor = tensor.permute(1, 2, 0)
        elif tensor.dim() != 2:
            raise ValueError(f"tensor image must be (H, W), (1, H, W) or (3, H, W), got {tuple(image.shape)}")
        image = tensor.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"Cannot read an image from a {type(image).__name__}: pass a path, a PIL image, a numpy array "
            "or a torch tensor"
        )
    array = image
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if array.dtype == np.uint8:
            from PIL import Image

            array = np.asarray(Image.fromarray(np.ascontiguousarray(array[..., :3])).convert("L"))
        else:
            array = _to_unit_range(array[..., :3], "colour image") @ np.asarray(_LUMA, dtype=np.float32)
    elif array.ndim != 2:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
    grey = _to_unit_range(np.asarray(array), "image")
    if min(grey.shape) < 1:
        raise ValueError(f"empty image of shape {grey.shape}")
    return torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[None]


def _to_unit_range(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 / uint16 scaled to ``[0, 1]``; floats must already be in ``[0, 1]``."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype.kind != "f":
        raise ValueError(f"{what} has dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    array = array.astype(np.float32)
    if array.size and (np.nanmax(array) > 1.0 + 1e-6 or np.nanmin(array) < -1e-6):
        raise ValueError(
            f"{what} is float with values in [{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]; float images "
            "must be in [0, 1] (divide 8-bit values by 255) or be passed as uint8"
        )
    return array
