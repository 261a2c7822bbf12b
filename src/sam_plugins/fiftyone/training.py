"""`finetune(sample_collection, label_field, out)`: fine-tune SAM on a FiftyOne collection's labels.

Each sample whose ``label_field`` holds objects becomes one (image, instance labels) training
pair: `Detections` with instance masks and filled `Polylines` are drawn into a label image (one id
per object, as the App places them), a `Segmentation` must already be an instance label image
(0 = background, one id per object: what `segment(..., output="segmentation")` writes). Training
is `sam_plugins.finetune` (docs/training.md); the checkpoint it writes is a model every front end
accepts, e.g. the `model` of `segment` and of the *Segment with SAM* operator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np

from sam_plugins.batch.worker import read_image
from sam_plugins.training.finetuning import FINETUNE_DEFAULTS

#: Label types a training field may have.
TRAINING_TYPES: tuple[type, ...] = (fo.Detections, fo.Polylines, fo.Segmentation)


def instance_labels(label: fo.Label, shape: tuple[int, int], name: str = "label") -> np.ndarray:
    """An int32 instance label image of ``shape`` (H, W) from one FiftyOne label (see the module).
    Later objects are drawn over earlier ones where they overlap."""
    out = np.zeros(shape, dtype=np.int32)
    if isinstance(label, fo.Segmentation):
        mask = np.asarray(label.get_mask())
        if mask.shape[:2] != tuple(shape):
            raise ValueError(f"{name}: segmentation mask {mask.shape} does not match image {tuple(shape)}")
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(
                f"{name}: a Segmentation for training must be an instance label image (2-D integer ids), "
                f"got {mask.dtype} {mask.shape}"
            )
        return mask.astype(np.int32)
    if isinstance(label, fo.Detections):
        objects = [d for d in label.detections if d.mask is not None or d.mask_path is not None]
        if label.detections and not objects:
            raise ValueError(f"{name}: its detections have boxes but no instance masks; train on masks")
    elif isinstance(label, fo.Polylines):
        objects = [p for p in label.polylines if p.filled and p.closed]
    else:
        raise ValueError(f"{name}: a {type(label).__name__} cannot be trained on; use {_type_names()}")
    for index, obj in enumerate(objects, start=1):
        obj.to_segmentation(mask=out, target=index)
    return out


def training_pairs(
    sample_collection: fo.core.collections.SampleCollection, label_field: str
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """(image, instance labels) for every sample of the collection with objects in ``label_field``,
    and the samples' file names; samples without such objects are left out."""
    field = sample_collection.get_field(label_field)
    if field is None:
        raise ValueError(f"the collection has no field '{label_field}'")
    kind = getattr(field, "document_type", None)
    if kind not in TRAINING_TYPES:
        raise ValueError(f"'{label_field}' is not a {_type_names()} field; those are the fields with masks")
    pairs, names = [], []
    for path, label in zip(*sample_collection.values(["filepath", label_field]), strict=True):
        if label is None:
            continue
        image = read_image(path)
        labels = instance_labels(label, image.shape[:2], name=f"{Path(path).name} ({label_field})")
        if labels.any():
            pairs.append((image, labels))
            names.append(Path(path).name)
    if not pairs:
        raise ValueError(f"no sample of the collection has objects with masks in '{label_field}'")
    return pairs, names


def finetune(
    sample_collection: fo.core.collections.SampleCollection,
    label_field: str,
    out: str | Path,
    model: str = "default",
    *,
    steps: int = FINETUNE_DEFAULTS["steps"],
    overwrite: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` on the objects of ``label_field`` and write the checkpoint ``out``.

    ``settings`` are `sam_plugins.finetune`'s (``freeze_encoder``, ``lr``, ``device``,
    ``time_limit_s``, ``work_dir``, ``cancel`` ...). Returns a report: the checkpoint, how many
    samples and objects were used, the steps trained, and the last validation mean IoUs (one
    click, box) on held-out objects.
    """
    from sam_plugins.training.data import PairsDataset
    from sam_plugins.training.finetuning import finetune as finetune_pairs

    pairs, names = training_pairs(sample_collection, label_field)
    dataset = PairsDataset(pairs, names=names)
    last: dict[str, float] = {"step": 0}

    def on_step(done: int, total: int, numbers: dict[str, float]) -> None:
        last.update(numbers, step=done)
        if progress is not None:
            progress(done, total, numbers)

    settings.setdefault("progress", False)
    settings.setdefault("log", lambda _: None)
    path = finetune_pairs(dataset, out, model, steps=steps, overwrite=overwrite, on_step=on_step, **settings)
    return {
        "checkpoint": str(path),
        "samples": len(pairs),
        "objects": int(sum(len(np.unique(lab)) - 1 for _, lab in pairs)),
        "steps": int(last["step"]),  # fewer than asked when a time limit (time_limit_s) ended the run
        **{k: float(v) for k, v in last.items() if k.startswith("val_")},
    }


def _type_names() -> str:
    return ", ".join(t.__name__ for t in TRAINING_TYPES)
