"""SuperPoint-family key-point detector and descriptor, with its post-processing.

One network definition serves the teacher and every student: the widths change, and the
encoder is either SuperPoint's VGG (``encoder="vgg"``, the default) or a cheap strided one for
CPU students (``encoder="fast"``, :class:`FastEncoder`); the heads and outputs are the same.
The VGG module layout mirrors rpautrat/SuperPoint's PyTorch port (``backbone.{i}.{j}.conv/bn``,
``detector.{0,1}``, ``descriptor.{0,1}``) so that its weights load as they are, and the
Magic Leap names (``conv1a`` ... ``convDb``) map onto it one to one
(:mod:`detkd.models.weights`).

Shapes: images ``(B, 1, H, W)`` grey in ``[0, 1]`` (colour ``(B, 3, H, W)`` is converted);
the network works on cells of 8x8 pixels, so ``H`` and ``W`` must be multiples of 8 in
:meth:`SuperPoint.forward`; :meth:`SuperPoint.extract` pads any size.
Key points are ``(x, y)`` pixel coordinates, the centre of the top-left pixel being ``(0, 0)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CELL = 8  # pixels per cell side; every encoder downsamples by 8 (three 2x2 poolings or stride-2 convs)

#: ``encoder`` values: SuperPoint's VGG, or the strided encoder of the CPU students.
ENCODERS = ("vgg", "fast")

#: Named variants; widths are (block1, block2, block3, block4), the heads' hidden width,
#: and the descriptor size. Parameter counts in the comments are exact, for ``create_model(name)``.
VARIANTS: dict[str, dict[str, Any]] = {
    # DeTone et al. 2018: 1,300,865 parameters
    "superpoint": {"channels": (64, 64, 128, 128), "head_channels": 256, "descriptor_dim": 256},
    # GoodPoint "half the filters" (32-64-128): 346,465 parameters
    "half": {"channels": (32, 32, 64, 64), "head_channels": 128, "descriptor_dim": 256},
    # GoodPoint quarter student (32-32-64): 122,913 parameters
    "tiny": {"channels": (32, 32, 32, 32), "head_channels": 64, "descriptor_dim": 256},
    # CPU students (FastEncoder, BatchNorm; benchmarks/results/student_speed.md). Full extract 2.4x faster
    # than XFeat's at 480x640 on one thread in PyTorch, 2.0x in ONNX Runtime: 56,699 parameters
    "fast-s": {"encoder": "fast", "channels": (8, 16, 32, 32), "head_channels": 32, "descriptor_dim": 256,
               "batch_norm": True},
    # about XFeat's speed, 2.6x tiny's parameters: 323,411 parameters
    "fast-m": {"encoder": "fast", "channels": (16, 32, 64, 96), "head_channels": 96, "descriptor_dim": 256,
               "batch_norm": True},
    # 0.6-0.7x XFeat's speed, 4x faster than tiny: 604,939 parameters
    "fast-l": {"encoder": "fast", "channels": (24, 48, 96, 128), "head_channels": 128, "descriptor_dim": 256,
               "batch_norm": True},
}


def folded_conv_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(C_out, C_in, k, k)`` and bias ``(C_out,)`` of one conv equal to ``bn(conv(x))`` with
    BatchNorm's running statistics (eval mode)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale[:, None, None, None], (bias - bn.running_mean) * scale + bn.bias


def can_fold_batch_norm(module: nn.Module, bn: nn.Module) -> bool:
    """Whether ``module`` may run its conv and BatchNorm as one conv: eval mode, running statistics,
    eager PyTorch (a traced graph keeps both; ONNX Runtime fuses them itself)."""
    return (not module.training and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()))


class ConvBlock(nn.Sequential):
    """conv -> ReLU -> BatchNorm (rpautrat order); BatchNorm is an identity when disabled.

    Without ReLU, in eval mode, conv and BatchNorm run as one conv (:func:`folded_conv_weights`):
    the same values, one pass over the output less (the 256-channel descriptor map).
    """

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, relu: bool = True, batch_norm: bool = False,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.activation = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.activation, nn.Identity) or not can_fold_batch_norm(self, self.bn):
            return super().forward(x)
        weight, bias = folded_conv_weights(self.conv, self.bn)  # type: ignore[arg-type]
        return F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding)


def vgg_encoder(channels: tuple[int, ...], batch_norm: bool = False, bn_eps: float = 1e-3) -> nn.Sequential:
    """SuperPoint's encoder: per width, two 3x3 :class:`ConvBlock` s, then 2x2 max-pooling (not after the last).

    ``(B, 1, H, W)`` -> ``(B, channels[3], H/8, W/8)``. Modules ``{i}.{j}.conv/bn`` (rpautrat's names).
    """
    stages = []
    c_in = 1
    for i, width in enumerate(channels):
        layers: list[nn.Module] = [
            ConvBlock(c_in, width, 3, batch_norm=batch_norm, bn_eps=bn_eps),
            ConvBlock(width, width, 3, batch_norm=batch_norm, bn_eps=bn_eps),
        ]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        stages.append(nn.Sequential(*layers))
        c_in = width
    return nn.Sequential(*stages)


class ConvBNReLU(nn.Sequential):
    """3x3 conv (stride 1 or 2) -> BatchNorm -> ReLU, the order ONNX Runtime fuses into one conv.

    Without BatchNorm the conv has a bias instead. In eval mode eager PyTorch runs conv and
    BatchNorm as one conv too (:func:`folded_conv_weights`).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, batch_norm: bool = True, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps) if batch_norm else nn.Identity()
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not can_fold_batch_norm(self, self.bn):
            return super().forward(x)
        weight, bias = folded_conv_weights(self.conv, self.bn)  # type: ignore[arg-type]
        return F.relu(F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding), inplace=True)


class FastEncoder(nn.Sequential):
    """Strided encoder for CPU students: nothing runs at full resolution.

    ``(B, 1, H, W)`` -> ``(B, c4, H/8, W/8)`` with ``channels = (c1, c2, c3, c4)``:

    * ``stem``: 3x3 stride-2 conv to ``c1`` (``H/2``);
    * ``stage2``, ``stage3``: a 3x3 stride-2 conv to ``c2`` / ``c3`` and a 3x3 conv (``H/4``, ``H/8``);
    * ``stage4``: a 3x3 conv to ``c4`` at ``H/8``; the heads' own 3x3 convs follow.

    Every conv is :class:`ConvBNReLU`. The first conv sees 1 channel and the full-resolution
    image once, with stride 2: at 480x640 the ``H/2`` level costs ``9 c1`` multiply-adds per
    output pixel, against ``9 c1 (1 + c1)`` per input pixel for a VGG stage.
    """

    def __init__(self, channels: tuple[int, ...], batch_norm: bool = True, bn_eps: float = 1e-3) -> None:
        c1, c2, c3, c4 = channels
        bn = {"batch_norm": batch_norm, "bn_eps": bn_eps}
        super().__init__(OrderedDict(
            stem=ConvBNReLU(1, c1, stride=2, **bn),
            stage2=nn.Sequential(ConvBNReLU(c1, c2, stride=2, **bn), ConvBNReLU(c2, c2, **bn)),
            stage3=nn.Sequential(ConvBNReLU(c2, c3, stride=2, **bn), ConvBNReLU(c3, c3, **bn)),
            stage4=ConvBNReLU(c3, c4, **bn),
        ))


class SuperPoint(nn.Module):
    """SuperPoint-family network: VGG or fast encoder, 65-bin detector head, dense descriptor head."""

    default_conf: dict[str, Any] = {
        **VARIANTS["superpoint"],
        "encoder": "vgg",  # "vgg": SuperPoint's; "fast": strided stem, cheap at full resolution (FastEncoder)
        "batch_norm": False,
        "bn_eps": 1e-3,
        # post-processing (reference-demo defaults)
        "nms_radius": 4,  # pixels
        "detection_threshold": 0.015,  # on the softmax heatmap
        "remove_borders": 4,  # pixels
        "max_keypoints": 1024,  # per image; -1 keeps all
        "subpixel_radius": 2,  # soft-argmax refinement window (heatmap pixels each side); 0: whole pixels
        "input_scale": 1.0,  # extract() runs the network on the image resized by this factor (see scale_input)
        # no key points where the image is flat (see suppress_flat_regions); 0 switches the gate off
        "flat_threshold": 0.02,  # intensity range (max - min, grey in [0, 1]) of a pixel's window below which it is flat
        "flat_radius": 2,  # half-width of that window, in network-input pixels
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(
                f"Unknown SuperPoint option(s) {sorted(unknown)}; valid: {sorted(self.default_conf)}"
            )
        self.conf = {**self.default_conf, **conf}
        self.conf["channels"] = tuple(self.conf["channels"])
        c = self.conf
        check_input_scale(c["input_scale"])
        if len(c["channels"]) != 4:
            raise ValueError(f"channels must have 4 widths (one per encoder block), got {c['channels']}")
        if c["encoder"] not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {c['encoder']!r}")
        bn = {"batch_norm": c["batch_norm"], "bn_eps": c["bn_eps"]}

        encoder = vgg_encoder if c["encoder"] == "vgg" else FastEncoder
        self.backbone = encoder(c["channels"], **bn)
        c_in = c["channels"][-1]
        head = c["head_channels"]
        self.detector = nn.Sequential(
            ConvBlock(c_in, head, 3, **bn), ConvBlock(head, CELL * CELL + 1, 1, relu=False, **bn)
        )
        self.descriptor = nn.Sequential(
            ConvBlock(c_in, head, 3, **bn), ConvBlock(head, c["descriptor_dim"], 1, relu=False, **bn)
        )

    # ------------------------------------------------------------------ dense outputs
    def forward(
        self, image: torch.Tensor, select_points: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Dense outputs of the network.

        Args:
            image: ``(B, 1, H, W)`` or ``(B, 3, H, W)`` in ``[0, 1]``; ``H, W`` multiples of 8.
            select_points: optional; maps the ``heatmap`` to ``(B, N, 2)`` pixels (x, y) at which
                the descriptors are also returned as :meth:`extract` samples them (what a
                distillation target needs, e.g. :func:`detkd.distill.keypoints.select_training_points`).

        Returns:
            ``logits``: ``(B, 65, H/8, W/8)`` detector scores before softmax (bin 64 = "no point");
            ``heatmap``: ``(B, H, W)`` per-pixel key-point probability;
            ``descriptors``: ``(B, D, H/8, W/8)`` L2-normalised dense descriptors;
            ``features``: ``(B, C4, H/8, W/8)`` encoder output;
            with ``select_points``, also ``points`` ``(B, N, 2)`` and ``point_descriptors`` ``(B, N, D)`` (unit).
        """
        image = to_grey(image)
        h, w = image.shape[-2:]
        if h % CELL or w % CELL:
            raise ValueError(
                f"SuperPoint.forward needs H and W divisible by {CELL}, got {h}x{w}; "
                "use extract(), which pads, or crop the image"
            )
        features = self.backbone(image)
        logits = self.detector_logits(image, features)
        descriptors = F.normalize(self.descriptor(features), p=2, dim=1)
        out = {
            "logits": logits,
            "heatmap": logits_to_heatmap(logits),
            "descriptors": descriptors,
            "features": features,
        }
        if select_points is not None:
            out["points"] = select_points(out["heatmap"])
            out["point_descriptors"] = sample_descriptors(out["points"], descriptors)
        return out

    def detector_logits(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Cell logits ``(B, 65, H/8, W/8)`` of the detector head, with flat pixels suppressed.

        Args:
            image: ``(B, 1, H, W)`` the grey network input; features: its encoder output.
        """
        logits = self.detector(features)
        return suppress_flat_regions(logits, image, self.conf["flat_threshold"], self.conf["flat_radius"])

    # ------------------------------------------------------------------ sparse outputs
    @torch.no_grad()
    def extract(self, image: torch.Tensor, **overrides: Any) -> dict[str, list[torch.Tensor]]:
        """Detect and describe key points.

        With ``input_scale`` ``s != 1`` the network sees the image resized by ``s``
        (:func:`scale_input`) and the key points are mapped back to the input's pixels; ``2``
        halves the localisation error of a network whose heatmap is only as fine as its pixels,
        at four times the compute (SIFT, likewise, starts from the image upsampled 2x).

        Args:
            image: ``(B, 1, H, W)`` / ``(B, 3, H, W)`` / ``(H, W)`` in ``[0, 1]``, any size.
            overrides: post-processing options for this call (``nms_radius``,
                ``detection_threshold``, ``remove_borders``, ``max_keypoints``,
                ``subpixel_radius``, ``input_scale``).

        Returns:
            Lists with one entry per image: ``keypoints`` ``(N, 2)`` pixels (x, y) of the input
            image, ``scores`` ``(N,)`` heatmap values, ``descriptors`` ``(N, D)`` unit vectors.
        """
        bad = set(overrides) - {"nms_radius", "detection_threshold", "remove_borders", "max_keypoints",
                                "subpixel_radius", "input_scale"}
        if bad:
            raise ValueError(f"extract() does not take {sorted(bad)}")
        conf = {**self.conf, **overrides}
        scale = check_input_scale(conf["input_scale"])
        if image.dim() == 2:
            image = image[None, None]
        image = to_grey(image)
        h, w = image.shape[-2:]
        # Pad so that the resized image is whole cells (as the exported graph does), resize, and pad
        # again for a factor that no such padding serves (e.g. 1.3).
        multiple = input_size_multiple(scale) or CELL
        image = F.pad(image, (0, (-w) % multiple, 0, (-h) % multiple))
        image, (scale_x, scale_y) = scale_input(image, scale)
        padded = F.pad(image, (0, (-image.shape[-1]) % CELL, 0, (-image.shape[-2]) % CELL))
        out = self(padded)
        heatmap = out["heatmap"][:, : round(h * scale_y), : round(w * scale_x)]  # the image's own part
        keypoints, scores = detect_keypoints(
            heatmap,
            nms_radius=round(conf["nms_radius"] * scale),
            threshold=conf["detection_threshold"],
            border=round(conf["remove_borders"] * scale),
            max_keypoints=conf["max_keypoints"],
            subpixel_radius=conf["subpixel_radius"],
        )
        descriptors = [
            sample_descriptors(kp[None], d[None])[0] for kp, d in zip(keypoints, out["descriptors"])
        ]
        keypoints = [unscale_keypoints(kp, scale_x, scale_y) for kp in keypoints]
        return {"keypoints": keypoints, "scores": scores, "descriptors": descriptors}


# ---------------------------------------------------------------------- functions
def to_grey(image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB -> ``(B, 1, H, W)`` luminance (ITU-R 601); grey passes through."""
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must be (B, 1, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    if image.shape[1] == 3:
        weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        image = (image * weights).sum(1, keepdim=True)
    return image


def check_input_scale(scale: Any) -> float:
    """``input_scale`` as a float; an error naming the option unless it is a number in ``[0.25, 4]``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.25 <= float(scale) <= 4:
        raise ValueError(f"input_scale must be a number between 0.25 and 4 (1: the image as it is), got {scale!r}")
    return float(scale)


def input_size_multiple(scale: float) -> int | None:
    """The side multiple (pixels) that stays a whole number of 8-pixel cells once resized by ``scale``.

    ``scale = p / q`` in lowest terms with ``q`` 1, 2, 4 or 8 (whole factors, halves, quarters,
    eighths: exact in binary, so every runtime computes the same size) gives ``8 q``: 8 for 2,
    16 for 1.5, 32 for 1.25. Any other factor gives ``None``.
    """
    fraction = Fraction(float(scale)).limit_denominator(CELL)
    if float(fraction) != float(scale) or fraction.denominator not in (1, 2, 4, 8):
        return None
    return CELL * fraction.denominator


def scale_input(image: torch.Tensor, scale: float) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resize ``(B, C, H, W)`` images by ``scale`` (bilinear, pixel centres aligned).

    Returns:
        The ``(B, C, round(s H), round(s W))`` images (the input itself when ``scale`` is 1) and
        the exact per-axis factors ``(new W / W, new H / H)`` for :func:`unscale_keypoints`.
    """
    if scale == 1:
        return image, (1.0, 1.0)
    h, w = image.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    return resized, (size[1] / w, size[0] / h)


def unscale_keypoints(keypoints: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """``(..., 2)`` pixels (x, y) of an image resized by ``(scale_x, scale_y)`` -> pixels of the
    original (pixel centres aligned: ``x = (x' + 0.5) / s - 0.5``)."""
    if scale_x == 1 and scale_y == 1:
        return keypoints
    factors = keypoints.new_tensor([scale_x, scale_y])
    return (keypoints + 0.5) / factors - 0.5


#: How far below the "no key point" bin a flat pixel's bin is pushed: its probability becomes at most e^-20.
FLAT_LOGIT_MARGIN = 20.0


def flatness(image: torch.Tensor, radius: int, threshold: float) -> torch.Tensor:
    """``(B, 1, H, W)`` in ``[0, 1]``: how flat each pixel's ``(2r+1)^2`` neighbourhood is.

    With ``spread`` the neighbourhood's range (maximum minus minimum intensity, exact in every
    runtime): 1 where ``spread <= threshold / 2``, 0 where ``spread >= threshold``, linear in
    between, so that outputs change continuously with the pixels (an exported graph and
    PyTorch agree near the threshold).
    """
    highest = window_max(image, radius)
    lowest = -window_max(-image, radius)
    return (2 - 2 * (highest - lowest) / threshold).clamp(0, 1)


def window_max(values: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum of each ``(2r+1)^2`` window of ``(B, C, H, W)`` values (stride 1, edges padded with -inf).

    Equal to ``F.max_pool2d(values, 2r+1, stride=1, padding=r)``. In eager PyTorch it is taken
    along rows, then along columns, as element-wise maxima of shifted views: on a CPU, PyTorch's
    stride-1 max-pooling of few-channel full-resolution maps is 20x slower (240 ms against 10 ms
    for a 5x5 window on 480x640, one thread). Traced for ONNX export it is the max-pooling
    itself, which ONNX Runtime runs fast.
    """
    if radius <= 0:
        return values
    size = 2 * radius + 1
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return F.max_pool2d(values, size, stride=1, padding=radius)
    height, width = values.shape[-2:]
    padded = F.pad(values, (radius, radius, 0, 0), value=float("-inf"))
    rows = padded[..., :, 0:width]
    for shift in range(1, size):
        rows = torch.maximum(rows, padded[..., :, shift:shift + width])
    padded = F.pad(rows, (0, 0, radius, radius), value=float("-inf"))
    out = padded[..., 0:height, :]
    for shift in range(1, size):
        out = torch.maximum(out, padded[..., shift:shift + height, :])
    return out


def suppress_flat_regions(logits: torch.Tensor, image: torch.Tensor, threshold: float, radius: int) -> torch.Tensor:
    """Cell logits in which no pixel of a flat region can be a key point.

    A key point needs texture: on a constant patch (black borders, letterboxing, the fill of a
    warp) a network's output is its biases alone, and the shipped teacher, trained on photos,
    fires everywhere on pure black. Each pixel bin is lowered towards at most the "no key
    point" bin minus :data:`FLAT_LOGIT_MARGIN`, in proportion to the pixel's :func:`flatness`:
    ``bin - f * relu(bin - (dustbin - margin))``. The heatmap, the cell distribution (so a
    distillation target) and every exported graph agree.

    Args:
        logits: ``(B, 65, H/8, W/8)``; image: ``(B, 1, H, W)`` grey in ``[0, 1]``.
        threshold: intensity range (in ``[0, 1]``) of a pixel's neighbourhood below which it starts to
            count as flat; ``<= 0`` returns ``logits``.
        radius: half-width of the window, in pixels.
    """
    if threshold <= 0:
        return logits
    flat = F.pixel_unshuffle(flatness(image, radius, threshold).to(logits.dtype), CELL)  # (B, 64, Hc, Wc)
    points, dustbin = logits[:, :-1], logits[:, -1:]
    points = points - flat * F.relu(points - (dustbin - FLAT_LOGIT_MARGIN))
    return torch.cat([points, dustbin], dim=1)


def logits_to_heatmap(logits: torch.Tensor) -> torch.Tensor:
    """Cell logits ``(B, 65, Hc, Wc)`` -> full-resolution probabilities ``(B, 8*Hc, 8*Wc)``.

    Softmax over the 65 bins, drop the dustbin, then depth-to-space (bin ``8*r + c`` is
    pixel ``(row r, column c)`` of the cell, as in SuperPoint).
    """
    probs = logits.softmax(dim=1)[:, :-1]
    return F.pixel_shuffle(probs, CELL)[:, 0]


def nms_mask(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Local maxima of ``(B, H, W)`` scores within a ``(2r+1)^2`` window (max-pool NMS).

    The window maximum is :func:`window_max`: the same values as one square max-pooling, at a
    fraction of its cost on a CPU.
    """
    if radius <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores == window_max(scores[:, None], radius)[:, 0]


def detect_keypoints(
    heatmap: torch.Tensor,
    nms_radius: int = 4,
    threshold: float = 0.015,
    border: int = 4,
    max_keypoints: int = -1,
    subpixel_radius: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Key points from a heatmap: NMS, threshold, border removal, top-k, sub-pixel refinement.

    Args:
        heatmap: ``(B, H, W)`` probabilities.
        nms_radius: suppression radius in pixels (0 disables NMS).
        threshold: minimum heatmap value.
        border: pixels to drop along each edge.
        max_keypoints: keep the best ``k`` per image (``-1``: all).
        subpixel_radius: move each kept pixel by :func:`subpixel_offsets` with this radius
            (``0``: whole pixels). Selection and scores do not change.

    Returns:
        ``keypoints`` list of ``(N_b, 2)`` float (x, y) pixels, sorted by decreasing score,
        and ``scores`` list of ``(N_b,)``.
    """
    if heatmap.dim() != 3:
        raise ValueError(f"heatmap must be (B, H, W), got {tuple(heatmap.shape)}")
    b, h, w = heatmap.shape
    keep = nms_mask(heatmap, nms_radius) & (heatmap > threshold)
    if border > 0:
        inner = torch.zeros_like(keep)
        inner[:, border : h - border, border : w - border] = True
        keep &= inner
    keypoints, scores = [], []
    for i in range(b):
        ys, xs = torch.nonzero(keep[i], as_tuple=True)
        s = heatmap[i, ys, xs]
        order = torch.argsort(s, descending=True)
        if max_keypoints >= 0:
            order = order[:max_keypoints]
        ys, xs = ys[order], xs[order]
        points = torch.stack([xs, ys], dim=-1).to(heatmap.dtype)
        if subpixel_radius > 0:
            points = points + subpixel_offsets_at(heatmap[i], xs, ys, subpixel_radius)
        keypoints.append(points)
        scores.append(s[order])
    return keypoints, scores


def subpixel_offsets(heatmap: torch.Tensor, radius: int) -> torch.Tensor:
    """Soft-argmax offset of every pixel's ``(2r+1)^2`` neighbourhood, weighted by the heatmap.

    For pixel ``p`` the offset is ``sum_d h(p + d) d / sum_d h(p + d)`` over ``d`` in
    ``[-r, r]^2``: the heatmap's centre of mass around ``p`` (outside the image counts as 0).
    Dense (three small convolutions) so that the same code serves eager use and ONNX graphs.
    Whole-pixel peaks are only as precise as the heatmap's own grid; the centre of mass
    recovers the part of a corner's position that the network spreads over neighbours.

    Args:
        heatmap: ``(B, H, W)`` non-negative scores.
        radius: ``r`` in pixels, ``>= 1``.

    Returns:
        ``(B, 2, H, W)`` offsets (dx, dy) in pixels, each within ``[-r, r]``.
    """
    if heatmap.dim() != 3:
        raise ValueError(f"heatmap must be (B, H, W), got {tuple(heatmap.shape)}")
    if radius < 1:
        raise ValueError(f"subpixel radius must be >= 1 pixel, got {radius}")
    d = torch.arange(-radius, radius + 1, dtype=heatmap.dtype, device=heatmap.device)
    size = 2 * radius + 1
    ones = torch.ones(size, size, dtype=heatmap.dtype, device=heatmap.device)
    kernels = torch.stack([ones, ones * d[None, :], ones * d[:, None]])[:, None]  # mass, x-moment, y-moment
    moments = F.conv2d(heatmap[:, None], kernels, padding=radius)
    return moments[:, 1:] / moments[:, :1].clamp_min(torch.finfo(heatmap.dtype).tiny)


def subpixel_offsets_at(heatmap: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`subpixel_offsets` at given pixels only: the same centre of mass, from their windows alone.

    The dense version convolves the whole heatmap (7 ms of a 38 ms extract at 480x640 on one
    CPU thread); key points are a few thousand pixels at most, so eager extraction gathers
    their ``(2r+1)^2`` windows instead. Exported graphs keep the dense one.

    Args:
        heatmap: ``(H, W)`` non-negative scores of one image.
        xs, ys: ``(N,)`` integer pixel columns and rows.
        radius: ``r >= 1`` pixels.

    Returns:
        ``(N, 2)`` offsets (dx, dy) in pixels, equal to ``subpixel_offsets(heatmap[None], r)[0, :, ys, xs].T``.
    """
    if radius < 1:
        raise ValueError(f"subpixel radius must be >= 1 pixel, got {radius}")
    d = torch.arange(-radius, radius + 1, device=heatmap.device)
    padded = F.pad(heatmap, (radius, radius, radius, radius))  # outside the image counts as 0
    rows = (ys[:, None, None] + radius + d[None, :, None]).expand(-1, d.numel(), d.numel())
    cols = (xs[:, None, None] + radius + d[None, None, :]).expand(-1, d.numel(), d.numel())
    windows = padded[rows, cols]  # (N, 2r+1, 2r+1), window[k, i, j] = h(y + d_i, x + d_j)
    mass = windows.sum(dim=(1, 2))
    d = d.to(heatmap.dtype)
    moments = torch.stack([(windows * d[None, None, :]).sum(dim=(1, 2)), (windows * d[None, :, None]).sum(dim=(1, 2))], -1)
    return moments / mass.clamp_min(torch.finfo(heatmap.dtype).tiny)[:, None]


def sample_descriptors(keypoints: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample dense descriptors at key points and L2-normalise them.

    Cell ``(i, j)`` of the ``(Hc, Wc)`` map describes the 8x8 block whose centre is pixel
    ``(8j + 3.5, 8i + 3.5)``; sampling interpolates between those centres (a corner outside the
    map contributes zero).

    Args:
        keypoints: ``(B, N, 2)`` pixels (x, y).
        descriptors: ``(B, D, Hc, Wc)``.

    Returns:
        ``(B, N, D)`` unit descriptors.
    """
    b, d, hc, wc = descriptors.shape
    if keypoints.shape[0] != b or keypoints.shape[-1] != 2:
        raise ValueError(
            f"keypoints {tuple(keypoints.shape)} do not fit descriptors {tuple(descriptors.shape)}"
        )
    cell = (keypoints - (CELL / 2 - 0.5)) / CELL  # pixel -> cell-centre coordinates
    scale = keypoints.new_tensor([max(wc - 1, 1), max(hc - 1, 1)])
    grid = (cell / scale * 2 - 1)[:, None]  # (B, 1, N, 2)
    sampled = F.grid_sample(descriptors, grid.to(descriptors.dtype), mode="bilinear", align_corners=True)
    return F.normalize(sampled[:, :, 0].transpose(1, 2), p=2, dim=-1)


def create_model(variant: str = "superpoint", **conf: Any) -> SuperPoint:
    """Build a named variant (see :data:`VARIANTS`), with any option overridden."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown key-point model variant '{variant}'; choose one of {sorted(VARIANTS)}")
    return SuperPoint(**{**VARIANTS[variant], **conf})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def variant_parameter_counts() -> dict[str, int]:
    """Parameters of each named variant as :func:`create_model` builds it (no memory allocated)."""
    with torch.device("meta"):
        return {name: count_parameters(create_model(name)) for name in VARIANTS}
