"""Turn automatic-mask records (or plain masks) into one label image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .rle import coco_decode_rle, rle_to_mask

__all__ = ["masks_to_label_image", "segmentation_to_mask"]


def segmentation_to_mask(segmentation: Any) -> np.ndarray:
    """A record's ``segmentation`` in any output mode (bool array, uncompressed or COCO RLE) -> bool mask."""
    if isinstance(segmentation, dict):
        if "size" not in segmentation or "counts" not in segmentation:
            raise ValueError("An RLE segmentation needs 'size' and 'counts'.")
        if isinstance(segmentation["counts"], (str, bytes)):
            segmentation = coco_decode_rle(segmentation)
        return rle_to_mask(segmentation)
    mask = np.asarray(segmentation)
    if mask.ndim != 2:
        raise ValueError(f"A mask must be 2-D, got shape {mask.shape}.")
    return mask.astype(bool, copy=False)


def masks_to_label_image(
    masks: Sequence[dict[str, Any]] | Sequence[np.ndarray] | np.ndarray,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Paint masks into a ``uint32`` label image; label ``i + 1`` is ``masks[i]``, 0 is background.

    ``masks`` is the list of records of :class:`SamAutomaticMaskGenerator` (any output mode) or a
    list / (N, H, W) array of bool masks. Larger masks are painted first so smaller ones on top of
    them stay visible (ties keep the input order). ``shape`` is required only for an empty input.
    """
    items = list(masks) if not isinstance(masks, np.ndarray) else list(masks)
    decoded = [
        segmentation_to_mask(m["segmentation"] if isinstance(m, dict) and "segmentation" in m else m)
        for m in items
    ]
    if not decoded:
        if shape is None:
            raise ValueError("No masks given: pass shape=(H, W) to get an empty label image.")
        return np.zeros(tuple(shape), dtype=np.uint32)
    first = decoded[0].shape
    if shape is not None and tuple(shape) != first:
        raise ValueError(f"shape {tuple(shape)} does not match the masks' shape {first}.")
    for i, m in enumerate(decoded):
        if m.shape != first:
            raise ValueError(f"Mask {i} has shape {m.shape}, expected {first} like the first mask.")
    if len(decoded) >= 2**32 - 1:
        raise ValueError("Too many masks for a uint32 label image.")
    areas = np.array([int(m.sum()) for m in decoded])
    order = np.argsort(-areas, kind="stable")
    labels = np.zeros(first, dtype=np.uint32)
    for i in order:
        labels[decoded[i]] = i + 1
    return labels
