"""Import the official `segment_anything` package as a numerical reference (tests only).

The official package imports torchvision for four helpers only. torchvision cannot load with the
CPU build of torch used here, so a minimal stand-in with the same semantics is placed in
`sys.modules` before the import: Pillow bilinear resize, `to_pil_image`, and greedy NMS.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from PIL import Image


def _resize(img, size, *args, **kwargs):
    h, w = size
    return img.resize((w, h), Image.BILINEAR)


def _to_pil_image(pic, mode=None):
    return Image.fromarray(np.asarray(pic))


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    area = _box_area(boxes)
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    removed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in range(len(boxes)):
        if removed[i]:
            continue
        keep.append(i)
        removed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _batched_nms(boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _nms(boxes + offsets[:, None], scores, iou_threshold)


def install_torchvision_stand_in() -> None:
    """Put a tiny `torchvision` providing what segment_anything needs into sys.modules."""
    if "torchvision" in sys.modules and getattr(sys.modules["torchvision"], "_sam_plugins_stand_in", False):
        return
    tv = types.ModuleType("torchvision")
    tv._sam_plugins_stand_in = True
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = _resize
    functional.to_pil_image = _to_pil_image
    transforms.functional = functional
    ops = types.ModuleType("torchvision.ops")
    boxes_mod = types.ModuleType("torchvision.ops.boxes")
    boxes_mod.batched_nms = _batched_nms
    boxes_mod.box_area = _box_area
    ops.boxes = boxes_mod
    ops.nms = _nms
    ops.batched_nms = _batched_nms
    tv.transforms = transforms
    tv.ops = ops
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes_mod,
        }
    )


def import_segment_anything():
    """Return the official `segment_anything` module (with the torchvision stand-in installed)."""
    install_torchvision_stand_in()
    import segment_anything

    return segment_anything
