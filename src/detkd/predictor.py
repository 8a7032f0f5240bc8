"""``detkd.Predictor``: run a trained model on images, from PyTorch weights or an ONNX export.

Key-point models give key points, scores and descriptors; detectors give boxes, scores and
labels. A detector runs as its inference copy
(:func:`detkd.models.detection.inference_copy`: BatchNorm folded into the convs, channels-last
memory; the same detections, faster in eager PyTorch), so later changes to the module passed in
do not reach the predictor.

    from detkd import Predictor
    predictor = Predictor("runs/kp1/student.pt")          # or "student.onnx", "default"
    out = predictor("photo.jpg")                          # paths, PIL, numpy, tensors
    out["keypoints"], out["scores"], out["descriptors"]   # (N, 2) px, (N,), (N, D) numpy

Both backends run the same computation (:class:`detkd.export.keypoints.KeypointPostprocess`:
heatmap, max-pool NMS, threshold, border removal, the top ``K``, bilinear descriptor sampling)
and return the same outputs, so an application needs neither the training code nor torch's
autograd: ONNX files only need ``onnxruntime`` and ``numpy`` at run time (this module imports
torch for image handling).

Image sizes: key-point networks work on multiples of 8 pixels (16 for an ``input_scale`` of 1.5,
so that the upsampled image is whole cells), detectors on multiples of their largest stride; an
image is padded with zeros at the bottom and right (as :meth:`SuperPoint.extract` does); key
points that fall in the padding or in the border margin of the real image are dropped, boxes are
clipped to the real image. (With an ``input_scale`` that is not 1, on a size that is not such a
multiple, extract() drops a point by the heatmap pixel it was selected at, Predictor by its
refined position, so the two can differ within a pixel of the border margin.) A fixed-size ONNX
export pads up to its size; a larger image is an error unless ``resize=True`` (then it is resized to the export size
and key points are mapped back to the original pixels).

Hostile input: an image of more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`,
40 megapixels) is refused from its array shape or file header before anything is decoded,
converted or allocated; an image with NaN or infinite values is refused with a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detkd.models.keypoint_ops import CELL, input_size_multiple
from detkd.models.superpoint import SuperPoint, with_input_scale

ImageInput = Union[str, Path, np.ndarray, torch.Tensor, Any]  # Any: PIL.Image.Image
_LUMA = (0.299, 0.587, 0.114)

#: Largest image a :class:`Predictor` accepts by default, in pixels (height x width): 40 megapixels,
#: e.g. 8000 x 5000. Change it per predictor with ``Predictor(..., max_pixels=N)``.
DEFAULT_MAX_PIXELS = 40_000_000


class Predictor:
    """Run a key-point model or a detector on images, from a checkpoint or an ONNX file.

    Args:
        model: a key-point model file (detkd ``student.pt``, checkpoint, SuperPoint weights), a
            detector file (:func:`detkd.models.detection.save_detector`) or detection checkpoint,
            a run folder, ``"default"`` (the shipped key-point teacher), an ``.onnx`` file
            exported by ``detkd export``, or a :class:`SuperPoint` / detector adapter instance.
        device: ``"cpu"`` or ``"cuda"`` (ONNX on CUDA needs ``onnxruntime-gpu``).
        max_keypoints: key points: most per image (PyTorch models only; an ONNX file has its
            own, fixed at export).
        score_threshold, nms_iou, max_detections: detectors: post-processing (PyTorch models
            only; fixed at export in an ONNX file).
        threads: CPU threads of ONNX Runtime (None: its default).
        resize: with a fixed-size ONNX file, resize larger images instead of refusing them.
        max_pixels: largest image accepted, in pixels (height x width; default
            :data:`DEFAULT_MAX_PIXELS`, 40 megapixels). A larger image is refused with a
            ``ValueError`` from its shape or file header, before it is decoded or resized. Memory
            and time grow with the pixel count; raise it for large photos you mean to process.
        input_scale: key-point models in PyTorch: run the network on the image resized by this factor and map
            the key points back (1.5 or 2: finer localisation at 2.25x or 4x the compute, see the README's
            results). None: the model's own (``conf["input_scale"]``; an ONNX file's is fixed at export).

    Call it with one image (path, PIL image, numpy ``(H, W)`` / ``(H, W, 3)`` uint8 or float in
    ``[0, 1]``, tensor ``(H, W)`` / ``(C, H, W)``) to get one dict, or with a list (or a
    ``(B, C, H, W)`` tensor) to get a list. Each dict holds numpy arrays in the pixels of the
    input image:

    * key points: ``keypoints`` ``(N, 2)`` float32 (x, y) sorted by decreasing score,
      ``scores`` ``(N,)`` and ``descriptors`` ``(N, D)`` unit vectors;
    * detectors: ``boxes`` ``(D, 4)`` float32 xyxy, ``scores`` ``(D,)`` and ``labels`` ``(D,)``
      int64 class indices, sorted by decreasing score.
    """

    def __init__(
        self,
        model: str | Path | nn.Module,
        device: str = "cpu",
        *,
        max_keypoints: int | None = None,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        threads: int | None = None,
        resize: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        input_scale: float | None = None,
    ) -> None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive whole number of pixels, got {max_pixels!r}")
        self.device = torch.device(device)
        self.resize = resize
        self.max_pixels = max_pixels
        self.session = None
        self.module: nn.Module | None = None
        self.fixed_size: tuple[int, int] | None = None
        if isinstance(model, nn.Module):
            network, self.origin = model, f"in-memory {type(model).__name__}"
        else:
            from detkd.export.sources import load_model_source

            source = load_model_source(model)
            network, self.origin = source.module, source.origin
            if source.is_onnx:
                if input_scale is not None:
                    raise ValueError(f"input_scale applies to PyTorch key-point models; the ONNX file '{model}' has its "
                                     "own, fixed at export ('detkd export --input-scale')")
                self._open_onnx(source.onnx_path, threads)
                return
        self.backend = "pytorch"
        if input_scale is not None:
            if not isinstance(network, SuperPoint):
                raise ValueError(f"input_scale applies to key-point models, not to a {type(network).__name__}")
            network = with_input_scale(network, input_scale)
        if isinstance(network, SuperPoint):
            from detkd.export.keypoints import KeypointPostprocess

            self.task = "keypoints"
            self.module = KeypointPostprocess(network, max_keypoints).eval().to(self.device)
            self.border = int(network.conf["remove_borders"])
            self.limit = self.module.max_keypoints
            self.multiple = self.module.size_multiple
            return
        from detkd.models.detection import DetectorAdapter

        if not isinstance(network, DetectorAdapter):
            raise TypeError(
                f"Predictor runs SuperPoint-family key-point models and detkd detectors, got {type(network).__name__}"
            )
        from detkd.export.detection import DetectionPostprocess
        from detkd.models.detection.inference import inference_copy

        self.task = "detection"
        self.module = DetectionPostprocess(inference_copy(network), score_threshold, nms_iou,
                                           max_detections).eval().to(self.device)
        self.limit = max_detections
        self.multiple = max(network.strides)

    def _open_onnx(self, path: Path | None, threads: int | None) -> None:
        from detkd.export.onnx import ort_session, read_metadata

        meta = read_metadata(path)
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
        self.task = meta.get("task", "keypoints")
        self.metadata = meta
        self.input_name = meta["input"]["name"]
        self.fixed_size = None if meta.get("dynamic") else tuple(meta["input"]["export_size"])
        if self.task == "keypoints":
            self.border = int(meta["model"]["remove_borders"])
            self.limit = int(meta["model"]["max_keypoints"])
            self.multiple = input_size_multiple(float(meta["model"].get("input_scale", 1.0))) or CELL
        else:
            self.limit = int(meta["model"]["max_detections"])
            self.multiple = max(meta["model"]["strides"])

    # ------------------------------------------------------------------ running
    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        if isinstance(images, (list, tuple)):
            return [self.predict_one(image) for image in images]
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            return [self.predict_one(image) for image in images]
        return self.predict_one(images)

    def predict_one(self, image: ImageInput) -> dict[str, np.ndarray]:
        """Outputs for one image (see the class doc).

        Raises:
            ValueError: the image is larger than ``max_pixels`` or than a fixed-size ONNX file
                (checked before it is decoded), holds NaN or infinite values, or cannot be read.
        """
        size = image_height_width(image)
        if size is not None:  # refuse before anything is decoded, converted or allocated
            self._check_pixels(*size, image)
            self._input_size(*size)  # a fixed-size ONNX file refuses a larger image here
        convert = to_grey_tensor if self.task == "keypoints" else to_rgb_tensor
        tensor = convert(image, max_pixels=self.max_pixels)  # (C, H, W)
        height, width = tensor.shape[-2:]
        target = self._input_size(height, width)
        scale = (1.0, 1.0)
        valid_h, valid_w = height, width
        if target[0] < height or target[1] < width:  # only with resize=True
            tensor = F.interpolate(tensor[None], target, mode="bilinear", antialias=True, align_corners=False)[0]
            scale = (width / target[1], height / target[0])
            valid_h, valid_w = target
        padded = F.pad(tensor, (0, target[1] - tensor.shape[-1], 0, target[0] - tensor.shape[-2]))[None]
        outputs = self._run(padded)
        if self.task == "keypoints":
            return self._keypoints(outputs, valid_h, valid_w, scale)
        return self._detections(outputs, valid_h, valid_w, scale)

    def _keypoints(self, outputs: list[np.ndarray], valid_h: int, valid_w: int,
                   scale: tuple[float, float]) -> dict[str, np.ndarray]:
        keypoints, scores, descriptors, count = outputs
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

    def _detections(self, outputs: list[np.ndarray], valid_h: int, valid_w: int,
                    scale: tuple[float, float]) -> dict[str, np.ndarray]:
        boxes, scores, labels, count = outputs
        n = int(count[0])
        # Boxes may reach into the zero padding: clip them to the real image.
        boxes = np.clip(boxes[0, :n], 0, [valid_w, valid_h, valid_w, valid_h])
        boxes = boxes * np.asarray(scale * 2, dtype=np.float32)
        return {
            "boxes": np.ascontiguousarray(boxes, dtype=np.float32),
            "scores": np.ascontiguousarray(scores[0, :n], dtype=np.float32),
            "labels": np.ascontiguousarray(labels[0, :n], dtype=np.int64),
        }

    def _check_pixels(self, height: int, width: int, image: ImageInput) -> None:
        """Refuse a ``height x width`` pixel image above ``max_pixels``."""
        if height * width <= self.max_pixels:
            return
        what = f"Image '{image}'" if isinstance(image, (str, Path)) else "Image"
        raise ValueError(
            f"{what} of {height} x {width} pixels ({height * width / 1e6:.3g} megapixels) is above this "
            f"Predictor's limit of {self.max_pixels / 1e6:g} megapixels; downscale it, or allow it with "
            f"Predictor(..., max_pixels={height * width}) (memory and time grow with the pixel count)"
        )

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the network runs at: padded to its size multiple, or the fixed export size."""
        if self.fixed_size is None:
            m = self.multiple
            low = 2 * CELL if self.task == "keypoints" else m
            return (max(low, -(-height // m) * m), max(low, -(-width // m) * m))
        fixed_h, fixed_w = self.fixed_size
        if (height > fixed_h or width > fixed_w) and not self.resize:
            raise ValueError(
                f"Image of {height}x{width} pixels is larger than the {fixed_h}x{fixed_w} this ONNX file was "
                "exported for; export with a larger --height/--width"
                + (" or --dynamic" if self.task == "keypoints" else "") + ", or pass resize=True"
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
        what = "max_keypoints" if self.task == "keypoints" else "max_detections"
        return f"Predictor({self.origin}, {self.task}, backend={self.backend}, {size}, {what}={self.limit})"


def image_height_width(image: ImageInput) -> tuple[int, int] | None:
    """``(height, width)`` in pixels of an image input from its shape or file header, nothing decoded.

    ``None`` for what is not an image (the converters then say what is wrong with it).

    Raises:
        ImageReadError: a path that is missing, empty (0 bytes) or not an image.
    """
    if isinstance(image, (str, Path)):
        from detkd.data.images import image_file_size

        width, height = image_file_size(image)
        return height, width
    if type(image).__module__.startswith("PIL."):
        return int(image.size[1]), int(image.size[0])
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim >= 2:
        shape = tuple(image.shape)
        if isinstance(image, torch.Tensor) and image.ndim == 3 and shape[0] in (1, 3):
            return shape[1], shape[2]  # (C, H, W)
        return shape[0], shape[1]
    return None


def _pixels_as_array(image: Any) -> np.ndarray:
    """A tensor ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` or a numpy array as a channels-last array."""
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
    return image


def to_rgb_tensor(image: ImageInput, max_pixels: int | None = None) -> torch.Tensor:
    """Any supported image as a ``(3, H, W)`` float32 RGB tensor in ``[0, 1]`` (grey is repeated).

    ``max_pixels`` limits image files (default: :data:`detkd.data.images.MAX_IMAGE_PIXELS`).
    """
    if isinstance(image, (str, Path)):
        from detkd.data.images import read_image

        return torch.from_numpy(read_image(image, grey=False, max_pixels=max_pixels)).permute(2, 0, 1).contiguous()
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("RGB"))
    image = _pixels_as_array(image)
    array = _to_unit_range(np.asarray(image), "image")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
    if min(array.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array[..., :3], dtype=np.float32)).permute(2, 0, 1).contiguous()


def to_grey_tensor(image: ImageInput, max_pixels: int | None = None) -> torch.Tensor:
    """Any supported image as a ``(1, H, W)`` float32 tensor in ``[0, 1]``.

    8-bit colour becomes grey exactly as :func:`detkd.data.images.read_image` does it
    (Pillow's ``L`` conversion, ITU-R 601), so a path, a PIL image and its pixels as a uint8
    array or tensor give the same input; float colour uses the same weights without rounding.
    ``max_pixels`` limits image files (default: :data:`detkd.data.images.MAX_IMAGE_PIXELS`).
    """
    if isinstance(image, (str, Path)):
        from detkd.data.images import read_image

        return torch.from_numpy(read_image(image, grey=True, max_pixels=max_pixels))[None]
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("L"))
    image = _pixels_as_array(image)
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
    """uint8 / uint16 scaled to ``[0, 1]``; floats must already be in ``[0, 1]`` and finite."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype.kind != "f":
        raise ValueError(f"{what} has dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(
            f"{what} has {int(finite.size - np.count_nonzero(finite))} NaN or infinite pixel value(s); "
            "replace them (e.g. np.nan_to_num) before predicting"
        )
    if array.size and (np.nanmax(array) > 1.0 + 1e-6 or np.nanmin(array) < -1e-6):
        raise ValueError(
            f"{what} is float with values in [{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]; float images "
            "must be in [0, 1] (divide 8-bit values by 255) or be passed as uint8"
        )
    return array
