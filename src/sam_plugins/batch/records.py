"""What flows through a batch job: tasks in, compact per-image results out.

Everything here is plain data (numpy arrays, strings, numbers), so it pickles cheaply between
processes and machines (Ray actors) and carries no model or database handles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..automatic.rle import mask_to_rle_pytorch, rle_to_mask

MODES = ("automatic", "boxes", "points")


@dataclass
class Task:
    """One image to segment, with optional prompts in normalised image coordinates ([0, 1]).

    `boxes` is (N, 4) `x0, y0, x1, y1`; `points` / `point_labels` hold one (K, 2) / (K,) array
    per object (label 1 = foreground, 0 = background). `labels` names each prompted object.
    """

    key: str
    path: str
    boxes: np.ndarray | None = None
    points: list[np.ndarray] | None = None
    point_labels: list[np.ndarray] | None = None
    labels: list[str | None] | None = None

    @property
    def num_prompts(self) -> int:
        if self.boxes is not None:
            return len(self.boxes)
        if self.points is not None:
            return len(self.points)
        return 0


@dataclass
class Instance:
    """One predicted object: tight pixel box, scores, and its mask cropped to the box.

    `bbox` is `(x0, y0, x1, y1)` in pixels with exclusive ends. The mask is held either in
    memory as packed bits (`packed`, see `crop()`) or on disk as a PNG of the crop (`mask_path`).
    """

    bbox: tuple[int, int, int, int]
    score: float
    stability: float
    area: int
    label: str | None = None
    packed: np.ndarray | None = None
    mask_path: str | None = None
    prompt_index: int | None = None

    @property
    def crop_shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.bbox
        return (y1 - y0, x1 - x0)

    def crop(self) -> np.ndarray:
        """The boolean mask inside `bbox` (read from disk if stored there)."""
        if self.packed is not None:
            h, w = self.crop_shape
            return np.unpackbits(self.packed, count=h * w).reshape(h, w).astype(bool)
        if self.mask_path is not None:
            from PIL import Image

            with Image.open(self.mask_path) as im:
                return np.asarray(im) > 0
        raise ValueError("instance has neither an in-memory mask nor a mask file")

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The boolean mask in a full image of `shape` (H, W)."""
        out = np.zeros(shape, dtype=bool)
        x0, y0, x1, y1 = self.bbox
        out[y0:y1, x0:x1] = self.crop()
        return out


@dataclass
class TaskResult:
    """The outcome for one task: instances on success, an error message on failure."""

    key: str
    path: str
    shape: tuple[int, int] | None = None
    instances: list[Instance] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def instance_from_mask(
    mask: np.ndarray,
    score: float,
    stability: float,
    label: str | None = None,
    prompt_index: int | None = None,
) -> Instance | None:
    """Compact a full-image boolean mask into an `Instance` (None if the mask is empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = mask[y0:y1, x0:x1]
    return Instance(
        bbox=(x0, y0, x1, y1),
        score=float(score),
        stability=float(stability),
        area=int(crop.sum()),
        label=label,
        packed=np.packbits(crop.ravel()),
        prompt_index=prompt_index,
    )


def safe_name(key: str) -> str:
    """A file-system-safe rendering of a task key."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key) or "_"


def store_masks_on_disk(result: TaskResult, mask_dir: str | os.PathLike) -> None:
    """Move the instance masks of `result` into PNG files `<mask_dir>/<key>/<i>.png`."""
    from PIL import Image

    folder = Path(mask_dir) / safe_name(result.key)
    folder.mkdir(parents=True, exist_ok=True)
    for i, inst in enumerate(result.instances):
        if inst.packed is None:
            continue
        path = folder / f"{i:05d}.png"
        Image.fromarray(inst.crop().astype(np.uint8) * 255).save(path)
        inst.mask_path = str(path.resolve())
        inst.packed = None


def label_image(instances: list[Instance], shape: tuple[int, int], dtype: type = np.uint32) -> np.ndarray:
    """Paint instances into a label image (0 = background, i + 1 = `instances[i]`).

    Larger objects are painted first so a small object inside a large one stays visible.
    """
    out = np.zeros(shape, dtype=dtype)
    if len(instances) > np.iinfo(dtype).max:
        raise ValueError(f"{len(instances)} objects do not fit a {np.dtype(dtype).name} label image")
    for i in sorted(range(len(instances)), key=lambda j: -instances[j].area):
        inst = instances[i]
        x0, y0, x1, y1 = inst.bbox
        region = out[y0:y1, x0:x1]
        region[inst.crop()] = i + 1
    return out


def encode_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of one 2-D boolean mask (the automatic generator's encoding)."""
    return mask_to_rle_pytorch(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None])[0]


decode_rle = rle_to_mask
