"""Automatic mask generation ("segment everything") and its utilities."""

from .generator import AmgCancelled, AmgState, SamAutomaticMaskGenerator
from .labels import masks_to_label_image, segmentation_to_mask
from .rle import (
    area_from_rle,
    coco_decode_rle,
    coco_encode_rle,
    mask_to_rle_pytorch,
    masks_to_rle_counts,
    rle_to_mask,
)
from .seeds import SeededMaskGenerator, find_seeds, generator_for_model
from .utils import MaskData, batched_nms, nms, remove_small_regions

__all__ = [
    "AmgCancelled",
    "AmgState",
    "MaskData",
    "SamAutomaticMaskGenerator",
    "SeededMaskGenerator",
    "area_from_rle",
    "batched_nms",
    "coco_decode_rle",
    "coco_encode_rle",
    "find_seeds",
    "generator_for_model",
    "mask_to_rle_pytorch",
    "masks_to_label_image",
    "masks_to_rle_counts",
    "nms",
    "remove_small_regions",
    "rle_to_mask",
    "segmentation_to_mask",
]
