"""`segment(sample_collection, ...)`: label a FiftyOne collection with SAM through the batch engine."""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import fiftyone as fo

from sam_plugins.batch import SegmentSettings, run_batch
from sam_plugins.batch.records import MODES, Task, TaskResult

from .labels import (
    DEFAULT_POINT_LABEL_ATTR,
    LABEL_TYPES,
    OUTPUTS,
    PROMPT_TYPES,
    SEGMENTATION_INLINE_LIMIT,
    build_task,
    to_label,
)

logger = logging.getLogger(__name__)

# Above this many mask pixels per sample, Detections masks go to files (`mask_path`), which keeps
# every sample document far below MongoDB's 16 MB limit.
INLINE_MASK_LIMIT = 4_000_000
PAGE_SIZE = 1000


def default_label_field(mode: str) -> str:
    """The label field used when none is given: `sam_automatic`, `sam_boxes` or `sam_points`."""
    return f"sam_{mode}"


def default_mask_dir(dataset: fo.Dataset, label_field: str) -> Path:
    """Where masks go when they are stored on disk and no directory was given."""
    return Path(fo.config.default_dataset_dir) / "sam_masks" / dataset.name / label_field


def run_key_for(label_field: str) -> str:
    """The FiftyOne run key under which a labeling run's provenance is recorded."""
    return "sam_" + re.sub(r"[^0-9a-zA-Z_]", "_", label_field)


def check_label_field(
    collection: fo.core.collections.SampleCollection,
    label_field: str,
    output: str,
    overwrite: bool,
    skip_existing: bool,
) -> bool:
    """Validate the output field; return whether it already exists.

    Raises ValueError if the field has another type, or exists and neither `overwrite` nor
    `skip_existing` was chosen.
    """
    if not label_field or label_field.startswith("_") or "." in label_field:
        raise ValueError(f"invalid label field name {label_field!r} (no leading '_', no '.')")
    field = collection.get_field(label_field)
    if field is None:
        return False
    expected = LABEL_TYPES[output]
    doc_type = getattr(field, "document_type", None)
    if not (
        isinstance(field, fo.EmbeddedDocumentField)
        and doc_type is not None
        and issubclass(doc_type, expected)
    ):
        found = doc_type.__name__ if doc_type is not None else type(field).__name__
        raise ValueError(
            f"field '{label_field}' holds {found}, but output '{output}' writes {expected.__name__}; "
            "choose another label field"
        )
    if not (overwrite or skip_existing):
        raise ValueError(
            f"field '{label_field}' already exists; choose overwrite=True, skip_existing=True "
            "or another label field"
        )
    return True


def check_prompt_field(
    collection: fo.core.collections.SampleCollection, mode: str, prompt_field: str | None
) -> None:
    """Validate the prompt field for box/point modes."""
    if mode == "automatic":
        return
    expected = PROMPT_TYPES[mode]
    if not prompt_field:
        raise ValueError(f"mode '{mode}' needs a prompt_field holding {expected.__name__}")
    field = collection.get_field(prompt_field)
    doc_type = getattr(field, "document_type", None)
    if field is None or doc_type is None or not issubclass(doc_type, expected):
        raise ValueError(f"prompt field '{prompt_field}' must be a {expected.__name__} field")


def iter_tasks(
    view: fo.core.collections.SampleCollection,
    mode: str,
    prompt_field: str | None,
    point_label_attr: str,
    page_size: int = PAGE_SIZE,
) -> Iterator[Task]:
    """Tasks for every sample of `view`, reading prompts page by page."""
    ids = view.values("id")
    dataset = view._dataset
    it = iter(ids)
    while page := list(islice(it, page_size)):
        page_view = dataset.select(page, ordered=True)
        if mode == "automatic":
            paths = page_view.values("filepath")
            prompts: list[Any] = [None] * len(page)
        else:
            paths, prompts = page_view.values(["filepath", prompt_field])
        for sample_id, path, prompt in zip(page, paths, prompts, strict=True):
            yield build_task(sample_id, path, mode, prompt, point_label_attr)


def segment(
    sample_collection: fo.core.collections.SampleCollection,
    mode: str = "automatic",
    label_field: str | None = None,
    prompt_field: str | None = None,
    output: str = "detections",
    overwrite: bool = False,
    skip_existing: bool = False,
    model: str | None = None,
    device: str | None = None,
    mask_dir: str | None = None,
    point_label_attr: str = DEFAULT_POINT_LABEL_ATTR,
    engine: str = "local",
    address: str | None = None,
    num_workers: int | None = None,
    chunk_size: int = 16,
    progress: Callable[[int, int | None], None] | bool | None = None,
    orientations: int = 1,
    keep_prompted_region: bool | None = None,
    **amg_params: Any,
) -> dict[str, Any]:
    """Segment every image of `sample_collection` with SAM and store the masks in `label_field`.

    Modes: `automatic` (segment everything; official AMG parameters as keyword arguments),
    `boxes` (one mask per `Detection` of `prompt_field`, label copied) and `points` (one mask
    per `Keypoint`, positive/negative per point from its `point_label_attr` attribute).
    Output: `detections` (instance masks; box tight to the mask; `confidence` = predicted IoU
    clamped to [0, 1], `predicted_iou` and `stability` attributes), `segmentation` (an instance
    label image) or `polylines`. `orientations` (1, 2, 4 or 8; boxes and points modes) averages
    each prompt's mask over that many turned and mirrored copies of the image: sharper masks for
    one encoder pass per orientation (docs/fiftyone.md). `keep_prompted_region` (boxes and points
    modes): each mask keeps only the region its prompt points at; None = what the model recommends
    (on for the embedded model, off for the official ones). Masks go to files under `mask_dir` when
    it is given, and automatically for samples whose masks are large.

    Results are written every `chunk_size` samples, so a killed run keeps what it finished;
    `skip_existing=True` resumes it. Returns a report with per-sample failures; the run's
    provenance (model, checkpoint and weight digests, parameters) is recorded as a FiftyOne run
    under `run_key` (see `dataset.get_run_info(report["run_key"])`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
    if sample_collection.media_type != "image":
        raise ValueError(
            f"only image collections are supported (got media type {sample_collection.media_type!r})"
        )
    label_field = label_field or default_label_field(mode)
    dataset = sample_collection._dataset
    check_prompt_field(sample_collection, mode, prompt_field)
    existed = check_label_field(dataset, label_field, output, overwrite, skip_existing)
    settings = SegmentSettings(
        mode=mode,
        model=model,
        device=device,
        amg=dict(amg_params),
        mask_dir=str(mask_dir or default_mask_dir(dataset, label_field)) if output == "detections" else None,
        inline_mask_limit=None if mask_dir else INLINE_MASK_LIMIT,
        orientations=orientations,
        keep_prompted_region=keep_prompted_region,
    )

    total_view = sample_collection.count()
    view = sample_collection.exists(label_field, False) if (existed and skip_existing) else sample_collection
    total = view.count()
    if not existed:
        dataset.add_sample_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=LABEL_TYPES[output])
    run_key = run_key_for(label_field)
    config = {
        "method": "sam_plugins.fiftyone.segment",
        "label_field": label_field,
        "mode": mode,
        "prompt_field": prompt_field,
        "output": output,
        "overwrite": overwrite,
        "skip_existing": skip_existing,
        "parameters": {**settings.to_dict(), "point_label_attr": point_label_attr},
        "engine": engine,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    segmentation_dir = Path(mask_dir) if mask_dir else default_mask_dir(dataset, label_field)
    inline_limit = 0 if mask_dir else SEGMENTATION_INLINE_LIMIT
    # Provenance first (a killed run still says what was running), completed at the end.
    sample_collection.register_run(run_key, dataset.init_run(**config), overwrite=True, cleanup=False)

    def write(chunk: list[TaskResult]) -> None:
        values: dict[str, Any] = {}
        for result in chunk:
            if result.ok:
                values[result.key] = to_label(result, output, segmentation_dir, inline_limit)
            elif overwrite:
                values[result.key] = None  # never leave a stale label from an earlier run
        if values:
            dataset.set_values(label_field, values, key_field="id")

    engine_options = {"address": address, "num_workers": num_workers} if engine == "ray" else None
    summary = run_batch(
        iter_tasks(view, mode, prompt_field, point_label_attr),
        settings,
        write,
        engine=engine,
        engine_options=engine_options,
        chunk_size=chunk_size,
        total=total,
        progress=progress,
    )
    report = {
        "label_field": label_field,
        "run_key": run_key,
        "samples": total_view,
        "skipped_existing": total_view - total,
        **summary.to_dict(),
    }
    config.update(
        {"model": summary.model, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    )
    config["result"] = {k: report[k] for k in ("samples", "processed", "succeeded", "failed", "instances")}
    sample_collection.register_run(run_key, dataset.init_run(**config), overwrite=True, cleanup=False)
    if summary.failures:
        logger.warning(
            "%d of %d samples failed; see the report's 'failures'", summary.failed, summary.processed
        )
    return report
