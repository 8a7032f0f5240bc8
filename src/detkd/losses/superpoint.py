"""Losses for training a SuperPoint-style teacher from scratch (DeTone et al., CVPRW 2018).

* Detector: the image is cut into 8x8 cells; each cell's label is the bin ``8*r + c`` of its key
  point (pixel row ``r``, column ``c`` inside the cell, as in
  :func:`detkd.models.keypoint_ops.logits_to_heatmap`) or 64, the "no point" dustbin; the loss
  is a 65-way cross-entropy per cell. With sub-pixel labels the target is a distribution
  instead (:func:`soft_cell_targets`): each point's bilinear weights on its 4 nearest pixels,
  the rest of the cell's mass on the dustbin.
* Descriptor: a hinge loss on all pairs of cells of two views related by a known homography;
  a pair corresponds when the warped centre of the first cell is within 8 px of the second's.
* Key-point descriptors (optional, in the spirit of DISK/ALIKE's sparse losses): the
  descriptors sampled *at the pseudo-label key points* (bilinear, as at inference) must pick
  out their own warped point among the other key points of the pair (InfoNCE).
* Heatmap consistency (optional, from R2D2, Revaud et al. 2019): local patches of the view-0
  heatmap and of the view-1 heatmap warped back must agree (cosine similarity), which asks
  the detector to put its peaks on the same scene point in both views at sub-pixel precision.

The network's outputs are ``logits (B, 65, Hc, Wc)`` and ``descriptors (B, D, Hc, Wc)`` with
``Hc = H / 8``, ``Wc = W / 8``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detkd.geometry.homography import warp_image, warp_points
from detkd.models.keypoint_ops import CELL, sample_descriptors

DUSTBIN = CELL * CELL  # label 64: no key point in the cell


def _check_maps(name: str, tensor: torch.Tensor) -> None:
    if tensor.dim() != 3:
        raise ValueError(f"{name} must be (B, H, W), got {tuple(tensor.shape)}")
    h, w = tensor.shape[-2:]
    if h % CELL or w % CELL:
        raise ValueError(f"{name} height and width must be multiples of {CELL}, got {h}x{w}")


def keypoint_map_to_cell_labels(
    keypoint_map: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-cell detector targets from a full-resolution key-point map.

    Args:
        keypoint_map: ``(B, H, W)``, 1 (anything > 0.5) at key-point pixels, else 0;
            ``H`` and ``W`` multiples of 8.
        valid_mask: ``(B, H, W)`` or ``None``; key points on invalid pixels (<= 0.5) are ignored.
        generator: when a cell holds several key points, pick one **at random** with this
            generator (as SuperPoint does); ``None`` picks **the first** deterministically, i.e.
            the lowest bin: top-most row, then left-most column.

    Returns:
        ``(B, H/8, W/8)`` int64 labels in ``[0, 64]``: ``8*r + c`` for the key point at row
        ``r``, column ``c`` of the cell, 64 (the dustbin) where the cell has none.
    """
    _check_maps("keypoint_map", keypoint_map)
    points = (keypoint_map > 0.5).float()
    if valid_mask is not None:
        if valid_mask.shape != keypoint_map.shape:
            raise ValueError(
                f"valid_mask {tuple(valid_mask.shape)} must match keypoint_map {tuple(keypoint_map.shape)}"
            )
        points = points * (valid_mask > 0.5).float()
    cells = F.pixel_unshuffle(points[:, None], CELL)  # (B, 64, Hc, Wc), channel 8*r + c
    if generator is None:
        scores = cells * 2.0  # argmax returns the first maximum
    else:
        noise = torch.rand(cells.shape, generator=generator, device=generator.device).to(cells.device)
        scores = cells * (2.0 + noise)
    dustbin = torch.ones_like(scores[:, :1])  # wins only where the cell is empty
    return torch.cat([scores, dustbin], dim=1).argmax(dim=1)


def soft_cell_targets(soft_keypoint_map: torch.Tensor, valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-cell 65-bin target distributions from a map of bilinearly splatted sub-pixel points.

    Args:
        soft_keypoint_map: ``(B, H, W)`` in ``[0, 1]``, e.g. from
            :func:`detkd.data.keypoint_pairs.keypoint_splat_map`; ``H``, ``W`` multiples of 8.
        valid_mask: ``(B, H, W)`` or ``None``; weights on invalid pixels (<= 0.5) are dropped.

    Returns:
        ``(B, 65, H/8, W/8)`` probabilities: bin ``8*r + c`` holds the weight on the cell's
        pixel ``(r, c)``, bin 64 (the dustbin) the rest. A cell whose weights sum above 1
        (several points) is normalised to sum 1 with an empty dustbin. A point on a pixel
        centre gives the one-hot label of :func:`keypoint_map_to_cell_labels`.
    """
    _check_maps("soft_keypoint_map", soft_keypoint_map)
    weights = soft_keypoint_map.float().clamp(0.0, 1.0)
    if valid_mask is not None:
        _expect_shape("valid_mask", valid_mask, tuple(soft_keypoint_map.shape), " to match soft_keypoint_map")
        weights = weights * (valid_mask > 0.5).float()
    cells = F.pixel_unshuffle(weights[:, None], CELL)  # (B, 64, Hc, Wc), channel 8*r + c
    cells = cells / cells.sum(dim=1, keepdim=True).clamp_min(1.0)
    dustbin = (1.0 - cells.sum(dim=1, keepdim=True)).clamp_min(0.0)
    return torch.cat([cells, dustbin], dim=1)


def valid_mask_to_cells(valid_mask: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` pixel mask -> ``(B, H/8, W/8)`` bool: a cell is valid when all its 64 pixels are."""
    _check_maps("valid_mask", valid_mask)
    return F.pixel_unshuffle((valid_mask > 0.5).float()[:, None], CELL).amin(dim=1) > 0.5


def detector_loss(
    logits: torch.Tensor, labels: torch.Tensor, valid_cells: torch.Tensor | None = None
) -> torch.Tensor:
    """Cell-wise 65-bin cross-entropy, averaged over the valid cells.

    Args:
        logits: ``(B, 65, Hc, Wc)`` detector scores before softmax.
        labels: ``(B, Hc, Wc)`` int64 in ``[0, 64]`` (see :func:`keypoint_map_to_cell_labels`),
            or ``(B, 65, Hc, Wc)`` float target distributions (see :func:`soft_cell_targets`).
        valid_cells: ``(B, Hc, Wc)`` bool/float weights, or ``None`` for all cells.

    Returns:
        ``()`` mean cross-entropy in nats; 0 (still attached to the graph) if no cell is valid.
    """
    if logits.dim() != 4 or logits.shape[1] != DUSTBIN + 1:
        raise ValueError(f"logits must be (B, {DUSTBIN + 1}, Hc, Wc), got {tuple(logits.shape)}")
    b, _, hc, wc = logits.shape
    if labels.is_floating_point():
        if labels.shape != logits.shape:
            raise ValueError(
                f"soft labels must be {tuple(logits.shape)} distributions to match logits, got {tuple(labels.shape)}"
            )
    elif labels.dtype != torch.long:
        raise ValueError(f"labels must be int64 class indices or float distributions, got {labels.dtype}")
    elif labels.shape != (b, hc, wc):
        raise ValueError(f"labels must be {(b, hc, wc)} to match logits, got {tuple(labels.shape)}")
    ce = F.cross_entropy(logits, labels, reduction="none")  # (B, Hc, Wc)
    if valid_cells is None:
        return ce.mean()
    if valid_cells.shape != (b, hc, wc):
        raise ValueError(f"valid_cells must be {(b, hc, wc)}, got {tuple(valid_cells.shape)}")
    weights = valid_cells.to(ce.dtype)
    return (ce * weights).sum() / weights.sum().clamp_min(1.0)


def cell_centres(hc: int, wc: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(Hc*Wc, 2)`` pixel centres ``(8j + 3.5, 8i + 3.5)`` of the cells, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(hc, device=device, dtype=dtype), torch.arange(wc, device=device, dtype=dtype), indexing="ij"
    )
    offset = (CELL - 1) / 2
    return torch.stack([xs * CELL + offset, ys * CELL + offset], dim=-1).reshape(-1, 2)


def cell_correspondences(
    homography: torch.Tensor, hc: int, wc: int, radius: float = 8.0
) -> torch.Tensor:
    """Which cells of view 0 and view 1 correspond under ``homography``.

    Args:
        homography: ``(B, 3, 3)`` map from view-0 pixels to view-1 pixels.
        hc, wc: cell grid size (the same in both views).
        radius: pixels; a pair corresponds when the warped centre is within it (``<=``).

    Returns:
        ``(B, Hc*Wc, Hc*Wc)`` bool, ``[b, i, j]`` for view-0 cell ``i`` and view-1 cell ``j``,
        cells numbered row-major.
    """
    centres = cell_centres(hc, wc, homography.device, torch.float64)
    warped = warp_points(centres.expand(homography.shape[0], -1, 2), homography.to(torch.float64))
    return torch.cdist(warped, centres[None].expand_as(warped)) <= radius


def _expect_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...], why: str = "") -> None:
    if tensor.shape != shape:
        raise ValueError(f"{name} must be {shape}{why}, got {tuple(tensor.shape)}")


def _batched_homography(homography: torch.Tensor, b: int) -> torch.Tensor:
    """A ``(3, 3)`` (shared) or ``(B, 3, 3)`` homography as ``(B, 3, 3)``."""
    if homography.dim() == 2:
        homography = homography.expand(b, 3, 3)
    if homography.shape != (b, 3, 3):
        raise ValueError(f"homography must be (3, 3) or ({b}, 3, 3), got {tuple(homography.shape)}")
    return homography


def _descriptor_pair(desc0: torch.Tensor, desc1: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """Check two views' ``(B, D, Hc, Wc)`` descriptors; return the homography as ``(B, 3, 3)``."""
    if desc0.dim() != 4 or desc0.shape != desc1.shape:
        raise ValueError(
            f"desc0 and desc1 must both be (B, D, Hc, Wc) of the same shape, got "
            f"{tuple(desc0.shape)} and {tuple(desc1.shape)}"
        )
    return _batched_homography(homography, desc0.shape[0])


def descriptor_hinge_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    homography: torch.Tensor,
    valid_mask1: torch.Tensor | None = None,
    positive_margin: float = 1.0,
    negative_margin: float = 0.2,
    lambda_d: float = 250.0,
    correspondence_radius: float = 8.0,
) -> torch.Tensor:
    """SuperPoint's dense descriptor hinge loss between two views.

    For every pair of cell ``hw`` in view 0 and ``h'w'`` in view 1, with ``s = 1`` when the
    view-0 cell centre ``(8w + 3.5, 8h + 3.5)`` warped by ``homography`` lies within
    ``correspondence_radius`` px of the view-1 centre (:func:`cell_correspondences`)::

        l = lambda_d * s * max(0, m_p - d.d') + (1 - s) * max(0, d.d' - m_n)

    with ``d, d'`` the L2-normalised descriptors. The result is the mean of ``l`` over all pairs
    whose view-1 cell is valid (as in rpautrat/SuperPoint).

    Note: with the paper's radius of 8 px (``<=``), under the identity the 4 neighbouring cells
    (exactly 8 px away) count as correspondences too; rpautrat uses 7.5 px, which keeps only
    the cell itself.

    Args:
        desc0, desc1: ``(B, D, Hc, Wc)`` dense descriptors (normalised here).
        homography: ``(B, 3, 3)`` (or ``(3, 3)``, shared) map from view-0 to view-1 pixels.
        valid_mask1: ``(B, Hc, Wc)`` bool/float cell mask of view 1, or ``None``.
        positive_margin, negative_margin: ``m_p`` and ``m_n``.
        lambda_d: weight of the positive term (positives are ~1/N of the pairs).
        correspondence_radius: pixels.

    Returns:
        ``()`` loss; 0 (attached to the graph) if no view-1 cell is valid.
    """
    homography = _descriptor_pair(desc0, desc1, homography)
    b, d, hc, wc = desc0.shape
    s = cell_correspondences(homography, hc, wc, correspondence_radius).to(desc0.dtype)  # (B, N, N)
    d0 = F.normalize(desc0.reshape(b, d, hc * wc), p=2, dim=1)
    d1 = F.normalize(desc1.reshape(b, d, hc * wc), p=2, dim=1)
    dot = torch.einsum("bdi,bdj->bij", d0, d1)
    positive = lambda_d * s * F.relu(positive_margin - dot)
    negative = (1 - s) * F.relu(dot - negative_margin)
    loss = positive + negative
    if valid_mask1 is None:
        return loss.mean()
    _expect_shape("valid_mask1", valid_mask1, (b, hc, wc))
    weights = valid_mask1.reshape(b, 1, hc * wc).to(loss.dtype)
    return (loss * weights).sum() / (weights.sum() * hc * wc).clamp_min(1.0)


def descriptor_infonce_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    homography: torch.Tensor,
    valid_mask1: torch.Tensor | None = None,
    temperature: float = 0.1,
    correspondence_radius: float = 7.5,
) -> torch.Tensor:
    """A dense contrastive (InfoNCE) alternative to :func:`descriptor_hinge_loss`.

    Every view-0 cell ``i`` that has at least one corresponding valid view-1 cell (same rule as
    :func:`cell_correspondences`) is classified among all valid view-1 cells::

        l_i = - sum_j t_ij * log softmax_j(d_i . d'_j / temperature),   t_ij = s_ij / sum_j s_ij

    and symmetrically for view-1 cells among view-0 cells (a view-0 cell's validity is whether it
    corresponds to a valid view-1 cell). The result is the mean of both directions over the cells
    that have a correspondence. Unlike the hinge loss, every negative pushes in proportion to how
    confusable it is, which trains useful descriptors in far fewer steps (the reason detkd's
    CPU schedule uses it; the paper's hinge loss stays available).

    Args:
        desc0, desc1: ``(B, D, Hc, Wc)`` dense descriptors (normalised here).
        homography: ``(B, 3, 3)`` (or ``(3, 3)``) map from view-0 to view-1 pixels.
        valid_mask1: ``(B, Hc, Wc)`` bool/float cell mask of view 1, or ``None``.
        temperature: softmax temperature on cosine similarities.
        correspondence_radius: pixels.

    Returns:
        ``()`` loss; 0 (attached to the graph) if no cell has a correspondence.
    """
    homography = _descriptor_pair(desc0, desc1, homography)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, d, hc, wc = desc0.shape
    s = cell_correspondences(homography, hc, wc, correspondence_radius).to(desc0.dtype)  # (B, N0, N1)
    valid1 = torch.ones(b, hc * wc, dtype=torch.bool, device=desc0.device)
    if valid_mask1 is not None:
        _expect_shape("valid_mask1", valid_mask1, (b, hc, wc))
        valid1 = valid_mask1.reshape(b, hc * wc) > 0
    s = s * valid1[:, None, :].to(s.dtype)
    valid0 = s.sum(dim=2) > 0  # view-0 cells that land on a valid view-1 cell
    d0 = F.normalize(desc0.reshape(b, d, hc * wc), p=2, dim=1)
    d1 = F.normalize(desc1.reshape(b, d, hc * wc), p=2, dim=1)
    logits = torch.einsum("bdi,bdj->bij", d0, d1) / temperature
    very_negative = torch.finfo(logits.dtype).min / 4
    rows = logits.masked_fill(~valid1[:, None, :], very_negative).log_softmax(dim=2)
    cols = logits.masked_fill(~valid0[:, :, None], very_negative).log_softmax(dim=1)
    row_targets = s / s.sum(dim=2, keepdim=True).clamp_min(1e-12)
    col_targets = s / s.sum(dim=1, keepdim=True).clamp_min(1e-12)
    row_loss = -(row_targets * rows).sum(dim=2)  # (B, N0), 0 where no correspondence
    col_loss = -(col_targets * cols).sum(dim=1)  # (B, N1)
    has_row = (s.sum(dim=2) > 0).to(logits.dtype)
    has_col = (s.sum(dim=1) > 0).to(logits.dtype)
    total = (row_loss * has_row).sum() + (col_loss * has_col).sum()
    return total / (has_row.sum() + has_col.sum()).clamp_min(1.0)


def keypoint_descriptor_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    keypoint_map0: torch.Tensor,
    homography: torch.Tensor,
    valid_mask1: torch.Tensor | None = None,
    temperature: float = 0.1,
    ignore_radius: float = 3.0,
    max_points: int = 256,
) -> torch.Tensor:
    """Sparse InfoNCE on descriptors sampled at key points, the way they are used at test time.

    The cell losses (:func:`descriptor_hinge_loss`, :func:`descriptor_infonce_loss`) train the
    descriptor at cell centres only, while matching samples it (bilinearly) at key points
    anywhere inside a cell, among other key points a few pixels away. Here, for each image, the
    key points ``p_i`` of ``keypoint_map0`` that land inside view 1 (``q_i = H p_i``, valid in
    ``valid_mask1``) give descriptors ``a_i`` (view 0 at ``p_i``) and ``b_i`` (view 1 at
    ``q_i``), and::

        l = mean_i [ CE(a_i . b_* / t, i) + CE(a_* . b_i / t, i) ] / 2

    Pairs ``i != j`` whose view-1 points are closer than ``ignore_radius`` px are not counted as
    negatives (they are the same place within matching tolerance).

    Args:
        desc0, desc1: ``(B, D, Hc, Wc)`` dense descriptors of the two views (normalised when sampled).
        keypoint_map0: ``(B, H, W)`` view-0 key points (non-zero pixels), ``H = 8 Hc``, ``W = 8 Wc``.
        homography: ``(B, 3, 3)`` (or ``(3, 3)``) view-0 pixels -> view-1 pixels.
        valid_mask1: ``(B, H, W)`` pixels of view 1 that come from inside view 0, or ``None``.
        temperature: softmax temperature on cosine similarities.
        ignore_radius: pixels.
        max_points: per image at most this many key points, evenly spread over the list (bounds
            the ``(N, N)`` similarity matrix).

    Returns:
        ``()`` loss; 0 (attached to the graph) if no image has two usable key points.
    """
    homography = _descriptor_pair(desc0, desc1, homography)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, _, hc, wc = desc0.shape
    h, w = hc * CELL, wc * CELL
    _expect_shape("keypoint_map0", keypoint_map0, (b, h, w), " to fit the descriptors")
    if valid_mask1 is not None:
        _expect_shape("valid_mask1", valid_mask1, (b, h, w))
    total, count = desc0.sum() * 0.0, 0
    for i in range(b):
        rows, cols = torch.nonzero(keypoint_map0[i] > 0, as_tuple=True)
        points0 = torch.stack([cols, rows], dim=-1).to(torch.float64)
        points1 = warp_points(points0, homography[i].to(torch.float64))
        rounded = points1.round().long()
        inside = (rounded[:, 0] >= 0) & (rounded[:, 0] < w) & (rounded[:, 1] >= 0) & (rounded[:, 1] < h)
        if valid_mask1 is not None:
            seen = torch.zeros_like(inside)
            seen[inside] = valid_mask1[i][rounded[inside, 1], rounded[inside, 0]] > 0
            inside = seen
        points0, points1 = points0[inside], points1[inside]
        if len(points0) > max_points:
            keep = torch.linspace(0, len(points0) - 1, max_points, device=points0.device).round().long()
            points0, points1 = points0[keep], points1[keep]
        n = len(points0)
        if n < 2:
            continue
        a = sample_descriptors(points0[None].to(desc0.dtype), desc0[i : i + 1])[0]
        c = sample_descriptors(points1[None].to(desc1.dtype), desc1[i : i + 1])[0]
        logits = a @ c.T / temperature
        near = torch.cdist(points1, points1) < ignore_radius
        near.fill_diagonal_(False)
        logits = logits.masked_fill(near, torch.finfo(logits.dtype).min / 4)
        target = torch.arange(n, device=logits.device)
        pair = F.cross_entropy(logits, target, reduction="sum") + F.cross_entropy(logits.T, target, reduction="sum")
        total, count = total + pair / 2, count + n
    return total / max(count, 1)


def heatmap_consistency_loss(
    heatmap0: torch.Tensor,
    heatmap1: torch.Tensor,
    homography: torch.Tensor,
    valid_mask1: torch.Tensor | None = None,
    patch_size: int = 8,
    eps: float = 1e-12,
) -> torch.Tensor:
    """R2D2's repeatability loss: heatmap patches of two views must agree once aligned.

    The view-1 heatmap is warped back into view 0 (bilinear). Over overlapping ``patch_size``
    square patches (stride ``patch_size // 2``) that lie wholly where view 1 saw view 0::

        cos_p = <h0_p, h1_p> / (|h0_p| |h1_p|)
        loss  = sum_p w_p (1 - cos_p) / sum_p w_p,   w_p = (max h0_p + max h1_p) / 2 (no gradient)

    The weight ``w_p`` makes patches with a key point count and the near-zero heat of empty
    texture not (R2D2 weights all patches alike; its map has no "no point" bin to absorb them).

    Args:
        heatmap0, heatmap1: ``(B, H, W)`` key-point probabilities (``SuperPoint.forward``'s
            ``heatmap``), same size.
        homography: ``(B, 3, 3)`` (or ``(3, 3)``) view-0 pixels -> view-1 pixels.
        valid_mask1: ``(B, H, W)`` pixels of view 1 that come from inside view 0, or ``None``.
        patch_size: pixels.

    Returns:
        ``()`` loss in ``[0, 1]``; 0 (attached to the graph) if no patch is wholly seen.
    """
    if heatmap0.dim() != 3 or heatmap0.shape != heatmap1.shape:
        raise ValueError(
            f"heatmap0 and heatmap1 must both be (B, H, W) of one size, got {tuple(heatmap0.shape)} "
            f"and {tuple(heatmap1.shape)}"
        )
    if patch_size < 2:
        raise ValueError(f"patch_size must be >= 2, got {patch_size}")
    b, h, w = heatmap0.shape
    homography = _batched_homography(homography, b)
    if valid_mask1 is None:
        valid_mask1 = torch.ones_like(heatmap1)
    else:
        _expect_shape("valid_mask1", valid_mask1, (b, h, w))
    inverse = torch.linalg.inv(homography.double()).to(heatmap1.dtype)
    back = warp_image(heatmap1[:, None], inverse)
    seen = (warp_image(valid_mask1[:, None].to(heatmap1.dtype), inverse) > 0.999).to(heatmap1.dtype)
    a, c = heatmap0[:, None] * seen, back * seen
    stride = patch_size // 2
    dot = F.avg_pool2d(a * c, patch_size, stride)
    norm_a = F.avg_pool2d(a * a, patch_size, stride).clamp_min(eps).sqrt()
    norm_c = F.avg_pool2d(c * c, patch_size, stride).clamp_min(eps).sqrt()
    cosine = dot / (norm_a * norm_c)
    whole = F.avg_pool2d(seen, patch_size, stride) > 0.999
    with torch.no_grad():
        weight = 0.5 * (F.max_pool2d(a, patch_size, stride) + F.max_pool2d(c, patch_size, stride)) * whole
    if weight.sum() <= 0:
        return heatmap0.sum() * 0.0
    return ((1.0 - cosine) * weight).sum() / weight.sum()
