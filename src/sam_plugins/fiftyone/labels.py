"""Translate batch results into FiftyOne labels, and FiftyOne prompts into batch tasks."""

from __future__ import annotations

import os
from pathlib import Path

import fiftyone as fo
import numpy as np

from sam_plugins.batch.records import Instance, Task, TaskResult, label_image, safe_name

OUTPUTS = ("detections", "segmentation", "polylines")
LABEL_TYPES: dict[str, type] = {
    "detections": fo.Detections,
    "segmentation": fo.Segmentation,
    "polylines": fo.Polylines,
}
PROMPT_TYPES: dict[str, type] = {"boxes": fo.Detections, "points": fo.Keypoints}
DEFAULT_POINT_LABEL_ATTR = "sam_labels"  # FiftyOne's SAM convention: 1 = foreground, 0 = background
# Above this many pixels, a Segmentation label image is written to disk (`mask_path`).
SEGMENTATION_INLINE_LIMIT = 4_000_000


def clamp01(value: float) -> float:
    return float(min(max(value, 0.0), 1.0))


def to_detection(inst: Instance, shape: tuple[int, int]) -> fo.Detection:
    """One instance as a `Detection`: box tight to the mask, confidence = clamped predicted IoU."""
    h, w = shape
    x0, y0, x1, y1 = inst.bbox
    kwargs = {
        "label": inst.label,
        "bounding_box": [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
        "confidence": clamp01(inst.score),
        "predicted_iou": float(inst.score),
        "stability": float(inst.stability),
    }
    if inst.mask_path is not None:
        return fo.Detection(mask_path=inst.mask_path, **kwargs)
    return fo.Detection(mask=inst.crop(), **kwargs)


def to_polyline(inst: Instance, shape: tuple[int, int], tolerance: float = 1.0) -> fo.Polyline:
    """One instance as a filled, closed `Polyline` traced from its mask."""
    poly = fo.Polyline.from_mask(inst.full_mask(shape), label=inst.label, tolerance=tolerance)
    poly.confidence = clamp01(inst.score)
    poly["predicted_iou"] = float(inst.score)
    poly["stability"] = float(inst.stability)
    return poly


def to_label(
    result: TaskResult,
    output: str,
    mask_dir: str | os.PathLike | None = None,
    inline_limit: int = SEGMENTATION_INLINE_LIMIT,
) -> fo.Label:
    """The label to store for a successful result, in the chosen output type.

    Segmentation output is an instance label image (0 background, i = i-th object); it goes to
    `<mask_dir>/<key>.png` (`mask_path`) when `mask_dir` is given and the image exceeds
    `inline_limit` pixels (0 = always on disk).
    """
    assert result.shape is not None
    if output == "detections":
        return fo.Detections(detections=[to_detection(i, result.shape) for i in result.instances])
    if output == "polylines":
        return fo.Polylines(polylines=[to_polyline(i, result.shape) for i in result.instances])
    if output == "segmentation":
        labels = label_image(result.instances, result.shape, dtype=np.uint16)
        if mask_dir is not None and labels.size > inline_limit:
            from PIL import Image

            path = Path(mask_dir) / f"{safe_name(result.key)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels).save(path)
            return fo.Segmentation(mask_path=str(path.resolve()))
        return fo.Segmentation(mask=labels)
    raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")


def _xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def build_task(
    sample_id: str,
    filepath: str,
    mode: str,
    prompts: fo.Label | None,
    point_label_attr: str = DEFAULT_POINT_LABEL_ATTR,
) -> Task:
    """A batch task for one sample, with its prompts (FiftyOne boxes/keypoints) normalised."""
    task = Task(key=sample_id, path=filepath)
    if mode == "boxes":
        dets = list(prompts.detections) if prompts is not None else []
        task.boxes = np.array([_xyxy(d.bounding_box) for d in dets], dtype=np.float64).reshape(-1, 4)
        task.labels = [d.label for d in dets]
    elif mode == "points":
        kps = list(prompts.keypoints) if prompts is not None else []
        task.points = [np.asarray(k.points, dtype=np.float64).reshape(-1, 2) for k in kps]
        task.point_labels = [
            np.asarray(k[point_label_attr])
            if k.has_field(point_label_attr) and k[point_label_attr] is not None
            else None
            for k in kps
        ]
        task.labels = [k.label for k in kps]
    return task
