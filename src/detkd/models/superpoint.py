"""SuperPoint-family key-point detector and descriptor (post-processing: :mod:`detkd.models.keypoint_ops`).

One network definition serves the teacher and every student: the widths change, and the
encoder is either SuperPoint's VGG (``encoder="vgg"``, the default) or a cheap strided one for
CPU students (``encoder="fast"``, :class:`~detkd.models.superpoint_blocks.FastEncoder`; the blocks and
encoders live in :mod:`detkd.models.superpoint_blocks`); the heads and outputs are the same.
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

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detkd.models.keypoint_ops import (
    CELL,
    check_input_scale,
    detect_keypoints,
    input_size_multiple,
    logits_to_heatmap,
    sample_descriptors,
    sample_map,
    scale_input,
    suppress_flat_regions,
    to_grey,
    unscale_keypoints,
)
from detkd.models.superpoint_blocks import (
    ContextPyramid,
    ConvBlock,
    FastEncoder,
    RepConvBNReLU,
    vgg_encoder,
    zero_output,
)


#: ``encoder`` values: SuperPoint's VGG, or the strided encoder of the CPU students.
ENCODERS = ("vgg", "fast")
#: ``descriptor_stride`` values: the finest stride (pixels) that key-point descriptors read features from.
DESCRIPTOR_STRIDES = (8, 4)
#: ``detector_stride`` values: the finest stride (pixels) that the detector's cell logits read features from.
DETECTOR_STRIDES = (8, 4)
#: Stride (pixels) of the encoder features that the fine descriptor and detector branches read.
FINE_STRIDE = 4

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


class SuperPoint(nn.Module):
    """SuperPoint-family network: VGG or fast encoder, 65-bin detector head, dense descriptor head."""

    default_conf: dict[str, Any] = {
        **VARIANTS["superpoint"],
        "encoder": "vgg",  # "vgg": SuperPoint's; "fast": strided stem, cheap at full resolution (FastEncoder)
        # 8: descriptors read from the head's stride-8 map (SuperPoint); 4: from that map plus a 1x1 projection of the
        # encoder's stride-4 features, each read at the point (finer descriptors, for teachers such as DISK)
        "descriptor_stride": 8,
        # 8: the detector's 65 cell logits come from the stride-8 features alone (SuperPoint); 4: plus a per-pixel
        # offset from the encoder's stride-4 features (finer localisation at a small cost; see fine_detector_offsets)
        "detector_stride": 8,
        "batch_norm": False,
        "bn_eps": 1e-3,
        # fast encoder only: train each encoder conv with RepVGG's 1x1 and identity branches, merged into the one
        # 3x3 conv at inference (same speed, more to train; see RepConvBNReLU). Needs batch_norm.
        "reparam_branches": False,
        # 0: none; N: a stride-16/32 context pyramid of N channels added to the encoder's stride-8 output (see
        # ContextPyramid: a receptive field of about 250 pixels instead of 70 for the fast encoder)
        "context_channels": 0,
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
        if c["descriptor_stride"] not in DESCRIPTOR_STRIDES:
            raise ValueError(f"descriptor_stride must be one of {DESCRIPTOR_STRIDES}, got {c['descriptor_stride']!r}")
        if c["detector_stride"] not in DETECTOR_STRIDES:
            raise ValueError(f"detector_stride must be one of {DETECTOR_STRIDES}, got {c['detector_stride']!r}")
        if c["reparam_branches"] and (c["encoder"] != "fast" or not c["batch_norm"]):
            raise ValueError("reparam_branches needs the fast encoder with batch_norm (its branches are merged through "
                             f"BatchNorm); got encoder {c['encoder']!r}, batch_norm {c['batch_norm']}")
        if isinstance(c["context_channels"], bool) or not isinstance(c["context_channels"], int) or c["context_channels"] < 0:
            raise ValueError(f"context_channels must be 0 (none) or a positive width, got {c['context_channels']!r}")
        bn = {"batch_norm": c["batch_norm"], "bn_eps": c["bn_eps"]}

        if c["encoder"] == "vgg":
            self.backbone = vgg_encoder(c["channels"], **bn)
        else:
            self.backbone = FastEncoder(c["channels"], **bn, reparam_branches=bool(c["reparam_branches"]))
        c_in = c["channels"][-1]
        self.context = ContextPyramid(c_in, c["context_channels"], **bn) if c["context_channels"] else None
        head = c["head_channels"]
        self.detector = nn.Sequential(
            ConvBlock(c_in, head, 3, **bn), ConvBlock(head, CELL * CELL + 1, 1, relu=False, **bn)
        )
        self.descriptor = nn.Sequential(
            ConvBlock(c_in, head, 3, **bn), ConvBlock(head, c["descriptor_dim"], 1, relu=False, **bn)
        )
        fine_width = c["channels"][1]  # both encoders give channels[1] features at stride 4
        if c["descriptor_stride"] == FINE_STRIDE:
            self.descriptor_fine = ConvBlock(fine_width, c["descriptor_dim"], 1, relu=False, **bn)
        if c["detector_stride"] == FINE_STRIDE:
            self.detector_fine = nn.Sequential(
                ConvBlock(fine_width, fine_width, 3, **bn),
                ConvBlock(fine_width, FINE_STRIDE * FINE_STRIDE, 1, relu=False, **bn),
            )
            zero_output(self.detector_fine[-1])

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
            ``descriptors``: ``(B, D, H/8, W/8)`` L2-normalised dense descriptors at the cell centres;
            ``features``: ``(B, C4, H/8, W/8)`` encoder output;
            with ``select_points``, also ``points`` ``(B, N, 2)`` and ``point_descriptors`` ``(B, N, D)`` (unit).
        """
        heads = self.heads(image)
        coarse, fine = heads["coarse_descriptors"], heads["fine_features"]
        if fine is not None:  # the descriptor field at the cell centres, half-way between 2x2 stride-4 cells
            heads["fine_descriptors"] = self.descriptor_fine(fine)
            coarse = coarse + F.avg_pool2d(heads["fine_descriptors"], kernel_size=2)
        out = {key: heads[key] for key in ("logits", "heatmap", "features")}
        out["descriptors"] = F.normalize(coarse, p=2, dim=1)
        if select_points is not None:
            out["points"] = select_points(out["heatmap"])
            out["point_descriptors"] = self.describe(out["points"], heads)
        return out

    def heads(self, image: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """What the network computes before any descriptor is read: ``logits``, ``heatmap`` and ``features``
        as in :meth:`forward`, ``coarse_descriptors`` ``(B, D, H/8, W/8)`` (the descriptor head's output, not
        normalised) and ``fine_features`` (``(B, channels[1], H/4, W/4)`` with ``descriptor_stride`` 4, else
        None). :meth:`describe` reads descriptors at points from it without building the dense map."""
        image = to_grey(image)
        h, w = image.shape[-2:]
        if h % CELL or w % CELL:
            raise ValueError(
                f"SuperPoint.forward needs H and W divisible by {CELL}, got {h}x{w}; "
                "use extract(), which pads, or crop the image"
            )
        features, fine = self.encode(image)
        logits = self.detector_logits(image, features, fine)
        return {"logits": logits, "heatmap": logits_to_heatmap(logits), "features": features,
                "coarse_descriptors": self.descriptor(features),
                "fine_features": fine if self.conf["descriptor_stride"] == FINE_STRIDE else None}

    def describe(self, points: torch.Tensor, heads: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """Unit descriptors ``(B, N, D)`` at ``points`` ``(B, N, 2)`` (pixels x, y), from :meth:`heads`' output.

        ``descriptor_stride`` 8: :meth:`forward`'s dense ``descriptors`` read bilinearly between the cell
        centres (:func:`~detkd.models.keypoint_ops.sample_descriptors`). 4: the head's stride-8 map and the
        projected stride-4 features, each read bilinearly at the point (:func:`~detkd.models.keypoint_ops.sample_map`,
        edges clamped), added and normalised; at the cell centres this is :meth:`forward`'s ``descriptors``.
        In eval mode the projection (a 1x1 conv) runs on the ``N`` features read, not on the whole map.
        """
        coarse, fine = heads["coarse_descriptors"], heads["fine_features"]
        if fine is None:
            return sample_descriptors(points, F.normalize(coarse, p=2, dim=1))
        if heads.get("fine_descriptors") is not None:  # training: BatchNorm statistics of the whole map
            fine_part = sample_map(points, heads["fine_descriptors"], 4)
        elif points.shape[1] == 0 and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return coarse.new_zeros(points.shape[0], 0, coarse.shape[1])  # no point (a flat image): conv2d refuses 0 x 1
        else:
            fine_part = self.descriptor_fine(sample_map(points, fine, 4).transpose(1, 2)[..., None])[..., 0].transpose(1, 2)
        return F.normalize(sample_map(points, coarse, CELL) + fine_part, p=2, dim=-1)

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder output ``(B, C4, H/8, W/8)`` (with ``context_channels``, the :class:`ContextPyramid`'s) and,
        when a descriptor or detector stride is 4, the last stride-4 features ``(B, channels[1], H/4, W/4)``
        (else None)."""
        if FINE_STRIDE not in (self.conf["descriptor_stride"], self.conf["detector_stride"]):
            x, fine = self.backbone(image), None
        else:
            x, fine = image, None
            for stage in self.backbone:
                x = stage(x)
                if x.shape[-2] * FINE_STRIDE == image.shape[-2]:
                    fine = x
        if self.context is not None:
            x = self.context(x)
        return x, fine

    def detector_logits(
        self, image: torch.Tensor, features: torch.Tensor, fine: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cell logits ``(B, 65, H/8, W/8)`` of the detector head, with flat pixels suppressed.

        Args:
            image: ``(B, 1, H, W)`` the grey network input; features: its encoder output.
            fine: ``(B, channels[1], H/4, W/4)`` stride-4 features; read when ``detector_stride`` is 4.
        """
        logits = self.detector(features)
        if self.conf["detector_stride"] == FINE_STRIDE:
            if fine is None:
                raise ValueError("detector_stride 4 needs the encoder's stride-4 features (SuperPoint.encode)")
            logits = logits + fine_detector_offsets(self.detector_fine(fine))
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
        out = self.heads(padded)
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
            self.describe(kp[None], {key: None if value is None else value[i : i + 1] for key, value in out.items()})[0]
            for i, kp in enumerate(keypoints)
        ]
        keypoints = [unscale_keypoints(kp, scale_x, scale_y) for kp in keypoints]
        return {"keypoints": keypoints, "scores": scores, "descriptors": descriptors}


def fine_detector_offsets(offsets: torch.Tensor) -> torch.Tensor:
    """Per-pixel logit offsets from the stride-4 branch, laid out as cell logits.

    Args:
        offsets: ``(B, 16, H/4, W/4)``, channel ``4*r + c`` the offset of pixel ``(row r, column c)`` of
            each 4x4 block.

    Returns:
        ``(B, 65, H/8, W/8)``: bin ``8*r + c`` holds the offset of pixel ``(r, c)`` of the 8x8 cell (the
        order of :func:`~detkd.models.keypoint_ops.logits_to_heatmap`), the "no point" bin 0. Added to the
        stride-8 head's logits, each pixel's score is its cell's logit plus its own offset, so the head can
        place a point within its cell from features twice as fine.
    """
    pixels = F.pixel_unshuffle(F.pixel_shuffle(offsets, FINE_STRIDE), CELL)  # (B, 64, H/8, W/8)
    return F.pad(pixels, (0, 0, 0, 0, 0, 1))


def create_model(variant: str = "superpoint", **conf: Any) -> SuperPoint:
    """Build a named variant (see :data:`VARIANTS`), with any option overridden."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown key-point model variant '{variant}'; choose one of {sorted(VARIANTS)}")
    return SuperPoint(**{**VARIANTS[variant], **conf})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def inference_parameter_count(model: nn.Module) -> int:
    """:func:`count_parameters` less the training-time branches of :class:`RepConvBNReLU` blocks, which merge into
    their block's 3x3 conv: what a model with ``reparam_branches`` has at inference, the same number as the model
    without them."""
    branches = sum(p.numel() for block in model.modules() if isinstance(block, RepConvBNReLU)
                   for part in (block.conv_1x1, block.bn_1x1, block.bn_identity) if part is not None
                   for p in part.parameters())
    return count_parameters(model) - branches


def variant_parameter_counts() -> dict[str, int]:
    """Parameters of each named variant as :func:`create_model` builds it (no memory allocated)."""
    with torch.device("meta"):
        return {name: count_parameters(create_model(name)) for name in VARIANTS}


def with_input_scale(model: SuperPoint, input_scale: float) -> SuperPoint:
    """A copy of ``model`` that runs on the image resized by ``input_scale`` (checked: a number in
    ``[0.25, 4]``; see :func:`~detkd.models.keypoint_ops.scale_input`); ``model`` itself is left as it is."""
    import copy

    scaled = copy.deepcopy(model)
    scaled.conf["input_scale"] = check_input_scale(input_scale)
    return scaled
