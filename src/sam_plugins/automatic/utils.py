"""Helpers of the automatic mask generator: MaskData, boxes, point grids, crops, NMS, stability.

Semantics follow the official ``segment_anything.utils.amg`` (and torchvision's NMS) exactly;
the implementations avoid torchvision, OpenCV and needless copies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import product
from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "MaskData",
    "batch_iterator",
    "batched_mask_to_box",
    "batched_nms",
    "box_area",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "calculate_stability_score",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "nms",
    "remove_small_regions",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]


class MaskData:
    """Column store of per-mask data (tensors, arrays or lists) with filter and concatenation."""

    def __init__(self, **kwargs: Any) -> None:
        for v in kwargs.values():
            self._check(v)
        self._stats: dict[str, Any] = dict(kwargs)

    @staticmethod
    def _check(v: Any) -> None:
        if not isinstance(v, (list, np.ndarray, torch.Tensor)) and v is not None:
            raise TypeError("MaskData only supports lists, numpy arrays and torch tensors.")

    def __setitem__(self, key: str, item: Any) -> None:
        self._check(item)
        self._stats[key] = item

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def __len__(self) -> int:
        for v in self._stats.values():
            if v is not None:
                return len(v)
        return 0

    def items(self):
        return self._stats.items()

    def filter(self, keep: torch.Tensor | np.ndarray) -> None:
        """Keep the rows selected by a bool mask or an index array (in that order)."""
        keep_t = torch.as_tensor(keep)
        keep_np = keep_t.cpu().numpy()
        for k, v in self._stats.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                self._stats[k] = v[keep_t.to(v.device)]
            elif isinstance(v, np.ndarray):
                self._stats[k] = v[keep_np]
            elif keep_np.dtype == bool:
                self._stats[k] = [a for a, kept in zip(v, keep_np, strict=True) if kept]
            else:
                self._stats[k] = [v[int(i)] for i in keep_np]

    def cat(self, new_stats: MaskData) -> None:
        """Append the rows of another MaskData (no deep copies: the items are not mutated)."""
        for k, v in new_stats.items():
            if k not in self._stats or self._stats[k] is None:
                self._stats[k] = v
            elif isinstance(v, torch.Tensor):
                self._stats[k] = torch.cat([self._stats[k], v], dim=0)
            elif isinstance(v, np.ndarray):
                self._stats[k] = np.concatenate([self._stats[k], v], axis=0)
            else:
                self._stats[k] = list(self._stats[k]) + list(v)

    def to_numpy(self) -> None:
        for k, v in self._stats.items():
            if isinstance(v, torch.Tensor):
                self._stats[k] = v.detach().cpu().numpy()


def batch_iterator(batch_size: int, *args: Any) -> Iterator[list[Any]]:
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("Batched iteration needs inputs of the same length.")
    n = len(args[0])
    for start in range(0, n, batch_size):
        yield [a[start : start + batch_size] for a in args]


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS (torchvision semantics): stable sort by descending score, drop IoU > threshold."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    area = box_area(b)
    lt = torch.max(b[:, None, :2], b[None, :, :2])
    rb = torch.min(b[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    suppress = (iou > iou_threshold).cpu().numpy()
    removed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppress[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS per category (torchvision's coordinate-offset trick)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """True for boxes within ``atol`` of a crop edge that is not also an image edge."""
    crop_box_t = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_box_t = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop_edge = torch.isclose(boxes, crop_box_t[None, :], atol=atol, rtol=0)
    near_image_edge = torch.isclose(boxes, orig_box_t[None, :], atol=atol, rtol=0)
    return torch.any(near_crop_edge & ~near_image_edge, dim=1)


def box_xyxy_to_xywh(box_xyxy: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    box = box_xyxy.clone() if isinstance(box_xyxy, torch.Tensor) else np.array(box_xyxy, copy=True)
    box[2] = box[2] - box[0]
    box[3] = box[3] - box[1]
    return box


def calculate_stability_score(
    masks: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU of the masks thresholded at threshold +/- offset (NaN for an empty union, as official)."""
    intersections = (
        (masks > (mask_threshold + threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    )
    unions = (
        (masks > (mask_threshold - threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    )
    return intersections / unions


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points evenly spaced in [0, 1]^2, x varying fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, ...], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """The full image, then (2**i)**2 overlapping crops per layer i (XYXY boxes, x outer loop)."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes, layer_idxs = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0, x0, y0]], device=boxes.device)
    if boxes.ndim == 3:
        offset = offset.unsqueeze(1)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0]], device=points.device)
    if points.ndim == 3:
        offset = offset.unsqueeze(1)
    return points + offset


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> torch.Tensor:
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    return torch.nn.functional.pad(masks, (x0, pad_x - x0, y0, pad_y - y0), value=0)


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (inclusive max index) of (..., H, W) bool masks; [0, 0, 0, 0] for empty masks."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    shape = masks.shape
    h, w = shape[-2:]
    masks = masks.flatten(0, -3) if masks.ndim > 2 else masks.unsqueeze(0)

    in_height = torch.amax(masks, dim=-1)
    in_height_coords = in_height * torch.arange(h, device=masks.device)[None, :]
    bottom_edges = torch.amax(in_height_coords, dim=-1)
    top_edges = torch.amin(in_height_coords + h * (~in_height), dim=-1)

    in_width = torch.amax(masks, dim=-2)
    in_width_coords = in_width * torch.arange(w, device=masks.device)[None, :]
    right_edges = torch.amax(in_width_coords, dim=-1)
    left_edges = torch.amin(in_width_coords + w * (~in_width), dim=-1)

    empty = (right_edges < left_edges) | (bottom_edges < top_edges)
    out = torch.stack([left_edges, top_edges, right_edges, bottom_edges], dim=-1) * (~empty).unsqueeze(-1)
    return out.reshape(*shape[:-2], 4) if len(shape) > 2 else out[0]


_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill small holes (mode "holes") or drop small islands ("islands"), 8-connected.

    Same result as the official cv2-based function; returns (mask, changed).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}.")
    correct_holes = mode == "holes"
    working = np.logical_xor(correct_holes, mask)
    regions, n_labels = ndimage.label(working, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(regions.ravel(), minlength=n_labels + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if len(small) == 0:
        return mask, False
    fill = np.zeros(n_labels + 1, dtype=bool)
    if correct_holes:
        fill[0] = True
        fill[small] = True
    else:
        fill[1:] = True
        fill[small] = False
        if not fill.any():
            fill[_largest_region(regions, sizes)] = True
    return fill[regions], True


def _largest_region(regions: np.ndarray, sizes: np.ndarray) -> int:
    """Label of the largest region; ties go to the region OpenCV numbers first.

    OpenCV's 8-connected labelling scans 2x2 blocks, so its label order is the order of each
    region's first block (block row, then block column).
    """
    tied = np.flatnonzero(sizes == sizes.max()) + 1
    if len(tied) == 1:
        return int(tied[0])
    rows, cols = np.indices(regions.shape)
    block_key = (rows // 2) * (regions.shape[1] // 2 + 1) + cols // 2
    first_block = ndimage.minimum(block_key, regions, tied)
    return int(tied[int(np.argmin(first_block))])
