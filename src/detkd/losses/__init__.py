"""Training losses: SuperPoint teacher training (detector cross-entropy, descriptor hinge or InfoNCE, key-point descriptor InfoNCE, heatmap consistency)."""

from detkd.losses.superpoint import (
    DUSTBIN,
    cell_centres,
    cell_correspondences,
    descriptor_hinge_loss,
    descriptor_infonce_loss,
    detector_loss,
    heatmap_consistency_loss,
    keypoint_descriptor_loss,
    keypoint_map_to_cell_labels,
    soft_cell_targets,
    valid_mask_to_cells,
)

__all__ = [
    "DUSTBIN", "cell_centres", "cell_correspondences", "descriptor_hinge_loss", "descriptor_infonce_loss",
    "detector_loss", "heatmap_consistency_loss", "keypoint_descriptor_loss",
    "keypoint_map_to_cell_labels", "soft_cell_targets", "valid_mask_to_cells",
]
