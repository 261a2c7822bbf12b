"""One object per prompt: keep the part of a mask that the prompt points at.

A click or a box asks for one object, yet a mask may also hold small stray regions elsewhere
(fragments on a neighbouring nucleus, specks of background) or run on past the box drawn around
the object. `keep_prompted_region` drops them.
Models whose checkpoint recommends it (`meta["predictor_settings"]`, e.g. the embedded cell model)
get it in `SamPredictor` by default; the official models do not, so their outputs stay official.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["BOX_MARGIN", "keep_prompted_region"]

#: How far past a box prompt a mask may reach, as a fraction of the box's side (at least 1 px).
#: On 8 held-out generated nuclei images (tight boxes) 0 / 0.05 / 0.1 gave box mean IoU 0.722 /
#: 0.721 / 0.718 (no clipping: 0.700); 0.05 leaves room for hand-drawn boxes that cut an edge.
BOX_MARGIN = 0.05

# 8-connectivity: pixels that touch at a corner belong to one region
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def keep_prompted_region(
    masks: np.ndarray,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    box_margin: float = BOX_MARGIN,
) -> np.ndarray:
    """Binary masks (C, H, W) or (H, W) -> a copy in which each mask keeps only its prompted region.

    With a `box` (x0, y0, x1, y1), the mask is first cut to the box grown by `box_margin` of its
    side. The prompted region is then the connected region (8-connected) under a positive point
    (`point_coords` (N, 2) as x, y in the mask's pixels; `point_labels` 1 = positive, None = all
    positive). Several positive points keep every region they fall in. A mask with no positive
    point inside it (box prompts, a click that missed) keeps its largest region.
    """
    masks = np.asarray(masks)
    if masks.dtype != bool:
        raise TypeError(f"keep_prompted_region needs binary (bool) masks, got dtype {masks.dtype}.")
    if masks.ndim not in (2, 3):
        raise ValueError(f"masks must have shape (C, H, W) or (H, W), got {masks.shape}.")
    stack = masks[None] if masks.ndim == 2 else masks
    points = _positive_pixels(point_coords, point_labels, stack.shape[1:])
    out = stack.copy()
    if box is not None:
        out = _cut_to_box(out, box, box_margin)
    for c, mask in enumerate(out):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        regions, count = ndimage.label(mask[y0:y1, x0:x1], structure=_EIGHT_CONNECTED)
        if count <= 1:
            continue
        inside = (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)
        hit = np.unique(regions[points[inside, 1] - y0, points[inside, 0] - x0])
        hit = hit[hit > 0]
        if hit.size:
            keep = np.isin(regions, hit)
        else:
            keep = regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
        out[c, y0:y1, x0:x1] = keep
    return out[0] if masks.ndim == 2 else out


def _cut_to_box(masks: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """`masks` (C, H, W) with everything outside `box` grown by `margin` of its side set False."""
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    mx, my = max(1.0, margin * (x1 - x0 + 1)), max(1.0, margin * (y1 - y0 + 1))
    h, w = masks.shape[1:]
    # SAM's convention: integer coordinates are pixel centres, so pixel j lies in [x0, x1] if x0 <= j <= x1
    left, right = max(0, int(np.ceil(x0 - mx))), min(w, int(np.floor(x1 + mx)) + 1)
    top, bottom = max(0, int(np.ceil(y0 - my))), min(h, int(np.floor(y1 + my)) + 1)
    cut = np.zeros_like(masks)
    cut[:, top:bottom, left:right] = masks[:, top:bottom, left:right]
    return cut


def _positive_pixels(
    point_coords: np.ndarray | None, point_labels: np.ndarray | None, shape: tuple[int, int]
) -> np.ndarray:
    """(N, 2) integer x, y of the positive points inside the image: the pixels they point at."""
    if point_coords is None:
        return np.zeros((0, 2), dtype=np.int64)
    coords = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
    if point_labels is not None:
        coords = coords[np.asarray(point_labels).reshape(-1) == 1]
    coords = coords[np.isfinite(coords).all(axis=1)]
    pixels = np.floor(coords + 0.5).astype(np.int64)  # SAM's convention: x = 3 is pixel 3's centre
    h, w = shape
    keep = (pixels[:, 0] >= 0) & (pixels[:, 0] < w) & (pixels[:, 1] >= 0) & (pixels[:, 1] < h)
    return pixels[keep]
