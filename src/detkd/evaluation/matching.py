"""Descriptor matching for evaluation: mutual nearest neighbours.

A match is a row ``(i, j)`` of a ``(K, 2)`` long tensor: key point ``i`` of image 0 with key
point ``j`` of image 1. Descriptors are compared by Euclidean distance (for unit vectors
``d = sqrt(2 - 2 cos)``, so it ranks like cosine similarity).
"""

from __future__ import annotations

import kornia.feature as KF
import torch


def _check_descriptors(desc0: torch.Tensor, desc1: torch.Tensor) -> None:
    if desc0.dim() != 2 or desc1.dim() != 2:
        raise ValueError(
            f"descriptors must be (N, D) and (M, D), got {tuple(desc0.shape)} and {tuple(desc1.shape)}"
        )
    if desc0.shape[1] != desc1.shape[1]:
        raise ValueError(
            f"descriptor sizes differ: (N, {desc0.shape[1]}) against (M, {desc1.shape[1]})"
        )


def mutual_nearest_neighbours(
    desc0: torch.Tensor, desc1: torch.Tensor, max_distance: float | None = None
) -> torch.Tensor:
    """Pairs of descriptors that are each other's nearest neighbour.

    Args:
        desc0: ``(N, D)`` descriptors of image 0 (``N`` may be 0).
        desc1: ``(M, D)`` descriptors of image 1 (``M`` may be 0).
        max_distance: drop pairs whose Euclidean descriptor distance exceeds this
            (``None``: keep all mutual pairs).

    Returns:
        ``(K, 2)`` long tensor of indices ``(i, j)``, sorted by ``i``; ``K <= min(N, M)``.
    """
    matches, _ = mutual_nearest_neighbours_with_distances(desc0, desc1, max_distance)
    return matches


def mutual_nearest_neighbours_with_distances(
    desc0: torch.Tensor, desc1: torch.Tensor, max_distance: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mutual_nearest_neighbours` that also returns the descriptor distances.

    Returns:
        ``matches`` ``(K, 2)`` long indices sorted by the image-0 index and
        ``distances`` ``(K,)`` Euclidean descriptor distances of those pairs.
    """
    _check_descriptors(desc0, desc1)
    dtype = torch.promote_types(desc0.dtype, desc1.dtype)
    distances, matches = KF.match_mnn(desc0.to(dtype), desc1.to(dtype))
    distances = distances.reshape(-1)
    matches = matches.reshape(-1, 2).long()
    if max_distance is not None:
        keep = distances <= max_distance
        matches, distances = matches[keep], distances[keep]
    order = torch.argsort(matches[:, 0])
    return matches[order], distances[order]
