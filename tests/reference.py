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


# --- cv2 / pycocotools stand-ins (tests only) ------------------------------------------------
# The official AMG imports cv2 for min_mask_region_area > 0 and pycocotools for coco_rle. When the
# real packages are missing, these minimal stand-ins (written independently of sam_plugins) are used.


def _connected_components_with_stats(image, connectivity=8):
    """cv2.connectedComponentsWithStats; stats rows [x, y, w, h, area].

    OpenCV's 8-connected labelling (Spaghetti/BBDT) scans 2x2 blocks, so labels are numbered in
    the order of each component's first block (block row, then block column), not its first pixel.
    """
    from scipy import ndimage

    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    labels, n = ndimage.label(np.asarray(image) != 0, structure=structure)
    if n > 1:
        rows, cols = np.indices(labels.shape)
        block_key = (rows // 2) * (labels.shape[1] // 2 + 1) + cols // 2
        first_block = ndimage.minimum(block_key, labels, np.arange(1, n + 1))
        relabel = np.zeros(n + 1, dtype=labels.dtype)
        relabel[1 + np.argsort(first_block, kind="stable")] = np.arange(1, n + 1)
        labels = relabel[labels]
    stats = np.zeros((n + 1, 5), dtype=np.int32)
    centroids = np.zeros((n + 1, 2))
    for lab in range(n + 1):
        ys, xs = np.nonzero(labels == lab)
        if len(ys):
            stats[lab] = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1, len(ys)]
            centroids[lab] = [xs.mean(), ys.mean()]
    return n + 1, labels.astype(np.int32), stats, centroids


def _rle_to_string(counts):
    """Literal transcription of pycocotools' rleToString (maskApi.c)."""
    out = []
    for i in range(len(counts)):
        x = int(counts[i])
        if i > 2:
            x -= int(counts[i - 2])
        more = 1
        while more:
            c = x & 0x1F
            x >>= 5
            if c & 0x10:
                more = x != -1
            else:
                more = x != 0
            if more:
                c |= 0x20
            c += 48
            out.append(chr(c))
    return "".join(out).encode("ascii")


def _fr_py_objects(pyobj, h, w):
    if isinstance(pyobj, dict) and isinstance(pyobj.get("counts"), list):
        return {"size": [h, w], "counts": _rle_to_string(pyobj["counts"])}
    raise NotImplementedError("stand-in supports uncompressed RLE dicts only")


def install_cv2_stand_in(force: bool = False) -> None:
    """Provide `cv2.connectedComponentsWithStats` if OpenCV is not importable (or when forced)."""
    if not force:
        try:
            import cv2  # noqa: F401

            return
        except ImportError:
            pass
    cv2 = types.ModuleType("cv2")
    cv2._sam_plugins_stand_in = True
    cv2.connectedComponentsWithStats = _connected_components_with_stats
    sys.modules["cv2"] = cv2


def install_pycocotools_stand_in() -> None:
    """Provide `pycocotools.mask.frPyObjects` for uncompressed RLE if pycocotools is missing."""
    try:
        import pycocotools.mask  # noqa: F401

        return
    except ImportError:
        pass
    pkg = types.ModuleType("pycocotools")
    mask = types.ModuleType("pycocotools.mask")
    mask.frPyObjects = _fr_py_objects
    pkg.mask = mask
    sys.modules.update({"pycocotools": pkg, "pycocotools.mask": mask})
