"""Object-detection data: readers (COCO, VOC, YOLO), ``data.yaml``, tiling, augmented streams, synthetic shapes.

Boxes everywhere are ``xyxy`` float pixels in the continuous frame where an image spans
``[0, W] x [0, H]``; labels are class indices ``0 .. K-1``.
"""

from detkd.data.detection.coco import detection_set_to_coco, read_coco
from detkd.data.detection.config import DataConfig, DataSource, concat_sets, load_data_config, read_split
from detkd.data.detection.records import (
    AnnotationError,
    DetectionRecord,
    DetectionSet,
    ImageCache,
    image_size,
    load_record_image,
)
from detkd.data.detection.stream import (
    DetectionStream,
    EvalBatch,
    UnlabeledDetectionStream,
    collate_detections,
    iter_eval_batches,
    pad_targets,
    unlabeled_records,
    unpad_targets,
)
from detkd.data.detection.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticDetectionConfig,
    SyntheticDetectionStream,
    SyntheticScene,
    draw_detection_scene,
    synthetic_detection_set,
    write_synthetic_coco,
    write_synthetic_dataset,
)
from detkd.data.detection.tiling import crop_record, region_split, tile_records, tree_tiles_split
from detkd.data.detection.transforms import BoxViewConfig, ColourJitterConfig, letterbox, random_box_view
from detkd.data.detection.voc import read_voc
from detkd.data.detection.yolo import read_yolo

__all__ = [
    "AnnotationError", "BoxViewConfig", "ColourJitterConfig", "DataConfig", "DataSource", "DetectionRecord",
    "DetectionSet", "DetectionStream", "EvalBatch", "ImageCache", "SYNTHETIC_CLASSES", "SyntheticDetectionConfig",
    "SyntheticDetectionStream", "SyntheticScene", "UnlabeledDetectionStream", "collate_detections", "concat_sets",
    "crop_record", "detection_set_to_coco", "draw_detection_scene", "image_size", "iter_eval_batches", "letterbox",
    "load_data_config", "load_record_image", "pad_targets", "random_box_view", "read_coco", "read_split", "read_voc",
    "read_yolo", "region_split", "synthetic_detection_set", "tile_records", "tree_tiles_split", "unlabeled_records",
    "unpad_targets", "write_synthetic_coco", "write_synthetic_dataset",
]
