"""Segment a folder of images without FiftyOne: label images plus a COCO-style JSON.

Per image, the writer stores `OUT/<stem>.<fmt>` (a label image) and a small sidecar
`OUT/.annotations/<stem>.json` in the same chunk; `OUT/annotations.json` is assembled from the
sidecars at the end. A killed run keeps every finished image, and a re-run resumes (images with
both files are skipped unless `overwrite`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .pipeline import BatchSummary, ProgressCallback, run_batch
from .records import Task, TaskResult, encode_rle, label_image
from .worker import SegmentSettings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SIDECAR_DIR = ".annotations"


@dataclass
class FolderJob:
    """Where a folder job reads and writes."""

    input_dir: Path
    output_dir: Path
    fmt: str = "tif"

    def label_path(self, image: Path) -> Path:
        return self.output_dir / f"{image.stem}.{self.fmt}"

    def sidecar_path(self, image: Path) -> Path:
        return self.output_dir / SIDECAR_DIR / f"{image.stem}.json"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (stems must be unique)."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    stems = [p.stem for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several images share the names {duplicates}; outputs would collide")
    return files


def write_label_image(path: Path, labels: np.ndarray) -> None:
    """Write a label image as TIFF (uint16/uint32) or 16-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    if path.suffix == ".png":
        from PIL import Image

        if labels.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError(f"{path.name}: more than 65535 objects do not fit a 16-bit PNG; use tif")
        Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
    else:
        import tifffile

        dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")
    os.replace(tmp, path)


def annotations_for(result: TaskResult) -> dict[str, Any]:
    """COCO-style image entry and annotations (RLE masks, XYWH boxes, scores) for one result."""
    assert result.shape is not None
    h, w = result.shape
    anns = []
    for inst in result.instances:
        x0, y0, x1, y1 = inst.bbox
        anns.append(
            {
                "category_id": 1,
                "segmentation": encode_rle(inst.full_mask((h, w))),
                "area": inst.area,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
                "score": min(max(inst.score, 0.0), 1.0),
                "predicted_iou": inst.score,
                "stability_score": inst.stability,
            }
        )
    return {"image": {"file_name": Path(result.path).name, "height": h, "width": w}, "annotations": anns}


def assemble_coco(job: FolderJob, images: Iterable[Path], info: dict[str, Any]) -> dict[str, Any]:
    """Build the COCO JSON from the per-image sidecars (ids follow the image order)."""
    coco: dict[str, Any] = {
        "info": info,
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    ann_id = 1
    for image_id, image in enumerate(images, start=1):
        sidecar = job.sidecar_path(image)
        if not sidecar.exists():
            continue
        entry = json.loads(sidecar.read_text())
        coco["images"].append({"id": image_id, **entry["image"]})
        for ann in entry["annotations"]:
            coco["annotations"].append({"id": ann_id, "image_id": image_id, **ann})
            ann_id += 1
    return coco


def segment_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: SegmentSettings | None = None,
    *,
    fmt: str = "tif",
    overwrite: bool = False,
    engine: str = "local",
    engine_options: dict[str, Any] | None = None,
    chunk_size: int = 8,
    progress: ProgressCallback | bool | None = None,
) -> BatchSummary:
    """Segment every image of `input_dir` into `output_dir` (label images + annotations.json)."""
    if fmt not in ("tif", "png"):
        raise ValueError("fmt must be 'tif' or 'png'")
    settings = settings or SegmentSettings(mode="automatic")
    if settings.mode != "automatic":
        raise ValueError("segment-folder runs automatic mode only (images carry no prompts)")
    if not Path(input_dir).is_dir():
        raise FileNotFoundError(f"no such folder: {input_dir}")
    job = FolderJob(Path(input_dir), Path(output_dir), fmt)
    images = list_images(job.input_dir)
    todo = [
        p for p in images if overwrite or not (job.label_path(p).exists() and job.sidecar_path(p).exists())
    ]

    def write(chunk: list[TaskResult]) -> None:
        for result in chunk:
            if not result.ok:
                continue
            image = Path(result.path)
            write_label_image(job.label_path(image), label_image(result.instances, result.shape))
            sidecar = job.sidecar_path(image)
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            tmp = sidecar.with_name(sidecar.name + ".part")
            tmp.write_text(json.dumps(annotations_for(result)))
            os.replace(tmp, sidecar)

    tasks = [Task(key=p.name, path=str(p)) for p in todo]
    summary = run_batch(
        tasks,
        settings,
        write,
        engine=engine,
        engine_options=engine_options,
        chunk_size=chunk_size,
        progress=progress,
    )
    info = {
        "description": "sam-plugins segment-folder",
        "settings": settings.to_dict(),
        "model": summary.model,
        "skipped_existing": len(images) - len(todo),
        "failures": summary.failures,
    }
    coco = assemble_coco(job, images, info)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    (job.output_dir / "annotations.json").write_text(json.dumps(coco))
    return summary
