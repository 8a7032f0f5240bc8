"""Planar geometry shared by data augmentation, training and evaluation."""

from detkd.geometry.homography import (
    corner_error,
    points_inside,
    sample_homography,
    warp_image,
    warp_points,
)

__all__ = ["corner_error", "points_inside", "sample_homography", "warp_image", "warp_points"]
